//! Acceptance tests of the HTTP sinks behind the spool and the delivery runtime, against
//! in-process fakes of each service (see `sinks_support`).

mod sinks_support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sinks_support::*;
use sluice::sink::Sink;
use sluice::sink::azure_logs_ingestion::{AzureLogsIngestionConfig, AzureLogsIngestionSink};
use sluice::sink::elasticsearch::{ElasticsearchConfig, ElasticsearchSink};
use sluice::sink::http::{HttpSink, HttpSinkConfig};
use sluice::sink::runtime::{Enqueued, RetryConfig, SinkHandle, SinkMetrics, SinkRuntime};
use sluice::sink::sekoia::{SekoiaConfig, SekoiaSink};
use sluice::sink::splunk_hec::{SplunkHecConfig, SplunkHecSink};
use sluice::spool::{FsyncPolicy, SpoolConfig, WhenFull};

fn fast_retry() -> RetryConfig {
    RetryConfig {
        concurrency: 4,
        initial_backoff_ms: 50,
        max_backoff_ms: 400,
        max_retry_after_ms: 10_000,
        ..RetryConfig::default()
    }
}

fn spool_config() -> SpoolConfig {
    SpoolConfig {
        max_bytes: 256 << 20,
        segment_bytes: 1 << 20,
        when_full: WhenFull::Block,
        fsync: FsyncPolicy::Batch,
        fsync_interval_ms: 100,
        ..SpoolConfig::default()
    }
}

fn spawn<S: Sink + 'static>(
    sink: S,
    metrics: Arc<SinkMetrics>,
    data_dir: &Path,
    spool: SpoolConfig,
) -> SinkHandle {
    SinkRuntime::spawn(Arc::new(sink), data_dir, spool, fast_retry(), metrics).unwrap()
}

async fn enqueue(handle: &SinkHandle, batch: sluice::sink::Batch) -> Enqueued {
    let e = handle.enqueue_async(batch).await;
    assert!(matches!(e, Enqueued::Accepted { .. }), "{e:?}");
    e
}

fn dead_letters(data_dir: &Path, sink: &str) -> Vec<(String, serde_json::Value)> {
    let dir = data_dir.join("dead_letter").join(sink);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            let data = std::fs::read_to_string(p.with_extension("ndjson")).unwrap();
            out.push((data, meta));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Azure Monitor Logs Ingestion (Microsoft Sentinel)

struct Azure {
    fake: Arc<AzureFake>,
    token: Server,
    ingest: Server,
}

async fn azure() -> Azure {
    let fake = AzureFake::new();
    let token = serve(fake.token_handler()).await;
    let ingest = serve(fake.ingestion_handler()).await;
    Azure {
        fake,
        token,
        ingest,
    }
}

fn azure_config(az: &Azure, dir: &Path, secret: &str, extra: &str) -> AzureLogsIngestionConfig {
    let secret_path = secret_file(dir, "azure-secret", secret);
    toml::from_str(&format!(
        r#"
        endpoint = "{}"
        dcr_immutable_id = "{}"
        tenant_id = "{}"
        client_id = "{}"
        client_secret_file = "{}"
        authority = "{}"
        {extra}
        "#,
        az.ingest.url(),
        az.fake.dcr,
        az.fake.tenant,
        az.fake.client_id,
        secret_path.display(),
        az.token.url(),
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_healthy_path_delivers_exactly_n_rows_with_a_cached_token() {
    let dir = tempfile::tempdir().unwrap();
    let az = azure().await;
    let cfg = azure_config(&az, dir.path(), az.fake.client_secret, "");
    assert_eq!(cfg.stream, "Custom-CommonSecurityLog");
    let metrics = SinkMetrics::new("sentinel");
    let sink = AzureLogsIngestionSink::new("sentinel", &cfg, metrics.clone()).unwrap();
    let handle = spawn(sink, metrics, dir.path(), spool_config());
    const N: u64 = 5000;
    for start in (0..N).step_by(500) {
        enqueue(&handle, csl_batch(start..start + 500)).await;
    }
    wait_for("all rows", Duration::from_secs(30), || {
        az.fake.accepted.count() as u64 >= N
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        az.fake.accepted.ids("ExternalID"),
        (0..N).collect::<Vec<_>>()
    );
    assert_eq!(
        az.fake.tokens_issued.load(Ordering::SeqCst),
        1,
        "token is cached"
    );
    let row = az.fake.accepted.events.lock().unwrap()[0].clone();
    assert_eq!(row["DeviceVendor"], "Darktrace");
    let stats = handle.stats();
    assert_eq!(stats.sink.delivered_events, N);
    wait_for("spool drained", Duration::from_secs(5), || {
        handle.stats().spool.records == 0
    })
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_token_is_refreshed_before_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let az = azure().await;
    // A 2 s token is refreshed at half-life: the second upload, 1.5 s later, needs a new one.
    az.fake.token_lifetime.store(2, Ordering::SeqCst);
    let cfg = azure_config(&az, dir.path(), az.fake.client_secret, "");
    let metrics = SinkMetrics::new("sentinel");
    let sink = AzureLogsIngestionSink::new("sentinel", &cfg, metrics.clone()).unwrap();
    let handle = spawn(sink, metrics, dir.path(), spool_config());
    enqueue(&handle, csl_batch(0..10)).await;
    wait_for("first", Duration::from_secs(10), || {
        az.fake.accepted.count() == 10
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    enqueue(&handle, csl_batch(10..20)).await;
    wait_for("second", Duration::from_secs(10), || {
        az.fake.accepted.count() == 20
    })
    .await;
    assert_eq!(az.fake.tokens_issued.load(Ordering::SeqCst), 2);
    az.ingest.all_answered(204);
    handle.shutdown(Duration::from_secs(5)).await;
}

fn random_hex(len: usize) -> String {
    (0..len)
        .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_never_sends_a_body_over_1_mb_whatever_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let az = azure().await;
    let cfg = azure_config(&az, dir.path(), az.fake.client_secret, "");
    let metrics = SinkMetrics::new("sentinel");
    let sink = AzureLogsIngestionSink::new("sentinel", &cfg, metrics.clone()).unwrap();
    let handle = spawn(sink, metrics, dir.path(), spool_config());

    // One enormous batch: 20,000 rows of poorly compressible data (~9 MB as JSON).
    let mut ndjson = Vec::new();
    for id in 0..20_000u64 {
        let row = serde_json::json!({"ExternalID": id, "Message": random_hex(400)});
        ndjson.extend_from_slice(row.to_string().as_bytes());
        ndjson.push(b'\n');
    }
    // A row with a 3 MB field: truncated to 64 KB, then it fits.
    let big = serde_json::json!({"ExternalID": 20_000u64, "Message": random_hex(3 << 20)});
    ndjson.extend_from_slice(big.to_string().as_bytes());
    ndjson.push(b'\n');
    // A row that cannot fit even after truncation: 40 fields of 60 KB random data.
    let mut huge = serde_json::Map::new();
    huge.insert("ExternalID".into(), 20_001u64.into());
    for i in 0..40 {
        huge.insert(format!("Field{i}"), random_hex(60_000).into());
    }
    ndjson.extend_from_slice(serde_json::Value::Object(huge).to_string().as_bytes());
    ndjson.push(b'\n');
    enqueue(
        &handle,
        sluice::sink::Batch {
            events: 20_002,
            ndjson,
        },
    )
    .await;

    wait_for("rows delivered", Duration::from_secs(60), || {
        az.fake.accepted.count() >= 20_001
    })
    .await;
    wait_for("spool drained", Duration::from_secs(10), || {
        handle.stats().spool.records == 0
    })
    .await;
    let seen = az.ingest.all_answered(204);
    let max = az.fake.max_body_seen.load(Ordering::SeqCst);
    assert!(max <= 1_000_000, "largest body {max}");
    assert!(
        seen.len() >= 5,
        "the batch was split: {} requests",
        seen.len()
    );
    assert_eq!(
        az.fake.accepted.ids("ExternalID"),
        (0..=20_000).collect::<Vec<_>>()
    );
    let truncated = az
        .fake
        .accepted
        .events
        .lock()
        .unwrap()
        .iter()
        .find(|e| e["ExternalID"] == 20_000)
        .unwrap()["Message"]
        .as_str()
        .unwrap()
        .len();
    assert_eq!(truncated, 64 * 1024);
    let stats = handle.stats();
    assert_eq!(stats.sink.truncated_fields, 1);
    assert_eq!(stats.sink.dead_lettered_events, 1);
    let dl = dead_letters(dir.path(), "sentinel");
    assert_eq!(dl.len(), 1);
    assert!(dl[0].0.contains("\"ExternalID\":20001"));
    assert!(
        dl[0].1["reason"]
            .as_str()
            .unwrap()
            .contains("request limit"),
        "{}",
        dl[0].1
    );
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_no_call_carries_over_1_mb_of_json_before_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let az = azure().await;
    let cfg = azure_config(&az, dir.path(), az.fake.client_secret, "");
    let metrics = SinkMetrics::new("sentinel");
    let sink = AzureLogsIngestionSink::new("sentinel", &cfg, metrics.clone()).unwrap();
    let handle = spawn(sink, metrics, dir.path(), spool_config());
    // ~9 MB of JSON that gzips about 10:1: bounded by compressed size alone, one call would
    // carry several MB of it.
    const N: u64 = 20_000;
    enqueue(&handle, csl_batch(0..N)).await;
    wait_for("spool drained", Duration::from_secs(60), || {
        handle.stats().spool.records == 0
    })
    .await;
    let seen = az.ingest.all_answered(204);
    let max = az.fake.max_uncompressed_seen.load(Ordering::SeqCst);
    assert!(max <= 1_000_000, "largest body before gzip {max}");
    assert!(seen.len() >= 9, "{} requests", seen.len());
    assert_eq!(
        az.fake.accepted.ids("ExternalID"),
        (0..N).collect::<Vec<_>>()
    );
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_wrong_client_secret_keeps_events_spooled_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let az = azure().await;
    let cfg = azure_config(&az, dir.path(), "wrong-secret", "");
    let metrics = SinkMetrics::new("sentinel");
    let sink = AzureLogsIngestionSink::new("sentinel", &cfg, metrics.clone()).unwrap();
    let handle = spawn(sink, metrics, dir.path(), spool_config());
    enqueue(&handle, csl_batch(0..100)).await;
    wait_for("retries", Duration::from_secs(10), || {
        handle.stats().sink.retries >= 3
    })
    .await;
    assert_eq!(az.fake.accepted.count(), 0);
    assert!(az.token.seen().iter().all(|s| s.status == 401));
    assert_eq!(handle.stats().spool.events, 100);
    drop(handle);

    // Fixed configuration, same data directory: the spooled events go out.
    let cfg = azure_config(&az, dir.path(), az.fake.client_secret, "");
    let metrics = SinkMetrics::new("sentinel");
    let sink = AzureLogsIngestionSink::new("sentinel", &cfg, metrics.clone()).unwrap();
    let handle = spawn(sink, metrics, dir.path(), spool_config());
    wait_for("delivery", Duration::from_secs(10), || {
        az.fake.accepted.count() == 100
    })
    .await;
    assert_eq!(
        az.fake.accepted.ids("ExternalID"),
        (0..100).collect::<Vec<_>>()
    );
    handle.shutdown(Duration::from_secs(5)).await;
}

/// A client secret renewed while the sink runs (`systemctl reload` after the file changed):
/// the token got with the old secret is no longer used although it has not expired, so a
/// wrong new secret shows at once (the token endpoint refuses it; events stay spooled), and
/// a corrected file is read again at the next try, with no reload, and the events go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_renewed_client_secret_replaces_the_cached_token() {
    let dir = tempfile::tempdir().unwrap();
    let az = azure().await;
    let cfg = azure_config(&az, dir.path(), az.fake.client_secret, "");
    let metrics = SinkMetrics::new("sentinel");
    let sink = AzureLogsIngestionSink::new("sentinel", &cfg, metrics.clone()).unwrap();
    let credentials = sink.credentials();
    assert_eq!(credentials.len(), 1);
    assert_eq!(credentials[0].name(), "sinks.sentinel.client_secret");
    let handle = spawn(sink, metrics, dir.path(), spool_config());
    enqueue(&handle, csl_batch(0..100)).await;
    wait_for("delivery", Duration::from_secs(10), || {
        az.fake.accepted.count() == 100
    })
    .await;
    let grants = || az.token.seen().len();
    assert_eq!(grants(), 1);

    let secret_path = cfg.client_secret_file.clone().unwrap();
    std::fs::write(&secret_path, "mistyped-secret\n").unwrap();
    assert_eq!(credentials[0].renew(), Ok(true));
    enqueue(&handle, csl_batch(100..200)).await;
    wait_for("retries", Duration::from_secs(10), || {
        handle.stats().sink.retries >= 2
    })
    .await;
    assert!(grants() >= 3, "the cached token was not used: {}", grants());
    assert!(az.token.seen()[1..].iter().all(|s| s.status == 401));
    assert_eq!(az.fake.accepted.count(), 100);
    assert_eq!(handle.stats().spool.events, 100);

    std::fs::write(&secret_path, format!("{}\n", az.fake.client_secret)).unwrap();
    wait_for("delivery", Duration::from_secs(10), || {
        az.fake.accepted.count() == 200
    })
    .await;
    assert_eq!(
        az.fake.accepted.ids("ExternalID"),
        (0..200).collect::<Vec<_>>()
    );
    assert_eq!(handle.stats().sink.dead_lettered_events, 0);
    handle.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------------
// Sekoia.io

fn sekoia_config(url: &str, key_path: &Path) -> SekoiaConfig {
    toml::from_str(&format!(
        "url = \"{url}\"\nintake_key_file = \"{}\"",
        key_path.display()
    ))
    .unwrap()
}

/// A Sekoia sink `sekoia` with `cfg` and the tests' spool.
fn sekoia_sink(dir: &Path, cfg: &SekoiaConfig) -> SinkHandle {
    let metrics = SinkMetrics::new("sekoia");
    spawn(
        SekoiaSink::new("sekoia", cfg, metrics.clone()).unwrap(),
        metrics,
        dir,
        spool_config(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sekoia_healthy_path_sends_raw_event_strings() {
    let dir = tempfile::tempdir().unwrap();
    let fake = SekoiaFake::new();
    let server = serve(fake.handler()).await;
    let default: SekoiaConfig = toml::from_str("intake_key_env = \"X\"").unwrap();
    assert_eq!(default.url, "https://intake.sekoia.io");
    let cfg = sekoia_config(&server.url(), &secret_file(dir.path(), "key", fake.key));
    let handle = sekoia_sink(dir.path(), &cfg);
    const N: u64 = 3000;
    for start in (0..N).step_by(300) {
        enqueue(&handle, raw_batch(start..start + 300)).await;
    }
    wait_for("events", Duration::from_secs(30), || {
        fake.accepted.count() as u64 >= N
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let events = fake.accepted.events.lock().unwrap().clone();
    assert_eq!(events.len() as u64, N);
    let mut uuids: Vec<u64> = events
        .iter()
        .map(|e| {
            let s = e.as_str().unwrap();
            assert!(
                s.starts_with("<134>1 2026-11-22T10:00:00Z dt-master darktrace"),
                "{s}"
            );
            let json_start = s.find('{').unwrap();
            let v: serde_json::Value = serde_json::from_str(&s[json_start..]).unwrap();
            v["uuid"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    uuids.sort_unstable();
    assert_eq!(uuids, (0..N).collect::<Vec<_>>());
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sekoia_wrong_key_is_dead_lettered_with_the_response() {
    let dir = tempfile::tempdir().unwrap();
    let fake = SekoiaFake::new();
    let server = serve(fake.handler()).await;
    let cfg = sekoia_config(
        &server.url(),
        &secret_file(dir.path(), "key", "not-the-key"),
    );
    let handle = sekoia_sink(dir.path(), &cfg);
    enqueue(&handle, raw_batch(0..25)).await;
    wait_for("dead letter", Duration::from_secs(10), || {
        handle.stats().sink.dead_lettered_events == 25
    })
    .await;
    let dl = dead_letters(dir.path(), "sekoia");
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].1["status"], 401);
    assert!(
        dl[0].1["response_body"]
            .as_str()
            .unwrap()
            .contains("invalid intake key")
    );
    assert_eq!(dl[0].0.lines().count(), 25);
    wait_for("acked", Duration::from_secs(5), || {
        handle.stats().spool.records == 0
    })
    .await;
    assert_eq!(fake.accepted.count(), 0);
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sekoia_fewer_event_ids_than_events_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let fake = SekoiaFake::new();
    fake.missing_ids.store(3, Ordering::SeqCst);
    let server = serve(fake.handler()).await;
    let cfg = sekoia_config(&server.url(), &secret_file(dir.path(), "key", fake.key));
    let handle = sekoia_sink(dir.path(), &cfg);
    enqueue(&handle, raw_batch(0..25)).await;
    wait_for("acked", Duration::from_secs(10), || {
        handle.stats().spool.records == 0
    })
    .await;
    let s = handle.stats().sink;
    // Sent once (a resend could not tell which ones are missing), the gap counted.
    assert_eq!(server.seen().len(), 1);
    assert_eq!((s.delivered_events, s.unconfirmed_events), (25, 3));
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_write_failure_keeps_the_record_spooled_until_written() {
    let dir = tempfile::tempdir().unwrap();
    let fake = SekoiaFake::new();
    let server = serve(fake.handler()).await;
    let cfg = sekoia_config(
        &server.url(),
        &secret_file(dir.path(), "key", "not-the-key"),
    );
    // A file where the sink's dead-letter directory belongs: every write there fails (a full
    // or read-only disk would too; tests may run as root, so permissions cannot stand in).
    let blocker = dir.path().join("dead_letter").join("sekoia");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"").unwrap();
    let handle = sekoia_sink(dir.path(), &cfg);
    enqueue(&handle, raw_batch(0..25)).await;
    wait_for("refused", Duration::from_secs(10), || {
        !server.seen().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = handle.stats();
    assert_eq!(
        stats.spool.records, 1,
        "the record left the spool: {stats:?}"
    );
    assert_eq!(stats.sink.dead_lettered_events, 0);
    assert!(stats.sink.dead_letter_write_errors >= 2, "{stats:?}");

    std::fs::remove_file(&blocker).unwrap();
    wait_for("dead letter written", Duration::from_secs(10), || {
        let s = handle.stats();
        s.sink.dead_lettered_events == 25 && s.spool.records == 0
    })
    .await;
    let dl = dead_letters(dir.path(), "sekoia");
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].1["status"], 401);
    assert_eq!(dl[0].0.lines().count(), 25);
    // Only the write was retried; the service was not asked again to refuse the events.
    assert_eq!(server.seen().len(), 1);
    handle.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------------
// Splunk HEC

/// A Splunk HEC sink `name` posting to `endpoint` with the token in `token_file`, plus `extra`
/// config lines.
fn splunk_sink(
    dir: &Path,
    name: &str,
    endpoint: &str,
    token_file: &Path,
    extra: &str,
) -> SinkHandle {
    let cfg: SplunkHecConfig = toml::from_str(&format!(
        "endpoint = \"{endpoint}\"\ntoken_file = \"{}\"\n{extra}",
        token_file.display()
    ))
    .unwrap();
    let metrics = SinkMetrics::new(name);
    spawn(
        SplunkHecSink::new(name, &cfg, metrics.clone()).unwrap(),
        metrics,
        dir,
        spool_config(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_with_indexer_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let fake = SplunkFake::new(true);
    let server = serve(fake.handler()).await;
    let token = secret_file(dir.path(), "hec", fake.token);
    let handle = splunk_sink(
        dir.path(),
        "splunk",
        &server.url(),
        &token,
        "index = \"security\"\nsourcetype = \"darktrace:cef\"\nack = true\nack_poll_interval_ms = 20",
    );
    const N: u64 = 2000;
    for start in (0..N).step_by(250) {
        enqueue(&handle, csl_batch(start..start + 250)).await;
    }
    wait_for("spool drained", Duration::from_secs(30), || {
        handle.stats().spool.records == 0 && handle.stats().spool.appended_records == 8
    })
    .await;
    assert_eq!(fake.accepted.ids("ExternalID"), (0..N).collect::<Vec<_>>());
    assert!(
        fake.ack_polls.load(Ordering::SeqCst) >= 8 * 3,
        "every batch waited for its ack"
    );
    let env = fake.envelopes.lock().unwrap()[0].clone();
    assert_eq!(env["index"], "security");
    assert_eq!(env["sourcetype"], "darktrace:cef");
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_ack_without_ack_id_is_delivered_once_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    // The token has no indexer acknowledgement: 200 without an ackId.
    let fake = SplunkFake::new(false);
    let server = serve(fake.handler()).await;
    let token = secret_file(dir.path(), "hec", fake.token);
    let handle = splunk_sink(
        dir.path(),
        "splunk",
        &server.url(),
        &token,
        "ack = true\nack_poll_interval_ms = 20",
    );
    enqueue(&handle, csl_batch(0..50)).await;
    enqueue(&handle, csl_batch(50..100)).await;
    wait_for("spool drained", Duration::from_secs(10), || {
        let s = handle.stats().spool;
        s.records == 0 && s.appended_records == 2
    })
    .await;
    // Indexed once each: no resend of what HEC already took.
    assert_eq!(
        fake.accepted.ids("ExternalID"),
        (0..100).collect::<Vec<_>>()
    );
    assert_eq!(fake.accepted.requests.load(Ordering::SeqCst), 2);
    let s = handle.stats().sink;
    assert_eq!(
        (s.delivered_events, s.unconfirmed_events, s.retries),
        (100, 100, 0)
    );
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_without_ack_and_wrong_token() {
    let dir = tempfile::tempdir().unwrap();
    let fake = SplunkFake::new(false);
    let server = serve(fake.handler()).await;
    for (name, token, ok) in [
        ("good", fake.token, true),
        ("bad", "00000000-dead-beef", false),
    ] {
        let token = secret_file(dir.path(), name, token);
        let handle = splunk_sink(dir.path(), name, &format!("{}/", server.url()), &token, "");
        enqueue(&handle, csl_batch(0..50)).await;
        wait_for("settled", Duration::from_secs(10), || {
            handle.stats().spool.records == 0
        })
        .await;
        let s = handle.stats().sink;
        if ok {
            assert_eq!((s.delivered_events, s.dead_lettered_events), (50, 0));
        } else {
            assert_eq!((s.delivered_events, s.dead_lettered_events), (0, 50));
            assert!(
                dead_letters(dir.path(), name)[0].1["response_body"]
                    .as_str()
                    .unwrap()
                    .contains("Invalid token")
            );
        }
        handle.shutdown(Duration::from_secs(5)).await;
    }
    assert_eq!(fake.accepted.count(), 50);
}

/// A HEC token rotated in its file while the sink runs, with no reload: the first request still
/// carries the old token and gets 401, the sink reads the file again, and the batch goes with
/// the new token instead of to the dead-letter directory. The old token stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_token_rotated_in_its_file_is_used_after_a_401() {
    let dir = tempfile::tempdir().unwrap();
    let fake = SplunkFake::new(false);
    let server = serve(fake.handler()).await;
    *fake.valid_tokens.lock().unwrap() = vec!["rotated-token".to_owned()];
    let token = secret_file(dir.path(), "hec", "revoked-token");
    let handle = splunk_sink(dir.path(), "hec", &server.url(), &token, "");
    std::fs::write(&token, "rotated-token\n").unwrap();
    enqueue(&handle, csl_batch(0..50)).await;
    wait_for("settled", Duration::from_secs(10), || {
        handle.stats().spool.records == 0
    })
    .await;
    let s = handle.stats().sink;
    assert_eq!((s.delivered_events, s.dead_lettered_events), (50, 0));
    assert!(dead_letters(dir.path(), "hec").is_empty());
    let statuses: Vec<u16> = server.seen().iter().map(|s| s.status).collect();
    assert_eq!(statuses, vec![401, 200], "one refusal, then the new token");
    assert_eq!(fake.accepted.count(), 50);

    // Unchanged since the refusal: a 401 is final, as before.
    *fake.valid_tokens.lock().unwrap() = vec!["another-token".to_owned()];
    enqueue(&handle, csl_batch(50..60)).await;
    wait_for("dead letter", Duration::from_secs(10), || {
        handle.stats().sink.dead_lettered_events == 10
    })
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------------
// Elasticsearch

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_bulk_retries_and_dead_letters_item_by_item() {
    let dir = tempfile::tempdir().unwrap();
    let fake = ElasticFake::new();
    let server = serve(fake.handler()).await;
    let key = secret_file(dir.path(), "es", fake.api_key);
    let cfg: ElasticsearchConfig = toml::from_str(&format!(
        "endpoint = \"{}\"\nindex = \"logs-darktrace-default\"\napi_key_file = \"{}\"",
        server.url(),
        key.display()
    ))
    .unwrap();
    let metrics = SinkMetrics::new("elastic");
    let handle = spawn(
        ElasticsearchSink::new("elastic", &cfg, metrics.clone()).unwrap(),
        metrics,
        dir.path(),
        spool_config(),
    );
    // 300 documents: every 50th is unmappable (400 per item), every 7th hits a per-item 429 twice.
    let mut ndjson = Vec::new();
    let mut rejected = Vec::new();
    for id in 0..300u64 {
        let mut row: serde_json::Value = serde_json::from_str(&csl_row(id)).unwrap();
        if id % 50 == 0 {
            row["reject"] = true.into();
            rejected.push(id);
        } else if id % 7 == 0 {
            row["flaky"] = true.into();
        }
        ndjson.extend_from_slice(row.to_string().as_bytes());
        ndjson.push(b'\n');
    }
    enqueue(
        &handle,
        sluice::sink::Batch {
            events: 300,
            ndjson,
        },
    )
    .await;
    wait_for("settled", Duration::from_secs(20), || {
        handle.stats().spool.records == 0
    })
    .await;
    let expected: Vec<u64> = (0..300).filter(|id| id % 50 != 0).collect();
    assert_eq!(fake.accepted.ids("ExternalID"), expected);
    let stats = handle.stats().sink;
    assert_eq!(stats.dead_lettered_events, rejected.len() as u64);
    assert_eq!(stats.delivered_events, 300 - rejected.len() as u64);
    assert!(stats.retries >= 2);
    let dl = dead_letters(dir.path(), "elastic");
    assert_eq!(
        dl.len(),
        rejected.len(),
        "one dead letter per rejected document"
    );
    assert!(dl.iter().all(|(data, meta)| {
        data.lines().count() == 1
            && meta["response_body"]
                .as_str()
                .unwrap()
                .contains("mapper_parsing_exception")
    }));
    handle.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------------
// Generic HTTP

/// A generic HTTP sink `name` with `cfg` and the tests' spool.
fn http_sink(dir: &Path, name: &str, cfg: &HttpSinkConfig) -> SinkHandle {
    let metrics = SinkMetrics::new(name);
    spawn(
        HttpSink::new(name, cfg, metrics.clone()).unwrap(),
        metrics,
        dir,
        spool_config(),
    )
}

fn relay_config(url: &str, format: &str, compression: &str) -> HttpSinkConfig {
    toml::from_str(&format!(
        "url = \"{url}/ingest\"\nformat = \"{format}\"\ncompression = \"{compression}\"\n[headers]\nX-Api-Key = \"relay-key\""
    ))
    .unwrap()
}

/// A service answering far more than `max_response_bytes`: an error answer is kept cut (the
/// dead letter holds its start), a success answer that cannot be read whole is retried rather
/// than read without a bound — and taken once the answers are short again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_max_response_bytes_are_cut_or_retried() {
    const LONG: usize = 4 << 20;
    let dir = tempfile::tempdir().unwrap();
    let status = Arc::new(std::sync::atomic::AtomicU16::new(400));
    let answer_long = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (s, long) = (status.clone(), answer_long.clone());
    let server = serve(Arc::new(move |_parts, _body| {
        let body = if long.load(Ordering::SeqCst) {
            "x".repeat(LONG)
        } else {
            String::new()
        };
        reply(s.load(Ordering::SeqCst), body)
    }))
    .await;
    let mut cfg = relay_config(&server.url(), "ndjson", "none");
    cfg.max_response_bytes = 65_536;
    let handle = http_sink(dir.path(), "relay", &cfg);
    enqueue(&handle, csl_batch(0..10)).await;
    wait_for("dead letter", Duration::from_secs(10), || {
        handle.stats().sink.dead_lettered_events == 10
    })
    .await;
    let dl = dead_letters(dir.path(), "relay");
    let kept = dl[0].1["response_body"].as_str().unwrap().len();
    assert!(
        (1..=65_536).contains(&kept),
        "{kept} bytes of the answer kept"
    );

    status.store(200, Ordering::SeqCst);
    enqueue(&handle, csl_batch(10..20)).await;
    wait_for("retries", Duration::from_secs(10), || {
        handle.stats().sink.retries >= 2
    })
    .await;
    assert_eq!(handle.stats().sink.delivered_events, 0);
    answer_long.store(false, Ordering::SeqCst);
    wait_for("delivery", Duration::from_secs(10), || {
        handle.stats().sink.delivered_events == 10
    })
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
}

/// Dead letters moved into `dead_letter/<sink>/replay/` once the cause is fixed go back into
/// the spool and out to the service, exactly once, and leave the directory; anything else there
/// is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_moved_to_replay_are_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let status = Arc::new(std::sync::atomic::AtomicU16::new(400));
    let received = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (s, got) = (status.clone(), received.clone());
    let server = serve(Arc::new(move |_parts, body| {
        let status = s.load(Ordering::SeqCst);
        if status == 200 {
            let text = String::from_utf8_lossy(body);
            got.lock().unwrap().extend(text.lines().map(str::to_owned));
        }
        reply(status, r#"{"error":"unknown stream"}"#)
    }))
    .await;
    let cfg = relay_config(&server.url(), "ndjson", "none");
    let handle = http_sink(dir.path(), "relay", &cfg);
    for start in [0, 10, 20] {
        enqueue(&handle, csl_batch(start..start + 10)).await;
    }
    wait_for("dead letters", Duration::from_secs(10), || {
        handle.stats().sink.dead_lettered_events == 30
    })
    .await;

    // The cause is fixed; the operator moves the dead letters (events and metadata) over.
    status.store(200, Ordering::SeqCst);
    let letters = dir.path().join("dead_letter/relay");
    let replay = letters.join("replay");
    std::fs::create_dir(&replay).unwrap();
    std::fs::write(replay.join("notes.txt"), "left alone").unwrap();
    let mut moved = 0;
    for entry in std::fs::read_dir(&letters).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::rename(&path, replay.join(path.file_name().unwrap())).unwrap();
            moved += 1;
        }
    }
    assert_eq!(moved, 6, "three pairs of files");
    wait_for("replayed and delivered", Duration::from_secs(20), || {
        handle.stats().sink.delivered_events == 30
    })
    .await;
    wait_for("replay/ emptied", Duration::from_secs(10), || {
        std::fs::read_dir(&replay).unwrap().count() == 1
    })
    .await;
    assert!(replay.join("notes.txt").is_file());
    let mut ids: Vec<u64> = received
        .lock()
        .unwrap()
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["ExternalID"]
                .as_u64()
                .unwrap()
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..30).collect::<Vec<_>>(), "each event once");
    // Nothing new was dead-lettered, and nothing is replayed twice.
    tokio::time::sleep(sluice::sink::replay::REPLAY_EVERY + Duration::from_secs(1)).await;
    assert_eq!(handle.stats().sink.delivered_events, 30);
    assert_eq!(handle.stats().sink.dead_lettered_events, 30);
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sink_ndjson_and_json_array() {
    let dir = tempfile::tempdir().unwrap();
    let fake = RelayFake::new();
    let server = serve(fake.handler()).await;
    for (name, format, compression) in [("a", "ndjson", "gzip"), ("b", "json_array", "none")] {
        let cfg = relay_config(&server.url(), format, compression);
        let handle = http_sink(dir.path(), name, &cfg);
        enqueue(&handle, csl_batch(0..400)).await;
        wait_for("settled", Duration::from_secs(10), || {
            handle.stats().spool.records == 0
        })
        .await;
        assert_eq!(handle.stats().sink.delivered_events, 400);
        handle.shutdown(Duration::from_secs(5)).await;
    }
    let mut expected: Vec<u64> = (0..400).chain(0..400).collect();
    expected.sort_unstable();
    assert_eq!(fake.accepted.ids("ExternalID"), expected);
    // zstd is refused by this relay (415 is not retryable): dead-lettered, not lost.
    let cfg = relay_config(&server.url(), "ndjson", "zstd");
    let handle = http_sink(dir.path(), "c", &cfg);
    enqueue(&handle, csl_batch(0..10)).await;
    wait_for("dead letter", Duration::from_secs(10), || {
        handle.stats().sink.dead_lettered_events == 10
    })
    .await;
    assert_eq!(dead_letters(dir.path(), "c")[0].1["status"], 415);
    handle.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------------
// Failures and recovery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_500_for_30_s_then_200_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let fake = RelayFake::new();
    let server = serve(fake.handler()).await;
    let outage = Duration::from_secs(30);
    *server.faults.fail_until.lock().unwrap() = Some((Instant::now() + outage, 500));
    let cfg = relay_config(&server.url(), "ndjson", "gzip");
    let metrics = SinkMetrics::new("relay");
    let sink = HttpSink::new("relay", &cfg, metrics.clone()).unwrap();
    let retry = RetryConfig {
        concurrency: 2,
        initial_backoff_ms: 200,
        max_backoff_ms: 2_000,
        max_retry_after_ms: 10_000,
        ..RetryConfig::default()
    };
    let handle =
        SinkRuntime::spawn(Arc::new(sink), dir.path(), spool_config(), retry, metrics).unwrap();
    const N: u64 = 10_000;
    let started = Instant::now();
    for start in (0..N).step_by(1000) {
        enqueue(&handle, csl_batch(start..start + 1000)).await;
    }
    wait_for("delivery", outage + Duration::from_secs(20), || {
        fake.accepted.count() as u64 >= N
    })
    .await;
    assert!(started.elapsed() >= outage);
    wait_for("spool drained", Duration::from_secs(5), || {
        handle.stats().spool.records == 0
    })
    .await;
    assert_eq!(fake.accepted.ids("ExternalID"), (0..N).collect::<Vec<_>>());
    let seen = server.seen();
    assert!(seen.iter().filter(|s| s.status == 500).count() >= 10);
    let stats = handle.stats().sink;
    assert!(stats.retries >= 10);
    assert_eq!(stats.dead_lettered_events, 0);
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_2_s_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let fake = SekoiaFake::new();
    let server = serve(fake.handler()).await;
    server
        .faults
        .next
        .lock()
        .unwrap()
        .push_back((429, Some("2")));
    let cfg = sekoia_config(&server.url(), &secret_file(dir.path(), "key", fake.key));
    let metrics = SinkMetrics::new("sekoia");
    let mut spool = spool_config();
    spool.max_bytes = 64 << 20;
    let sink = SekoiaSink::new("sekoia", &cfg, metrics.clone()).unwrap();
    let retry = RetryConfig {
        concurrency: 1,
        ..fast_retry()
    };
    let handle = SinkRuntime::spawn(Arc::new(sink), dir.path(), spool, retry, metrics).unwrap();
    enqueue(&handle, raw_batch(0..100)).await;
    wait_for("delivery", Duration::from_secs(10), || {
        fake.accepted.count() == 100
    })
    .await;
    let seen = server.seen();
    assert_eq!(seen[0].status, 429);
    assert_eq!(seen[1].status, 200);
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_secs(2), "next attempt after {gap:?}");
    assert!(gap < Duration::from_secs(4), "next attempt after {gap:?}");
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_sink_grows_the_spool_then_drains_it() {
    let dir = tempfile::tempdir().unwrap();
    let fake = RelayFake::new();
    let addr = free_addr();
    let cfg = relay_config(&format!("http://{addr}"), "ndjson", "gzip");
    let handle = http_sink(dir.path(), "relay", &cfg);
    const N: u64 = 5000;
    for start in (0..N).step_by(500) {
        enqueue(&handle, csl_batch(start..start + 500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = handle.stats();
    assert_eq!(during.spool.events, N, "{during:?}");
    assert!(during.spool.bytes > N * 300);
    assert!(during.spool.oldest_created_ms > 0);
    assert!(during.sink.requests_failed >= 4, "{during:?}");
    let _server = serve_at(addr, fake.handler()).await;
    wait_for("delivery", Duration::from_secs(20), || {
        fake.accepted.count() as u64 >= N
    })
    .await;
    wait_for("spool drained", Duration::from_secs(5), || {
        handle.stats().spool.records == 0
    })
    .await;
    assert_eq!(fake.accepted.ids("ExternalID"), (0..N).collect::<Vec<_>>());
    let after = handle.stats();
    assert_eq!((after.spool.events, after.spool.oldest_created_ms), (0, 0));
    assert!(after.spool.bytes < during.spool.bytes);
    handle.shutdown(Duration::from_secs(5)).await;
}

/// Simulates `kill -9` of the sink's process and returns once that "process" is gone.
///
/// Dropping the handle only *requests* the abort: tokio drops the aborted driver later, on a
/// worker, and the uploads it owns only then. Until that happens they keep retrying, may get a
/// 2xx and ack (moving the cursor), and keep the spool open. A real crash is over when the
/// process is gone, which a supervisor sees as the spool's flock being free: wait for that
/// before touching the files or starting the next instance.
async fn crash(handle: SinkHandle, spool_dir: &Path) {
    use std::os::fd::AsRawFd;
    drop(handle);
    let lock = std::fs::File::open(spool_dir.join("lock")).unwrap();
    wait_for(
        "the crashed instance to let go of its spool",
        Duration::from_secs(10),
        || {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
        },
    )
    .await;
    // Dropping `lock` releases it for the next instance.
}

/// The service while it is down: 503 to everything, for good. The crashed instance talks only
/// to this one, so nothing it sent can be accepted: an HTTP/1 request already written to the
/// socket when its upload was aborted is still answered by the server afterwards, and against
/// a server that had recovered by then it would legitimately be accepted without an ack
/// (at-least-once: replayed, delivered twice).
async fn down_server() -> Server {
    let down = serve(RelayFake::new().handler()).await;
    answer_503_for_an_hour(&down);
    down
}

/// The service is down (503) until the test clears `fail_until`.
fn answer_503_for_an_hour(server: &Server) {
    *server.faults.fail_until.lock().unwrap() =
        Some((Instant::now() + Duration::from_secs(3600), 503));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_while_sink_down_then_restart_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool").join("relay");
    let down = down_server().await;
    let fake = RelayFake::new();
    let server = serve(fake.handler()).await;
    // Still failing while the restarted instance opens its spool, so that the count read
    // right after the restart is what was replayed from disk, not minus a first upload.
    answer_503_for_an_hour(&server);
    const N: u64 = 4000;
    {
        let cfg = relay_config(&down.url(), "ndjson", "gzip");
        let handle = http_sink(dir.path(), "relay", &cfg);
        for start in (0..N).step_by(400) {
            enqueue(&handle, csl_batch(start..start + 400)).await;
        }
        wait_for("attempts", Duration::from_secs(10), || {
            handle.stats().sink.retries >= 8
        })
        .await;
        // No shutdown: the tasks are aborted mid-retry, as a kill -9 would.
        crash(handle, &spool_dir).await;
    }
    let cfg = relay_config(&server.url(), "ndjson", "gzip");
    let handle = http_sink(dir.path(), "relay", &cfg);
    assert_eq!(handle.stats().spool.events, N, "replayed from disk");
    *server.faults.fail_until.lock().unwrap() = None;
    wait_for("delivery", Duration::from_secs(20), || {
        fake.accepted.count() as u64 >= N
    })
    .await;
    wait_for("spool drained", Duration::from_secs(5), || {
        handle.stats().spool.records == 0
    })
    .await;
    // Exactly once: the crashed instance never got a 2xx, so nothing was acked before the
    // crash and nothing reached the service twice.
    assert_eq!(fake.accepted.ids("ExternalID"), (0..N).collect::<Vec<_>>());
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_full_drop_oldest_counts_every_drop() {
    let dir = tempfile::tempdir().unwrap();
    let fake = RelayFake::new();
    let server = serve(fake.handler()).await;
    answer_503_for_an_hour(&server);
    let cfg = relay_config(&server.url(), "ndjson", "gzip");
    let metrics = SinkMetrics::new("relay");
    let spool = SpoolConfig {
        max_bytes: 256 << 10,
        segment_bytes: 32 << 10,
        when_full: WhenFull::DropOldest,
        ..spool_config()
    };
    let handle = spawn(
        HttpSink::new("relay", &cfg, metrics.clone()).unwrap(),
        metrics,
        dir.path(),
        spool,
    );
    const N: u64 = 5000;
    let mut dropped_reported = 0;
    for start in (0..N).step_by(10) {
        if let Enqueued::Accepted { dropped_events, .. } =
            enqueue(&handle, csl_batch(start..start + 10)).await
        {
            dropped_reported += dropped_events;
        }
    }
    let full = handle.stats();
    assert!(full.spool.bytes <= 256 << 10, "{full:?}");
    assert_eq!(full.spool.dropped_events, dropped_reported);
    assert!(dropped_reported > 0);
    *server.faults.fail_until.lock().unwrap() = None;
    wait_for("spool drained", Duration::from_secs(20), || {
        handle.stats().spool.records == 0
    })
    .await;
    let ids = fake.accepted.ids("ExternalID");
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no duplicates");
    assert_eq!(
        ids.len() as u64 + dropped_reported,
        N,
        "delivered + dropped = sent"
    );
    // The newest events are the ones kept.
    assert_eq!(*ids.last().unwrap(), N - 1);
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_full_block_holds_the_producer_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = RelayFake::new();
    let server = serve(fake.handler()).await;
    answer_503_for_an_hour(&server);
    let cfg = relay_config(&server.url(), "ndjson", "gzip");
    let metrics = SinkMetrics::new("relay");
    let spool = SpoolConfig {
        max_bytes: 256 << 10,
        segment_bytes: 32 << 10,
        when_full: WhenFull::Block,
        ..spool_config()
    };
    let handle = Arc::new(spawn(
        HttpSink::new("relay", &cfg, metrics.clone()).unwrap(),
        metrics,
        dir.path(),
        spool,
    ));
    const N: u64 = 5000;
    let producer = {
        let handle = handle.clone();
        std::thread::spawn(move || {
            for start in (0..N).step_by(10) {
                assert!(matches!(
                    handle.enqueue(&csl_batch(start..start + 10)),
                    Enqueued::Accepted { .. }
                ));
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!producer.is_finished(), "the producer is held back");
    let held = handle.stats();
    assert!(
        held.spool.bytes <= 256 << 10 && held.spool.events < N,
        "{held:?}"
    );
    *server.faults.fail_until.lock().unwrap() = None;
    wait_for("producer", Duration::from_secs(30), || {
        producer.is_finished()
    })
    .await;
    producer.join().unwrap();
    wait_for("spool drained", Duration::from_secs(20), || {
        handle.stats().spool.records == 0
    })
    .await;
    assert_eq!(fake.accepted.ids("ExternalID"), (0..N).collect::<Vec<_>>());
    assert_eq!(handle.stats().spool.dropped_events, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_bit_flipped_segments_are_quarantined_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool").join("relay");
    let down = down_server().await;
    let fake = RelayFake::new();
    let server = serve(fake.handler()).await;
    // Failing until the restarted instance's replay count has been read.
    answer_503_for_an_hour(&server);
    let spool = SpoolConfig {
        segment_bytes: 16 << 10,
        ..spool_config()
    };
    const N: u64 = 1000;
    {
        let cfg = relay_config(&down.url(), "ndjson", "gzip");
        let metrics = SinkMetrics::new("relay");
        let handle = spawn(
            HttpSink::new("relay", &cfg, metrics.clone()).unwrap(),
            metrics,
            dir.path(),
            spool.clone(),
        );
        for start in (0..N).step_by(10) {
            enqueue(&handle, csl_batch(start..start + 10)).await;
        }
        // The files are damaged only once no task of this instance can read or ack them.
        crash(handle, &spool_dir).await;
    }
    let mut segments: Vec<_> = std::fs::read_dir(&spool_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "seg") && std::fs::metadata(p).unwrap().len() > 0
        })
        .collect();
    segments.sort();
    assert!(segments.len() >= 3);
    let first = &segments[0];
    let mut bytes = std::fs::read(first).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(first, &bytes).unwrap();
    let last = segments.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 100)
        .unwrap();

    let cfg = relay_config(&server.url(), "ndjson", "gzip");
    let metrics = SinkMetrics::new("relay");
    let handle = spawn(
        HttpSink::new("relay", &cfg, metrics.clone()).unwrap(),
        metrics,
        dir.path(),
        spool,
    );
    let stats = handle.stats().spool;
    assert_eq!(stats.quarantined_ranges, 2, "{stats:?}");
    assert_eq!(stats.events, N - 20, "{stats:?}");
    *server.faults.fail_until.lock().unwrap() = None;
    wait_for("spool drained", Duration::from_secs(20), || {
        handle.stats().spool.records == 0
    })
    .await;
    let ids = fake.accepted.ids("ExternalID");
    assert_eq!(ids.len() as u64, N - 20);
    // The last batch was torn; one whole batch of 10 from the first segment is gone.
    assert!(!ids.contains(&(N - 1)));
    assert_eq!(
        std::fs::read_dir(spool_dir.join("quarantine"))
            .unwrap()
            .count(),
        2
    );
    handle.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------------
// Throughput (a measurement, not a pass/fail bound: run with `--ignored --nocapture`). The
// machine is shared, so CPU time of the whole process (sink + spool + fake server) is reported
// beside wall time.

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Counts events without parsing them, so the measurement is about the sink.
fn counting_handler(count: Arc<std::sync::atomic::AtomicU64>, array: bool) -> Handler {
    Arc::new(move |parts, body| {
        let mut data = Vec::new();
        if parts.headers.get("content-encoding").is_some() {
            use std::io::Read;
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut data)
                .unwrap();
        } else {
            data.extend_from_slice(body);
        }
        // One `"ExternalID":` per row in both formats.
        let n = memchr::memmem::find_iter(&data, b"\"ExternalID\":").count() as u64;
        count.fetch_add(n, Ordering::SeqCst);
        reply(if array { 204 } else { 200 }, "")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_to_local_sinks() {
    for (kind, fsync) in [
        ("http", FsyncPolicy::Batch),
        ("azure", FsyncPolicy::Batch),
        ("azure", FsyncPolicy::Interval),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let spool_config = || SpoolConfig {
            fsync,
            ..spool_config()
        };
        const N: u64 = 200_000;
        let batches: Vec<_> = (0..N)
            .step_by(2000)
            .map(|s| csl_batch(s..s + 2000))
            .collect();
        let raw_bytes: usize = batches.iter().map(|b| b.ndjson.len()).sum();
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let az = azure().await;
        let server = serve(counting_handler(count.clone(), kind == "azure")).await;
        let metrics = SinkMetrics::new(kind);
        let handle = if kind == "http" {
            let cfg = relay_config(&server.url(), "ndjson", "gzip");
            spawn(
                HttpSink::new(kind, &cfg, metrics.clone()).unwrap(),
                metrics,
                dir.path(),
                spool_config(),
            )
        } else {
            let mut cfg = azure_config(&az, dir.path(), az.fake.client_secret, "");
            cfg.endpoint = server.url();
            spawn(
                AzureLogsIngestionSink::new(kind, &cfg, metrics.clone()).unwrap(),
                metrics,
                dir.path(),
                spool_config(),
            )
        };
        let (start, cpu0) = (Instant::now(), cpu_seconds());
        for b in batches {
            handle.enqueue_async(b).await;
        }
        wait_for("delivery", Duration::from_secs(300), || {
            count.load(Ordering::SeqCst) >= N
        })
        .await;
        let (secs, cpu) = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
        let s = handle.stats().sink;
        println!(
            "{kind} (fsync {fsync:?}): {N} events ({:.1} MB NDJSON, {:.1} MB gzip) in {secs:.2}s wall / {cpu:.2} CPU-s: \
             {:.0} events/s, {:.1} MB/s compressed, {:.1} requests/s; {:.0} events per CPU-second",
            raw_bytes as f64 / 1e6,
            s.sent_bytes as f64 / 1e6,
            N as f64 / secs,
            s.sent_bytes as f64 / 1e6 / secs,
            s.requests_ok as f64 / secs,
            N as f64 / cpu,
        );
        handle.shutdown(Duration::from_secs(5)).await;
    }
}
