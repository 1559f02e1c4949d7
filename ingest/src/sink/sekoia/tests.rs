use super::*;

#[test]
fn body_is_an_array_of_raw_strings() {
    let body = SekoiaSink::body(&[br#""<134>1 raw \"event\"""#, br#"{"mapped":true}"#]);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!(["<134>1 raw \"event\"", "{\"mapped\":true}"])
    );
}

#[test]
fn url_and_key_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    std::fs::write(&key, "abc\n").unwrap();
    let cfg: SekoiaConfig = toml::from_str(&format!(
        "url = \"https://intake.example/base/\"\nintake_key_file = \"{}\"",
        key.display()
    ))
    .unwrap();
    let sink = SekoiaSink::new("s", &cfg, SinkMetrics::new("s")).unwrap();
    assert_eq!(sink.url.as_str(), "https://intake.example/base/jsons");
    assert_eq!(sink.key.current().to_str().unwrap(), "abc");
    assert!(sink.key.current().is_sensitive());
    let missing: SekoiaConfig = toml::from_str("").unwrap();
    let err = SekoiaSink::new("s", &missing, SinkMetrics::new("s"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("intake_key_file"), "{err}");
}
