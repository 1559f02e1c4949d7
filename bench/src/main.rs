//! sluice-bench: load generator, drain-only receiver and peer comparison.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sluice_bench::compare::{self, CompareConfig, Offered, Receiver, Workload};
use sluice_bench::corpus::{Corpus, CorpusSpec, Mix};
use sluice_bench::drain::{self, CountFraming, DrainConfig};
use sluice_bench::report::{self, ReportContext};
use sluice_bench::send::{self, Proto, SendConfig, TcpFraming};

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    about = "Load generator, drain-only receiver and receiver comparison"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct CorpusArgs {
    /// Seed of the deterministic corpus.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Body mix, e.g. `cef=80,json=20`, `cef`, `json`.
    #[arg(long, default_value = "cef=80,json=20")]
    mix: Mix,
    /// Distinct messages generated (the sender cycles through them).
    #[arg(long, default_value_t = 4096)]
    corpus_messages: usize,
    /// Share of RFC 5424 headers in percent (the rest are RFC 3164).
    #[arg(long, default_value_t = 50)]
    rfc5424_percent: u32,
}

#[derive(Subcommand)]
enum Command {
    /// Send the corpus to a receiver.
    Send {
        #[arg(long)]
        target: std::net::SocketAddr,
        #[arg(long, value_enum, default_value_t = Proto::Udp)]
        proto: Proto,
        #[arg(long, value_enum, default_value_t = TcpFraming::Lf)]
        framing: TcpFraming,
        /// TCP connections (the rate and count are split evenly).
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Messages per second (`50000`, `50k`) or `max`.
        #[arg(long, default_value = "max")]
        rate: Offered,
        #[arg(long)]
        count: Option<u64>,
        /// Seconds to send for.
        #[arg(long)]
        duration: Option<f64>,
        /// Largest sendmmsg batch / messages per TCP write.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Pin the sender to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
        #[command(flatten)]
        corpus: CorpusArgs,
    },
    /// Receive and only count messages (the physical limit).
    Drain {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long, value_enum, default_value_t = Proto::Udp)]
        proto: Proto,
        #[arg(long, value_enum, default_value_t = CountFraming::Auto)]
        framing: CountFraming,
        #[arg(long, default_value_t = 64 << 20)]
        receive_buffer_bytes: usize,
        #[arg(long)]
        progress_file: Option<PathBuf>,
        /// Exit once this many messages arrived.
        #[arg(long)]
        expect: Option<u64>,
        /// Exit after this many seconds without traffic (once something arrived).
        #[arg(long)]
        idle_exit: Option<f64>,
    },
    /// Drive the same load into drain, Sluice, rsyslog and syslog-ng; write table and plots.
    Compare(CompareArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Preset {
    /// Issue 6: drain, Sluice (CEF → CSL), rsyslog and syslog-ng (minimal and CEF-parsing),
    /// Darktrace CEF, UDP at several rates and TCP at the sender's max.
    Peers,
    /// Issue 3: drain vs Sluice (none, zstd) for CEF (~700 B) and JSON (~6 KB), UDP and TCP at max.
    Pipeline,
}

#[derive(clap::Args)]
struct CompareArgs {
    #[arg(long, value_enum, default_value_t = Preset::Peers)]
    preset: Preset,
    /// Receivers: drain, sluice-raw, sluice-csl, sluice-csl-zstd, rsyslog, rsyslog-cef,
    /// syslog-ng, syslog-ng-cef. Default for peers: all but sluice-raw and sluice-csl-zstd;
    /// for pipeline: drain, sluice-csl, sluice-csl-zstd.
    #[arg(long, value_delimiter = ',')]
    receivers: Vec<Receiver>,
    /// Workload mixes, each its own corpus (default per preset), e.g. `cef`, `json`, `cef=80,json=20`.
    #[arg(long)]
    workload: Vec<Mix>,
    /// Offered UDP rates (msgs/s, `Nk`, or `max`).
    #[arg(long, value_delimiter = ',')]
    udp_rates: Vec<Offered>,
    #[arg(long, value_delimiter = ',')]
    tcp_rates: Vec<Offered>,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Seconds of sending per paced point.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// Messages per as-fast-as-possible UDP point: more than the 64 MiB receive buffer holds
    /// (~75k at 850 B), so that a slow receiver's loss shows.
    #[arg(long, default_value_t = 200_000)]
    max_count: u64,
    /// Messages per as-fast-as-possible TCP point. TCP loses nothing, so only the CPU figure
    /// needs them: 100k is ≥ 0.8 s of work for the fastest receiver (CPU times have 10 ms
    /// ticks) and 9 s for the slowest peer.
    #[arg(long, default_value_t = 100_000)]
    tcp_max_count: u64,
    #[arg(long, default_value_t = 4)]
    tcp_connections: usize,
    #[arg(long, value_enum, default_value_t = TcpFraming::Lf)]
    tcp_framing: TcpFraming,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 4096)]
    corpus_messages: usize,
    /// Seconds without progress after sending before the rest counts as lost.
    #[arg(long, default_value_t = 1.5)]
    settle: f64,
    /// Seconds from the start of sending after which a still-busy receiver is stopped anyway.
    #[arg(long, default_value_t = 120.0)]
    max_drain_wait: f64,
    #[arg(long, default_value_t = 1)]
    receiver_cpu: usize,
    #[arg(long, default_value_t = 0)]
    sender_cpu: usize,
    #[arg(long, default_value_t = 64 << 20)]
    receive_buffer_bytes: usize,
    #[arg(long, default_value = "/var/tmp/sluice-peers/root")]
    peer_root: PathBuf,
    #[arg(long, default_value = "target/release/sluice")]
    sluice_bin: PathBuf,
    #[arg(long, default_value = "/var/tmp/sluice-bench-work")]
    work_dir: PathBuf,
    /// Results go to `<out-dir>/<date>/` plus `<out-dir>/latest.md` and `latest-*.png`.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// First receiver port; keep it below `net.ipv4.ip_local_port_range` (32768 by default),
    /// where client connections take their ports.
    #[arg(long, default_value_t = 20_000)]
    base_port: u16,
    /// Parsed output rows checked for field errors per run.
    #[arg(long, default_value_t = 300)]
    field_sample: usize,
    /// zstd level of sluice-csl-zstd and of the standalone compression in the "limit including
    /// compression"; default: the daemon's own default, since that is what operators run.
    #[arg(long, default_value_t = sluice::compress::Compression::Zstd.default_level())]
    zstd_level: i32,
    /// A short validation run: 1 repeat, fewer rates, smaller counts.
    #[arg(long)]
    quick: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Send {
            target,
            proto,
            framing,
            connections,
            rate,
            count,
            duration,
            batch,
            cpu,
            corpus,
        } => {
            if count.is_none() && duration.is_none() {
                bail!("give --count or --duration");
            }
            let corpus = build_corpus(&corpus);
            let config = SendConfig {
                target,
                proto,
                framing,
                connections,
                rate: match rate {
                    Offered::Rate(r) => Some(r),
                    Offered::Max => None,
                },
                count,
                duration: duration.map(Duration::from_secs_f64),
                batch,
                cpu,
            };
            let report = send::run(&corpus, &config)?;
            println!(
                "sent {} messages, {} bytes in {:.3} s: {:.0} msgs/s, {:.1} MB/s{}",
                report.sent,
                report.bytes,
                report.elapsed_secs,
                report.rate(),
                report.bytes as f64 / report.elapsed_secs.max(1e-9) / 1e6,
                if report.errors > 0 {
                    format!(", {} refused", report.errors)
                } else {
                    String::new()
                }
            );
        }
        Command::Drain {
            listen,
            proto,
            framing,
            receive_buffer_bytes,
            progress_file,
            expect,
            idle_exit,
        } => {
            drain::install_stop_handler();
            let config = DrainConfig {
                listen,
                proto,
                framing,
                receive_buffer_bytes,
                progress_file,
                expect,
                idle_exit: idle_exit.map(Duration::from_secs_f64),
            };
            let report = drain::run(&config, &AtomicBool::new(false), &AtomicBool::new(false))?;
            println!(
                "received {} messages, {} bytes",
                report.messages, report.bytes
            );
        }
        Command::Compare(args) => run_compare(args)?,
    }
    Ok(())
}

fn build_corpus(args: &CorpusArgs) -> Corpus {
    Corpus::generate(&CorpusSpec {
        seed: args.seed,
        messages: args.corpus_messages,
        mix: args.mix,
        rfc5424_percent: args.rfc5424_percent,
    })
}

fn workload_name(mix: &Mix) -> String {
    match (mix.cef, mix.json) {
        (_, 0) => "cef".into(),
        (0, _) => "json".into(),
        (c, j) => format!("cef{c}-json{j}"),
    }
}

fn run_compare(args: CompareArgs) -> anyhow::Result<()> {
    let pipeline = args.preset == Preset::Pipeline;
    let receivers = if !args.receivers.is_empty() {
        args.receivers.clone()
    } else if pipeline {
        vec![
            Receiver::Drain,
            Receiver::SluiceCsl,
            Receiver::SluiceCslZstd,
        ]
    } else {
        // The four receivers, the peers with and without CEF parsing. sluice-raw and
        // sluice-csl-zstd are opt-in (`--receivers`; zstd is in the pipeline preset): each
        // adds ≈ 1.5 min, and the one-command run must fit 15 minutes on a fresh machine.
        vec![
            Receiver::Drain,
            Receiver::SluiceCsl,
            Receiver::Rsyslog,
            Receiver::RsyslogCef,
            Receiver::SyslogNg,
            Receiver::SyslogNgCef,
        ]
    };
    let mixes = if !args.workload.is_empty() {
        args.workload.clone()
    } else if pipeline {
        vec!["cef".parse()?, "json".parse()?]
    } else {
        vec!["cef".parse()?]
    };
    let default_udp: Vec<Offered> = if pipeline || args.quick {
        if args.quick && !pipeline {
            vec![Offered::Rate(50_000), Offered::Max]
        } else {
            vec![Offered::Max]
        }
    } else {
        vec![
            Offered::Rate(25_000),
            Offered::Rate(50_000),
            Offered::Rate(100_000),
            Offered::Max,
        ]
    };
    let udp_rates = if args.udp_rates.is_empty() {
        default_udp
    } else {
        args.udp_rates.clone()
    };
    let tcp_rates = if args.tcp_rates.is_empty() {
        vec![Offered::Max]
    } else {
        args.tcp_rates.clone()
    };
    let (repeats, max_count, tcp_max_count, duration) = if args.quick {
        (
            1,
            args.max_count.min(100_000),
            args.tcp_max_count.min(100_000),
            args.duration.min(1.0),
        )
    } else {
        (
            args.repeats,
            args.max_count,
            args.tcp_max_count,
            args.duration,
        )
    };
    let workloads: Vec<Workload> = mixes
        .iter()
        .map(|m| Workload {
            name: workload_name(m),
            mix: *m,
        })
        .collect();
    let config = CompareConfig {
        receivers: receivers.clone(),
        workloads: workloads.clone(),
        udp_rates,
        tcp_rates,
        repeats: repeats.max(1),
        duration: Duration::from_secs_f64(duration),
        max_count,
        tcp_max_count,
        tcp_connections: args.tcp_connections,
        tcp_framing: args.tcp_framing,
        seed: args.seed,
        corpus_messages: args.corpus_messages,
        receiver_cpu: args.receiver_cpu,
        sender_cpu: args.sender_cpu,
        receive_buffer_bytes: args.receive_buffer_bytes,
        settle: Duration::from_secs_f64(args.settle),
        max_drain_wait: Duration::from_secs_f64(args.max_drain_wait),
        peer_root: args.peer_root.clone(),
        // Receivers start in their own work directory, where a relative path would not resolve.
        sluice_bin: std::path::absolute(&args.sluice_bin)?,
        work_dir: args.work_dir.clone(),
        base_port: args.base_port,
        field_sample: args.field_sample,
        zstd_level: args.zstd_level,
    };
    check_rmem(args.receive_buffer_bytes);
    let started = std::time::Instant::now();
    let results = compare::run(&config, |r| {
        let cpu_m = r
            .cpu_per_million()
            .map(|c| format!("{c:.2}"))
            .unwrap_or_else(|| "-".into());
        match &r.error {
            None => eprintln!(
                "[{:>5.0}s] rep {} {:<5} {:<4} {:>7} {:<16} sent {:>8} ({:>7.0}/s) delivered {:>8} ({:>5.1}%) cpu {:>6.2}s = {} s/M rss {} MiB",
                started.elapsed().as_secs_f64(),
                r.repeat,
                r.workload,
                r.proto,
                r.offered,
                r.receiver.name(),
                r.sent,
                r.send_rate,
                r.delivered,
                100.0 * r.delivered as f64 / r.sent.max(1) as f64,
                r.cpu_secs,
                cpu_m,
                r.peak_rss_kib / 1024
            ),
            Some(err) => eprintln!(
                "rep {} {} {} {} {}: FAILED: {err}",
                r.repeat,
                r.workload,
                r.proto,
                r.offered,
                r.receiver.name()
            ),
        }
    })?;

    let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let stamp = chrono::Utc::now().format("%Y-%m-%dT%H%MZ").to_string();
    let preset = if pipeline { "pipeline" } else { "peers" };
    let dir = args.out_dir.join(format!("{stamp}-{preset}"));
    let mut versions = Vec::new();
    let peer_dir = args
        .peer_root
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    for (name, file) in [
        ("rsyslog", "rsyslog.version"),
        ("syslog-ng", "syslog-ng.version"),
    ] {
        if let Ok(v) = std::fs::read_to_string(peer_dir.join(file)) {
            versions.push((name.to_string(), v.trim().to_string()));
        }
    }
    if let Ok(out) = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        && out.status.success()
    {
        versions.push((
            "sluice".into(),
            format!("git {}", String::from_utf8_lossy(&out.stdout).trim()),
        ));
    }
    let corpus_notes = workloads
        .iter()
        .map(|w| {
            let corpus = Corpus::generate(&CorpusSpec {
                seed: args.seed,
                messages: args.corpus_messages,
                mix: w.mix,
                rfc5424_percent: 50,
            });
            (
                w.name.clone(),
                format!(
                    "mix {}, {} distinct messages, mean {:.0} B, RFC 5424/3164 half each, seed {}",
                    w.mix,
                    corpus.messages.len(),
                    corpus.mean_size(),
                    args.seed
                ),
            )
        })
        .collect();
    let mut ctx = ReportContext {
        date,
        machine: machine_description(),
        repeats: config.repeats,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        versions,
        workloads: corpus_notes,
        receivers: receivers.clone(),
        plots: Vec::new(),
    };
    let (md, plots) = report::write_all(&results, &dir, &mut ctx)?;
    // latest.md links to copies of the plots next to it.
    let mut latest = md.clone();
    for plot in &plots {
        let name = plot
            .file_name()
            .context("plot name")?
            .to_string_lossy()
            .to_string();
        let latest_name = format!("latest-{preset}-{name}");
        std::fs::copy(plot, args.out_dir.join(&latest_name))?;
        latest = latest.replace(&format!("]({name})"), &format!("]({latest_name})"));
    }
    std::fs::write(args.out_dir.join(format!("latest-{preset}.md")), &latest)?;
    if !pipeline {
        std::fs::write(args.out_dir.join("latest.md"), &latest)?;
    }
    println!("{md}");
    println!("results: {}", dir.display());
    Ok(())
}

fn check_rmem(wanted: usize) {
    if let Ok(text) = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        && let Ok(max) = text.trim().parse::<usize>()
        && max < wanted
    {
        eprintln!(
            "warning: net.core.rmem_max is {max}, below the requested receive buffer {wanted}; \
             bench/scripts/compare.sh raises it for the run"
        );
    }
}

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // Not available_parallelism(): by now the harness thread is pinned to the sender's CPU.
    // SAFETY: sysconf has no preconditions.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}
