//! Byte-class bitmasks for tokenizers that visit a few bytes of interest in runs of text.
//!
//! A CEF extension has a `=` every 20–40 bytes; finding each with its own `memchr` call paid the
//! call's set-up per token (≈ 10 % of a record's parse). Here one 64-byte block is classified at
//! a time (SSE2, part of the x86_64 baseline; a byte loop elsewhere) and the hits are taken from
//! the block's bitmask.

/// Positions of the bytes a block classifier marks, in ascending order.
pub struct Positions<'a, C> {
    bytes: &'a [u8],
    /// Offset of the block `hits` describes.
    base: usize,
    /// Bit `k`: byte `base + k` is a hit not yet returned.
    hits: u64,
    classify: C,
}

impl<'a, C: Fn(&[u8; 64]) -> u64> Positions<'a, C> {
    /// `classify` sets bit `k` for each byte `k` of interest in a 64-byte block.
    pub fn new(bytes: &'a [u8], classify: C) -> Self {
        let hits = block_mask(bytes, 0, &classify);
        Positions {
            bytes,
            base: 0,
            hits,
            classify,
        }
    }
}

impl<C: Fn(&[u8; 64]) -> u64> Iterator for Positions<'_, C> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.hits == 0 {
            self.base += 64;
            if self.base >= self.bytes.len() {
                return None;
            }
            self.hits = block_mask(self.bytes, self.base, &self.classify);
        }
        let p = self.base + self.hits.trailing_zeros() as usize;
        self.hits &= self.hits - 1;
        Some(p)
    }
}

/// The classifier's mask of the up to 64 bytes from `at`.
#[inline]
fn block_mask(bytes: &[u8], at: usize, classify: &impl Fn(&[u8; 64]) -> u64) -> u64 {
    let rest = bytes.get(at..).unwrap_or_default();
    if rest.len() >= 64 {
        let block: &[u8; 64] = rest[..64].try_into().expect("64-byte slice");
        return classify(block);
    }
    // The last partial block of a longer text: the 64 bytes that end the text, shifted down.
    // Reading them from the text costs less than copying the rest into a padded block, whose
    // loads would wait for that copy's stores.
    if !rest.is_empty() && at >= 64 - rest.len() {
        let end = at + rest.len();
        let block: &[u8; 64] = bytes[end - 64..end].try_into().expect("64-byte slice");
        return classify(block) >> (64 - rest.len());
    }
    // A text shorter than a block: padded, and the padding's bits cleared.
    let mut block = [0u8; 64];
    block[..rest.len()].copy_from_slice(rest);
    classify(&block) & ((1u64 << rest.len()) - 1)
}

/// The bytes a CEF tokenizer stops at: its field delimiter (`|` in the header, `=` in the
/// extension) and `\` delimit fields and escapes; `"` and control bytes are where a value will
/// need JSON escaping.
///
/// With AVX-512BW (checked at run time, a cached flag) the block is one register and each
/// class one compare into a mask register: a sixth of the SSE2 instructions.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn cef_events<const DELIMITER: u8>(block: &[u8; 64]) -> u64 {
    if std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has AVX-512BW, checked just above.
        unsafe { cef_events_avx512::<DELIMITER>(block) }
    } else {
        cef_events_sse2::<DELIMITER>(block)
    }
}

/// [`cef_events`] with AVX-512BW.
///
/// # Safety
/// The CPU must support AVX-512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bw")]
unsafe fn cef_events_avx512<const DELIMITER: u8>(block: &[u8; 64]) -> u64 {
    use std::arch::x86_64::*;
    // SAFETY: the 64-byte unaligned load reads exactly `block`.
    let v = unsafe { _mm512_loadu_si512(block.as_ptr().cast()) };
    _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(DELIMITER as i8))
        | _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b'\\' as i8))
        | _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b'"' as i8))
        | _mm512_cmplt_epu8_mask(v, _mm512_set1_epi8(0x20))
}

/// [`cef_events`] with SSE2 (the x86_64 baseline), 16 bytes at a time.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn cef_events_sse2<const DELIMITER: u8>(block: &[u8; 64]) -> u64 {
    use std::arch::x86_64::*;
    let mut mask = 0u64;
    // SAFETY: SSE2 is part of the x86_64 baseline; each unaligned load reads 16 bytes inside
    // `block` (offsets 0, 16, 32, 48 of 64).
    unsafe {
        let eq = |v: __m128i, c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
        for lane in 0..4 {
            let v = _mm_loadu_si128(block.as_ptr().add(lane * 16).cast::<__m128i>());
            // Unsigned `v <= 0x1f`: the minimum equals `v` only for control bytes.
            let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
            let hit = _mm_or_si128(
                _mm_or_si128(eq(v, DELIMITER), eq(v, b'\\')),
                _mm_or_si128(eq(v, b'"'), control),
            );
            mask |= u64::from(_mm_movemask_epi8(hit) as u16) << (lane * 16);
        }
    }
    mask
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn cef_events<const DELIMITER: u8>(block: &[u8; 64]) -> u64 {
    block.iter().enumerate().fold(0, |m, (k, &c)| {
        m | (u64::from(is_cef_event(DELIMITER, c)) << k)
    })
}

/// The byte-at-a-time definition of [`cef_events`].
#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
fn is_cef_event(delimiter: u8, c: u8) -> bool {
    c == delimiter || matches!(c, b'\\' | b'"') || c < 0x20
}

/// [`cef_events`] of a CEF extension, delimited by `=`.
#[inline(always)]
pub fn cef_extension_events(block: &[u8; 64]) -> u64 {
    cef_events::<b'='>(block)
}

/// [`cef_events`] of a CEF header, delimited by `|`.
#[inline(always)]
pub fn cef_header_events(block: &[u8; 64]) -> u64 {
    cef_events::<b'|'>(block)
}

/// Bit `k` set when `bytes[at + k]` (k < 16) is a backslash.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn backslash_mask16(bytes: &[u8], at: usize) -> u32 {
    use std::arch::x86_64::*;
    let chunk: &[u8; 16] = bytes[at..at + 16].try_into().expect("16-byte slice");
    // SAFETY: SSE2 is part of the x86_64 baseline; the unaligned load reads exactly `chunk`.
    unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
        _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8))) as u32
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub fn backslash_mask16(bytes: &[u8], at: usize) -> u32 {
    bytes[at..at + 16]
        .iter()
        .enumerate()
        .fold(0, |m, (k, &c)| m | (u32::from(c == b'\\') << k))
}

/// Bit `k` set when `bytes[at + k]` (k < 16) is a CEF key byte: ASCII alphanumeric or one of
/// `_ . , [ ]` (see `cef::KEY_BYTE`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn key_byte_mask16(bytes: &[u8], at: usize) -> u32 {
    use std::arch::x86_64::*;
    let chunk: &[u8; 16] = bytes[at..at + 16].try_into().expect("16-byte slice");
    // SAFETY: SSE2 is part of the x86_64 baseline; the unaligned load reads exactly `chunk`.
    // Signed compares are exact here: every byte ≥ 0x80 is negative and so below each bound.
    unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
        let between = |x: __m128i, lo: u8, hi: u8| {
            _mm_and_si128(
                _mm_cmpgt_epi8(x, _mm_set1_epi8(lo as i8 - 1)),
                _mm_cmplt_epi8(x, _mm_set1_epi8(hi as i8 + 1)),
            )
        };
        let digit = between(v, b'0', b'9');
        // `| 0x20` folds A–Z onto a–z and no other byte into a–z.
        let letter = between(_mm_or_si128(v, _mm_set1_epi8(0x20)), b'a', b'z');
        let eq = |c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
        let punct = _mm_or_si128(
            _mm_or_si128(_mm_or_si128(eq(b'_'), eq(b'.')), eq(b',')),
            _mm_or_si128(eq(b'['), eq(b']')),
        );
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(digit, letter), punct)) as u32
    }
}

/// Eight bytes at a time without SIMD (SWAR): each constant repeats one byte over a word.
pub(crate) const ONES: u64 = 0x0101_0101_0101_0101;
/// The high bit of every byte of a word.
pub(crate) const HIGHS: u64 = 0x8080_8080_8080_8080;
/// The low seven bits of every byte of a word.
pub(crate) const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// The high bit of every byte of `word` equal to `c`, and only those: the low seven bits are
/// added without carries leaving the byte, unlike the classic "has zero byte" test, whose
/// borrows can flag a byte after a real hit.
#[inline]
pub(crate) fn eq_bits(word: u64, c: u8) -> u64 {
    let y = word ^ (ONES * u64::from(c));
    !(((y & LOW7) + LOW7) | y) & HIGHS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(text: &[u8]) -> Vec<usize> {
        (0..text.len())
            .filter(|&k| is_cef_event(b'=', text[k]))
            .collect()
    }

    #[test]
    fn positions_match_a_byte_loop_at_every_length_and_offset() {
        // Lengths around the block size, hits at every offset including the last byte.
        for len in [0usize, 1, 15, 16, 63, 64, 65, 127, 128, 129, 200] {
            for hit in 0..len.max(1) {
                let mut text = vec![b'x'; len];
                if len > 0 {
                    text[hit] = b'=';
                    text[(hit * 7 + 3) % len] = b'\\';
                    text[(hit * 5 + 1) % len] = b'"';
                }
                let found: Vec<usize> = Positions::new(&text, cef_extension_events).collect();
                assert_eq!(found, reference(&text), "len {len} hit {hit}");
            }
        }
    }

    #[test]
    fn positions_find_every_byte_of_a_dense_text() {
        let text: Vec<u8> = (0..300).map(|k| b"=\\\"\n"[k % 4]).collect();
        assert_eq!(
            Positions::new(&text, cef_extension_events).collect::<Vec<_>>(),
            (0..300).collect::<Vec<_>>()
        );
    }

    #[test]
    fn padding_never_counts_as_a_hit() {
        // NUL is a control byte, so the zero padding of the last block would match if its
        // bits were not masked off.
        let text = [b'a', 0, b'b', 0, b'c'];
        assert_eq!(
            Positions::new(&text, cef_extension_events).collect::<Vec<_>>(),
            vec![1, 3]
        );
    }

    #[test]
    fn extension_events_are_exact_for_every_byte_in_every_position() {
        for byte in 0..=255u8 {
            for pos in 0..64 {
                let mut block = [b'a'; 64];
                block[pos] = byte;
                assert_eq!(
                    cef_extension_events(&block),
                    u64::from(is_cef_event(b'=', byte)) << pos,
                    "byte {byte:#04x} at {pos}"
                );
            }
        }
    }

    /// Both x86_64 implementations, whichever the dispatcher picks on this CPU.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sse2_and_avx512_events_are_exact_for_every_byte_in_every_position() {
        let avx512 = std::arch::is_x86_feature_detected!("avx512bw");
        if !avx512 {
            eprintln!("no AVX-512BW on this CPU: only the SSE2 classifier is checked");
        }
        for byte in 0..=255u8 {
            for pos in 0..64 {
                for background in [b'a', b'='] {
                    let mut block = [background; 64];
                    block[pos] = byte;
                    let expected = (0..64).fold(0u64, |m, k| {
                        m | (u64::from(is_cef_event(b'=', block[k])) << k)
                    });
                    assert_eq!(
                        cef_events_sse2::<b'='>(&block),
                        expected,
                        "sse2 {byte:#04x}"
                    );
                    if avx512 {
                        // SAFETY: AVX-512BW is present (checked above).
                        let got = unsafe { cef_events_avx512::<b'='>(&block) };
                        assert_eq!(got, expected, "avx512 {byte:#04x} at {pos}");
                    }
                }
            }
        }
    }

    #[test]
    fn backslash_mask_is_exact_for_every_byte_in_every_position() {
        for byte in 0..=255u8 {
            for pos in 0..16 {
                let mut chunk = [b'a'; 20];
                chunk[pos + 2] = byte;
                assert_eq!(
                    backslash_mask16(&chunk, 2),
                    u32::from(byte == b'\\') << pos,
                    "byte {byte:#04x} at {pos}"
                );
            }
        }
    }

    #[test]
    fn header_events_are_exact_for_every_byte_in_every_position() {
        for byte in 0..=255u8 {
            for pos in 0..64 {
                let mut block = [b'a'; 64];
                block[pos] = byte;
                assert_eq!(
                    cef_header_events(&block),
                    u64::from(is_cef_event(b'|', byte)) << pos,
                    "byte {byte:#04x} at {pos}"
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn key_byte_mask_is_exact_for_every_byte_in_every_position() {
        let reference =
            |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b',' | b'[' | b']');
        for byte in 0..=255u8 {
            for pos in 0..16 {
                let mut chunk = [b'a'; 16];
                chunk[pos] = byte;
                let mask = key_byte_mask16(&chunk, 0);
                let expected = (0..16).fold(0u32, |m, k| m | (u32::from(reference(chunk[k])) << k));
                assert_eq!(mask, expected, "byte {byte:#04x} at {pos}");
                // And with a non-key background, so a wrong neighbour bit cannot hide.
                let mut chunk = [b' '; 16];
                chunk[pos] = byte;
                assert_eq!(
                    key_byte_mask16(&chunk, 0),
                    u32::from(reference(byte)) << pos,
                    "byte {byte:#04x} at {pos} among spaces"
                );
            }
        }
    }
}
