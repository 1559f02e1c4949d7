//! Acceptance tests of `[sources.NAME] type = "darktrace_api"` with the real `sluice` binary
//! against an in-process HTTPS appliance on 127.0.0.1 (certificate made here with rcgen,
//! trusted through `ca_file`).
//!
//! The fake appliance checks every request the documented way (HMAC-SHA1 over
//! `path?query\npublic\ndate`, computed here independently of the code under test), answers
//! `400 API SIGNATURE ERROR` / `400 API DATE ERROR` like the appliance, and serves the real
//! pseudonymised responses (`tests/data/darktrace/*_response.txt`, MIT, see the README there)
//! plus events derived from them, ascending by time from `starttime` to `endtime` (both
//! inclusive, `endtime` optional) and at most `PAGE` per answer, so the source has to page by
//! `starttime`.

mod daemon_support;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio_rustls::rustls;

const PUBLIC: &str = "sluice-public-token";
const PRIVATE: &str = "sluice-private-token";
/// Events per answer at most.
const PAGE: usize = 5;

const MODELBREACHES: &str = include_str!("data/darktrace/modelbreaches_response.txt");
const AIANALYST: &str = include_str!("data/darktrace/aianalyst_response.txt");

// ------------------------------------------------------------------------------------------
// The fake appliance
// ------------------------------------------------------------------------------------------

#[derive(Clone)]
struct StoredEvent {
    time: i64,
    id: String,
    text: String,
}

#[derive(Default)]
struct Appliance {
    /// Released events per endpoint path (`/modelbreaches`, ...).
    events: HashMap<String, Vec<StoredEvent>>,
    /// Requests per endpoint path: (starttime, verdict).
    requests: HashMap<String, Vec<(i64, &'static str)>>,
    /// `endtime` of each valid request per endpoint path, in order.
    endtimes: HashMap<String, Vec<Option<i64>>>,
    /// While true, valid requests wait before they are answered.
    hold: bool,
    /// Requests waiting in `hold`, per endpoint path.
    held: HashMap<String, usize>,
    /// Added to this server's clock when checking DTAPI-Date (simulates skew).
    clock_skew_secs: i64,
    /// Events without a time per endpoint path: in every answer, whatever its window.
    untimed: HashMap<String, Vec<String>>,
}

type Shared = Arc<Mutex<Appliance>>;

struct Server {
    addr: SocketAddr,
    state: Shared,
    ca_pem: String,
    runtime: tokio::runtime::Runtime,
}

impl Server {
    /// Writes this appliance's CA certificate to `path`, for a source's `ca_file`.
    fn ca_file(&self, path: PathBuf) -> PathBuf {
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
    }

    fn start() -> Server {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state: Shared = Arc::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let st = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Server {
            addr,
            state,
            ca_pem: ca.pem(),
            runtime,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn release(&self, path: &str, events: Vec<StoredEvent>) {
        self.state
            .lock()
            .unwrap()
            .events
            .entry(path.to_owned())
            .or_default()
            .extend(events);
    }

    fn release_untimed(&self, path: &str, text: String) {
        self.state
            .lock()
            .unwrap()
            .untimed
            .entry(path.to_owned())
            .or_default()
            .push(text);
    }

    fn requests(&self, path: &str) -> Vec<(i64, &'static str)> {
        self.state
            .lock()
            .unwrap()
            .requests
            .get(path)
            .cloned()
            .unwrap_or_default()
    }
}

fn answer(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

/// The documented recipe, written here independently of the daemon's code.
fn expected_signature(request_part: &str, public: &str, date: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(PRIVATE.as_bytes()).unwrap();
    mac.update(format!("{request_part}\n{public}\n{date}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

async fn handle(state: Shared, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let path = req.uri().path().to_owned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (token, date, signature) = (
        header("DTAPI-Token"),
        header("DTAPI-Date"),
        header("DTAPI-Signature"),
    );
    let param = |name: &str| {
        req.uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse::<i64>().ok())
    };
    let (starttime, endtime) = (param("starttime"), param("endtime"));
    let record = |verdict: &'static str| {
        state
            .lock()
            .unwrap()
            .requests
            .entry(path.clone())
            .or_default()
            .push((starttime.unwrap_or(-1), verdict));
    };
    if token != PUBLIC || signature != expected_signature(&target, &token, &date) {
        record("signature");
        return answer(400, r#"{"error":"API SIGNATURE ERROR"}"#);
    }
    let skew = state.lock().unwrap().clock_skew_secs;
    let now = chrono::Utc::now().timestamp() + skew;
    let sent = chrono::NaiveDateTime::parse_from_str(&date, "%Y%m%dT%H%M%S")
        .map(|d| d.and_utc().timestamp());
    if !sent.is_ok_and(|t| (t - now).abs() <= 300) {
        record("date");
        return answer(400, r#"{"error":"API DATE ERROR"}"#);
    }
    let Some(starttime) = starttime else {
        record("no_starttime");
        return answer(400, r#"{"error":"starttime required"}"#);
    };
    if path != "/modelbreaches" && path != "/aianalyst/incidentevents" {
        record("endpoint");
        return Response::builder()
            .status(302)
            .header("location", "/login")
            .body(Full::new(Bytes::from_static(
                b"Found. Redirecting to /login",
            )))
            .unwrap();
    }
    record("ok");
    state
        .lock()
        .unwrap()
        .endtimes
        .entry(path.clone())
        .or_default()
        .push(endtime);
    // Hold while asked to (the test kills the daemon in the meantime).
    let mut counted = false;
    loop {
        {
            let mut s = state.lock().unwrap();
            if !s.hold {
                if counted {
                    *s.held.get_mut(&path).unwrap() -= 1;
                }
                break;
            }
            if !counted {
                *s.held.entry(path.clone()).or_default() += 1;
                counted = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut page: Vec<StoredEvent> = state
        .lock()
        .unwrap()
        .events
        .get(&path)
        .map(|v| {
            v.iter()
                .filter(|e| e.time >= starttime && endtime.is_none_or(|end| e.time <= end))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    page.sort_by_key(|e| e.time);
    page.truncate(PAGE);
    let untimed = state
        .lock()
        .unwrap()
        .untimed
        .get(&path)
        .cloned()
        .unwrap_or_default();
    let body = format!(
        "[\n{}\n]",
        page.iter()
            .map(|e| e.text.as_str())
            .chain(untimed.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(",\n")
    );
    answer(200, body)
}

// ------------------------------------------------------------------------------------------
// Events: the real responses and events derived from them
// ------------------------------------------------------------------------------------------

fn real(text: &str, time_key: &str, id_key: &str) -> Vec<StoredEvent> {
    let items: Vec<Box<serde_json::value::RawValue>> = serde_json::from_str(text).unwrap();
    items
        .into_iter()
        .map(|raw| {
            let v: serde_json::Value = serde_json::from_str(raw.get()).unwrap();
            StoredEvent {
                time: v[time_key].as_i64().unwrap(),
                id: id_text(&v[id_key]),
                text: raw.get().to_owned(),
            }
        })
        .collect()
}

fn id_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A copy of `template` with a new id and time.
fn derived(
    template: &str,
    time_key: &str,
    id_key: &str,
    id: serde_json::Value,
    time: i64,
) -> StoredEvent {
    let mut v: serde_json::Value = serde_json::from_str(template).unwrap();
    v[time_key] = time.into();
    v[id_key] = id.clone();
    StoredEvent {
        time,
        id: id_text(&id),
        text: serde_json::to_string_pretty(&v).unwrap(),
    }
}

/// A model breach derived from the real one, with `pbid` and `time`.
fn breach(pbid: i64, time: i64) -> StoredEvent {
    let template = real(MODELBREACHES, "time", "pbid").remove(0).text;
    derived(&template, "time", "pbid", pbid.into(), time)
}

/// Model breaches derived from the real one: `n` events from `first_time`, every second pair
/// sharing one millisecond (so pages end between events of the same instant).
fn breaches(first_pbid: i64, n: i64, first_time: i64) -> Vec<StoredEvent> {
    (0..n)
        .map(|i| breach(first_pbid + i, first_time + (i / 2) * 1000))
        .collect()
}

// ------------------------------------------------------------------------------------------
// The daemon
// ------------------------------------------------------------------------------------------

struct Daemon {
    child: Child,
    log: daemon_support::Log,
    metrics: SocketAddr,
}

impl Daemon {
    fn start(dir: &Path, source: &str) -> Daemon {
        let config = format!(
            "data_dir = {data:?}\n[metrics]\nlisten = \"127.0.0.1:0\"\n[pipeline]\nworkers = 2\n\
             {source}\n\
             [sinks.out]\ntype = \"file\"\npath = {out:?}\ncompression = \"none\"\nbatch_timeout_ms = 100\n",
            data = dir.join("data").display().to_string(),
            out = dir.join("out").display().to_string(),
        );
        let path = dir.join("sluice.toml");
        std::fs::write(&path, config).unwrap();
        let (child, log) =
            daemon_support::started(daemon_support::run_command(&path).spawn().unwrap());
        Daemon {
            metrics: daemon_support::logged_addr(&log, "metrics on http://")
                .expect("metrics address in the log"),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        daemon_support::log_text(&self.log)
    }

    /// Waits (up to a minute) until the file sink's output in `out` holds at least `at_least`
    /// events; the log is shown if it never does.
    fn wait_for_delivered(&self, out: &Path, at_least: usize, what: &str) {
        wait_until(
            what,
            Duration::from_secs(60),
            || delivered(out).len() >= at_least,
            || self.log(),
        );
    }

    fn metrics_text(&self) -> String {
        daemon_support::scrape_metrics(self.metrics, None)
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        daemon_support::metric_value(&self.metrics_text(), name, labels)
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child process by its pid.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) },
            0
        );
    }

    /// SIGTERM and wait for a clean exit.
    fn stop(mut self) -> String {
        daemon_support::stop_cleanly(&mut self.child, &self.log, Duration::from_secs(30));
        self.log()
    }

    fn kill(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn source_config(url: &str, ca_file: &Path, private: &str, endpoints: &str) -> String {
    format!(
        "[sources.dt]\ntype = \"darktrace_api\"\nurl = {url:?}\npublic_token = {PUBLIC:?}\n\
         private_token = {private:?}\nca_file = {ca:?}\nendpoints = {endpoints}\n\
         poll_interval_ms = 300\nrate_limit_per_second = 20.0\n\
         first_poll_lookback_secs = 315360000\ninitial_backoff_ms = 500\nmax_backoff_ms = 4000\n",
        ca = ca_file.display().to_string(),
    )
}

/// (endpoint log_type, id) of every event in the file sink's output, in no particular order;
/// checks each line is a Darktrace event of the right kind from source `dt`.
fn delivered(out: &Path) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    for line in daemon_support::finished_batch_lines(out) {
        let line = line.as_str();
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["source"], "dt", "{line:.200}");
        assert_eq!(v["syslog"]["format"], "none", "{line:.200}");
        let log_type = v["json"]["log_type"].as_str().unwrap().to_owned();
        let (kind, id_key) = match log_type.as_str() {
            "modelbreaches" => ("darktrace_model_breach", "pbid"),
            "aianalyst/incidentevents" => ("darktrace_ai_analyst", "id"),
            other => panic!("log_type {other}"),
        };
        assert_eq!(v["kind"], kind, "{line:.200}");
        seen.push((log_type, id_text(&v["json"][id_key])));
    }
    seen
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < timeout,
            "timed out waiting for {what}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn expected_set(events: &[(&str, &[StoredEvent])]) -> BTreeMap<(String, String), usize> {
    let mut m = BTreeMap::new();
    for (endpoint, list) in events {
        for e in *list {
            *m.entry((endpoint.to_string(), e.id.clone())).or_default() += 1;
        }
    }
    m
}

fn counted(delivered: &[(String, String)]) -> BTreeMap<(String, String), usize> {
    let mut m = BTreeMap::new();
    for d in delivered {
        *m.entry(d.clone()).or_default() += 1;
    }
    m
}

// ------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------

/// Every event once, across a SIGTERM mid-stream and a SIGKILL while polls are in flight with
/// new events waiting; restarts resume from the checkpoints.
#[test]
fn every_event_once_across_sigterm_and_sigkill() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = server.ca_file(dir.path().join("ca.pem"));
    let out = dir.path().join("out");

    // Phase 1: the real responses plus 20 derived model breaches (pairs at one instant).
    let aia1 = real(AIANALYST, "createdAt", "id");
    let mut mb1 = real(MODELBREACHES, "time", "pbid");
    mb1.extend(breaches(40_000, 20, 1_700_000_000_000));
    server.release("/modelbreaches", mb1.clone());
    server.release("/aianalyst/incidentevents", aia1.clone());
    let want1 = expected_set(&[("modelbreaches", &mb1), ("aianalyst/incidentevents", &aia1)]);
    let total1: usize = want1.values().sum();

    let source = source_config(
        &server.url(),
        &ca,
        PRIVATE,
        r#"["modelbreaches", "aianalyst/incidentevents"]"#,
    );
    let daemon = Daemon::start(dir.path(), &source);
    daemon.wait_for_delivered(&out, 8, "the first events");
    // SIGTERM mid-stream (pages of 5: most events are not fetched yet).
    let log = daemon.stop();
    let after_term = delivered(&out).len();
    eprintln!("delivered before SIGTERM: {after_term} of {total1}");
    assert!(!log.contains("ERROR"), "{log}");

    let daemon = Daemon::start(dir.path(), &source);
    daemon.wait_for_delivered(&out, total1, "every phase-1 event");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        counted(&delivered(&out)),
        want1,
        "after the SIGTERM restart"
    );
    assert!(
        daemon.metric(
            "sluice_darktrace_api_polls_total",
            &[("endpoint", "modelbreaches")]
        ) >= 1
    );
    assert!(
        daemon.metric(
            "sluice_darktrace_api_duplicate_events_total",
            &[("endpoint", "modelbreaches")]
        ) >= 1,
        "the inclusive boundary returns taken events again"
    );
    wait_until(
        "checkpoint age gauge",
        Duration::from_secs(5),
        || {
            daemon
                .metrics_text()
                .contains("sluice_darktrace_api_checkpoint_age_seconds{")
        },
        || daemon.log(),
    );

    // Phase 2 waits behind held polls; SIGKILL while both endpoints are mid-request.
    server.state.lock().unwrap().hold = true;
    let mb_max = mb1.iter().map(|e| e.time).max().unwrap();
    let aia_max = aia1.iter().map(|e| e.time).max().unwrap();
    let mut mb2 = breaches(50_000, 9, mb_max + 1000);
    // A new event at exactly the checkpoint instant must not be taken for a duplicate.
    mb2.push(derived(&mb1[0].text, "time", "pbid", 59_999.into(), mb_max));
    let aia_template = &aia1[0].text;
    let aia2: Vec<StoredEvent> = (0..7)
        .map(|i| {
            let time = if i == 0 { aia_max } else { aia_max + i * 10 };
            derived(
                aia_template,
                "createdAt",
                "id",
                format!("sluice-test-aia-{i}").into(),
                time,
            )
        })
        .collect();
    server.release("/modelbreaches", mb2.clone());
    server.release("/aianalyst/incidentevents", aia2.clone());
    wait_until(
        "both endpoints held",
        Duration::from_secs(20),
        || {
            let s = server.state.lock().unwrap();
            s.held.get("/modelbreaches").copied().unwrap_or(0) > 0
                && s.held
                    .get("/aianalyst/incidentevents")
                    .copied()
                    .unwrap_or(0)
                    > 0
        },
        || daemon.log(),
    );
    let before_kill = server.requests("/modelbreaches").len();
    daemon.kill();
    server.state.lock().unwrap().hold = false;
    assert_eq!(counted(&delivered(&out)), want1, "nothing of phase 2 yet");
    for stem in ["modelbreaches", "aianalyst_incidentevents"] {
        let cp = dir
            .path()
            .join("data/checkpoints/dt")
            .join(format!("{stem}.json"));
        assert!(cp.exists(), "{} missing", cp.display());
    }

    let daemon = Daemon::start(dir.path(), &source);
    let want = expected_set(&[
        ("modelbreaches", &mb1),
        ("modelbreaches", &mb2),
        ("aianalyst/incidentevents", &aia1),
        ("aianalyst/incidentevents", &aia2),
    ]);
    let total: usize = want.values().sum();
    daemon.wait_for_delivered(&out, total, "every event");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(counted(&delivered(&out)), want, "after the SIGKILL restart");
    // The restart resumed from the checkpoint, not from the lookback.
    let resumed = server.requests("/modelbreaches")[before_kill].0;
    assert_eq!(resumed, mb_max, "first starttime after the restart");
    let resumed = server.requests("/aianalyst/incidentevents");
    assert!(resumed.iter().any(|(t, _)| *t == aia_max));
    // Every request of this test carried a valid signature.
    for path in ["/modelbreaches", "/aianalyst/incidentevents"] {
        assert!(
            server.requests(path).iter().all(|(_, v)| *v == "ok"),
            "{path}: {:?}",
            server.requests(path)
        );
    }
    assert!(
        daemon.metric(
            "sluice_darktrace_api_events_total",
            &[("endpoint", "aianalyst/incidentevents")]
        ) >= aia2.len() as u64
    );
    let log = daemon.stop();
    assert!(!log.contains("ERROR"), "{log}");
    drop(server.runtime);
}

/// The private token rotated in its file while the daemon polls with the old one: the
/// appliance's API SIGNATURE ERROR makes the source read its tokens again, and the following
/// poll signs with the new token, without a reload or a restart.
#[test]
fn a_private_token_rotated_in_its_file_is_used_after_a_refusal() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = server.ca_file(dir.path().join("ca.pem"));
    let events = real(MODELBREACHES, "time", "pbid");
    let expected = events.len();
    server.release("/modelbreaches", events);
    let token_file = dir.path().join("private-token");
    std::fs::write(&token_file, "the-previous-private-token\n").unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let source = source_config(&server.url(), &ca, "x", r#"["modelbreaches"]"#).replace(
        "private_token = \"x\"",
        &format!(
            "private_token_file = {:?}",
            token_file.display().to_string()
        ),
    );
    assert!(source.contains("private_token_file"));
    let daemon = Daemon::start(dir.path(), &source);
    wait_until(
        "a refusal",
        Duration::from_secs(20),
        || !server.requests("/modelbreaches").is_empty(),
        || daemon.log(),
    );
    std::fs::write(&token_file, format!("{PRIVATE}\n")).unwrap();
    let out = dir.path().join("out");
    daemon.wait_for_delivered(&out, expected, "the events, signed with the new token");
    let verdicts: Vec<&str> = server
        .requests("/modelbreaches")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let first_accepted = verdicts.iter().position(|v| *v != "signature").unwrap();
    assert!(first_accepted >= 1, "{verdicts:?}");
    assert!(
        verdicts[first_accepted..].iter().all(|v| *v != "signature"),
        "{verdicts:?}"
    );
    let log = daemon.stop();
    assert!(log.contains("renewed since"), "{log}");
    assert!(!log.contains(PRIVATE), "{log}");
    assert_eq!(delivered(&out).len(), expected);
}

/// A wrong private token: the appliance answers API SIGNATURE ERROR; the daemon says so,
/// counts it, and backs off instead of retrying in a loop. Then a skewed appliance clock:
/// API DATE ERROR, and the log names clock skew.
#[test]
fn signature_and_date_errors_are_explained_counted_and_backed_off() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = server.ca_file(dir.path().join("ca.pem"));
    server.release("/modelbreaches", real(MODELBREACHES, "time", "pbid"));

    let wrong = source_config(
        &server.url(),
        &ca,
        "not-the-private-token",
        r#"["modelbreaches"]"#,
    );
    let daemon = Daemon::start(dir.path(), &wrong);
    let window = Duration::from_secs(6);
    std::thread::sleep(window);
    let requests = server.requests("/modelbreaches");
    // Backoff 500 ms doubling (jittered to 50–100 %), capped at 4 s: at most 6 in 6 s; a
    // retry loop would make hundreds.
    assert!(
        (2..=7).contains(&requests.len()),
        "{} requests in {window:?}: {requests:?}",
        requests.len()
    );
    assert!(requests.iter().all(|(_, v)| *v == "signature"));
    let errors = daemon.metric(
        "sluice_darktrace_api_errors_total",
        &[("kind", "signature")],
    );
    assert!(errors >= 2 && errors <= requests.len() as u64, "{errors}");
    // The dashboard's Darktrace API panels query what this daemon exports (the other panels
    // are checked against a syslog daemon in tests/deploy.rs).
    let exported = daemon_support::exported_names(&daemon.metrics_text());
    let dashboard = daemon_support::dashboard_metric_names(&daemon_support::dashboard());
    let missing: Vec<&String> = dashboard
        .iter()
        .filter(|n| n.starts_with("sluice_darktrace_api_") && !exported.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "dashboard queries metrics the source does not export: {missing:?}\nexported: {exported:?}"
    );
    assert!(
        dashboard
            .iter()
            .any(|n| n.starts_with("sluice_darktrace_api_"))
    );
    // And the alerting rules' Darktrace API series.
    let rules: Vec<String> = daemon_support::alert_rule_metric_names()
        .into_iter()
        .filter(|n| n.starts_with("sluice_darktrace_api_"))
        .collect();
    assert!(!rules.is_empty());
    let missing: Vec<&String> = rules.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "alerting rules query metrics the source does not export: {missing:?}\nexported: {exported:?}"
    );
    let log = daemon.stop();
    assert!(
        log.contains("API SIGNATURE ERROR")
            && log.contains("private_token")
            && log.contains("ERROR"),
        "{log}"
    );
    assert!(delivered(&dir.path().join("out")).is_empty());
    assert!(!checkpoint_file(dir.path()).exists());

    // Without `ca_file` the test CA is not trusted: a TLS failure, counted, no request seen.
    let untrusted = source_config(&server.url(), &ca, PRIVATE, r#"["modelbreaches"]"#)
        .replace(&format!("ca_file = {:?}\n", ca.display().to_string()), "");
    assert!(!untrusted.contains("ca_file"));
    let seen = server.requests("/modelbreaches").len();
    let daemon = Daemon::start(dir.path(), &untrusted);
    wait_until(
        "a TLS error",
        Duration::from_secs(20),
        || {
            daemon.metric(
                "sluice_darktrace_api_errors_total",
                &[("kind", "transport")],
            ) >= 1
        },
        || daemon.log(),
    );
    daemon.stop();
    assert_eq!(server.requests("/modelbreaches").len(), seen);

    // The right tokens and `verify_tls = false` (no CA), but the appliance's clock is an hour
    // ahead.
    server.state.lock().unwrap().clock_skew_secs = 3600;
    let right = format!("{untrusted}verify_tls = false\n");
    let daemon = Daemon::start(dir.path(), &right);
    wait_until(
        "a date error",
        Duration::from_secs(20),
        || daemon.metric("sluice_darktrace_api_errors_total", &[("kind", "date")]) >= 1,
        || daemon.log(),
    );
    let log = daemon.stop();
    assert!(
        log.contains("API DATE ERROR") && log.contains("clock skew"),
        "{log}"
    );
    drop(server.runtime);
}

/// A backlog whose answer exceeds `max_response_bytes` (a long outage, a large lookback): the
/// source narrows its requests to `endtime` windows until each answer fits, walks the backlog,
/// and asks open-ended again once it reaches the last minutes. Every event arrives once.
#[test]
fn a_backlog_larger_than_one_answer_is_walked_in_windows() {
    const HOUR: i64 = 3_600_000;
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = server.ca_file(dir.path().join("ca.pem"));
    let out = dir.path().join("out");
    let now = chrono::Utc::now().timestamp_millis();
    // Three days of breaches, one every two hours, and one a minute ago: in the last minutes,
    // which only an open-ended request may ask for.
    let mut backlog: Vec<StoredEvent> = (0..36)
        .map(|i| breach(70_000 + i, now - 72 * HOUR + i * 2 * HOUR))
        .collect();
    backlog.push(breach(70_999, now - 60_000));
    server.release("/modelbreaches", backlog.clone());
    // An answer of three events fits; a full page of five, as the first request gets, does not.
    let largest = backlog.iter().map(|e| e.text.len()).max().unwrap();
    let source = source_config(&server.url(), &ca, PRIVATE, r#"["modelbreaches"]"#)
        + &format!("max_response_bytes = {}\n", 3 * largest + 64);
    let daemon = Daemon::start(dir.path(), &source);
    let want = expected_set(&[("modelbreaches", &backlog)]);
    wait_until(
        "every backlog event",
        Duration::from_secs(90),
        || delivered(&out).len() >= backlog.len(),
        || daemon.log(),
    );
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(counted(&delivered(&out)), want);
    assert!(
        daemon.metric(
            "sluice_darktrace_api_errors_total",
            &[
                ("endpoint", "modelbreaches"),
                ("kind", "response_too_large")
            ]
        ) >= 1
    );
    let endtimes = server.state.lock().unwrap().endtimes["/modelbreaches"].clone();
    assert!(
        endtimes.iter().any(Option::is_some),
        "bounded windows: {endtimes:?}"
    );
    let last_minutes = chrono::Utc::now().timestamp_millis() - 5 * 60 * 1000;
    assert!(
        endtimes.iter().flatten().all(|&end| end <= last_minutes),
        "no window reaches into the last minutes: {endtimes:?}"
    );
    assert_eq!(endtimes.last(), Some(&None), "open-ended once caught up");
    let log = daemon.stop();
    assert!(!log.contains("ERROR"), "{log}");
    drop(server.runtime);
}

/// Polls of `path` made from now on reach `more`, and what they brought has had time to
/// reach the output files (several of the sink's 100 ms batch timeouts).
fn wait_for_polls(server: &Server, path: &str, more: usize, daemon: &Daemon) {
    let target = server.requests(path).len() + more;
    wait_until(
        &format!("{more} more polls of {path}"),
        Duration::from_secs(60),
        || server.requests(path).len() >= target,
        || daemon.log(),
    );
    std::thread::sleep(Duration::from_millis(800));
}

/// Where the source `dt` of a daemon in `dir` keeps its `modelbreaches` checkpoint.
fn checkpoint_file(dir: &Path) -> PathBuf {
    dir.join("data/checkpoints/dt/modelbreaches.json")
}

/// One breach dated a month ahead must not move the checkpoint there: an event released
/// afterwards, dated now, still arrives (the old code asked from the future date on and
/// never saw it). The future-dated breach is forwarded once, warned about once and counted,
/// though the appliance keeps returning it.
#[test]
fn a_future_dated_event_neither_hides_later_events_nor_repeats() {
    const DAY: i64 = 86_400_000;
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = server.ca_file(dir.path().join("ca.pem"));
    let out = dir.path().join("out");
    let now = chrono::Utc::now().timestamp_millis();
    let mut first = breaches(80_000, 3, now - 10 * 60_000);
    first.push(breach(89_999, now + 30 * DAY));
    server.release("/modelbreaches", first.clone());
    let source = source_config(&server.url(), &ca, PRIVATE, r#"["modelbreaches"]"#);
    let daemon = Daemon::start(dir.path(), &source);
    daemon.wait_for_delivered(&out, first.len(), "the first breaches");
    // Dated after the poll that brought the future-dated breach.
    let late = vec![breach(81_000, chrono::Utc::now().timestamp_millis())];
    server.release("/modelbreaches", late.clone());
    daemon.wait_for_delivered(
        &out,
        first.len() + 1,
        "the breach released after the future-dated one",
    );
    wait_for_polls(&server, "/modelbreaches", 3, &daemon);
    assert_eq!(
        counted(&delivered(&out)),
        expected_set(&[("modelbreaches", &first), ("modelbreaches", &late)])
    );
    let endpoint = ("endpoint", "modelbreaches");
    assert_eq!(
        daemon.metric("sluice_darktrace_api_future_events_total", &[endpoint]),
        1
    );
    assert!(
        daemon.metric(
            "sluice_darktrace_api_suppressed_events_total",
            &[endpoint, ("reason", "future_dated")]
        ) >= 2,
        "returned on every poll since"
    );
    let cp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checkpoint_file(dir.path())).unwrap()).unwrap();
    let checkpoint = cp["time_ms"].as_i64().unwrap();
    assert!(
        checkpoint <= chrono::Utc::now().timestamp_millis(),
        "checkpoint in the future: {cp}"
    );
    let log = daemon.stop();
    assert_eq!(
        log.matches("events dated in the future").count(),
        1,
        "{log}"
    );
    assert!(log.contains("89999"), "the warning names the event: {log}");
    drop(server.runtime);
}

/// With `overlap_secs`, a breach the appliance returns only after the checkpoint passed its
/// time (indexed late) is still fetched, once; the breaches taken before it are not forwarded
/// again, also after a restart (the checkpoint lists them). The appliance caps its answers at
/// `PAGE` events, so look-backs see only the oldest events of the overlap at first: the
/// source must still walk on from its checkpoint.
#[test]
fn a_look_back_fetches_a_late_indexed_event_once() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = server.ca_file(dir.path().join("ca.pem"));
    let out = dir.path().join("out");
    let t0 = chrono::Utc::now().timestamp_millis() - 10 * 60_000;
    let first = breaches(95_000, 8, t0);
    server.release("/modelbreaches", first.clone());
    let source = format!(
        "{}overlap_secs = 3600\n",
        source_config(&server.url(), &ca, PRIVATE, r#"["modelbreaches"]"#)
    );
    let daemon = Daemon::start(dir.path(), &source);
    daemon.wait_for_delivered(&out, first.len(), "the first breaches");
    // Between the first breaches, before the checkpoint (the last of them, at t0 + 3 s).
    let late = vec![breach(95_100, t0 + 1_500)];
    server.release("/modelbreaches", late.clone());
    daemon.wait_for_delivered(&out, first.len() + 1, "the late breach");
    wait_for_polls(&server, "/modelbreaches", 4, &daemon);
    let expected = expected_set(&[("modelbreaches", &first), ("modelbreaches", &late)]);
    assert_eq!(counted(&delivered(&out)), expected);
    let endpoint = ("endpoint", "modelbreaches");
    assert_eq!(
        daemon.metric("sluice_darktrace_api_late_events_total", &[endpoint]),
        1
    );
    let cp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checkpoint_file(dir.path())).unwrap()).unwrap();
    assert_eq!(cp["version"], 3, "{cp}");
    assert_eq!(cp["time_ms"], t0 + 3_000, "{cp}");
    assert!(
        cp["recent"][(t0 + 1_500).to_string()]
            .as_array()
            .is_some_and(|ids| ids.contains(&"95100".into())),
        "the late breach is listed as taken: {cp}"
    );
    // Each poll asked either from the checkpoint or up to an hour before it.
    let starts: Vec<i64> = server
        .requests("/modelbreaches")
        .iter()
        .map(|r| r.0)
        .collect();
    assert!(
        starts.iter().any(|&s| s < t0),
        "no look-back among {starts:?}"
    );
    let log = daemon.stop();
    assert!(
        log.contains("the look-back found events dated before the checkpoint")
            && log.contains("95100"),
        "{log}"
    );
    // A restart resumes with the list: the look-backs find nothing to forward again.
    let daemon = Daemon::start(dir.path(), &source);
    wait_for_polls(&server, "/modelbreaches", 4, &daemon);
    assert_eq!(counted(&delivered(&out)), expected);
    assert_eq!(
        daemon.metric("sluice_darktrace_api_late_events_total", &[endpoint]),
        0
    );
    daemon.stop();
    // Another query resumes from the checkpoint, and says what that cannot cover.
    let requery = format!(
        "{source}query = {{ includeallpinned = \"true\", historicmodelonly = \"false\" }}\n"
    );
    let daemon = Daemon::start(dir.path(), &requery);
    wait_for_polls(&server, "/modelbreaches", 2, &daemon);
    let log = daemon.stop();
    assert!(
        log.contains("was written while the source asked with `historicmodelonly=false&includeallpinned=false`")
            && log.contains("it now asks with `historicmodelonly=false&includeallpinned=true`"),
        "{log}"
    );
    assert_eq!(counted(&delivered(&out)), expected);
    drop(server.runtime);
}

/// AI Analyst events without a usable time come back in every answer: each is forwarded
/// once (the old code forwarded it again on every poll), warned about once, and its returns
/// are counted as suppressed.
#[test]
fn an_event_without_a_time_is_forwarded_once() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = server.ca_file(dir.path().join("ca.pem"));
    let out = dir.path().join("out");
    let timed = real(AIANALYST, "createdAt", "id");
    server.release("/aianalyst/incidentevents", timed.clone());
    let mut untimed: serde_json::Value = serde_json::from_str(&timed[0].text).unwrap();
    untimed["id"] = "sluice-test-untimed".into();
    untimed.as_object_mut().unwrap().remove("createdAt");
    server.release_untimed(
        "/aianalyst/incidentevents",
        serde_json::to_string_pretty(&untimed).unwrap(),
    );
    let source = source_config(
        &server.url(),
        &ca,
        PRIVATE,
        r#"["aianalyst/incidentevents"]"#,
    );
    let daemon = Daemon::start(dir.path(), &source);
    daemon.wait_for_delivered(&out, timed.len() + 1, "every event");
    wait_for_polls(&server, "/aianalyst/incidentevents", 3, &daemon);
    let mut want = expected_set(&[("aianalyst/incidentevents", &timed)]);
    want.insert(
        (
            "aianalyst/incidentevents".to_owned(),
            "sluice-test-untimed".to_owned(),
        ),
        1,
    );
    assert_eq!(counted(&delivered(&out)), want);
    assert!(
        daemon.metric(
            "sluice_darktrace_api_suppressed_events_total",
            &[
                ("endpoint", "aianalyst/incidentevents"),
                ("reason", "untimed")
            ]
        ) >= 2
    );
    let log = daemon.stop();
    assert_eq!(
        log.matches("events without a usable time field").count(),
        1,
        "{log}"
    );
    drop(server.runtime);
}

/// A checkpoint written before checkpoints recorded the appliance (version 1) is resumed
/// and rewritten with the URL; pointed at another appliance, the source does not resume from
/// the first one's time (the old code did, and skipped the second one's older events) but
/// starts as a new source would, and says so naming both.
#[test]
fn a_checkpoint_is_resumed_only_against_its_own_appliance() {
    const T0: i64 = 1_700_000_000_000;
    let a = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ca_a = a.ca_file(dir.path().join("ca-a.pem"));
    let cp_path = checkpoint_file(dir.path());
    std::fs::create_dir_all(cp_path.parent().unwrap()).unwrap();
    std::fs::write(
        &cp_path,
        format!(
            "{{ \"version\": 1, \"endpoint\": \"modelbreaches\", \"time_ms\": {T0},\n  \
             \"ids_at_time\": [\"40000\"], \"written_at_ms\": 1732327200123 }}"
        ),
    )
    .unwrap();
    // 40000 is in the checkpoint; 39999 is older than it.
    let a_events = breaches(40_000, 4, T0);
    a.release("/modelbreaches", a_events.clone());
    a.release("/modelbreaches", breaches(39_999, 1, T0 - 1000));
    let daemon = Daemon::start(
        dir.path(),
        &source_config(&a.url(), &ca_a, PRIVATE, r#"["modelbreaches"]"#),
    );
    daemon.wait_for_delivered(&out, 3, "appliance A's new breaches");
    assert_eq!(
        a.requests("/modelbreaches")[0].0,
        T0,
        "resumed from version 1"
    );
    let log = daemon.stop();
    assert_eq!(
        counted(&delivered(&out)),
        expected_set(&[("modelbreaches", &a_events[1..])])
    );
    let cp: serde_json::Value = serde_json::from_slice(&std::fs::read(&cp_path).unwrap()).unwrap();
    assert_eq!(cp["version"], 3, "rewritten in the current format: {cp}");
    assert_eq!(cp["url"], a.url(), "{cp}");
    assert!(!log.contains("not used"), "{log}");

    // Appliance B's breaches are a day older than A's checkpoint.
    let b = Server::start();
    let ca_b = b.ca_file(dir.path().join("ca-b.pem"));
    let b_events = breaches(60_000, 3, T0 - 86_400_000);
    b.release("/modelbreaches", b_events.clone());
    let daemon = Daemon::start(
        dir.path(),
        &source_config(&b.url(), &ca_b, PRIVATE, r#"["modelbreaches"]"#),
    );
    daemon.wait_for_delivered(&out, 3 + b_events.len(), "appliance B's breaches");
    let first = b.requests("/modelbreaches")[0].0;
    assert!(
        first < T0 - 86_400_000 * 365,
        "B's first request started at {first}, not from the lookback"
    );
    let log = daemon.stop();
    assert_eq!(
        counted(&delivered(&out)),
        expected_set(&[
            ("modelbreaches", &a_events[1..]),
            ("modelbreaches", &b_events)
        ])
    );
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("not used"))
        .unwrap_or_else(|| panic!("no warning about A's checkpoint: {log}"));
    assert!(
        warning.contains(&a.url()) && warning.contains(&b.url()),
        "{warning}"
    );
    let cp: serde_json::Value = serde_json::from_slice(&std::fs::read(&cp_path).unwrap()).unwrap();
    assert_eq!(cp["url"], b.url(), "{cp}");
    drop(a.runtime);
    drop(b.runtime);
}
