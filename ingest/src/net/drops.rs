//! Kernel-side UDP loss accounting.
//!
//! A datagram the kernel drops because the socket's receive buffer is full never reaches a
//! reader, so it has to be counted from the kernel's own counters:
//! - per socket, `sk_drops`: read with `getsockopt(SO_MEMINFO)` (falling back to the `drops`
//!   column of `/proc/net/udp{,6}` for the socket's inode), and also delivered with every
//!   datagram as the `SO_RXQ_OVFL` control message, which the readers use to warn promptly;
//! - system wide, `RcvbufErrors` of `Udp:` in `/proc/net/snmp` and `Udp6RcvbufErrors` in
//!   `/proc/net/snmp6` (per network namespace).
//!
//! The daemon's periodic task owns one [`KernelDrops`] per UDP socket and one
//! [`SystemUdpErrors`]; `poll` returns the increase since the last call and updates the
//! metrics `sluice_dropped_messages_total{source,reason="kernel_rcvbuf"}` and
//! `sluice_kernel_udp_rcvbuf_errors`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Index of the drop counter in the `SO_MEMINFO` array (`SK_MEMINFO_DROPS`, linux/sock_diag.h).
const SK_MEMINFO_DROPS: usize = 8;
/// `SK_MEMINFO_VARS`.
const SK_MEMINFO_VARS: usize = 9;

/// Asks the kernel to attach the socket's drop counter to every received datagram.
pub fn enable_rxq_ovfl(fd: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: passes a pointer to a live c_int with its exact size; the fd is borrowed live.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RXQ_OVFL,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Control-message space a receive needs for the `SO_RXQ_OVFL` counter.
pub const RXQ_OVFL_CMSG_SPACE: usize =
    cmsg_align(std::mem::size_of::<libc::cmsghdr>()) + cmsg_align(4);

const fn cmsg_align(len: usize) -> usize {
    let a = std::mem::size_of::<usize>();
    (len + a - 1) & !(a - 1)
}

/// Finds the `SO_RXQ_OVFL` counter in a received control buffer (as laid out by the kernel,
/// possibly unaligned inside a provided buffer).
pub fn rxq_ovfl_from_cmsgs(control: &[u8]) -> Option<u32> {
    const LEN: usize = std::mem::size_of::<usize>();
    let header = cmsg_align(std::mem::size_of::<libc::cmsghdr>());
    let mut at = 0usize;
    while at + header <= control.len() {
        let cmsg_len = usize::from_ne_bytes(control[at..at + LEN].try_into().ok()?);
        let level = i32::from_ne_bytes(control[at + LEN..at + LEN + 4].try_into().ok()?);
        let kind = i32::from_ne_bytes(control[at + LEN + 4..at + LEN + 8].try_into().ok()?);
        if cmsg_len < header {
            return None;
        }
        if level == libc::SOL_SOCKET && kind == libc::SO_RXQ_OVFL && cmsg_len >= header + 4 {
            let data = control.get(at + header..at + header + 4)?;
            return Some(u32::from_ne_bytes(data.try_into().ok()?));
        }
        at += cmsg_align(cmsg_len);
    }
    None
}

/// `sk_drops` of one socket via `SO_MEMINFO`.
pub fn socket_drops(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes; the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < (SK_MEMINFO_DROPS + 1) * 4 {
        return Err(io::Error::other("SO_MEMINFO returned no drop counter"));
    }
    Ok(info[SK_MEMINFO_DROPS])
}

/// The inode that names a socket in `/proc/net/*`.
pub fn socket_inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let file = std::fs::File::from(fd.try_clone_to_owned()?);
    Ok(std::os::unix::fs::MetadataExt::ino(&file.metadata()?))
}

/// The `drops` column (last) of the `/proc/net/udp{,6}` row whose `inode` column matches.
pub fn proc_udp_drops(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        if cols.len() < 13 || cols[9].parse::<u64>().ok()? != inode {
            return None;
        }
        cols.last()?.parse().ok()
    })
}

/// Per-socket kernel drop accounting for one UDP source socket.
pub struct KernelDrops {
    /// A duplicate of the reader's socket: the counter stays readable whatever the reader does.
    fd: OwnedFd,
    inode: u64,
    /// `sk_drops` is a wrapping u32.
    last: Option<u32>,
    counter: metrics::Counter,
    pub total: u64,
}

impl KernelDrops {
    /// Call before handing the socket to its reader so no drop is missed; the baseline is the
    /// socket's current count.
    pub fn new(socket: &impl AsFd, source: &str) -> io::Result<Self> {
        let counter = metrics::counter!(
            crate::metrics::DROPPED_MESSAGES,
            "source" => source.to_string(),
            "reason" => crate::metrics::DROP_KERNEL_RCVBUF
        );
        Self::with_counter(socket, counter)
    }

    /// [`KernelDrops::new`] adding into a counter the caller made (e.g. one that also keeps a
    /// total for the exit summary).
    pub fn with_counter(socket: &impl AsFd, counter: metrics::Counter) -> io::Result<Self> {
        let fd = socket.as_fd().try_clone_to_owned()?;
        let inode = socket_inode(fd.as_fd())?;
        let mut this = KernelDrops {
            fd,
            inode,
            last: None,
            counter,
            total: 0,
        };
        this.last = this.read().ok();
        Ok(this)
    }

    fn read(&self) -> io::Result<u32> {
        match socket_drops(self.fd.as_fd()) {
            Ok(v) => Ok(v),
            Err(e) => {
                for table in ["/proc/net/udp", "/proc/net/udp6"] {
                    if let Some(v) = std::fs::read_to_string(table)
                        .ok()
                        .and_then(|t| proc_udp_drops(&t, self.inode))
                    {
                        return Ok(v as u32);
                    }
                }
                Err(e)
            }
        }
    }

    /// Datagrams the kernel dropped on this socket since the last call; also counted in
    /// `sluice_dropped_messages_total{reason="kernel_rcvbuf"}`.
    pub fn poll(&mut self) -> io::Result<u64> {
        let now = self.read()?;
        let delta = match self.last {
            Some(prev) => u64::from(now.wrapping_sub(prev)),
            None => u64::from(now),
        };
        self.last = Some(now);
        if delta > 0 {
            self.counter.increment(delta);
            self.total += delta;
        }
        Ok(delta)
    }
}

/// Sums `Udp: RcvbufErrors` (from `snmp`) and `Udp6RcvbufErrors` (from `snmp6`).
pub fn parse_rcvbuf_errors(snmp: &str, snmp6: &str) -> Option<u64> {
    let mut lines = snmp.lines();
    let mut v4 = None;
    while let Some(line) = lines.next() {
        if let Some(names) = line.strip_prefix("Udp: ") {
            let values = lines.next()?.strip_prefix("Udp: ")?;
            v4 = names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == "RcvbufErrors")
                .and_then(|(_, v)| v.parse::<u64>().ok());
            break;
        }
    }
    let v6 = snmp6.lines().find_map(|line| {
        let mut cols = line.split_whitespace();
        (cols.next()? == "Udp6RcvbufErrors").then(|| cols.next()?.parse::<u64>().ok())?
    });
    match (v4, v6) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    }
}

/// System-wide (network namespace wide) UDP receive-buffer errors.
pub struct SystemUdpErrors {
    last: Option<u64>,
    gauge: metrics::Gauge,
}

impl Default for SystemUdpErrors {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemUdpErrors {
    pub fn new() -> Self {
        let mut this = SystemUdpErrors {
            last: None,
            gauge: metrics::gauge!(crate::metrics::HOST_UDP_RCVBUF_ERRORS),
        };
        this.last = Self::read();
        this
    }

    fn read() -> Option<u64> {
        let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
        let snmp6 = std::fs::read_to_string("/proc/net/snmp6").unwrap_or_default();
        parse_rcvbuf_errors(&snmp, &snmp6)
    }

    /// Sets the gauge to the current total and returns the increase since the last call
    /// (`None` when `/proc/net/snmp` is unreadable).
    pub fn poll(&mut self) -> Option<u64> {
        let now = Self::read()?;
        self.gauge.set(now as f64);
        let delta = now.saturating_sub(self.last.unwrap_or(now));
        self.last = Some(now);
        Some(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_parsing() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
                    Udp: 100 2 7 50 5 0 0 0 0\n\
                    UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\nUdpLite: 0 0 0 0 99 0\n";
        let snmp6 = "Udp6InDatagrams                 \t10\nUdp6RcvbufErrors                \t3\n";
        assert_eq!(parse_rcvbuf_errors(snmp, snmp6), Some(8));
        assert_eq!(parse_rcvbuf_errors(snmp, ""), Some(5));
        assert_eq!(parse_rcvbuf_errors("", ""), None);
        assert!(
            parse_rcvbuf_errors(&std::fs::read_to_string("/proc/net/snmp").unwrap(), "").is_some()
        );
    }

    #[test]
    fn proc_udp_row() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                     12: 0100007F:A5A1 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 424242 2 0000000000000000 17\n";
        assert_eq!(proc_udp_drops(table, 424242), Some(17));
        assert_eq!(proc_udp_drops(table, 1), None);
    }

    #[test]
    fn cmsg_parsing() {
        let mut buf = vec![0u8; RXQ_OVFL_CMSG_SPACE + 3];
        let w = std::mem::size_of::<usize>();
        buf[1..1 + w]
            .copy_from_slice(&(cmsg_align(std::mem::size_of::<libc::cmsghdr>()) + 4).to_ne_bytes());
        buf[1 + w..1 + w + 4].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        buf[1 + w + 4..1 + w + 8].copy_from_slice(&libc::SO_RXQ_OVFL.to_ne_bytes());
        let data = 1 + cmsg_align(std::mem::size_of::<libc::cmsghdr>());
        buf[data..data + 4].copy_from_slice(&77u32.to_ne_bytes());
        // Unaligned on purpose: control data inside a provided buffer has no alignment.
        assert_eq!(rxq_ovfl_from_cmsgs(&buf[1..]), Some(77));
        assert_eq!(rxq_ovfl_from_cmsgs(&buf[1..10]), None);
        assert_eq!(rxq_ovfl_from_cmsgs(&[]), None);
        let mut bad = buf.clone();
        bad[1..1 + w].copy_from_slice(&0usize.to_ne_bytes());
        assert_eq!(rxq_ovfl_from_cmsgs(&bad[1..]), None);
    }

    /// Fill a socket with a tiny receive buffer without reading, then check
    /// sent == received + counted drops, exactly.
    #[test]
    fn drops_are_counted_exactly() {
        use std::net::UdpSocket;
        let rx = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        rx.set_recv_buffer_size(4096).unwrap();
        rx.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        let rx: UdpSocket = rx.into();
        enable_rxq_ovfl(rx.as_fd()).unwrap();
        let mut drops = KernelDrops::new(&rx, "test").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sent = 500u64;
        for i in 0..sent {
            tx.send_to(
                format!("datagram {i:06} {}", "x".repeat(200)).as_bytes(),
                rx.local_addr().unwrap(),
            )
            .unwrap();
        }
        let dropped = drops.poll().unwrap();
        assert!(dropped > 0, "a 4 KiB buffer cannot hold {sent} datagrams");
        let inode = socket_inode(rx.as_fd()).unwrap();
        let table = std::fs::read_to_string("/proc/net/udp").unwrap();
        assert_eq!(proc_udp_drops(&table, inode), Some(dropped));

        rx.set_nonblocking(true).unwrap();
        let mut received = 0u64;
        let mut last_ovfl = None;
        let mut buf = [0u8; 512];
        let mut cmsg = [0u8; 64];
        loop {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: a zeroed msghdr is valid; every pointer set below targets a live local.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cmsg.as_mut_ptr().cast();
            msg.msg_controllen = cmsg.len();
            // SAFETY: msg describes live buffers of the stated sizes.
            let n = unsafe { libc::recvmsg(rx.as_raw_fd(), &mut msg, 0) };
            if n < 0 {
                break;
            }
            received += 1;
            last_ovfl = rxq_ovfl_from_cmsgs(&cmsg[..msg.msg_controllen]).or(last_ovfl);
        }
        assert_eq!(received + dropped, sent);
        // Datagrams queued after the loss carry the socket's drop count, equal to SO_MEMINFO's.
        let before_loss = last_ovfl;
        tx.send_to(b"after the loss", rx.local_addr().unwrap())
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = cmsg.len();
        // SAFETY: msg describes live buffers of the stated sizes.
        assert_eq!(unsafe { libc::recvmsg(rx.as_raw_fd(), &mut msg, 0) }, 14);
        assert_eq!(
            rxq_ovfl_from_cmsgs(&cmsg[..msg.msg_controllen]).map(u64::from),
            Some(dropped)
        );
        assert!(before_loss.is_none_or(|v| u64::from(v) <= dropped));
        assert_eq!(drops.poll().unwrap(), 0);
        assert_eq!(drops.total, dropped);

        let mut system = SystemUdpErrors::new();
        assert!(system.poll().is_some());
    }
}
