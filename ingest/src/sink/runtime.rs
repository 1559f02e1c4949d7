//! The delivery driver of one sink: pipeline → spool → `Sink::deliver`, with retries, backoff,
//! dead-lettering and a concurrency limit.
//!
//! ```text
//! SinkHandle::enqueue(batch) ──append──▶ Spool ──next──▶ dispatcher ──(≤ concurrency)──▶ deliver
//!                                          ▲                                              │
//!                                          └───────────── ack (delivered / dead-lettered) ◀┘
//! ```
//! A record leaves the spool only when the sink delivered it or it was written to the
//! dead-letter directory. Dropping a [`SinkHandle`] without [`SinkHandle::shutdown`] aborts
//! uploads mid-flight, exactly like a crash: what was not acked is replayed on the next start.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Batch, Delivery, Rejected, Sink};
use crate::sink::dead_letter::{DeadLetterError, DeadLetters};
use crate::spool::{Appended, RecordId, Spool, SpoolConfig, SpoolError, SpoolStats, SpooledRecord};

/// `[sinks.NAME.retry]`: how failed uploads are retried.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Uploads of this sink running at once.
    pub concurrency: usize,
    /// First backoff; doubles per failed attempt up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Longest `Retry-After` honoured; a larger one is clamped (a bogus header must not park
    /// the sink for a day).
    pub max_retry_after_ms: u64,
    /// Bound on the dead-letter directory; at it, refused events stay spooled (see
    /// [`crate::sink::dead_letter`]).
    pub max_dead_letter_bytes: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            concurrency: 4,
            initial_backoff_ms: 500,
            max_backoff_ms: 60_000,
            max_retry_after_ms: 600_000,
            max_dead_letter_bytes: 1 << 30,
        }
    }
}

impl RetryConfig {
    /// Backoff before attempt `attempt + 1` (0-based failures so far), with jitter in
    /// [50 %, 100 %] of the exponential value so that sinks recovering together spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .initial_backoff_ms
            .saturating_mul(1u64 << attempt.min(30))
            .min(self.max_backoff_ms);
        let jittered = base / 2 + fastrand::u64(0..=base / 2);
        Duration::from_millis(jittered)
    }

    /// Delay before the next attempt: `Retry-After` when the service sent one (clamped),
    /// otherwise the jittered backoff.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(after) => after.min(Duration::from_millis(self.max_retry_after_ms)),
            None => self.backoff(attempt),
        }
    }
}

/// Counters of one sink. Mirrors every value into the `metrics` facade (`sluice_sink_*`) and
/// keeps atomics for `sluice top`, tests and [`SinkHandle::stats`].
pub struct SinkMetrics {
    sink: String,
    requests_ok: AtomicU64,
    requests_failed: AtomicU64,
    retries: AtomicU64,
    dead_lettered_events: AtomicU64,
    delivered_events: AtomicU64,
    delivered_bytes: AtomicU64,
    sent_bytes: AtomicU64,
    truncated_fields: AtomicU64,
    enqueue_dropped_events: AtomicU64,
    unconfirmed_events: AtomicU64,
    dead_letter_write_errors: AtomicU64,
    /// First event of a batch mapped (or enqueued) → delivered.
    end_to_end: metrics::Histogram,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SinkMetricsSnapshot {
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub retries: u64,
    pub dead_lettered_events: u64,
    pub delivered_events: u64,
    /// Uncompressed NDJSON bytes of delivered events.
    pub delivered_bytes: u64,
    /// Request bodies as sent (compressed), all attempts.
    pub sent_bytes: u64,
    pub truncated_fields: u64,
    /// Events refused by `enqueue` (batch larger than the spool bound, spool closed).
    pub enqueue_dropped_events: u64,
    /// Events the service took (2xx, counted as delivered) without the per-event or indexing
    /// confirmation the sink asked for; see [`SinkMetrics::unconfirmed`].
    pub unconfirmed_events: u64,
    /// Failed attempts to write a dead letter (the record stays spooled and is tried again).
    pub dead_letter_write_errors: u64,
}

impl SinkMetrics {
    pub fn new(sink: &str) -> Arc<SinkMetrics> {
        Arc::new(SinkMetrics {
            sink: sink.to_owned(),
            requests_ok: AtomicU64::new(0),
            requests_failed: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            dead_lettered_events: AtomicU64::new(0),
            delivered_events: AtomicU64::new(0),
            delivered_bytes: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            truncated_fields: AtomicU64::new(0),
            enqueue_dropped_events: AtomicU64::new(0),
            unconfirmed_events: AtomicU64::new(0),
            dead_letter_write_errors: AtomicU64::new(0),
            end_to_end: metrics::histogram!(crate::metrics::STAGE_SECONDS,
                "stage" => "end_to_end", "sink" => sink.to_owned()),
        })
    }

    pub fn sink(&self) -> &str {
        &self.sink
    }

    /// One HTTP request: `status` is the code, or `None` for a transport error.
    pub fn request(&self, status: Option<u16>, latency: Duration, body_bytes: u64) {
        let label = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        metrics::counter!("sluice_sink_requests_total", "sink" => self.sink.clone(), "status" => label)
            .increment(1);
        metrics::histogram!("sluice_sink_upload_seconds", "sink" => self.sink.clone())
            .record(latency.as_secs_f64());
        metrics::counter!("sluice_sink_sent_bytes_total", "sink" => self.sink.clone())
            .increment(body_bytes);
        self.sent_bytes.fetch_add(body_bytes, Ordering::Relaxed);
        if status.is_some_and(|s| (200..300).contains(&s)) {
            self.requests_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.requests_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn truncated_fields(&self, n: u64) {
        if n > 0 {
            metrics::counter!("sluice_sink_truncated_fields_total", "sink" => self.sink.clone())
                .increment(n);
            self.truncated_fields.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Events a 2xx reply took without the confirmation the sink expected. They count as
    /// delivered (resending would duplicate them); this makes the gap visible. `reason`:
    /// `no_ack_id` (Splunk HEC with `ack = true`, reply without an `ackId`),
    /// `missing_event_ids` (Sekoia returned fewer event ids than events sent).
    pub fn unconfirmed(&self, events: u64, reason: &'static str) {
        // Called with 0 by the sinks that can report `reason`, at start: the series is there
        // before the first event.
        if events == 0 {
            metrics::counter!("sluice_sink_unconfirmed_events_total", "sink" => self.sink.clone(),
                "reason" => reason)
            .increment(0);
        } else {
            metrics::counter!("sluice_sink_unconfirmed_events_total", "sink" => self.sink.clone(),
                "reason" => reason)
            .increment(events);
            self.unconfirmed_events.fetch_add(events, Ordering::Relaxed);
        }
    }

    fn dead_letter_write_error(&self) {
        metrics::counter!("sluice_sink_dead_letter_write_errors_total", "sink" => self.sink.clone())
            .increment(1);
        self.dead_letter_write_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    fn retry(&self) {
        metrics::counter!("sluice_sink_retries_total", "sink" => self.sink.clone()).increment(1);
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    fn delivered(&self, events: u64, bytes: u64) {
        metrics::counter!("sluice_sink_delivered_events_total", "sink" => self.sink.clone())
            .increment(events);
        metrics::counter!("sluice_sink_delivered_bytes_total", "sink" => self.sink.clone())
            .increment(bytes);
        self.delivered_events.fetch_add(events, Ordering::Relaxed);
        self.delivered_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn dead_lettered(&self, events: u64) {
        metrics::counter!("sluice_sink_dead_letter_events_total", "sink" => self.sink.clone())
            .increment(events);
        self.dead_lettered_events
            .fetch_add(events, Ordering::Relaxed);
    }

    fn enqueue_dropped(&self, events: u64, reason: &'static str) {
        metrics::counter!("sluice_sink_spool_dropped_events_total", "sink" => self.sink.clone(),
            "reason" => reason)
        .increment(events);
        self.enqueue_dropped_events
            .fetch_add(events, Ordering::Relaxed);
    }

    fn spool_gauges(&self, s: &SpoolStats, previous: &mut SpoolStats) {
        let sink = self.sink.clone();
        metrics::gauge!("sluice_sink_spool_bytes", "sink" => sink.clone()).set(s.bytes as f64);
        metrics::gauge!("sluice_sink_spool_records", "sink" => sink.clone()).set(s.records as f64);
        metrics::gauge!("sluice_sink_spool_events", "sink" => sink.clone()).set(s.events as f64);
        let age = if s.oldest_created_ms == 0 {
            0.0
        } else {
            (now_ms().saturating_sub(s.oldest_created_ms)) as f64 / 1000.0
        };
        metrics::gauge!("sluice_sink_spool_oldest_age_seconds", "sink" => sink.clone()).set(age);
        metrics::counter!("sluice_sink_spool_dropped_events_total", "sink" => sink.clone(),
            "reason" => "drop_oldest")
        .increment(s.dropped_events - previous.dropped_events);
        metrics::counter!("sluice_sink_spool_quarantined_total", "sink" => sink.clone())
            .increment(s.quarantined_ranges - previous.quarantined_ranges);
        metrics::counter!("sluice_sink_spool_quarantined_bytes_total", "sink" => sink.clone())
            .increment(s.quarantined_bytes - previous.quarantined_bytes);
        metrics::gauge!("sluice_sink_spool_quarantine_bytes", "sink" => sink.clone())
            .set(s.quarantine_bytes as f64);
        metrics::counter!("sluice_sink_spool_quarantine_discarded_bytes_total",
            "sink" => sink.clone(), "reason" => "deleted_oldest")
        .increment(s.quarantine_deleted_bytes - previous.quarantine_deleted_bytes);
        metrics::counter!("sluice_sink_spool_quarantine_discarded_bytes_total",
            "sink" => sink, "reason" => "not_copied")
        .increment(s.quarantine_not_copied_bytes - previous.quarantine_not_copied_bytes);
        *previous = *s;
    }

    pub fn snapshot(&self) -> SinkMetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SinkMetricsSnapshot {
            requests_ok: get(&self.requests_ok),
            requests_failed: get(&self.requests_failed),
            retries: get(&self.retries),
            dead_lettered_events: get(&self.dead_lettered_events),
            delivered_events: get(&self.delivered_events),
            delivered_bytes: get(&self.delivered_bytes),
            sent_bytes: get(&self.sent_bytes),
            truncated_fields: get(&self.truncated_fields),
            enqueue_dropped_events: get(&self.enqueue_dropped_events),
            unconfirmed_events: get(&self.unconfirmed_events),
            dead_letter_write_errors: get(&self.dead_letter_write_errors),
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What [`SinkHandle::enqueue`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// On disk; `dropped_*` older events were deleted to make room (`drop_oldest`).
    Accepted {
        dropped_records: u64,
        dropped_events: u64,
        waited: Duration,
    },
    /// Not taken (larger than the spool bound, or shutting down); counted.
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SinkStats {
    pub spool: SpoolStats,
    pub sink: SinkMetricsSnapshot,
}

/// Entry point: `SinkRuntime::spawn(...)` → [`SinkHandle`].
pub struct SinkRuntime;

impl SinkRuntime {
    /// Opens `data_dir/spool/<name>/` (replaying what a previous run left) and starts the
    /// delivery tasks on the current tokio runtime. Dead letters go to
    /// `data_dir/dead_letter/<name>/`.
    pub fn spawn<S: Sink + 'static>(
        sink: Arc<S>,
        data_dir: &Path,
        spool_config: SpoolConfig,
        retry: RetryConfig,
        metrics: Arc<SinkMetrics>,
    ) -> Result<SinkHandle, SpoolError> {
        let name = sink.name().to_owned();
        // The bounds beside their gauges: dashboards and alerts show how full each is.
        metrics::gauge!("sluice_sink_spool_max_bytes", "sink" => name.clone())
            .set(spool_config.max_bytes as f64);
        metrics::gauge!("sluice_sink_dead_letter_max_bytes", "sink" => name.clone())
            .set(retry.max_dead_letter_bytes as f64);
        // Counters present from the start: an alert on `increase()` sees the first event, which
        // a series born with it would hide.
        metrics::counter!("sluice_sink_dead_letter_events_total", "sink" => name.clone())
            .increment(0);
        metrics::counter!("sluice_sink_dead_letter_write_errors_total", "sink" => name.clone())
            .increment(0);
        let spool = Arc::new(Spool::open(
            &data_dir.join("spool").join(&name),
            spool_config,
        )?);
        let dead_letters = Arc::new(DeadLetters::new(
            &name,
            data_dir.join("dead_letter").join(&name),
            retry.max_dead_letter_bytes,
        ));
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(crate::sink::replay::run(
            name.clone(),
            crate::sink::replay::replay_dir(dead_letters.dir()),
            spool.clone(),
            stop_rx.clone(),
        ));
        let (abort_tx, abort_rx) = watch::channel(false);
        let driver = Driver {
            sink,
            spool: spool.clone(),
            retry,
            metrics: metrics.clone(),
            dead_letters,
            stop: stop_rx,
            abort: abort_rx,
        };
        let task = tokio::spawn(driver.run());
        Ok(SinkHandle {
            name,
            spool,
            metrics,
            stop: stop_tx,
            abort: abort_tx,
            task: Some(task),
        })
    }
}

pub struct SinkHandle {
    name: String,
    spool: Arc<Spool>,
    metrics: Arc<SinkMetrics>,
    /// Graceful stop: no new uploads, no more retries.
    stop: watch::Sender<bool>,
    /// The grace is over: uploads still running end at once.
    abort: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SinkHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes `batch` to the spool. Under `when_full = "block"` this blocks the calling
    /// thread until there is room: call it from a pipeline thread, not from async code
    /// (use [`SinkHandle::enqueue_async`] there).
    pub fn enqueue(&self, batch: &Batch) -> Enqueued {
        self.enqueue_created(batch, now_ms())
    }

    /// [`SinkHandle::enqueue`] for a batch whose first event was taken at `created_ms` (Unix
    /// ms); the end-to-end latency of its delivery is measured from there.
    pub fn enqueue_created(&self, batch: &Batch, created_ms: u64) -> Enqueued {
        SinkHandleRef {
            name: &self.name,
            spool: &self.spool,
            metrics: &self.metrics,
        }
        .enqueue(batch, created_ms)
    }

    pub async fn enqueue_async(&self, batch: Batch) -> Enqueued {
        let spool = self.spool.clone();
        let metrics = self.metrics.clone();
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || {
            let handle = SinkHandleRef {
                name: &name,
                spool: &spool,
                metrics: &metrics,
            };
            handle.enqueue(&batch, now_ms())
        })
        .await
        .unwrap_or(Enqueued::Refused)
    }

    pub fn stats(&self) -> SinkStats {
        SinkStats {
            spool: self.spool.stats(),
            sink: self.metrics.snapshot(),
        }
    }

    pub fn metrics(&self) -> &Arc<SinkMetrics> {
        &self.metrics
    }

    /// Refuses (and counts) from now on every batch that would have to wait for room under
    /// `when_full = "block"`; batches that fit are still spooled. The pipeline calls it once
    /// shutdown's grace is over, so that threads blocked in [`SinkHandle::enqueue`] return.
    pub fn refuse_when_full(&self) {
        self.spool.stop_waiting();
    }

    /// Stops taking records, lets uploads in flight finish for up to `grace`, then ends them
    /// (they stay in the spool; those whose segment `drop_oldest` deleted meanwhile are
    /// counted as dropped). Blocked `enqueue` callers get `Refused`. Returns the final counts.
    pub async fn shutdown(mut self, grace: Duration) -> SinkStats {
        let _ = self.stop.send(true);
        self.spool.close();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(grace, &mut task).await.is_err()
        {
            tracing::warn!(sink = %self.name, "uploads still running after the grace period; \
                aborted, they stay spooled");
            // Uploads end themselves, so that each can settle its record (Spool::abandon);
            // an abort would only drop them. The task is aborted only if that does not happen.
            let _ = self.abort.send(true);
            if tokio::time::timeout(Duration::from_secs(1), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        self.stats()
    }
}

impl Drop for SinkHandle {
    fn drop(&mut self) {
        // Not shut down: behave like a crash (nothing more is acked).
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct SinkHandleRef<'a> {
    name: &'a str,
    spool: &'a Spool,
    metrics: &'a SinkMetrics,
}

impl SinkHandleRef<'_> {
    fn enqueue(&self, batch: &Batch, created_ms: u64) -> Enqueued {
        if batch.events == 0 {
            return Enqueued::Accepted {
                dropped_records: 0,
                dropped_events: 0,
                waited: Duration::ZERO,
            };
        }
        match self.spool.append_created(batch, created_ms) {
            Ok(Appended {
                dropped_records,
                dropped_events,
                waited,
            }) => Enqueued::Accepted {
                dropped_records,
                dropped_events,
                waited,
            },
            Err(e) => {
                let reason = match e {
                    SpoolError::TooLarge { .. } => "too_large",
                    SpoolError::Closed | SpoolError::FullAtShutdown => "closed",
                    SpoolError::Io { .. } | SpoolError::Locked { .. } => "io_error",
                };
                tracing::error!(sink = %self.name, events = batch.events, error = %e,
                    "batch not spooled");
                self.metrics.enqueue_dropped(batch.events, reason);
                Enqueued::Refused
            }
        }
    }
}

struct Driver<S> {
    sink: Arc<S>,
    spool: Arc<Spool>,
    retry: RetryConfig,
    metrics: Arc<SinkMetrics>,
    dead_letters: Arc<DeadLetters>,
    stop: watch::Receiver<bool>,
    abort: watch::Receiver<bool>,
}

impl<S: Sink + 'static> Driver<S> {
    async fn run(self) {
        let permits = Arc::new(Semaphore::new(self.retry.concurrency.max(1)));
        let mut uploads = JoinSet::new();
        let mut stop = self.stop.clone();
        let mut gauges_prev = SpoolStats::default();
        let mut tick = tokio::time::interval(Duration::from_millis(
            self.spool.config().fsync_interval_ms.clamp(50, 1000),
        ));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'dispatch: loop {
            // The timer runs here too: during an outage every permit can be held by uploads
            // that retry for as long as it lasts.
            let permit = loop {
                tokio::select! {
                    p = permits.clone().acquire_owned() => {
                        break p.expect("semaphore never closed");
                    }
                    _ = tick.tick() => self.on_tick(&mut gauges_prev),
                    _ = stop.changed() => break 'dispatch,
                }
            };
            let record = loop {
                let ready = self.spool.data_ready().notified();
                tokio::pin!(ready);
                ready.as_mut().enable();
                match self.spool.next() {
                    Ok(Some(r)) => break r,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(sink = %self.sink.name(), error = %e, "spool read failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
                tokio::select! {
                    _ = &mut ready => {}
                    _ = tick.tick() => self.on_tick(&mut gauges_prev),
                    _ = stop.changed() => break 'dispatch,
                }
                while uploads.try_join_next().is_some() {}
            };
            let upload = Upload {
                sink: self.sink.clone(),
                spool: self.spool.clone(),
                retry: self.retry.clone(),
                metrics: self.metrics.clone(),
                dead_letters: self.dead_letters.clone(),
                stop: self.stop.clone(),
                abort: self.abort.clone(),
            };
            uploads.spawn(async move {
                upload.run(record).await;
                drop(permit);
            });
            while uploads.try_join_next().is_some() {}
            self.metrics
                .spool_gauges(&self.spool.stats(), &mut gauges_prev);
        }
        // Graceful stop: let started uploads finish (the caller bounds this with a timeout).
        while uploads.join_next().await.is_some() {}
        self.metrics
            .spool_gauges(&self.spool.stats(), &mut gauges_prev);
    }

    /// The spool's timed fsyncs (`interval` data in quiet periods, directory changes), and the
    /// spool gauges.
    fn on_tick(&self, gauges_prev: &mut SpoolStats) {
        if let Err(e) = self.spool.flush_if_due() {
            tracing::error!(sink = %self.sink.name(), error = %e, "spool fsync failed");
        }
        self.metrics.spool_gauges(&self.spool.stats(), gauges_prev);
    }
}

struct Upload<S> {
    sink: Arc<S>,
    spool: Arc<Spool>,
    retry: RetryConfig,
    metrics: Arc<SinkMetrics>,
    dead_letters: Arc<DeadLetters>,
    stop: watch::Receiver<bool>,
    abort: watch::Receiver<bool>,
}

/// Events refused by the service whose dead letters are not written yet.
fn unwritten_events(unwritten: &[Rejected]) -> u64 {
    unwritten.iter().map(|r| r.batch.events).sum()
}

/// Shutdown ended the upload of `id` with `events` of it undelivered: see [`Spool::abandon`].
fn abandon(spool: &Spool, sink: &str, id: RecordId, events: u64) {
    if let Err(e) = spool.abandon(id, events) {
        tracing::error!(sink = %sink, error = %e, "spool update failed");
    }
}

impl<S: Sink> Upload<S> {
    async fn run(mut self, record: SpooledRecord) {
        let id = record.id;
        let created_ms = record.created_ms;
        // The record is acked only once nothing is left to send (`current`) and every refused
        // event is on disk as a dead letter (`unwritten`): a dead letter that cannot be written
        // keeps the record spooled, and only the write is tried again (the service is not asked
        // again to refuse the same events).
        let mut current = Some(record.batch);
        let mut unwritten: Vec<Rejected> = Vec::new();
        let mut attempt: u32 = 0;
        let mut dead_letter_failures: u32 = 0;
        let mut part = 0usize;
        let mut deliver_at = Instant::now();
        let mut dead_letter_at = Instant::now();
        loop {
            if Instant::now() >= deliver_at
                && let Some(batch) = current.take()
            {
                let outcome = tokio::select! {
                    outcome = self.sink.deliver(&batch) => outcome,
                    _ = self.abort.wait_for(|a| *a) => {
                        let left = batch.events + unwritten_events(&unwritten);
                        return abandon(&self.spool, self.sink.name(), id, left);
                    }
                };
                match outcome {
                    Delivery::Delivered => {
                        self.metrics
                            .delivered(batch.events, batch.ndjson.len() as u64);
                        self.metrics
                            .end_to_end
                            .record(now_ms().saturating_sub(created_ms) as f64 / 1000.0);
                    }
                    Delivery::Retry { after, reason } => {
                        deliver_at = self.failed(id.seq, &mut attempt, after, &reason);
                        current = Some(batch);
                    }
                    Delivery::Reject {
                        status,
                        reason,
                        response_body,
                    } => unwritten.push(Rejected {
                        batch,
                        status,
                        reason,
                        response_body,
                    }),
                    Delivery::Partial {
                        retry,
                        after,
                        reason,
                        rejected,
                    } => {
                        let rejected_events: u64 = rejected.iter().map(|r| r.batch.events).sum();
                        let retry_events = retry.as_ref().map_or(0, |b| b.events);
                        let accepted = batch.events.saturating_sub(rejected_events + retry_events);
                        // Bytes are approximate for a partial: proportional to events.
                        let bytes = (batch.ndjson.len() as u64 * accepted)
                            .checked_div(batch.events)
                            .unwrap_or(0);
                        self.metrics.delivered(accepted, bytes);
                        unwritten.extend(rejected);
                        if let Some(b) = retry.filter(|b| b.events > 0) {
                            deliver_at = self.failed(id.seq, &mut attempt, after, &reason);
                            current = Some(b);
                        }
                    }
                }
            }
            if !unwritten.is_empty() && Instant::now() >= dead_letter_at {
                unwritten.retain(|r| {
                    part += 1;
                    self.dead_letter(id.seq, part - 1, r).is_err()
                });
                if unwritten.is_empty() {
                    dead_letter_failures = 0;
                } else {
                    let delay = self.retry.backoff(dead_letter_failures);
                    dead_letter_failures = dead_letter_failures.saturating_add(1);
                    dead_letter_at = Instant::now() + delay;
                    tracing::error!(sink = %self.sink.name(), seq = id.seq,
                        batches = unwritten.len(), retry_in = ?delay,
                        "refused events kept in the spool until their dead letters can be written");
                }
            }
            let next = match (current.is_some(), !unwritten.is_empty()) {
                (false, false) => break,
                (true, false) => deliver_at,
                (false, true) => dead_letter_at,
                (true, true) => deliver_at.min(dead_letter_at),
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                // Shutting down: the record stays in the spool for the next start (events
                // already accepted may then be sent again: at-least-once), or is counted as
                // dropped if `drop_oldest` deleted it meanwhile.
                _ = self.stop.wait_for(|s| *s) => {
                    let left = current.as_ref().map_or(0, |b| b.events)
                        + unwritten_events(&unwritten);
                    return abandon(&self.spool, self.sink.name(), id, left);
                }
            }
        }
        if let Err(e) = self.spool.ack(id) {
            tracing::error!(sink = %self.sink.name(), error = %e, "spool ack failed");
        }
    }

    /// Counts and logs a failed upload; returns when to try again.
    fn failed(
        &self,
        seq: u64,
        attempt: &mut u32,
        after: Option<Duration>,
        reason: &str,
    ) -> Instant {
        self.metrics.retry();
        let delay = self.retry.delay(*attempt, after);
        tracing::warn!(sink = %self.sink.name(), seq, attempt = *attempt, ?delay, %reason,
            "upload failed; will retry");
        *attempt = attempt.saturating_add(1);
        Instant::now() + delay
    }

    /// Writes `rejected` to the dead-letter directory (events, then metadata, both synced).
    /// Counted as dead-lettered only once both files are on disk.
    fn dead_letter(
        &self,
        seq: u64,
        part: usize,
        rejected: &Rejected,
    ) -> Result<(), DeadLetterError> {
        let result = self
            .dead_letters
            .write(self.sink.name(), seq, part, rejected);
        match &result {
            Ok(path) => {
                self.metrics.dead_lettered(rejected.batch.events);
                tracing::error!(sink = %self.sink.name(), events = rejected.batch.events,
                    status = ?rejected.status, reason = %rejected.reason,
                    file = %path.display(), "events dead-lettered");
            }
            Err(e) => {
                self.metrics.dead_letter_write_error();
                tracing::error!(sink = %self.sink.name(), events = rejected.batch.events,
                    status = ?rejected.status, reason = %rejected.reason,
                    dir = %self.dead_letters.dir().display(), error = %e,
                    "cannot write dead letter; the events stay spooled");
            }
        }
        result.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::spool::{FsyncPolicy, WhenFull};

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let r = RetryConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            ..RetryConfig::default()
        };
        for attempt in 0..40 {
            let base = (100u64 << attempt.min(20)).min(1000);
            let d = r.backoff(attempt).as_millis() as u64;
            assert!(
                d >= base / 2 && d <= base,
                "attempt {attempt}: {d} vs {base}"
            );
        }
        assert_eq!(
            r.delay(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            r.delay(0, Some(Duration::from_secs(86_400))),
            Duration::from_secs(600)
        );
    }

    /// Counts concurrent deliveries; fails every batch's first attempt; rejects events "bad".
    struct Probe {
        running: AtomicUsize,
        peak: AtomicUsize,
        attempts: std::sync::Mutex<std::collections::HashMap<Vec<u8>, u32>>,
    }

    impl Sink for Probe {
        fn name(&self) -> &str {
            "probe"
        }

        async fn deliver(&self, batch: &Batch) -> Delivery {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            let first = {
                let mut a = self.attempts.lock().unwrap();
                let n = a.entry(batch.ndjson.clone()).or_insert(0);
                *n += 1;
                *n == 1
            };
            if first {
                return Delivery::Retry {
                    after: None,
                    reason: "first attempt".into(),
                };
            }
            let (bad, good): (Vec<&[u8]>, Vec<&[u8]>) =
                batch.lines().partition(|l| *l == b"\"bad\"");
            if bad.is_empty() {
                return Delivery::Delivered;
            }
            let _ = good;
            Delivery::Partial {
                retry: None,
                after: None,
                reason: String::new(),
                rejected: vec![Rejected {
                    batch: Batch::from_lines(bad),
                    status: Some(400),
                    reason: "bad".into(),
                    response_body: "{}".into(),
                }],
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_is_limited_and_partial_rejections_are_dead_lettered() {
        let dir = tempfile::tempdir().unwrap();
        let probe = Arc::new(Probe {
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            attempts: Default::default(),
        });
        let retry = RetryConfig {
            concurrency: 3,
            initial_backoff_ms: 10,
            max_backoff_ms: 20,
            ..RetryConfig::default()
        };
        let metrics = SinkMetrics::new("probe");
        let handle = SinkRuntime::spawn(
            probe.clone(),
            dir.path(),
            SpoolConfig::default(),
            retry,
            metrics,
        )
        .unwrap();
        for i in 0..20 {
            let b = Batch::from_lines([format!("{{\"i\":{i}}}").as_bytes(), b"\"bad\""]);
            assert!(matches!(
                handle.enqueue_async(b).await,
                Enqueued::Accepted { .. }
            ));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while handle.stats().spool.records > 0 {
            assert!(std::time::Instant::now() < deadline, "{:?}", handle.stats());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let s = handle.stats().sink;
        assert_eq!(
            (s.delivered_events, s.dead_lettered_events, s.retries),
            (20, 20, 20)
        );
        assert_eq!(probe.peak.load(Ordering::SeqCst), 3);
        let files = std::fs::read_dir(dir.path().join("dead_letter/probe"))
            .unwrap()
            .count();
        assert_eq!(files, 40, "data + metadata per rejection");
        handle.shutdown(Duration::from_secs(1)).await;
    }

    /// A service that refuses everything for good (a wrong schema, say).
    struct Refuses;

    impl Sink for Refuses {
        fn name(&self) -> &str {
            "refuses"
        }

        async fn deliver(&self, batch: &Batch) -> Delivery {
            let _ = batch;
            Delivery::Reject {
                status: Some(400),
                reason: "schema mismatch".into(),
                response_body: "{}".into(),
            }
        }
    }

    /// At `max_dead_letter_bytes` nothing more is dead-lettered and nothing is lost: the refused
    /// batches stay spooled, the failed writes are counted, and once an operator moves dead
    /// letters away the rest follow.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_dead_letter_directory_keeps_refused_events_spooled() {
        let dir = tempfile::tempdir().unwrap();
        let retry = RetryConfig {
            concurrency: 2,
            initial_backoff_ms: 10,
            max_backoff_ms: 20,
            max_dead_letter_bytes: 50_000,
            ..RetryConfig::default()
        };
        let handle = SinkRuntime::spawn(
            Arc::new(Refuses),
            dir.path(),
            SpoolConfig::default(),
            retry,
            SinkMetrics::new("refuses"),
        )
        .unwrap();
        // 20 batches of 10 events of ~1 KiB: ~10 KiB each, 200 KiB in all.
        for b in 0..20 {
            let lines: Vec<Batch> = (0..10).map(|i| padded(b * 10 + i)).collect();
            let batch = Batch::from_lines(lines.iter().flat_map(|l| l.lines()));
            assert!(matches!(
                handle.enqueue_async(batch).await,
                Enqueued::Accepted { .. }
            ));
        }
        let letters = dir.path().join("dead_letter/refuses");
        let bytes_in = |dir: &Path| -> u64 {
            std::fs::read_dir(dir)
                .map(|d| d.map(|e| e.unwrap().metadata().unwrap().len()).sum())
                .unwrap_or(0)
        };
        // Wait until writes are being refused, then check nothing passed the bound.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while handle.stats().sink.dead_letter_write_errors < 5 {
            assert!(std::time::Instant::now() < deadline, "{:?}", handle.stats());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stalled = handle.stats();
        assert!(bytes_in(&letters) <= 50_000, "{}", bytes_in(&letters));
        assert!(stalled.sink.dead_lettered_events < 200, "{stalled:?}");
        assert_eq!(
            stalled.spool.events + stalled.sink.dead_lettered_events,
            200,
            "every refused event is either a dead letter or still spooled: {stalled:?}"
        );
        // The operator moves dead letters away as they come; all of them arrive, once.
        let moved = tempfile::tempdir().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while handle.stats().spool.records > 0 {
            assert!(std::time::Instant::now() < deadline, "{:?}", handle.stats());
            for entry in std::fs::read_dir(&letters).unwrap() {
                let entry = entry.unwrap();
                std::fs::rename(entry.path(), moved.path().join(entry.file_name())).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let s = handle.stats().sink;
        assert_eq!(s.dead_lettered_events, 200);
        let mut events = 0;
        for entry in std::fs::read_dir(moved.path())
            .unwrap()
            .chain(std::fs::read_dir(&letters).unwrap())
        {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "ndjson") {
                events += std::fs::read(&path)
                    .unwrap()
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count();
            }
        }
        assert_eq!(events, 200);
        handle.shutdown(Duration::from_secs(1)).await;
    }

    /// A service that is down: every upload is retried, or (`hang`) never answered.
    struct Down {
        hang: bool,
    }

    impl Sink for Down {
        fn name(&self) -> &str {
            "down"
        }

        async fn deliver(&self, _batch: &Batch) -> Delivery {
            if self.hang {
                std::future::pending::<()>().await;
            }
            Delivery::Retry {
                after: None,
                reason: "down".into(),
            }
        }
    }

    /// One event of about 1 KiB.
    fn padded(i: usize) -> Batch {
        let line = format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(900));
        Batch::from_lines([line.as_bytes()])
    }

    async fn wait_for_in_flight(spool: &Spool, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while spool.stats().in_flight < n {
            assert!(std::time::Instant::now() < deadline, "{:?}", spool.stats());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `drop_oldest` deletes the segment of records being uploaded. Those uploads then end
    /// without delivering (shutdown during a retry's backoff, or aborted after the grace while
    /// the service does not answer): the records exist nowhere else, so they must be counted
    /// as dropped. Everything enqueued is still on disk for the next start, or counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_of_a_dropped_segment_are_delivered_or_counted_once() {
        const N: usize = 100;
        let mut accounted = Vec::new();
        for hang in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let spool_config = SpoolConfig {
                max_bytes: 32 << 10,
                segment_bytes: 8 << 10,
                when_full: WhenFull::DropOldest,
                fsync: FsyncPolicy::Never,
                ..SpoolConfig::default()
            };
            let retry = RetryConfig {
                concurrency: 2,
                initial_backoff_ms: 10,
                max_backoff_ms: 20,
                ..RetryConfig::default()
            };
            let handle = SinkRuntime::spawn(
                Arc::new(Down { hang }),
                dir.path(),
                spool_config.clone(),
                retry,
                SinkMetrics::new("down"),
            )
            .unwrap();
            let spool = handle.spool.clone();
            for i in 0..2 {
                handle.enqueue_async(padded(i)).await;
            }
            wait_for_in_flight(&spool, 2).await;
            for i in 2..N {
                handle.enqueue_async(padded(i)).await;
            }
            let before = spool.stats();
            assert!(before.dropped_events > 0, "{before:?}");
            handle.shutdown(Duration::from_millis(300)).await;
            let dropped = spool.stats().dropped_events;
            drop(spool);
            let spool = Spool::open(&dir.path().join("spool/down"), spool_config).unwrap();
            let mut replayed = 0;
            while let Some(r) = spool.next().unwrap() {
                replayed += r.batch.events;
                spool.ack(r.id).unwrap();
            }
            accounted.push((hang, dropped + replayed));
        }
        assert_eq!(accounted, [(false, N as u64), (true, N as u64)]);
    }

    /// With every upload permit held by an upload the service never answers, the runtime's
    /// timer still syncs `fsync = "interval"` data (and refreshes the spool gauges).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interval_fsync_runs_while_every_upload_permit_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let spool_config = SpoolConfig {
            fsync: FsyncPolicy::Interval,
            fsync_interval_ms: 500,
            ..SpoolConfig::default()
        };
        let retry = RetryConfig {
            concurrency: 1,
            ..RetryConfig::default()
        };
        let handle = SinkRuntime::spawn(
            Arc::new(Down { hang: true }),
            dir.path(),
            spool_config,
            retry,
            SinkMetrics::new("down"),
        )
        .unwrap();
        let spool = handle.spool.clone();
        handle.enqueue_async(padded(0)).await;
        wait_for_in_flight(&spool, 1).await;
        // The next append is due for a sync; the one right after it is not, and waits for
        // the timer.
        tokio::time::sleep(Duration::from_millis(600)).await;
        handle.enqueue_async(padded(1)).await;
        handle.enqueue_async(padded(2)).await;
        assert!(spool.unsynced());
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while spool.unsynced() {
            assert!(
                std::time::Instant::now() < deadline,
                "not synced while the only upload permit is held"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        handle.shutdown(Duration::from_millis(100)).await;
    }
}
