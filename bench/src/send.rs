//! Load generator: UDP with batched `sendmmsg`, TCP over N connections (LF or octet-counting),
//! paced at a fixed rate in small batches or as fast as possible.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::corpus::Corpus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Proto {
    Udp,
    Tcp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        })
    }
}

/// TCP framing of the sender (RFC 6587).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum TcpFraming {
    Lf,
    Octet,
}

#[derive(Debug, Clone)]
pub struct SendConfig {
    pub target: SocketAddr,
    pub proto: Proto,
    pub framing: TcpFraming,
    pub connections: usize,
    /// Messages per second over all connections; `None` sends as fast as possible.
    pub rate: Option<u64>,
    /// Stop after this many messages...
    pub count: Option<u64>,
    /// ...or after this long, whichever comes first.
    pub duration: Option<Duration>,
    /// Largest `sendmmsg` batch (UDP) / messages per `write` (TCP).
    pub batch: usize,
    /// Pin the sending threads to this CPU.
    pub cpu: Option<usize>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SendReport {
    pub sent: u64,
    pub bytes: u64,
    pub elapsed_secs: f64,
    /// Datagrams the kernel refused (e.g. ECONNREFUSED while nobody listens); not counted as sent.
    pub errors: u64,
}

impl SendReport {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed_secs.max(1e-9)
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it, and
    // sched_setaffinity(0, …) reads it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pinning to CPU {cpu}"));
        }
    }
    Ok(())
}

/// Paces a sender: how many messages may go now, sleeping until the next batch is due.
struct Pacer {
    start: Instant,
    rate: Option<u64>,
    batch: usize,
    limit: u64,
    deadline: Option<Instant>,
}

impl Pacer {
    fn new(rate: Option<u64>, max_batch: usize, limit: u64, duration: Option<Duration>) -> Self {
        let start = Instant::now();
        // About one millisecond's worth per batch keeps the offered load smooth.
        let batch = match rate {
            Some(rate) => ((rate / 1000) as usize).clamp(1, max_batch.max(1)),
            None => max_batch.max(1),
        };
        Pacer {
            start,
            rate,
            batch,
            limit,
            deadline: duration.map(|d| start + d),
        }
    }

    /// Number of messages to send next (0 = finished).
    fn next(&self, sent: u64) -> usize {
        if sent >= self.limit {
            return 0;
        }
        if let Some(deadline) = self.deadline
            && Instant::now() >= deadline
        {
            return 0;
        }
        if let Some(rate) = self.rate {
            let due = self.start + Duration::from_secs_f64(sent as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        (self.limit - sent).min(self.batch as u64) as usize
    }
}

pub fn run(corpus: &Corpus, config: &SendConfig) -> anyhow::Result<SendReport> {
    if corpus.messages.is_empty() {
        bail!("empty corpus");
    }
    if config.count.is_none() && config.duration.is_none() {
        bail!("give a count or a duration");
    }
    if config.rate == Some(0) {
        bail!("rate must be positive");
    }
    match config.proto {
        Proto::Udp => send_udp(corpus, config),
        Proto::Tcp => send_tcp(corpus, config),
    }
}

fn send_udp(corpus: &Corpus, config: &SendConfig) -> anyhow::Result<SendReport> {
    if let Some(cpu) = config.cpu {
        pin_current_thread(cpu)?;
    }
    let bind: SocketAddr = if config.target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    let socket = UdpSocket::bind(bind).context("binding the UDP sender")?;
    socket
        .connect(config.target)
        .with_context(|| format!("connecting to {}", config.target))?;
    let sndbuf = socket2::SockRef::from(&socket);
    let _ = sndbuf.set_send_buffer_size(8 << 20);

    let max_batch = config.batch.clamp(1, 1024);
    let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(max_batch);
    let mut headers: Vec<libc::mmsghdr> = Vec::with_capacity(max_batch);
    let messages = &corpus.messages;
    let mut cursor = 0usize;
    let mut report = SendReport::default();
    let pacer = Pacer::new(
        config.rate,
        max_batch,
        config.count.unwrap_or(u64::MAX),
        config.duration,
    );
    let mut attempted = 0u64;
    loop {
        let n = pacer.next(attempted);
        if n == 0 {
            break;
        }
        iovecs.clear();
        headers.clear();
        for i in 0..n {
            let message = &messages[(cursor + i) % messages.len()];
            iovecs.push(libc::iovec {
                iov_base: message.bytes.as_ptr() as *mut libc::c_void,
                iov_len: message.bytes.len(),
            });
        }
        for iov in iovecs.iter_mut() {
            // SAFETY: an all-zero mmsghdr is valid (null name, no control data).
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_iov = iov as *mut libc::iovec;
            header.msg_hdr.msg_iovlen = 1;
            headers.push(header);
        }
        let mut done = 0usize;
        while done < n {
            // SAFETY: headers[done..n] point at iovecs that point into corpus messages, all of
            // which outlive the call; the socket is connected so no address is needed.
            let rc = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    headers.as_mut_ptr().add(done),
                    (n - done) as u32,
                    0,
                )
            };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOBUFS) => continue,
                    // An ICMP port-unreachable from an earlier datagram: this one is lost.
                    Some(libc::ECONNREFUSED) => {
                        report.errors += 1;
                        done += 1;
                    }
                    _ => return Err(err).context("sendmmsg"),
                }
            } else {
                for header in &headers[done..done + rc as usize] {
                    report.bytes += u64::from(header.msg_len);
                }
                report.sent += rc as u64;
                done += rc as usize;
            }
        }
        cursor = (cursor + n) % messages.len();
        attempted += n as u64;
    }
    report.elapsed_secs = pacer.start.elapsed().as_secs_f64();
    Ok(report)
}

/// All corpus messages framed back to back, with the offset where each one starts.
struct FramedRing {
    bytes: Vec<u8>,
    starts: Vec<usize>,
}

impl FramedRing {
    fn new(corpus: &Corpus, framing: TcpFraming) -> Self {
        let mut bytes = Vec::with_capacity(corpus.total_bytes() + corpus.messages.len() * 8);
        let mut starts = Vec::with_capacity(corpus.messages.len() + 1);
        for message in &corpus.messages {
            starts.push(bytes.len());
            match framing {
                TcpFraming::Lf => {
                    bytes.extend_from_slice(&message.bytes);
                    bytes.push(b'\n');
                }
                TcpFraming::Octet => {
                    bytes.extend_from_slice(message.bytes.len().to_string().as_bytes());
                    bytes.push(b' ');
                    bytes.extend_from_slice(&message.bytes);
                }
            }
        }
        starts.push(bytes.len());
        FramedRing { bytes, starts }
    }

    fn len(&self) -> usize {
        self.starts.len() - 1
    }

    /// Bytes of messages `first..first+n` (wrapping), as at most two slices.
    fn slices(&self, first: usize, n: usize) -> (&[u8], &[u8]) {
        let end = first + n;
        if end <= self.len() {
            (&self.bytes[self.starts[first]..self.starts[end]], &[])
        } else {
            (
                &self.bytes[self.starts[first]..],
                &self.bytes[..self.starts[end - self.len()]],
            )
        }
    }
}

fn send_tcp(corpus: &Corpus, config: &SendConfig) -> anyhow::Result<SendReport> {
    let connections = config.connections.max(1);
    let ring = FramedRing::new(corpus, config.framing);
    let started = Instant::now();
    let reports: Vec<anyhow::Result<SendReport>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|index| {
                let ring = &ring;
                // Split count and rate evenly; the first connections take the remainder.
                let share = |total: u64| {
                    total / connections as u64
                        + u64::from((index as u64) < total % connections as u64)
                };
                let count = config.count.map(share).unwrap_or(u64::MAX);
                let rate = config.rate.map(|r| share(r).max(1));
                scope.spawn(move || -> anyhow::Result<SendReport> {
                    if let Some(cpu) = config.cpu {
                        pin_current_thread(cpu)?;
                    }
                    let mut stream =
                        TcpStream::connect_timeout(&config.target, Duration::from_secs(5))
                            .with_context(|| format!("connecting to {}", config.target))?;
                    stream.set_nodelay(false)?;
                    let mut report = SendReport::default();
                    let pacer = Pacer::new(rate, config.batch.max(1), count, config.duration);
                    let mut cursor = (index * ring.len() / connections) % ring.len();
                    loop {
                        let n = pacer.next(report.sent);
                        if n == 0 {
                            break;
                        }
                        let n = n.min(ring.len());
                        let (a, b) = ring.slices(cursor, n);
                        stream.write_all(a).context("TCP write")?;
                        stream.write_all(b).context("TCP write")?;
                        report.sent += n as u64;
                        report.bytes += (a.len() + b.len()) as u64;
                        cursor = (cursor + n) % ring.len();
                    }
                    stream.flush()?;
                    stream.shutdown(std::net::Shutdown::Write)?;
                    Ok(report)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sender thread panicked"))
            .collect()
    });
    let mut total = SendReport::default();
    for report in reports {
        let report = report?;
        total.sent += report.sent;
        total.bytes += report.bytes;
        total.errors += report.errors;
    }
    total.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(total)
}
