//! Notification connections (PS3.18 §8.10): the WebSocket (RFC 6455) over which an AE title's
//! UPS event reports are sent as text frames of DICOM JSON (§8.10.5).
//!
//! `GET {root}/subscribers/{aetitle}` with `Upgrade: websocket` answers 101 and hands the
//! socket to a task that sends the queued events of that AE title of the caller's institution
//! (its subscriber, `archive::worklist::Subscriber`) in order, then waits for more. Delivery:
//! after each run of events the server sends a Ping whose payload is the last event's sequence
//! number; the client's WebSocket stack answers it with a Pong after it has read every frame
//! before it, and only then are those events removed from the queue. Events not acknowledged
//! when the connection ends are sent again on the next connection (at least once; a restart of
//! the server included). A newer connection of the same AE supersedes an older one.
//!
//! Lifetime: once upgraded, the socket has left hyper's connection (and its idle watchdog);
//! it is bounded here instead: the worklist caps open connections, a Ping goes out every
//! [`KEEPALIVE`] and a connection from which nothing (not even a Pong) arrived for
//! [`SILENCE_LIMIT`] is closed; writes to a client that reads nothing fail after the send
//! timeout of the socket (`server::connection::SendTimeout`, which stays around it).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role, WebSocketConfig};

use super::{ResponseBody, empty_body};
use crate::archive::Archive;
use crate::archive::worklist::NotificationConnection;
use crate::auth::Principal;
use crate::error::Error;

/// How often the server pings an idle connection.
pub const KEEPALIVE: Duration = Duration::from_secs(30);
/// A connection silent for this long (no frame, no Pong) is closed.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(90);
/// The largest frame or message the server reads from a client (clients send nothing but
/// control frames).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// Answers a notification-connection request: checks the WebSocket handshake (RFC 6455
/// §4.2.1), takes a connection slot, answers 101 and serves the socket once hyper hands it over.
pub fn upgrade<B>(
    archive: &Arc<Archive>,
    principal: &Principal,
    aetitle: &str,
    mut request: Request<B>,
) -> Result<Response<ResponseBody>, Error> {
    let headers = request.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(Error::bad_request(
            "a notification connection is a WebSocket: GET with Upgrade: websocket (PS3.18 §8.10.4, RFC 6455)",
        ));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()) != Some("13") {
        return Err(Error::bad_request("Sec-WebSocket-Version must be 13 (RFC 6455 §4.2.1)"));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| Error::bad_request("the WebSocket handshake has no Sec-WebSocket-Key"))?;
    let accept = derive_accept_key(key.as_bytes());
    let connection = archive.worklist().connect(principal, aetitle)?;
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut config = WebSocketConfig::default();
                config.max_message_size = Some(MAX_CLIENT_MESSAGE);
                config.max_frame_size = Some(MAX_CLIENT_MESSAGE);
                let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
                if let Err(error) = deliver(socket, connection).await {
                    tracing::debug!(%error, "notification connection ended");
                }
            }
            Err(error) => tracing::debug!(%error, "the WebSocket upgrade did not complete"),
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).map_err(Error::internal)?)
        .body(empty_body())
        .expect("valid response"))
}

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Sends the AE's events until the client leaves, goes silent, or a newer connection takes
/// over. See the module docs for when an event counts as delivered.
async fn deliver(
    mut socket: Socket,
    connection: NotificationConnection,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut changes = connection.changes();
    let mut sent = 0u64;
    let mut heard = Instant::now();
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.reset();
    loop {
        if connection.is_superseded() {
            let _ = socket.close(None).await;
            return Ok(());
        }
        let events = connection.pending(sent)?;
        if !events.is_empty() {
            for (seq, text) in events {
                socket.feed(Message::text(text)).await?;
                sent = seq;
            }
            socket.send(Message::Ping(Bytes::copy_from_slice(&sent.to_be_bytes()))).await?;
            continue;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return Ok(()) },
            message = socket.next() => match message {
                Some(Ok(Message::Pong(payload))) => {
                    heard = Instant::now();
                    if let Ok(bytes) = <[u8; 8]>::try_from(payload.as_ref()) {
                        let acknowledged = u64::from_be_bytes(bytes);
                        if acknowledged <= sent {
                            connection.acknowledge(acknowledged)?;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                // Pings are answered by tungstenite itself; text from the client means nothing.
                Some(Ok(_)) => heard = Instant::now(),
                Some(Err(error)) => return Err(error.into()),
            },
            _ = keepalive.tick() => {
                if heard.elapsed() > SILENCE_LIMIT {
                    tracing::debug!("closing a silent notification connection");
                    let _ = socket.close(None).await;
                    return Ok(());
                }
                socket.send(Message::Ping(Bytes::copy_from_slice(&sent.to_be_bytes()))).await?;
            }
        }
    }
}
