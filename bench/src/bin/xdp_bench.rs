//! XDP benchmarks over a veth pair between two namespaces this program creates (root only).
//!
//! Every scenario runs its baseline and its XDP variant in the same invocation and reports the
//! ratio, as the project's speed claims require:
//! 1. `overhead`: UDP to port 514 without XDP vs with the counting program attached — messages/s
//!    and CPU (all cores, from /proc/stat) per message.
//! 2. `flood`: datagrams from a non-allowlisted source, dropped in XDP vs delivered to a user-space
//!    reader that applies the same allowlist — CPU per million flood packets.
//! 3. `steering`: one loud sender into one reuseport socket per core (a reader thread pinned to
//!    each core), kernel flow hash vs SK_REUSEPORT steering — messages/s and per-core busy %.
//!
//! `cargo run --release -p sluice-bench --bin xdp_bench -- [--seconds 3] [--scenario all]`

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use sluice::xdp::{self, Steering, XdpConfig, XdpMode};
use socket2::{Domain, Protocol, Socket, Type};

const SENDER: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const FLOODER: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 66);
const RECEIVER: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
const PORT: u16 = 514;

#[derive(Parser)]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// overhead | flood | steering | all
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
}

static MODE: std::sync::OnceLock<XdpMode> = std::sync::OnceLock::new();

struct Netns {
    sender: String,
    receiver: String,
    receiver_if: String,
}

impl Netns {
    fn new() -> anyhow::Result<Netns> {
        let id = std::process::id() % 100_000;
        let ns = Netns {
            sender: format!("slba{id}"),
            receiver: format!("slbb{id}"),
            receiver_if: format!("vbb{id}"),
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
        ip(&[
            "-n",
            &ns.sender,
            "addr",
            "add",
            "10.201.0.1/24",
            "dev",
            &sender_if,
        ])?;
        ip(&[
            "-n",
            &ns.sender,
            "addr",
            "add",
            "10.201.0.66/24",
            "dev",
            &sender_if,
        ])?;
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
        Ok(ns)
    }

    fn config(&self) -> XdpConfig {
        XdpConfig {
            interfaces: vec![self.receiver_if.clone()],
            pin_path: PathBuf::from(format!("/sys/fs/bpf/sluice-bench-{}", std::process::id())),
            mode: *MODE.get().unwrap_or(&XdpMode::Auto),
            ..XdpConfig::default()
        }
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

/// Busy and total jiffies per CPU.
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

struct Measured {
    sent: u64,
    received: u64,
    seconds: f64,
    /// CPU-seconds of this process (sender, readers, inline softirq) during the run.
    cpu_seconds: f64,
    per_core_busy: Vec<f64>,
    /// Datagrams each reader socket received (the steering balance).
    per_socket: Vec<u64>,
}

/// Sends from `source` as fast as one thread can for `seconds` while `readers` reader threads
/// (one per socket, each pinned to a core) drain; `accept` filters in user space.
fn run_load(
    ns: &Netns,
    sockets: Vec<UdpSocket>,
    source: Ipv4Addr,
    seconds: f64,
    payload: usize,
    accept: fn(IpAddr) -> bool,
) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let readers: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            let (stop, received) = (stop.clone(), received.clone());
            let core = cores.get(i % cores.len().max(1)).copied();
            std::thread::spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                let mut buf = vec![0u8; 65536];
                let mut local = 0;
                loop {
                    match socket.recv_from(&mut buf) {
                        Ok((_, from)) => {
                            if accept(from.ip()) {
                                local += 1;
                            }
                        }
                        Err(_) if stop.load(Ordering::Relaxed) => break,
                        Err(_) => {}
                    }
                }
                received.fetch_add(local, Ordering::Relaxed);
                local
            })
        })
        .collect();
    let before = cpu_times();
    let rusage_before = process_cpu_seconds();
    let start = Instant::now();
    let sender_ns = ns.sender.clone();
    let sent = in_netns(&sender_ns, move || {
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
    std::thread::sleep(Duration::from_millis(300));
    let after = cpu_times();
    stop.store(true, Ordering::Relaxed);
    let per_socket: Vec<u64> = readers.into_iter().map(|r| r.join().unwrap_or(0)).collect();
    let cpu_seconds = process_cpu_seconds() - rusage_before;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let per_core_busy: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|((b0, t0), (b1, t1))| 100.0 * (b1 - b0) as f64 / (t1 - t0).max(1) as f64)
        .collect();
    let _ = hz;
    Measured {
        sent,
        received: received.load(Ordering::Relaxed),
        seconds: elapsed,
        cpu_seconds,
        per_core_busy,
        per_socket,
    }
}

/// User + system CPU of this process (all threads). Softirq work done in a thread's context
/// (veth transmit runs the receive path inline) is charged here; ksoftirqd work is not.
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

fn accept_all(_: IpAddr) -> bool {
    true
}

fn accept_allowlisted(addr: IpAddr) -> bool {
    addr == IpAddr::from(SENDER)
}

fn report(label: &str, m: &Measured) {
    let total: u64 = m.per_socket.iter().sum();
    println!(
        "  {label:<30} sent {:>8} recv {:>8} {:>8.0} msg/s {:>6.2} µs CPU/msg  per-socket share {:?}  core busy {:?}",
        m.sent,
        m.received,
        m.received as f64 / m.seconds,
        1e6 * m.cpu_seconds / m.sent.max(1) as f64,
        m.per_socket
            .iter()
            .map(|c| format!("{:.0}%", 100.0 * *c as f64 / total.max(1) as f64))
            .collect::<Vec<_>>(),
        m.per_core_busy
            .iter()
            .map(|b| format!("{b:.0}%"))
            .collect::<Vec<_>>()
    );
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
        _ => XdpMode::Auto,
    };
    let _ = MODE.set(mode);
    let ns = Netns::new()?;
    let all = args.scenario == "all";

    if all || args.scenario == "overhead" {
        println!(
            "overhead: UDP {}-byte datagrams to port {PORT}, one sender, one reader",
            args.payload
        );
        let plain = run_load(
            &ns,
            vec![in_netns(&ns.receiver, || receiver_socket(false))],
            SENDER,
            args.seconds,
            args.payload,
            accept_all,
        );
        report("no XDP", &plain);
        let config = ns.config();
        let handle = in_netns(&ns.receiver, move || xdp::start(&config))?;
        let with = run_load(
            &ns,
            vec![in_netns(&ns.receiver, || receiver_socket(false))],
            SENDER,
            args.seconds,
            args.payload,
            accept_all,
        );
        report(
            &format!("XDP counting ({})", handle.attachments()[0].1),
            &with,
        );
        drop(handle);
        let per = |m: &Measured| m.cpu_seconds / m.sent.max(1) as f64;
        println!(
            "  => CPU per message with XDP / without: {:.3}",
            per(&with) / per(&plain)
        );
    }

    if all || args.scenario == "flood" {
        println!("flood: non-allowlisted source {FLOODER} flooding port {PORT}");
        let user = run_load(
            &ns,
            vec![in_netns(&ns.receiver, || receiver_socket(false))],
            FLOODER,
            args.seconds,
            args.payload,
            accept_allowlisted,
        );
        report("user-space allowlist (no XDP)", &user);
        let config = XdpConfig {
            allow: vec![format!("{SENDER}/32")],
            enforce_allowlist: true,
            ..ns.config()
        };
        let handle = in_netns(&ns.receiver, move || xdp::start(&config))?;
        let dropped = run_load(
            &ns,
            vec![in_netns(&ns.receiver, || receiver_socket(false))],
            FLOODER,
            args.seconds,
            args.payload,
            accept_allowlisted,
        );
        report("XDP allowlist drop", &dropped);
        let stats = handle.stats()?;
        drop(handle);
        let per_million = |m: &Measured| 1e6 * m.cpu_seconds / m.sent.max(1) as f64;
        println!(
            "  => CPU-seconds per million flood packets: user space {:.3}, XDP {:.3} (ratio {:.3}); XDP dropped {}",
            per_million(&user),
            per_million(&dropped),
            per_million(&dropped) / per_million(&user),
            stats
                .total(
                    sluice_ingest_ebpf::Action::DropAllowlist,
                    sluice_ingest_ebpf::Proto::Udp
                )
                .packets
        );
    }

    if args.scenario == "top-sample" {
        // Traffic from an allowlisted sender and a flooder while `sluice top --once` reads the pins.
        let config = XdpConfig {
            allow: vec![format!("{SENDER}/32")],
            enforce_allowlist: true,
            rate_limit_pps: Some(10_000),
            ..ns.config()
        };
        let pin_path = config.pin_path.clone();
        let handle = in_netns(&ns.receiver, move || xdp::start(&config))?;
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
            let ns_sockets = in_netns(&ns.receiver, || receiver_socket(true));
            let sender_ns = ns.sender.clone();
            let payload = args.payload;
            std::thread::spawn(move || {
                let _keep = ns_sockets;
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
            &ns,
            vec![in_netns(&ns.receiver, || receiver_socket(true))],
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
    }

    if all || args.scenario == "steering" {
        let cores = core_affinity::get_core_ids().map_or(1, |c| c.len()).max(2);
        println!("steering: one loud sender, {cores} reuseport sockets with a pinned reader each");
        let sockets = move || {
            (0..cores)
                .map(|_| receiver_socket(true))
                .collect::<Vec<_>>()
        };
        let off = run_load(
            &ns,
            in_netns(&ns.receiver, sockets),
            SENDER,
            args.seconds,
            args.payload,
            accept_all,
        );
        report("flow hash (no steering)", &off);
        for (steering, redirect) in [(Steering::Random, false), (Steering::Cpu, true)] {
            let config = XdpConfig {
                steering,
                cpu_redirect: redirect,
                ..ns.config()
            };
            let (handle, socks) = in_netns(&ns.receiver, move || {
                let mut handle = xdp::start(&config).expect("XDP start");
                let socks = sockets();
                let fds: Vec<(usize, i32)> = socks
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (i, s.as_raw_fd()))
                    .collect();
                handle
                    .attach_reuseport(PORT, &fds)
                    .expect("steering attach");
                (handle, socks)
            });
            let m = run_load(&ns, socks, SENDER, args.seconds, args.payload, accept_all);
            report(
                &format!(
                    "steering {steering:?}{}",
                    if redirect { " + CPUMAP" } else { "" }
                ),
                &m,
            );
            drop(handle);
        }
    }
    Ok(())
}
