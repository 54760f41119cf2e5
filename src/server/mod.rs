//! HTTP transport: accept loop, TLS (`tls`), HTTP/1.1 and HTTP/2 on one port, connection
//! limits and timeouts (`connection`), authentication (`access`), graceful shutdown.
//! Knows hyper, rustls and sockets, nothing about DICOM storage.

pub mod access;
pub mod admin;
pub mod audit_api;
pub mod connection;
pub mod router;
pub mod service;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use self::access::ConnectionInfo;
use self::connection::{Activity, AddressSlots, SendTimeout, StallGuard, Tracked};
use self::service::App;

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` over plain HTTP on `listener` until `shutdown` resolves; see [`serve_with`].
pub async fn serve(listener: TcpListener, app: App, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    serve_with(listener, app, None, shutdown).await
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `shutdown` resolves, then
/// stops accepting, lets in-flight requests finish (up to [`DRAIN_TIMEOUT`]) and makes the
/// store durable.
///
/// Connections are bounded in number (`--max-connections`, and `--max-connections-per-address`
/// so that one client cannot take them all) and in silence: one that has not completed a
/// request head within `--header-timeout-secs` of being accepted (the TLS handshake and
/// protocol detection included), or has had no request in progress for `--idle-timeout-secs`,
/// is closed; a request body that stalls for `--body-timeout-secs` fails the request; a connection
/// whose client takes no response byte for `--send-timeout-secs` is dropped with its response.
pub async fn serve_with(
    listener: TcpListener,
    app: App,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = Arc::new(app);
    let limits = app.config().connections;
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let slots = Arc::new(AddressSlots::default());
    let tls = tls.map(TlsAcceptor::from);
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
    let builder = Arc::new(builder);
    tracing::info!(address = %listener.local_addr()?, tls = tls.is_some(), "kura listening");
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
        // Under TLS too: a client that takes no byte stalls the socket whatever is layered on it.
        let stream = SendTimeout::new(stream, limits.send_timeout);
        let (app, builder, tls, watcher) = (app.clone(), builder.clone(), tls.clone(), graceful.watcher());
        tokio::spawn(async move {
            // The watchdog starts at accept, so the TLS handshake counts against the header
            // timeout: a connection that never sends (or never finishes) its ClientHello is
            // closed like one that never sends a request head.
            let activity = Activity::new();
            let watchdog = activity.clone();
            let watchdog = watchdog.idle(limits.header_timeout, limits.idle_timeout);
            tokio::pin!(watchdog);
            let connection = Connection { app, builder, activity, local, watcher };
            match tls {
                None => {
                    let info = ConnectionInfo { peer, tls: false, certificate: None };
                    tokio::select! {
                        _ = connection.serve(stream, info) => {}
                        _ = &mut watchdog => tracing::debug!("closing a connection with no request in progress"),
                    }
                }
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        handshake = acceptor.accept(stream) => handshake,
                        _ = &mut watchdog => {
                            tracing::debug!("closing a connection that did not complete its TLS handshake in time");
                            return drop((slot, permit));
                        }
                    };
                    let stream = match handshake {
                        Ok(stream) => stream,
                        Err(error) => {
                            tracing::debug!(%error, "TLS handshake failed");
                            return drop((slot, permit));
                        }
                    };
                    let certificate = stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()).and_then(
                        |certificate| connection.app.config().security.client_certificates.principal(certificate),
                    );
                    let info = ConnectionInfo { peer, tls: true, certificate };
                    tokio::select! {
                        _ = connection.serve(stream, info) => {}
                        _ = &mut watchdog => tracing::debug!("closing a connection with no request in progress"),
                    }
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

/// One accepted connection, once any TLS handshake is done.
struct Connection {
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    activity: Activity,
    local: Option<std::net::SocketAddr>,
    watcher: hyper_util::server::graceful::Watcher,
}

impl Connection {
    async fn serve<I>(self, io: I, info: ConnectionInfo)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection { app, builder, activity, local, watcher } = self;
        let limits = app.config().connections;
        let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let (app, in_progress) = (app.clone(), activity.start());
            let mut request = request.map(|body| StallGuard::new(body, limits.body_timeout));
            if let Some(local) = local {
                request.extensions_mut().insert(service::LocalAddr(local));
            }
            request.extensions_mut().insert(info.clone());
            async move {
                let response = app.handle(request).await;
                Ok::<_, std::convert::Infallible>(response.map(|body| Tracked::new(body, in_progress).boxed_unsync()))
            }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let _ = watcher.watch(connection.into_owned()).await;
    }
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
