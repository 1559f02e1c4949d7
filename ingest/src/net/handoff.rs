//! The reader side of the reader → worker queue: fills a [`FrameBatch`], hands it over, and
//! keeps the receive / drop counters (incremented per batch, not per message). Used by the
//! io_uring readers and by the portable UDP reader, so that both hold a batch back from a busy
//! worker in the same way.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam::channel::SendTimeoutError;
use metrics::Counter;

use crate::event::Timestamp;
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
    /// Totals for the exit log line and tests.
    pub totals: Totals,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub messages: u64,
    pub bytes: u64,
    pub batches: u64,
    pub dropped_queue_full: u64,
    pub dropped_oversize: u64,
    pub truncated: u64,
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
            totals: Totals::default(),
        };
        handoff.fresh_batch(ctx);
        handoff
    }

    fn fresh_batch(&mut self, ctx: &ReaderContext) {
        self.batch = FrameBatch::reused(&ctx.recycled, ctx.source_index);
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
        let n = self.batch.len() as u64;
        self.dropped_queue_full.increment(n);
        self.totals.dropped_queue_full += n;
        self.batch.clear();
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
        if self.batch.is_empty() {
            self.poll
        } else {
            HANDOFF_HOLD
        }
    }

    /// Waits for room in the worker queue, waking regularly to notice shutdown. The reader
    /// stops reading meanwhile: for TCP, flow control pushes back on the sender; for UDP, the
    /// socket's receive buffer (`receive_buffer_bytes`) absorbs the burst, and only what
    /// overflows it is lost, counted by the kernel (`reason="kernel_rcvbuf"`). Reading on and
    /// dropping here instead would lose datagrams while that buffer sat empty.
    pub fn flush_blocking(&mut self, ctx: &ReaderContext) -> io::Result<()> {
        self.count();
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.batch);
        let mut grace_until: Option<Instant> = None;
        loop {
            match ctx.to_worker.send_timeout(batch, self.poll) {
                Ok(()) => {
                    self.totals.batches += 1;
                    self.fresh_batch(ctx);
                    return Ok(());
                }
                Err(SendTimeoutError::Timeout(back)) => {
                    batch = back;
                    if ctx.shutdown.load(Ordering::Relaxed) {
                        let deadline = *grace_until
                            .get_or_insert_with(|| Instant::now() + SHUTDOWN_SEND_GRACE);
                        if Instant::now() >= deadline {
                            tracing::error!(
                                source = %ctx.source_name,
                                frames = batch.len(),
                                "worker queue still full at shutdown; dropping the reader's last batch"
                            );
                            self.batch = batch;
                            self.drop_batch();
                            return Ok(());
                        }
                    }
                }
                Err(SendTimeoutError::Disconnected(back)) => {
                    self.batch = back;
                    self.drop_batch();
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
