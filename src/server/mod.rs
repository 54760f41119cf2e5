//! HTTP transport: accept loop, HTTP/1.1 and HTTP/2 on one port, connection limits and
//! timeouts (`connection`), graceful shutdown.
//! Knows hyper and sockets, nothing about DICOM storage.

pub mod connection;
pub mod router;
pub mod service;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use self::connection::{Activity, AddressSlots, SendTimeout, StallGuard, Tracked};
use self::service::App;

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish (up to [`DRAIN_TIMEOUT`]) and makes the store durable.
///
/// Connections are bounded in number (`--max-connections`, and `--max-connections-per-address`
/// so that one client cannot take them all) and in silence: one that has not completed a
/// request head within `--header-timeout-secs` of being accepted (protocol detection included),
/// or has had no request in progress for `--idle-timeout-secs`, is closed; a request body that
/// stalls for `--body-timeout-secs` fails the request; a connection whose client takes no
/// response byte for `--send-timeout-secs` is dropped with its response.
pub async fn serve(listener: TcpListener, app: App, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let app = Arc::new(app);
    let limits = app.config().connections;
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let slots = Arc::new(AddressSlots::default());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's header read timeout also runs while a keep-alive connection waits for its next
    // request, which would cut --idle-timeout-secs to it; the watchdog below bounds both.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(limits.idle_timeout)
        .keep_alive_timeout(limits.header_timeout);
    tracing::info!(address = %listener.local_addr()?, "kura listening");
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("semaphore open"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Some(slot) = slots.take(peer.ip(), limits.max_per_address) else {
            // Closed at once: the client's other connections are still served.
            tracing::debug!(max = limits.max_per_address, "connection refused: too many from one address");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        let activity = Activity::new();
        let service = service_fn({
            let (app, activity) = (app.clone(), activity.clone());
            move |request: hyper::Request<hyper::body::Incoming>| {
                let (app, in_progress) = (app.clone(), activity.start());
                let mut request = request.map(|body| StallGuard::new(body, limits.body_timeout));
                if let Some(local) = local {
                    request.extensions_mut().insert(service::LocalAddr(local));
                }
                async move {
                    let response = app.handle(request).await;
                    Ok::<_, std::convert::Infallible>(
                        response.map(|body| Tracked::new(body, in_progress).boxed_unsync()),
                    )
                }
            }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(SendTimeout::new(stream, limits.send_timeout)), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            tokio::select! {
                _ = connection => {}
                _ = activity.idle(limits.header_timeout, limits.idle_timeout) => {
                    tracing::debug!("closing a connection with no request in progress");
                }
            }
            drop((slot, permit));
        });
    }
    tracing::info!("shutting down: draining in-flight requests");
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("some connections did not finish within the drain timeout");
    }
    app.archive().make_durable().await.map_err(std::io::Error::other)?;
    app.archive().close().await.map_err(std::io::Error::other)?;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
