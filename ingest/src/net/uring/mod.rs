//! io_uring socket readers: multishot `recvmsg` (UDP) and multishot accept + `recv` (TCP), both
//! receiving into a provided-buffer ring so the kernel picks the buffer and one syscall can
//! complete many messages.
//!
//! The daemon calls [`probe`] once; when it fails, it uses the portable std-socket readers and
//! logs the reason. [`run_udp`] / [`run_tcp`] have the same signatures as the portable ones.

mod bufring;
mod tcp;
mod udp;

use std::io;
use std::time::Duration;

pub use crate::net::handoff::Totals as ReaderTotals;
pub use tcp::{ConnectionFramer, run_tcp, run_tcp_with};
pub use udp::{run_udp, run_udp_with};

use io_uring::{IoUring, opcode};

pub(crate) use bufring::BufRing;

/// Connections one TCP reader (one core) serves at once. Beyond it the reader stops accepting
/// (pending connections wait in the listen backlog) until a connection closes.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Ring and buffer sizing. Every field is bounded by [`UringOptions::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringOptions {
    /// Submission queue entries (the completion queue is sized from the buffer count).
    pub ring_entries: u32,
    /// Provided buffers for UDP; a power of two, at most 32768.
    pub udp_buffers: u16,
    /// Bytes per UDP buffer, including the 16-byte `io_uring_recvmsg_out` header, the source
    /// address and the control message. The default holds the largest possible datagram.
    pub udp_buffer_bytes: u32,
    /// Provided buffers for TCP (shared by all connections of the reader); a power of two.
    pub tcp_buffers: u16,
    pub tcp_buffer_bytes: u32,
    /// See [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Hand a batch over once its bytes reach this, even below `batch_max_frames`.
    pub batch_max_bytes: usize,
    /// Wake-up batching at moderate rates, per protocol (see [`Linger`]).
    pub udp_linger: Linger,
    pub tcp_linger: Linger,
}

/// Moderate traffic costs more CPU per message than a flood: every wake-up of a reader (and
/// the hand-off that wakes its worker) takes the core out of idle, ≈ 5–10 µs here, for a few
/// messages. So after a wake-up that completed some receives but fewer than `completions` (a
/// trickle), the next wait asks for that many completions or `max_wait`, whichever comes
/// first, while the messages wait in the socket: one wake-up per few dozen messages instead of
/// one per few, at the cost of at most `max_wait` of latency. The kernel re-polls a multishot
/// receive once per batch of arrivals, not per datagram, so the count seldom ends the wait
/// early; `max_wait` is the real bound (for UDP, capped by the socket buffer:
/// `udp::linger_within_buffer`). A wake-up that found at least `completions` (heavy traffic
/// batches by itself) and an idle socket wait for one completion as before.
/// `completions = 1` or a zero `max_wait` turns lingering off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linger {
    pub completions: u32,
    pub max_wait: Duration,
}

impl Linger {
    /// Longest `max_wait` accepted: no wait outlasts the shutdown poll.
    const MAX_WAIT_LIMIT: Duration = crate::net::MAX_READER_LINGER;

    fn validate(&self, name: &str, buffers: u16) -> io::Result<()> {
        if !(1..=u32::from(buffers)).contains(&self.completions) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "io_uring {name}.completions {} outside 1..=the buffer count ({buffers})",
                    self.completions
                ),
            ));
        }
        if self.max_wait > Self::MAX_WAIT_LIMIT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "io_uring {name}.max_wait {:?} above {:?}",
                    self.max_wait,
                    Self::MAX_WAIT_LIMIT
                ),
            ));
        }
        Ok(())
    }
}

/// A reader's [`Linger`] between wake-ups.
pub(crate) struct Lingering {
    linger: Linger,
    active: bool,
}

impl Lingering {
    pub(crate) fn new(linger: Linger) -> Self {
        Lingering {
            linger,
            active: false,
        }
    }

    /// Waits for the next wake-up: up to `timeout` for one completion, or, after a trickle,
    /// up to the linger's `max_wait` (never past `timeout`) for `completions` of them.
    pub(crate) fn wait(&self, ring: &IoUring, timeout: Duration) -> io::Result<()> {
        if self.active {
            wait_for_at_least(
                ring,
                self.linger.completions as usize,
                self.linger.max_wait.min(timeout),
            )
        } else {
            wait_for_completions(ring, timeout)
        }
    }

    /// Records how many completions the wake-up just handled.
    pub(crate) fn woke_with(&mut self, completions: usize) {
        self.active = !self.linger.max_wait.is_zero()
            && completions > 0
            && completions < self.linger.completions as usize;
    }
}

/// Largest UDP payload (IPv4 and IPv6 without jumbograms) plus the recvmsg-multishot header,
/// the address field and room for one control message, rounded up to 128 bytes.
pub const UDP_MAX_BUFFER_BYTES: u32 = 65536 + 128;

impl Default for UringOptions {
    fn default() -> Self {
        UringOptions {
            ring_entries: 64,
            udp_buffers: 256,
            udp_buffer_bytes: UDP_MAX_BUFFER_BYTES,
            tcp_buffers: 256,
            tcp_buffer_bytes: 16 * 1024,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            // Times the worker queues' depth, this bounds what a backlog holds in memory,
            // whatever the message size.
            batch_max_bytes: crate::net::READER_BATCH_MAX_BYTES,
            // The counts rarely end a linger early (see `udp::linger_within_buffer`); they
            // decide which wake-ups count as a trickle. 32 datagrams is what the UDP reader
            // used before TCP had a linger, measured then for bursts; TCP receives carry
            // several messages each.
            udp_linger: Linger {
                completions: 32,
                max_wait: crate::net::DEFAULT_READER_LINGER,
            },
            tcp_linger: Linger {
                completions: 32,
                max_wait: crate::net::DEFAULT_READER_LINGER,
            },
        }
    }
}

impl UringOptions {
    /// These options with both lingers' `max_wait` set to `max_wait` (zero: no lingering).
    pub fn with_linger(mut self, max_wait: Duration) -> Self {
        self.udp_linger.max_wait = max_wait;
        self.tcp_linger.max_wait = max_wait;
        self
    }

    pub fn validate(&self) -> io::Result<()> {
        let bad = |what: String| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        if !(8..=4096).contains(&self.ring_entries) {
            return bad(format!(
                "io_uring ring_entries {} outside 8..=4096",
                self.ring_entries
            ));
        }
        for (name, count) in [
            ("udp_buffers", self.udp_buffers),
            ("tcp_buffers", self.tcp_buffers),
        ] {
            if count == 0 || !count.is_power_of_two() || count > 32768 {
                return bad(format!(
                    "io_uring {name} {count} must be a power of two in 1..=32768"
                ));
            }
        }
        if !(udp::MIN_BUFFER_BYTES..=UDP_MAX_BUFFER_BYTES).contains(&self.udp_buffer_bytes) {
            return bad(format!(
                "io_uring udp_buffer_bytes {} outside {}..={}",
                self.udp_buffer_bytes,
                udp::MIN_BUFFER_BYTES,
                UDP_MAX_BUFFER_BYTES
            ));
        }
        if !(512..=1024 * 1024).contains(&self.tcp_buffer_bytes) {
            return bad(format!(
                "io_uring tcp_buffer_bytes {} outside 512..=1048576",
                self.tcp_buffer_bytes
            ));
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return bad(format!(
                "io_uring max_connections {} outside 1..=1000000",
                self.max_connections
            ));
        }
        if !(4096..=256 * 1024 * 1024).contains(&self.batch_max_bytes) {
            return bad(format!(
                "io_uring batch_max_bytes {} outside 4096..=268435456",
                self.batch_max_bytes
            ));
        }
        self.udp_linger.validate("udp_linger", self.udp_buffers)?;
        self.tcp_linger.validate("tcp_linger", self.tcp_buffers)?;
        Ok(())
    }
}

/// Can the io_uring readers run here? `Err` carries a reason fit for the log line that
/// announces the portable fallback.
pub fn probe() -> Result<(), String> {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok();
    if let Some(reason) = sysctl.as_deref().and_then(disabled_by_sysctl) {
        return Err(reason);
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if let Some((major, minor)) = kernel_version(&release)
        && (major, minor) < (6, 0)
    {
        return Err(format!(
            "kernel {} is too old for the io_uring readers (multishot recvmsg needs Linux 6.0 or later)",
            release.trim()
        ));
    }
    let ring = IoUring::new(8).map_err(|e| explain_setup_error(&e, sysctl.as_deref()))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring opcode probe failed: {e}"))?;
    for (code, name) in [
        (opcode::RecvMsgMulti::CODE, "RECVMSG"),
        (opcode::RecvMulti::CODE, "RECV"),
        (opcode::AcceptMulti::CODE, "ACCEPT"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!(
                "io_uring opcode {name} is not supported by this kernel"
            ));
        }
    }
    if !ring.params().is_feature_ext_arg() {
        return Err(
            "io_uring lacks IORING_FEAT_EXT_ARG (wait with timeout); Linux 5.11+ needed".into(),
        );
    }
    // Provided buffer rings (5.19+) are what the multishot receives draw from; register one
    // for real rather than trusting the version number (distribution kernels backport).
    let bufs =
        BufRing::new(1, 4096, 0).map_err(|e| format!("cannot map an io_uring buffer ring: {e}"))?;
    bufs.register(&ring.submitter()).map_err(|e| {
        format!("io_uring provided buffer rings unavailable (register_buf_ring: {e})")
    })?;
    let _ = ring.submitter().unregister_buf_ring(0);
    Ok(())
}

/// Reads the value of `/proc/sys/kernel/io_uring_disabled` (Linux 6.6+).
/// 0: allowed; 1: only members of `kernel.io_uring_group` (or CAP_SYS_ADMIN); 2: disabled.
pub fn disabled_by_sysctl(contents: &str) -> Option<String> {
    match contents.trim() {
        "2" => Some(
            "io_uring is disabled by sysctl kernel.io_uring_disabled=2; set it to 0 \
             (sysctl -w kernel.io_uring_disabled=0) to use the io_uring readers"
                .into(),
        ),
        // 1 may still work for a member of kernel.io_uring_group: let ring setup decide.
        _ => None,
    }
}

fn explain_setup_error(e: &io::Error, sysctl: Option<&str>) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => "io_uring is not available in this kernel (ENOSYS)".into(),
        Some(libc::EPERM) | Some(libc::EACCES) => match sysctl.map(str::trim) {
            Some("1") => {
                "io_uring is restricted by sysctl kernel.io_uring_disabled=1 and this process \
                          is neither in kernel.io_uring_group nor has CAP_SYS_ADMIN"
                    .into()
            }
            _ => format!(
                "io_uring setup not permitted ({e}); a seccomp filter or container policy may block it"
            ),
        },
        Some(libc::ENOMEM) => format!("io_uring setup failed ({e}); RLIMIT_MEMLOCK may be too low"),
        _ => format!("io_uring setup failed: {e}"),
    }
}

/// `6.18.44-fc` → (6, 18).
pub(crate) fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?;
    let digits = minor
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(minor.len());
    let minor = minor[..digits].parse().ok()?;
    Some((major, minor))
}

/// Builds a ring, preferring the flags that cut interrupts on a busy single-threaded reader
/// and falling back to plainer rings on kernels that reject them.
///
/// `DEFER_TASKRUN` (6.1+): the receive work a packet arrival triggers is queued on the ring and
/// run in a batch inside the reader's own `io_uring_enter`, instead of interrupting the reader
/// (or whatever else runs on its core) once per wake-up; completions are then posted without
/// the completion-queue lock. It requires that only the thread that built the ring enters it,
/// which holds: every reader builds, submits to and waits on its ring on its own thread.
pub(crate) fn build_ring(sq_entries: u32, cq_entries: u32) -> io::Result<IoUring> {
    let deferred = IoUring::builder()
        .setup_cqsize(cq_entries)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(sq_entries);
    let cooperative = || {
        IoUring::builder()
            .setup_cqsize(cq_entries)
            .setup_coop_taskrun()
            .setup_single_issuer()
            .build(sq_entries)
    };
    let plain = || {
        IoUring::builder()
            .setup_cqsize(cq_entries)
            .build(sq_entries)
    };
    let rejected = |e: &io::Error| e.raw_os_error() == Some(libc::EINVAL);
    match deferred {
        Ok(ring) => Ok(ring),
        Err(e) if rejected(&e) => match cooperative() {
            Ok(ring) => Ok(ring),
            Err(e) if rejected(&e) => plain(),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Waits up to `timeout` for at least one completion. Timeouts and signals are not errors.
pub(crate) fn wait_for_completions(ring: &IoUring, timeout: Duration) -> io::Result<()> {
    wait_for_at_least(ring, 1, timeout)
}

/// Waits up to `timeout` for `want` completions; returns earlier only when they are there.
/// Timeouts and signals are not errors: the caller handles whatever did complete.
pub(crate) fn wait_for_at_least(ring: &IoUring, want: usize, timeout: Duration) -> io::Result<()> {
    let ts = io_uring::types::Timespec::from(timeout);
    let args = io_uring::types::SubmitArgs::new().timespec(&ts);
    match ring.submitter().submit_with_args(want.max(1), &args) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Pushes one SQE, submitting first when the queue is full.
///
/// # Safety
/// Any memory `entry` points at must stay valid until the operation's last completion.
pub(crate) unsafe fn push_sqe(
    ring: &mut IoUring,
    entry: &io_uring::squeue::Entry,
) -> io::Result<()> {
    loop {
        // SAFETY: forwarded from this function's contract.
        if unsafe { ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
}

/// Decodes a `sockaddr_in` / `sockaddr_in6` as written by the kernel (native-endian family,
/// network-order port and address), without trusting its alignment.
pub(crate) fn sockaddr_from_bytes(raw: &[u8]) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    let family = u16::from_ne_bytes(raw.get(0..2)?.try_into().ok()?) as i32;
    let port = u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
            Some(SocketAddrV4::new(Ipv4Addr::from(ip), port).into())
        }
        libc::AF_INET6 => {
            let flowinfo = u32::from_be_bytes(raw.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = raw.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(raw.get(24..28)?.try_into().ok()?);
            Some(SocketAddrV6::new(Ipv6Addr::from(ip), port, flowinfo, scope).into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_values() {
        assert!(disabled_by_sysctl("0\n").is_none());
        assert!(disabled_by_sysctl("1\n").is_none());
        let reason = disabled_by_sysctl("2\n").unwrap();
        assert!(reason.contains("kernel.io_uring_disabled=2"), "{reason}");
        let eperm = explain_setup_error(&io::Error::from_raw_os_error(libc::EPERM), Some("1\n"));
        assert!(eperm.contains("io_uring_disabled=1"), "{eperm}");
        let enosys = explain_setup_error(&io::Error::from_raw_os_error(libc::ENOSYS), None);
        assert!(enosys.contains("ENOSYS"), "{enosys}");
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v595\n"), Some((6, 18)));
        assert_eq!(kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(kernel_version("6.0"), Some((6, 0)));
        assert_eq!(kernel_version("6.1rc3"), Some((6, 1)));
        assert_eq!(kernel_version("garbage"), None);
    }

    #[test]
    fn options_bounds() {
        UringOptions::default().validate().unwrap();
        let o = UringOptions {
            udp_buffers: 3,
            ..Default::default()
        };
        assert!(o.validate().is_err());
        let o = UringOptions {
            udp_buffer_bytes: 100_000,
            ..Default::default()
        };
        assert!(o.validate().is_err());
        let o = UringOptions {
            max_connections: 0,
            ..Default::default()
        };
        assert!(o.validate().is_err());
        for completions in [0, 257] {
            let o = UringOptions {
                udp_linger: Linger {
                    completions,
                    ..UringOptions::default().udp_linger
                },
                ..Default::default()
            };
            assert!(o.validate().is_err(), "{completions}");
            let o = UringOptions {
                tcp_linger: Linger {
                    completions,
                    ..UringOptions::default().tcp_linger
                },
                ..Default::default()
            };
            assert!(o.validate().is_err(), "{completions}");
        }
        let o = UringOptions {
            udp_linger: Linger {
                max_wait: Duration::from_secs(1),
                ..UringOptions::default().udp_linger
            },
            ..Default::default()
        };
        assert!(o.validate().is_err());
    }

    #[test]
    fn sockaddr_decoding() {
        let v4: std::net::SocketAddr = "127.0.0.1:5140".parse().unwrap();
        let v6: std::net::SocketAddr = "[::1]:65535".parse().unwrap();
        for addr in [v4, v6] {
            let raw = socket2::SockAddr::from(addr);
            // SAFETY: as_ptr points at `len()` initialised bytes of the sockaddr storage.
            let bytes = unsafe {
                std::slice::from_raw_parts(raw.as_ptr() as *const u8, raw.len() as usize)
            };
            assert_eq!(sockaddr_from_bytes(bytes), Some(addr));
        }
        assert_eq!(sockaddr_from_bytes(&[0u8; 3]), None);
        assert_eq!(sockaddr_from_bytes(&[0u8; 32]), None);
    }

    #[test]
    fn probe_ok_here() {
        // This machine runs 6.18 with io_uring enabled; a failure here names the reason.
        if std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            .is_ok_and(|s| s.trim() != "0")
        {
            assert!(probe().is_err());
            return;
        }
        probe().unwrap();
    }
}
