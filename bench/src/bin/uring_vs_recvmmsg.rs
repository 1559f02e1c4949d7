//! The io_uring UDP reader against a drain-only `recvmmsg` loop, same run, same sender.
//!
//! `cargo run --release -p sluice-bench --bin uring_vs_recvmmsg -- [MESSAGES] [BYTES]`
//!
//! A sender thread pushes MESSAGES datagrams of BYTES each to 127.0.0.1 with `sendmmsg` as
//! fast as it can; the receiver under test runs on its own thread. Reported: datagrams/s,
//! receiver CPU-seconds per million datagrams (its thread's rusage; for io_uring also the
//! consumer thread that takes the batches), and loss (kernel drops + queue drops).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use sluice::frame::{FrameLimits, Framing};
use sluice::net::drops::KernelDrops;
use sluice::net::uring::{self, UringOptions};
use sluice::net::{FrameBatch, ReaderContext};

fn thread_cpu() -> Duration {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer to a live rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn socket() -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let size: libc::c_int = 32 << 20;
    // SAFETY: a live c_int of the stated size (SO_RCVBUFFORCE needs root; else rmem_max caps).
    let forced = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            4,
        )
    } == 0;
    if !forced {
        let _ = s.set_recv_buffer_size(size as usize);
    }
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.into()
}

fn send(target: SocketAddr, messages: u64, bytes: usize) {
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.connect(target).unwrap();
    let payload: Vec<u8> = (0..bytes).map(|i| b'A' + (i % 26) as u8).collect();
    const BATCH: usize = 64;
    let mut iov: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut _,
            iov_len: payload.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: mmsghdr is plain data; all-zero is valid.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut sent = 0u64;
    while sent < messages {
        let n = (messages - sent).min(BATCH as u64) as u32;
        // SAFETY: msgs/iov point at live buffers of the stated sizes.
        let r = unsafe { libc::sendmmsg(tx.as_raw_fd(), msgs.as_mut_ptr(), n, 0) };
        if r > 0 {
            sent += r as u64;
        }
    }
}

struct Outcome {
    received: u64,
    wall: Duration,
    cpu: Duration,
    kernel_drops: u64,
    queue_drops: u64,
}

fn report(name: &str, messages: u64, o: &Outcome) {
    let rate = o.received as f64 / o.wall.as_secs_f64();
    let cpu_per_m = o.cpu.as_secs_f64() / (o.received.max(1) as f64 / 1e6);
    println!(
        "{name:<22} received {:>9} / {messages}  {:>9.0} datagrams/s  {:>6.3} CPU-s per million  loss: kernel {} queue {}",
        o.received, rate, cpu_per_m, o.kernel_drops, o.queue_drops
    );
}

/// Waits for the receive count to settle after the sender is done.
fn settle(count: &AtomicU64) -> Instant {
    let mut last = count.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(20));
        let now = count.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_millis(300) {
            return last_change;
        }
    }
}

fn run_uring(messages: u64, bytes: usize) -> Outcome {
    let rx = socket();
    let target = rx.local_addr().unwrap();
    let mut drops = KernelDrops::new(&rx.as_fd(), "bench").unwrap();
    let (to_worker, batches) = crossbeam::channel::bounded::<FrameBatch>(1024);
    let (recycle, recycled) = crossbeam::channel::bounded(1024);
    let shutdown = Arc::new(AtomicBool::new(false));
    let ctx = ReaderContext {
        source_index: 0,
        source_name: Arc::from("bench"),
        core: 0,
        limits: FrameLimits::default(),
        framing: Framing::Lf,
        batch_max_frames: 1024,
        to_worker,
        recycled,
        shutdown: shutdown.clone(),
        max_connections: 1,
        pin: false,
        counters: sluice::metrics::ReaderCounters::register("bench"),
        guard: sluice::net::guard::ConnectionGuard::unlimited(),
        overflow: None,
        linger: sluice::net::DEFAULT_READER_LINGER,
    };
    let count = Arc::new(AtomicU64::new(0));
    let reader = thread::spawn(move || {
        let t0 = thread_cpu();
        let totals = uring::run_udp_with(rx, ctx, &UringOptions::default()).unwrap();
        (thread_cpu() - t0, totals)
    });
    let consumer = {
        let count = count.clone();
        thread::spawn(move || {
            let t0 = thread_cpu();
            for batch in batches.iter() {
                count.fetch_add(batch.len() as u64, Ordering::Relaxed);
                let _ = recycle.try_send(batch);
            }
            thread_cpu() - t0
        })
    };
    thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    send(target, messages, bytes);
    let end = settle(&count);
    shutdown.store(true, Ordering::Relaxed);
    let (reader_cpu, totals) = reader.join().unwrap();
    let consumer_cpu = consumer.join().unwrap();
    Outcome {
        received: count.load(Ordering::Relaxed),
        wall: end - start,
        cpu: reader_cpu + consumer_cpu,
        kernel_drops: drops.poll().unwrap(),
        queue_drops: totals.dropped_queue_full,
    }
}

fn run_recvmmsg(messages: u64, bytes: usize) -> Outcome {
    let rx = socket();
    let target = rx.local_addr().unwrap();
    let mut drops = KernelDrops::new(&rx.as_fd(), "bench").unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, count) = (stop.clone(), count.clone());
        thread::spawn(move || {
            let t0 = thread_cpu();
            const BATCH: usize = 64;
            let mut bufs = vec![[0u8; 65536]; BATCH];
            let mut iov: Vec<libc::iovec> = bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iov
                .iter_mut()
                .map(|v| {
                    // SAFETY: mmsghdr is plain data; all-zero is valid.
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_iov = v;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: msgs point at live buffers of the stated sizes.
                let n = unsafe {
                    libc::recvmmsg(
                        rx.as_raw_fd(),
                        msgs.as_mut_ptr(),
                        BATCH as u32,
                        libc::MSG_WAITFORONE,
                        std::ptr::null_mut(),
                    )
                };
                if n > 0 {
                    count.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            thread_cpu() - t0
        })
    };
    thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    send(target, messages, bytes);
    let end = settle(&count);
    stop.store(true, Ordering::Relaxed);
    let cpu = reader.join().unwrap();
    Outcome {
        received: count.load(Ordering::Relaxed),
        wall: end - start,
        cpu,
        kernel_drops: drops.poll().unwrap(),
        queue_drops: 0,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let messages: u64 = args
        .next()
        .map_or(1_000_000, |a| a.parse().expect("MESSAGES"));
    let bytes: usize = args.next().map_or(700, |a| a.parse().expect("BYTES"));
    if let Err(reason) = uring::probe() {
        eprintln!("io_uring unavailable: {reason}");
        std::process::exit(2);
    }
    println!("{messages} datagrams of {bytes} bytes, sendmmsg sender, 127.0.0.1");
    for round in 1..=2 {
        println!("round {round}");
        let base = run_recvmmsg(messages, bytes);
        report("recvmmsg drain-only", messages, &base);
        let ring = run_uring(messages, bytes);
        report("io_uring reader+batch", messages, &ring);
        println!(
            "  ratio io_uring/recvmmsg: CPU per message {:.2}x",
            (ring.cpu.as_secs_f64() / ring.received.max(1) as f64)
                / (base.cpu.as_secs_f64() / base.received.max(1) as f64)
        );
    }
}
