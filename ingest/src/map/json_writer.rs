//! Minimal, fast JSON output shared by every mapper.

use crate::parse::bytescan::{HIGHS, LOW7, ONES, eq_bits};

/// Bytes that must be escaped inside a JSON string: control characters, `"` and `\`.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Where JSON text is written: a `Vec<u8>` or a [`Cursor`] over one. The escaping routines
/// are generic over it, so the row writers that use a cursor share them.
pub trait ByteSink {
    fn push(&mut self, b: u8);
    /// Appends bytes of any length.
    fn extend(&mut self, s: &[u8]);
    /// Appends bytes, fastest for up to `SMALL` of them.
    fn extend_small(&mut self, s: &[u8]);
}

impl ByteSink for Vec<u8> {
    #[inline(always)]
    fn push(&mut self, b: u8) {
        Vec::push(self, b);
    }
    #[inline(always)]
    fn extend(&mut self, s: &[u8]) {
        self.extend_from_slice(s);
    }
    #[inline(always)]
    fn extend_small(&mut self, s: &[u8]) {
        extend_small(self, s);
    }
}

/// Appends to a `Vec<u8>` through a write pointer kept in a local, so that the compiler can
/// hold it in a register: every `Vec::push` re-reads the vector's length and capacity from
/// memory, since a byte store may alias them. The length is set when the cursor is dropped.
pub struct Cursor<'v> {
    vec: &'v mut Vec<u8>,
    /// Next byte to write, inside `vec`'s allocation.
    pos: *mut u8,
    /// End of `vec`'s allocation.
    end: *mut u8,
}

impl<'v> Cursor<'v> {
    /// A cursor at the end of `vec`, with room for `room` bytes reserved up front (it grows
    /// `vec` when a write needs more).
    pub fn new(vec: &'v mut Vec<u8>, room: usize) -> Self {
        vec.reserve(room);
        let range = vec.spare_capacity_mut().as_mut_ptr_range();
        Cursor {
            pos: range.start.cast(),
            end: range.end.cast(),
            vec,
        }
    }

    /// Bytes written through this cursor and before it.
    #[inline(always)]
    fn len(&self) -> usize {
        // SAFETY: `pos` is inside (or one past) the allocation that starts at `as_ptr()`.
        unsafe { self.pos.offset_from(self.vec.as_ptr()) as usize }
    }

    /// Makes room for `n` more bytes.
    #[inline(always)]
    fn room(&mut self, n: usize) {
        // SAFETY: `pos` and `end` point into (or one past) the same allocation, pos <= end.
        if (unsafe { self.end.offset_from(self.pos) } as usize) < n {
            self.grow(n);
        }
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self, n: usize) {
        let len = self.len();
        // SAFETY: every byte before `pos` was written through this cursor or was already
        // part of the vector.
        unsafe { self.vec.set_len(len) };
        self.vec.reserve(n.max(4096));
        let range = self.vec.spare_capacity_mut().as_mut_ptr_range();
        self.pos = range.start.cast();
        self.end = range.end.cast();
    }

    /// Copies a zero-padded table entry whole (a fixed-size copy, no branch on its length) and
    /// keeps its first `len` bytes.
    #[inline(always)]
    pub fn put_padded(&mut self, padded: &[u8; 48], len: usize) {
        debug_assert!(len <= 48);
        self.room(48);
        // SAFETY: `room(48)` leaves 48 writable bytes at `pos`; `padded` is a shared borrow
        // of a table, so it cannot overlap the vector's allocation (borrowed uniquely).
        unsafe {
            std::ptr::copy_nonoverlapping(padded.as_ptr(), self.pos, 48);
            self.pos = self.pos.add(len.min(48));
        }
    }
}

impl ByteSink for Cursor<'_> {
    #[inline(always)]
    fn push(&mut self, b: u8) {
        self.room(1);
        // SAFETY: `room(1)` leaves one writable byte at `pos`.
        unsafe {
            *self.pos = b;
            self.pos = self.pos.add(1);
        }
    }

    #[inline(always)]
    fn extend(&mut self, s: &[u8]) {
        self.room(s.len());
        // SAFETY: room for `s.len()` bytes at `pos`; `s` is a shared borrow, so it cannot
        // overlap the vector's allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(s.as_ptr(), self.pos, s.len());
            self.pos = self.pos.add(s.len());
        }
    }

    #[inline(always)]
    fn extend_small(&mut self, s: &[u8]) {
        let n = s.len();
        if n > SMALL {
            return self.extend(s);
        }
        self.room(SMALL);
        // SAFETY: room for SMALL bytes at `pos`, and `copy_small` writes only `dst[0..n]`,
        // n <= SMALL, reading `s[0..n]`.
        unsafe {
            copy_small(s, self.pos);
            self.pos = self.pos.add(n);
        }
    }
}

impl Drop for Cursor<'_> {
    fn drop(&mut self) {
        let len = self.len();
        // SAFETY: every byte up to `pos` was written through this cursor (or was already part
        // of the vector), and `pos` never passes the allocation's end.
        unsafe { self.vec.set_len(len) };
    }
}

/// The longest copy [`copy_small`] makes: values (URLs, host names, messages) often run to
/// 64 bytes, where a `memcpy` call costs more than the copy.
const SMALL: usize = 64;

/// Copies `s` (at most [`SMALL`] bytes) to `dst` with fixed-size loads and stores: the head and
/// tail copies of each size class overlap rather than overrun.
///
/// # Safety
/// `dst` must be valid for writing `s.len()` bytes and must not overlap `s`.
#[inline(always)]
unsafe fn copy_small(s: &[u8], dst: *mut u8) {
    let n = s.len();
    debug_assert!(n <= SMALL);
    let src = s.as_ptr();
    // SAFETY: loads read `s[0..n]`, stores write `dst[0..n]` (the caller's promise).
    unsafe {
        if n >= 32 {
            // All loads before the stores: `[u128; 2]` halves at 0 and at n - 32.
            let head = std::ptr::read_unaligned(src.cast::<[u128; 2]>());
            let tail = std::ptr::read_unaligned(src.add(n - 32).cast::<[u128; 2]>());
            std::ptr::write_unaligned(dst.cast::<[u128; 2]>(), head);
            std::ptr::write_unaligned(dst.add(n - 32).cast::<[u128; 2]>(), tail);
        } else if n >= 16 {
            let head = std::ptr::read_unaligned(src.cast::<u128>());
            let tail = std::ptr::read_unaligned(src.add(n - 16).cast::<u128>());
            std::ptr::write_unaligned(dst.cast::<u128>(), head);
            std::ptr::write_unaligned(dst.add(n - 16).cast::<u128>(), tail);
        } else if n >= 8 {
            let head = std::ptr::read_unaligned(src.cast::<u64>());
            let tail = std::ptr::read_unaligned(src.add(n - 8).cast::<u64>());
            std::ptr::write_unaligned(dst.cast::<u64>(), head);
            std::ptr::write_unaligned(dst.add(n - 8).cast::<u64>(), tail);
        } else if n >= 4 {
            let head = std::ptr::read_unaligned(src.cast::<u32>());
            let tail = std::ptr::read_unaligned(src.add(n - 4).cast::<u32>());
            std::ptr::write_unaligned(dst.cast::<u32>(), head);
            std::ptr::write_unaligned(dst.add(n - 4).cast::<u32>(), tail);
        } else if n > 0 {
            *dst = *src;
            *dst.add(n / 2) = *src.add(n / 2);
            *dst.add(n - 1) = *src.add(n - 1);
        }
    }
}

/// Appends `s` as a quoted, escaped JSON string.
#[inline]
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    write_str_contents(out, s);
    out.push(b'"');
}

/// Appends `s` to `out`; up to `SMALL` bytes are copied with fixed-size loads and stores
/// instead of a `memcpy` call (keys, short values and the clean runs between escapes are
/// mostly short).
#[inline(always)]
pub fn extend_small(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    if n > SMALL {
        out.extend_from_slice(s);
        return;
    }
    out.reserve(n);
    let len = out.len();
    // SAFETY: `reserve(n)` leaves room for `n` more bytes after `len`; `s` is a shared borrow,
    // so it cannot alias the buffer behind `out` (a unique borrow). `copy_small` initialises
    // all of `dst[0..n]` before `set_len`.
    unsafe {
        copy_small(s, out.as_mut_ptr().add(len));
        out.set_len(len + n);
    }
}

/// Bit `k` set for each byte `k` of the 16 at `bytes[at..]` that JSON needs escaped.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn escape_mask16(bytes: &[u8], at: usize) -> u32 {
    use std::arch::x86_64::*;
    let chunk: &[u8; 16] = bytes[at..at + 16].try_into().expect("16-byte slice");
    // SAFETY: SSE2 is part of the x86_64 baseline, so the intrinsics are always available;
    // the unaligned load reads exactly the 16 bytes of `chunk`.
    unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Unsigned `v <= 0x1f`: the minimum equals `v` only for control bytes.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
    }
}

/// [`escape_mask16`] plus the bytes equal to either of `extra`. The 16 bytes are loaded twice
/// in the source; once inlined, the compiler keeps one load (a single-function version with an
/// optional `extra` measured 0.6 % more instructions per CEF row under callgrind).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn escape_or_mask16(bytes: &[u8], at: usize, extra: [u8; 2]) -> u32 {
    use std::arch::x86_64::*;
    let chunk: &[u8; 16] = bytes[at..at + 16].try_into().expect("16-byte slice");
    // SAFETY: SSE2 is part of the x86_64 baseline; the unaligned load reads exactly `chunk`.
    let extra_mask = unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
        let a = _mm_cmpeq_epi8(v, _mm_set1_epi8(extra[0] as i8));
        let b = _mm_cmpeq_epi8(v, _mm_set1_epi8(extra[1] as i8));
        _mm_movemask_epi8(_mm_or_si128(a, b)) as u32
    };
    escape_mask16(bytes, at) | extra_mask
}

/// Appends the escaped contents of `s` without quotes.
///
/// Sixteen bytes are tested at a time (SSE2 on x86_64), then eight (SWAR), with exact per-byte
/// results, so clean runs are copied whole and only bytes to escape are visited (JSON text,
/// full of quotes, stays fast too). The last partial word is tested as the overlapping final
/// eight bytes, with the bytes already seen masked off.
#[inline]
pub fn write_str_contents<S: ByteSink + ?Sized>(out: &mut S, s: &str) {
    let bytes = s.as_bytes();
    let n = bytes.len();
    // Keys and most values are short and clean: one test of the whole string, then one copy.
    if n <= 16 && !short_needs_escape(bytes) {
        out.extend_small(bytes);
        return;
    }
    // Host names and URLs: two overlapping 16-byte tests cover up to 32 bytes.
    #[cfg(target_arch = "x86_64")]
    if (16..=32).contains(&n) && escape_mask16(bytes, 0) | escape_mask16(bytes, n - 16) == 0 {
        out.extend_small(bytes);
        return;
    }
    let mut start = 0;
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    while i + 16 <= n {
        let mut hits = escape_mask16(bytes, i);
        while hits != 0 {
            let p = i + hits.trailing_zeros() as usize;
            out.extend_small(&bytes[start..p]);
            write_escape(out, bytes[p]);
            start = p + 1;
            hits &= hits - 1;
        }
        i += 16;
    }
    while i + 8 <= n {
        let word = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8-byte slice"));
        let mut hits = escape_bits(word);
        while hits != 0 {
            let p = i + (hits.trailing_zeros() / 8) as usize;
            out.extend_small(&bytes[start..p]);
            write_escape(out, bytes[p]);
            start = p + 1;
            hits &= hits - 1;
        }
        i += 8;
    }
    if i < n {
        if n >= 8 {
            let base = n - 8;
            let word = u64::from_le_bytes(bytes[base..].try_into().expect("8-byte slice"));
            // Bytes below `i` were tested by the loops above; 1 <= i - base <= 7.
            let mut hits = escape_bits(word) & (!0u64 << ((i - base) * 8));
            while hits != 0 {
                let p = base + (hits.trailing_zeros() / 8) as usize;
                out.extend_small(&bytes[start..p]);
                write_escape(out, bytes[p]);
                start = p + 1;
                hits &= hits - 1;
            }
        } else {
            while i < n {
                if NEEDS_ESCAPE[bytes[i] as usize] {
                    out.extend_small(&bytes[start..i]);
                    write_escape(out, bytes[i]);
                    start = i + 1;
                }
                i += 1;
            }
        }
    }
    out.extend_small(&bytes[start..]);
}

/// [`write_backslashed_contents`] for text that is mostly short: flattened Darktrace JSON is
/// mostly paths and values like `details.0.type` and `integer`, each its own call. Up to 64
/// bytes are tested whole and copied at once, as in [`write_str_contents`], instead of going
/// through the general scan (whose tail is a byte loop). Kept apart from the general function
/// so that its callers with longer text (CEF `AdditionalExtensions`) keep their code as it was.
#[inline]
pub fn write_backslashed_short<S: ByteSink + ?Sized>(out: &mut S, s: &str, extra: [u8; 2]) {
    let bytes = s.as_bytes();
    if bytes.len() <= 16 && !short_needs_backslash(bytes, extra) {
        out.extend_small(bytes);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if (17..=64).contains(&bytes.len()) {
        // Overlapping 16-byte tests: the first and last always, the middle two past 32 bytes.
        let last = bytes.len() - 16;
        let mut hits = escape_or_mask16(bytes, 0, extra) | escape_or_mask16(bytes, last, extra);
        if last > 16 {
            hits |=
                escape_or_mask16(bytes, 16, extra) | escape_or_mask16(bytes, 32.min(last), extra);
        }
        if hits == 0 {
            out.extend_small(bytes);
            return;
        }
    }
    write_backslashed_contents(out, s, extra);
}

/// Writes `s` as the contents of a JSON string after backslash-escaping `\\` and the two
/// `extra` bytes (a `key=value;key=value` list inside one JSON string): `a;b` → `a\;b`, then
/// JSON escaping (`a\\;b`). Same word-at-a-time scan as [`write_str_contents`].
#[inline]
pub fn write_backslashed_contents<S: ByteSink + ?Sized>(out: &mut S, s: &str, extra: [u8; 2]) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let emit = |out: &mut S, p: usize, start: &mut usize| {
        let b = bytes[p];
        out.extend_small(&bytes[*start..p]);
        if b == b'\\' || b == extra[0] || b == extra[1] {
            // The added backslash, in its JSON form.
            out.extend(b"\\\\");
            if NEEDS_ESCAPE[b as usize] {
                write_escape(out, b);
            } else {
                out.push(b);
            }
        } else {
            write_escape(out, b);
        }
        *start = p + 1;
    };
    let mut i = 0;
    // Long values (Darktrace JSON flattened into AdditionalExtensions) are mostly clean:
    // sixteen bytes per test, then eight, then one.
    #[cfg(target_arch = "x86_64")]
    while i + 16 <= bytes.len() {
        let mut hits = escape_or_mask16(bytes, i, extra);
        while hits != 0 {
            emit(out, i + hits.trailing_zeros() as usize, &mut start);
            hits &= hits - 1;
        }
        i += 16;
    }
    while i + 8 <= bytes.len() {
        let word = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8-byte slice"));
        let mut hits = escape_bits(word) | eq_bits(word, extra[0]) | eq_bits(word, extra[1]);
        while hits != 0 {
            emit(out, i + (hits.trailing_zeros() / 8) as usize, &mut start);
            hits &= hits - 1;
        }
        i += 8;
    }
    while i < bytes.len() {
        let b = bytes[i];
        if NEEDS_ESCAPE[b as usize] || b == extra[0] || b == extra[1] {
            emit(out, i, &mut start);
        }
        i += 1;
    }
    out.extend_small(&bytes[start..]);
}

/// The high bit of every byte of `word` that JSON needs escaped: controls, `"` and `\\`.
#[inline]
fn escape_bits(word: u64) -> u64 {
    let control = !(((word & LOW7) + ONES * 0x60) | word) & HIGHS;
    control | eq_bits(word, b'"') | eq_bits(word, b'\\')
}

/// Whether any byte of `bytes` (at most 16) needs escaping, tested as two overlapping words.
#[inline(always)]
fn short_needs_escape(bytes: &[u8]) -> bool {
    short_has(bytes, escape_bits, |b| NEEDS_ESCAPE[b as usize])
}

/// [`short_needs_escape`] for [`write_backslashed_short`]: also true when a byte equals
/// either of `extra`.
#[inline(always)]
fn short_needs_backslash(bytes: &[u8], extra: [u8; 2]) -> bool {
    short_has(
        bytes,
        |word| escape_bits(word) | eq_bits(word, extra[0]) | eq_bits(word, extra[1]),
        |b| NEEDS_ESCAPE[b as usize] || b == extra[0] || b == extra[1],
    )
}

/// Whether `bytes` (at most 16) holds a byte `byte_hit` accepts: under 4 bytes one at a time,
/// otherwise as two overlapping words (or halves) whose bytes `word_hits` marks with their high
/// bit. Overlapping parts are tested twice, and every byte is in one of them.
#[inline(always)]
fn short_has(bytes: &[u8], word_hits: impl Fn(u64) -> u64, byte_hit: impl Fn(u8) -> bool) -> bool {
    let n = bytes.len();
    debug_assert!(n <= 16);
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let half = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let bits = if n >= 8 {
        word_hits(word(0)) | word_hits(word(n - 8))
    } else if n >= 4 {
        word_hits(u64::from(half(0)) | u64::from(half(n - 4)) << 32)
    } else {
        return bytes.iter().any(|&b| byte_hit(b));
    };
    bits != 0
}

#[inline]
fn write_escape<S: ByteSink + ?Sized>(out: &mut S, b: u8) {
    match b {
        b'"' => out.extend(b"\\\""),
        b'\\' => out.extend(b"\\\\"),
        b'\n' => out.extend(b"\\n"),
        b'\r' => out.extend(b"\\r"),
        b'\t' => out.extend(b"\\t"),
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 15) as usize]);
        }
    }
}

/// Writes one JSON object field by field, handling commas.
pub struct ObjectWriter<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> ObjectWriter<'o> {
    pub fn begin(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        ObjectWriter { out, first: true }
    }

    /// Writes `"key":` and returns the buffer for the value.
    #[inline]
    pub fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_str(self.out, key);
        self.out.push(b':');
        self.out
    }

    /// Writes `"key":"value"` copying both as they are: for text a parser already found free of
    /// bytes JSON escapes (CEF extension keys are key bytes only; values marked
    /// [`crate::event::Extension::json_clean`]).
    #[inline]
    pub fn verbatim_str(&mut self, key: &str, value: &str) {
        debug_assert!(
            !key.bytes()
                .chain(value.bytes())
                .any(|b| NEEDS_ESCAPE[b as usize]),
            "{key:?}: {value:?}"
        );
        self.out.reserve(key.len() + value.len() + 6);
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        extend_small(self.out, key.as_bytes());
        self.out.extend_from_slice(b"\":\"");
        extend_small(self.out, value.as_bytes());
        self.out.push(b'"');
    }

    #[inline]
    pub fn str(&mut self, key: &str, value: &str) {
        let out = self.key(key);
        write_str(out, value);
    }

    #[inline]
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.str(key, v);
        }
    }

    #[inline]
    pub fn i64(&mut self, key: &str, value: i64) {
        let out = self.key(key);
        out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    #[inline]
    pub fn u64(&mut self, key: &str, value: u64) {
        let out = self.key(key);
        out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// Non-finite floats have no JSON form and are written as `null`.
    #[inline]
    pub fn f64(&mut self, key: &str, value: f64) {
        let out = self.key(key);
        if value.is_finite() {
            out.extend_from_slice(ryu::Buffer::new().format_finite(value).as_bytes());
        } else {
            out.extend_from_slice(b"null");
        }
    }

    #[inline]
    pub fn bool(&mut self, key: &str, value: bool) {
        let out = self.key(key);
        out.extend_from_slice(if value { b"true" } else { b"false" });
    }

    /// Writes a value that is already valid JSON.
    #[inline]
    pub fn raw(&mut self, key: &str, json: &[u8]) {
        let out = self.key(key);
        out.extend_from_slice(json);
    }

    /// Starts a nested object under `key`; finish it with [`ObjectWriter::end`].
    pub fn object(&mut self, key: &str) -> ObjectWriter<'_> {
        let out = self.key(key);
        ObjectWriter::begin(out)
    }

    pub fn end(self) {
        self.out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_tested_exactly_at_every_length_and_position() {
        for n in 0..=16 {
            assert!(!short_needs_escape(&vec![b'a'; n]));
            for pos in 0..n {
                for byte in 0..=255u8 {
                    let mut s = vec![b'a'; n];
                    s[pos] = byte;
                    assert_eq!(
                        short_needs_escape(&s),
                        NEEDS_ESCAPE[byte as usize],
                        "byte {byte:#04x} at {pos} of {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn cursor_writes_what_vec_writes_and_grows() {
        let pieces: Vec<Vec<u8>> = (0..300)
            .map(|i| vec![b'a' + (i % 26) as u8; i % 70])
            .collect();
        let mut padded = [0u8; 48];
        padded[..5].copy_from_slice(b",\"k\":");
        let mut want = b"prefix".to_vec();
        let mut got = b"prefix".to_vec();
        {
            // Room for one piece: the cursor must grow many times.
            let mut w = Cursor::new(&mut got, 1);
            for p in &pieces {
                w.extend_small(p);
                w.push(b'|');
                w.extend(p);
                w.put_padded(&padded, 5);
                write_str_contents(&mut w, "q\"\u{1}");
            }
        }
        for p in &pieces {
            want.extend_from_slice(p);
            want.push(b'|');
            want.extend_from_slice(p);
            want.extend_from_slice(b",\"k\":");
            write_str_contents(&mut want, "q\"\u{1}");
        }
        assert_eq!(got, want);
    }

    #[test]
    fn verbatim_fields_write_what_escaped_fields_write() {
        for (key, value) in [
            ("a", ""),
            ("cs1Label", "plain value é"),
            ("k", &"x".repeat(40)),
        ] {
            let (mut verbatim, mut escaped) = (Vec::new(), Vec::new());
            let mut o = ObjectWriter::begin(&mut verbatim);
            o.verbatim_str(key, value);
            o.verbatim_str(key, value);
            o.end();
            let mut o = ObjectWriter::begin(&mut escaped);
            o.str(key, value);
            o.str(key, value);
            o.end();
            assert_eq!(verbatim, escaped, "{key}: {value}");
        }
    }

    #[test]
    fn escapes_round_trip_through_serde_json() {
        let samples = [
            "plain",
            "quote \" backslash \\ nl \n cr \r tab \t",
            "\u{1} \u{1f} é 🦀",
            "",
        ];
        for s in samples {
            let mut out = Vec::new();
            write_str(&mut out, s);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s);
        }
    }

    proptest::proptest! {
        // The word-at-a-time gate must never skip a byte that needs escaping, wherever it sits.
        #[test]
        fn escaping_matches_serde_json(s in "(?s).{0,80}", noise in proptest::collection::vec(0u8..0x80, 0..40)) {
            let mut text = s;
            text.push_str(&String::from_utf8(noise).unwrap());
            let mut out = Vec::new();
            write_str(&mut out, &text);
            let back: String = serde_json::from_slice(&out).unwrap();
            proptest::prop_assert_eq!(back, text);
        }
    }

    /// The list escaping as first written: split at each special byte, JSON-escape the parts.
    fn backslashed_reference(s: &str, extra: [u8; 2]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            if b == b'\\' || extra.contains(&b) {
                write_str_contents(&mut out, &s[start..i]);
                write_str_contents(&mut out, "\\");
                start = i;
            }
        }
        write_str_contents(&mut out, &s[start..]);
        out
    }

    proptest::proptest! {
        #[test]
        fn backslashed_contents_match_reference(s in "(?s)[a-z;=\\\\\"\n\u{1}é ]{0,60}") {
            for extra in [[b';', b';'], [b';', b'=']] {
                let mut out = Vec::new();
                write_backslashed_contents(&mut out, &s, extra);
                proptest::prop_assert_eq!(&out, &backslashed_reference(&s, extra));
                let mut short = Vec::new();
                write_backslashed_short(&mut short, &s, extra);
                proptest::prop_assert_eq!(&short, &out);
            }
        }
    }

    #[test]
    fn word_tests_are_exact_for_every_byte_in_every_position() {
        for fill in [0u8, b'"', b'\\', 0x1f, 0x20, 0x7f, 0x80, 0xff, b'a'] {
            for b in 0..=255u8 {
                for pos in 0..8 {
                    let mut bytes = [fill; 8];
                    bytes[pos] = b;
                    let word = u64::from_le_bytes(bytes);
                    let mut want_escape = 0u64;
                    let mut want_eq = 0u64;
                    for (k, &x) in bytes.iter().enumerate() {
                        if NEEDS_ESCAPE[x as usize] {
                            want_escape |= 0x80 << (8 * k);
                        }
                        if x == b';' {
                            want_eq |= 0x80 << (8 * k);
                        }
                    }
                    assert_eq!(escape_bits(word), want_escape, "{bytes:?}");
                    assert_eq!(eq_bits(word, b';'), want_eq, "{bytes:?}");
                }
            }
        }
    }

    #[test]
    fn every_byte_position_of_every_escapable_byte_is_escaped() {
        for b in (0u8..0x20).chain([b'"', b'\\']) {
            // 40 bytes: positions in a 16-byte block, an 8-byte word and the byte-wise tail.
            for pos in 0..40 {
                let mut text = "x".repeat(40);
                text.replace_range(pos..pos + 1, std::str::from_utf8(&[b]).unwrap());
                let mut out = Vec::new();
                write_str(&mut out, &text);
                let back: String = serde_json::from_slice(&out).unwrap();
                assert_eq!(back, text, "byte {b:#x} at {pos}");
            }
        }
    }

    /// Byte-at-a-time escaping, the reference for the 16- and 8-byte scans.
    fn escaped_reference(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in s {
            if NEEDS_ESCAPE[b as usize] {
                write_escape(&mut out, b);
            } else {
                out.push(b);
            }
        }
        out
    }

    #[test]
    fn every_byte_value_at_every_position_of_a_64_byte_window() {
        // ASCII only, so every buffer is a valid `str`; bytes >= 0x80 are covered below.
        for len in [1usize, 7, 8, 9, 15, 16, 17, 31, 33, 47, 63, 64] {
            for fill in [b'a', b'"', 0x1f, 0x20, 0x7f] {
                for b in 0u8..0x80 {
                    for pos in 0..len {
                        let mut text = vec![fill; len];
                        text[pos] = b;
                        let s = std::str::from_utf8(&text).unwrap();
                        let mut out = Vec::new();
                        write_str_contents(&mut out, s);
                        assert_eq!(
                            out,
                            escaped_reference(&text),
                            "len {len} fill {fill:#x} byte {b:#x} at {pos}"
                        );
                    }
                }
            }
        }
        // Multi-byte characters (bytes >= 0x80) crossing 8- and 16-byte chunk boundaries.
        for pos in 0..62 {
            let mut text = "x".repeat(62);
            text.insert_str(pos, "é\u{1}\u{10ffff}\"");
            let mut out = Vec::new();
            write_str_contents(&mut out, &text);
            assert_eq!(out, escaped_reference(text.as_bytes()), "at {pos}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sse2_mask_is_exact_for_every_byte_in_every_position() {
        assert_mask16_exact(escape_mask16, |x| NEEDS_ESCAPE[x as usize]);
        for extra in [[b';', b'='], [b';', b';']] {
            assert_mask16_exact(
                |bytes, at| escape_or_mask16(bytes, at, extra),
                |x| NEEDS_ESCAPE[x as usize] || extra.contains(&x),
            );
        }
    }

    /// Every byte value at every position among each filler, loaded unaligned.
    #[cfg(target_arch = "x86_64")]
    fn assert_mask16_exact(mask: impl Fn(&[u8], usize) -> u32, hit: impl Fn(u8) -> bool) {
        for fill in [
            0u8, b'"', b'\\', b';', b'=', 0x1f, 0x20, 0x7f, 0x80, 0xff, b'a',
        ] {
            for b in 0..=255u8 {
                for pos in 0..16 {
                    // At an odd offset inside a larger buffer: the load is unaligned.
                    let mut bytes = [fill; 19];
                    bytes[3 + pos] = b;
                    let want = bytes[3..19]
                        .iter()
                        .enumerate()
                        .filter(|(_, x)| hit(**x))
                        .fold(0u32, |m, (k, _)| m | 1 << k);
                    assert_eq!(mask(&bytes, 3), want, "{bytes:?}");
                }
            }
        }
    }

    /// Every text of up to 80 bytes holding one run of up to `run_bytes.len()` special bytes
    /// (cycling through `run_bytes`) at every offset: the runs straddle the 16/8-byte scans and
    /// the overlapping tail.
    fn for_each_run_crossing_chunks(run_bytes: &[u8], mut check: impl FnMut(&str)) {
        for len in 0..80 {
            for start in 0..len {
                for run in 1..=run_bytes.len().min(len - start) {
                    let mut text = vec![b'q'; len];
                    for (k, b) in text[start..start + run].iter_mut().enumerate() {
                        *b = run_bytes[k % run_bytes.len()];
                    }
                    check(std::str::from_utf8(&text).unwrap());
                }
            }
        }
    }

    #[test]
    fn backslashed_runs_crossing_chunk_boundaries_match_reference() {
        for_each_run_crossing_chunks(&[b';', b'\\', b'=', b'"', 0x01], |s| {
            let mut out = Vec::new();
            write_backslashed_contents(&mut out, s, [b';', b'=']);
            assert_eq!(out, backslashed_reference(s, [b';', b'=']), "{s:?}");
        });
    }

    /// The short fast paths (≤ 16 bytes as two overlapping words or halves, ≤ 64 as two to four
    /// overlapping 16-byte masks): every length, every position, every byte value.
    #[test]
    fn short_backslashed_strings_match_reference_for_every_byte() {
        for len in 1..=65 {
            for pos in 0..len {
                for byte in 0..0x80u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[pos] = byte;
                    let s = std::str::from_utf8(&bytes).expect("ASCII");
                    for extra in [[b';', b';'], [b';', b'=']] {
                        let mut out = Vec::new();
                        write_backslashed_short(&mut out, s, extra);
                        assert_eq!(out, backslashed_reference(s, extra), "{s:?} {extra:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn escapes_crossing_chunk_boundaries_match_reference() {
        for_each_run_crossing_chunks(&[b'"', b'\\', b'\n', 0x01], |s| {
            let mut out = Vec::new();
            write_str_contents(&mut out, s);
            assert_eq!(out, escaped_reference(s.as_bytes()), "{s:?}");
        });
    }

    #[test]
    fn extend_small_appends_exactly_the_slice() {
        let source: Vec<u8> = (0..80u8).collect();
        for prefix in [0usize, 1, 5, 31] {
            for n in 0..=source.len() {
                let mut out = vec![0xeeu8; prefix];
                // Capacity exactly full, so the reserve path is taken too.
                out.shrink_to_fit();
                extend_small(&mut out, &source[..n]);
                let mut want = vec![0xeeu8; prefix];
                want.extend_from_slice(&source[..n]);
                assert_eq!(out, want, "prefix {prefix} n {n}");
            }
        }
    }

    #[test]
    fn cursor_extend_small_appends_exactly_the_slice() {
        let source: Vec<u8> = (0..80u8).collect();
        for room in [0usize, 1, 40, 64, 200] {
            for n in 0..=source.len() {
                let mut out = vec![0xeeu8; 3];
                out.shrink_to_fit();
                {
                    let mut w = Cursor::new(&mut out, room);
                    w.extend_small(&source[..n]);
                    w.extend_small(&source[n / 2..n]);
                }
                let mut want = vec![0xeeu8; 3];
                want.extend_from_slice(&source[..n]);
                want.extend_from_slice(&source[n / 2..n]);
                assert_eq!(out, want, "room {room} n {n}");
            }
        }
    }

    #[test]
    fn object_writer_produces_valid_json() {
        let mut out = Vec::new();
        let mut o = ObjectWriter::begin(&mut out);
        o.str("a", "x\"y");
        o.i64("b", -5);
        o.f64("c", f64::NAN);
        let mut inner = o.object("d");
        inner.bool("e", true);
        inner.end();
        o.end();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["a"], "x\"y");
        assert_eq!(v["b"], -5);
        assert!(v["c"].is_null());
        assert_eq!(v["d"]["e"], true);
    }
}
