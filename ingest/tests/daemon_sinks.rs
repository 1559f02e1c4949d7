//! End-to-end tests of the `sluice` binary with HTTP sinks behind the spool: real TCP input on
//! 127.0.0.1, in-process fakes of the services (`sinks_support`), the file sink's output.

mod daemon_support;
mod sinks_support;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use sinks_support::{
    ElasticFake, RelayFake, SekoiaFake, SplunkFake, free_addr, secret_file, serve, serve_at,
};

struct Daemon {
    child: Child,
    log: daemon_support::Log,
    tcp: SocketAddr,
}

impl Daemon {
    fn start(config_path: &Path) -> Daemon {
        let (child, log) =
            daemon_support::started(daemon_support::run_command(config_path).spawn().unwrap());
        let tcp =
            daemon_support::logged_addr(&log, "listening on tcp ").expect("tcp address in the log");
        Daemon { child, log, tcp }
    }

    fn log(&self) -> String {
        daemon_support::log_text(&self.log)
    }

    fn send(&self, lines: &[String]) {
        let mut s = TcpStream::connect(self.tcp).unwrap();
        for l in lines {
            s.write_all(l.as_bytes()).unwrap();
            s.write_all(b"\n").unwrap();
        }
        s.flush().unwrap();
    }

    /// SIGTERM and a clean exit.
    fn stop(mut self) -> String {
        daemon_support::stop_cleanly(&mut self.child, &self.log, Duration::from_secs(60));
        self.log()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cef(i: usize) -> String {
    format!(
        "<134>Jan  1 00:00:00 dt CEF:0|Darktrace|DCIP|6.1|100|Model breach m{i}x|5|src=10.0.0.1 externalId={i}"
    )
}

fn json(i: usize) -> String {
    format!("<134>Jan  1 00:00:00 dt app: {{\"marker\":\"m{i}x\",\"n\":{i}}}")
}

/// How often each `m<i>x` marker occurs in `texts`.
fn markers<'a>(texts: impl IntoIterator<Item = &'a str>) -> HashMap<usize, usize> {
    let mut seen = HashMap::new();
    for t in texts {
        let mut rest = t;
        while let Some(p) = rest.find('m') {
            rest = &rest[p + 1..];
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if !digits.is_empty() && rest[digits.len()..].starts_with('x') {
                *seen.entry(digits.parse().unwrap()).or_insert(0) += 1;
                break;
            }
        }
    }
    seen
}

fn wait_until(what: &str, daemon: &Daemon, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < timeout,
            "{what} after {timeout:?}:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_config(dir: &Path, sinks: &str) -> std::path::PathBuf {
    write_config_with(dir, "", sinks)
}

/// [`write_config`] with more `[pipeline]` keys.
fn write_config_with(dir: &Path, pipeline: &str, sinks: &str) -> std::path::PathBuf {
    let config = format!(
        "data_dir = {data:?}\n[metrics]\nlisten = \"127.0.0.1:0\"\n[pipeline]\nworkers = 2\n{pipeline}\
         [sources.tcp_in]\ntype = \"tcp\"\nlisten = \"127.0.0.1:0\"\nframing = \"lf\"\n{sinks}",
        data = dir.join("data").display().to_string(),
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn relay_sink(url: &str, extra: &str) -> String {
    format!(
        "[sinks.relay]\ntype = \"http\"\nurl = \"{url}/in\"\nheaders = {{ x-api-key = \"relay-key\" }}\n\
         batch_timeout_ms = 100\n{extra}[sinks.relay.retry]\ninitial_backoff_ms = 100\nmax_backoff_ms = 500\n"
    )
}

fn file_sink(dir: &Path) -> String {
    format!(
        "[sinks.archive]\ntype = \"file\"\npath = {:?}\ncompression = \"none\"\nbatch_timeout_ms = 100\n",
        dir.join("out").display().to_string()
    )
}

/// TCP → daemon → generic HTTP sink and file sink, both behind their spools: exactly N each,
/// in the sluice schema.
#[test]
fn tcp_to_http_and_file_sinks_exactly_n() {
    const N: usize = 3000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let relay = RelayFake::new();
    let server = rt.block_on(serve(relay.handler()));
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("{}{}", relay_sink(&server.url(), ""), file_sink(dir.path())),
    );
    let daemon = Daemon::start(&cfg);
    let lines: Vec<String> = (0..N)
        .map(|i| if i % 2 == 0 { cef(i) } else { json(i) })
        .collect();
    daemon.send(&lines);
    wait_until("relay got N", &daemon, Duration::from_secs(60), || {
        relay.accepted.count() >= N
    });
    wait_until("file has N", &daemon, Duration::from_secs(60), || {
        daemon_support::finished_batch_lines(&dir.path().join("out")).len() >= N
    });
    let log = daemon.stop();
    assert!(log.contains("sink_events=6000"), "{log}");
    let events = relay.accepted.events.lock().unwrap().clone();
    assert_eq!(events.len(), N);
    for e in &events {
        assert_eq!(e["source"], "tcp_in", "sluice schema: {e}");
        assert!(e["kind"].is_string(), "sluice schema: {e}");
    }
    let texts: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    let seen = markers(texts.iter().map(String::as_str));
    assert_eq!(seen.len(), N);
    assert!(seen.values().all(|&c| c == 1));
    let file = daemon_support::finished_batch_lines(&dir.path().join("out"));
    assert_eq!(file.len(), N);
    let seen = markers(file.iter().map(String::as_str));
    assert_eq!(seen.len(), N);
    // Everything delivered: the spools are empty.
    assert!(
        !dir.path().join("data/dead_letter/relay").exists()
            || std::fs::read_dir(dir.path().join("data/dead_letter/relay"))
                .unwrap()
                .next()
                .is_none()
    );
}

/// `kill -9` while the HTTP sink is unreachable; restart with it up: every spooled event is
/// delivered (duplicates are counted, none lost).
#[test]
fn kill_9_while_sink_down_then_restart_delivers_everything() {
    const N: usize = 2000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &relay_sink(&format!("http://{addr}"), ""));
    let mut daemon = Daemon::start(&cfg);
    let lines: Vec<String> = (0..N).map(cef).collect();
    daemon.send(&lines);
    let spool = dir.path().join("data/spool/relay");
    // Wait until the whole input is in the spool and the sink has failed at least once.
    wait_until("retries logged", &daemon, Duration::from_secs(30), || {
        let bytes = spool_bytes(&spool);
        bytes as usize > N * 100
    });
    std::thread::sleep(Duration::from_millis(500));
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    drop(daemon);

    let relay = RelayFake::new();
    let _server = rt.block_on(serve_at(addr, relay.handler()));
    let daemon = Daemon::start(&cfg);
    wait_until(
        "all delivered after restart",
        &daemon,
        Duration::from_secs(60),
        || relay.accepted.count() >= N,
    );
    let log = daemon.stop();
    assert!(log.contains("earlier run left in the spool"), "{log}");
    let texts = relay.accepted.texts();
    let seen = markers(texts.iter().map(String::as_str));
    let missing: Vec<usize> = (0..N).filter(|i| !seen.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "lost {} events: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let duplicates = texts.len() - N;
    eprintln!(
        "delivered {} for {N} sent: {duplicates} duplicates",
        texts.len()
    );
}

/// Bytes in the files of a spool directory (0 before it exists).
fn spool_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The value of `key=<n>` in the daemon's "shut down" log line.
fn shutdown_total(log: &str, key: &str) -> u64 {
    let line = log
        .lines()
        .rfind(|l| l.contains("shut down"))
        .unwrap_or_else(|| panic!("no shutdown line:\n{log}"));
    let pattern = format!(" {key}=");
    let at = line
        .find(&pattern)
        .unwrap_or_else(|| panic!("no {key}: {line}"))
        + pattern.len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

/// SIGTERM while the HTTP sink is down and its spool full under `when_full = "block"`: the
/// pipeline threads wait on the spool, yet shutdown ends within its grace (plus the readers'
/// drain), refusing what cannot be spooled and counting it. A restart with the sink up
/// delivers the rest: every event received is delivered or counted.
#[test]
fn sigterm_with_a_full_blocking_spool_ends_within_the_grace_and_counts_the_refused() {
    const N: usize = 20_000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let spool = "batch_max_bytes = 65536\n[sinks.relay.spool]\nmax_bytes = 1048576\n\
                 when_full = \"block\"\n";
    let cfg = write_config_with(
        dir.path(),
        "shutdown_grace_ms = 1000\n",
        &relay_sink(&format!("http://{addr}"), spool),
    );
    let mut daemon = Daemon::start(&cfg);
    let tcp = daemon.tcp;
    // The daemon stops reading once the spool is full: send from a thread that ends when
    // shutdown resets the connection.
    let sender = std::thread::spawn(move || {
        let mut s = TcpStream::connect(tcp).unwrap();
        for i in 0..N {
            if s.write_all(format!("{}\n", cef(i)).as_bytes()).is_err() {
                return;
            }
        }
    });
    let spool_dir = dir.path().join("data/spool/relay");
    wait_until("spool full", &daemon, Duration::from_secs(60), || {
        let bytes = spool_bytes(&spool_dir);
        bytes > 1_048_576 - 2 * 65_536
    });
    std::thread::sleep(Duration::from_millis(500));
    let stopping = Instant::now();
    // SAFETY: signalling our own child process by its pid; it is not reaped yet.
    assert_eq!(
        unsafe { libc::kill(daemon.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    // 1 s of grace, up to 2 s reading what the kernel still holds, 1 s for the sink runtime.
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "no exit 10 s after SIGTERM:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(50));
    let log = daemon.log();
    drop(daemon);
    let _ = sender.join();
    // Lost events make the exit status a failure, after a clean shutdown.
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("some events could not be delivered"), "{log}");
    let received = shutdown_total(&log, "received");
    let refused = shutdown_total(&log, "sink_dropped_events");
    let reader_dropped = shutdown_total(&log, "dropped_queue_full");
    assert!(refused > 0, "{log}");
    let spooled = received - refused - reader_dropped;

    let relay = RelayFake::new();
    let _server = rt.block_on(serve_at(addr, relay.handler()));
    let daemon = Daemon::start(&cfg);
    wait_until(
        "the spooled events delivered after restart",
        &daemon,
        Duration::from_secs(60),
        || relay.accepted.count() as u64 >= spooled,
    );
    let _ = daemon.stop();
    let texts = relay.accepted.texts();
    assert_eq!(
        markers(texts.iter().map(String::as_str)).len() as u64,
        spooled,
        "received {received}, refused {refused}, dropped by readers {reader_dropped}"
    );
}

/// Routing by event kind: CEF → Sekoia only, JSON → the generic relay only.
#[test]
fn routing_cef_to_one_sink_json_to_another() {
    const N: usize = 1000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let relay = RelayFake::new();
    let relay_server = rt.block_on(serve(relay.handler()));
    let sekoia = SekoiaFake::new();
    let sekoia_server = rt.block_on(serve(sekoia.handler()));
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("intake_key");
    std::fs::write(&key, format!("{}\n", sekoia.key)).unwrap();
    // Secret files must be private or sluice refuses them.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let sinks = format!(
        "{}[sinks.sek]\ntype = \"sekoia\"\nurl = \"{}\"\nintake_key_file = {:?}\n\
         kinds = [\"cef\"]\nbatch_timeout_ms = 100\n",
        relay_sink(&relay_server.url(), "kinds = [\"json\"]\n"),
        sekoia_server.url(),
        key.display().to_string()
    );
    let cfg = write_config(dir.path(), &sinks);
    let daemon = Daemon::start(&cfg);
    let lines: Vec<String> = (0..N)
        .map(|i| if i % 2 == 0 { cef(i) } else { json(i) })
        .collect();
    daemon.send(&lines);
    wait_until(
        "both sinks got theirs",
        &daemon,
        Duration::from_secs(60),
        || relay.accepted.count() >= N / 2 && sekoia.accepted.count() >= N / 2,
    );
    let _ = daemon.stop();
    let sek: Vec<String> = sekoia
        .accepted
        .events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect();
    let sek_seen = markers(sek.iter().map(String::as_str));
    assert_eq!(sek.len(), N / 2);
    assert!(sek_seen.keys().all(|i| i % 2 == 0), "only CEF at Sekoia");
    assert!(
        sek.iter().all(|raw| raw.contains("CEF:0|")),
        "raw schema at Sekoia"
    );
    let rel = relay.accepted.texts();
    let rel_seen = markers(rel.iter().map(String::as_str));
    assert_eq!(rel.len(), N / 2);
    assert!(
        rel_seen.keys().all(|i| i % 2 == 1),
        "only JSON at the relay"
    );
}

/// A secret file sluice accepts (private to its owner).
fn private_secret(dir: &Path, name: &str, value: &str) -> std::path::PathBuf {
    let path = secret_file(dir, name, value);
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

/// Rotating credentials as an operator does: write the new value into the secret file, then
/// `systemctl reload` (SIGHUP). The sink sends the new HEC token from then on (its first
/// request after the reload already carries it: no 401 on the way), `/metrics` takes only the
/// new scrape token, and the log names what was renewed. No restart, nothing lost.
#[test]
fn sighup_renews_rotated_credential_files() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let splunk = SplunkFake::new(false);
    let server = rt.block_on(serve(splunk.handler()));
    *splunk.valid_tokens.lock().unwrap() = vec!["hec-old".to_owned(), "hec-new".to_owned()];
    let dir = tempfile::tempdir().unwrap();
    let token = private_secret(dir.path(), "hec", "hec-old");
    let scrape = private_secret(dir.path(), "scrape", "scrape-old");
    let config = format!(
        "data_dir = {data:?}\n[metrics]\nlisten = \"127.0.0.1:0\"\nbearer_token_file = {scrape:?}\n\
         [sources.tcp_in]\ntype = \"tcp\"\nlisten = \"127.0.0.1:0\"\nframing = \"lf\"\n\
         [sinks.hec]\ntype = \"splunk_hec\"\nendpoint = \"{url}\"\ntoken_file = {token:?}\n\
         batch_timeout_ms = 100\n",
        data = dir.path().join("data").display().to_string(),
        scrape = scrape.display().to_string(),
        token = token.display().to_string(),
        url = server.url(),
    );
    let config_path = dir.path().join("sluice.toml");
    std::fs::write(&config_path, config).unwrap();
    let daemon = Daemon::start(&config_path);
    let metrics = daemon_support::logged_addr(&daemon.log, "metrics on http://").unwrap();
    let status = |token: &str| {
        daemon_support::scrape_metrics(metrics, Some(token))
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(status("scrape-old").contains(" 200 "));
    // HEC's series for the alerting rules are there before anything happens.
    let exported = daemon_support::exported_names(&daemon_support::scrape_metrics(
        metrics,
        Some("scrape-old"),
    ));
    for name in [
        "sluice_sink_unconfirmed_events_total",
        "sluice_sink_dead_letter_events_total",
        "sluice_sink_dead_letter_write_errors_total",
    ] {
        assert!(exported.contains(name), "{name} not exported: {exported:?}");
    }

    daemon.send(&(0..100).map(cef).collect::<Vec<_>>());
    wait_until(
        "the first 100 delivered",
        &daemon,
        Duration::from_secs(30),
        || splunk.accepted.count() == 100,
    );

    std::fs::write(&token, "hec-new\n").unwrap();
    std::fs::write(&scrape, "scrape-new\n").unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_until("the reload", &daemon, Duration::from_secs(20), || {
        daemon.log().contains("config reloaded")
    });
    let log = daemon.log();
    let reloaded = log.lines().find(|l| l.contains("config reloaded")).unwrap();
    assert!(
        reloaded.contains("sinks.hec.token") && reloaded.contains("metrics.bearer_token"),
        "{reloaded}"
    );
    assert!(
        !log.contains("hec-new") && !log.contains("scrape-new"),
        "{log}"
    );
    assert!(status("scrape-old").contains(" 401 "));
    let text = daemon_support::scrape_metrics(metrics, Some("scrape-new"));
    assert_eq!(
        daemon_support::metric_value(&text, "sluice_config_restart_pending", &[]),
        0,
        "a rotated file is not a restart"
    );

    // The old token is revoked once the new one is in place.
    *splunk.valid_tokens.lock().unwrap() = vec!["hec-new".to_owned()];
    daemon.send(&(100..200).map(cef).collect::<Vec<_>>());
    wait_until(
        "all 200 delivered",
        &daemon,
        Duration::from_secs(30),
        || splunk.accepted.count() == 200,
    );
    assert!(
        server.seen().iter().all(|s| s.status == 200),
        "every request carried a valid token"
    );
    let texts = splunk.accepted.texts();
    let seen = markers(texts.iter().map(String::as_str));
    assert_eq!(seen.len(), 200);
    assert!(seen.values().all(|&n| n == 1));
    daemon.stop();
}

/// TCP → daemon → Splunk HEC and an Elasticsearch data stream (`schema = "raw"`): each HEC
/// envelope carries the event's own time (CEF `rt`, else the syslog timestamp, else the
/// receive time) and its syslog host (else the configured `host`), and every raw document has
/// the same time as `@timestamp`, which the data stream requires.
#[test]
fn splunk_envelopes_and_elasticsearch_raw_documents_carry_the_event_time() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let splunk = SplunkFake::new(false);
    let splunk_server = rt.block_on(serve(splunk.handler()));
    let elastic = ElasticFake::data_stream();
    let elastic_server = rt.block_on(serve(elastic.handler()));
    let dir = tempfile::tempdir().unwrap();
    let token = private_secret(dir.path(), "hec", splunk.token);
    let api_key = private_secret(dir.path(), "es", elastic.api_key);
    let sinks = format!(
        "[sinks.splunk]\ntype = \"splunk_hec\"\nendpoint = \"{}\"\ntoken_file = {:?}\n\
         index = \"sec\"\nhost = \"cfg-host\"\nbatch_timeout_ms = 100\n\
         [sinks.elastic]\ntype = \"elasticsearch\"\nendpoint = \"{}\"\n\
         index = \"logs-darktrace-default\"\napi_key_file = {:?}\nschema = \"raw\"\n\
         batch_timeout_ms = 100\n",
        splunk_server.url(),
        token.display().to_string(),
        elastic_server.url(),
        api_key.display().to_string(),
    );
    let cfg = write_config(dir.path(), &sinks);
    let daemon = Daemon::start(&cfg);
    let lines = [
        // `rt` (epoch ms) wins over the syslog timestamp.
        "<134>Mar  5 09:00:00 dt-master CEF:0|Darktrace|DCIP|6.1|100|Model breach m0x|5|rt=1709633472127 externalId=0".to_owned(),
        "<134>1 2024-03-05T10:11:12.345+01:00 dt-5424 app - - - m1x plain text".to_owned(),
        // No header: no host, no time but the receive time.
        "m2x without a syslog header".to_owned(),
    ];
    let before = chrono::Utc::now().timestamp_millis();
    daemon.send(&lines);
    let dead_letters = dir.path().join("data/dead_letter/elastic");
    let refused = || std::fs::read_dir(&dead_letters).is_ok_and(|mut d| d.next().is_some());
    wait_until("both sinks got 3", &daemon, Duration::from_secs(60), || {
        splunk.accepted.count() >= 3 && (elastic.accepted.count() >= 3 || refused())
    });
    let after = chrono::Utc::now().timestamp_millis();
    let _ = daemon.stop();
    let received = |millis: i64| (before - 1000..=after + 1000).contains(&millis);

    let envelopes = splunk.envelopes.lock().unwrap().clone();
    assert_eq!(envelopes.len(), 3, "{envelopes:?}");
    let by_marker = |values: &[serde_json::Value], i: usize| {
        values
            .iter()
            .find(|v| markers([v.to_string().as_str()]).contains_key(&i))
            .unwrap_or_else(|| panic!("no m{i}x in {values:?}"))
            .clone()
    };
    let time = |e: &serde_json::Value| -> i64 {
        let t = e["time"].as_f64().unwrap_or_else(|| panic!("time: {e}"));
        (t * 1000.0).round() as i64
    };
    let cef = by_marker(&envelopes, 0);
    assert_eq!(time(&cef), 1_709_633_472_127, "{cef}");
    assert_eq!(cef["host"], "dt-master", "{cef}");
    assert_eq!(cef["index"], "sec", "{cef}");
    assert_eq!(cef["event"]["source"], "tcp_in", "sluice schema: {cef}");
    let rfc5424 = by_marker(&envelopes, 1);
    assert_eq!(time(&rfc5424), 1_709_629_872_345, "{rfc5424}");
    assert_eq!(rfc5424["host"], "dt-5424", "{rfc5424}");
    let bare = by_marker(&envelopes, 2);
    assert!(received(time(&bare)), "{bare}");
    assert_eq!(bare["host"], "cfg-host", "{bare}");

    assert!(!refused(), "the data stream refused documents");
    let docs = elastic.accepted.events.lock().unwrap().clone();
    assert_eq!(docs.len(), 3, "{docs:?}");
    let stamp = |d: &serde_json::Value| -> i64 {
        let t = d["@timestamp"].as_str().unwrap_or_else(|| panic!("{d}"));
        assert!(
            t.ends_with('Z') && t.len() == 24,
            "RFC 3339 UTC with ms: {t}"
        );
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .timestamp_millis()
    };
    let cef = by_marker(&docs, 0);
    assert_eq!(cef["@timestamp"], "2024-03-05T10:11:12.127Z", "{cef}");
    assert_eq!(cef["message"], lines[0], "raw schema: {cef}");
    assert_eq!(
        by_marker(&docs, 1)["@timestamp"],
        "2024-03-05T09:11:12.345Z"
    );
    assert!(received(stamp(&by_marker(&docs, 2))));
}

/// Every `deploy/examples/*.toml` passes `sluice check-config` given its secret files, and the
/// printed effective config never shows a secret.
#[test]
fn deploy_examples_pass_check_config() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/run/secrets/", &format!("{}/", secrets.display()))
            .replace("/etc/sluice/secrets/", &format!("{}/", secrets.display()));
        for line in text.lines() {
            if let Some((_, value)) = line.split_once("_file = \"") {
                let file = value.split('"').next().unwrap();
                std::fs::write(file, "dummy-secret-value\n").unwrap();
                std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .unwrap();
            }
        }
        let copy = dir.path().join(path.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        let out = daemon_support::check_config(&copy);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}{stdout}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("[sinks.archive]"), "{stdout}");
        assert!(!stdout.contains("dummy-secret-value"), "{stdout}");
        checked += 1;
    }
    assert!(checked >= 4, "examples checked: {checked}");
}
