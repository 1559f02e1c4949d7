use super::*;

fn config(extra: &str) -> AzureLogsIngestionConfig {
    toml::from_str(&format!(
        r#"
        endpoint = "https://dce.westeurope-1.ingest.monitor.azure.com"
        dcr_immutable_id = "dcr-abc"
        tenant_id = "t"
        client_id = "c"
        client_secret_env = "PATH"
        {extra}
        "#
    ))
    .unwrap()
}

fn sink(extra: &str) -> AzureLogsIngestionSink {
    AzureLogsIngestionSink::new("az", &config(extra), SinkMetrics::new("az")).unwrap()
}

#[test]
fn defaults_and_urls() {
    let s = sink("");
    assert_eq!(
        s.url.as_str(),
        "https://dce.westeurope-1.ingest.monitor.azure.com/dataCollectionRules/dcr-abc/streams/\
         Custom-CommonSecurityLog?api-version=2023-01-01"
    );
    assert_eq!(
        s.token_url.as_str(),
        "https://login.microsoftonline.com/t/oauth2/v2.0/token"
    );
    assert_eq!(s.max_request_bytes, 1_000_000);
    assert_eq!(s.max_uncompressed, 1_000_000);
    assert!(!format!("{:?}", s.client_secret.current()).contains("PATH"));
}

#[test]
fn request_limit_cannot_exceed_the_service_limit() {
    let err = AzureLogsIngestionSink::new(
        "az",
        &config("max_request_bytes = 2000000"),
        SinkMetrics::new("az"),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("max_request_bytes"), "{err}");
    let err =
        AzureLogsIngestionSink::new("az", &config("stream = \"a/b\""), SinkMetrics::new("az"))
            .err()
            .unwrap();
    assert!(err.to_string().contains("stream"), "{err}");
    let err = AzureLogsIngestionSink::new(
        "az",
        &config("max_uncompressed_request_bytes = 0"),
        SinkMetrics::new("az"),
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("max_uncompressed_request_bytes"),
        "{err}"
    );
}

#[test]
fn long_fields_are_truncated_on_a_char_boundary_and_counted() {
    let s = sink("max_field_bytes = 1024");
    let short = br#"{"Message":"short"}"#;
    assert!(matches!(s.truncate_fields(short), (Cow::Borrowed(_), 0)));
    let long = serde_json::json!({
        "Message": "é".repeat(1000),
        "Nested": {"Inner": "x".repeat(2000)},
        "Keep": 5,
    })
    .to_string();
    let (row, n) = s.truncate_fields(long.as_bytes());
    assert_eq!(n, 2);
    let v: serde_json::Value = serde_json::from_slice(&row).unwrap();
    assert_eq!(v["Message"].as_str().unwrap().len(), 1024);
    assert_eq!(v["Nested"]["Inner"].as_str().unwrap().len(), 1024);
    assert_eq!(v["Keep"], 5);
}

#[test]
fn plan_keeps_chunks_near_the_compressed_target() {
    let s = sink("max_uncompressed_request_bytes = 100000000");
    s.ratio_ppm.store(500_000, Ordering::Relaxed); // 2:1
    let line = vec![b'x'; 10_000];
    let lines: Vec<&[u8]> = (0..1000).map(|_| line.as_slice()).collect();
    let chunks = s.plan(&lines);
    // 0.8 MB compressed ≈ 1.6 MB of JSON ≈ 160 lines per chunk.
    assert!(
        chunks.iter().all(|c| c.len() <= 160),
        "{:?}",
        chunks.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 1000);
    let s = sink("max_uncompressed_request_bytes = 100000");
    let chunks = s.plan(&lines);
    assert!(chunks.iter().all(|c| c.len() <= 10));
    // By default a call holds at most 1,000,000 bytes of JSON, however well it compresses.
    let s = sink("");
    let chunks = s.plan(&lines);
    assert!(chunks.iter().all(|c| c.len() <= 99));
}
