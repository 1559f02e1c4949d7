//! Byte-class bitmasks for tokenizers that visit a few bytes of interest in runs of text.
//!
//! A CEF extension has a `=` every 20–40 bytes; finding each with its own `memchr` call paid the
//! call's set-up per token (≈ 10 % of a record's parse). Here one 64-byte block is classified at
//! a time (SSE2, part of the x86_64 baseline; a byte loop elsewhere) and the hits are taken from
//! the block's bitmask.

/// Positions of the bytes equal to `a` or `b`, in ascending order.
pub struct Positions2<'a> {
    bytes: &'a [u8],
    /// Offset of the block `hits` describes.
    base: usize,
    /// Bit `k`: byte `base + k` is a hit not yet returned.
    hits: u64,
    a: u8,
    b: u8,
}

impl<'a> Positions2<'a> {
    pub fn new(bytes: &'a [u8], a: u8, b: u8) -> Self {
        Positions2 {
            bytes,
            base: 0,
            hits: block_mask2(bytes, 0, a, b),
            a,
            b,
        }
    }
}

impl Iterator for Positions2<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.hits == 0 {
            self.base += 64;
            if self.base >= self.bytes.len() {
                return None;
            }
            self.hits = block_mask2(self.bytes, self.base, self.a, self.b);
        }
        let p = self.base + self.hits.trailing_zeros() as usize;
        self.hits &= self.hits - 1;
        Some(p)
    }
}

/// Bit `k` set when `bytes[at + k]` is `a` or `b`, for the up to 64 bytes from `at`.
#[inline]
fn block_mask2(bytes: &[u8], at: usize, a: u8, b: u8) -> u64 {
    let rest = bytes.get(at..).unwrap_or_default();
    if rest.len() >= 64 {
        let block: &[u8; 64] = rest[..64].try_into().expect("64-byte slice");
        return eq2_mask64(block, a, b);
    }
    // The last partial block of the text: padded, and the padding's bits cleared.
    let mut block = [0u8; 64];
    block[..rest.len()].copy_from_slice(rest);
    eq2_mask64(&block, a, b) & ((1u64 << rest.len()) - 1)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn eq2_mask64(block: &[u8; 64], a: u8, b: u8) -> u64 {
    use std::arch::x86_64::*;
    let mut mask = 0u64;
    // SAFETY: SSE2 is part of the x86_64 baseline; each unaligned load reads 16 bytes inside
    // `block` (offsets 0, 16, 32, 48 of 64).
    unsafe {
        let (va, vb) = (_mm_set1_epi8(a as i8), _mm_set1_epi8(b as i8));
        for lane in 0..4 {
            let v = _mm_loadu_si128(block.as_ptr().add(lane * 16).cast::<__m128i>());
            let hit = _mm_or_si128(_mm_cmpeq_epi8(v, va), _mm_cmpeq_epi8(v, vb));
            mask |= u64::from(_mm_movemask_epi8(hit) as u16) << (lane * 16);
        }
    }
    mask
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn eq2_mask64(block: &[u8; 64], a: u8, b: u8) -> u64 {
    block
        .iter()
        .enumerate()
        .fold(0, |m, (k, &c)| m | (u64::from(c == a || c == b) << k))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_match_a_byte_loop_at_every_length_and_offset() {
        // Lengths around the block size, hits at every offset including the last byte.
        for len in [0usize, 1, 15, 16, 63, 64, 65, 127, 128, 129, 200] {
            for hit in 0..len.max(1) {
                let mut text = vec![b'x'; len];
                if len > 0 {
                    text[hit] = b'=';
                    text[(hit * 7 + 3) % len] = b'\\';
                }
                let expected: Vec<usize> = (0..len)
                    .filter(|&k| text[k] == b'=' || text[k] == b'\\')
                    .collect();
                let found: Vec<usize> = Positions2::new(&text, b'=', b'\\').collect();
                assert_eq!(found, expected, "len {len} hit {hit}");
            }
        }
    }

    #[test]
    fn positions_find_every_byte_of_a_dense_text() {
        let text: Vec<u8> = (0..300)
            .map(|k| if k % 3 == 0 { b'=' } else { b'\\' })
            .collect();
        assert_eq!(
            Positions2::new(&text, b'=', b'\\').collect::<Vec<_>>(),
            (0..300).collect::<Vec<_>>()
        );
    }

    #[test]
    fn padding_never_counts_as_a_hit() {
        // A zero needle would match the padding of the last block if it were not masked off.
        let text = [1u8, 0, 2, 0, 3];
        assert_eq!(
            Positions2::new(&text, 0, 0xff).collect::<Vec<_>>(),
            vec![1, 3]
        );
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
