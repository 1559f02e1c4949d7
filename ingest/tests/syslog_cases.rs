//! Syslog framing and header parsing against public test vectors (syslog-loose, VRL, Vector)
//! and Sluice's own real-world cases. Data and licenses: `tests/data/syslog/SOURCE.md`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use proptest::prelude::*;
use serde::Deserialize;
use serde_json::{Map, Value};
use sluice::event::{SyslogFormat, Timestamp};
use sluice::frame::{FrameEvent, FrameLimits, Framing, OversizePolicy, StreamFramer, datagram};
use sluice::parse::syslog::{parse_header, structured_data};
use sluice::parse::{LocalZone, ParseOptions};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/syslog")
}

fn load<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let text =
        std::fs::read_to_string(data_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Header cases
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct HeaderCase {
    id: String,
    input: String,
    also_input: Option<String>,
    same_as: Option<String>,
    received_at: String,
    default_offset_secs: i32,
    expect: Map<String, Value>,
    differs: Option<String>,
}

fn rfc3339_nanos(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .timestamp_nanos_opt()
        .unwrap()
}

fn opt_str(v: &Value) -> Option<&str> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => panic!("expected string or null, got {other}"),
    }
}

/// Asserts every expectation key of `case` against the parse of `input`; an unknown key fails
/// so that no expectation is silently ignored.
fn check(case: &HeaderCase, input: &str, check_raw_sd: bool) {
    let received = Timestamp::from_unix_nanos(rfc3339_nanos(&case.received_at));
    let options = ParseOptions {
        zone: LocalZone::Fixed(case.default_offset_secs),
        ..ParseOptions::default()
    };
    let (h, body) = parse_header(input, received, &options);
    let id = &case.id;
    for (key, want) in &case.expect {
        match key.as_str() {
            "format" => {
                let got = match h.format {
                    SyslogFormat::Rfc5424 => "rfc5424",
                    SyslogFormat::Rfc3164 => "rfc3164",
                    SyslogFormat::None => "none",
                };
                assert_eq!(Some(got), want.as_str(), "{id}: format");
            }
            "pri" => assert_eq!(
                h.pri.map(|p| u64::from(p.value())),
                want.as_u64(),
                "{id}: pri"
            ),
            "version" => assert_eq!(h.version.map(u64::from), want.as_u64(), "{id}: version"),
            "timestamp" => assert_eq!(
                h.timestamp.map(|t| t.unix_nanos),
                opt_str(want).map(rfc3339_nanos),
                "{id}: timestamp {:?}",
                h.timestamp
            ),
            "offset_secs" => assert_eq!(
                h.timestamp.and_then(|t| t.offset_secs).map(i64::from),
                want.as_i64(),
                "{id}: offset_secs"
            ),
            "hostname" => assert_eq!(h.hostname, opt_str(want), "{id}: hostname"),
            "app_name" => assert_eq!(h.app_name, opt_str(want), "{id}: app_name"),
            "proc_id" => assert_eq!(h.proc_id, opt_str(want), "{id}: proc_id"),
            "msg_id" => assert_eq!(h.msg_id, opt_str(want), "{id}: msg_id"),
            "body" => assert_eq!(Some(body), opt_str(want), "{id}: body"),
            "structured_data_raw" => {
                if check_raw_sd {
                    assert_eq!(
                        h.structured_data,
                        opt_str(want),
                        "{id}: structured_data_raw"
                    );
                }
            }
            "structured_data" => {
                let raw = h
                    .structured_data
                    .unwrap_or_else(|| panic!("{id}: no structured data"));
                let got: Vec<_> = structured_data(raw).collect();
                let want = want.as_array().unwrap();
                assert_eq!(got.len(), want.len(), "{id}: SD element count in {raw}");
                for (g, w) in got.iter().zip(want) {
                    if w.get("error").is_some() {
                        assert!(g.is_err(), "{id}: SD element should fail: {g:?}");
                        continue;
                    }
                    let g = g.as_ref().unwrap_or_else(|e| panic!("{id}: {e}"));
                    assert_eq!(g.id, w["id"].as_str().unwrap(), "{id}: SD-ID");
                    let params: Vec<(&str, &str)> = g
                        .params
                        .iter()
                        .map(|p| (p.name, p.value.as_ref()))
                        .collect();
                    let want_params: Vec<(&str, &str)> = w["params"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| (p[0].as_str().unwrap(), p[1].as_str().unwrap()))
                        .collect();
                    assert_eq!(params, want_params, "{id}: SD params");
                }
            }
            other => panic!("{id}: unknown expectation key {other}"),
        }
    }
}

fn run_header_cases(file: &str) -> Vec<HeaderCase> {
    let cases: Vec<HeaderCase> = load(file);
    for case in &cases {
        check(case, &case.input, true);
        if let Some(also) = &case.also_input {
            check(case, also, false);
        }
        if let Some(same) = &case.same_as {
            let received = Timestamp::from_unix_nanos(rfc3339_nanos(&case.received_at));
            let opts = ParseOptions::default();
            let (a, a_body) = parse_header(&case.input, received, &opts);
            let (b, b_body) = parse_header(same, received, &opts);
            assert_eq!(
                format!("{a:?}{a_body}"),
                format!("{b:?}{b_body}"),
                "{}",
                case.id
            );
            assert_eq!(a.format, SyslogFormat::Rfc5424, "{}", case.id);
        }
    }
    cases
}

#[derive(Deserialize)]
struct SourceCase {
    id: String,
}

#[test]
fn public_header_cases_all_asserted() {
    let cases = run_header_cases("syslog_header_expected.json");
    let covered: BTreeSet<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    let loose: Vec<SourceCase> = load("syslog_loose_cases.json");
    let vrl: Vec<SourceCase> = load("vector_vrl_syslog_cases.json");
    assert_eq!((loose.len(), vrl.len()), (32, 18));
    for source in loose.iter().chain(&vrl) {
        assert!(
            covered.contains(source.id.as_str()),
            "no expectation for {}",
            source.id
        );
    }
    for case in &cases {
        assert!(
            !case.expect.is_empty() || case.same_as.is_some(),
            "{}: nothing asserted",
            case.id
        );
    }
    // Every deliberate difference is documented.
    let doc_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/syslog.md");
    let doc = std::fs::read_to_string(&doc_path).expect("docs/syslog.md");
    for case in cases.iter().filter(|c| c.differs.is_some()) {
        assert!(
            doc.contains(&case.id),
            "{} differs but is not in docs/syslog.md",
            case.id
        );
    }
}

#[test]
fn own_real_world_header_cases() {
    let cases = run_header_cases("syslog_header_own_cases.json");
    assert!(cases.len() >= 30);
}

#[test]
fn header_fields_borrow_the_input() {
    let text = "<165>1 2022-02-12T19:10:23+00:00 host darktrace 12 ID [a b=\"c\"] {\"x\":1}";
    let (h, body) = parse_header(
        text,
        Timestamp::from_unix_nanos(0),
        &ParseOptions::default(),
    );
    let range = text.as_bytes().as_ptr_range();
    for field in [
        h.hostname,
        h.app_name,
        h.proc_id,
        h.msg_id,
        h.structured_data,
        Some(body),
    ] {
        let field = field.unwrap();
        assert!(
            range.contains(&field.as_ptr()),
            "{field} is not a view into the input"
        );
    }
}

/// The Darktrace JSON body must reach the body parser untouched, through the full parser.
#[test]
fn full_parser_sees_darktrace_json_body() {
    use sluice::event::{Body, Received};
    let raw =
        b"<165>Aug  5 03:34:46 example.cloud.darktrace.com darktrace {\"model\":{\"name\":\"x\"}}";
    let mut parser = sluice::parse::Parser::new(ParseOptions::default());
    let received = Received {
        source: "t",
        peer: None,
        received_at: Timestamp::from_unix_nanos(1_659_670_000_000_000_000),
    };
    let event = parser.parse(received, raw);
    assert_eq!(event.syslog.app_name, Some("darktrace"));
    assert!(
        !matches!(event.body, Body::Text(_)),
        "JSON body was not recognised: {:?}",
        event.body
    );
}

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Frame(Vec<u8>, bool),
    Rejected(usize),
    Desync(usize),
}

fn own(e: FrameEvent<'_>) -> Ev {
    match e {
        FrameEvent::Frame { bytes, truncated } => Ev::Frame(bytes.to_vec(), truncated),
        FrameEvent::Rejected { len } => Ev::Rejected(len),
        FrameEvent::Desync { skipped } => Ev::Desync(skipped),
    }
}

fn frame(s: &str) -> Ev {
    Ev::Frame(s.as_bytes().to_vec(), false)
}

fn cut(s: &str) -> Ev {
    Ev::Frame(s.as_bytes().to_vec(), true)
}

fn framer(framing: Framing, max: usize, oversize: OversizePolicy) -> StreamFramer {
    StreamFramer::new(
        framing,
        FrameLimits {
            max_frame_bytes: max,
            oversize,
        },
    )
}

/// Events after each chunk, then after `finish`.
fn per_chunk(f: &mut StreamFramer, chunks: &[Vec<u8>]) -> Vec<Vec<Ev>> {
    let mut out = Vec::new();
    for chunk in chunks {
        let mut evs = Vec::new();
        f.feed(chunk, &mut |e| evs.push(own(e)));
        assert!(f.buffered_bytes() <= f.limits.max_frame_bytes);
        out.push(evs);
    }
    let mut evs = Vec::new();
    f.finish(&mut |e| evs.push(own(e)));
    out.push(evs);
    out
}

fn all_events(f: &mut StreamFramer, chunks: &[&[u8]]) -> Vec<Ev> {
    let mut evs = Vec::new();
    for chunk in chunks {
        f.feed(chunk, &mut |e| evs.push(own(e)));
        assert!(
            f.buffered_bytes() <= f.limits.max_frame_bytes,
            "buffer over the limit"
        );
    }
    f.finish(&mut |e| evs.push(own(e)));
    evs
}

#[derive(Deserialize)]
struct FramingCase {
    id: String,
    max_length: usize,
    chunks: Option<Vec<String>>,
    chunks_hex: Option<Vec<String>>,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn vector_octet_counting_cases() {
    use OversizePolicy::{Reject, Truncate};
    let cases: Vec<FramingCase> = load("vector_octet_counting_framing_cases.json");
    assert_eq!(cases.len(), 9);
    let long =
        "32thisshouldbelongerthanthmaxframeasizewhichmeansthesyslogparserwillnotbeabletodecodeit";
    let mut asserted = BTreeSet::new();
    for case in &cases {
        let chunks: Vec<Vec<u8>> = match (&case.chunks, &case.chunks_hex) {
            (Some(c), _) => c.iter().map(|s| s.as_bytes().to_vec()).collect(),
            (None, Some(h)) => h.iter().map(|s| hex(s)).collect(),
            _ => panic!("{}: no chunks", case.id),
        };
        let run = |policy| per_chunk(&mut framer(Framing::Auto, case.max_length, policy), &chunks);
        let name = case.id.rsplit('/').next().unwrap();
        // Per case: events after each chunk, and after finish().
        let (truncate, reject): (Vec<Vec<Ev>>, Vec<Vec<Ev>>) = match name {
            "non_octet_decode_works_with_multiple_frames" => {
                let f = vec![
                    vec![],
                    vec![frame(
                        "<57>Mar 25 21:47:46 gleichner6005 quaerat[2444]: There were 8 penguins in the shop.",
                    )],
                    vec![],
                ];
                (f.clone(), f)
            }
            "octet_decode_works_with_multiple_frames" => {
                let f = vec![vec![], vec![frame("abcdefghijklm3 nopqrstuvwxyz")], vec![]];
                (f.clone(), f)
            }
            // `232>`: not a count; skipped up to the next LF (here: the end of the stream).
            "octet_decode_moves_past_invalid_length" => {
                let f = vec![vec![], vec![Ev::Desync(10)]];
                (f.clone(), f)
            }
            // Framing is byte-level: invalid UTF-8 is the parser's business (decoded lossily).
            "octet_decode_moves_past_invalid_utf8" => {
                let f = vec![vec![Ev::Frame(vec![0xf0, 0x28, 0x8c, 0xbc], false)], vec![]];
                (f.clone(), f)
            }
            "octet_decode_moves_past_exceeded_frame_length" => {
                let f = vec![vec![Ev::Desync(long.len() + 1)], vec![]];
                (f.clone(), f)
            }
            "octet_decode_rejects_exceeded_frame_length" => (
                vec![
                    vec![cut("abcdefghijklmnop")],
                    vec![Ev::Desync("and here we are".len())],
                ],
                vec![
                    vec![Ev::Rejected(26)],
                    vec![Ev::Desync("and here we are".len())],
                ],
            ),
            "octet_decode_rejects_exceeded_frame_length_multiple_frames" => (
                vec![vec![], vec![cut("abcdefghijklmnop")], vec![Ev::Desync(15)]],
                vec![vec![Ev::Rejected(26)], vec![], vec![Ev::Desync(15)]],
            ),
            // After resync, `32 something valid` is an oversize frame of which 15 bytes arrive.
            "octet_decode_moves_past_exceeded_frame_length_multiple_frames" => (
                vec![
                    vec![],
                    vec![Ev::Desync(long.len() + "wemustcontinuetodiscard\n".len())],
                    vec![cut("something valid")],
                ],
                vec![
                    vec![],
                    vec![
                        Ev::Desync(long.len() + "wemustcontinuetodiscard\n".len()),
                        Ev::Rejected(32),
                    ],
                    vec![],
                ],
            ),
            // 26 announced, 6 arrive: kept (marked truncated) when the stream ends.
            "octet_decode_discard_partial_frame_underflow" => (
                vec![vec![], vec![], vec![cut("abcdef")]],
                vec![vec![Ev::Rejected(26)], vec![], vec![]],
            ),
            other => panic!("unasserted framing case {other}"),
        };
        assert_eq!(run(Truncate), truncate, "{} (truncate)", case.id);
        assert_eq!(run(Reject), reject, "{} (reject)", case.id);
        asserted.insert(name);
    }
    assert_eq!(asserted.len(), 9);
}

#[test]
fn datagram_strips_trailing_line_ends_and_nuls() {
    assert_eq!(datagram(b"<13>hi\n\0\0"), b"<13>hi");
    assert_eq!(datagram(b"<13>hi\r\n"), b"<13>hi");
    assert_eq!(datagram(b"\n\0"), b"");
    assert_eq!(datagram(b"a\nb"), b"a\nb");
}

#[test]
fn lf_mode_strips_cr_and_skips_blank_lines() {
    let mut f = framer(Framing::Auto, 1024, OversizePolicy::Truncate);
    assert_eq!(
        all_events(&mut f, &[b"\r\n<13>a\r\n\n<13>b\n<13>c"]),
        vec![frame("<13>a"), frame("<13>b"), frame("<13>c")]
    );
    assert_eq!(
        f.detected_framing(),
        Framing::Auto,
        "finish resets the framer"
    );
}

#[test]
fn lf_oversize_truncates_or_rejects_and_stays_in_sync() {
    let input: &[&[u8]] = &[b"abcdefgh\nok\nxyzxyzxyz", b"xyz\nend\n"];
    let mut f = framer(Framing::Lf, 4, OversizePolicy::Truncate);
    assert_eq!(
        all_events(&mut f, input),
        vec![cut("abcd"), frame("ok"), cut("xyzx"), frame("end")]
    );
    let mut f = framer(Framing::Lf, 4, OversizePolicy::Reject);
    assert_eq!(
        all_events(&mut f, input),
        vec![Ev::Rejected(8), frame("ok"), Ev::Rejected(12), frame("end")]
    );
    // An oversize line cut off by the end of the stream.
    let mut f = framer(Framing::Lf, 4, OversizePolicy::Reject);
    assert_eq!(all_events(&mut f, &[b"abcdefgh"]), vec![Ev::Rejected(8)]);
}

#[test]
fn octet_oversize_skips_exactly_len_without_buffering() {
    let mut f = framer(Framing::Octet, 8, OversizePolicy::Truncate);
    let mut evs = Vec::new();
    f.feed(b"3000000 ", &mut |e| evs.push(own(e)));
    let block = vec![b'x'; 1 << 20];
    for _ in 0..2 {
        f.feed(&block, &mut |e| evs.push(own(e)));
        assert!(f.buffered_bytes() <= 8);
    }
    f.feed(&block[..3_000_000 - 2 * (1 << 20)], &mut |e| {
        evs.push(own(e))
    });
    f.feed(b"5 after", &mut |e| evs.push(own(e)));
    assert_eq!(evs, vec![cut("xxxxxxxx"), frame("after")]);

    let mut f = framer(Framing::Octet, 8, OversizePolicy::Reject);
    assert_eq!(
        all_events(&mut f, &[b"12 abcdefghijkl3 abc"]),
        vec![Ev::Rejected(12), frame("abc")]
    );
}

#[test]
fn octet_malformed_counts_desync_and_resync_at_lf() {
    let mut f = framer(Framing::Auto, 64, OversizePolicy::Truncate);
    // A frame, garbage instead of a count, an overlong count, a leading zero, then good frames.
    let evs = all_events(
        &mut f,
        &[b"5 hello<13>garbage\n12345678901 x\n05 zero\n5 world\n3 end"],
    );
    assert_eq!(
        evs,
        vec![
            frame("hello"),
            Ev::Desync(12),
            Ev::Desync(14),
            Ev::Desync(8),
            frame("world"),
            frame("end")
        ]
    );
    // Stray line ends between octet frames carry nothing and are not errors.
    let mut f = framer(Framing::Octet, 64, OversizePolicy::Truncate);
    assert_eq!(
        all_events(&mut f, &[b"2 ab\n\r\n2 cd"]),
        vec![frame("ab"), frame("cd")]
    );
    // A count cut off by the end of the stream.
    let mut f = framer(Framing::Octet, 64, OversizePolicy::Truncate);
    assert_eq!(
        all_events(&mut f, &[b"2 ab12"]),
        vec![frame("ab"), Ev::Desync(2)]
    );
}

#[test]
fn whole_frames_are_not_copied() {
    let input = b"5 hello6 world!";
    let mut f = framer(Framing::Auto, 64, OversizePolicy::Truncate);
    let range = input.as_ptr_range();
    let mut n = 0;
    f.feed(input, &mut |e| {
        if let FrameEvent::Frame { bytes, .. } = e {
            assert!(range.contains(&bytes.as_ptr()));
            n += 1;
        }
    });
    assert_eq!(n, 2);
}

fn split_at_points(data: &[u8], points: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = points.iter().map(|p| p % (data.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut last = 0;
    for c in cuts.into_iter().chain([data.len()]) {
        chunks.push(data[last..c].to_vec());
        last = c;
    }
    chunks
}

fn events_for(framing: Framing, max: usize, policy: OversizePolicy, chunks: &[Vec<u8>]) -> Vec<Ev> {
    let mut f = framer(framing, max, policy);
    let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    all_events(&mut f, &refs)
}

fn framing_strategy() -> impl Strategy<Value = Framing> {
    prop_oneof![Just(Framing::Auto), Just(Framing::Lf), Just(Framing::Octet)]
}

fn policy_strategy() -> impl Strategy<Value = OversizePolicy> {
    prop_oneof![Just(OversizePolicy::Truncate), Just(OversizePolicy::Reject)]
}

proptest! {
    #[test]
    fn lf_frames_survive_any_chunking(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>().prop_filter("no LF", |b| *b != b'\n'), 1..60), 0..12),
        crlf in any::<bool>(),
        points in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        // A trailing CR belongs to the line ending, so frames may not end with one.
        let frames: Vec<Vec<u8>> = frames.into_iter().filter(|f| f.last() != Some(&b'\r')).collect();
        let mut stream = Vec::new();
        for f in &frames {
            stream.extend_from_slice(f);
            stream.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        }
        let want: Vec<Ev> = frames.iter().map(|f| Ev::Frame(f.clone(), false)).collect();
        let got = events_for(Framing::Lf, 64, OversizePolicy::Truncate, &split_at_points(&stream, &points));
        prop_assert_eq!(got, want);
    }

    #[test]
    fn octet_frames_survive_any_chunking(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..80), 0..12),
        points in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut stream = Vec::new();
        for f in &frames {
            stream.extend_from_slice(format!("{} ", f.len()).as_bytes());
            stream.extend_from_slice(f);
        }
        let want: Vec<Ev> = frames.iter().map(|f| Ev::Frame(f.clone(), false)).collect();
        // Auto-detected from the leading digit.
        let got = events_for(Framing::Auto, 80, OversizePolicy::Reject, &split_at_points(&stream, &points));
        prop_assert_eq!(got, want);
    }

    /// Garbage, oversize frames and resyncs included: the events never depend on how the
    /// stream was cut into reads, and the buffer never exceeds the limit.
    #[test]
    fn any_stream_any_chunking_same_events(
        stream in prop::collection::vec(prop_oneof![
            4 => prop::sample::select(b"0123456789 \n\r<>ab".to_vec()),
            1 => any::<u8>(),
        ], 0..300),
        points in prop::collection::vec(any::<usize>(), 0..12),
        framing in framing_strategy(),
        policy in policy_strategy(),
        max in 1usize..40,
    ) {
        let whole = events_for(framing, max, policy, std::slice::from_ref(&stream));
        let chunked = events_for(framing, max, policy, &split_at_points(&stream, &points));
        prop_assert_eq!(&whole, &chunked);
        for ev in &whole {
            if let Ev::Frame(bytes, _) = ev {
                prop_assert!(!bytes.is_empty() && bytes.len() <= max);
            }
        }
    }

    /// Mixed: good octet frames around garbage lines; every good frame after a resync is found.
    #[test]
    fn octet_resyncs_after_garbage(
        before in prop::collection::vec("[a-z]{1,20}", 1..4),
        garbage in "[<a-z][ -~]{0,30}",
        after in prop::collection::vec("[a-z]{1,20}", 1..4),
        points in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut stream = Vec::new();
        for f in &before { stream.extend_from_slice(format!("{} {f}", f.len()).as_bytes()); }
        stream.extend_from_slice(garbage.as_bytes());
        stream.push(b'\n');
        for f in &after { stream.extend_from_slice(format!("{} {f}", f.len()).as_bytes()); }
        let mut want: Vec<Ev> = before.iter().map(|f| frame(f)).collect();
        want.push(Ev::Desync(garbage.len() + 1));
        want.extend(after.iter().map(|f| frame(f)));
        let got = events_for(Framing::Octet, 64, OversizePolicy::Truncate, &split_at_points(&stream, &points));
        prop_assert_eq!(got, want);
    }

    #[test]
    fn header_parser_never_panics(text in "\\PC{0,80}", pri in 0u8..200, prefix in prop_oneof![
        Just(""), Just("1 "), Just("1 2024-02-05T10:00:00Z "), Just("Feb  5 10:00:00 "), Just("Feb  5 10:00:00 h t[")
    ]) {
        let input = format!("<{pri}>{prefix}{text}");
        let (h, body) = parse_header(&input, Timestamp::from_unix_nanos(1_700_000_000_000_000_000), &ParseOptions::default());
        if let Some(sd) = h.structured_data { for _ in structured_data(sd) {} }
        prop_assert!(input.contains(body));
    }
}
