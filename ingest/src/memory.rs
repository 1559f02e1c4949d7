//! Process memory policy: no transparent huge pages.
//!
//! mimalloc asks for huge pages (`madvise(MADV_HUGEPAGE)`) on the regions it reserves, and
//! Debian's default THP mode (`madvise`) honours that with direct compaction at fault time.
//! Sluice's buffers are first touched while the first burst is arriving, so every first touch
//! then zeroed (and sometimes compacted) a whole 2 MiB page: measured over TCP with 100k CEF
//! messages, up to half of the daemon's CPU went to `clear_page_erms`, and the cost per million
//! messages swung between 2.4 and 5.1 CPU-s from run to run. With 4 KiB pages the first touches
//! cost a few milliseconds. The working set is small (tens of MiB), so huge pages buy little TLB
//! reach in return. See docs/daemon.md, "Memory".

use std::io;

/// Turns transparent huge pages off for this process (all threads, present and future
/// mappings): `prctl(PR_SET_THP_DISABLE)`.
pub fn disable_transparent_huge_pages() -> io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag on this process's
    // memory descriptor; no pointers are passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether transparent huge pages are off for this process (`PR_GET_THP_DISABLE`).
pub fn transparent_huge_pages_disabled() -> io::Result<bool> {
    // SAFETY: PR_GET_THP_DISABLE takes no arguments and returns the flag.
    let rc = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
    match rc {
        -1 => Err(io::Error::last_os_error()),
        flag => Ok(flag == 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_can_be_turned_off_for_the_process() {
        disable_transparent_huge_pages().unwrap();
        assert!(transparent_huge_pages_disabled().unwrap());
        // The flag is per process and the kernel reports it in every thread.
        let seen = std::thread::spawn(transparent_huge_pages_disabled)
            .join()
            .unwrap()
            .unwrap();
        assert!(seen);
    }
}
