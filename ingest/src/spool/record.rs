//! On-disk record framing and a resynchronising reader.
//!
//! ```text
//! magic "\xE5SLR" | body_len u32 LE | crc32 u32 LE | body
//! body = seq u64 LE | created_unix_ms u64 LE | events u64 LE | ndjson bytes
//! ```
//! The CRC covers `body_len` and the body, so a flipped length is caught too. The magic lets a
//! reader that meets a damaged record scan forward to the next record that checks out.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub const MAGIC: [u8; 4] = [0xE5, b'S', b'L', b'R'];
pub const HEADER_LEN: u64 = 12;
pub const BODY_FIXED_LEN: u64 = 24;
/// No batch is anywhere near this; a larger length is damage, not data.
pub const MAX_BODY_LEN: u64 = 1 << 30;
/// The largest batch (NDJSON bytes) one record carries. The config keeps full batches below
/// it; the spool refuses a larger one rather than write what replay would take for damage.
pub const MAX_NDJSON_LEN: u64 = MAX_BODY_LEN - BODY_FIXED_LEN;

/// Serialises one record into `out` (cleared first).
pub fn encode(seq: u64, created_ms: u64, events: u64, ndjson: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let body_len = BODY_FIXED_LEN + ndjson.len() as u64;
    out.reserve(HEADER_LEN as usize + body_len as usize);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&created_ms.to_le_bytes());
    out.extend_from_slice(&events.to_le_bytes());
    out.extend_from_slice(ndjson);
    let crc = checksum(&out[4..8], &out[HEADER_LEN as usize..]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// Encoded size of a record carrying `ndjson_len` bytes.
pub fn encoded_len(ndjson_len: usize) -> u64 {
    HEADER_LEN + BODY_FIXED_LEN + ndjson_len as u64
}

fn checksum(len_bytes: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len_bytes);
    h.update(body);
    h.finalize()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub len: u64,
    pub seq: u64,
    pub created_ms: u64,
    pub events: u64,
    pub ndjson: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    Record(Record),
    /// Bytes `[start, end)` are not a valid record; `end` is the next valid record or the limit.
    Corrupt {
        start: u64,
        end: u64,
    },
    End,
}

/// Reads the record at `offset`, never past `limit` (the committed length of the segment).
/// On damage, scans forward for the next record that validates. Memory is bounded by one
/// record plus a scan buffer.
pub fn read_at(file: &File, offset: u64, limit: u64) -> io::Result<ReadOutcome> {
    if offset >= limit {
        return Ok(ReadOutcome::End);
    }
    if let Some(record) = try_record(file, offset, limit)? {
        return Ok(ReadOutcome::Record(record));
    }
    let end = scan_for_record(file, offset + 1, limit)?;
    Ok(ReadOutcome::Corrupt { start: offset, end })
}

fn try_record(file: &File, offset: u64, limit: u64) -> io::Result<Option<Record>> {
    if limit - offset < HEADER_LEN + BODY_FIXED_LEN {
        return Ok(None);
    }
    let mut header = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut header, offset)?;
    if header[..4] != MAGIC {
        return Ok(None);
    }
    let body_len = u32::from_le_bytes(header[4..8].try_into().unwrap()) as u64;
    if !(BODY_FIXED_LEN..=MAX_BODY_LEN).contains(&body_len)
        || body_len > limit - offset - HEADER_LEN
    {
        return Ok(None);
    }
    let mut body = vec![0u8; body_len as usize];
    file.read_exact_at(&mut body, offset + HEADER_LEN)?;
    let crc = u32::from_le_bytes(header[8..12].try_into().unwrap());
    if checksum(&header[4..8], &body) != crc {
        return Ok(None);
    }
    let seq = u64::from_le_bytes(body[0..8].try_into().unwrap());
    let created_ms = u64::from_le_bytes(body[8..16].try_into().unwrap());
    let events = u64::from_le_bytes(body[16..24].try_into().unwrap());
    body.drain(..BODY_FIXED_LEN as usize);
    Ok(Some(Record {
        offset,
        len: HEADER_LEN + body_len,
        seq,
        created_ms,
        events,
        ndjson: body,
    }))
}

/// First offset ≥ `from` holding a valid record, or `limit`.
fn scan_for_record(file: &File, from: u64, limit: u64) -> io::Result<u64> {
    const CHUNK: usize = 64 * 1024;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = from;
    while pos < limit {
        let n = CHUNK.min((limit - pos) as usize);
        file.read_exact_at(&mut buf[..n], pos)?;
        let mut search_from = 0;
        while let Some(i) = memchr::memmem::find(&buf[search_from..n], &MAGIC) {
            let candidate = pos + (search_from + i) as u64;
            if try_record(file, candidate, limit)?.is_some() {
                return Ok(candidate);
            }
            search_from += i + 1;
        }
        if pos + n as u64 >= limit {
            break;
        }
        // Overlap so a magic split across chunks is still seen.
        pos += (n - (MAGIC.len() - 1)) as u64;
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        let file = f.reopen().unwrap();
        (f, file)
    }

    #[test]
    fn round_trip_and_resync_after_damage() {
        let mut a = Vec::new();
        encode(1, 10, 2, b"\"x\"\n\"y\"", &mut a);
        let mut b = Vec::new();
        encode(2, 11, 1, b"{\"k\":1}", &mut b);
        let mut all = a.clone();
        all.extend_from_slice(&b);
        let (_t, f) = file_with(&all);
        let len = all.len() as u64;
        let ReadOutcome::Record(r) = read_at(&f, 0, len).unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.seq, r.created_ms, r.events, r.ndjson.as_slice()),
            (1, 10, 2, &b"\"x\"\n\"y\""[..])
        );
        assert_eq!(r.len, a.len() as u64);

        // Flip one bit in the first body: the first record is corrupt up to the second.
        let mut damaged = all.clone();
        damaged[20] ^= 0x10;
        let (_t, f) = file_with(&damaged);
        assert_eq!(
            read_at(&f, 0, len).unwrap(),
            ReadOutcome::Corrupt {
                start: 0,
                end: a.len() as u64
            }
        );
        let ReadOutcome::Record(r) = read_at(&f, a.len() as u64, len).unwrap() else {
            panic!()
        };
        assert_eq!(r.seq, 2);

        // Truncated tail: the second record is cut; corrupt to the limit.
        let (_t, f) = file_with(&all[..all.len() - 3]);
        let cut = len - 3;
        assert_eq!(
            read_at(&f, a.len() as u64, cut).unwrap(),
            ReadOutcome::Corrupt {
                start: a.len() as u64,
                end: cut
            }
        );
        assert_eq!(read_at(&f, cut, cut).unwrap(), ReadOutcome::End);
    }
}
