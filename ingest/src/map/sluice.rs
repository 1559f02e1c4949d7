//! `sluice`: the native schema. Loses nothing the parser found, for every body type.
//!
//! ```text
//! {
//!   "received_at": "2022-02-12T19:10:23.123Z",      // receive time, UTC, RFC 3339
//!   "source": "darktrace",                          // [sources.NAME]
//!   "peer": "192.0.2.7:514",                        // omitted when unknown
//!   "kind": "darktrace_model_breach",               // EventKind::as_str
//!   "syslog": {
//!     "format": "rfc5424" | "rfc3164" | "none",
//!     "priority": 165, "facility": "local4", "severity": "notice",   // when a PRI was present
//!     "version": 1,
//!     "timestamp": "2022-02-12T19:10:23.000Z",      // UTC
//!     "timestamp_offset_secs": 3600,                // the sender's offset, when it wrote one
//!     "hostname": "...", "app_name": "...", "proc_id": "...", "msg_id": "...",
//!     "structured_data": {"id@1": {"param": "value"}}   // decoded, escapes removed
//!   },                                               // NIL / absent fields are omitted
//!   // exactly one of:
//!   "cef": {"version": "0", "device_vendor": "...", "device_product": "...",
//!           "device_version": "...", "signature_id": "...", "name": "...", "severity": "...",
//!           "prefix": "...",                        // only when non-empty
//!           "extensions": {"key": "value", ...}},   // message order, values unescaped
//!   "json": <the JSON body as received>,
//!   "text": "plain body",
//!   "error": {"kind": "json_syntax", "detail": "..."}, "raw": "<the whole message>"
//! }
//! ```

use crate::event::{Body, Event, SyslogFormat, SyslogHeader, Timestamp};
use crate::map::json_writer::{ObjectWriter, write_str, write_str_contents};

pub fn write(event: &Event<'_>, out: &mut Vec<u8>) {
    let mut o = ObjectWriter::begin(out);
    write_timestamp(o.key("received_at"), event.received.received_at);
    o.str("source", event.received.source);
    if let Some(peer) = event.received.peer {
        let out = o.key("peer");
        out.push(b'"');
        // SocketAddr's Display has no characters that need escaping.
        use std::io::Write;
        let _ = write!(out, "{peer}");
        out.push(b'"');
    }
    o.str("kind", event.kind().as_str());
    {
        let mut s = o.object("syslog");
        write_syslog_header(&mut s, &event.syslog);
        s.end();
    }
    match &event.body {
        Body::Cef(cef) => {
            let mut c = o.object("cef");
            c.str("version", cef.version);
            c.str("device_vendor", cef.device_vendor);
            c.str("device_product", cef.device_product);
            c.str("device_version", cef.device_version);
            c.str("signature_id", cef.signature_id);
            c.str("name", cef.name);
            c.str("severity", cef.severity);
            if !cef.prefix.is_empty() {
                c.str("prefix", cef.prefix);
            }
            let mut x = c.object("extensions");
            for e in &cef.extensions {
                // CEF keys are key bytes only: just the value may need escaping.
                if e.json_clean {
                    x.verbatim_str(e.key, e.value);
                } else {
                    x.str(e.key, e.value);
                }
            }
            x.end();
            c.end();
        }
        Body::Json(json) => json.root().write_json(o.key("json")),
        Body::Text(text) => o.str("text", text),
        Body::Error { kind, detail, .. } => {
            let mut e = o.object("error");
            e.str("kind", kind.as_str());
            e.str("detail", detail);
            e.end();
            o.str("raw", event.raw);
        }
    }
    o.end();
}

/// The syslog header fields shared by every schema that keeps them (see the module docs).
pub(crate) fn write_syslog_header(s: &mut ObjectWriter<'_>, h: &SyslogHeader<'_>) {
    s.str(
        "format",
        match h.format {
            SyslogFormat::Rfc5424 => "rfc5424",
            SyslogFormat::Rfc3164 => "rfc3164",
            SyslogFormat::None => "none",
        },
    );
    if let Some(pri) = h.pri {
        s.u64("priority", pri.value() as u64);
        s.str("facility", pri.facility_name());
        s.str("severity", pri.severity_name());
    }
    if let Some(v) = h.version {
        s.u64("version", v as u64);
    }
    if let Some(ts) = h.timestamp {
        write_timestamp(s.key("timestamp"), ts);
        if let Some(offset) = ts.offset_secs {
            s.i64("timestamp_offset_secs", offset as i64);
        }
    }
    s.opt_str("hostname", h.hostname);
    s.opt_str("app_name", h.app_name);
    s.opt_str("proc_id", h.proc_id);
    s.opt_str("msg_id", h.msg_id);
    if let Some(sd) = h.structured_data {
        write_structured_data(s.key("structured_data"), sd);
    }
}

/// Appends `ts` as a quoted RFC 3339 UTC time: milliseconds, or more digits when the time
/// has them.
pub(crate) fn write_timestamp(out: &mut Vec<u8>, ts: Timestamp) {
    let secs = ts.unix_nanos.div_euclid(1_000_000_000);
    let nanos = ts.unix_nanos.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    let mut buf = [0u8; 40];
    let mut n = 0;
    let mut push = |b: u8| {
        buf[n] = b;
        n += 1;
    };
    push(b'"');
    let year = y.clamp(0, 9999) as u32;
    for div in [1000, 100, 10, 1] {
        push(b'0' + ((year / div) % 10) as u8);
    }
    let two = |v: u32, push: &mut dyn FnMut(u8)| {
        push(b'0' + (v / 10) as u8);
        push(b'0' + (v % 10) as u8);
    };
    push(b'-');
    two(m, &mut push);
    push(b'-');
    two(d, &mut push);
    push(b'T');
    two(sod / 3600, &mut push);
    push(b':');
    two(sod / 60 % 60, &mut push);
    push(b':');
    two(sod % 60, &mut push);
    push(b'.');
    let (frac, digits) = if nanos.is_multiple_of(1_000_000) {
        (nanos / 1_000_000, 3)
    } else if nanos.is_multiple_of(1_000) {
        (nanos / 1_000, 6)
    } else {
        (nanos, 9)
    };
    let mut div = 10u32.pow(digits - 1);
    while div > 0 {
        push(b'0' + ((frac / div) % 10) as u8);
        div /= 10;
    }
    push(b'Z');
    push(b'"');
    out.extend_from_slice(&buf[..n]);
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Decodes RFC 5424 STRUCTURED-DATA (`[id k="v" ...][id2 ...]`) into `{"id":{"k":"v"}}`,
/// removing the `\"`, `\\` and `\]` escapes. Malformed trailing text is kept under `"_raw"`
/// rather than dropped.
pub(crate) fn write_structured_data(out: &mut Vec<u8>, sd: &str) {
    let mut o = ObjectWriter::begin(out);
    let b = sd.as_bytes();
    let mut i = 0;
    let mut ok = true;
    while i < b.len() && ok {
        if b[i] != b'[' {
            ok = false;
            break;
        }
        let id_start = i + 1;
        let mut j = id_start;
        while j < b.len() && !matches!(b[j], b' ' | b']') {
            j += 1;
        }
        let mut element = o.object(&sd[id_start..j]);
        i = j;
        loop {
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            if i >= b.len() {
                ok = false;
                break;
            }
            if b[i] == b']' {
                i += 1;
                break;
            }
            let name_start = i;
            while i < b.len() && b[i] != b'=' {
                i += 1;
            }
            if i + 1 >= b.len() || b[i + 1] != b'"' {
                ok = false;
                break;
            }
            let name = &sd[name_start..i];
            i += 2;
            let out = element.key(name);
            out.push(b'"');
            let mut seg = i;
            let mut closed = false;
            while i < b.len() {
                match b[i] {
                    b'\\' if i + 1 < b.len() && matches!(b[i + 1], b'"' | b'\\' | b']') => {
                        write_str_contents(out, &sd[seg..i]);
                        seg = i + 1;
                        i += 2;
                    }
                    b'"' => {
                        closed = true;
                        break;
                    }
                    _ => i += 1,
                }
            }
            write_str_contents(out, &sd[seg..i]);
            out.push(b'"');
            if !closed {
                ok = false;
                break;
            }
            i += 1;
        }
        element.end();
    }
    if !ok && i < b.len() {
        write_str(o.key("_raw"), &sd[i.min(b.len())..]);
    } else if !ok {
        write_str(o.key("_raw"), sd);
    }
    o.end();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Pri, Received};
    use crate::parse::{ParseOptions, Parser};

    fn ts_string(unix_nanos: i64) -> String {
        let mut out = Vec::new();
        write_timestamp(&mut out, Timestamp::from_unix_nanos(unix_nanos));
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn timestamps_format_as_rfc3339_utc() {
        assert_eq!(ts_string(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            ts_string(1_628_002_089_240_000_000),
            "2021-08-03T14:48:09.240Z"
        );
        assert_eq!(
            ts_string(1_658_110_810_556_194_000),
            "2022-07-18T02:20:10.556194Z"
        );
        assert_eq!(
            ts_string(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(ts_string(-1_000_000), "1969-12-31T23:59:59.999Z");
        // Cross-check a spread of days against chrono.
        for day in (-25_000i64..100_000).step_by(97) {
            let secs = day * 86_400 + 12_345;
            let want = chrono::DateTime::from_timestamp(secs, 0)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string();
            assert_eq!(ts_string(secs * 1_000_000_000), want);
        }
    }

    fn sd(text: &str) -> serde_json::Value {
        let mut out = Vec::new();
        write_structured_data(&mut out, text);
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn structured_data_is_decoded() {
        let v = sd(
            r#"[exampleSDID@32473 iut="3" eventSource="App \"q\" \] \\x"][examplePriority@32473 class="high"]"#,
        );
        assert_eq!(v["exampleSDID@32473"]["iut"], "3");
        assert_eq!(v["exampleSDID@32473"]["eventSource"], r#"App "q" ] \x"#);
        assert_eq!(v["examplePriority@32473"]["class"], "high");
        assert_eq!(sd("[origin]")["origin"], serde_json::json!({}));
        let broken = sd(r#"[a x="1"] junk"#);
        assert_eq!(broken["a"]["x"], "1");
        assert_eq!(broken["_raw"], " junk");
        assert!(sd(r#"[a x="unterminated"#)["_raw"].is_string());
    }

    fn render(body: &str) -> serde_json::Value {
        let mut parser = Parser::new(ParseOptions::default());
        let received = Received {
            source: "test",
            peer: Some("192.0.2.7:514".parse().unwrap()),
            received_at: Timestamp::from_unix_nanos(1_600_000_000_000_000_000),
        };
        let mut event = parser.parse(received, body.as_bytes());
        // Exercise the header fields independently of the syslog parser.
        event.syslog.format = SyslogFormat::Rfc5424;
        event.syslog.pri = Pri::from_value(165);
        event.syslog.version = Some(1);
        event.syslog.hostname = Some("dt.example");
        event.syslog.structured_data = Some(r#"[meta k="v"]"#);
        let mut out = Vec::new();
        write(&event, &mut out);
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn json_body_is_kept_whole() {
        let v = render(r#"{"pbid":7,"model":{"name":"A::B"},"d":"x\\ny"}"#);
        assert_eq!(v["received_at"], "2020-09-13T12:26:40.000Z");
        assert_eq!(v["source"], "test");
        assert_eq!(v["peer"], "192.0.2.7:514");
        assert_eq!(v["kind"], "darktrace_model_breach");
        assert_eq!(v["syslog"]["priority"], 165);
        assert_eq!(v["syslog"]["facility"], "local4");
        assert_eq!(v["syslog"]["severity"], "notice");
        assert_eq!(v["syslog"]["hostname"], "dt.example");
        assert_eq!(v["syslog"]["structured_data"]["meta"]["k"], "v");
        assert_eq!(v["json"]["model"]["name"], "A::B");
        assert_eq!(v["json"]["d"], "x\\ny");
        assert!(v.get("raw").is_none());
    }

    #[test]
    fn errors_keep_kind_and_raw_text() {
        let v = render(r#"{"pbid":7,"model":"#);
        assert_eq!(v["kind"], "error");
        assert_eq!(v["error"]["kind"], "json_syntax");
        assert_eq!(v["raw"], r#"{"pbid":7,"model":"#);
        let v = render("just text");
        assert_eq!(v["kind"], "text");
        assert_eq!(v["text"], "just text");
    }
}
