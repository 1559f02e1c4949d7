//! The per-core pipeline: readers → bounded queues → parser workers (parse, route, map, batch)
//! → per-sink delivery threads (compress, write). Control flow for start-up and shutdown.
//!
//! Shutdown drains front to back: readers stop and hand over what they read; their queue
//! senders drop, so each worker sees its queue disconnect once it is empty, seals its batches
//! and exits; that drops the sink queue senders, so the delivery threads finish the last batches.
//! A worker found stalled (see [`stall`]) is not waited for: its queues are drained and counted,
//! and the delivery threads are told to finish once every other worker has.

pub mod ack;
pub mod senders;
mod sink_stage;
mod stall;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam::channel::bounded;

use crate::config::credential::Renew;
use crate::config::{Config, SourceConfig, available_cores};
use crate::metrics::ReaderCounters;
use crate::net::{Backend, FrameBatch, ReaderContext};
use crate::sink::runtime::SinkHandle;

/// A task the maintenance thread runs about once a second (e.g. reading per-socket kernel drop
/// counters, refreshing gauges).
pub type PeriodicTask = Box<dyn FnMut() + Send>;

/// Called with a UDP port and its `(reader core, socket fd)` list; see [`Pipeline::start_with`].
pub type UdpPortBound<'a> = dyn FnMut(u16, &[(usize, std::os::fd::RawFd)]) + 'a;

/// Counts kept beside the metrics so the daemon can report them at exit.
#[derive(Debug, Default)]
pub struct Totals {
    /// Counted by the readers (everything taken off the sockets).
    pub received_messages: AtomicU64,
    /// Counted by the workers (everything handed over by the readers).
    pub parsed_messages: AtomicU64,
    pub received_bytes: AtomicU64,
    pub parse_errors: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_oversize: AtomicU64,
    pub dropped_kernel_rcvbuf: AtomicU64,
    /// UDP datagrams that went through a reader's disk overflow.
    pub overflowed: AtomicU64,
    pub dropped_overflow_error: AtomicU64,
    pub sink_events: AtomicU64,
    pub sink_batches: AtomicU64,
    pub sink_dropped_events: AtomicU64,
    /// Messages a panicked worker held or left in its queues (`reason="thread_panicked"`).
    pub dropped_thread_panicked: AtomicU64,
    /// Of `sink_dropped_events`: events of sink batches a panicked worker held or a panicked
    /// sink thread held or left in its queue.
    pub sink_dropped_thread_panicked: AtomicU64,
    /// Messages a stalled worker held or left in its queues (`reason="worker_stalled"`).
    pub dropped_worker_stalled: AtomicU64,
    /// Of `sink_dropped_events`: events of the open sink batches of a stalled worker.
    pub sink_dropped_worker_stalled: AtomicU64,
}

/// A snapshot of [`Totals`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub received_messages: u64,
    pub parsed_messages: u64,
    pub received_bytes: u64,
    pub parse_errors: u64,
    pub dropped_queue_full: u64,
    pub dropped_oversize: u64,
    pub dropped_kernel_rcvbuf: u64,
    pub overflowed: u64,
    pub dropped_overflow_error: u64,
    pub sink_events: u64,
    pub sink_batches: u64,
    pub sink_dropped_events: u64,
    pub dropped_thread_panicked: u64,
    pub sink_dropped_thread_panicked: u64,
    pub dropped_worker_stalled: u64,
    pub sink_dropped_worker_stalled: u64,
}

impl Totals {
    pub fn summary(&self) -> Summary {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Summary {
            received_messages: l(&self.received_messages),
            parsed_messages: l(&self.parsed_messages),
            received_bytes: l(&self.received_bytes),
            parse_errors: l(&self.parse_errors),
            dropped_queue_full: l(&self.dropped_queue_full),
            dropped_oversize: l(&self.dropped_oversize),
            dropped_kernel_rcvbuf: l(&self.dropped_kernel_rcvbuf),
            overflowed: l(&self.overflowed),
            dropped_overflow_error: l(&self.dropped_overflow_error),
            sink_events: l(&self.sink_events),
            sink_batches: l(&self.sink_batches),
            sink_dropped_events: l(&self.sink_dropped_events),
            dropped_thread_panicked: l(&self.dropped_thread_panicked),
            sink_dropped_thread_panicked: l(&self.sink_dropped_thread_panicked),
            dropped_worker_stalled: l(&self.dropped_worker_stalled),
            sink_dropped_worker_stalled: l(&self.sink_dropped_worker_stalled),
        }
    }

    /// Counts `messages` of `source` lost with a thread that panicked or stalled.
    fn lost_messages(&self, source: &str, messages: u64, lost: Lost) {
        if messages == 0 {
            return;
        }
        let (reason, total) = match lost {
            Lost::Panicked => (
                crate::metrics::DROP_THREAD_PANICKED,
                &self.dropped_thread_panicked,
            ),
            Lost::Stalled => (
                crate::metrics::DROP_WORKER_STALLED,
                &self.dropped_worker_stalled,
            ),
        };
        metrics::counter!(crate::metrics::DROPPED_MESSAGES, "source" => source.to_string(),
            "reason" => reason)
        .increment(messages);
        total.fetch_add(messages, Ordering::Relaxed);
    }

    /// Counts the reader batch a worker that panicked or stalled held: `done` frames are in
    /// sink batches (sealed ones delivered, open ones counted as the sinks' dropped events), so
    /// they count as parsed; counting them as dropped too would count them twice, or count
    /// delivered ones as lost. The other `undone` are lost.
    fn lost_batch_in_hand(&self, source: &str, undone: u64, done: u64, lost: Lost) {
        self.parsed_messages.fetch_add(done, Ordering::Relaxed);
        self.lost_messages(source, undone, lost);
    }

    /// Counts `events` of a sink batch lost with a worker or sink thread that panicked or
    /// stalled.
    fn lost_events(&self, dropped_events: &metrics::Counter, events: u64, lost: Lost) {
        if events == 0 {
            return;
        }
        dropped_events.increment(events);
        self.sink_dropped_events
            .fetch_add(events, Ordering::Relaxed);
        match lost {
            Lost::Panicked => &self.sink_dropped_thread_panicked,
            Lost::Stalled => &self.sink_dropped_worker_stalled,
        }
        .fetch_add(events, Ordering::Relaxed);
    }
}

/// How a pipeline thread was lost, with what it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    Panicked,
    /// A worker found stalled, given up on at shutdown.
    Stalled,
}

/// A counter that also adds into one of the [`Totals`].
struct TeeCounter {
    inner: metrics::Counter,
    total: Arc<Totals>,
    field: fn(&Totals) -> &AtomicU64,
}

impl metrics::CounterFn for TeeCounter {
    fn increment(&self, value: u64) {
        self.inner.increment(value);
        (self.field)(&self.total).fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.inner.absolute(value);
    }
}

fn tee(
    inner: metrics::Counter,
    total: &Arc<Totals>,
    field: fn(&Totals) -> &AtomicU64,
) -> metrics::Counter {
    metrics::Counter::from_arc(Arc::new(TeeCounter {
        inner,
        total: total.clone(),
        field,
    }))
}

fn kernel_drop_counter(source: &str, totals: &Arc<Totals>) -> metrics::Counter {
    let inner = metrics::counter!(
        crate::metrics::DROPPED_MESSAGES, "source" => source.to_string(), "reason" => crate::metrics::DROP_KERNEL_RCVBUF
    );
    tee(inner, totals, |t| &t.dropped_kernel_rcvbuf)
}

/// The CPUs this process may run on (its affinity mask at start-up), in order. Threads are
/// pinned to these, so a daemon started under `taskset -c 1` (or in a cpuset) stays inside its
/// set instead of moving to CPU 0.
fn allowed_cpus() -> Vec<usize> {
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect::<Vec<_>>())
        .filter(|ids| !ids.is_empty())
        .unwrap_or_else(|| (0..available_cores()).collect())
}

/// Lowers the calling thread's scheduling priority by `steps` nice levels (at most to 19). On
/// Linux each thread has its own nice value, and raising it needs no privilege. A failure
/// only loses the reader-first ordering, so it is logged, not fatal.
fn lower_thread_priority(steps: u8) {
    if steps == 0 {
        return;
    }
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() } as libc::id_t;
    // -1 is both a valid nice value and the error return: errno tells them apart.
    // SAFETY: writes this thread's own errno.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: plain syscall on this thread's id.
    let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    let error = std::io::Error::last_os_error();
    if current == -1 && error.raw_os_error() != Some(0) {
        tracing::debug!("reading this thread's nice value: {error}");
        return;
    }
    let target = (current + i32::from(steps)).min(19);
    // SAFETY: plain syscall on this thread's id.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, target) } != 0 {
        tracing::debug!(
            "lowering this thread's priority to nice {target}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A queue of reader batches, as its sender and receiver.
type BatchQueue = (
    crossbeam::channel::Sender<FrameBatch>,
    crossbeam::channel::Receiver<FrameBatch>,
);

/// A worker's two input queues: UDP readers fill the deep `datagrams` queue
/// (`queue_batches`), every other source the shallow `streams` queue (`stream_queue_batches`).
struct WorkerQueues {
    datagrams: BatchQueue,
    streams: BatchQueue,
}

/// Whether `source` feeds its worker's deep datagram queue: it cannot push back on its senders,
/// so bursts are held in memory and its readers go first on a shared core (`worker_nice`).
fn is_datagram_source(source: &SourceConfig) -> bool {
    matches!(source, SourceConfig::Udp(_))
}

impl WorkerQueues {
    fn for_source(&self, source: &SourceConfig) -> &BatchQueue {
        if is_datagram_source(source) {
            &self.datagrams
        } else {
            &self.streams
        }
    }
}

/// Capacity of the queue `source` feeds (see [`WorkerQueues`]).
fn queue_depth(pipeline: &crate::config::PipelineConfig, source: &SourceConfig) -> usize {
    if is_datagram_source(source) {
        pipeline.queue_batches
    } else {
        pipeline.stream_queue_batches
    }
}

/// Reads the current length of one queue.
type QueueLen = Box<dyn Fn() -> usize + Send>;

/// A bound listening socket, ready for a reader.
enum Bound {
    Udp(std::net::UdpSocket),
    Tcp(std::net::TcpListener),
    Tls(std::net::TcpListener, Arc<crate::net::tls::TlsAcceptor>),
}

/// A source's `allow` as the guard takes it (checked by `Config::validate` already).
fn source_allowlist(
    name: &str,
    source: &SourceConfig,
) -> anyhow::Result<crate::net::guard::Allowlist> {
    crate::net::guard::Allowlist::parse(source.allow())
        .map_err(|e| anyhow::anyhow!("sources.{name}.allow: {e}"))
}

/// The running pipeline.
pub struct Pipeline {
    backend: Backend,
    /// Where each source listens, in config order (several entries per source: one per thread).
    pub listening: Vec<(String, &'static str, SocketAddr)>,
    reader_stop: Arc<AtomicBool>,
    /// Set when shutdown begins: its grace counts from there.
    shutdown_began: Arc<OnceLock<Instant>>,
    runtime: Option<tokio::runtime::Runtime>,
    /// With each sink's `sluice_sink_dropped_events_total`.
    sink_runtimes: Vec<(String, Arc<SinkHandle>, metrics::Counter)>,
    shutdown_grace: Duration,
    maintenance_stop: Arc<AtomicBool>,
    readers: Vec<(String, JoinHandle<std::io::Result<()>>)>,
    workers: Vec<JoinHandle<()>>,
    sinks: Vec<JoinHandle<()>>,
    /// Which worker and sink threads panicked (a worker with no source routed to it ends at
    /// once, so a finished thread alone says nothing).
    panics: PanicWatch,
    /// The queues worker and sink threads take their work from, to count what a panicked one
    /// left there.
    inboxes: Vec<Inbox>,
    /// The workers' pulses: which one is stalled, and what it holds.
    stalls: stall::StallWatch,
    /// Dropped once every worker has finished or been given up on: the delivery threads then
    /// finish what is queued (a stalled worker still holds its sink queue senders).
    sinks_may_close: Option<crossbeam::channel::Sender<()>>,
    /// Each sink's `sluice_sink_dropped_events_total`, in config order (a worker's sink index).
    sink_dropped: Vec<metrics::Counter>,
    source_names: Vec<Arc<str>>,
    /// Each source's admission guard, by name: holds the allowlist a reload replaces.
    guards: Vec<(String, Arc<crate::net::guard::ConnectionGuard>)>,
    /// Each source's expected senders, by name, which a reload replaces.
    expected_senders: Vec<(String, Arc<senders::ExpectedSenders>)>,
    /// The secrets sources and sinks send, which a reload reads again.
    credentials: Vec<Arc<dyn Renew>>,
    maintenance: Option<JoinHandle<()>>,
    totals: Arc<Totals>,
    started: Instant,
}

impl Pipeline {
    /// Binds every socket, then starts sinks, workers and readers. Nothing is started if any
    /// socket cannot be bound or any sink cannot be opened.
    pub fn start(config: &Config, periodic: Vec<PeriodicTask>) -> anyhow::Result<Pipeline> {
        Self::start_with(config, periodic, &mut |_, _| {})
    }

    /// [`Pipeline::start`], calling `udp_port_bound(port, sockets)` once per UDP port after its
    /// per-core SO_REUSEPORT sockets are bound and before any reader runs, with
    /// `(reader core, fd)` per socket (XDP socket steering attaches there). The fds stay open
    /// for as long as the pipeline runs.
    pub fn start_with(
        config: &Config,
        mut periodic: Vec<PeriodicTask>,
        udp_port_bound: &mut UdpPortBound<'_>,
    ) -> anyhow::Result<Pipeline> {
        let (backend, why) = crate::net::select_backend(config.pipeline.io_backend)
            .map_err(|e| anyhow::anyhow!(e))?;
        tracing::info!(
            backend = backend.name(),
            "socket reader backend: {} ({why})",
            backend.name()
        );
        let cores = available_cores();
        let cpus = allowed_cpus();
        let worker_count = config.pipeline.worker_count();
        let pin = config.pipeline.pin_threads;
        let totals = Arc::new(Totals::default());

        // Sockets first: a port conflict must fail before any thread starts.
        let source_names: Vec<Arc<str>> = config
            .sources
            .keys()
            .map(|k| Arc::from(k.as_str()))
            .collect();
        // Validated with the config; an error here names the key all the same.
        let parse = config
            .parse
            .options()
            .map_err(|e| anyhow::anyhow!("parse.timezone: {e}"))?;
        let started_unix = crate::event::Timestamp::now().unix_secs();
        let source_senders: Vec<Arc<senders::ExpectedSenders>> = config
            .sources
            .iter()
            .map(|(name, source)| {
                senders::ExpectedSenders::register(name, &source.expected_senders(), started_unix)
            })
            .collect();
        let source_zones = config
            .sources
            .keys()
            .map(|name| {
                config
                    .source_zone(name)
                    .map_err(|e| anyhow::anyhow!("sources.{name}.timezone: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut bound = Vec::new();
        let mut listening = Vec::new();
        // API sources: client and checkpoints ready before any thread starts (fail early).
        let mut api_sources = Vec::new();
        // What `systemctl reload` reads again: the API sources' and the sinks' secrets.
        let mut credentials: Vec<Arc<dyn Renew>> = Vec::new();
        for (index, (name, source)) in config.sources.iter().enumerate() {
            if let SourceConfig::DarktraceApi(api) = source {
                let prepared = crate::source::darktrace_api::DarktraceApiSource::prepare(
                    name,
                    api,
                    &config.data_dir,
                )
                .with_context(|| format!("source `{name}`"))?;
                credentials.push(prepared.credentials());
                api_sources.push((index, prepared));
            }
        }
        for (index, (name, source)) in config.sources.iter().enumerate() {
            let Some(settings) = source.net_settings() else {
                continue;
            };
            let tls = match source {
                SourceConfig::Tls(t) => {
                    let acceptor = crate::net::tls::TlsAcceptor::new(name, t.tls_files())
                        .map_err(|e| anyhow::anyhow!("`sources.{name}.{}`: {e}", e.key()))?;
                    let poll = acceptor.clone();
                    periodic.push(Box::new(move || poll.poll_reload()));
                    Some(acceptor)
                }
                _ => None,
            };
            let mut addr = settings.listen;
            for thread in 0..settings.threads {
                let (socket, rcvbuf) = match source {
                    SourceConfig::Udp(_) => {
                        let (s, r) = crate::net::bind_udp(addr, settings.receive_buffer_bytes)?;
                        addr = s.local_addr()?;
                        let counter = kernel_drop_counter(name, &totals);
                        match crate::net::drops::KernelDrops::with_counter(&s, counter) {
                            Ok(mut drops) => periodic.push(Box::new(move || {
                                if let Err(e) = drops.poll() {
                                    tracing::debug!("reading the socket drop counter: {e}");
                                }
                            })),
                            Err(e) => {
                                tracing::warn!(source = %name, "kernel drop counter unavailable: {e}")
                            }
                        }
                        (Bound::Udp(s), r)
                    }
                    SourceConfig::Tcp(_) => {
                        let (s, r) = crate::net::bind_tcp(addr, settings.receive_buffer_bytes)?;
                        addr = s.local_addr()?;
                        (Bound::Tcp(s), r)
                    }
                    SourceConfig::Tls(_) => {
                        let (s, r) = crate::net::bind_tcp(addr, settings.receive_buffer_bytes)?;
                        addr = s.local_addr()?;
                        let acceptor = tls.clone().expect("made above for tls sources");
                        (Bound::Tls(s, acceptor), r)
                    }
                    // Has no net settings: skipped above.
                    SourceConfig::DarktraceApi(_) => continue,
                };
                if thread == 0 {
                    if rcvbuf < settings.receive_buffer_bytes {
                        tracing::warn!(
                            source = %name, requested = settings.receive_buffer_bytes, effective = rcvbuf,
                            "receive buffer smaller than configured: raise net.core.rmem_max or run with CAP_NET_ADMIN"
                        );
                    } else {
                        tracing::info!(source = %name, effective = rcvbuf, "receive buffer");
                    }
                }
                listening.push((name.clone(), source.type_name(), addr));
                bound.push((index, thread, socket));
            }
        }

        {
            use std::os::fd::AsRawFd;
            let mut udp_ports: std::collections::BTreeMap<u16, Vec<(usize, std::os::fd::RawFd)>> =
                Default::default();
            for (_, thread, socket) in &bound {
                if let Bound::Udp(s) = socket {
                    udp_ports
                        .entry(s.local_addr()?.port())
                        .or_default()
                        .push((thread % cores, s.as_raw_fd()));
                }
            }
            for (port, sockets) in &udp_ports {
                udp_port_bound(*port, sockets);
            }
        }

        // Sinks: each behind its spool, delivered by a small tokio runtime shared by all sinks.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.pipeline.sink_runtime_threads)
            .thread_name("sluice-sink-rt")
            .enable_all()
            .build()
            .context("starting the sink runtime")?;
        let mut sink_runtimes = Vec::new();
        let mut sink_handles = Vec::new();
        let panics = PanicWatch::default();
        let (sinks_may_close, sinks_closed) = bounded::<()>(0);
        let mut sink_dropped = Vec::new();
        let mut inboxes = Vec::new();
        let mut sink_ports = Vec::new();
        let mut depth_gauges: Vec<(metrics::Gauge, QueueLen)> = Vec::new();
        let reader_stop = Arc::new(AtomicBool::new(false));
        let shutdown_began = Arc::new(OnceLock::new());
        let shutdown_grace = Duration::from_millis(config.pipeline.shutdown_grace_ms);
        // Reader-first scheduling is for sources that cannot push back (UDP). With only
        // streams it measured 2–3 % more CPU per message over TCP (the reader then preempts
        // the worker for every completion), for nothing: flow control already waits.
        let worker_nice = if config.sources.values().any(is_datagram_source) {
            config.pipeline.worker_nice
        } else {
            0
        };

        for (name, sink) in &config.sinks {
            let counters = crate::metrics::SinkCounters::register(name);
            let (tx, rx) = bounded(config.pipeline.sink_queue_batches);
            let depth = rx.clone();
            depth_gauges.push((
                crate::metrics::queue_depth_gauge("sink", name.clone()),
                Box::new(move || depth.len()),
            ));
            // Emptied batch buffers go back to the workers; one per batch that can be in
            // flight at once is enough, more would only pin memory.
            let (spare_tx, spare_rx) =
                bounded(config.pipeline.sink_queue_batches + worker_count + 1);
            match &sink.kind {
                crate::config::SinkKind::File(f) if !f.use_spool => {
                    let file = Arc::new(
                        crate::sink::file::FileSink::new(name, f.clone()).with_context(|| {
                            format!("sink `{name}`: cannot open directory {}", f.path.display())
                        })?,
                    );
                    inboxes.push(Inbox {
                        thread: format!("sink {name} thread"),
                        worker: None,
                        threads: f.compression_threads,
                        queued: Queued::SinkBatches {
                            queue: rx.clone(),
                            dropped_events: counters.dropped_events.clone(),
                        },
                    });
                    for thread in 0..f.compression_threads {
                        let stage = sink_stage::FileStage {
                            name: name.clone(),
                            sink: file.clone(),
                            queue: rx.clone(),
                            closed: sinks_closed.clone(),
                            spare: spare_tx.clone(),
                            counters: counters.clone(),
                            totals: totals.clone(),
                            shutdown_began: shutdown_began.clone(),
                            grace: shutdown_grace,
                        };
                        sink_handles.push(
                            std::thread::Builder::new()
                                .name(format!("sluice-file-{name}-{thread}"))
                                .spawn({
                                    let (panics, name) = (panics.clone(), name.to_string());
                                    move || {
                                        let _watch = panics.watch(format!("sink {name} thread"));
                                        lower_thread_priority(worker_nice);
                                        stage.run()
                                    }
                                })?,
                        );
                    }
                }
                _ => {
                    let handle = {
                        let _entered = runtime.enter();
                        let (handle, renewable) = sink_stage::start(
                            name,
                            sink,
                            &config.data_dir,
                            counters.clone(),
                            totals.clone(),
                        )?;
                        credentials.extend(renewable);
                        Arc::new(handle)
                    };
                    sink_runtimes.push((
                        name.clone(),
                        handle.clone(),
                        counters.dropped_events.clone(),
                    ));
                    inboxes.push(Inbox {
                        thread: format!("sink {name} thread"),
                        worker: None,
                        threads: 1,
                        queued: Queued::SinkBatches {
                            queue: rx.clone(),
                            dropped_events: counters.dropped_events.clone(),
                        },
                    });
                    let stage = sink_stage::SinkStage {
                        name: name.clone(),
                        handle,
                        queue: rx,
                        closed: sinks_closed.clone(),
                        spare: spare_tx,
                        counters: counters.clone(),
                        totals: totals.clone(),
                    };
                    sink_handles.push(
                        std::thread::Builder::new()
                            .name(format!("sluice-sink-{name}"))
                            .spawn({
                                let (panics, name) = (panics.clone(), name.clone());
                                move || {
                                    let _watch = panics.watch(format!("sink {name} thread"));
                                    stage.run()
                                }
                            })?,
                    );
                }
            }
            sink_dropped.push(counters.dropped_events.clone());
            sink_ports.push(worker::SinkPort {
                schema: sink.schema(),
                envelope: sink.envelope(),
                kinds: sink.routing().kinds.to_vec(),
                limits: sink.batch_limits(),
                queue: tx,
                spare: spare_rx,
                counters,
            });
        }

        // Workers and their queues.
        let routes: Vec<Vec<usize>> = config
            .sources
            .keys()
            .map(|source| {
                config
                    .sinks
                    .values()
                    .enumerate()
                    .filter(|(_, s)| s.routing().accepts_source(source))
                    .map(|(j, _)| j)
                    .collect()
            })
            .collect();
        for (source, r) in config.sources.keys().zip(&routes) {
            if r.is_empty() {
                tracing::warn!(source = %source, "no sink takes events from this source; they are counted and discarded");
            }
        }
        let mut worker_queues = Vec::new();
        let mut recycle_receivers = Vec::new();
        let mut worker_handles = Vec::new();
        let epoch = Instant::now();
        let mut pulses = Vec::new();
        for core in 0..worker_count {
            let pulse = Arc::new(stall::Pulse::new(epoch, sink_ports.len()));
            pulses.push(pulse.clone());
            let queues = WorkerQueues {
                datagrams: bounded(config.pipeline.queue_batches),
                streams: bounded(config.pipeline.stream_queue_batches),
            };
            let mut recycle_senders = Vec::new();
            let mut recyclers = Vec::new();
            for source in config.sources.values() {
                // One spare per batch that can be queued from this source, and a few more.
                let (rtx, rrx) = bounded::<FrameBatch>(queue_depth(&config.pipeline, source) + 8);
                recycle_senders.push(rtx);
                recyclers.push(rrx);
            }
            let w = worker::Worker::new(worker::WorkerSetup {
                core,
                queues: vec![queues.datagrams.1.clone(), queues.streams.1.clone()],
                recycle: recycle_senders,
                source_names: source_names.clone(),
                routes: routes.clone(),
                sinks: &sink_ports,
                parse: parse.clone(),
                source_zones: source_zones.clone(),
                source_senders: source_senders.clone(),
                totals: totals.clone(),
                pulse,
            });
            inboxes.push(Inbox {
                thread: format!("worker {core}"),
                worker: Some(core),
                threads: 1,
                queued: Queued::ReaderBatches(vec![
                    queues.datagrams.1.clone(),
                    queues.streams.1.clone(),
                ]),
            });
            let pin_core = cpus[core % cpus.len()];
            worker_handles.push(
                std::thread::Builder::new()
                    .name(format!("sluice-worker-{core}"))
                    .spawn({
                        let panics = panics.clone();
                        move || {
                            let _watch = panics.watch(format!("worker {core}"));
                            if pin
                                && !core_affinity::set_for_current(core_affinity::CoreId {
                                    id: pin_core,
                                })
                            {
                                tracing::debug!(core = pin_core, "could not pin worker thread");
                            }
                            lower_thread_priority(worker_nice);
                            w.run()
                        }
                    })?,
            );
            worker_queues.push(queues);
            recycle_receivers.push(recyclers);
        }
        drop(sink_ports);

        // Readers.
        let reader_counters: Vec<ReaderCounters> = source_names
            .iter()
            .map(|name| {
                let mut c = ReaderCounters::register(name);
                c.received_messages = tee(c.received_messages, &totals, |t| &t.received_messages);
                c.received_bytes = tee(c.received_bytes, &totals, |t| &t.received_bytes);
                c.dropped_queue_full =
                    tee(c.dropped_queue_full, &totals, |t| &t.dropped_queue_full);
                c.dropped_oversize = tee(c.dropped_oversize, &totals, |t| &t.dropped_oversize);
                c.overflow_messages = tee(c.overflow_messages, &totals, |t| &t.overflowed);
                c.dropped_overflow_error = tee(c.dropped_overflow_error, &totals, |t| {
                    &t.dropped_overflow_error
                });
                c
            })
            .collect();
        let mut readers = Vec::new();
        for (index, source) in api_sources {
            let worker = index % worker_count;
            let ctx = crate::source::darktrace_api::SourceContext {
                source_index: index as u16,
                source_name: source_names[index].clone(),
                to_worker: worker_queues[worker].streams.0.clone(),
                recycled: recycle_receivers[worker][index].clone(),
                shutdown: reader_stop.clone(),
                counters: reader_counters[index].clone(),
            };
            tracing::info!(source = %source_names[index], "polling the Darktrace API");
            let name = source_names[index].to_string();
            let handle = std::thread::Builder::new()
                .name(format!("sluice-api-{name}"))
                .spawn(move || source.run(ctx))?;
            readers.push((name, handle));
        }
        let sources: Vec<&SourceConfig> = config.sources.values().collect();
        let guards: Vec<Arc<crate::net::guard::ConnectionGuard>> = config
            .sources
            .iter()
            .map(|(name, source)| {
                Ok(crate::net::guard::ConnectionGuard::new(
                    name,
                    source_allowlist(name, source)?,
                    source.connection_limits(),
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        for (index, thread, socket) in bound {
            let Some(settings) = sources[index].net_settings() else {
                continue;
            };
            let worker = thread % worker_count;
            // The source-wide `max_connections` is enforced (refused and counted) by the
            // guard over all listeners, not by each listener leaving clients in the backlog.
            let max_connections = match sources[index] {
                SourceConfig::Tcp(_) | SourceConfig::Tls(_) => usize::MAX,
                SourceConfig::Udp(_) | SourceConfig::DarktraceApi(_) => 0,
            };
            let overflow = match sources[index] {
                SourceConfig::Udp(u) => u.overflow_bytes_per_reader(),
                _ => None,
            }
            .map(|max_bytes| {
                let dir = config.data_dir.join("overflow");
                std::fs::create_dir_all(&dir)
                    .and_then(|()| crate::net::overflow::Overflow::create(&dir, max_bytes))
                    .with_context(|| {
                        format!(
                            "sources.{}.overflow_max_bytes: creating the disk overflow in {} \
                             (set it to 0 to run without one)",
                            source_names[index],
                            dir.display()
                        )
                    })
            })
            .transpose()?;
            let ctx = ReaderContext {
                source_index: index as u16,
                source_name: source_names[index].clone(),
                core: cpus[thread % cpus.len()],
                limits: settings.limits,
                framing: settings.framing,
                batch_max_frames: settings.batch_max_frames,
                to_worker: worker_queues[worker].for_source(sources[index]).0.clone(),
                recycled: recycle_receivers[worker][index].clone(),
                shutdown: reader_stop.clone(),
                max_connections,
                pin,
                counters: reader_counters[index].clone(),
                guard: guards[index].clone(),
                overflow,
                linger: Duration::from_millis(config.pipeline.reader_linger_ms),
            };
            let name = format!("{}-{thread}", source_names[index]);
            let core = ctx.core;
            let handle = std::thread::Builder::new()
                .name(format!("sluice-read-{name}"))
                .spawn(move || {
                    if pin && !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                        tracing::debug!(core, "could not pin reader thread");
                    }
                    match socket {
                        Bound::Udp(s) => backend.run_udp(s, ctx),
                        Bound::Tcp(l) => backend.run_tcp(l, ctx),
                        Bound::Tls(l, acceptor) => crate::net::tls::run_tls(l, ctx, acceptor),
                    }
                })?;
            readers.push((name, handle));
        }

        // Maintenance: gauges and periodic tasks. Only receivers are kept here: holding a
        // sender would keep the queues from disconnecting at shutdown.
        for (core, queues) in worker_queues.iter().enumerate() {
            let (datagrams, streams) = (queues.datagrams.1.clone(), queues.streams.1.clone());
            depth_gauges.push((
                crate::metrics::queue_depth_gauge("worker", core.to_string()),
                Box::new(move || datagrams.len() + streams.len()),
            ));
        }
        drop(worker_queues);
        // Namespace-wide UDP receive-buffer errors (`/proc/net/snmp{,6}`), beside the
        // per-socket counts: they also cover sockets that are not ours.
        let mut host_udp_errors = crate::net::drops::SystemUdpErrors::new();
        let maintenance_stop = Arc::new(AtomicBool::new(false));
        let stop = maintenance_stop.clone();
        let maintenance = std::thread::Builder::new()
            .name("sluice-maintenance".into())
            .spawn(move || {
                loop {
                    // Runs once more after `stop` so drops during the drain are counted too.
                    let stopping = stop.load(Ordering::Relaxed);
                    for (gauge, len) in &depth_gauges {
                        gauge.set(len() as f64);
                    }
                    host_udp_errors.poll();
                    for task in &mut periodic {
                        task();
                    }
                    if stopping {
                        break;
                    }
                    let until = Instant::now() + Duration::from_secs(1);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })?;

        for (name, proto, addr) in &listening {
            tracing::debug!(source = %name, "listening on {proto} {addr}");
        }
        let mut seen = std::collections::BTreeSet::new();
        for (name, proto, addr) in &listening {
            if seen.insert((name.clone(), *proto, *addr)) {
                tracing::info!(source = %name, "listening on {proto} {addr}");
            }
        }
        Ok(Pipeline {
            backend,
            listening,
            reader_stop,
            shutdown_began,
            runtime: Some(runtime),
            sink_runtimes,
            shutdown_grace,
            maintenance_stop,
            readers,
            workers: worker_handles,
            sinks: sink_handles,
            panics,
            inboxes,
            stalls: stall::StallWatch::new(config.pipeline.worker_stall_ms, pulses),
            sinks_may_close: Some(sinks_may_close),
            sink_dropped,
            source_names,
            guards: config.sources.keys().cloned().zip(guards).collect(),
            expected_senders: config.sources.keys().cloned().zip(source_senders).collect(),
            credentials,
            maintenance: Some(maintenance),
            totals,
            started: Instant::now(),
        })
    }

    /// Lets every sink deliver what is spooled until `deadline`, then stops the runtimes;
    /// what is left stays in the spool for the next start.
    fn drain_spools(&mut self, deadline: Instant) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        for (name, handle, dropped_events) in self.sink_runtimes.drain(..) {
            while handle.stats().spool.records > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let left = handle.stats().spool;
            match Arc::try_unwrap(handle) {
                Ok(handle) => {
                    let grace = deadline.saturating_duration_since(Instant::now());
                    let end = runtime.block_on(handle.shutdown(grace)).spool;
                    // Nothing is appended any more: what the spool dropped meanwhile are the
                    // records of a `drop_oldest` segment whose upload shutdown ended.
                    let dropped = end.dropped_events - left.dropped_events;
                    if dropped > 0 {
                        dropped_events.increment(dropped);
                        self.totals
                            .sink_dropped_events
                            .fetch_add(dropped, Ordering::Relaxed);
                    }
                }
                Err(_) => tracing::error!(sink = %name, "sink handle still shared at shutdown"),
            }
            if left.records > 0 {
                tracing::warn!(sink = %name, records = left.records, events = left.events,
                    "not delivered within the shutdown grace period; kept in the spool for the next start");
            }
        }
        runtime.shutdown_timeout(Duration::from_secs(1));
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn totals(&self) -> &Arc<Totals> {
        &self.totals
    }

    /// Puts each source's `allow` from `config` (already validated) in place: new connections
    /// and datagrams are checked against it, established connections are left alone. Returns
    /// the sources whose list changed.
    pub fn reload_allowlists(&self, config: &Config) -> anyhow::Result<Vec<String>> {
        // All parsed before any is applied: a reload applies whole or not at all.
        let mut lists = Vec::new();
        for (name, guard) in &self.guards {
            if let Some(source) = config.sources.get(name) {
                lists.push((name, guard, source_allowlist(name, source)?));
            }
        }
        Ok(lists
            .into_iter()
            .filter(|(_, guard, allow)| guard.set_allowlist(allow.clone()))
            .map(|(name, _, _)| name.clone())
            .collect())
    }

    /// Applies each source's `expected_senders` from `config` (validated); returns the names of
    /// the sources whose list changed.
    pub fn reload_expected_senders(&self, config: &Config) -> Vec<String> {
        let now = crate::event::Timestamp::now().unix_secs();
        self.expected_senders
            .iter()
            .filter(|(name, expected)| {
                config
                    .sources
                    .get(name)
                    .is_some_and(|source| expected.replace(&source.expected_senders(), now))
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The secrets the sources and sinks send (API tokens, intake keys, client secrets), for
    /// a reload to read again.
    pub fn credentials(&self) -> &[Arc<dyn Renew>] {
        &self.credentials
    }

    /// Why the pipeline cannot go on: a reader ended on its own (a fatal socket error), a
    /// worker or sink thread panicked, or a worker stalled (`pipeline.worker_stall_ms`). The
    /// daemon then shuts down and exits with an error rather than run on with a queue nobody
    /// empties.
    pub fn failed(&self) -> Option<String> {
        if let Some((name, _)) = self.readers.iter().find(|(_, h)| h.is_finished()) {
            return Some(format!("reader {name} stopped"));
        }
        if let Some(thread) = self.panics.first() {
            return Some(format!("{thread} panicked"));
        }
        self.find_stalls()
    }

    /// [`stall::StallWatch::check`] now, naming sources.
    fn find_stalls(&self) -> Option<String> {
        self.stalls.check(Instant::now(), |source| {
            self.source_names
                .get(usize::from(source))
                .map_or_else(|| format!("#{source}"), |name| name.to_string())
        })
    }

    /// Whether worker `index` is done with: finished, or found stalled.
    fn worker_done(&self, index: usize) -> bool {
        self.workers[index].is_finished() || self.stalls.is_stalled(index)
    }

    /// Once every worker is done with, the delivery threads may finish what is queued.
    fn close_sinks_when_workers_done(&mut self) {
        if (0..self.workers.len()).all(|i| self.worker_done(i)) {
            self.sinks_may_close = None;
        }
    }

    /// Gives up on stalled worker `index`, which cannot be joined: its batch in hand and its
    /// open sink batches are counted as lost. Were the thread to move on now, it would find
    /// its queues drained and the process exiting.
    fn give_up_on_worker(&self, index: usize) {
        let pulse = &self.stalls.pulses[index];
        let mut undone = 0;
        if let Some((source, not_done, done)) = pulse.batch_in_hand() {
            let name = self
                .source_names
                .get(usize::from(source))
                .map_or("unknown", |s| s);
            self.totals
                .lost_batch_in_hand(name, not_done, done, Lost::Stalled);
            undone = not_done;
        }
        for (dropped, events) in self.sink_dropped.iter().zip(pulse.open_batch_events()) {
            self.totals.lost_events(dropped, events, Lost::Stalled);
        }
        tracing::error!(
            worker = index,
            lost_messages = undone,
            "gave up on the stalled worker: its batch and queues are counted as dropped \
             (reason=\"worker_stalled\"), its open sink batches as the sinks' dropped events"
        );
    }

    /// Waits until every reader, worker and sink thread has finished, or `deadline`. A spool
    /// full under `when_full = "block"` holds its sink thread, and behind it the workers and
    /// readers, for as long as the service stays down; past the deadline such spools refuse
    /// (and count) what does not fit, so that every thread finishes.
    fn await_threads_within_grace(&mut self, deadline: Instant) {
        loop {
            // A worker may stall during the drain too.
            self.find_stalls();
            self.drain_orphaned_queues();
            self.close_sinks_when_workers_done();
            let finished = self.readers.iter().all(|(_, h)| h.is_finished())
                && (0..self.workers.len()).all(|i| self.worker_done(i))
                && self.sinks.iter().all(JoinHandle::is_finished);
            if finished {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    "shutdown grace period over: batches that do not fit a full spool are \
                     refused (counted as dropped)"
                );
                for (_, handle, _) in &self.sink_runtimes {
                    handle.refuse_when_full();
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops reading, drains every queue, writes every batch; returns the totals.
    pub fn shutdown(mut self) -> Summary {
        let began = *self.shutdown_began.get_or_init(Instant::now);
        let deadline = began + self.shutdown_grace;
        self.reader_stop.store(true, Ordering::Relaxed);
        self.await_threads_within_grace(deadline);
        for (name, handle) in std::mem::take(&mut self.readers) {
            match self.join_draining(handle) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(reader = %name, "reader failed: {e}"),
                Err(_) => tracing::error!(reader = %name, "reader panicked"),
            }
        }
        for index in 0..self.workers.len() {
            // A worker that finished is joined even when it was found stalled: it moved on.
            while !self.worker_done(index) {
                self.find_stalls();
                self.drain_orphaned_queues();
                std::thread::sleep(Duration::from_millis(10));
            }
            if !self.workers[index].is_finished() {
                self.give_up_on_worker(index);
            }
        }
        for handle in std::mem::take(&mut self.workers) {
            if !handle.is_finished() {
                // Given up on above; the thread is detached and ends with the process.
                continue;
            }
            if handle.join().is_err() {
                tracing::error!("a worker panicked");
            }
        }
        self.sinks_may_close = None;
        for handle in std::mem::take(&mut self.sinks) {
            if self.join_draining(handle).is_err() {
                tracing::error!("a sink thread panicked");
            }
        }
        // Every producer is gone: what is left behind a panicked thread is counted now.
        self.drain_orphaned_queues();
        self.drain_spools(deadline);
        self.maintenance_stop.store(true, Ordering::Relaxed);
        if let Some(m) = self.maintenance.take() {
            let _ = m.join();
        }
        let s = self.totals.summary();
        tracing::info!(
            uptime_s = self.started.elapsed().as_secs(),
            drain_ms = began.elapsed().as_millis() as u64,
            received = s.received_messages,
            received_bytes = s.received_bytes,
            parsed = s.parsed_messages,
            parse_errors = s.parse_errors,
            dropped_queue_full = s.dropped_queue_full,
            dropped_oversize = s.dropped_oversize,
            dropped_kernel_rcvbuf = s.dropped_kernel_rcvbuf,
            dropped_overflow_error = s.dropped_overflow_error,
            overflowed = s.overflowed,
            sink_events = s.sink_events,
            sink_batches = s.sink_batches,
            sink_dropped_events = s.sink_dropped_events,
            dropped_thread_panicked = s.dropped_thread_panicked,
            sink_dropped_thread_panicked = s.sink_dropped_thread_panicked,
            dropped_worker_stalled = s.dropped_worker_stalled,
            sink_dropped_worker_stalled = s.sink_dropped_worker_stalled,
            "shut down"
        );
        s
    }

    /// Joins `handle`, emptying the queues of panicked threads meanwhile: a reader or worker
    /// blocked on a full queue that nobody takes from would otherwise never finish.
    fn join_draining<T>(&self, handle: JoinHandle<T>) -> std::thread::Result<T> {
        while !handle.is_finished() {
            // A reader may wait on the queue of a worker that stalls meanwhile.
            self.find_stalls();
            self.drain_orphaned_queues();
            std::thread::sleep(Duration::from_millis(10));
        }
        handle.join()
    }

    /// Takes everything queued for threads that all panicked and counts it as lost: messages
    /// per source (`sluice_dropped_messages_total{reason="thread_panicked"}`), events of sink
    /// batches per sink (`sluice_sink_dropped_events_total`). Sources waiting for a commit
    /// (acks) are told their events failed.
    fn drain_orphaned_queues(&self) {
        for inbox in &self.inboxes {
            let stalled = inbox.worker.is_some_and(|w| self.stalls.is_stalled(w));
            if !stalled && self.panics.count(&inbox.thread) < inbox.threads {
                continue;
            }
            let lost = if stalled {
                Lost::Stalled
            } else {
                Lost::Panicked
            };
            match &inbox.queued {
                Queued::ReaderBatches(queues) => {
                    for batch in queues.iter().flat_map(|q| q.try_iter()) {
                        if let Some(ack) = &batch.ack {
                            ack.fail();
                        }
                        let source = self
                            .source_names
                            .get(batch.source as usize)
                            .map_or("unknown", |s| s);
                        self.totals.lost_messages(source, batch.len() as u64, lost);
                    }
                }
                Queued::SinkBatches {
                    queue,
                    dropped_events,
                } => {
                    for sealed in queue.try_iter() {
                        for ack in &sealed.acks {
                            ack.fail();
                        }
                        self.totals
                            .lost_events(dropped_events, sealed.batch.events, lost);
                    }
                }
            }
        }
    }
}

/// A queue and the threads that take from it. Should they all panic, nothing else empties it.
struct Inbox {
    /// Their name in [`PanicWatch`].
    thread: String,
    /// The worker's index, for a worker's queues (a stalled worker's are drained too).
    worker: Option<usize>,
    threads: usize,
    queued: Queued,
}

enum Queued {
    /// A worker's input queues.
    ReaderBatches(Vec<crossbeam::channel::Receiver<FrameBatch>>),
    /// A sink's queue, with its `sluice_sink_dropped_events_total`.
    SinkBatches {
        queue: crossbeam::channel::Receiver<crate::batch::SealedBatch>,
        dropped_events: metrics::Counter,
    },
}

/// The names of the pipeline threads that panicked, so the daemon can stop instead of running
/// on without them.
#[derive(Clone, Default)]
struct PanicWatch(Arc<std::sync::Mutex<Vec<String>>>);

impl PanicWatch {
    /// Held by a thread for its whole life: records `thread` if it unwinds from a panic.
    fn watch(&self, thread: String) -> PanicGuard {
        PanicGuard {
            watch: self.clone(),
            thread,
        }
    }

    fn first(&self) -> Option<String> {
        let panics = self.0.lock().unwrap_or_else(|p| p.into_inner());
        panics.first().cloned()
    }

    /// How many threads of this name panicked (a file sink's compression threads share one).
    fn count(&self, thread: &str) -> usize {
        let panics = self.0.lock().unwrap_or_else(|p| p.into_inner());
        panics.iter().filter(|t| *t == thread).count()
    }
}

struct PanicGuard {
    watch: PanicWatch,
    thread: String,
}

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut panics = self.watch.0.lock().unwrap_or_else(|p| p.into_inner());
            panics.push(std::mem::take(&mut self.thread));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    /// This thread's nice value, as the kernel reports it in `/proc/thread-self/stat`.
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields after the parenthesised command name; nice is field 19 of the whole line.
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        after_comm.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn the_panic_watch_names_threads_that_panicked_and_only_those() {
        let watch = super::PanicWatch::default();
        let quiet = std::thread::spawn({
            let watch = watch.clone();
            move || {
                let _w = watch.watch("worker 0".into());
            }
        });
        quiet.join().unwrap();
        assert_eq!(
            watch.first(),
            None,
            "a thread that ends normally is no failure"
        );
        let failing = std::thread::spawn({
            let watch = watch.clone();
            move || {
                let _w = watch.watch("worker 1".into());
                panic!("a mapper bug");
            }
        });
        assert!(failing.join().is_err());
        assert_eq!(watch.first().as_deref(), Some("worker 1"));
    }

    /// A pipeline with one worker, a TCP source on an ephemeral port and an uncompressed
    /// file sink whose batches are sealed at `batch_max_events` (never by time).
    fn one_worker_pipeline(
        data_dir: &std::path::Path,
        batch_max_events: usize,
    ) -> (super::Pipeline, std::net::TcpStream) {
        one_worker_pipeline_with(data_dir, batch_max_events, "")
    }

    /// [`one_worker_pipeline`] with more `[pipeline]` keys.
    fn one_worker_pipeline_with(
        data_dir: &std::path::Path,
        batch_max_events: usize,
        more_pipeline_keys: &str,
    ) -> (super::Pipeline, std::net::TcpStream) {
        let text = format!(
            "data_dir = {dir:?}\n\
             [pipeline]\nworkers = 1\npin_threads = false\nsink_queue_batches = 4\n\
             shutdown_grace_ms = 500\n{more_pipeline_keys}\
             [sources.tcp]\ntype = \"tcp\"\nlisten = \"127.0.0.1:0\"\nframing = \"lf\"\n\
             [sinks.out]\ntype = \"file\"\npath = {out:?}\nschema = \"raw\"\n\
             compression = \"none\"\nbatch_max_events = {batch_max_events}\n\
             batch_timeout_ms = 3600000\ncompression_threads = 1\n",
            dir = data_dir.display().to_string(),
            out = data_dir.join("out").display().to_string(),
        );
        let config = crate::config::Config::from_toml(&text, "test.toml").unwrap();
        let pipeline = super::Pipeline::start(&config, Vec::new()).unwrap();
        let addr = pipeline
            .listening
            .iter()
            .find(|(name, _, _)| name == "tcp")
            .unwrap()
            .2;
        (pipeline, std::net::TcpStream::connect(addr).unwrap())
    }

    /// Waits (up to a minute: the machine may be busy) until `done` holds.
    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !done() {
            assert!(
                std::time::Instant::now() < until,
                "timed out waiting for {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Shuts `pipeline` down; fails instead of waiting for ever when a thread cannot finish
    /// (the bound is far above the second a shutdown takes here).
    fn shutdown_or_hang(pipeline: super::Pipeline) -> super::Summary {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(pipeline.shutdown());
        });
        rx.recv_timeout(std::time::Duration::from_secs(120))
            .expect("shutdown never finished: a thread waits on a queue nobody empties")
    }

    fn send_lines(tcp: &mut std::net::TcpStream, lines: u64) {
        use std::io::Write;
        for i in 0..lines {
            writeln!(tcp, "<13>Nov  1 00:00:00 host app: message {i}").unwrap();
        }
        tcp.flush().unwrap();
    }

    /// After a worker panics, what it held and what the readers queued for it afterwards is
    /// counted as dropped (`reason="thread_panicked"`) at shutdown, and the events of its open
    /// sink batch as the sink's dropped events; before, they vanished uncounted and the
    /// accounting (received = written + dropped) no longer added up.
    #[test]
    fn messages_queued_for_a_panicked_worker_are_counted_as_dropped() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (pipeline, mut tcp) = one_worker_pipeline(dir.path(), 1000);
        const BEFORE: u64 = 5;
        send_lines(&mut tcp, BEFORE);
        let totals = pipeline.totals().clone();
        wait_for("the first messages parsed", || {
            totals.parsed_messages.load(Ordering::Relaxed) == BEFORE
        });
        tcp.write_all(super::worker::PANIC_FRAME).unwrap();
        tcp.write_all(b"\n").unwrap();
        wait_for("the worker's panic", || pipeline.failed().is_some());
        assert_eq!(pipeline.failed().as_deref(), Some("worker 0 panicked"));
        const AFTER: u64 = 300;
        send_lines(&mut tcp, AFTER);
        wait_for("every message received", || {
            totals.received_messages.load(Ordering::Relaxed) == BEFORE + 1 + AFTER
        });
        drop(tcp);
        let s = shutdown_or_hang(pipeline);
        assert_eq!(s.received_messages, BEFORE + 1 + AFTER);
        assert_eq!(s.parsed_messages, BEFORE);
        // The batch with the panicking frame (in hand) and everything queued behind it.
        assert_eq!(s.dropped_thread_panicked, 1 + AFTER, "{s:?}");
        // Parsed before the panic, still in the open batch.
        assert_eq!(s.sink_dropped_thread_panicked, BEFORE, "{s:?}");
        assert_eq!((s.sink_events, s.sink_dropped_events), (0, BEFORE), "{s:?}");
    }

    /// A worker stuck on one batch (a parser bug looping) is found stalled once it has held it
    /// for `worker_stall_ms`. Shutdown then gives up on it instead of waiting for ever (the
    /// sink thread, whose queue sender the worker still holds, finishes all the same), and
    /// counts what it held or had queued as dropped (`reason="worker_stalled"`) and its open
    /// sink batch as the sink's dropped events.
    #[test]
    fn a_stalled_worker_is_given_up_on_and_what_it_held_is_counted() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (pipeline, mut tcp) =
            one_worker_pipeline_with(dir.path(), 1000, "worker_stall_ms = 1000\n");
        const BEFORE: u64 = 5;
        send_lines(&mut tcp, BEFORE);
        let totals = pipeline.totals().clone();
        wait_for("the first messages parsed", || {
            totals.parsed_messages.load(Ordering::Relaxed) == BEFORE
        });
        let stuck_since = std::time::Instant::now();
        tcp.write_all(super::worker::STALL_FRAME).unwrap();
        tcp.write_all(b"\n").unwrap();
        const AFTER: u64 = 300;
        send_lines(&mut tcp, AFTER);
        wait_for("the stall", || pipeline.failed().is_some());
        assert!(stuck_since.elapsed() >= std::time::Duration::from_secs(1));
        let why = pipeline.failed().unwrap();
        assert!(
            why.starts_with("worker 0 stalled: it has held one batch from source `tcp` for "),
            "{why}"
        );
        // Queued behind the batch in hand, whatever the reader's batching did before.
        const QUEUED: u64 = 200;
        send_lines(&mut tcp, QUEUED);
        let all = BEFORE + 1 + AFTER + QUEUED;
        wait_for("every message received", || {
            totals.received_messages.load(Ordering::Relaxed) == all
        });
        drop(tcp);
        let s = shutdown_or_hang(pipeline);
        super::worker::STALL_RELEASED.store(true, Ordering::Relaxed);
        assert_eq!(s.received_messages, all);
        assert_eq!(s.parsed_messages, BEFORE, "{s:?}");
        assert_eq!(s.dropped_worker_stalled, all - BEFORE, "{s:?}");
        assert_eq!(s.sink_dropped_worker_stalled, BEFORE, "{s:?}");
        assert_eq!((s.sink_events, s.sink_dropped_events), (0, BEFORE), "{s:?}");
        assert_eq!(
            (s.dropped_thread_panicked, s.sink_dropped_thread_panicked),
            (0, 0)
        );
    }

    /// A worker that panics partway through a reader batch: the frames before the panicking
    /// one are in sink batches (sealed ones delivered, the open one counted as the sink's
    /// dropped events) and count as parsed; only the rest of the batch counts as dropped
    /// messages. Before, the whole batch counted as dropped while its first frames were also
    /// written or counted as the sink's dropped events: counted twice.
    #[test]
    fn a_panic_partway_through_a_batch_counts_each_message_once() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        // Two events a sink batch: the frames before the panic seal one and open another.
        let (pipeline, mut tcp) = one_worker_pipeline(dir.path(), 2);
        let mut burst = Vec::new();
        for i in 0..3 {
            writeln!(burst, "<13>Nov  1 00:00:00 host app: before {i}").unwrap();
        }
        burst.extend_from_slice(super::worker::PANIC_FRAME);
        burst.extend_from_slice(b"\n<13>Nov  1 00:00:00 host app: after\n");
        tcp.write_all(&burst).unwrap();
        wait_for("the worker's panic", || pipeline.failed().is_some());
        drop(tcp);
        let s = shutdown_or_hang(pipeline);
        assert_eq!(s.received_messages, 5, "{s:?}");
        // However the reader cut the burst into batches, every message is counted once:
        // parsed (then written or dropped by the sink) or dropped with the worker.
        assert_eq!(
            s.parsed_messages + s.dropped_thread_panicked,
            s.received_messages,
            "{s:?}"
        );
        assert_eq!(s.parsed_messages, 3, "{s:?}");
        assert_eq!(s.sink_events + s.sink_dropped_events, 3, "{s:?}");
        let written: usize = std::fs::read_dir(dir.path().join("out"))
            .unwrap()
            .map(|f| {
                std::fs::read_to_string(f.unwrap().path())
                    .unwrap()
                    .lines()
                    .count()
            })
            .sum();
        assert_eq!(written as u64, s.sink_events, "{s:?}");
    }

    /// A panicked sink thread: the batch it held and every batch queued for it are counted as
    /// the sink's dropped events. More batches than its queue holds come after the panic, so
    /// the worker blocks on the full queue until shutdown takes them (before, shutdown waited
    /// for that worker forever).
    #[test]
    fn batches_queued_for_a_panicked_sink_thread_are_counted_as_dropped() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (pipeline, mut tcp) = one_worker_pipeline(dir.path(), 1);
        tcp.write_all(super::sink_stage::PANIC_TEXT).unwrap();
        tcp.write_all(b"\n").unwrap();
        wait_for("the sink thread's panic", || pipeline.failed().is_some());
        assert_eq!(
            pipeline.failed().as_deref(),
            Some("sink out thread panicked")
        );
        const AFTER: u64 = 40;
        send_lines(&mut tcp, AFTER);
        let totals = pipeline.totals().clone();
        wait_for("every message received", || {
            totals.received_messages.load(Ordering::Relaxed) == AFTER + 1
        });
        drop(tcp);
        let s = shutdown_or_hang(pipeline);
        assert_eq!(
            (s.received_messages, s.parsed_messages),
            (AFTER + 1, AFTER + 1)
        );
        assert_eq!(s.sink_events, 0, "{s:?}");
        assert_eq!(s.sink_dropped_thread_panicked, AFTER + 1, "{s:?}");
        assert_eq!(s.sink_dropped_events, AFTER + 1, "{s:?}");
        assert_eq!(s.dropped_thread_panicked, 0, "{s:?}");
    }

    #[test]
    fn worker_priority_is_lowered_per_thread_and_capped() {
        let main_nice = own_nice();
        let lowered = std::thread::spawn(|| {
            let before = own_nice();
            super::lower_thread_priority(10);
            let once = own_nice();
            super::lower_thread_priority(15);
            (before, once, own_nice())
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (main_nice, (main_nice + 10).min(19), 19));
        // Only the calling thread changed.
        assert_eq!(own_nice(), main_nice);
        std::thread::spawn(|| {
            let before = own_nice();
            super::lower_thread_priority(0);
            assert_eq!(own_nice(), before);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn pinning_stays_inside_the_affinity_mask() {
        let all = super::allowed_cpus();
        assert!(!all.is_empty());
        // As if started under `taskset -c <last>`: only that CPU may be used.
        let last = *all.last().unwrap();
        std::thread::spawn(move || {
            assert!(core_affinity::set_for_current(core_affinity::CoreId {
                id: last
            }));
            assert_eq!(super::allowed_cpus(), vec![last]);
        })
        .join()
        .unwrap();
    }
}
