//! `sluice run` under a service manager: the daemon speaks systemd's notify protocol to the
//! datagram socket named by `NOTIFY_SOCKET`, as systemd does for `Type=notify` units. The test
//! listens there itself, the way systemd would, and checks what `systemctl start`, `status`,
//! `reload` and `stop` depend on, and the watchdog keep-alives.

mod daemon_support;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daemon_support::{log_text, logged_addr, started, stop_cleanly};

/// Notifications received, each with its arrival time.
type Notes = Arc<Mutex<Vec<(Instant, String)>>>;

fn listen(path: &Path) -> Notes {
    let socket = UnixDatagram::bind(path).unwrap();
    let notes: Notes = Arc::default();
    let sink = notes.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            sink.lock().unwrap().push((Instant::now(), text));
        }
    });
    notes
}

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("sluice.toml");
    let data = dir.join("data");
    std::fs::write(
        &path,
        format!(
            r#"data_dir = "{data}"
[metrics]
listen = "127.0.0.1:0"
[sources.tcp]
type = "tcp"
listen = "127.0.0.1:0"
[sinks.out]
type = "file"
path = "{data}/out"
compression = "none"
batch_timeout_ms = 50
{extra}"#,
            data = data.display()
        ),
    )
    .unwrap();
    path
}

/// The daemon as systemd starts it: `NOTIFY_SOCKET`, and the watchdog variables, whose
/// `WATCHDOG_PID` must be the daemon's own pid (`$$` of the shell that execs it) or, as
/// `watchdog_pid = Some(1)` here, another process's.
fn spawn(config: &Path, notify: &Path, watchdog_pid: Option<u32>) -> std::process::Child {
    let pid = watchdog_pid.map_or("$$".to_string(), |p| p.to_string());
    Command::new("sh")
        .args([
            "-c",
            &format!("export WATCHDOG_PID={pid}; exec \"$0\" run --config \"$1\""),
            env!("CARGO_BIN_EXE_sluice"),
        ])
        .arg(config)
        .env("SLUICE_LOG", "info")
        .env("NOTIFY_SOCKET", notify)
        .env("WATCHDOG_USEC", "400000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits up to `timeout` for a notification after the first `skip` that satisfies `what`;
/// returns its index.
fn wait_for_note(
    notes: &Notes,
    skip: usize,
    timeout: Duration,
    what: impl Fn(&str) -> bool,
    log: &Mutex<Vec<String>>,
) -> usize {
    let started = Instant::now();
    loop {
        if let Some(i) = notes
            .lock()
            .unwrap()
            .iter()
            .skip(skip)
            .position(|(_, n)| what(n))
        {
            return skip + i;
        }
        assert!(
            started.elapsed() < timeout,
            "notification not received; got {:?}\nlog:\n{}",
            texts(notes),
            log_text(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn texts(notes: &Notes) -> Vec<String> {
    notes
        .lock()
        .unwrap()
        .iter()
        .map(|(_, n)| n.clone())
        .collect()
}

/// Sends `signal`, then waits for a notification after it that satisfies `what`.
fn signal_and_wait(
    notes: &Notes,
    child: &std::process::Child,
    sig: libc::c_int,
    log: &Mutex<Vec<String>>,
    what: impl Fn(&str) -> bool,
) -> usize {
    let before = notes.lock().unwrap().len();
    signal(child, sig);
    wait_for_note(notes, before, Duration::from_secs(5), what, log)
}

fn signal(child: &std::process::Child, signal: libc::c_int) {
    // SAFETY: signalling our own child process by its pid; it is not reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}

#[test]
fn ready_status_reload_watchdog_and_stop_reach_the_service_manager() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let notes = listen(&notify);
    let config = write_config(dir.path(), "");
    let (mut child, log) = started(spawn(&config, &notify, None));

    // Ready comes first, and only once start-up is over: the listener takes connections then.
    wait_for_note(
        &notes,
        0,
        Duration::from_secs(5),
        |n| n == "READY=1\n",
        &log,
    );
    assert_eq!(texts(&notes)[0], "READY=1\n", "{}", log_text(&log));
    let tcp = logged_addr(&log, "listening on tcp ").expect("tcp address in the log");
    let mut sender = TcpStream::connect(tcp).unwrap();
    for i in 0..5 {
        writeln!(
            sender,
            "<134>1 2026-12-07T10:00:00Z host app - - - message {i}"
        )
        .unwrap();
    }
    drop(sender);
    // `systemctl status` shows the counts as they change.
    wait_for_note(
        &notes,
        0,
        Duration::from_secs(10),
        |n| n.starts_with("STATUS=5 messages received, 0 parse errors, 0 lost; 5 events to sinks"),
        &log,
    );

    // Keep-alives every 100 ms for a 400 ms watchdog: at least 3 in a second, whatever the
    // scheduling on a busy machine.
    let since = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let pings = notes
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, n)| *at >= since && n == "WATCHDOG=1\n")
        .count();
    assert!(
        pings >= 3,
        "{pings} keep-alives in 1 s: {:?}",
        texts(&notes)
    );

    // A reload is bracketed: RELOADING=1 with its timestamp, then READY=1 again.
    let reloading = signal_and_wait(&notes, &child, libc::SIGHUP, &log, |n| {
        n.starts_with("RELOADING=1\nMONOTONIC_USEC=")
    });
    wait_for_note(
        &notes,
        reloading,
        Duration::from_secs(5),
        |n| n == "READY=1\n",
        &log,
    );

    // A reload that fails is said in the status until one succeeds.
    write_config(dir.path(), "unknown_key = 1\n");
    signal_and_wait(&notes, &child, libc::SIGHUP, &log, |n| {
        n.starts_with("STATUS=LAST RELOAD FAILED")
    });
    write_config(dir.path(), "");
    signal_and_wait(&notes, &child, libc::SIGHUP, &log, |n| {
        n.starts_with("STATUS=5 messages received")
    });

    let before = notes.lock().unwrap().len();
    stop_cleanly(&mut child, &log, Duration::from_secs(20));
    wait_for_note(
        &notes,
        before,
        Duration::from_secs(5),
        |n| n.starts_with("STOPPING=1\nSTATUS=stopping"),
        &log,
    );
}

#[test]
fn the_watchdog_of_another_process_is_not_kept_alive() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let notes = listen(&notify);
    let config = write_config(dir.path(), "");
    // systemd sets WATCHDOG_PID to the main pid; a daemon started by a wrapper script that
    // did not exec it must leave the wrapper's watchdog alone.
    let (mut child, log) = started(spawn(&config, &notify, Some(1)));
    wait_for_note(
        &notes,
        0,
        Duration::from_secs(5),
        |n| n == "READY=1\n",
        &log,
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !texts(&notes).iter().any(|n| n.contains("WATCHDOG=1")),
        "{:?}",
        texts(&notes)
    );
    stop_cleanly(&mut child, &log, Duration::from_secs(20));
}

/// Under systemd, stderr is the journal's stream (`JOURNAL_STREAM` = its device:inode): lines
/// carry their priority for journald (`journalctl -p warning`) and no timestamp of their own.
#[test]
fn log_lines_carry_journal_priorities_when_stderr_is_the_journal() {
    use std::io::BufRead;
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let (reader, writer) = std::io::pipe().unwrap();
    let writer = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
    let meta = writer.metadata().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&config)
        .env("SLUICE_LOG", "info")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(writer))
        .spawn()
        .unwrap();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    let wait = |what: &str| {
        let started = Instant::now();
        while !lines.lock().unwrap().iter().any(|l| l.contains(what)) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no {what:?} in {:?}",
                lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait(" running;");
    std::fs::write(&config, "unknown_key = 1\n").unwrap();
    signal(&child, libc::SIGHUP);
    wait("config reload failed");
    signal(&child, libc::SIGTERM);
    assert!(child.wait().unwrap().success());
    let lines = lines.lock().unwrap().clone();
    let find = |what: &str| lines.iter().find(|l| l.contains(what)).unwrap().clone();
    let running = find(" running;");
    assert!(running.starts_with("<6> INFO "), "{running}");
    let failed = find("config reload failed");
    assert!(failed.starts_with("<3>ERROR "), "{failed}");
    assert!(
        lines.iter().all(|l| l.starts_with('<')),
        "every line has its priority: {lines:?}"
    );
}

/// A `JOURNAL_STREAM` that is not stderr (inherited through a shell that redirected stderr)
/// leaves the usual format: timestamps, no priority prefixes.
#[test]
fn a_journal_stream_that_is_not_stderr_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let (mut child, log) = started(
        daemon_support::run_command(&config)
            .env("JOURNAL_STREAM", "1:1")
            .spawn()
            .unwrap(),
    );
    stop_cleanly(&mut child, &log, Duration::from_secs(20));
    let text = log_text(&log);
    assert!(text.lines().all(|l| !l.starts_with('<')), "{text}");
    assert!(text.starts_with("20"), "a timestamp first: {text}");
}
