//! `ecs` schema (Elastic Common Schema). Dispatch by body; CEF, text and errors here, Darktrace
//! JSON in `darktrace.rs`.
//!
//! CEF follows the conventions of Elastic's `decode_cef` processor: the whole record under
//! `cef.*` (extensions under `cef.extensions.<ArcSight full name>`, values as sent), plus the ECS
//! fields that CEF populates unambiguously. See `docs/cef.md`.

mod darktrace;

use std::borrow::Cow;
use std::net::IpAddr;

use smallvec::SmallVec;

use crate::event::{Body, Cef, Event};
use crate::map::commonsecuritylog::write_rfc3339_millis;
use crate::map::json_writer::ObjectWriter;
use crate::parse::cef::{
    CUSTOM_KEY_PREFIXES, CustomKey, KeyIndex, custom_key, full_custom_name, full_name, full_names,
    parse_timestamp,
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

/// Extension keys that feed ECS fields, collected in one pass over the record.
#[derive(Default)]
struct Picked<'c> {
    src: Option<&'c str>,
    spt: Option<&'c str>,
    shost: Option<&'c str>,
    smac: Option<&'c str>,
    suser: Option<&'c str>,
    dst: Option<&'c str>,
    dpt: Option<&'c str>,
    dhost: Option<&'c str>,
    dmac: Option<&'c str>,
    duser: Option<&'c str>,
    dvc: Option<&'c str>,
    dvchost: Option<&'c str>,
    msg: Option<&'c str>,
    act: Option<&'c str>,
    proto: Option<&'c str>,
    app: Option<&'c str>,
    request: Option<&'c str>,
    method: Option<&'c str>,
    user_agent: Option<&'c str>,
    fname: Option<&'c str>,
    rt: Option<&'c str>,
    dtz: Option<&'c str>,
    external_id: Option<&'c str>,
}

/// Slots of [`Picked`].
const SRC: usize = 0;
const SPT: usize = 1;
const SHOST: usize = 2;
const SMAC: usize = 3;
const SUSER: usize = 4;
const DST: usize = 5;
const DPT: usize = 6;
const DHOST: usize = 7;
const DMAC: usize = 8;
const DUSER: usize = 9;
const DVC: usize = 10;
const DVCHOST: usize = 11;
const MSG: usize = 12;
const ACT: usize = 13;
const PROTO: usize = 14;
const APP: usize = 15;
const REQUEST: usize = 16;
const METHOD: usize = 17;
const USER_AGENT: usize = 18;
const FNAME: usize = 19;
const RT: usize = 20;
const DTZ: usize = 21;
const EXTERNAL_ID: usize = 22;
const SLOTS: usize = 23;

/// Extension key → slot.
static PICK: &[(&str, usize)] = &[
    ("rt", RT),
    ("act", ACT),
    ("app", APP),
    ("dpt", DPT),
    ("dst", DST),
    ("dtz", DTZ),
    ("dvc", DVC),
    ("msg", MSG),
    ("spt", SPT),
    ("src", SRC),
    ("dmac", DMAC),
    ("smac", SMAC),
    ("dhost", DHOST),
    ("duser", DUSER),
    ("fname", FNAME),
    ("proto", PROTO),
    ("shost", SHOST),
    ("suser", SUSER),
    ("dvchost", DVCHOST),
    ("message", MSG),
    ("request", REQUEST),
    ("fileName", FNAME),
    ("externalId", EXTERNAL_ID),
    ("requestUrl", REQUEST),
    ("sourcePort", SPT),
    ("deviceAction", ACT),
    ("deviceAddress", DVC),
    ("requestMethod", METHOD),
    ("sourceAddress", SRC),
    ("deviceHostName", DVCHOST),
    ("deviceTimeZone", DTZ),
    ("sourceHostName", SHOST),
    ("sourceUserName", SUSER),
    ("destinationPort", DPT),
    ("sourceMacAddress", SMAC),
    ("deviceReceiptTime", RT),
    ("transportProtocol", PROTO),
    ("destinationAddress", DST),
    ("applicationProtocol", APP),
    ("destinationHostName", DHOST),
    ("destinationUserName", DUSER),
    ("destinationMacAddress", DMAC),
    ("requestClientApplication", USER_AGENT),
];

/// [`PICK`], hashed: every extension of every record is looked up.
static PICK_INDEX: std::sync::LazyLock<KeyIndex<usize>> =
    std::sync::LazyLock::new(|| KeyIndex::new(PICK.iter().copied()));

/// The `cef.extensions` field name of each key that has one in a table: the full name of
/// every short key, and of every canonically spelled custom key (`cs1` →
/// `deviceCustomString1`), and each full name itself. Looked up with the tokenizer's key hash;
/// other keys take [`extension_name_slow`].
static EXTENSION_NAMES: std::sync::LazyLock<KeyIndex<ExtensionName>> =
    std::sync::LazyLock::new(|| {
        let mut names: Vec<(String, String)> = full_names()
            .iter()
            .map(|&(key, name)| (key.to_owned(), name.to_owned()))
            .collect();
        // Only the kinds with a distinct full name get one (`full_custom_name`).
        for (_, kind) in CUSTOM_KEY_PREFIXES {
            for index in 1..=15u8 {
                for label in [false, true] {
                    let ck = CustomKey { kind, index, label };
                    if let Some(name) = full_custom_name(ck) {
                        names.push((ck.key(), name));
                    }
                }
            }
        }
        // A sender may write the full name as the key: it names the same field.
        let full: Vec<String> = names.iter().map(|(_, name)| name.clone()).collect();
        names.extend(full.into_iter().map(|name| (name.clone(), name)));
        names.sort();
        names.dedup();
        let mut slots = std::collections::HashMap::new();
        KeyIndex::new(names.into_iter().map(|(key, name)| {
            assert!(slots.len() < NameSet::CAPACITY, "room for every field name");
            let next = slots.len() as u16;
            let slot = *slots.entry(name.clone()).or_insert(next);
            (
                key,
                ExtensionName {
                    name: name.into(),
                    slot,
                },
            )
        }))
    });

/// A `cef.extensions` field name and its number among them (the same for every key of it).
struct ExtensionName {
    name: Box<str>,
    slot: u16,
}

/// The `cef.extensions` names a document has so far. A record may carry one field under two
/// keys (`src` and `sourceAddress`, `cs1` and `cs01`), and a JSON object with a repeated name
/// is refused by Elasticsearch's strict parser (or keeps only one value elsewhere): the first
/// gets the full name, the others keep the key they were sent with, which no other extension
/// of the record has. Eight words: room for every distinct name (checked when the index is
/// built).
type NameSet = crate::map::slots::SlotSet<8>;

/// The field name for keys not in [`EXTENSION_NAMES`] (the rules it was built from).
fn extension_name_slow(key: &str) -> std::borrow::Cow<'_, str> {
    match full_name(key) {
        Some(name) => name.into(),
        None => match custom_key(key).and_then(full_custom_name) {
            Some(name) => name.into(),
            None => key.into(),
        },
    }
}

impl<'c> Picked<'c> {
    fn from(cef: &'c Cef<'_>) -> Self {
        let mut slots = [None; SLOTS];
        for e in &cef.extensions {
            if let Some(&slot) = PICK_INDEX.get_hashed(e.key, e.key_hash, e.key_tail) {
                slots[slot] = Some(e.value).filter(|v| !v.is_empty());
            }
        }
        Picked {
            src: slots[SRC],
            spt: slots[SPT],
            shost: slots[SHOST],
            smac: slots[SMAC],
            suser: slots[SUSER],
            dst: slots[DST],
            dpt: slots[DPT],
            dhost: slots[DHOST],
            dmac: slots[DMAC],
            duser: slots[DUSER],
            dvc: slots[DVC],
            dvchost: slots[DVCHOST],
            msg: slots[MSG],
            act: slots[ACT],
            proto: slots[PROTO],
            app: slots[APP],
            request: slots[REQUEST],
            method: slots[METHOD],
            user_agent: slots[USER_AGENT],
            fname: slots[FNAME],
            rt: slots[RT],
            dtz: slots[DTZ],
            external_id: slots[EXTERNAL_ID],
        }
    }
}

/// `event.severity` from the header: a number 0–10, or the word's lowest number per the CEF
/// severity ranges (Low 0–3, Medium 4–6, High 7–8, Very-High 9–10).
fn severity_number(severity: &str) -> Option<i64> {
    let s = severity.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    [("Low", 0), ("Medium", 4), ("High", 7), ("Very-High", 9)]
        .iter()
        .find(|(w, _)| w.eq_ignore_ascii_case(s))
        .map(|(_, n)| *n)
}

fn ip(value: Option<&str>) -> Option<&str> {
    value.filter(|v| v.parse::<IpAddr>().is_ok())
}

fn port(value: Option<&str>) -> Option<u16> {
    value.and_then(|v| v.trim().parse().ok())
}

/// `@timestamp` of a CEF record: `rt` (in `dtz`) when it parses, else the syslog time, else
/// the receive time.
fn cef_time_millis(event: &Event<'_>, rt: Option<&str>, dtz: Option<&str>) -> i64 {
    rt.and_then(|rt| parse_timestamp(rt, dtz, event.zone))
        .or_else(|| event.syslog.timestamp.map(|t| t.unix_millis()))
        .unwrap_or_else(|| event.received.received_at.unix_millis())
}

/// The `@timestamp` this schema gives `event`, in Unix milliseconds, without writing the row:
/// for sinks whose envelope carries the event time beside a row of another schema.
pub fn event_time_millis(event: &Event<'_>) -> i64 {
    match &event.body {
        Body::Cef(cef) => {
            // The same pick as `Picked::from` (last non-empty alias wins), for two slots only.
            let (mut rt, mut dtz) = (None, None);
            for e in &cef.extensions {
                match PICK_INDEX.get_hashed(e.key, e.key_hash, e.key_tail) {
                    Some(&RT) => rt = Some(e.value).filter(|v| !v.is_empty()),
                    Some(&DTZ) => dtz = Some(e.value).filter(|v| !v.is_empty()),
                    _ => {}
                }
            }
            cef_time_millis(event, rt, dtz)
        }
        Body::Json(json) => darktrace::event_time(event, json).unix_millis(),
        Body::Text(_) | Body::Error { .. } => event
            .syslog
            .timestamp
            .unwrap_or(event.received.received_at)
            .unix_millis(),
    }
}

fn write_cef(event: &Event<'_>, cef: &Cef<'_>, out: &mut Vec<u8>) {
    let p = Picked::from(cef);
    let millis = cef_time_millis(event, p.rt, p.dtz);
    let mut o = ObjectWriter::begin(out);
    write_rfc3339_millis(o.key("@timestamp"), millis);
    o.opt_str("message", p.msg);

    {
        let mut c = o.object("cef");
        c.str("version", cef.version);
        let mut device = c.object("device");
        device.str("vendor", cef.device_vendor);
        device.str("product", cef.device_product);
        device.str("version", cef.device_version);
        device.str("event_class_id", cef.signature_id);
        device.end();
        c.str("name", cef.name);
        c.str("severity", cef.severity);
        if !cef.extensions.is_empty() {
            let mut x = c.object("extensions");
            // Each extension's field name and its slot, looked up once, and which slots a key
            // names in full (`sourceAddress`): that key keeps the name, an alias of it (`src`)
            // the key it was sent with.
            let mut names: SmallVec<[(Cow<'_, str>, Option<u16>); 32]> = SmallVec::new();
            let mut taken = NameSet::new();
            for e in &cef.extensions {
                let (name, slot) = match EXTENSION_NAMES.get_hashed(e.key, e.key_hash, e.key_tail) {
                    Some(hit) => (Cow::Borrowed(&*hit.name), Some(hit.slot)),
                    None => {
                        let slow = extension_name_slow(e.key);
                        // A non-canonical spelling (`cs01`) of a field the index holds.
                        let slot = EXTENSION_NAMES.get(&slow).map(|hit| hit.slot);
                        (slow, slot)
                    }
                };
                if let Some(slot) = slot
                    && e.key == name
                {
                    taken.insert(slot.into());
                }
                names.push((name, slot));
            }
            let mut written = NameSet::new();
            for (e, (name, slot)) in cef.extensions.iter().zip(&names) {
                let name: &str = match *slot {
                    Some(slot)
                        if e.key != name
                            && (taken.contains(slot.into()) || !written.insert(slot.into())) =>
                    {
                        e.key
                    }
                    _ => name,
                };
                // Names are key bytes or table entries: only the value may need escaping.
                if e.json_clean {
                    x.verbatim_str(name, e.value);
                } else {
                    x.str(name, e.value);
                }
            }
            x.end();
        }
        c.end();
    }

    {
        let mut ev = o.object("event");
        ev.str("kind", "event");
        ev.str("code", cef.signature_id);
        if let Some(n) = severity_number(cef.severity) {
            ev.i64("severity", n);
        }
        ev.opt_str("action", p.act);
        ev.opt_str("id", p.external_id);
        ev.end();
    }

    {
        let mut obs = o.object("observer");
        obs.str("vendor", cef.device_vendor);
        obs.str("product", cef.device_product);
        obs.str("version", cef.device_version);
        obs.opt_str("hostname", p.dvchost);
        if let Some(dvc) = ip(p.dvc) {
            let out = obs.key("ip");
            out.push(b'[');
            crate::map::json_writer::write_str(out, dvc);
            out.push(b']');
        }
        obs.end();
    }

    endpoint(
        &mut o,
        "source",
        ip(p.src),
        port(p.spt),
        p.shost,
        p.smac,
        p.suser,
    );
    endpoint(
        &mut o,
        "destination",
        ip(p.dst),
        port(p.dpt),
        p.dhost,
        p.dmac,
        p.duser,
    );

    if p.proto.is_some() || p.app.is_some() {
        let mut n = o.object("network");
        if let Some(proto) = p.proto {
            n.str("transport", &proto.to_ascii_lowercase());
        }
        if let Some(app) = p.app {
            n.str("protocol", &app.to_ascii_lowercase());
        }
        n.end();
    }
    if let Some(url) = p.request {
        let mut u = o.object("url");
        u.str("original", url);
        u.end();
    }
    if let Some(method) = p.method {
        let mut h = o.object("http");
        let mut r = h.object("request");
        r.str("method", method);
        r.end();
        h.end();
    }
    if let Some(ua) = p.user_agent {
        let mut u = o.object("user_agent");
        u.str("original", ua);
        u.end();
    }
    if let Some(fname) = p.fname {
        let mut f = o.object("file");
        f.str("name", fname);
        f.end();
    }
    write_syslog(&mut o, event);
    o.end();
}

fn endpoint(
    o: &mut ObjectWriter<'_>,
    name: &str,
    ip: Option<&str>,
    port: Option<u16>,
    host: Option<&str>,
    mac: Option<&str>,
    user: Option<&str>,
) {
    if ip.is_none() && port.is_none() && host.is_none() && mac.is_none() && user.is_none() {
        return;
    }
    let mut e = o.object(name);
    e.opt_str("ip", ip);
    if let Some(port) = port {
        e.u64("port", u64::from(port));
    }
    e.opt_str("domain", host);
    e.opt_str("mac", mac);
    if let Some(user) = user {
        let mut u = e.object("user");
        u.str("name", user);
        u.end();
    }
    e.end();
}

/// `host.hostname` from the syslog header, then `log.*` as on Darktrace JSON documents: one
/// writer for every ECS document's `log.syslog.*` and `log.source.address`.
fn write_syslog(o: &mut ObjectWriter<'_>, event: &Event<'_>) {
    if let Some(host) = event.syslog.hostname {
        let mut h = o.object("host");
        h.str("hostname", host);
        h.end();
    }
    darktrace::write_log(o, event);
}

fn write_text(event: &Event<'_>, text: &str, error: Option<(&str, &String)>, out: &mut Vec<u8>) {
    let mut o = ObjectWriter::begin(out);
    let time = event.syslog.timestamp.unwrap_or(event.received.received_at);
    write_rfc3339_millis(o.key("@timestamp"), time.unix_millis());
    o.str("message", text);
    {
        let mut ev = o.object("event");
        ev.str(
            "kind",
            if error.is_some() {
                "pipeline_error"
            } else {
                "event"
            },
        );
        ev.end();
    }
    if let Some((kind, detail)) = error {
        let mut e = o.object("error");
        e.str("type", kind);
        e.str("message", detail);
        e.end();
    }
    write_syslog(&mut o, event);
    o.end();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Pri, Received, SyslogFormat, Timestamp};

    fn doc_from(line: &str, peer: &str) -> serde_json::Value {
        crate::map::mapped_from(crate::map::Schema::Ecs, line, Some(peer))
    }

    #[test]
    fn the_sender_is_the_log_source_address() {
        let d = doc_from("CEF:0|V|P|1|1|n|5|src=1.2.3.4", "10.0.0.7:5000");
        assert_eq!(d["log"]["source"]["address"], "10.0.0.7:5000");
        assert!(d["log"].get("syslog").is_none(), "{d}");
        let d = doc_from("<13>Jan  5 10:00:00 fw01 hello", "10.0.0.7:5000");
        assert_eq!(d["log"]["source"]["address"], "10.0.0.7:5000");
        assert_eq!(d["log"]["syslog"]["hostname"], "fw01");
        assert_eq!(d["host"]["hostname"], "fw01");
    }

    fn doc(body: &str) -> serde_json::Value {
        let mut syslog = crate::parse::no_header();
        syslog.hostname = Some("dt-master");
        syslog.app_name = Some("darktrace");
        syslog.format = SyslogFormat::Rfc3164;
        syslog.pri = Pri::from_value(165);
        syslog.timestamp = Some(Timestamp::from_unix_nanos(1_600_000_000_000_000_000));
        let received = Received {
            source: "t",
            peer: None,
            received_at: Timestamp::from_unix_nanos(1_700_000_000_000_000_000),
        };
        let mut scratch = String::new();
        let parsed = crate::parse::parse_cef_or_text(body, &mut scratch);
        let event = Event {
            received,
            zone: &crate::parse::LocalZone::Fixed(0),
            raw: body,
            syslog,
            body: parsed,
        };
        let mut out = Vec::new();
        write(&event, &mut out);
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    /// One field under two keys gives two distinct names, never one name twice (which
    /// Elasticsearch refuses): the key written in full keeps the full name.
    #[test]
    fn a_field_given_twice_under_two_keys_gets_two_names() {
        let d = doc(
            "CEF:0|Darktrace|DCIP|6.1|100|Breach|5|src=10.0.0.1 cs1=first \
                     sourceAddress=10.0.0.2 cs01=second act=blocked",
        );
        let x = d["cef"]["extensions"].as_object().unwrap();
        assert_eq!(x.len(), 5, "one name per extension: {x:?}");
        assert_eq!(x["sourceAddress"], "10.0.0.2");
        assert_eq!(x["src"], "10.0.0.1");
        assert_eq!(x["deviceCustomString1"], "first");
        assert_eq!(x["cs01"], "second");
        assert_eq!(x["deviceAction"], "blocked");
    }

    #[test]
    fn pick_index_finds_every_key_of_the_table_and_no_other() {
        let keys: std::collections::HashSet<&str> = PICK.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys.len(), PICK.len(), "a repeated key would be shadowed");
        for &(key, slot) in PICK {
            assert_eq!(PICK_INDEX.get(key), Some(&slot), "{key}");
        }
        for key in ["sr", "srcx", "Src", "darktraceUrl", ""] {
            assert_eq!(PICK_INDEX.get(key), None, "{key}");
        }
    }

    /// The index answers what the rules it was built from answer for every key in it (a miss
    /// takes the rules themselves, so it is only slower), and holds the common keys.
    #[test]
    fn extension_names_index_agrees_with_the_rules() {
        for &(key, _) in full_names() {
            assert!(EXTENSION_NAMES.get(key).is_some(), "{key}");
        }
        for index in 1..=15 {
            for key in [
                format!("cs{index}"),
                format!("cn{index}Label"),
                format!("cfp{index}"),
            ] {
                assert!(EXTENSION_NAMES.get(&key).is_some(), "{key}");
            }
        }
        let mut keys: Vec<String> = full_names().iter().map(|(k, _)| k.to_string()).collect();
        for prefix in ["cs", "cn", "cfp", "c6a", "flexString", "deviceCustomDate"] {
            for index in 0..=16 {
                keys.push(format!("{prefix}{index}"));
                keys.push(format!("{prefix}{index}Label"));
            }
        }
        keys.extend(["cs01", "darktraceUrl", "ad.name[1]", "rt", ""].map(String::from));
        for key in &keys {
            let slow = extension_name_slow(key);
            if let Some(hit) = EXTENSION_NAMES.get(key) {
                assert_eq!(&*hit.name, &*slow, "{key}");
            }
        }
        assert_eq!(
            EXTENSION_NAMES.get("cs3Label").map(|n| &*n.name),
            Some("deviceCustomString3Label")
        );
    }

    #[test]
    fn cef_document() {
        let d = doc(concat!(
            "CEF:0|Darktrace|DCIP|6.1|537|Antigena/Network/Compliance/Antigena RDP Block|Low| externalId=1462565 ",
            "dvc=10.0.0.1 dvchost=master.example src=10.0.0.5 spt=50123 dst=10.0.0.9 dpt=3389 dhost=ws9 ",
            "ad.darktraceUrl=https://master.example/#modelbreach/1462565 rt=1709633472000 cs1=x cs1Label=Reason msg=hello"
        ));
        assert_eq!(d["@timestamp"], "2024-03-05T10:11:12.000Z");
        assert_eq!(d["message"], "hello");
        assert_eq!(d["cef"]["version"], "0");
        assert_eq!(d["cef"]["device"]["vendor"], "Darktrace");
        assert_eq!(d["cef"]["device"]["event_class_id"], "537");
        assert_eq!(d["cef"]["severity"], "Low");
        assert_eq!(d["cef"]["extensions"]["sourceAddress"], "10.0.0.5");
        assert_eq!(d["cef"]["extensions"]["deviceCustomString1Label"], "Reason");
        assert_eq!(
            d["cef"]["extensions"]["ad.darktraceUrl"],
            "https://master.example/#modelbreach/1462565"
        );
        assert_eq!(d["event"]["code"], "537");
        assert_eq!(d["event"]["severity"], 0);
        assert_eq!(d["observer"]["vendor"], "Darktrace");
        assert_eq!(d["observer"]["hostname"], "master.example");
        assert_eq!(d["observer"]["ip"][0], "10.0.0.1");
        assert_eq!(d["source"]["ip"], "10.0.0.5");
        assert_eq!(d["source"]["port"], 50123);
        assert_eq!(d["destination"]["ip"], "10.0.0.9");
        assert_eq!(d["destination"]["port"], 3389);
        assert_eq!(d["destination"]["domain"], "ws9");
        assert_eq!(d["host"]["hostname"], "dt-master");
        assert_eq!(d["log"]["syslog"]["priority"], 165);
        assert_eq!(d["log"]["syslog"]["facility"]["name"], "local4");
        assert_eq!(d["log"]["syslog"]["severity"]["name"], "Notice");
        assert_eq!(d["log"]["syslog"]["appname"], "darktrace");
    }

    #[test]
    fn invalid_ip_is_not_an_ecs_ip() {
        let d = doc("CEF:0|V|P|1|1|n|7|src=not-an-ip dst=10.0.0.#28445");
        assert!(d.get("source").is_none());
        assert_eq!(
            d["cef"]["extensions"]["destinationAddress"],
            "10.0.0.#28445"
        );
        assert_eq!(d["event"]["severity"], 7);
        assert_eq!(d["@timestamp"], "2020-09-13T12:26:40.000Z");
    }

    #[test]
    fn text_and_error_documents() {
        let d = doc("plain words");
        assert_eq!(d["message"], "plain words");
        assert_eq!(d["event"]["kind"], "event");
        let d = doc("CEF:0|only|four|");
        assert_eq!(d["event"]["kind"], "pipeline_error");
        assert_eq!(d["error"]["type"], "cef_header");
        assert!(
            d["error"]["message"]
                .as_str()
                .unwrap()
                .contains("pipe-terminated")
        );
        assert_eq!(d["message"], "CEF:0|only|four|");
    }
}
