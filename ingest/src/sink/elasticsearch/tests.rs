use super::*;

fn config(extra: &str) -> ElasticsearchConfig {
    toml::from_str(&format!(
        "endpoint = \"https://es.example:9200\"\nindex = \"logs-dt\"\n{extra}"
    ))
    .unwrap()
}

#[test]
fn bulk_body_pairs_actions_and_documents() {
    let s = ElasticsearchSink::new("es", &config(""), SinkMetrics::new("es")).unwrap();
    let body = s.body(&[br#"{"a":1}"#, br#""raw line""#]);
    let text = String::from_utf8(body).unwrap();
    assert_eq!(
        text,
        "{\"create\":{\"_index\":\"logs-dt\"}}\n{\"a\":1}\n{\"create\":{\"_index\":\"logs-dt\"}}\n{\"message\":\"raw line\"}\n"
    );
    assert_eq!(auth_text(&s), None);
}

#[test]
fn auth_is_api_key_or_basic_never_both() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("secret");
    std::fs::write(&f, "pw\n").unwrap();
    let p = f.display();
    let s = ElasticsearchSink::new(
        "es",
        &config(&format!("api_key_file = \"{p}\"")),
        SinkMetrics::new("es"),
    )
    .unwrap();
    assert_eq!(auth_text(&s).as_deref(), Some("ApiKey pw"));
    let s = ElasticsearchSink::new(
        "es",
        &config(&format!(
            "username = \"elastic\"\npassword_file = \"{p}\"\npipeline = \"p1\""
        )),
        SinkMetrics::new("es"),
    )
    .unwrap();
    assert_eq!(auth_text(&s).as_deref(), Some("Basic ZWxhc3RpYzpwdw=="));
    assert_eq!(s.url.as_str(), "https://es.example:9200/_bulk?pipeline=p1");
    let both = config(&format!(
        "api_key_file = \"{p}\"\nusername = \"u\"\npassword_file = \"{p}\""
    ));
    assert!(ElasticsearchSink::new("es", &both, SinkMetrics::new("es")).is_err());
}

#[test]
fn every_document_written_by_the_worker_carries_the_event_time() {
    let s = ElasticsearchSink::new("es", &config(""), SinkMetrics::new("es")).unwrap();
    let mut parser = crate::parse::Parser::new(crate::parse::ParseOptions::default());
    let received = crate::event::Received {
        source: "test",
        peer: None,
        received_at: crate::event::Timestamp::from_unix_nanos(1_800_000_000_000_000_000),
    };
    let cef = "<134>Mar  5 09:00:00 dt CEF:0|v|p|1|id|n \"q\"|5|rt=1709633472127 src=10.0.0.1";
    let event = parser.parse(received, cef.as_bytes());
    let document = |schema: Schema| {
        let mut line = Vec::new();
        write_document(schema, &event, &mut line);
        let body = String::from_utf8(s.body(&[&line])).unwrap();
        let line = body.lines().nth(1).unwrap();
        if schema != Schema::Ecs {
            assert!(line.starts_with("{\"@timestamp\":"), "{line}");
        }
        let doc: serde_json::Value = serde_json::from_str(line).unwrap();
        let mut row = Vec::new();
        crate::map::write(schema, &event, &mut row);
        let row: serde_json::Value = serde_json::from_slice(&row).unwrap();
        (doc, row)
    };
    let (doc, _) = document(Schema::Raw);
    assert_eq!(
        doc,
        serde_json::json!({"@timestamp": "2024-03-05T10:11:12.127Z", "message": cef})
    );
    // The other rows keep every name they had, with `@timestamp` first.
    for schema in [Schema::Commonsecuritylog, Schema::Sluice, Schema::Ecs] {
        let (doc, row) = document(schema);
        let mut doc = doc.as_object().unwrap().clone();
        assert_eq!(
            doc.remove("@timestamp"),
            Some("2024-03-05T10:11:12.127Z".into()),
            "{schema:?}"
        );
        let mut row = row.as_object().unwrap().clone();
        row.remove("@timestamp");
        assert_eq!(doc, row, "{schema:?}");
    }
}

/// The `Authorization` header the sink sends, as text.
fn auth_text(sink: &ElasticsearchSink) -> Option<String> {
    let auth = sink.auth.current();
    auth.as_ref()
        .as_ref()
        .map(|v| v.to_str().unwrap().to_owned())
}
