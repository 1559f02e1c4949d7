//! Syslog headers: RFC 5424 and RFC 3164 with real-world variants.
//!
//! Every field borrows the message text; the hot path neither allocates nor copies. Only the
//! ASCII bytes that delimit fields (space, `[`, `]`, `:`, `{`) are used as cut points, so every
//! slice falls on a UTF-8 character boundary whatever the input.
//!
//! Decisions on ambiguous input are listed in `docs/syslog.md`; the short version:
//! * a message is RFC 5424 only when VERSION, a timestamp (or `-`) and the four space-separated
//!   fields up to MSGID are all present; otherwise RFC 3164 is tried, which needs a PRI or a
//!   timestamp; text with neither is [`SyslogFormat::None`] and wholly body;
//! * a body that starts with `{`, `[`, `CEF:` or `LEEF:` is never taken for a hostname or a tag.

use std::borrow::Cow;

use smallvec::SmallVec;

use crate::event::{Pri, SyslogFormat, SyslogHeader, Timestamp};
use crate::parse::{LocalZone, ParseOptions};

/// An RFC 3164 date carries no year. The year chosen is the one that puts the timestamp closest
/// to the receive time without being more than this far in the future (clock skew and unknown
/// sender zones of up to ±14 h).
pub const YEAR_INFERENCE_FUTURE_SKEW_SECS: i64 = 2 * 24 * 3600;

/// Longest RFC 3164 TAG accepted (RFC 3164 says 32; real senders exceed it).
const MAX_TAG_BYTES: usize = 128;
/// Longest `[pid]` accepted after a tag.
const MAX_PID_BYTES: usize = 128;
/// Longest hostname (RFC 5424: 255).
const MAX_HOST_BYTES: usize = 255;

/// Splits `text` into its syslog header and the body (MSG) that follows it.
///
/// Never fails: text without a recognisable header comes back whole as the body with
/// [`SyslogFormat::None`]. Whitespace around the message is not part of it.
pub fn parse_header<'a>(
    text: &'a str,
    received_at: Timestamp,
    options: &ParseOptions,
) -> (SyslogHeader<'a>, &'a str) {
    let text = text.trim_ascii();
    let (pri, after_pri) = match parse_pri(text.as_bytes()) {
        Some((pri, end)) => (Some(pri), end),
        None => (None, 0),
    };
    if let Some(parsed) = parse_5424(text, after_pri, pri, options) {
        return parsed;
    }
    if let Some(parsed) = parse_3164(text, after_pri, pri, received_at, options) {
        return parsed;
    }
    (crate::parse::no_header(), text)
}

fn header<'a>(format: SyslogFormat, pri: Option<Pri>) -> SyslogHeader<'a> {
    SyslogHeader {
        format,
        pri,
        ..crate::parse::no_header()
    }
}

/// `<PRIVAL>` with 1–3 digits and a value the facility/severity encoding allows (0–191).
fn parse_pri(b: &[u8]) -> Option<(Pri, usize)> {
    if b.first() != Some(&b'<') {
        return None;
    }
    let digits = b[1..]
        .iter()
        .take(4)
        .take_while(|c| c.is_ascii_digit())
        .count();
    if !(1..=3).contains(&digits) || b.get(1 + digits) != Some(&b'>') {
        return None;
    }
    let value = b[1..1 + digits]
        .iter()
        .fold(0u16, |v, c| v * 10 + u16::from(c - b'0'));
    let pri = Pri::from_value(u8::try_from(value).ok()?)?;
    Some((pri, digits + 2))
}

/// Returns the end of the token starting at `pos` (next space or end of text).
fn token_end(b: &[u8], pos: usize) -> usize {
    memchr::memchr(b' ', &b[pos..]).map_or(b.len(), |i| pos + i)
}

fn skip_spaces(b: &[u8], mut pos: usize) -> usize {
    while b.get(pos) == Some(&b' ') {
        pos += 1;
    }
    pos
}

fn nil(field: &str) -> Option<&str> {
    (field != "-").then_some(field)
}

// ---------------------------------------------------------------------------------------------
// RFC 5424
// ---------------------------------------------------------------------------------------------

fn parse_5424<'a>(
    text: &'a str,
    start: usize,
    pri: Option<Pri>,
    options: &ParseOptions,
) -> Option<(SyslogHeader<'a>, &'a str)> {
    let b = text.as_bytes();
    let digits = b[start..]
        .iter()
        .take(4)
        .take_while(|c| c.is_ascii_digit())
        .count();
    if !(1..=3).contains(&digits) || b[start] == b'0' || b.get(start + digits) != Some(&b' ') {
        return None;
    }
    let version: u16 = text[start..start + digits].parse().ok()?;
    let mut pos = start + digits + 1;

    // TIMESTAMP HOSTNAME APP-NAME PROCID MSGID, each followed by exactly one SP (MSGID may end
    // the message).
    let mut fields = [""; 5];
    for (i, field) in fields.iter_mut().enumerate() {
        let end = token_end(b, pos);
        if end == pos {
            return None;
        }
        *field = &text[pos..end];
        if end == b.len() && i < 4 {
            return None;
        }
        pos = (end + 1).min(b.len());
    }
    let [ts, hostname, app_name, proc_id, msg_id] = fields;
    let timestamp = if ts == "-" {
        None
    } else {
        let (timestamp, end) = parse_rfc3339(ts.as_bytes(), 0, &options.zone)?;
        if end != ts.len() {
            return None;
        }
        Some(timestamp)
    };

    let mut head = header(SyslogFormat::Rfc5424, pri);
    head.version = u8::try_from(version).ok();
    head.timestamp = timestamp;
    head.hostname = nil(hostname);
    head.app_name = nil(app_name);
    head.proc_id = nil(proc_id);
    head.msg_id = nil(msg_id);

    // STRUCTURED-DATA: `-` or one or more `[...]`, then SP MSG. A sender that leaves SD out
    // entirely gets its text kept as MSG rather than misread.
    let body_start = match b.get(pos) {
        None => pos,
        Some(b'-') if matches!(b.get(pos + 1), None | Some(b' ')) => pos + 2,
        Some(b'[') => match scan_sd(b, pos) {
            Some(end) if matches!(b.get(end), None | Some(b' ')) => {
                head.structured_data = Some(&text[pos..end]);
                end + 1
            }
            _ => pos,
        },
        Some(_) => pos,
    };
    let msg = text.get(body_start.min(text.len())..).unwrap_or("");
    Some((head, msg.strip_prefix('\u{FEFF}').unwrap_or(msg)))
}

/// Finds the end (exclusive) of consecutive SD elements starting at `pos`, honouring quoted
/// values and their escapes. `None` when an element is not closed.
fn scan_sd(b: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        pos = scan_element(b, pos)?;
        if b.get(pos) != Some(&b'[') {
            return Some(pos);
        }
    }
}

/// `b[pos]` is `[`; returns the index after the matching `]`.
fn scan_element(b: &[u8], pos: usize) -> Option<usize> {
    let mut i = pos + 1;
    let mut quoted = false;
    while i < b.len() {
        match (quoted, b[i]) {
            (true, b'\\') => i += 1,
            (true, b'"') => quoted = false,
            (false, b'"') => quoted = true,
            (false, b']') => return Some(i + 1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// One SD-ELEMENT: its SD-ID and its parameters in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdElement<'a> {
    pub id: &'a str,
    pub params: SmallVec<[SdParam<'a>; 4]>,
}

/// One SD-PARAM; `value` has `\"`, `\\` and `\]` unescaped (other backslashes are literal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdParam<'a> {
    pub name: &'a str,
    pub value: Cow<'a, str>,
}

/// Why an SD-ELEMENT could not be decoded. Offsets are bytes into the raw structured data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdError {
    #[error("structured data: expected '[' at byte {offset}")]
    ExpectedElement { offset: usize },
    #[error("structured data: element starting at byte {offset} is not closed by ']'")]
    Unterminated { offset: usize },
    #[error("structured data: invalid SD-ID in element at byte {offset}")]
    InvalidId { offset: usize },
    #[error("structured data: invalid SD-PARAM in element at byte {offset}")]
    InvalidParam { offset: usize },
}

/// Decodes raw RFC 5424 STRUCTURED-DATA (as stored in [`SyslogHeader::structured_data`]).
/// A malformed element yields an `Err` and decoding goes on with the next one; an unclosed
/// element ends the iteration.
pub fn structured_data(raw: &str) -> impl Iterator<Item = Result<SdElement<'_>, SdError>> {
    SdIter { raw, pos: 0 }
}

struct SdIter<'a> {
    raw: &'a str,
    pos: usize,
}

impl<'a> Iterator for SdIter<'a> {
    type Item = Result<SdElement<'a>, SdError>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.raw.as_bytes();
        let start = self.pos;
        if start >= b.len() {
            return None;
        }
        if b[start] != b'[' {
            self.pos = b.len();
            return Some(Err(SdError::ExpectedElement { offset: start }));
        }
        let Some(end) = scan_element(b, start) else {
            self.pos = b.len();
            return Some(Err(SdError::Unterminated { offset: start }));
        };
        self.pos = end;
        Some(parse_element(&self.raw[start + 1..end - 1], start))
    }
}

/// SD-NAME: 1+ printable US-ASCII except `=`, SP, `]` and `"` (the 32-byte cap is not enforced).
fn sd_name_len(b: &[u8]) -> usize {
    b.iter()
        .take_while(|&&c| (33..=126).contains(&c) && !matches!(c, b'=' | b']' | b'"'))
        .count()
}

fn parse_element(inner: &str, offset: usize) -> Result<SdElement<'_>, SdError> {
    let b = inner.as_bytes();
    let id_len = sd_name_len(b);
    if id_len == 0 || !matches!(b.get(id_len), None | Some(b' ')) {
        return Err(SdError::InvalidId { offset });
    }
    let mut element = SdElement {
        id: &inner[..id_len],
        params: SmallVec::new(),
    };
    let bad = SdError::InvalidParam { offset };
    let mut pos = id_len;
    loop {
        pos = skip_spaces(b, pos);
        if pos == b.len() {
            return Ok(element);
        }
        let name_len = sd_name_len(&b[pos..]);
        if name_len == 0 || b.get(pos + name_len) != Some(&b'=') {
            return Err(bad);
        }
        let name = &inner[pos..pos + name_len];
        // Some senders put a space after '=' (seen in the wild, tolerated by other parsers).
        pos = skip_spaces(b, pos + name_len + 1);
        if b.get(pos) != Some(&b'"') {
            return Err(bad);
        }
        let value_start = pos + 1;
        let mut i = value_start;
        let mut escaped = false;
        loop {
            match b.get(i) {
                None => return Err(bad),
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    i += 2;
                }
                Some(_) => i += 1,
            }
        }
        let raw_value = &inner[value_start..i];
        let value = if escaped {
            Cow::Owned(unescape_param(raw_value))
        } else {
            Cow::Borrowed(raw_value)
        };
        element.params.push(SdParam { name, value });
        pos = i + 1;
        if !matches!(b.get(pos), None | Some(b' ')) {
            return Err(bad);
        }
    }
}

fn unescape_param(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('"' | '\\' | ']')) => out.push(e),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// RFC 3164 (BSD) and its real-world variants
// ---------------------------------------------------------------------------------------------

fn parse_3164<'a>(
    text: &'a str,
    start: usize,
    pri: Option<Pri>,
    received_at: Timestamp,
    options: &ParseOptions,
) -> Option<(SyslogHeader<'a>, &'a str)> {
    let b = text.as_bytes();
    let mut head = header(SyslogFormat::Rfc3164, pri);
    // Some senders put a space between PRI and TIMESTAMP.
    let pos = skip_spaces(b, start);

    let after_ts = if let Some(bsd) = parse_bsd_timestamp(b, pos) {
        head.timestamp = bsd.resolve(received_at, &options.zone);
        bsd.end
    } else if let Some((timestamp, end)) = parse_rfc3339(b, pos, &options.zone)
        .filter(|&(_, end)| matches!(b.get(end), None | Some(b' ')))
    {
        head.timestamp = Some(timestamp);
        end
    } else if pri.is_some() {
        // PRI and nothing else we know: only an unmistakable `tag[pid]:` / `tag:` is taken.
        return Some(match parse_tag(text, pos, true) {
            Some(tag) => {
                head.app_name = Some(tag.name);
                head.proc_id = tag.pid;
                finish_3164(text, head, tag.body_start)
            }
            None => (head, &text[pos..]),
        });
    } else {
        return None;
    };

    // Cisco-style `hh:mm:ss:` — the colon belongs to the timestamp.
    let after_ts = if b.get(after_ts) == Some(&b':') {
        after_ts + 1
    } else {
        after_ts
    };
    let pos = skip_spaces(b, after_ts);
    if pos == b.len() || starts_body(b, pos) {
        return Some((head, &text[pos..]));
    }

    // HOSTNAME is optional: a first word that can only be a tag (`name[pid]`, `name:`,
    // `name{`) means the sender left the hostname out.
    if let Some(tag) = parse_tag(text, pos, true) {
        head.app_name = Some(tag.name);
        head.proc_id = tag.pid;
        return Some(finish_3164(text, head, tag.body_start));
    }
    let host_end = token_end(b, pos);
    let host = &text[pos..host_end];
    if host.len() > MAX_HOST_BYTES || !host.bytes().all(is_host_byte) {
        return Some((head, &text[pos..]));
    }
    head.hostname = Some(host);

    let pos = skip_spaces(b, host_end);
    if pos == b.len() || starts_body(b, pos) {
        return Some((head, &text[pos..]));
    }
    match parse_tag(text, pos, false) {
        Some(tag) => {
            head.app_name = Some(tag.name);
            head.proc_id = tag.pid;
            Some(finish_3164(text, head, tag.body_start))
        }
        None => Some((head, &text[pos..])),
    }
}

/// After the TAG: rsyslog may put well-formed structured data before the message.
fn finish_3164<'a>(
    text: &'a str,
    mut head: SyslogHeader<'a>,
    pos: usize,
) -> (SyslogHeader<'a>, &'a str) {
    let b = text.as_bytes();
    if b.get(pos) == Some(&b'[')
        && let Some(end) = scan_sd(b, pos)
        && matches!(b.get(end), None | Some(b' '))
    {
        let raw = &text[pos..end];
        // Stricter than RFC 5424 here, because in RFC 3164 a `[` usually starts plain text or
        // a JSON array: every element must decode and start with a letter.
        let plausible =
            structured_data(raw).all(|e| e.is_ok_and(|e| e.id.as_bytes()[0].is_ascii_alphabetic()));
        if plausible {
            head.structured_data = Some(raw);
            return (head, &text[skip_spaces(b, end)..]);
        }
    }
    (head, &text[pos..])
}

/// Bodies that must never be mistaken for a hostname or tag.
fn starts_body(b: &[u8], pos: usize) -> bool {
    let rest = &b[pos..];
    matches!(rest.first(), Some(b'{' | b'['))
        || rest.starts_with(b"CEF:")
        || rest.starts_with(b"LEEF:")
}

/// Byte classes of hostnames (bit 0) and tags (bit 1), as a table: every header byte is
/// tested, and a load beats the chain of comparisons.
static HEADER_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        let host =
            c > b' ' && c != 0x7f && !matches!(c, b'{' | b'}' | b'[' | b']' | b'|' | b'=' | b'"');
        if host {
            t[i] = if c == b':' { 1 } else { 3 };
        }
        i += 1;
    }
    t
};

#[inline]
fn is_host_byte(c: u8) -> bool {
    HEADER_BYTE[c as usize] & 1 != 0
}

#[inline]
fn is_tag_byte(c: u8) -> bool {
    HEADER_BYTE[c as usize] & 2 != 0
}

struct Tag<'a> {
    name: &'a str,
    pid: Option<&'a str>,
    body_start: usize,
}

/// `name[pid]:`, `name[pid]`, `name:`, `name{...` or (when not `strict`) a bare `name` followed
/// by a space. `strict` demands one of the forms that cannot be a hostname.
fn parse_tag(text: &str, pos: usize, strict: bool) -> Option<Tag<'_>> {
    let b = text.as_bytes();
    let name_len = b[pos..].iter().take_while(|&&c| is_tag_byte(c)).count();
    if name_len == 0 || name_len > MAX_TAG_BYTES {
        return None;
    }
    let name = &text[pos..pos + name_len];
    if name == "CEF" || name == "LEEF" {
        return None;
    }
    let mut i = pos + name_len;
    let mut pid = None;
    if b.get(i) == Some(&b'[') {
        let pid_len = b[i + 1..].iter().take_while(|&&c| is_tag_byte(c)).count();
        if pid_len == 0 || pid_len > MAX_PID_BYTES || b.get(i + 1 + pid_len) != Some(&b']') {
            return None;
        }
        pid = Some(&text[i + 1..i + 1 + pid_len]);
        i += pid_len + 2;
        match b.get(i) {
            Some(b':') => i += 1,
            None | Some(b' ' | b'{') => {}
            Some(_) => return None,
        }
    } else {
        match b.get(i) {
            // `name:` must be followed by a space (or the end, or JSON): this keeps IPv6
            // addresses, URLs and `CEF:0|` out.
            Some(b':') if matches!(b.get(i + 1), None | Some(b' ' | b'{')) => i += 1,
            Some(b'{') => {}
            None | Some(b' ') if !strict => {}
            _ => return None,
        }
    }
    Some(Tag {
        name,
        pid,
        body_start: skip_spaces(b, i),
    })
}

/// An RFC 3164 timestamp `Mmm dd [yyyy ]hh:mm:ss[.frac]`, not yet placed in a year.
struct BsdTimestamp {
    year: Option<i32>,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
    end: usize,
}

const MONTHS: [&[u8; 3]; 12] = [
    b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec",
];

fn parse_bsd_timestamp(b: &[u8], pos: usize) -> Option<BsdTimestamp> {
    let m = b.get(pos..pos + 3)?;
    let month = MONTHS
        .iter()
        .position(|name| m.eq_ignore_ascii_case(&name[..]))? as u32
        + 1;
    let mut i = pos + 3;
    // The day is space-padded (`Feb  5`), zero-padded (`Apr 01`) or bare (`Jun 8`).
    let spaces = skip_spaces(b, i) - i;
    if !(1..=2).contains(&spaces) {
        return None;
    }
    i += spaces;
    let (day, day_len) = digits(b, i, 2)?;
    i += day_len;
    if b.get(i) != Some(&b' ') {
        return None;
    }
    i += 1;
    let mut year = None;
    if let Some((y, 4)) = digits(b, i, 4)
        && b.get(i + 4) == Some(&b' ')
    {
        year = Some(y as i32);
        i += 5;
    }
    let (hour, minute, second, nanos, end) = parse_hms(b, i)?;
    if !matches!(b.get(end), None | Some(b' ' | b':')) {
        return None;
    }
    Some(BsdTimestamp {
        year,
        month,
        day,
        hour,
        minute,
        second,
        nanos,
        end,
    })
}

impl BsdTimestamp {
    /// Places the time in a year (given, or inferred from `received_at`) in the receiver's
    /// default zone. `None` when no plausible year makes the date valid (e.g. Feb 29).
    fn resolve(&self, received_at: Timestamp, zone: &LocalZone) -> Option<Timestamp> {
        let at = |year: i32| -> Option<i64> {
            let local_secs = civil_secs(
                i64::from(year),
                self.month,
                self.day,
                self.hour,
                self.minute,
                self.second,
            )?;
            zone.utc_from_local(local_secs)?
                .checked_mul(1_000_000_000)?
                .checked_add(i64::from(self.nanos))
        };
        let unix_nanos = match self.year {
            Some(year) => at(year)?,
            None => {
                let received = received_at.unix_nanos;
                let received_secs = received.div_euclid(1_000_000_000);
                let local_secs = received_secs + i64::from(zone.offset_at(received_secs));
                let year = year_of_days(local_secs.div_euclid(86_400)) as i32;
                let latest_allowed =
                    received.saturating_add(YEAR_INFERENCE_FUTURE_SKEW_SECS * 1_000_000_000);
                // A time in the next year can only be allowed in the year's last days (the
                // skew plus the widest gap between two zone offsets is under four days).
                // Skipping it otherwise also keeps a named zone's one-entry cache on this
                // year's time.
                let next_year_possible =
                    year_of_days((local_secs + 4 * 86_400).div_euclid(86_400)) as i32 > year;
                [year + 1, year, year - 1]
                    .into_iter()
                    .filter(|&y| y <= year || next_year_possible)
                    .filter_map(at)
                    .find(|&t| t <= latest_allowed)?
            }
        };
        Some(Timestamp {
            unix_nanos,
            offset_secs: None,
        })
    }
}

/// Seconds since the Unix epoch of a UTC civil time, or `None` for a date or time that does
/// not exist (Feb 30, hour 24, …). Plain arithmetic: this runs for every message, and a
/// calendar library call costs more than the rest of the header.
fn civil_secs(year: i64, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> Option<i64> {
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + i64::from(hour * 3600 + minute * 60 + second))
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil year that day `days` (since 1970-01-01) falls in.
fn year_of_days(days: i64) -> i64 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    yoe + era * 400 + i64::from(mp >= 10)
}

/// Up to `max` ASCII digits at `pos` (at least one): (value, count).
fn digits(b: &[u8], pos: usize, max: usize) -> Option<(u32, usize)> {
    let n = b
        .get(pos..)?
        .iter()
        .take(max)
        .take_while(|c| c.is_ascii_digit())
        .count();
    if n == 0 {
        return None;
    }
    Some((
        b[pos..pos + n]
            .iter()
            .fold(0u32, |v, c| v * 10 + u32::from(c - b'0')),
        n,
    ))
}

/// Exactly `n` digits at `pos`.
fn fixed_digits(b: &[u8], pos: usize, n: usize) -> Option<u32> {
    match digits(b, pos, n) {
        Some((v, len)) if len == n => Some(v),
        _ => None,
    }
}

/// `hh:mm:ss[.frac]` → (h, m, s, nanos, end). A leap second (`:60`) is held at the last
/// nanosecond of the minute.
fn parse_hms(b: &[u8], pos: usize) -> Option<(u32, u32, u32, u32, usize)> {
    let hour = fixed_digits(b, pos, 2)?;
    (b.get(pos + 2) == Some(&b':')).then_some(())?;
    let minute = fixed_digits(b, pos + 3, 2)?;
    (b.get(pos + 5) == Some(&b':')).then_some(())?;
    let second = fixed_digits(b, pos + 6, 2)?;
    finish_hms(b, pos + 8, hour, minute, second)
}

/// The optional `.frac` at `end` after `hh:mm:ss`, and the range checks of [`parse_hms`].
fn finish_hms(
    b: &[u8],
    mut end: usize,
    hour: u32,
    minute: u32,
    mut second: u32,
) -> Option<(u32, u32, u32, u32, usize)> {
    let mut nanos = 0u32;
    if b.get(end) == Some(&b'.') {
        let frac = b[end + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if frac == 0 {
            return None;
        }
        let mut scale = 100_000_000u32;
        for &c in &b[end + 1..end + 1 + frac.min(9)] {
            nanos += u32::from(c - b'0') * scale;
            scale /= 10;
        }
        end += 1 + frac;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    if second == 60 {
        second = 59;
        nanos = 999_999_999;
    }
    Some((hour, minute, second, nanos, end))
}

/// RFC 3339 `YYYY-MM-DDThh:mm:ss[.frac](Z|±hh:mm)` at `pos`; a missing zone means the
/// receiver's default (and `offset_secs: None`). Returns the timestamp and the end index.
fn parse_rfc3339(b: &[u8], pos: usize, zone: &LocalZone) -> Option<(Timestamp, usize)> {
    let [year, month, day, hour, minute, second] = rfc3339_date_time(b, pos)?;
    let (hour, minute, second, nanos, mut end) = finish_hms(b, pos + 19, hour, minute, second)?;
    let offset = match b.get(end) {
        Some(b'Z' | b'z') => {
            end += 1;
            Some(0)
        }
        Some(&sign @ (b'+' | b'-')) => {
            let oh = fixed_digits(b, end + 1, 2)?;
            let colon = usize::from(b.get(end + 3) == Some(&b':'));
            let om = fixed_digits(b, end + 3 + colon, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            end += 5 + colon;
            let secs = (oh * 3600 + om * 60) as i32;
            Some(if sign == b'-' { -secs } else { secs })
        }
        _ => None,
    };
    let local_secs = civil_secs(i64::from(year), month, day, hour, minute, second)?;
    let secs = match offset {
        Some(offset) => local_secs.checked_sub(i64::from(offset))?,
        None => zone.utc_from_local(local_secs)?,
    };
    let unix_nanos = secs
        .checked_mul(1_000_000_000)?
        .checked_add(i64::from(nanos))?;
    Some((
        Timestamp {
            unix_nanos,
            offset_secs: offset,
        },
        end,
    ))
}

/// `YYYY-MM-DDTHH:MM:SS` at `pos` as its six numbers (ranges not checked), or `None` when the
/// 19 bytes do not have that layout. One branch for the whole check instead of one per field:
/// every RFC 5424 message carries this layout.
#[inline]
fn rfc3339_date_time(b: &[u8], pos: usize) -> Option<[u32; 6]> {
    let f: &[u8; 19] = b.get(pos..pos + 19)?.try_into().ok()?;
    let digit = |i: usize| f[i].wrapping_sub(b'0');
    let mut bad = false;
    for i in [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18] {
        bad |= digit(i) > 9;
    }
    // `| 0x20` maps `T` and `t`, and nothing else, to `t`.
    bad |= (f[4] != b'-')
        | (f[7] != b'-')
        | (f[10] | 0x20 != b't')
        | (f[13] != b':')
        | (f[16] != b':');
    if bad {
        return None;
    }
    let two = |i: usize| u32::from(digit(i)) * 10 + u32::from(digit(i + 1));
    Some([
        two(0) * 100 + two(2),
        two(5),
        two(8),
        two(11),
        two(14),
        two(17),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn date_time_layout_is_checked_field_by_field(
            digits in "[0-9]{14}",
            upper_t in proptest::bool::ANY,
            // The right layout, then maybe one byte anywhere replaced by any byte.
            corrupt in proptest::option::of((0usize..19, proptest::num::u8::ANY)),
        ) {
            let d = digits.as_bytes();
            let t = if upper_t { 'T' } else { 't' };
            let mut b = format!(
                "{}-{}-{}{t}{}:{}:{}",
                &digits[0..4], &digits[4..6], &digits[6..8], &digits[8..10], &digits[10..12], &digits[12..14]
            )
            .into_bytes();
            if let Some((at, byte)) = corrupt {
                b[at] = byte;
            }
            // The general parser's definition, field by field.
            let num = |r: std::ops::Range<usize>| {
                b[r.clone()].iter().all(u8::is_ascii_digit).then(|| {
                    b[r].iter().fold(0u32, |v, c| v * 10 + u32::from(c - b'0'))
                })
            };
            let expected = (|| {
                let seps = b[4] == b'-' && b[7] == b'-' && matches!(b[10], b'T' | b't')
                    && b[13] == b':' && b[16] == b':';
                seps.then_some(())?;
                Some([num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?])
            })();
            if corrupt.is_none() {
                let two = |i: usize| u32::from(d[i] - b'0') * 10 + u32::from(d[i + 1] - b'0');
                proptest::prop_assert_eq!(
                    expected,
                    Some([two(0) * 100 + two(2), two(4), two(6), two(8), two(10), two(12)])
                );
            }
            proptest::prop_assert_eq!(rfc3339_date_time(&b, 0), expected);
        }
    }

    #[test]
    fn date_time_layout_accepts_real_timestamps() {
        assert_eq!(
            rfc3339_date_time(b"x2026-11-01t23:59:60.5Z", 1),
            Some([2026, 11, 1, 23, 59, 60])
        );
        assert_eq!(
            rfc3339_date_time(b"2026-11-01T23:59:6", 0),
            None,
            "too short"
        );
    }

    fn at(rfc3339: &str) -> Timestamp {
        parse_rfc3339(rfc3339.as_bytes(), 0, &LocalZone::Fixed(0))
            .unwrap()
            .0
    }

    fn parse(text: &str) -> (SyslogHeader<'_>, &str) {
        parse_header(text, at("2024-03-01T00:00:00Z"), &ParseOptions::default())
    }

    #[test]
    fn civil_arithmetic_matches_chrono() {
        use chrono::{Datelike as _, NaiveDate};
        for year in [
            -400i64, 0, 1, 1899, 1900, 1969, 1970, 1999, 2000, 2023, 2024, 2100, 9999,
        ] {
            for month in 0..=13u32 {
                for day in 0..=32u32 {
                    for (h, mi, se) in
                        [(0, 0, 0), (23, 59, 59), (24, 0, 0), (12, 60, 0), (1, 2, 60)]
                    {
                        let want = NaiveDate::from_ymd_opt(year as i32, month, day)
                            .and_then(|d| d.and_hms_opt(h, mi, se))
                            .map(|t| t.and_utc().timestamp());
                        assert_eq!(
                            civil_secs(year, month, day, h, mi, se),
                            want,
                            "{year}-{month}-{day} {h}:{mi}:{se}"
                        );
                    }
                }
            }
        }
        for secs in (-20_000_000_000i64..20_000_000_000).step_by(7_777_777) {
            let want = chrono::DateTime::from_timestamp(secs, 0).unwrap().year();
            assert_eq!(
                year_of_days(secs.div_euclid(86_400)),
                i64::from(want),
                "{secs}"
            );
        }
    }

    #[test]
    fn byte_class_table_matches_the_rules() {
        for c in 0..=255u8 {
            let host = c > b' '
                && c != 0x7f
                && !matches!(c, b'{' | b'}' | b'[' | b']' | b'|' | b'=' | b'"');
            assert_eq!(is_host_byte(c), host, "{c:#x}");
            assert_eq!(is_tag_byte(c), host && c != b':', "{c:#x}");
        }
    }

    #[test]
    fn pri_bounds() {
        assert_eq!(parse_pri(b"<191>").map(|p| p.0.value()), Some(191));
        assert!(parse_pri(b"<192>").is_none());
        assert!(parse_pri(b"<>").is_none());
        assert!(parse_pri(b"<1234>").is_none());
        assert!(parse_pri(b"<12").is_none());
    }

    #[test]
    fn year_is_inferred_around_new_year() {
        let opts = ParseOptions::default();
        let (h, _) = parse_header(
            "<13>Dec 31 23:59:00 host app: x",
            at("2025-01-01T00:01:00Z"),
            &opts,
        );
        assert_eq!(
            h.timestamp,
            Some(Timestamp {
                unix_nanos: at("2024-12-31T23:59:00Z").unix_nanos,
                offset_secs: None
            })
        );
        let (h, _) = parse_header(
            "<13>Jan  1 00:00:30 host app: x",
            at("2024-12-31T23:59:00Z"),
            &opts,
        );
        assert_eq!(
            h.timestamp.unwrap().unix_nanos,
            at("2025-01-01T00:00:30Z").unix_nanos
        );
        // A date months ahead of the receive time belongs to last year.
        let (h, _) = parse_header(
            "<13>Jul 20 10:00:00 host app: x",
            at("2024-06-30T00:00:00Z"),
            &opts,
        );
        assert_eq!(
            h.timestamp.unwrap().unix_nanos,
            at("2023-07-20T10:00:00Z").unix_nanos
        );
        // Feb 29 in a span of non-leap years: no plausible year, header still parsed.
        let (h, body) = parse_header(
            "<13>Feb 29 10:00:00 host app: x",
            at("2023-03-01T00:00:00Z"),
            &opts,
        );
        assert_eq!((h.timestamp, h.hostname, body), (None, Some("host"), "x"));
    }

    #[test]
    fn default_offset_applies_to_unzoned_times_only() {
        let opts = ParseOptions {
            zone: LocalZone::Fixed(3600),
            ..ParseOptions::default()
        };
        let (h, _) = parse_header(
            "<13>Feb  5 10:00:00 h a: x",
            at("2024-03-01T00:00:00Z"),
            &opts,
        );
        assert_eq!(
            h.timestamp,
            Some(Timestamp {
                unix_nanos: at("2024-02-05T09:00:00Z").unix_nanos,
                offset_secs: None
            })
        );
        let (h, _) = parse_header(
            "<13>1 2024-02-05T10:00:00+02:00 h a - - - x",
            at("2024-03-01T00:00:00Z"),
            &opts,
        );
        assert_eq!(
            h.timestamp,
            Some(Timestamp {
                unix_nanos: at("2024-02-05T08:00:00Z").unix_nanos,
                offset_secs: Some(7200)
            })
        );
    }

    #[test]
    fn a_named_zone_places_local_times_by_their_date() {
        let opts = ParseOptions {
            zone: LocalZone::parse("Europe/Paris").unwrap(),
            ..ParseOptions::default()
        };
        let utc_of = |line: &str, received: &str| {
            parse_header(line, at(received), &opts)
                .0
                .timestamp
                .map(|t| (t.unix_nanos, t.offset_secs))
        };
        // RFC 3164 in winter (UTC+1) and summer (UTC+2).
        assert_eq!(
            utc_of("<13>Feb  5 10:00:00 h a: x", "2024-02-05T09:00:01Z"),
            Some((at("2024-02-05T09:00:00Z").unix_nanos, None))
        );
        assert_eq!(
            utc_of("<13>Jul  5 10:00:00 h a: x", "2024-07-05T08:00:01Z"),
            Some((at("2024-07-05T08:00:00Z").unix_nanos, None))
        );
        // An RFC 3339 time without its offset takes the zone; one with an offset keeps it.
        assert_eq!(
            utc_of(
                "<13>1 2024-07-05T10:00:00 h a - - - x",
                "2024-07-05T08:00:01Z"
            ),
            Some((at("2024-07-05T08:00:00Z").unix_nanos, None))
        );
        assert_eq!(
            utc_of(
                "<13>1 2024-07-05T10:00:00Z h a - - - x",
                "2024-07-05T10:00:01Z"
            ),
            Some((at("2024-07-05T10:00:00Z").unix_nanos, Some(0)))
        );
        // The hour that happens twice when clocks go back is read as its first occurrence.
        assert_eq!(
            utc_of("<13>Oct 27 02:30:00 h a: x", "2024-10-27T00:30:01Z"),
            Some((at("2024-10-27T00:30:00Z").unix_nanos, None))
        );
        // The year is inferred from the local date of reception: 23:30 UTC on Dec 31 is
        // already Jan 1 in Paris, so "Jan  1 00:29:00" is this new year, not the next.
        assert_eq!(
            utc_of("<13>Jan  1 00:29:00 h a: x", "2024-12-31T23:30:00Z"),
            Some((at("2024-12-31T23:29:00Z").unix_nanos, None))
        );
        // And a Dec 31 line received then is the year that just ended locally.
        assert_eq!(
            utc_of("<13>Dec 31 23:59:00 h a: x", "2024-12-31T23:30:00Z"),
            Some((at("2024-12-31T22:59:00Z").unix_nanos, None))
        );
    }

    #[test]
    fn cef_is_never_a_tag() {
        let (h, body) = parse("<134>CEF:0|Darktrace|DCIP|6|1|n|5|a=b");
        assert_eq!(
            (h.format, h.app_name, body),
            (
                SyslogFormat::Rfc3164,
                None,
                "CEF:0|Darktrace|DCIP|6|1|n|5|a=b"
            )
        );
        let (h, body) = parse("CEF:0|Darktrace|DCIP|6|1|n|5|a=b");
        assert_eq!(
            (h.format, body),
            (SyslogFormat::None, "CEF:0|Darktrace|DCIP|6|1|n|5|a=b")
        );
        let (h, body) = parse("<134>Feb  5 10:00:00 dt01 CEF:0|Darktrace|DCIP|6|1|n|5|a=b");
        assert_eq!(
            (h.hostname, h.app_name, body),
            (Some("dt01"), None, "CEF:0|Darktrace|DCIP|6|1|n|5|a=b")
        );
        let (h, body) = parse("<134>Feb  5 10:00:00 CEF:0|Darktrace|DCIP|6|1|n|5|a=b");
        assert_eq!(
            (h.hostname, h.app_name, body),
            (None, None, "CEF:0|Darktrace|DCIP|6|1|n|5|a=b")
        );
    }

    #[test]
    fn sd_unescapes_and_reports_errors() {
        let raw = r#"[a@1 k="x\"y\\z\]w" e=""][b][bad x][c q="\n"]"#;
        let els: Vec<_> = structured_data(raw).collect();
        assert_eq!(els.len(), 4);
        let a = els[0].as_ref().unwrap();
        assert_eq!(a.id, "a@1");
        assert_eq!(a.params[0].value, "x\"y\\z]w");
        assert!(matches!(a.params[1].value, Cow::Borrowed("")));
        assert!(els[1].as_ref().unwrap().params.is_empty());
        assert_eq!(els[2], Err(SdError::InvalidParam { offset: 28 }));
        assert_eq!(els[3].as_ref().unwrap().params[0].value, "\\n");
        assert_eq!(
            structured_data("[open x=\"1\"").collect::<Vec<_>>(),
            vec![Err(SdError::Unterminated { offset: 0 })]
        );
        assert_eq!(
            structured_data("x").collect::<Vec<_>>(),
            vec![Err(SdError::ExpectedElement { offset: 0 })]
        );
    }

    #[test]
    fn never_panics_on_multibyte_edges() {
        for s in [
            "<1>é",
            "<13>Feb 5 10:00:00 ü",
            "<13>1 ü ü ü ü ü ü",
            "<13>1 - - - - - [é",
            "ü[",
            "<13>Feb  5 10:00:00 h t[é]: x",
            r#"<13>1 - - - - - [a k="\"] x"#,
        ] {
            let _ = parse(s);
        }
    }
}
