//! What every test that runs the real `sluice` binary needs: its log lines, collected as they
//! come, so a test can wait for start-up lines and print the log when an assertion fails; the
//! start-up and SIGTERM waits, so every daemon test has the same bounds; and the `/metrics`
//! reader, so the tests count series the same way.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines of the daemon's stderr, appended by a reader thread as they come.
pub type Log = Arc<Mutex<Vec<String>>>;

/// `sluice run --config <config>` set up the way [`started`] expects: stderr piped for the
/// log, stdin and stdout closed so the daemon never waits on the test's terminal. Callers add
/// their own environment before spawning.
pub fn run_command(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["run", "--config"])
        .arg(config)
        .env("SLUICE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// `sluice check-config <config>`, run to completion.
#[allow(dead_code)] // not every test binary checks configs
pub fn check_config(config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check-config")
        .arg(config)
        .output()
        .unwrap()
}

/// Runs `check-config FILE` and `run --config FILE` (with `RUST_BACKTRACE=1`, as some service
/// environments set it), asserts that both fail, and returns each one's arguments and stderr.
#[allow(dead_code)] // not every test binary checks configs
pub fn refused_by_check_config_and_run(config: &Path) -> Vec<(&'static str, String)> {
    ["check-config", "run --config"]
        .into_iter()
        .map(|args| {
            let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(args.split(' '))
                .arg(config)
                .env("RUST_BACKTRACE", "1")
                .output()
                .unwrap();
            assert!(!out.status.success(), "{args}");
            (args, String::from_utf8_lossy(&out.stderr).into_owned())
        })
        .collect()
}

/// The spawned daemon with its log collected, once it runs: start-up (bind, privilege drop,
/// XDP attach) is over, so what a test sees afterwards is the steady state.
pub fn started(mut child: Child) -> (Child, Log) {
    let log = collect_stderr(&mut child);
    wait_until_running(&mut child, &log, Duration::from_secs(30));
    (child, log)
}

/// Takes the child's piped stderr and collects its lines on a thread until the pipe closes.
fn collect_stderr(child: &mut Child) -> Log {
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr is piped");
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    log
}

/// Every line of the file sink's finished batch files in `dir` (uncompressed), in no
/// particular order. `.tmp-*` files are batches still being written and renamed into place
/// when complete: reading one could count it twice, or race its removal.
#[allow(dead_code)] // not every test binary reads sink output
pub fn finished_batch_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return lines;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        lines.extend(text.lines().map(str::to_owned));
    }
    lines
}

/// The collected log as one text: every failure message in these tests ends with it, since
/// the daemon's own words are usually what explains the failure.
pub fn log_text(log: &Mutex<Vec<String>>) -> String {
    log.lock().unwrap().join("\n")
}

/// Waits for the daemon's " running;" line, which comes only after every listener and the
/// metrics endpoint are bound, so the addresses in the log are final. An early exit or no start
/// within `timeout` fails with the log instead of leaving the test to time out on a socket.
fn wait_until_running(child: &mut Child, log: &Mutex<Vec<String>>, timeout: Duration) {
    let started = Instant::now();
    while !log.lock().unwrap().iter().any(|l| l.contains(" running;")) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("sluice exited early ({status}):\n{}", log_text(log));
        }
        assert!(
            started.elapsed() < timeout,
            "sluice did not start:\n{}",
            log_text(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The address logged right after `marker` (`"listening on tcp "`, `"metrics on http://"`):
/// the config asks for port 0, so the log is the only place the kernel's choice shows.
pub fn logged_addr(log: &Mutex<Vec<String>>, marker: &str) -> Option<SocketAddr> {
    log.lock().unwrap().iter().find_map(|line| {
        let rest = line.split(marker).nth(1)?;
        rest.split(|c: char| c == '/' || c.is_whitespace())
            .next()?
            .parse()
            .ok()
    })
}

/// SIGTERM, then waits up to `timeout` for the exit, which must be clean: a clean exit after
/// SIGTERM is part of what the daemon promises (batches flushed, XDP detached). A daemon that
/// does not exit is killed before the test fails, so it never outlives the test. The short
/// pause afterwards lets the stderr reader take the last lines before anyone reads the log.
#[allow(dead_code)] // not every test binary stops the daemon with SIGTERM
pub fn stop_cleanly(child: &mut Child, log: &Mutex<Vec<String>>, timeout: Duration) -> ExitStatus {
    // SAFETY: signalling our own child process by its pid; it is not reaped yet.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "SIGTERM: {}", std::io::Error::last_os_error());
    wait_for_clean_exit(child, log, timeout)
}

/// The second half of [`stop_cleanly`], for a test that delivered the SIGTERM itself (a second
/// one would make the daemon exit at once).
#[allow(dead_code)] // not every test binary stops the daemon with SIGTERM
pub fn wait_for_clean_exit(
    child: &mut Child,
    log: &Mutex<Vec<String>>,
    timeout: Duration,
) -> ExitStatus {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no exit after SIGTERM within {timeout:?}:\n{}",
                log_text(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(status.success(), "exit status {status}:\n{}", log_text(log));
    status
}

/// Seconds since the Unix epoch: what the daemon's `*_timestamp_seconds` gauges hold.
#[allow(dead_code)] // not every test binary reads timestamps
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The `/metrics` exposition, with the bearer token when the config sets one.
/// `Connection: close` because the body is read to EOF.
#[allow(dead_code)] // not every test binary reads metrics
pub fn scrape_metrics(addr: SocketAddr, bearer_token: Option<&str>) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    let auth = bearer_token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// Sum of every series of `name` whose labels include each `label="value"` in `labels`
/// (all series of `name` when `labels` is empty): tests assert per source or reason without
/// knowing which other labels the series carries. Each value is truncated to a whole number:
/// the series read here are counts.
#[allow(dead_code)] // not every test binary reads metrics
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{' | b' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// `deploy/grafana/sluice.json`, parsed.
#[allow(dead_code)] // not every test binary checks the dashboard
pub fn dashboard() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/sluice.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every `sluice_*` and `process_*` name the alerting rules (`deploy/prometheus/sluice-alerts.yml`) query, read
/// from their `expr` texts (a rule's expression is the only place a metric name appears
/// outside the annotations, which are skipped).
#[allow(dead_code)] // not every test binary checks the alerting rules
pub fn alert_rule_metric_names() -> std::collections::BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/sluice-alerts.yml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut names = std::collections::BTreeSet::new();
    let mut in_expr = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("expr:") {
            // `expr: |` continues on the more indented lines that follow.
            in_expr = rest.trim() == "|";
            names.extend(metric_names_in(rest));
        } else if in_expr && line.starts_with("            ") {
            names.extend(metric_names_in(trimmed));
        } else {
            in_expr = false;
        }
    }
    assert!(names.len() >= 10, "too few metric names read: {names:?}");
    names
}

/// The `sluice_*` and `process_*` metric names in a PromQL expression.
fn metric_names_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    for prefix in ["sluice_", "process_"] {
        let mut rest = expr;
        while let Some(at) = rest.find(prefix) {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.push(name);
        }
    }
    names
}

/// Every `sluice_*` (and `process_*`) name in every panel query of the dashboard; checks each panel queries the
/// dashboard's Prometheus data source.
#[allow(dead_code)] // not every test binary checks the dashboard
pub fn dashboard_metric_names(dashboard: &serde_json::Value) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let panels = dashboard["panels"].as_array().unwrap();
    for panel in panels {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        assert_eq!(panel["datasource"]["type"], "prometheus", "{title}");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            let expr = target["expr"].as_str().unwrap();
            let found = metric_names_in(expr);
            assert!(
                found.iter().any(|n| n.starts_with("sluice_")),
                "{title}: query names no sluice metric: {expr}"
            );
            names.extend(found);
        }
    }
    names
}

/// Names of the series in a Prometheus text exposition (`_bucket` etc. included as written).
#[allow(dead_code)] // not every test binary checks the dashboard
pub fn exported_names(exposition: &str) -> std::collections::BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| l.starts_with("sluice_") || l.starts_with("process_"))
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}
