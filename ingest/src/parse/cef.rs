//! CEF (ArcSight Common Event Format): `CEF:Version|Vendor|Product|Version|SignatureID|Name|Severity|Extension`.
//!
//! Zero-copy: header fields and extension values borrow from the record unless they hold an
//! escape, in which case they are unescaped into an owned string. The tokenising rules and every
//! choice made where other parsers disagree are written down in `docs/cef.md`.
//!
//! **Forged fields.** A sender that does not escape `=` makes `msg=a src=1.1.1.1` ambiguous, and
//! attacker-controlled text (URLs, messages) could then add fields. The extension tokenizer
//! therefore splits a new field only at ` key=` when
//! 1. `key` is key-shaped (`[A-Za-z0-9_.,\[\]]+`), preceded by a space, and its `=` is not
//!    followed by another `=` (base64 padding, `a==b`), and
//! 2. `key` has not been seen before in this record, and
//! 3. no unescaped `=` that failed rules 1–2 has occurred earlier in the current value.
//!
//! An unescaped `=` that does not start a field proves the sender does not escape; from there on
//! no boundary can be trusted, so the current value runs to the end of the record. Nothing is
//! dropped: the text stays in that value.

use std::borrow::Cow;

use memchr::memchr;
use smallvec::SmallVec;

use crate::event::{Cef, Extension};
use crate::parse::bytescan::{
    Positions, backslash_mask16, cef_extension_events, cef_header_events,
};
use crate::parse::{LocalZone, ParseErrorKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CefError {
    #[error("CEF header has {0} of the 7 pipe-terminated fields")]
    IncompleteHeader(usize),
    #[error("record does not start with `CEF:<version>|`")]
    NotCef,
    #[error("CEF extension starts with text that is not `key=value`: {0:?}")]
    KeylessExtension(String),
}

impl CefError {
    pub fn kind(&self) -> ParseErrorKind {
        match self {
            CefError::IncompleteHeader(_) | CefError::NotCef => ParseErrorKind::CefHeader,
            CefError::KeylessExtension(_) => ParseErrorKind::CefExtension,
        }
    }
}

/// Byte offset of `CEF:<digits>|` in `body`, if any.
pub fn find_cef_start(body: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let mut from = 0;
    // `memchr` on the first byte: a searcher for the whole needle would be built per call,
    // and the record nearly always starts within a few bytes.
    while let Some(off) = memchr(b'C', &bytes[from..]) {
        let start = from + off;
        if !bytes[start..].starts_with(b"CEF:") {
            from = start + 1;
            continue;
        }
        let digits = bytes[start + 4..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits > 0 && bytes.get(start + 4 + digits) == Some(&b'|') {
            return Some(start);
        }
        from = start + 1;
    }
    None
}

/// Bytes that may appear in an extension key: `\w` plus `.`, `,`, `[`, `]` (ArcSight `ad.*`
/// keys such as `ad.name[1]` or `ad.Error_,Code`).
static KEY_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b',' | b'[' | b']');
        i += 1;
    }
    t
};

#[inline]
fn is_key_byte(b: u8) -> bool {
    KEY_BYTE[b as usize]
}

fn is_trailing_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// A byte range in the arena of unescaped text.
type ArenaRange = (u32, u32);

/// Runs `unescape` (appending to `arena`) and returns where its text went, and whether it
/// left a byte that JSON escapes (see [`unescape_with`]).
fn unescape_into(
    arena: &mut String,
    unescape: impl FnOnce(&mut String) -> bool,
) -> (ArenaRange, bool) {
    let start = arena.len();
    let json_dirty = unescape(arena);
    ((start as u32, arena.len() as u32), json_dirty)
}

/// Parses a record starting at `CEF:`; `prefix` is the text that preceded it (kept trimmed).
///
/// Fields that hold escapes are unescaped into `unescaped` (cleared first), a buffer the caller
/// keeps from record to record: unescaping allocates nothing once it has grown to the largest
/// record, and the parsed record needs no destructor.
pub fn parse<'a>(
    record: &'a str,
    prefix: &'a str,
    unescaped: &'a mut String,
) -> Result<Cef<'a>, CefError> {
    parse_with_storage(record, prefix, unescaped, Vec::new())
}

/// [`parse`], storing the extensions in `extensions` (emptied first): a worker hands back the
/// vector of the previous record (see [`crate::parse::Parser::recycle`]), so that parsing
/// allocates nothing and the record, a few words, moves cheaply.
pub fn parse_with_storage<'a>(
    record: &'a str,
    prefix: &'a str,
    unescaped: &'a mut String,
    mut extensions: Vec<Extension<'a>>,
) -> Result<Cef<'a>, CefError> {
    unescaped.clear();
    extensions.clear();
    // Room for a typical record's extensions at once, not a doubling series of them.
    extensions.reserve(32);
    let bytes = record.as_bytes();
    let mut end = bytes.len();
    while end > 0 && is_trailing_ws(bytes[end - 1]) {
        end -= 1;
    }
    let record = &record[..end];
    let bytes = record.as_bytes();
    if !bytes.starts_with(b"CEF:") {
        return Err(CefError::NotCef);
    }
    // The header's `|`, `\`, `"` and control bytes, visited in one pass over 64-byte blocks;
    // the version (digits only) ends at the first pipe whatever precedes it.
    let mut events = Positions::new(bytes, cef_header_events).skip_while(|&p| p < 4);
    let version_end = events
        .find(|&p| bytes[p] == b'|')
        .ok_or(CefError::IncompleteHeader(0))?;
    let version = &record[4..version_end];
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CefError::NotCef);
    }

    let mut fields: [&'a str; 6] = [""; 6];
    // The fields that held escapes: where their unescaped text is.
    let mut unescaped_fields: [Option<ArenaRange>; 6] = [None; 6];
    let mut header_json_clean = 0u8;
    let mut pos = version_end + 1;
    for n in 0..6 {
        let field =
            header_field_end(bytes, pos, &mut events).ok_or(CefError::IncompleteHeader(n + 1))?;
        let raw = &record[pos..field.end];
        let mut json_clean = field.json_clean;
        if field.escaped {
            let (range, json_dirty) = unescape_into(unescaped, |out| {
                unescape_with(raw, decode_header_escape, out)
            });
            unescaped_fields[n] = Some(range);
            json_clean &= !json_dirty;
        } else {
            fields[n] = raw;
        }
        header_json_clean |= u8::from(json_clean) << n;
        pos = field.end + 1;
    }
    let mut cef = Cef {
        prefix: prefix.trim(),
        version,
        device_vendor: fields[0],
        device_product: fields[1],
        device_version: fields[2],
        signature_id: fields[3],
        name: fields[4],
        severity: fields[5],
        header_json_clean,
        extensions,
    };
    // (extension index, range) of the values that held escapes.
    let mut unescaped_values = SmallVec::<[(u32, ArenaRange); 8]>::new();
    parse_extensions(
        &record[pos..],
        &mut cef.extensions,
        unescaped,
        &mut unescaped_values,
    )?;
    // The arena is complete: hand out the unescaped text.
    let arena: &'a str = unescaped.as_str();
    let text = |(start, end): ArenaRange| &arena[start as usize..end as usize];
    let fields = [
        &mut cef.device_vendor,
        &mut cef.device_product,
        &mut cef.device_version,
        &mut cef.signature_id,
        &mut cef.name,
        &mut cef.severity,
    ];
    for (field, range) in fields.into_iter().zip(unescaped_fields) {
        if let Some(range) = range {
            *field = text(range);
        }
    }
    for (index, range) in unescaped_values {
        cef.extensions[index as usize].value = text(range);
    }
    Ok(cef)
}

/// The header field that starts at `start` runs to the next unescaped `|`: returns the pipe's
/// offset, or `None` when no pipe terminates it. `events` yields the positions of the
/// [`cef_header_events`] from `start` on.
fn header_field_end(
    bytes: &[u8],
    start: usize,
    events: &mut impl Iterator<Item = usize>,
) -> Option<HeaderField> {
    // Events before `pos` are escaped by a backslash.
    let mut pos = start;
    let mut field = HeaderField {
        end: 0,
        escaped: false,
        json_clean: true,
    };
    for p in events {
        if p < pos {
            continue;
        }
        match bytes[p] {
            b'|' => {
                field.end = p;
                return Some(field);
            }
            b'\\' => {
                // Whether the unescaped text is JSON-clean is told by the unescaping.
                field.escaped = true;
                pos = p + 2;
            }
            _ => field.json_clean = false,
        }
    }
    None
}

/// Where a header field ends and what it holds.
struct HeaderField {
    /// Offset of its terminating pipe.
    end: usize,
    /// It holds a backslash, so its text is unescaped.
    escaped: bool,
    /// Its text holds no `"` or control byte (and, if not `escaped`, no byte JSON escapes).
    json_clean: bool,
}

/// Header escapes: `\|` → `|`, `\\` → `\`; any other backslash is kept verbatim.
fn decode_header_escape(c: u8) -> Option<char> {
    match c {
        b'|' => Some('|'),
        b'\\' => Some('\\'),
        _ => None,
    }
}

/// Extension value escapes: `\=` → `=`, `\\` → `\`, `\n` → LF, `\r` → CR; any other backslash
/// is kept verbatim.
fn decode_value_escape(c: u8) -> Option<char> {
    match c {
        b'=' => Some('='),
        b'\\' => Some('\\'),
        b'n' => Some('\n'),
        b'r' => Some('\r'),
        _ => None,
    }
}

/// Appends `raw` to `out` with its escapes decoded. Returns whether that left a backslash or
/// decoded a byte that JSON escapes (`\\`, `\n`): if not, and `raw` held no `"` or control
/// byte, the text needs no JSON escaping (`a\=b` → `a=b`, the common escape, is clean).
fn unescape_with(raw: &str, decode: impl Fn(u8) -> Option<char>, out: &mut String) -> bool {
    let bytes = raw.as_bytes();
    let n = bytes.len();
    out.reserve(n);
    let mut state = Unescape::default();
    // 16-byte masks (the last window overlapping the one before), not a `memchr` call per
    // backslash: values are short, and the calls' set-up cost more than the scan.
    if n >= 16 {
        let mut at = 0;
        while at < n {
            let window = at.min(n - 16);
            // Bytes before `at` were in the previous window.
            let mut hits = backslash_mask16(bytes, window) & (u32::MAX << (at - window));
            while hits != 0 {
                state.backslash_at(window + hits.trailing_zeros() as usize, raw, &decode, out);
                hits &= hits - 1;
            }
            at += 16;
        }
    } else {
        for (p, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'\\') {
            state.backslash_at(p, raw, &decode, out);
        }
    }
    state.finish(raw, out)
}

/// [`unescape_with`] for an extension value whose backslashes the tokeniser has already
/// visited: `escapes` holds their offsets in `raw`, in order, none of them the second byte of
/// an escape. The value is not scanned again: a long `msg` with one escape cost a 16-byte
/// window per 16 bytes.
fn unescape_at(
    raw: &str,
    escapes: &[u32],
    decode: impl Fn(u8) -> Option<char>,
    out: &mut String,
) -> bool {
    out.reserve(raw.len());
    let mut state = Unescape::default();
    for &p in escapes {
        debug_assert!(raw.as_bytes()[p as usize] == b'\\');
        state.backslash_at(p as usize, raw, &decode, out);
    }
    state.finish(raw, out)
}

/// Progress of [`unescape_with`] and [`unescape_at`] through their text.
#[derive(Default)]
struct Unescape {
    /// Text before this offset is in the output.
    copied: usize,
    /// A backslash before this offset was consumed by an escape.
    next: usize,
    /// A backslash was kept, or an escape decoded to a byte that JSON escapes.
    json_dirty: bool,
}

impl Unescape {
    /// Appends the text after the last escape; returns whether unescaping left a byte that
    /// JSON escapes.
    #[inline(always)]
    fn finish(self, raw: &str, out: &mut String) -> bool {
        out.push_str(&raw[self.copied..]);
        self.json_dirty
    }

    #[inline(always)]
    fn backslash_at(
        &mut self,
        p: usize,
        raw: &str,
        decode: &impl Fn(u8) -> Option<char>,
        out: &mut String,
    ) {
        if p < self.next {
            return;
        }
        // A backslash that escapes nothing is kept verbatim, in the run being copied.
        if let Some(ch) = raw.as_bytes().get(p + 1).and_then(|&c| decode(c)) {
            // Escapes are ASCII, so slicing at p and p + 2 stays on char boundaries.
            out.push_str(&raw[self.copied..p]);
            out.push(ch);
            self.json_dirty |= matches!(ch, '\\' | '"') || ch < ' ';
            self.copied = p + 2;
            self.next = p + 2;
        } else {
            self.json_dirty = true;
        }
    }
}

/// The value `raw` of extension number `index`: borrowed from the record, or unescaped into
/// the arena (and patched in by [`parse`] once the arena is complete). Also returns whether
/// unescaping left a byte that JSON escapes.
// Inlined: called once per extension, and the borrowed case is a two-word move.
#[inline(always)]
fn value_text<'a>(
    raw: &'a str,
    escapes: Escapes<'_>,
    index: usize,
    arena: &mut String,
    spans: &mut SmallVec<[(u32, ArenaRange); 8]>,
) -> (&'a str, bool) {
    let (range, json_dirty) = match escapes {
        Escapes::None => return (raw, false),
        Escapes::At(offsets) => unescape_into(arena, |out| {
            unescape_at(raw, offsets, decode_value_escape, out)
        }),
        Escapes::Unknown => {
            unescape_into(arena, |out| unescape_with(raw, decode_value_escape, out))
        }
    };
    spans.push((index as u32, range));
    ("", json_dirty)
}

/// Where the backslashes of a value are, as far as the tokeniser knows.
#[derive(Clone, Copy)]
enum Escapes<'e> {
    None,
    /// Their offsets in the value.
    At(&'e [u32]),
    /// Somewhere: the value must be scanned.
    Unknown,
}

impl<'e> Escapes<'e> {
    #[inline(always)]
    fn of(offsets: &'e [u32]) -> Self {
        if offsets.is_empty() {
            Escapes::None
        } else {
            Escapes::At(offsets)
        }
    }
}

/// Tokenises the extension (record text after the 7th pipe, trailing whitespace removed).
///
/// One pass over the bitmasks of `=`, `\`, `"` and control bytes visits each of them once; an
/// event inside an escape (`\=`, `\\`) is passed over.
fn parse_extensions<'a>(
    ext: &'a str,
    out: &mut Vec<Extension<'a>>,
    arena: &mut String,
    spans: &mut SmallVec<[(u32, ArenaRange); 8]>,
) -> Result<(), CefError> {
    let bytes = ext.as_bytes();
    let mut i = 0;
    while i < bytes.len() && bytes[i] == b' ' {
        i += 1;
    }
    if i == bytes.len() {
        return Ok(());
    }
    let key_end = i + bytes[i..].iter().take_while(|&&b| is_key_byte(b)).count();
    if key_end == i || bytes.get(key_end) != Some(&b'=') {
        let shown: String = ext[i..].chars().take(64).collect();
        return Err(CefError::KeylessExtension(shown));
    }
    let mut key = &ext[i..key_end];
    let mut tail_of_key = key_tail(key.as_bytes());
    let mut hash_of_key = hash_tail(tail_of_key, key.len());
    let mut value_start = key_end + 1;
    let mut seen = SeenKeys::default();
    seen.insert(key, hash_of_key, out);
    // Events before `pos` are the first key's `=` or the byte after a backslash.
    let mut pos = value_start;
    // Where the current value's backslashes are, from its start (each starts an escape or is
    // kept). Inline room for a long `msg` full of Windows paths; only more spills to the heap.
    let mut escapes = SmallVec::<[u32; 64]>::new();
    // A `"` or control byte seen in the current value.
    let mut needs_json_escape = false;
    for p in Positions::new(bytes, cef_extension_events) {
        if p < pos {
            continue;
        }
        match bytes[p] {
            b'=' => {}
            b'\\' => {
                escapes.push((p - value_start) as u32);
                pos = p + 2;
                continue;
            }
            _ => {
                needs_json_escape = true;
                continue;
            }
        }
        let s = key_start(bytes, value_start, p);
        let candidate = &ext[s..p];
        let (mut hash, mut tail) = (0, 0);
        let boundary = s < p
            && s > value_start
            && bytes[s - 1] == b' '
            && bytes.get(p + 1) != Some(&b'=')
            && {
                tail = if p >= 16 {
                    key_tail_window(window16(bytes, p), p - s)
                } else {
                    key_tail(candidate.as_bytes())
                };
                hash = hash_tail(tail, p - s);
                !seen.contains(candidate, hash, tail, key, out)
            };
        if !boundary {
            // A stray `=`: the sender does not escape, so the value runs to the end of the
            // record (see the module docs), past the backslashes visited so far.
            let value_escapes = if memchr(b'\\', &bytes[p..]).is_some() {
                Escapes::Unknown
            } else {
                Escapes::of(&escapes)
            };
            let (value, _) =
                value_text(&ext[value_start..], value_escapes, out.len(), arena, spans);
            out.push(Extension {
                key,
                value,
                // Not worth a scan of the rest: the writer escapes as usual.
                json_clean: false,
                key_hash: upper32(hash_of_key),
                key_tail: tail_of_key,
            });
            return Ok(());
        }
        let mut value_end = s - 1;
        while value_end > value_start && bytes[value_end - 1] == b' ' {
            value_end -= 1;
        }
        let (value, json_dirty) = value_text(
            &ext[value_start..value_end],
            Escapes::of(&escapes),
            out.len(),
            arena,
            spans,
        );
        out.push(Extension {
            key,
            value,
            json_clean: !needs_json_escape && !json_dirty,
            key_hash: upper32(hash_of_key),
            key_tail: tail_of_key,
        });
        key = candidate;
        hash_of_key = hash;
        tail_of_key = tail;
        seen.insert(key, hash, out);
        value_start = p + 1;
        pos = value_start;
        escapes.clear();
        needs_json_escape = false;
    }
    let (value, json_dirty) = value_text(
        &ext[value_start..],
        Escapes::of(&escapes),
        out.len(),
        arena,
        spans,
    );
    out.push(Extension {
        key,
        value,
        json_clean: !needs_json_escape && !json_dirty,
        key_hash: upper32(hash_of_key),
        key_tail: tail_of_key,
    });
    Ok(())
}

/// Start of the run of key bytes that ends at `end` (an `=`), not before `floor`.
#[inline(always)]
fn key_start(bytes: &[u8], floor: usize, end: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if end >= 16 {
        // The 16 bytes before the `=` hold nearly every key whole: the last non-key byte
        // among them bounds it (a key of 16 or more bytes takes the byte loop below).
        let non_key = !crate::parse::bytescan::key_byte_mask16(bytes, end - 16) & 0xffff;
        if non_key != 0 {
            let after_last_non_key = end - 16 + (32 - non_key.leading_zeros()) as usize;
            return after_last_non_key.max(floor);
        }
    }
    let mut s = end;
    while s > floor && is_key_byte(bytes[s - 1]) {
        s -= 1;
    }
    s
}

/// Keys already used in the record: the keys of the extensions tokenised so far plus the
/// current one, so nothing is stored twice. A 128-bit filter of key hashes answers "not seen"
/// for nearly every new key without a comparison; on a filter hit the stored 32-bit hashes
/// are compared before any key bytes. Past [`SEEN_LINEAR_MAX`] keys a hash set takes over, so
/// that a crafted message cannot make tokenising quadratic.
#[derive(Default)]
struct SeenKeys<'a> {
    /// One bit per hash value's top 7 bits, as two words (a `u128` shift cost a few percent of
    /// the whole parse).
    filter: [u64; 2],
    large: Option<std::collections::HashSet<&'a str>>,
}

/// The word of [`SeenKeys::filter`] and the bit in it for `hash`.
#[inline(always)]
fn filter_bit(hash: u64) -> (usize, u64) {
    ((hash >> 63) as usize, 1u64 << ((hash >> 57) & 63))
}

/// Keys searched linearly before [`SeenKeys`] switches to a hash set.
const SEEN_LINEAR_MAX: usize = 32;

impl<'a> SeenKeys<'a> {
    /// Records `key` (hash `hash`, see [`key_hash`]) as the current key; `done` holds the
    /// extensions before it.
    #[inline(always)]
    fn insert(&mut self, key: &'a str, hash: u64, done: &[Extension<'a>]) {
        let (word, bit) = filter_bit(hash);
        self.filter[word] |= bit;
        if done.len() >= SEEN_LINEAR_MAX {
            self.insert_large(key, done);
        }
    }

    /// Past [`SEEN_LINEAR_MAX`] keys: the set, built from `done` on first use.
    #[cold]
    fn insert_large(&mut self, key: &'a str, done: &[Extension<'a>]) {
        self.large
            .get_or_insert_with(|| done.iter().map(|e| e.key).collect())
            .insert(key);
    }

    /// Whether `key` (hash `hash`, tail `tail`) is the current key `current` or one of
    /// `done`'s.
    #[inline]
    fn contains(
        &self,
        key: &str,
        hash: u64,
        tail: u128,
        current: &str,
        done: &[Extension<'_>],
    ) -> bool {
        let (word, bit) = filter_bit(hash);
        if self.filter[word] & bit == 0 {
            return false;
        }
        match &self.large {
            Some(set) => set.contains(key),
            None => {
                let hash = upper32(hash);
                // Equal tails and lengths settle keys of up to 16 bytes (see `key_tail`).
                let same = |e: &Extension<'_>| {
                    e.key_hash == hash
                        && e.key_tail == tail
                        && e.key.len() == key.len()
                        && (key.len() <= 16 || e.key == key)
                };
                short_eq(current.as_bytes(), key.as_bytes()) || done.iter().any(same)
            }
        }
    }
}

/// Escapes text for a CEF header field (`\` and `|`). Inverse of the header unescaping.
pub fn escape_header_field(text: &str) -> Cow<'_, str> {
    if !text.bytes().any(|b| b == b'\\' || b == b'|') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == '\\' || c == '|' {
            out.push('\\');
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// Escapes text for a CEF extension value (`\`, `=`, LF as `\n`, CR as `\r`). Inverse of the
/// value unescaping; the result never contains an unescaped `=`, so it cannot start a field.
pub fn escape_extension_value(text: &str) -> Cow<'_, str> {
    if !text
        .bytes()
        .any(|b| matches!(b, b'\\' | b'=' | b'\n' | b'\r'))
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The kind of a CEF custom field (`cs3`, `cn1Label`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomKind {
    String,
    Number,
    FloatingPoint,
    Ipv6Address,
    FlexString,
    FlexNumber,
    DeviceCustomDate,
    FlexDate,
}

impl CustomKind {
    /// Indices the CEF spec (and CommonSecurityLog) defines for this kind.
    pub fn spec_range(self) -> std::ops::RangeInclusive<u8> {
        match self {
            CustomKind::String => 1..=6,
            CustomKind::Number => 1..=3,
            CustomKind::FloatingPoint | CustomKind::Ipv6Address => 1..=4,
            CustomKind::FlexString | CustomKind::FlexNumber | CustomKind::DeviceCustomDate => 1..=2,
            CustomKind::FlexDate => 1..=1,
        }
    }
}

/// A custom field key split into kind, index and whether it is the `…Label` half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomKey {
    pub kind: CustomKind,
    pub index: u8,
    pub label: bool,
}

impl CustomKey {
    pub fn in_spec(&self) -> bool {
        self.kind.spec_range().contains(&self.index)
    }
}

/// The key prefix of each kind of custom field, longest first where one is a prefix of another.
pub const CUSTOM_KEY_PREFIXES: [(&str, CustomKind); 8] = [
    ("deviceCustomDate", CustomKind::DeviceCustomDate),
    ("flexString", CustomKind::FlexString),
    ("flexNumber", CustomKind::FlexNumber),
    ("flexDate", CustomKind::FlexDate),
    ("c6a", CustomKind::Ipv6Address),
    ("cfp", CustomKind::FloatingPoint),
    ("cs", CustomKind::String),
    ("cn", CustomKind::Number),
];

impl CustomKey {
    /// The canonical spelling of this key (`cs1`, `cfp2Label`): what [`custom_key`] parses
    /// back to it, without leading zeros.
    pub fn key(&self) -> String {
        let prefix = CUSTOM_KEY_PREFIXES
            .iter()
            .find(|(_, kind)| *kind == self.kind)
            .map_or("", |(prefix, _)| prefix);
        let label = if self.label { "Label" } else { "" };
        format!("{prefix}{}{label}", self.index)
    }
}

/// Recognises `cs1`, `cs1Label`, `cn7`, `cfp15Label`, `flexString2`, `deviceCustomDate1`, …
pub fn custom_key(key: &str) -> Option<CustomKey> {
    let (base, label) = match key.strip_suffix("Label") {
        Some(b) => (b, true),
        None => (key, false),
    };
    // Most keys asked about are not custom at all (every non-column key of a CSL row is).
    if !base.as_bytes().last().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    for (prefix, kind) in CUSTOM_KEY_PREFIXES {
        if let Some(digits) = base.strip_prefix(prefix) {
            if digits.is_empty() || digits.len() > 2 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            let index: u8 = digits.parse().ok()?;
            return (index > 0).then_some(CustomKey { kind, index, label });
        }
    }
    None
}

/// Custom fields paired with their labels, in the order the values appear; the label may come
/// before or after the value. Values without a label yield `label: None`; labels without a value
/// are not returned.
pub fn custom_fields<'c>(
    cef: &'c Cef<'_>,
) -> impl Iterator<Item = (CustomKey, Option<&'c str>, &'c str)> + 'c {
    cef.extensions.iter().filter_map(move |e| {
        let ck = custom_key(e.key)?;
        if ck.label {
            return None;
        }
        let label = cef
            .extensions
            .iter()
            .find(|l| custom_key(l.key) == Some(CustomKey { label: true, ..ck }))
            .map(|l| l.value);
        Some((ck, label, e.value))
    })
}

/// The ArcSight full name of a CEF key (`src` → `sourceAddress`), for keys whose full name differs
/// from the key. Custom fields: use [`full_custom_name`].
pub fn full_name(key: &str) -> Option<&'static str> {
    FULL_NAMES
        .binary_search_by(|(k, _)| key_order(k, key))
        .ok()
        .map(|i| FULL_NAMES[i].1)
}

/// Every short key with its full name (see [`full_name`]).
pub fn full_names() -> &'static [(&'static str, &'static str)] {
    FULL_NAMES
}

/// Short key → full name, sorted by [`key_order`] for binary search.
static FULL_NAMES: &[(&str, &str)] = &[
    ("at", "agentType"),
    ("av", "agentVersion"),
    ("in", "bytesIn"),
    ("rt", "deviceReceiptTime"),
    ("act", "deviceAction"),
    ("agt", "agentAddress"),
    ("aid", "agentId"),
    ("app", "applicationProtocol"),
    ("art", "agentReceiptTime"),
    ("atz", "agentTimeZone"),
    ("cat", "deviceEventCategory"),
    ("cnt", "baseEventCount"),
    ("dpt", "destinationPort"),
    ("dst", "destinationAddress"),
    ("dtz", "deviceTimeZone"),
    ("dvc", "deviceAddress"),
    ("end", "endTime"),
    ("msg", "message"),
    ("out", "bytesOut"),
    ("spt", "sourcePort"),
    ("src", "sourceAddress"),
    ("amac", "agentMacAddress"),
    ("dlat", "destinationGeoLatitude"),
    ("dmac", "destinationMacAddress"),
    ("dpid", "destinationProcessId"),
    ("duid", "destinationUserId"),
    ("slat", "sourceGeoLatitude"),
    ("smac", "sourceMacAddress"),
    ("spid", "sourceProcessId"),
    ("suid", "sourceUserId"),
    ("ahost", "agentHostName"),
    ("dhost", "destinationHostName"),
    ("dlong", "destinationGeoLongitude"),
    ("dpriv", "destinationUserPrivileges"),
    ("dproc", "destinationProcessName"),
    ("duser", "destinationUserName"),
    ("fname", "fileName"),
    ("fsize", "fileSize"),
    ("proto", "transportProtocol"),
    ("shost", "sourceHostName"),
    ("slong", "sourceGeoLongitude"),
    ("spriv", "sourceUserPrivileges"),
    ("sproc", "sourceProcessName"),
    ("start", "startTime"),
    ("suser", "sourceUserName"),
    ("dntdom", "destinationNtDomain"),
    ("dvcmac", "deviceMacAddress"),
    ("dvcpid", "deviceProcessId"),
    ("sntdom", "sourceNtDomain"),
    ("dvchost", "deviceHostName"),
    ("outcome", "eventOutcome"),
    ("request", "requestUrl"),
];

/// Exact lookup of CEF keys in a fixed table, one hash and (almost always) one comparison per
/// lookup: mappers look up every extension key of every record. Built once; the first
/// occurrence of a repeated key wins.
pub struct KeyIndex<T> {
    /// Open addressing, linear probing, at most a quarter full. A slot holds everything a probe
    /// compares, so a lookup reads one slot and then its value: the table used to chain four
    /// dependent loads (slot, hash, entry, key bytes).
    slots: Box<[Slot]>,
    shift: u32,
    keys: Vec<Box<str>>,
    values: Vec<T>,
}

/// One slot of a [`KeyIndex`].
#[derive(Clone, Copy, Default)]
struct Slot {
    /// [`key_hash32`] of the key.
    hash: u32,
    /// Index into `keys` and `values` + 1; 0 marks an empty slot.
    entry: u16,
    len: u8,
    /// The key's [`key_tail`] as bytes (unaligned, so a slot stays 24 bytes); a key longer
    /// than [`Slot::INLINE`] bytes is also compared whole in `keys`.
    key: [u8; Slot::INLINE],
}

impl Slot {
    const INLINE: usize = 16;
}

impl<T> KeyIndex<T> {
    pub fn new(items: impl IntoIterator<Item = (impl Into<Box<str>>, T)>) -> Self {
        let mut keys: Vec<Box<str>> = Vec::new();
        let mut values = Vec::new();
        for (key, value) in items {
            let key = key.into();
            if !keys.contains(&key) {
                keys.push(key);
                values.push(value);
            }
        }
        assert!(
            keys.len() < usize::from(u16::MAX) / 4,
            "key table too large"
        );
        assert!(
            keys.iter().all(|k| k.len() <= usize::from(u8::MAX)),
            "key too long for the table"
        );
        let bits = (keys.len() * 4).next_power_of_two().trailing_zeros().max(4);
        let mut slots = vec![Slot::default(); 1 << bits].into_boxed_slice();
        let mask = slots.len() - 1;
        for (i, key) in keys.iter().enumerate() {
            let hash = key_hash32(key);
            let mut slot = (hash >> (32 - bits)) as usize;
            while slots[slot].entry != 0 {
                slot = (slot + 1) & mask;
            }
            slots[slot] = Slot {
                hash,
                entry: i as u16 + 1,
                len: key.len() as u8,
                key: key_tail(key.as_bytes()).to_le_bytes(),
            };
        }
        KeyIndex {
            slots,
            shift: 32 - bits,
            keys,
            values,
        }
    }

    #[inline]
    pub fn get(&self, key: &str) -> Option<&T> {
        let tail = key_tail(key.as_bytes());
        self.get_hashed(key, upper32(hash_tail(tail, key.len())), tail)
    }

    /// [`KeyIndex::get`] with the key's [`key_hash32`] and [`key_tail`] already known (the CEF
    /// tokenizer stores them in [`Extension::key_hash`] and [`Extension::key_tail`]).
    // Inlined: the row writers call it once per extension, and the call's set-up cost a
    // third of the lookup.
    #[inline(always)]
    pub fn get_hashed(&self, key: &str, hash: u32, tail: u128) -> Option<&T> {
        let mask = self.slots.len() - 1;
        let mut slot = (hash >> self.shift) as usize;
        loop {
            let s = &self.slots[slot];
            if s.entry == 0 {
                return None;
            }
            // One 128-bit compare instead of a length-dependent byte compare, whose branches
            // were mispredicted as key lengths changed from one extension to the next.
            if s.hash == hash
                && usize::from(s.len) == key.len()
                && u128::from_le_bytes(s.key) == tail
            {
                let entry = usize::from(s.entry - 1);
                let same = key.len() <= Slot::INLINE || *self.keys[entry] == *key;
                if same {
                    return Some(&self.values[entry]);
                }
            }
            slot = (slot + 1) & mask;
        }
    }
}

#[inline(always)]
fn load8(k: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(k[at..at + 8].try_into().expect("8 bytes"))
}

#[inline(always)]
fn load4(k: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(k[at..at + 4].try_into().expect("4 bytes"))
}

/// Hash of a key: its [`key_tail`] and its length. The tokenizer takes the tail from the
/// bytes it already has in front of each `=` ([`key_tail_window`]).
fn key_hash(k: &[u8]) -> u64 {
    hash_tail(key_tail(k), k.len())
}

/// A key's last (up to) 16 bytes as one little-endian integer, zero-padded in front: the key
/// sits in its high bytes. Equal keys of up to 16 bytes have equal tails and lengths and
/// nothing else does, so [`KeyIndex`] compares keys as one 128-bit integer.
#[inline]
pub fn key_tail(k: &[u8]) -> u128 {
    let n = k.len();
    let take = n.min(16);
    let mut window = [0u8; 16];
    window[16 - take..].copy_from_slice(&k[n - take..]);
    u128::from_le_bytes(window)
}

/// The 16 bytes of `bytes` that end at `end` (`end >= 16`) as one little-endian integer: a key
/// that ends at `end` sits in its high bytes.
#[inline(always)]
fn window16(bytes: &[u8], end: usize) -> u128 {
    u128::from_le_bytes(bytes[end - 16..end].try_into().expect("16 bytes"))
}

/// [`key_tail`] of the `len`-byte key at the end of `window`: the bytes before it masked off.
/// Branch-free: key lengths change from one extension to the next, and the old length-class
/// branches were mispredicted on real records.
#[inline(always)]
fn key_tail_window(window: u128, len: usize) -> u128 {
    let pad = (16usize.saturating_sub(len) * 8) as u32;
    window & u128::MAX.checked_shl(pad).unwrap_or(0)
}

/// The hash of a key from its [`key_tail`] and length.
#[inline(always)]
fn hash_tail(key: u128, len: usize) -> u64 {
    let (lo, hi) = (key as u64, (key >> 64) as u64);
    (hi.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ lo.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) ^ len as u64)
        .wrapping_mul(0xd6e8_feb8_6659_fd93)
}

/// The 32-bit key hash that [`KeyIndex`] and [`Extension::key_hash`] use.
#[inline]
pub fn key_hash32(key: &str) -> u32 {
    upper32(key_hash(key.as_bytes()))
}

/// The 32 bits of a [`key_hash`] kept by [`key_hash32`] (the better-mixed upper half).
#[inline(always)]
fn upper32(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// Byte equality for keys, inline for up to 16 bytes (overlapping fixed-size loads) instead of
/// a `bcmp` call per lookup.
#[inline]
fn short_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => load4(a, 0) == load4(b, 0) && load4(a, n - 4) == load4(b, n - 4),
        8..=16 => load8(a, 0) == load8(b, 0) && load8(a, n - 8) == load8(b, n - 8),
        _ => a == b,
    }
}

/// Order of the static key tables: by length, then by the first 8 bytes as one integer, then
/// bytewise. Most comparisons end on the length or the integer, without a `memcmp` call.
#[inline]
pub fn key_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn prefix(s: &[u8]) -> u64 {
        let mut buf = [0u8; 8];
        let n = s.len().min(8);
        buf[..n].copy_from_slice(&s[..n]);
        u64::from_be_bytes(buf)
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len()
        .cmp(&b.len())
        .then_with(|| prefix(a).cmp(&prefix(b)))
        .then_with(|| a.cmp(b))
}

/// Full name of a custom field key (`cs1Label` → `deviceCustomString1Label`, `cfp15` →
/// `deviceCustomFloatingPoint15`); flex/deviceCustomDate keys are already full names.
pub fn full_custom_name(ck: CustomKey) -> Option<String> {
    let base = match ck.kind {
        CustomKind::String => "deviceCustomString",
        CustomKind::Number => "deviceCustomNumber",
        CustomKind::FloatingPoint => "deviceCustomFloatingPoint",
        CustomKind::Ipv6Address => "deviceCustomIPv6Address",
        _ => return None,
    };
    Some(format!(
        "{base}{}{}",
        ck.index,
        if ck.label { "Label" } else { "" }
    ))
}

/// The value of 1 to 16 ASCII digits, else `None`.
#[inline]
fn epoch_digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 16 {
        return None;
    }
    let mut value = 0i64;
    let mut bad = 0u8;
    for &c in b {
        let digit = c.wrapping_sub(b'0');
        // No early exit: one test at the end instead of a branch per digit.
        bad |= u8::from(digit > 9);
        value = value * 10 + i64::from(digit);
    }
    (bad == 0).then_some(value)
}

/// Parses a CEF time value (`rt`, `start`, `end`, `deviceCustomDate*`) into Unix milliseconds.
///
/// Accepted: epoch milliseconds; `MMM dd yyyy HH:mm:ss[.SSS][ zone]`; RFC 3339. A zone is `Z`,
/// `UTC`, `GMT`, `±hh:mm`, `±hhmm` (at most 23:59) or an IANA name, as in the `timezone` config
/// key (`local` excepted: a sender cannot name this host's zone); without one, `dtz` (the record's device time
/// zone, same forms) applies, and without that, `source_zone` (the source's `timezone`).
pub fn parse_timestamp(text: &str, dtz: Option<&str>, source_zone: &LocalZone) -> Option<i64> {
    // Epoch milliseconds, as Darktrace and most senders write `rt`: no trimming or generic
    // integer parsing needed.
    if let Some(millis) = epoch_digits(text.as_bytes()) {
        return Some(millis);
    }
    let text = text.trim();
    if !text.is_empty() && text.len() <= 16 && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    if text.as_bytes().get(4) == Some(&b'-') {
        return chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_millis());
    }
    let mut parts = text.splitn(5, ' ');
    let month = month_number(parts.next()?)?;
    let day: u32 = parts.next()?.parse().ok()?;
    let year: i32 = parts.next()?.parse().ok()?;
    let clock = parts.next()?;
    fn named(zone: Option<&str>) -> Option<&str> {
        zone.map(str::trim).filter(|z| !z.is_empty())
    }
    let zone = named(parts.next()).or_else(|| named(dtz));
    let (hms, frac) = match clock.split_once('.') {
        Some((hms, frac)) => (hms, frac),
        None => (clock, ""),
    };
    let mut hms_parts = hms.splitn(3, ':');
    let hour: u32 = hms_parts.next()?.parse().ok()?;
    let minute: u32 = hms_parts.next()?.parse().ok()?;
    let second: u32 = hms_parts.next()?.parse().ok()?;
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let millis: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<3}")[..3].parse().ok()?
    };
    let civil =
        chrono::NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(hour, minute, second)?;
    let local_secs = civil.and_utc().timestamp();
    let utc_secs = match zone {
        Some(z) => LocalZone::parse_written(z)?.utc_from_local(local_secs)?,
        None => source_zone.utc_from_local(local_secs)?,
    };
    Some(utc_secs * 1000 + millis)
}

fn month_number(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let lower = name.get(..3)?.to_ascii_lowercase();
    MONTHS
        .iter()
        .position(|m| *m == lower)
        .map(|i| i as u32 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext<'a>(c: &'a Cef<'_>) -> Vec<(&'a str, &'a str)> {
        c.extensions.iter().map(|e| (e.key, e.value)).collect()
    }

    #[test]
    fn finds_start_only_before_version_and_pipe() {
        assert_eq!(find_cef_start("x CEF: no CEF:12|a"), Some(10));
        assert_eq!(find_cef_start("CEF:x|CEF:|"), None);
        assert_eq!(find_cef_start("<13>host CEF:0|"), Some(9));
    }

    #[test]
    fn header_values_borrow_unless_escaped() {
        let record = r"CEF:0|Dark\|trace|DCIP|6.1|537|a\\b|Low| src=1.2.3.4 msg=x\=y";
        let mut scratch = String::new();
        let c = parse(record, "", &mut scratch).unwrap();
        let within = |text: &str, whole: &str| {
            let range = whole.as_bytes().as_ptr_range();
            range.contains(&text.as_ptr()) || text.as_ptr() == range.end
        };
        assert_eq!(c.device_vendor, "Dark|trace");
        assert!(!within(c.device_vendor, record));
        assert!(within(c.device_product, record));
        assert_eq!(c.name, r"a\b");
        assert!(!within(c.name, record));
        assert_eq!(c.severity, "Low");
        assert!(within(c.extensions[0].value, record));
        assert_eq!(c.extensions[1].value, "x=y");
        assert!(!within(c.extensions[1].value, record));
    }

    #[test]
    fn incomplete_header_counts_fields() {
        let mut scratch = String::new();
        assert_eq!(
            parse("CEF:0|a|b|c|", "", &mut scratch).unwrap_err(),
            CefError::IncompleteHeader(4)
        );
        assert_eq!(
            parse("CEF:x|a|b|c|d|e|f|", "", &mut scratch).unwrap_err(),
            CefError::NotCef
        );
    }

    #[test]
    fn forged_field_via_unescaped_query_is_swallowed() {
        let mut scratch = String::new();
        let c = parse(
            "CEF:0|v|p|1|id|n|5|request=https://x/?a=1 src=6.6.6.6",
            "",
            &mut scratch,
        )
        .unwrap();
        assert_eq!(ext(&c), vec![("request", "https://x/?a=1 src=6.6.6.6")]);
        assert_eq!(c.get("src"), None);
    }

    #[test]
    fn repeated_key_is_not_a_boundary() {
        let mut scratch = String::new();
        let c = parse(
            "CEF:0|v|p|1|id|n|5|src=1.1.1.1 msg=hi src=6.6.6.6 dst=2.2.2.2",
            "",
            &mut scratch,
        )
        .unwrap();
        assert_eq!(
            ext(&c),
            vec![("src", "1.1.1.1"), ("msg", "hi src=6.6.6.6 dst=2.2.2.2")]
        );
    }

    #[test]
    fn long_keys_with_the_same_last_16_bytes_are_different_keys() {
        let mut scratch = String::new();
        let c = parse(
            "CEF:0|v|p|1|id|n|5|ad.Xbcdefghijklmnopq=1 ad.abcdefghijklmnopq=2 \
             ad.abcdefghijklmnopq=3",
            "",
            &mut scratch,
        )
        .unwrap();
        assert_eq!(
            ext(&c),
            vec![
                ("ad.Xbcdefghijklmnopq", "1"),
                ("ad.abcdefghijklmnopq", "2 ad.abcdefghijklmnopq=3")
            ]
        );
    }

    #[test]
    fn escaped_injection_stays_in_value() {
        let mut scratch = String::new();
        let text = "https://x/?a=1 src=6.6.6.6\nline2 \\ end";
        let rec = format!(
            "CEF:0|v|p|1|id|n|5|request={} dst=2.2.2.2",
            escape_extension_value(text)
        );
        let c = parse(&rec, "", &mut scratch).unwrap();
        assert_eq!(ext(&c), vec![("request", text), ("dst", "2.2.2.2")]);
    }

    /// [`key_start`]'s 16-byte window against the byte loop it shortcuts, for keys around the
    /// window's length, every floor, and non-key bytes of each kind just before the key.
    #[test]
    fn key_start_matches_the_byte_loop() {
        let reference = |bytes: &[u8], floor: usize, end: usize| {
            let mut s = end;
            while s > floor && is_key_byte(bytes[s - 1]) {
                s -= 1;
            }
            s
        };
        for before in [b' ', b'=', b'\\', b'/', 0xc3, b'-', b'a'] {
            for key_len in 0..40 {
                let mut text = vec![b'v'; 20];
                text.push(before);
                text.extend((0..key_len).map(|k| b"aZ09_.,[]"[k % 9]));
                let end = text.len();
                text.push(b'=');
                for floor in 0..=end {
                    assert_eq!(
                        key_start(&text, floor, end),
                        reference(&text, floor, end),
                        "byte {before:#04x}, key of {key_len}, floor {floor}"
                    );
                }
            }
        }
    }

    /// Header fields, then (key, value) pairs, both unescaped.
    type Tokens = Result<(Vec<String>, Vec<(String, String)>), CefError>;

    /// The tokenising rules of the module docs, one byte at a time: the oracle the parser is
    /// checked against.
    fn reference_parse(record: &str) -> Tokens {
        let record = record.trim_end_matches([' ', '\t', '\r', '\n']);
        let b = record.as_bytes();
        let unescape = |raw: &str, decode: fn(u8) -> Option<char>| {
            let mut out = String::new();
            let mut chars = raw.chars().peekable();
            while let Some(c) = chars.next() {
                let decoded = match (c, chars.peek()) {
                    ('\\', Some(&next)) if next.is_ascii() => decode(next as u8),
                    _ => None,
                };
                match decoded {
                    Some(d) => {
                        out.push(d);
                        chars.next();
                    }
                    None => out.push(c),
                }
            }
            out
        };
        let version_end = 4 + b[4..]
            .iter()
            .position(|&c| c == b'|')
            .ok_or(CefError::IncompleteHeader(0))?;
        let version = &b[4..version_end];
        if !b.starts_with(b"CEF:") || version.is_empty() || !version.iter().all(u8::is_ascii_digit)
        {
            return Err(CefError::NotCef);
        }
        let mut header = Vec::new();
        let mut pos = version_end + 1;
        for n in 0..6 {
            let mut p = pos;
            loop {
                match b.get(p) {
                    None => return Err(CefError::IncompleteHeader(n + 1)),
                    Some(b'\\') => p += 2,
                    Some(b'|') => break,
                    Some(_) => p += 1,
                }
            }
            header.push(unescape(&record[pos..p], decode_header_escape));
            pos = p + 1;
        }
        let ext = &record[pos..];
        let e = ext.as_bytes();
        let mut pairs = Vec::new();
        let mut i = e.iter().take_while(|&&c| c == b' ').count();
        if i == e.len() {
            return Ok((header, pairs));
        }
        let key_end = i + e[i..].iter().take_while(|&&c| is_key_byte(c)).count();
        if key_end == i || e.get(key_end) != Some(&b'=') {
            return Err(CefError::KeylessExtension(
                ext[i..].chars().take(64).collect(),
            ));
        }
        let mut key = &ext[i..key_end];
        let mut seen = vec![key];
        let mut value_start = key_end + 1;
        i = value_start;
        while i < e.len() {
            match e[i] {
                b'\\' => {
                    i += 2;
                    continue;
                }
                b'=' => {
                    let mut s = i;
                    while s > value_start && is_key_byte(e[s - 1]) {
                        s -= 1;
                    }
                    let boundary = s < i
                        && s > value_start
                        && e[s - 1] == b' '
                        && e.get(i + 1) != Some(&b'=')
                        && !seen.contains(&&ext[s..i]);
                    if !boundary {
                        pairs.push((
                            key.to_string(),
                            unescape(&ext[value_start..], decode_value_escape),
                        ));
                        return Ok((header, pairs));
                    }
                    let value = ext[value_start..s - 1].trim_end_matches(' ');
                    pairs.push((key.to_string(), unescape(value, decode_value_escape)));
                    key = &ext[s..i];
                    seen.push(key);
                    value_start = i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        pairs.push((
            key.to_string(),
            unescape(&ext[value_start..], decode_value_escape),
        ));
        Ok((header, pairs))
    }

    fn block_parse(record: &str) -> Tokens {
        let mut scratch = String::new();
        let c = parse(record, "", &mut scratch)?;
        Ok((
            c.header_fields().iter().map(|f| f.to_string()).collect(),
            c.extensions
                .iter()
                .map(|e| (e.key.to_string(), e.value.to_string()))
                .collect(),
        ))
    }

    #[test]
    fn header_fields_without_json_specials_are_marked_clean() {
        let mut scratch = String::new();
        let c = parse(
            "CEF:0|Dark\\\\trace|DCIP|6.0|1|Name \"q\"|Hi\tgh|a=1",
            "",
            &mut scratch,
        )
        .unwrap();
        assert_eq!(c.device_vendor, "Dark\\trace");
        assert_eq!(
            c.header_json_clean,
            Cef::PRODUCT_CLEAN | Cef::VERSION_CLEAN | Cef::SIGNATURE_ID_CLEAN
        );
        let c = parse("CEF:0|a\\|b|p|1|s|n|5|", "", &mut scratch).unwrap();
        assert_eq!(c.device_vendor, "a|b");
        assert_eq!(
            c.header_json_clean, 0b11_1111,
            "`\\|` unescapes to a clean `|`"
        );
        let c = parse("CEF:0|a\\x|p|1|s|n|5|", "", &mut scratch).unwrap();
        assert_eq!(c.device_vendor, "a\\x");
        assert_eq!(
            c.header_json_clean, 0b11_1110,
            "a kept backslash is not clean"
        );
    }

    #[test]
    fn tokenizer_matches_the_byte_loop_on_hand_picked_records() {
        for record in [
            "CEF:0|a\\|b|p\\\\|1|s|n|5|k=v",
            "CEF:0|a|p|1|s|n|5|",
            "CEF:0|a|p|1|s|n|5|k=v\\",
            "CEF:0|a|p|1|s|n|5|k=v\\\\ j=w",
            "CEF:0|a|p|1|s|n|5|k=v\\ j=w",
            "CEF:0|a|p|1|s|n|5|k=a\\=b c=d= e=f",
            // A stray `=` with escapes before it only, and on both sides of it.
            "CEF:0|a|p|1|s|n|5|k=a\\\\b\\x c=d= e=f",
            "CEF:0|a|p|1|s|n|5|k=a\\\\b c=d= e=f\\=g\\n",
            // Escapes in a value longer than one 16-byte window, and a kept one at its end.
            "CEF:0|a|p|1|s|n|5|msg=C:\\\\Windows\\\\Temp line one\\nline two url\\=x\\ k=v\\",
            "CEF:1\\|a|p|1|s|n|5|k=v",
            "CEF:0|a|p|1\\",
        ] {
            assert_eq!(block_parse(record), reference_parse(record), "{record:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn tokenizer_matches_the_byte_loop(
            header in "([a-z\"\t]|\\\\\\||\\\\\\\\|\\\\){0,12}",
            ext in "(?s)( {0,2}[a-c.\\[]{0,3}=[a-z \"\\\\=|\t\n\u{1}é]{0,60}){0,12}",
            pad in 0usize..70,
        ) {
            // `pad` shifts the extension across the 64-byte block boundaries.
            let record = format!("CEF:0|{header}|{}|1|s|n|5|{ext}", "x".repeat(pad));
            proptest::prop_assert_eq!(block_parse(&record), reference_parse(&record), "{:?}", record);
            let mut scratch = String::new();
            if let Ok(c) = parse(&record, "", &mut scratch) {
                for (n, field) in c.header_fields().iter().enumerate() {
                    let needs_escape = field.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
                    proptest::prop_assert!(
                        !(needs_escape && c.header_json_clean & (1 << n) != 0),
                        "field {} {:?} marked clean", n, field
                    );
                }
            }
        }

        /// A value marked JSON-clean has no byte that JSON escapes, wherever quotes, escapes,
        /// control bytes and stray `=` fall relative to the 64-byte blocks; every stored key
        /// hash is the key's.
        #[test]
        fn json_clean_values_need_no_escaping(
            ext in "(?s)([a-c]{1,3}=[a-z \"\\\\=\t\n\u{1}é]{0,40} ){1,12}"
        ) {
            let record = format!("CEF:0|v|p|1|s|n|5|{ext}");
            let mut scratch = String::new();
            if let Ok(cef) = parse(&record, "", &mut scratch) {
                for e in &cef.extensions {
                    proptest::prop_assert_eq!(e.key_hash, key_hash32(e.key));
                    proptest::prop_assert_eq!(e.key_tail, key_tail(e.key.as_bytes()));
                    if e.json_clean {
                        proptest::prop_assert!(
                            !e.value.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\'),
                            "{:?}", e
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn values_without_escapes_are_json_clean() {
        let mut scratch = String::new();
        let cef = parse(
            r#"CEF:0|v|p|1|s|n|5|a=plain b=with "quote" c=back\\slash d=x e=1\=2 f=a\nb g=a\x"#,
            "",
            &mut scratch,
        )
        .unwrap();
        let clean: Vec<bool> = cef.extensions.iter().map(|e| e.json_clean).collect();
        // `\=` decodes to a clean `=`; `\\`, `\n` and a kept backslash are not clean.
        assert_eq!(clean, [true, false, false, true, true, false, false]);
    }

    #[test]
    fn keyless_extension_is_an_error() {
        let mut scratch = String::new();
        let e = parse("CEF:0|v|p|1|id|n|5|just words", "", &mut scratch).unwrap_err();
        assert_eq!(e.kind(), ParseErrorKind::CefExtension);
    }

    #[test]
    fn many_keys_use_the_hash_set_and_still_detect_repeats() {
        let mut scratch = String::new();
        let mut rec = String::from("CEF:0|v|p|1|id|n|5|");
        for i in 0..100 {
            rec.push_str(&format!("k{i}=v{i} "));
        }
        rec.push_str("k3=forged");
        let c = parse(&rec, "", &mut scratch).unwrap();
        assert_eq!(c.extensions.len(), 100);
        assert_eq!(c.get("k99"), Some("v99 k3=forged"));
        assert_eq!(c.get("k3"), Some("v3"));
    }

    #[test]
    fn canonical_custom_keys_parse_back() {
        for (_, kind) in CUSTOM_KEY_PREFIXES {
            for index in 1..=99 {
                for label in [false, true] {
                    let ck = CustomKey { kind, index, label };
                    assert_eq!(custom_key(&ck.key()), Some(ck), "{}", ck.key());
                }
            }
        }
        assert_eq!(
            custom_key("cs01").map(|ck| ck.key()).as_deref(),
            Some("cs1")
        );
    }

    #[test]
    fn window_hash_equals_key_hash_whatever_precedes_the_key() {
        let keys = [
            "a",
            "rt",
            "dvc",
            "cs1",
            "dhost",
            "cn1Label",
            "externalId",
            "deviceCustomDate1Label",
            "destinationTranslatedAddress",
            "0123456789abcdef",
            "0123456789abcdefg",
            "ad.x[1]",
        ];
        for key in keys {
            for prefix in [
                "",
                " ",
                "x=1 ",
                "garbage=\\= with spaces ",
                "0123456789abcdefXYZ ",
            ] {
                let text = format!("{prefix}{key}");
                let end = text.len();
                if end < 16 {
                    continue;
                }
                let tail = key_tail_window(window16(text.as_bytes(), end), key.len());
                assert_eq!(tail, key_tail(key.as_bytes()), "{text:?}");
                assert_eq!(
                    hash_tail(tail, key.len()),
                    key_hash(key.as_bytes()),
                    "{text:?}"
                );
            }
        }
        // Keys that share their last 16 bytes differ by length.
        assert_ne!(
            key_hash(b"x0123456789abcdef"),
            key_hash(b"0123456789abcdef")
        );
    }

    #[test]
    fn short_eq_matches_slice_equality() {
        let keys: Vec<Vec<u8>> = (0..=20usize)
            .map(|n| (0..n).map(|i| b'a' + (i % 26) as u8).collect())
            .collect();
        for a in &keys {
            assert!(short_eq(a, a));
            for pos in 0..a.len() {
                let mut b = a.clone();
                b[pos] ^= 0x20;
                assert!(!short_eq(a, &b), "{a:?} vs {b:?}");
            }
            for b in &keys {
                assert_eq!(short_eq(a, b), a == b);
            }
        }
    }

    #[test]
    fn key_index_finds_every_key_and_no_other() {
        let keys: Vec<String> = (0..200)
            .map(|i| format!("k{i}"))
            .chain(
                [
                    "",
                    "a",
                    "ab",
                    "abc",
                    "abcd",
                    "deviceCustomString1Label",
                    "abcdefghijklmnop",
                    "abcdefghijklmnopq",
                ]
                .map(String::from),
            )
            .collect();
        let index = KeyIndex::new(keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)));
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(index.get(k), Some(&i), "{k}");
            assert_eq!(index.get(&format!("{k}x")), None);
            assert_eq!(index.get(&format!("x{k}")), None);
        }
        // Same length and same last 16 bytes (so the same tail and hash): told apart by the
        // whole-key compare.
        assert_eq!(index.get("Xbcdefghijklmnopq"), None);
        let long = KeyIndex::new([("abcdefghijklmnopq", 1), ("Xbcdefghijklmnopq", 2)]);
        assert_eq!(long.get("abcdefghijklmnopq"), Some(&1));
        assert_eq!(long.get("Xbcdefghijklmnopq"), Some(&2));
        assert_eq!(long.get("Ybcdefghijklmnopq"), None);
    }

    #[test]
    fn full_names_are_sorted() {
        assert!(
            FULL_NAMES
                .windows(2)
                .all(|w| crate::parse::cef::key_order(w[0].0, w[1].0).is_lt())
        );
        assert_eq!(full_name("src"), Some("sourceAddress"));
        assert_eq!(full_name("suser"), Some("sourceUserName"));
        assert_eq!(full_name("darktraceUrl"), None);
    }

    #[test]
    fn timestamps() {
        const UTC: LocalZone = LocalZone::Fixed(0);
        assert_eq!(
            parse_timestamp("1543270652000", None, &UTC),
            Some(1_543_270_652_000)
        );
        // logstash dtz_rt_zoneless: zone-less rt, dtz supplies Europe/Moscow (UTC+3).
        assert_eq!(
            parse_timestamp("Jul 19 2017 10:50:21.127", Some("Europe/Moscow"), &UTC),
            Some(1_500_450_621_127)
        );
        assert_eq!(
            parse_timestamp("Sep 07 2018 14:50:39", None, &UTC),
            Some(1_536_331_839_000)
        );
        assert_eq!(
            parse_timestamp("Sep 07 2018 14:50:39 +02:00", Some("UTC"), &UTC),
            Some(1_536_324_639_000)
        );
        assert_eq!(
            parse_timestamp("2025-06-29T23:35:00Z", None, &UTC),
            Some(1_751_240_100_000)
        );
        assert_eq!(parse_timestamp("Foo 07 2018 14:50:39", None, &UTC), None);
        assert_eq!(
            parse_timestamp("Sep 07 2018 14:50:39", Some("Nowhere/Land"), &UTC),
            None
        );
        // Neither the value nor `dtz` names a zone: the source's applies, and only then.
        let paris = LocalZone::parse("Europe/Paris").unwrap();
        assert_eq!(
            parse_timestamp("Sep 07 2018 14:50:39", None, &paris),
            Some(1_536_331_839_000 - 7_200_000)
        );
        assert_eq!(
            parse_timestamp("Jan 07 2018 14:50:39.5", None, &paris),
            Some(1_515_336_639_500 - 3_600_000)
        );
        assert_eq!(
            parse_timestamp("Jul 19 2017 10:50:21.127", Some("Europe/Moscow"), &paris),
            Some(1_500_450_621_127)
        );
        assert_eq!(
            parse_timestamp("Sep 07 2018 14:50:39 +00:00", None, &paris),
            Some(1_536_331_839_000)
        );
        assert_eq!(
            parse_timestamp("1543270652000", None, &paris),
            Some(1_543_270_652_000)
        );
        // A trailing space is no zone: `dtz` still applies, and an empty `dtz` is none.
        assert_eq!(
            parse_timestamp("Jul 19 2017 10:50:21.127 ", Some("Europe/Moscow"), &paris),
            Some(1_500_450_621_127)
        );
        assert_eq!(
            parse_timestamp("Sep 07 2018 14:50:39", Some(" "), &UTC),
            Some(1_536_331_839_000)
        );
    }

    #[test]
    fn written_zones_are_read_as_the_timezone_key_reads_them() {
        const UTC: LocalZone = LocalZone::Fixed(0);
        let at = |zone: &str| parse_timestamp(&format!("Sep 07 2018 14:50:39 {zone}"), None, &UTC);
        let base = 1_536_331_839_000;
        assert_eq!(at("-0530"), Some(base + 19_800_000));
        assert_eq!(at("+23:59"), Some(base - 86_340_000));
        assert_eq!(at("Etc/UTC"), Some(base));
        assert_eq!(at("GMT"), Some(base));
        // Not offsets: an hour or minute out of range, colons elsewhere, a short form.
        for zone in [
            "+99:99",
            "+24:00",
            "+02:60",
            "+0:200",
            "+2:00",
            "+020",
            "+02:00:00",
        ] {
            assert_eq!(at(zone), None, "{zone}");
        }
        // `local` is this host's zone: the config's to choose, never a record's.
        assert_eq!(at("local"), None);
        assert_eq!(
            parse_timestamp("Sep 07 2018 14:50:39", Some("local"), &UTC),
            None
        );
        // DST at the date, not today: Paris is +02:00 in September, +01:00 in January.
        assert_eq!(at("Europe/Paris"), Some(base - 7_200_000));
        assert_eq!(
            parse_timestamp("Jan 07 2018 14:50:39 Europe/Paris", None, &UTC),
            Some(1_515_336_639_000 - 3_600_000)
        );
    }

    #[test]
    fn custom_keys_and_pairs() {
        let mut scratch = String::new();
        assert_eq!(
            custom_key("cfp15Label"),
            Some(CustomKey {
                kind: CustomKind::FloatingPoint,
                index: 15,
                label: true
            })
        );
        assert_eq!(custom_key("cs"), None);
        assert_eq!(custom_key("csx1"), None);
        assert_eq!(custom_key("cnt"), None);
        let c = parse(
            "CEF:0|v|p|1|id|n|5|cn1=12 cs2Label=L2 cs2=v2 cfp1=1.5 cn1Label=Count",
            "",
            &mut scratch,
        )
        .unwrap();
        let pairs: Vec<_> = custom_fields(&c).map(|(k, l, v)| (k.index, l, v)).collect();
        assert_eq!(
            pairs,
            vec![
                (1, Some("Count"), "12"),
                (2, Some("L2"), "v2"),
                (1, None, "1.5")
            ]
        );
    }
}
