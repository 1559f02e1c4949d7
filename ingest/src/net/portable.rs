//! The portable reader backend: blocking std sockets, used where io_uring is unavailable.
//!
//! UDP: one thread per SO_REUSEPORT socket receives up to `batch_max_frames` datagrams per
//! `recvmmsg` call into a [`FrameBatch`], handed over as the io_uring reader does (see
//! `Handoff`). TCP: the listener thread accepts
//! (bounded by `max_connections`) and runs one thread per connection, which blocks on the
//! worker queue when it is full, so a slow pipeline slows the sender instead of losing data.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// At most one kernel-drop warning per socket this often.
use crossbeam::channel::{Receiver, Sender, TrySendError};

use crate::event::Timestamp;
use crate::frame::{FrameEvent, FrameLimits, Framing, OversizePolicy, StreamFramer};
use crate::log_every::{LOG_EVERY, LogEvery};
use crate::metrics::ReaderCounters;
use crate::net::guard::{Closure, ConnectionGuard, StallWatch};
use crate::net::handoff::Handoff;
use crate::net::{
    FrameBatch, READER_BATCH_MAX_BYTES, ReaderContext, SHUTDOWN_POLL, SHUTDOWN_TCP_DRAIN,
};

/// Bytes read from a TCP connection per `read` call.
const TCP_READ_BYTES: usize = 64 * 1024;
/// Most datagrams one `recvmmsg` call may return.
const UDP_MAX_SLOTS: usize = 1024;
/// Room for the SO_RXQ_OVFL control message (one u32) with alignment slack.
const CONTROL_BYTES: usize = 64;

/// Receive buffers for one `recvmmsg` call: `slots` regions of `slot_bytes` each, with the
/// per-message headers pointing into them.
struct MmsgBuffers {
    slot_bytes: usize,
    /// Only the part the kernel writes becomes resident: an idle slot costs no memory.
    data: Vec<u8>,
    iovecs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<[u64; CONTROL_BYTES / 8]>,
    headers: Vec<libc::mmsghdr>,
}

impl MmsgBuffers {
    fn new(slots: usize, slot_bytes: usize) -> Box<Self> {
        // SAFETY: all-zero is a valid sockaddr_storage / mmsghdr / iovec.
        let zeroed_name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut b = Box::new(MmsgBuffers {
            slot_bytes,
            data: Vec::with_capacity(slots * slot_bytes),
            iovecs: Vec::with_capacity(slots),
            names: vec![zeroed_name; slots],
            controls: vec![[0u64; CONTROL_BYTES / 8]; slots],
            headers: Vec::with_capacity(slots),
        });
        let base = b.data.as_mut_ptr();
        for i in 0..slots {
            // SAFETY: `i * slot_bytes` is within the allocation of `slots * slot_bytes` bytes.
            let iov_base = unsafe { base.add(i * slot_bytes) };
            b.iovecs.push(libc::iovec {
                iov_base: iov_base.cast(),
                iov_len: slot_bytes,
            });
        }
        // SAFETY: an all-zero mmsghdr is valid; `reset` fills in the pointers.
        b.headers
            .resize_with(slots, || unsafe { std::mem::zeroed() });
        b.reset();
        b
    }

    /// Points every header at its buffers again (the kernel overwrites lengths and flags).
    fn reset(&mut self) {
        for i in 0..self.headers.len() {
            let h = &mut self.headers[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovecs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.controls[i].as_mut_ptr().cast();
            h.msg_controllen = CONTROL_BYTES as _;
            h.msg_flags = 0;
            self.headers[i].msg_len = 0;
        }
    }

    /// The datagram received into slot `i` by the last call.
    fn payload(&self, i: usize) -> &[u8] {
        let len = (self.headers[i].msg_len as usize).min(self.slot_bytes);
        // SAFETY: the kernel wrote `msg_len` bytes (at most `slot_bytes`) at the start of slot
        // `i`, which lies within `data`'s allocation; written bytes are initialised.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr().add(i * self.slot_bytes), len) }
    }

    fn truncated(&self, i: usize) -> bool {
        self.headers[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
    }

    fn peer(&self, i: usize) -> Option<SocketAddr> {
        sockaddr_to_std(&self.names[i], self.headers[i].msg_hdr.msg_namelen)
    }

    /// The socket's cumulative kernel drop count attached to this datagram (SO_RXQ_OVFL).
    fn kernel_drops(&self, i: usize) -> Option<u32> {
        let h = &self.headers[i].msg_hdr;
        // SAFETY: `h` describes the control buffer of slot `i` as filled in by the kernel; the
        // CMSG_* helpers stay within `msg_controllen`.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(h);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SO_RXQ_OVFL
                {
                    return Some(std::ptr::read_unaligned(
                        libc::CMSG_DATA(cmsg).cast::<u32>(),
                    ));
                }
                cmsg = libc::CMSG_NXTHDR(h, cmsg);
            }
        }
        None
    }
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in; storage is large and aligned enough.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn pin(core: usize, enabled: bool) {
    if enabled && !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        tracing::debug!(core, "could not pin reader thread");
    }
}

/// Receives datagrams until shutdown. One datagram is one message.
///
/// Batches fill as in the io_uring reader (see `Handoff::end_wake_up`): while the worker is
/// busy the batch keeps filling across `recvmmsg` calls, so a burst is handed over as a few
/// full batches (`batch_max_frames` frames or [`READER_BATCH_MAX_BYTES`]) and the worker
/// queue, `queue_batches` of them, fills before the socket's receive buffer has to.
pub fn run_udp(socket: UdpSocket, mut ctx: ReaderContext) -> std::io::Result<()> {
    let fd = socket.as_raw_fd();
    let slots = ctx.batch_max_frames.clamp(1, UDP_MAX_SLOTS);
    let slot_bytes = ctx.limits.max_frame_bytes.clamp(1, 65_535);
    let mut bufs = MmsgBuffers::new(slots, slot_bytes);
    let mut last_kernel_drops: u32 = 0;
    let kernel_drop_log = LogEvery::new(LOG_EVERY);
    let overflow = ctx.overflow.take();
    let mut handoff =
        Handoff::new(&ctx, READER_BATCH_MAX_BYTES, SHUTDOWN_POLL).with_overflow(&ctx, overflow);
    let mut timeout = None;
    let mut allow = ctx.guard.allowlist();

    while !ctx.shutdown.load(Ordering::Relaxed) {
        let wanted = handoff.wait_timeout();
        if timeout != Some(wanted) {
            socket.set_read_timeout(Some(wanted))?;
            timeout = Some(wanted);
        }
        bufs.reset();
        // SAFETY: `headers` holds `slots` initialised mmsghdr pointing at live buffers owned by
        // `bufs`, which outlives the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                bufs.headers.as_mut_ptr(),
                slots as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::Interrupted => {
                    // Nothing more came: whatever is held goes to the worker now.
                    handoff.end_wake_up(&ctx, true)?;
                    continue;
                }
                _ => return Err(e),
            }
        }
        let mut not_allowed = 0u64;
        let allow = allow.current();
        for i in 0..n as usize {
            if let Some(drops) = bufs.kernel_drops(i) {
                // Counted by the periodic per-socket poll; here only reported promptly.
                if drops != last_kernel_drops && kernel_drop_log.permit().is_some() {
                    tracing::warn!(
                        source = %ctx.source_name, core = ctx.core, socket_drops = drops,
                        "kernel dropped datagrams: receive buffer full (raise receive_buffer_bytes or add threads)"
                    );
                }
                last_kernel_drops = drops;
            }
            // The user-space allowlist (what XDP does in the kernel when it is on): refused
            // datagrams are not received, only counted as dropped.
            if !allow.is_empty() && !bufs.peer(i).is_some_and(|p| allow.permits(p.ip())) {
                not_allowed += 1;
                continue;
            }
            let payload = bufs.payload(i);
            handoff.received_bytes(payload.len());
            let message = crate::frame::datagram(payload);
            if message.is_empty() {
                // No message (keep-alives from some senders): a worker would only make an
                // empty event of it. Its bytes were received all the same.
                continue;
            }
            let cut = bufs.truncated(i);
            if cut && ctx.limits.oversize == OversizePolicy::Reject {
                handoff.rejected_oversize();
                continue;
            }
            if handoff.push(message, bufs.peer(i), cut) {
                handoff.flush_blocking(&ctx)?;
            }
        }
        if not_allowed > 0 {
            ctx.counters.dropped_not_allowed.increment(not_allowed);
        }
        handoff.end_wake_up(&ctx, false)?;
    }
    // Shutdown: the workers are still draining, so what was read is handed over.
    handoff.finish(&ctx)
}

/// What a connection thread needs (a per-connection share of the [`ReaderContext`]).
#[derive(Clone)]
pub(crate) struct ConnectionContext {
    pub(crate) source_index: u16,
    pub(crate) source_name: Arc<str>,
    core: usize,
    pin: bool,
    limits: FrameLimits,
    framing: Framing,
    batch_max_frames: usize,
    to_worker: Sender<FrameBatch>,
    recycled: Receiver<FrameBatch>,
    pub(crate) shutdown: Arc<AtomicBool>,
    pub(crate) counters: ReaderCounters,
    pub(crate) guard: Arc<ConnectionGuard>,
}

impl ConnectionContext {
    pub(crate) fn of(ctx: &ReaderContext) -> Self {
        ConnectionContext {
            source_index: ctx.source_index,
            source_name: ctx.source_name.clone(),
            core: ctx.core,
            pin: ctx.pin,
            limits: ctx.limits,
            framing: ctx.framing,
            batch_max_frames: ctx.batch_max_frames.max(1),
            to_worker: ctx.to_worker.clone(),
            recycled: ctx.recycled.clone(),
            shutdown: ctx.shutdown.clone(),
            counters: ctx.counters.clone(),
            guard: ctx.guard.clone(),
        }
    }
}

/// Accepts connections until shutdown, then waits for every connection thread to hand over
/// what it has read.
pub fn run_tcp(listener: TcpListener, ctx: ReaderContext) -> std::io::Result<()> {
    run_stream_listener(listener, ctx, "tcp", |stream, peer, conn| {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(SHUTDOWN_POLL))?;
        let mut stream = stream;
        read_stream(&mut stream, peer, conn).map(drop)
    })
}

/// The accept loop shared by plain TCP and TLS: admits each connection through the source's
/// [`ConnectionGuard`] (refusals are closed at once and counted) and runs `serve` on its own
/// thread with the connection's slot held until `serve` returns.
pub(crate) fn run_stream_listener<H>(
    listener: TcpListener,
    ctx: ReaderContext,
    kind: &'static str,
    serve: H,
) -> std::io::Result<()>
where
    H: Fn(TcpStream, SocketAddr, &ConnectionContext) -> std::io::Result<()> + Send + Sync + 'static,
{
    listener.set_nonblocking(true)?;
    let serve = Arc::new(serve);
    let shared = ConnectionContext::of(&ctx);
    let open = Arc::new(AtomicUsize::new(0));
    let mut connections: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let mut full_logged = false;
    // The thread serving the connection, unless it was refused or could not start.
    let serve_accepted = |stream: TcpStream, peer: SocketAddr| {
        let admission = match shared.guard.admit(Some(peer)) {
            Ok(a) => a,
            Err(refusal) => {
                if shared.counters.logs.refused.permit().is_some() {
                    tracing::warn!(source = %ctx.source_name, %peer, reason = refusal.label(), "connection refused (further refusals are only counted for 10 s)");
                }
                drop(stream);
                return None;
            }
        };
        let conn = shared.clone();
        let open_now = open.clone();
        let serve = serve.clone();
        open_now.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name(format!("sluice-{kind}-{}", ctx.core))
            .spawn(move || {
                pin(conn.core, conn.pin);
                if let Err(e) = serve(stream, peer, &conn) {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                drop(admission);
                open_now.fetch_sub(1, Ordering::Relaxed);
            });
        match spawned {
            Ok(handle) => Some(handle),
            Err(e) => {
                // The stream and its admission moved into the failed closure and are
                // released with it.
                open.fetch_sub(1, Ordering::Relaxed);
                tracing::error!(%peer, "cannot start a connection thread, connection closed: {e}");
                None
            }
        }
    };
    while !shared.shutdown.load(Ordering::Relaxed) {
        connections.retain(|h| !h.is_finished());
        if open.load(Ordering::Relaxed) >= ctx.max_connections.max(1) {
            // Leave further connections in the kernel backlog until one closes.
            if !full_logged {
                tracing::warn!(source = %ctx.source_name, limit = ctx.max_connections, "max_connections reached; new connections wait");
                full_logged = true;
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        full_logged = false;
        if !wait_readable(listener.as_raw_fd(), SHUTDOWN_POLL)? {
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                connections.extend(serve_accepted(stream, peer));
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning; the connection stays queued.
                tracing::warn!(source = %ctx.source_name, "accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    // Connections still in the listen backlog had their data acknowledged to the sender:
    // accept and read them too (the connection threads drain and close at once now), within
    // the connection limit and the shutdown drain budget.
    let deadline = Instant::now() + SHUTDOWN_TCP_DRAIN;
    let mut from_backlog = 0usize;
    while Instant::now() < deadline {
        if open.load(Ordering::Relaxed) >= ctx.max_connections.max(1) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                from_backlog += 1;
                connections.extend(serve_accepted(stream, peer));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // WouldBlock: the backlog is empty.
            Err(_) => break,
        }
    }
    if from_backlog > 0 {
        tracing::info!(source = %ctx.source_name, connections = from_backlog, "read connections from the listen backlog at shutdown");
    }
    for handle in connections {
        let _ = handle.join();
    }
    Ok(())
}

fn wait_readable(fd: std::os::fd::RawFd, timeout: Duration) -> std::io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(rc > 0)
}

/// How a connection's reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// The peer closed (or shutdown began).
    Closed,
    /// The daemon closed it because of a limit, or a reload took the sender off the
    /// allowlist (counted).
    Limit(Closure),
}

/// Frames one connection into batches. Hands a batch over when it is full, when the stream has
/// no more data for now, and at the end; blocks while the worker queue is full. `stream` must
/// time out its reads (about [`SHUTDOWN_POLL`]) so shutdown and the idle limit are noticed.
/// A TLS stream's end without close_notify (`UnexpectedEof`) counts as a normal end.
pub(crate) fn read_stream<S: Read>(
    stream: &mut S,
    peer: SocketAddr,
    ctx: &ConnectionContext,
) -> std::io::Result<StreamEnd> {
    let mut framer = StreamFramer::new(ctx.framing, ctx.limits);
    let mut buf = vec![0u8; TCP_READ_BYTES];
    let mut batch = FrameBatch::reused(&ctx.recycled, ctx.source_index);
    let mut stats = FrameStats::default();
    let limits = ctx.guard.limits().clone();
    let mut watch = StallWatch::new(Instant::now());
    let mut allow = ctx.guard.allowlist();
    // Set at shutdown: read on until the stream has nothing buffered (see SHUTDOWN_TCP_DRAIN).
    let mut drain_until: Option<Instant> = None;
    let result = loop {
        if drain_until.is_none() && ctx.shutdown.load(Ordering::Relaxed) {
            drain_until = Some(Instant::now() + SHUTDOWN_TCP_DRAIN);
        }
        if drain_until.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(source = %ctx.source_name, %peer, "TCP sender was still sending at shutdown; what arrived after the drain budget was not read");
            break Ok(StreamEnd::Closed);
        }
        match stream.read(&mut buf) {
            Ok(0) => break Ok(StreamEnd::Closed),
            Ok(n) => {
                stats.bytes += n as u64;
                framer.feed(&buf[..n], &mut |ev| {
                    collect(ev, &mut batch, peer, &mut stats, ctx)
                });
                let full = batch.len() >= ctx.batch_max_frames
                    || batch.data.len() >= READER_BATCH_MAX_BYTES;
                if (full || n < buf.len())
                    && !batch.is_empty()
                    && !hand_over(&mut batch, ctx, &mut stats, &mut watch)
                {
                    return Ok(StreamEnd::Closed);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if drain_until.is_some() {
                    // Nothing more buffered: the drain is complete.
                    break Ok(StreamEnd::Closed);
                }
                if !batch.is_empty() && !hand_over(&mut batch, ctx, &mut stats, &mut watch) {
                    return Ok(StreamEnd::Closed);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break Ok(StreamEnd::Closed);
            }
            Err(e) => break Err(e),
        }
        let taken_off = allow
            .if_changed()
            .is_some_and(|list| !list.permits(peer.ip()))
            .then_some(Closure::NotAllowed);
        if let Some(closure) = taken_off.or_else(|| {
            watch.check(
                &limits,
                stats.completed,
                framer.unfinished_frame_bytes(),
                Instant::now(),
            )
        }) {
            ctx.guard.closed(closure);
            closure.log(&ctx.source_name, Some(peer));
            break Ok(StreamEnd::Limit(closure));
        }
    };
    // Whatever arrived of an unfinished message is kept (marked truncated where it applies).
    framer.finish(&mut |ev| collect(ev, &mut batch, peer, &mut stats, ctx));
    if !batch.is_empty() {
        hand_over(&mut batch, ctx, &mut stats, &mut watch);
    }
    stats.flush(&ctx.counters);
    result
}

#[derive(Default)]
struct FrameStats {
    /// Messages completed on this connection so far (never reset; the idle clock watches it).
    completed: u64,
    messages: u64,
    bytes: u64,
    truncated: u64,
    rejected: u64,
    desync: u64,
}

impl FrameStats {
    fn flush(&mut self, counters: &ReaderCounters) {
        if self.messages > 0 {
            counters
                .received_messages
                .increment(std::mem::take(&mut self.messages));
        }
        if self.bytes > 0 {
            counters
                .received_bytes
                .increment(std::mem::take(&mut self.bytes));
        }
        if self.truncated > 0 {
            counters
                .truncated
                .increment(std::mem::take(&mut self.truncated));
        }
        if self.rejected > 0 {
            counters
                .dropped_oversize
                .increment(std::mem::take(&mut self.rejected));
        }
        if self.desync > 0 {
            counters
                .framing_errors
                .increment(std::mem::take(&mut self.desync));
        }
    }
}

fn collect(
    event: FrameEvent<'_>,
    batch: &mut FrameBatch,
    peer: SocketAddr,
    stats: &mut FrameStats,
    ctx: &ConnectionContext,
) {
    match event {
        FrameEvent::Frame { bytes, truncated } => {
            if batch.received_at.is_none() {
                batch.received_at = Some(Timestamp::now());
            }
            stats.messages += 1;
            stats.completed += 1;
            stats.truncated += truncated as u64;
            batch.push(bytes, Some(peer), truncated);
        }
        FrameEvent::Rejected { .. } => {
            stats.messages += 1;
            stats.completed += 1;
            stats.rejected += 1;
        }
        FrameEvent::Desync { skipped } => {
            stats.desync += 1;
            if let Some(unlogged) = ctx.counters.logs.framing.permit() {
                crate::net::framing_error_log(&ctx.source_name, Some(peer), skipped, unlogged);
            }
        }
    }
}

/// Sends the batch (blocking while the queue is full) and starts a new one. False when the
/// pipeline is gone.
fn hand_over(
    batch: &mut FrameBatch,
    ctx: &ConnectionContext,
    stats: &mut FrameStats,
    watch: &mut StallWatch,
) -> bool {
    stats.flush(&ctx.counters);
    let next = FrameBatch::reused(&ctx.recycled, ctx.source_index);
    let full = std::mem::replace(batch, next);
    match ctx.to_worker.try_send(full) {
        Ok(()) => true,
        Err(TrySendError::Full(full)) => {
            let blocked = Instant::now();
            let sent = ctx.to_worker.send(full).is_ok();
            // The connection was not read meanwhile: a sender that kept sending into its
            // socket buffer would otherwise be closed as idle over data it saw acknowledged.
            watch.postpone(blocked.elapsed());
            sent
        }
        Err(TrySendError::Disconnected(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam::channel::bounded;

    fn context(
        to_worker: Sender<FrameBatch>,
        recycled: Receiver<FrameBatch>,
        shutdown: Arc<AtomicBool>,
    ) -> ReaderContext {
        ReaderContext {
            source_index: 3,
            source_name: Arc::from("test"),
            core: 0,
            limits: FrameLimits {
                max_frame_bytes: 16,
                oversize: OversizePolicy::Truncate,
            },
            framing: Framing::Lf,
            batch_max_frames: 8,
            to_worker,
            recycled,
            shutdown,
            max_connections: 4,
            pin: false,
            counters: ReaderCounters::noop(),
            guard: crate::net::guard::ConnectionGuard::unlimited(),
            overflow: None,
            linger: crate::net::DEFAULT_READER_LINGER,
        }
    }

    /// A portable UDP reader running on a loopback socket, and a client to send to it.
    struct UdpReaderUnderTest {
        addr: SocketAddr,
        /// The worker queue the reader fills.
        batches: Receiver<FrameBatch>,
        /// Kept so that the reader's recycle queue stays open, as in the daemon.
        _recycle: Sender<FrameBatch>,
        shutdown: Arc<AtomicBool>,
        reader: std::thread::JoinHandle<std::io::Result<()>>,
        client: UdpSocket,
    }

    impl UdpReaderUnderTest {
        /// `rcvbuf`: the socket's receive buffer; `queue`: the worker queue's depth in
        /// batches; `adjust` edits the reader's [`context`] before it starts.
        fn start(rcvbuf: usize, queue: usize, adjust: impl FnOnce(&mut ReaderContext)) -> Self {
            let (socket, _) = crate::net::bind_udp("127.0.0.1:0".parse().unwrap(), rcvbuf).unwrap();
            let addr = socket.local_addr().unwrap();
            let (tx, batches) = bounded(queue);
            let (recycle, recycled) = bounded(queue);
            let shutdown = Arc::new(AtomicBool::new(false));
            let mut ctx = context(tx, recycled, shutdown.clone());
            adjust(&mut ctx);
            UdpReaderUnderTest {
                addr,
                batches,
                _recycle: recycle,
                shutdown,
                reader: std::thread::spawn(move || run_udp(socket, ctx)),
                client: UdpSocket::bind("127.0.0.1:0").unwrap(),
            }
        }

        fn send(&self, datagram: &[u8]) {
            self.client.send_to(datagram, self.addr).unwrap();
        }

        fn stop(self) {
            self.shutdown.store(true, Ordering::Relaxed);
            self.reader.join().unwrap().unwrap();
        }
    }

    /// A connection whose reader waits on a full worker queue is not read meanwhile: its
    /// sender goes on into the socket buffer, and the wait must not count as its idleness.
    #[test]
    fn time_blocked_on_a_full_worker_queue_is_not_idleness() {
        use crate::net::guard::{Allowlist, ConnectionGuard, ConnectionLimits};
        use std::io::Write;
        let idle = Duration::from_millis(400);
        let (tx, rx) = bounded(1);
        let (_recycle, recycled) = bounded(4);
        let shutdown = Arc::new(AtomicBool::new(false));
        let mut reader = context(tx.clone(), recycled, shutdown.clone());
        reader.limits.max_frame_bytes = 2048;
        reader.batch_max_frames = 512;
        let limits = ConnectionLimits {
            idle_timeout: Some(idle),
            ..ConnectionLimits::UNLIMITED
        };
        reader.guard = ConnectionGuard::new("idle", Allowlist::default(), limits);
        let conn = ConnectionContext::of(&reader);
        // The worker is busy: its queue is full.
        tx.send(FrameBatch::default()).unwrap();

        let (listener, _) = crate::net::bind_tcp("127.0.0.1:0".parse().unwrap(), 4 << 20).unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, peer) = listener.accept().unwrap();
        server.set_nonblocking(false).unwrap();
        server.set_read_timeout(Some(SHUTDOWN_POLL)).unwrap();
        // Exactly one read's worth of whole messages, all in the socket before the reader
        // starts: the first read completes them and keeps the batch for the next hand-over,
        // the next read finds nothing and hands it over, into the full queue.
        let line = format!("{}\n", "m".repeat(1023));
        client
            .write_all(line.repeat(TCP_READ_BYTES / line.len()).as_bytes())
            .unwrap();
        let mut probe = vec![0u8; TCP_READ_BYTES];
        while server.peek(&mut probe).unwrap() < TCP_READ_BYTES {
            std::thread::sleep(Duration::from_millis(5));
        }
        let reading = std::thread::spawn(move || read_stream(&mut server, peer, &conn));
        std::thread::sleep(3 * idle);
        rx.recv().unwrap();
        let held = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(held.len(), TCP_READ_BYTES / line.len());
        client.write_all(b"after the wait\n").unwrap();
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(b) => assert_eq!(b.frame(&b.frames[0]), b"after the wait"),
            Err(_) => panic!(
                "the connection was not read on after the wait: {:?}",
                reading.join().unwrap()
            ),
        }
        shutdown.store(true, Ordering::Relaxed);
        assert_eq!(reading.join().unwrap().unwrap(), StreamEnd::Closed);
    }

    #[test]
    fn udp_batches_datagrams_with_peer_and_truncation() {
        let t = UdpReaderUnderTest::start(1 << 20, 16, |_| {});
        let (rx, client) = (&t.batches, &t.client);
        t.send(b"hello\n");
        t.send(b"");
        t.send(b"0123456789abcdefXYZ");
        let mut frames = Vec::new();
        while frames.len() < 2 {
            let b = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(b.source, 3);
            assert!(b.received_at.is_some());
            for f in &b.frames {
                assert_eq!(f.peer, Some(client.local_addr().unwrap()));
                frames.push((b.frame(f).to_vec(), f.truncated));
            }
        }
        assert_eq!(
            frames,
            vec![
                (b"hello".to_vec(), false),
                (b"0123456789abcdef".to_vec(), true)
            ]
        );
        t.stop();
    }

    #[test]
    fn udp_batches_fill_while_the_worker_is_busy_within_the_byte_bound() {
        const DATAGRAMS: usize = 60;
        const LEN: usize = 30_000;
        let t = UdpReaderUnderTest::start(8 << 20, 64, |ctx| {
            ctx.limits.max_frame_bytes = 65_535;
            ctx.batch_max_frames = 256;
        });
        let rx = &t.batches;
        for i in 0..DATAGRAMS {
            t.send(&vec![b'a' + (i % 26) as u8; LEN]);
        }
        // Nobody takes from the queue until everything arrived: after the first hand-over the
        // worker looks busy, so the reader fills batches up to the byte bound.
        let mut batches = Vec::new();
        let mut frames = 0;
        while frames < DATAGRAMS {
            let b = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            frames += b.len();
            batches.push(b);
        }
        let sizes: Vec<usize> = batches.iter().map(|b| b.data.len()).collect();
        assert!(
            sizes.iter().all(|&n| n <= READER_BATCH_MAX_BYTES),
            "{sizes:?}"
        );
        assert!(
            batches.iter().any(|b| b.len() > 1),
            "held batches: {sizes:?}"
        );
        let mut i = 0;
        for b in &batches {
            for f in &b.frames {
                assert_eq!(b.frame(f), vec![b'a' + (i % 26) as u8; LEN].as_slice());
                i += 1;
            }
        }
        t.stop();
    }

    #[test]
    fn udp_pauses_on_a_full_queue_and_loses_nothing() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let counters = metrics::with_local_recorder(&recorder, || ReaderCounters::register("q"));
        let t = UdpReaderUnderTest::start(1 << 20, 1, |ctx| {
            ctx.counters = counters;
            ctx.batch_max_frames = 1;
        });
        let rx = &t.batches;
        for i in 0..20 {
            t.send(format!("m{i}").as_bytes());
        }
        // Nobody takes from the queue: the reader holds one batch, the queue one, and the
        // rest waits in the socket's receive buffer instead of being read and dropped.
        std::thread::sleep(Duration::from_millis(300));
        let no_queue_full = |text: &str| {
            text.lines()
                .filter(|l| l.contains("reason=\"queue_full\""))
                .all(|l| l.ends_with(" 0"))
        };
        let text = handle.render();
        assert!(no_queue_full(&text), "{text}");
        let received = |text: &str| {
            text.lines()
                .find(|l| l.starts_with("sluice_received_messages_total{source=\"q\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        assert!(received(&text) <= 2, "{text}");
        let mut names = Vec::new();
        while names.len() < 20 {
            let b = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            names.extend(
                b.frames
                    .iter()
                    .map(|f| String::from_utf8(b.frame(f).to_vec()).unwrap()),
            );
        }
        let want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        assert_eq!(names, want);
        t.stop();
        let text = handle.render();
        assert_eq!(received(&text), 20, "{text}");
        assert!(no_queue_full(&text), "{text}");
    }
}
