#!/usr/bin/env python3
"""Load benchmark of Hakikisha against a bare axum baseline, measured in one run.

Run through bench/run.sh, which builds the release binaries and raises the fd limit. Every
server this starts listens on 127.0.0.1 and is stopped at the end; every scenario is bounded in
time. Prints one Markdown table and writes it to bench/results/<date>.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target/release/hakikisha"
BARE = ROOT / "target/release/examples/bare_axum"
LOADGEN = ROOT / "target/release/examples/loadgen"
QUICK = "--quick" in sys.argv
DURATION = 5 if QUICK else 10
# Rounds of the compared throughput runs (see Bench.rotate); each round runs DURATION / ROUNDS s.
ROUNDS = 3 if QUICK else 5
CLAIMS = 10_000 if QUICK else 100_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
PASSWORD = "bench password 42"
# What browsers send: the service answers it compressed (docs/performance.md).
BROWSER = "Accept-Encoding: gzip, deflate, br, zstd"

# All load comes from one loopback address, so the per-IP tiers are raised far above the load;
# the limiter still runs (and counts) on every request. docs/performance.md explains this.
LIMITS = {
    "RATE_LIMIT_GENERAL": "100000000/15m",
    "RATE_LIMIT_AUTH": "100000000/15m",
    "RATE_LIMIT_AI": "100000000/15m",
    "RATE_LIMIT_KEY_CREATION": "100000000/1h",
    "RATE_LIMIT_HEAVY": "100000000/1h",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body=None, token=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as res:
        raw = res.read()
        return json.loads(raw) if raw and raw[:1] in b"{[" else raw.decode()


class Process:
    """A server we started: pid figures from /proc, stopped with SIGTERM."""

    def __init__(self, argv, env, log: Path, cwd: Path):
        self.log = open(log, "w")
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd)

    def wait_http(self, url: str, seconds=30.0):
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                urllib.request.urlopen(url, timeout=1).read()
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError(f"{url} did not answer within {seconds} s")

    def status(self, key: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        return sum(proc_cpu(self.proc.pid))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def proc_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process `pid` so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def wrk(url: str, conns: int, seconds: int, script="bench/wrk_report.lua", threads=2, header=None) -> dict:
    extra = ["-H", header] if header else []
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", script, *extra, url],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60,
    )
    line = next((l for l in out.stdout.splitlines() if l.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no report: {out.stdout} {out.stderr}")
    r = json.loads(line)
    r["connections"] = conns
    return r


def loadgen(args: list[str], timeout: int) -> dict:
    out = subprocess.run([str(LOADGEN), *args], capture_output=True, text=True, timeout=timeout)
    line = next((l for l in reversed(out.stdout.splitlines()) if l.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"loadgen printed no report: {out.stdout} {out.stderr}")
    r = json.loads(line)
    r["errors"] = r["errors"] + r["non2xx"] + r["connect_errors"]
    return r


def scrape(metrics_url: str) -> dict[str, float]:
    """Sums of cache lookups by result, from the Prometheus exposition."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r'hakikisha_cache_requests_total\{([^}]*)\} ([0-9.e+]+)', line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            key = f'{labels.get("layer")}:{labels.get("result")}'
            sums[key] = sums.get(key, 0.0) + float(m.group(2))
    return sums


def hit_ratio(before: dict, after: dict) -> float | None:
    """Share of lookups answered without a load: memory hits + Redis hits over all lookups."""
    d = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    lookups = d.get("memory:hit", 0) + d.get("memory:miss", 0)
    if lookups <= 0:
        return None
    return (d.get("memory:hit", 0) + d.get("redis:hit", 0)) / lookups


class Bench:
    def __init__(self):
        self.rows: list[dict] = []
        self.work = Path(tempfile.mkdtemp(prefix="hakikisha-bench-"))
        self.started: list[Process] = []

    def row(self, scenario, backend, result, server: Process | None, cpu=None, ratio=None, target="", verdict=""):
        self.rows.append({
            "scenario": scenario, "backend": backend, "conc": result.get("connections", ""),
            "rps": result.get("rps", 0.0), "p50": result.get("p50_ms", 0.0), "p95": result.get("p95_ms", 0.0),
            "p99": result.get("p99_ms", 0.0), "max": result.get("max_ms", 0.0), "errors": result.get("errors", 0),
            "rss": (server.status("VmRSS") / 2**20) if server else None, "cpu": cpu, "ratio": ratio,
            "target": target, "verdict": verdict, "rounds": result.get("rounds"),
        })
        r = self.rows[-1]
        print(f"  {scenario:<46} {backend:<10} {r['rps']:>10.0f} req/s  p99 {r['p99']:>8.2f} ms  errors {r['errors']}"
              + (f"  ratio {ratio:.2f}" if ratio is not None else "") + (f"  {verdict}" if verdict else ""), flush=True)

    def measured(self, server: Process, fn):
        c0, t0 = server.cpu_seconds(), time.time()
        result = fn()
        cpu = 100 * (server.cpu_seconds() - c0) / max(time.time() - t0, 1e-9)
        return result, cpu

    def rotate(self, targets: list[tuple], conns: int) -> dict[str, list[tuple[dict, float]]]:
        """Runs wrk against each target (name, server, url[, request header]) in turn, ROUNDS
        times, so every target sees the same machine: on a shared host the same binary moves by
        20 % or more within minutes, and comparing runs taken side by side, round after round,
        cancels most of it. Returns each target's (result, server CPU %) per round."""
        secs = max(2, round(DURATION / ROUNDS))
        runs: dict[str, list[tuple[dict, float]]] = {t[0]: [] for t in targets}
        for _ in range(ROUNDS):
            for name, proc, url, *header in targets:
                runs[name].append(self.measured(proc, lambda: wrk(url, conns, secs, header=header[0] if header else None)))
        return runs

    def alternate(self, server: Process, service, reference):
        """The service's load and a reference load (pgbench) in turn, ROUNDS times, each
        DURATION / ROUNDS s: the service's (result, CPU %) per round, and the reference's
        throughput per round in the same shape."""
        secs = max(2, round(DURATION / ROUNDS))
        runs, refs = [], []
        for _ in range(ROUNDS):
            runs.append(self.measured(server, lambda: service(secs)))
            refs.append(({"rps": reference(secs), "errors": 0}, 0.0))
        return runs, refs

    def start_bare(self, body: Path | None = None) -> tuple[Process, str]:
        port = free_port()
        args = [str(BARE), f"127.0.0.1:{port}"] + ([str(body)] if body else [])
        p = Process(args, dict(os.environ), self.work / "bare.log", self.work)
        self.started.append(p)
        base = f"http://127.0.0.1:{port}"
        p.wait_http(base + "/api/health")
        return p, base

    def start_app(self, name: str, extra: dict) -> tuple[Process, str, str]:
        port, mport = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE", "REDIS", "HAKIKISHA_"))}
        env.update(LIMITS)
        env.update({
            "BIND_ADDR": f"127.0.0.1:{port}", "METRICS_ADDR": f"127.0.0.1:{mport}",
            "ADMIN_EMAIL": "bench-admin@example.com", "ADMIN_USERNAME": "benchadmin", "ADMIN_PASSWORD": PASSWORD,
            # The 100,000-idle-connections scenario holds connections that have not sent headers yet.
            "HEADER_READ_TIMEOUT": "300s",
        })
        env.update(extra)
        p = Process([str(BIN), "serve"], env, self.work / f"{name}.log", self.work)
        self.started.append(p)
        base = f"http://127.0.0.1:{port}"
        p.wait_http(base + "/readyz", seconds=120)
        return p, base, f"http://127.0.0.1:{mport}/metrics"

    def demo_data(self, extra: dict):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE", "REDIS", "HAKIKISHA_"))}
        env.update(extra)
        env["ADMIN_PASSWORD"] = PASSWORD
        env["ADMIN_EMAIL"] = "bench-admin@example.com"
        env["ADMIN_USERNAME"] = "benchadmin"
        t = time.time()
        subprocess.run([str(BIN), "demo-data", "--claims", str(CLAIMS), "--users", "1000"], env=env, cwd=self.work,
                       check=True, capture_output=True, timeout=900)
        return time.time() - t

    def cleanup(self):
        for p in self.started:
            p.stop()


def median_run(runs: list[tuple[dict, float]], reference: list[tuple[dict, float]] | None = None):
    """The median round of `runs` (its result and CPU), and the median of the per-round ratios
    of its throughput to `reference`'s in the same round."""
    order = sorted(range(len(runs)), key=lambda i: runs[i][0]["rps"])
    result, cpu = runs[order[len(order) // 2]]
    result = {**result, "rounds": [round(r["rps"]) for r, _ in runs],
              "errors": sum(r["errors"] for r, _ in runs)}
    if reference is None:
        return result, cpu, None
    ratios = sorted(r["rps"] / ref["rps"] for (r, _), (ref, _) in zip(runs, reference))
    return result, cpu, ratios[len(ratios) // 2]


def bench_backend(b: Bench, backend: str, env: dict, ids_of, pg_url: str | None, schema: str | None = None):
    print(f"\n[{backend}] demo data ({CLAIMS} claims) ...", flush=True)
    took = b.demo_data(env)
    print(f"  demo-data took {took:.1f} s", flush=True)
    app, base, metrics = b.start_app(backend, env)
    time.sleep(1)
    idle_rss = app.status("VmRSS") / 2**20
    b.rows.append({"scenario": "idle server after start (RSS)", "backend": backend, "conc": "", "rps": None,
                   "p50": None, "p95": None, "p99": None, "max": None, "errors": "", "rss": idle_rss, "cpu": None,
                   "ratio": None, "target": "RSS <= 50 MB", "verdict": "met" if idle_rss <= 50 else "MISSED"})
    print(f"  idle RSS {idle_rss:.1f} MiB", flush=True)

    http("POST", base + "/api/v1/auth/register",
         {"email": "benchuser@example.com", "username": "benchuser", "password": PASSWORD})
    token = http("POST", base + "/api/v1/auth/login", {"login": "benchuser", "password": PASSWORD})["access_token"]
    ids = ids_of()
    ids_file = b.work / f"{backend}-ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")

    c = 64
    # The baseline, started for each backend, and what the contract adds to every response put
    # back on the bare server one piece at a time with the service's own code: its response
    # headers, then its request log line. The service and these run in turn, round after round
    # (Bench.rotate), and each ratio is the median of the per-round ratios.
    bare, bare_base = b.start_bare()
    runs = b.rotate([
        ("bare", bare, bare_base + "/api/health"),
        ("health", app, base + "/api/health"),
        ("headers", bare, bare_base + "/api/health/headers"),
        ("logged", bare, bare_base + "/api/health/logged"),
    ], c)
    r, cpu, _ = median_run(runs["bare"])
    b.row(f"bare axum GET /api/health (baseline for {backend})", "-", r, bare, cpu, 1.0)
    r, cpu, ratio = median_run(runs["headers"], runs["bare"])
    b.row("  bare axum + the service's response headers (request id, 12 security headers)", "-", r, bare, cpu, ratio)
    r, cpu, ratio = median_run(runs["logged"], runs["bare"])
    b.row("  bare axum + those headers + the request log line", "-", r, bare, cpu, ratio)
    r, cpu, ratio = median_run(runs["health"], runs["bare"])
    b.row("GET /api/health", backend, r, app, cpu, ratio, ">= 0.8 x bare", "met" if ratio >= 0.8 else "MISSED")
    bare.stop()

    # The same body from the bare server: what sending that many bytes costs by itself.
    body = b.work / f"{backend}-trending.json"
    with urllib.request.urlopen(base + "/api/v1/claims/trending", timeout=30) as resp:
        body.write_bytes(resp.read())
    size = body.stat().st_size
    # What a browser asks for: the service sends the trending list in the coding it prefers,
    # compressed once and kept with the cached body (docs/performance.md).
    req = urllib.request.Request(base + "/api/v1/claims/trending", headers=dict([BROWSER.split(": ")]))
    with urllib.request.urlopen(req, timeout=30) as resp:
        coding, packed = resp.headers.get("Content-Encoding", "none"), len(resp.read())
    bare, bare_base = b.start_bare(body)
    runs = b.rotate([
        ("bare", bare, bare_base + "/api/health"),
        ("trending", app, base + "/api/v1/claims/trending"),
        ("body", bare, bare_base + "/body"),
        ("dressed", bare, bare_base + "/body/dressed"),
        ("browser", app, base + "/api/v1/claims/trending", BROWSER),
    ], c)
    r, cpu, ratio = median_run(runs["body"], runs["bare"])
    b.row(f"bare axum sending the trending body ({size:,} bytes)", "-", r, bare, cpu, ratio)
    r, cpu, ratio = median_run(runs["dressed"], runs["bare"])
    b.row("  the same body with the service's headers of a cached read and its log line", "-", r, bare, cpu, ratio)
    bare.stop()
    r, cpu, ratio = median_run(runs["trending"], runs["bare"])
    _, _, vs_body = median_run(runs["trending"], runs["body"])
    b.row(f"cached read GET /claims/trending ({vs_body:.2f} x bare sending the same body)",
          backend, r, app, cpu, ratio, ">= 0.7 x bare", "met" if ratio >= 0.7 and r["errors"] == 0 else "MISSED")
    r, cpu, ratio = median_run(runs["browser"], runs["bare"])
    b.row(f"  the same with a browser's Accept-Encoding ({coding}, {packed:,} bytes)", backend, r, app, cpu, ratio)

    # Uncached point reads: a second instance on the same database with claim-detail caching
    # off (CACHE_DEFAULT_TTL=0s), so every request reads the claim from the database.
    mix = b.work / f"{backend}-detail.tsv"
    mix.write_text("1\tGET\t/api/v1/claims/{id}\t-\t-\n")
    clients = 32
    uncached, ubase, _ = b.start_app(backend + "-uncached", {**env, "CACHE_DEFAULT_TTL": "0s"})
    read = lambda secs: loadgen(["--addr", ubase[7:], "--mix", str(mix), "--ids", str(ids_file),
                                 "--connections", str(clients), "--duration", str(secs)], secs + 60)
    if pg_url:
        # The service and pgbench in turn, round after round, as in Bench.rotate.
        runs, refs = b.alternate(uncached, read, lambda secs: pgbench_select(pg_url, clients, secs))
        r, cpu, ratio = median_run(runs, refs)
        pgb = median_run(refs)[0]["rps"]
        b.row(f"uncached point read GET /claims/{{id}} (pgbench -S {pgb:.0f} tps)", backend, r, uncached, cpu,
              ratio, ">= 0.4 x pgbench -S", "met" if ratio >= 0.4 and r["errors"] == 0 else "MISSED")
    else:
        r, cpu = b.measured(uncached, lambda: read(DURATION))
        b.row("uncached point read GET /claims/{id}", backend, r, uncached, cpu)
    uncached.stop()
    if pg_url:
        # Pool size against throughput at 64 clients: what DB_POOL_MAX should default to here.
        for pool in (4, 8, 16, 32, 64):
            sized, sbase, _ = b.start_app(f"{backend}-pool{pool}", {**env, "CACHE_DEFAULT_TTL": "0s",
                                                                     "DB_POOL_MAX": str(pool), "DB_POOL_MIN": "1"})
            r, cpu = b.measured(sized, lambda: loadgen(["--addr", sbase[7:], "--mix", str(mix), "--ids", str(ids_file),
                                                        "--connections", "64", "--duration", str(DURATION)],
                                                       DURATION + 60))
            b.row(f"  uncached point read, DB_POOL_MAX={pool}", backend, r, sized, cpu)
            sized.stop()

    mix = b.work / f"{backend}-write.tsv"
    body = '{"text":"Bench claim {n}: the new bridge on the river cost twice its budget","category":"economy"}'
    mix.write_text(f"1\tPOST\t/api/v1/claims\t{token}\t{body}\n")
    write = lambda secs: loadgen(["--addr", base[7:], "--mix", str(mix), "--connections", str(clients),
                                  "--duration", str(secs)], secs + 60)
    if pg_url:
        submitter = subprocess.run(["psql", pg_url, "-qAtc", f"SELECT id FROM {schema}.users WHERE username = 'benchuser'"],
                                   capture_output=True, text=True, check=True).stdout.strip()
        runs, refs = b.alternate(app, write, lambda secs: pgbench_insert(pg_url, clients, schema, submitter, secs))
        r, cpu, ratio = median_run(runs, refs)
        pgb = median_run(refs)[0]["rps"]
        b.row(f"write POST /claims (pgbench insert {pgb:.0f} tps)", backend, r, app, cpu, ratio,
              ">= 0.4 x pgbench insert", "met" if ratio >= 0.4 and r["errors"] == 0 else "MISSED")
    else:
        r, cpu = b.measured(app, lambda: write(DURATION))
        b.row("write POST /claims", backend, r, app, cpu)

    # Mixed realistic traffic at a fixed 10,000 requests/s.
    resolved = ids[: max(1, len(ids) // 10)]
    hot = b.work / f"{backend}-hot.txt"
    hot.write_text("\n".join(resolved[:2000]) + "\n")
    mix = b.work / f"{backend}-mixed.tsv"
    mix.write_text("\n".join([
        "60\tGET\t/api/v1/claims/{id}\t-\t-",
        "15\tGET\t/api/v1/claims/trending\t-\t-",
        "10\tGET\t/api/v1/blogs\t-\t-",
        "5\tGET\t/api/v1/blogs/trending\t-\t-",
        f"5\tGET\t/api/v1/notifications/unread-count\t{token}\t-",
        f"4\tGET\t/api/v1/claims/mine?limit=5\t{token}\t-",
        f"1\tPOST\t/api/v1/claims\t{token}\t{body}",
    ]) + "\n")
    warm = ["--addr", base[7:], "--mix", str(mix), "--ids", str(hot), "--connections", "64", "--duration", "3"]
    loadgen(warm, 60)
    # Then the same mix as browsers would send it: every request asks for compression.
    for label, extra in [("mixed at 10,000 req/s", []),
                         ("  the same mix, every request with a browser's Accept-Encoding", ["--header", BROWSER])]:
        before = scrape(metrics)
        r, cpu = b.measured(app, lambda: loadgen(["--addr", base[7:], "--mix", str(mix), "--ids", str(hot),
                                                  "--connections", "256", "--rate", "10000",
                                                  "--duration", str(DURATION), *extra], DURATION + 60))
        ratio_hit = hit_ratio(before, scrape(metrics))
        ok = r["p99_ms"] < 25 and r["errors"] == 0 and (ratio_hit or 0) >= 0.95 and r["rps"] >= 9500
        b.row(f"{label} (cache hits {100 * (ratio_hit or 0):.1f} %)", backend, r, app, cpu, None,
              "p99 < 25 ms, 0 errors, hits >= 95 %", "met" if ok else "MISSED")

    # 10,000 keep-alive connections, each sending about one request a second.
    trend = b.work / f"{backend}-trend.tsv"
    trend.write_text("1\tGET\t/api/v1/claims/trending\t-\t-\n")
    r, cpu = b.measured(app, lambda: loadgen(["--addr", base[7:], "--mix", str(trend), "--connections", "10000",
                                              "--sources", "4", "--rate", "10000", "--duration", str(DURATION + 5)],
                                             DURATION + 120))
    b.row("10,000 keep-alive connections", backend, r, app, cpu, None, "0 errors, p95 < 100 ms",
          "met" if r["errors"] == 0 and r["p95_ms"] < 100 else "MISSED")

    # Login flood: argon2id on the blocking pool must not stall other routes.
    side: dict = {}
    t = threading.Thread(target=lambda: side.update(loadgen(
        ["--addr", base[7:], "--mix", str(trend), "--connections", "16", "--rate", "500",
         "--duration", str(DURATION)], DURATION + 60)))
    t.start()
    r, cpu = b.measured(app, lambda: wrk(base, 16, DURATION, script="bench/wrk_login.lua"))
    t.join()
    b.row("login flood POST /auth/login (argon2id)", backend, r, app, cpu, None, "report")
    side["connections"] = 16
    b.row("  cached read during the login flood", backend, side, app, None, None, "p99 < 50 ms",
          "met" if side.get("p99_ms", 1e9) < 50 and side.get("errors", 1) == 0 else "MISSED")

    app.stop()
    if backend == "sqlite":
        # 100,000 idle connections, then one request on each (SQLite run only: the server's
        # connection handling is the same on both backends), on a fresh server so its memory
        # is the connections' alone.
        app, base, _ = b.start_app(backend + "-idle", env)
        time.sleep(1)
        start_rss = app.status("VmRSS") / 2**20
        mix = b.work / "health.tsv"
        mix.write_text("1\tGET\t/api/health\t-\t-\n")
        # Each side needs one descriptor per connection; a sandbox's hard limit may be lower than
        # 100,000, and then the run says so instead of pretending.
        import resource
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        n = min(20_000 if QUICK else 100_000, limit - 1_000)
        if n < 100_000:
            print(f"  open-file limit is {limit}: holding {n:,} connections instead of 100,000", flush=True)
        r = loadgen(["--addr", base[7:], "--mix", str(mix), "--connections", str(n), "--sources", "8",
                     "--idle-then-one", "--hold", "3"], 900)
        peak = app.status("VmHWM") / 2**20
        per_conn = (peak - start_rss) * 1024 / n
        b.row(f"{n:,} idle connections, then 1 request each (peak RSS {peak:.0f} MiB, {per_conn:.1f} KiB per connection)",
              backend, r, app, None, None,
              "all served, RSS <= 1 GB", "met" if r["ok"] == n and peak <= 1024 else "MISSED")
        app.stop()


def psql(url: str, sql: str):
    subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], check=True, capture_output=True, text=True)


def with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


PGBENCH_DB = f"hakikisha_pgbench_{os.getpid()}"


def pgbench_select(url: str, clients: int, secs: int) -> float:
    out = subprocess.run(["pgbench", "-S", "-M", "prepared", "-n", "-c", str(clients), "-j", "2",
                          "-T", str(secs), with_database(url, PGBENCH_DB)],
                         capture_output=True, text=True, timeout=secs + 60, check=True).stdout
    return float(re.search(r"tps = ([0-9.]+)", out).group(1))


def pgbench_insert(url: str, clients: int, schema: str, submitter: str, secs: int) -> float:
    script = Path(tempfile.mkstemp(suffix=".sql")[1])
    # The row a submission inserts, into the service's own claims table (same indexes, same
    # foreign key to the same submitter), one autocommitted INSERT per transaction.
    script.write_text(
        f"INSERT INTO {schema}.claims (id, submitter_id, text, text_hash, category, status, priority, created_at, updated_at) "
        f"VALUES (gen_random_uuid(), '{submitter}', 'Bench claim ' || random() || ': the new bridge on the river cost twice its budget', "
        "md5(random()::text), 'economy', 'pending', 0, now(), now());\n")
    try:
        out = subprocess.run(["pgbench", "-n", "-M", "prepared", "-f", str(script), "-c", str(clients), "-j", "2",
                              "-T", str(secs), url],
                             capture_output=True, text=True, timeout=secs + 60, check=True).stdout
    finally:
        script.unlink(missing_ok=True)
    return float(re.search(r"tps = ([0-9.]+)", out).group(1))


def setup_pgbench(url: str):
    admin = with_database(url, "postgres")
    psql(admin, f"DROP DATABASE IF EXISTS {PGBENCH_DB}")
    psql(admin, f"CREATE DATABASE {PGBENCH_DB}")
    db = with_database(url, PGBENCH_DB)
    subprocess.run(["pgbench", "-i", "-q", "-s", "10", db], check=True, capture_output=True)


def drop_pgbench(url: str):
    try:
        psql(with_database(url, "postgres"), f"DROP DATABASE IF EXISTS {PGBENCH_DB}")
    except Exception:
        pass


def fmt(v, spec):
    return "" if v is None or v == "" else format(v, spec)


def table(rows) -> str:
    head = "| scenario | backend | conc | req/s | p50 ms | p95 ms | p99 ms | max ms | errors | RSS MiB | CPU % | ratio | target | verdict |"
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append("| " + " | ".join([
            r["scenario"], r["backend"], str(r["conc"]), fmt(r["rps"], ",.0f"), fmt(r["p50"], ".2f"),
            fmt(r["p95"], ".2f"), fmt(r["p99"], ".2f"), fmt(r["max"], ".1f"), str(r["errors"]),
            fmt(r["rss"], ".1f"), fmt(r["cpu"], ".0f"), fmt(r["ratio"], ".2f"), r["target"], r["verdict"],
        ]) + " |")
    return "\n".join(lines)


def purge_redis_prefix(url: str, prefix: str):
    """Deletes the keys the service left under `prefix` (cache generations and block lists have no
    expiry)."""
    try:
        keys = subprocess.run(["redis-cli", "-u", url, "--scan", "--pattern", prefix + "*"],
                              capture_output=True, text=True, check=True, timeout=60).stdout.split()
        for i in range(0, len(keys), 500):
            subprocess.run(["redis-cli", "-u", url, "del", *keys[i:i + 500]],
                           capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"could not delete the bench's Redis keys ({prefix}*): {e}", flush=True)


def main() -> int:
    b = Bench()
    pg_url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("HAKIKISHA_TEST_DATABASE_URL")
    redis_url = os.environ.get("BENCH_REDIS_URL") or os.environ.get("HAKIKISHA_TEST_REDIS_URL")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        print(f"Hakikisha benchmark ({'quick' if QUICK else 'full'}): {DURATION} s per scenario, {CLAIMS} claims", flush=True)
        sqlite_db = b.work / "bench.db"

        def sqlite_ids():
            import sqlite3
            con = sqlite3.connect(sqlite_db)
            rows = con.execute("SELECT id FROM claims WHERE status = 'resolved'").fetchall()
            con.close()
            return [str(uuid.UUID(bytes=r[0])) if isinstance(r[0], bytes) else str(r[0]) for r in rows]

        bench_backend(b, "sqlite", {"DATABASE_URL": f"sqlite://{sqlite_db}"}, sqlite_ids, None)

        if pg_url:
            setup_pgbench(pg_url)
            psql(pg_url, f"CREATE SCHEMA {schema}")
            sep = "&" if "?" in pg_url else "?"
            app_url = f"{pg_url}{sep}options[search_path]={schema}"
            env = {"DATABASE_URL": app_url, "DB_POOL_MAX": "32", "DB_POOL_MIN": "4"}
            if redis_url:
                env.update({"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": f"{schema}:"})

            def pg_ids():
                out = subprocess.run(["psql", pg_url, "-qAtc",
                                      f"SELECT id FROM {schema}.claims WHERE status = 'resolved'"],
                                     capture_output=True, text=True, check=True).stdout
                return [l for l in out.splitlines() if l]

            bench_backend(b, "postgres" + ("+redis" if redis_url else ""), env, pg_ids, pg_url, schema)
        else:
            print("\nPostgreSQL scenarios SKIPPED: set HAKIKISHA_TEST_DATABASE_URL (and HAKIKISHA_TEST_REDIS_URL)")
    finally:
        b.cleanup()
        if pg_url:
            drop_pgbench(pg_url)
            try:
                psql(pg_url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            except Exception:
                pass
        if pg_url and redis_url:
            purge_redis_prefix(redis_url, f"{schema}:")

    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    header = (f"# Benchmark {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC ({'quick' if QUICK else 'full'})\n\n"
              f"Machine: {os.cpu_count()} cores ({cpu}), {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
              f"Linux {platform.release()}. {DURATION} s per scenario; {CLAIMS:,} claims; load generator and server share the machine.\n")
    rounds = "\n".join(f"- {r['scenario'].strip()} ({r['backend']}): {', '.join(f'{x:,}' for x in r['rounds'])}"
                       for r in b.rows if r.get("rounds"))
    text = (header + "\n" + table(b.rows) + "\n\nThroughput of each round (req/s) of the rows compared in turn "
            "(the table shows the median round and the median per-round ratio):\n\n" + rounds + "\n")
    print("\n" + text)
    results = ROOT / "bench/results"
    results.mkdir(exist_ok=True)
    out = results / f"{dt.date.today():%Y-%m-%d}{'-quick' if QUICK else ''}.md"
    out.write_text(text)
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
