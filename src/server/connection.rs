//! What keeps one client from holding connections it does not use: a cap per client address,
//! a watchdog that closes connections with no request in progress (before the first request
//! head, and between requests), and a request body that fails when it stalls.
//!
//! The watchdog counts requests, not bytes: a request is in progress from the moment hyper
//! hands it to the service until its response body has been sent or dropped, so a long
//! download or a slow computation never looks idle, while a connection that only trickles
//! header bytes (slowloris), sends nothing at all, or pings over HTTP/2 does.
//!
//! The other way round, a client that stops reading would hold its response (buffers, codec
//! and memory permits, the connection's slot) for as long as it keeps the socket open: the
//! socket's writes fail once none of them has made progress for the send timeout
//! ([`SendTimeout`]), which ends the connection and drops the response.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Open connections per client address.
#[derive(Debug, Default)]
pub struct AddressSlots {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`AddressSlots`], given back when dropped.
pub struct AddressSlot {
    slots: Arc<AddressSlots>,
    address: IpAddr,
}

impl AddressSlots {
    /// A slot for a new connection from `address`, or `None` when it has `max` open already.
    pub fn take(self: &Arc<Self>, address: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(address).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(AddressSlot { slots: self.clone(), address })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

#[derive(Debug)]
struct ActivityState {
    in_progress: usize,
    /// When the connection last became idle (accepted, or its last request ended).
    since: Instant,
    /// Whether any request has started: before that the header timeout applies.
    served: bool,
}

/// Requests in progress on one connection.
#[derive(Debug, Clone)]
pub struct Activity(Arc<Mutex<ActivityState>>);

/// A request in progress; it ends when this is dropped.
pub struct InProgress(Activity);

impl Activity {
    pub fn new() -> Activity {
        Activity(Arc::new(Mutex::new(ActivityState { in_progress: 0, since: Instant::now(), served: false })))
    }

    pub fn start(&self) -> InProgress {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        state.in_progress += 1;
        state.served = true;
        InProgress(self.clone())
    }

    /// Resolves when the connection has had no request in progress for `idle` (or, before
    /// its first request, for `first`).
    pub async fn idle(&self, first: Duration, idle: Duration) {
        loop {
            let deadline = {
                let state = self.0.lock().unwrap_or_else(|p| p.into_inner());
                (state.in_progress == 0).then(|| state.since + if state.served { idle } else { first })
            };
            match deadline {
                Some(deadline) if deadline <= Instant::now() => return,
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                // Look again later: requests end without waking the watchdog.
                None => tokio::time::sleep(idle.min(first)).await,
            }
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let mut state = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
        state.in_progress -= 1;
        if state.in_progress == 0 {
            state.since = Instant::now();
        }
    }
}

/// A response body that keeps its request in progress until it is sent or dropped.
pub struct Tracked<B> {
    inner: B,
    _request: InProgress,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, request: InProgress) -> Self {
        Tracked { inner, _request: request }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a request body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("the client sent no request body byte for {0} s; the request was abandoned")]
    Stalled(u64),
    #[error("{0}")]
    Transport(#[from] hyper::Error),
}

/// A request body that fails when no frame arrives for `timeout` while it is being waited
/// for (a client that stops sending mid-body would otherwise hold its request, and whatever
/// the request holds, forever).
pub struct StallGuard<B> {
    inner: B,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> StallGuard<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        StallGuard { inner, timeout, timer: None }
    }
}

impl Body for StallGuard<hyper::body::Incoming> {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.timer = None;
                Poll::Ready(frame.map(|frame| frame.map_err(RequestBodyError::from)))
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(RequestBodyError::Stalled(timeout.as_secs())))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's socket whose writes fail with `TimedOut` when the peer has taken no byte for
/// `timeout` while there was something to write: a write (or flush, or shutdown) that stays
/// pending arms a timer, any progress disarms it. Reads pass through untouched (waiting for a
/// request is the watchdog's business, not this one's).
pub struct SendTimeout<S> {
    inner: S,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> SendTimeout<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        SendTimeout { inner, timeout, timer: None }
    }

    /// The outcome of a write-side poll: progress disarms the timer; pending arms it (the
    /// timer's waker is the task's, so a peer that never reads still gets the connection
    /// polled, and failed, when the time is up).
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.timer = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::debug!(
                            seconds = timeout.as_secs(),
                            "dropping a connection whose client reads nothing"
                        );
                        Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("the client read nothing for {} s", timeout.as_secs()),
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_slots_cap_each_address_and_come_back() {
        let slots = Arc::new(AddressSlots::default());
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap());
        let held: Vec<_> = (0..3).map(|_| slots.take(a, 3).expect("under the cap")).collect();
        assert!(slots.take(a, 3).is_none());
        assert!(slots.take(b, 3).is_some(), "other addresses are not affected");
        drop(held);
        assert!(slots.take(a, 3).is_some());
        assert!(slots.open.lock().unwrap().is_empty(), "released slots leave no entry behind");
    }

    #[tokio::test]
    async fn activity_is_idle_only_without_requests() {
        let activity = Activity::new();
        let (first, idle) = (Duration::from_millis(100), Duration::from_millis(300));
        let started = Instant::now();
        activity.idle(first, idle).await;
        assert!(started.elapsed() >= first && started.elapsed() < idle, "before the first request: the header timeout");
        let request = activity.start();
        let waiting = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle(first, idle).await }
        });
        tokio::time::sleep(idle * 3).await;
        assert!(!waiting.is_finished(), "a request in progress is never idle");
        drop(request);
        let ended = Instant::now();
        waiting.await.unwrap();
        assert!(ended.elapsed() >= idle, "idle counts from the end of the last request");
    }

    /// A write that the peer never drains fails after the timeout; one it drains does not.
    #[tokio::test]
    async fn writes_to_a_peer_that_reads_nothing_time_out() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let timeout = Duration::from_millis(300);
        let (near, far) = tokio::io::duplex(1024);
        let mut guarded = SendTimeout::new(near, timeout);
        guarded.write_all(&[7u8; 1024]).await.expect("the pipe holds one buffer");
        let started = Instant::now();
        let error = guarded.write_all(&[7u8; 1024]).await.expect_err("nobody reads");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= timeout && started.elapsed() < timeout * 4, "{:?}", started.elapsed());
        // A peer that reads slowly but steadily keeps the connection: each byte taken is progress.
        let (near, mut far2) = tokio::io::duplex(16);
        let reader = tokio::spawn(async move {
            let mut buffer = [0u8; 16];
            let mut total = 0;
            while total < 64 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                total += far2.read(&mut buffer).await.unwrap();
            }
            total
        });
        let mut guarded = SendTimeout::new(near, timeout);
        guarded.write_all(&[1u8; 64]).await.expect("a slow reader is not a stopped one");
        assert_eq!(reader.await.unwrap(), 64);
        drop(far);
    }
}
