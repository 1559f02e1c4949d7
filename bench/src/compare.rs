//! Side-by-side comparison: the same load, alternating receivers (drain, Sluice, rsyslog,
//! syslog-ng), each receiver pinned to its own core and measured from `/proc`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::corpus::{Corpus, CorpusSpec, Message, Mix};
use crate::fieldcheck::{self, FieldCheck, OutputStyle};
use crate::procstat;
use crate::send::{self, Proto, SendConfig, TcpFraming};

const RSYSLOG_CONF: &str = include_str!("../peers/rsyslog.conf.in");
const RSYSLOG_UDP: &str = include_str!("../peers/rsyslog-udp.in");
const RSYSLOG_TCP: &str = include_str!("../peers/rsyslog-tcp.in");
const RSYSLOG_CEF: &str = include_str!("../peers/rsyslog-cef.in");
const CEF_RULEBASE: &str = include_str!("../peers/cef.rulebase");
const SYSLOG_NG_CONF: &str = include_str!("../peers/syslog-ng.conf.in");
const SYSLOG_NG_CEF: &str = include_str!("../peers/syslog-ng-cef.in");
const SLUICE_CONF: &str = include_str!("../peers/sluice.toml.in");

/// A receiver under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Receiver {
    Drain,
    /// Sluice with the `raw` schema: header parse, no CEF mapping (the "minimal" variant).
    SluiceRaw,
    /// Sluice: CEF parse + CommonSecurityLog mapping, uncompressed files.
    SluiceCsl,
    /// The same with zstd compression.
    SluiceCslZstd,
    Rsyslog,
    RsyslogCef,
    SyslogNg,
    SyslogNgCef,
}

impl Receiver {
    pub const ALL: [Receiver; 8] = [
        Receiver::Drain,
        Receiver::SluiceRaw,
        Receiver::SluiceCsl,
        Receiver::SluiceCslZstd,
        Receiver::Rsyslog,
        Receiver::RsyslogCef,
        Receiver::SyslogNg,
        Receiver::SyslogNgCef,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Receiver::Drain => "drain",
            Receiver::SluiceRaw => "sluice-raw",
            Receiver::SluiceCsl => "sluice-csl",
            Receiver::SluiceCslZstd => "sluice-csl-zstd",
            Receiver::Rsyslog => "rsyslog",
            Receiver::RsyslogCef => "rsyslog-cef",
            Receiver::SyslogNg => "syslog-ng",
            Receiver::SyslogNgCef => "syslog-ng-cef",
        }
    }

    pub fn what(self) -> &'static str {
        match self {
            Receiver::Drain => "recvmmsg / 1 MiB reads, counts frames only (physical limit)",
            Receiver::SluiceRaw => "Sluice, schema raw, no compression",
            Receiver::SluiceCsl => "Sluice, CEF parse + CommonSecurityLog JSON, no compression",
            Receiver::SluiceCslZstd => "Sluice, CEF parse + CommonSecurityLog JSON, zstd",
            Receiver::Rsyslog => "rsyslog, header parse, %msg% to file",
            Receiver::RsyslogCef => "rsyslog, mmnormalize cef rulebase, JSON to file",
            Receiver::SyslogNg => "syslog-ng, header parse, $MSG to file",
            Receiver::SyslogNgCef => "syslog-ng, csv-parser + PCRE subst + kv-parser, JSON to file",
        }
    }

    fn is_sluice(self) -> bool {
        matches!(
            self,
            Receiver::SluiceRaw | Receiver::SluiceCsl | Receiver::SluiceCslZstd
        )
    }

    fn field_style(self) -> Option<OutputStyle> {
        match self {
            Receiver::RsyslogCef | Receiver::SyslogNgCef => Some(OutputStyle::CefKeys),
            Receiver::SluiceCsl | Receiver::SluiceCslZstd => Some(OutputStyle::CommonSecurityLog),
            _ => None,
        }
    }
}

impl std::str::FromStr for Receiver {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Receiver::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .with_context(|| {
                format!(
                    "unknown receiver {s:?}; known: {}",
                    Receiver::ALL.map(|r| r.name()).join(", ")
                )
            })
    }
}

/// An offered rate: messages per second, or as fast as the sender goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Offered {
    Rate(u64),
    Max,
}

impl std::str::FromStr for Offered {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        if s == "max" {
            return Ok(Offered::Max);
        }
        let s = s.to_ascii_lowercase();
        let (digits, scale) = match s.strip_suffix('k') {
            Some(d) => (d, 1000),
            None => (s.as_str(), 1),
        };
        let rate: u64 = digits
            .parse()
            .with_context(|| format!("rate {s:?} is not a number, Nk, or max"))?;
        if rate == 0 {
            bail!("rate must be positive");
        }
        Ok(Offered::Rate(rate * scale))
    }
}

impl std::fmt::Display for Offered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Offered::Rate(r) => write!(f, "{r}"),
            Offered::Max => f.write_str("max"),
        }
    }
}

/// A named corpus (e.g. "cef" = Darktrace CEF only).
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub mix: Mix,
}

#[derive(Debug, Clone)]
pub struct CompareConfig {
    pub receivers: Vec<Receiver>,
    pub workloads: Vec<Workload>,
    pub udp_rates: Vec<Offered>,
    pub tcp_rates: Vec<Offered>,
    pub repeats: usize,
    /// Sending time of a paced point.
    pub duration: Duration,
    /// Messages of an as-fast-as-possible point.
    pub max_count: u64,
    /// Messages per as-fast-as-possible TCP point.
    pub tcp_max_count: u64,
    pub tcp_connections: usize,
    pub tcp_framing: TcpFraming,
    pub seed: u64,
    pub corpus_messages: usize,
    pub receiver_cpu: usize,
    pub sender_cpu: usize,
    pub receive_buffer_bytes: usize,
    /// Wait this long without progress before declaring the rest lost.
    pub settle: Duration,
    /// Upper bound from the first message sent until the receiver must have settled.
    pub max_drain_wait: Duration,
    pub peer_root: PathBuf,
    pub sluice_bin: PathBuf,
    pub work_dir: PathBuf,
    pub base_port: u16,
    pub field_sample: usize,
    /// zstd level of the standalone "limit including compression" measurement.
    pub zstd_level: i32,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RunResult {
    pub repeat: usize,
    pub workload: String,
    pub receiver: Receiver,
    pub proto: Proto,
    pub offered: Offered,
    pub sent: u64,
    pub send_rate: f64,
    pub sent_bytes: u64,
    pub delivered: u64,
    /// From the first message sent until the receiver's count stopped moving.
    pub wall_secs: f64,
    pub cpu_secs: f64,
    pub peak_rss_kib: u64,
    pub kernel_rcvbuf_drops: u64,
    pub output_bytes: u64,
    pub fields: Option<FieldCheck>,
    /// CPU the harness spent compressing this run's output with zstd (limit incl. compression).
    pub standalone_zstd_cpu_secs: Option<f64>,
    pub error: Option<String>,
}

impl RunResult {
    pub fn cpu_per_million(&self) -> Option<f64> {
        (self.delivered > 0).then(|| self.cpu_secs / self.delivered as f64 * 1e6)
    }

    pub fn delivered_rate(&self) -> f64 {
        self.delivered as f64 / self.wall_secs.max(1e-9)
    }
}

/// What a receiver writes and how to count it.
enum Output {
    Drain {
        progress: PathBuf,
    },
    File {
        path: PathBuf,
        offset: u64,
        lines: u64,
    },
    Dir {
        path: PathBuf,
        seen: HashMap<PathBuf, u64>,
    },
}

impl Output {
    fn count(&mut self) -> u64 {
        match self {
            Output::Drain { progress } => std::fs::read_to_string(progress)
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0),
            Output::File {
                path,
                offset,
                lines,
            } => {
                if let Ok(mut file) = std::fs::File::open(path)
                    && file.seek(SeekFrom::Start(*offset)).is_ok()
                {
                    let mut buffer = vec![0u8; 1 << 20];
                    while let Ok(n) = file.read(&mut buffer) {
                        if n == 0 {
                            break;
                        }
                        *lines += memchr::memchr_iter(b'\n', &buffer[..n]).count() as u64;
                        *offset += n as u64;
                    }
                }
                *lines
            }
            Output::Dir { path, seen } => {
                for file in output_files(path) {
                    seen.entry(file).or_insert_with_key(|file| {
                        for_each_output_line(file, usize::MAX, |_| {}).unwrap_or(0)
                    });
                }
                seen.values().sum()
            }
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Output::Drain { .. } => 0,
            Output::File { path, .. } => std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            Output::Dir { path, .. } => output_files(path)
                .iter()
                .filter_map(|f| std::fs::metadata(f).ok())
                .map(|m| m.len())
                .sum(),
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        match self {
            Output::Drain { .. } => Vec::new(),
            Output::File { path, .. } => vec![path.clone()],
            Output::Dir { path, .. } => output_files(path),
        }
    }
}

/// Completed Sluice batch files (temp files are renamed into these names when complete).
fn output_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walk(dir)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // The daemon writes `.tmp-<name>` first and links it into place when complete:
            // counting the temp file would count a batch twice, or half of one.
            !name.starts_with('.') && (name.ends_with(".ndjson") || name.ends_with(".ndjson.zst"))
        })
        .collect();
    files.sort();
    files
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Calls `f` for up to `limit` lines of a plain or zstd file; returns the number of lines.
fn for_each_output_line(path: &Path, limit: usize, mut f: impl FnMut(&str)) -> anyhow::Result<u64> {
    let file = std::fs::File::open(path)?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "zst") {
        Box::new(zstd::stream::read::Decoder::new(file)?)
    } else {
        Box::new(file)
    };
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let mut lines = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if (lines as usize) < limit {
            f(&String::from_utf8_lossy(&line));
        }
        lines += 1;
    }
    Ok(lines)
}

struct Running {
    child: Child,
    output: Output,
    work: PathBuf,
}

fn substitute(template: &str, pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .fold(template.to_string(), |text, (key, value)| {
            text.replace(key, value)
        })
}

/// Restricts a child to one CPU before it execs.
fn pin_child(command: &mut Command, cpu: usize) {
    // SAFETY: only async-signal-safe calls (sched_setaffinity) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_ZERO(&mut set);
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn start_receiver(
    config: &CompareConfig,
    receiver: Receiver,
    proto: Proto,
    port: u16,
    work: &Path,
) -> anyhow::Result<Running> {
    std::fs::create_dir_all(work)?;
    let port_text = port.to_string();
    let rcvbuf = config.receive_buffer_bytes.to_string();
    let work_text = work.display().to_string();
    let root = &config.peer_root;
    let lib_dir = root.join("usr/lib/x86_64-linux-gnu");
    let log = std::fs::File::create(work.join("receiver.log"))?;
    let (mut command, output) = match receiver {
        Receiver::Drain => {
            let progress = work.join("progress");
            let mut command = Command::new(std::env::current_exe()?);
            command.args([
                "drain",
                "--proto",
                &proto.to_string(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ]);
            command
                .args(["--receive-buffer-bytes", &rcvbuf, "--progress-file"])
                .arg(&progress);
            (command, Output::Drain { progress })
        }
        Receiver::Rsyslog | Receiver::RsyslogCef => {
            let cef = receiver == Receiver::RsyslogCef;
            std::fs::write(work.join("cef.rulebase"), CEF_RULEBASE)?;
            let out = work.join("out.log");
            let input = if proto == Proto::Udp {
                RSYSLOG_UDP
            } else {
                RSYSLOG_TCP
            };
            let conf = substitute(
                RSYSLOG_CONF,
                &[
                    ("@INPUT@", input),
                    ("@PARSE@", if cef { RSYSLOG_CEF } else { "" }),
                    ("@TEMPLATE@", if cef { "cefjson" } else { "raw" }),
                    ("@PORT@", &port_text),
                    ("@RCVBUF@", &rcvbuf),
                    ("@WORK@", &work_text),
                    ("@OUT@", &out.display().to_string()),
                ],
            );
            std::fs::write(work.join("rsyslog.conf"), conf)?;
            let mut command = Command::new(root.join("usr/sbin/rsyslogd"));
            command
                .arg("-n")
                .arg("-f")
                .arg(work.join("rsyslog.conf"))
                .arg("-i")
                .arg(work.join("rsyslog.pid"));
            command.arg("-M").arg(lib_dir.join("rsyslog"));
            command.env("LD_LIBRARY_PATH", &lib_dir);
            (
                command,
                Output::File {
                    path: out,
                    offset: 0,
                    lines: 0,
                },
            )
        }
        Receiver::SyslogNg | Receiver::SyslogNgCef => {
            let cef = receiver == Receiver::SyslogNgCef;
            let out = work.join("out.log");
            let conf = substitute(
                SYSLOG_NG_CONF,
                &[
                    ("@PARSE@", if cef { SYSLOG_NG_CEF } else { "" }),
                    (
                        "@PARSE_REF@",
                        if cef {
                            "parser(p_cef_header); rewrite(r_cef_split); parser(p_cef_ext);"
                        } else {
                            ""
                        },
                    ),
                    (
                        "@TEMPLATE@",
                        if cef {
                            "$(format-json --key .cef.* --key .cefext.* --exclude .cef.ext)"
                        } else {
                            "${MSG}"
                        },
                    ),
                    ("@TRANSPORT@", &proto.to_string()),
                    ("@PORT@", &port_text),
                    ("@RCVBUF@", &rcvbuf),
                    ("@OUT@", &out.display().to_string()),
                ],
            );
            std::fs::write(work.join("syslog-ng.conf"), conf)?;
            let mut command = Command::new(root.join("usr/sbin/syslog-ng"));
            command.arg("-F").arg("-f").arg(work.join("syslog-ng.conf"));
            command.arg(format!(
                "--module-path={}",
                root.join("usr/lib/syslog-ng/3.38").display()
            ));
            command
                .arg("-p")
                .arg(work.join("syslog-ng.pid"))
                .arg("-R")
                .arg(work.join("syslog-ng.persist"));
            command.arg("-c").arg(work.join("syslog-ng.ctl"));
            command.env(
                "LD_LIBRARY_PATH",
                format!(
                    "{}:{}",
                    lib_dir.display(),
                    root.join("usr/lib/syslog-ng").display()
                ),
            );
            (
                command,
                Output::File {
                    path: out,
                    offset: 0,
                    lines: 0,
                },
            )
        }
        Receiver::SluiceRaw | Receiver::SluiceCsl | Receiver::SluiceCslZstd => {
            let out = work.join("out");
            let zstd_level_line = if receiver == Receiver::SluiceCslZstd {
                format!("compression_level = {}\n", config.zstd_level)
            } else {
                String::new()
            };
            let conf = substitute(
                SLUICE_CONF,
                &[
                    ("@DATA@", &work.join("data").display().to_string()),
                    ("@METRICS_PORT@", &(port + 1).to_string()),
                    ("@TYPE@", &proto.to_string()),
                    (
                        "@FRAMING@",
                        if proto == Proto::Tcp {
                            "framing = \"auto\"\n"
                        } else {
                            ""
                        },
                    ),
                    ("@PORT@", &port_text),
                    // A UDP datagram carries at most 65535 bytes (the daemon rejects more);
                    // TCP gets the peers' 64 KiB.
                    (
                        "@MAX_MESSAGE@",
                        if proto == Proto::Udp {
                            "65535"
                        } else {
                            "65536"
                        },
                    ),
                    ("@RCVBUF@", &rcvbuf),
                    ("@OUT@", &out.display().to_string()),
                    // Same zstd level as the harness's "limit including compression".
                    ("@LEVEL@", &zstd_level_line),
                    (
                        "@SCHEMA@",
                        if receiver == Receiver::SluiceRaw {
                            "raw"
                        } else {
                            "commonsecuritylog"
                        },
                    ),
                    (
                        "@COMPRESSION@",
                        if receiver == Receiver::SluiceCslZstd {
                            "zstd"
                        } else {
                            "none"
                        },
                    ),
                ],
            );
            std::fs::write(work.join("sluice.toml"), conf)?;
            let mut command = Command::new(&config.sluice_bin);
            command
                .arg("run")
                .arg("--config")
                .arg(work.join("sluice.toml"));
            (
                command,
                Output::Dir {
                    path: out,
                    seen: HashMap::new(),
                },
            )
        }
    };
    command
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    pin_child(&mut command, config.receiver_cpu);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", receiver.name()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(work.join("receiver.log")).unwrap_or_default();
            bail!(
                "{} exited during start-up ({status}): {}",
                receiver.name(),
                startup_failure_reason(&log)
            );
        }
        if procstat::port_bound(port, proto == Proto::Udp) {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not bind port {port} within 10 s", receiver.name());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the receiver finish its start-up work (thread spawns) before the CPU baseline.
    std::thread::sleep(Duration::from_millis(300));
    Ok(Running {
        child,
        output,
        work: work.to_path_buf(),
    })
}

/// SIGTERM, then wait for exit without reaping so that `/proc/<pid>/stat` still holds the
/// final CPU times (shutdown work such as the last flush is counted).
fn stop_and_measure(running: &mut Running) -> anyhow::Result<(Duration, u64)> {
    let pid = running.child.id();
    let peak = procstat::peak_rss_kib(pid).unwrap_or(0);
    // SAFETY: pid is our own child, not yet reaped, so it cannot have been reused.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // SAFETY: siginfo_t is plain data filled by waitid; WNOWAIT leaves the child unreaped.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid is valid to read for the WEXITED case that waitid fills.
        if rc == 0 && unsafe { info.si_pid() } == pid as i32 {
            break;
        }
        if Instant::now() > deadline {
            let _ = running.child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let cpu = procstat::cpu_time(pid).unwrap_or_default();
    running.child.wait()?;
    Ok((cpu, peak))
}

fn compress_standalone(files: &[PathBuf], level: i32) -> anyhow::Result<f64> {
    // Only the compression is timed, done the way the daemon does it (one reused bulk context,
    // one frame per batch file): reading the files back is not part of the limit.
    let mut compressor = zstd::bulk::Compressor::new(level)?;
    let mut out = Vec::new();
    let mut cpu = Duration::ZERO;
    for file in files {
        let input = std::fs::read(file)?;
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(input.len()));
        let before = procstat::thread_cpu_time();
        compressor.compress_to_buffer(&input, &mut out)?;
        cpu += procstat::thread_cpu_time() - before;
    }
    Ok(cpu.as_secs_f64())
}

struct Point<'a> {
    repeat: usize,
    workload: &'a Workload,
    corpus: &'a Corpus,
    expected: &'a HashMap<String, &'a Message>,
    receiver: Receiver,
    proto: Proto,
    offered: Offered,
    port: u16,
}

fn run_point(config: &CompareConfig, point: &Point<'_>) -> RunResult {
    let mut result = RunResult {
        repeat: point.repeat,
        workload: point.workload.name.clone(),
        receiver: point.receiver,
        proto: point.proto,
        offered: point.offered,
        sent: 0,
        send_rate: 0.0,
        sent_bytes: 0,
        delivered: 0,
        wall_secs: 0.0,
        cpu_secs: 0.0,
        peak_rss_kib: 0,
        kernel_rcvbuf_drops: 0,
        output_bytes: 0,
        fields: None,
        standalone_zstd_cpu_secs: None,
        error: None,
    };
    let work = config.work_dir.join(format!(
        "{}-{}-{}-{}",
        point.receiver.name(),
        point.proto,
        point.offered,
        point.port
    ));
    let _ = std::fs::remove_dir_all(&work);
    if let Err(err) = measure(config, point, &work, &mut result) {
        result.error = Some(format!("{err:#}"));
    }
    // SLUICE_BENCH_KEEP=1 keeps configs, logs and outputs for inspection.
    if std::env::var_os("SLUICE_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

fn measure(
    config: &CompareConfig,
    point: &Point<'_>,
    work: &Path,
    result: &mut RunResult,
) -> anyhow::Result<()> {
    let mut running = start_receiver(config, point.receiver, point.proto, point.port, work)?;
    let outcome = (|| -> anyhow::Result<()> {
        let pid = running.child.id();
        let cpu_before = procstat::cpu_time(pid)?;
        let drops_before = procstat::udp_rcvbuf_errors().unwrap_or(0);
        let (rate, count, duration) = match point.offered {
            Offered::Rate(rate) => (
                Some(rate),
                rate.saturating_mul(config.duration.as_millis() as u64) / 1000,
                None,
            ),
            Offered::Max => {
                let count = match point.proto {
                    Proto::Udp => config.max_count,
                    Proto::Tcp => config.tcp_max_count,
                };
                (None, count, Some(Duration::from_secs(60)))
            }
        };
        let send_config = SendConfig {
            target: SocketAddr::from(([127, 0, 0, 1], point.port)),
            proto: point.proto,
            framing: config.tcp_framing,
            connections: config.tcp_connections,
            rate,
            count: Some(count),
            duration,
            batch: 64,
            cpu: Some(config.sender_cpu),
        };
        let started = Instant::now();
        let report = send::run(point.corpus, &send_config)?;
        result.sent = report.sent;
        result.sent_bytes = report.bytes;
        result.send_rate = report.rate();
        let mut last = running.output.count();
        let mut last_change = Instant::now();
        let mut last_cpu = procstat::cpu_time(pid).unwrap_or_default();
        let mut last_busy = Instant::now();
        // A receiver that still burns CPU is still working through what it buffered (syslog-ng
        // drops its in-memory queue on shutdown), so "settled" needs both the count and the
        // CPU to stand still; `max_drain_wait` bounds a receiver that never settles.
        while last < report.sent
            && (last_change.elapsed() < config.settle || last_busy.elapsed() < config.settle)
            && started.elapsed() < config.max_drain_wait
        {
            std::thread::sleep(Duration::from_millis(100));
            let now = running.output.count();
            if now != last {
                last = now;
                last_change = Instant::now();
            }
            let cpu = procstat::cpu_time(pid).unwrap_or_default();
            if is_busy(cpu.saturating_sub(last_cpu)) {
                last_busy = Instant::now();
            }
            last_cpu = cpu;
        }
        result.wall_secs = (last_change.min(Instant::now()) - started)
            .as_secs_f64()
            .max(report.elapsed_secs);
        let (cpu_after, peak) = stop_and_measure(&mut running)?;
        result.cpu_secs = (cpu_after.saturating_sub(cpu_before)).as_secs_f64();
        result.peak_rss_kib = peak;
        result.kernel_rcvbuf_drops = procstat::udp_rcvbuf_errors()
            .unwrap_or(0)
            .saturating_sub(drops_before);
        // Files are complete only after shutdown (flushes), so count again.
        result.delivered = running.output.count();
        result.output_bytes = running.output.bytes();
        if let Some(style) = point.receiver.field_style() {
            let mut lines = Vec::new();
            for file in running.output.files() {
                if lines.len() >= config.field_sample {
                    break;
                }
                let _ = for_each_output_line(&file, config.field_sample - lines.len(), |line| {
                    lines.push(line.to_string())
                });
            }
            result.fields = Some(fieldcheck::check(
                lines.iter().map(String::as_str),
                point.expected,
                style,
                config.field_sample,
            ));
        }
        if point.receiver == Receiver::SluiceCsl {
            result.standalone_zstd_cpu_secs = Some(compress_standalone(
                &running.output.files(),
                config.zstd_level,
            )?);
        }
        Ok(())
    })();
    if running.child.try_wait().ok().flatten().is_none() {
        let _ = running.child.kill();
        let _ = running.child.wait();
    }
    let _ = &running.work;
    outcome
}

/// Whether a receiver that used `cpu` in one 100 ms poll interval is still working: at least a
/// tenth of a core. Idle receivers still wake up (timers, metrics, flush checks) and use a few
/// hundred microseconds per interval, which the exact CPU clock sees.
fn is_busy(cpu: Duration) -> bool {
    cpu >= Duration::from_millis(10)
}

/// The line of a receiver's log that says why it exited: the error itself, not the last line
/// of a backtrace printed after it (`RUST_BACKTRACE=1`).
fn startup_failure_reason(log: &str) -> &str {
    let mut lines = log.lines().map(str::trim).filter(|l| !l.is_empty());
    lines
        .clone()
        .find(|l| l.starts_with("Error:"))
        .or_else(|| lines.next_back())
        .unwrap_or("")
}

/// `net.ipv4.ip_local_port_range`: where connect() picks client ports.
fn ephemeral_ports() -> std::ops::RangeInclusive<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some(bounds.next()??..=bounds.next()??)
        })
        .unwrap_or(32_768..=60_999)
}

/// Runs every point, alternating receivers within each (workload, proto, rate) so that noise
/// from other load on the machine spreads over all of them.
pub fn run(
    config: &CompareConfig,
    mut on_result: impl FnMut(&RunResult),
) -> anyhow::Result<Vec<RunResult>> {
    let mut receivers = config.receivers.clone();
    if receivers.iter().any(|r| r.is_sluice()) && !config.sluice_bin.exists() {
        eprintln!(
            "note: {} not found; Sluice receivers skipped",
            config.sluice_bin.display()
        );
        receivers.retain(|r| !r.is_sluice());
    }
    let needs_peers = receivers
        .iter()
        .any(|r| !r.is_sluice() && *r != Receiver::Drain);
    if needs_peers && !config.peer_root.join("usr/sbin/rsyslogd").exists() {
        eprintln!(
            "note: peers not installed under {} (run bench/scripts/install-peers.sh); peers skipped",
            config.peer_root.display()
        );
        receivers.retain(|r| r.is_sluice() || *r == Receiver::Drain);
    }
    if receivers.is_empty() {
        bail!("no receiver left to run");
    }
    std::fs::create_dir_all(&config.work_dir)?;
    let corpora: Vec<(Corpus, &Workload)> = config
        .workloads
        .iter()
        .map(|w| {
            let spec = CorpusSpec {
                seed: config.seed,
                messages: config.corpus_messages,
                mix: w.mix,
                rfc5424_percent: 50,
            };
            (Corpus::generate(&spec), w)
        })
        .collect();
    let expected: Vec<HashMap<String, &Message>> = corpora
        .iter()
        .map(|(c, _)| c.cef_by_external_id())
        .collect();
    let mut results = Vec::new();
    // Receiver ports (two per point: listener and metrics) stay below the kernel's ephemeral
    // range when they start there: a client socket that connect() gave the same port number
    // (the sender's connections linger in TIME_WAIT for a minute) makes the next receiver's
    // bind fail, and that repetition is lost.
    let ephemeral = ephemeral_ports();
    let port_end = if config.base_port < *ephemeral.start() {
        *ephemeral.start()
    } else {
        eprintln!(
            "warning: --base-port {} is inside the kernel's ephemeral port range {}–{}: a \
             receiver may fail to bind a port a client connection holds; use a base port \
             below {}",
            config.base_port,
            ephemeral.start(),
            ephemeral.end(),
            ephemeral.start()
        );
        60_000
    };
    let mut port = config.base_port;
    for repeat in 0..config.repeats {
        for (index, (corpus, workload)) in corpora.iter().enumerate() {
            let points = config
                .udp_rates
                .iter()
                .map(|r| (Proto::Udp, *r))
                .chain(config.tcp_rates.iter().map(|r| (Proto::Tcp, *r)));
            for (proto, offered) in points {
                for &receiver in &receivers {
                    port = if port + 4 > port_end {
                        config.base_port
                    } else {
                        port + 2
                    };
                    let point = Point {
                        repeat,
                        workload,
                        corpus,
                        expected: &expected[index],
                        receiver,
                        proto,
                        offered,
                        port,
                    };
                    let result = run_point(config, &point);
                    on_result(&result);
                    results.push(result);
                }
            }
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_failure_names_the_error_not_the_backtrace() {
        let log = "2026-12-05T21:55:00Z INFO starting\nError: binding tcp 127.0.0.1:45002: \
                   Address in use\n\nStack backtrace:\n   0: anyhow::error\n  20: _start\n";
        assert_eq!(
            startup_failure_reason(log),
            "Error: binding tcp 127.0.0.1:45002: Address in use"
        );
        assert_eq!(startup_failure_reason("no such file\n"), "no such file");
        assert_eq!(startup_failure_reason(""), "");
    }

    #[test]
    fn idle_wake_ups_do_not_count_as_busy() {
        assert!(!is_busy(Duration::from_micros(800)));
        assert!(is_busy(Duration::from_millis(10)));
        assert!(is_busy(Duration::from_millis(100)));
    }

    #[test]
    fn ephemeral_range_is_read_from_the_kernel() {
        let range = ephemeral_ports();
        assert!(range.start() <= range.end());
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        assert!(text.split_whitespace().next() == Some(&range.start().to_string()[..]));
    }
}
