//! The configuration file: TOML with Vector-style named tables (`[sources.NAME]`, `[sinks.NAME]`).
//!
//! Every table denies unknown keys; every error names the file, the key and the line. The file
//! is validated once at start-up ([`Config::validate`]); the running daemon trusts it.

pub mod credential;
mod include;
pub mod live;
pub mod reload;
pub mod secret;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::event::EventKind;
use crate::frame::{FrameLimits, Framing, OversizePolicy};
use crate::map::Schema;
use crate::parse::zone::MAX_FIXED_OFFSET_SECS;
use crate::parse::{LocalZone, ParseOptions};
use crate::sink::azure_logs_ingestion::AzureLogsIngestionConfig;
use crate::sink::elasticsearch::ElasticsearchConfig;
use crate::sink::file::FileSinkConfig;
use crate::sink::http::HttpSinkConfig;
use crate::sink::runtime::RetryConfig;
use crate::sink::sekoia::SekoiaConfig;
use crate::sink::splunk_hec::SplunkHecConfig;
use crate::spool::SpoolConfig;
use crate::xdp::XdpConfig;

pub use secret::Secret;

/// The configuration `sluice run` uses without `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../deploy/sluice.toml");
/// How the embedded default is named in messages.
pub const EMBEDDED_DEFAULT_NAME: &str = "<embedded default config>";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Syntax errors, unknown keys and wrong types.
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Parse {
        path: String,
        line: Option<usize>,
        message: String,
    },
    /// A value that parses but is not allowed. `line` is where `key` is written, when it is.
    #[error("{path}{}: `{key}`: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        path: String,
        key: String,
        line: Option<usize>,
        message: String,
    },
}

/// A file a config was read from, and the dotted keys of the inline secrets written in it.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub inline_secrets: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// More `[sources.NAME]` / `[sinks.NAME]` tables from these files and directories (see
    /// `include.rs`). Not part of the effective config, which holds what they added.
    #[serde(default, skip_serializing)]
    pub include: Vec<PathBuf>,
    /// The files the config was read from (none for the embedded default), for
    /// [`Config::check_file_modes`].
    #[serde(skip)]
    files: Vec<ConfigFile>,
    /// Where state (spool, dead letters) lives.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Started as root, switch to this user once sockets are bound and XDP is loaded
    /// (see `crate::privileges`). Unset: keep the identity sluice was started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Primary group after the switch; default: the user's login group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub parse: ParseConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp: Option<XdpConfig>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./sluice-data")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `/metrics` (Prometheus text) and `/health`.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Require `Authorization: Bearer <token>` on `/metrics` (`/health` stays open). Give it
    /// inline, as `bearer_token_file` or as `bearer_token_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_env: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
            enabled: true,
            bearer_token: None,
            bearer_token_file: None,
            bearer_token_env: None,
        }
    }
}

impl MetricsConfig {
    /// The token `/metrics` requires, loaded from wherever it is configured.
    pub fn token(&self) -> Result<Option<Secret>, String> {
        Secret::resolve(
            "bearer_token",
            self.bearer_token.as_ref(),
            self.bearer_token_file.as_ref(),
            self.bearer_token_env.as_deref(),
        )
    }
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9514))
}

fn yes() -> bool {
    true
}

/// `[parse]`: bounds applied to every message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParseConfig {
    #[serde(default = "default_json_max_depth")]
    pub json_max_depth: usize,
    #[serde(default = "default_json_max_bytes")]
    pub json_max_bytes: usize,
    /// Zone of syslog timestamps written without one (RFC 3164 always, some RFC 3339): an
    /// IANA name (`Europe/Paris`: the offset follows daylight saving time), `UTC` or an offset
    /// (`+02:00`). Sources may set their own. Default: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Seconds east of UTC for those timestamps: the older, fixed-offset form of `timezone`.
    #[serde(default)]
    pub default_offset_secs: i32,
}

impl Default for ParseConfig {
    fn default() -> Self {
        ParseConfig {
            json_max_depth: default_json_max_depth(),
            json_max_bytes: default_json_max_bytes(),
            timezone: None,
            default_offset_secs: 0,
        }
    }
}

fn default_json_max_depth() -> usize {
    ParseOptions::default().json_max_depth
}
fn default_json_max_bytes() -> usize {
    ParseOptions::default().json_max_bytes
}

impl ParseConfig {
    /// The options every source starts from; `Err` names the problem with `timezone`.
    pub fn options(&self) -> Result<ParseOptions, String> {
        Ok(ParseOptions {
            json_max_depth: self.json_max_depth,
            json_max_bytes: self.json_max_bytes,
            zone: self.zone()?,
        })
    }

    fn zone(&self) -> Result<LocalZone, String> {
        match &self.timezone {
            Some(name) => LocalZone::parse(name),
            None => Ok(LocalZone::Fixed(self.default_offset_secs)),
        }
    }
}

/// `[pipeline]`: the per-core parse/map stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Parser workers (one per core by default). Readers of core `i` feed worker `i % workers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Capacity of each worker's queue for UDP readers, in reader batches (each at most
    /// `batch_max_frames` frames or 256 KiB). When full, UDP readers stop reading and
    /// datagrams wait in the socket's receive buffer (`receive_buffer_bytes`), whose overflow
    /// the kernel counts (`reason="kernel_rcvbuf"`).
    #[serde(default = "default_queue_batches")]
    pub queue_batches: usize,
    /// Capacity of each worker's queue for TCP, TLS and Darktrace API sources, in batches.
    /// When full, those readers stop reading and flow control makes their senders wait, so a
    /// deeper queue would only cost memory and cache misses (measured: ≈ 10 % more CPU per
    /// message over TCP with 256 batches instead of 16).
    #[serde(default = "default_stream_queue_batches")]
    pub stream_queue_batches: usize,
    /// Capacity of each sink's queue of finished batches waiting for compression and delivery.
    /// Each holds up to the sink's `batch_max_bytes`, so this multiplies memory: with the
    /// defaults, (workers + this + compression threads) × 4 MiB per sink at most.
    #[serde(default = "default_sink_queue_batches")]
    pub sink_queue_batches: usize,
    /// Pin readers and workers to their core.
    #[serde(default = "yes")]
    pub pin_threads: bool,
    /// Niceness (0–19) added to parser workers and file-sink compression threads, so that a
    /// socket reader sharing their core runs first whenever it has input: it moves datagrams
    /// out of the kernel's receive buffer (≈ 2.3 KB of kernel memory per 850-byte datagram)
    /// into the worker queue (≈ 0.9 KB) before the buffer overflows. Workers still get every
    /// cycle the readers leave, and readers block when the queue is full. Applied only when a
    /// UDP source is configured (streams push back through flow control). 0 turns it off.
    #[serde(default = "default_worker_nice")]
    pub worker_nice: u8,
    /// io_uring socket readers, at moderate rates: after a wake-up that brought only a few
    /// messages, how long the reader may wait for more before handing them over, in
    /// milliseconds. Each wake-up (and the worker's) takes the core out of idle, which cost
    /// more than parsing at 25k msgs/s; this bounds the latency it adds. Floods batch by
    /// themselves and are not delayed. 0 turns it off; at most 100.
    #[serde(default = "default_reader_linger_ms")]
    pub reader_linger_ms: u64,
    /// Socket reader implementation: `auto` (io_uring when usable, else portable),
    /// `portable`, or `io_uring` (fail at start-up when unusable).
    #[serde(default)]
    pub io_backend: IoBackend,
    /// Threads of the tokio runtime that delivers spooled batches for every sink.
    #[serde(default = "default_sink_runtime_threads")]
    pub sink_runtime_threads: usize,
    /// At shutdown, how long sinks may keep delivering what is spooled; the rest stays in
    /// the spool and is delivered at the next start.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// A parser worker that has held one reader batch this long (milliseconds; waiting for
    /// room in a sink queue does not count) is stalled: a parser or mapper bug looping, or a
    /// deadlock. Its TCP senders would wait for ever and its UDP datagrams would be dropped,
    /// so the daemon stops instead, counting what the worker held as lost
    /// (`reason="worker_stalled"`), and exits with an error for the service manager to
    /// restart it. A batch takes milliseconds; 0 turns the check off, else at least 1000.
    #[serde(default = "default_worker_stall_ms")]
    pub worker_stall_ms: u64,
}

fn default_sink_runtime_threads() -> usize {
    2
}
fn default_shutdown_grace_ms() -> u64 {
    10_000
}
fn default_worker_stall_ms() -> u64 {
    // Far above a batch of the largest messages on a starved core (workers run niced), so
    // that only a stuck worker stops the daemon.
    60_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoBackend {
    #[default]
    Auto,
    Portable,
    IoUring,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            workers: None,
            queue_batches: default_queue_batches(),
            stream_queue_batches: default_stream_queue_batches(),
            sink_queue_batches: default_sink_queue_batches(),
            pin_threads: true,
            worker_nice: default_worker_nice(),
            reader_linger_ms: default_reader_linger_ms(),
            io_backend: IoBackend::Auto,
            sink_runtime_threads: default_sink_runtime_threads(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            worker_stall_ms: default_worker_stall_ms(),
        }
    }
}

fn default_queue_batches() -> usize {
    // At most 512 frames or 256 KiB per batch: ≤ 64 MiB (≈ 79k 850-byte frames) per worker, a
    // burst that would otherwise overflow the socket buffers (kernel memory, sized by
    // `receive_buffer_bytes`, at ≈ 2.7× the bytes per datagram). Readers hand over full
    // batches while the worker is busy, so the queue fills with full batches.
    256
}
fn default_stream_queue_batches() -> usize {
    16
}
fn default_worker_nice() -> u8 {
    // The lowest priority: during a UDP burst the reader keeps nearly the whole core and
    // empties the socket buffer into the queue and overflow; the workers catch up afterwards.
    // Against 10: a 400k CEF burst into a 2 MiB buffer lost 3.8-9.3k instead of 23-38k, Darktrace
    // JSON at the UDP max kept 135-200k of 200k instead of 118-140k, CPU per message the same
    // (docs/measurements.md, "Session 14").
    19
}
fn default_reader_linger_ms() -> u64 {
    crate::net::DEFAULT_READER_LINGER.as_millis() as u64
}
fn default_sink_queue_batches() -> usize {
    2
}

pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl PipelineConfig {
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(available_cores)
    }
}

/// `[sources.NAME]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    Udp(UdpSourceConfig),
    Tcp(TcpSourceConfig),
    /// Syslog over TLS (RFC 5425); see `docs/daemon.md`, "TLS sources".
    Tls(TlsSourceConfig),
    /// Polls the Darktrace API instead of listening (`source/darktrace_api/`).
    #[serde(rename = "darktrace_api")]
    DarktraceApi(Box<crate::source::darktrace_api::DarktraceApiConfig>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpSourceConfig {
    pub listen: SocketAddr,
    #[serde(default = "default_udp_max_message_bytes")]
    pub max_message_bytes: usize,
    #[serde(default)]
    pub oversize: OversizePolicy,
    /// SO_RCVBUF per socket (SO_RCVBUFFORCE when permitted); the effective size is logged.
    #[serde(default = "default_receive_buffer_bytes")]
    pub receive_buffer_bytes: usize,
    /// Reader sockets/threads (SO_REUSEPORT); default: one per core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Datagrams per hand-off to the worker.
    #[serde(default = "default_batch_max_frames")]
    pub batch_max_frames: usize,
    /// Source CIDRs allowed to send (empty: all). Datagrams from elsewhere are dropped and
    /// counted (`reason="not_allowed"`); XDP's `[xdp] allow` does this in the kernel instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Senders that must keep sending: each gets its own message count and last-seen time
    /// (see `pipeline::senders`), so that one appliance going quiet shows among several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_senders: Vec<String>,
    /// Disk space (under `data_dir/overflow`) for datagrams the worker queue has no room for,
    /// shared equally by the source's reader threads; 0 turns the overflow off. See
    /// `net::overflow`.
    #[serde(default = "default_overflow_max_bytes")]
    pub overflow_max_bytes: u64,
    /// Zone of this source's unzoned timestamps; default: `[parse] timezone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// Smallest share of `overflow_max_bytes` per reader thread: a few full reader batches.
pub const MIN_OVERFLOW_BYTES_PER_READER: u64 = 4 * 1024 * 1024;

fn default_overflow_max_bytes() -> u64 {
    1024 * 1024 * 1024
}

impl UdpSourceConfig {
    /// The overflow bound of each of the source's reader threads (`None`: no overflow).
    pub fn overflow_bytes_per_reader(&self) -> Option<u64> {
        (self.overflow_max_bytes > 0)
            .then(|| self.overflow_max_bytes / self.reader_threads() as u64)
    }

    /// Reader threads (one SO_REUSEPORT socket each); `threads` is checked to be positive.
    pub fn reader_threads(&self) -> usize {
        self.threads.unwrap_or_else(available_cores).max(1)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSourceConfig {
    pub listen: SocketAddr,
    /// `auto` takes octet-counted (RFC 5425/6587) and LF-delimited senders alike.
    #[serde(default)]
    pub framing: Framing,
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    #[serde(default)]
    pub oversize: OversizePolicy,
    #[serde(default = "default_tcp_receive_buffer_bytes")]
    pub receive_buffer_bytes: usize,
    /// Listener sockets (SO_REUSEPORT); default: one per core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Open connections at once (over all listeners); more are accepted and closed (counted).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Frames per hand-off to the worker.
    #[serde(default = "default_batch_max_frames")]
    pub batch_max_frames: usize,
    /// Open connections from one client address (IPv6: one /64); more are refused.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Close a connection that completes no message for this long (0: never). Bytes that never
    /// finish a message (a slowloris client) do not count as activity.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Close a connection once one unfinished message reaches this many bytes (at least
    /// `max_message_bytes`; memory stays bounded by `max_message_bytes` either way).
    #[serde(default = "default_max_frame_backlog_bytes")]
    pub max_frame_backlog_bytes: usize,
    /// Source CIDRs allowed to connect (empty: all); others are refused and counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// As for UDP sources: senders with their own count and last-seen time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_senders: Vec<String>,
    /// Zone of this source's unzoned timestamps; default: `[parse] timezone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// `type = "tls"`: the tcp keys plus the certificate files. Certificate, key and CA bundle are
/// read again on SIGHUP; established connections keep their session.
#[derive(Debug, Clone, Serialize)]
pub struct TlsSourceConfig {
    /// Every key of a `tcp` source means the same here, so it is one struct.
    #[serde(flatten)]
    pub tcp: TcpSourceConfig,
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it signs (mTLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

/// The keys a `tls` source has beyond the `tcp` ones.
const TLS_FILE_KEYS: &[&str] = &["cert_file", "key_file", "client_ca_file"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFilesWritten {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_ca_file: Option<PathBuf>,
}

/// By hand because `#[serde(flatten)]` ignores `deny_unknown_fields`: the certificate keys are
/// split off and the rest must be a valid `tcp` source, so a misspelt key is still refused.
impl<'de> Deserialize<'de> for TlsSourceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (tcp, files) = split_table::<_, TcpSourceConfig, TlsFilesWritten>(d, TLS_FILE_KEYS)?;
        Ok(TlsSourceConfig {
            tcp,
            cert_file: files.cert_file,
            key_file: files.key_file,
            client_ca_file: files.client_ca_file,
        })
    }
}

impl TlsSourceConfig {
    pub fn tls_files(&self) -> crate::net::tls::TlsFiles {
        crate::net::tls::TlsFiles {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            client_ca_file: self.client_ca_file.clone(),
        }
    }
}

fn default_max_connections_per_address() -> usize {
    64
}
fn default_idle_timeout_secs() -> u64 {
    600
}
fn default_max_frame_backlog_bytes() -> usize {
    16 * 1024 * 1024
}

fn default_max_message_bytes() -> usize {
    256 * 1024
}
fn default_udp_max_message_bytes() -> usize {
    65_535
}
fn default_receive_buffer_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_tcp_receive_buffer_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_connections() -> usize {
    1024
}
/// Frames per reader batch. Batches are also capped at 256 KiB, and with messages of ≈ 850
/// bytes (Darktrace CEF) that cap binds first from ≈ 300 frames: a higher frame cap lets the
/// byte cap bound the worker queue, so a UDP burst fills its 64 MiB (measured: 65k → 79k
/// datagrams held, a 200k burst at the sender's max whole in 4 of 6 runs instead of 0 of 6).
fn default_batch_max_frames() -> usize {
    512
}

/// What a reader needs from a network source, whatever its protocol.
#[derive(Debug, Clone, Copy)]
pub struct NetSourceSettings {
    pub listen: SocketAddr,
    pub limits: FrameLimits,
    pub framing: Framing,
    pub receive_buffer_bytes: usize,
    pub threads: usize,
    pub batch_max_frames: usize,
}

/// Worst growth of a socket message into one mapped event: JSON escaping writes a control
/// byte as six (`\u00XX`), and a schema may write a byte twice (sluice's `raw` beside the
/// header fields parsed from it).
const MAPPED_GROWTH_MESSAGE: u64 = 12;
/// An API event is JSON the source wrote: escaping it again (sluice's `raw`) at most doubles
/// it, and so does a schema writing it twice (ECS keeps the original object beside the
/// fields taken from it).
const MAPPED_GROWTH_API_EVENT: u64 = 2;
/// Fields a schema adds to every event (receive time, source name, peer, kind).
const MAPPED_EVENT_OVERHEAD: u64 = 4096;

impl SourceConfig {
    /// Bound on one event of this source once mapped, bytes, with the key that sets it.
    fn mapped_event_bound(&self) -> (u64, &'static str) {
        let (raw, growth, key) = match self {
            SourceConfig::Udp(u) => (
                u.max_message_bytes,
                MAPPED_GROWTH_MESSAGE,
                "max_message_bytes",
            ),
            SourceConfig::Tcp(t) | SourceConfig::Tls(TlsSourceConfig { tcp: t, .. }) => (
                t.max_message_bytes,
                MAPPED_GROWTH_MESSAGE,
                "max_message_bytes",
            ),
            SourceConfig::DarktraceApi(d) => (
                d.max_response_bytes,
                MAPPED_GROWTH_API_EVENT,
                "max_response_bytes",
            ),
        };
        (
            (raw as u64).saturating_mul(growth) + MAPPED_EVENT_OVERHEAD,
            key,
        )
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            SourceConfig::Udp(_) => "udp",
            SourceConfig::Tcp(_) => "tcp",
            SourceConfig::Tls(_) => "tls",
            SourceConfig::DarktraceApi(_) => "darktrace_api",
        }
    }

    /// The source's own `timezone`, if it has one (sources of syslog lines only).
    pub fn timezone(&self) -> Option<&str> {
        match self {
            SourceConfig::Udp(u) => u.timezone.as_deref(),
            SourceConfig::Tcp(t) | SourceConfig::Tls(TlsSourceConfig { tcp: t, .. }) => {
                t.timezone.as_deref()
            }
            SourceConfig::DarktraceApi(_) => None,
        }
    }

    /// The `allow` list as written.
    pub fn allow(&self) -> &[String] {
        match self {
            SourceConfig::Udp(u) => &u.allow,
            SourceConfig::Tcp(t) | SourceConfig::Tls(TlsSourceConfig { tcp: t, .. }) => &t.allow,
            SourceConfig::DarktraceApi(_) => &[],
        }
    }

    /// `expected_senders` as written (syslog sources; the Darktrace API source has one peer).
    pub fn expected_senders_text(&self) -> &[String] {
        match self {
            SourceConfig::Udp(u) => &u.expected_senders,
            SourceConfig::Tcp(t) | SourceConfig::Tls(TlsSourceConfig { tcp: t, .. }) => {
                &t.expected_senders
            }
            SourceConfig::DarktraceApi(_) => &[],
        }
    }

    /// `expected_senders`, parsed (validated with the config).
    pub fn expected_senders(&self) -> Vec<std::net::IpAddr> {
        crate::pipeline::senders::parse(self.expected_senders_text()).unwrap_or_default()
    }

    /// Connection limits (stream sources; UDP has none).
    pub fn connection_limits(&self) -> crate::net::guard::ConnectionLimits {
        use crate::net::guard::ConnectionLimits;
        let (max_connections, per_address, idle, backlog) = match self {
            SourceConfig::Udp(_) | SourceConfig::DarktraceApi(_) => {
                return ConnectionLimits::UNLIMITED;
            }
            SourceConfig::Tcp(t) | SourceConfig::Tls(TlsSourceConfig { tcp: t, .. }) => (
                t.max_connections,
                t.max_connections_per_address,
                t.idle_timeout_secs,
                t.max_frame_backlog_bytes,
            ),
        };
        ConnectionLimits {
            max_connections,
            max_connections_per_address: per_address,
            idle_timeout: (idle > 0).then(|| std::time::Duration::from_secs(idle)),
            max_frame_backlog_bytes: backlog,
        }
    }

    /// `None` for sources that do not listen on a socket (`darktrace_api`).
    pub fn net_settings(&self) -> Option<NetSourceSettings> {
        Some(match self {
            SourceConfig::DarktraceApi(_) => return None,
            SourceConfig::Udp(u) => NetSourceSettings {
                listen: u.listen,
                limits: FrameLimits {
                    max_frame_bytes: u.max_message_bytes,
                    oversize: u.oversize,
                },
                framing: Framing::Auto,
                receive_buffer_bytes: u.receive_buffer_bytes,
                threads: u.reader_threads(),
                batch_max_frames: u.batch_max_frames,
            },
            SourceConfig::Tcp(t) | SourceConfig::Tls(TlsSourceConfig { tcp: t, .. }) => {
                NetSourceSettings {
                    listen: t.listen,
                    limits: FrameLimits {
                        max_frame_bytes: t.max_message_bytes,
                        oversize: t.oversize,
                    },
                    framing: t.framing,
                    receive_buffer_bytes: t.receive_buffer_bytes,
                    threads: t.threads.unwrap_or_else(available_cores),
                    batch_max_frames: t.batch_max_frames,
                }
            }
        })
    }
}

/// `[sinks.NAME]`: the keys every sink has ([`SinkCommon`]: routing, schema, batching, spool,
/// retry) plus the keys of its `type` ([`SinkKind`]). The two are split by key name before
/// either is deserialized, so both keep `deny_unknown_fields` (serde's `flatten` would lose it).
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub common: SinkCommon,
    pub kind: SinkKind,
}

/// One variant per sink type; each struct lives in `sink/<name>/config.rs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkKind {
    File(FileSinkConfig),
    AzureLogsIngestion(AzureLogsIngestionConfig),
    Sekoia(SekoiaConfig),
    SplunkHec(SplunkHecConfig),
    Elasticsearch(ElasticsearchConfig),
    Http(HttpSinkConfig),
}

/// Keys shared by every sink type. Defaults that depend on the type are filled in at load, so
/// the effective config shows them.
#[derive(Debug, Clone, Serialize)]
pub struct SinkCommon {
    pub schema: Schema,
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    pub batch_timeout_ms: u64,
    /// Source names this sink takes; empty: all sources.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// Event kinds this sink takes; empty: all kinds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<EventKind>,
    pub spool: SpoolConfig,
    pub retry: RetryConfig,
}

/// [`SinkCommon`] as written: absent keys get the type's default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkCommonWritten {
    schema: Option<Schema>,
    batch_max_events: Option<usize>,
    batch_max_bytes: Option<usize>,
    batch_timeout_ms: Option<u64>,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    kinds: Vec<EventKind>,
    #[serde(default)]
    spool: SpoolConfig,
    #[serde(default)]
    retry: RetryConfig,
}

const SINK_COMMON_KEYS: &[&str] = &[
    "schema",
    "batch_max_events",
    "batch_max_bytes",
    "batch_timeout_ms",
    "inputs",
    "kinds",
    "spool",
    "retry",
];

/// Header names whose values `check-config` hides (the generic `http` sink's `headers`).
fn sensitive_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "authorization",
        "token",
        "key",
        "secret",
        "cookie",
        "password",
    ]
    .iter()
    .any(|s| name.contains(s))
}

/// Reads one table as two structs: `keys` into `Keys`, the rest into `Rest`, each with
/// `deny_unknown_fields` (which `#[serde(flatten)]` would ignore). `Rest` is read first, so a
/// misspelt key is reported as unknown rather than as a missing one of `keys`.
fn split_table<'de, D, Rest, Keys>(d: D, keys: &[&str]) -> Result<(Rest, Keys), D::Error>
where
    D: serde::Deserializer<'de>,
    Rest: serde::de::DeserializeOwned,
    Keys: serde::de::DeserializeOwned,
{
    use serde::de::Error;
    let mut rest = toml::Table::deserialize(d)?;
    let mut taken = toml::Table::new();
    for key in keys {
        if let Some(v) = rest.remove(*key) {
            taken.insert((*key).to_owned(), v);
        }
    }
    let rest = Rest::deserialize(toml::Value::Table(rest))
        .map_err(|e| D::Error::custom(e.message().trim_end()))?;
    let taken = Keys::deserialize(toml::Value::Table(taken))
        .map_err(|e| D::Error::custom(e.message().trim_end()))?;
    Ok((rest, taken))
}

impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (kind, w) = split_table::<_, SinkKind, SinkCommonWritten>(d, SINK_COMMON_KEYS)?;
        let common = SinkCommon {
            schema: w.schema.unwrap_or_else(|| kind.default_schema()),
            batch_max_events: w.batch_max_events.unwrap_or(10_000),
            batch_max_bytes: w.batch_max_bytes.unwrap_or(4 * 1024 * 1024),
            batch_timeout_ms: w.batch_timeout_ms.unwrap_or(1000),
            inputs: w.inputs,
            kinds: w.kinds,
            spool: w.spool,
            retry: w.retry,
        };
        Ok(SinkConfig { common, kind })
    }
}

impl Serialize for SinkConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let table = |v: toml::Value| match v {
            toml::Value::Table(t) => Ok(t),
            _ => Err(S::Error::custom("a sink config is not a table")),
        };
        let mut merged = table(toml::Value::try_from(&self.kind).map_err(S::Error::custom)?)?;
        merged.extend(table(
            toml::Value::try_from(&self.common).map_err(S::Error::custom)?,
        )?);
        if let Some(toml::Value::Table(headers)) = merged.get_mut("headers") {
            for (name, value) in headers.iter_mut() {
                if sensitive_header(name) {
                    *value = toml::Value::String(secret::REDACTED.to_owned());
                }
            }
        }
        merged.serialize(s)
    }
}

/// Which events a sink takes. Empty lists mean "all".
#[derive(Debug, Clone, Copy)]
pub struct Routing<'a> {
    /// Source names (`[sources.NAME]`).
    pub inputs: &'a [String],
    pub kinds: &'a [EventKind],
}

impl Routing<'_> {
    pub fn accepts_source(&self, source: &str) -> bool {
        self.inputs.is_empty() || self.inputs.iter().any(|s| s == source)
    }
    pub fn accepts_kind(&self, kind: EventKind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }
}

/// When a sink's per-core batch is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub timeout: std::time::Duration,
}

impl SinkKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::File(_) => "file",
            SinkKind::AzureLogsIngestion(_) => "azure_logs_ingestion",
            SinkKind::Sekoia(_) => "sekoia",
            SinkKind::SplunkHec(_) => "splunk_hec",
            SinkKind::Elasticsearch(_) => "elasticsearch",
            SinkKind::Http(_) => "http",
        }
    }

    /// What each service expects (see `docs/sinks.md`).
    pub fn default_schema(&self) -> Schema {
        match self {
            SinkKind::AzureLogsIngestion(_) => Schema::Commonsecuritylog,
            SinkKind::Sekoia(_) => Schema::Raw,
            SinkKind::Elasticsearch(_) => Schema::Ecs,
            SinkKind::File(_) | SinkKind::SplunkHec(_) | SinkKind::Http(_) => Schema::Sluice,
        }
    }

    /// Type-specific checks: `Err((key, message))`. Secrets are loaded (then dropped) so a
    /// missing or empty secret file fails at start-up, naming its key.
    fn validate(&self) -> Result<(), (String, String)> {
        use crate::sink::secret::Secret;
        let secret = |key: &str, file: Option<&PathBuf>, env: Option<&String>| {
            Secret::load(key, file.map(|p| p.as_path()), env.map(|s| s.as_str()))
                .map(drop)
                .map_err(|e| {
                    let written = if env.is_some() && file.is_none() {
                        format!("{key}_env")
                    } else {
                        format!("{key}_file")
                    };
                    (written, e.to_string())
                })
        };
        let url = |key: &str, value: &str| match reqwest::Url::parse(value) {
            Ok(u) if u.scheme() == "https" || u.scheme() == "http" => Ok(()),
            Ok(u) => Err((
                key.to_owned(),
                format!("scheme `{}` is not http(s)", u.scheme()),
            )),
            Err(e) => Err((key.to_owned(), format!("`{value}` is not a URL: {e}"))),
        };
        match self {
            SinkKind::File(f) => f.validate(),
            SinkKind::AzureLogsIngestion(a) => {
                url("endpoint", &a.endpoint)?;
                url("authority", &a.authority)?;
                if a.max_request_bytes > crate::sink::azure_logs_ingestion::AZURE_MAX_CALL_BYTES {
                    return Err((
                        "max_request_bytes".into(),
                        "the service takes at most 1048576 bytes per call".into(),
                    ));
                }
                if a.max_uncompressed_request_bytes < 16 * 1024 {
                    return Err((
                        "max_uncompressed_request_bytes".into(),
                        "must be at least 16384 (smaller would dead-letter ordinary rows)".into(),
                    ));
                }
                secret(
                    "client_secret",
                    a.client_secret_file.as_ref(),
                    a.client_secret_env.as_ref(),
                )
            }
            SinkKind::Sekoia(k) => {
                url("url", &k.url)?;
                secret(
                    "intake_key",
                    k.intake_key_file.as_ref(),
                    k.intake_key_env.as_ref(),
                )
            }
            SinkKind::SplunkHec(h) => {
                url("endpoint", &h.endpoint)?;
                secret("token", h.token_file.as_ref(), h.token_env.as_ref())
            }
            SinkKind::Elasticsearch(e) => {
                url("endpoint", &e.endpoint)?;
                if e.api_key_file.is_some() || e.api_key_env.is_some() {
                    secret("api_key", e.api_key_file.as_ref(), e.api_key_env.as_ref())
                } else if e.username.is_some() {
                    secret(
                        "password",
                        e.password_file.as_ref(),
                        e.password_env.as_ref(),
                    )
                } else {
                    Ok(())
                }
            }
            SinkKind::Http(h) => {
                url("url", &h.url)?;
                for (name, r) in &h.secret_headers {
                    r.load(name)
                        .map_err(|e| (format!("secret_headers.{name}"), e.to_string()))?;
                }
                Ok(())
            }
        }
    }
}

impl SinkConfig {
    pub fn type_name(&self) -> &'static str {
        self.kind.type_name()
    }
    /// Whether batches go through a spool (every network sink; a file sink with `use_spool`).
    pub fn spooled(&self) -> bool {
        match &self.kind {
            SinkKind::File(f) => f.use_spool,
            _ => true,
        }
    }
    pub fn schema(&self) -> Schema {
        self.common.schema
    }
    /// What the workers write per event for this sink (see [`crate::sink::Envelope`]).
    pub fn envelope(&self) -> crate::sink::Envelope {
        use crate::sink::Envelope;
        match (&self.kind, self.schema()) {
            (SinkKind::SplunkHec(h), _) => Envelope::SplunkHec {
                sender_as_host: h.host.is_none(),
            },
            (SinkKind::Elasticsearch(_), _) => Envelope::Elasticsearch,
            _ => Envelope::Row,
        }
    }
    pub fn routing(&self) -> Routing<'_> {
        Routing {
            inputs: &self.common.inputs,
            kinds: &self.common.kinds,
        }
    }
    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            max_events: self.common.batch_max_events,
            max_bytes: self.common.batch_max_bytes,
            timeout: std::time::Duration::from_millis(self.common.batch_timeout_ms),
        }
    }
    /// Type-specific and shared checks: `Err((key, message))`.
    fn validate(&self) -> Result<(), (String, String)> {
        let c = &self.common;
        for (key, v) in [
            ("batch_max_events", c.batch_max_events),
            ("batch_max_bytes", c.batch_max_bytes),
            ("batch_timeout_ms", c.batch_timeout_ms as usize),
            ("retry.concurrency", c.retry.concurrency),
        ] {
            if v == 0 {
                return Err((key.into(), "must be greater than 0".into()));
            }
        }
        if c.batch_max_bytes > 1 << 30 {
            return Err(("batch_max_bytes".into(), "must be at most 1 GiB".into()));
        }
        if c.spool.max_bytes < 1 << 20 {
            return Err(("spool.max_bytes".into(), "must be at least 1 MiB".into()));
        }
        // Less would keep next to nothing of a damaged batch: most likely a unit mistake.
        if c.spool.max_quarantine_bytes != 0 && c.spool.max_quarantine_bytes < 1 << 20 {
            return Err((
                "spool.max_quarantine_bytes".into(),
                "must be 0 (keep no copies of damaged ranges) or at least 1 MiB".into(),
            ));
        }
        // Less would hold next to nothing: most likely a unit mistake.
        if c.retry.max_dead_letter_bytes < 1 << 20 {
            return Err((
                "retry.max_dead_letter_bytes".into(),
                "must be at least 1 MiB".into(),
            ));
        }
        if c.batch_max_bytes as u64 > c.spool.max_bytes / 2 {
            return Err((
                "batch_max_bytes".into(),
                "must be at most half of spool.max_bytes (a batch must fit the spool)".into(),
            ));
        }
        self.kind.validate()
    }
}

impl Config {
    /// Zone of the unzoned timestamps of source `name`: its own `timezone`, else `[parse]`'s.
    pub fn source_zone(&self, name: &str) -> Result<LocalZone, String> {
        match self.sources.get(name).and_then(SourceConfig::timezone) {
            Some(zone) => LocalZone::parse(zone),
            None => self.parse.zone(),
        }
    }

    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let (mut config, origins) = Config::from_toml_with_origins(&text, &display, base)?;
        config.files = origins.files_holding(&secret::inline_secrets(&config));
        Ok(config)
    }

    /// The embedded default, parsed and validated.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::from_toml(EMBEDDED_DEFAULT, EMBEDDED_DEFAULT_NAME)
    }

    /// Parses and validates `text`; `origin` names the file in errors. Relative `include`
    /// entries are resolved against the current directory.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::from_toml_in(text, origin, Path::new("."))
    }

    /// [`Config::from_toml`] for a file in directory `base`.
    fn from_toml_in(text: &str, origin: &str, base: &Path) -> Result<Config, ConfigError> {
        Config::from_toml_with_origins(text, origin, base).map(|(config, _)| config)
    }

    /// [`Config::from_toml_in`], also telling which file each table came from.
    fn from_toml_with_origins(
        text: &str,
        origin: &str,
        base: &Path,
    ) -> Result<(Config, include::Origins), ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| parse_error(text, origin, &e))?;
        let origins = include::merge(&mut config, origin, text, base)?;
        config.validate().map_err(|(key, message)| {
            let (path, text) = origins.file_of(&key);
            ConfigError::Invalid {
                path: path.to_string(),
                line: locate_key(text, &key),
                key,
                message,
            }
        })?;
        Ok((config, origins))
    }

    /// Refuses to go on when a secret file (`*_file`) is accessible by group or others, or a
    /// config file (main or included) is writable by others or owned by another unprivileged
    /// user; returns warnings for group-writable config files and for inline secrets in files
    /// others may read.
    pub fn check_file_modes(&self) -> Result<Vec<String>, String> {
        secret::check_secret_file_modes(&secret::secret_files(self))?;
        secret::check_config_file_modes(&self.files)
    }

    /// The effective config as TOML, every secret replaced by [`secret::REDACTED`].
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot render the config: {e}\n"))
    }

    /// Checks values serde cannot: `Err((dotted key, message))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        fn positive(key: String, v: usize) -> Result<(), (String, String)> {
            if v == 0 {
                Err((key, "must be greater than 0".into()))
            } else {
                Ok(())
            }
        }
        if self.sources.is_empty() {
            return Err((
                "sources".into(),
                "at least one [sources.NAME] is required".into(),
            ));
        }
        if self.sinks.is_empty() {
            return Err((
                "sinks".into(),
                "at least one [sinks.NAME] is required".into(),
            ));
        }
        if self.group.is_some() && self.user.is_none() {
            return Err(("group".into(), "`group` needs `user`".into()));
        }
        if self.sources.len() > u16::MAX as usize {
            return Err(("sources".into(), "too many sources".into()));
        }
        if let Err(message) = self.metrics.token() {
            let key = ["bearer_token_file", "bearer_token_env", "bearer_token"]
                .into_iter()
                .find(|k| message.contains(&format!("`{k}`")))
                .unwrap_or("bearer_token");
            return Err((format!("metrics.{key}"), message));
        }
        positive("parse.json_max_depth".into(), self.parse.json_max_depth)?;
        positive("parse.json_max_bytes".into(), self.parse.json_max_bytes)?;
        if self.parse.default_offset_secs.abs() > MAX_FIXED_OFFSET_SECS {
            return Err((
                "parse.default_offset_secs".into(),
                "must be within ±86400".into(),
            ));
        }
        if self.parse.timezone.is_some() && self.parse.default_offset_secs != 0 {
            return Err((
                "parse.default_offset_secs".into(),
                "set `timezone` or `default_offset_secs`, not both (`timezone` also takes \
                 offsets such as \"+02:00\")"
                    .into(),
            ));
        }
        self.parse
            .zone()
            .map_err(|e| ("parse.timezone".to_string(), e))?;
        for name in self.sources.keys() {
            self.source_zone(name)
                .map_err(|e| (format!("sources.{name}.timezone"), e))?;
        }
        if let Some(w) = self.pipeline.workers {
            positive("pipeline.workers".into(), w)?;
        }
        positive("pipeline.queue_batches".into(), self.pipeline.queue_batches)?;
        positive(
            "pipeline.stream_queue_batches".into(),
            self.pipeline.stream_queue_batches,
        )?;
        if self.pipeline.worker_nice > 19 {
            return Err((
                "pipeline.worker_nice".into(),
                format!(
                    "{} is above 19, the lowest priority",
                    self.pipeline.worker_nice
                ),
            ));
        }
        let max_linger = crate::net::MAX_READER_LINGER.as_millis();
        if u128::from(self.pipeline.reader_linger_ms) > max_linger {
            return Err((
                "pipeline.reader_linger_ms".into(),
                format!(
                    "{} is above {max_linger} (milliseconds a trickle may wait; readers look \
                     for shutdown that often, so no wait is longer)",
                    self.pipeline.reader_linger_ms
                ),
            ));
        }
        if (1..1000).contains(&self.pipeline.worker_stall_ms) {
            return Err((
                "pipeline.worker_stall_ms".into(),
                format!(
                    "{} is below 1000: a busy machine would stop the daemon for a slow batch \
                     (0 turns the check off)",
                    self.pipeline.worker_stall_ms
                ),
            ));
        }
        positive(
            "pipeline.sink_runtime_threads".into(),
            self.pipeline.sink_runtime_threads,
        )?;
        positive(
            "pipeline.sink_queue_batches".into(),
            self.pipeline.sink_queue_batches,
        )?;

        let mut udp_ports = HashSet::new();
        let mut tcp_ports = HashSet::new();
        for (name, source) in &self.sources {
            let prefix = format!("sources.{name}");
            if name.is_empty() {
                return Err((prefix, "a source needs a name".into()));
            }
            let (max_message_bytes, receive_buffer_bytes, threads, batch_max_frames) = match source
            {
                SourceConfig::Udp(u) => (
                    u.max_message_bytes,
                    u.receive_buffer_bytes,
                    u.threads,
                    u.batch_max_frames,
                ),
                SourceConfig::Tcp(t) | SourceConfig::Tls(TlsSourceConfig { tcp: t, .. }) => {
                    positive(format!("{prefix}.max_connections"), t.max_connections)?;
                    if let SourceConfig::Tls(tls) = source {
                        crate::net::tls::TlsAcceptor::build_config(&tls.tls_files())
                            .map_err(|e| (format!("{prefix}.{}", e.key()), e.to_string()))?;
                    }
                    (
                        t.max_message_bytes,
                        t.receive_buffer_bytes,
                        t.threads,
                        t.batch_max_frames,
                    )
                }
                SourceConfig::DarktraceApi(d) => {
                    // The name is a directory name (its checkpoints).
                    if name == "."
                        || name == ".."
                        || !name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    {
                        return Err((
                            prefix,
                            "a darktrace_api source name may hold only letters, digits and `-_.`"
                                .into(),
                        ));
                    }
                    d.validate()
                        .map_err(|(key, message)| (format!("{prefix}.{key}"), message))?;
                    continue;
                }
            };
            if let Err(message) = crate::net::guard::Allowlist::parse(source.allow()) {
                return Err((format!("{prefix}.allow"), message));
            }
            crate::pipeline::senders::parse(source.expected_senders_text())
                .map_err(|message| (format!("{prefix}.expected_senders"), message))?;
            if !matches!(source, SourceConfig::Udp(_)) {
                let limits = source.connection_limits();
                positive(
                    format!("{prefix}.max_connections_per_address"),
                    limits.max_connections_per_address,
                )?;
                if limits.max_frame_backlog_bytes < max_message_bytes {
                    return Err((
                        format!("{prefix}.max_frame_backlog_bytes"),
                        format!("must be at least max_message_bytes ({max_message_bytes})"),
                    ));
                }
            }
            positive(format!("{prefix}.max_message_bytes"), max_message_bytes)?;
            if max_message_bytes > u32::MAX as usize / 2 {
                return Err((
                    format!("{prefix}.max_message_bytes"),
                    "must be below 2 GiB".into(),
                ));
            }
            if matches!(source, SourceConfig::Udp(_)) && max_message_bytes > 65_535 {
                // A UDP datagram cannot be larger; a larger bound would only waste buffer space.
                return Err((
                    format!("{prefix}.max_message_bytes"),
                    "a UDP datagram holds at most 65535 bytes".into(),
                ));
            }
            positive(
                format!("{prefix}.receive_buffer_bytes"),
                receive_buffer_bytes,
            )?;
            if receive_buffer_bytes > i32::MAX as usize {
                return Err((
                    format!("{prefix}.receive_buffer_bytes"),
                    "must be below 2 GiB".into(),
                ));
            }
            if let Some(t) = threads {
                positive(format!("{prefix}.threads"), t)?;
            }
            if let SourceConfig::Udp(u) = source
                && u.overflow_max_bytes > 0
            {
                let readers = u.reader_threads() as u64;
                if u.overflow_max_bytes / readers < MIN_OVERFLOW_BYTES_PER_READER {
                    return Err((
                        format!("{prefix}.overflow_max_bytes"),
                        format!(
                            "must be 0 (off) or at least {} bytes: each of the source's {readers} \
                             reader threads needs {MIN_OVERFLOW_BYTES_PER_READER}",
                            readers * MIN_OVERFLOW_BYTES_PER_READER
                        ),
                    ));
                }
            }
            positive(format!("{prefix}.batch_max_frames"), batch_max_frames)?;
            let Some(NetSourceSettings { listen, .. }) = source.net_settings() else {
                continue;
            };
            let ports = if matches!(source, SourceConfig::Udp(_)) {
                &mut udp_ports
            } else {
                &mut tcp_ports
            };
            // Port 0 (the kernel picks one; tests use it) never conflicts.
            if listen.port() != 0 && !ports.insert(listen.port()) {
                return Err((
                    format!("{prefix}.listen"),
                    format!(
                        "another {} source already listens on port {}",
                        source.type_name(),
                        listen.port()
                    ),
                ));
            }
        }
        if self.metrics.enabled
            && self.metrics.listen.port() != 0
            && tcp_ports.contains(&self.metrics.listen.port())
        {
            return Err((
                "metrics.listen".into(),
                format!("port {} is also a tcp source", self.metrics.listen.port()),
            ));
        }

        let mut paths = HashSet::new();
        for (name, sink) in &self.sinks {
            let prefix = format!("sinks.{name}");
            sink.validate()
                .map_err(|(key, message)| (format!("{prefix}.{key}"), message))?;
            let routing = sink.routing();
            for input in routing.inputs {
                if !self.sources.contains_key(input) {
                    return Err((
                        format!("{prefix}.inputs"),
                        format!("no source named `{input}`"),
                    ));
                }
            }
            // A batch is sealed once it reaches batch_max_bytes, so it can be larger by the
            // event that crossed it; spooled, the whole batch is one record.
            let largest_event = self
                .sources
                .iter()
                .filter(|(source, _)| routing.accepts_source(source))
                .map(|(source, config)| (config.mapped_event_bound(), source))
                .max();
            if sink.spooled()
                && let Some(((event, key), source)) = largest_event
            {
                let record = crate::spool::record::MAX_NDJSON_LEN;
                if event >= record {
                    return Err((
                        format!("sources.{source}.{key}"),
                        format!(
                            "too large for the spooled sink `{name}`: one event of this source \
                             may take up to {event} bytes mapped, and a spool record holds \
                             {record} bytes"
                        ),
                    ));
                }
                let most = record - event;
                if sink.common.batch_max_bytes as u64 > most {
                    return Err((
                        format!("{prefix}.batch_max_bytes"),
                        format!(
                            "must be at most {most}, so that a full batch fits one spool record \
                             ({record} bytes) with the event that crosses it (up to {event} \
                             bytes mapped, from source `{source}`, its {key})"
                        ),
                    ));
                }
            }
            if let SinkKind::File(f) = &sink.kind
                && !paths.insert(f.path.clone())
            {
                return Err((
                    format!("{prefix}.path"),
                    "another file sink writes to the same path".into(),
                ));
            }
        }
        if let Some(xdp) = &self.xdp {
            if !crate::xdp::PROGRAM_EMBEDDED {
                return Err(("xdp".into(), crate::xdp::XdpError::NotEmbedded.to_string()));
            }
            if xdp.interfaces.is_empty() {
                return Err((
                    "xdp.interfaces".into(),
                    "list at least one interface".into(),
                ));
            }
            for cidr in &xdp.allow {
                if !valid_cidr(cidr) {
                    return Err((
                        "xdp.allow".into(),
                        format!("`{cidr}` is not an IPv4/IPv6 address or CIDR"),
                    ));
                }
            }
            if xdp.rate_limit_pps == Some(0) {
                return Err((
                    "xdp.rate_limit_pps".into(),
                    "must be greater than 0 (omit it to disable)".into(),
                ));
            }
        }
        Ok(())
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Turns a TOML error into one line naming file, line and key. Tables read through an
/// internally tagged enum (`[sources.X]`, `[sinks.X]`) lose their inner spans in serde, so the
/// parser points at the table header; the offending key is then looked up inside that table.
fn parse_error(text: &str, origin: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim_end().to_string();
    let Some(span) = e.span() else {
        return ConfigError::Parse {
            path: origin.to_string(),
            line: None,
            message,
        };
    };
    let mut line = line_of(text, span.start);
    let header = text[span.start.min(text.len())..]
        .lines()
        .next()
        .unwrap_or("")
        .trim();
    if header.starts_with('[') {
        let table_end = text[span.start..]
            .match_indices('\n')
            .map(|(i, _)| span.start + i + 1)
            .find(|&i| text[i..].trim_start().starts_with('['))
            .unwrap_or(text.len());
        let region = &text[span.start..table_end];
        let quoted = |prefix: &str| {
            let rest = message.strip_prefix(prefix)?;
            Some(rest[..rest.find('`')?].to_string())
        };
        let found = if let Some(key) = quoted("unknown field `") {
            find_line(region, |l| {
                l.strip_prefix(key.as_str())
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
        } else if let Some(value) = quoted("unknown variant `") {
            find_line(region, |l| {
                l.contains(&format!("\"{value}\"")) || l.contains(&format!("'{value}'"))
            })
        } else {
            None
        };
        if let Some(offset) = found {
            line = line_of(text, span.start + offset);
        }
        return ConfigError::Parse {
            path: origin.to_string(),
            line: Some(line),
            message: format!("{message} (in {header})"),
        };
    }
    ConfigError::Parse {
        path: origin.to_string(),
        line: Some(line),
        message,
    }
}

/// Offset within `region` of the first line (leading blanks trimmed) matching `pred`.
fn find_line(region: &str, pred: impl Fn(&str) -> bool) -> Option<usize> {
    let mut offset = 0;
    for l in region.split_inclusive('\n') {
        if pred(l.trim_start()) {
            return Some(offset);
        }
        offset += l.len();
    }
    None
}

fn valid_cidr(text: &str) -> bool {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let Ok(ip) = addr.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|p| p <= max))
}

/// The 1-based line where dotted `key` (e.g. `sinks.out.path`) is written, or where its closest
/// written ancestor is (a missing key is reported at its table).
pub fn locate_key(text: &str, key: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut best = None;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let Some((k, v)) = table.get_key_value(*part) else {
            break;
        };
        let span = if k.span().start < k.span().end {
            k.span()
        } else {
            v.span()
        };
        best = Some(span.start);
        match v.get_ref().as_table() {
            Some(t) if i + 1 < parts.len() => table = t,
            _ => break,
        }
    }
    best.map(|offset| line_of(text, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
data_dir = "/tmp/x"
[sources.syslog_udp]
type = "udp"
listen = "127.0.0.1:5514"
[sources.syslog_tcp]
type = "tcp"
listen = "127.0.0.1:5514"
framing = "octet"
[sinks.out]
type = "file"
path = "/tmp/x/out"
schema = "commonsecuritylog"
compression = "gzip"
inputs = ["syslog_tcp"]
kinds = ["cef", "darktrace_model_breach"]
"#;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default().unwrap();
        assert_eq!(c.sources.len(), 2);
        assert_eq!(c.metrics.listen, "127.0.0.1:9514".parse().unwrap());
        let sink = c.sinks.values().next().unwrap();
        assert!(matches!(sink.kind, SinkKind::File(_)));
        assert_eq!(sink.schema(), Schema::Sluice);
    }

    /// Both builds take the same `[xdp]` section; only the one with the program accepts it.
    #[test]
    fn xdp_section_needs_the_embedded_program() {
        let text = format!("{GOOD}[xdp]\ninterfaces = [\"eth0\"]\n");
        let result = Config::from_toml(&text, "x.toml");
        if cfg!(feature = "xdp") {
            assert!(result.unwrap().xdp.is_some());
        } else {
            let err = result.unwrap_err().to_string();
            assert!(
                err.starts_with("x.toml:17: `xdp`: this sluice was built without its XDP program"),
                "{err}"
            );
        }
    }

    #[test]
    fn parses_named_tables() {
        let c = Config::from_toml(GOOD, "good.toml").unwrap();
        assert!(matches!(
            c.sources["syslog_tcp"],
            SourceConfig::Tcp(TcpSourceConfig {
                framing: Framing::Octet,
                ..
            })
        ));
        let sink = &c.sinks["out"];
        assert!(sink.routing().accepts_source("syslog_tcp"));
        assert!(!sink.routing().accepts_source("syslog_udp"));
        assert!(sink.routing().accepts_kind(EventKind::Cef));
        assert!(!sink.routing().accepts_kind(EventKind::Json));
        // The effective config round-trips.
        let again = Config::from_toml(&c.to_redacted_toml(), "again").unwrap();
        assert_eq!(again.sinks["out"].schema(), Schema::Commonsecuritylog);
    }

    #[test]
    fn time_zones_for_the_parser_and_per_source() {
        let utc = |secs: i64| secs;
        // Unset: UTC everywhere.
        let c = Config::from_toml(GOOD, "good.toml").unwrap();
        assert_eq!(
            c.source_zone("syslog_udp").unwrap().utc_from_local(100),
            Some(utc(100))
        );
        // `[parse] timezone` for every source, a source's own for that source only.
        let text = format!(
            "{}[parse]\ntimezone = \"Europe/Paris\"\n",
            GOOD.replace(
                "framing = \"octet\"",
                "framing = \"octet\"\ntimezone = \"-05:00\""
            )
        );
        let c = Config::from_toml(&text, "tz.toml").unwrap();
        let july_noon = 1_720_180_800; // 2024-07-05T12:00:00 as if UTC
        assert_eq!(
            c.source_zone("syslog_udp")
                .unwrap()
                .utc_from_local(july_noon),
            Some(july_noon - 7200)
        );
        assert_eq!(
            c.source_zone("syslog_tcp")
                .unwrap()
                .utc_from_local(july_noon),
            Some(july_noon + 5 * 3600)
        );
        assert_eq!(c.parse.options().unwrap().zone.to_string(), "Europe/Paris");
        // The effective config keeps both.
        let again = c.to_redacted_toml();
        assert!(again.contains("timezone = \"Europe/Paris\""), "{again}");
        assert!(again.contains("timezone = \"-05:00\""), "{again}");
        // The older fixed offset still works.
        let text = format!("{GOOD}[parse]\ndefault_offset_secs = 3600\n");
        let c = Config::from_toml(&text, "old.toml").unwrap();
        assert_eq!(
            c.source_zone("syslog_tcp").unwrap().utc_from_local(3600),
            Some(0)
        );
    }

    #[test]
    fn a_bad_time_zone_names_its_key_and_line() {
        let text = format!("{GOOD}[parse]\ntimezone = \"Europe/Pariss\"\n");
        let err = Config::from_toml(&text, "tz.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("tz.toml:18: `parse.timezone`: unknown time zone `Europe/Pariss`"),
            "{err}"
        );
        let text = GOOD.replace(
            "framing = \"octet\"",
            "framing = \"octet\"\ntimezone = \"+25:00\"",
        );
        let err = Config::from_toml(&text, "tz.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("tz.toml:10: `sources.syslog_tcp.timezone`: `+25:00` is not an offset"),
            "{err}"
        );
        let text = format!("{GOOD}[parse]\ntimezone = \"UTC\"\ndefault_offset_secs = 60\n");
        let err = Config::from_toml(&text, "tz.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("tz.toml:19: `parse.default_offset_secs`: set `timezone` or"),
            "{err}"
        );
        // Not a key of an API source.
        let text = format!(
            "{GOOD}[sources.dt]\ntype = \"darktrace_api\"\nurl = \"https://dt.example\"\n\
             public_token = \"p\"\nprivate_token = \"q\"\ntimezone = \"UTC\"\n"
        );
        let err = Config::from_toml(&text, "tz.toml").unwrap_err().to_string();
        assert!(err.contains("unknown field `timezone`"), "{err}");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = GOOD.replace(
            "framing = \"octet\"",
            "framing = \"octet\"\nframeing = \"lf\"",
        );
        let err = Config::from_toml(&text, "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.toml"), "{err}");
        assert!(err.contains("frameing"), "{err}");
        assert!(
            err.starts_with("bad.toml:10: unknown field `frameing`"),
            "{err}"
        );
        assert!(err.contains("[sources.syslog_tcp]"), "{err}");
    }

    #[test]
    fn unknown_key_in_sink_names_line() {
        let text = GOOD.replace("compression = \"gzip\"", "compresion = \"gzip\"");
        let err = Config::from_toml(&text, "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("compresion"), "{err}");
        assert!(
            err.starts_with("bad.toml:14: unknown field `compresion`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_top_level_key() {
        let err = Config::from_toml(&format!("bogus = 1\n{GOOD}"), "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("bad.toml:1: unknown field `bogus`"),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_name_key_and_line() {
        let text = GOOD.replace(
            "listen = \"127.0.0.1:5514\"\nframing",
            "listen = \"127.0.0.1:5514\"\nmax_message_bytes = 0\nframing",
        );
        let err = Config::from_toml(&text, "bad.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "bad.toml:9: `sources.syslog_tcp.max_message_bytes`: must be greater than 0"
        );

        let text = GOOD.replace("[\"syslog_tcp\"]", "[\"nope\"]");
        let err = Config::from_toml(&text, "bad.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "bad.toml:15: `sinks.out.inputs`: no source named `nope`"
        );

        let text = GOOD.replace(
            "listen = \"127.0.0.1:5514\"\nframing",
            "listen = \"127.0.0.1:5515\"\nframing",
        ) + "[sources.dup]\ntype = \"tcp\"\nlisten = \"0.0.0.0:5515\"\n";
        let err = Config::from_toml(&text, "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sources.") && err.contains("port 5515"),
            "{err}"
        );
    }

    #[test]
    fn reader_linger_defaults_to_10_ms_and_is_bounded() {
        let config = Config::from_toml(GOOD, "good.toml").unwrap();
        assert_eq!(config.pipeline.reader_linger_ms, 10);
        let off = format!("{GOOD}[pipeline]\nreader_linger_ms = 0\n");
        assert_eq!(
            Config::from_toml(&off, "off.toml")
                .unwrap()
                .pipeline
                .reader_linger_ms,
            0
        );
        let most = format!("{GOOD}[pipeline]\nreader_linger_ms = 50\n");
        assert!(Config::from_toml(&most, "most.toml").is_ok());
        let text = format!("{GOOD}[pipeline]\nreader_linger_ms = 51\n");
        let err = Config::from_toml(&text, "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(": `pipeline.reader_linger_ms`: 51 is above 50"),
            "{err}"
        );
    }

    #[test]
    fn worker_stall_check_defaults_to_a_minute_and_is_off_or_at_least_a_second() {
        let config = Config::from_toml(GOOD, "good.toml").unwrap();
        assert_eq!(config.pipeline.worker_stall_ms, 60_000);
        for ok in [0, 1000] {
            let text = format!("{GOOD}[pipeline]\nworker_stall_ms = {ok}\n");
            let config = Config::from_toml(&text, "ok.toml").unwrap();
            assert_eq!(config.pipeline.worker_stall_ms, ok);
        }
        let text = format!("{GOOD}[pipeline]\nworker_stall_ms = 999\n");
        let err = Config::from_toml(&text, "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.toml")
                && err.contains("`pipeline.worker_stall_ms`: 999 is below 1000"),
            "{err}"
        );
    }

    #[test]
    fn udp_overflow_bound_is_split_per_reader_and_checked() {
        let with = |keys: &str| {
            GOOD.replace(
                "type = \"udp\"\nlisten = \"127.0.0.1:5514\"",
                &format!("type = \"udp\"\nlisten = \"127.0.0.1:5514\"\n{keys}"),
            )
        };
        let udp = |c: &Config| match &c.sources["syslog_udp"] {
            SourceConfig::Udp(u) => u.clone(),
            _ => unreachable!(),
        };
        let c = Config::from_toml(&with("threads = 4"), "ok.toml").unwrap();
        assert_eq!(udp(&c).overflow_max_bytes, 1 << 30, "on by default");
        assert_eq!(udp(&c).overflow_bytes_per_reader(), Some(1 << 28));
        let c = Config::from_toml(&with("overflow_max_bytes = 0"), "ok.toml").unwrap();
        assert_eq!(udp(&c).overflow_bytes_per_reader(), None);
        let err = Config::from_toml(
            &with("threads = 2\noverflow_max_bytes = 4194304"),
            "bad.toml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "bad.toml:7: `sources.syslog_udp.overflow_max_bytes`: must be 0 (off) or at least \
             8388608 bytes: each of the source's 2 reader threads needs 4194304"
        );
        let err = Config::from_toml(
            &GOOD.replace("framing = \"octet\"", "overflow_max_bytes = 0"),
            "bad.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("overflow_max_bytes"),
            "a tcp source has none: {err}"
        );
    }

    /// A sealed batch is `batch_max_bytes` plus the event that crosses it, and a spooled batch
    /// is one spool record, which holds at most 1 GiB: a config where full batches cannot be
    /// spooled is refused, naming the key.
    #[test]
    fn a_full_batch_must_fit_one_spool_record() {
        let with = |tcp_keys: &str, relay_keys: &str| {
            let text = GOOD.replace(
                "framing = \"octet\"",
                &format!("framing = \"octet\"\n{tcp_keys}"),
            );
            format!(
                "{text}[sinks.relay]\ntype = \"http\"\nurl = \"http://127.0.0.1:2/in\"\n{relay_keys}\
                 [sinks.relay.spool]\nmax_bytes = 4294967296\n"
            )
        };
        let err = Config::from_toml(&with("", "batch_max_bytes = 1073741824\n"), "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`sinks.relay.batch_max_bytes`: must be at most "),
            "{err}"
        );
        let half = "batch_max_bytes = 536870912\n";
        assert!(Config::from_toml(&with("", half), "ok.toml").is_ok());
        // The crossing event is bounded by the largest message of the sources routed here.
        let big_messages = "max_message_bytes = 67108864\nmax_frame_backlog_bytes = 67108864\n";
        let err = Config::from_toml(&with(big_messages, half), "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`sinks.relay.batch_max_bytes`: must be at most ")
                && err.contains("syslog_tcp"),
            "{err}"
        );
        let udp_only = format!("{half}inputs = [\"syslog_udp\"]\n");
        assert!(Config::from_toml(&with(big_messages, &udp_only), "ok.toml").is_ok());
        // No batch size helps when one event alone may not fit: the source's key is named.
        let huge = "max_message_bytes = 104857600\nmax_frame_backlog_bytes = 104857600\n";
        let err = Config::from_toml(&with(huge, "batch_max_bytes = 65536\n"), "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "`sources.syslog_tcp.max_message_bytes`: too large for the spooled sink `relay`"
            ),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_redacted_and_resolved() {
        let text = format!("{GOOD}[metrics]\nbearer_token = \"s3cr3t-value\"\n");
        let c = Config::from_toml(&text, "x").unwrap();
        let shown = c.to_redacted_toml();
        assert!(
            !shown.contains("s3cr3t-value") && shown.contains(secret::REDACTED),
            "{shown}"
        );
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
        assert_eq!(c.metrics.token().unwrap().unwrap().expose(), "s3cr3t-value");

        let text = format!("{GOOD}[metrics]\nbearer_token_file = \"/nonexistent/token\"\n");
        let err = Config::from_toml(&text, "x.toml").unwrap_err().to_string();
        let line = GOOD.lines().count() + 2;
        assert!(
            err.starts_with(&format!("x.toml:{line}: `metrics.bearer_token_file`")),
            "{err}"
        );
    }

    #[test]
    fn bad_enum_value() {
        let text = GOOD.replace("\"gzip\"", "\"lz4\"");
        let err = Config::from_toml(&text, "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("bad.toml:14: unknown variant `lz4`"),
            "{err}"
        );

        let text = GOOD.replace("\"127.0.0.1:5514\"\nframing", "\"nowhere\"\nframing");
        let err = Config::from_toml(&text, "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("bad.toml:6:") && err.contains("[sources.syslog_tcp]"),
            "{err}"
        );
    }

    /// The quarantine's bound is a spool key like the others: 0 or at least 1 MiB, refused
    /// at start-up naming the key otherwise.
    #[test]
    fn the_quarantine_bound_is_a_validated_spool_key() {
        let with = |spool_keys: &str| {
            format!(
                "{GOOD}[sinks.relay]\ntype = \"http\"\nurl = \"http://127.0.0.1:2/in\"\n\
                 [sinks.relay.spool]\n{spool_keys}"
            )
        };
        let c = Config::from_toml(&with(""), "ok.toml").unwrap();
        assert_eq!(c.sinks["relay"].common.spool.max_quarantine_bytes, 64 << 20);
        let c = Config::from_toml(&with("max_quarantine_bytes = 0\n"), "ok.toml").unwrap();
        assert_eq!(c.sinks["relay"].common.spool.max_quarantine_bytes, 0);
        let c = Config::from_toml(&with("max_quarantine_bytes = 1048576\n"), "ok.toml").unwrap();
        assert_eq!(c.sinks["relay"].common.spool.max_quarantine_bytes, 1 << 20);
        let err = Config::from_toml(&with("max_quarantine_bytes = 64\n"), "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`sinks.relay.spool.max_quarantine_bytes`: must be 0"),
            "{err}"
        );
    }

    /// A file sink's retention: a table of its own, strict keys, a byte bound of 0 or at least
    /// 1 MiB, refused at start-up naming key and line.
    #[test]
    fn file_sink_retention_is_a_validated_table() {
        let with = |keys: &str| {
            format!(
                "{GOOD}[sinks.archive]\ntype = \"file\"\npath = \"/tmp/sluice-archive\"\n\
                 [sinks.archive.retention]\n{keys}"
            )
        };
        let c = Config::from_toml(
            &with("max_bytes = 10737418240\nmax_age_secs = 604800\n"),
            "ok.toml",
        )
        .unwrap();
        let SinkKind::File(f) = &c.sinks["archive"].kind else {
            panic!("not a file sink")
        };
        assert_eq!(f.retention.max_bytes, 10 << 30);
        assert_eq!(f.retention.max_age_secs, 604_800);
        let SinkKind::File(f) = &c.sinks["out"].kind else {
            panic!("not a file sink")
        };
        assert!(!f.retention.is_bounded(), "unbounded unless asked");

        let text = with("max_bytes = 4096\n");
        let err = Config::from_toml(&text, "bad.toml")
            .unwrap_err()
            .to_string();
        let line = text.lines().count();
        assert!(
            err.starts_with(&format!("bad.toml:{line}:"))
                && err.contains("`sinks.archive.retention.max_bytes`: 4096 is below 1048576"),
            "{err}"
        );
        let err = Config::from_toml(&with("max_files = 3\n"), "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_files"), "{err}");
    }

    #[test]
    fn the_dead_letter_bound_defaults_to_1_gib_and_is_validated() {
        let with = |retry_keys: &str| {
            format!(
                "{GOOD}[sinks.relay]\ntype = \"http\"\nurl = \"http://127.0.0.1:2/in\"\n\
                 [sinks.relay.retry]\n{retry_keys}"
            )
        };
        let c = Config::from_toml(&with(""), "ok.toml").unwrap();
        assert_eq!(c.sinks["relay"].common.retry.max_dead_letter_bytes, 1 << 30);
        let c = Config::from_toml(&with("max_dead_letter_bytes = 1048576\n"), "ok.toml").unwrap();
        assert_eq!(c.sinks["relay"].common.retry.max_dead_letter_bytes, 1 << 20);
        let err = Config::from_toml(&with("max_dead_letter_bytes = 0\n"), "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`sinks.relay.retry.max_dead_letter_bytes`: must be at least 1 MiB"),
            "{err}"
        );
    }

    #[test]
    fn http_sinks_share_common_keys_and_keep_strict_keys() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "k3y-value\n").unwrap();
        let sinks = format!(
            "[sinks.sek]\ntype = \"sekoia\"\nurl = \"http://127.0.0.1:1\"\nintake_key_file = {key:?}\n\
             kinds = [\"json\"]\nbatch_max_events = 5\n[sinks.sek.spool]\nmax_bytes = 16777216\nwhen_full = \"drop_oldest\"\n\
             [sinks.sek.retry]\nconcurrency = 2\n\
             [sinks.relay]\ntype = \"http\"\nurl = \"http://127.0.0.1:2/in\"\nheaders = {{ Authorization = \"Bearer hunter2\", X-Tag = \"a\" }}\n",
        );
        let c = Config::from_toml(&format!("{GOOD}{sinks}"), "x").unwrap();
        let sek = &c.sinks["sek"];
        assert!(matches!(sek.kind, SinkKind::Sekoia(_)));
        assert_eq!(sek.schema(), Schema::Raw);
        assert_eq!(sek.batch_limits().max_events, 5);
        assert_eq!(sek.common.spool.max_bytes, 16 << 20);
        assert_eq!(sek.common.retry.concurrency, 2);
        assert!(!sek.routing().accepts_kind(EventKind::Cef));
        let shown = c.to_redacted_toml();
        assert!(
            !shown.contains("hunter2") && shown.contains("X-Tag"),
            "{shown}"
        );
        let again = Config::from_toml(&shown.replace(secret::REDACTED, "x"), "again").unwrap();
        assert_eq!(again.sinks["sek"].common.spool.max_bytes, 16 << 20);

        // A typo in a type-specific key names key and line.
        let bad = format!(
            "{GOOD}{}",
            sinks.replace("intake_key_file", "intake_keyfile")
        );
        let err = Config::from_toml(&bad, "bad.toml").unwrap_err().to_string();
        let line = GOOD.lines().count() + 4;
        assert!(
            err.starts_with(&format!("bad.toml:{line}: unknown field `intake_keyfile`")),
            "{err}"
        );
        // A missing secret file is an error naming the key.
        let bad = format!(
            "{GOOD}{}",
            sinks.replace(&format!("{key:?}"), "\"/nonexistent/k\"")
        );
        let err = Config::from_toml(&bad, "bad.toml").unwrap_err().to_string();
        assert!(err.contains("`sinks.sek.intake_key_file`"), "{err}");
    }

    #[test]
    fn stream_limits_allowlists_and_tls_keys_are_checked() {
        let c = Config::from_toml(GOOD, "good.toml").unwrap();
        let limits = c.sources["syslog_tcp"].connection_limits();
        assert_eq!(limits.max_connections, 1024);
        assert_eq!(limits.max_connections_per_address, 64);
        assert_eq!(
            limits.idle_timeout,
            Some(std::time::Duration::from_secs(600))
        );
        assert_eq!(limits.max_frame_backlog_bytes, 16 << 20);

        let text = GOOD.replace(
            "framing = \"octet\"",
            "framing = \"octet\"\nallow = [\"10.0.0.0/8\", \"10.1.2.3/40\"]",
        );
        let err = Config::from_toml(&text, "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("bad.toml:10: `sources.syslog_tcp.allow`: `10.1.2.3/40`"),
            "{err}"
        );
        let text = GOOD.replace(
            "framing = \"octet\"",
            "framing = \"octet\"\nmax_frame_backlog_bytes = 1000",
        );
        let err = Config::from_toml(&text, "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`sources.syslog_tcp.max_frame_backlog_bytes`: must be at least"),
            "{err}"
        );
        let text = GOOD.replace("type = \"udp\"", "type = \"udp\"\nidle_timeout_secs = 5");
        let err = Config::from_toml(&text, "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `idle_timeout_secs`"), "{err}");

        let tls = format!(
            "{GOOD}[sources.secure]\ntype = \"tls\"\nlisten = \"127.0.0.1:6514\"\n\
             cert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n"
        );
        let err = Config::from_toml(&tls, "tls.toml").unwrap_err().to_string();
        let line = GOOD.lines().count() + 4;
        assert!(
            err.starts_with(&format!(
                "tls.toml:{line}: `sources.secure.cert_file`: /nonexistent/cert.pem: cannot read"
            )),
            "{err}"
        );
        let err = Config::from_toml(&tls.replace("key_file", "keyfile"), "tls.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `keyfile`"), "{err}");
    }

    /// A `tls` source is read by hand (see its `Deserialize`): every tcp key still applies,
    /// and the printed config reads back the same.
    #[test]
    fn tls_source_takes_every_tcp_key_and_round_trips() {
        let text = "type = \"tls\"\nlisten = \"127.0.0.1:6514\"\nframing = \"lf\"\n\
                    max_connections = 7\nidle_timeout_secs = 9\nallow = [\"10.0.0.0/8\"]\n\
                    cert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\nclient_ca_file = \"/ca.pem\"\n";
        let check = |source: &SourceConfig| {
            let SourceConfig::Tls(t) = source else {
                panic!("{source:?}")
            };
            assert_eq!(t.tcp.listen, "127.0.0.1:6514".parse().unwrap());
            assert_eq!(t.tcp.framing, Framing::Lf);
            assert_eq!(t.tcp.max_connections, 7);
            assert_eq!(t.tcp.idle_timeout_secs, 9);
            assert_eq!(
                t.tcp.max_frame_backlog_bytes,
                default_max_frame_backlog_bytes()
            );
            assert_eq!(source.allow(), ["10.0.0.0/8"]);
            assert_eq!(t.cert_file, Path::new("/c.pem"));
            assert_eq!(t.key_file, Path::new("/k.pem"));
            assert_eq!(t.client_ca_file.as_deref(), Some(Path::new("/ca.pem")));
        };
        let source: SourceConfig = toml::from_str(text).unwrap();
        check(&source);
        let printed = toml::to_string(&source).unwrap();
        check(&toml::from_str(&printed).unwrap());

        let err = toml::from_str::<SourceConfig>(&text.replace("cert_file", "certfile"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `certfile`"), "{err}");
        let err = toml::from_str::<SourceConfig>(&text.replace("key_file = \"/k.pem\"\n", ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `key_file`"), "{err}");
    }

    #[test]
    fn expected_senders_are_addresses_listed_once() {
        let config = |senders: &str| {
            format!(
                "[sources.in]\ntype = \"tcp\"\nlisten = \"127.0.0.1:0\"\nexpected_senders = {senders}\n\
                 [sinks.out]\ntype = \"file\"\npath = \"/tmp/x\"\n"
            )
        };
        let ok = Config::from_toml(&config(r#"["10.0.0.5", "fd00::5"]"#), "t.toml").unwrap();
        assert_eq!(ok.sources["in"].expected_senders().len(), 2);
        let twice = Config::from_toml(&config(r#"["10.0.0.5", "10.0.0.5"]"#), "t.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            twice,
            "t.toml:4: `sources.in.expected_senders`: 10.0.0.5 is listed twice"
        );
        let junk = Config::from_toml(&config(r#"["10.0.0.0/8"]"#), "t.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            junk,
            "t.toml:4: `sources.in.expected_senders`: `10.0.0.0/8` is not an IP address (list \
             single addresses; `allow` takes CIDRs)"
        );
    }

    #[test]
    fn locate_key_finds_lines() {
        assert_eq!(locate_key(GOOD, "sinks.out.schema"), Some(13));
        assert_eq!(locate_key(GOOD, "sources.syslog_tcp"), Some(6));
        assert_eq!(locate_key(GOOD, "data_dir"), Some(2));
        assert_eq!(locate_key(GOOD, "sinks.out.nonexistent"), Some(10));
    }
}
