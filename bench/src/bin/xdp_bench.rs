//! XDP benchmarks over a veth pair between two namespaces this program creates (root only).
//!
//! Every scenario runs its baseline and its XDP variants in the same invocation, `--reps` times
//! with the order rotated each repetition (so drift in the machine's background load hits every
//! variant alike), and reports medians and ratios, as the project's speed claims require:
//! 1. `overhead`: UDP to port 514 without XDP, with the program attached but the port not
//!    configured (the cost of the XDP hook itself on this interface), and with counting on —
//!    CPU per delivered message.
//! 2. `flood`: datagrams from a non-allowlisted source, dropped in XDP vs delivered to a user-space
//!    reader that applies the same allowlist — CPU-seconds per million flood packets.
//! 3. `steering`: one loud sender into one reuseport socket per core (a reader thread pinned to
//!    each core), kernel flow hash vs SK_REUSEPORT steering — messages/s and CPU per core.
//!
//! CPU is counted for the whole receive path, not only the reader: this process's own CPU
//! (sender, readers, and the softirq the kernel runs inline when the sender's veth transmit
//! raises it; tick accounting charges it to the interrupted task) plus the `ksoftirqd/N` and
//! `cpumap/N/…` kernel threads (softirq deferred under load, CPUMAP redirect targets), read from
//! their `schedstat` run time. Other processes on the machine are not counted.
//!
//! `cargo run --release -p sluice-bench --bin xdp_bench -- [--seconds 2] [--reps 5] [--scenario all]`

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use sluice::xdp::{self, Steering, XdpConfig, XdpHandle, XdpMode};
use socket2::{Domain, Protocol, Socket, Type};

const SENDER: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const FLOODER: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 66);
const RECEIVER: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
const PORT: u16 = 514;
/// A port nothing listens on: configuring only it keeps the program attached but idle for 514.
const IDLE_PORT: u16 = 9;

#[derive(Parser)]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Repetitions of every variant (order rotated each time); medians are reported.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// overhead | flood | steering | all | top-sample
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Payload bytes per datagram (a typical Darktrace CEF alert is ~600–1500).
    #[arg(long, default_value_t = 700)]
    payload: usize,
    /// The sluice binary, for `--scenario top-sample`.
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// XDP attach mode: auto | driver | generic.
    #[arg(long, default_value = "auto")]
    mode: String,
    /// Turn off transmit checksum offload on the sender's veth end, so datagrams carry full
    /// checksums like frames from a physical NIC. Native-mode CPUMAP redirect needs this on
    /// veth (docs/xdp.md); needs `ethtool`.
    #[arg(long)]
    sender_full_checksums: bool,
}

struct Netns {
    sender: String,
    receiver: String,
    receiver_if: String,
    mode: XdpMode,
}

impl Netns {
    fn new(mode: XdpMode, full_checksums: bool) -> anyhow::Result<Netns> {
        let id = std::process::id() % 100_000;
        let ns = Netns {
            sender: format!("slba{id}"),
            receiver: format!("slbb{id}"),
            receiver_if: format!("vbb{id}"),
            mode,
        };
        let sender_if = format!("vba{id}");
        ip(&["netns", "add", &ns.sender])?;
        ip(&["netns", "add", &ns.receiver])?;
        ip(&[
            "link",
            "add",
            &sender_if,
            "netns",
            &ns.sender,
            "type",
            "veth",
            "peer",
            "name",
            &ns.receiver_if,
            "netns",
            &ns.receiver,
        ])?;
        for addr in ["10.201.0.1/24", "10.201.0.66/24"] {
            ip(&["-n", &ns.sender, "addr", "add", addr, "dev", &sender_if])?;
        }
        ip(&[
            "-n",
            &ns.receiver,
            "addr",
            "add",
            "10.201.0.2/24",
            "dev",
            &ns.receiver_if,
        ])?;
        for (netns, dev) in [(&ns.sender, &sender_if), (&ns.receiver, &ns.receiver_if)] {
            ip(&["-n", netns, "link", "set", dev, "up"])?;
            ip(&["-n", netns, "link", "set", "lo", "up"])?;
        }
        if full_checksums {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns.sender, "ethtool", "-K", &sender_if])
                .args(["tx-checksumming", "off"])
                .output()
                .context("running ethtool in the sender namespace")?;
            if !out.status.success() {
                bail!("ethtool: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(ns)
    }

    fn config(&self) -> XdpConfig {
        XdpConfig {
            interfaces: vec![self.receiver_if.clone()],
            pin_path: PathBuf::from(format!("/sys/fs/bpf/sluice-bench-{}", std::process::id())),
            mode: self.mode,
            ..XdpConfig::default()
        }
    }

    fn start(&self, config: XdpConfig) -> anyhow::Result<XdpHandle> {
        Ok(in_netns(&self.receiver, move || xdp::start(&config))?)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for netns in [&self.sender, &self.receiver] {
            let _ = Command::new("ip").args(["netns", "del", netns]).status();
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn enter_netns(name: &str) {
    let file = std::fs::File::open(format!("/run/netns/{name}")).expect("namespace exists");
    // SAFETY: setns on an open namespace fd; affects only the calling thread.
    assert_eq!(
        unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns"
    );
}

fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let name = name.to_string();
    std::thread::spawn(move || {
        enter_netns(&name);
        f()
    })
    .join()
    .expect("namespace thread")
}

fn receiver_socket(reuseport: bool) -> UdpSocket {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    socket.set_reuse_port(reuseport).unwrap();
    socket.set_recv_buffer_size(32 << 20).unwrap();
    socket
        .bind(&SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), PORT).into())
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    socket.into()
}

fn receivers(ns: &Netns, count: usize) -> Vec<UdpSocket> {
    in_netns(&ns.receiver, move || {
        (0..count).map(|_| receiver_socket(count > 1)).collect()
    })
}

/// Busy and total jiffies per CPU from /proc/stat (machine-wide: includes other processes).
fn cpu_times() -> Vec<(u64, u64)> {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|line| {
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = f.iter().sum();
            (
                total - f.get(3).copied().unwrap_or(0) - f.get(4).copied().unwrap_or(0),
                total,
            )
        })
        .collect()
}

/// Run time (ns) of the receive path's kernel threads, by the CPU they serve:
/// `ksoftirqd/N` and the CPUMAP kthreads `cpumap/N/map:ID`.
fn kernel_thread_ns() -> Vec<(usize, u64)> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let comm = comm.trim();
        let Some(rest) = comm
            .strip_prefix("ksoftirqd/")
            .or_else(|| comm.strip_prefix("cpumap/"))
        else {
            continue;
        };
        let Some(cpu) = rest.split('/').next().and_then(|c| c.parse().ok()) else {
            continue;
        };
        let Some(ns) = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
        else {
            continue;
        };
        threads.push((cpu, ns));
    }
    threads
}

fn kernel_cpu_by_core(threads: &[(usize, u64)], cores: usize) -> Vec<u64> {
    let mut by_core = vec![0; cores];
    for (cpu, ns) in threads {
        if let Some(slot) = by_core.get_mut(*cpu) {
            *slot += ns;
        }
    }
    by_core
}

/// `Udp: InCsumErrors` of namespace `netns` (read from a thread inside it: /proc/thread-self/net
/// shows the calling thread's namespace).
fn udp_checksum_errors(netns: &str) -> u64 {
    in_netns(netns, || {
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap_or_default();
        let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
        let (Some(names), Some(values)) = (udp.first(), udp.get(1)) else {
            return 0;
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "InCsumErrors")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(0)
    })
}

/// User + system CPU of this process (all threads). Softirq work done in a thread's context
/// (veth transmit runs the receive path inline) is charged here.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn thread_cpu_seconds() -> f64 {
    // SAFETY: clock_gettime writes the timespec we own.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        ts
    };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

struct Measured {
    sent: u64,
    received: u64,
    seconds: f64,
    /// This process (sender, readers, inline softirq) + ksoftirqd/cpumap kthreads, CPU-seconds.
    path_cpu: f64,
    /// Of which kernel threads.
    kthread_cpu: f64,
    /// Per core: CPU-seconds of the reader pinned there + that core's kernel threads.
    per_core_cpu: Vec<f64>,
    /// Machine-wide busy % per core (includes unrelated load on a shared machine).
    per_core_busy: Vec<f64>,
    /// Datagrams each reader socket received (the steering balance).
    per_socket: Vec<u64>,
    /// UDP datagrams the receiver namespace discarded for a bad checksum during the run.
    udp_checksum_errors: u64,
}

impl Measured {
    fn cpu_per_received(&self) -> f64 {
        self.path_cpu / self.received.max(1) as f64
    }
    fn cpu_per_sent(&self) -> f64 {
        self.path_cpu / self.sent.max(1) as f64
    }
    fn rate(&self) -> f64 {
        self.received as f64 / self.seconds
    }
}

/// Sends from `source` as fast as one thread can for `seconds` while one reader thread per
/// socket (reader `i` pinned to core `i`) drains; `accept` filters in user space.
fn run_load(
    ns: &Netns,
    sockets: Vec<UdpSocket>,
    source: Ipv4Addr,
    seconds: f64,
    payload: usize,
    accept: fn(IpAddr) -> bool,
) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let core_count = cores.len().max(1);
    let started = Arc::new(std::sync::Barrier::new(sockets.len() + 1));
    let readers: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            let (stop, started) = (stop.clone(), started.clone());
            let core = cores.get(i % core_count).copied();
            std::thread::spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                let mut buf = vec![0u8; 65536];
                let mut accepted = 0u64;
                started.wait();
                let cpu_start = thread_cpu_seconds();
                loop {
                    match socket.recv_from(&mut buf) {
                        Ok((_, from)) => {
                            if accept(from.ip()) {
                                accepted += 1;
                            }
                        }
                        Err(_) if stop.load(Ordering::Relaxed) => break,
                        Err(_) => {}
                    }
                }
                (i % core_count, accepted, thread_cpu_seconds() - cpu_start)
            })
        })
        .collect();
    started.wait();
    let checksum_errors_before = udp_checksum_errors(&ns.receiver);
    let busy_before = cpu_times();
    let kthreads_before = kernel_thread_ns();
    let process_before = process_cpu_seconds();
    let start = Instant::now();
    let sent = in_netns(&ns.sender, move || {
        let socket = UdpSocket::bind((source, 0)).unwrap();
        socket.connect((RECEIVER, PORT)).unwrap();
        let message = vec![b'x'; payload];
        let mut sent = 0u64;
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        while Instant::now() < deadline {
            for _ in 0..64 {
                if socket.send(&message).is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    });
    let elapsed = start.elapsed().as_secs_f64();
    // Let the readers drain what is queued; their idle timeouts cost next to nothing.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(usize, u64, f64)> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let process_cpu = process_cpu_seconds() - process_before;
    let kthreads_after = kernel_thread_ns();
    let busy_after = cpu_times();
    let udp_checksum_errors = udp_checksum_errors(&ns.receiver) - checksum_errors_before;
    let before = kernel_cpu_by_core(&kthreads_before, core_count);
    let after = kernel_cpu_by_core(&kthreads_after, core_count);
    let kthread_per_core: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.saturating_sub(*b) as f64 / 1e9)
        .collect();
    let mut per_core_cpu = kthread_per_core.clone();
    for (core, _, cpu) in &results {
        per_core_cpu[*core] += cpu;
    }
    let kthread_cpu: f64 = kthread_per_core.iter().sum();
    Measured {
        sent,
        received: results.iter().map(|r| r.1).sum(),
        seconds: elapsed,
        path_cpu: process_cpu + kthread_cpu,
        kthread_cpu,
        per_core_cpu,
        per_core_busy: busy_before
            .iter()
            .zip(&busy_after)
            .map(|((b0, t0), (b1, t1))| 100.0 * (b1 - b0) as f64 / (t1 - t0).max(1) as f64)
            .collect(),
        per_socket: results.iter().map(|r| r.1).collect(),
        udp_checksum_errors,
    }
}

fn accept_all(_: IpAddr) -> bool {
    true
}

fn accept_allowlisted(addr: IpAddr) -> bool {
    addr == IpAddr::from(SENDER)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn percents(values: &[f64]) -> Vec<String> {
    let total: f64 = values.iter().sum();
    values
        .iter()
        .map(|v| format!("{:.0}%", 100.0 * v / total.max(f64::MIN_POSITIVE)))
        .collect()
}

fn report(rep: usize, label: &str, m: &Measured) {
    println!(
        "  rep {rep} {label:<30} sent {:>8} recv {:>8} {:>8.0} msg/s  path CPU {:>5.3}s (kthreads {:>5.3}s)  {:>5.2} µs/recv {:>5.2} µs/sent  per-socket {:?}  per-core CPU {:?}  core busy (machine) {:?}",
        m.sent,
        m.received,
        m.rate(),
        m.path_cpu,
        m.kthread_cpu,
        1e6 * m.cpu_per_received(),
        1e6 * m.cpu_per_sent(),
        percents(&m.per_socket.iter().map(|c| *c as f64).collect::<Vec<_>>()),
        m.per_core_cpu
            .iter()
            .map(|c| format!("{c:.2}s"))
            .collect::<Vec<_>>(),
        m.per_core_busy
            .iter()
            .map(|b| format!("{b:.0}%"))
            .collect::<Vec<_>>()
    );
    if m.udp_checksum_errors > 0 {
        println!(
            "        !! {} datagrams discarded by UDP as checksum errors in the receiver namespace",
            m.udp_checksum_errors
        );
    }
}

/// One benchmark variant: how to set it up, and what to measure.
struct Variant<'a> {
    label: String,
    run: Box<dyn Fn() -> anyhow::Result<Measured> + 'a>,
    results: Vec<Measured>,
}

/// Runs every variant `reps` times, rotating the order each repetition.
fn run_variants(variants: &mut [Variant<'_>], reps: usize) -> anyhow::Result<()> {
    let n = variants.len();
    for rep in 0..reps {
        for k in 0..n {
            let v = &mut variants[(k + rep) % n];
            let m = (v.run)()?;
            report(rep, &v.label, &m);
            v.results.push(m);
        }
    }
    Ok(())
}

fn summary(v: &Variant<'_>, metric: fn(&Measured) -> f64) -> f64 {
    median(&v.results.iter().map(metric).collect::<Vec<_>>())
}

/// Median over repetitions of the per-repetition ratio `a / b` (paired: same repetition).
fn paired_ratio(a: &Variant<'_>, b: &Variant<'_>, metric: fn(&Measured) -> f64) -> f64 {
    median(
        &a.results
            .iter()
            .zip(&b.results)
            .map(|(x, y)| metric(x) / metric(y))
            .collect::<Vec<_>>(),
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("xdp_bench needs root (namespaces, veth, XDP)");
    }
    let mode = match args.mode.as_str() {
        "driver" => XdpMode::Driver,
        "generic" => XdpMode::Generic,
        "auto" => XdpMode::Auto,
        other => bail!("--mode {other}: expected auto, driver or generic"),
    };
    let ns = Netns::new(mode, args.sender_full_checksums)?;
    let all = args.scenario == "all";
    let (seconds, payload) = (args.seconds, args.payload);
    println!(
        "build: {}, {seconds}s per measurement, {} repetitions (order rotated), mode {:?}, sender full checksums {}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        args.reps,
        mode,
        args.sender_full_checksums
    );

    if all || args.scenario == "overhead" {
        println!("overhead: UDP {payload}-byte datagrams to port {PORT}, one sender, one reader");
        let ns = &ns;
        let attached = |ports: Vec<u16>| {
            move || -> anyhow::Result<Measured> {
                let handle = ns.start(XdpConfig {
                    ports: ports.clone(),
                    ..ns.config()
                })?;
                let m = run_load(ns, receivers(ns, 1), SENDER, seconds, payload, accept_all);
                drop(handle);
                Ok(m)
            }
        };
        let mut variants = vec![
            Variant {
                label: "no XDP".into(),
                run: Box::new(|| {
                    Ok(run_load(
                        ns,
                        receivers(ns, 1),
                        SENDER,
                        seconds,
                        payload,
                        accept_all,
                    ))
                }),
                results: vec![],
            },
            Variant {
                label: format!("XDP attached, port {IDLE_PORT} only"),
                run: Box::new(attached(vec![IDLE_PORT])),
                results: vec![],
            },
            Variant {
                label: "XDP counting port 514".into(),
                run: Box::new(attached(vec![PORT])),
                results: vec![],
            },
        ];
        run_variants(&mut variants, args.reps)?;
        let attach_mode = ns.start(ns.config())?.attachments()[0].1;
        println!("  XDP mode: {attach_mode}");
        for v in &variants {
            println!(
                "  median {:<30} {:>6.3} µs CPU per message, {:>8.0} msg/s",
                v.label,
                1e6 * summary(v, Measured::cpu_per_received),
                summary(v, Measured::rate)
            );
        }
        // The program's own run time per packet, from the kernel's BPF run-time statistics.
        // Enabled only for these two extra runs: the statistics themselves add two clock
        // reads per packet, which must not inflate the ratios above.
        let stats_guard = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics")?;
        for (label, ports) in [
            (format!("port {IDLE_PORT} only"), vec![IDLE_PORT]),
            ("counting port 514".to_string(), vec![PORT]),
        ] {
            let handle = ns.start(XdpConfig {
                ports,
                ..ns.config()
            })?;
            let m = run_load(ns, receivers(ns, 1), SENDER, seconds, payload, accept_all);
            let (runs, time) = handle.xdp_program_run_stats()?;
            println!(
                "  program run time, {label:<20} {:>6.1} ns per packet over {runs} runs ({:.1}% of the path CPU per message of that run)",
                time.as_nanos() as f64 / runs.max(1) as f64,
                100.0 * time.as_secs_f64() / m.path_cpu.max(f64::MIN_POSITIVE)
            );
        }
        drop(stats_guard);
        let (none, idle, counting) = (&variants[0], &variants[1], &variants[2]);
        println!(
            "  => CPU per message, counting / no XDP: {:.3} (ratio of medians), {:.3} (median of paired ratios)",
            summary(counting, Measured::cpu_per_received)
                / summary(none, Measured::cpu_per_received),
            paired_ratio(counting, none, Measured::cpu_per_received)
        );
        println!(
            "  => hook alone (attached, port not configured) / no XDP: {:.3}; counting / hook alone: {:.3} (medians of paired ratios)",
            paired_ratio(idle, none, Measured::cpu_per_received),
            paired_ratio(counting, idle, Measured::cpu_per_received)
        );
    }

    if all || args.scenario == "flood" {
        println!("flood: non-allowlisted source {FLOODER} flooding port {PORT}");
        let ns = &ns;
        let mut variants = vec![
            Variant {
                label: "user-space allowlist (no XDP)".into(),
                run: Box::new(|| {
                    Ok(run_load(
                        ns,
                        receivers(ns, 1),
                        FLOODER,
                        seconds,
                        payload,
                        accept_allowlisted,
                    ))
                }),
                results: vec![],
            },
            Variant {
                label: "XDP allowlist drop".into(),
                run: Box::new(|| {
                    let handle = ns.start(XdpConfig {
                        allow: vec![format!("{SENDER}/32")],
                        enforce_allowlist: true,
                        ..ns.config()
                    })?;
                    let m = run_load(
                        ns,
                        receivers(ns, 1),
                        FLOODER,
                        seconds,
                        payload,
                        accept_allowlisted,
                    );
                    let dropped = handle
                        .stats()?
                        .total(
                            sluice_ingest_ebpf::Action::DropAllowlist,
                            sluice_ingest_ebpf::Proto::Udp,
                        )
                        .packets;
                    if dropped != m.sent || m.received != 0 {
                        bail!(
                            "XDP dropped {dropped} of {} flood packets, {} reached the socket",
                            m.sent,
                            m.received
                        );
                    }
                    Ok(m)
                }),
                results: vec![],
            },
        ];
        run_variants(&mut variants, args.reps)?;
        let per_million = |m: &Measured| 1e6 * m.cpu_per_sent();
        let sent_rate = |m: &Measured| m.sent as f64 / m.seconds;
        for v in &variants {
            println!(
                "  median {:<30} {:>6.3} CPU-s per million flood packets, sender {:>8.0} pkt/s",
                v.label,
                median(&v.results.iter().map(per_million).collect::<Vec<_>>()),
                median(&v.results.iter().map(sent_rate).collect::<Vec<_>>()),
            );
        }
        println!(
            "  => CPU per flood packet, XDP drop / user space: {:.3} (median of paired ratios); every flood packet was counted as dropped in XDP",
            paired_ratio(&variants[1], &variants[0], Measured::cpu_per_sent)
        );
    }

    if args.scenario == "top-sample" {
        top_sample(&ns, &args)?;
    }

    if all || args.scenario == "steering" {
        let cores = core_affinity::get_core_ids().map_or(1, |c| c.len()).max(2);
        println!(
            "steering: one loud sender, {cores} reuseport sockets with a reader pinned per core"
        );
        let ns = &ns;
        let steered = |steering: Steering, redirect: bool| {
            move || -> anyhow::Result<Measured> {
                let config = XdpConfig {
                    steering,
                    cpu_redirect: redirect,
                    // Steering alone needs no XDP program on the interface.
                    interfaces: if redirect {
                        ns.config().interfaces
                    } else {
                        vec![]
                    },
                    ..ns.config()
                };
                let (handle, sockets) = in_netns(&ns.receiver, move || {
                    let mut handle = xdp::start(&config)?;
                    let sockets: Vec<UdpSocket> =
                        (0..cores).map(|_| receiver_socket(true)).collect();
                    let fds: Vec<(usize, i32)> = sockets
                        .iter()
                        .enumerate()
                        .map(|(cpu, s)| (cpu, s.as_raw_fd()))
                        .collect();
                    handle.attach_reuseport(PORT, &fds)?;
                    anyhow::Ok((handle, sockets))
                })?;
                let m = run_load(ns, sockets, SENDER, seconds, payload, accept_all);
                drop(handle);
                Ok(m)
            }
        };
        let mut variants = vec![
            Variant {
                label: "flow hash (no steering)".into(),
                run: Box::new(|| {
                    Ok(run_load(
                        ns,
                        receivers(ns, cores),
                        SENDER,
                        seconds,
                        payload,
                        accept_all,
                    ))
                }),
                results: vec![],
            },
            Variant {
                label: "steering random".into(),
                run: Box::new(steered(Steering::Random, false)),
                results: vec![],
            },
            Variant {
                label: "steering cpu + CPUMAP".into(),
                run: Box::new(steered(Steering::Cpu, true)),
                results: vec![],
            },
        ];
        run_variants(&mut variants, args.reps)?;
        for v in &variants {
            let shares: Vec<String> = (0..cores)
                .map(|i| {
                    let share = median(
                        &v.results
                            .iter()
                            .map(|m| {
                                m.per_socket[i] as f64
                                    / m.per_socket.iter().sum::<u64>().max(1) as f64
                            })
                            .collect::<Vec<_>>(),
                    );
                    format!("{:.0}%", 100.0 * share)
                })
                .collect();
            let core_cpu: Vec<String> = (0..cores)
                .map(|i| {
                    let cpu = median(
                        &v.results
                            .iter()
                            .map(|m| m.per_core_cpu.get(i).copied().unwrap_or(0.0) / m.seconds)
                            .collect::<Vec<_>>(),
                    );
                    format!("{:.0}%", 100.0 * cpu)
                })
                .collect();
            println!(
                "  median {:<30} {:>8.0} msg/s  {:>5.2} µs CPU/msg  per-socket share {shares:?}  reader+kthread CPU per core {core_cpu:?}",
                v.label,
                summary(v, Measured::rate),
                1e6 * summary(v, Measured::cpu_per_received),
            );
        }
        println!(
            "  => msg/s, random / flow hash: {:.2}; cpu+CPUMAP / flow hash: {:.2} (medians of paired ratios)",
            paired_ratio(&variants[1], &variants[0], Measured::rate),
            paired_ratio(&variants[2], &variants[0], Measured::rate)
        );
    }
    Ok(())
}

/// Traffic from an allowlisted sender and a flooder while `sluice top --once` reads the pins.
fn top_sample(ns: &Netns, args: &Args) -> anyhow::Result<()> {
    let config = XdpConfig {
        allow: vec![format!("{SENDER}/32")],
        enforce_allowlist: true,
        rate_limit_pps: Some(10_000),
        ..ns.config()
    };
    let pin_path = config.pin_path.clone();
    let handle = ns.start(config)?;
    let sluice = args
        .sluice
        .clone()
        .context("--sluice PATH to the sluice binary")?;
    let top = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        Command::new(sluice)
            .args(["top", "--once", "--pin-path"])
            .arg(pin_path)
            .output()
    });
    let flood = {
        let keep = in_netns(&ns.receiver, || receiver_socket(true));
        let sender_ns = ns.sender.clone();
        let payload = args.payload;
        std::thread::spawn(move || {
            let _keep = keep;
            in_netns(&sender_ns, move || {
                let socket = UdpSocket::bind((FLOODER, 0)).unwrap();
                let message = vec![b'f'; payload];
                let deadline = Instant::now() + Duration::from_secs(3);
                while Instant::now() < deadline {
                    let _ = socket.send_to(&message, (RECEIVER, PORT));
                }
            })
        })
    };
    let _ = run_load(
        ns,
        in_netns(&ns.receiver, || vec![receiver_socket(true)]),
        SENDER,
        3.0,
        args.payload,
        accept_all,
    );
    let _ = flood.join();
    let output = top.join().expect("top thread")?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    drop(handle);
    Ok(())
}
