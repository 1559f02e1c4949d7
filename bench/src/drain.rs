//! Drain-only receiver: the physical limit of the box. It receives with batched `recvmmsg`
//! (UDP) or large reads (TCP, a thread per connection) and only counts messages.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use socket2::{Domain, Socket, Type};

use crate::send::Proto;

/// How the TCP drain finds message boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CountFraming {
    /// Decide per connection from its first byte: a digit means octet-counting.
    Auto,
    Lf,
    Octet,
}

#[derive(Debug, Clone)]
pub struct DrainConfig {
    pub listen: SocketAddr,
    pub proto: Proto,
    pub framing: CountFraming,
    pub receive_buffer_bytes: usize,
    /// Rewritten about every 100 ms with `<messages> <bytes>` so a harness can watch progress.
    pub progress_file: Option<PathBuf>,
    /// Stop once this many messages arrived.
    pub expect: Option<u64>,
    /// Stop after this long without a message (only once something arrived).
    pub idle_exit: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct DrainReport {
    pub messages: u64,
    pub bytes: u64,
}

static STOP_SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP_SIGNALLED.store(true, Ordering::Relaxed);
}

/// Makes SIGINT/SIGTERM end `run` cleanly (it then prints and writes its final count).
pub fn install_stop_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_stop_signal as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_stop_signal as *const () as libc::sighandler_t,
        );
    }
}

/// Runs until `stop` is set, a stop signal arrives, `expect` is reached or the idle timeout.
/// `ready` is set once the socket is bound.
pub fn run(
    config: &DrainConfig,
    stop: &AtomicBool,
    ready: &AtomicBool,
) -> anyhow::Result<DrainReport> {
    let counters = Arc::new(Counters::default());
    let should_stop = {
        let counters = counters.clone();
        let expect = config.expect;
        let idle_exit = config.idle_exit;
        let mut last_count = 0u64;
        let mut last_change = Instant::now();
        move || -> bool {
            if stop.load(Ordering::Relaxed) || STOP_SIGNALLED.load(Ordering::Relaxed) {
                return true;
            }
            let now = counters.messages.load(Ordering::Relaxed);
            if expect.is_some_and(|e| now >= e) {
                return true;
            }
            if now != last_count {
                last_count = now;
                last_change = Instant::now();
            } else if let Some(idle) = idle_exit
                && now > 0
                && last_change.elapsed() >= idle
            {
                return true;
            }
            false
        }
    };
    let progress = ProgressWriter {
        path: config.progress_file.clone(),
        last: Instant::now(),
    };
    match config.proto {
        Proto::Udp => drain_udp(config, &counters, ready, should_stop, progress)?,
        Proto::Tcp => drain_tcp(config, &counters, ready, should_stop, progress)?,
    }
    let report = DrainReport {
        messages: counters.messages.load(Ordering::Relaxed),
        bytes: counters.bytes.load(Ordering::Relaxed),
    };
    if let Some(path) = &config.progress_file {
        write_progress(path, report)?;
    }
    Ok(report)
}

struct ProgressWriter {
    path: Option<PathBuf>,
    last: Instant,
}

impl ProgressWriter {
    fn tick(&mut self, counters: &Counters) {
        if let Some(path) = &self.path
            && self.last.elapsed() >= Duration::from_millis(100)
        {
            self.last = Instant::now();
            let report = DrainReport {
                messages: counters.messages.load(Ordering::Relaxed),
                bytes: counters.bytes.load(Ordering::Relaxed),
            };
            let _ = write_progress(path, report);
        }
    }
}

fn write_progress(path: &PathBuf, report: DrainReport) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{} {}\n", report.messages, report.bytes))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

const UDP_BATCH: usize = 64;
const UDP_SLOT: usize = 65_536;

fn drain_udp(
    config: &DrainConfig,
    counters: &Counters,
    ready: &AtomicBool,
    mut should_stop: impl FnMut() -> bool,
    mut progress: ProgressWriter,
) -> anyhow::Result<()> {
    let socket = Socket::new(Domain::for_address(config.listen), Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_recv_buffer_size(config.receive_buffer_bytes)?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    socket
        .bind(&config.listen.into())
        .with_context(|| format!("binding UDP {}", config.listen))?;
    let socket: UdpSocket = socket.into();
    ready.store(true, Ordering::Release);

    let mut buffers = vec![0u8; UDP_BATCH * UDP_SLOT];
    let mut iovecs: Vec<libc::iovec> = buffers
        .chunks_mut(UDP_SLOT)
        .map(|slot| libc::iovec {
            iov_base: slot.as_mut_ptr() as *mut libc::c_void,
            iov_len: slot.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero mmsghdr is valid (no name, no control data).
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_iov = iov as *mut libc::iovec;
            header.msg_hdr.msg_iovlen = 1;
            header
        })
        .collect();
    while !should_stop() {
        // SAFETY: every header points at its own 64 KiB slot inside `buffers`, which outlives
        // the call; the kernel writes at most iov_len bytes per slot.
        let rc = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                UDP_BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => {}
                _ => return Err(err).context("recvmmsg"),
            }
        } else {
            let bytes: u64 = headers[..rc as usize]
                .iter()
                .map(|h| u64::from(h.msg_len))
                .sum();
            counters.messages.fetch_add(rc as u64, Ordering::Relaxed);
            counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        progress.tick(counters);
    }
    drop(buffers);
    Ok(())
}

fn drain_tcp(
    config: &DrainConfig,
    counters: &Counters,
    ready: &AtomicBool,
    mut should_stop: impl FnMut() -> bool,
    mut progress: ProgressWriter,
) -> anyhow::Result<()> {
    let socket = Socket::new(Domain::for_address(config.listen), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_recv_buffer_size(config.receive_buffer_bytes)?;
    socket
        .bind(&config.listen.into())
        .with_context(|| format!("binding TCP {}", config.listen))?;
    socket.listen(1024)?;
    let listener: TcpListener = socket.into();
    listener.set_nonblocking(true)?;
    ready.store(true, Ordering::Release);
    let finished = AtomicBool::new(false);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        loop {
            if should_stop() {
                finished.store(true, Ordering::Relaxed);
                break;
            }
            progress.tick(counters);
            match listener.accept() {
                Ok((stream, _)) => {
                    let framing = config.framing;
                    let finished = &finished;
                    scope.spawn(move || {
                        if let Err(err) = drain_connection(stream, framing, counters, finished) {
                            eprintln!("drain: connection ended with an error: {err:#}");
                        }
                    });
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(err) => return Err(err).context("accept"),
            }
        }
        Ok(())
    })
}

fn drain_connection(
    mut stream: TcpStream,
    framing: CountFraming,
    counters: &Counters,
    finished: &AtomicBool,
) -> anyhow::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut counter = FrameCounter::new(framing);
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                let frames = counter.feed(&buffer[..n]);
                counters.messages.fetch_add(frames, Ordering::Relaxed);
                counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if finished.load(Ordering::Relaxed) {
                    break;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err.into()),
        }
    }
    // A last message without its LF still counts, as syslog receivers do at end of stream.
    counters
        .messages
        .fetch_add(counter.finish(), Ordering::Relaxed);
    Ok(())
}

/// Counts frames in a byte stream fed in arbitrary pieces.
#[derive(Debug)]
pub struct FrameCounter {
    framing: CountFraming,
    /// Octet-counting: bytes of the current frame still to skip.
    skip: usize,
    /// Octet-counting: the length prefix being read, if inside one.
    length: Option<usize>,
    /// LF framing: bytes seen since the last LF.
    partial: bool,
}

impl FrameCounter {
    pub fn new(framing: CountFraming) -> Self {
        FrameCounter {
            framing,
            skip: 0,
            length: None,
            partial: false,
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
        if self.framing == CountFraming::Auto {
            let Some(&first) = data.first() else { return 0 };
            self.framing = if first.is_ascii_digit() {
                CountFraming::Octet
            } else {
                CountFraming::Lf
            };
        }
        match self.framing {
            CountFraming::Lf => {
                let count = memchr::memchr_iter(b'\n', data).count() as u64;
                if let Some(&last) = data.last() {
                    self.partial = last != b'\n';
                }
                count
            }
            CountFraming::Octet => {
                let mut count = 0;
                while !data.is_empty() {
                    if self.skip > 0 {
                        let take = self.skip.min(data.len());
                        self.skip -= take;
                        data = &data[take..];
                        if self.skip == 0 {
                            count += 1;
                        }
                        continue;
                    }
                    let byte = data[0];
                    data = &data[1..];
                    match (byte, self.length) {
                        (b'0'..=b'9', length) => {
                            self.length = Some(
                                length
                                    .unwrap_or(0)
                                    .saturating_mul(10)
                                    .saturating_add(usize::from(byte - b'0')),
                            )
                        }
                        (b' ', Some(length)) => {
                            self.length = None;
                            if length == 0 {
                                count += 1;
                            }
                            self.skip = length;
                        }
                        // Not octet-counting after all (or garbage): resynchronise on the next digit.
                        _ => self.length = None,
                    }
                }
                count
            }
            CountFraming::Auto => unreachable!("resolved above"),
        }
    }

    pub fn finish(&mut self) -> u64 {
        let partial = self.framing == CountFraming::Lf && self.partial;
        self.partial = false;
        u64::from(partial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octet_counter_handles_split_prefixes_and_bodies() {
        let stream = b"5 hello11 hello world3 abc";
        for split in 0..stream.len() {
            let mut counter = FrameCounter::new(CountFraming::Auto);
            let n = counter.feed(&stream[..split]) + counter.feed(&stream[split..]);
            assert_eq!(n, 3, "split at {split}");
        }
    }

    #[test]
    fn lf_counter_counts_an_unterminated_tail_at_the_end() {
        let mut counter = FrameCounter::new(CountFraming::Auto);
        assert_eq!(counter.feed(b"<1>a\n<1>b\n<1>c"), 2);
        assert_eq!(counter.finish(), 1);
        let mut counter = FrameCounter::new(CountFraming::Lf);
        assert_eq!(counter.feed(b"a\nb\n"), 2);
        assert_eq!(counter.finish(), 0);
    }
}
