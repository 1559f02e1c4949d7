use super::*;
use crate::map::Schema;

fn sink(extra: &str) -> SplunkHecSink {
    let cfg: SplunkHecConfig = toml::from_str(&format!(
        "endpoint = \"https://splunk.example:8088/\"\ntoken_env = \"PATH\"\n{extra}"
    ))
    .unwrap();
    SplunkHecSink::new("splunk", &cfg, SinkMetrics::new("splunk")).unwrap()
}

#[test]
fn envelopes_carry_the_configured_metadata() {
    let s = sink("index = \"sec\"\nsourcetype = \"darktrace\"");
    assert_eq!(
        s.event_url.as_str(),
        "https://splunk.example:8088/services/collector/event"
    );
    let body = s.body(&[br#"{"a":1}"#, br#""raw""#]);
    let events: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&body)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        events[0],
        serde_json::json!({"event": {"a": 1}, "index": "sec", "sourcetype": "darktrace"})
    );
    assert_eq!(
        events[1],
        serde_json::json!({"event": "raw", "index": "sec", "sourcetype": "darktrace"})
    );
}

#[test]
fn channel_is_a_guid() {
    let s = sink("ack = true");
    let parts: Vec<usize> = s.channel.split('-').map(str::len).collect();
    assert_eq!(parts, vec![8, 4, 4, 4, 12]);
    assert!(s.auth.current().is_sensitive());
    assert!(s.auth.current().to_str().unwrap().starts_with("Splunk "));
}

/// The envelope line a worker writes for `message`, received at `received_ms`.
fn worker_line(message: &str, received_ms: i64) -> Vec<u8> {
    worker_line_from(message, received_ms, None, true)
}

/// [`worker_line`] for a message from `peer`, for a sink with (`!sender_as_host`) or without a
/// configured `host`.
fn worker_line_from(
    message: &str,
    received_ms: i64,
    peer: Option<&str>,
    sender_as_host: bool,
) -> Vec<u8> {
    let mut parser = crate::parse::Parser::new(crate::parse::ParseOptions::default());
    let received = crate::event::Received {
        source: "test",
        peer: peer.map(|p| p.parse().unwrap()),
        received_at: crate::event::Timestamp::from_unix_nanos(received_ms * 1_000_000),
    };
    let event = parser.parse(received, message.as_bytes());
    let mut line = Vec::new();
    write_envelope(Schema::Sluice, &event, sender_as_host, &mut line);
    line
}

fn envelopes(body: &[u8]) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_slice(body)
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn envelopes_carry_the_event_time_and_host_beside_the_configured_keys() {
    let s = sink("index = \"sec\"\nhost = \"cfg-host\"");
    let cef = worker_line(
        "<134>Mar  5 09:00:00 dt-master CEF:0|Darktrace|DCIP|6.1|100|n|5|rt=1709633472007",
        1_800_000_000_000,
    );
    let bare = worker_line("no header", -1_500);
    // A row spooled by an older version, before workers wrote envelopes.
    let old: &[u8] = br#"{"received_at":"2024-01-01T00:00:00.000Z","source":"x"}"#;
    let body = s.body(&[&cef, &bare, old]);
    let text = String::from_utf8(body.clone()).unwrap();
    // HEC's format: epoch seconds with a millisecond fraction, as a JSON number.
    assert!(
        text.starts_with("{\"time\":1709633472.007,\"host\":\"dt-master\",\"event\":{"),
        "{text}"
    );
    // Before 1970: -1.5 s.
    assert!(text.contains("{\"time\":-1.500,\"event\":"), "{text}");
    // One `host` per envelope: the event's own, else the configured one.
    assert_eq!(text.matches("\"host\":").count(), 3, "{text}");
    let events = envelopes(&body);
    assert_eq!(events[0]["host"], "dt-master");
    assert_eq!(events[0]["index"], "sec");
    assert_eq!(events[0]["event"]["syslog"]["hostname"], "dt-master");
    assert_eq!(events[1]["host"], "cfg-host");
    assert_eq!(events[1]["time"].as_f64(), Some(-1.5));
    assert_eq!(events[1]["event"]["source"], "test");
    // The old row is sent as it was then: no time to give.
    assert_eq!(
        events[2],
        serde_json::json!({
            "event": {"received_at": "2024-01-01T00:00:00.000Z", "source": "x"},
            "host": "cfg-host",
            "index": "sec"
        })
    );
}

#[test]
fn without_a_syslog_hostname_the_sender_is_the_host_unless_one_is_configured() {
    let host = |line: Vec<u8>| {
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        v.get("host").cloned()
    };
    let cef = "CEF:0|Darktrace|DCIP|6.1|100|n|5|rt=1709633472007";
    assert_eq!(
        host(worker_line_from(cef, 0, Some("10.0.0.7:5514"), true)),
        Some("10.0.0.7".into())
    );
    assert_eq!(
        host(worker_line_from(
            cef,
            0,
            Some("[::ffff:10.0.0.8]:514"),
            true
        )),
        Some("10.0.0.8".into())
    );
    // A configured `host` is the sink's to add; the syslog hostname always wins.
    assert_eq!(
        host(worker_line_from(cef, 0, Some("10.0.0.7:5514"), false)),
        None
    );
    let named = format!("<134>Mar  5 09:00:00 dt-master {cef}");
    assert_eq!(
        host(worker_line_from(&named, 0, Some("10.0.0.7:5514"), true)),
        Some("dt-master".into())
    );
    // No sender (an API source): HEC's default.
    assert_eq!(host(worker_line_from(cef, 0, None, true)), None);
    // The sink's configured host is only added where the worker wrote none.
    let s = sink("host = \"cfg-host\"");
    let body = s.body(&[&worker_line_from(cef, 0, Some("10.0.0.7:5514"), false)]);
    assert_eq!(envelopes(&body)[0]["host"], "cfg-host");
}

#[test]
fn a_host_that_would_need_escaping_is_left_to_the_default() {
    let line = worker_line("<13>1 2024-01-01T00:00:00Z a\"b app - - - x", 0);
    let text = String::from_utf8(line).unwrap();
    let envelope: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(envelope["event"]["syslog"]["hostname"], "a\"b", "{text}");
    assert!(!text.contains("\"host\""), "{text}");
    assert!(
        text.starts_with("{\"time\":1704067200.000,\"event\":"),
        "{text}"
    );
}
