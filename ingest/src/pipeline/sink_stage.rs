//! The pipeline's end: sealed batches go into each sink's spool ([`SinkHandle::enqueue`]); the
//! sink runtime delivers them from there (compression and uploads happen off the receive path).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use crossbeam::channel::{Receiver, Sender};

use crate::batch::SealedBatch;
use crate::config::credential::Renew;
use crate::config::{SinkConfig, SinkKind};
use crate::metrics::SinkCounters;
use crate::pipeline::{Lost, Totals};
use crate::sink::file::FileSink;
use crate::sink::runtime::{Enqueued, SinkHandle, SinkMetrics, SinkRuntime};
use crate::sink::{Batch, Delivery, Sink};

/// Unix ms of `at` (an `Instant` in the past).
fn unix_ms(at: Instant) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.saturating_sub(at.elapsed().as_millis() as u64)
}

/// Moves sealed batches from the workers into the spool. `enqueue` blocks under
/// `when_full = "block"`, which fills the sink queue, then the workers' queues: TCP readers
/// stop reading (backpressure) and UDP readers count their drops.
pub(super) struct SinkStage {
    pub name: String,
    pub handle: Arc<SinkHandle>,
    pub queue: Receiver<SealedBatch>,
    /// See [`sealed_batches`].
    pub closed: Receiver<()>,
    pub spare: Sender<Vec<u8>>,
    pub counters: SinkCounters,
    pub totals: Arc<Totals>,
}

impl SinkStage {
    pub fn run(self) {
        let mut in_hand = EventsInHand::new(&self.counters, &self.totals);
        for sealed in sealed_batches(&self.queue, &self.closed) {
            in_hand.events = sealed.batch.events;
            let events = sealed.batch.events;
            let dropped = match self
                .handle
                .enqueue_created(&sealed.batch, unix_ms(sealed.opened_at))
            {
                Enqueued::Accepted { dropped_events, .. } => {
                    if dropped_events > 0 {
                        tracing::warn!(sink = %self.name, events = dropped_events,
                            "spool full: dropped the oldest events (when_full = \"drop_oldest\")");
                    }
                    dropped_events
                }
                // Logged and counted by the runtime; counted here too for the exit summary.
                Enqueued::Refused => {
                    // ack hook: a source waiting on these events must not move past them.
                    for ack in &sealed.acks {
                        ack.fail();
                    }
                    events
                }
            };
            // Spooled or counted as refused: no longer this thread's to lose.
            in_hand.events = 0;
            // ack hook: spooled (or failed above); releasing the clones may run a source's
            // commit callback on this thread.
            drop(sealed.acks);
            if dropped > 0 {
                self.counters.dropped_events.increment(dropped);
                self.totals
                    .sink_dropped_events
                    .fetch_add(dropped, Ordering::Relaxed);
            }
            let mut buf = sealed.batch.ndjson;
            buf.clear();
            let _ = self.spare.try_send(buf);
        }
    }
}

/// The batches of `queue` until the workers are done: every sender is gone, or `closed` is
/// disconnected and the queue is empty. The pipeline disconnects `closed` once every worker
/// has finished or been given up on: a stalled worker still holds its sender.
fn sealed_batches<'a>(
    queue: &'a Receiver<SealedBatch>,
    closed: &'a Receiver<()>,
) -> impl Iterator<Item = SealedBatch> + 'a {
    std::iter::from_fn(move || {
        crossbeam::select! {
            recv(queue) -> sealed => sealed.ok(),
            recv(closed) -> _ => queue.try_recv().ok(),
        }
    })
}

/// The events of the batch a sink thread is handling: counted as dropped if the thread
/// panics before it is done with them (what is still queued is counted by the pipeline).
struct EventsInHand<'a> {
    events: u64,
    counters: &'a SinkCounters,
    totals: &'a Totals,
}

impl<'a> EventsInHand<'a> {
    fn new(counters: &'a SinkCounters, totals: &'a Totals) -> Self {
        EventsInHand {
            events: 0,
            counters,
            totals,
        }
    }
}

impl Drop for EventsInHand<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.totals
                .lost_events(&self.counters.dropped_events, self.events, Lost::Panicked);
        }
    }
}

/// Test seam: a file-sink batch holding this text makes its thread panic, standing in for a
/// bug in compression or writing. Only in unit-test builds.
#[cfg(test)]
pub(super) const PANIC_TEXT: &[u8] = b"sluice unit test: panic this sink thread";

/// A file sink without a spool (`use_spool = false`, the default): each of its
/// `compression_threads` threads takes sealed batches straight from the sink queue, compresses
/// and writes them. The batch files are themselves the durable copy; a spool in front would
/// write every byte twice, fsync it and read it back. A failing write is retried (the queue
/// fills meanwhile: TCP readers stop, UDP readers pause and the kernel buffer absorbs), and
/// given up on only once shutdown has lasted `grace` (counted as sink-dropped). The grace is
/// shutdown's, not each batch's: past it, every batch still queued gets one attempt.
pub(super) struct FileStage {
    pub name: String,
    pub sink: Arc<FileSink>,
    pub queue: Receiver<SealedBatch>,
    /// See [`sealed_batches`].
    pub closed: Receiver<()>,
    pub spare: Sender<Vec<u8>>,
    pub counters: SinkCounters,
    pub totals: Arc<Totals>,
    /// When shutdown began (set by the pipeline).
    pub shutdown_began: Arc<OnceLock<Instant>>,
    pub grace: Duration,
}

impl FileStage {
    pub fn run(self) {
        let mut in_hand = EventsInHand::new(&self.counters, &self.totals);
        for sealed in sealed_batches(&self.queue, &self.closed) {
            in_hand.events = sealed.batch.events;
            #[cfg(test)]
            if sealed
                .batch
                .ndjson
                .windows(PANIC_TEXT.len())
                .any(|w| w == PANIC_TEXT)
            {
                panic!("test seam: a sink thread bug");
            }
            let written = self.write(&sealed);
            // Written or counted as failed: no longer this thread's to lose.
            in_hand.events = 0;
            if !written {
                // ack hook: a source waiting on these events must not move past them.
                for ack in &sealed.acks {
                    ack.fail();
                }
            }
            // ack hook: written (or failed above); releasing the clones may run a source's
            // commit callback on this thread.
            let mut buf = sealed.batch.ndjson;
            buf.clear();
            let _ = self.spare.try_send(buf);
        }
    }

    /// `false` when the batch was given up on (counted as dropped).
    fn write(&self, sealed: &SealedBatch) -> bool {
        let batch = &sealed.batch;
        let mut backoff = Duration::from_millis(50);
        loop {
            let started = Instant::now();
            match self.sink.write_batch(batch, sealed.core) {
                Ok(file) => {
                    let c = &self.counters;
                    c.compress.record(file.compress_time.as_secs_f64());
                    c.write.record(
                        started
                            .elapsed()
                            .saturating_sub(file.compress_time)
                            .as_secs_f64(),
                    );
                    c.end_to_end
                        .record(sealed.opened_at.elapsed().as_secs_f64());
                    c.events.increment(batch.events);
                    c.batches.increment(1);
                    c.bytes_raw.increment(batch.ndjson.len() as u64);
                    c.bytes_compressed.increment(file.compressed_bytes);
                    self.totals
                        .sink_events
                        .fetch_add(batch.events, Ordering::Relaxed);
                    self.totals.sink_batches.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(e) => {
                    self.counters.errors.increment(1);
                    let grace_left = self
                        .shutdown_began
                        .get()
                        .map(|began| self.grace.saturating_sub(began.elapsed()));
                    if grace_left == Some(Duration::ZERO) {
                        tracing::error!(sink = %self.name, events = batch.events,
                            "writing a batch still fails after the shutdown grace period; dropped: {e}");
                        self.counters.dropped_events.increment(batch.events);
                        self.totals
                            .sink_dropped_events
                            .fetch_add(batch.events, Ordering::Relaxed);
                        return false;
                    }
                    // Not past the end of the grace: the batches queued behind wait for it too.
                    let pause = grace_left.map_or(backoff, |left| backoff.min(left));
                    tracing::warn!(sink = %self.name, retry_in = ?pause, "writing a batch failed: {e}");
                    std::thread::sleep(pause);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Counts what the service accepted into the daemon's sink counters and exit totals.
struct Counted<S> {
    inner: S,
    counters: SinkCounters,
    totals: Arc<Totals>,
}

impl<S: Sink> Sink for Counted<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn deliver(&self, batch: &Batch) -> Delivery {
        let started = Instant::now();
        let delivery = self.inner.deliver(batch).await;
        let accepted = match &delivery {
            Delivery::Delivered => batch.events,
            Delivery::Partial {
                retry, rejected, ..
            } => {
                let left = retry.as_ref().map_or(0, |b| b.events)
                    + rejected.iter().map(|r| r.batch.events).sum::<u64>();
                batch.events.saturating_sub(left)
            }
            Delivery::Retry { .. } | Delivery::Reject { .. } => 0,
        };
        if !matches!(delivery, Delivery::Delivered) {
            self.counters.errors.increment(1);
        }
        if accepted > 0 {
            self.counters.write.record(started.elapsed().as_secs_f64());
            self.counters.events.increment(accepted);
            self.counters.batches.increment(1);
            self.counters.bytes_raw.increment(batch.ndjson.len() as u64);
            self.totals
                .sink_events
                .fetch_add(accepted, Ordering::Relaxed);
            self.totals.sink_batches.fetch_add(1, Ordering::Relaxed);
        }
        delivery
    }
}

/// Builds the sink `name` and starts its runtime on the current tokio runtime; its spool is
/// `data_dir/spool/<name>`, replayed first. Also returns the credentials the sink sends.
pub(super) fn start(
    name: &str,
    config: &SinkConfig,
    data_dir: &Path,
    counters: SinkCounters,
    totals: Arc<Totals>,
) -> anyhow::Result<(SinkHandle, Vec<Arc<dyn Renew>>)> {
    use crate::sink::{azure_logs_ingestion, elasticsearch, file, http, sekoia, splunk_hec};
    let metrics = SinkMetrics::new(name);
    let spool = config.common.spool.clone();
    let mut retry = config.common.retry.clone();
    fn spawn<S: Sink + 'static>(
        inner: S,
        counters: SinkCounters,
        totals: Arc<Totals>,
        data_dir: &Path,
        spool: crate::spool::SpoolConfig,
        retry: crate::sink::runtime::RetryConfig,
        metrics: Arc<SinkMetrics>,
    ) -> anyhow::Result<(SinkHandle, Vec<Arc<dyn Renew>>)> {
        let credentials = inner.credentials();
        let counted = Counted {
            inner,
            counters,
            totals,
        };
        let handle = SinkRuntime::spawn(Arc::new(counted), data_dir, spool, retry, metrics)?;
        Ok((handle, credentials))
    }
    let m = metrics.clone();
    let handle = match &config.kind {
        SinkKind::File(f) => {
            retry.concurrency = f.compression_threads;
            let sink = file::FileSink::new(name, f.clone())
                .with_context(|| {
                    format!("sink `{name}`: cannot open directory {}", f.path.display())
                })?
                .with_counters(file::FileCounters {
                    compressed_bytes: counters.bytes_compressed.clone(),
                    compress_seconds: counters.compress.clone(),
                });
            spawn(sink, counters, totals, data_dir, spool, retry, m)
        }
        SinkKind::AzureLogsIngestion(c) => spawn(
            azure_logs_ingestion::AzureLogsIngestionSink::new(name, c, metrics.clone())?,
            counters,
            totals,
            data_dir,
            spool,
            retry,
            m,
        ),
        SinkKind::Sekoia(c) => spawn(
            sekoia::SekoiaSink::new(name, c, metrics.clone())?,
            counters,
            totals,
            data_dir,
            spool,
            retry,
            m,
        ),
        SinkKind::SplunkHec(c) => spawn(
            splunk_hec::SplunkHecSink::new(name, c, metrics.clone())?,
            counters,
            totals,
            data_dir,
            spool,
            retry,
            m,
        ),
        SinkKind::Elasticsearch(c) => spawn(
            elasticsearch::ElasticsearchSink::new(name, c, metrics.clone())?,
            counters,
            totals,
            data_dir,
            spool,
            retry,
            m,
        ),
        SinkKind::Http(c) => spawn(
            http::HttpSink::new(name, c, metrics.clone())?,
            counters,
            totals,
            data_dir,
            spool,
            retry,
            m,
        ),
    }
    .with_context(|| format!("starting sink `{name}`"))?;
    let left = handle.0.stats().spool;
    if left.records > 0 {
        tracing::info!(sink = %name, records = left.records, events = left.events,
            "delivering what an earlier run left in the spool");
    }
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::file::FileSinkConfig;

    fn uncompressed_files_in(dir: &std::path::Path) -> FileSinkConfig {
        toml::from_str(&format!(
            "path = {:?}\ncompression = \"none\"\n",
            dir.display().to_string()
        ))
        .unwrap()
    }

    /// A stalled worker keeps its sender of the sink queue: once the pipeline closes, the
    /// delivery thread takes what is queued and ends instead of waiting on that sender.
    #[test]
    fn sealed_batches_end_when_closed_after_the_queue_is_empty() {
        let (tx, rx) = crossbeam::channel::bounded(4);
        let (close, closed) = crossbeam::channel::bounded::<()>(0);
        for events in [3, 4] {
            tx.send(SealedBatch {
                batch: Batch {
                    events,
                    ndjson: Vec::new(),
                },
                core: 0,
                opened_at: Instant::now(),
                acks: Vec::new(),
            })
            .unwrap();
        }
        drop(close);
        let taken: Vec<u64> = sealed_batches(&rx, &closed)
            .map(|s| s.batch.events)
            .collect();
        assert_eq!(taken, [3, 4]);
        drop(tx);
    }

    #[test]
    fn file_stage_names_files_by_core_and_records_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let config = uncompressed_files_in(dir.path());
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let counters = metrics::with_local_recorder(&recorder, || SinkCounters::register("f"));
        let totals = Arc::new(Totals::default());
        let (tx, rx) = crossbeam::channel::bounded(2);
        let (spare_tx, spare_rx) = crossbeam::channel::bounded(2);
        let stage = FileStage {
            name: "f".into(),
            sink: Arc::new(FileSink::new("f", config).unwrap()),
            queue: rx,
            closed: crossbeam::channel::never(),
            spare: spare_tx,
            counters,
            totals: totals.clone(),
            shutdown_began: Arc::new(OnceLock::new()),
            grace: Duration::from_secs(1),
        };
        for core in [1usize, 3] {
            tx.send(SealedBatch {
                batch: Batch {
                    events: 2,
                    ndjson: format!("{{\"c\":{core}}}\n{{\"c\":{core}}}\n").into_bytes(),
                },
                core,
                opened_at: Instant::now() - Duration::from_millis(30),
                acks: Vec::new(),
            })
            .unwrap();
        }
        drop(tx);
        stage.run();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort_by_key(|n| n.contains("-3-"));
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names[0].ends_with("-1-000000.ndjson"), "{names:?}");
        assert!(names[1].ends_with("-3-000001.ndjson"), "{names:?}");
        assert_eq!(
            std::fs::read(dir.path().join(&names[1])).unwrap(),
            b"{\"c\":3}\n{\"c\":3}\n"
        );
        let s = totals.summary();
        assert_eq!((s.sink_events, s.sink_batches), (4, 2));
        assert_eq!(spare_rx.try_iter().filter(|b| b.is_empty()).count(), 2);
        let text = handle.render();
        let count = text
            .lines()
            .find(|l| {
                l.starts_with("sluice_stage_duration_seconds_count")
                    && l.contains("stage=\"end_to_end\"")
            })
            .unwrap_or_else(|| panic!("{text}"));
        assert!(count.ends_with(" 2"), "{count}");
        let sum = text
            .lines()
            .find(|l| {
                l.starts_with("sluice_stage_duration_seconds_sum")
                    && l.contains("stage=\"end_to_end\"")
            })
            .unwrap();
        let sum: f64 = sum.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(sum >= 0.06, "both batches waited ≥ 30 ms: {sum}");
    }

    /// The default file path (no spool): a batch whose file is in place but whose temp file
    /// cannot be removed is written once, counted as delivered, not retried into a second file.
    #[test]
    fn file_stage_writes_a_batch_once_when_its_temp_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let config = uncompressed_files_in(dir.path());
        let sink = Arc::new(FileSink::new("f", config).unwrap());
        sink.fail_next_temp_removals(1);
        let totals = Arc::new(Totals::default());
        let (tx, rx) = crossbeam::channel::bounded(1);
        let (spare_tx, _spare_rx) = crossbeam::channel::bounded(1);
        let stage = FileStage {
            name: "f".into(),
            sink,
            queue: rx,
            closed: crossbeam::channel::never(),
            spare: spare_tx,
            counters: SinkCounters::register("f"),
            totals: totals.clone(),
            shutdown_began: Arc::new(OnceLock::new()),
            grace: Duration::from_secs(1),
        };
        tx.send(SealedBatch {
            batch: Batch {
                events: 2,
                ndjson: b"{\"a\":1}\n{\"a\":2}\n".to_vec(),
            },
            core: 0,
            opened_at: Instant::now(),
            acks: Vec::new(),
        })
        .unwrap();
        drop(tx);
        stage.run();
        let published: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert_eq!(published.len(), 1, "{published:?}");
        let s = totals.summary();
        assert_eq!((s.sink_events, s.sink_batches), (2, 1));
    }

    /// Writes that keep failing during shutdown are given up on once shutdown has lasted the
    /// grace, for all queued batches together: not after a grace of retries per batch.
    #[test]
    fn file_stage_grace_bounds_the_whole_shutdown_not_each_batch() {
        const BATCHES: usize = 5;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let config = uncompressed_files_in(&out);
        let sink = Arc::new(FileSink::new("f", config).unwrap());
        // Every write fails from here on (as root, permissions would not stop them).
        std::fs::remove_dir_all(&out).unwrap();
        let totals = Arc::new(Totals::default());
        let (tx, rx) = crossbeam::channel::bounded(BATCHES);
        let (spare_tx, _spare_rx) = crossbeam::channel::bounded(BATCHES);
        let grace = Duration::from_millis(300);
        let stage = FileStage {
            name: "f".into(),
            sink,
            queue: rx,
            closed: crossbeam::channel::never(),
            spare: spare_tx,
            counters: SinkCounters::register("f"),
            totals: totals.clone(),
            shutdown_began: Arc::new(OnceLock::from(Instant::now())),
            grace,
        };
        let (commit_tx, commit_rx) = crossbeam::channel::unbounded();
        for i in 0..BATCHES {
            let commit_tx = commit_tx.clone();
            let token = crate::pipeline::ack::AckToken::new(move |outcome| {
                let _ = commit_tx.send(outcome);
            });
            tx.send(SealedBatch {
                batch: Batch {
                    events: 2,
                    ndjson: format!("{{\"i\":{i}}}\n{{\"i\":{i}}}\n").into_bytes(),
                },
                core: 0,
                opened_at: Instant::now(),
                acks: vec![token],
            })
            .unwrap();
        }
        drop((tx, commit_tx));
        let started = Instant::now();
        stage.run();
        let took = started.elapsed();
        assert!(
            took < grace * 3,
            "{BATCHES} batches took {took:?} with a grace of {grace:?}"
        );
        let s = totals.summary();
        assert_eq!(
            (s.sink_events, s.sink_dropped_events),
            (0, 2 * BATCHES as u64)
        );
        let failed = commit_rx
            .iter()
            .filter(|o| *o == crate::pipeline::ack::AckOutcome::Failed)
            .count();
        assert_eq!(failed, BATCHES);
    }
}
