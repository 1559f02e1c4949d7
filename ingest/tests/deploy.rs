//! The deploy/ assets against the real binary: example configs pass `check-config`, the systemd
//! unit passes `systemd-analyze verify`, loose secret files stop start-up, the daemon drops root
//! to `nobody` with (almost) no capabilities on every thread and keeps working, and every
//! metric the Grafana dashboard queries is exported by a running daemon (XDP on, in a network
//! namespace pair this test creates).
//!
//! The root-only tests print SKIPPED and return when not run as root.
// Without the `xdp` feature the XDP test is left out, and the helpers only it uses go unused.
#![cfg_attr(not(feature = "xdp"), allow(dead_code, unused_imports))]

mod daemon_support;
mod netns_support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use netns_support::{Netns, in_netns};
use sluice::privileges::TaskStatus;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const NOBODY: u32 = 65534;
const CAP_BPF: u64 = 1 << 39;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!("SKIPPED: needs root (privilege drop, network namespaces)");
    false
}

fn write_secret(path: &Path, mode: u32) {
    std::fs::write(path, "s3cret-value\n").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A directory `nobody` can traverse (tempdirs are 0700).
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn free_port() -> u16 {
    // UDP and TCP share the number: take one free for both.
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[test]
fn every_shipped_config_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    // The package's config includes conf.d beside it (empty as installed).
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    let mut configs: Vec<PathBuf> = std::fs::read_dir(repo_root().join("deploy/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    configs.sort();
    assert!(configs.len() >= 4, "examples: {configs:?}");
    configs.push(repo_root().join("deploy/debian/sluice.toml"));
    configs.push(repo_root().join("deploy/sluice.toml"));
    for config in configs {
        let text = std::fs::read_to_string(&config).unwrap();
        // The secret files the examples name, created here (mode 600) instead of /etc.
        let mut rewritten = String::new();
        for line in text.lines() {
            if let Some((_, path)) = line.split_once("\"/etc/sluice/secrets/") {
                let name = path.split('"').next().unwrap();
                write_secret(&secrets.join(name), 0o600);
            }
            rewritten.push_str(
                &line.replace("/etc/sluice/secrets/", &format!("{}/", secrets.display())),
            );
            rewritten.push('\n');
        }
        let copy = dir.path().join(config.file_name().unwrap());
        std::fs::write(&copy, rewritten).unwrap();
        let out = daemon_support::check_config(&copy);
        assert!(
            out.status.success(),
            "{}: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
    }
}

#[test]
fn systemd_unit_verifies_without_warnings() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo_root().join("deploy/sluice.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/sluice run --config /etc/sluice/sluice.toml"));
    for key in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/sluice",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "Restart=on-failure",
        "Type=notify",
        "WatchdogSec=",
    ] {
        assert!(unit.contains(key), "unit lacks {key}");
    }
    // verify insists that ExecStart exists: point it at the binary under test.
    let path = dir.path().join("sluice.service");
    std::fs::write(&path, unit.replace("/usr/bin/sluice", SLUICE)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown keys are only warnings: there must be none.
    assert!(stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

#[test]
fn group_or_world_readable_secret_file_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    write_secret(&token, 0o644);
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n[metrics]\nlisten = \"127.0.0.1:0\"\nbearer_token_file = {token:?}\n\
             [sources.u]\ntype = \"udp\"\nlisten = \"127.0.0.1:0\"\n\
             [sinks.f]\ntype = \"file\"\npath = {out:?}\n",
            data = dir.path().join("data"),
            out = dir.path().join("out"),
        ),
    )
    .unwrap();
    let want = format!("chmod 600 {}", token.display());
    for args in [vec!["check-config"], vec!["run", "--config"]] {
        let mut child = Command::new(SLUICE)
            .args(&args)
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("sluice {args:?} started despite a world-readable secret");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(!status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("metrics.bearer_token_file"), "{stderr}");
        assert!(stderr.contains("mode 0644"), "{stderr}");
        assert!(stderr.contains(&want), "{stderr}");
    }
    // Mode 600 is accepted.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = daemon_support::check_config(&config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn system_directory_as_data_dir_is_never_handed_over() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Harmless if the guard failed: only this directory would be created and re-owned.
    let data = "/dev/shm/sluice-deploy-guard-test";
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\nuser = \"nobody\"\n[metrics]\nenabled = false\n\
             [sources.u]\ntype = \"udp\"\nlisten = \"127.0.0.1:0\"\n\
             [sinks.f]\ntype = \"file\"\npath = {out:?}\n",
            out = dir.path().join("out"),
        ),
    )
    .unwrap();
    let out = Command::new(SLUICE)
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(data);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("too close to /"), "{stderr}");
}

/// `sluice run` as a child whose stderr is collected; killed on drop if still running.
struct Daemon {
    child: Child,
    log: daemon_support::Log,
}

impl Daemon {
    fn start(config: &Path, netns: Option<&str>) -> Daemon {
        let mut command = daemon_support::run_command(config);
        let (child, log) = daemon_support::started(match netns {
            Some(netns) => netns_support::spawn_in_netns(&mut command, netns),
            None => command.spawn().unwrap(),
        });
        Daemon { child, log }
    }

    fn log_text(&self) -> String {
        daemon_support::log_text(&self.log)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn metrics_addr(&self) -> SocketAddr {
        daemon_support::logged_addr(&self.log, "metrics on http://")
            .expect("metrics address in the log")
    }

    /// SIGTERM, then the exit status must be success.
    fn stop(mut self) -> String {
        daemon_support::stop_cleanly(&mut self.child, &self.log, Duration::from_secs(60));
        self.log_text()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Credentials of every thread of `pid`: `(tid, status)`.
fn task_statuses(pid: u32) -> Vec<(u32, TaskStatus)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let entry = entry.unwrap();
        let Ok(text) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let tid: u32 = entry.file_name().to_string_lossy().parse().unwrap();
        out.push((tid, TaskStatus::parse(&text).unwrap()));
    }
    out
}

/// Every thread runs as nobody; the main thread holds exactly `main_caps` (effective and
/// permitted), every other thread none.
fn assert_dropped_to_nobody(pid: u32, main_caps: u64, log: &str) {
    let tasks = task_statuses(pid);
    assert!(tasks.len() > 3, "expected worker threads: {tasks:?}");
    for (tid, s) in &tasks {
        assert_eq!(s.uids, [NOBODY; 4], "thread {tid} uids\n{log}");
        assert_eq!(s.gids, [NOBODY; 4], "thread {tid} gids\n{log}");
        let want = if *tid == pid { main_caps } else { 0 };
        assert_eq!(s.cap_eff, want, "thread {tid} CapEff {:x}", s.cap_eff);
        assert_eq!(s.cap_prm, want, "thread {tid} CapPrm {:x}", s.cap_prm);
        if *tid == pid {
            assert_eq!(s.cap_bnd, main_caps, "main thread CapBnd {:x}", s.cap_bnd);
        }
    }
    let groups = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let groups = groups
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .unwrap()
        .split_whitespace()
        .map(|g| g.parse::<u32>().unwrap())
        .collect::<Vec<_>>();
    assert!(!groups.contains(&0), "root group kept: {groups:?}");
}

/// Every file under `dir` belongs to nobody.
fn assert_owned_by_nobody(dir: &Path) {
    let meta = std::fs::symlink_metadata(dir).unwrap();
    assert_eq!(
        meta.uid(),
        NOBODY,
        "{} owned by {}",
        dir.display(),
        meta.uid()
    );
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).unwrap() {
            assert_owned_by_nobody(&entry.unwrap().path());
        }
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn daemon_as_nobody_without_xdp_has_no_capabilities_and_keeps_delivering() {
    if !is_root() {
        return;
    }
    let dir = open_tempdir();
    let data = dir.path().join("data");
    let out = data.join("out");
    // Owned by root, mode 600: read at start-up, before the switch.
    let token = dir.path().join("metrics_token");
    write_secret(&token, 0o600);
    // A leftover from an earlier root run: handed over too.
    std::fs::create_dir_all(data.join("spool/old")).unwrap();
    std::fs::write(data.join("spool/old/leftover"), b"x").unwrap();
    let port = free_port();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\nuser = \"nobody\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\nbearer_token_file = {token:?}\n\
             [pipeline]\nworkers = 2\n\
             [sources.u]\ntype = \"udp\"\nlisten = \"127.0.0.1:{port}\"\nthreads = 2\n\
             [sinks.f]\ntype = \"file\"\npath = {out:?}\nschema = \"raw\"\ncompression = \"none\"\n\
             batch_timeout_ms = 100\nbatch_max_events = 50\n",
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config, None);
    assert!(
        daemon.log_text().contains("dropped root"),
        "{}",
        daemon.log_text()
    );
    assert_dropped_to_nobody(daemon.pid(), 0, &daemon.log_text());

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    const N: usize = 300;
    for i in 0..N {
        socket
            .send_to(
                format!("<13>after the drop {i}").as_bytes(),
                ("127.0.0.1", port),
            )
            .unwrap();
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    wait_for(
        "all messages in the file sink",
        Duration::from_secs(20),
        || daemon_support::finished_batch_lines(&out).len() >= N,
    );
    // New spool segments and output files, written by nobody's threads.
    let body = daemon_support::scrape_metrics(daemon.metrics_addr(), Some("s3cret-value"));
    assert!(body.contains("sluice_received_messages_total"), "{body}");
    // Threads started later (none expected) would show up here too.
    assert_dropped_to_nobody(daemon.pid(), 0, &daemon.log_text());
    daemon.stop();
    assert_owned_by_nobody(&data);
    let mut lines = daemon_support::finished_batch_lines(&out);
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), N);
}

// ---- XDP in a namespace pair, plus an HTTP sink: the dashboard's metrics ----

const RECEIVER_V4: &str = "10.201.0.2";
const SENDER_V4: &str = "10.201.0.1";

impl Netns {
    fn new() -> Netns {
        Netns::create(
            'd',
            None,
            &[&format!("{SENDER_V4}/24")],
            &[&format!("{RECEIVER_V4}/24")],
        )
    }
}

/// A minimal HTTP/1.1 endpoint for the `http` sink: answers 503 to the first request (so the
/// retry and failure series exist), 200 afterwards. Returns its address and a request count.
fn http_endpoint(listener: TcpListener) -> Arc<AtomicUsize> {
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let count = count.clone();
            std::thread::spawn(move || serve_http(stream, &count));
        }
    });
    requests
}

fn serve_http(stream: TcpStream, count: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = if count.fetch_add(1, Ordering::SeqCst) == 0 {
            "503 Service Unavailable"
        } else {
            "200 OK"
        };
        if write!(writer, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").is_err() {
            return;
        }
    }
}

#[test]
fn grafana_dashboard_has_the_schema_basics() {
    let dashboard = daemon_support::dashboard();
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["name"] == "datasource"
        && v["type"] == "datasource"
        && v["query"] == "prometheus"));
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate panel id"
        );
        for key in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][key].is_u64(), "{panel}");
        }
    }
    let names = daemon_support::dashboard_metric_names(&dashboard);
    // What the dashboard must cover (the list).
    for wanted in [
        "sluice_received_messages_total",
        "sluice_parse_errors_total",
        "sluice_dropped_messages_total",
        "sluice_sink_events_total",
        "sluice_sink_batches_total",
        "sluice_sink_errors_total",
        "sluice_sink_spool_bytes",
        "sluice_stage_duration_seconds_bucket",
        "sluice_xdp_packets_total",
        "sluice_kernel_udp_rcvbuf_errors",
        "sluice_queue_depth_batches",
        "sluice_darktrace_api_events_total",
        "sluice_darktrace_api_errors_total",
        "sluice_darktrace_api_checkpoint_age_seconds",
    ] {
        assert!(names.contains(wanted), "dashboard lacks {wanted}");
    }
}

/// The real daemon in a namespace with XDP on its veth, an HTTP sink and a file sink, running
/// as nobody: the main thread keeps CAP_BPF only, every other thread nothing; the XDP counters
/// are still read; every metric the Grafana dashboard queries is in `/metrics`; SIGTERM detaches.
#[cfg(feature = "xdp")]
#[test]
fn xdp_daemon_as_nobody_keeps_cap_bpf_only_and_exports_every_dashboard_metric() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    let dir = open_tempdir();
    let data = dir.path().join("data");
    let out = data.join("out");
    let listener = in_netns(&ns.receiver, || TcpListener::bind("127.0.0.1:0").unwrap());
    let http_addr = listener.local_addr().unwrap();
    let requests = http_endpoint(listener);
    const PORT: u16 = 5514;
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\nuser = \"nobody\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n\
             [pipeline]\nworkers = 2\n\
             [sources.udp_in]\ntype = \"udp\"\nlisten = \"{RECEIVER_V4}:{PORT}\"\nthreads = 2\n\
             [sources.tcp_in]\ntype = \"tcp\"\nlisten = \"{RECEIVER_V4}:{PORT}\"\n\
             [sinks.files]\ntype = \"file\"\npath = {out:?}\nschema = \"raw\"\ncompression = \"none\"\n\
             batch_timeout_ms = 100\n[sinks.files.retention]\nmax_age_secs = 86400\n\
             [sinks.web]\ntype = \"http\"\nurl = \"http://{http_addr}/ingest\"\ncompression = \"none\"\n\
             batch_timeout_ms = 100\n[sinks.web.retry]\ninitial_backoff_ms = 50\nmax_backoff_ms = 200\n\
             [xdp]\ninterfaces = [\"{iface}\"]\nports = [{PORT}]\npin_path = {pins:?}\n",
            iface = ns.receiver_if,
            pins = ns.pin_path,
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config, Some(&ns.receiver));
    let log = daemon.log_text();
    assert!(log.contains("XDP enabled"), "{log}");
    assert!(log.contains("dropped root"), "{log}");
    assert!(ns.xdp_attached());
    assert_dropped_to_nobody(daemon.pid(), CAP_BPF, &log);

    const N: usize = 200;
    in_netns(&ns.sender, || {
        let udp = UdpSocket::bind((SENDER_V4, 0)).unwrap();
        for i in 0..N {
            let line = if i % 50 == 0 {
                "<13>CEF:0|broken header".to_string()
            } else {
                format!("<13>udp message {i}")
            };
            udp.send_to(line.as_bytes(), (RECEIVER_V4, PORT)).unwrap();
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let mut tcp = TcpStream::connect((RECEIVER_V4, PORT)).unwrap();
        for i in 0..10 {
            writeln!(tcp, "<13>tcp message {i}").unwrap();
        }
    });
    wait_for("the file sink", Duration::from_secs(20), || {
        daemon_support::finished_batch_lines(&out).len() >= N + 10
    });
    wait_for(
        "HTTP deliveries after a 503",
        Duration::from_secs(20),
        || requests.load(Ordering::SeqCst) >= 2,
    );

    let metrics = daemon.metrics_addr();
    let receiver = ns.receiver.clone();
    // Exported every 2 s from the pinned maps: readable after the drop with CAP_BPF alone.
    let xdp_udp_passed = |exposition: &str| {
        daemon_support::metric_value(
            exposition,
            "sluice_xdp_packets_total",
            &[("action", "pass"), ("proto", "udp")],
        )
    };
    let started = Instant::now();
    let exposition = loop {
        let receiver = receiver.clone();
        let exposition = in_netns(&receiver, move || {
            daemon_support::scrape_metrics(metrics, None)
        });
        if xdp_udp_passed(&exposition) >= N as u64 {
            break exposition;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "XDP counters not exported after the drop:\n{exposition}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let exported = daemon_support::exported_names(&exposition);
    // Series of sources and sinks this daemon does not run are checked where they run: the
    // Darktrace API source in tests/darktrace_api.rs, TLS in tests/tls_limits.rs, HEC and
    // Sekoia in tests/daemon_sinks.rs, expected senders in tests/daemon_e2e.rs.
    let elsewhere = ["sluice_darktrace_api_", "sluice_tls_", "sluice_sender_"];
    let missing: Vec<String> = daemon_support::dashboard_metric_names(&daemon_support::dashboard())
        .into_iter()
        .filter(|n| !elsewhere.iter().any(|e| n.starts_with(e)) && !exported.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "dashboard queries metrics the daemon does not export: {missing:?}\nexported: {exported:?}"
    );
    // The alerting rules likewise: a rule on a series that never exists would never fire.
    let elsewhere = [&elsewhere[..], &["sluice_sink_unconfirmed_events_total"]].concat();
    let missing: Vec<String> = daemon_support::alert_rule_metric_names()
        .into_iter()
        .filter(|n| !elsewhere.iter().any(|e| n.starts_with(e)) && !exported.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "alerting rules query metrics the daemon does not export: {missing:?}\nexported: {exported:?}"
    );
    assert_dropped_to_nobody(daemon.pid(), CAP_BPF, &daemon.log_text());

    // `systemctl reload` as nobody: the edited file is read again and the allowlist goes into
    // the attached program's maps with CAP_BPF alone. The sender is not on it: its datagrams
    // are now dropped in the kernel.
    let edited = std::fs::read_to_string(&config).unwrap().replace(
        &format!("ports = [{PORT}]\n"),
        &format!("ports = [{PORT}]\nallow = [\"10.200.0.99\"]\nenforce_allowlist = true\n"),
    );
    std::fs::write(&config, edited).unwrap();
    let kill = std::process::Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let scrape = || {
        let receiver = receiver.clone();
        in_netns(&receiver, move || {
            daemon_support::scrape_metrics(metrics, None)
        })
    };
    wait_for("the reload", Duration::from_secs(15), || {
        daemon_support::metric_value(
            &scrape(),
            "sluice_config_reloads_total",
            &[("result", "ok")],
        ) == 1
    });
    in_netns(&ns.sender, || {
        let udp = UdpSocket::bind((SENDER_V4, 0)).unwrap();
        for i in 0..N {
            udp.send_to(
                format!("<13>after reload {i}").as_bytes(),
                (RECEIVER_V4, PORT),
            )
            .unwrap();
        }
    });
    wait_for("XDP allowlist drops", Duration::from_secs(15), || {
        daemon_support::metric_value(
            &scrape(),
            "sluice_xdp_packets_total",
            &[("action", "drop_allowlist"), ("proto", "udp")],
        ) >= N as u64
    });
    assert!(
        !daemon_support::finished_batch_lines(&out)
            .iter()
            .any(|l| l.contains("after reload")),
        "a dropped datagram reached the files"
    );
    assert!(daemon.log_text().contains("XDP filters reloaded"));

    daemon.stop();
    assert!(!ns.xdp_attached(), "XDP still attached after SIGTERM");
    let leftovers: Vec<_> = std::fs::read_dir(&ns.pin_path)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "pins left: {leftovers:?}");
    assert_owned_by_nobody(&data);
}
