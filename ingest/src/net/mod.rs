//! Socket readers: they receive, frame, and hand batches of frames to per-core parser workers.
//!
//! Contract between readers and workers: a reader fills a [`FrameBatch`] (message bytes laid
//! end to end plus one [`FrameRef`] per message) and pushes it on its core's bounded queue.
//! Workers return drained batches through a recycle queue so steady state allocates nothing.

pub mod drops;
pub mod guard;
pub(crate) mod handoff;
pub mod overflow;
pub mod portable;
pub mod tls;
pub mod uring;

use std::net::SocketAddr;

use crate::event::Timestamp;
pub use crate::metrics::ReaderCounters;

/// One message inside a [`FrameBatch`].
#[derive(Debug, Clone, Copy)]
pub struct FrameRef {
    pub offset: u32,
    pub len: u32,
    pub peer: Option<SocketAddr>,
    /// The frame was cut to the size limit.
    pub truncated: bool,
}

/// A batch of framed messages from one source.
#[derive(Debug, Default)]
pub struct FrameBatch {
    /// Index of the source in the effective config (`sources` in order).
    pub source: u16,
    pub received_at: Option<Timestamp>,
    pub data: Vec<u8>,
    pub frames: Vec<FrameRef>,
    /// Set by sources that must know when these events are committed by every routed sink
    /// (see [`crate::pipeline::ack`]); socket readers leave it `None`.
    pub ack: Option<crate::pipeline::ack::AckToken>,
}

/// Largest reader batch, in bytes, whatever the frame count: with the worker queues' depth it
/// bounds the memory queued batches hold. Readers hand a batch over before another frame as
/// long as its longest could take it past this.
pub const READER_BATCH_MAX_BYTES: usize = 256 * 1024;

impl FrameBatch {
    /// An empty batch for `source`: one the worker handed back on `recycled` (keeping its
    /// buffers), or a new one.
    pub fn reused(recycled: &crossbeam::channel::Receiver<FrameBatch>, source: u16) -> FrameBatch {
        let mut batch = recycled.try_recv().unwrap_or_default();
        batch.clear();
        batch.source = source;
        batch
    }

    pub fn clear(&mut self) {
        self.received_at = None;
        self.data.clear();
        self.frames.clear();
        // Dropping the worker's clone: the per-sink batches now hold the token.
        self.ack = None;
    }

    pub fn push(&mut self, bytes: &[u8], peer: Option<SocketAddr>, truncated: bool) {
        let offset = self.data.len() as u32;
        self.data.extend_from_slice(bytes);
        self.frames.push(FrameRef {
            offset,
            len: bytes.len() as u32,
            peer,
            truncated,
        });
    }

    pub fn frame(&self, f: &FrameRef) -> &[u8] {
        &self.data[f.offset as usize..(f.offset + f.len) as usize]
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// Everything one reader thread needs; one per (source, core).
///
/// Backpressure: a TCP reader blocks on `to_worker` (stops reading: no loss); a UDP reader
/// uses `try_send` and counts a full queue as `sluice_dropped_messages_total{reason="queue_full"}`.
pub struct ReaderContext {
    pub source_index: u16,
    pub source_name: std::sync::Arc<str>,
    pub core: usize,
    pub limits: crate::frame::FrameLimits,
    /// TCP only.
    pub framing: crate::frame::Framing,
    /// Hand a batch to the worker once it holds this many frames (or when the socket is idle).
    pub batch_max_frames: usize,
    pub to_worker: crossbeam::channel::Sender<FrameBatch>,
    /// Drained batches come back here for reuse.
    pub recycled: crossbeam::channel::Receiver<FrameBatch>,
    pub shutdown: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// TCP only: open connections this reader (listener) may hold at once.
    pub max_connections: usize,
    /// Pin threads the reader spawns (TCP connections) to `core`.
    pub pin: bool,
    /// Loss and framing counters of this source; add per batch, not per message.
    pub counters: ReaderCounters,
    /// The source's allowlist (all protocols) and connection limits (TCP/TLS), shared by
    /// its reader threads.
    pub guard: std::sync::Arc<guard::ConnectionGuard>,
    /// UDP only: this reader's disk overflow (`overflow_max_bytes`); the reader takes it.
    pub overflow: Option<overflow::Overflow>,
    /// io_uring readers: how long a wake-up that brought only a trickle may wait for more
    /// (`pipeline.reader_linger_ms`, see [`uring::Linger`]); zero turns it off.
    pub linger: std::time::Duration,
}

/// Default of `pipeline.reader_linger_ms`.
pub const DEFAULT_READER_LINGER: std::time::Duration = std::time::Duration::from_millis(10);

/// Largest `pipeline.reader_linger_ms`: an io_uring reader's wait ends at its shutdown poll
/// ([`SHUTDOWN_POLL`]) anyway, so a longer linger would be accepted and not kept.
pub const MAX_READER_LINGER: std::time::Duration = std::time::Duration::from_millis(50);

/// How long a reader (either backend, TLS too) may block before it looks at `shutdown`
/// again.
pub const SHUTDOWN_POLL: std::time::Duration = std::time::Duration::from_millis(50);
const _: () = assert!(MAX_READER_LINGER.as_millis() <= SHUTDOWN_POLL.as_millis());

/// At shutdown, TCP readers keep reading what the kernel already holds for each connection
/// (acknowledged to the sender, so dropping it would lose it silently) until the socket has
/// nothing more, for at most this long: a sender that never pauses cannot hold shutdown up.
pub const SHUTDOWN_TCP_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The socket-reading implementation in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Blocking std sockets: batched `recvmmsg` for UDP, a thread per TCP connection.
    Portable,
    /// io_uring multishot receives into provided-buffer rings (see [`uring`]).
    Uring,
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Portable => "portable",
            Backend::Uring => "io_uring",
        }
    }

    /// Runs until `ctx.shutdown` is set (then returns once everything read is handed over).
    pub fn run_udp(self, socket: std::net::UdpSocket, ctx: ReaderContext) -> std::io::Result<()> {
        match self {
            Backend::Portable => portable::run_udp(socket, ctx),
            Backend::Uring => uring::run_udp(socket, ctx),
        }
    }

    /// Runs until `ctx.shutdown` is set; returns after every connection it accepted has ended.
    pub fn run_tcp(
        self,
        listener: std::net::TcpListener,
        ctx: ReaderContext,
    ) -> std::io::Result<()> {
        match self {
            Backend::Portable => portable::run_tcp(listener, ctx),
            Backend::Uring => uring::run_tcp(listener, ctx),
        }
    }
}

/// The io_uring backend, when this kernel (and its sysctls, seccomp policy) lets us use it;
/// `Err` says why not.
fn io_uring_backend() -> Result<Backend, String> {
    uring::probe().map(|()| Backend::Uring)
}

/// Picks the backend for `preference` and says why; `Err` when an explicit `io_uring`
/// preference cannot be honoured.
pub fn select_backend(preference: crate::config::IoBackend) -> Result<(Backend, String), String> {
    use crate::config::IoBackend;
    match preference {
        IoBackend::Portable => Ok((Backend::Portable, "chosen in the config".to_string())),
        IoBackend::Auto => match io_uring_backend() {
            Ok(backend) => Ok((backend, "io_uring is usable".to_string())),
            Err(why) => Ok((Backend::Portable, format!("io_uring unavailable: {why}"))),
        },
        IoBackend::IoUring => io_uring_backend()
            .map(|backend| (backend, "chosen in the config".to_string()))
            .map_err(|why| {
                format!("io_backend = \"io_uring\", but io_uring is unavailable: {why}")
            }),
    }
}

/// Binds one SO_REUSEPORT UDP socket. Asks for `receive_buffer_bytes` (forcing past
/// `net.core.rmem_max` when privileged) and enables SO_RXQ_OVFL so every datagram carries the
/// socket's kernel drop count. Returns the socket and the effective receive buffer size.
pub fn bind_udp(
    listen: SocketAddr,
    receive_buffer_bytes: usize,
) -> std::io::Result<(std::net::UdpSocket, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_reuse_port(true)?;
    let effective = set_receive_buffer(&socket, receive_buffer_bytes)?;
    drops::enable_rxq_ovfl(std::os::fd::AsFd::as_fd(&socket))?;
    socket
        .bind(&listen.into())
        .map_err(|e| bind_error(e, "udp", listen))?;
    Ok((socket.into(), effective))
}

/// Binds one SO_REUSEPORT TCP listener.
pub fn bind_tcp(
    listen: SocketAddr,
    receive_buffer_bytes: usize,
) -> std::io::Result<(std::net::TcpListener, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Accepted sockets inherit the listener's buffer size.
    let effective = set_receive_buffer(&socket, receive_buffer_bytes)?;
    socket
        .bind(&listen.into())
        .map_err(|e| bind_error(e, "tcp", listen))?;
    socket.listen(1024)?;
    Ok((socket.into(), effective))
}

fn bind_error(e: std::io::Error, proto: &str, listen: SocketAddr) -> std::io::Error {
    let hint = match e.kind() {
        std::io::ErrorKind::PermissionDenied if listen.port() < 1024 => format!(
            "ports below 1024 need privileges: run as root, grant the binary CAP_NET_BIND_SERVICE \
             (`sudo setcap cap_net_bind_service=+ep $(command -v sluice)`), or use a config \
             (`sluice run --config FILE`) whose sources listen on a port >= 1024, e.g. {}:5514",
            listen.ip()
        ),
        std::io::ErrorKind::AddrInUse => {
            "another program (or another source) already uses it".to_string()
        }
        std::io::ErrorKind::AddrNotAvailable => "no local interface has that address".to_string(),
        _ => String::new(),
    };
    let sep = if hint.is_empty() { "" } else { "; " };
    std::io::Error::new(
        e.kind(),
        format!("cannot listen on {proto} {listen}: {e}{sep}{hint}"),
    )
}

/// Sets SO_RCVBUF, trying SO_RCVBUFFORCE first (works with CAP_NET_ADMIN), and returns the size
/// the kernel granted (it reports twice the usable size; halved here).
fn set_receive_buffer(socket: &socket2::Socket, bytes: usize) -> std::io::Result<usize> {
    let want = bytes.min(i32::MAX as usize) as libc::c_int;
    if set_int_option(socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, want).is_err() {
        socket.set_recv_buffer_size(bytes)?;
    }
    Ok(socket.recv_buffer_size()? / 2)
}

fn set_int_option(
    socket: &socket2::Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `value` outlives the call and its size is passed; the fd is owned by `socket`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The rate-limited line for a TCP/TLS framing error (see [`crate::log_every`]); `unlogged` is how
/// many were left out since the last one.
pub(crate) fn framing_error_log(
    source: &str,
    peer: Option<std::net::SocketAddr>,
    skipped: usize,
    unlogged: u64,
) {
    tracing::warn!(
        source,
        ?peer,
        skipped,
        unlogged,
        "framing error; skipped to the next line (further ones within 10 s are only counted in sluice_framing_errors_total)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuseport_allows_one_socket_per_core() {
        let (a, size) = bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let addr = a.local_addr().unwrap();
        let (_b, _) = bind_udp(addr, 1 << 20).unwrap();
        assert!(size > 0);
        let (l, _) = bind_tcp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let (_l2, _) = bind_tcp(l.local_addr().unwrap(), 1 << 20).unwrap();
    }

    #[test]
    fn backend_selection_honours_the_config() {
        use crate::config::IoBackend;
        assert_eq!(
            select_backend(IoBackend::Portable).unwrap().0,
            Backend::Portable
        );
        let (backend, why) = select_backend(IoBackend::Auto).unwrap();
        assert!(!why.is_empty());
        // Auto must pick io_uring exactly when the probe accepts it.
        assert_eq!(backend == Backend::Uring, uring::probe().is_ok(), "{why}");
        if backend == Backend::Portable {
            assert!(select_backend(IoBackend::IoUring).is_err());
            assert!(why.contains("io_uring unavailable"), "{why}");
        } else {
            assert_eq!(
                select_backend(IoBackend::IoUring).unwrap().0,
                Backend::Uring
            );
        }
    }

    #[test]
    fn privileged_port_error_explains_the_fix() {
        let e = bind_error(
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            "udp",
            "0.0.0.0:514".parse().unwrap(),
        );
        let text = e.to_string();
        assert!(
            text.contains("CAP_NET_BIND_SERVICE")
                && text.contains("root")
                && text.contains("--config"),
            "{text}"
        );
    }
}
