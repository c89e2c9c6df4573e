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
