//! The reader side of the reader → worker queue: fills a [`FrameBatch`], hands it over, and
//! keeps the receive / drop counters (incremented per batch, not per message). Used by the
//! io_uring readers and by the portable UDP reader, so that both hold a batch back from a busy
//! worker in the same way. A UDP reader may also have a disk overflow ([`Overflow`]): batches
//! the full queue cannot take go there, and back into the queue, oldest first, as it frees up.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam::channel::{SendTimeoutError, TrySendError};
use metrics::{Counter, Gauge};

use crate::event::Timestamp;
use crate::log_every::{LOG_EVERY, LogEvery};
use crate::net::overflow::Overflow;
use crate::net::{FrameBatch, ReaderContext};

/// After shutdown is requested a blocked TCP reader keeps offering its last batch this long
/// (workers are still draining then); past it the batch is dropped and counted.
const SHUTDOWN_SEND_GRACE: Duration = Duration::from_secs(5);

/// Longest a reader holds a partial batch back from a busy worker before it blocks for more
/// input (see [`Handoff::end_wake_up`]).
pub const HANDOFF_HOLD: Duration = Duration::from_millis(1);

/// Oldest a held batch may get, however busy the worker: another source keeping the worker's
/// queue from ever running empty must not delay a trickle's messages until its batch fills.
pub const HANDOFF_MAX_AGE: Duration = Duration::from_millis(20);

pub(crate) struct Handoff {
    batch: FrameBatch,
    batch_max_frames: usize,
    batch_max_bytes: usize,
    /// The longest frame in the current batch: the batch counts as full once another one that
    /// long would take it past `batch_max_bytes`, so batch buffers stay within that size
    /// (their memory is what `queue_batches` multiplies) instead of doubling past it.
    largest_frame: usize,
    /// When the current batch got its first frame.
    started: Option<Instant>,
    /// How long the reader blocks (in the kernel, or on a full queue) before it looks at the
    /// shutdown flag again.
    poll: Duration,
    /// [`SHUTDOWN_SEND_GRACE`], shorter in tests.
    shutdown_grace: Duration,
    /// Messages and bytes taken off the socket since the last flush (including rejected ones).
    pending_messages: u64,
    pending_bytes: u64,
    pending_oversize: u64,
    pending_truncated: u64,
    received_messages: Counter,
    received_bytes: Counter,
    dropped_queue_full: Counter,
    dropped_oversize: Counter,
    truncated: Counter,
    spill: Option<Spill>,
    /// Totals for the exit log line and tests.
    pub totals: Totals,
}

/// The disk overflow and the batch read back from it that the queue had no room for yet
/// (it goes first: it is older than anything still in the file).
struct Spill {
    file: Overflow,
    source: std::sync::Arc<str>,
    read_back: Option<FrameBatch>,
    messages: Counter,
    bytes: Gauge,
    write_errors: Counter,
    read_errors: Counter,
    dropped_unreadable: Counter,
    error_log: LogEvery,
    full_log: LogEvery,
    start_log: LogEvery,
}

impl Spill {
    fn is_empty(&self) -> bool {
        self.read_back.is_none() && self.file.is_empty()
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub messages: u64,
    pub bytes: u64,
    pub batches: u64,
    pub dropped_queue_full: u64,
    pub dropped_oversize: u64,
    pub truncated: u64,
    /// Datagrams that went through the disk overflow.
    pub overflowed: u64,
    /// Datagrams lost because their overflow record could not be read back.
    pub dropped_overflow_error: u64,
}

impl Handoff {
    /// `poll`: see [`Handoff::wait_timeout`].
    pub fn new(ctx: &ReaderContext, batch_max_bytes: usize, poll: Duration) -> Self {
        let mut handoff = Handoff {
            batch: FrameBatch::default(),
            batch_max_frames: ctx.batch_max_frames.max(1),
            batch_max_bytes,
            largest_frame: 0,
            started: None,
            poll,
            shutdown_grace: SHUTDOWN_SEND_GRACE,
            pending_messages: 0,
            pending_bytes: 0,
            pending_oversize: 0,
            pending_truncated: 0,
            // The pipeline's counters: they also feed the daemon's exit totals.
            received_messages: ctx.counters.received_messages.clone(),
            received_bytes: ctx.counters.received_bytes.clone(),
            dropped_queue_full: ctx.counters.dropped_queue_full.clone(),
            dropped_oversize: ctx.counters.dropped_oversize.clone(),
            truncated: ctx.counters.truncated.clone(),
            spill: None,
            totals: Totals::default(),
        };
        handoff.fresh_batch(ctx);
        handoff
    }

    /// Sends batches the full queue cannot take to `overflow` instead of waiting (UDP only:
    /// a stream reader must wait, so that flow control slows its sender).
    pub fn with_overflow(mut self, ctx: &ReaderContext, overflow: Option<Overflow>) -> Self {
        self.spill = overflow.map(|file| Spill {
            file,
            source: ctx.source_name.clone(),
            read_back: None,
            messages: ctx.counters.overflow_messages.clone(),
            bytes: ctx.counters.overflow_bytes.clone(),
            write_errors: ctx.counters.overflow_write_errors.clone(),
            read_errors: ctx.counters.overflow_read_errors.clone(),
            dropped_unreadable: ctx.counters.dropped_overflow_error.clone(),
            error_log: LogEvery::new(LOG_EVERY),
            full_log: LogEvery::new(LOG_EVERY),
            start_log: LogEvery::new(Duration::from_secs(60)),
        });
        self
    }

    fn fresh_batch(&mut self, ctx: &ReaderContext) {
        self.batch = FrameBatch::reused(&ctx.recycled, ctx.source_index);
        self.batch_emptied();
    }

    /// Resets what describes the held batch's contents, once it holds none.
    fn batch_emptied(&mut self) {
        self.largest_frame = 0;
        self.started = None;
    }

    /// Counts `raw_bytes` taken off the socket.
    pub fn received_bytes(&mut self, raw_bytes: usize) {
        self.pending_bytes += raw_bytes as u64;
    }

    /// Appends one message; true when the batch should be handed over now.
    pub fn push(&mut self, bytes: &[u8], peer: Option<SocketAddr>, truncated: bool) -> bool {
        if self.batch.received_at.is_none() {
            self.batch.received_at = Some(Timestamp::now());
            self.started = Some(Instant::now());
        }
        self.batch.push(bytes, peer, truncated);
        self.largest_frame = self.largest_frame.max(bytes.len());
        self.pending_messages += 1;
        self.pending_truncated += u64::from(truncated);
        self.is_full()
    }

    /// A message dropped for its size (`oversize = "reject"`).
    pub fn rejected_oversize(&mut self) {
        self.pending_messages += 1;
        self.pending_oversize += 1;
    }

    pub fn is_full(&self) -> bool {
        self.batch.len() >= self.batch_max_frames
            || self.batch.data.len() + self.largest_frame > self.batch_max_bytes
    }

    fn count(&mut self) {
        settle(
            &mut self.pending_messages,
            &self.received_messages,
            &mut self.totals.messages,
        );
        settle(
            &mut self.pending_bytes,
            &self.received_bytes,
            &mut self.totals.bytes,
        );
        settle(
            &mut self.pending_oversize,
            &self.dropped_oversize,
            &mut self.totals.dropped_oversize,
        );
        settle(
            &mut self.pending_truncated,
            &self.truncated,
            &mut self.totals.truncated,
        );
    }

    fn drop_batch(&mut self) {
        self.lost_queue_full(self.batch.len() as u64);
        self.batch.clear();
    }

    /// Counts datagrams the reader held and no worker took (`reason="queue_full"`).
    fn lost_queue_full(&mut self, frames: u64) {
        self.dropped_queue_full.increment(frames);
        self.totals.dropped_queue_full += frames;
    }

    /// Ends a reader wake-up: hands the partial batch over when the worker has nothing
    /// queued, or when `nothing_new` (the wake-up brought no messages, so waiting longer would
    /// only add latency). While the worker is busy the batch keeps filling instead: under load
    /// the reader then hands over a few full batches rather than many small ones (each costs
    /// the worker a wake-up and the reader a queue operation), and an idle worker still gets
    /// the first message at once. The reader waits at most [`HANDOFF_HOLD`] with a held batch,
    /// and holds none longer than [`HANDOFF_MAX_AGE`].
    pub fn end_wake_up(&mut self, ctx: &ReaderContext, nothing_new: bool) -> io::Result<()> {
        let too_old = || self.started.is_some_and(|t| t.elapsed() >= HANDOFF_MAX_AGE);
        if nothing_new || ctx.to_worker.is_empty() || too_old() {
            self.flush_blocking(ctx)
        } else {
            self.count();
            Ok(())
        }
    }

    /// How long the reader may block in the kernel: briefly while it holds a partial batch
    /// (see [`Handoff::end_wake_up`]), else until the next shutdown check.
    pub fn wait_timeout(&self) -> Duration {
        // The overflow is emptied as the worker frees room, which the reader only sees awake.
        let spilled = self.spill.as_ref().is_some_and(|s| !s.is_empty());
        if self.batch.is_empty() && !spilled {
            self.poll
        } else {
            HANDOFF_HOLD
        }
    }

    /// Hands the held batch over. With a disk overflow (UDP), a full queue sends it to the
    /// overflow and the reader reads on; first, overflow batches move into the queue as far as
    /// it has room. Otherwise, and when the overflow is full, it waits for room in the worker
    /// queue, waking regularly to notice shutdown. The reader stops reading meanwhile: for
    /// TCP, flow control pushes back on the sender; for UDP, the socket's receive buffer
    /// (`receive_buffer_bytes`) absorbs the burst, and only what overflows it is lost, counted
    /// by the kernel (`reason="kernel_rcvbuf"`). Reading on and dropping here instead would
    /// lose datagrams while that buffer sat empty.
    pub fn flush_blocking(&mut self, ctx: &ReaderContext) -> io::Result<()> {
        self.count();
        if self.spill.is_some() {
            let overflow_empty = self.replay(ctx)?;
            if self.batch.is_empty() {
                return Ok(());
            }
            if overflow_empty {
                match ctx.to_worker.try_send(std::mem::take(&mut self.batch)) {
                    Ok(()) => {
                        self.totals.batches += 1;
                        self.fresh_batch(ctx);
                        return Ok(());
                    }
                    Err(TrySendError::Full(back)) => self.batch = back,
                    Err(TrySendError::Disconnected(back)) => {
                        self.batch = back;
                        self.drop_batch();
                        return Err(worker_gone());
                    }
                }
            }
            // The queue is full, or older datagrams wait in the overflow: this batch goes
            // behind them.
            if self.spill_batch() {
                return Ok(());
            }
            // The overflow is full (or failing): wait for the worker, oldest first, until the
            // batch fits in the overflow again or the overflow has run empty.
            while self.spill.as_ref().is_some_and(|s| !s.is_empty()) {
                if !self.replay_one_blocking(ctx)? {
                    // Shutdown's grace ran out: the batch meets the same fate below.
                    break;
                }
                if self.spill_batch() {
                    return Ok(());
                }
            }
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        match self.send_blocking(ctx, batch)? {
            None => {
                self.totals.batches += 1;
                self.fresh_batch(ctx);
            }
            Some(back) => {
                tracing::error!(
                    source = %ctx.source_name,
                    frames = back.len(),
                    "worker queue still full at shutdown; dropping the reader's last batch"
                );
                self.batch = back;
                self.drop_batch();
            }
        }
        Ok(())
    }

    /// At reader exit: hands over the held batch and everything in the overflow (the workers
    /// are still draining). What the workers cannot take within the shutdown grace is dropped
    /// and counted.
    pub fn finish(&mut self, ctx: &ReaderContext) -> io::Result<()> {
        self.flush_blocking(ctx)?;
        while self.spill.as_ref().is_some_and(|s| !s.is_empty()) {
            if !self.replay_one_blocking(ctx)? {
                let spill = self.spill.as_mut().expect("checked above");
                let mut lost = spill.read_back.take().map_or(0, |b| b.len() as u64);
                spill.bytes.decrement(spill.file.unread_bytes() as f64);
                lost += spill.file.discard();
                tracing::error!(
                    source = %ctx.source_name,
                    frames = lost,
                    "worker queue still full at shutdown; dropping what the disk overflow held"
                );
                self.lost_queue_full(lost);
            }
        }
        Ok(())
    }

    /// Appends the held batch to the overflow; false (batch kept) when it does not fit or the
    /// write failed.
    fn spill_batch(&mut self) -> bool {
        let Some(spill) = self.spill.as_mut() else {
            return false;
        };
        if !spill.file.has_room(&self.batch) {
            if spill.full_log.permit().is_some() {
                tracing::warn!(
                    source = %spill.source,
                    held_bytes = spill.file.bytes_held(),
                    "the UDP disk overflow is full (overflow_max_bytes); the reader waits for \
                     the worker and the socket's receive buffer takes the rest"
                );
            }
            return false;
        }
        if spill.is_empty() && spill.start_log.permit().is_some() {
            tracing::info!(
                source = %spill.source,
                "worker queue full: UDP datagrams go to the disk overflow until the worker catches up"
            );
        }
        match spill.file.push(&self.batch) {
            Ok(bytes) => {
                let n = self.batch.len() as u64;
                spill.messages.increment(n);
                spill.bytes.increment(bytes as f64);
                self.totals.overflowed += n;
                // The buffers stay with the reader; only the frames moved to disk.
                self.batch.clear();
                self.batch_emptied();
                true
            }
            Err(e) => {
                spill.write_errors.increment(1);
                if spill.error_log.permit().is_some() {
                    tracing::error!(
                        source = %spill.source,
                        "writing to the UDP disk overflow failed: {e}; the reader waits for the worker instead"
                    );
                }
                false
            }
        }
    }

    /// The next batch to hand over from the overflow, read back if need be. Records that
    /// cannot be read are counted as lost and skipped.
    fn next_spilled(&mut self, ctx: &ReaderContext) -> Option<FrameBatch> {
        let spill = self.spill.as_mut()?;
        if let Some(batch) = spill.read_back.take() {
            return Some(batch);
        }
        loop {
            let mut batch = FrameBatch::reused(&ctx.recycled, ctx.source_index);
            // The gauge is shared by the source's readers: only this record's bytes come off.
            match spill.file.pop_into(&mut batch)? {
                Ok(bytes) => {
                    spill.bytes.decrement(bytes as f64);
                    return Some(batch);
                }
                Err(lost) => {
                    spill.bytes.decrement(lost.bytes as f64);
                    spill.read_errors.increment(1);
                    spill.dropped_unreadable.increment(u64::from(lost.frames));
                    self.totals.dropped_overflow_error += u64::from(lost.frames);
                    tracing::error!(source = %ctx.source_name, frames = lost.frames, "{}; its datagrams are lost", lost.error);
                }
            }
        }
    }

    /// Moves overflow batches into the worker queue while it has room, without waiting;
    /// true when the overflow is empty afterwards.
    fn replay(&mut self, ctx: &ReaderContext) -> io::Result<bool> {
        loop {
            match &self.spill {
                None => return Ok(true),
                Some(s) if s.is_empty() => return Ok(true),
                // Reading a record back only to find no room would waste the read.
                Some(s) if s.read_back.is_none() && ctx.to_worker.is_full() => return Ok(false),
                Some(_) => {}
            }
            let Some(batch) = self.next_spilled(ctx) else {
                continue;
            };
            match ctx.to_worker.try_send(batch) {
                Ok(()) => self.totals.batches += 1,
                Err(TrySendError::Full(back)) => {
                    self.spill.as_mut().expect("checked above").read_back = Some(back);
                    return Ok(false);
                }
                Err(TrySendError::Disconnected(back)) => {
                    self.lost_queue_full(back.len() as u64);
                    return Err(worker_gone());
                }
            }
        }
    }

    /// Waits until the oldest overflow batch is in the worker queue; false when shutdown's
    /// grace ran out first (the batch is kept).
    fn replay_one_blocking(&mut self, ctx: &ReaderContext) -> io::Result<bool> {
        let Some(batch) = self.next_spilled(ctx) else {
            return Ok(true);
        };
        match self.send_blocking(ctx, batch) {
            Ok(None) => {
                self.totals.batches += 1;
                Ok(true)
            }
            Ok(Some(back)) => {
                self.spill.as_mut().expect("batch came from it").read_back = Some(back);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Waits for room in the worker queue, waking regularly to notice shutdown; gives the
    /// batch back when shutdown's grace runs out first.
    fn send_blocking(
        &mut self,
        ctx: &ReaderContext,
        mut batch: FrameBatch,
    ) -> io::Result<Option<FrameBatch>> {
        let mut grace_until: Option<Instant> = None;
        loop {
            match ctx.to_worker.send_timeout(batch, self.poll) {
                Ok(()) => return Ok(None),
                Err(SendTimeoutError::Timeout(back)) => {
                    batch = back;
                    if ctx.shutdown.load(Ordering::Relaxed) {
                        let deadline = *grace_until
                            .get_or_insert_with(|| Instant::now() + self.shutdown_grace);
                        if Instant::now() >= deadline {
                            return Ok(Some(batch));
                        }
                    }
                }
                Err(SendTimeoutError::Disconnected(back)) => {
                    self.lost_queue_full(back.len() as u64);
                    return Err(worker_gone());
                }
            }
        }
    }
}

/// Moves a pending count into its metric and its total.
fn settle(pending: &mut u64, counter: &Counter, total: &mut u64) {
    if *pending > 0 {
        counter.increment(*pending);
        *total += *pending;
        *pending = 0;
    }
}

fn worker_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the parser worker's queue is closed",
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use crossbeam::channel::{Receiver, Sender, bounded};

    use super::*;
    use crate::frame::{FrameLimits, Framing};
    use crate::metrics::ReaderCounters;

    const FRAMES_PER_BATCH: usize = 8;

    fn context(to_worker: Sender<FrameBatch>, recycled: Receiver<FrameBatch>) -> ReaderContext {
        ReaderContext {
            source_index: 2,
            source_name: Arc::from("test"),
            core: 0,
            limits: FrameLimits::default(),
            framing: Framing::Lf,
            batch_max_frames: FRAMES_PER_BATCH,
            to_worker,
            recycled,
            shutdown: Arc::new(AtomicBool::new(false)),
            max_connections: 0,
            pin: false,
            counters: ReaderCounters::noop(),
            guard: crate::net::guard::ConnectionGuard::unlimited(),
            overflow: None,
            linger: crate::net::DEFAULT_READER_LINGER,
        }
    }

    /// Pushes messages `m0 .. m{count}` through a handoff whose worker queue holds two
    /// batches, with an overflow of `overflow_bytes`, a worker that starts taking batches
    /// after `worker_delay`, and returns what the worker got plus the reader's totals.
    fn run(count: usize, overflow_bytes: u64, worker_delay: Duration) -> (Vec<String>, Totals) {
        let dir = tempfile::tempdir().unwrap();
        let (to_worker, queue) = bounded(2);
        let (_recycle, recycled) = bounded(4);
        let ctx = context(to_worker, recycled);
        let overflow = Overflow::create(dir.path(), overflow_bytes).unwrap();
        let worker = std::thread::spawn(move || {
            std::thread::sleep(worker_delay);
            let mut got = Vec::new();
            for batch in queue {
                assert_eq!(batch.source, 2);
                for f in &batch.frames {
                    got.push(String::from_utf8(batch.frame(f).to_vec()).unwrap());
                }
            }
            got
        });
        let mut handoff = Handoff::new(&ctx, 1 << 20, Duration::from_millis(10))
            .with_overflow(&ctx, Some(overflow));
        for i in 0..count {
            if handoff.push(format!("m{i}").as_bytes(), None, false) {
                handoff.flush_blocking(&ctx).unwrap();
            }
        }
        handoff.finish(&ctx).unwrap();
        let totals = handoff.totals;
        drop(handoff);
        drop(ctx);
        (worker.join().unwrap(), totals)
    }

    fn in_order(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn a_full_queue_goes_to_the_overflow_and_comes_back_in_order() {
        // The worker sleeps through the whole burst: the reader must not wait for it.
        let started = Instant::now();
        let (got, totals) = run(4_000, 64 << 20, Duration::from_millis(300));
        assert_eq!(got, in_order(4_000));
        assert!(
            totals.overflowed >= 4_000 - 3 * FRAMES_PER_BATCH as u64,
            "all but what the queue held went through the overflow: {totals:?}"
        );
        assert_eq!(totals.dropped_queue_full, 0);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_full_overflow_waits_for_the_worker_and_loses_nothing() {
        // Room for about three batches: the reader must wait in turn, oldest first.
        let (got, totals) = run(2_000, 700, Duration::from_millis(100));
        assert_eq!(got, in_order(2_000));
        assert!(totals.overflowed > 0, "{totals:?}");
        assert_eq!(totals.dropped_queue_full, 0);
    }

    /// A worker that takes nothing at shutdown: after the grace, whatever the reader holds
    /// (in its batch and its overflow, full or not) is dropped and counted, and the reader
    /// stops instead of waiting for ever.
    #[test]
    fn a_stuck_worker_at_shutdown_loses_the_overflow_counted() {
        // Room for two records in the second case: six batches fill queue and overflow and
        // leave two to wait for the grace (each flush waits for it once the overflow is full).
        for (overflow_bytes, count) in [(64 << 20, 1_000), (700, 6 * FRAMES_PER_BATCH)] {
            let dir = tempfile::tempdir().unwrap();
            let (to_worker, queue) = bounded(2);
            let (_recycle, recycled) = bounded(4);
            let ctx = context(to_worker, recycled);
            let overflow = Overflow::create(dir.path(), overflow_bytes).unwrap();
            let mut handoff = Handoff::new(&ctx, 1 << 20, Duration::from_millis(10))
                .with_overflow(&ctx, Some(overflow));
            handoff.shutdown_grace = Duration::from_millis(50);
            ctx.shutdown.store(true, Ordering::Relaxed);
            let started = Instant::now();
            for i in 0..count {
                if handoff.push(format!("m{i}").as_bytes(), None, false) {
                    handoff.flush_blocking(&ctx).unwrap();
                }
            }
            handoff.finish(&ctx).unwrap();
            assert!(started.elapsed() < Duration::from_secs(10));
            let queued: usize = queue.try_iter().map(|b| b.len()).sum();
            assert_eq!(queued, 2 * FRAMES_PER_BATCH);
            assert_eq!(
                handoff.totals.dropped_queue_full + queued as u64,
                count as u64,
                "{:?}",
                handoff.totals
            );
            assert!(handoff.totals.overflowed > 0);
        }
    }
}
