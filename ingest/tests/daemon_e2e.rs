//! End-to-end tests of the `sluice` binary: real sockets on 127.0.0.1 (ports picked by the
//! kernel), a temp config, the files the file sink writes, and the `/metrics` endpoint.
//!
//! Every output line is compared with what the library gives for the same message
//! (`map::write(schema, parse(msg))`), ignoring the receive-time and peer fields, which the
//! daemon fills from the socket.

mod daemon_support;
use daemon_support::metric_value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::event::{Received, Timestamp};
use sluice::map::Schema;
use sluice::parse::{ParseOptions, Parser};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A running `sluice run` with its log captured.
struct Daemon {
    child: Child,
    log: daemon_support::Log,
    dir: tempfile::TempDir,
    udp: Option<SocketAddr>,
    tcp: Option<SocketAddr>,
    metrics: SocketAddr,
}

impl Daemon {
    /// `sources` and `sinks` are TOML tables; `{out}` in them is replaced by a temp directory.
    fn start(tables: &str) -> Daemon {
        Daemon::start_seeded(tables, |_| {})
    }

    /// As [`Daemon::start`], after `seed` has put files in the output directory (`{out}`).
    fn start_seeded(tables: &str, seed: impl FnOnce(&Path)) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        seed(&dir.path().join("out"));
        let config = format!(
            "data_dir = {data:?}\n[metrics]\nlisten = \"127.0.0.1:0\"\n[pipeline]\nworkers = 2\n{tables}",
            data = dir.path().join("data").display().to_string(),
            tables = tables.replace("{out}", &dir.path().join("out").display().to_string()),
        );
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, config).unwrap();
        let (child, log) = daemon_support::started(
            daemon_support::run_command(&path)
                .env("RUST_BACKTRACE", "0")
                .spawn()
                .unwrap(),
        );
        Daemon {
            udp: daemon_support::logged_addr(&log, "listening on udp "),
            tcp: daemon_support::logged_addr(&log, "listening on tcp "),
            metrics: daemon_support::logged_addr(&log, "metrics on http://")
                .expect("metrics address in the log"),
            child,
            log,
            dir,
        }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// Nice values of the daemon's threads whose name starts with `prefix`.
    fn thread_nice(&self, prefix: &str) -> Vec<i32> {
        let tasks = format!("/proc/{}/task", self.child.id());
        let mut nice = Vec::new();
        for task in std::fs::read_dir(tasks).unwrap() {
            let path = task.unwrap().path();
            let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
                continue;
            };
            let (open, close) = (stat.find('(').unwrap(), stat.rfind(')').unwrap());
            if !stat[open + 1..close].starts_with(prefix) {
                continue;
            }
            // Field 19 of the line; the name in parentheses is field 2.
            let after = &stat[close + 2..];
            nice.push(after.split(' ').nth(16).unwrap().parse().unwrap());
        }
        nice
    }

    /// Nice values of the readers and of the threads named by `prefixes`, once the latter are
    /// `steps` above the readers (threads set their own priority as they start) or after 2 s.
    fn settled_nice(&self, prefixes: &[&str], steps: i32) -> (Vec<i32>, Vec<i32>) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let readers = self.thread_nice("sluice-read");
            let others: Vec<i32> = prefixes.iter().flat_map(|p| self.thread_nice(p)).collect();
            let settled = !readers.is_empty()
                && !others.is_empty()
                && others.iter().all(|n| *n == (readers[0] + steps).min(19));
            if settled || Instant::now() >= deadline {
                assert!(!readers.is_empty(), "no reader threads");
                return (readers, others);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn metrics_text(&self) -> String {
        daemon_support::scrape_metrics(self.metrics, None)
    }

    /// Sum of all series of `name` whose labels contain every `label=value` in `labels`.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        metric_value(&self.metrics_text(), name, labels)
    }

    fn wait_for_metric(&self, name: &str, labels: &[(&str, &str)], want: u64, timeout: Duration) {
        let started = Instant::now();
        loop {
            let got = self.metric(name, labels);
            if got >= want {
                assert_eq!(got, want, "{name}{labels:?}");
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "{name}{labels:?}: {got} of {want} after {timeout:?}\n{}\n{}",
                self.log(),
                self.metrics_text()
                    .lines()
                    .filter(|l| l.starts_with("sluice_") && !l.contains("_bucket"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        daemon_support::log_text(&self.log)
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(mut self) -> (String, Self) {
        daemon_support::stop_cleanly(&mut self.child, &self.log, Duration::from_secs(60));
        (self.log(), self)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Every line of every finished batch file in `dir`, decompressed.
fn read_output(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return lines;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(!name.starts_with(".tmp-"), "temp file left behind: {name}");
        let bytes = std::fs::read(&path).unwrap();
        let text = if name.ends_with(".ndjson.zst") {
            zstd::decode_all(&bytes[..]).unwrap()
        } else if name.ends_with(".ndjson.gz") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        } else {
            assert!(name.ends_with(".ndjson"), "unexpected file {name}");
            bytes
        };
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{name} does not end with a newline"
        );
        lines.extend(text.lines().map(str::to_string));
    }
    lines
}

/// Top-level members the daemon fills from the socket, so they differ from the reference.
const RECEIVE_FIELDS: [&str; 2] = ["received_at", "peer"];

/// The output line with the [`RECEIVE_FIELDS`] removed. A linear scan instead of a JSON parse:
/// a million lines must compare in seconds. Both sides come from the same mapper, so member
/// order and formatting agree; equality with a reference line also proves the line is valid.
fn canonical(line: &str) -> String {
    let b = line.as_bytes();
    if b.first() != Some(&b'{') {
        return line.to_string();
    }
    let mut out = String::with_capacity(line.len());
    out.push('{');
    let mut i = 1;
    let mut first = true;
    while i < b.len() && b[i] != b'}' {
        let member_start = i;
        let key_end = string_end(b, i);
        let key = &line[i + 1..key_end - 1];
        let value_end = value_end(b, key_end + 1);
        if !RECEIVE_FIELDS.contains(&key) {
            if !first {
                out.push(',');
            }
            out.push_str(&line[member_start..value_end]);
            first = false;
        }
        i = if b.get(value_end) == Some(&b',') {
            value_end + 1
        } else {
            value_end
        };
    }
    out.push('}');
    out
}

/// Index just past the JSON string starting at `start` (a `"`).
fn string_end(b: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// Index just past the JSON value starting at `start`.
fn value_end(b: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = string_end(b, i);
                if depth == 0 {
                    return i;
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => return i,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            b',' if depth == 0 => return i,
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// What the library maps `message` to (the reference the daemon's output must equal).
fn expected(parser: &mut Parser, schema: Schema, source: &str, message: &[u8]) -> String {
    let received = Received {
        source,
        peer: None,
        received_at: Timestamp::now(),
    };
    let event = parser.parse(received, message);
    let mut out = Vec::new();
    sluice::map::write(schema, &event, &mut out);
    canonical(std::str::from_utf8(&out).unwrap())
}

/// Asserts the output equals the expected lines as multisets.
fn assert_same_multiset(expected: HashMap<String, i64>, actual: &[String]) {
    let mut diff = expected;
    for line in actual {
        *diff.entry(canonical(line)).or_default() -= 1;
    }
    diff.retain(|_, n| *n != 0);
    if !diff.is_empty() {
        let sample: Vec<_> = diff.iter().take(5).collect();
        panic!(
            "{} distinct lines differ (positive: missing, negative: unexpected), e.g. {sample:#?}",
            diff.len()
        );
    }
}

/// Message `i` of a Darktrace-like mix: RFC 5424 + CEF, RFC 5424 + JSON, RFC 3164 text.
fn message(i: usize) -> String {
    match i % 3 {
        0 => format!(
            "<134>1 2026-11-22T10:00:00.123Z dt-master darktrace - - - CEF:0|Darktrace|DCIP|6.1|{}|Model Breach|{}|\
             src=10.0.{}.{} dst=192.0.2.{} dpt=443 msg=Anomalous connection \\= test {i}",
            100 + i % 50,
            i % 10,
            i % 256,
            (i / 256) % 256,
            i % 200
        ),
        1 => format!(
            "<134>1 2026-11-22T10:00:01Z dt-master darktrace - - - {{\"model\":{{\"name\":\"Device::Anomaly {}\"}},\"score\":0.{},\"id\":{i}}}",
            i % 7,
            i % 97
        ),
        _ => format!(
            "<13>Nov 22 10:00:02 host app[{}]: plain text message number {i}",
            i % 1000
        ),
    }
}

/// How often each distinct expected line occurs for messages `0..n`. Only the distinct
/// messages are parsed here; the daemon parses all of them.
fn expected_counts(
    n: usize,
    distinct: usize,
    schema: Schema,
    source: &str,
) -> HashMap<String, i64> {
    let mut parser = Parser::new(ParseOptions::default());
    let mut counts = HashMap::new();
    for d in 0..distinct.min(n) {
        let times = (n - d).div_ceil(distinct) as i64;
        *counts
            .entry(expected(&mut parser, schema, source, message(d).as_bytes()))
            .or_default() += times;
    }
    counts
}

fn tcp_source(framing: &str) -> String {
    format!("[sources.tcp_in]\ntype = \"tcp\"\nlisten = \"127.0.0.1:0\"\nframing = \"{framing}\"\n")
}

const UDP_SOURCE: &str =
    "[sources.udp_in]\ntype = \"udp\"\nlisten = \"127.0.0.1:0\"\nreceive_buffer_bytes = 33554432\n";

fn file_sink(name: &str, schema: &str, compression: &str, timeout_ms: u64) -> String {
    format!(
        "[sinks.{name}]\ntype = \"file\"\npath = \"{{out}}/{name}\"\nschema = \"{schema}\"\ncompression = \"{compression}\"\n\
         batch_max_events = 20000\nbatch_timeout_ms = {timeout_ms}\n"
    )
}

/// 1,000,000 messages over 4 concurrent TCP connections, two newline-framed and two
/// octet-counted, into one `auto`-framing source.
#[test]
fn canonical_removes_receive_fields() {
    let line = r#"{"received_at":"2026-01-01T00:00:00Z","source":"s","peer":"127.0.0.1:5","x":{"a":[1,"},"]},"y":"q\"","z":2}"#;
    assert_eq!(
        canonical(line),
        r#"{"source":"s","x":{"a":[1,"},"]},"y":"q\"","z":2}"#
    );
    let v: serde_json::Value = serde_json::from_str(&canonical(line)).unwrap();
    assert_eq!(v["z"], 2);
    assert_eq!(canonical(r#"{"peer":"x"}"#), "{}");
    assert_eq!(canonical(r#""raw message""#), r#""raw message""#);
}

#[test]
fn tcp_million_messages_lf_and_octet_counting() {
    const TOTAL: usize = 1_000_000;
    const CONNECTIONS: usize = 4;
    // Message i is sent as message(i % DISTINCT): every distinct message occurs many times and
    // each occurrence must arrive exactly once.
    const DISTINCT: usize = 30_000;
    let daemon = Daemon::start(&format!(
        "{}{}",
        tcp_source("auto"),
        file_sink("all", "sluice", "zstd", 500)
    ));
    if let Err(why) = sluice::net::uring::probe() {
        eprintln!("io_uring unusable here ({why}): this run uses the portable readers");
    } else {
        let log = daemon.log();
        assert!(
            log.contains("socket reader backend: io_uring (io_uring is usable)"),
            "auto must pick io_uring when the probe accepts it:\n{log}"
        );
    }
    // Only stream sources: workers are not lowered below the readers.
    let (readers, workers) = daemon.settled_nice(&["sluice-worker"], 0);
    assert!(
        workers.iter().all(|n| *n == readers[0]),
        "{workers:?} vs {readers:?}"
    );
    let addr = daemon.tcp.unwrap();
    let t0 = Instant::now();
    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            std::thread::spawn(move || {
                let stream = TcpStream::connect(addr).unwrap();
                let mut w = std::io::BufWriter::with_capacity(256 * 1024, stream);
                for i in (c..TOTAL).step_by(CONNECTIONS) {
                    let m = message(i % DISTINCT);
                    if c % 2 == 0 {
                        w.write_all(m.as_bytes()).unwrap();
                        w.write_all(b"\n").unwrap();
                    } else {
                        write!(w, "{} {m}", m.len()).unwrap();
                    }
                }
                w.flush().unwrap();
            })
        })
        .collect();
    let expected = expected_counts(TOTAL, DISTINCT, Schema::Sluice, "tcp_in");
    let t_expected = t0.elapsed();
    for s in senders {
        s.join().unwrap();
    }
    let t_sent = t0.elapsed();
    daemon.wait_for_metric(
        "sluice_received_messages_total",
        &[("source", "tcp_in")],
        TOTAL as u64,
        Duration::from_secs(120),
    );
    let t_received = t0.elapsed();
    let (log, daemon) = daemon.stop();
    let t_stopped = t0.elapsed();
    let lines = read_output(&daemon.out().join("all"));
    let t_read = t0.elapsed();
    assert_eq!(lines.len(), TOTAL, "{log}");
    assert_same_multiset(expected, &lines);
    eprintln!(
        "phases: expected {t_expected:?}, sent {t_sent:?}, received {t_received:?}, stopped {t_stopped:?}, \
         read {t_read:?}, compared {:?}",
        t0.elapsed()
    );
    assert!(
        log.contains("received=1000000") && log.contains("sink_events=1000000"),
        "{log}"
    );
}

/// User plus system CPU seconds of process `pid` (`/proc/<pid>/stat` fields 14 and 15, in
/// clock ticks of 1/100 s on Linux).
fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// UDP at a moderate rate: nothing lost, and the metrics agree with the files.
#[test]
fn udp_moderate_rate_zero_loss_metrics_agree() {
    const TOTAL: usize = 30_000;
    let daemon = Daemon::start(&format!(
        "{UDP_SOURCE}{}",
        file_sink("all", "sluice", "gzip", 200)
    ));
    // A UDP source: workers and compression threads yield to readers (`worker_nice` 19).
    let (readers, lowered) = daemon.settled_nice(&["sluice-worker", "sluice-file"], 19);
    assert!(lowered.len() >= 2, "{lowered:?}");
    let want = (readers[0] + 19).min(19);
    assert!(
        lowered.iter().all(|n| *n == want),
        "{lowered:?} vs readers {readers:?}"
    );
    let addr = daemon.udp.unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    for i in 0..TOTAL {
        client.send_to(message(i).as_bytes(), addr).unwrap();
        // ~50k/s in bursts of 500: moderate for a 32 MiB receive buffer.
        if i % 500 == 499 {
            let due = Duration::from_micros(20 * (i as u64 + 1));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    daemon.wait_for_metric(
        "sluice_received_messages_total",
        &[("source", "udp_in")],
        TOTAL as u64,
        Duration::from_secs(60),
    );
    // Files are written within the batch timeout; then the sink counters must match them.
    daemon.wait_for_metric(
        "sluice_sink_events_total",
        &[("sink", "all")],
        TOTAL as u64,
        Duration::from_secs(30),
    );
    let cpu_before = process_cpu_seconds(daemon.child.id());
    let text = daemon.metrics_text();
    let cpu_after = process_cpu_seconds(daemon.child.id());
    assert_eq!(
        metric_value(&text, "sluice_dropped_messages_total", &[]),
        0,
        "{text}"
    );
    // The process's CPU to the clock tick, as /proc has it, not cut to whole seconds.
    let cpu: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
        .expect("process_cpu_seconds_total exported")
        .parse()
        .unwrap();
    assert!(
        cpu_before > 0.0 && (cpu_before..=cpu_after).contains(&cpu),
        "process_cpu_seconds_total {cpu}, /proc {cpu_before}..{cpu_after}"
    );
    let lines = read_output(&daemon.out().join("all"));
    assert_eq!(lines.len(), TOTAL);
    let raw_bytes: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
    assert_eq!(
        metric_value(
            &text,
            "sluice_sink_bytes_total",
            &[("sink", "all"), ("stage", "raw")]
        ),
        raw_bytes
    );
    let files = std::fs::read_dir(daemon.out().join("all")).unwrap().count() as u64;
    assert_eq!(
        metric_value(&text, "sluice_sink_batches_total", &[("sink", "all")]),
        files
    );
    let compressed: u64 = std::fs::read_dir(daemon.out().join("all"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(
        metric_value(
            &text,
            "sluice_sink_bytes_total",
            &[("sink", "all"), ("stage", "compressed")]
        ),
        compressed
    );
    let sent_bytes: u64 = (0..TOTAL).map(|i| message(i).len() as u64).sum();
    assert_eq!(
        metric_value(
            &text,
            "sluice_received_bytes_total",
            &[("source", "udp_in")]
        ),
        sent_bytes
    );
    assert!(
        text.contains("sluice_stage_duration_seconds_bucket{stage=\"compress\",sink=\"all\""),
        "{text}"
    );
    let mut expected = HashMap::new();
    let mut parser = Parser::new(ParseOptions::default());
    for i in 0..TOTAL {
        *expected
            .entry(self::expected(
                &mut parser,
                Schema::Sluice,
                "udp_in",
                message(i).as_bytes(),
            ))
            .or_default() += 1;
    }
    assert_same_multiset(expected, &lines);
    daemon.stop();
}

/// A UDP burst against a worker queue of one batch: what the queue cannot take goes to the
/// reader's disk overflow and comes back, so every datagram reaches the file, none is dropped,
/// the overflow metrics show it was used, and it is empty again afterwards.
#[test]
fn udp_burst_past_the_queue_goes_through_the_disk_overflow_without_loss() {
    const TOTAL: usize = 150_000;
    for backend in ["io_uring", "portable"] {
        let daemon = Daemon::start(&format!(
            "io_backend = \"{backend}\"\nqueue_batches = 1\n[sources.udp_in]\ntype = \"udp\"\n\
             listen = \"127.0.0.1:0\"\nthreads = 1\nreceive_buffer_bytes = 67108864\n\
             overflow_max_bytes = 536870912\n{}",
            file_sink("all", "sluice", "gzip", 200)
        ));
        let addr = daemon.udp.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..TOTAL {
            client.send_to(message(i).as_bytes(), addr).unwrap();
        }
        daemon.wait_for_metric(
            "sluice_sink_events_total",
            &[("sink", "all")],
            TOTAL as u64,
            Duration::from_secs(60),
        );
        let text = daemon.metrics_text();
        assert_eq!(
            metric_value(&text, "sluice_dropped_messages_total", &[]),
            0,
            "{backend}: {text}"
        );
        let overflowed = metric_value(
            &text,
            "sluice_overflow_messages_total",
            &[("source", "udp_in")],
        );
        assert!(
            overflowed > 0 && overflowed < TOTAL as u64,
            "{backend}: a one-batch queue overflows under a burst: {overflowed}\n{text}"
        );
        assert_eq!(
            metric_value(&text, "sluice_overflow_bytes", &[("source", "udp_in")]),
            0,
            "{backend}: {text}"
        );
        assert_eq!(metric_value(&text, "sluice_overflow_errors_total", &[]), 0);
        let overflow_dir = daemon.dir.path().join("data/overflow");
        assert_eq!(
            std::fs::read_dir(&overflow_dir).unwrap().count(),
            0,
            "the overflow file has no name"
        );
        let lines = read_output(&daemon.out().join("all"));
        assert_same_multiset(
            expected_counts(TOTAL, TOTAL, Schema::Sluice, "udp_in"),
            &lines,
        );
        let (log, _daemon) = daemon.stop();
        assert_eq!(log_total(&log, "dropped_queue_full"), 0, "{log}");
        assert_eq!(log_total(&log, "overflowed"), overflowed, "{log}");
        assert!(
            log.contains("UDP datagrams go to the disk overflow"),
            "the overflow's first use is logged: {log}"
        );
    }
}

/// UDP overload with a tiny receive buffer and oversize datagrams: every datagram sent is
/// either received or counted as a kernel drop, and every received one is in a file or
/// counted as dropped (`oversize`, `queue_full`). Nothing disappears silently.
#[test]
fn udp_overload_every_loss_is_counted() {
    const TOTAL: usize = 50_000;
    let tables = format!(
        "[sources.udp_in]\ntype = \"udp\"\nlisten = \"127.0.0.1:0\"\nthreads = 1\nreceive_buffer_bytes = 8192\n\
         max_message_bytes = 512\noversize = \"reject\"\n{}",
        file_sink("all", "raw", "none", 100)
    );
    let daemon = Daemon::start(&tables);
    let addr = daemon.udp.unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut oversize_sent = 0u64;
    for i in 0..TOTAL {
        let mut m = message(i);
        if i % 100 == 7 {
            m.push_str(&" pad".repeat(200));
            oversize_sent += 1;
        }
        client.send_to(m.as_bytes(), addr).unwrap();
    }
    // Kernel drops are polled about once a second.
    let started = Instant::now();
    let (received, kernel) = loop {
        let text = daemon.metrics_text();
        let received = metric_value(&text, "sluice_received_messages_total", &[]);
        let kernel = metric_value(
            &text,
            "sluice_dropped_messages_total",
            &[("reason", "kernel_rcvbuf")],
        );
        if received + kernel >= TOTAL as u64 {
            break (received, kernel);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "received {received} + kernel drops {kernel} < {TOTAL}\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(received + kernel, TOTAL as u64);
    assert!(
        kernel > 0,
        "an 8 KiB receive buffer should overflow under a blast of {TOTAL} datagrams"
    );
    let (log, daemon) = daemon.stop();
    let oversize = log_total(&log, "dropped_oversize");
    let queue_full = log_total(&log, "dropped_queue_full");
    assert!(oversize > 0 && oversize <= oversize_sent, "{log}");
    let lines = read_output(&daemon.out().join("all"));
    assert_eq!(
        lines.len() as u64,
        received - oversize - queue_full,
        "{log}"
    );
    assert_eq!(log_total(&log, "dropped_kernel_rcvbuf"), kernel, "{log}");
    assert!(
        lines.iter().all(|l| l.len() < 600),
        "no oversize message was written"
    );
}

/// `oversize = "truncate"`: a message longer than `max_message_bytes` is kept, cut to the
/// limit, and counted in `sluice_truncated_messages_total` — over UDP and TCP, with either
/// reader backend.
#[test]
fn truncated_messages_are_kept_and_counted() {
    for backend in ["io_uring", "portable"] {
        let limits = "max_message_bytes = 512\noversize = \"truncate\"\n";
        let tables = format!(
            "io_backend = \"{backend}\"\n{UDP_SOURCE}{limits}{}{limits}{}",
            tcp_source("lf"),
            file_sink("all", "raw", "none", 100)
        );
        let daemon = Daemon::start(&tables);
        let long = format!("<13>long {}", "x".repeat(2000));
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .send_to(long.as_bytes(), daemon.udp.unwrap())
            .unwrap();
        client
            .send_to(b"<13>short udp", daemon.udp.unwrap())
            .unwrap();
        let mut tcp = TcpStream::connect(daemon.tcp.unwrap()).unwrap();
        write!(tcp, "{long}\n<13>short tcp\n").unwrap();
        tcp.flush().unwrap();
        for source in ["udp_in", "tcp_in"] {
            daemon.wait_for_metric(
                "sluice_received_messages_total",
                &[("source", source)],
                2,
                Duration::from_secs(20),
            );
            daemon.wait_for_metric(
                "sluice_truncated_messages_total",
                &[("source", source)],
                1,
                Duration::from_secs(5),
            );
        }
        drop(tcp);
        let (log, daemon) = daemon.stop();
        let mut lines = read_output(&daemon.out().join("all"));
        lines.sort_by_key(|l| l.len());
        assert_eq!(lines.len(), 4, "{backend}: {log}");
        assert!(lines[..2].iter().all(|l| l.contains("short")), "{lines:?}");
        for cut in &lines[2..] {
            assert!(cut.contains("long xxx"), "{backend}: {cut}");
            assert!(
                cut.len() <= 512 + 64,
                "{backend}: cut to the limit: {}",
                cut.len()
            );
        }
    }
}

/// A `key=value` total from the daemon's exit log line.
fn log_total(log: &str, key: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains("shut down"))
        .expect("exit log line");
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing in {line}"))
}

/// SIGTERM writes every accepted message even though no batch is due yet.
#[test]
fn sigterm_flushes_open_batches() {
    const TOTAL: usize = 5_000;
    let tables = format!(
        "{UDP_SOURCE}{}{}{}",
        tcp_source("lf"),
        file_sink("slow", "sluice", "zstd", 600_000),
        file_sink("raw", "raw", "none", 600_000)
    );
    let mut daemon = Daemon::start(&tables);
    let mut tcp = TcpStream::connect(daemon.tcp.unwrap()).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..TOTAL {
        writeln!(tcp, "{}", message(i)).unwrap();
        if i % 10 == 0 {
            udp.send_to(message(i).as_bytes(), daemon.udp.unwrap())
                .unwrap();
        }
    }
    tcp.flush().unwrap();
    daemon.wait_for_metric(
        "sluice_received_messages_total",
        &[],
        (TOTAL + TOTAL / 10) as u64,
        Duration::from_secs(60),
    );
    assert_eq!(
        daemon.metric("sluice_sink_events_total", &[]),
        0,
        "batches were due only at shutdown"
    );
    // SIGHUP (`systemctl reload`) reloads TLS certificates; without TLS sources it must be
    // harmless, never the default "terminate".
    let hup = Command::new("kill")
        .args(["-HUP", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "SIGHUP stopped the daemon: {}",
        daemon.log()
    );
    assert!(http_get(daemon.metrics, "/health").contains("200"));
    let (log, daemon) = daemon.stop();
    assert_eq!(
        read_output(&daemon.out().join("slow")).len(),
        TOTAL + TOTAL / 10,
        "{log}"
    );
    let raw = read_output(&daemon.out().join("raw"));
    assert_eq!(raw.len(), TOTAL + TOTAL / 10);
    let mut want: Vec<String> = (0..TOTAL)
        .map(message)
        .chain((0..TOTAL).step_by(10).map(message))
        .collect();
    let mut got: Vec<String> = raw
        .iter()
        .map(|l| serde_json::from_str::<String>(l).unwrap())
        .collect();
    want.sort();
    got.sort();
    assert!(want == got, "raw schema must carry the messages unchanged");
    assert!(log.contains("shut down"), "{log}");
}

/// What a TCP sender already handed to the kernel when SIGTERM arrives was acknowledged to it,
/// so shutdown must read it rather than drop it with the socket. The daemon is stopped
/// (SIGSTOP) while the sender writes, so all of it sits in the socket's receive buffer when
/// SIGTERM and SIGCONT arrive together; both socket reader backends.
#[test]
fn sigterm_reads_what_tcp_senders_already_sent() {
    const TOTAL: usize = 150_000;
    for backend in ["io_uring", "portable"] {
        let tables = format!(
            "io_backend = \"{backend}\"\n{}receive_buffer_bytes = 16777216\n{}",
            tcp_source("lf"),
            file_sink("raw", "raw", "none", 600_000)
        );
        let mut daemon = Daemon::start(&tables);
        let target = daemon.tcp.unwrap();
        let signal = |name: &str, pid: u32| {
            let status = Command::new("kill")
                .args([name, &pid.to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "kill {name}");
        };
        let pid = daemon.child.id();
        signal("-STOP", pid);
        let writer = std::thread::spawn(move || {
            let mut tcp = TcpStream::connect(target).unwrap();
            let mut text = String::new();
            for i in 0..TOTAL {
                text.push_str(&format!(
                    "<13>Nov 22 10:00:02 host app: buffered at shutdown {i}\n"
                ));
            }
            tcp.write_all(text.as_bytes()).unwrap();
            tcp.flush().unwrap();
            // Kept open: the daemon, not the sender, ends the connection.
            tcp
        });
        let started = Instant::now();
        while !writer.is_finished() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{backend}: {TOTAL} messages did not fit the socket buffers"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _connection = writer.join().unwrap();
        // One SIGTERM only: a second one makes the daemon exit at once.
        signal("-TERM", pid);
        signal("-CONT", pid);
        daemon_support::wait_for_clean_exit(
            &mut daemon.child,
            &daemon.log,
            Duration::from_secs(60),
        );
        let log = daemon.log();
        let lines = read_output(&daemon.out().join("raw"));
        assert_eq!(lines.len(), TOTAL, "{backend}: {log}");
    }
}

/// util-linux `logger` as a real client: UDP and TCP, RFC 3164 and RFC 5424. The raw sink keeps
/// what arrived; the sluice sink must hold exactly the library's mapping of those messages.
#[test]
fn logger_rfc3164_and_rfc5424_over_udp_and_tcp() {
    if Command::new("logger").arg("--help").output().is_err() {
        eprintln!("logger not installed; skipping");
        return;
    }
    let tables = format!(
        "{UDP_SOURCE}{}{}{}",
        tcp_source("auto"),
        file_sink("raw", "raw", "none", 100),
        file_sink("mapped", "sluice", "zstd", 100)
    );
    let daemon = Daemon::start(&tables);
    let runs: [(&str, &[&str]); 5] = [
        ("udp", &["--udp", "--rfc3164"]),
        ("udp", &["--udp", "--rfc5424"]),
        ("tcp", &["--tcp", "--rfc3164"]),
        ("tcp", &["--tcp", "--rfc5424"]),
        ("tcp", &["--tcp", "--rfc5424", "--octet-count"]),
    ];
    let mut markers = Vec::new();
    for (n, (proto, flags)) in runs.iter().enumerate() {
        let addr = if *proto == "udp" {
            daemon.udp.unwrap()
        } else {
            daemon.tcp.unwrap()
        };
        let marker = format!("sluice-e2e-{n}-{}", flags.join("_"));
        let status = Command::new("logger")
            .args(*flags)
            .args([
                "-n",
                &addr.ip().to_string(),
                "-P",
                &addr.port().to_string(),
                "-t",
                "e2etag",
                "-p",
                "local3.warning",
            ])
            .arg(&marker)
            .status()
            .unwrap();
        assert!(status.success(), "logger {flags:?}");
        markers.push((marker, flags.contains(&"--rfc5424")));
    }
    daemon.wait_for_metric(
        "sluice_sink_events_total",
        &[("sink", "mapped")],
        runs.len() as u64,
        Duration::from_secs(30),
    );
    let (_, daemon) = daemon.stop();
    let raw: Vec<String> = read_output(&daemon.out().join("raw"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(raw.len(), runs.len(), "{raw:#?}");
    for (marker, rfc5424) in &markers {
        let m = raw
            .iter()
            .find(|m| m.ends_with(marker.as_str()))
            .unwrap_or_else(|| panic!("{marker} missing: {raw:#?}"));
        // local3.warning = 19 * 8 + 4.
        assert!(m.starts_with("<156>"), "{m}");
        assert_eq!(m.starts_with("<156>1 "), *rfc5424, "{m}");
        assert!(m.contains("e2etag"), "{m}");
    }
    let mut parser = Parser::new(ParseOptions::default());
    let mapped = read_output(&daemon.out().join("mapped"));
    let mut want: HashMap<String, i64> = HashMap::new();
    for m in &raw {
        let source = if raw_came_over_udp(m, &markers, &runs) {
            "udp_in"
        } else {
            "tcp_in"
        };
        *want
            .entry(self::expected(
                &mut parser,
                Schema::Sluice,
                source,
                m.as_bytes(),
            ))
            .or_default() += 1;
    }
    assert_same_multiset(want, &mapped);
}

/// RFC 3164 times carry no zone: the daemon places them with the source's `timezone`, else
/// `[parse] timezone`, each following its own daylight saving time.
#[test]
fn unzoned_times_take_the_zone_of_their_source() {
    let tables = format!(
        "[parse]\ntimezone = \"Europe/Paris\"\n\
         {UDP_SOURCE}timezone = \"America/New_York\"\n{}{}kinds = [\"text\"]\n{}kinds = [\"cef\"]\n",
        tcp_source("lf"),
        file_sink("mapped", "sluice", "none", 100),
        file_sink("csl", "commonsecuritylog", "none", 100)
    );
    let daemon = Daemon::start(&tables);
    let now = chrono::Utc::now();
    let lines = [("Jan  5 10:00:00", "jan"), ("Jul  5 10:00:00", "jul")];
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut tcp = TcpStream::connect(daemon.tcp.unwrap()).unwrap();
    for (time, name) in lines {
        udp.send_to(
            format!("<13>{time} host app: udp-{name}").as_bytes(),
            daemon.udp.unwrap(),
        )
        .unwrap();
        tcp.write_all(format!("<13>{time} host app: tcp-{name}\n").as_bytes())
            .unwrap();
    }
    // A CEF date without zone or `dtz` takes the source's zone too (New York, winter: UTC-5).
    udp.send_to(
        b"<13>Jan  5 10:00:00 host CEF:0|V|P|1|1|n|5|rt=Jan 07 2024 14:50:39 msg=cef-udp",
        daemon.udp.unwrap(),
    )
    .unwrap();
    drop(tcp);
    daemon.wait_for_metric(
        "sluice_sink_events_total",
        &[("sink", "mapped")],
        4,
        Duration::from_secs(30),
    );
    daemon.wait_for_metric(
        "sluice_sink_events_total",
        &[("sink", "csl")],
        1,
        Duration::from_secs(30),
    );
    let (_, daemon) = daemon.stop();
    let mut got: HashMap<String, String> = HashMap::new();
    for line in read_output(&daemon.out().join("mapped")) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        got.insert(
            v["text"].as_str().unwrap().to_owned(),
            v["syslog"]["timestamp"].as_str().unwrap().to_owned(),
        );
    }
    // New York: UTC-5 in January, UTC-4 in July; Paris: UTC+1 and UTC+2. The year is the
    // daemon's rule: the latest that puts the time no more than two days after its reception.
    let want: HashMap<String, String> = [
        ("udp-jan", 1, 15),
        ("udp-jul", 7, 14),
        ("tcp-jan", 1, 9),
        ("tcp-jul", 7, 8),
    ]
    .into_iter()
    .map(|(text, month, hour)| {
        let at = |year: i32| {
            chrono::NaiveDate::from_ymd_opt(year, month, 5)
                .unwrap()
                .and_hms_opt(hour, 0, 0)
                .unwrap()
                .and_utc()
        };
        let this_year = chrono::Datelike::year(&now);
        let mut t = at(this_year);
        if t > now + chrono::Duration::days(2) {
            t = at(this_year - 1);
        }
        (
            text.to_owned(),
            t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        )
    })
    .collect();
    assert_eq!(got, want);
    let csl = read_output(&daemon.out().join("csl"));
    let row: serde_json::Value = serde_json::from_str(&csl[0]).unwrap();
    assert_eq!(row["ReceiptTime"], "2024-01-07T19:50:39.000Z", "{row}");
}

/// `[sinks.NAME.retention]`: the directory stays within `max_bytes` while batches keep coming,
/// the files kept are the newest, an earlier run's file past `max_age_secs` goes at start-up,
/// files that are not batch files stay, and the metrics account for every batch written.
#[test]
fn file_sink_retention_keeps_the_newest_batches_within_the_bound() {
    const MESSAGES: usize = 30_000;
    const MAX_BYTES: u64 = 1 << 20;
    let tables = format!(
        "{}[sinks.kept]\ntype = \"file\"\npath = \"{{out}}/kept\"\nschema = \"raw\"\n\
         compression = \"none\"\nbatch_max_events = 100\nbatch_timeout_ms = 50\n\
         [sinks.kept.retention]\nmax_bytes = {MAX_BYTES}\nmax_age_secs = 86400\n",
        tcp_source("lf")
    );
    // An earlier run's batch file, two days old, and a file of someone else's.
    let daemon = Daemon::start_seeded(&tables, |out| {
        let dir = out.join("kept");
        std::fs::create_dir_all(&dir).unwrap();
        let old = (chrono::Utc::now() - chrono::Duration::days(2))
            .format("%Y%m%dT%H%M%S%.3fZ-0-000000.ndjson")
            .to_string();
        std::fs::write(dir.join(old), vec![b'x'; 3000]).unwrap();
        std::fs::write(dir.join("notes.txt"), vec![b'n'; 2 * MAX_BYTES as usize]).unwrap();
    });
    let dir = daemon.out().join("kept");
    assert_eq!(
        daemon.metric(
            "sluice_sink_retention_removed_files_total",
            &[("sink", "kept"), ("reason", "max_age")]
        ),
        1,
        "the earlier run's 2-day-old file goes at start-up"
    );
    let mut tcp = TcpStream::connect(daemon.tcp.unwrap()).unwrap();
    let mut text = String::new();
    for i in 0..MESSAGES {
        text.push_str(&format!(
            "<13>1 2026-12-07T08:00:00Z host app - - - retention message {i:06} {}\n",
            "p".repeat(150)
        ));
    }
    tcp.write_all(text.as_bytes()).unwrap();
    drop(tcp);
    daemon.wait_for_metric(
        "sluice_sink_events_total",
        &[("sink", "kept")],
        MESSAGES as u64,
        Duration::from_secs(60),
    );
    let metrics = daemon.metrics_text();
    let (_, daemon) = daemon.stop();

    let mut batch_files: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                e.metadata().unwrap().len(),
            )
        })
        .filter(|(name, _)| name.ends_with(".ndjson"))
        .collect();
    batch_files.sort();
    let kept_bytes: u64 = batch_files.iter().map(|(_, size)| size).sum();
    assert!(
        kept_bytes <= MAX_BYTES && kept_bytes > MAX_BYTES / 2,
        "{kept_bytes} bytes in {} files",
        batch_files.len()
    );
    assert!(
        dir.join("notes.txt").exists(),
        "not a batch file: left alone"
    );
    // The events kept are the last ones sent, in one unbroken run.
    let mut kept: Vec<usize> = batch_files
        .iter()
        .flat_map(|(name, _)| {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            text.lines()
                .map(|line| {
                    let at = line.find("retention message ").unwrap() + 18;
                    line[at..at + 6].parse::<usize>().unwrap()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    kept.sort_unstable();
    let first = kept[0];
    assert_eq!(kept, (first..MESSAGES).collect::<Vec<_>>());
    // Every batch written is either still there or counted as removed, bytes likewise.
    let m = |name: &str, labels: &[(&str, &str)]| metric_value(&metrics, name, labels);
    let removed_files = m(
        "sluice_sink_retention_removed_files_total",
        &[("sink", "kept"), ("reason", "max_bytes")],
    );
    assert!(removed_files > 0);
    assert_eq!(
        removed_files + batch_files.len() as u64,
        m("sluice_sink_batches_total", &[("sink", "kept")])
    );
    assert_eq!(
        m(
            "sluice_sink_retention_removed_bytes_total",
            &[("sink", "kept"), ("reason", "max_bytes")]
        ) + kept_bytes,
        m(
            "sluice_sink_bytes_total",
            &[("sink", "kept"), ("stage", "compressed")]
        )
    );
    assert_eq!(
        m("sluice_sink_retained_bytes", &[("sink", "kept")]),
        kept_bytes
    );
    assert_eq!(
        m("sluice_sink_retention_errors_total", &[("sink", "kept")]),
        0
    );
    drop(daemon);
}

/// `systemctl reload` (SIGHUP) applies an edited allowlist to running UDP and TCP sources:
/// senders refused before are taken after, with no restart. An invalid file changes nothing,
/// and an edit only a restart can apply is named in the log and flagged in the metrics.
#[test]
fn sighup_reloads_source_allowlists() {
    for backend in ["io_uring", "portable"] {
        sighup_reloads_source_allowlists_on(backend);
    }
}

fn sighup_reloads_source_allowlists_on(backend: &str) {
    let sources = format!(
        "io_backend = \"{backend}\"\n{UDP_SOURCE}allow = [\"127.0.0.2\"]\n{}allow = [\"127.0.0.2\"]\n",
        tcp_source("lf")
    );
    let sink = "[sinks.kept]\ntype = \"file\"\npath = \"{out}/kept\"\nschema = \"raw\"\n\
                compression = \"none\"\nbatch_timeout_ms = 50\n";
    let daemon = Daemon::start(&format!("{sources}{sink}"));
    let config_path = daemon.dir.path().join("sluice.toml");
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let send_both = |tag: &str| {
        udp.send_to(
            format!("<13>host app: udp-{tag}").as_bytes(),
            daemon.udp.unwrap(),
        )
        .unwrap();
        let mut tcp = TcpStream::connect(daemon.tcp.unwrap()).unwrap();
        // Refused connections are closed by the daemon: the write may fail, that is the point.
        let _ = tcp.write_all(format!("<13>host app: tcp-{tag}\n").as_bytes());
    };
    let hup = |want_ok: u64, want_error: u64| {
        let status = Command::new("kill")
            .args(["-HUP", &daemon.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = daemon.metric("sluice_config_reloads_total", &[("result", "ok")]);
            let error = daemon.metric("sluice_config_reloads_total", &[("result", "error")]);
            if (ok, error) == (want_ok, want_error) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "reloads ok {ok}, error {error}\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    send_both("before");
    daemon.wait_for_metric(
        "sluice_dropped_messages_total",
        &[("source", "udp_in"), ("reason", "not_allowed")],
        1,
        Duration::from_secs(20),
    );
    daemon.wait_for_metric(
        "sluice_connections_refused_total",
        &[("source", "tcp_in"), ("reason", "not_allowed")],
        1,
        Duration::from_secs(20),
    );

    // Allow all of 127/8, and change something only a restart applies.
    let original = std::fs::read_to_string(&config_path).unwrap();
    let edited = original
        .replace("allow = [\"127.0.0.2\"]", "allow = [\"127.0.0.0/8\"]")
        .replace("batch_timeout_ms = 50", "batch_timeout_ms = 60");
    assert_ne!(edited, original);
    std::fs::write(&config_path, &edited).unwrap();
    hup(1, 0);
    assert_eq!(daemon.metric("sluice_config_restart_pending", &[]), 1);
    let log = daemon.log();
    assert!(
        log.contains("only after a restart") && log.contains("sinks.kept.batch_timeout_ms"),
        "{log}"
    );
    send_both("after");
    daemon.wait_for_metric(
        "sluice_sink_events_total",
        &[("sink", "kept")],
        2,
        Duration::from_secs(20),
    );

    // A broken file: nothing changes, the allowlists stay as reloaded.
    std::fs::write(&config_path, format!("{edited}\nno_such_key = 1\n")).unwrap();
    hup(1, 1);
    assert!(
        daemon
            .log()
            .contains("config reload failed, nothing changed")
    );
    send_both("still");
    daemon.wait_for_metric(
        "sluice_sink_events_total",
        &[("sink", "kept")],
        4,
        Duration::from_secs(20),
    );
    assert_eq!(
        daemon.metric(
            "sluice_dropped_messages_total",
            &[("source", "udp_in"), ("reason", "not_allowed")]
        ),
        1
    );

    // Taken off the list again: a connection established under the wider list is closed
    // (what it sent before stays), and only a sender still on the list keeps its connection.
    let mut taken_off = TcpStream::connect(daemon.tcp.unwrap()).unwrap();
    let kept_socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    kept_socket
        .bind(
            &"127.0.0.2:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    kept_socket.connect(&daemon.tcp.unwrap().into()).unwrap();
    let mut kept: TcpStream = kept_socket.into();
    taken_off
        .write_all(b"<13>host app: tcp-before-cut\n")
        .unwrap();
    kept.write_all(b"<13>host app: tcp-kept-1\n").unwrap();
    daemon.wait_for_metric(
        "sluice_sink_events_total",
        &[("sink", "kept")],
        6,
        Duration::from_secs(20),
    );
    std::fs::write(
        &config_path,
        edited.replace("allow = [\"127.0.0.0/8\"]", "allow = [\"127.0.0.2\"]"),
    )
    .unwrap();
    hup(2, 1);
    daemon.wait_for_metric(
        "sluice_connections_closed_total",
        &[("source", "tcp_in"), ("reason", "not_allowed")],
        1,
        Duration::from_secs(20),
    );
    taken_off
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    // The daemon's end is closed: end of stream or a reset, never a timeout.
    match std::io::Read::read(&mut taken_off, &mut byte) {
        Ok(0) => {}
        Ok(n) => panic!("{n} bytes from the daemon"),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
    assert!(daemon.log().contains("no longer permits its sender"));
    kept.write_all(b"<13>host app: tcp-kept-2\n").unwrap();
    daemon.wait_for_metric(
        "sluice_sink_events_total",
        &[("sink", "kept")],
        7,
        Duration::from_secs(20),
    );
    assert_eq!(
        daemon.metric(
            "sluice_connections_closed_total",
            &[("source", "tcp_in"), ("reason", "not_allowed")]
        ),
        1
    );
    drop(kept);
    let (_, daemon) = daemon.stop();
    let mut got: Vec<String> = read_output(&daemon.out().join("kept"))
        .iter()
        .map(|line| serde_json::from_str::<String>(line).unwrap())
        .map(|raw| raw.rsplit(' ').next().unwrap().to_owned())
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "tcp-after",
            "tcp-before-cut",
            "tcp-kept-1",
            "tcp-kept-2",
            "tcp-still",
            "udp-after",
            "udp-still"
        ]
    );
}

fn raw_came_over_udp(message: &str, markers: &[(String, bool)], runs: &[(&str, &[&str])]) -> bool {
    markers
        .iter()
        .zip(runs)
        .any(|((marker, _), (proto, _))| *proto == "udp" && message.ends_with(marker.as_str()))
}

/// A config file any user may write is refused by `check-config` and `run`; an inline secret
/// in one any user may read is a warning from both.
#[test]
fn config_file_modes_are_checked() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{0}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\nbearer_token = \"inline\"\n\
             [sources.in]\ntype = \"udp\"\nlisten = \"127.0.0.1:0\"\n\
             [sinks.out]\ntype = \"file\"\npath = \"{0}/out\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let chmod =
        |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    chmod(0o644);
    let out = daemon_support::check_config(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: `metrics.bearer_token` is written inline in {}, which every user may read",
            path.display()
        )),
        "{stderr}"
    );
    chmod(0o640);
    let out = daemon_support::check_config(&path);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    chmod(0o646);
    for (args, stderr) in daemon_support::refused_by_check_config_and_run(&path) {
        assert!(
            stderr.contains(&format!(
                "config file {} is writable by every user (mode 0646)",
                path.display()
            )),
            "{args}: {stderr}"
        );
    }
}

/// A bad config is refused by both `check-config` and `run`, naming file, line and key, on one
/// `error:` line — no stack backtrace even where the service's environment sets RUST_BACKTRACE.
#[test]
fn bad_config_names_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[sources.in]\ntype = \"udp\"\nlisten = \"127.0.0.1:0\"\n\n[sinks.out]\ntype = \"file\"\npath = \"/tmp/x\"\nbatch_max_event = 5\n",
    )
    .unwrap();
    for (args, stderr) in daemon_support::refused_by_check_config_and_run(&path) {
        assert!(
            stderr.starts_with(&format!(
                "error: {}:8: unknown field `batch_max_event`",
                path.display()
            )),
            "{args}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{args}: {stderr}");
    }
    std::fs::write(&path, "[sources.in]\ntype = \"udp\"\nlisten = \"127.0.0.1:0\"\nthreads = 0\n[sinks.out]\ntype = \"file\"\npath = \"/tmp/x\"\n").unwrap();
    let out = daemon_support::check_config(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(":4: `sources.in.threads`: must be greater than 0"),
        "{stderr}"
    );
}

/// `check-config` prints the effective config with defaults filled in and secrets redacted.
#[test]
fn check_config_prints_effective_config_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-secret-123\n").unwrap();
    // Secret files must be private or sluice refuses them.
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        format!(
            "[metrics]\nlisten = \"127.0.0.1:0\"\nbearer_token = \"inline-secret-456\"\n{UDP_SOURCE}{}",
            file_sink("out", "commonsecuritylog", "gzip", 100).replace("{out}", &dir.path().display().to_string())
        ),
    )
    .unwrap();
    let out = daemon_support::check_config(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("inline-secret-456"), "{stdout}");
    assert!(stdout.contains("bearer_token = \"<redacted>\""), "{stdout}");
    assert!(
        stdout.contains("schema = \"commonsecuritylog\"")
            && stdout.contains("max_message_bytes = 65535"),
        "{stdout}"
    );
    // The printed config is itself a valid config.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, stdout.as_bytes()).unwrap();
    assert!(daemon_support::check_config(&again).status.success());

    // A token from a file is used but never shown; `/metrics` then requires it.
    std::fs::write(
        &path,
        format!(
            "[metrics]\nlisten = \"127.0.0.1:0\"\nbearer_token_file = {:?}\n{UDP_SOURCE}{}",
            token_file.display().to_string(),
            file_sink("out", "raw", "none", 100)
                .replace("{out}", &dir.path().display().to_string())
        ),
    )
    .unwrap();
    let out = daemon_support::check_config(&path);
    assert!(
        out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("file-secret-123")
    );

    // A `user` this machine lacks is valid config (it may be checked on a build host) but
    // is warned about, since `run` would fail here.
    std::fs::write(
        &path,
        format!(
            "user = \"sluice-test-no-such-user\"\n{UDP_SOURCE}{}",
            file_sink("out", "raw", "none", 100)
                .replace("{out}", &dir.path().display().to_string())
        ),
    )
    .unwrap();
    let out = daemon_support::check_config(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("sluice-test-no-such-user"),
        "{stderr}"
    );
}

/// Without `--config` the embedded default binds port 514; unprivileged, the error explains
/// how to fix it. (As root the bind succeeds, which is also correct; then it is stopped.)
#[test]
fn default_config_port_514_error_is_helpful() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("run")
        .current_dir(dir.path())
        .env("RUST_BACKTRACE", "0")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        // Privileged (or 514 free to us): it runs. Stop it; the port-514 path works.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert!(child.wait().unwrap().success());
        return;
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    if stderr.contains("already uses it") || stderr.contains("metrics endpoint") {
        return; // Another daemon (or a parallel test) owns port 514 or 9514 here.
    }
    assert!(
        stderr.contains("CAP_NET_BIND_SERVICE") && stderr.contains("--config"),
        "{stderr}"
    );
}

/// The default (`auto`) picks io_uring wherever the kernel allows it, so the tests above run
/// on it there; this one forces the portable readers for one UDP + TCP run (zero loss at a
/// moderate rate, every message in the file) plus a UDP overload whose kernel drops must be
/// counted exactly, so both backends stay covered.
#[test]
fn portable_backend_udp_tcp_and_kernel_drops() {
    const UDP_TOTAL: usize = 20_000;
    const TCP_TOTAL: usize = 100_000;
    const BLAST: usize = 20_000;
    let tables = format!(
        "io_backend = \"portable\"\n{UDP_SOURCE}{}\
         [sources.udp_small]\ntype = \"udp\"\nlisten = \"127.0.0.1:0\"\nthreads = 1\nreceive_buffer_bytes = 8192\n\
         {}[sinks.small]\ntype = \"file\"\npath = \"{{out}}/small\"\nschema = \"raw\"\ncompression = \"none\"\n\
         inputs = [\"udp_small\"]\n",
        tcp_source("lf"),
        file_sink("all", "sluice", "zstd", 200).replace(
            "batch_max_events",
            "inputs = [\"udp_in\", \"tcp_in\"]\nbatch_max_events"
        ),
    );
    let daemon = Daemon::start(&tables);
    let log = daemon.log();
    assert!(
        log.contains("socket reader backend: portable (chosen in the config)"),
        "{log}"
    );
    let tcp_addr = daemon.tcp.unwrap();
    let tcp = std::thread::spawn(move || {
        let mut w = std::io::BufWriter::new(TcpStream::connect(tcp_addr).unwrap());
        for i in 0..TCP_TOTAL {
            writeln!(w, "{}", message(i % 10_000)).unwrap();
        }
        w.flush().unwrap();
    });
    let source_addr = |source: &str| -> SocketAddr {
        daemon
            .log()
            .lines()
            .filter(|l| l.contains(&format!("source={source}")))
            .find_map(|l| l.split("listening on udp ").nth(1))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{source} address in the log"))
    };
    let addr = source_addr("udp_in");
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    for i in 0..UDP_TOTAL {
        client.send_to(message(i).as_bytes(), addr).unwrap();
        if i % 500 == 499 {
            let due = Duration::from_micros(20 * (i as u64 + 1));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    tcp.join().unwrap();
    daemon.wait_for_metric(
        "sluice_received_messages_total",
        &[("source", "udp_in")],
        UDP_TOTAL as u64,
        Duration::from_secs(60),
    );
    daemon.wait_for_metric(
        "sluice_received_messages_total",
        &[("source", "tcp_in")],
        TCP_TOTAL as u64,
        Duration::from_secs(120),
    );

    // Overload a second socket: sent = received + kernel drops, exactly.
    let small = source_addr("udp_small");
    for i in 0..BLAST {
        client.send_to(message(i).as_bytes(), small).unwrap();
    }
    let started = Instant::now();
    let (received, kernel) = loop {
        let text = daemon.metrics_text();
        let received = metric_value(
            &text,
            "sluice_received_messages_total",
            &[("source", "udp_small")],
        );
        let kernel = metric_value(
            &text,
            "sluice_dropped_messages_total",
            &[("source", "udp_small"), ("reason", "kernel_rcvbuf")],
        );
        if received + kernel >= BLAST as u64 {
            break (received, kernel);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "received {received} + kernel drops {kernel} < {BLAST}\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(received + kernel, BLAST as u64);
    assert!(kernel > 0, "an 8 KiB buffer should overflow");
    let text = daemon.metrics_text();
    assert_eq!(
        metric_value(
            &text,
            "sluice_dropped_messages_total",
            &[("source", "udp_in")]
        ) + metric_value(
            &text,
            "sluice_dropped_messages_total",
            &[("source", "tcp_in")]
        ),
        0,
        "{text}"
    );
    assert!(
        text.contains("sluice_kernel_udp_rcvbuf_errors"),
        "system-wide gauge exported: {text}"
    );

    let (log, daemon) = daemon.stop();
    let lines = read_output(&daemon.out().join("all"));
    assert_eq!(lines.len(), UDP_TOTAL + TCP_TOTAL, "{log}");
    let mut expected = expected_counts(TCP_TOTAL, 10_000, Schema::Sluice, "tcp_in");
    for (line, n) in expected_counts(UDP_TOTAL, UDP_TOTAL, Schema::Sluice, "udp_in") {
        *expected.entry(line).or_default() += n;
    }
    assert_same_multiset(expected, &lines);
    assert_eq!(
        read_output(&daemon.out().join("small")).len() as u64,
        received,
        "{log}"
    );
    assert_eq!(log_total(&log, "dropped_kernel_rcvbuf"), kernel, "{log}");
}

/// Tables from `include`d files run like the main file's, and a reload reads them again:
/// an edited allowlist in an included file is applied, a sink added in a new file is named
/// as needing a restart.
#[test]
fn included_files_are_run_and_read_again_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let main = dir.path().join("sluice.toml");
    std::fs::write(
        &main,
        format!(
            "data_dir = {:?}\ninclude = [\"conf.d\"]\n[metrics]\nlisten = \"127.0.0.1:0\"\n{}",
            dir.path().join("data").display().to_string(),
            file_sink("archive", "sluice", "none", 50).replace("{out}", &out.display().to_string())
        ),
    )
    .unwrap();
    let conf_d = dir.path().join("conf.d");
    std::fs::create_dir(&conf_d).unwrap();
    let source = |allow: &str| {
        format!(
            "[sources.from_fragment]\ntype = \"tcp\"\nlisten = \"127.0.0.1:0\"\nallow = [{allow:?}]\n"
        )
    };
    std::fs::write(conf_d.join("10-source.toml"), source("127.0.0.1")).unwrap();
    let (mut child, log) =
        daemon_support::started(daemon_support::run_command(&main).spawn().unwrap());
    let tcp = daemon_support::logged_addr(&log, "listening on tcp ").expect("tcp address");
    let mut sender = std::net::TcpStream::connect(tcp).unwrap();
    sender
        .write_all(b"<134>1 2026-12-07T10:00:00Z host app - - - from an included source\n")
        .unwrap();
    drop(sender);
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon_support::finished_batch_lines(&out.join("archive")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{}",
            daemon_support::log_text(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    std::fs::write(conf_d.join("10-source.toml"), source("127.0.0.2")).unwrap();
    std::fs::write(
        conf_d.join("20-sink.toml"),
        file_sink("extra", "raw", "none", 50).replace("{out}", &out.display().to_string()),
    )
    .unwrap();
    // SAFETY: signalling our own child process by its pid; it is not reaped yet.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) },
        0
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = daemon_support::log_text(&log);
        if text.contains("allowlists_changed=[\"from_fragment\"]")
            && text.contains("only after a restart")
            && text.contains("sinks.extra")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon_support::stop_cleanly(&mut child, &log, Duration::from_secs(20));
}

/// A sender that keeps breaking the framing is counted every time but logged once per 10 s
/// (with how many were left out), on both reader backends: a flood must not fill the journal.
#[test]
fn framing_error_floods_are_counted_in_full_and_logged_sparingly() {
    for backend in ["io_uring", "portable"] {
        let daemon = Daemon::start(&format!(
            "io_backend = \"{backend}\"\n{}{}",
            tcp_source("octet"),
            file_sink("out", "raw", "none", 50)
        ));
        let mut tcp = TcpStream::connect(daemon.tcp.unwrap()).unwrap();
        // Not octet counted: each line is one framing error, skipped to the next line.
        for i in 0..500 {
            writeln!(tcp, "no length prefix {i}").unwrap();
        }
        tcp.write_all(b"29 <13>host app: after the flood").unwrap();
        drop(tcp);
        daemon.wait_for_metric(
            "sluice_framing_errors_total",
            &[("source", "tcp_in")],
            500,
            Duration::from_secs(30),
        );
        daemon.wait_for_metric(
            "sluice_received_messages_total",
            &[("source", "tcp_in")],
            1,
            Duration::from_secs(30),
        );
        let log = daemon.log();
        let lines = log.lines().filter(|l| l.contains("framing error")).count();
        assert_eq!(lines, 1, "{backend}: {log}");
        daemon.stop();
    }
}

/// `expected_senders`: each listed address gets its own count and last-seen time from start-up
/// (what `SluiceSenderSilent` alerts on), over UDP and TCP; an unlisted sender gets no series.
/// A reload replaces the lists in place.
#[test]
fn expected_senders_are_counted_and_timed_one_by_one() {
    let unix_now = daemon_support::unix_now;
    let before_start = unix_now();
    let expected = "expected_senders = [\"127.0.0.1\", \"127.0.0.3\"]\n";
    let daemon = Daemon::start(&format!(
        "{UDP_SOURCE}{expected}{}{expected}{}",
        tcp_source("lf"),
        file_sink("out", "raw", "none", 50)
    ));
    let text = daemon.metrics_text();
    let exported = daemon_support::exported_names(&text);
    let dashboard = daemon_support::dashboard_metric_names(&daemon_support::dashboard());
    for name in daemon_support::alert_rule_metric_names()
        .into_iter()
        .chain(dashboard)
    {
        if name.starts_with("sluice_sender_") {
            assert!(exported.contains(&name), "{name} not exported:\n{text}");
        }
    }
    let last_seen = |text: &str, source: &str, sender: &str| {
        metric_value(
            text,
            "sluice_sender_last_seen_timestamp_seconds",
            &[("source", source), ("sender", sender)],
        )
    };
    // Not heard yet: start-up time.
    let started = last_seen(&text, "tcp_in", "127.0.0.3");
    assert!((before_start..=unix_now()).contains(&started), "{text}");

    std::thread::sleep(Duration::from_millis(1100));
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..4 {
        udp.send_to(
            format!("<13>host app: udp {i}").as_bytes(),
            daemon.udp.unwrap(),
        )
        .unwrap();
    }
    for (local, lines) in [("127.0.0.1", 3), ("127.0.0.2", 2)] {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&format!("{local}:0").parse::<SocketAddr>().unwrap().into())
            .unwrap();
        socket.connect(&daemon.tcp.unwrap().into()).unwrap();
        let mut tcp: TcpStream = socket.into();
        for i in 0..lines {
            writeln!(tcp, "<13>host app: tcp from {local} {i}").unwrap();
        }
    }
    daemon.wait_for_metric(
        "sluice_sink_events_total",
        &[("sink", "out")],
        9,
        Duration::from_secs(20),
    );
    let text = daemon.metrics_text();
    let messages = |source: &str, sender: &str| {
        metric_value(
            &text,
            "sluice_sender_messages_total",
            &[("source", source), ("sender", sender)],
        )
    };
    assert_eq!(messages("udp_in", "127.0.0.1"), 4, "{text}");
    assert_eq!(messages("tcp_in", "127.0.0.1"), 3, "{text}");
    assert_eq!(messages("tcp_in", "127.0.0.3"), 0, "{text}");
    assert!(
        !text.contains("127.0.0.2"),
        "an unlisted sender has no series: {text}"
    );
    // Heard after the second's pause: later than start-up; the silent one still at start-up.
    assert!(last_seen(&text, "tcp_in", "127.0.0.1") > started, "{text}");
    assert!(last_seen(&text, "udp_in", "127.0.0.1") > started, "{text}");
    assert_eq!(last_seen(&text, "tcp_in", "127.0.0.3"), started, "{text}");

    // `systemctl reload` with .2 listed instead of .3: applied in place, no restart pending.
    let config_path = daemon.dir.path().join("sluice.toml");
    let original = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        original.replace("\"127.0.0.3\"]", "\"127.0.0.2\"]"),
    )
    .unwrap();
    let before_reload = unix_now();
    let status = Command::new("kill")
        .args(["-HUP", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    daemon.wait_for_metric(
        "sluice_config_reloads_total",
        &[("result", "ok")],
        1,
        Duration::from_secs(20),
    );
    let text = daemon.metrics_text();
    assert_eq!(
        metric_value(&text, "sluice_config_restart_pending", &[]),
        0,
        "{}",
        daemon.log()
    );
    let expected = |text: &str, sender: &str| {
        metric_value(
            text,
            "sluice_sender_expected",
            &[("source", "tcp_in"), ("sender", sender)],
        )
    };
    assert_eq!(expected(&text, "127.0.0.1"), 1, "{text}");
    assert_eq!(expected(&text, "127.0.0.2"), 1, "{text}");
    assert_eq!(
        expected(&text, "127.0.0.3"),
        0,
        "taken off, still exported: {text}"
    );
    // Newly listed: silent since the reload, not since start-up.
    assert!(
        last_seen(&text, "tcp_in", "127.0.0.2") >= before_reload,
        "{text}"
    );
    assert!(
        daemon
            .log()
            .contains("expected_senders_changed=[\"tcp_in\", \"udp_in\"]"),
        "{}",
        daemon.log()
    );
    // Its earlier 2 lines were not counted; what it sends now is.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.connect(&daemon.tcp.unwrap().into()).unwrap();
    let mut tcp: TcpStream = socket.into();
    for i in 0..5 {
        writeln!(tcp, "<13>host app: tcp from 127.0.0.2 after the reload {i}").unwrap();
    }
    daemon.wait_for_metric(
        "sluice_sender_messages_total",
        &[("source", "tcp_in"), ("sender", "127.0.0.2")],
        5,
        Duration::from_secs(20),
    );
    daemon.stop();
}
