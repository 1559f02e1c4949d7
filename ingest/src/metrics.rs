//! Prometheus metrics: names, handle bundles, and the `/metrics` + `/health` endpoint.
//!
//! Hot-path rule: threads register their labelled handles once at start and add locally
//! accumulated counts per batch; nothing formats labels per message.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const RECEIVED_MESSAGES: &str = "sluice_received_messages_total";
pub const RECEIVED_BYTES: &str = "sluice_received_bytes_total";
pub const PARSE_ERRORS: &str = "sluice_parse_errors_total";
pub const DROPPED_MESSAGES: &str = "sluice_dropped_messages_total";
/// Frames cut to `max_message_bytes` (kept, marked truncated).
pub const TRUNCATED_MESSAGES: &str = "sluice_truncated_messages_total";
/// TCP byte ranges skipped because the stream broke its framing.
pub const FRAMING_ERRORS: &str = "sluice_framing_errors_total";
pub const TCP_CONNECTIONS_OPEN: &str = "sluice_tcp_connections_open";
pub const TCP_CONNECTIONS: &str = "sluice_tcp_connections_total";
/// Connections refused at accept or during the TLS handshake, by source and `reason`
/// (`not_allowed`, `max_connections`, `per_address`, `tls_handshake`).
pub const CONNECTIONS_REFUSED: &str = "sluice_connections_refused_total";
/// Connections the daemon closed because of a limit, by source and `reason`
/// (`idle`, `frame_backlog`).
pub const CONNECTIONS_CLOSED: &str = "sluice_connections_closed_total";
/// Messages from each of a source's `expected_senders`, by source and sender.
pub const SENDER_MESSAGES: &str = "sluice_sender_messages_total";
/// When each expected sender was last heard (Unix seconds; start-up, or the reload that listed
/// it, until it is).
pub const SENDER_LAST_SEEN: &str = "sluice_sender_last_seen_timestamp_seconds";
/// 1 for each sender a source lists in `expected_senders`, 0 for one a reload took off (its
/// series stay until a restart).
pub const SENDER_EXPECTED: &str = "sluice_sender_expected";
/// TLS certificate reloads (SIGHUP), by source and `result` (`ok`, `error`).
pub const TLS_RELOADS: &str = "sluice_tls_reloads_total";
/// When the certificates a TLS source uses stop being valid (Unix seconds), by source and
/// `certificate` (`server`: the served leaf; `client_ca`: the earliest of the mTLS CA bundle).
pub const TLS_CERTIFICATE_EXPIRY: &str = "sluice_tls_certificate_expiry_timestamp_seconds";
/// Messages waiting, by queue (`worker` per core, `sink` per sink).
pub const QUEUE_DEPTH: &str = "sluice_queue_depth_batches";
/// UDP `RcvbufErrors` of the network namespace from `/proc/net/snmp` (all sockets, not only
/// Sluice's; per-socket drops are in `sluice_dropped_messages_total{reason="kernel_rcvbuf"}`).
pub const HOST_UDP_RCVBUF_ERRORS: &str = "sluice_kernel_udp_rcvbuf_errors";
/// Config reloads (SIGHUP), by `result` (`ok`, `error`).
pub const CONFIG_RELOADS: &str = "sluice_config_reloads_total";
/// 1 when the config file, at the last reload, had changes only a restart applies.
pub const CONFIG_RESTART_PENDING: &str = "sluice_config_restart_pending";
pub const SINK_EVENTS: &str = "sluice_sink_events_total";
pub const SINK_BATCHES: &str = "sluice_sink_batches_total";
pub const SINK_BYTES: &str = "sluice_sink_bytes_total";
pub const SINK_ERRORS: &str = "sluice_sink_errors_total";
/// File sinks: temp batch files that could not be removed (removed later; a batch whose file is
/// in place is delivered, never written again).
pub const SINK_TEMP_REMOVAL_ERRORS: &str = "sluice_sink_temp_removal_errors_total";
/// File sinks with `[retention]`: batch files removed to keep within the bounds, and their bytes,
/// by sink and `reason` (`max_bytes`, `max_age`).
pub const SINK_RETENTION_REMOVED_FILES: &str = "sluice_sink_retention_removed_files_total";
pub const SINK_RETENTION_REMOVED_BYTES: &str = "sluice_sink_retention_removed_bytes_total";
/// File sinks with `[retention]`: batch files that could not be removed, or directory listings
/// that failed (tried again after the next batch or sweep).
pub const SINK_RETENTION_ERRORS: &str = "sluice_sink_retention_errors_total";
/// File sinks with `[retention]`: the batch files in the directory, and their bytes.
pub const SINK_RETAINED_FILES: &str = "sluice_sink_retained_files";
pub const SINK_RETAINED_BYTES: &str = "sluice_sink_retained_bytes";
/// Bytes in a sink's dead-letter directory (bounded by `retry.max_dead_letter_bytes`).
pub const SINK_DEAD_LETTER_BYTES: &str = "sluice_sink_dead_letter_bytes";
pub const SINK_REPLAYED_EVENTS: &str = "sluice_sink_replayed_events_total";
/// Events given up on after a sink kept failing through shutdown.
pub const SINK_DROPPED_EVENTS: &str = "sluice_sink_dropped_events_total";
/// Seconds spent per stage, per batch: `parse_map` (one reader batch), `batch_fill` (first event
/// to seal), `compress`, `write`, `end_to_end` (first event to file in place).
pub const STAGE_SECONDS: &str = "sluice_stage_duration_seconds";

/// UDP datagrams a reader wrote to its disk overflow because the worker queue was full.
pub const OVERFLOW_MESSAGES: &str = "sluice_overflow_messages_total";
/// Bytes held in the UDP readers' disk overflow now, by source.
pub const OVERFLOW_BYTES: &str = "sluice_overflow_bytes";
/// Failed writes or reads of the disk overflow, by source and `op` (`write`, `read`).
pub const OVERFLOW_ERRORS: &str = "sluice_overflow_errors_total";

pub const DROP_KERNEL_RCVBUF: &str = "kernel_rcvbuf";
pub const DROP_QUEUE_FULL: &str = "queue_full";
pub const DROP_OVERSIZE: &str = "oversize";
/// UDP datagrams from an address outside the source's `allow` list.
pub const DROP_NOT_ALLOWED: &str = "not_allowed";
/// Datagrams in an overflow record that could not be read back.
pub const DROP_OVERFLOW_ERROR: &str = "overflow_error";
/// Messages queued for (or held by) a worker thread when it panicked: nothing else takes them.
pub const DROP_THREAD_PANICKED: &str = "thread_panicked";
/// Messages held by (or queued for) a worker found stalled (`pipeline.worker_stall_ms`) when
/// the daemon gave up on it at shutdown.
pub const DROP_WORKER_STALLED: &str = "worker_stalled";

const STAGE_BUCKETS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

/// Installs the global recorder. Call once, before any handle is registered.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(STAGE_SECONDS.to_string()), STAGE_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
    describe();
    PROCESS.describe();
    PROCESS.collect();
    metrics::describe_gauge!(
        BUILD_INFO,
        "Always 1; `version` is the running sluice's version"
    );
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// `sluice_build_info{version}`: which version each forwarder of a fleet runs.
pub const BUILD_INFO: &str = "sluice_build_info";

/// The standard Prometheus process series (`process_resident_memory_bytes`,
/// `process_cpu_seconds_total`, `process_open_fds`, `process_max_fds`, `process_threads`, …),
/// read from /proc at each scrape. `process_cpu_seconds_total` is exported as a gauge: the
/// `metrics` crate's counters are integers, and whole seconds made `rate()` over a scrape
/// interval jump between 0 and 1/interval for a daemon using a few percent of a core.
static PROCESS: std::sync::LazyLock<metrics_process::Collector> =
    std::sync::LazyLock::new(|| metrics_process::Collector::new(""));

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        RECEIVED_MESSAGES,
        "Messages taken off the socket, by source (including those then dropped)"
    );
    describe_counter!(
        RECEIVED_BYTES,
        Unit::Bytes,
        "Bytes taken off the socket, by source"
    );
    describe_counter!(
        PARSE_ERRORS,
        "Messages whose body could not be parsed (kept as error events)"
    );
    describe_counter!(
        DROPPED_MESSAGES,
        "Messages lost, by source and reason (kernel_rcvbuf, queue_full, oversize, not_allowed, overflow_error, thread_panicked)"
    );
    describe_counter!(TRUNCATED_MESSAGES, "Messages cut to max_message_bytes");
    describe_counter!(
        FRAMING_ERRORS,
        "TCP framing errors (bytes skipped to resynchronise)"
    );
    describe_gauge!(TCP_CONNECTIONS_OPEN, "Open TCP connections");
    describe_counter!(TCP_CONNECTIONS, "Accepted TCP connections");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "TCP/TLS connections refused, by source and reason (not_allowed, max_connections, per_address, tls_handshake)"
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        "TCP/TLS connections closed by a limit, by source and reason (idle, frame_backlog)"
    );
    describe_counter!(
        TLS_RELOADS,
        "TLS certificate reloads on SIGHUP, by source and result (ok, error)"
    );
    describe_counter!(
        SENDER_MESSAGES,
        "Messages from each of a source's expected_senders"
    );
    describe_gauge!(
        SENDER_LAST_SEEN,
        "When each expected sender was last heard (Unix seconds; start-up, or the reload that listed it, until it is)"
    );
    describe_gauge!(
        SENDER_EXPECTED,
        "1 for a sender listed in expected_senders, 0 for one a reload took off the list"
    );
    describe_gauge!(
        TLS_CERTIFICATE_EXPIRY,
        "When a TLS source's certificate stops being valid (Unix seconds), by source and certificate (server, client_ca)"
    );
    describe_gauge!(QUEUE_DEPTH, "Batches waiting in a queue");
    describe_counter!(
        OVERFLOW_MESSAGES,
        "UDP datagrams written to the disk overflow while the worker queue was full"
    );
    describe_gauge!(
        OVERFLOW_BYTES,
        Unit::Bytes,
        "Bytes waiting in the UDP disk overflow"
    );
    describe_counter!(
        OVERFLOW_ERRORS,
        "Failed disk overflow writes or reads, by source and op (write, read)"
    );
    describe_gauge!(
        HOST_UDP_RCVBUF_ERRORS,
        "UDP RcvbufErrors of the whole host (/proc/net/snmp)"
    );
    describe_counter!(
        CONFIG_RELOADS,
        "Config reloads on SIGHUP, by result (ok, error: the file was invalid and nothing changed)"
    );
    describe_gauge!(
        CONFIG_RESTART_PENDING,
        "1 when the config file, as of the last reload, has changes that only a restart applies"
    );
    describe_counter!(SINK_EVENTS, "Events delivered, by sink");
    describe_counter!(SINK_BATCHES, "Batches delivered, by sink");
    describe_counter!(
        SINK_BYTES,
        Unit::Bytes,
        "Bytes delivered, by sink and stage (raw, compressed)"
    );
    describe_counter!(SINK_ERRORS, "Failed delivery attempts, by sink");
    describe_counter!(
        SINK_TEMP_REMOVAL_ERRORS,
        "Temp batch files a file sink could not remove (removed after the next batch or at start-up)"
    );
    describe_counter!(
        SINK_RETENTION_REMOVED_FILES,
        "Batch files a file sink removed to stay within its retention bounds, by reason (max_bytes, max_age)"
    );
    describe_counter!(
        SINK_RETENTION_REMOVED_BYTES,
        Unit::Bytes,
        "Bytes of the batch files removed by retention, by reason"
    );
    describe_counter!(
        SINK_RETENTION_ERRORS,
        "Batch files retention could not remove, and failed listings of the directory"
    );
    describe_gauge!(
        SINK_RETAINED_FILES,
        "Batch files in a file sink's directory (sinks with retention bounds)"
    );
    describe_gauge!(
        SINK_RETAINED_BYTES,
        Unit::Bytes,
        "Bytes of the batch files in a file sink's directory (sinks with retention bounds)"
    );
    describe_gauge!(
        SINK_DEAD_LETTER_BYTES,
        Unit::Bytes,
        "Bytes in a sink's dead-letter directory (bounded by retry.max_dead_letter_bytes)"
    );
    describe_counter!(
        SINK_REPLAYED_EVENTS,
        "Dead-lettered events put back into a sink's spool from dead_letter/<sink>/replay/"
    );
    describe_counter!(
        SINK_DROPPED_EVENTS,
        "Events a sink lost: given up after delivery failures at shutdown, refused by its spool, or in batches a panicked worker or sink thread held or left queued"
    );
    describe_histogram!(
        STAGE_SECONDS,
        Unit::Seconds,
        "Time per batch spent in each pipeline stage"
    );
}

/// Handles a reader updates (all per source). `received_*` count everything taken off the
/// socket, including messages then dropped (`oversize`, `queue_full`), so
/// received = delivered to sinks' batches + dropped (per routed sink).
#[derive(Clone)]
pub struct ReaderCounters {
    pub received_messages: Counter,
    pub received_bytes: Counter,
    pub dropped_queue_full: Counter,
    pub dropped_oversize: Counter,
    /// UDP datagrams from outside the source's `allow` list.
    pub dropped_not_allowed: Counter,
    pub truncated: Counter,
    pub framing_errors: Counter,
    pub connections_open: Gauge,
    pub connections: Counter,
    /// UDP disk overflow (see `net::overflow`).
    pub overflow_messages: Counter,
    pub overflow_bytes: Gauge,
    pub overflow_write_errors: Counter,
    pub overflow_read_errors: Counter,
    pub dropped_overflow_error: Counter,
    /// Rate limits of the log lines about senders' faults, shared by the source's readers.
    pub logs: std::sync::Arc<crate::log_every::SourceLogs>,
}

impl ReaderCounters {
    pub fn register(source: &str) -> Self {
        let s = source.to_string();
        let dropped = |reason: &'static str| metrics::counter!(DROPPED_MESSAGES, "source" => s.clone(), "reason" => reason);
        ReaderCounters {
            received_messages: metrics::counter!(RECEIVED_MESSAGES, "source" => s.clone()),
            received_bytes: metrics::counter!(RECEIVED_BYTES, "source" => s.clone()),
            dropped_queue_full: dropped(DROP_QUEUE_FULL),
            dropped_oversize: dropped(DROP_OVERSIZE),
            dropped_not_allowed: dropped(DROP_NOT_ALLOWED),
            truncated: metrics::counter!(TRUNCATED_MESSAGES, "source" => s.clone()),
            framing_errors: metrics::counter!(FRAMING_ERRORS, "source" => s.clone()),
            connections_open: metrics::gauge!(TCP_CONNECTIONS_OPEN, "source" => s.clone()),
            connections: metrics::counter!(TCP_CONNECTIONS, "source" => s.clone()),
            overflow_messages: metrics::counter!(OVERFLOW_MESSAGES, "source" => s.clone()),
            overflow_bytes: metrics::gauge!(OVERFLOW_BYTES, "source" => s.clone()),
            overflow_write_errors: metrics::counter!(OVERFLOW_ERRORS, "source" => s.clone(), "op" => "write"),
            overflow_read_errors: metrics::counter!(OVERFLOW_ERRORS, "source" => s.clone(), "op" => "read"),
            dropped_overflow_error: dropped(DROP_OVERFLOW_ERROR),
            logs: Default::default(),
        }
    }

    /// Handles that record nothing (tests, tools).
    pub fn noop() -> Self {
        ReaderCounters {
            received_messages: Counter::noop(),
            received_bytes: Counter::noop(),
            dropped_queue_full: Counter::noop(),
            dropped_oversize: Counter::noop(),
            dropped_not_allowed: Counter::noop(),
            truncated: Counter::noop(),
            framing_errors: Counter::noop(),
            connections_open: Gauge::noop(),
            connections: Counter::noop(),
            overflow_messages: Counter::noop(),
            overflow_bytes: Gauge::noop(),
            overflow_write_errors: Counter::noop(),
            overflow_read_errors: Counter::noop(),
            dropped_overflow_error: Counter::noop(),
            logs: Default::default(),
        }
    }
}

pub fn parse_error_counter(source: &str, kind: &'static str) -> Counter {
    metrics::counter!(PARSE_ERRORS, "source" => source.to_string(), "kind" => kind)
}

/// Handles a sink's delivery stage updates.
#[derive(Clone)]
pub struct SinkCounters {
    pub events: Counter,
    pub batches: Counter,
    pub bytes_raw: Counter,
    pub bytes_compressed: Counter,
    pub errors: Counter,
    pub dropped_events: Counter,
    pub batch_fill: Histogram,
    pub compress: Histogram,
    pub write: Histogram,
    pub end_to_end: Histogram,
}

impl SinkCounters {
    pub fn register(sink: &str) -> Self {
        let s = sink.to_string();
        let stage = |stage: &'static str| metrics::histogram!(STAGE_SECONDS, "stage" => stage, "sink" => s.clone());
        SinkCounters {
            events: metrics::counter!(SINK_EVENTS, "sink" => s.clone()),
            batches: metrics::counter!(SINK_BATCHES, "sink" => s.clone()),
            bytes_raw: metrics::counter!(SINK_BYTES, "sink" => s.clone(), "stage" => "raw"),
            bytes_compressed: metrics::counter!(SINK_BYTES, "sink" => s.clone(), "stage" => "compressed"),
            errors: metrics::counter!(SINK_ERRORS, "sink" => s.clone()),
            dropped_events: metrics::counter!(SINK_DROPPED_EVENTS, "sink" => s.clone()),
            batch_fill: stage("batch_fill"),
            compress: stage("compress"),
            write: stage("write"),
            end_to_end: stage("end_to_end"),
        }
    }
}

pub fn parse_map_histogram(core: usize) -> Histogram {
    metrics::histogram!(STAGE_SECONDS, "stage" => "parse_map", "core" => core.to_string())
}

pub fn queue_depth_gauge(queue: &'static str, name: String) -> Gauge {
    metrics::gauge!(QUEUE_DEPTH, "queue" => queue, "name" => name)
}

/// The bearer token `/metrics` requires, if any; read again on `systemctl reload`.
pub type ScrapeToken =
    Arc<crate::config::credential::Credential<Option<crate::config::Secret>, String>>;

/// Serves `/metrics` and `/health` on a plain std listener thread (a handful of scrapes a
/// minute do not need an async runtime). `healthy` turns false once shutdown begins.
pub fn serve(
    listen: SocketAddr,
    handle: PrometheusHandle,
    healthy: Arc<AtomicBool>,
    token: ScrapeToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).map_err(|e| {
        std::io::Error::new(e.kind(), format!("metrics endpoint: cannot listen on {listen}: {e} (set [metrics] listen to a free address)"))
    })?;
    let local = listener.local_addr()?;
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("sluice-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                // Each request on its own thread, so a slow client delays no scrape; at most
                // MAX_CONCURRENT_REQUESTS at once, further connections are closed unanswered.
                if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONCURRENT_REQUESTS {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    tracing::debug!("metrics endpoint: {MAX_CONCURRENT_REQUESTS} requests in progress, connection closed");
                    continue;
                }
                let (handle, healthy, token, done) =
                    (handle.clone(), healthy.clone(), token.current(), busy.clone());
                let spawned = std::thread::Builder::new()
                    .name("sluice-metrics-req".into())
                    .spawn(move || {
                        if let Err(e) = respond(stream, &handle, &healthy, token.as_ref().as_ref())
                        {
                            tracing::debug!("metrics endpoint: {e}");
                        }
                        done.fetch_sub(1, Ordering::AcqRel);
                    });
                if let Err(e) = spawned {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!("metrics endpoint: cannot start a request thread: {e}");
                }
            }
        })?;
    Ok(local)
}

/// Requests the metrics endpoint serves at once (a scraper or two, a health check, `sluice top`).
const MAX_CONCURRENT_REQUESTS: usize = 8;

fn respond(
    stream: TcpStream,
    handle: &PrometheusHandle,
    healthy: &AtomicBool,
    token: Option<&crate::config::Secret>,
) -> std::io::Result<()> {
    stream.set_write_timeout(Some(REQUEST_TIME))?;
    // One thread serves every scrape: a client that trickles its request or never ends a line
    // must not hold it (or its memory) for longer than this, authorised or not.
    let mut reader = BufReader::new(
        Deadline {
            stream: &stream,
            until: Instant::now() + REQUEST_TIME,
        }
        .take(MAX_REQUEST_HEAD_BYTES),
    );
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers so the client sees an orderly close.
    let mut line = String::new();
    let mut authorized = token.is_none();
    loop {
        let n = reader.read_line(&mut line)?;
        if n <= 2 {
            if !line.ends_with('\n') && reader.get_ref().limit() == 0 {
                let mut out = &stream;
                write!(
                    out,
                    "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )?;
                out.flush()?;
                // Closing with the rest of the request unread would reset the connection,
                // and the client could lose the answer: read what it sends meanwhile (within
                // the same deadline and a bound), then close.
                stream.shutdown(std::net::Shutdown::Write)?;
                let mut rest = reader.into_inner().into_inner().take(1 << 20);
                let _ = std::io::copy(&mut rest, &mut std::io::sink());
                return Ok(());
            }
            break;
        }
        if let (Some(token), Some((name, value))) = (token, line.split_once(':'))
            && name.trim().eq_ignore_ascii_case("authorization")
            && value
                .trim()
                .strip_prefix("Bearer ")
                .is_some_and(|v| constant_time_eq(v.trim().as_bytes(), token.expose().as_bytes()))
        {
            authorized = true;
        }
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") if !authorized => (
            "401 Unauthorized",
            "text/plain",
            "bearer token required\n".to_string(),
        ),
        ("GET", "/metrics") => {
            handle.run_upkeep();
            PROCESS.collect();
            ("200 OK", "text/plain; version=0.0.4", handle.render())
        }
        ("GET", "/health") if healthy.load(Ordering::Relaxed) => {
            ("200 OK", "text/plain", "ok\n".to_string())
        }
        ("GET", "/health") => (
            "503 Service Unavailable",
            "text/plain",
            "shutting down\n".to_string(),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /health\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// How long a client has to send its request head, and the response's write timeout.
const REQUEST_TIME: Duration = Duration::from_secs(5);
/// Request line and headers together; a scrape sends a few hundred bytes.
const MAX_REQUEST_HEAD_BYTES: u64 = 16 * 1024;

/// Reads from `stream` until `until`, whatever pace the bytes come at (a read timeout alone
/// restarts with every byte).
struct Deadline<'s> {
    stream: &'s TcpStream,
    until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request head not complete in time",
            ));
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

/// Compares without an early exit, so response timing does not reveal a token prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_serves_metrics_and_health() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let counter = metrics::with_local_recorder(
            &recorder,
            || metrics::counter!(RECEIVED_MESSAGES, "source" => "t"),
        );
        counter.increment(7);
        let healthy = Arc::new(AtomicBool::new(true));
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "tok\n").unwrap();
        let config = crate::config::MetricsConfig {
            bearer_token_file: Some(token_file.clone()),
            ..Default::default()
        };
        let token =
            crate::config::credential::Credential::load("metrics.bearer_token", move || {
                config.token()
            })
            .unwrap();
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            handle,
            healthy.clone(),
            token.clone(),
        )
        .unwrap();
        let get_with = |path: &str, auth: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").unwrap();
            let mut out = String::new();
            std::io::Read::read_to_string(&mut s, &mut out).unwrap();
            out
        };
        let get = |path: &str| get_with(path, "Authorization: Bearer tok\r\n");
        assert!(get_with("/metrics", "").starts_with("HTTP/1.1 401"));
        assert!(get_with("/metrics", "Authorization: Bearer tok2\r\n").starts_with("HTTP/1.1 401"));
        assert!(get_with("/health", "").starts_with("HTTP/1.1 200"));
        let m = get("/metrics");
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(
            m.contains("sluice_received_messages_total{source=\"t\"} 7"),
            "{m}"
        );
        assert!(get("/health").starts_with("HTTP/1.1 200"));
        // A rotated token file is read again (as on `systemctl reload`): the old token is
        // refused from then on.
        std::fs::write(&token_file, "tok2\n").unwrap();
        assert_eq!(crate::config::credential::Renew::renew(&*token), Ok(true));
        assert!(get("/metrics").starts_with("HTTP/1.1 401"));
        let m = get_with("/metrics", "Authorization: Bearer tok2\r\n");
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        healthy.store(false, Ordering::Relaxed);
        assert!(get("/health").starts_with("HTTP/1.1 503"));
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
    }

    /// A client that trickles its request without ever ending it neither delays other requests
    /// nor is read for longer than the deadline, and an oversized request head is refused
    /// rather than buffered.
    #[test]
    fn a_slow_or_oversized_request_does_not_hold_the_endpoint() {
        let handle = PrometheusBuilder::new().build_recorder().handle();
        let no_token = crate::config::credential::Credential::load("metrics.bearer_token", || {
            Ok::<_, String>(None)
        })
        .unwrap();
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            handle,
            Arc::new(AtomicBool::new(true)),
            no_token,
        )
        .unwrap();

        let mut slow = TcpStream::connect(addr).unwrap();
        slow.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        // Answered at once while a slow client is being read.
        let health = |addr| {
            let mut fine = TcpStream::connect(addr).unwrap();
            fine.set_read_timeout(Some(REQUEST_TIME / 2)).unwrap();
            write!(fine, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut answer = String::new();
            fine.read_to_string(&mut answer).unwrap();
            answer
        };
        slow.write_all(b"GE").unwrap();
        assert!(health(addr).starts_with("HTTP/1.1 200"));
        let started = Instant::now();
        let closed = loop {
            // A byte at a time, never a newline: each read alone would stay under a read
            // timeout.
            if slow.write_all(b"G").is_err() {
                break true;
            }
            match slow.read(&mut [0u8; 64]) {
                Ok(0) => break true,
                Ok(_) => break false,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break true,
            }
            assert!(
                started.elapsed() < REQUEST_TIME * 3,
                "the endpoint still reads the trickle after {:?}",
                started.elapsed()
            );
        };
        assert!(closed, "no response is owed to an unfinished request");

        let mut big = TcpStream::connect(addr).unwrap();
        let header = format!(
            "GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(2 * MAX_REQUEST_HEAD_BYTES as usize)
        );
        // The endpoint stops reading at the bound: the rest of the write may be refused.
        let _ = big.write_all(header.as_bytes());
        let _ = big.shutdown(std::net::Shutdown::Write);
        let mut answer = String::new();
        let _ = big.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");

        assert!(health(addr).starts_with("HTTP/1.1 200"));
    }
}
