//! A UDP reader's disk overflow: where its batches go while the worker queue is full.
//!
//! UDP has no flow control. Without an overflow, a reader facing a full worker queue stops
//! reading and the socket's receive buffer absorbs the burst (kernel memory, ≈ 2.3 KB per
//! 850-byte datagram on loopback) until the kernel drops. With one, the reader keeps reading and
//! appends each batch to a private file, then moves batches back into the queue, oldest first,
//! as the worker frees room: a burst longer than the memory bounds allow is then limited by
//! `overflow_max_bytes` on disk instead (the approach of rsyslog's disk-assisted queues and
//! syslog-ng's `disk-buffer()`). A short burst never reaches the disk: the file's pages live in
//! the page cache and are freed (hole punched) as soon as they are read back, long before
//! writeback would write them out.
//!
//! The file is anonymous (`O_TMPFILE`, or created and unlinked at once): the overflow extends
//! the queue, it is not a spool. Datagrams in it are lost if the process is killed, like those
//! in the queue, and a crash leaves no file behind to clean up. A graceful shutdown moves all
//! of them to the workers first.
//!
//! One record per batch, written and read by the reader thread only:
//! `header (32 bytes) | frame table (32 bytes per frame) | frame bytes laid end to end`.
//! The record positions are also kept in memory, so a record that cannot be read back is
//! skipped and its datagrams counted as lost, never guessed at.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::event::Timestamp;
use crate::net::{FrameBatch, FrameRef};

const MAGIC: u32 = u32::from_le_bytes(*b"SLOF");
const HEADER_BYTES: usize = 32;
const FRAME_BYTES: usize = 32;
/// Freed space is handed back to the filesystem in whole pages.
const PUNCH_ALIGN: u64 = 4096;

const HAS_RECEIVED_AT: u32 = 1;
const HAS_OFFSET: u32 = 2;

const FRAME_TRUNCATED: u8 = 1;
const FRAME_V4: u8 = 2;
const FRAME_V6: u8 = 4;

/// Why a record could not be read back; its datagrams are lost (and counted by the caller).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading overflow record at byte {pos}: {source}")]
    Io { pos: u64, source: io::Error },
    #[error("overflow record at byte {pos} is corrupt: {what}")]
    Corrupt { pos: u64, what: &'static str },
}

/// A record that could not be read back: its datagrams are lost.
#[derive(Debug)]
pub struct Unreadable {
    pub frames: u32,
    /// The record's size (no longer held).
    pub bytes: u64,
    pub error: ReadError,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    pos: u64,
    len: u64,
    frames: u32,
}

/// One reader's overflow file.
pub struct Overflow {
    file: File,
    max_bytes: u64,
    records: VecDeque<Record>,
    /// End of the last record written.
    write_pos: u64,
    /// Start of the oldest record not yet read back.
    read_pos: u64,
    /// Everything before this has been handed back to the filesystem.
    punched_to: u64,
    /// Whether the filesystem frees ranges (`FALLOC_FL_PUNCH_HOLE`); without it the space of
    /// read records is only freed when the file runs empty, so the bound counts it too.
    punch: bool,
    frames_held: u64,
    scratch: Vec<u8>,
}

impl Overflow {
    /// An anonymous file in `dir` holding at most `max_bytes` at a time.
    pub fn create(dir: &Path, max_bytes: u64) -> io::Result<Overflow> {
        let file = tempfile::tempfile_in(dir)?;
        Ok(Overflow {
            file,
            max_bytes,
            records: VecDeque::new(),
            write_pos: 0,
            read_pos: 0,
            punched_to: 0,
            punch: true,
            frames_held: 0,
            scratch: Vec::new(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Datagrams waiting in the file.
    pub fn frames_held(&self) -> u64 {
        self.frames_held
    }

    /// Bytes of the records not read back yet.
    pub fn unread_bytes(&self) -> u64 {
        self.write_pos - self.read_pos
    }

    /// Bytes the bound counts: those not read back yet, plus read ones still on disk when the
    /// filesystem cannot free ranges.
    pub fn bytes_held(&self) -> u64 {
        if self.punch {
            self.write_pos - self.read_pos
        } else {
            self.write_pos
        }
    }

    fn record_len(batch: &FrameBatch) -> u64 {
        (HEADER_BYTES + FRAME_BYTES * batch.len() + batch.data.len()) as u64
    }

    /// Whether `batch` fits under the bound now.
    pub fn has_room(&self, batch: &FrameBatch) -> bool {
        self.bytes_held() + Self::record_len(batch) <= self.max_bytes
    }

    /// Appends `batch` (the caller checked [`Overflow::has_room`]); returns the bytes written.
    /// On error nothing counts as written and the next push overwrites the partial record.
    pub fn push(&mut self, batch: &FrameBatch) -> io::Result<u64> {
        let frames = u32::try_from(batch.len()).map_err(|_| io::Error::other("batch too long"))?;
        let data_len =
            u32::try_from(batch.data.len()).map_err(|_| io::Error::other("batch too large"))?;
        self.scratch.clear();
        let mut flags = 0;
        let (nanos, offset) = match batch.received_at {
            Some(t) => {
                flags |= HAS_RECEIVED_AT;
                if t.offset_secs.is_some() {
                    flags |= HAS_OFFSET;
                }
                (t.unix_nanos, t.offset_secs.unwrap_or(0))
            }
            None => (0, 0),
        };
        self.scratch.extend_from_slice(&MAGIC.to_le_bytes());
        self.scratch.extend_from_slice(&flags.to_le_bytes());
        self.scratch.extend_from_slice(&frames.to_le_bytes());
        self.scratch.extend_from_slice(&data_len.to_le_bytes());
        self.scratch.extend_from_slice(&nanos.to_le_bytes());
        self.scratch.extend_from_slice(&offset.to_le_bytes());
        self.scratch.extend_from_slice(&batch.source.to_le_bytes());
        self.scratch.extend_from_slice(&[0; 2]);
        let mut expected_offset = 0u32;
        for frame in &batch.frames {
            if frame.offset != expected_offset {
                // Readers lay frames end to end; the format relies on it.
                return Err(io::Error::other("batch frames are not contiguous"));
            }
            expected_offset += frame.len;
            encode_frame(frame, &mut self.scratch);
        }
        if expected_offset != data_len {
            return Err(io::Error::other("batch frames do not cover its data"));
        }
        let pos = self.write_pos;
        self.file.write_all_at(&self.scratch, pos)?;
        self.file
            .write_all_at(&batch.data, pos + self.scratch.len() as u64)?;
        let len = Self::record_len(batch);
        self.records.push_back(Record { pos, len, frames });
        self.write_pos += len;
        self.frames_held += u64::from(frames);
        Ok(len)
    }

    /// Reads the oldest record into `batch` (cleared first) and returns its size in bytes;
    /// `None` when empty. Either way the record is gone afterwards.
    pub fn pop_into(&mut self, batch: &mut FrameBatch) -> Option<Result<u64, Unreadable>> {
        let record = self.records.pop_front()?;
        self.frames_held -= u64::from(record.frames);
        let result = self.read_record(&record, batch);
        self.read_pos = record.pos + record.len;
        self.release();
        Some(result.map(|()| record.len).map_err(|error| {
            batch.clear();
            Unreadable {
                frames: record.frames,
                bytes: record.len,
                error,
            }
        }))
    }

    fn read_record(&mut self, record: &Record, batch: &mut FrameBatch) -> Result<(), ReadError> {
        let pos = record.pos;
        let corrupt = |what| ReadError::Corrupt { pos, what };
        let table = HEADER_BYTES + FRAME_BYTES * record.frames as usize;
        if (table as u64) > record.len {
            return Err(corrupt("record shorter than its frame table"));
        }
        self.scratch.resize(table, 0);
        self.file
            .read_exact_at(&mut self.scratch, pos)
            .map_err(|source| ReadError::Io { pos, source })?;
        let header = &self.scratch[..HEADER_BYTES];
        let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
        if word(0) != MAGIC {
            return Err(corrupt("bad magic"));
        }
        let flags = word(4);
        if word(8) != record.frames {
            return Err(corrupt("frame count differs from the one written"));
        }
        let data_len = word(12) as usize;
        if (table + data_len) as u64 != record.len {
            return Err(corrupt("length differs from the one written"));
        }
        let nanos = i64::from_le_bytes(header[16..24].try_into().unwrap());
        let offset = i32::from_le_bytes(header[24..28].try_into().unwrap());
        let source = u16::from_le_bytes(header[28..30].try_into().unwrap());

        batch.clear();
        batch.source = source;
        batch.received_at = (flags & HAS_RECEIVED_AT != 0).then_some(Timestamp {
            unix_nanos: nanos,
            offset_secs: (flags & HAS_OFFSET != 0).then_some(offset),
        });
        let mut offset_in_data = 0u32;
        for raw in self.scratch[HEADER_BYTES..].chunks_exact(FRAME_BYTES) {
            let frame = decode_frame(raw, offset_in_data).ok_or_else(|| corrupt("bad frame"))?;
            offset_in_data = offset_in_data
                .checked_add(frame.len)
                .filter(|&end| end as usize <= data_len)
                .ok_or_else(|| corrupt("frames run past the data"))?;
            batch.frames.push(frame);
        }
        if offset_in_data as usize != data_len {
            return Err(corrupt("frames do not cover the data"));
        }
        batch.data.resize(data_len, 0);
        self.file
            .read_exact_at(&mut batch.data, pos + table as u64)
            .map_err(|source| ReadError::Io { pos, source })?;
        Ok(())
    }

    /// Hands read space back: all of it when the file ran empty, else the whole pages before
    /// the oldest unread record.
    fn release(&mut self) {
        if self.records.is_empty() {
            if self.file.set_len(0).is_ok() {
                self.write_pos = 0;
                self.read_pos = 0;
                self.punched_to = 0;
            }
            return;
        }
        if !self.punch {
            return;
        }
        let end = self.read_pos / PUNCH_ALIGN * PUNCH_ALIGN;
        if end <= self.punched_to {
            return;
        }
        // SAFETY: fallocate takes no pointers; the fd is ours and open for writing.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                self.punched_to as libc::off_t,
                (end - self.punched_to) as libc::off_t,
            )
        };
        if rc == 0 {
            self.punched_to = end;
        } else {
            tracing::warn!(
                "the overflow's filesystem cannot free ranges of a file ({}); read space is \
                 freed only when the overflow runs empty, and counts against overflow_max_bytes",
                io::Error::last_os_error()
            );
            self.punch = false;
        }
    }

    /// Forgets every record not read back yet and frees the file; returns how many datagrams
    /// they held (for shutdown, when no worker will take them: nothing is read).
    pub fn discard(&mut self) -> u64 {
        let frames = std::mem::take(&mut self.frames_held);
        self.records.clear();
        self.read_pos = self.write_pos;
        self.release();
        frames
    }

    /// Bytes the file occupies on disk.
    #[cfg(test)]
    pub fn allocated_bytes(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.blocks() * 512)
    }
}

fn encode_frame(frame: &FrameRef, out: &mut Vec<u8>) {
    let mut raw = [0u8; FRAME_BYTES];
    raw[0..4].copy_from_slice(&frame.len.to_le_bytes());
    let mut flags = if frame.truncated { FRAME_TRUNCATED } else { 0 };
    match frame.peer {
        Some(SocketAddr::V4(a)) => {
            flags |= FRAME_V4;
            raw[6..8].copy_from_slice(&a.port().to_le_bytes());
            raw[8..12].copy_from_slice(&a.ip().octets());
        }
        Some(SocketAddr::V6(a)) => {
            flags |= FRAME_V6;
            raw[6..8].copy_from_slice(&a.port().to_le_bytes());
            raw[8..24].copy_from_slice(&a.ip().octets());
            raw[24..28].copy_from_slice(&a.flowinfo().to_le_bytes());
            raw[28..32].copy_from_slice(&a.scope_id().to_le_bytes());
        }
        None => {}
    }
    raw[4] = flags;
    out.extend_from_slice(&raw);
}

fn decode_frame(raw: &[u8], offset: u32) -> Option<FrameRef> {
    let len = u32::from_le_bytes(raw[0..4].try_into().ok()?);
    let flags = raw[4];
    let port = u16::from_le_bytes(raw[6..8].try_into().ok()?);
    let peer = match flags & (FRAME_V4 | FRAME_V6) {
        0 => None,
        FRAME_V4 => {
            let ip: [u8; 4] = raw[8..12].try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        FRAME_V6 => {
            let ip: [u8; 16] = raw[8..24].try_into().ok()?;
            let flowinfo = u32::from_le_bytes(raw[24..28].try_into().ok()?);
            let scope = u32::from_le_bytes(raw[28..32].try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flowinfo,
                scope,
            )))
        }
        _ => return None,
    };
    if flags & !(FRAME_TRUNCATED | FRAME_V4 | FRAME_V6) != 0 {
        return None;
    }
    Some(FrameRef {
        offset,
        len,
        peer,
        truncated: flags & FRAME_TRUNCATED != 0,
    })
}

#[cfg(test)]
mod tests;
