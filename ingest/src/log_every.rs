//! Log lines about conditions that can repeat thousands of times a second (a sender's framing
//! errors, failed TLS handshakes, refused connections; kernel drops; a disk that refuses
//! writes) are rate limited: they must not flood the journal (journald then drops lines of
//! every kind, this daemon's important ones included). Every occurrence is still counted in its
//! metric; the log shows the first, then at most one per interval, saying how many it left out.
//! Readers share a source's limits ([`SourceLogs`]); other threads keep their own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a rate-limited line may repeat.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// One rate-limited kind of log line: a source's (shared by its threads, see [`SourceLogs`])
/// or one reader thread's own.
#[derive(Debug)]
pub struct LogEvery {
    epoch: Instant,
    interval_ms: u64,
    /// Milliseconds after `epoch` before which no line may be logged.
    next_ms: AtomicU64,
    /// Occurrences not logged since the last line.
    unlogged: AtomicU64,
}

impl LogEvery {
    pub fn new(interval: Duration) -> LogEvery {
        LogEvery {
            epoch: Instant::now(),
            interval_ms: interval.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    /// `Some(occurrences left out since the last line)` when this one may be logged.
    pub fn permit(&self) -> Option<u64> {
        let now = self.epoch.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        // One thread wins a due slot; the others count themselves as left out.
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.interval_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.unlogged.swap(0, Ordering::Relaxed));
        }
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// The rate-limited log lines of one source's readers.
#[derive(Debug)]
pub struct SourceLogs {
    /// TCP/TLS framing errors.
    pub framing: LogEvery,
    /// Failed TLS handshakes.
    pub handshake: LogEvery,
    /// Connections refused (allowlist, connection limits).
    pub refused: LogEvery,
}

impl Default for SourceLogs {
    fn default() -> Self {
        SourceLogs {
            framing: LogEvery::new(LOG_EVERY),
            handshake: LogEvery::new(LOG_EVERY),
            refused: LogEvery::new(LOG_EVERY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_logged_then_one_per_interval_with_the_count_left_out() {
        let log = LogEvery::new(Duration::from_millis(200));
        assert_eq!(log.permit(), Some(0));
        for _ in 0..1000 {
            assert_eq!(log.permit(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(log.permit(), Some(1000));
        assert_eq!(log.permit(), None);
    }

    #[test]
    fn threads_sharing_it_log_once_per_interval() {
        let log = std::sync::Arc::new(LogEvery::new(Duration::from_secs(60)));
        let logged: u64 = (0..4)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || {
                    (0..10_000).filter(|_| log.permit().is_some()).count() as u64
                })
            })
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(logged, 1);
        assert_eq!(log.unlogged.load(Ordering::Relaxed), 39_999);
    }
}
