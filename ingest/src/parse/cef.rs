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

use memchr::{memchr, memchr2};
use smallvec::SmallVec;

use crate::event::{Cef, Extension};
use crate::parse::ParseErrorKind;
use crate::parse::bytescan::{Positions, cef_extension_events};

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

/// Parses a record starting at `CEF:`; `prefix` is the text that preceded it (kept trimmed).
pub fn parse<'a>(record: &'a str, prefix: &'a str) -> Result<Cef<'a>, CefError> {
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
    let version_end = memchr(b'|', &bytes[4..])
        .map(|i| i + 4)
        .ok_or(CefError::IncompleteHeader(0))?;
    let version = &record[4..version_end];
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CefError::NotCef);
    }

    let mut fields: [Cow<'a, str>; 6] = Default::default();
    let mut pos = version_end + 1;
    for (n, field) in fields.iter_mut().enumerate() {
        let (value, next) = header_field(record, pos).ok_or(CefError::IncompleteHeader(n + 1))?;
        *field = value;
        pos = next;
    }
    let [
        device_vendor,
        device_product,
        device_version,
        signature_id,
        name,
        severity,
    ] = fields;
    // Tokenised straight into the record's own vector: the inline storage is ~1 KB, and
    // building it elsewhere would copy it on every record.
    let mut cef = Cef {
        prefix: prefix.trim(),
        version,
        device_vendor,
        device_product,
        device_version,
        signature_id,
        name,
        severity,
        extensions: SmallVec::new(),
    };
    parse_extensions(&record[pos..], &mut cef.extensions)?;
    Ok(cef)
}

/// One header field from `start` to the next unescaped `|`; returns it and the offset after the
/// pipe, or `None` when no pipe terminates it.
fn header_field(record: &str, start: usize) -> Option<(Cow<'_, str>, usize)> {
    let bytes = record.as_bytes();
    let mut pos = start;
    let mut escaped = false;
    loop {
        let off = memchr2(b'|', b'\\', &bytes[pos..])?;
        let p = pos + off;
        if bytes[p] == b'|' {
            let raw = &record[start..p];
            let value = if escaped {
                Cow::Owned(unescape_header(raw))
            } else {
                Cow::Borrowed(raw)
            };
            return Some((value, p + 1));
        }
        escaped = true;
        pos = (p + 2).min(bytes.len());
    }
}

/// `\|` → `|`, `\\` → `\`; any other backslash is kept verbatim.
fn unescape_header(raw: &str) -> String {
    unescape_with(raw, |c| match c {
        b'|' => Some('|'),
        b'\\' => Some('\\'),
        _ => None,
    })
}

/// `\=` → `=`, `\\` → `\`, `\n` → LF, `\r` → CR; any other backslash is kept verbatim.
fn unescape_value(raw: &str) -> String {
    unescape_with(raw, |c| match c {
        b'=' => Some('='),
        b'\\' => Some('\\'),
        b'n' => Some('\n'),
        b'r' => Some('\r'),
        _ => None,
    })
}

fn unescape_with(raw: &str, decode: impl Fn(u8) -> Option<char>) -> String {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut start = 0;
    while let Some(off) = memchr(b'\\', &bytes[start..]) {
        let p = start + off;
        // Escapes are ASCII, so slicing at p and p + 2 stays on char boundaries.
        match bytes.get(p + 1).and_then(|&c| decode(c)) {
            Some(ch) => {
                out.push_str(&raw[start..p]);
                out.push(ch);
                start = p + 2;
            }
            None => {
                out.push_str(&raw[start..p + 1]);
                start = p + 1;
            }
        }
    }
    out.push_str(&raw[start..]);
    out
}

// Inlined: called once per extension, and the borrowed case is a two-word move.
#[inline(always)]
fn value_cow(raw: &str, has_backslash: bool) -> Cow<'_, str> {
    if has_backslash {
        Cow::Owned(unescape_value(raw))
    } else {
        Cow::Borrowed(raw)
    }
}

/// Tokenises the extension (record text after the 7th pipe, trailing whitespace removed).
///
/// One pass over the bitmasks of `=`, `\`, `"` and control bytes visits each of them once; an
/// event inside an escape (`\=`, `\\`) is passed over.
fn parse_extensions<'a>(
    ext: &'a str,
    out: &mut SmallVec<[Extension<'a>; 24]>,
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
    let mut hash_of_key = key_hash(key.as_bytes());
    let mut value_start = key_end + 1;
    let mut seen = SeenKeys::default();
    seen.insert(key, hash_of_key);
    // Events before `pos` are the first key's `=` or the byte after a backslash.
    let mut pos = value_start;
    let mut has_backslash = false;
    // A `"` or control byte seen in the current value.
    let mut needs_json_escape = false;
    for p in Positions::new(bytes, cef_extension_events) {
        if p < pos {
            continue;
        }
        match bytes[p] {
            b'=' => {}
            b'\\' => {
                has_backslash = true;
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
        let mut hash = 0;
        let boundary = s < p
            && s > value_start
            && bytes[s - 1] == b' '
            && bytes.get(p + 1) != Some(&b'=')
            && {
                hash = key_hash(candidate.as_bytes());
                !seen.contains(candidate, hash)
            };
        if !boundary {
            // A stray `=`: the sender does not escape, so the value runs to the end of the
            // record (see the module docs).
            let has_backslash = has_backslash || memchr(b'\\', &bytes[p..]).is_some();
            out.push(Extension {
                key,
                value: value_cow(&ext[value_start..], has_backslash),
                // Not worth a scan of the rest: the writer escapes as usual.
                json_clean: false,
                key_hash: upper32(hash_of_key),
            });
            return Ok(());
        }
        let mut value_end = s - 1;
        while value_end > value_start && bytes[value_end - 1] == b' ' {
            value_end -= 1;
        }
        out.push(Extension {
            key,
            value: value_cow(&ext[value_start..value_end], has_backslash),
            // An unescaped value may hold a decoded line break.
            json_clean: !has_backslash && !needs_json_escape,
            key_hash: upper32(hash_of_key),
        });
        key = candidate;
        hash_of_key = hash;
        seen.insert(key, hash);
        value_start = p + 1;
        pos = value_start;
        has_backslash = false;
        needs_json_escape = false;
    }
    out.push(Extension {
        key,
        value: value_cow(&ext[value_start..], has_backslash),
        json_clean: !has_backslash && !needs_json_escape,
        key_hash: upper32(hash_of_key),
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

/// Keys already used in the record. Linear search for typical records; a hash set only for
/// records with very many keys so that a crafted message cannot make tokenising quadratic.
/// A 128-bit filter of key hashes answers "not seen" for nearly every new key without a string
/// comparison; on a filter hit the stored full hashes are compared before any key bytes.
#[derive(Default)]
struct SeenKeys<'a> {
    filter: u128,
    small: SmallVec<[(u64, &'a str); 32]>,
    large: Option<std::collections::HashSet<&'a str>>,
}

#[inline]
fn filter_bit(hash: u64) -> u128 {
    1u128 << (hash >> 57)
}

impl<'a> SeenKeys<'a> {
    /// `hash` is [`key_hash`] of `key`, computed once by the caller for both calls.
    #[inline(always)]
    fn insert(&mut self, key: &'a str, hash: u64) {
        self.filter |= filter_bit(hash);
        if let Some(set) = &mut self.large {
            set.insert(key);
        } else if self.small.len() < 32 {
            self.small.push((hash, key));
        } else {
            let mut set: std::collections::HashSet<&'a str> =
                self.small.drain(..).map(|(_, k)| k).collect();
            set.insert(key);
            self.large = Some(set);
        }
    }

    #[inline]
    fn contains(&self, key: &str, hash: u64) -> bool {
        if self.filter & filter_bit(hash) == 0 {
            return false;
        }
        match &self.large {
            Some(set) => set.contains(key),
            None => self
                .small
                .iter()
                .any(|&(h, k)| h == hash && short_eq(k.as_bytes(), key.as_bytes())),
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

/// Recognises `cs1`, `cs1Label`, `cn7`, `cfp15Label`, `flexString2`, `deviceCustomDate1`, …
pub fn custom_key(key: &str) -> Option<CustomKey> {
    const PREFIXES: [(&str, CustomKind); 8] = [
        ("deviceCustomDate", CustomKind::DeviceCustomDate),
        ("flexString", CustomKind::FlexString),
        ("flexNumber", CustomKind::FlexNumber),
        ("flexDate", CustomKind::FlexDate),
        ("c6a", CustomKind::Ipv6Address),
        ("cfp", CustomKind::FloatingPoint),
        ("cs", CustomKind::String),
        ("cn", CustomKind::Number),
    ];
    let (base, label) = match key.strip_suffix("Label") {
        Some(b) => (b, true),
        None => (key, false),
    };
    for (prefix, kind) in PREFIXES {
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
            .map(|l| l.value.as_ref());
        Some((ck, label, e.value.as_ref()))
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
    /// Index into `entries` + 1; 0 marks an empty slot. Open addressing, linear probing.
    slots: Box<[u16]>,
    shift: u32,
    entries: Vec<(Box<str>, T)>,
    /// [`key_hash32`] of each entry's key: a probe compares these before any key bytes.
    hashes: Vec<u32>,
}

impl<T> KeyIndex<T> {
    pub fn new(items: impl IntoIterator<Item = (impl Into<Box<str>>, T)>) -> Self {
        let mut entries: Vec<(Box<str>, T)> = Vec::new();
        for (key, value) in items {
            let key = key.into();
            if !entries.iter().any(|(k, _)| *k == key) {
                entries.push((key, value));
            }
        }
        assert!(
            entries.len() < usize::from(u16::MAX) / 4,
            "key table too large"
        );
        // At most a quarter full, so probe runs stay short.
        let bits = (entries.len() * 4)
            .next_power_of_two()
            .trailing_zeros()
            .max(4);
        let mut slots = vec![0u16; 1 << bits].into_boxed_slice();
        let mask = slots.len() - 1;
        for (i, (key, _)) in entries.iter().enumerate() {
            let mut slot = (key_hash32(key) >> (32 - bits)) as usize;
            while slots[slot] != 0 {
                slot = (slot + 1) & mask;
            }
            slots[slot] = i as u16 + 1;
        }
        let hashes = entries.iter().map(|(k, _)| key_hash32(k)).collect();
        KeyIndex {
            slots,
            shift: 32 - bits,
            entries,
            hashes,
        }
    }

    #[inline]
    pub fn get(&self, key: &str) -> Option<&T> {
        self.get_hashed(key, key_hash32(key))
    }

    /// [`KeyIndex::get`] with the key's [`key_hash32`] already known (the CEF tokenizer stores
    /// it in [`Extension::key_hash`]).
    #[inline]
    pub fn get_hashed(&self, key: &str, hash: u32) -> Option<&T> {
        let mask = self.slots.len() - 1;
        let mut slot = (hash >> self.shift) as usize;
        loop {
            let i = self.slots[slot];
            if i == 0 {
                return None;
            }
            let i = usize::from(i - 1);
            if self.hashes[i] == hash {
                let (k, v) = &self.entries[i];
                if short_eq(k.as_bytes(), key.as_bytes()) {
                    return Some(v);
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

/// Hash of a short key: its first and last eight bytes (for shorter keys, overlapping 4-byte or
/// single-byte loads) and its length, multiplied together. Fixed-size loads only: copying a
/// short key into a padded buffer compiled to a `memcpy` call per key.
#[inline]
fn key_hash(k: &[u8]) -> u64 {
    let n = k.len();
    let (head, tail) = if n >= 8 {
        (load8(k, 0), load8(k, n - 8))
    } else if n >= 4 {
        (u64::from(load4(k, 0)) | u64::from(load4(k, n - 4)) << 32, 0)
    } else if n > 0 {
        (
            u64::from(k[0]) | u64::from(k[n / 2]) << 8 | u64::from(k[n - 1]) << 16,
            0,
        )
    } else {
        (0, 0)
    };
    (head.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ tail.rotate_left(29) ^ n as u64)
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

/// Parses a CEF time value (`rt`, `start`, `end`, `deviceCustomDate*`) into Unix milliseconds.
///
/// Accepted: epoch milliseconds; `MMM dd yyyy HH:mm:ss[.SSS][ zone]`; RFC 3339. A zone is `Z`,
/// `UTC`, `GMT`, `±hh:mm`, `±hhmm` or an IANA name; without one, `dtz` (the record's device time
/// zone, same forms) applies, and without that, UTC.
pub fn parse_timestamp(text: &str, dtz: Option<&str>) -> Option<i64> {
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
    let zone = parts
        .next()
        .map(str::trim)
        .filter(|z| !z.is_empty())
        .or(dtz);
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
    let local_millis = civil.and_utc().timestamp() * 1000 + millis;
    let offset_secs = match zone {
        None => 0,
        Some(z) => zone_offset_secs(z, civil)?,
    };
    Some(local_millis - i64::from(offset_secs) * 1000)
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

/// Offset east of UTC, in seconds, of `zone` at the local wall-clock time `civil`.
fn zone_offset_secs(zone: &str, civil: chrono::NaiveDateTime) -> Option<i32> {
    if matches!(zone, "Z" | "UTC" | "GMT" | "Etc/UTC") {
        return Some(0);
    }
    let bytes = zone.as_bytes();
    if matches!(bytes.first(), Some(b'+' | b'-')) {
        let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
        if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let secs = digits[..2].parse::<i32>().ok()? * 3600 + digits[2..].parse::<i32>().ok()? * 60;
        return Some(if bytes[0] == b'-' { -secs } else { secs });
    }
    use chrono::{Datelike, Timelike};
    let tz = jiff::tz::TimeZone::get(zone).ok()?;
    let dt = jiff::civil::DateTime::new(
        i16::try_from(civil.year()).ok()?,
        civil.month() as i8,
        civil.day() as i8,
        civil.hour() as i8,
        civil.minute() as i8,
        civil.second() as i8,
        0,
    )
    .ok()?;
    let zoned = dt.to_zoned(tz).ok()?;
    Some(zoned.offset().seconds())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext<'a>(c: &'a Cef<'_>) -> Vec<(&'a str, &'a str)> {
        c.extensions
            .iter()
            .map(|e| (e.key, e.value.as_ref()))
            .collect()
    }

    #[test]
    fn finds_start_only_before_version_and_pipe() {
        assert_eq!(find_cef_start("x CEF: no CEF:12|a"), Some(10));
        assert_eq!(find_cef_start("CEF:x|CEF:|"), None);
        assert_eq!(find_cef_start("<13>host CEF:0|"), Some(9));
    }

    #[test]
    fn header_values_borrow_unless_escaped() {
        let c = parse(r"CEF:0|Dark\|trace|DCIP|6.1|537|a\\b|Low| src=1.2.3.4", "").unwrap();
        assert!(matches!(c.device_vendor, Cow::Owned(_)));
        assert_eq!(c.device_vendor, "Dark|trace");
        assert!(matches!(c.device_product, Cow::Borrowed(_)));
        assert_eq!(c.name, r"a\b");
        assert_eq!(c.severity, "Low");
        assert!(matches!(c.extensions[0].value, Cow::Borrowed(_)));
    }

    #[test]
    fn incomplete_header_counts_fields() {
        assert_eq!(
            parse("CEF:0|a|b|c|", "").unwrap_err(),
            CefError::IncompleteHeader(4)
        );
        assert_eq!(
            parse("CEF:x|a|b|c|d|e|f|", "").unwrap_err(),
            CefError::NotCef
        );
    }

    #[test]
    fn forged_field_via_unescaped_query_is_swallowed() {
        let c = parse("CEF:0|v|p|1|id|n|5|request=https://x/?a=1 src=6.6.6.6", "").unwrap();
        assert_eq!(ext(&c), vec![("request", "https://x/?a=1 src=6.6.6.6")]);
        assert_eq!(c.get("src"), None);
    }

    #[test]
    fn repeated_key_is_not_a_boundary() {
        let c = parse(
            "CEF:0|v|p|1|id|n|5|src=1.1.1.1 msg=hi src=6.6.6.6 dst=2.2.2.2",
            "",
        )
        .unwrap();
        assert_eq!(
            ext(&c),
            vec![("src", "1.1.1.1"), ("msg", "hi src=6.6.6.6 dst=2.2.2.2")]
        );
    }

    #[test]
    fn escaped_injection_stays_in_value() {
        let text = "https://x/?a=1 src=6.6.6.6\nline2 \\ end";
        let rec = format!(
            "CEF:0|v|p|1|id|n|5|request={} dst=2.2.2.2",
            escape_extension_value(text)
        );
        let c = parse(&rec, "").unwrap();
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

    proptest::proptest! {
        /// A value marked JSON-clean has no byte that JSON escapes, wherever quotes, escapes,
        /// control bytes and stray `=` fall relative to the 64-byte blocks; every stored key
        /// hash is the key's.
        #[test]
        fn json_clean_values_need_no_escaping(
            ext in "(?s)([a-c]{1,3}=[a-z \"\\\\=\t\n\u{1}é]{0,40} ){1,12}"
        ) {
            let record = format!("CEF:0|v|p|1|s|n|5|{ext}");
            if let Ok(cef) = parse(&record, "") {
                for e in &cef.extensions {
                    proptest::prop_assert_eq!(e.key_hash, key_hash32(e.key));
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
        let cef = parse(
            r#"CEF:0|v|p|1|s|n|5|a=plain b=with "quote" c=back\\slash d=x"#,
            "",
        )
        .unwrap();
        let clean: Vec<bool> = cef.extensions.iter().map(|e| e.json_clean).collect();
        assert_eq!(clean, [true, false, false, true]);
    }

    #[test]
    fn keyless_extension_is_an_error() {
        let e = parse("CEF:0|v|p|1|id|n|5|just words", "").unwrap_err();
        assert_eq!(e.kind(), ParseErrorKind::CefExtension);
    }

    #[test]
    fn many_keys_use_the_hash_set_and_still_detect_repeats() {
        let mut rec = String::from("CEF:0|v|p|1|id|n|5|");
        for i in 0..100 {
            rec.push_str(&format!("k{i}=v{i} "));
        }
        rec.push_str("k3=forged");
        let c = parse(&rec, "").unwrap();
        assert_eq!(c.extensions.len(), 100);
        assert_eq!(c.get("k99"), Some("v99 k3=forged"));
        assert_eq!(c.get("k3"), Some("v3"));
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
            .chain(["", "a", "ab", "abc", "abcd", "deviceCustomString1Label"].map(String::from))
            .collect();
        let index = KeyIndex::new(keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)));
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(index.get(k), Some(&i), "{k}");
            assert_eq!(index.get(&format!("{k}x")), None);
            assert_eq!(index.get(&format!("x{k}")), None);
        }
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
        assert_eq!(
            parse_timestamp("1543270652000", None),
            Some(1_543_270_652_000)
        );
        // logstash dtz_rt_zoneless: zone-less rt, dtz supplies Europe/Moscow (UTC+3).
        assert_eq!(
            parse_timestamp("Jul 19 2017 10:50:21.127", Some("Europe/Moscow")),
            Some(1_500_450_621_127)
        );
        assert_eq!(
            parse_timestamp("Sep 07 2018 14:50:39", None),
            Some(1_536_331_839_000)
        );
        assert_eq!(
            parse_timestamp("Sep 07 2018 14:50:39 +02:00", Some("UTC")),
            Some(1_536_324_639_000)
        );
        assert_eq!(
            parse_timestamp("2025-06-29T23:35:00Z", None),
            Some(1_751_240_100_000)
        );
        assert_eq!(parse_timestamp("Foo 07 2018 14:50:39", None), None);
        assert_eq!(
            parse_timestamp("Sep 07 2018 14:50:39", Some("Nowhere/Land")),
            None
        );
    }

    #[test]
    fn custom_keys_and_pairs() {
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
