//! Delivery threads of one sink: compress and write sealed batches, off the receive path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};

use crate::batch::SealedBatch;
use crate::metrics::SinkCounters;
use crate::pipeline::Totals;
use crate::sink::file::{DELIVERY_CORE, FileSink};

/// How long a failing sink keeps retrying once shutdown has begun before it gives up (and
/// counts the events as dropped) so the process can exit.
const SHUTDOWN_RETRY_BUDGET: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One variant per sink type that the pipeline drives directly.
#[derive(Clone)]
pub(super) enum SinkTarget {
    File(Arc<FileSink>),
}

pub(super) struct SinkStage {
    pub name: String,
    pub target: SinkTarget,
    pub queue: Receiver<SealedBatch>,
    pub spare: Sender<Vec<u8>>,
    pub counters: SinkCounters,
    pub totals: Arc<Totals>,
    pub draining: Arc<AtomicBool>,
}

impl SinkStage {
    pub fn run(self) {
        for sealed in self.queue.iter() {
            self.deliver(&sealed);
            let mut buf = sealed.batch.ndjson;
            buf.clear();
            let _ = self.spare.try_send(buf);
        }
    }

    fn deliver(&self, sealed: &SealedBatch) {
        DELIVERY_CORE.with(|c| c.set(sealed.core));
        let batch = &sealed.batch;
        let mut backoff = Duration::from_millis(100);
        let mut failing_since: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let result = match &self.target {
                SinkTarget::File(file) => file
                    .write_batch(batch, sealed.core)
                    .map(|w| (w.compressed_bytes, w.compress_time)),
            };
            match result {
                Ok((compressed, compress_time)) => {
                    self.counters.compress.record(compress_time.as_secs_f64());
                    self.counters.write.record(
                        started
                            .elapsed()
                            .saturating_sub(compress_time)
                            .as_secs_f64(),
                    );
                    self.counters
                        .end_to_end
                        .record(sealed.opened_at.elapsed().as_secs_f64());
                    self.counters.events.increment(batch.events);
                    self.counters.batches.increment(1);
                    self.counters.bytes_raw.increment(batch.ndjson.len() as u64);
                    self.counters.bytes_compressed.increment(compressed);
                    self.totals
                        .sink_events
                        .fetch_add(batch.events, Ordering::Relaxed);
                    self.totals.sink_batches.fetch_add(1, Ordering::Relaxed);
                    if failing_since.is_some() {
                        tracing::info!(sink = %self.name, "sink recovered");
                    }
                    return;
                }
                Err(e) => {
                    self.counters.errors.increment(1);
                    if failing_since.is_none() {
                        tracing::error!(sink = %self.name, events = batch.events, "delivery failed, retrying: {e}");
                    }
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if self.draining.load(Ordering::Relaxed)
                        && since.elapsed() >= SHUTDOWN_RETRY_BUDGET
                    {
                        tracing::error!(sink = %self.name, events = batch.events, "giving up on a batch at shutdown: {e}");
                        self.counters.dropped_events.increment(batch.events);
                        self.totals
                            .sink_dropped_events
                            .fetch_add(batch.events, Ordering::Relaxed);
                        return;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
