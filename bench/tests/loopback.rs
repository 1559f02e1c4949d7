//! Sender and drain receiver over real loopback sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_bench::corpus::{Corpus, CorpusSpec};
use sluice_bench::drain::{self, CountFraming, DrainConfig};
use sluice_bench::send::{self, Proto, SendConfig, TcpFraming};

fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

fn corpus() -> Corpus {
    Corpus::generate(&CorpusSpec {
        seed: 7,
        messages: 257,
        mix: "cef=70,json=30".parse().unwrap(),
        rfc5424_percent: 50,
    })
}

/// Runs a drain on `proto`, sends `count` messages to it, returns (sent, received).
fn round_trip(
    proto: Proto,
    framing: TcpFraming,
    connections: usize,
    count: u64,
    rate: Option<u64>,
) -> (u64, u64) {
    let port = free_port(proto == Proto::Udp);
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = DrainConfig {
        listen,
        proto,
        framing: CountFraming::Auto,
        receive_buffer_bytes: 8 << 20,
        progress_file: None,
        expect: Some(count),
        idle_exit: Some(Duration::from_secs(2)),
    };
    let stop = AtomicBool::new(false);
    let ready = AtomicBool::new(false);
    let corpus = corpus();
    std::thread::scope(|scope| {
        let receiver = scope.spawn(|| drain::run(&config, &stop, &ready).unwrap());
        while !ready.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let sent = send::run(
            &corpus,
            &SendConfig {
                target: listen,
                proto,
                framing,
                connections,
                rate,
                count: Some(count),
                duration: None,
                batch: 32,
                cpu: None,
            },
        )
        .unwrap();
        let received = receiver.join().unwrap();
        (sent.sent, received.messages)
    })
}

#[test]
fn tcp_lf_over_several_connections_counts_every_message() {
    assert_eq!(
        round_trip(Proto::Tcp, TcpFraming::Lf, 3, 20_000, None),
        (20_000, 20_000)
    );
}

#[test]
fn tcp_octet_counting_counts_every_message() {
    assert_eq!(
        round_trip(Proto::Tcp, TcpFraming::Octet, 2, 20_000, None),
        (20_000, 20_000)
    );
}

#[test]
fn udp_at_a_moderate_rate_arrives_whole() {
    // 8 MiB of receive buffer holds far more than this paced trickle.
    assert_eq!(
        round_trip(Proto::Udp, TcpFraming::Lf, 1, 5_000, Some(20_000)),
        (5_000, 5_000)
    );
}

#[test]
fn pacing_holds_a_low_rate() {
    let port = free_port(true);
    let receiver = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    let corpus = corpus();
    let report = send::run(
        &corpus,
        &SendConfig {
            target: format!("127.0.0.1:{port}").parse().unwrap(),
            proto: Proto::Udp,
            framing: TcpFraming::Lf,
            connections: 1,
            rate: Some(2_000),
            count: Some(1_000),
            duration: None,
            batch: 64,
            cpu: None,
        },
    )
    .unwrap();
    drop(receiver);
    assert_eq!(report.sent, 1_000);
    // 1000 messages at 2000/s take 0.5 s; pacing sleeps, so never faster, and allow scheduler slack.
    assert!(
        report.elapsed_secs >= 0.49,
        "too fast: {:.3} s",
        report.elapsed_secs
    );
    assert!(
        report.elapsed_secs < 0.8,
        "too slow: {:.3} s",
        report.elapsed_secs
    );
}

#[test]
fn duration_bounds_a_run() {
    let port = free_port(true);
    let _receiver = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    let report = send::run(
        &corpus(),
        &SendConfig {
            target: format!("127.0.0.1:{port}").parse().unwrap(),
            proto: Proto::Udp,
            framing: TcpFraming::Lf,
            connections: 1,
            rate: Some(1_000),
            count: None,
            duration: Some(Duration::from_millis(300)),
            batch: 64,
            cpu: None,
        },
    )
    .unwrap();
    assert!((250..=320).contains(&report.sent), "sent {}", report.sent);
}
