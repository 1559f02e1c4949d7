//! `[sources.NAME] type = "darktrace_api"`: polls a Darktrace master or cloud instance over its
//! signed HTTP API ("direct HTTP") and feeds the events into the same pipeline as syslog.
//!
//! One thread per source runs a small tokio runtime with one polling task per endpoint. A poll
//! asks for `starttime = checkpoint` (inclusive), drops the events already taken at that
//! instant ([`checkpoint::select`]), and hands the rest to a parser worker as one
//! [`FrameBatch`] carrying an [`AckToken`]. The checkpoint is written by the token's callback,
//! i.e. only once every routed sink has spooled the events; the task waits for that before it
//! polls again (right away while new events keep coming, `poll_interval_ms` once caught up).
//!
//! Delivery is at-least-once with no gap: a crash between a spool commit and the checkpoint
//! rename (one fsync) repeats that page once on restart; any other stop repeats nothing.
//!
//! A backlog too large for one answer is walked in bounded windows ([`window`]). The cursor
//! moves only to events dated before the request; events the cursor cannot cover (dated later, or
//! without a usable time) are remembered by id once forwarded ([`forwarded`]). With
//! `overlap_secs`, open-ended polls also look back before the checkpoint for events indexed late
//! ([`checkpoint::Cursor::look_back_start`]).

pub mod checkpoint;
pub mod client;
pub mod config;
pub mod forwarded;
pub mod page;
pub mod signing;
pub mod window;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam::channel::{Receiver, Sender, TrySendError};

use crate::event::Timestamp;
use crate::metrics::ReaderCounters;
use crate::net::FrameBatch;
use crate::pipeline::ack::{AckOutcome, AckToken};
use checkpoint::{CheckpointStore, Cursor, Loaded, Overlap, Poll};
use client::{Client, ErrorKind, FetchError};
pub use config::{DarktraceApiConfig, Endpoint};
use forwarded::ForwardedIds;
use window::Window;

pub const POLLS: &str = "sluice_darktrace_api_polls_total";
pub const EVENTS: &str = "sluice_darktrace_api_events_total";
pub const DUPLICATES: &str = "sluice_darktrace_api_duplicate_events_total";
/// Events returned again after they were forwarded, which the cursor cannot cover: label
/// `reason` = `untimed` (no usable time) or `future_dated` (dated after the request).
pub const SUPPRESSED: &str = "sluice_darktrace_api_suppressed_events_total";
/// Events dated more than [`checkpoint::FUTURE_SLACK_MS`] after the request that fetched
/// them, committed to the sinks.
pub const FUTURE_EVENTS: &str = "sluice_darktrace_api_future_events_total";
/// Events dated before the checkpoint that a look-back (`overlap_secs`) found and committed:
/// the appliance indexed them after the cursor had passed their time.
pub const LATE_EVENTS: &str = "sluice_darktrace_api_late_events_total";
pub const ERRORS: &str = "sluice_darktrace_api_errors_total";
pub const CHECKPOINT_AGE: &str = "sluice_darktrace_api_checkpoint_age_seconds";
pub const CHECKPOINT_TIME: &str = "sluice_darktrace_api_checkpoint_timestamp_seconds";

/// Where a source's checkpoints live: `data_dir/checkpoints/<source>/`.
pub fn checkpoint_dir(data_dir: &Path, source: &str) -> PathBuf {
    data_dir.join("checkpoints").join(source)
}

/// The pipeline side of a running source (like a socket reader's `ReaderContext`).
pub struct SourceContext {
    pub source_index: u16,
    pub source_name: Arc<str>,
    pub to_worker: Sender<FrameBatch>,
    pub recycled: Receiver<FrameBatch>,
    pub shutdown: Arc<AtomicBool>,
    pub counters: ReaderCounters,
}

struct EndpointPoller {
    endpoint: Endpoint,
    store: Arc<CheckpointStore>,
    cursor: Cursor,
    window: Window,
    forwarded: ForwardedIds,
    /// The next open-ended poll looks back `overlap_secs` before the cursor. Cleared by a
    /// look-back that found nothing new, so that the poll after it asks from the cursor: an
    /// appliance that caps its answers could otherwise fill every answer with the look-back's
    /// old events, and the cursor would never move.
    look_back: bool,
}

/// A source ready to run: client built, checkpoints loaded.
pub struct DarktraceApiSource {
    name: Arc<str>,
    config: DarktraceApiConfig,
    client: Arc<Client>,
    pollers: Vec<EndpointPoller>,
}

impl DarktraceApiSource {
    /// Builds the client (CA bundle, tokens) and reads the checkpoints; any error stops the
    /// start-up (a damaged checkpoint is never silently reset).
    pub fn prepare(
        name: &str,
        config: &DarktraceApiConfig,
        data_dir: &Path,
    ) -> anyhow::Result<DarktraceApiSource> {
        let client = Client::new(name, config)?;
        let url = checkpoint::stream_url(client.base());
        let dir = checkpoint_dir(data_dir, name);
        let query = config.query_text();
        let mut pollers = Vec::new();
        for &endpoint in &config.endpoints {
            let store =
                Arc::new(CheckpointStore::new(&dir, &url, endpoint).with_query(query.clone()));
            let path = store.path().display();
            let lookback = config.first_poll_lookback_secs;
            let fresh = || {
                // Saturating: the key is any u64, and an overflow here must not panic.
                Cursor::at(
                    checkpoint::now_ms().saturating_sub(
                        i64::try_from(lookback)
                            .unwrap_or(i64::MAX)
                            .saturating_mul(1000),
                    ),
                )
            };
            let loaded = store.load()?;
            let adopted = matches!(loaded, Loaded::Adopted(_));
            let cursor = match loaded {
                Loaded::Resume(cp) | Loaded::Adopted(cp) => {
                    match cp.resume_at(checkpoint::now_ms(), fresh().time_ms) {
                        Ok(cursor) if adopted => {
                            tracing::info!(source = %name, endpoint = endpoint.name(), starttime = cp.time_ms,
                                "resuming from checkpoint {path}, written before checkpoints recorded \
                                 the appliance: taken to be {url}'s (recorded at the next commit)");
                            cursor
                        }
                        Ok(cursor) => {
                            tracing::info!(source = %name, endpoint = endpoint.name(), starttime = cp.time_ms,
                                "resuming from checkpoint {path}");
                            if let Some(old) = store.query_changed(&cp) {
                                tracing::warn!(source = %name, endpoint = endpoint.name(),
                                    "checkpoint {path} was written while the source asked with `{old}`; \
                                     it now asks with `{}`: events only the new query returns that are \
                                     dated before the checkpoint ({}) are not fetched (move the file \
                                     away to start again from first_poll_lookback_secs)",
                                    query, time_text(cp.time_ms));
                            }
                            cursor
                        }
                        Err(cursor) => {
                            tracing::warn!(source = %name, endpoint = endpoint.name(), starttime = cursor.time_ms,
                                "checkpoint {path} is dated {}, in the future (a future-dated event \
                                 moved it there, or this host's clock went back): resuming from when \
                                 it was written ({}) less 5 minutes, as events dated after that were \
                                 never asked for; events of those 5 minutes may be forwarded again",
                                time_text(cp.time_ms), time_text(cp.written_at_ms));
                            cursor
                        }
                    }
                }
                Loaded::OtherStream(cp) => {
                    let cursor = fresh();
                    // Its time is another appliance's: resuming from it would skip or repeat.
                    tracing::warn!(source = %name, endpoint = endpoint.name(), starttime = cursor.time_ms,
                        "checkpoint {path} was written for {} ({}), not for {url} ({}): not used; \
                         starting {lookback}s back as a new source would (the file is replaced \
                         at the first commit)",
                        cp.url.as_deref().unwrap_or("an unrecorded appliance"), cp.endpoint,
                        endpoint.name());
                    cursor
                }
                Loaded::Nothing => {
                    let cursor = fresh();
                    tracing::info!(source = %name, endpoint = endpoint.name(), starttime = cursor.time_ms,
                        "no checkpoint yet: starting {lookback}s back");
                    cursor
                }
            };
            pollers.push(EndpointPoller {
                endpoint,
                store,
                cursor,
                window: Window::default(),
                forwarded: ForwardedIds::new(config.max_remembered_ids),
                look_back: true,
            });
        }
        Ok(DarktraceApiSource {
            name: Arc::from(name),
            config: config.clone(),
            client: Arc::new(client),
            pollers,
        })
    }

    /// The API tokens, for `systemctl reload` to read again.
    pub fn credentials(&self) -> Arc<dyn crate::config::credential::Renew> {
        self.client.credentials()
    }

    /// Polls until `ctx.shutdown` is set. Events handed over but not yet committed are still
    /// checkpointed when the pipeline drains them (the callback does not need this thread).
    pub fn run(self, ctx: SourceContext) -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            name: self.name.clone(),
            client: self.client,
            rate: RateLimiter::new(self.config.rate_limit_per_second),
            poll_interval: self.config.poll_interval(),
            backoff: crate::sink::runtime::RetryConfig {
                initial_backoff_ms: self.config.initial_backoff_ms,
                max_backoff_ms: self.config.max_backoff_ms,
                ..Default::default()
            },
            max_backoff: Duration::from_millis(self.config.max_backoff_ms),
            max_response_bytes: self.config.max_response_bytes,
            overlap: self.config.overlap(),
            ctx,
            commits: AtomicU64::new(0),
        });
        runtime.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            let mut gauges = Vec::new();
            for poller in self.pollers {
                gauges.push((
                    poller.store.clone(),
                    metrics::gauge!(CHECKPOINT_AGE, "source" => shared.name.to_string(), "endpoint" => poller.endpoint.name()),
                    metrics::gauge!(CHECKPOINT_TIME, "source" => shared.name.to_string(), "endpoint" => poller.endpoint.name()),
                ));
                tasks.spawn(shared.clone().poll_endpoint(poller));
            }
            loop {
                for (store, age, time) in &gauges {
                    age.set(store.age_seconds());
                    time.set(store.event_time_ms() as f64 / 1000.0);
                }
                if shared.stopping() {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    done = tasks.join_next() => if done.is_none() { break },
                }
            }
            // Each task returns within one shutdown check of the flag.
            while tasks.join_next().await.is_some() {}
        });
        tracing::debug!(source = %self.name, "darktrace_api source stopped");
        Ok(())
    }
}

struct Shared {
    name: Arc<str>,
    client: Arc<Client>,
    rate: RateLimiter,
    poll_interval: Duration,
    backoff: crate::sink::runtime::RetryConfig,
    max_backoff: Duration,
    max_response_bytes: usize,
    overlap: Overlap,
    ctx: SourceContext,
    /// Numbers commits so the checkpoint store never writes an older one over a newer one.
    commits: AtomicU64,
}

/// What became of one answer.
enum HandedOver {
    /// Nothing new since the checkpoint: caught up.
    Nothing,
    /// A look-back brought nothing new: the next poll asks from the checkpoint on, at once
    /// (with an appliance that caps its answers, the look-back may have seen only old events).
    LookedBackForNothing,
    /// Nothing new, but the checkpoint moved: to a bounded window's end, or past events
    /// forwarded earlier (and was written, unless the error says otherwise).
    Moved {
        next: Cursor,
        checkpoint_error: Option<String>,
    },
    /// `n` new events are on their way to the sinks; `next` once they are committed, and
    /// `remember` ([`checkpoint::Selection::remember`]) then joins the forwarded ids.
    Sent {
        waiting: tokio::sync::oneshot::Receiver<Committed>,
        next: Cursor,
        n: u64,
        remember: Vec<String>,
        future: u64,
        late: u64,
    },
    /// Shutdown came while the worker queue was full: nothing was handed over.
    Stopped,
}

/// What the commit callback reports back to the polling task.
enum Committed {
    Yes { checkpoint_error: Option<String> },
    No,
}

const SHUTDOWN_CHECK: Duration = Duration::from_millis(100);

impl Shared {
    fn stopping(&self) -> bool {
        self.ctx.shutdown.load(Ordering::Relaxed)
    }

    async fn stopped(&self) {
        while !self.stopping() {
            tokio::time::sleep(SHUTDOWN_CHECK).await;
        }
    }

    /// Sleeps `d`; false when shutdown came first.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.stopping(),
            _ = self.stopped() => false,
        }
    }

    async fn poll_endpoint(self: Arc<Self>, mut p: EndpointPoller) {
        let endpoint = p.endpoint.name();
        let labels = [
            ("source", self.name.to_string()),
            ("endpoint", endpoint.to_owned()),
        ];
        let polls = metrics::counter!(POLLS, &labels);
        let events_total = metrics::counter!(EVENTS, &labels);
        let duplicates = metrics::counter!(DUPLICATES, &labels);
        let future_total = metrics::counter!(FUTURE_EVENTS, &labels);
        let late_total = metrics::counter!(LATE_EVENTS, &labels);
        let suppressed = Suppressed {
            untimed: metrics::counter!(SUPPRESSED, "source" => self.name.to_string(), "endpoint" => endpoint, "reason" => "untimed"),
            future_dated: metrics::counter!(SUPPRESSED, "source" => self.name.to_string(), "endpoint" => endpoint, "reason" => "future_dated"),
        };
        let error = |kind: ErrorKind| {
            metrics::counter!(ERRORS, "source" => self.name.to_string(), "endpoint" => endpoint, "kind" => kind.as_str())
                .increment(1);
        };
        let mut failures: u32 = 0;
        loop {
            if !self.rate.acquire(&self).await {
                return;
            }
            polls.increment(1);
            let now = checkpoint::now_ms();
            let endtime = p.window.end(p.cursor.time_ms, now);
            // A bounded window walks a backlog, long past: only open-ended polls look back.
            let from_ms = if endtime.is_none() && p.look_back {
                p.cursor.look_back_start(self.overlap.ms)
            } else {
                p.cursor.time_ms
            };
            let poll = Poll {
                from_ms,
                at_ms: now,
                overlap: self.overlap,
            };
            let fetched = tokio::select! {
                r = self.client.fetch(p.endpoint, from_ms, endtime) => r,
                _ = self.stopped() => return,
            };
            if let Ok(body) = &fetched {
                p.window
                    .answered(endtime.is_some(), body.len(), self.max_response_bytes);
            }
            let outcome = match fetched {
                Ok(body) => {
                    self.hand_over(&mut p, &body, poll, endtime, &duplicates, &suppressed)
                        .await
                }
                Err(e) => Err(e),
            };
            let mut narrowed = false;
            let failure = match outcome {
                Ok(HandedOver::Nothing) => {
                    // Caught up: nothing new since the checkpoint.
                    failures = 0;
                    p.store.touch();
                    if !self.pause(self.poll_interval).await {
                        return;
                    }
                    continue;
                }
                Ok(HandedOver::LookedBackForNothing) => {
                    failures = 0;
                    continue;
                }
                Ok(HandedOver::Moved {
                    next,
                    checkpoint_error,
                }) => {
                    p.cursor = next;
                    failures = 0;
                    if let Some(message) = checkpoint_error {
                        error(ErrorKind::CheckpointWrite);
                        tracing::error!(source = %self.name, endpoint,
                            "the checkpoint was not written: {message}; a restart now would ask \
                             for the same events again");
                    }
                    continue;
                }
                Ok(HandedOver::Stopped) => return,
                Ok(HandedOver::Sent {
                    waiting,
                    next,
                    n,
                    remember,
                    future,
                    late,
                }) => {
                    let committed = tokio::select! {
                        c = waiting => c.unwrap_or(Committed::No),
                        _ = self.stopped() => return,
                    };
                    match committed {
                        Committed::Yes { checkpoint_error } => {
                            p.cursor = next;
                            events_total.increment(n);
                            future_total.increment(future);
                            late_total.increment(late);
                            for id in remember {
                                p.forwarded.insert(id);
                            }
                            failures = 0;
                            if let Some(message) = checkpoint_error {
                                error(ErrorKind::CheckpointWrite);
                                tracing::error!(source = %self.name, endpoint,
                                    "events are spooled but the checkpoint was not written: {message}; \
                                     a restart now would fetch them again");
                            }
                            // Poll again at once: more may be waiting (the rate limit paces it).
                            continue;
                        }
                        Committed::No => FetchError {
                            kind: ErrorKind::NotCommitted,
                            message: "a sink did not take the events (see its log); they are fetched again"
                                .into(),
                            retry_after: None,
                        },
                    }
                }
                Err(mut e) => {
                    if from_ms < p.cursor.time_ms {
                        // Whatever failed, the poll after asks from the checkpoint on: a
                        // look-back too large for one answer must not stop the cursor, and
                        // says nothing about the backlog after the checkpoint.
                        p.look_back = false;
                        e.message.push_str(&format!(
                            " (a look-back of overlap_secs = {} before the checkpoint; the next \
                             poll asks from the checkpoint on; if this repeats, lower \
                             overlap_secs or raise max_response_bytes / request_timeout_ms)",
                            self.overlap.ms / 1000
                        ));
                    } else if matches!(e.kind, ErrorKind::ResponseTooLarge | ErrorKind::Timeout) {
                        narrowed = self.narrow_window(&mut p, now, &mut e);
                    }
                    e
                }
            };
            error(failure.kind);
            let delay = match failure.retry_after {
                // Nothing is wrong with the appliance: the narrower request goes out at once
                // (the rate limit still paces it).
                _ if narrowed && failure.kind == ErrorKind::ResponseTooLarge => Duration::ZERO,
                Some(after) => after.min(self.max_backoff),
                None => self.backoff.backoff(failures),
            };
            failures = failures.saturating_add(1);
            if failure.kind.needs_operator() {
                tracing::error!(source = %self.name, endpoint, kind = failure.kind.as_str(),
                    retry_in = ?delay, "Darktrace API: {}", failure.message);
            } else {
                tracing::warn!(source = %self.name, endpoint, kind = failure.kind.as_str(),
                    retry_in = ?delay, "Darktrace API poll failed: {}", failure.message);
            }
            if !self.pause(delay).await {
                return;
            }
        }
    }

    /// An answer from the checkpoint on was too large or too slow: the next requests ask for
    /// a narrower window, or, when none can be narrower, the message says what to change.
    /// Returns whether it could.
    fn narrow_window(&self, p: &mut EndpointPoller, now: i64, e: &mut FetchError) -> bool {
        if p.window.narrow(p.cursor.time_ms, now) {
            let span = p.window.span_ms().unwrap_or_default();
            tracing::info!(source = %self.name, endpoint = p.endpoint.name(), starttime = p.cursor.time_ms,
                span_s = span as f64 / 1000.0, "asking for a narrower time window (endtime) after: {}", e.message);
            true
        } else {
            e.message.push_str(
                "; the window from the checkpoint cannot be narrowed further (it is at its \
                 minimum or reaches the last minutes): raise max_response_bytes or \
                 request_timeout_ms",
            );
            false
        }
    }

    /// Selects the new events of `body` (the answer for `starttime = poll.from_ms`, up to
    /// `endtime` when bounded) and sends them to the worker.
    async fn hand_over(
        &self,
        p: &mut EndpointPoller,
        body: &[u8],
        poll: Poll,
        endtime: Option<i64>,
        duplicates: &metrics::Counter,
        suppressed: &Suppressed,
    ) -> Result<HandedOver, FetchError> {
        let events = page::parse(body, p.endpoint).map_err(|e| FetchError {
            kind: ErrorKind::BadResponse,
            message: e.to_string(),
            retry_after: None,
        })?;
        let requested_at_ms = poll.at_ms;
        let selection = checkpoint::select(&p.cursor, &events, poll, &p.forwarded);
        let looked_back = poll.from_ms < p.cursor.time_ms;
        p.look_back = !(looked_back && selection.new.is_empty());
        duplicates.increment(selection.duplicates);
        suppressed.untimed.increment(selection.suppressed_untimed);
        suppressed
            .future_dated
            .increment(selection.suppressed_future);
        // Once per event: a forwarded event's id is remembered, so its return is suppressed
        // rather than warned about again.
        if !selection.untimed.is_empty() {
            tracing::warn!(source = %self.name, endpoint = p.endpoint.name(),
                events = selection.untimed.len(), ids = %sample_ids(&events, &selection.untimed),
                "events without a usable time field: forwarded; they cannot move the checkpoint, \
                 their ids are remembered (max_remembered_ids) so that they are not forwarded again");
        }
        if !selection.future.is_empty() {
            let latest = selection
                .future
                .iter()
                .filter_map(|&i| events[i].time_ms)
                .max()
                .unwrap_or_default();
            tracing::warn!(source = %self.name, endpoint = p.endpoint.name(),
                events = selection.future.len(), ids = %sample_ids(&events, &selection.future),
                latest = %time_text(latest), requested_at = %time_text(requested_at_ms),
                "events dated in the future (check the clock of the appliance or of what reported \
                 them): forwarded; they do not move the checkpoint, and their ids are \
                 remembered (max_remembered_ids) so that they are not forwarded again");
        }
        if !selection.late.is_empty() {
            let earliest = selection
                .late
                .iter()
                .filter_map(|&i| events[i].time_ms)
                .min()
                .unwrap_or_default();
            tracing::info!(source = %self.name, endpoint = p.endpoint.name(),
                events = selection.late.len(), ids = %sample_ids(&events, &selection.late),
                earliest = %time_text(earliest), checkpoint = %time_text(p.cursor.time_ms),
                "the look-back found events dated before the checkpoint (the appliance indexed \
                 them late): forwarded");
        }
        if selection.new.is_empty() {
            let next = match endtime.filter(|&end| end > selection.next.time_ms) {
                // Nothing new up to the window's end: the next window starts there. Events at
                // exactly `end` were in this answer if the appliance counts `endtime` in, and
                // are asked for again (`starttime` is inclusive) if not.
                Some(end) => selection.next.moved_to(
                    end,
                    Default::default(),
                    std::iter::empty(),
                    self.overlap,
                ),
                None if selection.next != p.cursor => selection.next,
                None if looked_back => return Ok(HandedOver::LookedBackForNothing),
                None => return Ok(HandedOver::Nothing),
            };
            let seq = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
            let checkpoint_error = p
                .store
                .commit(seq, &p.store.checkpoint(&next))
                .err()
                .map(|e| e.to_string());
            return Ok(HandedOver::Moved {
                next,
                checkpoint_error,
            });
        }
        let mut batch = FrameBatch::reused(&self.ctx.recycled, self.ctx.source_index);
        batch.received_at = Some(Timestamp::now());
        let mut message = Vec::new();
        for &i in &selection.new {
            message.clear();
            page::write_message(&events[i], p.endpoint, &mut message);
            batch.push(&message, None, false);
        }
        let n = selection.new.len() as u64;
        let future = selection.future.len() as u64;
        let late = selection.late.len() as u64;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let store = p.store.clone();
        let seq = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        let cp = p.store.checkpoint(&selection.next);
        // Runs on the pipeline thread that releases the last clone, possibly after this
        // source has stopped (shutdown drain): it writes the checkpoint itself.
        batch.ack = Some(AckToken::new(move |outcome| {
            let reply = match outcome {
                AckOutcome::Committed => Committed::Yes {
                    checkpoint_error: store.commit(seq, &cp).err().map(|e| e.to_string()),
                },
                AckOutcome::Failed => Committed::No,
            };
            let _ = tx.send(reply);
        }));
        let bytes = batch.data.len() as u64;
        drop(events);
        match send_to_worker(&self.ctx.to_worker, &self.ctx.shutdown, batch).await {
            Ok(()) => {}
            Err(NotSent::Stopping) => return Ok(HandedOver::Stopped),
            Err(NotSent::WorkersGone) => {
                return Err(FetchError {
                    kind: ErrorKind::NotCommitted,
                    message: "the pipeline workers are gone".into(),
                    retry_after: None,
                });
            }
        }
        // Counted once handed over: a batch given up at shutdown is fetched again later.
        self.ctx.counters.received_messages.increment(n);
        self.ctx.counters.received_bytes.increment(bytes);
        Ok(HandedOver::Sent {
            waiting: rx,
            next: selection.next,
            n,
            remember: selection.remember,
            future,
            late,
        })
    }
}

struct Suppressed {
    untimed: metrics::Counter,
    future_dated: metrics::Counter,
}

/// The first few ids of `which`, for a log line that stays one line however many there are.
fn sample_ids(events: &[page::ApiEvent<'_>], which: &[usize]) -> String {
    const SHOWN: usize = 5;
    let mut text = which
        .iter()
        .take(SHOWN)
        .map(|&i| events[i].id.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if which.len() > SHOWN {
        text.push_str(&format!(", … ({} more)", which.len() - SHOWN));
    }
    text
}

fn time_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// Why a batch did not reach the worker.
#[derive(Debug, PartialEq, Eq)]
enum NotSent {
    /// Shutdown came while the queue was full.
    Stopping,
    WorkersGone,
}

/// Longest pause between two tries at a full worker queue.
const FULL_QUEUE_MAX_WAIT: Duration = Duration::from_millis(50);

/// Hands `batch` to the worker, waiting while its queue is full: that wait is the
/// backpressure. The queue is a crossbeam channel, whose blocking `send` would hold the
/// source's single runtime thread (every endpoint, the gauges, the shutdown check), so it is
/// tried again after async pauses instead. A batch that is not sent has its token failed: a
/// token dropped unfailed reports its events committed and would move the checkpoint past
/// events no sink has.
async fn send_to_worker(
    to_worker: &Sender<FrameBatch>,
    shutdown: &AtomicBool,
    mut batch: FrameBatch,
) -> Result<(), NotSent> {
    let mut wait = Duration::from_millis(1);
    loop {
        let why = match to_worker.try_send(batch) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(b)) => {
                batch = b;
                if !shutdown.load(Ordering::Relaxed) {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(FULL_QUEUE_MAX_WAIT);
                    continue;
                }
                NotSent::Stopping
            }
            Err(TrySendError::Disconnected(b)) => {
                batch = b;
                NotSent::WorkersGone
            }
        };
        if let Some(token) = batch.ack.take() {
            token.fail();
        }
        return Err(why);
    }
}

/// Spaces requests of all endpoints of a source at least `1 / rate` apart.
struct RateLimiter {
    interval: Duration,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl RateLimiter {
    fn new(per_second: f64) -> RateLimiter {
        RateLimiter {
            interval: Duration::from_secs_f64(1.0 / per_second),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for this request's slot; false on shutdown.
    async fn acquire(&self, shared: &Shared) -> bool {
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::select! {
            _ = tokio::time::sleep_until(slot) => !shared.stopping(),
            _ = shared.stopped() => false,
        }
    }
}

#[cfg(test)]
mod tests;
