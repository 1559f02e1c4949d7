//! Darktrace JSON → Microsoft Sentinel `CommonSecurityLog` row.
//!
//! Column names follow `cef-to-commonsecuritylog.md` (the same names the CEF mapping uses), so
//! Darktrace alerts land in the same columns whether the appliance sends CEF or JSON:
//!
//! | column | model breach | AI Analyst | system status | audit |
//! |---|---|---|---|---|
//! | TimeGenerated | `time` / `creationTime` | `createdAt` | `last_updated` | syslog time |
//! | DeviceVendor / DeviceProduct | `Darktrace` / `DCIP` | same | same | same |
//! | DeviceEventClassID | `model.pid` | `summariser` | `name` | `audit` |
//! | Activity | `model.name` | `title` | `alert_name` | `description` |
//! | DeviceEventCategory | `model.category` | `category` | `priority_level` | – |
//! | LogSeverity | `score`×10 | `aiaScore`/10 | `priority`/10 | `1` |
//! | Source* | `device.ip/hostname/macaddress` | first of `breachDevices` | – | `ip`, `username` |
//! | DeviceAddress / DeviceName | – | – | `ip_address` / `hostname` | – |
//! | Destination* | triggered filters `Destination IP` / `Connection hostname` / `Destination port` | – | – | – |
//! | ExternalID | `pbid` | – | – | – |
//! | RequestURL | `breachUrl` | `incidentEventUrl` | `url` | `endpoint` (+ RequestMethod) |
//! | Message | `model.description` | `summary` | `message` | `description` |
//!
//! Whenever no event time is found the syslog header's time, then the receive time, is used.
//! `Computer` is the syslog HOSTNAME.
//!
//! **LogSeverity** is the CEF 0–10 scale as a string (0–3 Low, 4–6 Medium, 7–8 High, 9–10
//! Very-High): a model breach's `score` is a 0–1 breach probability, ×10; AI Analyst
//! `aiaScore` (or `groupScore`) and system status `priority` are 0–100, ÷10; rounded, clamped.
//!
//! **AdditionalExtensions** holds every other leaf of the object as `path=value;`, path
//! segments joined with `.` and array elements by index (`device.ips.0.ip=…`); nulls and
//! empty containers are left out. In values `\` and `;` are escaped as `\\` and `\;` so the
//! list splits unambiguously. Unrecognised JSON bodies get only TimeGenerated, Computer,
//! Message (the body) and AdditionalExtensions.

use crate::event::{Event, EventKind};
use crate::map::json_writer::{ObjectWriter, write_backslashed_short};
use crate::map::sluice::write_timestamp;
use crate::parse::json::{self, JsonBody, JsonRef};

pub(super) fn write(event: &Event<'_>, body: &JsonBody<'_>, out: &mut Vec<u8>) {
    let root = body.root();
    let kind = body.kind;
    let mut o = ObjectWriter::begin(out);
    let time = json::darktrace_event_time(kind, root)
        .or(event.syslog.timestamp)
        .unwrap_or(event.received.received_at);
    write_timestamp(o.key("TimeGenerated"), time);
    o.opt_str("Computer", event.syslog.hostname);

    let str_at = |path: &[&str]| {
        root.path(path)
            .and_then(|v| v.str())
            .filter(|s| !s.is_empty())
    };
    let mut skip: &[&str] = &[];
    if kind != EventKind::Json {
        o.str("DeviceVendor", "Darktrace");
        o.str("DeviceProduct", "DCIP");
    }
    match kind {
        EventKind::DarktraceModelBreach => {
            let model = json::darktrace_model(root);
            let model_str = |k: &str| {
                model
                    .and_then(|m| m.get(k))
                    .and_then(|v| v.str())
                    .filter(|s| !s.is_empty())
            };
            if let Some(pid) = model.and_then(|m| m.get("pid")) {
                text_column(&mut o, "DeviceEventClassID", pid);
            }
            o.opt_str("Activity", model_str("name"));
            o.opt_str("DeviceEventCategory", model_str("category"));
            if let Some(score) = root.get("score").and_then(|v| v.f64_lenient()) {
                severity(&mut o, score * 10.0);
            }
            o.opt_str("SourceIP", str_at(&["device", "ip"]));
            o.opt_str("SourceHostName", str_at(&["device", "hostname"]));
            o.opt_str("SourceMACAddress", str_at(&["device", "macaddress"]));
            let conn = json::darktrace_triggered_connection(root);
            if let Some(ip) = conn.destination_ip.and_then(|v| v.str()) {
                o.str("DestinationIP", ip);
            }
            if let Some(host) = conn.destination_host.and_then(|v| v.str()) {
                o.str("DestinationHostName", host);
            }
            if let Some(port) = conn.destination_port.and_then(port_number) {
                o.i64("DestinationPort", port);
            }
            if let Some(pbid) = root.get("pbid").and_then(|v| v.i64()) {
                o.i64("ExternalID", pbid);
            }
            o.opt_str("RequestURL", str_at(&["breachUrl"]));
            o.opt_str("Message", model_str("description"));
            skip = &[
                "pbid",
                "breachUrl",
                "device.ip",
                "device.hostname",
                "device.macaddress",
            ];
        }
        EventKind::DarktraceAiAnalyst => {
            o.opt_str("DeviceEventClassID", str_at(&["summariser"]));
            o.opt_str("Activity", str_at(&["title"]));
            o.opt_str("DeviceEventCategory", str_at(&["category"]));
            if let Some(score) = root
                .get("aiaScore")
                .or_else(|| root.get("groupScore"))
                .and_then(|v| v.f64_lenient())
            {
                severity(&mut o, score / 10.0);
            }
            if let Some(device) = root.get("breachDevices").and_then(|d| d.items().next()) {
                o.opt_str("SourceIP", device.get("ip").and_then(|v| v.str()));
                o.opt_str(
                    "SourceHostName",
                    device.get("hostname").and_then(|v| v.str()),
                );
                o.opt_str("SourceMACAddress", device.get("mac").and_then(|v| v.str()));
            }
            o.opt_str("RequestURL", str_at(&["incidentEventUrl"]));
            o.opt_str("Message", str_at(&["summary"]));
            skip = &["summariser", "title", "incidentEventUrl", "summary"];
        }
        EventKind::DarktraceSystemStatus => {
            o.opt_str("DeviceEventClassID", str_at(&["name"]));
            o.opt_str("Activity", str_at(&["alert_name"]));
            o.opt_str("DeviceEventCategory", str_at(&["priority_level"]));
            if let Some(priority) = root.get("priority").and_then(|v| v.f64_lenient()) {
                severity(&mut o, priority / 10.0);
            }
            o.opt_str("DeviceAddress", str_at(&["ip_address"]));
            o.opt_str("DeviceName", str_at(&["hostname"]));
            o.opt_str("RequestURL", str_at(&["url"]));
            o.opt_str("Message", str_at(&["message"]));
            skip = &[
                "name",
                "alert_name",
                "priority_level",
                "ip_address",
                "hostname",
                "url",
                "message",
            ];
        }
        EventKind::DarktraceAudit => {
            o.str("DeviceEventClassID", "audit");
            o.opt_str("Activity", str_at(&["description"]));
            o.str("LogSeverity", "1");
            o.opt_str("SourceIP", str_at(&["ip"]));
            o.opt_str("SourceUserName", str_at(&["username"]));
            o.opt_str("RequestMethod", str_at(&["method"]));
            o.opt_str("RequestURL", str_at(&["endpoint"]));
            o.opt_str("Message", str_at(&["description"]));
            skip = &["ip", "username", "method", "endpoint", "description"];
        }
        _ => {
            if !root.is_object() {
                let out = o.key("Message");
                let mut text = Vec::new();
                root.write_json(&mut text);
                crate::map::json_writer::write_str(out, &String::from_utf8_lossy(&text));
            }
        }
    }
    if root.is_object() {
        let out = o.key("AdditionalExtensions");
        out.push(b'"');
        write_flattened(out, root, skip);
        out.push(b'"');
    }
    o.end();
}

/// A string column from a value that may be a number or a string.
fn text_column(o: &mut ObjectWriter<'_>, key: &str, value: JsonRef<'_, '_>) {
    if let Some(s) = value.str() {
        o.str(key, s);
    } else if let Some(n) = value.i64() {
        let out = o.key(key);
        out.push(b'"');
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.push(b'"');
    }
}

fn severity(o: &mut ObjectWriter<'_>, level: f64) {
    if level.is_finite() {
        let level = level.round().clamp(0.0, 10.0) as i64;
        let out = o.key("LogSeverity");
        out.push(b'"');
        out.extend_from_slice(itoa::Buffer::new().format(level).as_bytes());
        out.push(b'"');
    }
}

fn port_number(value: JsonRef<'_, '_>) -> Option<i64> {
    value
        .i64()
        .or_else(|| value.str().and_then(|s| s.trim().parse::<i64>().ok()))
        .filter(|p| (0..=65_535).contains(p))
}

enum Level<'t, 'a> {
    Object(json::Entries<'t, 'a>),
    Array(json::Items<'t, 'a>, usize),
}

/// Writes every scalar leaf under `root` as `path=value;` (escaped for a JSON string), except
/// the top-level paths in `skip`. Iterative, so nesting depth costs heap, not stack.
fn write_flattened(out: &mut Vec<u8>, root: JsonRef<'_, '_>, skip: &[&str]) {
    // Kept escaped as it is built, so that each leaf copies its path instead of escaping the
    // whole of it again. Escaping only adds bytes next to a `\`, which no `skip` entry holds,
    // so an escaped path equals an entry exactly when the path itself does.
    let mut path: Vec<u8> = Vec::with_capacity(256);
    // A `Vec`, not a `SmallVec`: its inline-or-heap check on every `last_mut` cost more per
    // event (callgrind: ≈ 4k instructions) than one allocation.
    let mut stack: Vec<(Level<'_, '_>, usize)> = Vec::with_capacity(16);
    stack.push((Level::Object(root.entries()), 0));
    let skip_depth = skip
        .iter()
        .map(|p| 1 + memchr::memchr_iter(b'.', p.as_bytes()).count())
        .max()
        .unwrap_or(0);
    while let Some((level, base)) = stack.last_mut() {
        let base = *base;
        path.truncate(base);
        let value = match level {
            Level::Object(entries) => entries.next().map(|(k, v)| {
                if base > 0 {
                    path.push(b'.');
                }
                write_escaped_part(&mut path, k);
                v
            }),
            Level::Array(items, index) => items.next().inspect(|_| {
                path.push(b'.');
                path.extend_from_slice(itoa::Buffer::new().format(*index).as_bytes());
                *index += 1;
            }),
        };
        let Some(value) = value else {
            stack.pop();
            continue;
        };
        // A path `depth` levels down has at least `depth - 1` dots, so deeper paths cannot
        // be in `skip`.
        if stack.len() <= skip_depth && skip.iter().any(|p| p.as_bytes() == path) {
            continue;
        }
        if value.is_object() {
            stack.push((Level::Object(value.entries()), path.len()));
        } else if value.is_array() {
            stack.push((Level::Array(value.items(), 0), path.len()));
        } else if !value.is_null() {
            out.extend_from_slice(&path);
            out.push(b'=');
            match value.str() {
                Some(text) => write_escaped_part(out, text),
                // A number or a boolean (null and containers were handled above): digits, sign,
                // point and exponent, or a word — nothing the list or JSON escapes, so rendered
                // straight into the row.
                None => {
                    let start = out.len();
                    value.write_text(out);
                    debug_assert!(
                        out[start..]
                            .iter()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.')),
                        "{:?}",
                        String::from_utf8_lossy(&out[start..])
                    );
                }
            }
            out.push(b';');
        }
    }
}

/// `\` → `\\`, `;` → `\;`, then JSON string escaping.
#[inline]
fn write_escaped_part(out: &mut Vec<u8>, s: &str) {
    write_backslashed_short(out, s, [b';', b';']);
}

#[cfg(test)]
mod tests {
    use crate::event::{Received, Timestamp};
    use crate::map::{Schema, write};
    use crate::parse::{ParseOptions, Parser};

    fn csl(body: &str) -> serde_json::Value {
        let mut parser = Parser::new(ParseOptions::default());
        let received = Received {
            source: "t",
            peer: None,
            received_at: Timestamp::from_unix_nanos(1_700_000_000_000_000_000),
        };
        let event = parser.parse(received, body.as_bytes());
        let mut out = Vec::new();
        write(Schema::Commonsecuritylog, &event, &mut out);
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn model_breach_row() {
        let v = csl(
            r#"{"pbid":123,"time":1657748807000,"score":0.674,"breachUrl":"https://dt/#modelbreach/123",
            "model":{"name":"Device::Attack and Recon Tools","pid":135,"category":"Suspicious","description":"A\\nB"},
            "device":{"did":7,"ip":"81.2.69.192","hostname":"host.local","macaddress":"00:00:5e:00:53:00","ips":[{"ip":"175.16.199.2"}]},
            "triggeredComponents":[{"metric":{"label":"Connections"},"triggeredFilters":[
               {"filterType":"Destination IP","trigger":{"value":"175.16.199.9"}},
               {"filterType":"Destination port","trigger":{"value":"443"}},
               {"filterType":"Connection hostname","trigger":{"value":"evil.example"}},
               {"filterType":"Message","trigger":{"value":"a;b\\c=d"}}]}]}"#,
        );
        assert_eq!(v["TimeGenerated"], "2022-07-13T21:46:47.000Z");
        assert_eq!(v["DeviceVendor"], "Darktrace");
        assert_eq!(v["DeviceProduct"], "DCIP");
        assert_eq!(v["DeviceEventClassID"], "135");
        assert_eq!(v["Activity"], "Device::Attack and Recon Tools");
        assert_eq!(v["DeviceEventCategory"], "Suspicious");
        assert_eq!(v["LogSeverity"], "7");
        assert_eq!(v["SourceIP"], "81.2.69.192");
        assert_eq!(v["SourceHostName"], "host.local");
        assert_eq!(v["SourceMACAddress"], "00:00:5e:00:53:00");
        assert_eq!(v["DestinationIP"], "175.16.199.9");
        assert_eq!(v["DestinationHostName"], "evil.example");
        assert_eq!(v["DestinationPort"], 443);
        assert_eq!(v["ExternalID"], 123);
        assert_eq!(v["RequestURL"], "https://dt/#modelbreach/123");
        assert_eq!(v["Message"], "A\\nB");
        let ext = v["AdditionalExtensions"].as_str().unwrap();
        assert!(ext.contains("device.ips.0.ip=175.16.199.2;"), "{ext}");
        assert!(ext.contains("model.pid=135;"), "{ext}");
        assert!(ext.contains(r"trigger.value=a\;b\\c=d;"), "{ext}");
        assert!(
            !ext.contains("pbid="),
            "mapped fields are not repeated: {ext}"
        );
        assert!(v.get("Computer").is_none());
    }

    #[test]
    fn ai_analyst_row_with_string_score() {
        let v = csl(
            r#"{"aiaScore":"98.0","createdAt":1628002089240,"title":"Extensive SSH","summariser":"AdminConnSummary",
            "id":"eabc0011","category":"critical","summary":"s","breachDevices":[{"ip":"81.2.69.144","hostname":null,"mac":null}]}"#,
        );
        assert_eq!(v["TimeGenerated"], "2021-08-03T14:48:09.240Z");
        assert_eq!(v["Activity"], "Extensive SSH");
        assert_eq!(v["LogSeverity"], "10");
        assert_eq!(v["SourceIP"], "81.2.69.144");
        assert!(v.get("SourceHostName").is_none());
        assert!(
            v["AdditionalExtensions"]
                .as_str()
                .unwrap()
                .contains("id=eabc0011;")
        );
    }

    #[test]
    fn system_status_and_audit_rows() {
        let v = csl(
            r#"{"last_updated":1658110810.556194,"priority":98,"priority_level":"critical","hostname":"probe","ip_address":"175.16.199.1","alert_name":"Probe Down","name":"probe_down-0","message":"lost","status":"Active"}"#,
        );
        assert_eq!(v["TimeGenerated"], "2022-07-18T02:20:10.556194Z");
        assert_eq!(v["LogSeverity"], "10");
        assert_eq!(v["DeviceName"], "probe");
        assert_eq!(v["DeviceAddress"], "175.16.199.1");
        assert_eq!(v["Activity"], "Probe Down");
        let v = csl(
            r#"{"username":"jsmith","method":"POST","endpoint":"/login","ip":"10.72.62.2","status":302,"description":"Failed login"}"#,
        );
        assert_eq!(v["SourceUserName"], "jsmith");
        assert_eq!(v["RequestMethod"], "POST");
        assert_eq!(v["Activity"], "Failed login");
        assert_eq!(v["TimeGenerated"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["AdditionalExtensions"], "status=302;");
    }

    #[test]
    fn unrecognised_json_still_maps() {
        let v = csl(r#"{"hello":"world","n":[1,2]}"#);
        assert!(v.get("DeviceVendor").is_none());
        assert_eq!(v["AdditionalExtensions"], "hello=world;n.0=1;n.1=2;");
        let v = csl("[1,2]");
        assert_eq!(v["Message"], "[1,2]");
    }

    /// Numbers and booleans are rendered straight into the list, as JSON writes them.
    #[test]
    fn scalar_leaves_render_as_json() {
        let v = csl(
            r#"{"a":-5,"b":18446744073709551615,"c":1.5e300,"d":true,"e":false,"f":0.1,"g":null,"h":[2.0,{"i":0}]}"#,
        );
        assert_eq!(
            v["AdditionalExtensions"],
            "a=-5;b=18446744073709551615;c=1.5e300;d=true;e=false;f=0.1;h.0=2.0;h.1.i=0;"
        );
    }

    /// Paths escape every segment: escapes in keys at every level, array indices past 9, and a
    /// skipped path next to one that only shares its prefix.
    #[test]
    fn nested_paths_escape_every_segment() {
        let items: Vec<String> = (0..12).map(|i| i.to_string()).collect();
        let body = format!(
            r#"{{"pbid":7,"model":{{"name":"m"}},"device":{{"ip":"1.2.3.4","ipx":"5"}},"a;b":{{"c\\d":[1,{{"e\"":"x;y"}}],"n":[{}]}}}}"#,
            items.join(",")
        );
        let v = csl(&body);
        let extensions = v["AdditionalExtensions"].as_str().expect("string");
        let expected_tail: String = (0..12).map(|i| format!("a\\;b.n.{i}={i};")).collect();
        assert_eq!(
            extensions,
            format!(
                "model.name=m;device.ipx=5;a\\;b.c\\\\d.0=1;a\\;b.c\\\\d.1.e\"=x\\;y;{expected_tail}"
            )
        );
    }
}
