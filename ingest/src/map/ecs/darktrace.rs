//! Darktrace JSON → Elastic Common Schema, following the field choices of Elastic's Darktrace
//! integration (data streams `model_breach_alert`, `ai_analyst_alert`, `system_status_alert`):
//!
//! - model breach: `@timestamp` ← `time`; `event.kind` `alert` for model categories
//!   Critical/Suspicious, `event` for Compliance/Informational; `event.category` `threat` for
//!   alerts, plus `network` (and `event.type` `connection`) when a triggered metric is about
//!   connections; `event.severity` ← `model.priority`; `event.risk_score` ← `score`,
//!   `risk_score_norm` ← `score`×100; `event.url` ← `breachUrl`; `event.created` ←
//!   `creationTime`; `event.start` ← triggered component times; `host.*` ← `device`
//!   (`did` < 0 is no id; a hostname that is an IP goes to `related.ip`; MAC upper-cased with
//!   `-`); `rule.name/uuid/version/ruleset` ← `model.name/uuid/version/tags`.
//! - AI Analyst: `@timestamp` ← `createdAt`; `event.id` ← `id`; `event.reason` ← `title`;
//!   `event.risk_score`/`risk_score_norm` ← `aiaScore`; `event.start/end/duration` ← `periods`;
//!   `event.url` ← `incidentEventUrl`; `host.id/ip` ← `breachDevices`; `message` ← `summary`;
//!   `rule.name` ← related breaches' model names; `threat.group.id` ← `currentGroup`;
//!   `threat.enrichments.matched.id` ← `children`; `related.ip` also from the details' devices.
//! - system status: `@timestamp` ← `last_updated`; `event.id` ← `uuid`; `event.reason` ←
//!   `message`; `event.risk_score`/`risk_score_norm` ← `priority`; `event.url` ← `url`;
//!   `host.hostname/ip` ← `hostname`/`ip_address`.
//! - audit (no Elastic data stream; ours): `event.kind` `event`, `event.category` `iam`,
//!   `event.action` ← `method endpoint`, `event.outcome` from `description` (`fail…`) / `status`,
//!   `user.name`, `source.ip`, `http.request.method`, `http.response.status_code`, `url.path`.
//!
//! The original object is kept under `darktrace.<data_stream>` (`darktrace.audit` for audit)
//! with keys in snake_case as Elastic names them (`aiaScore` → `aia_score`); values are kept
//! as sent (Elastic additionally converts times to dates). Unrecognised JSON goes under `json`.
//! Every document gets `ecs.version`, `event.dataset`, `event.type` `info`, and `log.syslog.*` /
//! `log.source.address` from the syslog header and the peer.

use std::net::IpAddr;

use smallvec::SmallVec;

use crate::event::{Event, EventKind, SyslogFormat, Timestamp};
use crate::map::json_writer::{ObjectWriter, write_str};
use crate::map::sluice::{write_structured_data, write_timestamp as write_timestamp_full};
use crate::parse::json::{self, JsonBody};

const ECS_VERSION: &str = "8.11.0";

type Strs<'s> = SmallVec<[&'s str; 8]>;

fn push_unique<'s>(list: &mut Strs<'s>, value: &'s str) {
    if !value.is_empty() && !list.contains(&value) {
        list.push(value);
    }
}

/// ECS dates as Elasticsearch's `date` type stores them: milliseconds (as Elastic's
/// integration writes them), truncated.
fn write_timestamp(out: &mut Vec<u8>, ts: Timestamp) {
    write_timestamp_full(
        out,
        Timestamp {
            unix_nanos: ts.unix_nanos.div_euclid(1_000_000) * 1_000_000,
            ..ts
        },
    );
}

fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

fn write_str_array(out: &mut Vec<u8>, items: &[&str]) {
    out.push(b'[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, s);
    }
    out.push(b']');
}

fn write_number(out: &mut Vec<u8>, value: f64) {
    if value.is_finite() {
        if value.fract() == 0.0 && value.abs() < 9.0e15 {
            out.extend_from_slice(itoa::Buffer::new().format(value as i64).as_bytes());
        } else {
            out.extend_from_slice(ryu::Buffer::new().format_finite(value).as_bytes());
        }
    } else {
        out.extend_from_slice(b"null");
    }
}

/// `@timestamp`: the Darktrace record's own time, else the syslog time, else the receive time.
pub(super) fn event_time(event: &Event<'_>, body: &JsonBody<'_>) -> Timestamp {
    json::darktrace_event_time(body.kind, body.root())
        .or(event.syslog.timestamp)
        .unwrap_or(event.received.received_at)
}

pub(super) fn write(event: &Event<'_>, body: &JsonBody<'_>, out: &mut Vec<u8>) {
    let root = body.root();
    let kind = body.kind;
    let data_stream = match kind {
        EventKind::DarktraceModelBreach => "model_breach_alert",
        EventKind::DarktraceAiAnalyst => "ai_analyst_alert",
        EventKind::DarktraceSystemStatus => "system_status_alert",
        EventKind::DarktraceAudit => "audit",
        _ => "",
    };
    let str_at = |path: &[&str]| {
        root.path(path)
            .and_then(|v| v.str())
            .filter(|s| !s.is_empty())
    };
    let time = event_time(event, body);

    let mut o = ObjectWriter::begin(out);
    write_timestamp(o.key("@timestamp"), time);
    {
        let mut ecs = o.object("ecs");
        ecs.str("version", ECS_VERSION);
        ecs.end();
    }

    let mut related_ip: Strs<'_> = SmallVec::new();
    let mut related_hosts: Strs<'_> = SmallVec::new();
    let mut related_user: Strs<'_> = SmallVec::new();

    match kind {
        EventKind::DarktraceModelBreach => {
            let model = json::darktrace_model(root);
            let model_get = |k: &str| model.and_then(|m| m.get(k));
            let category = model_get("category")
                .and_then(|c| c.str())
                .unwrap_or("")
                .to_ascii_lowercase();
            let is_event = category == "compliance" || category == "informational";
            let conn = json::darktrace_triggered_connection(root);
            {
                let mut e = o.object("event");
                e.str("kind", if is_event { "event" } else { "alert" });
                let mut categories: Strs<'_> = SmallVec::new();
                if !is_event {
                    categories.push("threat");
                }
                let mut types: Strs<'_> = SmallVec::from_slice(&["info"]);
                if conn.connection_metric {
                    categories.push("network");
                    types.push("connection");
                }
                if !categories.is_empty() {
                    write_str_array(e.key("category"), &categories);
                }
                write_str_array(e.key("type"), &types);
                e.str("dataset", "darktrace.model_breach_alert");
                if let Some(p) = model_get("priority").and_then(|p| p.i64()) {
                    e.i64("severity", p);
                }
                if let Some(score) = root.get("score").and_then(|v| v.f64_lenient()) {
                    write_number(e.key("risk_score"), score);
                    write_number(e.key("risk_score_norm"), score * 100.0);
                }
                e.opt_str("url", str_at(&["breachUrl"]));
                if let Some(created) = root.get("creationTime").and_then(|v| v.timestamp()) {
                    write_timestamp(e.key("created"), created);
                }
                let mut starts: SmallVec<[i64; 4]> = SmallVec::new();
                for c in root
                    .get("triggeredComponents")
                    .iter()
                    .flat_map(|c| c.items())
                {
                    if let Some(t) = c.get("time").and_then(|t| t.timestamp())
                        && !starts.contains(&t.unix_nanos)
                    {
                        starts.push(t.unix_nanos);
                    }
                }
                if !starts.is_empty() {
                    let out = e.key("start");
                    out.push(b'[');
                    for (i, t) in starts.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        write_timestamp(out, Timestamp::from_unix_nanos(*t));
                    }
                    out.push(b']');
                }
                e.end();
            }
            if let Some(device) = root.get("device") {
                let mut h = o.object("host");
                if let Some(did) = device.get("did").and_then(|d| d.i64())
                    && did >= 0
                {
                    h.str("id", itoa::Buffer::new().format(did));
                }
                if let Some(name) = device
                    .get("hostname")
                    .and_then(|v| v.str())
                    .filter(|s| !s.is_empty())
                {
                    if is_ip(name) {
                        push_unique(&mut related_ip, name);
                    } else {
                        h.str("hostname", name);
                        push_unique(&mut related_hosts, name);
                    }
                }
                let mut ips: Strs<'_> = SmallVec::new();
                for k in ["ip", "ip6"] {
                    if let Some(ip) = device.get(k).and_then(|v| v.str()).filter(|s| is_ip(s)) {
                        push_unique(&mut ips, ip);
                        push_unique(&mut related_ip, ip);
                    }
                }
                if !ips.is_empty() {
                    write_str_array(h.key("ip"), &ips);
                }
                if let Some(mac) = device
                    .get("macaddress")
                    .and_then(|v| v.str())
                    .filter(|s| !s.is_empty())
                {
                    let normalised: String = mac
                        .chars()
                        .map(|c| {
                            if c == ':' || c == '.' {
                                '-'
                            } else {
                                c.to_ascii_uppercase()
                            }
                        })
                        .collect();
                    h.str("mac", &normalised);
                }
                h.opt_str("type", device.get("typename").and_then(|v| v.str()));
                h.end();
                for ip in device.get("ips").iter().flat_map(|a| a.items()) {
                    if let Some(ip) = ip.get("ip").and_then(|v| v.str()).filter(|s| is_ip(s)) {
                        push_unique(&mut related_ip, ip);
                    }
                }
            }
            if let Some(model) = model {
                let mut r = o.object("rule");
                r.opt_str("name", model.get("name").and_then(|v| v.str()));
                r.opt_str("uuid", model.get("uuid").and_then(|v| v.str()));
                if let Some(v) = model.get("version").and_then(|v| v.i64()) {
                    r.str("version", itoa::Buffer::new().format(v));
                }
                if let Some(tags) = model.get("tags").filter(|t| t.is_array()) {
                    let t: Strs<'_> = tags.items().filter_map(|t| t.str()).collect();
                    if !t.is_empty() {
                        write_str_array(r.key("ruleset"), &t);
                    }
                }
                r.end();
            }
        }
        EventKind::DarktraceAiAnalyst => {
            let mut starts: SmallVec<[Timestamp; 4]> = SmallVec::new();
            let mut ends: SmallVec<[Timestamp; 4]> = SmallVec::new();
            let mut durations: SmallVec<[i64; 4]> = SmallVec::new();
            for p in root.get("periods").iter().flat_map(|p| p.items()) {
                let start = p.get("start").and_then(|t| t.timestamp());
                let end = p.get("end").and_then(|t| t.timestamp());
                starts.extend(start);
                ends.extend(end);
                if let (Some(s), Some(e)) = (start, end) {
                    durations.push(e.unix_nanos - s.unix_nanos);
                }
            }
            {
                let mut e = o.object("event");
                e.str("kind", "alert");
                write_str_array(e.key("category"), &["threat"]);
                write_str_array(e.key("type"), &["info"]);
                e.str("dataset", "darktrace.ai_analyst_alert");
                e.opt_str("id", str_at(&["id"]));
                e.opt_str("reason", str_at(&["title"]));
                if let Some(score) = root.get("aiaScore").and_then(|v| v.f64_lenient()) {
                    write_number(e.key("risk_score"), score);
                    write_number(e.key("risk_score_norm"), score);
                }
                e.opt_str("url", str_at(&["incidentEventUrl"]));
                for (key, list) in [("start", &starts), ("end", &ends)] {
                    if !list.is_empty() {
                        let out = e.key(key);
                        out.push(b'[');
                        for (i, t) in list.iter().enumerate() {
                            if i > 0 {
                                out.push(b',');
                            }
                            write_timestamp(out, *t);
                        }
                        out.push(b']');
                    }
                }
                if !durations.is_empty() {
                    let out = e.key("duration");
                    out.push(b'[');
                    for (i, d) in durations.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(itoa::Buffer::new().format(*d).as_bytes());
                    }
                    out.push(b']');
                }
                e.end();
            }
            let mut ids: SmallVec<[i64; 4]> = SmallVec::new();
            let mut ips: Strs<'_> = SmallVec::new();
            let mut hostnames: Strs<'_> = SmallVec::new();
            for d in root.get("breachDevices").iter().flat_map(|d| d.items()) {
                if let Some(did) = d.get("did").and_then(|v| v.i64())
                    && did >= 0
                    && !ids.contains(&did)
                {
                    ids.push(did);
                }
                if let Some(ip) = d.get("ip").and_then(|v| v.str()).filter(|s| is_ip(s)) {
                    push_unique(&mut ips, ip);
                    push_unique(&mut related_ip, ip);
                }
                if let Some(h) = d.get("hostname").and_then(|v| v.str()) {
                    push_unique(&mut hostnames, h);
                    push_unique(&mut related_hosts, h);
                }
            }
            if !(ids.is_empty() && ips.is_empty() && hostnames.is_empty()) {
                let mut h = o.object("host");
                if !ids.is_empty() {
                    let texts: SmallVec<[String; 4]> = ids.iter().map(i64::to_string).collect();
                    let refs: Strs<'_> = texts.iter().map(String::as_str).collect();
                    write_str_array(h.key("id"), &refs);
                }
                if !ips.is_empty() {
                    write_str_array(h.key("ip"), &ips);
                }
                if !hostnames.is_empty() {
                    write_str_array(h.key("hostname"), &hostnames);
                }
                h.end();
            }
            // Devices named in the incident's detail sections.
            for section in root
                .get("details")
                .iter()
                .flat_map(|d| d.items())
                .flat_map(|s| s.items())
            {
                for content in section.get("contents").iter().flat_map(|c| c.items()) {
                    if content.get("type").and_then(|t| t.str()) != Some("device") {
                        continue;
                    }
                    for v in content.get("values").iter().flat_map(|v| v.items()) {
                        if let Some(ip) = v.get("ip").and_then(|v| v.str()).filter(|s| is_ip(s)) {
                            push_unique(&mut related_ip, ip);
                        }
                    }
                }
            }
            o.opt_str("message", str_at(&["summary"]));
            let names: Strs<'_> = root
                .get("relatedBreaches")
                .iter()
                .flat_map(|b| b.items())
                .filter_map(|b| b.get("modelName").and_then(|n| n.str()))
                .collect();
            if !names.is_empty() {
                let mut r = o.object("rule");
                write_str_array(r.key("name"), &names);
                r.end();
            }
            let group = str_at(&["currentGroup"]);
            let children: Strs<'_> = root
                .get("children")
                .iter()
                .flat_map(|c| c.items())
                .filter_map(|c| c.str())
                .collect();
            if group.is_some() || !children.is_empty() {
                let mut t = o.object("threat");
                if !children.is_empty() {
                    let mut en = t.object("enrichments");
                    let mut m = en.object("matched");
                    write_str_array(m.key("id"), &children);
                    m.end();
                    en.end();
                }
                if let Some(g) = group {
                    let mut g_obj = t.object("group");
                    g_obj.str("id", g);
                    g_obj.end();
                }
                t.end();
            }
        }
        EventKind::DarktraceSystemStatus => {
            {
                let mut e = o.object("event");
                e.str("kind", "alert");
                write_str_array(e.key("type"), &["info"]);
                e.str("dataset", "darktrace.system_status_alert");
                e.opt_str("id", str_at(&["uuid"]));
                e.opt_str("reason", str_at(&["message"]));
                if let Some(p) = root.get("priority").and_then(|v| v.f64_lenient()) {
                    write_number(e.key("risk_score"), p);
                    write_number(e.key("risk_score_norm"), p);
                }
                e.opt_str("url", str_at(&["url"]));
                e.end();
            }
            let hostname = str_at(&["hostname"]);
            let ip = str_at(&["ip_address"]).filter(|s| is_ip(s));
            if hostname.is_some() || ip.is_some() {
                let mut h = o.object("host");
                if let Some(name) = hostname {
                    h.str("hostname", name);
                    push_unique(&mut related_hosts, name);
                }
                if let Some(ip) = ip {
                    write_str_array(h.key("ip"), &[ip]);
                    push_unique(&mut related_ip, ip);
                }
                h.end();
            }
        }
        EventKind::DarktraceAudit => {
            let method = str_at(&["method"]);
            let endpoint = str_at(&["endpoint"]);
            let description = str_at(&["description"]);
            let status = root.get("status").and_then(|v| v.i64());
            {
                let mut e = o.object("event");
                e.str("kind", "event");
                write_str_array(e.key("category"), &["iam"]);
                write_str_array(e.key("type"), &["info"]);
                e.str("dataset", "darktrace.audit");
                if let (Some(m), Some(p)) = (method, endpoint) {
                    e.str("action", &format!("{m} {p}"));
                }
                let failed = description.is_some_and(|d| d.to_ascii_lowercase().contains("fail"))
                    || status.is_some_and(|s| s >= 400);
                if failed {
                    e.str("outcome", "failure");
                } else if status.is_some() {
                    e.str("outcome", "success");
                }
                e.end();
            }
            if let Some(user) = str_at(&["username"]) {
                let mut u = o.object("user");
                u.str("name", user);
                u.end();
                push_unique(&mut related_user, user);
            }
            if let Some(ip) = str_at(&["ip"]).filter(|s| is_ip(s)) {
                let mut s = o.object("source");
                s.str("ip", ip);
                s.end();
                push_unique(&mut related_ip, ip);
            }
            if method.is_some() || status.is_some() {
                let mut h = o.object("http");
                if let Some(m) = method {
                    let mut r = h.object("request");
                    r.str("method", m);
                    r.end();
                }
                if let Some(s) = status {
                    let mut r = h.object("response");
                    r.i64("status_code", s);
                    r.end();
                }
                h.end();
            }
            if let Some(p) = endpoint {
                let mut u = o.object("url");
                u.str("path", p);
                u.end();
            }
            o.opt_str("message", description);
        }
        _ => {
            let mut e = o.object("event");
            e.str("kind", "event");
            write_str_array(e.key("type"), &["info"]);
            e.end();
        }
    }

    if !(related_ip.is_empty() && related_hosts.is_empty() && related_user.is_empty()) {
        let mut r = o.object("related");
        if !related_ip.is_empty() {
            write_str_array(r.key("ip"), &related_ip);
        }
        if !related_hosts.is_empty() {
            write_str_array(r.key("hosts"), &related_hosts);
        }
        if !related_user.is_empty() {
            write_str_array(r.key("user"), &related_user);
        }
        r.end();
    }

    write_log(&mut o, event);

    if data_stream.is_empty() {
        root.write_json(o.key("json"));
    } else {
        let mut d = o.object("darktrace");
        root.write_json_snake_keys(d.key(data_stream));
        d.end();
    }
    o.end();
}

/// ECS `log.syslog.*` from the syslog header and `log.source.address` from the peer.
pub(crate) fn write_log(o: &mut ObjectWriter<'_>, event: &Event<'_>) {
    let h = &event.syslog;
    if h.format == SyslogFormat::None && event.received.peer.is_none() {
        return;
    }
    let mut log = o.object("log");
    if let Some(peer) = event.received.peer {
        let mut s = log.object("source");
        s.str("address", &peer.to_string());
        s.end();
    }
    if h.format != SyslogFormat::None {
        let mut s = log.object("syslog");
        if let Some(pri) = h.pri {
            s.u64("priority", pri.value() as u64);
            let mut f = s.object("facility");
            f.u64("code", pri.facility as u64);
            f.str("name", pri.facility_name());
            f.end();
            let mut sev = s.object("severity");
            sev.u64("code", pri.severity as u64);
            sev.str("name", pri.severity_title());
            sev.end();
        }
        s.opt_str("hostname", h.hostname);
        s.opt_str("appname", h.app_name);
        s.opt_str("procid", h.proc_id);
        s.opt_str("msgid", h.msg_id);
        if let Some(v) = h.version {
            s.str("version", itoa::Buffer::new().format(v));
        }
        if let Some(sd) = h.structured_data {
            write_structured_data(s.key("structured_data"), sd);
        }
        s.end();
    }
    log.end();
}

#[cfg(test)]
mod tests {
    use crate::event::{Pri, Received, SyslogFormat, Timestamp};
    use crate::map::{Schema, write};
    use crate::parse::{ParseOptions, Parser};

    fn ecs(body: &str) -> serde_json::Value {
        let mut parser = Parser::new(ParseOptions::default());
        let received = Received {
            source: "t",
            peer: Some("192.168.128.5:49066".parse().unwrap()),
            received_at: Timestamp::from_unix_nanos(1_700_000_000_000_000_000),
        };
        let mut event = parser.parse(received, body.as_bytes());
        event.syslog.format = SyslogFormat::Rfc5424;
        event.syslog.pri = Pri::from_value(165);
        event.syslog.version = Some(1);
        event.syslog.hostname = Some("example.cloud.darktrace.com");
        let mut out = Vec::new();
        write(Schema::Ecs, &event, &mut out);
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn model_breach_follows_elastic() {
        let v = ecs(
            r#"{"pbid":1,"time":1657748807000,"creationTime":1657748806000,"score":0.674,"breachUrl":"https://dt/#modelbreach/1",
            "model":{"then":{"name":"Old"},"now":{"name":"Compromise::Beaconing","uuid":"u-1","version":7,"priority":4,"category":"Critical","tags":["AP: C2"]}},
            "device":{"did":7,"ip":"81.2.69.192","hostname":"10.0.0.1","macaddress":"00:00:5e:00:53:aa","typename":"desktop","ips":[{"ip":"175.16.199.2"},{"ip":"10.0.0.#28445"}]},
            "triggeredComponents":[{"time":1657748807000,"metric":{"label":"External Connections"}}]}"#,
        );
        assert_eq!(v["@timestamp"], "2022-07-13T21:46:47.000Z");
        assert_eq!(v["event"]["kind"], "alert");
        assert_eq!(
            v["event"]["category"],
            serde_json::json!(["threat", "network"])
        );
        assert_eq!(
            v["event"]["type"],
            serde_json::json!(["info", "connection"])
        );
        assert_eq!(v["event"]["severity"], 4);
        assert_eq!(v["event"]["risk_score"], 0.674);
        assert_eq!(v["event"]["url"], "https://dt/#modelbreach/1");
        assert_eq!(v["event"]["created"], "2022-07-13T21:46:46.000Z");
        assert_eq!(
            v["event"]["start"],
            serde_json::json!(["2022-07-13T21:46:47.000Z"])
        );
        assert_eq!(v["host"]["id"], "7");
        assert!(
            v["host"].get("hostname").is_none(),
            "an IP is not a hostname"
        );
        assert_eq!(v["host"]["ip"], serde_json::json!(["81.2.69.192"]));
        assert_eq!(v["host"]["mac"], "00-00-5E-00-53-AA");
        assert_eq!(
            v["related"]["ip"],
            serde_json::json!(["10.0.0.1", "81.2.69.192", "175.16.199.2"])
        );
        assert_eq!(v["rule"]["name"], "Compromise::Beaconing");
        assert_eq!(v["rule"]["version"], "7");
        assert_eq!(v["rule"]["ruleset"], serde_json::json!(["AP: C2"]));
        assert_eq!(
            v["darktrace"]["model_breach_alert"]["creation_time"],
            1657748806000u64
        );
        assert_eq!(v["log"]["syslog"]["priority"], 165);
        assert_eq!(v["log"]["syslog"]["severity"]["name"], "Notice");
        assert_eq!(v["log"]["syslog"]["facility"]["name"], "local4");
        assert_eq!(v["log"]["source"]["address"], "192.168.128.5:49066");
    }

    #[test]
    fn informational_models_are_events() {
        let v = ecs(
            r#"{"pbid":1,"model":{"name":"x","category":"Informational"},"device":{"did":-1}}"#,
        );
        assert_eq!(v["event"]["kind"], "event");
        assert!(v["event"].get("category").is_none());
        assert!(v["host"].get("id").is_none());
    }

    #[test]
    fn audit_event() {
        let v = ecs(
            r#"{"username":"jsmith","method":"POST","endpoint":"/login","ip":"10.72.62.2","status":302,"description":"Failed login"}"#,
        );
        assert_eq!(v["event"]["outcome"], "failure");
        assert_eq!(v["event"]["action"], "POST /login");
        assert_eq!(v["user"]["name"], "jsmith");
        assert_eq!(v["source"]["ip"], "10.72.62.2");
        assert_eq!(v["http"]["response"]["status_code"], 302);
        assert_eq!(v["darktrace"]["audit"]["endpoint"], "/login");
    }

    #[test]
    fn unrecognised_json_is_kept() {
        let v = ecs(r#"{"iris-event-type":"antigena_state_change","model":"m","pbid":0}"#);
        assert_eq!(v["event"]["kind"], "event");
        assert_eq!(v["json"]["iris-event-type"], "antigena_state_change");
        assert_eq!(v["@timestamp"], "2023-11-14T22:13:20.000Z");
    }
}
