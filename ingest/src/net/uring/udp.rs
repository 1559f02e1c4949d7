//! UDP reader: one multishot `recvmsg` on the core's SO_REUSEPORT socket, receiving into a
//! provided-buffer ring; every completion is one datagram with its source address.

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types};

use super::{
    BufRing, Linger, Lingering, UringOptions, build_ring, push_sqe, sockaddr_from_bytes,
    wait_for_completions,
};
use crate::frame::{OversizePolicy, datagram};
use crate::log_every::{LOG_EVERY, LogEvery};
use crate::net::ReaderContext;
use crate::net::drops::{RXQ_OVFL_CMSG_SPACE, enable_rxq_ovfl, rxq_ovfl_from_cmsgs};
use crate::net::handoff::{Handoff, Totals};

/// `struct io_uring_recvmsg_out` that the kernel writes first in every buffer.
const RECVMSG_OUT_BYTES: usize = 16;
/// Address field: room for a `sockaddr_in6` (28 bytes), kept 8-byte aligned.
const NAME_BYTES: usize = 32;
/// The smallest buffer accepted: header, address, control message and some payload.
pub(crate) const MIN_BUFFER_BYTES: u32 =
    (RECVMSG_OUT_BYTES + NAME_BYTES + RXQ_OVFL_CMSG_SPACE + 64) as u32;

const RECV: u64 = 1;
const CANCEL: u64 = 2;
/// How long shutdown waits for the kernel to confirm the receive is cancelled.
const CANCEL_WAIT: Duration = Duration::from_millis(100);

/// Runs until `ctx.shutdown` is set; see [`run_udp_with`].
pub fn run_udp(socket: UdpSocket, ctx: ReaderContext) -> io::Result<()> {
    let options = UringOptions::default().with_linger(ctx.linger);
    run_udp_with(socket, ctx, &options).map(drop)
}

/// Reads datagrams from `socket` until `ctx.shutdown` is set, handing batches to the worker.
/// While the worker queue is full, batches go to the reader's disk overflow if it has one;
/// otherwise (or when it is full) the reader pauses (see `Handoff::flush_blocking`):
/// datagrams wait in the socket's receive buffer (and in whatever provided buffers a ring
/// without deferred task running still fills meanwhile). Returns the reader's totals.
pub fn run_udp_with(
    socket: UdpSocket,
    mut ctx: ReaderContext,
    options: &UringOptions,
) -> io::Result<Totals> {
    options.validate()?;
    if let Err(e) = enable_rxq_ovfl(socket.as_fd()) {
        tracing::warn!(source = %ctx.source_name, "SO_RXQ_OVFL unavailable ({e}); kernel drops only seen by the periodic poll");
    }
    // Declared before the ring so it is dropped after it: the kernel may write to the buffers
    // until the ring is gone.
    let mut bufs = BufRing::new(options.udp_buffers, options.udp_buffer_bytes, 0)?;
    let cq_entries = (u32::from(options.udp_buffers) * 2).max(256);
    let mut ring = build_ring(options.ring_entries, cq_entries)?;
    bufs.register(&ring.submitter())?;

    // The kernel reads only the name and control lengths from this header; boxed so its address
    // is stable for the life of the multishot request.
    // SAFETY: msghdr is plain data for which all-zero is a valid value.
    let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    msghdr.msg_namelen = NAME_BYTES as libc::socklen_t;
    msghdr.msg_controllen = RXQ_OVFL_CMSG_SPACE as _;
    // MSG_TRUNC: report a cut datagram's real length, so received bytes count what was sent.
    let recv = opcode::RecvMsgMulti::new(types::Fd(socket.as_raw_fd()), &*msghdr, bufs.bgid())
        .flags(libc::MSG_TRUNC as u32)
        .build()
        .user_data(RECV);

    let overflow = ctx.overflow.take();
    let mut reader = UdpReader {
        handoff: Handoff::new(&ctx, options.batch_max_bytes, crate::net::SHUTDOWN_POLL)
            .with_overflow(&ctx, overflow),
        ctx: &ctx,
        armed: false,
        last_kernel_drops: 0,
        kernel_drop_log: LogEvery::new(LOG_EVERY),
        error_log: LogEvery::new(LOG_EVERY),
        enobufs: 0,
        allow: ctx.guard.allowlist(),
        not_allowed: 0,
    };

    // The kernel's figure: what the socket may hold, its bookkeeping included.
    let receive_buffer = socket2::SockRef::from(&socket)
        .recv_buffer_size()
        .unwrap_or(0);
    let linger = Linger {
        max_wait: linger_within_buffer(options.udp_linger.max_wait, receive_buffer),
        ..options.udp_linger
    };
    let result = (|| -> io::Result<()> {
        let mut lingering = Lingering::new(linger);
        while !ctx.shutdown.load(Ordering::Relaxed) {
            if !reader.armed {
                // SAFETY: the request reads `msghdr` and writes into `bufs`, both declared
                // before `ring` and so alive until the ring is dropped.
                unsafe { push_sqe(&mut ring, &recv)? };
                reader.armed = true;
            }
            // Never lingers past the hand-off's own limit: a held batch or a non-empty
            // overflow needs the reader back within `HANDOFF_HOLD`.
            lingering.wait(&ring, reader.handoff.wait_timeout())?;
            let datagrams = reader.drain(&mut ring, &mut bufs, &msghdr)?;
            lingering.woke_with(datagrams);
        }
        Ok(())
    })();

    // Stop the receive and keep what it delivered before the cancel took effect.
    if reader.armed {
        let cancel = opcode::AsyncCancel::new(RECV).build().user_data(CANCEL);
        // SAFETY: a cancel request carries no pointers.
        if unsafe { push_sqe(&mut ring, &cancel) }.is_ok() {
            let deadline = Instant::now() + CANCEL_WAIT;
            while reader.armed && Instant::now() < deadline {
                wait_for_completions(&ring, Duration::from_millis(10))?;
                if let Err(e) = reader.drain(&mut ring, &mut bufs, &msghdr) {
                    tracing::debug!("draining at shutdown: {e}");
                    break;
                }
            }
        }
    }
    let flushed = reader.handoff.finish(&ctx);
    if !reader.armed {
        let _ = ring.submitter().unregister_buf_ring(bufs.bgid());
    }
    drop(ring);
    let totals = reader.handoff.totals;
    tracing::debug!(source = %ctx.source_name, core = ctx.core, ?totals, enobufs = reader.enobufs, "io_uring UDP reader stopped");
    result.and(flushed).map(|()| totals)
}

/// Receive rate, in bytes of kernel buffer per second, that a lingering reader must survive:
/// 10 Gb/s of datagrams at three times their size in socket-buffer bookkeeping (`truesize`:
/// ≈ 2.3× for an 850-byte datagram on loopback, more for small ones).
const LINGER_SAFE_RATE: f64 = 1.25e9 * 3.0;

/// Share of the socket buffer that a linger may fill at [`LINGER_SAFE_RATE`]: the rest stays
/// for absorbing a burst while the reader works through what arrived during the linger.
const LINGER_BUFFER_SHARE: f64 = 0.25;

/// `max_wait` capped so that what can arrive meanwhile fills at most a quarter of the socket's
/// buffer (`receive_buffer` bytes, as the kernel reports it). A lingering reader does not wake
/// per datagram: the receive is re-polled once per batch of arrivals, so waiting for a count
/// of them cannot be relied on to end the linger early, and a burst that starts during it
/// fills the socket buffer for the whole wait (measured with a 2 MiB buffer and an uncapped
/// 10 ms linger: 5–11 % lost at 200–400k msgs/s, where the 0.5 ms linger lost nothing). With
/// the default 64 MiB buffer the cap is ≈ 9 ms; with 2 MiB (4 MiB as the kernel counts it),
/// ≈ 0.28 ms; with Linux's default 208 KiB, ≈ 28 µs.
fn linger_within_buffer(max_wait: Duration, receive_buffer: usize) -> Duration {
    max_wait.min(Duration::from_secs_f64(
        receive_buffer as f64 * LINGER_BUFFER_SHARE / LINGER_SAFE_RATE,
    ))
}

struct UdpReader<'c> {
    handoff: Handoff,
    ctx: &'c ReaderContext,
    armed: bool,
    last_kernel_drops: u32,
    kernel_drop_log: LogEvery,
    error_log: LogEvery,
    /// Times the receive stopped because every buffer was waiting to be processed.
    enobufs: u64,
    allow: crate::net::guard::AllowlistView,
    /// Refused datagrams not yet added to the counter.
    not_allowed: u64,
}

impl UdpReader<'_> {
    /// Processes every completion that is ready, returns the buffers, then hands over the
    /// partial batch: the socket had nothing more for us. Returns how many datagrams
    /// completed (received or refused).
    fn drain(
        &mut self,
        ring: &mut io_uring::IoUring,
        bufs: &mut BufRing,
        msghdr: &libc::msghdr,
    ) -> io::Result<usize> {
        let mut outcome = Ok(());
        let mut datagrams = 0;
        for cqe in ring.completion() {
            if cqe.user_data() != RECV {
                continue;
            }
            if !cqueue::more(cqe.flags()) {
                self.armed = false;
            }
            let result = cqe.result();
            if result < 0 {
                match -result {
                    libc::ENOBUFS => self.enobufs += 1,
                    libc::ECANCELED | libc::EINTR | libc::EAGAIN => {}
                    errno => {
                        let e = io::Error::from_raw_os_error(errno);
                        tracing::error!(source = %self.ctx.source_name, "io_uring recvmsg failed: {e}");
                        outcome = Err(e);
                    }
                }
                continue;
            }
            let Some(bid) = cqueue::buffer_select(cqe.flags()) else {
                outcome = Err(io::Error::other(
                    "recvmsg completion without a provided buffer",
                ));
                continue;
            };
            datagrams += 1;
            let full = match bufs.buffer(bid, result as usize) {
                Some(buf) => self.datagram(buf, msghdr),
                None => {
                    outcome = Err(io::Error::other(format!(
                        "recvmsg completion names buffer {bid} of length {result}"
                    )));
                    false
                }
            };
            bufs.recycle(bid);
            if full {
                self.handoff.flush_blocking(self.ctx)?;
            }
        }
        bufs.publish();
        if self.not_allowed > 0 {
            self.ctx
                .counters
                .dropped_not_allowed
                .increment(std::mem::take(&mut self.not_allowed));
        }
        self.handoff.end_wake_up(self.ctx, datagrams == 0)?;
        outcome.map(|()| datagrams)
    }

    /// One datagram; true when the batch is full.
    fn datagram(&mut self, buf: &[u8], msghdr: &libc::msghdr) -> bool {
        let Ok(out) = io_uring::types::RecvMsgOut::parse(buf, msghdr) else {
            if self.error_log.permit().is_some() {
                tracing::error!(source = %self.ctx.source_name, "malformed recvmsg result of {} bytes", buf.len());
            }
            return false;
        };
        if let Some(drops) = rxq_ovfl_from_cmsgs(out.control_data())
            && drops != self.last_kernel_drops
        {
            if self.kernel_drop_log.permit().is_some() {
                tracing::warn!(
                    source = %self.ctx.source_name,
                    core = self.ctx.core,
                    socket_drops = drops,
                    "the kernel dropped datagrams: this socket's receive buffer overflowed \
                     (raise receive_buffer_bytes and net.core.rmem_max)"
                );
            }
            self.last_kernel_drops = drops;
        }
        let peer = sockaddr_from_bytes(out.name_data());
        // The user-space allowlist (XDP's job in the kernel when it is on): refused datagrams
        // are not received, only counted as dropped.
        let allow = self.allow.current();
        if !allow.is_empty() && !peer.is_some_and(|p| allow.permits(p.ip())) {
            self.not_allowed += 1;
            return false;
        }
        self.handoff
            .received_bytes(out.incoming_payload_len() as usize);
        let frame = datagram(out.payload_data());
        if frame.is_empty() {
            // No message (keep-alives from some senders): a worker would only make an empty
            // event of it. Its bytes were received all the same.
            return false;
        }
        let limits = self.ctx.limits;
        if out.is_payload_truncated() || frame.len() > limits.max_frame_bytes {
            match limits.oversize {
                OversizePolicy::Reject => {
                    self.handoff.rejected_oversize();
                    false
                }
                OversizePolicy::Truncate => {
                    let keep = frame.len().min(limits.max_frame_bytes);
                    self.handoff.push(&frame[..keep], peer, true)
                }
            }
        } else {
            self.handoff.push(frame, peer, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linger_never_outlasts_the_socket_buffer() {
        let ten = Duration::from_millis(10);
        // The daemon's default, 64 MiB, which the kernel reports doubled: ≈ 9 ms.
        let default = linger_within_buffer(ten, 128 << 20);
        assert!(
            default > Duration::from_millis(8) && default < ten,
            "{default:?}"
        );
        assert_eq!(
            linger_within_buffer(Duration::from_millis(5), 128 << 20),
            Duration::from_millis(5)
        );
        let small = linger_within_buffer(ten, 4 << 20);
        assert!(
            small > Duration::from_micros(250) && small < Duration::from_micros(300),
            "{small:?}"
        );
        // At the rate it assumes, what arrives meanwhile fills a quarter of the buffer.
        assert!(small.as_secs_f64() * LINGER_SAFE_RATE <= (1 << 20) as f64);
        assert_eq!(linger_within_buffer(ten, 0), Duration::ZERO);
        assert_eq!(
            linger_within_buffer(Duration::ZERO, 128 << 20),
            Duration::ZERO
        );
    }
}
