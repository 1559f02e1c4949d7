//! Every Darktrace test message in `tests/data/darktrace/` parses to the right event type and
//! maps to valid JSON in every schema with the key fields in place.

use std::path::PathBuf;

use serde_json::Value;
use sluice::event::{Body, EventKind, Received, SyslogFormat, Timestamp};
use sluice::map::{self, Schema};
use sluice::parse::{ParseErrorKind, ParseOptions, Parser};

const SCHEMAS: [Schema; 4] = [
    Schema::Sluice,
    Schema::Commonsecuritylog,
    Schema::Ecs,
    Schema::Raw,
];

fn data(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/darktrace")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn received() -> Received<'static> {
    Received {
        source: "darktrace",
        peer: None,
        received_at: Timestamp::from_unix_nanos(1_700_000_000_000_000_000),
    }
}

/// Parses one message and renders it in every schema; each rendering must be valid JSON.
fn render(parser: &mut Parser, line: &str) -> (EventKind, [Value; 4]) {
    let event = parser.parse(received(), line.as_bytes());
    let kind = event.kind();
    let docs = SCHEMAS.map(|schema| {
        let mut out = Vec::new();
        map::write(schema, &event, &mut out);
        serde_json::from_slice::<Value>(&out).unwrap_or_else(|e| {
            panic!(
                "{schema:?} output is not JSON ({e}): {}",
                String::from_utf8_lossy(&out)
            )
        })
    });
    (kind, docs)
}

fn body_of(line: &str) -> Value {
    serde_json::from_str(&line[line.find('{').unwrap()..]).unwrap()
}

#[test]
fn syslog_wrapped_messages_parse_to_their_event_type() {
    let cases: &[(&str, EventKind)] = &[
        ("model_breach_rfc5424.log", EventKind::DarktraceModelBreach),
        ("model_breach_rfc3164.log", EventKind::DarktraceModelBreach),
        ("model_breach_legacy.log", EventKind::DarktraceModelBreach),
        ("ai_analyst.log", EventKind::DarktraceAiAnalyst),
        ("system_status.log", EventKind::DarktraceSystemStatus),
        ("audit.log", EventKind::DarktraceAudit),
    ];
    let mut parser = Parser::new(ParseOptions::default());
    for (file, want) in cases {
        for (n, line) in data(file).lines().enumerate() {
            let (kind, [native, csl, ecs, raw]) = render(&mut parser, line);
            assert_eq!(kind, *want, "{file}:{}", n + 1);
            assert_eq!(raw, Value::String(line.to_string()));
            // The native schema keeps the JSON body exactly (incl. literal backslash-n text).
            assert_eq!(native["json"], body_of(line), "{file}:{}", n + 1);
            assert_eq!(
                native["syslog"]["hostname"],
                "dt-master.corp.example",
                "{file}:{}",
                n + 1
            );
            assert_eq!(native["syslog"]["priority"], 165);
            assert_eq!(csl["Computer"], "dt-master.corp.example");
            assert_eq!(csl["DeviceVendor"], "Darktrace");
            assert_eq!(ecs["log"]["syslog"]["hostname"], "dt-master.corp.example");
            assert_eq!(ecs["log"]["syslog"]["facility"]["code"], 20);
        }
    }
}

#[test]
fn model_breach_fields() {
    let mut parser = Parser::new(ParseOptions::default());
    let line = data("model_breach_rfc5424.log");
    let line = line.trim_end();
    let (_, [native, csl, ecs, _]) = render(&mut parser, line);
    let description = native["json"]["model"]["description"].as_str().unwrap();
    assert!(
        description.contains(r"a literal \\n must survive"),
        "{description}"
    );
    assert!(
        description.contains(r".\n\nAction"),
        "not unescaped twice: {description}"
    );

    assert_eq!(csl["TimeGenerated"], "2023-06-29T00:53:22.000Z");
    assert_eq!(
        csl["Activity"],
        "Anomalous Connection::Data Sent to Rare Domain"
    );
    assert_eq!(csl["ExternalID"], 9001);
    assert_eq!(csl["LogSeverity"], "9");
    assert_eq!(csl["SourceIP"], "198.51.100.23");
    assert_eq!(csl["SourceHostName"], "ws-0042.corp.example");
    assert_eq!(csl["DestinationIP"], "203.0.113.77");
    assert_eq!(csl["DestinationPort"], 8443);
    assert_eq!(csl["DestinationHostName"], "files.rare-domain.example");
    assert_eq!(
        csl["RequestURL"],
        "https://dt-master.corp.example/#modelbreach/9001"
    );
    assert_eq!(csl["Message"], description);

    assert_eq!(ecs["@timestamp"], "2023-06-29T00:53:22.000Z");
    assert_eq!(ecs["event"]["kind"], "alert");
    assert_eq!(
        ecs["event"]["category"],
        serde_json::json!(["threat", "network"])
    );
    assert_eq!(ecs["event"]["risk_score"], 0.87);
    assert_eq!(ecs["host"]["id"], "42");
    assert_eq!(ecs["host"]["hostname"], "ws-0042.corp.example");
    assert_eq!(ecs["host"]["mac"], "02-00-5E-10-00-2A");
    assert_eq!(
        ecs["rule"]["name"],
        "Anomalous Connection::Data Sent to Rare Domain"
    );
    assert_eq!(
        ecs["darktrace"]["model_breach_alert"]["model"]["description"],
        description
    );
    assert_eq!(
        ecs["darktrace"]["model_breach_alert"]["mitre_techniques"][0]["technique_id"],
        "T1041"
    );
}

#[test]
fn legacy_and_drifting_shapes() {
    let mut parser = Parser::new(ParseOptions::default());
    let (_, [_, csl, ecs, _]) = render(&mut parser, data("model_breach_legacy.log").trim_end());
    assert_eq!(csl["Activity"], "Compliance::Remote Desktop");
    assert_eq!(
        ecs["event"]["kind"], "event",
        "compliance models are events"
    );
    assert_eq!(
        ecs["rule"]["version"], "13",
        "model.now wins over model.then"
    );
    assert!(ecs["host"].get("hostname").is_none());
    assert!(
        ecs["related"]["ip"]
            .as_array()
            .unwrap()
            .contains(&Value::from("198.51.100.99"))
    );
    assert!(
        !ecs["related"]["ip"]
            .as_array()
            .unwrap()
            .contains(&Value::from("10.0.0.#28445"))
    );

    let (_, [_, _, ecs, _]) = render(&mut parser, data("model_breach_rfc3164.log").trim_end());
    assert!(ecs["host"].get("id").is_none(), "did -1 is no id");

    let lines = data("ai_analyst.log");
    let mut lines = lines.lines();
    let (_, [_, csl, ecs, _]) = render(&mut parser, lines.next().unwrap());
    assert_eq!(ecs["@timestamp"], "2023-06-30T04:40:00.123Z");
    assert_eq!(ecs["event"]["risk_score"], 87);
    assert_eq!(
        ecs["event"]["start"],
        serde_json::json!(["2023-06-30T01:53:20.000Z"])
    );
    assert_eq!(
        ecs["event"]["duration"],
        serde_json::json!([5_000_000_000_000i64])
    );
    assert_eq!(ecs["darktrace"]["ai_analyst_alert"]["group_score"], "72.5");
    assert_eq!(
        ecs["related"]["ip"],
        serde_json::json!(["198.51.100.23", "203.0.113.77"])
    );
    assert_eq!(csl["SourceHostName"], "ws-0042.corp.example");
    let (_, [_, csl, ecs, _]) = render(&mut parser, lines.next().unwrap());
    assert_eq!(
        ecs["event"]["url"],
        "https://dt-master.corp.example/#aiaincidentevent/a1b2c3d4-0000-4000-8000-00000000aaab"
    );
    assert_eq!(csl["RequestURL"], ecs["event"]["url"]);

    let lines = data("system_status.log");
    let mut lines = lines.lines();
    let (_, [_, _, ecs, _]) = render(&mut parser, lines.next().unwrap());
    assert_eq!(ecs["@timestamp"], "2023-07-01T08:26:40.000Z");
    assert_eq!(ecs["event"]["risk_score"], 51);
    let (_, [_, csl, ecs, _]) = render(&mut parser, lines.next().unwrap());
    assert_eq!(ecs["@timestamp"], "2023-07-01T11:13:20.250Z");
    assert_eq!(ecs["host"]["hostname"], "probe-7");
    assert_eq!(csl["LogSeverity"], "10");
}

#[test]
fn sc4s_lines() {
    let mut parser = Parser::new(ParseOptions::default());
    let kinds: Vec<EventKind> = data("sc4s.log")
        .lines()
        .map(|l| render(&mut parser, l).0)
        .collect();
    assert_eq!(
        kinds,
        [EventKind::DarktraceAudit, EventKind::DarktraceSystemStatus]
    );
}

/// API responses are arrays; a pulling source hands each element on as one event.
#[test]
fn api_response_elements() {
    let mut parser = Parser::new(ParseOptions::default());
    for (file, want, count) in [
        (
            "modelbreaches_response.txt",
            EventKind::DarktraceModelBreach,
            1,
        ),
        ("aianalyst_response.txt", EventKind::DarktraceAiAnalyst, 16),
    ] {
        let text = data(file);
        let (whole, _) = render(&mut parser, &text);
        assert_eq!(whole, EventKind::Json, "an array is not one event");
        let Value::Array(items) = serde_json::from_str::<Value>(&text).unwrap() else {
            panic!("{file}")
        };
        assert_eq!(items.len(), count);
        for item in items {
            let body = serde_json::to_string(&item).unwrap();
            let (kind, [native, ..]) = render(&mut parser, &body);
            assert_eq!(kind, want, "{file}");
            assert_eq!(native["json"], item);
        }
    }
}

#[test]
fn broken_bodies_become_error_events_with_the_raw_text() {
    let header = "<165>1 2023-06-29T01:00:05+00:00 dt-master.corp.example darktrace - - - ";
    let options = ParseOptions {
        json_max_depth: 16,
        json_max_bytes: 4096,
        ..ParseOptions::default()
    };
    let mut parser = Parser::new(options);
    let deep = format!("{}{}", "[".repeat(17), "]".repeat(17));
    let big = format!("{{\"a\":\"{}\"}}", "x".repeat(5000));
    for (body, want) in [
        (
            r#"{"pbid":1,"model":"#.to_string(),
            ParseErrorKind::JsonSyntax,
        ),
        (deep, ParseErrorKind::JsonDepth),
        (big, ParseErrorKind::JsonSize),
    ] {
        let line = format!("{header}{body}");
        let event = parser.parse(received(), line.as_bytes());
        match &event.body {
            Body::Error { kind, text, .. } => {
                assert_eq!(*kind, want);
                assert!(text.ends_with(&body));
            }
            other => panic!("{want:?}: got {other:?}"),
        }
        drop(event);
        let (kind, [native, csl, ecs, raw]) = render(&mut parser, &line);
        assert_eq!(kind, EventKind::Error);
        assert_eq!(native["error"]["kind"], want.as_str());
        assert_eq!(native["raw"], line.as_str());
        assert_eq!(raw, line.as_str());
        // The SIEM schemas also carry the message rather than dropping it.
        assert!(
            csl.to_string().contains("pbid")
                || csl.to_string().contains("[[")
                || csl.to_string().contains("xxxx")
        );
        assert!(
            ecs.to_string().contains("pbid")
                || ecs.to_string().contains("[[")
                || ecs.to_string().contains("xxxx")
        );
    }
}

#[test]
fn header_formats_as_expected() {
    let mut parser = Parser::new(ParseOptions::default());
    let lines = data("system_status.log");
    let event = parser.parse(received(), lines.lines().next().unwrap().as_bytes());
    assert_eq!(event.syslog.format, SyslogFormat::Rfc5424);
    assert_eq!(event.syslog.app_name, Some("darktrace"));
    assert_eq!(event.syslog.proc_id, None);
    drop(event);
    let audit = data("audit.log");
    let event = parser.parse(received(), audit.trim_end().as_bytes());
    assert_eq!(event.syslog.format, SyslogFormat::Rfc3164);
    assert_eq!(event.syslog.app_name, Some("darktrace_audit"));
}
