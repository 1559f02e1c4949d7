//! Per-record cost of the worker's parse and map over the benchmark corpus: 4,096 distinct
//! Darktrace-shaped CEF syslog messages (the sender's corpus, seed 1), one pass per iteration.
//!
//! A single repeated record (`benches/cef.rs`) lets the branch predictor learn every branch;
//! varied records do not, and that is what the daemon sees. The in-run baseline is a
//! `memchr2` pass over the same bytes; quote ratios to it.
//!
//! A second baseline, `baseline_naive_single_pass_to_csl`, is a floor for the whole job rather
//! than a scan: one straightforward pass from record to a CommonSecurityLog-shaped row (split
//! the header at its pipes, each extension at ` key=`, look the key up, copy the value with JSON
//! escaping), with none of the daemon's rules — no syslog header, no CEF unescaping, no
//! anti-forgery rule, no types or timestamps, no UTF-8 check. Its output is not a valid row for
//! every input and is not checked: it only tells how far the real parse → CSL is from the
//! simplest code that does the same amount of work.
//!
//! A third, `baseline_blockwise_to_csl` (x86_64 with AVX-512BW only), is the same job done the
//! fastest way this project knows, to tell whether a rewrite could reach the issue 3 budget
//! (≈ 0.65 µs per record): one AVX-512 pass classifies the whole record into bitmasks (`|`, `=`,
//! space, `\`, JSON specials), keys are found from the masks with bit arithmetic, looked up
//! in a perfect-hash table of ready-made `,"Column":"` prefixes, and values without JSON
//! specials are copied 16 bytes at a time into a reserved buffer. Same output shape and the
//! same absence of rules as the naive pass.
//!
//! `SLUICE_BENCH_DISTINCT=N` cycles through only the first N records (same total): N = 1 shows
//! what a single repeated record costs, N = 256 the varied corpus with every record in L2.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::event::{Received, Timestamp};
use sluice::map::{self, Schema};
use sluice::parse::{ParseOptions, Parser};
use sluice_bench::corpus::{Corpus, CorpusSpec, Mix};

fn corpus() -> Vec<Vec<u8>> {
    let spec = CorpusSpec {
        mix: "cef".parse::<Mix>().expect("mix"),
        ..CorpusSpec::default()
    };
    Corpus::generate(&spec)
        .messages
        .into_iter()
        .map(|m| m.bytes)
        .collect()
}

fn benches(c: &mut Criterion) {
    let mut records = corpus();
    if let Ok(n) = std::env::var("SLUICE_BENCH_DISTINCT") {
        let n: usize = n.parse().expect("count");
        let head: Vec<_> = records[..n].to_vec();
        records
            .iter_mut()
            .enumerate()
            .for_each(|(i, r)| *r = head[i % n].clone());
    }
    let received = Received {
        source: "bench",
        peer: None,
        received_at: Timestamp::from_unix_nanos(1_793_491_200_000_000_000),
    };
    let mut g = c.benchmark_group("cef_corpus");
    g.throughput(Throughput::Elements(records.len() as u64));
    g.bench_function("baseline_memchr2_scan", |b| {
        b.iter(|| {
            records
                .iter()
                .map(|r| memchr::memchr2_iter(b'=', b'\\', black_box(r)).count())
                .sum::<usize>()
        })
    });
    let mut parser = Parser::new(ParseOptions::default());
    g.bench_function("parse", |b| {
        b.iter(|| {
            let mut n = 0;
            for r in &records {
                let event = parser.parse(received, black_box(r));
                n += event.raw.len();
                // As the worker does: the next record reuses this one's extension vector.
                let storage = event.into_storage();
                parser.recycle(storage);
            }
            n
        })
    });
    let mut out = Vec::with_capacity(8 << 20);
    g.bench_function("baseline_naive_single_pass_to_csl", |b| {
        b.iter(|| {
            out.clear();
            for r in &records {
                floor::cef_to_csl(black_box(r), &mut out);
            }
            out.len()
        })
    });
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        let padded: Vec<blockwise::Padded> =
            records.iter().map(|r| blockwise::Padded::new(r)).collect();
        let table = blockwise::Columns::new();
        // The same job as the naive pass: the same bytes out for every corpus record.
        for (record, pad) in records.iter().zip(&padded) {
            let (mut naive, mut fast) = (Vec::new(), Vec::new());
            floor::cef_to_csl(record, &mut naive);
            // SAFETY: AVX-512BW was detected above.
            unsafe { blockwise::cef_to_csl(pad, &table, &mut fast) };
            assert!(
                naive == fast,
                "{}\n{}",
                String::from_utf8_lossy(&naive),
                String::from_utf8_lossy(&fast)
            );
        }
        g.bench_function("baseline_blockwise_to_csl", |b| {
            b.iter(|| {
                out.clear();
                for r in &padded {
                    // SAFETY: AVX-512BW was detected above.
                    unsafe { blockwise::cef_to_csl(black_box(r), &table, &mut out) };
                }
                out.len()
            })
        });
    }
    for schema in [Schema::Commonsecuritylog, Schema::Raw] {
        g.bench_function(format!("parse_to_{}", schema.as_str()), |b| {
            b.iter(|| {
                out.clear();
                for r in &records {
                    let event = parser.parse(received, black_box(r));
                    map::write(schema, &event, &mut out);
                    out.push(b'\n');
                    let storage = event.into_storage();
                    parser.recycle(storage);
                }
                out.len()
            })
        });
    }
    g.finish();
}

/// The row both baselines write: its start, what follows each header field, and the
/// `,"Column":"` prefix of each extension key the corpus uses most (the rest go to
/// AdditionalExtensions). One list, so that the two passes cannot drift apart.
const ROW_START: &[u8] = b"{\"TimeGenerated\":\"2026-11-01T00:00:00.000Z\",\"DeviceVendor\":\"";
const HEADER_AFTER: [&[u8]; 6] = [
    b"\",\"DeviceProduct\":\"",
    b"\",\"DeviceVersion\":\"",
    b"\",\"DeviceEventClassID\":\"",
    b"\",\"Activity\":\"",
    b"\",\"LogSeverity\":\"",
    b"\"",
];

/// `column_prefix!(key)`: a `match` on the key (the naive pass's lookup);
/// `column_prefix!(list)`: the same pairs as a slice (the blockwise pass's table).
macro_rules! column_prefix {
    (@pairs $mode:tt $($arg:expr)?) => {
        column_prefix!(@emit $mode $($arg)?;
            b"src" => b",\"SourceIP\":\"",
            b"dst" => b",\"DestinationIP\":\"",
            b"dvc" => b",\"DeviceAddress\":\"",
            b"dvchost" => b",\"DeviceName\":\"",
            b"dhost" => b",\"DestinationHostName\":\"",
            b"shost" => b",\"SourceHostName\":\"",
            b"msg" => b",\"Message\":\"",
            b"cat" => b",\"DeviceEventCategory\":\"",
            b"externalId" => b",\"ExternalID\":\"",
            b"rt" => b",\"ReceiptTime\":\"",
            b"spt" => b",\"SourcePort\":\"",
            b"dpt" => b",\"DestinationPort\":\"",
            b"proto" => b",\"Protocol\":\"",
            b"cs1" => b",\"DeviceCustomString1\":\"",
            b"cs1Label" => b",\"DeviceCustomString1Label\":\"",
            b"cs2" => b",\"DeviceCustomString2\":\"",
            b"cs2Label" => b",\"DeviceCustomString2Label\":\"",
            b"cs3" => b",\"DeviceCustomString3\":\"",
            b"cs3Label" => b",\"DeviceCustomString3Label\":\"",
            b"cs4" => b",\"DeviceCustomString4\":\"",
            b"cs4Label" => b",\"DeviceCustomString4Label\":\"",
            b"cs5" => b",\"DeviceCustomString5\":\"",
            b"cs5Label" => b",\"DeviceCustomString5Label\":\"",
            b"cn1" => b",\"DeviceCustomNumber1\":\"",
            b"cn1Label" => b",\"DeviceCustomNumber1Label\":\"",
        )
    };
    (@emit key $key:expr; $($k:literal => $v:literal,)*) => {
        Some(match $key {
            $($k => $v,)*
            _ => return None,
        })
    };
    (@emit list; $($k:literal => $v:literal,)*) => {
        &[$(($k, $v)),*]
    };
    (list) => { column_prefix!(@pairs list) };
    ($key:expr) => { column_prefix!(@pairs key $key) };
}
use column_prefix;

/// The naive single pass of the module docs.
mod floor {
    use memchr::{memchr_iter, memmem, memrchr};

    /// `,"Column":"` for the keys the corpus uses most; others go to AdditionalExtensions.
    fn column(key: &[u8]) -> Option<&'static [u8]> {
        super::column_prefix!(key)
    }

    /// Eight bytes at a time: any control byte, `"` or `\`.
    fn needs_escape(v: &[u8]) -> bool {
        const LO: u64 = 0x0101_0101_0101_0101;
        const HI: u64 = 0x8080_8080_8080_8080;
        let has = |w: u64, b: u8| {
            let x = w ^ (LO * u64::from(b));
            x.wrapping_sub(LO) & !x & HI != 0
        };
        let mut chunks = v.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            if (w.wrapping_sub(LO * 0x20) & !w & HI) != 0 || has(w, b'"') || has(w, b'\\') {
                return true;
            }
        }
        chunks
            .remainder()
            .iter()
            .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
    }

    fn write_value(out: &mut Vec<u8>, v: &[u8]) {
        if !needs_escape(v) {
            out.extend_from_slice(v);
            return;
        }
        for &b in v {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                c if c < 0x20 => out.extend_from_slice(b"\\u0000"),
                c => out.push(c),
            }
        }
    }

    pub fn cef_to_csl(line: &[u8], out: &mut Vec<u8>) {
        let Some(start) = memmem::find(line, b"CEF:") else {
            return;
        };
        let record = &line[start..];
        let mut pipes = [0usize; 7];
        for (slot, p) in pipes.iter_mut().zip(memchr_iter(b'|', record)) {
            *slot = p;
        }
        out.extend_from_slice(super::ROW_START);
        for (i, after) in super::HEADER_AFTER.iter().enumerate() {
            write_value(out, &record[pipes[i] + 1..pipes[i + 1]]);
            out.extend_from_slice(after);
        }
        let ext = &record[pipes[6] + 1..];
        let mut additional = [(0u32, 0u32, 0u32, 0u32); 32];
        let mut n_additional = 0;
        let mut emit =
            |out: &mut Vec<u8>, (ks, ke): (usize, usize), vs: usize, ve: usize| match column(
                &ext[ks..ke],
            ) {
                Some(col) => {
                    out.extend_from_slice(col);
                    write_value(out, &ext[vs..ve]);
                    out.push(b'"');
                }
                None if n_additional < additional.len() => {
                    additional[n_additional] = (ks as u32, ke as u32, vs as u32, ve as u32);
                    n_additional += 1;
                }
                None => {}
            };
        let mut key: Option<(usize, usize)> = None;
        let mut value_start = 0;
        for p in memchr_iter(b'=', ext) {
            if p > 0 && ext[p - 1] == b'\\' {
                continue;
            }
            let key_start =
                memrchr(b' ', &ext[value_start..p]).map_or(value_start, |s| value_start + s + 1);
            if let Some(k) = key {
                emit(
                    out,
                    k,
                    value_start,
                    key_start.saturating_sub(1).max(value_start),
                );
            }
            key = Some((key_start, p));
            value_start = p + 1;
        }
        if let Some(k) = key {
            let end = ext.len() - usize::from(ext.last() == Some(&b'\n'));
            emit(out, k, value_start, end.max(value_start));
        }
        if n_additional > 0 {
            out.extend_from_slice(b",\"AdditionalExtensions\":\"");
            for (i, &(ks, ke, vs, ve)) in additional[..n_additional].iter().enumerate() {
                if i > 0 {
                    out.push(b';');
                }
                out.extend_from_slice(&ext[ks as usize..ke as usize]);
                out.push(b'=');
                write_value(out, &ext[vs as usize..ve as usize]);
            }
            out.push(b'"');
        }
        out.extend_from_slice(b"}\n");
    }
}

/// The blockwise pass of the module docs.
#[cfg(target_arch = "x86_64")]
mod blockwise {
    use std::arch::x86_64::*;

    /// Records longer than this are skipped (the corpus stays under 2 KB).
    const MAX_BLOCKS: usize = 64;

    /// A record copied into whole 64-byte blocks plus 64 bytes of zeros, so that every block
    /// load and every 32-byte over-read of a value stays inside the buffer.
    pub struct Padded {
        bytes: Vec<u8>,
        len: usize,
    }

    impl Padded {
        pub fn new(record: &[u8]) -> Padded {
            let blocks = record.len().div_ceil(64) + 1;
            let mut bytes = vec![0u8; blocks * 64];
            bytes[..record.len()].copy_from_slice(record);
            Padded {
                bytes,
                len: record.len(),
            }
        }
    }

    /// A perfect-hash table from CEF key (up to 16 bytes) to `,"Column":"`.
    pub struct Columns {
        slots: Vec<(u128, u8, &'static [u8])>,
        shift: u32,
    }

    const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

    fn key_word(key: &[u8]) -> u128 {
        let mut w = [0u8; 16];
        w[..key.len()].copy_from_slice(key);
        u128::from_le_bytes(w)
    }

    fn slot_of(word: u128, len: usize, shift: u32) -> usize {
        let folded = (word as u64) ^ ((word >> 64) as u64).rotate_left(29) ^ len as u64;
        (folded.wrapping_mul(MULTIPLIER) >> shift) as usize
    }

    impl Columns {
        pub fn new() -> Columns {
            const KEYS: &[(&[u8], &[u8])] = super::column_prefix!(list);
            // The smallest power-of-two table where no two keys share a slot.
            for bits in 6..16 {
                let shift = 64 - bits;
                let mut slots = vec![(0u128, 0u8, &b""[..]); 1 << bits];
                let collision = KEYS.iter().any(|(key, prefix)| {
                    let slot = &mut slots[slot_of(key_word(key), key.len(), shift)];
                    if slot.1 != 0 {
                        return true;
                    }
                    *slot = (key_word(key), key.len() as u8, *prefix);
                    false
                });
                if !collision {
                    return Columns { slots, shift };
                }
            }
            panic!("no perfect hash for the column keys");
        }

        #[inline(always)]
        fn get(&self, key_word: u128, len: usize) -> Option<&'static [u8]> {
            let slot = &self.slots[slot_of(key_word, len, self.shift)];
            (slot.1 as usize == len && slot.0 == key_word).then_some(slot.2)
        }
    }

    /// Per 64-byte block: where each class of byte is.
    struct Masks {
        pipe: [u64; MAX_BLOCKS],
        eq: [u64; MAX_BLOCKS],
        space: [u64; MAX_BLOCKS],
        backslash: [u64; MAX_BLOCKS],
        special: [u64; MAX_BLOCKS],
    }

    #[target_feature(enable = "avx512bw")]
    unsafe fn classify(bytes: &[u8], blocks: usize, m: &mut Masks) {
        for b in 0..blocks {
            // SAFETY: `bytes` holds `blocks` whole blocks (see `Padded`).
            let v = unsafe { _mm512_loadu_si512(bytes.as_ptr().add(b * 64).cast()) };
            let eq = |c: u8| _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(c as i8));
            m.pipe[b] = eq(b'|');
            m.eq[b] = eq(b'=');
            m.space[b] = eq(b' ');
            m.backslash[b] = eq(b'\\');
            m.special[b] =
                m.backslash[b] | eq(b'"') | _mm512_cmplt_epu8_mask(v, _mm512_set1_epi8(0x20));
        }
    }

    fn bit(mask: &[u64; MAX_BLOCKS], at: usize) -> bool {
        mask[at / 64] >> (at % 64) & 1 != 0
    }

    /// Whether any bit of `mask` is set in `from..to`.
    #[inline(always)]
    fn any_in(mask: &[u64; MAX_BLOCKS], from: usize, to: usize) -> bool {
        let mut at = from;
        while at < to {
            let (b, o) = (at / 64, at % 64);
            let n = (64 - o).min(to - at);
            let window = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
            if (mask[b] >> o) & window != 0 {
                return true;
            }
            at += n;
        }
        false
    }

    /// The last set bit of `mask` below `before`, not before `floor`.
    #[inline(always)]
    fn last_before(mask: &[u64; MAX_BLOCKS], floor: usize, before: usize) -> Option<usize> {
        let mut b = before / 64;
        let mut m = mask[b] & ((1u64 << (before % 64)) - 1);
        loop {
            if m != 0 {
                let at = b * 64 + 63 - m.leading_zeros() as usize;
                return (at >= floor).then_some(at);
            }
            if b == 0 || b * 64 <= floor {
                return None;
            }
            b -= 1;
            m = mask[b];
        }
    }

    /// Appends with raw stores into capacity reserved per record.
    struct Out {
        at: *mut u8,
    }

    impl Out {
        /// Copies `len` bytes from `from`, 16 at a time (SSE2, so that it inlines anywhere),
        /// over-reading and over-writing up to 15 bytes, which the padding and the reservation
        /// allow.
        #[inline(always)]
        unsafe fn copy(&mut self, from: *const u8, len: usize) {
            let mut done = 0;
            while done < len {
                // SAFETY: the caller's padding and reservation (see `cef_to_csl`).
                unsafe {
                    let v = _mm_loadu_si128(from.add(done).cast());
                    _mm_storeu_si128(self.at.add(done).cast(), v);
                }
                done += 16;
            }
            // SAFETY: `len` bytes were written.
            self.at = unsafe { self.at.add(len) };
        }

        #[inline(always)]
        unsafe fn text(&mut self, text: &[u8]) {
            // SAFETY: within the reservation; `text` is read exactly.
            unsafe {
                std::ptr::copy_nonoverlapping(text.as_ptr(), self.at, text.len());
                self.at = self.at.add(text.len());
            }
        }

        #[inline(always)]
        unsafe fn byte(&mut self, b: u8) {
            // SAFETY: within the reservation.
            unsafe {
                *self.at = b;
                self.at = self.at.add(1);
            }
        }

        /// A value with JSON specials, byte by byte.
        unsafe fn escaped(&mut self, value: &[u8]) {
            for &b in value {
                // SAFETY: at most 6 bytes per input byte, within the reservation.
                unsafe {
                    match b {
                        b'"' => self.text(b"\\\""),
                        b'\\' => self.text(b"\\\\"),
                        b'\n' => self.text(b"\\n"),
                        c if c < 0x20 => self.text(b"\\u0000"),
                        c => self.byte(c),
                    }
                }
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX-512BW.
    #[target_feature(enable = "avx512bw")]
    pub unsafe fn cef_to_csl(record: &Padded, columns: &Columns, out: &mut Vec<u8>) {
        let blocks = record.len.div_ceil(64);
        if blocks > MAX_BLOCKS {
            return;
        }
        let bytes = &record.bytes[..];
        let mut m = Masks {
            pipe: [0; MAX_BLOCKS],
            eq: [0; MAX_BLOCKS],
            space: [0; MAX_BLOCKS],
            backslash: [0; MAX_BLOCKS],
            special: [0; MAX_BLOCKS],
        };
        // SAFETY: AVX-512BW (the caller's promise); `bytes` holds `blocks` + 1 blocks.
        unsafe { classify(bytes, blocks, &mut m) };
        let Some(start) = memchr::memmem::find(&bytes[..record.len], b"CEF:") else {
            return;
        };
        // Room for every byte escaped six times over, the prefixes and 32 bytes of over-write.
        out.reserve(record.len * 6 + 2048);
        let base = out.len();
        // SAFETY: `base` is within the reservation.
        let mut w = Out {
            at: unsafe { out.as_mut_ptr().add(base) },
        };
        let src = bytes.as_ptr();
        // SAFETY (the whole block): reads stay inside `record.bytes` (one padding block after
        // the record), writes inside the reservation above.
        unsafe {
            // The first seven unescaped pipes from `start`.
            let mut pipes = [0usize; 7];
            let mut found = 0;
            let mut b = start / 64;
            let mut mask = m.pipe[b] & (u64::MAX << (start % 64));
            'header: while b < blocks {
                while mask != 0 {
                    let at = b * 64 + mask.trailing_zeros() as usize;
                    mask &= mask - 1;
                    if at > 0 && bit(&m.backslash, at - 1) {
                        continue;
                    }
                    pipes[found] = at;
                    found += 1;
                    if found == 7 {
                        break 'header;
                    }
                }
                b += 1;
                if b < blocks {
                    mask = m.pipe[b];
                }
            }
            if found < 7 {
                return;
            }
            w.text(super::ROW_START);
            for (i, after) in super::HEADER_AFTER.iter().enumerate() {
                let (vs, ve) = (pipes[i] + 1, pipes[i + 1]);
                if any_in(&m.special, vs, ve) {
                    w.escaped(&bytes[vs..ve]);
                } else {
                    w.copy(src.add(vs), ve - vs);
                }
                w.text(after);
            }
            // Extension: every unescaped `=` from the seventh pipe on ends a key.
            let ext = pipes[6] + 1;
            let end = record.len - usize::from(bytes[record.len - 1] == b'\n');
            let mut additional = [(0u32, 0u32, 0u32, 0u32); 32];
            let mut n_additional = 0;
            let mut key: Option<(usize, usize)> = None;
            let mut value_start = ext;
            let mut emit = |w: &mut Out, (ks, ke): (usize, usize), vs: usize, ve: usize| {
                let len = ke - ks;
                let prefix = if len <= 16 {
                    let word = _mm_loadu_si128(src.add(ks).cast());
                    let word: u128 = std::mem::transmute(word);
                    let word = if len == 16 {
                        word
                    } else {
                        word & ((1u128 << (len * 8)) - 1)
                    };
                    columns.get(word, len)
                } else {
                    None
                };
                match prefix {
                    Some(prefix) => {
                        w.text(prefix);
                        if any_in(&m.special, vs, ve) {
                            w.escaped(&bytes[vs..ve]);
                        } else {
                            w.copy(src.add(vs), ve - vs);
                        }
                        w.byte(b'"');
                    }
                    None if n_additional < additional.len() => {
                        additional[n_additional] = (ks as u32, ke as u32, vs as u32, ve as u32);
                        n_additional += 1;
                    }
                    None => {}
                }
            };
            let mut b = ext / 64;
            let mut mask = m.eq[b] & (u64::MAX << (ext % 64));
            while b < blocks {
                while mask != 0 {
                    let p = b * 64 + mask.trailing_zeros() as usize;
                    mask &= mask - 1;
                    if p >= end || bit(&m.backslash, p - 1) {
                        continue;
                    }
                    let key_start =
                        last_before(&m.space, value_start, p).map_or(value_start, |s| s + 1);
                    if let Some(k) = key {
                        emit(
                            &mut w,
                            k,
                            value_start,
                            key_start.saturating_sub(1).max(value_start),
                        );
                    }
                    key = Some((key_start, p));
                    value_start = p + 1;
                }
                b += 1;
                if b < blocks {
                    mask = m.eq[b];
                }
            }
            if let Some(k) = key {
                emit(&mut w, k, value_start, end.max(value_start));
            }
            if n_additional > 0 {
                w.text(b",\"AdditionalExtensions\":\"");
                for (i, &(ks, ke, vs, ve)) in additional[..n_additional].iter().enumerate() {
                    if i > 0 {
                        w.byte(b';');
                    }
                    let (ks, ke, vs, ve) = (ks as usize, ke as usize, vs as usize, ve as usize);
                    w.copy(src.add(ks), ke - ks);
                    w.byte(b'=');
                    if any_in(&m.special, vs, ve) {
                        w.escaped(&bytes[vs..ve]);
                    } else {
                        w.copy(src.add(vs), ve - vs);
                    }
                }
                w.byte(b'"');
            }
            w.text(b"}\n");
            let written = w.at.offset_from(out.as_ptr().add(base)) as usize;
            out.set_len(base + written);
        }
    }
}

criterion_group! {
    name = cef_corpus_benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4)).warm_up_time(std::time::Duration::from_secs(1));
    targets = benches
}
criterion_main!(cef_corpus_benches);
