use super::*;

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
    assert!(s.auth.is_sensitive());
    assert!(s.auth.to_str().unwrap().starts_with("Splunk "));
}
