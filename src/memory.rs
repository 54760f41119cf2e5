//! The process's memory budget: one byte-counting semaphore (in KiB) that every memory-heavy
//! piece of work draws from before it allocates, in proportion to what it will allocate (an
//! estimate from the stored record), and gives back only when the work has ended: store-time
//! parses, pixel decoding and transcoding, rendering, ZIP building and metadata responses.
//! With the budget held to `--memory-budget-mib`, what those requests can make the server
//! allocate at once is bounded, whatever their number, so RSS stays near the baseline plus the
//! budget.
//!
//! A reservation that can never fit (more than the whole budget) fails at once
//! ([`BudgetError::NeverFits`]); one that fits waits, at most [`MemoryBudget::wait`], for others to
//! end, then fails ([`BudgetError::Busy`]: 503 with Retry-After, or A700 for a STOW-RS part). A
//! [`MemoryPermit`] returns its bytes when dropped: owned by the blocking job, and by the bytes
//! it produced ([`MemoryPermit::attach`]), so a client that disconnects frees the budget exactly
//! when the memory is freed, not before.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The default budget: with a baseline of about 80 MiB (benches/README.md), a server that stays
/// near 240 MiB RSS while the budget is fully drawn. It is what rendering a 4096 × 3328 16-bit
/// mammogram takes (about 136 MiB: dicom-rs holds the object, the frame is decoded, windowed
/// through floating point and encoded); less would refuse such images by default.
pub const DEFAULT_BUDGET_MIB: u64 = 160;
/// How long a reservation waits for others to end before the request is answered 503.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// The Retry-After (seconds) of a 503 for a busy budget.
pub const RETRY_AFTER_SECS: u64 = 2;

const KIB: u64 = 1024;

/// Why a reservation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// The work needs more than the whole budget: it can never run.
    #[error("the work needs about {needed_mib} MiB of memory, more than the memory budget of {budget_mib} MiB")]
    NeverFits { needed_mib: u64, budget_mib: u64 },
    /// The work fits, but the budget stayed in use by other work for the whole wait.
    #[error("the memory budget stayed in use by other requests; retry later")]
    Busy,
}

/// The budget: `total` KiB of permits.
#[derive(Debug)]
pub struct MemoryBudget {
    semaphore: Arc<Semaphore>,
    total_kib: u32,
    wait: Duration,
}

impl MemoryBudget {
    /// A budget of `bytes` (at least 1 MiB, at most 4 TiB), reservations waiting at most `wait`.
    pub fn new(bytes: u64, wait: Duration) -> Arc<MemoryBudget> {
        let total_kib = (bytes / KIB).clamp(1024, u64::from(u32::MAX)) as u32;
        Arc::new(MemoryBudget { semaphore: Arc::new(Semaphore::new(total_kib as usize)), total_kib, wait })
    }

    /// The budget's size in bytes.
    pub fn total_bytes(&self) -> u64 {
        u64::from(self.total_kib) * KIB
    }

    /// Bytes not reserved now.
    pub fn available_bytes(&self) -> u64 {
        self.semaphore.available_permits() as u64 * KIB
    }

    /// How long a reservation waits.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    fn kib_of(&self, bytes: u64) -> Result<u32, BudgetError> {
        let kib = bytes.div_ceil(KIB).max(1);
        if kib > u64::from(self.total_kib) {
            return Err(BudgetError::NeverFits {
                needed_mib: bytes.div_ceil(KIB * KIB),
                budget_mib: u64::from(self.total_kib) / KIB,
            });
        }
        Ok(kib as u32)
    }

    /// Reserves `bytes`, waiting at most [`MemoryBudget::wait`] for them.
    pub async fn reserve(&self, bytes: u64) -> Result<MemoryPermit, BudgetError> {
        let kib = self.kib_of(bytes)?;
        let acquire = self.semaphore.clone().acquire_many_owned(kib);
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => Ok(MemoryPermit { permit }),
            _ => Err(BudgetError::Busy),
        }
    }

    /// [`MemoryBudget::reserve`] from a thread that may block (the blocking pool, or a thread
    /// outside any runtime); never from an async worker.
    pub fn reserve_blocking(&self, bytes: u64) -> Result<MemoryPermit, BudgetError> {
        let kib = self.kib_of(bytes)?;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            return handle.block_on(self.reserve(bytes));
        }
        let deadline = std::time::Instant::now() + self.wait;
        loop {
            if let Ok(permit) = self.semaphore.clone().try_acquire_many_owned(kib) {
                return Ok(MemoryPermit { permit });
            }
            if std::time::Instant::now() >= deadline {
                return Err(BudgetError::Busy);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Reserved bytes of the budget, given back when dropped.
#[derive(Debug)]
pub struct MemoryPermit {
    permit: OwnedSemaphorePermit,
}

impl MemoryPermit {
    /// Bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.permit.num_permits() as u64 * KIB
    }

    /// Keeps `bytes` of the reservation (rounded up to KiB, at least 1) and gives the rest back:
    /// once a job has ended, only what it produced stays allocated.
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = bytes.div_ceil(KIB).max(1) as usize;
        if keep < self.permit.num_permits() {
            drop(self.permit.split(self.permit.num_permits() - keep));
        }
    }

    /// `data` as [`Bytes`] that hold (a share of) this reservation: it is given back when the last
    /// of them is dropped, i.e. when the response has been sent or its client has gone.
    pub fn attach(self: &Arc<MemoryPermit>, data: Vec<u8>) -> Bytes {
        Bytes::from_owner(Budgeted { data, _permit: self.clone() })
    }
}

/// Bytes together with the reservation that accounts for them.
struct Budgeted {
    data: Vec<u8>,
    _permit: Arc<MemoryPermit>,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// Results of a job, each holding a share of the job's reservation shrunk to their total size.
pub fn attach_all(mut permit: MemoryPermit, results: Vec<Vec<u8>>) -> Vec<Bytes> {
    permit.shrink_to(results.iter().map(|r| r.len() as u64).sum());
    let permit = Arc::new(permit);
    results.into_iter().map(|data| permit.attach(data)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_never_fit_and_come_back_with_the_bytes() {
        let budget = MemoryBudget::new(4 << 20, Duration::from_millis(50));
        assert_eq!(budget.total_bytes(), 4 << 20);
        assert_eq!(budget.reserve(5 << 20).await.unwrap_err(), BudgetError::NeverFits { needed_mib: 5, budget_mib: 4 });
        let mut first = budget.reserve(3 << 20).await.unwrap();
        assert_eq!(budget.reserve(2 << 20).await.unwrap_err(), BudgetError::Busy);
        first.shrink_to(1 << 20);
        assert_eq!(budget.available_bytes(), 3 << 20);
        let bytes = attach_all(first, vec![vec![1; 1000], vec![2; 24]]);
        assert_eq!(budget.available_bytes(), (4 << 20) - 1024);
        let kept = bytes[1].clone();
        drop(bytes);
        assert_eq!(budget.available_bytes(), (4 << 20) - 1024, "a share still holds it");
        drop(kept);
        assert_eq!(budget.available_bytes(), 4 << 20);
        let blocking = std::thread::spawn({
            let budget = MemoryBudget::new(1 << 20, Duration::from_millis(20));
            move || {
                let held = budget.reserve_blocking(1 << 20).unwrap();
                (budget.reserve_blocking(1).unwrap_err(), held.bytes())
            }
        });
        assert_eq!(blocking.join().unwrap(), (BudgetError::Busy, 1 << 20));
    }
}
