//! Group commit: concurrent callers of `commit` share one flush.
//!
//! A caller registers after its own writes; the flusher takes every registration that is
//! waiting, runs one flush, and answers them all. A flush that starts after a registration
//! therefore covers that caller's writes, and while one flush runs the next batch gathers.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

type Waiter = oneshot::Sender<Result<(), Arc<str>>>;

/// Handle to a background flusher task.
#[derive(Clone)]
pub struct GroupCommit {
    requests: mpsc::UnboundedSender<Waiter>,
}

impl GroupCommit {
    /// Starts the flusher. `flush` must make every write issued before it was called durable.
    pub fn start<F, Fut>(flush: F) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        let (requests, mut receiver) = mpsc::unbounded_channel::<Waiter>();
        tokio::spawn(async move {
            while let Some(first) = receiver.recv().await {
                let mut waiters = vec![first];
                while let Ok(next) = receiver.try_recv() {
                    waiters.push(next);
                }
                let outcome = flush().await.map_err(Arc::<str>::from);
                tracing::trace!(batch = waiters.len(), "group commit");
                for waiter in waiters {
                    let _ = waiter.send(outcome.clone());
                }
            }
        });
        GroupCommit { requests }
    }

    /// Waits until a flush that started after this call has finished.
    pub async fn commit(&self) -> Result<(), Arc<str>> {
        let (sender, receiver) = oneshot::channel();
        self.requests.send(sender).map_err(|_| Arc::<str>::from("flusher stopped"))?;
        receiver.await.map_err(|_| Arc::<str>::from("flusher stopped"))?
    }
}
