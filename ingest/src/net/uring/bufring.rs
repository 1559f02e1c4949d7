//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`): user memory holding buffer
//! descriptors the kernel takes from when a receive completes, plus the buffers themselves.
//!
//! Both live in anonymous mappings: the descriptor ring must be page aligned, and buffer
//! pages are only backed by memory once a datagram actually reaches them, so a ring sized for
//! 64 KiB datagrams costs little RSS when traffic is ~1 KB messages.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use io_uring::types::BufRingEntry;

pub(crate) struct BufRing {
    ring: NonNull<BufRingEntry>,
    ring_bytes: usize,
    bufs: NonNull<u8>,
    bufs_bytes: usize,
    buf_len: usize,
    entries: u16,
    bgid: u16,
    /// Next free descriptor slot; published to the kernel by [`BufRing::publish`].
    tail: u16,
}

// SAFETY: the mappings are owned exclusively by this value; moving it to another thread moves
// that ownership (the reader builds its ring on its own thread anyway).
unsafe impl Send for BufRing {}

fn map_anonymous(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh private anonymous mapping aliases nothing; the result is checked.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

impl BufRing {
    /// `entries` buffers of `buf_len` bytes each, for buffer group `bgid`. All buffers start
    /// out handed to the ring (published at registration).
    pub fn new(entries: u16, buf_len: u32, bgid: u16) -> io::Result<Self> {
        if entries == 0 || !entries.is_power_of_two() || entries > 32768 || buf_len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "buffer ring of {entries} x {buf_len} bytes: need a power-of-two count up to 32768"
                ),
            ));
        }
        let ring_bytes = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
        let bufs_bytes = usize::from(entries) * buf_len as usize;
        let ring = map_anonymous(ring_bytes)?.cast::<BufRingEntry>();
        let bufs = match map_anonymous(bufs_bytes) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: `ring` was mapped above with exactly `ring_bytes` and is unused.
                unsafe { libc::munmap(ring.as_ptr().cast(), ring_bytes) };
                return Err(e);
            }
        };
        let mut this = BufRing {
            ring,
            ring_bytes,
            bufs,
            bufs_bytes,
            buf_len: buf_len as usize,
            entries,
            bgid,
            tail: 0,
        };
        for bid in 0..entries {
            this.recycle(bid);
        }
        Ok(this)
    }

    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Registers the ring with `submitter`'s io_uring and publishes every buffer.
    /// The ring must be unregistered (or the io_uring dropped) before `self` is dropped.
    pub fn register(&self, submitter: &Submitter<'_>) -> io::Result<()> {
        // SAFETY: the descriptor memory is a page-aligned mapping of `entries` descriptors that
        // lives as long as `self`; callers keep `self` alive past the io_uring (field order in
        // the readers, and `probe` unregisters explicitly).
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.ring.as_ptr() as u64,
                self.entries,
                self.bgid,
                0,
            )?
        };
        self.publish();
        Ok(())
    }

    /// The first `len` bytes of buffer `bid`, which the kernel filled and reported in a CQE.
    /// Returns `None` for an id or length the kernel could not have produced.
    pub fn buffer(&self, bid: u16, len: usize) -> Option<&[u8]> {
        if bid >= self.entries || len > self.buf_len {
            return None;
        }
        // SAFETY: `bid < entries` and `len <= buf_len` keep the slice inside the buffer
        // mapping. The kernel wrote this buffer before posting the CQE that named it and will
        // not touch it again until `recycle(bid)` hands it back, so nothing writes it while
        // the returned borrow (tied to `&self`) is alive.
        Some(unsafe {
            std::slice::from_raw_parts(self.bufs.as_ptr().add(usize::from(bid) * self.buf_len), len)
        })
    }

    /// Gives buffer `bid` back to the kernel (visible after the next [`BufRing::publish`]).
    pub fn recycle(&mut self, bid: u16) {
        debug_assert!(bid < self.entries);
        let slot = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `slot < entries` is inside the descriptor mapping. The kernel only reads
        // descriptors between its head and our published tail, and this slot is at or past the
        // tail, so the kernel is not reading it now.
        let entry = unsafe { &mut *self.ring.as_ptr().add(slot) };
        // SAFETY: `bid < entries` keeps the address inside the buffer mapping.
        entry.set_addr(unsafe { self.bufs.as_ptr().add(usize::from(bid) * self.buf_len) } as u64);
        entry.set_len(self.buf_len as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the recycled descriptors visible to the kernel.
    pub fn publish(&self) {
        // SAFETY: the ring base is the first descriptor of a live ring; `tail` returns the
        // address of the shared tail field that overlays the first descriptor's `resv`, which
        // is u16-aligned and only ever accessed atomically by us and the kernel.
        let tail = unsafe { &*(BufRingEntry::tail(self.ring.as_ptr()) as *const AtomicU16) };
        // Release: the descriptor writes in `recycle` must be visible before the new tail.
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both mappings were created in `new` with these lengths and are unmapped once.
        unsafe {
            libc::munmap(self.bufs.as_ptr().cast(), self.bufs_bytes);
            libc::munmap(self.ring.as_ptr().cast(), self.ring_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_recycling() {
        assert!(BufRing::new(3, 64, 0).is_err());
        assert!(BufRing::new(0, 64, 0).is_err());
        let mut ring = BufRing::new(4, 64, 7).unwrap();
        assert_eq!(ring.bgid(), 7);
        assert!(ring.buffer(4, 1).is_none());
        assert!(ring.buffer(0, 65).is_none());
        assert_eq!(ring.buffer(3, 64).unwrap().len(), 64);
        // Four buffers fill the ring once; recycling wraps around the descriptor slots.
        for _ in 0..10 {
            ring.recycle(2);
        }
        ring.publish();
        assert_eq!(ring.tail, 14);
    }

    #[test]
    fn kernel_fills_registered_buffers() {
        use io_uring::{IoUring, opcode, types};
        use std::os::fd::AsRawFd;
        let mut uring = IoUring::new(8).unwrap();
        let bufs = BufRing::new(2, 128, 1).unwrap();
        bufs.register(&uring.submitter()).unwrap();
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut a, b"hello ring").unwrap();
        let recv = opcode::Recv::new(types::Fd(b.as_raw_fd()), std::ptr::null_mut(), 128)
            .buf_group(1)
            .build()
            .flags(io_uring::squeue::Flags::BUFFER_SELECT);
        // SAFETY: the receive writes only into `bufs`, which outlives `uring` (dropped first
        // after the explicit unregister below).
        unsafe { uring.submission().push(&recv).unwrap() };
        uring.submit_and_wait(1).unwrap();
        let cqe = uring.completion().next().unwrap();
        assert_eq!(cqe.result(), 10);
        let bid = io_uring::cqueue::buffer_select(cqe.flags()).unwrap();
        assert_eq!(bufs.buffer(bid, 10).unwrap(), b"hello ring");
        uring.submitter().unregister_buf_ring(1).unwrap();
        drop(uring);
    }
}
