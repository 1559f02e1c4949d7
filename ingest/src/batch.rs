//! Batching of mapped events per sink: one [`Batcher`] per (sink, worker core).
//!
//! Events are mapped straight into the batch buffer (no per-event allocation); a batch is
//! sealed when it reaches `max_events` or `max_bytes`, or `timeout` after its first event.

use std::time::{Duration, Instant};

use crate::config::BatchLimits;
use crate::sink::Batch;

/// A sealed batch on its way to a sink's compression and delivery stage.
#[derive(Debug)]
pub struct SealedBatch {
    pub batch: Batch,
    /// The worker core that produced it (used in file names).
    pub core: usize,
    /// When its first event was mapped (for the batch-latency histogram).
    pub opened_at: Instant,
    /// Commit acknowledgements of the source batches whose events are in here (API sources;
    /// empty for socket readers). The sink stage drops them once the batch is spooled, or
    /// fails them first (see `pipeline::ack`).
    pub acks: Vec<crate::pipeline::ack::AckToken>,
}

/// Room reserved past `max_bytes` for the event that fills a batch; a larger one (a rare
/// multi-KiB JSON alert) regrows the buffer once.
const LAST_EVENT_HEADROOM: usize = 64 * 1024;

pub struct Batcher {
    limits: BatchLimits,
    core: usize,
    buf: Vec<u8>,
    events: u64,
    opened_at: Option<Instant>,
    /// Moved into the sealed batch (see [`SealedBatch::acks`]).
    acks: Vec<crate::pipeline::ack::AckToken>,
}

impl Batcher {
    pub fn new(limits: BatchLimits, core: usize) -> Self {
        Batcher {
            limits,
            core,
            buf: Vec::new(),
            events: 0,
            opened_at: None,
            acks: Vec::new(),
        }
    }

    /// Appends one event: `write` appends exactly one JSON value to the buffer. A newline is
    /// added here. Returns true when the batch should now be sealed.
    #[inline]
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        if self.opened_at.is_none() {
            self.opened_at = Some(Instant::now());
            // A full batch is max_bytes plus the one event that crossed it. Reserving both
            // once keeps the buffer from being regrown while it fills: the crossing event
            // used to double a 4 MiB buffer, copying it into 8 MiB of fresh pages.
            let wanted = self.limits.max_bytes.min(64 << 20) + LAST_EVENT_HEADROOM;
            if self.buf.capacity() < wanted {
                self.buf.reserve(wanted);
            }
        }
        write(&mut self.buf);
        self.buf.push(b'\n');
        self.events += 1;
        self.events as usize >= self.limits.max_events || self.buf.len() >= self.limits.max_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    pub fn len(&self) -> u64 {
        self.events
    }

    /// When the open batch must be sealed at the latest; `None` when empty.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + self.limits.timeout)
    }

    pub fn timed_out(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }

    /// Seals the open batch (if any) and starts a new one. `spare` is an emptied buffer to reuse.
    pub fn seal(&mut self, spare: Option<Vec<u8>>) -> Option<SealedBatch> {
        let opened_at = self.opened_at.take()?;
        let mut next = spare.unwrap_or_default();
        next.clear();
        let ndjson = std::mem::replace(&mut self.buf, next);
        let events = std::mem::take(&mut self.events);
        Some(SealedBatch {
            batch: Batch { events, ndjson },
            core: self.core,
            opened_at,
            acks: std::mem::take(&mut self.acks),
        })
    }

    /// Records that the event just pushed belongs to the source batch of `token`: the token is
    /// released only when this batch is committed. Call before sealing.
    pub fn attach_ack(&mut self, token: &crate::pipeline::ack::AckToken) {
        crate::pipeline::ack::attach(&mut self.acks, token);
    }

    pub fn timeout(&self) -> Duration {
        self.limits.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_events: usize, max_bytes: usize) -> BatchLimits {
        BatchLimits {
            max_events,
            max_bytes,
            timeout: Duration::from_millis(50),
        }
    }

    #[test]
    fn seals_on_event_count() {
        let mut b = Batcher::new(limits(3, 1 << 20), 1);
        assert!(!b.push_with(|o| o.extend_from_slice(b"1")));
        assert!(!b.push_with(|o| o.extend_from_slice(b"2")));
        assert!(b.push_with(|o| o.extend_from_slice(b"3")));
        let s = b.seal(None).unwrap();
        assert_eq!(s.batch.events, 3);
        assert_eq!(s.batch.ndjson, b"1\n2\n3\n");
        assert_eq!(s.core, 1);
        assert!(b.is_empty() && b.seal(None).is_none());
    }

    #[test]
    fn the_event_that_fills_a_batch_does_not_regrow_it() {
        let mut b = Batcher::new(limits(100, 1000), 0);
        let event = [b'x'; 299];
        b.push_with(|o| o.extend_from_slice(&event));
        let first = b.buf.as_ptr();
        let mut full = false;
        while !full {
            full = b.push_with(|o| o.extend_from_slice(&event));
        }
        assert!(b.buf.len() > 1000);
        assert_eq!(b.buf.as_ptr(), first, "the buffer was reallocated");
    }

    #[test]
    fn seals_on_bytes_and_timeout() {
        let mut b = Batcher::new(limits(100, 10), 0);
        assert!(!b.push_with(|o| o.extend_from_slice(b"12345")));
        assert!(b.push_with(|o| o.extend_from_slice(b"12345")));
        b.seal(None).unwrap();
        assert!(b.deadline().is_none());
        b.push_with(|o| o.extend_from_slice(b"x"));
        let d = b.deadline().unwrap();
        assert!(!b.timed_out(d - Duration::from_millis(1)));
        assert!(b.timed_out(d));
    }
}
