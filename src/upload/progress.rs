//! Progress on stderr: instances and bytes done, the rate on the wire, and the time left. On a
//! terminal one line is rewritten in place every second; otherwise (a log file, a pipe) a line
//! is printed every ten seconds.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counters the upload updates and the printer reads.
#[derive(Default)]
pub struct Progress {
    pub total_instances: AtomicU64,
    pub total_bytes: AtomicU64,
    /// Instances settled: sent, found present, or failed.
    pub done_instances: AtomicU64,
    /// Their bytes as found in the input.
    pub done_bytes: AtomicU64,
    /// The batch on the wire: its bytes before and after coding, and the coded bytes already
    /// sent of it (from the transport's counter at its start).
    pub batch_raw: AtomicU64,
    pub batch_wire: AtomicU64,
    pub batch_wire_start: AtomicU64,
    stopped: AtomicBool,
}

pub struct Printer {
    handle: Option<tokio::task::JoinHandle<()>>,
    progress: Arc<Progress>,
    tty: bool,
}

impl Printer {
    /// Starts printing (unless `quiet`); `wire_bytes` is the transport's counter.
    pub fn start(progress: Arc<Progress>, wire_bytes: Arc<AtomicU64>, quiet: bool) -> Printer {
        let tty = std::io::stderr().is_terminal();
        let handle = (!quiet).then(|| {
            let progress = progress.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let every = if tty { Duration::from_secs(1) } else { Duration::from_secs(10) };
                loop {
                    tokio::time::sleep(every).await;
                    if progress.stopped.load(Ordering::Relaxed) {
                        break;
                    }
                    let line = progress.line(start.elapsed(), wire_bytes.load(Ordering::Relaxed));
                    let mut stderr = std::io::stderr().lock();
                    let _ = if tty { write!(stderr, "\r\x1b[K{line}") } else { writeln!(stderr, "{line}") };
                    let _ = stderr.flush();
                }
            })
        });
        Printer { handle, progress, tty }
    }

    /// Stops printing and ends the in-place line.
    pub async fn stop(mut self) {
        self.progress.stopped.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            handle.abort();
            let _ = handle.await;
            if self.tty {
                eprint!("\r\x1b[K");
            }
        }
    }
}

impl Progress {
    /// `120/300 instances, 60.2/150.0 MiB, 1.95 Mbit/s, 2m10s left`.
    pub fn line(&self, elapsed: Duration, wire_bytes: u64) -> String {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let (total, done) = (load(&self.total_instances), load(&self.done_instances));
        let total_bytes = load(&self.total_bytes);
        // The batch in flight counts in proportion to its coded bytes sent.
        let (batch_raw, batch_wire) = (load(&self.batch_raw), load(&self.batch_wire));
        let batch_sent = wire_bytes.saturating_sub(load(&self.batch_wire_start)).min(batch_wire);
        let in_flight =
            if batch_wire == 0 { 0 } else { (batch_raw as u128 * batch_sent as u128 / batch_wire as u128) as u64 };
        let done_bytes = (load(&self.done_bytes) + in_flight).min(total_bytes);
        let seconds = elapsed.as_secs_f64().max(0.001);
        let rate_bits = wire_bytes as f64 * 8.0 / seconds;
        let left = if done_bytes == 0 {
            "time left unknown".to_string()
        } else {
            let remaining = (total_bytes - done_bytes) as f64 / (done_bytes as f64 / seconds);
            format!("{} left", duration_text(Duration::from_secs_f64(remaining.min(1e7))))
        };
        format!(
            "kura upload: {done}/{total} instances, {:.1}/{:.1} MiB, {}, {left}",
            mib(done_bytes),
            mib(total_bytes),
            rate_text(rate_bits)
        )
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn rate_text(bits_per_second: f64) -> String {
    if bits_per_second >= 1e6 {
        format!("{:.2} Mbit/s", bits_per_second / 1e6)
    } else {
        format!("{:.0} kbit/s", bits_per_second / 1e3)
    }
}

/// `4m12s`, `1h02m`, `38s`.
pub fn duration_text(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{:.1}s", duration.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}
