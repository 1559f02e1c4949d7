//! Stalled workers. A parser worker that holds one reader batch far longer than a batch takes
//! (a parser or mapper bug looping, a deadlock) has stopped its share of the pipeline: its TCP
//! senders wait for ever and its UDP datagrams are dropped. A panic is seen when the thread
//! ends; a stall is seen only from outside, by how long the batch in hand has been there.
//!
//! Each worker publishes a [`Pulse`]; the supervising loop reads them ([`StallWatch::check`]).
//! Waiting is not stalling: a worker blocked on a full sink queue is backpressure, and one
//! waiting for input is idle, so neither counts. A stalled worker cannot be joined, so what it
//! holds (the unfinished part of its batch, its open sink batches) is kept in the pulse and
//! counted as lost by the pipeline when it gives up on the thread at shutdown (a worker that
//! panics counts its batch in hand from the pulse too).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bits of [`Pulse::busy`] holding the time; the source index is above them.
const TIME_BITS: u32 = 48;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// What a worker is doing, as the supervising loop sees it. Written by the worker only, with
/// relaxed stores (plain moves on x86): a reader sees values at most a few instructions old.
pub(super) struct Pulse {
    epoch: Instant,
    /// 0 while the worker waits (for input, or for room in a sink queue). Otherwise the
    /// source index of the batch in hand (high 16 bits) and when the worker took it or came
    /// back from a sink queue (milliseconds since `epoch`, plus 1, low 48 bits).
    busy: AtomicU64,
    /// Frames of the batch in hand, and how many of them are in sink batches.
    frames: AtomicU64,
    done: AtomicU64,
    /// Per sink the worker feeds (config order): events in its open batch.
    open_events: Box<[AtomicU64]>,
}

impl Pulse {
    pub fn new(epoch: Instant, sinks: usize) -> Pulse {
        Pulse {
            epoch,
            busy: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            done: AtomicU64::new(0),
            open_events: (0..sinks).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn stamp(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.epoch).as_millis() as u64 + 1) & TIME_MASK
    }

    /// The worker took a batch of `frames` from `source` at `at`.
    #[inline]
    pub fn begin(&self, at: Instant, source: u16, frames: u64) {
        self.done.store(0, Ordering::Relaxed);
        self.frames.store(frames, Ordering::Relaxed);
        self.busy.store(
            (u64::from(source) << TIME_BITS) | self.stamp(at),
            Ordering::Relaxed,
        );
    }

    /// `done` frames of the batch in hand are in sink batches.
    #[inline(always)]
    pub fn done(&self, done: u64) {
        self.done.store(done, Ordering::Relaxed);
    }

    /// The open batch of sink number `sink` holds `events`.
    #[inline(always)]
    pub fn open_events(&self, sink: usize, events: u64) {
        if let Some(slot) = self.open_events.get(sink) {
            slot.store(events, Ordering::Relaxed);
        }
    }

    /// The batch in hand is finished.
    #[inline]
    pub fn end(&self) {
        self.busy.store(0, Ordering::Relaxed);
        self.frames.store(0, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
    }

    /// The worker is about to wait for room in a sink queue; returns what to hand
    /// [`Self::back_from_sink`].
    #[inline]
    pub fn wait_for_sink(&self) -> u64 {
        self.busy.swap(0, Ordering::Relaxed)
    }

    /// The wait is over (`before` from [`Self::wait_for_sink`]): a batch in hand counts again,
    /// from now.
    #[inline]
    pub fn back_from_sink(&self, before: u64) {
        if before != 0 {
            let source = before & !TIME_MASK;
            self.busy
                .store(source | self.stamp(Instant::now()), Ordering::Relaxed);
        }
    }

    /// The source index of the batch in hand and how long it has been held at `now`; `None`
    /// while the worker waits.
    pub fn in_hand(&self, now: Instant) -> Option<(u16, Duration)> {
        let busy = self.busy.load(Ordering::Relaxed);
        if busy == 0 {
            return None;
        }
        let since = Duration::from_millis((busy & TIME_MASK) - 1);
        let held = now
            .saturating_duration_since(self.epoch)
            .saturating_sub(since);
        Some(((busy >> TIME_BITS) as u16, held))
    }

    /// The batch in hand, if any: its source index, its frames not yet in sink batches and
    /// those that are. What a worker that panicked or was given up on held.
    pub fn batch_in_hand(&self) -> Option<(u16, u64, u64)> {
        let busy = self.busy.load(Ordering::Relaxed);
        if busy == 0 {
            return None;
        }
        let frames = self.frames.load(Ordering::Relaxed);
        let done = self.done.load(Ordering::Relaxed).min(frames);
        Some(((busy >> TIME_BITS) as u16, frames - done, done))
    }

    /// Events in each sink's open batch (config order).
    pub fn open_batch_events(&self) -> impl Iterator<Item = u64> + '_ {
        self.open_events.iter().map(|e| e.load(Ordering::Relaxed))
    }
}

/// The workers' pulses and which of them were found stalled.
pub(super) struct StallWatch {
    /// `pipeline.worker_stall_ms`; `None`: the check is off.
    after: Option<Duration>,
    pub pulses: Vec<std::sync::Arc<Pulse>>,
    /// Per worker: found stalled (it stays so: its queues are drained and counted from then on).
    stalled: Mutex<Vec<bool>>,
    /// What [`Self::check`] said first.
    first: Mutex<Option<String>>,
}

impl StallWatch {
    pub fn new(after_ms: u64, pulses: Vec<std::sync::Arc<Pulse>>) -> StallWatch {
        StallWatch {
            after: (after_ms > 0).then(|| Duration::from_millis(after_ms)),
            stalled: Mutex::new(vec![false; pulses.len()]),
            pulses,
            first: Mutex::new(None),
        }
    }

    /// Looks for workers that have held one batch for `pipeline.worker_stall_ms`; returns the
    /// first stall found, now or earlier, as the reason the daemon stops. `source_name` names
    /// a source index.
    pub fn check(&self, now: Instant, source_name: impl Fn(u16) -> String) -> Option<String> {
        let after = self.after?;
        let mut stalled = self.stalled.lock().unwrap_or_else(|p| p.into_inner());
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        for (worker, pulse) in self.pulses.iter().enumerate() {
            let Some((source, held)) = pulse.in_hand(now) else {
                continue;
            };
            if held < after || stalled[worker] {
                continue;
            }
            stalled[worker] = true;
            let why = format!(
                "worker {worker} stalled: it has held one batch from source `{}` for {} s \
                 (pipeline.worker_stall_ms = {})",
                source_name(source),
                held.as_secs(),
                after.as_millis()
            );
            tracing::error!("{why}; stopping: what it holds is counted as lost");
            first.get_or_insert(why);
        }
        first.clone()
    }

    /// Whether `worker` was found stalled.
    pub fn is_stalled(&self, worker: usize) -> bool {
        let stalled = self.stalled.lock().unwrap_or_else(|p| p.into_inner());
        stalled.get(worker).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_in_hand_counts_and_waiting_does_not() {
        let epoch = Instant::now();
        let pulse = Pulse::new(epoch, 2);
        let at = |ms| epoch + Duration::from_millis(ms);
        assert_eq!(pulse.in_hand(at(5_000)), None, "idle");
        pulse.begin(at(1_000), 7, 10);
        assert_eq!(pulse.in_hand(at(4_000)), Some((7, Duration::from_secs(3))));
        pulse.done(4);
        pulse.open_events(1, 9);
        pulse.open_events(2, 99); // no third sink: ignored
        assert_eq!(pulse.batch_in_hand(), Some((7, 6, 4)));
        assert_eq!(pulse.open_batch_events().collect::<Vec<_>>(), [0, 9]);

        let before = pulse.wait_for_sink();
        assert_eq!(
            pulse.in_hand(at(60_000)),
            None,
            "backpressure is not a stall"
        );
        pulse.back_from_sink(before);
        let (source, held) = pulse.in_hand(Instant::now()).unwrap();
        assert_eq!(source, 7, "the source survives the wait");
        assert!(
            held < Duration::from_secs(1),
            "{held:?}: counted from the wait's end"
        );

        pulse.end();
        assert_eq!(pulse.in_hand(at(60_000)), None);
        assert_eq!(pulse.batch_in_hand(), None);
        assert_eq!(pulse.open_batch_events().collect::<Vec<_>>(), [0, 9]);
        // Nothing was in hand before the wait: nothing is after it either.
        let before = pulse.wait_for_sink();
        pulse.back_from_sink(before);
        assert_eq!(pulse.in_hand(at(60_000)), None);
    }

    #[test]
    fn a_worker_is_stalled_once_it_held_a_batch_for_the_limit() {
        let epoch = Instant::now();
        let pulses: Vec<_> = (0..2)
            .map(|_| std::sync::Arc::new(Pulse::new(epoch, 1)))
            .collect();
        let watch = StallWatch::new(60_000, pulses.clone());
        let at = |ms| epoch + Duration::from_millis(ms);
        let name = |source: u16| format!("s{source}");
        pulses[1].begin(at(0), 3, 100);
        assert_eq!(watch.check(at(59_999), name), None);
        assert!(!watch.is_stalled(1));
        let why = watch.check(at(60_000), name).unwrap();
        assert_eq!(
            why,
            "worker 1 stalled: it has held one batch from source `s3` for 60 s \
             (pipeline.worker_stall_ms = 60000)"
        );
        assert!(watch.is_stalled(1) && !watch.is_stalled(0));
        // The first stall stays the reason, even once the worker moves on.
        pulses[1].end();
        assert_eq!(watch.check(at(120_000), name), Some(why));

        let off = StallWatch::new(0, pulses.clone());
        pulses[0].begin(at(0), 0, 1);
        assert_eq!(off.check(at(3_600_000), name), None);
        assert!(!off.is_stalled(0));
    }
}
