//! `commonsecuritylog` schema: one Microsoft Sentinel CommonSecurityLog row per event.
//! Dispatch by body; CEF, text and errors here, Darktrace JSON in `darktrace.rs`.
//!
//! Key → column follows `cef-to-commonsecuritylog.md` (newer doc revision), with the casing of
//! the real table where the doc misprints it (`DeviceCustomFloatingPoint1Label`,
//! `DeviceExternalID`, `ProcessID`, `DestinationMACAddress`). Column types follow the table:
//! a value that does not fit its numeric or datetime column is not dropped but written to
//! `AdditionalExtensions` under its CEF key. See `docs/cef.md`.

mod darktrace;

use std::borrow::Cow;

use smallvec::SmallVec;

use crate::event::{Body, Cef, Event, Extension};
use crate::map::json_writer::{
    ByteSink, Cursor, ObjectWriter, write_backslashed_contents, write_str_contents,
};
use crate::parse::LocalZone;
use crate::parse::cef::{
    CUSTOM_KEY_PREFIXES, CustomKey, CustomKind, KeyIndex, custom_key, key_order, parse_timestamp,
};

pub fn write(event: &Event<'_>, out: &mut Vec<u8>) {
    match &event.body {
        Body::Json(json) => darktrace::write(event, json, out),
        Body::Cef(cef) => write_cef(event, cef, out),
        Body::Text(text) => write_text(event, text, None, out),
        Body::Error { kind, detail, text } => {
            write_text(event, text, Some((kind.as_str(), detail)), out)
        }
    }
}

/// How a column's value is typed in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Str,
    /// `int`: 32-bit signed.
    Int,
    /// `long`: 64-bit signed.
    Long,
    Real,
    DateTime,
    /// `cn1..3`: `DeviceCustomNumberN` (int), or `FieldDeviceCustomNumberN` (long) when it
    /// does not fit 32 bits.
    CustomNumber(&'static str),
}

/// CEF key (short or full ArcSight name) → column and type, sorted by [`key_order`] for binary search
/// (a `match` on strings compiles to a linear chain of comparisons).
static COLUMNS: &[(&str, &str, Type)] = &[
    ("in", "ReceivedBytes", Type::Long),
    ("act", "DeviceAction", Type::Str),
    ("app", "ApplicationProtocol", Type::Str),
    ("cat", "DeviceEventCategory", Type::Str),
    ("cnt", "EventCount", Type::Int),
    ("dpt", "DestinationPort", Type::Int),
    ("dst", "DestinationIP", Type::Str),
    ("dtz", "DeviceTimeZone", Type::Str),
    ("dvc", "DeviceAddress", Type::Str),
    ("end", "EndTime", Type::DateTime),
    ("msg", "Message", Type::Str),
    ("out", "SentBytes", Type::Long),
    ("spt", "SourcePort", Type::Int),
    ("src", "SourceIP", Type::Str),
    ("dmac", "DestinationMACAddress", Type::Str),
    ("dpid", "DestinationProcessId", Type::Int),
    ("duid", "DestinationUserID", Type::Str),
    ("smac", "SourceMACAddress", Type::Str),
    ("spid", "SourceProcessId", Type::Int),
    ("suid", "SourceUserID", Type::Str),
    ("type", "EventType", Type::Int),
    ("dhost", "DestinationHostName", Type::Str),
    ("dpriv", "DestinationUserPrivileges", Type::Str),
    ("dproc", "DestinationProcessName", Type::Str),
    ("duser", "DestinationUserName", Type::Str),
    ("fname", "FileName", Type::Str),
    ("fsize", "FileSize", Type::Int),
    ("proto", "Protocol", Type::Str),
    ("shost", "SourceHostName", Type::Str),
    ("spriv", "SourceUserPrivileges", Type::Str),
    ("sproc", "SourceProcessName", Type::Str),
    ("start", "StartTime", Type::DateTime),
    ("suser", "SourceUserName", Type::Str),
    ("dntdom", "DestinationNTDomain", Type::Str),
    ("dvcmac", "DeviceMacAddress", Type::Str),
    ("dvcpid", "ProcessID", Type::Int),
    ("fileId", "FileID", Type::Str),
    ("reason", "Reason", Type::Str),
    ("sntdom", "SourceNTDomain", Type::Str),
    ("bytesIn", "ReceivedBytes", Type::Long),
    ("dvchost", "DeviceName", Type::Str),
    ("endTime", "EndTime", Type::DateTime),
    ("message", "Message", Type::Str),
    ("outcome", "EventOutcome", Type::Str),
    ("request", "RequestURL", Type::Str),
    ("bytesOut", "SentBytes", Type::Long),
    ("fileHash", "FileHash", Type::Str),
    ("fileName", "FileName", Type::Str),
    ("filePath", "FilePath", Type::Str),
    ("fileSize", "FileSize", Type::Int),
    ("fileType", "FileType", Type::Str),
    ("oldFileId", "OldFileID", Type::Str),
    ("startTime", "StartTime", Type::DateTime),
    ("externalId", "ExternalID", Type::Int),
    ("requestUrl", "RequestURL", Type::Str),
    ("sourcePort", "SourcePort", Type::Int),
    ("oldFileHash", "OldFileHash", Type::Str),
    ("oldFileName", "OldFileName", Type::Str),
    ("oldFilePath", "OldFilePath", Type::Str),
    ("oldFileSize", "OldFileSize", Type::Int),
    ("oldFileType", "OldFileType", Type::Str),
    ("deviceAction", "DeviceAction", Type::Str),
    ("eventOutcome", "EventOutcome", Type::Str),
    ("sourceUserId", "SourceUserID", Type::Str),
    ("deviceAddress", "DeviceAddress", Type::Str),
    ("requestMethod", "RequestMethod", Type::Str),
    ("sourceAddress", "SourceIP", Type::Str),
    ("baseEventCount", "EventCount", Type::Int),
    ("deviceFacility", "DeviceFacility", Type::Str),
    ("deviceHostName", "DeviceName", Type::Str),
    ("deviceNtDomain", "DeviceNtDomain", Type::Str),
    ("deviceTimeZone", "DeviceTimeZone", Type::Str),
    ("fileCreateTime", "FileCreateTime", Type::Str),
    ("filePermission", "FilePermission", Type::Str),
    ("requestContext", "RequestContext", Type::Str),
    ("requestCookies", "RequestCookies", Type::Str),
    ("sourceHostName", "SourceHostName", Type::Str),
    ("sourceNtDomain", "SourceNTDomain", Type::Str),
    ("sourceUserName", "SourceUserName", Type::Str),
    ("destinationPort", "DestinationPort", Type::Int),
    ("deviceDirection", "CommunicationDirection", Type::Str),
    ("deviceDnsDomain", "DeviceDnsDomain", Type::Str),
    ("devicePayloadId", "DevicePayloadId", Type::Str),
    ("deviceProcessId", "ProcessID", Type::Int),
    ("sourceDnsDomain", "SourceDnsDomain", Type::Str),
    ("sourceProcessId", "SourceProcessId", Type::Int),
    ("deviceExternalId", "DeviceExternalID", Type::Str),
    ("deviceMacAddress", "DeviceMacAddress", Type::Str),
    ("sourceMacAddress", "SourceMACAddress", Type::Str),
    ("destinationUserId", "DestinationUserID", Type::Str),
    ("deviceProcessName", "ProcessName", Type::Str),
    ("oldFileCreateTime", "OldFileCreateTime", Type::Str),
    ("oldFilePermission", "OldFilePermission", Type::Str),
    ("sourceProcessName", "SourceProcessName", Type::Str),
    ("sourceServiceName", "SourceServiceName", Type::Str),
    ("transportProtocol", "Protocol", Type::Str),
    ("destinationAddress", "DestinationIP", Type::Str),
    ("applicationProtocol", "ApplicationProtocol", Type::Str),
    ("destinationHostName", "DestinationHostName", Type::Str),
    ("destinationNtDomain", "DestinationNTDomain", Type::Str),
    ("destinationUserName", "DestinationUserName", Type::Str),
    ("deviceEventCategory", "DeviceEventCategory", Type::Str),
    ("destinationDnsDomain", "DestinationDnsDomain", Type::Str),
    ("destinationProcessId", "DestinationProcessId", Type::Int),
    ("fileModificationTime", "FileModificationTime", Type::Str),
    ("sourceTranslatedPort", "SourceTranslatedPort", Type::Int),
    ("sourceUserPrivileges", "SourceUserPrivileges", Type::Str),
    ("destinationMacAddress", "DestinationMACAddress", Type::Str),
    (
        "destinationProcessName",
        "DestinationProcessName",
        Type::Str,
    ),
    (
        "destinationServiceName",
        "DestinationServiceName",
        Type::Str,
    ),
    (
        "deviceInboundInterface",
        "DeviceInboundInterface",
        Type::Str,
    ),
    (
        "deviceOutboundInterface",
        "DeviceOutboundInterface",
        Type::Str,
    ),
    (
        "deviceTranslatedAddress",
        "DeviceTranslatedAddress",
        Type::Str,
    ),
    (
        "oldFileModificationTime",
        "OldFileModificationTime",
        Type::Str,
    ),
    (
        "sourceTranslatedAddress",
        "SourceTranslatedAddress",
        Type::Str,
    ),
    (
        "requestClientApplication",
        "RequestClientApplication",
        Type::Str,
    ),
    (
        "destinationTranslatedPort",
        "DestinationTranslatedPort",
        Type::Int,
    ),
    (
        "destinationUserPrivileges",
        "DestinationUserPrivileges",
        Type::Str,
    ),
    (
        "destinationTranslatedAddress",
        "DestinationTranslatedAddress",
        Type::Str,
    ),
];

/// The column a CEF key is written to, or `None` for `AdditionalExtensions`.
#[cfg(test)]
fn column(key: &str) -> Option<(&'static str, Type)> {
    let tail = crate::parse::cef::key_tail(key.as_bytes());
    column_hashed(key, crate::parse::cef::key_hash32(key), tail).map(|c| (c.name(), c.ty))
}

/// A column as the row writer needs it: its type and `,"Name":"` ready to copy.
#[derive(Debug)]
struct Column {
    ty: Type,
    /// `,"Name":"`, zero-padded: copied whole, then [`Column::key_len`] or one byte more
    /// (string columns take the opening quote too).
    prefix: [u8; 48],
    /// Length of `,"Name":`.
    key_len: u8,
    /// The same for every key of the column (`src`, `sourceAddress`): a row holds each
    /// column once (see [`WrittenColumns`]).
    slot: u8,
}

impl Column {
    fn new((name, ty): (&'static str, Type), slot: u8) -> Column {
        let text = format!(",\"{name}\":\"");
        let mut prefix = [0u8; 48];
        prefix[..text.len()].copy_from_slice(text.as_bytes());
        Column {
            ty,
            prefix,
            key_len: (text.len() - 1) as u8,
            slot,
        }
    }

    /// The column's name, read back from the prefix.
    #[cfg(test)]
    fn name(&self) -> &str {
        std::str::from_utf8(&self.prefix[2..usize::from(self.key_len) - 2]).expect("ASCII name")
    }

    /// Writes `,"Name":`, plus the opening quote when `quoted`.
    #[inline(always)]
    fn write_key(&self, w: &mut Cursor<'_>, quoted: bool) {
        w.put_padded(
            &self.prefix,
            usize::from(self.key_len) + usize::from(quoted),
        );
    }
}

/// [`column`] for a key whose [`crate::parse::cef::key_hash32`] is known.
fn column_hashed(key: &str, hash: u32, tail: u128) -> Option<&'static Column> {
    match COLUMN_INDEX.get_hashed(key, hash, tail) {
        Some(hit) => Some(hit),
        // Non-canonical custom spellings (`cs01`) and keys without a column.
        None => custom_column_uncommon(key),
    }
}

/// [`custom_column`] for a spelling the index does not hold (`cs01`): rare, so answered by the
/// index entry of the canonical spelling (`cs1`), which holds the same column.
#[cold]
fn custom_column_uncommon(key: &str) -> Option<&'static Column> {
    COLUMN_INDEX.get(&custom_key(key)?.key())
}

/// [`COLUMNS`] plus every canonical custom-field key (`cs1`, `cn2Label`, …), each with the
/// answer [`column_by_search`] gives for it, hashed for one-probe lookups.
static COLUMN_INDEX: std::sync::LazyLock<KeyIndex<Column>> = std::sync::LazyLock::new(|| {
    let mut slots = std::collections::HashMap::new();
    KeyIndex::new(indexed_keys().into_iter().filter_map(|k| {
        let hit = column_by_search(&k)?;
        assert!(
            slots.len() < WrittenColumns::CAPACITY,
            "a slot for every column"
        );
        let next = slots.len() as u8;
        let slot = *slots.entry(hit.0).or_insert(next);
        Some((k, Column::new(hit, slot)))
    }))
});

/// The columns a row has so far: a CEF record may carry a column twice under two keys (`src`
/// and `sourceAddress`, `cs1` and `cs01`), and a JSON object with a repeated name is refused by
/// strict parsers (Elasticsearch's among them) or keeps only one of the values. The first
/// gets the column; the others go to AdditionalExtensions like keys without one. Four words:
/// every `u8` slot.
type WrittenColumns = crate::map::slots::SlotSet<4>;

fn indexed_keys() -> Vec<String> {
    let mut keys: Vec<String> = COLUMNS.iter().map(|(k, _, _)| (*k).to_owned()).collect();
    for (_, kind) in CUSTOM_KEY_PREFIXES {
        for index in 1..=6 {
            for label in [false, true] {
                keys.push(CustomKey { kind, index, label }.key());
            }
        }
    }
    keys
}

/// The reference lookup the index is built from (and tested against).
fn column_by_search(key: &str) -> Option<(&'static str, Type)> {
    match COLUMNS.binary_search_by(|(k, _, _)| key_order(k, key)) {
        Ok(i) => Some((COLUMNS[i].1, COLUMNS[i].2)),
        Err(_) => custom_column(key),
    }
}

fn custom_column(key: &str) -> Option<(&'static str, Type)> {
    use Type::*;
    let ck = custom_key(key)?;
    if !ck.in_spec() {
        return None;
    }
    let i = ck.index as usize - 1;
    macro_rules! pick {
        ($values:expr, $labels:expr, $ty:expr) => {
            if ck.label {
                ($labels[i], Str)
            } else {
                ($values[i], $ty)
            }
        };
    }
    Some(match ck.kind {
        CustomKind::String => pick!(
            [
                "DeviceCustomString1",
                "DeviceCustomString2",
                "DeviceCustomString3",
                "DeviceCustomString4",
                "DeviceCustomString5",
                "DeviceCustomString6"
            ],
            [
                "DeviceCustomString1Label",
                "DeviceCustomString2Label",
                "DeviceCustomString3Label",
                "DeviceCustomString4Label",
                "DeviceCustomString5Label",
                "DeviceCustomString6Label"
            ],
            Str
        ),
        CustomKind::Number => {
            const LONG: [&str; 3] = [
                "FieldDeviceCustomNumber1",
                "FieldDeviceCustomNumber2",
                "FieldDeviceCustomNumber3",
            ];
            pick!(
                [
                    "DeviceCustomNumber1",
                    "DeviceCustomNumber2",
                    "DeviceCustomNumber3"
                ],
                [
                    "DeviceCustomNumber1Label",
                    "DeviceCustomNumber2Label",
                    "DeviceCustomNumber3Label"
                ],
                CustomNumber(LONG[i])
            )
        }
        CustomKind::FloatingPoint => pick!(
            [
                "DeviceCustomFloatingPoint1",
                "DeviceCustomFloatingPoint2",
                "DeviceCustomFloatingPoint3",
                "DeviceCustomFloatingPoint4"
            ],
            [
                "DeviceCustomFloatingPoint1Label",
                "DeviceCustomFloatingPoint2Label",
                "DeviceCustomFloatingPoint3Label",
                "DeviceCustomFloatingPoint4Label"
            ],
            Real
        ),
        CustomKind::Ipv6Address => pick!(
            [
                "DeviceCustomIPv6Address1",
                "DeviceCustomIPv6Address2",
                "DeviceCustomIPv6Address3",
                "DeviceCustomIPv6Address4"
            ],
            [
                "DeviceCustomIPv6Address1Label",
                "DeviceCustomIPv6Address2Label",
                "DeviceCustomIPv6Address3Label",
                "DeviceCustomIPv6Address4Label"
            ],
            Str
        ),
        CustomKind::FlexString => pick!(
            ["FlexString1", "FlexString2"],
            ["FlexString1Label", "FlexString2Label"],
            Str
        ),
        CustomKind::FlexNumber => pick!(
            ["FlexNumber1", "FlexNumber2"],
            ["FlexNumber1Label", "FlexNumber2Label"],
            Int
        ),
        CustomKind::DeviceCustomDate => {
            pick!(
                ["DeviceCustomDate1", "DeviceCustomDate2"],
                ["DeviceCustomDate1Label", "DeviceCustomDate2Label"],
                Str
            )
        }
        CustomKind::FlexDate => pick!(["FlexDate1"], ["FlexDate1Label"], Str),
    })
}

/// Writes the extension's value to its column; `false` when it does not fit the column's type.
fn write_typed(
    w: &mut Cursor<'_>,
    col: &Column,
    extension: &Extension<'_>,
    dtz: Option<&str>,
    zone: &LocalZone,
) -> bool {
    let value: &str = extension.value;
    let int = |w: &mut Cursor<'_>, n: i64| {
        w.extend_small(itoa::Buffer::new().format(n).as_bytes());
    };
    match col.ty {
        Type::Str => {
            col.write_key(w, true);
            if extension.json_clean {
                w.extend_small(value.as_bytes());
            } else {
                write_str_contents(w, value);
            }
            w.push(b'"');
            true
        }
        // Digits as a sender writes them are already the JSON number: copied, not parsed and
        // formatted again.
        Type::Int | Type::CustomNumber(_) if is_plain_number(value, 9) => {
            col.write_key(w, false);
            w.extend_small(value.as_bytes());
            true
        }
        Type::Long if is_plain_number(value, 18) => {
            col.write_key(w, false);
            w.extend_small(value.as_bytes());
            true
        }
        Type::Int => match value.trim().parse::<i32>() {
            Ok(n) => {
                col.write_key(w, false);
                int(w, i64::from(n));
                true
            }
            Err(_) => false,
        },
        Type::Long => match value.trim().parse::<i64>() {
            Ok(n) => {
                col.write_key(w, false);
                int(w, n);
                true
            }
            Err(_) => false,
        },
        Type::Real => match value.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => {
                col.write_key(w, false);
                w.extend_small(ryu::Buffer::new().format_finite(f).as_bytes());
                true
            }
            _ => false,
        },
        Type::DateTime => match parse_timestamp(value.trim(), dtz, zone) {
            Some(ms) => {
                col.write_key(w, false);
                w.extend_small(&rfc3339_millis(ms));
                true
            }
            None => false,
        },
        Type::CustomNumber(long_col) => match value.trim().parse::<i64>() {
            Ok(n) => {
                match i32::try_from(n) {
                    Ok(small) => {
                        col.write_key(w, false);
                        int(w, i64::from(small));
                    }
                    Err(_) => {
                        w.extend(b",\"");
                        w.extend(long_col.as_bytes());
                        w.extend(b"\":");
                        int(w, n);
                    }
                }
                true
            }
            Err(_) => false,
        },
    }
}

/// `value` is 1 to `max_digits` ASCII digits without a leading zero (or is `0`): the canonical
/// text of a non-negative number that fits in `max_digits` digits, so exactly what formatting
/// its parsed value would give.
#[inline(always)]
fn is_plain_number(value: &str, max_digits: usize) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= max_digits
        && (b[0] != b'0' || b.len() == 1)
        && b.iter().all(u8::is_ascii_digit)
}

/// `LogSeverity`: the header severity as sent, with the doc's words in the doc's spelling.
fn log_severity(severity: &str) -> &str {
    const WORDS: [&str; 5] = ["Unknown", "Low", "Medium", "High", "Very-High"];
    let s = severity.trim();
    WORDS
        .iter()
        .find(|w| w.eq_ignore_ascii_case(s))
        .copied()
        .unwrap_or(s)
}

fn write_cef(event: &Event<'_>, cef: &Cef<'_>, out: &mut Vec<u8>) {
    // One pass for both (the first of each, as `Cef::get` finds it); byte-pattern matches
    // compile to inline compares.
    let (mut dtz, mut rt) = (None, None);
    for e in &cef.extensions {
        match e.key.as_bytes() {
            b"dtz" if dtz.is_none() => dtz = Some(e.value),
            b"rt" if rt.is_none() => rt = Some(e.value),
            _ => {}
        }
    }
    let rt_millis = rt.and_then(|rt| parse_timestamp(rt, dtz, event.zone));
    // Room for a typical row; the cursor grows the buffer if a row needs more.
    let mut w = Cursor::new(out, 2 * event.raw.len() + 1024);
    // Formatted once: with a valid `rt` it is both TimeGenerated and ReceiptTime.
    let time_generated =
        rfc3339_millis(rt_millis.unwrap_or_else(|| event.received.received_at.unix_millis()));
    w.extend(b"{\"TimeGenerated\":");
    w.extend_small(&time_generated);
    // `,"Key":"value"` for the header's text fields, keys from this file.
    let text = |w: &mut Cursor<'_>, key: &'static [u8], value: &str| {
        w.extend_small(key);
        write_str_contents(w, value);
        w.push(b'"');
    };
    // The same for a header field the parser found clean: copied without a scan.
    let field = |w: &mut Cursor<'_>, key: &'static [u8], value: &str, clean_bit: u8| {
        if cef.header_json_clean & clean_bit != 0 {
            w.extend_small(key);
            w.extend_small(value.as_bytes());
            w.push(b'"');
        } else {
            text(w, key, value);
        }
    };
    if let Some(computer) = computer(event) {
        text(&mut w, b",\"Computer\":\"", &computer);
    }
    field(
        &mut w,
        b",\"DeviceVendor\":\"",
        cef.device_vendor,
        Cef::VENDOR_CLEAN,
    );
    field(
        &mut w,
        b",\"DeviceProduct\":\"",
        cef.device_product,
        Cef::PRODUCT_CLEAN,
    );
    field(
        &mut w,
        b",\"DeviceVersion\":\"",
        cef.device_version,
        Cef::VERSION_CLEAN,
    );
    field(
        &mut w,
        b",\"DeviceEventClassID\":\"",
        cef.signature_id,
        Cef::SIGNATURE_ID_CLEAN,
    );
    field(&mut w, b",\"Activity\":\"", cef.name, Cef::NAME_CLEAN);
    // A word of the doc's, or the header's text trimmed: clean either way when the field is.
    field(
        &mut w,
        b",\"LogSeverity\":\"",
        log_severity(cef.severity),
        Cef::SEVERITY_CLEAN,
    );
    match (rt, rt_millis) {
        (_, Some(_)) => {
            w.extend_small(b",\"ReceiptTime\":");
            w.extend_small(&time_generated);
        }
        (Some(rt), None) => text(&mut w, b",\"ReceiptTime\":\"", rt),
        (None, None) => {}
    }

    // Which extensions did not get a column, so AdditionalExtensions needs no allocation.
    let mut additional: SmallVec<[u32; 16]> = SmallVec::new();
    let mut columns = WrittenColumns::new();
    for (i, e) in cef.extensions.iter().enumerate() {
        // `rt` is already ReceiptTime; an empty value carries nothing to keep.
        if e.key.as_bytes() == b"rt" || e.value.is_empty() {
            continue;
        }
        let written = match column_hashed(e.key, e.key_hash, e.key_tail) {
            // A value the column's type refuses leaves the column free for a later alias.
            Some(col) if !columns.contains(col.slot.into()) => {
                let written = write_typed(&mut w, col, e, dtz, event.zone);
                if written {
                    columns.insert(col.slot.into());
                }
                written
            }
            _ => false,
        };
        if !written {
            additional.push(i as u32);
        }
    }
    if !additional.is_empty() {
        w.extend_small(b",\"AdditionalExtensions\":\"");
        for (n, &i) in additional.iter().enumerate() {
            let e = &cef.extensions[i as usize];
            if n > 0 {
                w.push(b';');
            }
            // Key bytes (`[A-Za-z0-9_.,\[\]]`) never need JSON escaping.
            debug_assert!(
                e.key
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\'))
            );
            w.extend_small(e.key.as_bytes());
            w.push(b'=');
            write_additional_value(&mut w, e.value);
        }
        w.push(b'"');
    }
    w.push(b'}');
}

/// `Computer`: the syslog hostname, else the sender's address, as rsyslog fills HOSTNAME for
/// the Azure Monitor Agent (which then writes it to this column).
fn computer<'a>(event: &Event<'a>) -> Option<Cow<'a, str>> {
    match event.syslog.hostname {
        Some(host) => Some(Cow::Borrowed(host)),
        None => event
            .received
            .sender_ip()
            .map(|ip| Cow::Owned(ip.to_string())),
    }
}

/// A value inside `AdditionalExtensions`: `\`, `;` and `=` are backslash-escaped (and the text
/// JSON-escaped) so that the `key=value;key=value` list splits unambiguously.
#[inline]
fn write_additional_value<S: ByteSink + ?Sized>(out: &mut S, value: &str) {
    write_backslashed_contents(out, value, [b';', b'=']);
}

fn write_text(event: &Event<'_>, text: &str, error: Option<(&str, &String)>, out: &mut Vec<u8>) {
    let mut o = ObjectWriter::begin(out);
    let time = event.syslog.timestamp.unwrap_or(event.received.received_at);
    write_rfc3339_millis(o.key("TimeGenerated"), time.unix_millis());
    if let Some(computer) = computer(event) {
        o.str("Computer", &computer);
    }
    o.str("DeviceVendor", "");
    o.str("DeviceProduct", "");
    o.str("Message", text);
    if let Some((kind, detail)) = error {
        let out = o.key("AdditionalExtensions");
        out.extend_from_slice(b"\"sluiceParseError=");
        write_additional_value(out, kind);
        out.extend_from_slice(b";sluiceParseErrorDetail=");
        write_additional_value(out, detail);
        out.push(b'"');
    }
    o.end();
}

/// Appends `"YYYY-MM-DDTHH:MM:SS.mmmZ"` (quoted) for Unix milliseconds.
pub(crate) fn write_rfc3339_millis(out: &mut Vec<u8>, millis: i64) {
    out.extend_from_slice(&rfc3339_millis(millis));
}

/// `"YYYY-MM-DDTHH:MM:SS.mmmZ"` (quoted) for Unix milliseconds.
fn rfc3339_millis(millis: i64) -> [u8; 26] {
    let secs = millis.div_euclid(1000);
    let ms = millis.rem_euclid(1000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    let mut buf = *b"\"0000-00-00T00:00:00.000Z\"";
    let y = y.clamp(0, 9999) as u32;
    put2(&mut buf, 1, y / 100);
    put2(&mut buf, 3, y % 100);
    put2(&mut buf, 6, m);
    put2(&mut buf, 9, d);
    put2(&mut buf, 12, sod / 3600);
    put2(&mut buf, 15, sod / 60 % 60);
    put2(&mut buf, 18, sod % 60);
    buf[21] = b'0' + (ms / 100) as u8;
    put2(&mut buf, 22, ms % 100);
    buf
}

/// Writes `n` (< 100) as two digits at `buf[at..at + 2]`.
#[inline(always)]
fn put2(buf: &mut [u8], at: usize, n: u32) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let i = 2 * n as usize;
    buf[at..at + 2].copy_from_slice(&PAIRS[i..i + 2]);
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Received, Timestamp};

    /// An event as the syslog parser hands it over: host `dt-master`, body parsed here.
    fn event<'a>(body: &'a str, scratch: &'a mut String) -> Event<'a> {
        let mut syslog = crate::parse::no_header();
        syslog.hostname = Some("dt-master");
        syslog.timestamp = Some(Timestamp::from_unix_nanos(1_600_000_000_000_000_000));
        let received = Received {
            source: "t",
            peer: None,
            received_at: Timestamp::from_unix_nanos(1_700_000_000_123_000_000),
        };
        let parsed = crate::parse::parse_cef_or_text(body, scratch);
        Event {
            received,
            zone: &LocalZone::Fixed(0),
            raw: body,
            syslog,
            body: parsed,
        }
    }

    fn row(body: &str) -> serde_json::Value {
        let mut out = Vec::new();
        write(&event(body, &mut String::new()), &mut out);
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn a_column_given_twice_under_two_keys_is_written_once() {
        let body = "CEF:0|Darktrace|DCIP|6.1|100|Breach|5|src=10.0.0.1 cs1=first \
                    sourceAddress=10.0.0.2 cs01=second spt=notanumber sourcePort=443";
        let mut out = Vec::new();
        write(&event(body, &mut String::new()), &mut out);
        let text = String::from_utf8(out).unwrap();
        for column in ["SourceIP", "DeviceCustomString1", "SourcePort"] {
            assert_eq!(
                text.matches(&format!("\"{column}\":")).count(),
                1,
                "{column}: {text}"
            );
        }
        let r = row(body);
        assert_eq!(r["SourceIP"], "10.0.0.1");
        assert_eq!(r["DeviceCustomString1"], "first");
        // A value the column refuses leaves it to a later alias.
        assert_eq!(r["SourcePort"], 443);
        assert_eq!(
            r["AdditionalExtensions"],
            "sourceAddress=10.0.0.2;cs01=second;spt=notanumber"
        );
    }

    proptest::proptest! {
        /// A value copied as it is reads back as the same number the parse-and-format path
        /// writes, so the fast path changes no row.
        #[test]
        fn plain_numbers_are_their_own_formatting(value in "[-+ 0-9]{0,20}") {
            if is_plain_number(&value, 9) {
                let n: i32 = value.parse().unwrap();
                proptest::prop_assert_eq!(n.to_string(), value.as_str());
            }
            if is_plain_number(&value, 18) {
                let n: i64 = value.parse().unwrap();
                proptest::prop_assert_eq!(n.to_string(), value.as_str());
            }
        }
    }

    #[test]
    fn numbers_that_are_not_plain_still_land_in_their_columns() {
        let r = row("CEF:0|v|p|1|s|n|5|spt=007 dpt= 80 cnt=+3 cn1=4294967296 in=-5 cn2=0");
        assert_eq!(r["SourcePort"], 7);
        assert_eq!(r["DestinationPort"], 80);
        assert_eq!(r["EventCount"], 3);
        assert_eq!(r["FieldDeviceCustomNumber1"], 4294967296i64);
        assert_eq!(r["ReceivedBytes"], -5);
        assert_eq!(r["DeviceCustomNumber2"], 0);
        assert!(
            ["0", "00", "1", "999999999"]
                .iter()
                .all(|v| is_plain_number(v, 9) == (*v != "00"))
        );
    }

    #[test]
    fn column_table_is_sorted_and_unique() {
        assert!(
            COLUMNS
                .windows(2)
                .all(|w| crate::parse::cef::key_order(w[0].0, w[1].0).is_lt())
        );
        assert_eq!(column("src"), Some(("SourceIP", Type::Str)));
        assert_eq!(column("sourceAddress"), Some(("SourceIP", Type::Str)));
        assert_eq!(
            column("cfp2Label"),
            Some(("DeviceCustomFloatingPoint2Label", Type::Str))
        );
        assert_eq!(column("cfp15"), None);
        assert_eq!(column("darktraceUrl"), None);
        assert_eq!(column("cs01"), Some(("DeviceCustomString1", Type::Str)));
        // The hashed index answers exactly as the reference search, for every key it holds
        // and for near misses.
        for (k, _, _) in COLUMNS {
            assert_eq!(column(k), column_by_search(k), "{k}");
            let upper = k.to_ascii_uppercase();
            assert_eq!(column(&upper), column_by_search(&upper), "{upper}");
            let longer = format!("{k}x");
            assert_eq!(column(&longer), column_by_search(&longer), "{longer}");
        }
        for k in [
            "cs6Label",
            "cn3",
            "cn4",
            "c6a4Label",
            "flexDate1",
            "flexDate2",
            "",
            "x",
        ] {
            assert_eq!(column(k), column_by_search(k), "{k}");
        }
    }

    #[test]
    fn column_names_need_no_json_escaping() {
        let clean = |s: &str| s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
        assert!(COLUMNS.iter().all(|(_, col, _)| clean(col)));
        for (key, _, _) in COLUMNS {
            for k in [key.to_string(), format!("cs{}", key.len() % 7)] {
                if let Some((col, ty)) = column(&k) {
                    assert!(clean(col), "{col}");
                    if let Type::CustomNumber(long) = ty {
                        assert!(clean(long), "{long}");
                    }
                }
            }
        }
    }

    #[test]
    fn rfc3339_matches_chrono() {
        for ms in [
            0i64,
            1_500_450_621_127,
            -1,
            951_782_400_000,
            4_102_444_799_999,
        ] {
            let mut out = Vec::new();
            write_rfc3339_millis(&mut out, ms);
            let want = chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .format("\"%Y-%m-%dT%H:%M:%S%.3fZ\"")
                .to_string();
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    #[test]
    fn darktrace_cef_row() {
        let r = row(concat!(
            "CEF:0|Darktrace|DCIP|6.1|537|Antigena/Network/Compliance/Antigena RDP Block|low| ",
            "externalId=1462565 dvc=10.0.0.1 dvchost=master.example dst=10.0.0.9 dpt=3389 dhost=ws9 ",
            "darktraceUrl=https://master.example/#modelbreach/1462565 rt=1709633472000 cs1=Model\\=RDP cs1Label=Reason ",
            "cn1=5000000000 cn1Label=Big cfp15=3.5 spt=notaport aid=3mAvC02UBABCAa72iNm4jZA\\=\\= msg=a;b"
        ));
        assert_eq!(r["TimeGenerated"], "2024-03-05T10:11:12.000Z");
        assert_eq!(r["ReceiptTime"], "2024-03-05T10:11:12.000Z");
        assert_eq!(r["Computer"], "dt-master");
        assert_eq!(r["DeviceVendor"], "Darktrace");
        assert_eq!(r["DeviceEventClassID"], "537");
        assert_eq!(
            r["Activity"],
            "Antigena/Network/Compliance/Antigena RDP Block"
        );
        assert_eq!(r["LogSeverity"], "Low");
        assert_eq!(r["ExternalID"], 1462565);
        assert_eq!(r["DeviceAddress"], "10.0.0.1");
        assert_eq!(r["DeviceName"], "master.example");
        assert_eq!(r["DestinationIP"], "10.0.0.9");
        assert_eq!(r["DestinationPort"], 3389);
        assert_eq!(r["DestinationHostName"], "ws9");
        assert_eq!(r["DeviceCustomString1"], "Model=RDP");
        assert_eq!(r["DeviceCustomString1Label"], "Reason");
        assert_eq!(r["FieldDeviceCustomNumber1"], 5_000_000_000i64);
        assert_eq!(r["DeviceCustomNumber1Label"], "Big");
        assert_eq!(r["Message"], "a;b");
        assert!(r.get("SourcePort").is_none());
        assert_eq!(
            r["AdditionalExtensions"],
            "darktraceUrl=https://master.example/#modelbreach/1462565;cfp15=3.5;spt=notaport;aid=3mAvC02UBABCAa72iNm4jZA\\=\\="
        );
    }

    #[test]
    fn zoneless_rt_uses_dtz_and_falls_back_to_receive_time() {
        let r = row("CEF:0|V|P|1|1|n|Very-High| rt=Jul 19 2017 10:50:21.127 dtz=Europe/Moscow");
        assert_eq!(r["TimeGenerated"], "2017-07-19T07:50:21.127Z");
        assert_eq!(r["DeviceTimeZone"], "Europe/Moscow");
        let r = row("CEF:0|V|P|1|1|n|7| rt=yesterday");
        assert_eq!(r["TimeGenerated"], "2023-11-14T22:13:20.123Z");
        assert_eq!(r["ReceiptTime"], "yesterday");
        assert_eq!(r["LogSeverity"], "7");
    }

    #[test]
    fn zoneless_dates_without_dtz_take_the_source_zone() {
        let paris = LocalZone::parse("Europe/Paris").unwrap();
        let row_in_paris = |body: &str| -> serde_json::Value {
            let mut scratch = String::new();
            let mut e = event(body, &mut scratch);
            e.zone = &paris;
            let mut out = Vec::new();
            write(&e, &mut out);
            serde_json::from_slice(&out).unwrap()
        };
        let r = row_in_paris(
            "CEF:0|V|P|1|1|n|5| rt=Sep 07 2018 14:50:39 end=Jan 07 2018 14:50:39 \
             start=Jan 07 2018 14:50:39 +00:00",
        );
        assert_eq!(r["TimeGenerated"], "2018-09-07T12:50:39.000Z");
        assert_eq!(r["ReceiptTime"], "2018-09-07T12:50:39.000Z");
        assert_eq!(r["EndTime"], "2018-01-07T13:50:39.000Z");
        assert_eq!(r["StartTime"], "2018-01-07T14:50:39.000Z");
        // An empty `dtz` names no zone; a real one wins over the source's.
        let r = row_in_paris("CEF:0|V|P|1|1|n|5| rt=Sep 07 2018 14:50:39 dtz=");
        assert_eq!(r["ReceiptTime"], "2018-09-07T12:50:39.000Z");
        let r = row_in_paris("CEF:0|V|P|1|1|n|5| rt=Sep 07 2018 14:50:39 dtz=UTC");
        assert_eq!(r["ReceiptTime"], "2018-09-07T14:50:39.000Z");
    }

    fn row_from(line: &str, peer: Option<&str>) -> serde_json::Value {
        crate::map::mapped_from(crate::map::Schema::Commonsecuritylog, line, peer)
    }

    #[test]
    fn without_a_syslog_hostname_the_sender_is_the_computer() {
        let cef = "CEF:0|V|P|1|1|n|5|src=1.2.3.4";
        assert_eq!(row_from(cef, Some("10.0.0.7:5000"))["Computer"], "10.0.0.7");
        assert_eq!(
            row_from(cef, Some("[2001:db8::1]:514"))["Computer"],
            "2001:db8::1"
        );
        // A dual-stack socket sees IPv4 senders as mapped IPv6 addresses.
        assert_eq!(
            row_from("hello", Some("[::ffff:10.0.0.8]:514"))["Computer"],
            "10.0.0.8"
        );
        let with_host = format!("<13>Jan  5 10:00:00 fw01 {cef}");
        assert_eq!(
            row_from(&with_host, Some("10.0.0.7:5000"))["Computer"],
            "fw01"
        );
        assert!(row_from(cef, None).get("Computer").is_none());
    }

    #[test]
    fn text_and_error_rows_keep_the_text() {
        let r = row("hello world");
        assert_eq!(r["Message"], "hello world");
        assert_eq!(r["DeviceVendor"], "");
        assert_eq!(r["Computer"], "dt-master");
        assert_eq!(r["TimeGenerated"], "2020-09-13T12:26:40.000Z");
        let r = row("CEF:0|a|b|c|");
        assert!(r["Message"].as_str().unwrap().contains("CEF:0|a|b|c|"));
        assert!(
            r["AdditionalExtensions"]
                .as_str()
                .unwrap()
                .starts_with("sluiceParseError=cef_header;")
        );
    }
}
