//! TCP reader: multishot accept on the core's listener and one multishot `recv` per
//! connection, all drawing from one provided-buffer ring; a framer per connection.
//!
//! Backpressure without loss: when the worker queue is full the reader waits in
//! [`Handoff::flush_blocking`]; meanwhile the ring is not entered, so deferred receive work
//! does not run (or, on rings without it, completions are not consumed, buffers are not
//! returned and the kernel ends the receives with ENOBUFS): data stays in the socket buffers
//! and TCP flow control slows the senders. Receives are re-armed once buffers are back.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, types};

use super::{BufRing, Lingering, UringOptions, build_ring, push_sqe, wait_for_completions};
use crate::frame::{FrameEvent, StreamFramer};
use crate::log_every::{LOG_EVERY, LogEvery};
use crate::net::ReaderContext;
use crate::net::guard::{Admission, Allowlist, Closure, StallWatch};
use crate::net::handoff::{Handoff, Totals};

/// What the TCP reader needs from a framer; implemented by [`StreamFramer`]. Generic so
/// the reader can be exercised and benchmarked independently of the framing rules.
pub trait ConnectionFramer {
    fn feed(&mut self, data: &[u8], emit: &mut dyn FnMut(FrameEvent<'_>));
    fn finish(&mut self, emit: &mut dyn FnMut(FrameEvent<'_>));
    /// See [`StreamFramer::unfinished_frame_bytes`]; framers that cannot tell say 0.
    fn unfinished_frame_bytes(&self) -> usize {
        0
    }
}

impl ConnectionFramer for StreamFramer {
    fn feed(&mut self, data: &[u8], emit: &mut dyn FnMut(FrameEvent<'_>)) {
        StreamFramer::feed(self, data, emit)
    }

    fn finish(&mut self, emit: &mut dyn FnMut(FrameEvent<'_>)) {
        StreamFramer::finish(self, emit)
    }

    fn unfinished_frame_bytes(&self) -> usize {
        StreamFramer::unfinished_frame_bytes(self)
    }
}

const KIND_SHIFT: u32 = 56;
const ACCEPT: u64 = 1 << KIND_SHIFT;
const RECV: u64 = 2 << KIND_SHIFT;
const CANCEL: u64 = 3 << KIND_SHIFT;
const KIND_MASK: u64 = 0xff << KIND_SHIFT;

/// Back-off before re-arming accept after a resource error (EMFILE, ENFILE, ENOMEM…).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long shutdown waits for the kernel to confirm every operation is cancelled.
const CANCEL_WAIT: Duration = Duration::from_millis(150);

fn recv_user_data(slot: usize, generation: u32) -> u64 {
    RECV | (u64::from(generation & 0xff_ffff) << 32) | slot as u64
}

struct Connection<F> {
    stream: TcpStream,
    peer: Option<SocketAddr>,
    framer: F,
    generation: u32,
    armed: bool,
    /// The connection's slot in the source's limits; released when the connection is dropped.
    _admission: Admission,
    watch: StallWatch,
    /// Messages completed so far (the idle clock watches it).
    completed: u64,
    /// A limit closed it: its socket is shut down and the receive's end completion is awaited.
    closing: bool,
}

/// How often connections are checked against the idle limit when no data arrives.
const IDLE_SWEEP: Duration = Duration::from_millis(250);

/// Runs until `ctx.shutdown` is set; see [`run_tcp_with`].
pub fn run_tcp(listener: TcpListener, ctx: ReaderContext) -> io::Result<()> {
    let (framing, limits) = (ctx.framing, ctx.limits);
    let options = UringOptions::default().with_linger(ctx.linger);
    run_tcp_with(listener, ctx, &options, move || {
        StreamFramer::new(framing, limits)
    })
    .map(drop)
}

/// Accepts and reads connections on `listener` until `ctx.shutdown` is set. `new_framer` makes
/// the framer of each new connection. Returns the reader's totals.
pub fn run_tcp_with<F: ConnectionFramer>(
    listener: TcpListener,
    ctx: ReaderContext,
    options: &UringOptions,
    new_framer: impl FnMut() -> F,
) -> io::Result<Totals> {
    options.validate()?;
    // Declared before the ring so they are dropped after it (the kernel writes the buffers).
    let mut bufs = BufRing::new(options.tcp_buffers, options.tcp_buffer_bytes, 1)?;
    let cq_entries = (u32::from(options.tcp_buffers) * 2).max(1024);
    let mut ring = build_ring(options.ring_entries, cq_entries)?;
    bufs.register(&ring.submitter())?;

    let mut reader = TcpReader {
        handoff: Handoff::new(&ctx, options.batch_max_bytes, crate::net::SHUTDOWN_POLL),
        ctx: &ctx,
        max_connections: options.max_connections,
        listener_fd: listener.as_raw_fd(),
        connections: Vec::new(),
        generations: Vec::new(),
        free_slots: Vec::new(),
        active: 0,
        accept_armed: false,
        accept_retry_at: None,
        rearm: Vec::new(),
        cancels: Vec::new(),
        waiting: std::collections::VecDeque::new(),
        new_framer,
        error: None,
        cqes: Vec::with_capacity(256),
        framing_errors: ctx.counters.framing_errors.clone(),
        limit_log: LogEvery::new(LOG_EVERY),
    };

    let result = (|| -> io::Result<()> {
        let mut next_sweep = Instant::now() + IDLE_SWEEP;
        let mut lingering = Lingering::new(options.tcp_linger);
        let mut allow = ctx.guard.allowlist();
        while !ctx.shutdown.load(Ordering::Relaxed) {
            reader.arm(&mut ring)?;
            lingering.wait(&ring, crate::net::SHUTDOWN_POLL)?;
            let draining = Instant::now();
            let completions = reader.drain(&mut ring, &mut bufs)?;
            lingering.woke_with(completions);
            let drained = draining.elapsed();
            if drained >= IDLE_SWEEP {
                // Blocked on a full worker queue: no connection could be read meanwhile.
                reader.postpone_idle(drained);
            }
            if let Some(list) = allow.if_changed() {
                reader.close_not_allowed(list);
            }
            if ctx.guard.limits().idle_timeout.is_some() && Instant::now() >= next_sweep {
                reader.sweep_idle();
                next_sweep = Instant::now() + IDLE_SWEEP;
            }
        }
        Ok(())
    })();

    // Cancel everything, then consume what arrived before the cancellation took effect.
    let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
        .build()
        .user_data(CANCEL);
    let mut settled = false;
    // SAFETY: a cancel request carries no pointers.
    if unsafe { push_sqe(&mut ring, &cancel) }.is_ok() {
        // Only time spent waiting for the kernel counts: handing over what the last receives
        // brought can block on a full worker queue for longer than the whole allowance.
        let mut waited = Duration::ZERO;
        loop {
            settled = !reader.accept_armed && reader.connections.iter().flatten().all(|c| !c.armed);
            if settled || waited >= CANCEL_WAIT {
                break;
            }
            let waiting = Instant::now();
            let woke = wait_for_completions(&ring, Duration::from_millis(10));
            waited += waiting.elapsed();
            if woke.is_err() {
                break;
            }
            if let Err(e) = reader.drain(&mut ring, &mut bufs) {
                tracing::debug!("draining at shutdown: {e}");
                break;
            }
        }
    }
    // A connection whose receive is not confirmed cancelled is skipped (a read beside it could
    // reorder its bytes).
    let deadline = Instant::now() + crate::net::SHUTDOWN_TCP_DRAIN;
    reader.drain_buffered(deadline);
    // Connections still open end here: their unterminated tails become frames too.
    reader.close_all();
    if settled {
        reader.drain_backlog(&listener, deadline);
    } else {
        tracing::warn!(source = %ctx.source_name, "accept cancellation not confirmed at shutdown; connections still in the listen backlog are not read");
    }
    let flushed = reader.handoff.flush_blocking(&ctx);
    if settled {
        let _ = ring.submitter().unregister_buf_ring(bufs.bgid());
    }
    drop(ring);
    let totals = reader.handoff.totals;
    tracing::debug!(source = %ctx.source_name, core = ctx.core, ?totals, "io_uring TCP reader stopped");
    let error = reader.error.take();
    result
        .and(flushed)
        .and(error.map_or(Ok(()), Err))
        .map(|()| totals)
}

struct TcpReader<'c, F, N> {
    handoff: Handoff,
    ctx: &'c ReaderContext,
    max_connections: usize,
    listener_fd: i32,
    connections: Vec<Option<Connection<F>>>,
    /// Per slot; tags receive completions so a reused slot ignores its predecessor's.
    generations: Vec<u32>,
    free_slots: Vec<usize>,
    active: usize,
    accept_armed: bool,
    /// Set after a resource error: accept again only after this instant.
    accept_retry_at: Option<Instant>,
    /// Accepted beyond the limit (in the window before a cancelled accept stopped); opened as
    /// slots free up. At most the few the kernel accepted before the cancellation.
    waiting: std::collections::VecDeque<(TcpStream, Admission)>,
    /// Connections whose multishot receive ended without the connection ending.
    rearm: Vec<usize>,
    /// Receives to cancel (connections closed by a limit), as their user data.
    cancels: Vec<u64>,
    new_framer: N,
    /// Completions copied out of the ring, reused across wake-ups.
    cqes: Vec<cqueue::Entry>,
    /// A worker-queue failure seen inside a framer callback.
    error: Option<io::Error>,
    /// Counted as the portable readers do: a desync skips bytes, not a known number of messages.
    framing_errors: metrics::Counter,
    limit_log: LogEvery,
}

impl<F: ConnectionFramer, N: FnMut() -> F> TcpReader<'_, F, N> {
    fn arm(&mut self, ring: &mut IoUring) -> io::Result<()> {
        let accept_due = self.accept_retry_at.is_none_or(|t| Instant::now() >= t);
        if !self.accept_armed
            && self.active < self.max_connections
            && self.waiting.is_empty()
            && accept_due
        {
            let accept = opcode::AcceptMulti::new(types::Fd(self.listener_fd))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(ACCEPT);
            // SAFETY: multishot accept without an address buffer references no user memory.
            unsafe { push_sqe(ring, &accept)? };
            self.accept_armed = true;
            self.accept_retry_at = None;
        }
        for user_data in self.cancels.drain(..) {
            let cancel = opcode::AsyncCancel::new(user_data)
                .build()
                .user_data(CANCEL);
            // SAFETY: a cancel request carries no pointers.
            unsafe { push_sqe(ring, &cancel)? };
        }
        while let Some(slot) = self.rearm.pop() {
            let Some(conn) = self.connections.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            if conn.armed {
                continue;
            }
            let recv = opcode::RecvMulti::new(types::Fd(conn.stream.as_raw_fd()), 1)
                .build()
                .user_data(recv_user_data(slot, conn.generation));
            // SAFETY: the receive writes only into the provided buffers of group 1, which
            // outlive the ring; the connection's fd stays open until its final completion.
            unsafe { push_sqe(ring, &recv)? };
            conn.armed = true;
        }
        Ok(())
    }

    /// Handles every completion that is ready and hands the frames over; returns how many
    /// of them were receives.
    fn drain(&mut self, ring: &mut IoUring, bufs: &mut BufRing) -> io::Result<usize> {
        // Completions are copied out first: handling one may block on the worker queue, and
        // the completion queue borrow must not be held across that.
        let mut any = true;
        let mut completions = 0;
        while any {
            any = false;
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.clear();
            cqes.extend(ring.completion().take(256));
            for cqe in cqes.drain(..) {
                any = true;
                match cqe.user_data() & KIND_MASK {
                    ACCEPT => self.accepted(ring, &cqe)?,
                    RECV => {
                        // Only receives count towards a linger: a connection's accept is not
                        // traffic, and its first message must not wait behind it.
                        completions += 1;
                        self.received(&cqe, bufs)
                    }
                    _ => {}
                }
                if let Some(e) = self.error.take() {
                    bufs.publish();
                    return Err(e);
                }
            }
            self.cqes = cqes;
            bufs.publish();
        }
        // Every wake-up's frames go over at once: holding them for a busy worker (as the UDP
        // reader does) measured no gain over TCP, whose senders wait through flow control.
        self.handoff.flush_blocking(self.ctx)?;
        Ok(completions)
    }

    fn accepted(&mut self, ring: &mut IoUring, cqe: &cqueue::Entry) -> io::Result<()> {
        if !cqueue::more(cqe.flags()) {
            self.accept_armed = false;
        }
        let result = cqe.result();
        if result < 0 {
            match -result {
                libc::ECANCELED | libc::EINTR | libc::EAGAIN | libc::ECONNABORTED => {}
                errno => {
                    let e = io::Error::from_raw_os_error(errno);
                    tracing::warn!(source = %self.ctx.source_name, "accept failed: {e}; retrying in {ACCEPT_RETRY:?}");
                    self.accept_retry_at = Some(Instant::now() + ACCEPT_RETRY);
                    if self.accept_armed {
                        self.cancel_accept(ring)?;
                    }
                }
            }
            return Ok(());
        }
        // SAFETY: a non-negative accept result is a new descriptor owned by nobody else.
        let stream = unsafe { TcpStream::from_raw_fd(result) };
        let admission = match self.ctx.guard.admit(stream.peer_addr().ok()) {
            Ok(a) => a,
            Err(refusal) => {
                if self.ctx.counters.logs.refused.permit().is_some() {
                    tracing::warn!(source = %self.ctx.source_name, peer = ?stream.peer_addr().ok(), reason = refusal.label(), "connection refused (further refusals are only counted for 10 s)");
                }
                // Dropping the stream closes it.
                return Ok(());
            }
        };
        if self.active >= self.max_connections {
            // Accepted by the multishot accept before its cancellation took effect: the client
            // may already have sent data, so it waits for a free slot rather than being closed.
            self.waiting.push_back((stream, admission));
            return Ok(());
        }
        self.open(stream, admission);
        if self.active >= self.max_connections && self.accept_armed {
            if self.limit_log.permit().is_some() {
                tracing::warn!(source = %self.ctx.source_name, limit = self.max_connections, "connection limit reached; new connections wait in the backlog");
            }
            self.cancel_accept(ring)?;
        }
        Ok(())
    }

    fn open(&mut self, stream: TcpStream, admission: Admission) {
        let peer = stream.peer_addr().ok();
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.connections.push(None);
            self.generations.push(0);
            self.connections.len() - 1
        });
        let generation = self.generations[slot];
        self.connections[slot] = Some(Connection {
            stream,
            peer,
            framer: (self.new_framer)(),
            generation,
            armed: false,
            _admission: admission,
            watch: StallWatch::new(Instant::now()),
            completed: 0,
            closing: false,
        });
        self.active += 1;
        self.rearm.push(slot);
    }

    fn cancel_accept(&mut self, ring: &mut IoUring) -> io::Result<()> {
        let cancel = opcode::AsyncCancel::new(ACCEPT).build().user_data(CANCEL);
        // SAFETY: a cancel request carries no pointers.
        unsafe { push_sqe(ring, &cancel) }
    }

    fn received(&mut self, cqe: &cqueue::Entry, bufs: &mut BufRing) {
        let slot = (cqe.user_data() & 0xffff_ffff) as usize;
        let generation = ((cqe.user_data() >> 32) & 0xff_ffff) as u32;
        let result = cqe.result();
        let buffer = cqueue::buffer_select(cqe.flags());
        let more = cqueue::more(cqe.flags());
        let live = self
            .connections
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.generation == generation);
        if !live {
            if let Some(bid) = buffer {
                bufs.recycle(bid);
            }
            return;
        }
        if !more
            && let Some(conn) = self.connections[slot].as_mut()
            && conn.closing
        {
            // The last completion of a connection a limit closed: whatever it carries is
            // counted, not framed.
            if result > 0 {
                self.handoff.received_bytes(result as usize);
            }
            if let Some(bid) = buffer {
                bufs.recycle(bid);
            }
            conn.armed = false;
            self.close(slot);
            return;
        }
        if result > 0 {
            if let Some(bid) = buffer {
                match bufs.buffer(bid, result as usize) {
                    Some(data) => self.feed(slot, data),
                    None => {
                        self.error = Some(io::Error::other(format!(
                            "recv completion names buffer {bid} of length {result}"
                        )))
                    }
                }
                bufs.recycle(bid);
            }
            if !more {
                self.disarmed(slot);
            }
            return;
        }
        if let Some(bid) = buffer {
            bufs.recycle(bid);
        }
        match -result {
            // The buffers ran out (the worker queue is backed up or traffic outpaced us):
            // receive again once they are back, the data waits in the socket.
            libc::ENOBUFS if !more => self.disarmed(slot),
            libc::ENOBUFS | libc::EINTR | libc::EAGAIN => {}
            // Not the end of the stream: at shutdown, what is still buffered for this
            // connection is read by `drain_buffered` before it is closed.
            libc::ECANCELED => self.disarmed(slot),
            0 => self.end(slot, more),
            errno => {
                tracing::debug!(
                    source = %self.ctx.source_name,
                    peer = ?self.connections[slot].as_ref().and_then(|c| c.peer),
                    "connection ended: {}",
                    io::Error::from_raw_os_error(errno)
                );
                self.end(slot, more)
            }
        }
    }

    fn disarmed(&mut self, slot: usize) {
        if let Some(conn) = self.connections[slot].as_mut() {
            conn.armed = false;
            if conn.closing {
                // A limit closed it while this receive was ending: nothing is in flight now.
                self.close(slot);
            } else if !self.ctx.shutdown.load(Ordering::Relaxed) {
                self.rearm.push(slot);
            }
        }
    }

    /// End of stream (EOF, reset, cancellation at shutdown). The descriptor is closed only
    /// after the receive's final completion.
    fn end(&mut self, slot: usize, more: bool) {
        if more {
            return;
        }
        if let Some(conn) = self.connections[slot].as_mut() {
            conn.armed = false;
        }
        self.close(slot);
    }

    /// Shutdown, after every receive is cancelled: reads what the kernel already buffered for
    /// each open connection (data the sender saw acknowledged) with non-blocking reads until
    /// the socket is empty, until `deadline` for all of them.
    fn drain_buffered(&mut self, deadline: Instant) {
        let mut buf = vec![0u8; 64 * 1024];
        for slot in 0..self.connections.len() {
            let Some(conn) = self.connections[slot].as_ref() else {
                continue;
            };
            if conn.armed || conn.closing {
                continue;
            }
            let mut total = 0usize;
            while Instant::now() < deadline {
                // `feed` can close the connection (a limit struck): its socket is closed then,
                // and the descriptor's number may already name another file.
                let Some(conn) = self.connections[slot].as_ref().filter(|c| !c.closing) else {
                    break;
                };
                let fd = conn.stream.as_raw_fd();
                // SAFETY: `fd` is the socket of the connection in `slot`, which keeps it open
                // while it is there, and nothing between here and the call can take it out;
                // `buf` is a writable buffer of `buf.len()` bytes.
                let n = unsafe {
                    libc::recv(
                        fd,
                        buf.as_mut_ptr().cast::<libc::c_void>(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n > 0 {
                    total += n as usize;
                    self.feed(slot, &buf[..n as usize]);
                    continue;
                }
                if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // 0: the peer closed; EAGAIN: nothing more buffered; anything else ends it too.
                break;
            }
            if total > 0 {
                tracing::debug!(source = %self.ctx.source_name, slot, bytes = total, "read buffered data at shutdown");
            }
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                source = %self.ctx.source_name,
                budget_ms = crate::net::SHUTDOWN_TCP_DRAIN.as_millis() as u64,
                "TCP senders were still sending at shutdown; what arrived after the drain budget was not read"
            );
        }
    }

    fn close_all(&mut self) {
        for slot in 0..self.connections.len() {
            self.close(slot);
        }
    }

    /// Shutdown, after the open connections are read and closed and the multishot accept is
    /// confirmed cancelled: the connections waiting for a slot and those still in the listen
    /// backlog had their data acknowledged to the sender, so they are opened, read until empty
    /// and closed too — in rounds within `max_connections`, until `deadline`.
    fn drain_backlog(&mut self, listener: &TcpListener, deadline: Instant) {
        if let Err(e) = listener.set_nonblocking(true) {
            tracing::warn!(source = %self.ctx.source_name, "listen backlog not read at shutdown: {e}");
            return;
        }
        let mut backlog_empty = false;
        let mut from_backlog = 0usize;
        while Instant::now() < deadline {
            while self.active < self.max_connections {
                if let Some((stream, admission)) = self.waiting.pop_front() {
                    self.open(stream, admission);
                    continue;
                }
                if backlog_empty {
                    break;
                }
                match listener.accept() {
                    // A refusal is counted by the guard; dropping the stream closes it.
                    Ok((stream, peer)) => {
                        if let Ok(admission) = self.ctx.guard.admit(Some(peer)) {
                            from_backlog += 1;
                            self.open(stream, admission);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // WouldBlock: the backlog is empty.
                    Err(_) => backlog_empty = true,
                }
            }
            if self.active == 0 {
                break;
            }
            self.drain_buffered(deadline);
            self.close_all();
            if self.active > 0 {
                // A receive whose cancellation was not confirmed keeps its slot (see `close`).
                break;
            }
        }
        if from_backlog > 0 {
            tracing::info!(source = %self.ctx.source_name, connections = from_backlog, "read connections from the listen backlog at shutdown");
        }
    }

    /// Finishes the framer (its unterminated tail becomes a frame) and frees the slot.
    fn close(&mut self, slot: usize) {
        let Some(conn) = self.connections[slot].as_mut() else {
            return;
        };
        if conn.armed {
            // Only reached at shutdown if a cancellation was not confirmed in time: keep the
            // descriptor open (the kernel may still complete into it) but flush the framer.
            let peer = conn.peer;
            let mut framer = std::mem::replace(&mut conn.framer, (self.new_framer)());
            Self::run_framer(
                &mut self.handoff,
                &mut self.error,
                &self.framing_errors,
                self.ctx,
                peer,
                |emit| framer.finish(emit),
            );
            return;
        }
        let mut conn = self.connections[slot].take().expect("checked above");
        let peer = conn.peer;
        tracing::debug!(source = %self.ctx.source_name, ?peer, "connection closed");
        Self::run_framer(
            &mut self.handoff,
            &mut self.error,
            &self.framing_errors,
            self.ctx,
            peer,
            |emit| conn.framer.finish(emit),
        );
        // Completions still queued for the old connection must not reach the next one.
        self.generations[slot] = self.generations[slot].wrapping_add(1) & 0xff_ffff;
        self.free_slots.push(slot);
        self.active -= 1;
        if !self.ctx.shutdown.load(Ordering::Relaxed)
            && let Some((stream, admission)) = self.waiting.pop_front()
        {
            self.open(stream, admission);
        }
    }

    fn feed(&mut self, slot: usize, data: &[u8]) {
        let Some(conn) = self.connections[slot].as_mut() else {
            return;
        };
        self.handoff.received_bytes(data.len());
        if conn.closing {
            // Arrived after a limit closed the connection: counted as received, not framed.
            return;
        }
        let peer = conn.peer;
        let framer = &mut conn.framer;
        conn.completed += Self::run_framer(
            &mut self.handoff,
            &mut self.error,
            &self.framing_errors,
            self.ctx,
            peer,
            |emit| framer.feed(data, emit),
        );
        let unfinished = conn.framer.unfinished_frame_bytes();
        if let Some(closure) = conn.watch.check(
            self.ctx.guard.limits(),
            conn.completed,
            unfinished,
            Instant::now(),
        ) {
            self.close_for(slot, closure);
        }
    }

    fn postpone_idle(&mut self, by: Duration) {
        for conn in self.connections.iter_mut().flatten() {
            conn.watch.postpone(by);
        }
    }

    /// Connections from senders `allow` does not permit (a reload took them off) are closed.
    fn close_not_allowed(&mut self, allow: &Allowlist) {
        let guard = &self.ctx.guard;
        self.waiting.retain(|(stream, _)| {
            let peer = stream.peer_addr().ok();
            let permitted = allow.permits_peer(peer.map(|p| p.ip()));
            if !permitted {
                guard.closed(Closure::NotAllowed);
                Closure::NotAllowed.log(&self.ctx.source_name, peer);
            }
            permitted
        });
        for slot in 0..self.connections.len() {
            let taken_off = self.connections[slot]
                .as_ref()
                .is_some_and(|c| !c.closing && !allow.permits_peer(c.peer.map(|p| p.ip())));
            if taken_off {
                self.close_for(slot, Closure::NotAllowed);
            }
        }
    }

    /// Connections that completed no message within the idle timeout are closed.
    fn sweep_idle(&mut self) {
        let now = Instant::now();
        for slot in 0..self.connections.len() {
            let Some(conn) = self.connections[slot].as_mut() else {
                continue;
            };
            if conn.closing {
                continue;
            }
            let unfinished = conn.framer.unfinished_frame_bytes();
            if let Some(closure) =
                conn.watch
                    .check(self.ctx.guard.limits(), conn.completed, unfinished, now)
            {
                self.close_for(slot, closure);
            }
        }
    }

    /// Closes a connection because of a limit, through the usual end-of-stream path (any
    /// unfinished message is kept, marked truncated where it applies) once no receive is in
    /// flight for it.
    fn close_for(&mut self, slot: usize, closure: Closure) {
        let Some(conn) = self.connections[slot].as_mut() else {
            return;
        };
        conn.closing = true;
        self.ctx.guard.closed(closure);
        closure.log(&self.ctx.source_name, conn.peer);
        if conn.armed {
            // The receive in flight is cancelled; its final completion frees the slot. The
            // shutdown tells the client at once.
            // SAFETY: shutting down a descriptor this connection owns; it stays open until
            // the slot is freed.
            unsafe { libc::shutdown(conn.stream.as_raw_fd(), libc::SHUT_RDWR) };
            self.cancels.push(recv_user_data(slot, conn.generation));
        } else {
            self.close(slot);
        }
    }

    fn run_framer(
        handoff: &mut Handoff,
        error: &mut Option<io::Error>,
        framing_errors: &metrics::Counter,
        ctx: &ReaderContext,
        peer: Option<SocketAddr>,
        run: impl FnOnce(&mut dyn FnMut(FrameEvent<'_>)),
    ) -> u64 {
        let mut completed = 0;
        let mut emit = |event: FrameEvent<'_>| match event {
            FrameEvent::Frame { bytes, truncated } => {
                completed += 1;
                if handoff.push(bytes, peer, truncated)
                    && let Err(e) = handoff.flush_blocking(ctx)
                {
                    error.get_or_insert(e);
                }
            }
            FrameEvent::Rejected { .. } => {
                completed += 1;
                handoff.rejected_oversize()
            }
            FrameEvent::Desync { skipped } => {
                framing_errors.increment(1);
                if let Some(unlogged) = ctx.counters.logs.framing.permit() {
                    crate::net::framing_error_log(&ctx.source_name, peer, skipped, unlogged);
                }
            }
        };
        run(&mut emit);
        completed
    }
}
