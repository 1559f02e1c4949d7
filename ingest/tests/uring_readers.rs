//! The io_uring readers against real sockets on 127.0.0.1.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender, bounded};
use sluice::frame::{FrameEvent, FrameLimits, Framing, OversizePolicy};
use sluice::net::drops::KernelDrops;
use sluice::net::uring::{self, ConnectionFramer, Linger, ReaderTotals, UringOptions};
use sluice::net::{FrameBatch, ReaderContext};

struct Harness {
    ctx: Option<ReaderContext>,
    batches: Receiver<FrameBatch>,
    recycle: Sender<FrameBatch>,
    shutdown: Arc<AtomicBool>,
}

fn harness(queue: usize, batch_max_frames: usize, limits: FrameLimits) -> Harness {
    let (to_worker, batches) = bounded(queue);
    let (recycle, recycled) = bounded(queue + 4);
    let shutdown = Arc::new(AtomicBool::new(false));
    let ctx = ReaderContext {
        source_index: 3,
        source_name: Arc::from("test"),
        core: 0,
        limits,
        framing: Framing::Lf,
        batch_max_frames,
        to_worker,
        recycled,
        shutdown: shutdown.clone(),
        max_connections: sluice::net::uring::DEFAULT_MAX_CONNECTIONS,
        pin: false,
        counters: sluice::net::ReaderCounters::register("test"),
        guard: sluice::net::guard::ConnectionGuard::unlimited(),
        overflow: None,
        linger: sluice::net::DEFAULT_READER_LINGER,
    };
    Harness {
        ctx: Some(ctx),
        batches,
        recycle,
        shutdown,
    }
}

fn udp_socket(rcvbuf: usize) -> UdpSocket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    // SO_RCVBUFFORCE (root) gets past net.core.rmem_max; otherwise take what is allowed.
    let force = rcvbuf as libc::c_int;
    // SAFETY: a live c_int of the stated size.
    let forced = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&force as *const libc::c_int).cast(),
            4,
        )
    } == 0;
    if !forced {
        socket.set_recv_buffer_size(rcvbuf).unwrap();
    }
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.into()
}

/// Message `i` of a sender: deterministic bytes, never ending in LF/CR/NUL.
fn payload(i: u64, len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend((0..len).map(|j| b'a' + ((i as usize + j) % 26) as u8));
}

fn udp_size(i: u64) -> usize {
    match i % 1000 {
        0 => 65507 - (i / 1000 % 100) as usize,
        1..=9 => (i % 1000) as usize,
        500 => 9000 + (i % 7000) as usize,
        _ => 1 + (i as usize * 7919) % 1500,
    }
}

#[test]
fn udp_200k_datagrams_arrive_intact_with_peers() {
    const SENDERS: u64 = 2;
    const PER_SENDER: u64 = 100_000;
    const WINDOW: u64 = 1500;
    let rx = udp_socket(32 << 20);
    let target = rx.local_addr().unwrap();
    let mut kernel_drops = KernelDrops::new(&rx, "test").unwrap();
    // The queue holds more batches than the window has datagrams: the worker never lags enough
    // to fill it (a full queue pauses the reader: see udp_full_queue_pauses_reading_and_loses_nothing).
    let mut h = harness(
        2048,
        512,
        FrameLimits {
            max_frame_bytes: 65536,
            oversize: OversizePolicy::Truncate,
        },
    );
    let ctx = h.ctx.take().unwrap();
    let reader = thread::spawn(move || uring::run_udp_with(rx, ctx, &UringOptions::default()));

    let delivered = Arc::new(AtomicU64::new(0));
    let senders: Vec<UdpSocket> = (0..SENDERS)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let peers: Vec<SocketAddr> = senders.iter().map(|s| s.local_addr().unwrap()).collect();

    // Loopback may reorder datagrams of one sender (its thread can move between CPUs, each
    // with its own backlog queue), so the check is exact as a multiset per peer.
    fn digest(bytes: &[u8]) -> u64 {
        use std::hash::{DefaultHasher, Hasher};
        let mut h = DefaultHasher::new();
        h.write(bytes);
        h.finish()
    }
    let mut expected: HashMap<(SocketAddr, u64), u32> = HashMap::new();
    let mut buf = Vec::new();
    for i in 0..PER_SENDER {
        payload(i, udp_size(i), &mut buf);
        let d = digest(&buf);
        for p in &peers {
            *expected.entry((*p, d)).or_default() += 1;
        }
    }
    let worker = {
        let (batches, recycle, delivered) =
            (h.batches.clone(), h.recycle.clone(), delivered.clone());
        thread::spawn(move || {
            let mut seen = 0u64;
            let mut batch_count = 0u64;
            while seen < SENDERS * PER_SENDER {
                let Ok(batch) = batches.recv_timeout(Duration::from_secs(10)) else {
                    eprintln!("stalled after {seen} datagrams");
                    break;
                };
                batch_count += 1;
                assert_eq!(batch.source, 3);
                assert!(batch.received_at.is_some());
                for f in &batch.frames {
                    let peer = f.peer.expect("every datagram has its source address");
                    let left = expected.get_mut(&(peer, digest(batch.frame(f))));
                    let left = left.unwrap_or_else(|| {
                        panic!("unexpected datagram of {} bytes from {peer}", f.len)
                    });
                    assert!(
                        *left > 0,
                        "datagram of {} bytes from {peer} delivered twice",
                        f.len
                    );
                    *left -= 1;
                    assert!(!f.truncated);
                    seen += 1;
                }
                delivered.fetch_add(batch.len() as u64, Ordering::Relaxed);
                let _ = recycle.try_send(batch);
            }
            (
                seen,
                batch_count,
                expected.values().map(|n| u64::from(*n)).sum::<u64>(),
            )
        })
    };

    // Moderate rate: each sender keeps at most WINDOW datagrams in flight (sent but not yet
    // handed to the worker), so the socket buffer never overflows.
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(120);
    thread::scope(|s| {
        for sender in &senders {
            let (sent, delivered, worker) = (sent.clone(), delivered.clone(), &worker);
            s.spawn(move || {
                let mut buf = Vec::new();
                for i in 0..PER_SENDER {
                    while sent.load(Ordering::Relaxed) >= delivered.load(Ordering::Relaxed) + WINDOW
                    {
                        // The worker stops on a mismatch or a stall: stop sending, report below.
                        if worker.is_finished() || Instant::now() > deadline {
                            return;
                        }
                        thread::sleep(Duration::from_micros(200));
                    }
                    payload(i, udp_size(i), &mut buf);
                    sender.send_to(&buf, target).unwrap();
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let (seen, batch_count, missing) = worker.join().unwrap();
    let drops = kernel_drops.poll().unwrap();
    h.shutdown.store(true, Ordering::Relaxed);
    let totals: ReaderTotals = reader.join().unwrap().unwrap();
    assert_eq!(
        (seen, missing, drops),
        (SENDERS * PER_SENDER, 0, 0),
        "delivered, missing, kernel drops; reader {totals:?}"
    );
    assert_eq!(totals.messages, SENDERS * PER_SENDER);
    let bytes: u64 = (0..PER_SENDER).map(|i| udp_size(i) as u64).sum::<u64>() * SENDERS;
    assert_eq!(totals.bytes, bytes);
    assert_eq!(totals.dropped_queue_full, 0);
    assert_eq!(totals.batches, batch_count);
    assert!(batch_count < SENDERS * PER_SENDER, "datagrams are batched");
}

fn udp_one_shot(
    options: UringOptions,
    limits: FrameLimits,
    datagrams: &[&[u8]],
) -> (Vec<(Vec<u8>, bool)>, ReaderTotals) {
    let rx = udp_socket(1 << 20);
    let target = rx.local_addr().unwrap();
    let mut h = harness(16, 64, limits);
    let ctx = h.ctx.take().unwrap();
    let reader = thread::spawn(move || uring::run_udp_with(rx, ctx, &options));
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    for d in datagrams {
        tx.send_to(d, target).unwrap();
    }
    let mut frames = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(batch) = h.batches.recv_timeout(Duration::from_millis(100)) {
            for f in &batch.frames {
                assert_eq!(f.peer, Some(tx.local_addr().unwrap()));
                frames.push((batch.frame(f).to_vec(), f.truncated));
            }
        }
        if frames.len() == datagrams.len() {
            break;
        }
    }
    // Rejected datagrams produce no frame: give them a moment to be counted.
    thread::sleep(Duration::from_millis(100));
    h.shutdown.store(true, Ordering::Relaxed);
    (frames, reader.join().unwrap().unwrap())
}

#[test]
fn udp_truncation_is_flagged() {
    let big = vec![b'x'; 2000];
    let limits = FrameLimits {
        max_frame_bytes: 65536,
        oversize: OversizePolicy::Truncate,
    };
    // A 1 KiB buffer cannot hold a 2000-byte datagram: the kernel cuts it (MSG_TRUNC).
    let small_buffers = UringOptions {
        udp_buffer_bytes: 1024,
        ..Default::default()
    };
    let (frames, totals) = udp_one_shot(small_buffers, limits, &[b"short\n", &big]);
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0], (b"short".to_vec(), false));
    assert!(frames[1].1, "cut by the kernel");
    assert!(frames[1].0.len() < 1024 && frames[1].0.iter().all(|b| *b == b'x'));
    assert_eq!(
        totals.bytes,
        6 + 2000,
        "bytes count what was sent, not what fitted"
    );
    assert_eq!(
        totals.truncated, 1,
        "counted in sluice_truncated_messages_total"
    );

    // Longer than max_frame_bytes: truncated to the limit, or rejected and counted.
    let limits = FrameLimits {
        max_frame_bytes: 100,
        oversize: OversizePolicy::Truncate,
    };
    let (frames, totals) = udp_one_shot(UringOptions::default(), limits, &[&big]);
    assert_eq!(frames, vec![(vec![b'x'; 100], true)]);
    assert_eq!(totals.truncated, 1);
    let limits = FrameLimits {
        max_frame_bytes: 100,
        oversize: OversizePolicy::Reject,
    };
    let (frames, totals) = udp_one_shot(UringOptions::default(), limits, &[&big, b"ok"]);
    assert_eq!(frames, vec![(b"ok".to_vec(), false)]);
    assert_eq!(
        (totals.messages, totals.dropped_oversize, totals.truncated),
        (2, 1, 0)
    );
}

#[test]
fn udp_full_queue_pauses_reading_and_loses_nothing() {
    let rx = udp_socket(8 << 20);
    let target = rx.local_addr().unwrap();
    // One-batch queue and, at first, nobody draining it: the reader must stop reading and
    // leave the rest in the socket's receive buffer instead of reading and dropping.
    let mut h = harness(1, 10, FrameLimits::default());
    let ctx = h.ctx.take().unwrap();
    let reader = thread::spawn(move || uring::run_udp_with(rx, ctx, &UringOptions::default()));
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..500 {
        tx.send_to(format!("message {i}").as_bytes(), target)
            .unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < 500 && Instant::now() < deadline {
        if let Ok(batch) = h.batches.recv_timeout(Duration::from_millis(100)) {
            for f in &batch.frames {
                seen.push(String::from_utf8(batch.frame(f).to_vec()).unwrap());
            }
        }
    }
    h.shutdown.store(true, Ordering::Relaxed);
    let totals = reader.join().unwrap().unwrap();
    let want: Vec<String> = (0..500).map(|i| format!("message {i}")).collect();
    assert_eq!(seen, want);
    assert_eq!((totals.messages, totals.dropped_queue_full), (500, 0));
}

/// A UDP reader whose worker is busy: `queued` empty batches it has not taken yet wait in its
/// queue. Returns the harness, the reader's address and its thread.
fn udp_reader_with_busy_worker(
    batch_max_frames: usize,
    queued: usize,
) -> (
    Harness,
    SocketAddr,
    thread::JoinHandle<std::io::Result<ReaderTotals>>,
) {
    let rx = udp_socket(8 << 20);
    let target = rx.local_addr().unwrap();
    let mut h = harness(64, batch_max_frames, FrameLimits::default());
    let ctx = h.ctx.take().unwrap();
    for _ in 0..queued {
        ctx.to_worker.send(FrameBatch::default()).unwrap();
    }
    let reader = thread::spawn(move || uring::run_udp_with(rx, ctx, &UringOptions::default()));
    (h, target, reader)
}

#[test]
fn udp_holds_the_batch_while_the_worker_is_busy() {
    let (h, target, reader) = udp_reader_with_busy_worker(256, 1);
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Spaced well below the 1 ms hold, so each datagram is likely a wake-up of its own: handed
    // over per wake-up this would be dozens of batches.
    let sending = Instant::now();
    // Gaps longer than the 1 ms hold (HANDOFF_HOLD), which a loaded host makes: the reader
    // rightly hands its batch over when nothing new came within the hold.
    let mut long_gaps = 0;
    let mut last_send = Instant::now();
    for i in 0..60 {
        if last_send.elapsed() >= Duration::from_micros(900) {
            long_gaps += 1;
        }
        tx.send_to(format!("held {i}").as_bytes(), target).unwrap();
        last_send = Instant::now();
        thread::sleep(Duration::from_micros(150));
    }
    let sent_over = sending.elapsed();
    thread::sleep(Duration::from_millis(50));
    let mut queued: Vec<FrameBatch> = h.batches.try_iter().collect();
    assert!(queued[0].is_empty(), "the busy worker's batch comes first");
    // On a loaded host the last held batch may not have reached its max age yet.
    while queued[1..].iter().map(FrameBatch::len).sum::<usize>() < 60 {
        match h.batches.recv_timeout(Duration::from_secs(2)) {
            Ok(batch) => queued.push(batch),
            Err(_) => break,
        }
    }
    let held: Vec<usize> = queued[1..].iter().map(FrameBatch::len).collect();
    assert_eq!(held.iter().sum::<usize>(), 60);
    // Each held batch goes over at the latest when it is 20 ms old (HANDOFF_MAX_AGE), so a
    // send stretched by a loaded host may span more of them; per wake-up it would be dozens.
    let age_windows = sent_over.as_millis() as usize / 20;
    assert!(
        held.len() <= 6.max(age_windows + 2) + long_gaps,
        "a busy worker gets few full batches, not one per wake-up: {held:?} over {sent_over:?} \
         with {long_gaps} gaps longer than the hold"
    );
    // The queue is empty now (the worker is idle): the next datagram is handed over at once.
    tx.send_to(b"prompt", target).unwrap();
    let batch = h
        .batches
        .recv_timeout(Duration::from_millis(500))
        .expect("an idle worker gets the datagram without waiting for more");
    assert_eq!(batch.frame(&batch.frames[0]), b"prompt");
    h.shutdown.store(true, Ordering::Relaxed);
    let totals = reader.join().unwrap().unwrap();
    assert_eq!(totals.messages, 61);
}

#[test]
fn udp_held_batch_goes_over_within_its_max_age() {
    // Batches of up to 1000 frames, and a worker that stays busy throughout.
    let (h, target, reader) = udp_reader_with_busy_worker(1000, 2);
    // A datagram every 0.3 ms: every wake-up finds new input, so only the age bound (20 ms)
    // can end the batch before the sender stops (after ≈ 150 ms and 500 datagrams).
    let sender = thread::spawn(move || {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..500 {
            tx.send_to(format!("trickle {i}").as_bytes(), target)
                .unwrap();
            thread::sleep(Duration::from_micros(300));
        }
    });
    let started = Instant::now();
    // Looked at without taking anything: the queue never runs empty, so the worker stays busy.
    // The deadline is generous: the frame count below is what tells a held batch from one
    // that waited for the sender to stop.
    while h.batches.len() < 3 && started.elapsed() < Duration::from_secs(2) {
        thread::sleep(Duration::from_millis(1));
    }
    // At least three: on a loaded host this thread may oversleep by more than the max age,
    // and by then a second held batch can have followed the first.
    assert!(
        h.batches.len() >= 3,
        "a held batch is handed over within its max age"
    );
    let elapsed = started.elapsed();
    let busy: Vec<FrameBatch> = (0..2).map(|_| h.batches.recv().unwrap()).collect();
    assert!(busy.iter().all(FrameBatch::is_empty));
    let first = h.batches.recv().unwrap();
    // Without the age bound the batch would grow until the sender stops: all 500 frames.
    // The frame count, not the wall clock, is the check: a loaded host slows the sender too.
    assert!(
        first.len() < 400,
        "held {} frames for {elapsed:?}",
        first.len()
    );
    sender.join().unwrap();
    h.shutdown.store(true, Ordering::Relaxed);
    let totals = reader.join().unwrap().unwrap();
    assert_eq!(totals.messages, 500);
}

/// Sends 40 messages 1 ms apart (UDP datagrams, or lines over one TCP connection) to a reader
/// with `options` and an idle worker; returns how many hand-offs carried them, the longest
/// time from a send to the hand-off that carried it, and how long the sending took.
fn trickle(tcp: bool, options: UringOptions) -> (usize, Duration, Duration) {
    const MESSAGES: usize = 40;
    let mut h = harness(64, 1000, FrameLimits::default());
    let ctx = h.ctx.take().unwrap();
    let (reader, send): (thread::JoinHandle<_>, Box<dyn FnMut(usize) + Send>) = if tcp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let r = thread::spawn(move || {
            uring::run_tcp_with(listener, ctx, &options, LineFramer::default)
        });
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        (
            r,
            Box::new(move |i| {
                stream
                    .write_all(format!("trickle {i}\n").as_bytes())
                    .unwrap()
            }),
        )
    } else {
        // The reader caps its linger to what a quarter of the socket buffer holds at 10 Gb/s:
        // ≈ 9 ms with 64 MiB (root: SO_RCVBUFFORCE).
        let rx = udp_socket(64 << 20);
        let target = rx.local_addr().unwrap();
        let r = thread::spawn(move || uring::run_udp_with(rx, ctx, &options));
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        (
            r,
            Box::new(move |i| {
                tx.send_to(format!("trickle {i}").as_bytes(), target)
                    .unwrap();
            }),
        )
    };
    let batches = h.batches.clone();
    let collector = thread::spawn(move || {
        let mut arrivals = Vec::new();
        while arrivals.len() < MESSAGES {
            let batch = batches
                .recv_timeout(Duration::from_secs(10))
                .expect("the trickle stopped arriving");
            let now = Instant::now();
            for f in &batch.frames {
                let text = std::str::from_utf8(batch.frame(f)).unwrap();
                let i: usize = text.trim_end().rsplit(' ').next().unwrap().parse().unwrap();
                assert_eq!(i, arrivals.len(), "in order");
                arrivals.push(now);
            }
        }
        arrivals
    });
    let mut sent = Vec::with_capacity(MESSAGES);
    let mut send = send;
    for i in 0..MESSAGES {
        sent.push(Instant::now());
        send(i);
        thread::sleep(Duration::from_millis(1));
    }
    let sent_over = sent[0].elapsed();
    let arrivals = collector.join().unwrap();
    h.shutdown.store(true, Ordering::Relaxed);
    drop(send);
    reader.join().unwrap().unwrap();
    let mut handoffs = arrivals.clone();
    handoffs.dedup();
    let latest = sent
        .iter()
        .zip(&arrivals)
        .map(|(s, a)| a.saturating_duration_since(*s))
        .max()
        .unwrap();
    (handoffs.len(), latest, sent_over)
}

/// A trickle (a message per millisecond) wakes a lingering reader once per few dozen messages
/// instead of once per message, and no message waits much longer than the linger.
#[test]
fn trickles_linger_into_few_hand_offs_within_the_linger() {
    for tcp in [false, true] {
        let linger = Duration::from_millis(8);
        let (handoffs, latest, sent_over) =
            trickle(tcp, UringOptions::default().with_linger(linger));
        // The first message goes over at once; then one hand-off per linger while the ≈ 40 ms
        // of sending lasts: about six, a few more on a busy machine, which also stretches the
        // sending.
        let lingers = (sent_over.as_millis() / linger.as_millis()) as usize;
        assert!(
            handoffs <= 14.max(2 * lingers),
            "tcp {tcp}: {handoffs} hand-offs with a linger, sending took {sent_over:?}"
        );
        assert!(
            latest < linger + Duration::from_millis(150),
            "tcp {tcp}: a message waited {latest:?}"
        );
        // Without it, each message (or two) is a hand-off of its own.
        let (handoffs, _, _) = trickle(tcp, UringOptions::default().with_linger(Duration::ZERO));
        assert!(
            handoffs >= 15,
            "tcp {tcp}: {handoffs} hand-offs without a linger"
        );
    }
}

/// A connection's accept is not traffic: the connection's first message goes over at once
/// instead of waiting out a linger the accept started.
#[test]
fn a_new_connections_first_message_does_not_wait_for_the_linger() {
    // At the reader's shutdown poll, the longest a wait lasts.
    let linger = Duration::from_millis(50);
    let mut h = harness(64, 1000, FrameLimits::default());
    let ctx = h.ctx.take().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let options = UringOptions::default().with_linger(linger);
    let reader =
        thread::spawn(move || uring::run_tcp_with(listener, ctx, &options, LineFramer::default));
    let send_one = |text: &[u8]| {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        // The reader takes the accept in a wake-up of its own.
        thread::sleep(Duration::from_millis(5));
        let sent = Instant::now();
        stream.write_all(text).unwrap();
        let batch = h
            .batches
            .recv_timeout(Duration::from_secs(5))
            .expect("the message arrives");
        assert_eq!(batch.frames.len(), 1);
        (sent.elapsed(), stream)
    };
    // The first connection proves the reader is up; the others arrive on an idle reader.
    let (_, first) = send_one(b"warm-up\n");
    let mut waits = Vec::new();
    let mut open = vec![first];
    // Three tries, the shortest counts: waiting out the linger would make every one ≥ 50 ms,
    // while a loaded host can delay any single one.
    for _ in 0..3 {
        thread::sleep(linger * 2);
        let (waited, stream) = send_one(b"first\n");
        waits.push(waited);
        open.push(stream);
    }
    let shortest = *waits.iter().min().unwrap();
    assert!(
        shortest < Duration::from_millis(25),
        "the first message waited {waits:?} (linger {linger:?})"
    );
    h.shutdown.store(true, Ordering::Relaxed);
    drop(open);
    reader.join().unwrap().unwrap();
}

#[test]
fn readers_stop_within_a_few_shutdown_polls() {
    for tcp in [false, true] {
        let mut h = harness(4, 16, FrameLimits::default());
        let ctx = h.ctx.take().unwrap();
        let reader = if tcp {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let r = thread::spawn(move || {
                uring::run_tcp_with(listener, ctx, &UringOptions::default(), LineFramer::default)
            });
            // An idle open connection must not hold shutdown up.
            let conn = TcpStream::connect(addr).unwrap();
            thread::sleep(Duration::from_millis(150));
            (r, Some(conn))
        } else {
            let rx = udp_socket(1 << 20);
            (
                thread::spawn(move || uring::run_udp_with(rx, ctx, &UringOptions::default())),
                None,
            )
        };
        thread::sleep(Duration::from_millis(100));
        let asked = Instant::now();
        h.shutdown.store(true, Ordering::Relaxed);
        reader.0.join().unwrap().unwrap();
        let took = asked.elapsed();
        // The readers look every 50 ms (SHUTDOWN_POLL); the rest is slack for a loaded host.
        assert!(
            took < Duration::from_millis(500),
            "tcp={tcp}: shutdown took {took:?}"
        );
    }
}

/// A minimal LF framer for exercising the reader independently of the real one.
#[derive(Default)]
struct LineFramer {
    partial: Vec<u8>,
}

impl ConnectionFramer for LineFramer {
    fn feed(&mut self, mut data: &[u8], emit: &mut dyn FnMut(FrameEvent<'_>)) {
        while let Some(at) = data.iter().position(|b| *b == b'\n') {
            if self.partial.is_empty() {
                emit(FrameEvent::Frame {
                    bytes: &data[..at],
                    truncated: false,
                });
            } else {
                self.partial.extend_from_slice(&data[..at]);
                emit(FrameEvent::Frame {
                    bytes: &self.partial,
                    truncated: false,
                });
                self.partial.clear();
            }
            data = &data[at + 1..];
        }
        self.partial.extend_from_slice(data);
    }

    fn finish(&mut self, emit: &mut dyn FnMut(FrameEvent<'_>)) {
        if !self.partial.is_empty() {
            emit(FrameEvent::Frame {
                bytes: &self.partial,
                truncated: false,
            });
            self.partial.clear();
        }
    }
}

fn line(conn: usize, i: usize) -> String {
    format!("<13>conn {conn} line {i} {}", "y".repeat(i % 300))
}

/// Several connections; every line arrives once, in order per connection, with its peer.
/// `queue` of 1 with a slow worker exercises backpressure (nothing may be lost).
fn tcp_lines(
    connections: usize,
    lines: usize,
    queue: usize,
    slow_worker: bool,
    options: UringOptions,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut h = harness(queue, 256, FrameLimits::default());
    let ctx = h.ctx.take().unwrap();
    let reader =
        thread::spawn(move || uring::run_tcp_with(listener, ctx, &options, LineFramer::default));

    let clients: Vec<_> = (0..connections)
        .map(|c| {
            thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                let local = stream.local_addr().unwrap();
                let mut out = Vec::new();
                for i in 0..lines {
                    out.extend_from_slice(line(c, i).as_bytes());
                    // The last line has no LF: EOF ends it.
                    if i + 1 < lines {
                        out.push(b'\n');
                    }
                    if out.len() > 8000 {
                        stream.write_all(&out).unwrap();
                        out.clear();
                    }
                }
                stream.write_all(&out).unwrap();
                local
            })
        })
        .collect();
    let mut next: HashMap<SocketAddr, usize> = HashMap::new();
    let mut which: HashMap<SocketAddr, usize> = HashMap::new();
    let total = connections * lines;
    let mut seen = 0;
    while seen < total {
        let batch = h
            .batches
            .recv_timeout(Duration::from_secs(20))
            .expect("lines stopped arriving");
        if slow_worker {
            thread::sleep(Duration::from_millis(2));
        }
        for f in &batch.frames {
            let peer = f.peer.expect("peer recorded at accept");
            let text = std::str::from_utf8(batch.frame(f)).unwrap();
            let conn: usize = text.split(' ').nth(1).unwrap().parse().unwrap();
            assert_eq!(
                *which.entry(peer).or_insert(conn),
                conn,
                "one peer, one connection"
            );
            let i = next.entry(peer).or_insert(0);
            assert_eq!(text, line(conn, *i));
            *i += 1;
            seen += 1;
        }
        let _ = h.recycle.try_send(batch);
    }
    let peers: Vec<SocketAddr> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    for p in &peers {
        assert_eq!(next.get(p), Some(&lines), "lines from {p}");
    }
    h.shutdown.store(true, Ordering::Relaxed);
    let totals = reader.join().unwrap().unwrap();
    assert_eq!(totals.messages as usize, total);
    assert!(
        h.batches.try_recv().is_err(),
        "nothing beyond what was sent"
    );
}

#[test]
fn tcp_connections_exactly_once_in_order() {
    tcp_lines(6, 20_000, 64, false, UringOptions::default());
}

#[test]
fn tcp_backpressure_loses_nothing() {
    // Few small buffers and a one-batch queue drained slowly: receives run out of buffers
    // (ENOBUFS) and must be re-armed; TCP flow control holds the senders.
    let options = UringOptions {
        tcp_buffers: 4,
        tcp_buffer_bytes: 1024,
        // Lingering waits for at most as many receives as there are buffers.
        tcp_linger: Linger {
            completions: 2,
            ..UringOptions::default().tcp_linger
        },
        ..Default::default()
    };
    tcp_lines(3, 5_000, 1, true, options);
}

#[test]
fn tcp_connection_limit_defers_instead_of_losing() {
    // Four connections through a reader that serves two at a time.
    let options = UringOptions {
        max_connections: 2,
        ..Default::default()
    };
    tcp_lines(4, 2_000, 16, false, options);
}

/// Connections held in the listen backlog by the reader's connection cap when shutdown comes
/// (in the daemon: connections that arrive while it stops): their senders saw the data
/// acknowledged, so each reader backend accepts and reads them before it stops.
#[test]
fn tcp_shutdown_reads_the_listen_backlog() {
    shutdown_reads_the_listen_backlog(|listener, ctx| {
        let options = UringOptions {
            max_connections: 1,
            ..Default::default()
        };
        uring::run_tcp_with(listener, ctx, &options, LineFramer::default).map(|t| t.messages)
    });
    shutdown_reads_the_listen_backlog(|listener, mut ctx| {
        ctx.max_connections = 1;
        sluice::net::portable::run_tcp(listener, ctx).map(|()| 0)
    });
}

/// `run` returns the messages it counted, or 0 when it does not count.
fn shutdown_reads_the_listen_backlog(
    run: impl FnOnce(TcpListener, ReaderContext) -> std::io::Result<u64> + Send + 'static,
) {
    const WAITING: usize = 12;
    const LINES: usize = 500;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut h = harness(1024, 256, FrameLimits::default());
    let ctx = h.ctx.take().unwrap();
    let reader = thread::spawn(move || run(listener, ctx));
    // Takes the one slot and keeps it.
    let mut first = TcpStream::connect(addr).unwrap();
    first
        .write_all(format!("{}\n", line(0, 0)).as_bytes())
        .unwrap();
    let batch = h.batches.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(batch.frames.len(), 1);
    let waiting: Vec<TcpStream> = (1..=WAITING)
        .map(|c| {
            let mut stream = TcpStream::connect(addr).unwrap();
            let text: String = (0..LINES).map(|i| format!("{}\n", line(c, i))).collect();
            stream.write_all(text.as_bytes()).unwrap();
            stream
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    assert!(h.batches.try_recv().is_err(), "the limit holds them back");
    h.shutdown.store(true, Ordering::Relaxed);
    let counted = reader.join().unwrap().unwrap();
    drop((first, waiting));
    let mut lines = 0;
    while let Ok(batch) = h.batches.try_recv() {
        lines += batch.frames.len();
    }
    assert_eq!(lines, WAITING * LINES);
    assert!(
        counted == 0 || counted as usize == 1 + WAITING * LINES,
        "{counted}"
    );
}

/// A harness whose reader context counts into a recorder of its own (source `test`), read
/// back through the returned handle.
fn counted_harness() -> (
    Harness,
    ReaderContext,
    metrics_exporter_prometheus::PrometheusHandle,
) {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let mut h = harness(16, 64, FrameLimits::default());
    let mut ctx = h.ctx.take().unwrap();
    ctx.counters =
        metrics::with_local_recorder(&recorder, || sluice::net::ReaderCounters::register("test"));
    (h, ctx, recorder.handle())
}

/// Empty datagrams, or only LF / CR / NUL, carry no message: both reader backends skip them,
/// count their bytes as received and no message.
#[test]
fn udp_empty_datagrams_are_skipped_alike_on_both_backends() {
    empty_datagrams_skipped(uring::run_udp);
    empty_datagrams_skipped(sluice::net::portable::run_udp);
}

fn empty_datagrams_skipped(
    run: impl FnOnce(UdpSocket, ReaderContext) -> std::io::Result<()> + Send + 'static,
) {
    let (h, ctx, handle) = counted_harness();
    let rx = udp_socket(1 << 20);
    let target = rx.local_addr().unwrap();
    let reader = thread::spawn(move || run(rx, ctx));
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    for d in [&b""[..], b"\n", b"\r\n\0", b"real\n"] {
        tx.send_to(d, target).unwrap();
    }
    let batch = h.batches.recv_timeout(Duration::from_secs(10)).unwrap();
    let frames: Vec<&[u8]> = batch.frames.iter().map(|f| batch.frame(f)).collect();
    assert_eq!(frames, [&b"real"[..]]);
    h.shutdown.store(true, Ordering::Relaxed);
    reader.join().unwrap().unwrap();
    assert!(h.batches.try_recv().is_err(), "nothing else handed over");
    let text = handle.render();
    for series in [
        "sluice_received_messages_total{source=\"test\"} 1\n",
        "sluice_received_bytes_total{source=\"test\"} 9\n",
    ] {
        assert!(text.contains(series), "{series}{text}");
    }
}

/// A stream that breaks its octet framing is counted the same way by both reader backends:
/// `sluice_framing_errors_total`, not as dropped messages.
#[test]
fn tcp_framing_errors_count_the_same_on_both_backends() {
    framing_error_counted(uring::run_tcp);
    framing_error_counted(sluice::net::portable::run_tcp);
}

fn framing_error_counted(
    run: impl FnOnce(TcpListener, ReaderContext) -> std::io::Result<()> + Send + 'static,
) {
    let (h, mut ctx, handle) = counted_harness();
    ctx.framing = Framing::Octet;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = thread::spawn(move || run(listener, ctx));
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .write_all(b"5 hello12x broken count\n5 world")
        .unwrap();
    drop(client);
    let mut frames = Vec::new();
    while frames.len() < 2 {
        let batch = h.batches.recv_timeout(Duration::from_secs(10)).unwrap();
        frames.extend(batch.frames.iter().map(|f| batch.frame(f).to_vec()));
    }
    assert_eq!(frames, [b"hello".to_vec(), b"world".to_vec()]);
    h.shutdown.store(true, Ordering::Relaxed);
    reader.join().unwrap().unwrap();
    let text = handle.render();
    assert!(
        text.contains("sluice_framing_errors_total{source=\"test\"} 1\n"),
        "{text}"
    );
    assert!(!text.contains("framing_desync"), "{text}");
}

/// The open-connections gauge of a source, calling `on_release` with the count of releases so
/// far each time a connection gives its slot back: the moment its socket has just been closed.
struct SlotReleases<F> {
    released: AtomicU64,
    on_release: F,
}

impl<F: Fn(u64) + Send + Sync + 'static> metrics::GaugeFn for SlotReleases<F> {
    fn increment(&self, _: f64) {}

    fn decrement(&self, _: f64) {
        (self.on_release)(self.released.fetch_add(1, Ordering::Relaxed) + 1);
    }

    fn set(&self, _: f64) {}
}

/// A recorder that hands out `gauge` for every gauge and records nothing else.
struct GaugeRecorder(metrics::Gauge);

impl metrics::Recorder for GaugeRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        self.0.clone()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// At shutdown the io_uring reader reads what the kernel holds for each connection; framing it
/// can close the connection (here: its unfinished line outgrows max_frame_backlog_bytes), and
/// with it its socket. The reader must stop there: the descriptor's number is free at once,
/// and a file opened meanwhile (here by the slot's release, on the reader's own thread, so
/// that it surely gets the number) was read as if it were the connection.
#[test]
fn tcp_shutdown_drain_stops_at_a_connection_a_limit_closed() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;

    let (mut bait_writer, mut bait) = UnixStream::pair().unwrap();
    bait_writer.write_all(b"not the connection's\n").unwrap();
    let bait_handle = bait.try_clone().unwrap();
    let opened: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
    let opened_by_release = opened.clone();
    // Release 1: the connection holding the one slot; release 2: the backlog connection the
    // limit closes while it is drained. A new descriptor takes the lowest free number.
    let gauge = metrics::Gauge::from_arc(Arc::new(SlotReleases {
        released: AtomicU64::new(0),
        on_release: move |n| {
            if n == 2 {
                let copy = bait_handle.try_clone().unwrap();
                opened_by_release.lock().unwrap().push(copy);
            }
        },
    }));
    let limits = sluice::net::guard::ConnectionLimits {
        max_frame_backlog_bytes: 1000,
        ..sluice::net::guard::ConnectionLimits::UNLIMITED
    };
    let guard = metrics::with_local_recorder(&GaugeRecorder(gauge), || {
        sluice::net::guard::ConnectionGuard::new("test", Default::default(), limits)
    });

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut h = harness(64, 256, FrameLimits::default());
    let mut ctx = h.ctx.take().unwrap();
    ctx.guard = guard;
    let frame_limits = ctx.limits;
    let reader = thread::spawn(move || {
        let options = UringOptions {
            max_connections: 1,
            ..Default::default()
        };
        uring::run_tcp_with(listener, ctx, &options, move || {
            sluice::frame::StreamFramer::new(Framing::Lf, frame_limits)
        })
    });
    // Takes the one slot, so the next connection is only read by the shutdown drain.
    let mut first = TcpStream::connect(addr).unwrap();
    first.write_all(b"first\n").unwrap();
    let batch = h.batches.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(batch.frames.len(), 1);
    let mut second = TcpStream::connect(addr).unwrap();
    second.write_all(&[b'z'; 5000]).unwrap();
    thread::sleep(Duration::from_millis(200));
    h.shutdown.store(true, Ordering::Relaxed);
    reader.join().unwrap().unwrap();
    drop((first, second));
    assert_eq!(
        opened.lock().unwrap().len(),
        1,
        "the limit closed the connection"
    );
    drop(bait_writer);
    let mut left = String::new();
    bait.read_to_string(&mut left).unwrap();
    assert_eq!(
        left, "not the connection's\n",
        "the reader read a descriptor opened after the connection's socket was closed"
    );
}

/// The production entry point with the real framer: octet counting and LF on parallel
/// connections (framing `auto` detects each), every message once and in order.
#[test]
fn tcp_run_tcp_with_stream_framer_auto() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut h = harness(64, 128, FrameLimits::default());
    let mut ctx = h.ctx.take().unwrap();
    ctx.framing = Framing::Auto;
    let reader = thread::spawn(move || uring::run_tcp(listener, ctx));
    const LINES: usize = 10_000;
    let clients: Vec<_> = (0..4)
        .map(|c| {
            thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                let mut out = Vec::new();
                for i in 0..LINES {
                    let msg = line(c, i);
                    if c % 2 == 0 {
                        out.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
                    } else {
                        out.extend_from_slice(msg.as_bytes());
                        out.push(b'\n');
                    }
                }
                // Odd-sized writes split frames across receives.
                for chunk in out.chunks(7777) {
                    stream.write_all(chunk).unwrap();
                }
                stream.local_addr().unwrap()
            })
        })
        .collect();
    let mut next: HashMap<SocketAddr, usize> = HashMap::new();
    let mut seen = 0;
    while seen < 4 * LINES {
        let batch = h
            .batches
            .recv_timeout(Duration::from_secs(20))
            .expect("messages stopped arriving");
        for f in &batch.frames {
            let text = std::str::from_utf8(batch.frame(f)).unwrap();
            let conn: usize = text.split(' ').nth(1).unwrap().parse().unwrap();
            let i = next.entry(f.peer.unwrap()).or_insert(0);
            assert_eq!(text, line(conn, *i));
            assert!(!f.truncated);
            *i += 1;
            seen += 1;
        }
    }
    for c in clients {
        assert_eq!(next[&c.join().unwrap()], LINES);
    }
    h.shutdown.store(true, Ordering::Relaxed);
    reader.join().unwrap().unwrap();
}
