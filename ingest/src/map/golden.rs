//! Output drift guard for the parsing and mapping hot paths.
//!
//! Every in-repo sample (CEF cases, syslog header cases, Darktrace messages), plus thousands of
//! deterministic mutations of them, is parsed and mapped to every schema; the result must be
//! byte-identical to what the code produced when the golden file was written. Speed work on
//! `parse/` and `map/` must not change a single output byte; a deliberate output change
//! re-blesses the file with `SLUICE_BLESS_GOLDEN=1 cargo test -p sluice-ingest --lib golden`.
//!
//! Small real samples are stored in full (readable diffs); the rest as one FNV-1a hash each.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::event::{Received, Timestamp};
use crate::map::{Schema, write};
use crate::parse::{ParseOptions, Parser};

const SCHEMAS: [Schema; 4] = [
    Schema::Sluice,
    Schema::Commonsecuritylog,
    Schema::Ecs,
    Schema::Raw,
];

/// Receive times that exercise RFC 3164 year inference on both sides of a new year and a leap day.
const RECEIVED_AT: [i64; 3] = [
    1_709_251_200_000_000_000, // 2024-03-01T00:00:00Z
    1_735_689_660_000_000_000, // 2025-01-01T00:01:00Z
    1_709_208_000_000_000_000, // 2024-02-29T12:00:00Z
];

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Every `input` string of the JSON case files.
fn case_inputs(file: &str, out: &mut Vec<String>) {
    let text = std::fs::read_to_string(data_dir().join(file)).expect("case file");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).expect("case JSON");
    for case in cases {
        if let Some(input) = case.get("input").and_then(|v| v.as_str()) {
            out.push(input.to_owned());
        }
    }
}

fn samples() -> Vec<String> {
    let mut out = Vec::new();
    for file in [
        "cef/cases.json",
        "cef/own_cases.json",
        "syslog/syslog_header_expected.json",
        "syslog/syslog_header_own_cases.json",
        "syslog/syslog_loose_cases.json",
        "syslog/vector_vrl_syslog_cases.json",
    ] {
        case_inputs(file, &mut out);
    }
    let mut names: Vec<_> = std::fs::read_dir(data_dir().join("darktrace"))
        .expect("darktrace dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e != "md"))
        .collect();
    names.sort();
    for path in names {
        let text = std::fs::read_to_string(&path).expect("sample");
        out.push(text.trim_end().to_owned());
        out.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
    }
    // The benchmark record and hand-made edge cases (escapes, stray `=`, controls, padding).
    out.extend(
        [
            concat!(
                "<134>Mar  5 10:11:12 dt-master-01 CEF:0|Darktrace|DCIP|6.1.4|537|Antigena/Network/Compliance/Antigena RDP Block|Low| ",
                "externalId=1462565 dvc=10.140.1.12 dvchost=dt-master-01.corp.example.com dst=10.12.48.117 ",
                "dhost=ws-finance-117.corp.example.com darktraceUrl=https://dt-master-01.corp.example.com/#modelbreach/1462565 ",
                "rt=1709633472000 src=10.12.48.22 shost=jump-02.corp.example.com spt=51544 dpt=3389 proto=TCP act=Blocked ",
                "msg=Antigena blocked RDP from jump-02 to ws-finance-117 after an anomalous connection pattern, score 0.87 ",
                "cs1=Compliance::Antigena RDP Block cs1Label=Model Name ",
                "cs2=https://dt-master-01.corp.example.com/#modelbreach/1462565?filter\\=rdp&window\\=24h cs2Label=Breach Link ",
                "cn1=87 cn1Label=Score dtz=Europe/London cat=Compliance ",
                "aid=3mAvC02UBABCAa72iNm4jZA\\=\\= deviceExternalId=dt-master-01"
            ),
            "CEF:0|a\\|b|c\\\\d|1|2|n \"q\"|Very-High| msg=tab\there\\nnl\\rcr \"quoted\" ctl\u{1}x; semi=1 cfp1=2.5 cfp1Label=F c6a1=::1 flexString1=f flexNumber1=12 deviceCustomDate1=Jul 19 2017 10:50:21.127 start=Sep 07 2018 14:50:39 +02:00 end=2025-06-29T23:35:00Z fsize=99999999999 in=12 out=x cnt=3 type=1 dvcpid=7 cn2=-2147483649 cn3=2147483647",
            "CEF:0|v|p|1|id|n|5|request=https://x/?a=1 src=6.6.6.6",
            "CEF:0|v|p|1|id|n|5|src=1.1.1.1 msg=hi src=6.6.6.6 dst=2.2.2.2 ",
            "CEF:0|v|p|1|id|n|5|a==b c=d\\",
            "CEF:0|v|p|1|id|n|5|   ",
            "CEF:0|v|p|1|id|n|5|just words",
            "  <13>1 2024-02-29T23:59:60.123456789+14:00 h a p m [x@1 k=\"v\\\"]\"] CEF:1|V|P|1|1|n|unknown| rt=Feb 29 2024 10:00:00 dtz=-0330",
            "<13>Feb 29 12:00:00 host tag[12]: {\"log_type\":\"breach\",\"x\":[{},[],null,1.5e3,-0,\"é\\u0001\"]}",
            "<13>Dec 31 23:59:00 host app: hello\tworld",
            "{\"a\":1",
            "[1,[2,[3]]]",
        ]
        .map(str::to_owned),
    );
    out
}

/// Deterministic mutations: insert or overwrite bytes that matter to the tokenisers.
fn mutations(samples: &[String], count: usize) -> Vec<Vec<u8>> {
    const ALPHABET: &[&[u8]] = &[
        b" ",
        b"=",
        b"\\",
        b"|",
        b";",
        b"\"",
        b"\n",
        b"\r",
        b"\t",
        b"a",
        b"Z",
        b"0",
        b".",
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        "é".as_bytes(),
        b"\x01",
        b"\x7f",
        b"\xff",
        b"CEF:0|",
        b"<13>",
        b" k=",
        b"\\=",
        b"cs1Label=",
        b"-",
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| {
            let base = &samples[next() as usize % samples.len()];
            // Long JSON samples are mutated less often than they are picked: keep it cheap.
            let mut bytes = base.as_bytes().to_vec();
            for _ in 0..1 + next() % 4 {
                let piece = ALPHABET[next() as usize % ALPHABET.len()];
                let at = next() as usize % (bytes.len() + 1);
                if next() % 2 == 0 || at + piece.len() > bytes.len() {
                    bytes.splice(at..at, piece.iter().copied());
                } else {
                    bytes.splice(at..at + piece.len(), piece.iter().copied());
                }
            }
            bytes
        })
        .collect()
}

fn render(parser: &mut Parser, raw: &[u8], received_at: i64, with_peer: bool, out: &mut Vec<u8>) {
    let received = Received {
        source: "golden",
        peer: with_peer.then(|| "192.0.2.1:514".parse().expect("addr")),
        received_at: Timestamp::from_unix_nanos(received_at),
    };
    let event = parser.parse(received, raw);
    for schema in SCHEMAS {
        out.extend_from_slice(schema.as_str().as_bytes());
        out.push(b'\t');
        write(schema, &event, out);
        out.push(b'\n');
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn produce() -> String {
    let samples = samples();
    let mut parser = Parser::new(ParseOptions::default());
    let mut text = String::new();
    let mut out = Vec::new();
    for (i, sample) in samples.iter().enumerate() {
        for (r, &at) in RECEIVED_AT.iter().enumerate() {
            out.clear();
            render(
                &mut parser,
                sample.as_bytes(),
                at,
                (i + r) % 2 == 0,
                &mut out,
            );
            // Full text where it stays readable; a hash for big JSON rows and repeat times.
            if r == 0 && out.len() <= 6000 {
                writeln!(text, "## sample {i} received {r}").unwrap();
                text.push_str(&String::from_utf8(out.clone()).expect("mapped output is UTF-8"));
            } else {
                writeln!(text, "## sample {i} received {r} {:016x}", fnv1a(&out)).unwrap();
            }
        }
    }
    for (i, raw) in mutations(&samples, 6000).iter().enumerate() {
        out.clear();
        let at = RECEIVED_AT[i % RECEIVED_AT.len()];
        render(&mut parser, raw, at, i % 2 == 0, &mut out);
        writeln!(text, "## mutation {i} {:016x}", fnv1a(&out)).unwrap();
    }
    text
}

#[test]
fn mapped_output_is_byte_identical_to_golden() {
    let path = data_dir().join("golden/mapped_output.txt");
    let got = produce();
    if std::env::var_os("SLUICE_BLESS_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).expect("golden file (bless it first)");
    if got != want {
        let (n, (g, w)) = got
            .lines()
            .zip(want.lines())
            .enumerate()
            .find(|(_, (g, w))| g != w)
            .unwrap_or((0, ("<length differs>", "")));
        panic!(
            "output drifted at golden line {}:\n got: {g}\nwant: {w}",
            n + 1
        );
    }
}

/// Envelopes that carry the event time beside another schema's row (Splunk HEC `time`,
/// Elasticsearch `@timestamp` of `raw` documents) take it from
/// [`crate::map::event_time_millis`]: it must be the `ecs` row's `@timestamp` for every sample
/// and mutation, or an alert would be stamped differently depending on the sink.
#[test]
fn event_time_is_the_ecs_timestamp_for_every_sample() {
    let samples = samples();
    let inputs: Vec<Vec<u8>> = samples
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .chain(mutations(&samples, 6000))
        .collect();
    let mut parser = Parser::new(ParseOptions::default());
    let mut row = Vec::new();
    for (i, raw) in inputs.iter().enumerate() {
        for &at in &RECEIVED_AT {
            let received = Received {
                source: "golden",
                peer: None,
                received_at: Timestamp::from_unix_nanos(at),
            };
            let event = parser.parse(received, raw);
            row.clear();
            write(Schema::Ecs, &event, &mut row);
            let v: serde_json::Value = serde_json::from_slice(&row).expect("ecs row is JSON");
            let stamp = v["@timestamp"].as_str().expect("@timestamp");
            let want = chrono::DateTime::parse_from_rfc3339(stamp)
                .expect("RFC 3339")
                .timestamp_millis();
            assert_eq!(
                crate::map::event_time_millis(&event),
                want,
                "input {i}: {}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
