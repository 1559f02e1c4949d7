//! `sluice parse` end to end: the real binary, stdin → stdout.
//!
//! The last test also runs every real Darktrace sample from the shared reference folder
//! (`shared/samples/darktrace`, looked for above this crate) when it exists, and compares the
//! ECS output with Elastic's expected documents; it is skipped when the folder is absent.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

fn data(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/darktrace")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `sluice parse ARGS` with `input` on stdin; returns (exit ok, stdout lines as JSON, stderr).
fn sluice_parse(args: &[&str], input: &[u8]) -> (bool, Vec<Value>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("parse")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let stdout = String::from_utf8(output.stdout).expect("stdout is UTF-8");
    let docs = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (
        output.status.success(),
        docs,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn all_test_messages() -> String {
    [
        "model_breach_rfc5424.log",
        "model_breach_rfc3164.log",
        "model_breach_legacy.log",
        "ai_analyst.log",
        "system_status.log",
        "audit.log",
        "sc4s.log",
    ]
    .iter()
    .map(|f| data(f))
    .collect()
}

/// `--timezone local` is the host's zone: `TZ` when set, as rsyslog and syslog-ng assume.
#[test]
fn timezone_local_is_the_hosts_zone() {
    let run = |tz: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["parse", "--timezone", "local"])
            .env("TZ", tz)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(b"<13>1 2024-07-05T10:00:00 h a - - - x\n")?;
                child.wait_with_output()
            })
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
        doc["syslog"]["timestamp"].as_str().unwrap().to_owned()
    };
    assert_eq!(run("America/New_York"), "2024-07-05T14:00:00.000Z");
    assert_eq!(run("Asia/Tokyo"), "2024-07-05T01:00:00.000Z");
}

/// `--timezone` places RFC 3164 times (which carry no zone) as the daemon's `timezone` does.
#[test]
fn timezone_places_unzoned_times() {
    // RFC 5424 with a year and no offset, so the result does not depend on today's date.
    let input = b"<13>1 2024-01-05T10:00:00 h a - - - winter\n<13>1 2024-07-05T10:00:00 h a - - - summer\n<13>1 2024-07-05T10:00:00+00:00 h a - - - zoned\n";
    let stamps = |args: &[&str]| -> Vec<String> {
        let (ok, docs, stderr) = sluice_parse(args, input);
        assert!(ok, "{stderr}");
        docs.iter()
            .map(|d| d["syslog"]["timestamp"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        stamps(&[]),
        [
            "2024-01-05T10:00:00.000Z",
            "2024-07-05T10:00:00.000Z",
            "2024-07-05T10:00:00.000Z"
        ]
    );
    assert_eq!(
        stamps(&["--timezone", "Europe/Paris"]),
        [
            "2024-01-05T09:00:00.000Z",
            "2024-07-05T08:00:00.000Z",
            "2024-07-05T10:00:00.000Z"
        ]
    );
    // An offset that starts with `-` is a value, not an option.
    assert_eq!(
        stamps(&["--timezone", "-04:00"]),
        [
            "2024-01-05T14:00:00.000Z",
            "2024-07-05T14:00:00.000Z",
            "2024-07-05T10:00:00.000Z"
        ]
    );
    let (ok, docs, stderr) = sluice_parse(&["--timezone", "Mars/Olympus"], input);
    assert!(!ok && docs.is_empty());
    assert!(
        stderr.contains("unknown time zone `Mars/Olympus`"),
        "{stderr}"
    );
}

#[test]
fn every_schema_gives_one_json_object_per_message() {
    let input = all_test_messages();
    let messages = input.lines().count();
    for schema in ["sluice", "commonsecuritylog", "ecs", "raw"] {
        let (ok, docs, stderr) = sluice_parse(&["--schema", schema], input.as_bytes());
        assert!(ok, "{schema}: {stderr}");
        assert_eq!(docs.len(), messages, "{schema}");
        if schema == "raw" {
            let lines: Vec<&str> = input.lines().collect();
            assert_eq!(
                docs,
                lines.iter().map(|l| Value::from(*l)).collect::<Vec<_>>()
            );
        }
    }
    let (_, docs, _) = sluice_parse(&[], input.as_bytes());
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "darktrace_model_breach",
            "darktrace_model_breach",
            "darktrace_model_breach",
            "darktrace_ai_analyst",
            "darktrace_ai_analyst",
            "darktrace_system_status",
            "darktrace_system_status",
            "darktrace_audit",
            "darktrace_audit",
            "darktrace_system_status"
        ]
    );
}

#[test]
fn unparsable_messages_are_reported_not_dropped() {
    let mut input = b"<165>1 2023-06-29T01:00:05Z host darktrace - - - {\"pbid\":1,\"model\":\n\
                 <165>1 2023-06-29T01:00:05Z host darktrace - - - [[[[[[[[[[1]]]]]]]]]]\n\
                 <165>1 2023-06-29T01:00:05Z host darktrace - - - {\"a\":\"0123456789012345678901234567890123456789\"}\n"
        .to_vec();
    input.extend_from_slice(b"\xff\xfe not utf-8\n");
    let (ok, docs, stderr) =
        sluice_parse(&["--json-max-depth", "8", "--json-max-bytes", "32"], &input);
    assert!(ok, "{stderr}");
    assert_eq!(docs.len(), 4);
    let errors: Vec<&str> = docs
        .iter()
        .take(3)
        .map(|d| d["error"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(errors, ["json_syntax", "json_depth", "json_size"]);
    assert_eq!(
        docs[0]["raw"],
        "<165>1 2023-06-29T01:00:05Z host darktrace - - - {\"pbid\":1,\"model\":"
    );
    assert!(
        docs[3]["text"].as_str().unwrap().contains("not utf-8"),
        "{}",
        docs[3]
    );

    for schema in ["commonsecuritylog", "ecs"] {
        let (ok, docs, _) = sluice_parse(&["--schema", schema, "--json-max-depth", "8"], &input);
        assert!(ok);
        assert_eq!(docs.len(), 4, "{schema}");
        assert!(
            docs[0].to_string().contains("pbid"),
            "{schema} keeps the raw text: {}",
            docs[0]
        );
    }
}

#[test]
fn octet_counted_framing() {
    let messages = [
        "<165>1 2023-06-29T01:00:05Z h darktrace - - - {\"aiaScore\":5}",
        "<13>Jul  1 00:00:00 h app: multi\nline",
    ];
    let mut input = Vec::new();
    for m in messages {
        input.extend_from_slice(format!("{} {m}", m.len()).as_bytes());
    }
    let (ok, docs, stderr) = sluice_parse(&["--framing", "octet"], &input);
    assert!(ok, "{stderr}");
    assert_eq!(docs.len(), 2, "{docs:?}");
    assert_eq!(docs[0]["kind"], "darktrace_ai_analyst");
    assert_eq!(docs[1]["text"], "multi\nline");
}

#[test]
fn long_messages_are_cut_to_the_limit() {
    let (ok, docs, _) = sluice_parse(
        &["--max-message-bytes", "64"],
        format!("{}\nnext\n", "y".repeat(1000)).as_bytes(),
    );
    assert!(ok);
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["text"].as_str().unwrap().len(), 64);
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["parse", "--schema", "raw"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let line = "x".repeat(200) + "\n";
        for _ in 0..50_000 {
            if stdin.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let status = child.wait().unwrap();
    writer.join().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(status.success(), "{status:?} {stderr}");
}

fn shared_samples() -> Option<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|p| p.join("shared/samples/darktrace"))
        .find(|p| p.is_dir())
}

/// Real samples: Elastic's syslog captures and pipeline inputs, Sekoia's intake inputs, the
/// API responses and the SC4S / FortiSIEM lines. Event types must match, and the ECS output
/// must agree with Elastic's expected documents on the key fields.
#[test]
fn real_samples_when_available() {
    let Some(dir) = shared_samples() else {
        eprintln!("shared/samples/darktrace not found; skipping");
        return;
    };
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap();
    let mut input = String::new();
    let mut want: Vec<&str> = Vec::new();
    let mut add = |text: &str, kind: &'static str, input: &mut String| {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            input.push_str(line);
            input.push('\n');
            want.push(kind);
        }
    };
    add(
        &read("elastic/model_breach_alert.log"),
        "darktrace_model_breach",
        &mut input,
    );
    add(
        &read("elastic/ai_analyst_alert.log"),
        "darktrace_ai_analyst",
        &mut input,
    );
    add(
        &read("elastic/system_status_alert.log"),
        "darktrace_system_status",
        &mut input,
    );
    add(
        &read("elastic/pipeline-test-ai-analyst-alert.log"),
        "darktrace_ai_analyst",
        &mut input,
    );
    add(
        &read("elastic/pipeline-test-system-status-alert.log"),
        "darktrace_system_status",
        &mut input,
    );
    for folder in ["sekoia-intake", "sekoia-intake-legacy"] {
        let mut names: Vec<_> = std::fs::read_dir(dir.join(folder))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for path in names {
            let case: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let message = case["input"]["message"]
                .as_str()
                .unwrap()
                .replace('\n', " ");
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let kind = if name.contains("aianalyst") {
                "darktrace_ai_analyst"
            } else if name.contains("summurizer") {
                "json" // an Antigena state change: not one of the four alert types
            } else {
                "darktrace_model_breach"
            };
            add(&message, kind, &mut input);
        }
    }
    for (file, kind) in [
        (
            "api-responses/modelbreaches_response.txt",
            "darktrace_model_breach",
        ),
        (
            "api-responses/aianalyst_response.txt",
            "darktrace_ai_analyst",
        ),
    ] {
        let Value::Array(items) = serde_json::from_str(&read(file)).unwrap() else {
            panic!("{file}")
        };
        for item in items {
            add(&serde_json::to_string(&item).unwrap(), kind, &mut input);
        }
    }
    let other: Value =
        serde_json::from_str(&read("other/darktrace_other_public_samples.json")).unwrap();
    for (sample, kind) in
        other
            .as_array()
            .unwrap()
            .iter()
            .zip(["cef", "darktrace_audit", "darktrace_system_status"])
    {
        add(
            &format!("<165>{}", sample["raw"].as_str().unwrap()),
            kind,
            &mut input,
        );
    }

    let (ok, docs, stderr) = sluice_parse(&[], input.as_bytes());
    assert!(ok, "{stderr}");
    let got: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g,
            w,
            "message {}: {}",
            i + 1,
            input
                .lines()
                .nth(i)
                .unwrap()
                .chars()
                .take(160)
                .collect::<String>()
        );
    }
    assert_eq!(got.len(), want.len());

    // ECS against Elastic's expected documents.
    let (_, ecs, _) = sluice_parse(
        &["--schema", "ecs"],
        read("elastic/ai_analyst_alert.log").as_bytes(),
    );
    let expected: Value =
        serde_json::from_str(&read("elastic/ai_analyst_alert.sample_event.json")).unwrap();
    let got = &ecs[0];
    for path in [
        "/@timestamp",
        "/event/kind",
        "/event/category",
        "/event/type",
        "/event/id",
        "/event/reason",
        "/event/risk_score",
        "/event/start",
        "/event/end",
        "/event/duration",
        "/host/id",
        "/host/ip",
        "/message",
        "/related/ip",
        "/rule/name",
        "/threat/group/id",
        "/threat/enrichments/matched/id",
        "/log/syslog/priority",
        "/log/syslog/facility/code",
        "/log/syslog/facility/name",
        "/log/syslog/severity/code",
        "/log/syslog/severity/name",
        "/log/syslog/hostname",
        "/darktrace/ai_analyst_alert/summariser",
        "/darktrace/ai_analyst_alert/aia_score",
    ] {
        assert_eq!(
            got.pointer(path),
            expected.pointer(path),
            "ai_analyst {path}"
        );
    }

    let (_, ecs, _) = sluice_parse(
        &["--schema", "ecs"],
        read("elastic/pipeline-test-system-status-alert.log").as_bytes(),
    );
    let expected: Value = serde_json::from_str(&read(
        "elastic/pipeline-test-system-status-alert.log-expected.json",
    ))
    .unwrap();
    let expected = expected["expected"].as_array().unwrap();
    assert_eq!(ecs.len(), expected.len());
    for (got, expected) in ecs.iter().zip(expected) {
        for path in [
            "/@timestamp",
            "/event/kind",
            "/event/id",
            "/event/reason",
            "/event/type",
            "/event/url",
            "/host/hostname",
            "/host/ip",
            "/related/hosts",
            "/related/ip",
        ] {
            assert_eq!(
                got.pointer(path),
                expected.pointer(path),
                "system status {path}"
            );
        }
        // Elastic writes the priority as a float (43.0); compare numerically.
        assert_eq!(
            got.pointer("/event/risk_score").and_then(Value::as_f64),
            expected
                .pointer("/event/risk_score")
                .and_then(Value::as_f64)
        );
    }
}
