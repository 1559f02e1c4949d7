//! XDP acceptance tests: real programs attached to a veth pair between two network namespaces
//! this test creates (and always deletes). Root only; without root each test says so and skips.
//!
//! Layout per test: namespace `…a` (senders, 10.200.0.1/.3/.9, fd00:200::1/::3) ⇄ veth ⇄
//! namespace `…b` (receiver 10.200.0.2, fd00:200::2, XDP attached to its veth end).
//! An AF_PACKET capture on the receiving veth is the independent oracle for exact counts.
#![cfg(feature = "xdp")]

mod daemon_support;
mod netns_support;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use netns_support::{Netns, enter_netns, in_netns, ip, spawn_in_netns};
use sluice::xdp::{self, Steering, XdpConfig, XdpHandle, XdpMode};
use sluice_ingest_ebpf::{Action, Proto};
use socket2::{Domain, Protocol, Socket, Type};

const SENDER_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const RECEIVER_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const OTHER_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 3);
const OTHER_PORT_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 9);
const SENDER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);
const RECEIVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2);
const OTHER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 3);
const PORT: u16 = 514;
const SENDER_MAC: &str = "02:00:00:00:00:01";
const RECEIVER_MAC: &str = "02:00:00:00:00:02";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED: XDP netns tests need root (network namespaces, veth, XDP attach)");
    }
    root
}

impl Netns {
    fn new() -> Netns {
        let ns = Netns::create(
            'x',
            Some((SENDER_MAC, RECEIVER_MAC)),
            &[
                "10.200.0.1/24",
                "10.200.0.3/24",
                "10.200.0.9/24",
                "fd00:200::1/64",
                "fd00:200::3/64",
            ],
            &["10.200.0.2/24", "fd00:200::2/64"],
        );
        // Static neighbours: no ARP/ND resolution queue may drop the first datagrams of a burst.
        for addr in ["10.200.0.2", "fd00:200::2"] {
            ip(&[
                "-n",
                &ns.sender,
                "neigh",
                "replace",
                addr,
                "lladdr",
                RECEIVER_MAC,
                "dev",
                &ns.sender_if,
                "nud",
                "permanent",
            ]);
        }
        for addr in [
            "10.200.0.1",
            "10.200.0.3",
            "10.200.0.9",
            "fd00:200::1",
            "fd00:200::3",
        ] {
            ip(&[
                "-n",
                &ns.receiver,
                "neigh",
                "replace",
                addr,
                "lladdr",
                SENDER_MAC,
                "dev",
                &ns.receiver_if,
                "nud",
                "permanent",
            ]);
        }
        ns
    }

    fn config(&self) -> XdpConfig {
        XdpConfig {
            interfaces: vec![self.receiver_if.clone()],
            pin_path: self.pin_path.clone(),
            ..XdpConfig::default()
        }
    }

    /// Detach happens when the last reference to the bpf_link goes; a process another test
    /// thread is forking at that moment holds a copy of every fd until it execs, so allow the
    /// kernel a moment instead of sampling once.
    fn xdp_detached_soon(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.xdp_attached() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

fn udp_from(addr: IpAddr) -> UdpSocket {
    UdpSocket::bind(SocketAddr::new(addr, 0)).unwrap()
}

fn udp_receiver(addr: IpAddr, port: u16, reuseport: bool) -> UdpSocket {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    if addr.is_ipv6() {
        socket.set_only_v6(true).unwrap();
    }
    socket.set_reuse_port(reuseport).unwrap();
    socket.set_recv_buffer_size(16 << 20).unwrap();
    socket.bind(&SocketAddr::new(addr, port).into()).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    socket.into()
}

fn drain(socket: &UdpSocket) -> HashMap<IpAddr, u64> {
    let mut counts = HashMap::new();
    let mut buf = [0u8; 2048];
    while let Ok((_, from)) = socket.recv_from(&mut buf) {
        *counts.entry(canonical(from.ip())).or_insert(0) += 1;
    }
    counts
}

fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// AF_PACKET capture of the receiving veth: per source, packets and IP bytes to `port`.
struct Capture(OwnedFd);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Seen {
    packets: u64,
    bytes: u64,
}

impl Capture {
    fn open(interface: &str) -> Capture {
        // SAFETY: plain socket syscalls on fds we own; sockaddr_ll is zero-initialised.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            );
            assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(fd);
            let size: libc::c_int = 64 << 20;
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                4,
            );
            let name = std::ffi::CString::new(interface).unwrap();
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
            Capture(fd)
        }
    }

    /// Incoming IPv4/IPv6 UDP/TCP packets to `port`, keyed by (source, proto).
    fn drain(&self, port: u16) -> HashMap<(IpAddr, Proto), Seen> {
        let mut seen: HashMap<(IpAddr, Proto), Seen> = HashMap::new();
        let mut buf = [0u8; 65536];
        loop {
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buffer and address out-parameters are ours and sized as declared.
            let n = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                break;
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let packet = &buf[..n as usize];
            let (src, proto, ip_len, l4) = match packet.first().map(|b| b >> 4) {
                Some(4) if packet.len() >= 20 => {
                    let ihl = (packet[0] & 0x0f) as usize * 4;
                    let src = IpAddr::V4(Ipv4Addr::new(
                        packet[12], packet[13], packet[14], packet[15],
                    ));
                    (
                        src,
                        packet[9],
                        u16::from_be_bytes([packet[2], packet[3]]) as u64,
                        ihl,
                    )
                }
                Some(6) if packet.len() >= 40 => {
                    let src: [u8; 16] = packet[8..24].try_into().unwrap();
                    (
                        IpAddr::V6(src.into()),
                        packet[6],
                        u16::from_be_bytes([packet[4], packet[5]]) as u64 + 40,
                        40,
                    )
                }
                _ => continue,
            };
            let proto = match proto {
                17 => Proto::Udp,
                6 => Proto::Tcp,
                _ => continue,
            };
            if packet.len() < l4 + 4 || u16::from_be_bytes([packet[l4 + 2], packet[l4 + 3]]) != port
            {
                continue;
            }
            let entry = seen.entry((src, proto)).or_default();
            entry.packets += 1;
            entry.bytes += ip_len;
        }
        seen
    }
}

fn settle() {
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn per_source_counts_are_exact_for_udp_and_tcp_v4_and_v6() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    let config = XdpConfig {
        ports: vec![PORT],
        ..ns.config()
    };
    let receiver_if = ns.receiver_if.clone();
    let (handle, capture, udp4, udp6, tcp4, tcp6) = in_netns(&ns.receiver, move || {
        let handle = xdp::start(&config).expect("XDP start");
        let capture = Capture::open(&receiver_if);
        let udp4 = udp_receiver(RECEIVER_V4.into(), PORT, false);
        let udp6 = udp_receiver(RECEIVER_V6.into(), PORT, false);
        let tcp4 = TcpListener::bind((RECEIVER_V4, PORT)).unwrap();
        let tcp6 = TcpListener::bind((RECEIVER_V6, PORT)).unwrap();
        (handle, capture, udp4, udp6, tcp4, tcp6)
    });
    // A listener for the port that must not be counted.
    let other_port = in_netns(&ns.receiver, || {
        udp_receiver(RECEIVER_V4.into(), 5140, false)
    });

    let tcp_servers: Vec<_> = [tcp4, tcp6]
        .into_iter()
        .map(|listener| {
            std::thread::spawn(move || {
                let (mut stream, _) = listener.accept().unwrap();
                let mut sink = Vec::new();
                stream.read_to_end(&mut sink).unwrap();
                sink.len()
            })
        })
        .collect();

    const UDP_V4: u64 = 1500;
    const UDP_V6: u64 = 1200;
    const PAYLOAD: usize = 300;
    in_netns(&ns.sender, || {
        let payload = vec![b'x'; PAYLOAD];
        let v4 = udp_from(SENDER_V4.into());
        let v6 = udp_from(SENDER_V6.into());
        let stray = udp_from(OTHER_PORT_V4.into());
        for i in 0..UDP_V4.max(UDP_V6) {
            if i < UDP_V4 {
                v4.send_to(&payload, (RECEIVER_V4, PORT)).unwrap();
            }
            if i < UDP_V6 {
                v6.send_to(&payload, (RECEIVER_V6, PORT)).unwrap();
            }
            stray.send_to(&payload, (RECEIVER_V4, 5140)).unwrap();
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        for (target, from) in [
            (
                SocketAddr::new(RECEIVER_V4.into(), PORT),
                IpAddr::from(OTHER_V4),
            ),
            (
                SocketAddr::new(RECEIVER_V6.into(), PORT),
                IpAddr::from(OTHER_V6),
            ),
        ] {
            let socket = Socket::new(Domain::for_address(target), Type::STREAM, None).unwrap();
            socket.bind(&SocketAddr::new(from, 0).into()).unwrap();
            socket.connect(&target.into()).unwrap();
            let mut stream: TcpStream = socket.into();
            stream.write_all(&vec![b'y'; 200_000]).unwrap();
        }
    });
    for server in tcp_servers {
        assert_eq!(server.join().unwrap(), 200_000);
    }
    settle();

    let stats = handle.stats().unwrap();
    let seen = capture.drain(PORT);
    assert_eq!(drain(&udp4).get(&IpAddr::from(SENDER_V4)), Some(&UDP_V4));
    assert_eq!(drain(&udp6).get(&IpAddr::from(SENDER_V6)), Some(&UDP_V6));
    assert!(
        drain(&other_port)
            .get(&IpAddr::from(OTHER_PORT_V4))
            .copied()
            .unwrap_or(0)
            > 0
    );

    let udp4_source = stats
        .source(SENDER_V4.into())
        .expect("IPv4 UDP source counted");
    assert_eq!(
        (udp4_source.packets, udp4_source.bytes),
        (UDP_V4, UDP_V4 * (20 + 8 + PAYLOAD as u64))
    );
    let udp6_source = stats
        .source(SENDER_V6.into())
        .expect("IPv6 UDP source counted");
    assert_eq!(
        (udp6_source.packets, udp6_source.bytes),
        (UDP_V6, UDP_V6 * (40 + 8 + PAYLOAD as u64))
    );
    for (addr, family) in [
        (IpAddr::from(OTHER_V4), "IPv4"),
        (IpAddr::from(OTHER_V6), "IPv6"),
    ] {
        let oracle = seen.get(&(addr, Proto::Tcp)).copied().unwrap_or_default();
        let counted = stats
            .source(addr)
            .unwrap_or_else(|| panic!("{family} TCP source counted"));
        assert!(oracle.packets > 10, "{family} TCP capture saw {oracle:?}");
        assert_eq!(
            (counted.packets, counted.bytes),
            (oracle.packets, oracle.bytes),
            "{family} TCP"
        );
    }
    assert!(
        stats.source(OTHER_PORT_V4.into()).is_none(),
        "traffic to other ports must not be counted"
    );

    let udp_total = stats.total(Action::Pass, Proto::Udp);
    assert_eq!(udp_total.packets, UDP_V4 + UDP_V6);
    let tcp_total = stats.total(Action::Pass, Proto::Tcp);
    let tcp_oracle: u64 = seen
        .iter()
        .filter(|((_, p), _)| *p == Proto::Tcp)
        .map(|(_, s)| s.packets)
        .sum();
    assert_eq!(tcp_total.packets, tcp_oracle);
    assert_eq!(
        stats.per_cpu_packets.iter().sum::<u64>(),
        UDP_V4 + UDP_V6 + tcp_oracle
    );
    drop(handle);
}

#[test]
fn enforced_allowlist_drops_others_in_xdp_and_counts_them() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    let config = XdpConfig {
        allow: vec!["10.200.0.0/31".into(), "fd00:200::1/128".into()],
        enforce_allowlist: true,
        ..ns.config()
    };
    let (handle, udp4, udp6) = in_netns(&ns.receiver, move || {
        (
            xdp::start(&config).unwrap(),
            udp_receiver(RECEIVER_V4.into(), PORT, false),
            udp_receiver(RECEIVER_V6.into(), PORT, false),
        )
    });
    const EACH: u64 = 800;
    in_netns(&ns.sender, || {
        let senders = [
            udp_from(SENDER_V4.into()),
            udp_from(OTHER_V4.into()),
            udp_from(SENDER_V6.into()),
            udp_from(OTHER_V6.into()),
        ];
        for i in 0..EACH {
            for (socket, to) in senders.iter().zip([
                RECEIVER_V4.into(),
                RECEIVER_V4.into(),
                RECEIVER_V6.into(),
                RECEIVER_V6.into(),
            ]) {
                socket
                    .send_to(b"<13>hello", SocketAddr::new(to, PORT))
                    .unwrap();
            }
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    settle();
    let got4 = drain(&udp4);
    let got6 = drain(&udp6);
    assert_eq!(
        got4.get(&IpAddr::from(SENDER_V4)),
        Some(&EACH),
        "allowlisted IPv4 all arrive"
    );
    assert_eq!(
        got6.get(&IpAddr::from(SENDER_V6)),
        Some(&EACH),
        "allowlisted IPv6 all arrive"
    );
    assert_eq!(
        got4.get(&IpAddr::from(OTHER_V4)),
        None,
        "non-allowlisted IPv4 never reaches the socket"
    );
    assert_eq!(
        got6.get(&IpAddr::from(OTHER_V6)),
        None,
        "non-allowlisted IPv6 never reaches the socket"
    );

    let stats = handle.stats().unwrap();
    for denied in [IpAddr::from(OTHER_V4), IpAddr::from(OTHER_V6)] {
        let s = stats.source(denied).unwrap();
        assert_eq!((s.packets, s.dropped_allowlist), (EACH, EACH), "{denied}");
    }
    assert_eq!(stats.source(SENDER_V4.into()).unwrap().dropped_allowlist, 0);
    assert_eq!(
        stats.total(Action::DropAllowlist, Proto::Udp).packets,
        2 * EACH
    );
    assert_eq!(stats.total(Action::Pass, Proto::Udp).packets, 2 * EACH);
}

/// A config reload (`XdpHandle::update_filters`) swaps the allowlist and its enforcement in the
/// attached program: what the kernel drops follows at once, with no detach in between.
#[test]
fn reloaded_filters_take_effect_in_the_attached_program() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    let config = XdpConfig {
        allow: vec!["10.200.0.0/31".into(), "fd00:200::1/128".into()],
        enforce_allowlist: true,
        ..ns.config()
    };
    let (mut handle, udp4, udp6) = in_netns(&ns.receiver, {
        let config = config.clone();
        move || {
            (
                xdp::start(&config).unwrap(),
                udp_receiver(RECEIVER_V4.into(), PORT, false),
                udp_receiver(RECEIVER_V6.into(), PORT, false),
            )
        }
    });
    const EACH: u64 = 200;
    // Sends EACH datagrams from each of the four senders; returns what arrived per sender.
    let round = || {
        in_netns(&ns.sender, || {
            let senders = [
                (udp_from(SENDER_V4.into()), IpAddr::from(RECEIVER_V4)),
                (udp_from(OTHER_V4.into()), IpAddr::from(RECEIVER_V4)),
                (udp_from(SENDER_V6.into()), IpAddr::from(RECEIVER_V6)),
                (udp_from(OTHER_V6.into()), IpAddr::from(RECEIVER_V6)),
            ];
            for i in 0..EACH {
                for (socket, to) in &senders {
                    socket
                        .send_to(b"<13>hello", SocketAddr::new(*to, PORT))
                        .unwrap();
                }
                if i % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        settle();
        let mut got = drain(&udp4);
        got.extend(drain(&udp6));
        [
            SENDER_V4.into(),
            OTHER_V4.into(),
            SENDER_V6.into(),
            OTHER_V6.into(),
        ]
        .map(|ip: IpAddr| got.get(&ip).copied().unwrap_or(0))
    };
    assert_eq!(round(), [EACH, 0, EACH, 0]);

    // The other two hosts instead: the first two prefixes leave, two new ones come.
    let swapped = XdpConfig {
        allow: vec!["10.200.0.3".into(), "fd00:200::3/128".into()],
        ..config.clone()
    };
    assert!(handle.update_filters(&swapped).unwrap());
    assert!(
        !handle.update_filters(&swapped).unwrap(),
        "nothing left to change"
    );
    assert_eq!(round(), [0, EACH, 0, EACH]);

    // Counting only: everyone passes, and the drops were counted where they happened.
    let counting = XdpConfig {
        enforce_allowlist: false,
        ..swapped
    };
    assert!(handle.update_filters(&counting).unwrap());
    assert_eq!(round(), [EACH; 4]);
    let stats = handle.stats().unwrap();
    for (ip, dropped) in [
        (IpAddr::from(SENDER_V4), EACH),
        (IpAddr::from(OTHER_V4), EACH),
        (IpAddr::from(SENDER_V6), EACH),
        (IpAddr::from(OTHER_V6), EACH),
    ] {
        assert_eq!(stats.source(ip).unwrap().dropped_allowlist, dropped, "{ip}");
    }

    // A reload the kernel cannot take is refused whole: an invalid prefix changes nothing.
    let bad = XdpConfig {
        allow: vec!["10.200.0.0/33".into()],
        enforce_allowlist: true,
        ..counting
    };
    assert!(handle.update_filters(&bad).is_err());
    assert_eq!(round(), [EACH; 4]);
    drop(handle);
}

#[test]
fn rate_limit_lets_n_per_second_through_from_a_5n_sender() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    const N: u64 = 1000;
    let config = XdpConfig {
        rate_limit_pps: Some(N),
        ..ns.config()
    };
    let (handle, udp4) = in_netns(&ns.receiver, move || {
        (
            xdp::start(&config).unwrap(),
            udp_receiver(RECEIVER_V4.into(), PORT, false),
        )
    });
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let mut got = 0u64;
        while udp4.recv_from(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    let (sent, elapsed) = in_netns(&ns.sender, || {
        let socket = udp_from(SENDER_V4.into());
        let start = Instant::now();
        let duration = Duration::from_secs(3);
        let mut sent = 0u64;
        // 5·N pps, paced per millisecond so the rate holds over the whole window.
        while start.elapsed() < duration {
            let due = (start.elapsed().as_secs_f64() * 5.0 * N as f64) as u64;
            while sent < due {
                socket.send_to(b"<13>flood", (RECEIVER_V4, PORT)).unwrap();
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        (sent, start.elapsed())
    });
    let got = receiver.join().unwrap();
    let expected = N as f64 * elapsed.as_secs_f64();
    let ratio = got as f64 / expected;
    eprintln!(
        "rate limit: sent {sent} in {elapsed:?}, {got} through, expected ≈ {expected:.0} (ratio {ratio:.3})"
    );
    assert!(
        sent as f64 > 4.5 * expected,
        "sender too slow to test the limit: {sent}"
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "{got} through vs {expected:.0} expected"
    );
    let source = *handle.stats().unwrap().source(SENDER_V4.into()).unwrap();
    assert_eq!(source.packets, sent);
    assert_eq!(source.dropped_ratelimit, sent - got);
}

#[test]
fn steering_spreads_one_sender_over_every_worker_socket() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    const SOCKETS: usize = 4;
    const DATAGRAMS: u64 = 8000;
    let run = |steering: Steering, port: u16, ns: &Netns| -> Vec<u64> {
        let config = XdpConfig {
            steering,
            pin_path: PathBuf::from(format!("{}-{port}", ns.pin_path.display())),
            ..ns.config()
        };
        let (handle, sockets) = in_netns(&ns.receiver, move || {
            let mut handle = xdp::start(&XdpConfig {
                interfaces: vec![],
                ..config
            })
            .unwrap();
            let sockets: Vec<UdpSocket> = (0..SOCKETS)
                .map(|_| udp_receiver(Ipv4Addr::UNSPECIFIED.into(), port, true))
                .collect();
            let fds: Vec<(usize, i32)> = sockets
                .iter()
                .enumerate()
                .map(|(cpu, s)| (cpu, s.as_raw_fd()))
                .collect();
            handle.attach_reuseport(port, &fds).unwrap();
            (handle, sockets)
        });
        in_netns(&ns.sender, move || {
            let socket = udp_from(SENDER_V4.into());
            for i in 0..DATAGRAMS {
                socket.send_to(b"<13>loud", (RECEIVER_V4, port)).unwrap();
                if i % 200 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        settle();
        let counts = sockets.iter().map(|s| drain(s).values().sum()).collect();
        drop(handle);
        counts
    };
    let baseline = run(Steering::Off, 5514, &ns);
    let steered = run(Steering::Random, 5515, &ns);
    eprintln!("per-socket datagrams: flow hash {baseline:?}, random steering {steered:?}");
    assert_eq!(baseline.iter().sum::<u64>(), DATAGRAMS);
    assert_eq!(
        baseline.iter().filter(|c| **c > 0).count(),
        1,
        "without steering one sender lands on one socket"
    );
    assert_eq!(steered.iter().sum::<u64>(), DATAGRAMS);
    let fair = DATAGRAMS / SOCKETS as u64;
    assert!(
        steered.iter().all(|c| *c >= fair / 2),
        "every socket gets ≥ half its fair share: {steered:?}"
    );
}

/// Receives every queued datagram on `socket` and counts them by payload.
fn drain_payloads(socket: &UdpSocket) -> HashMap<Vec<u8>, u64> {
    let mut counts = HashMap::new();
    let mut buf = [0u8; 2048];
    while let Ok(len) = socket.recv(&mut buf) {
        *counts.entry(buf[..len].to_vec()).or_insert(0) += 1;
    }
    counts
}

/// Reuseport sockets on `port` in the receiver namespace with the steering program attached;
/// socket `i` is registered as the reader of CPU `cpu_of_socket[i]`.
fn steered_sockets(
    ns: &Netns,
    steering: Steering,
    port: u16,
    cpu_of_socket: Vec<usize>,
) -> (XdpHandle, Vec<UdpSocket>) {
    let config = XdpConfig {
        steering,
        interfaces: vec![],
        pin_path: PathBuf::from(format!("{}-{port}", ns.pin_path.display())),
        ..ns.config()
    };
    in_netns(&ns.receiver, move || {
        let mut handle = xdp::start(&config).unwrap();
        let sockets: Vec<UdpSocket> = cpu_of_socket
            .iter()
            .map(|_| udp_receiver(Ipv4Addr::UNSPECIFIED.into(), port, true))
            .collect();
        let fds: Vec<(usize, i32)> = cpu_of_socket
            .iter()
            .zip(&sockets)
            .map(|(cpu, s)| (*cpu, s.as_raw_fd()))
            .collect();
        handle.attach_reuseport(port, &fds).unwrap();
        (handle, sockets)
    })
}

/// CPUs this process may run on (ids need not be contiguous under a cpuset).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data filled by sched_getaffinity(0, …) for this thread;
    // CPU_ISSET reads inside it for ids below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|cpu| libc::CPU_ISSET(*cpu, &set))
            .collect()
    }
}

fn pin_current_thread(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity(0, …)
    // changes only the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        rc,
        0,
        "pinning to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

/// `cpu` steering: a datagram goes to the socket registered for the CPU that runs its receive
/// path. On veth that is the sending thread's CPU (the transmit runs the receive softirq
/// inline, no RPS), so a sender pinned to CPU c must land entirely on CPU c's socket. Sockets
/// are registered in reverse order so the CPU → socket table, not the `cpu % count` fallback,
/// decides.
#[test]
fn cpu_steering_delivers_to_the_socket_of_the_receiving_cpu() {
    if !is_root() {
        return;
    }
    let cpus = allowed_cpus();
    let ns = Netns::new();
    const PER_CPU: u64 = 2000;
    let port = 5516;
    let cpu_of_socket: Vec<usize> = cpus.iter().rev().copied().collect();
    let (handle, sockets) = steered_sockets(&ns, Steering::Cpu, port, cpu_of_socket.clone());
    for cpu in cpus {
        in_netns(&ns.sender, move || {
            pin_current_thread(cpu);
            let socket = udp_from(SENDER_V4.into());
            let payload = format!("cpu {cpu}");
            for i in 0..PER_CPU {
                socket
                    .send_to(payload.as_bytes(), (RECEIVER_V4, port))
                    .unwrap();
                if i % 200 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
    }
    settle();
    for (socket, cpu) in sockets.iter().zip(&cpu_of_socket) {
        let got = drain_payloads(socket);
        let expected = HashMap::from([(format!("cpu {cpu}").into_bytes(), PER_CPU)]);
        assert_eq!(
            got, expected,
            "the socket of CPU {cpu} receives exactly what was received on CPU {cpu}"
        );
    }
    drop(handle);
}

/// `hash` steering: every flow (source address and port) stays on one socket, and many flows
/// spread over every socket.
#[test]
fn hash_steering_keeps_each_flow_on_one_socket_and_spreads_flows() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    const SOCKETS: usize = 4;
    const FLOWS: usize = 64;
    const PER_FLOW: u64 = 50;
    let port = 5517;
    let (handle, sockets) = steered_sockets(&ns, Steering::Hash, port, (0..SOCKETS).collect());
    in_netns(&ns.sender, move || {
        let flows: Vec<UdpSocket> = (0..FLOWS).map(|_| udp_from(SENDER_V4.into())).collect();
        for round in 0..PER_FLOW {
            for (flow, socket) in flows.iter().enumerate() {
                socket
                    .send_to(format!("flow {flow}").as_bytes(), (RECEIVER_V4, port))
                    .unwrap();
            }
            if round % 5 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    settle();
    let per_socket: Vec<HashMap<Vec<u8>, u64>> = sockets.iter().map(drain_payloads).collect();
    drop(handle);
    let mut socket_of_flow: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
    for (index, flows) in per_socket.iter().enumerate() {
        for (flow, count) in flows {
            assert_eq!(*count, PER_FLOW, "a flow's datagrams all reach one socket");
            socket_of_flow.entry(flow.clone()).or_default().push(index);
        }
    }
    assert_eq!(socket_of_flow.len(), FLOWS, "every flow arrived");
    assert!(
        socket_of_flow.values().all(|sockets| sockets.len() == 1),
        "no flow is split: {socket_of_flow:?}"
    );
    assert!(
        per_socket.iter().all(|flows| !flows.is_empty()),
        "{FLOWS} flows reach every one of {SOCKETS} sockets: {:?}",
        per_socket.iter().map(HashMap::len).collect::<Vec<_>>()
    );
}

/// `auto` attaches in driver mode, except with a CPUMAP redirect on veth, where native mode
/// loses offloaded checksums of locally sent datagrams (docs/xdp.md): there it picks generic,
/// and everything still arrives, spread over the CPUs.
#[test]
fn auto_mode_on_veth_uses_generic_for_cpu_redirect_and_delivers_everything() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    let config = ns.config();
    let handle = in_netns(&ns.receiver, move || xdp::start(&config).unwrap());
    assert_eq!(handle.attachments()[0].1, "driver");
    drop(handle);

    let config = XdpConfig {
        cpu_redirect: true,
        ..ns.config()
    };
    let handle = in_netns(&ns.receiver, move || xdp::start(&config).unwrap());
    assert_eq!(handle.attachments()[0].1, "generic");
    let receiver = in_netns(&ns.receiver, || {
        udp_receiver(Ipv4Addr::UNSPECIFIED.into(), PORT, false)
    });
    const DATAGRAMS: u64 = 3000;
    in_netns(&ns.sender, move || {
        let socket = udp_from(SENDER_V4.into());
        for i in 0..DATAGRAMS {
            socket.send_to(b"<13>spread", (RECEIVER_V4, PORT)).unwrap();
            if i % 200 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    settle();
    assert_eq!(drain(&receiver).values().sum::<u64>(), DATAGRAMS);
    let stats = handle.stats().unwrap();
    assert_eq!(stats.total(Action::Pass, Proto::Udp).packets, DATAGRAMS);
    drop(handle);
}

/// Not a test on its own: the child process of `restart_after_sigkill_cleans_up_and_works`.
/// Attaches XDP in the namespace named by the environment, reports, then waits to be killed.
#[test]
#[ignore = "helper process, run by detaches_on_drop_and_restarts_after_sigkill"]
fn sigkill_helper() {
    let (Ok(netns), Ok(interface), Ok(pin)) = (
        std::env::var("SLUICE_HELPER_NETNS"),
        std::env::var("SLUICE_HELPER_IF"),
        std::env::var("SLUICE_HELPER_PIN"),
    ) else {
        panic!("sigkill_helper only runs as a child of restart_after_sigkill_cleans_up_and_works");
    };
    enter_netns(&format!("/run/netns/{netns}"));
    let config = XdpConfig {
        interfaces: vec![interface],
        pin_path: pin.into(),
        mode: XdpMode::Generic,
        ..XdpConfig::default()
    };
    let handle = xdp::start(&config).unwrap();
    println!("ATTACHED");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(120));
    drop(handle);
}

#[test]
fn detaches_on_drop_and_restarts_after_sigkill() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    // Normal lifecycle: pins and attachment exist while the handle lives, vanish after.
    let config = ns.config();
    let handle = in_netns(&ns.receiver, move || xdp::start(&config).unwrap());
    assert!(
        ns.pin_path.join("SL_SOURCES").exists()
            && ns
                .pin_path
                .join(format!("link_{}", ns.receiver_if))
                .exists()
    );
    assert!(ns.xdp_attached());
    drop(handle);
    assert!(!ns.pin_path.exists(), "pins removed after exit");
    assert!(ns.xdp_detached_soon(), "XDP detached after exit");

    // A run killed with SIGKILL leaves its pinned link (still attached) behind.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SLUICE_HELPER_NETNS", &ns.receiver)
        .env("SLUICE_HELPER_IF", &ns.receiver_if)
        .env("SLUICE_HELPER_PIN", &ns.pin_path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = lines
            .next()
            .expect("helper exited before attaching")
            .unwrap();
        if line.contains("ATTACHED") {
            break;
        }
        assert!(Instant::now() < deadline, "helper never attached");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        ns.pin_path
            .join(format!("link_{}", ns.receiver_if))
            .exists(),
        "killed run left its link pinned"
    );
    assert!(ns.xdp_attached());

    // The next start removes the leftovers, attaches afresh and counts from zero.
    let config = ns.config();
    let (handle, udp4) = in_netns(&ns.receiver, move || {
        (
            xdp::start(&config).unwrap(),
            udp_receiver(RECEIVER_V4.into(), PORT, false),
        )
    });
    in_netns(&ns.sender, || {
        let socket = udp_from(SENDER_V4.into());
        for _ in 0..50 {
            socket
                .send_to(b"<13>after restart", (RECEIVER_V4, PORT))
                .unwrap();
        }
    });
    settle();
    assert_eq!(drain(&udp4).get(&IpAddr::from(SENDER_V4)), Some(&50));
    assert_eq!(
        handle
            .stats()
            .unwrap()
            .source(SENDER_V4.into())
            .unwrap()
            .packets,
        50
    );
    drop(handle);
    assert!(!ns.pin_path.exists());
    assert!(ns.xdp_detached_soon());
}

#[test]
fn pinned_maps_are_readable_by_another_reader() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    let config = ns.config();
    let (handle, _udp4) = in_netns(&ns.receiver, move || {
        (
            xdp::start(&config).unwrap(),
            udp_receiver(RECEIVER_V4.into(), PORT, false),
        )
    });
    in_netns(&ns.sender, || {
        let socket = udp_from(SENDER_V4.into());
        for _ in 0..77 {
            socket.send_to(b"<13>x", (RECEIVER_V4, PORT)).unwrap();
        }
    });
    settle();
    let pinned = xdp::PinnedMaps::open(&ns.pin_path).unwrap().read().unwrap();
    assert_eq!(pinned.source(SENDER_V4.into()).unwrap().packets, 77);
    assert_eq!(pinned, handle.stats().unwrap());
    let text = sluice::cli::top::render_once(&pinned, None, 10);
    assert!(text.contains("10.200.0.1"), "{text}");
    drop(handle);
}

/// The real `sluice run` in the receiver namespace with `[xdp]` on its veth: XDP counts both
/// senders and drops the one outside the allowlist, steering spreads over two reader sockets,
/// the allowed messages land in the file sink, and SIGTERM detaches and removes the pins.
#[test]
fn daemon_with_xdp_filters_delivers_and_cleans_up() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = format!(
        "data_dir = {data:?}\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\
         [pipeline]\nworkers = 2\n\
         [sources.udp_in]\ntype = \"udp\"\nlisten = \"{RECEIVER_V4}:{PORT}\"\nthreads = 2\n\
         [sinks.raw]\ntype = \"file\"\npath = {out:?}\nschema = \"raw\"\ncompression = \"none\"\n\
         batch_timeout_ms = 100\n\
         [xdp]\ninterfaces = [\"{iface}\"]\nports = [{PORT}]\nallow = [\"10.200.0.0/31\"]\n\
         enforce_allowlist = true\nsteering = \"hash\"\npin_path = {pins:?}\n",
        data = dir.path().join("data").display().to_string(),
        out = out.display().to_string(),
        iface = ns.receiver_if,
        pins = ns.pin_path.display().to_string(),
    );
    let config_path = dir.path().join("sluice.toml");
    std::fs::write(&config_path, config).unwrap();
    let (mut child, log) = daemon_support::started(spawn_in_netns(
        &mut daemon_support::run_command(&config_path),
        &ns.receiver,
    ));
    let text = daemon_support::log_text(&log);
    assert!(text.contains("XDP enabled"), "{text}");
    assert!(text.contains("socket steering attached"), "{text}");
    assert!(ns.xdp_attached(), "XDP program on {}", ns.receiver_if);
    let metrics = daemon_support::logged_addr(&log, "metrics on http://")
        .expect("metrics address in the log");

    const EACH: u64 = 500;
    in_netns(&ns.sender, || {
        let allowed = udp_from(SENDER_V4.into());
        let denied = udp_from(OTHER_V4.into());
        let to = SocketAddr::new(RECEIVER_V4.into(), PORT);
        for i in 0..EACH {
            allowed
                .send_to(format!("<13>allowed {i}").as_bytes(), to)
                .unwrap();
            denied
                .send_to(format!("<13>denied {i}").as_bytes(), to)
                .unwrap();
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    settle();
    let stats = xdp::PinnedMaps::open(&ns.pin_path).unwrap().read().unwrap();
    let other = stats.source(OTHER_V4.into()).unwrap();
    assert_eq!((other.packets, other.dropped_allowlist), (EACH, EACH));
    let sender = stats.source(SENDER_V4.into()).unwrap();
    assert_eq!((sender.packets, sender.dropped_allowlist), (EACH, 0));

    // The daemon exports the XDP counters every 2 s.
    let receiver = ns.receiver.clone();
    let scrape = move || {
        in_netns(&receiver, move || {
            daemon_support::scrape_metrics(metrics, None)
        })
    };
    let started = Instant::now();
    loop {
        let body = scrape();
        let dropped = daemon_support::metric_value(
            &body,
            "sluice_xdp_packets_total",
            &[("action", "drop_allowlist"), ("proto", "udp")],
        ) == EACH;
        if body.contains("sluice_xdp_enabled 1") && dropped {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "XDP metrics not exported:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    daemon_support::stop_cleanly(&mut child, &log, Duration::from_secs(60));
    assert!(
        !ns.pin_path.exists(),
        "pins left behind: {:?}",
        std::fs::read_dir(&ns.pin_path).map(|d| d.count())
    );
    assert!(ns.xdp_detached_soon(), "XDP still attached after SIGTERM");

    let mut lines = Vec::new();
    for entry in std::fs::read_dir(&out).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        lines.extend(
            text.lines()
                .map(|l| serde_json::from_str::<String>(l).unwrap()),
        );
    }
    lines.sort();
    let mut want: Vec<String> = (0..EACH).map(|i| format!("<13>allowed {i}")).collect();
    want.sort();
    assert_eq!(lines, want, "exactly the allowed messages, each once");
}

#[allow(dead_code)]
fn keep_imports_used(_: &XdpHandle) {}
