//! The accept loop: HTTP/1.1 and HTTP/2 via hyper-util, a header read timeout against slow
//! clients, and graceful shutdown (readiness off -> drain delay -> stop accepting -> finish
//! in-flight requests within the grace period).

use std::{convert::Infallible, future::Future, net::SocketAddr, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::state::Lifecycle;

/// Pending connections the kernel may queue for `accept` (it caps this at
/// `net.core.somaxconn`, 4096 on current Linux). tokio's `bind` asks for 1,024: a burst of
/// thousands of new connections overflows that queue, and each dropped SYN costs its client a
/// 1 s retransmit (`docs/performance.md`).
pub const LISTEN_BACKLOG: u32 = 4096;

/// The service's listening socket, with [`LISTEN_BACKLOG`].
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

pub struct ServeOptions {
    pub header_read_timeout: Duration,
    pub drain_delay: Duration,
    pub grace: Duration,
}

pub async fn serve(
    listener: TcpListener,
    router: Router,
    lifecycle: &Lifecycle,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();

    tokio::pin!(shutdown);
    // Phase 1: serve until asked to stop.
    loop {
        tokio::select! {
            accepted = listener.accept() => accept(accepted, &builder, &router, &graceful).await,
            () = &mut shutdown => break,
        }
    }
    // Phase 2: readiness reports 503 while we keep serving, so load balancers stop sending.
    lifecycle.start_draining();
    tracing::info!(
        drain_delay_ms = options.drain_delay.as_millis() as u64,
        "shutdown requested; draining"
    );
    let drain = tokio::time::sleep(options.drain_delay);
    tokio::pin!(drain);
    loop {
        tokio::select! {
            accepted = listener.accept() => accept(accepted, &builder, &router, &graceful).await,
            () = &mut drain => break,
        }
    }
    // Phase 3: refuse new connections, let in-flight requests finish.
    drop(listener);
    let open = graceful.count();
    tracing::info!(
        open_connections = open,
        "stopped accepting; waiting for in-flight requests"
    );
    if tokio::time::timeout(options.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = options.grace.as_millis() as u64,
            "grace period over; closing remaining connections"
        );
    }
}

async fn accept(
    accepted: std::io::Result<(tokio::net::TcpStream, SocketAddr)>,
    builder: &Builder<TokioExecutor>,
    router: &Router,
    graceful: &GracefulShutdown,
) {
    let (stream, peer) = match accepted {
        Ok(pair) => pair,
        Err(e) => {
            // EMFILE and friends: back off briefly instead of spinning.
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let router = router.clone();
    let service = service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            Ok::<_, Infallible>(
                router
                    .oneshot(req)
                    .await
                    .unwrap_or_else(|never| match never {}),
            )
        }
    });
    let builder = builder.clone();
    let watcher = graceful.watcher();
    tokio::spawn(async move {
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of connections larger than tokio's default backlog (1,024) is queued by the
    /// kernel while nothing accepts: with the default, connections past it wait for a SYN
    /// retransmit (1 s) and miss the deadline.
    #[tokio::test]
    async fn a_burst_past_the_default_backlog_is_queued_not_dropped() {
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if somaxconn < 1_500 {
            eprintln!(
                "SKIPPED: net.core.somaxconn is {somaxconn}, the kernel caps the backlog there"
            );
            return;
        }
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..1_500 {
            connects.spawn(async move {
                tokio::time::timeout(
                    Duration::from_millis(700),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
            });
        }
        let mut open = Vec::new();
        while let Some(joined) = connects.join_next().await {
            let stream = joined
                .unwrap()
                .expect("connect waited for a SYN retransmit");
            open.push(stream.unwrap());
        }
        assert_eq!(open.len(), 1_500);
        drop(listener);
    }
}
