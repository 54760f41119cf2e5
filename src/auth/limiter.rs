//! Rate limit on failed authentications, per client address: a token bucket of
//! [`BURST`] failures that refills one token every [`REFILL`]. A failed authentication takes a
//! token; while an address has none left, every request from it that presents credentials is
//! answered 429 (Too Many Requests, with Retry-After) without looking at them, so guessing
//! (or a misconfigured client in a loop) costs the server nothing and fills no log. A request
//! without credentials takes no token: a browser asks without them first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures an address may have in a row before it is limited.
pub const BURST: f64 = 10.0;
/// One more failure allowed per this interval.
pub const REFILL: Duration = Duration::from_secs(6);
/// Addresses remembered at most; beyond it, the addresses whose buckets are full are forgotten
/// and, if that is not enough, all of them (a flood from many addresses then gets a fresh burst
/// each, which is still bounded).
const MAX_ADDRESSES: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, now: Instant) -> f64 {
        (self.tokens + now.duration_since(self.at).as_secs_f64() / REFILL.as_secs_f64()).min(BURST)
    }
}

#[derive(Debug, Default)]
pub struct FailureLimiter {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl FailureLimiter {
    /// `Err(seconds to wait)` while `address` has no failure left.
    pub fn check(&self, address: IpAddr) -> Result<(), u64> {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match buckets.get(&address) {
            Some(bucket) => {
                let tokens = bucket.refilled(Instant::now());
                if tokens >= 1.0 { Ok(()) } else { Err(((1.0 - tokens) * REFILL.as_secs_f64()).ceil().max(1.0) as u64) }
            }
            None => Ok(()),
        }
    }

    /// Takes a token for a failed authentication from `address`.
    pub fn failed(&self, address: IpAddr) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_ADDRESSES && !buckets.contains_key(&address) {
            buckets.retain(|_, bucket| bucket.refilled(now) < BURST);
            if buckets.len() >= MAX_ADDRESSES {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(address).or_insert(Bucket { tokens: BURST, at: now });
        *bucket = Bucket { tokens: (bucket.refilled(now) - 1.0).max(0.0), at: now };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_after_the_burst_per_address() {
        let limiter = FailureLimiter::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..BURST as usize {
            assert!(limiter.check(a).is_ok());
            limiter.failed(a);
        }
        let wait = limiter.check(a).expect_err("limited after the burst");
        assert!((1..=REFILL.as_secs()).contains(&wait), "{wait}");
        assert!(limiter.check(b).is_ok(), "other addresses are not limited");
    }
}
