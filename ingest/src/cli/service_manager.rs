//! What `sluice run` tells the service manager that started it (systemd's notify protocol,
//! `Type=notify` in `deploy/sluice.service`):
//! - `READY=1` once every socket is bound, XDP is attached and root is dropped, so that
//!   `systemctl start` returns only then, and returns the failure when start-up fails (with
//!   `Type=simple` it reported success for a daemon that exited a moment later);
//! - `RELOADING=1` … `READY=1` around a SIGHUP reload, `STOPPING=1` when draining starts;
//! - `STATUS=`, a one-line summary `systemctl status` shows (counts, and a failed reload);
//! - `WATCHDOG=1` keep-alives while the supervising loop turns (`WatchdogSec=`): a daemon whose
//!   loop is stuck stops sending them and systemd restarts it. Pipeline threads that die are
//!   already caught by that loop ([`crate::pipeline::Pipeline::failed`]).
//!
//! Without `NOTIFY_SOCKET` (a terminal, another supervisor) nothing is sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::pipeline::Summary;

/// A status line is sent at most this often, and only when a count changed.
const STATUS_EVERY: Duration = Duration::from_secs(1);

pub struct ServiceManager {
    /// `NOTIFY_SOCKET` is set: a service manager listens.
    listening: bool,
    started: Instant,
    watchdog: Option<Watchdog>,
    /// When the last status was sent, and the summary it described.
    last_status: Option<(Instant, Summary)>,
    /// The last reload failed: said in every status until one succeeds.
    reload_failed: bool,
}

impl ServiceManager {
    pub fn from_env() -> ServiceManager {
        let listening = std::env::var_os("NOTIFY_SOCKET").is_some();
        let mut usec = 0;
        // `false`: the environment is never changed in a threaded process.
        let watchdog = (listening && sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
            .then(|| Watchdog::start(Duration::from_micros(usec)));
        ServiceManager {
            listening,
            started: Instant::now(),
            watchdog,
            last_status: None,
            reload_failed: false,
        }
    }

    /// Start-up is complete.
    pub fn ready(&mut self, summary: &Summary) {
        self.send(&[NotifyState::Ready]);
        self.status(summary);
    }

    /// A reload starts; [`Self::reloaded`] ends it.
    pub fn reloading(&self) {
        // systemd ≥ 253 (`Type=notify-reload`) requires the timestamp with RELOADING=1.
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn reloaded(&mut self, ok: bool, summary: &Summary) {
        self.reload_failed = !ok;
        self.send(&[NotifyState::Ready]);
        self.last_status = None;
        self.status(summary);
    }

    /// Draining starts. Keep-alives go on until the process exits: the drain is bounded by
    /// `shutdown_grace_ms` and the unit's `TimeoutStopSec`, not by the watchdog.
    pub fn stopping(&self, why: &str) {
        if let Some(watchdog) = &self.watchdog {
            watchdog.state.stopping.store(true, Ordering::Relaxed);
        }
        self.send(&[NotifyState::Stopping, NotifyState::Status(why)]);
    }

    /// One turn of the supervising loop: the watchdog's heartbeat, and the status line when
    /// it is due.
    pub fn tick(&mut self, summary: &Summary) {
        if let Some(watchdog) = &self.watchdog {
            watchdog.state.beat(self.started);
        }
        let due = match &self.last_status {
            None => true,
            Some((at, last)) => at.elapsed() >= STATUS_EVERY && last != summary,
        };
        if due {
            self.status(summary);
        }
    }

    fn status(&mut self, summary: &Summary) {
        if !self.listening {
            return;
        }
        let line = status_line(summary, self.reload_failed);
        self.send(&[NotifyState::Status(&line)]);
        self.last_status = Some((Instant::now(), *summary));
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.listening {
            return;
        }
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::warn!("notifying the service manager (NOTIFY_SOCKET): {e}");
        }
    }
}

/// What `systemctl status` shows beside "active (running)".
fn status_line(s: &Summary, reload_failed: bool) -> String {
    let lost = s.dropped_queue_full
        + s.dropped_oversize
        + s.dropped_kernel_rcvbuf
        + s.dropped_overflow_error
        + s.dropped_thread_panicked
        + s.dropped_worker_stalled;
    format!(
        "{}{} messages received, {} parse errors, {} lost; {} events to sinks, {} dropped",
        if reload_failed {
            "LAST RELOAD FAILED (see the log), running on the previous config; "
        } else {
            ""
        },
        s.received_messages,
        s.parse_errors,
        lost,
        s.sink_events,
        s.sink_dropped_events,
    )
}

/// Sends `WATCHDOG=1` from its own thread while the supervising loop's heartbeat is fresh, or
/// while draining (the loop is then blocked in the shutdown on purpose).
struct Watchdog {
    state: Arc<WatchdogState>,
}

#[derive(Default)]
struct WatchdogState {
    /// Milliseconds from start-up to the loop's last turn.
    beat_ms: AtomicU64,
    stopping: AtomicBool,
}

impl WatchdogState {
    fn beat(&self, started: Instant) {
        self.beat_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether a keep-alive may be sent `now_ms` after start-up: the loop turned within half
    /// the watchdog interval (it turns every 50 ms), or the daemon is draining.
    fn alive(&self, now_ms: u64, interval: Duration) -> bool {
        let silent_ms = now_ms.saturating_sub(self.beat_ms.load(Ordering::Relaxed));
        self.stopping.load(Ordering::Relaxed) || silent_ms < interval.as_millis() as u64 / 2
    }
}

impl Watchdog {
    fn start(interval: Duration) -> Watchdog {
        let state = Arc::new(WatchdogState::default());
        let started = Instant::now();
        state.beat(started);
        let thread_state = state.clone();
        let spawned = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                let mut withheld = false;
                loop {
                    // Four chances per interval: one late wake-up never costs a restart.
                    std::thread::sleep(interval / 4);
                    let now_ms = started.elapsed().as_millis() as u64;
                    if thread_state.alive(now_ms, interval) {
                        if withheld {
                            tracing::info!("supervising loop turning again: watchdog keep-alives resume");
                            withheld = false;
                        }
                        if let Err(e) = sd_notify::notify(false, &[NotifyState::Watchdog]) {
                            tracing::warn!("watchdog keep-alive (NOTIFY_SOCKET): {e}");
                        }
                    } else if !withheld {
                        withheld = true;
                        tracing::error!(
                            silent_ms = now_ms.saturating_sub(thread_state.beat_ms.load(Ordering::Relaxed)),
                            "the supervising loop has stopped turning: withholding watchdog keep-alives, so the service manager restarts the daemon"
                        );
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(
                "starting the watchdog thread: {e}; the service manager will restart the daemon when its watchdog interval passes"
            );
        }
        tracing::info!(
            interval_ms = interval.as_millis() as u64,
            "systemd watchdog enabled"
        );
        Watchdog { state }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alives_stop_when_the_loop_stops_turning_and_go_on_while_draining() {
        let state = WatchdogState::default();
        let interval = Duration::from_secs(30);
        state.beat_ms.store(1_000, Ordering::Relaxed);
        assert!(state.alive(1_000, interval));
        assert!(state.alive(15_999, interval));
        assert!(
            !state.alive(16_000, interval),
            "silent for half the interval"
        );
        state.stopping.store(true, Ordering::Relaxed);
        assert!(state.alive(60_000, interval), "draining");
    }

    #[test]
    fn status_line_counts_every_loss_and_says_a_reload_failed() {
        let summary = Summary {
            received_messages: 100,
            parsed_messages: 100,
            received_bytes: 9_000,
            parse_errors: 2,
            dropped_queue_full: 1,
            dropped_oversize: 2,
            dropped_kernel_rcvbuf: 3,
            overflowed: 50,
            dropped_overflow_error: 4,
            sink_events: 90,
            sink_batches: 3,
            sink_dropped_events: 5,
            dropped_thread_panicked: 5,
            sink_dropped_thread_panicked: 0,
            dropped_worker_stalled: 6,
            sink_dropped_worker_stalled: 0,
        };
        assert_eq!(
            status_line(&summary, false),
            "100 messages received, 2 parse errors, 21 lost; 90 events to sinks, 5 dropped"
        );
        assert!(status_line(&summary, true).starts_with("LAST RELOAD FAILED"));
    }
}
