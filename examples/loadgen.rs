//! A small HTTP/1.1 load generator for `bench/run.sh`, for what wrk cannot do: tens of thousands
//! of connections from several loopback source addresses, fixed request rates (latency measured
//! from the scheduled send time, so a stalled server cannot hide its queueing), weighted request
//! mixes with per-request bodies and tokens, and "hold N idle connections, then one request on
//! each". Loopback only: it refuses any other target. Prints one JSON line.
//!
//!     loadgen --addr 127.0.0.1:8080 --mix mix.tsv [--ids ids.txt] --connections 64 \
//!             --duration 10 [--rate 10000] [--sources 4] [--idle-then-one --hold 5] \
//!             [--header 'Accept-Encoding: gzip, deflate, br, zstd' ...]
//!
//! mix.tsv: one request template a line, tab-separated: `weight  METHOD  PATH  TOKEN|-  BODY|-`.
//! `{id}` in the path is replaced by a random line of `--ids`. Every `--header` is sent with
//! every request.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
    sync::Mutex,
};

struct Template {
    weight: u32,
    method: String,
    path: String,
    token: Option<String>,
    body: Option<String>,
}

struct Args {
    addr: SocketAddr,
    mix: Vec<Template>,
    ids: Vec<String>,
    connections: usize,
    duration: Duration,
    rate: f64,
    sources: u8,
    idle_then_one: bool,
    hold: Duration,
    headers: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = std::env::args().skip(1);
    let (mut addr, mut mix, mut ids) = (None, None, Vec::new());
    let (mut connections, mut duration, mut rate, mut sources) = (16, 10.0_f64, 0.0, 1u8);
    let (mut idle_then_one, mut hold, mut headers) = (false, 0.0_f64, Vec::new());
    while let Some(flag) = a.next() {
        let mut val = || a.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => addr = Some(val()?.parse::<SocketAddr>().map_err(|e| e.to_string())?),
            "--mix" => mix = Some(read_mix(&val()?)?),
            "--ids" => {
                ids = std::fs::read_to_string(val()?)
                    .map_err(|e| e.to_string())?
                    .lines()
                    .map(str::to_owned)
                    .filter(|l| !l.is_empty())
                    .collect()
            }
            "--connections" => connections = val()?.parse().map_err(|_| "bad --connections")?,
            "--duration" => duration = val()?.parse().map_err(|_| "bad --duration")?,
            "--rate" => rate = val()?.parse().map_err(|_| "bad --rate")?,
            "--sources" => sources = val()?.parse().map_err(|_| "bad --sources")?,
            "--idle-then-one" => idle_then_one = true,
            "--hold" => hold = val()?.parse().map_err(|_| "bad --hold")?,
            "--header" => {
                let header = val()?;
                if !header.contains(':') || header.contains(['\r', '\n']) {
                    return Err(format!("bad --header {header:?}: one `Name: value` line"));
                }
                headers.push(header);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let addr = addr.ok_or("--addr is required")?;
    if !addr.ip().is_loopback() {
        return Err("loadgen only targets loopback addresses".into());
    }
    let mix = mix.ok_or("--mix is required")?;
    if mix.is_empty() || mix.iter().all(|t| t.weight == 0) {
        return Err("the mix has no request".into());
    }
    if mix.iter().any(|t| t.path.contains("{id}")) && ids.is_empty() {
        return Err("a template uses {id} but --ids is empty".into());
    }
    Ok(Args {
        addr,
        mix,
        ids,
        connections: connections.max(1),
        duration: Duration::from_secs_f64(duration.min(600.0)),
        rate,
        sources: sources.max(1),
        idle_then_one,
        hold: Duration::from_secs_f64(hold.min(600.0)),
        headers,
    })
}

fn read_mix(path: &str) -> Result<Vec<Template>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 3 {
                return Err(format!("{path}: bad line {line:?}"));
            }
            let opt = |i: usize| {
                f.get(i)
                    .filter(|v| **v != "-" && !v.is_empty())
                    .map(|v| v.to_string())
            };
            Ok(Template {
                weight: f[0].parse().map_err(|_| format!("{path}: bad weight"))?,
                method: f[1].to_owned(),
                path: f[2].to_owned(),
                token: opt(3),
                body: opt(4),
            })
        })
        .collect()
}

fn render(args: &Args, t: &Template, rng: &mut SmallRng, host: &str) -> Vec<u8> {
    let ids = &args.ids;
    let path = if t.path.contains("{id}") {
        t.path.replace("{id}", &ids[rng.random_range(0..ids.len())])
    } else {
        t.path.clone()
    };
    let mut req = format!("{} {path} HTTP/1.1\r\nHost: {host}\r\n", t.method);
    if let Some(token) = &t.token {
        req.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for header in &args.headers {
        req.push_str(header);
        req.push_str("\r\n");
    }
    match &t.body {
        Some(body) => {
            // `{n}` makes each body unique (e.g. claim texts).
            let body = body.replace("{n}", &rng.random::<u64>().to_string());
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        }
        None => req.push_str("\r\n"),
    }
    req.into_bytes()
}

/// Reads one response; returns its status.
async fn read_response(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> std::io::Result<u16> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let (mut length, mut chunked) = (0usize, false);
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            let mut buf = vec![0; size + 2];
            r.read_exact(&mut buf).await?;
            if size == 0 {
                break;
            }
        }
    } else {
        let mut buf = vec![0; length];
        r.read_exact(&mut buf).await?;
    }
    Ok(status)
}

async fn connect(addr: SocketAddr, n: usize, sources: u8) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    let source = Ipv4Addr::new(127, 0, 0, 1 + (n % usize::from(sources)) as u8);
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[derive(Default)]
struct Totals {
    ok: AtomicU64,
    non2xx: AtomicU64,
    errors: AtomicU64,
    connect_errors: AtomicU64,
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let totals = Arc::new(Totals::default());
    let latencies = Arc::new(Mutex::new(Vec::<u32>::new()));
    let host = args.addr.to_string();
    let total_weight: u32 = args.mix.iter().map(|t| t.weight).sum();
    let started = Instant::now();

    if args.idle_then_one {
        // Open every connection first, hold them idle, then one request on each at once.
        let mut streams = Vec::with_capacity(args.connections);
        for n in 0..args.connections {
            match connect(args.addr, n, args.sources).await {
                Ok(s) => streams.push(s),
                Err(_) => {
                    totals.connect_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let opened_in = started.elapsed();
        tokio::time::sleep(args.hold).await;
        let go = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (n, stream) in streams.into_iter().enumerate() {
            let (args, totals, host) = (args.clone(), totals.clone(), host.clone());
            tasks.spawn(async move {
                let mut rng = SmallRng::seed_from_u64(n as u64);
                let req = render(&args, &args.mix[0], &mut rng, &host);
                let (r, mut w) = stream.into_split();
                let mut r = BufReader::new(r);
                let t = Instant::now();
                let result = async {
                    w.write_all(&req).await?;
                    read_response(&mut r).await
                };
                match tokio::time::timeout(Duration::from_secs(60), result).await {
                    Ok(Ok(s)) if (200..300).contains(&s) => {
                        totals.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(_)) => {
                        totals.non2xx.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32
            });
        }
        let mut lat = Vec::with_capacity(args.connections);
        while let Some(res) = tasks.join_next().await {
            if let Ok(us) = res {
                lat.push(us);
            }
        }
        report(&args, &totals, lat, go.elapsed(), Some(opened_in));
        return;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let per_conn_interval =
        (args.rate > 0.0).then(|| Duration::from_secs_f64(args.connections as f64 / args.rate));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..args.connections {
        let (args, totals, latencies, stop, host) = (
            args.clone(),
            totals.clone(),
            latencies.clone(),
            stop.clone(),
            host.clone(),
        );
        tasks.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(n as u64 + 1);
            let mut local = Vec::new();
            let mut conn: Option<(BufReader<tokio::net::tcp::OwnedReadHalf>, _)> = None;
            // Spread the first sends of a fixed-rate run over one interval.
            let mut next = Instant::now()
                + per_conn_interval
                    .map(|i| i.mul_f64(n as f64 / args.connections as f64))
                    .unwrap_or_default();
            while !stop.load(Ordering::Relaxed) {
                if per_conn_interval.is_some() {
                    tokio::time::sleep_until(next.into()).await;
                }
                let scheduled = if per_conn_interval.is_some() {
                    next
                } else {
                    Instant::now()
                };
                if conn.is_none() {
                    match connect(args.addr, n, args.sources).await {
                        Ok(s) => {
                            let (r, w) = s.into_split();
                            conn = Some((BufReader::new(r), w));
                        }
                        Err(_) => {
                            totals.connect_errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
                let mut pick = rng.random_range(0..total_weight);
                let t = args
                    .mix
                    .iter()
                    .find(|t| {
                        if pick < t.weight {
                            true
                        } else {
                            pick -= t.weight;
                            false
                        }
                    })
                    .unwrap_or(&args.mix[0]);
                let req = render(&args, t, &mut rng, &host);
                let Some((r, w)) = conn.as_mut() else {
                    continue;
                };
                let result = async {
                    w.write_all(&req).await?;
                    read_response(r).await
                };
                match tokio::time::timeout(Duration::from_secs(30), result).await {
                    Ok(Ok(s)) => {
                        let counter = if (200..300).contains(&s) || s == 304 {
                            &totals.ok
                        } else {
                            &totals.non2xx
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                    }
                }
                local.push(scheduled.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                if let Some(interval) = per_conn_interval {
                    next += interval;
                }
            }
            latencies.lock().await.extend(local);
        });
    }
    tokio::time::sleep(args.duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    while tasks.join_next().await.is_some() {}
    let lat = std::mem::take(&mut *latencies.lock().await);
    report(&args, &totals, lat, elapsed, None);
}

fn report(
    args: &Args,
    totals: &Totals,
    mut lat: Vec<u32>,
    elapsed: Duration,
    opened_in: Option<Duration>,
) {
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            0.0
        } else {
            let i = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
            f64::from(lat[i]) / 1000.0
        }
    };
    let done = totals.ok.load(Ordering::Relaxed) + totals.non2xx.load(Ordering::Relaxed);
    let line = serde_json::json!({
        "connections": args.connections,
        "requests": done,
        "ok": totals.ok.load(Ordering::Relaxed),
        "non2xx": totals.non2xx.load(Ordering::Relaxed),
        "errors": totals.errors.load(Ordering::Relaxed),
        "connect_errors": totals.connect_errors.load(Ordering::Relaxed),
        "seconds": elapsed.as_secs_f64(),
        "rps": done as f64 / elapsed.as_secs_f64().max(1e-9),
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "max_ms": lat.last().map(|v| f64::from(*v) / 1000.0).unwrap_or(0.0),
        "opened_in_s": opened_in.map(|d| d.as_secs_f64()),
    });
    println!("{line}");
}
