//! Table-driven CEF parser tests against other parsers' test vectors, plus property tests.
//!
//! `tests/data/cef/cases.json` holds the VRL (MPL-2.0) and Logstash (Apache-2.0) vectors copied
//! with their source, and our own cases mirroring the Beats (Elastic-2.0) and Sekoia (no
//! license) vectors, which may not be copied. Each case's expectation is written in its source
//! project's vocabulary; `observed` converts our parse into that vocabulary. A case whose
//! expectation we deliberately do not meet is listed in [`DELIBERATE`] (and in `docs/cef.md`);
//! such a case must really differ, so the list cannot go stale.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::Value;
use sluice::event::Cef;
use sluice::parse::LocalZone;
use sluice::parse::cef::{
    custom_fields, custom_key, escape_extension_value, escape_header_field, find_cef_start,
    full_custom_name, full_name, parse, parse_timestamp,
};

/// Cases where Sluice deliberately behaves differently from the source project's expectation.
/// Keep in sync with the table in `docs/cef.md`.
const DELIBERATE: &[(&str, &str)] = &[
    (
        "vrl/test_strip_quotes",
        "quotes are kept verbatim (as Logstash and Beats)",
    ),
    (
        "vrl/test_extension_newline",
        "`\\r` decodes to CR, not LF (as Logstash and Beats)",
    ),
    (
        "vrl/test_unescaped_equals_in_value",
        "forged-field rule: value with a stray `=` runs to the end",
    ),
    (
        "vrl/test_unescaped_equals_in_url_value",
        "forged-field rule: value with a stray `=` runs to the end",
    ),
    (
        "vrl/test_function/non_strict_unescaped_equals",
        "forged-field rule: stray `=`",
    ),
    (
        "vrl/test_function/missing_key",
        "` =0.0.0.0` is a stray `=` kept in the value, not an error",
    ),
    (
        "vrl/test_function/missing_custom_label",
        "an unlabeled custom field is kept, not an error",
    ),
    (
        "vrl/test_function/duplicate_value",
        "a repeated key is not a boundary; no error",
    ),
    (
        "beats/emptyExtensionValue",
        "empty values are kept as empty strings (typing is the mapper's job)",
    ),
    (
        "beats/equalsSignWithNoValueInHeader",
        "no remove_empty_values option; empty values are kept",
    ),
    (
        "beats/errorEscapedPipeInExtension",
        "`\\|` in an extension value is kept verbatim (as Logstash, VRL)",
    ),
    (
        "beats/errorEqualsInMessage",
        "stray `=` kept inside the value (as Logstash)",
    ),
    (
        "beats/errorMalformedExtensionEscape",
        "forged-field rule: stray `=` swallows the rest",
    ),
    (
        "beats/errorMultipleMalformedExtensionValues",
        "forged-field rule: stray `=` swallows the rest",
    ),
    (
        "beats/padded",
        "trailing spaces of a value are trimmed (as VRL, Logstash)",
    ),
    (
        "beats/no_tab_as_separator",
        "tab is not a separator; the stray `=` keeps `\\tsrc=…` inside msg",
    ),
    (
        "beats/error_recovery_with_escape",
        "forged-field rule: stray `=` swallows the rest",
    ),
    (
        "beats/truncatedHeader",
        "fewer than 7 header fields is an error; the raw text is kept",
    ),
    (
        "logstash/unescaped_newlines",
        "raw newlines are kept inside a value (as Beats), not an error",
    ),
    (
        "logstash/malformed_unescaped_equals",
        "forged-field rule: stray `=` swallows the rest",
    ),
    (
        "sekoia-cef/cisco_esa_cef.json",
        "quotes are kept verbatim (Sekoia strips them from cs4)",
    ),
    (
        "sekoia-cef/fortigate_antivirus.CEF.json",
        "`\\=` is unescaped to `=` (Sekoia keeps the backslash)",
    ),
    (
        "sekoia-cef/pan_ngfw_auth_cef.json",
        "`\\\\` is unescaped to `\\` (Sekoia keeps both)",
    ),
];

fn deliberate(id: &str) -> bool {
    DELIBERATE.iter().any(|(d, _)| *d == id)
}

/// Field name → observed value, in the case's vocabulary.
type Fields = BTreeMap<String, Value>;

fn header(cef: &Cef<'_>, version_as_number: bool) -> Fields {
    let mut f = Fields::new();
    let version = if version_as_number {
        Value::from(cef.version.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        Value::from(cef.version)
    };
    f.insert(
        if version_as_number {
            "version"
        } else {
            "cefVersion"
        }
        .into(),
        version,
    );
    f.insert("deviceVendor".into(), cef.device_vendor.into());
    f.insert("deviceProduct".into(), cef.device_product.into());
    f.insert("deviceVersion".into(), cef.device_version.into());
    f.insert("deviceEventClassId".into(), cef.signature_id.into());
    f.insert("name".into(), cef.name.into());
    f.insert("severity".into(), cef.severity.into());
    f
}

fn logstash_name(key: &str) -> String {
    if let Some(ck) = custom_key(key)
        && let Some(name) = full_custom_name(ck)
    {
        return name;
    }
    full_name(key).unwrap_or(key).to_string()
}

fn rfc3339_millis(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

enum Check {
    /// Every expected field must match and no other field may be observed.
    Exact,
    /// Every expected field must match; others are not asserted.
    Subset,
}

/// Converts the parse into the case source's vocabulary.
fn observed(id: &str, options: &Value, cef: &Cef<'_>) -> (Fields, Check) {
    let family = id.split('/').next().unwrap_or("");
    let family = family.strip_prefix("own-").unwrap_or(family);
    match family {
        "vrl" => {
            let mut f = header(cef, false);
            if options["translate_custom_fields"] == true {
                for e in &cef.extensions {
                    if custom_key(e.key).is_none() {
                        f.insert(e.key.into(), e.value.into());
                    }
                }
                for (ck, label, value) in custom_fields(cef) {
                    let name = label.map(str::to_string).unwrap_or_else(|| {
                        if ck.label {
                            String::new()
                        } else {
                            format!("{:?}{}", ck.kind, ck.index)
                        }
                    });
                    f.insert(name, value.into());
                }
            } else {
                for e in &cef.extensions {
                    f.insert(e.key.into(), e.value.into());
                }
            }
            (f, Check::Exact)
        }
        "logstash" => {
            let mut f = header(cef, false);
            f.insert("syslog".into(), cef.prefix.into());
            for e in &cef.extensions {
                f.insert(logstash_name(e.key), e.value.into());
            }
            if let Some(rt) = cef.get("rt")
                && let Some(ms) = parse_timestamp(rt, cef.get("dtz"), &LocalZone::Fixed(0))
            {
                f.insert("@timestamp(ecs mode)".into(), rfc3339_millis(ms).into());
            }
            (f, Check::Subset)
        }
        "beats" => {
            let mut f = header(cef, true);
            let mut ext = serde_json::Map::new();
            let full = options["full_extension_names"] == true;
            for e in &cef.extensions {
                let key = if full {
                    full_name(e.key).unwrap_or(e.key)
                } else {
                    e.key
                };
                ext.insert(key.into(), e.value.into());
            }
            f.insert("extensions".into(), Value::Object(ext));
            (f, Check::Subset)
        }
        "sekoia-cef" => {
            let mut f = Fields::new();
            f.insert("observer.vendor".into(), cef.device_vendor.into());
            f.insert("observer.type".into(), cef.device_product.into());
            f.insert("observer.version".into(), cef.device_version.into());
            f.insert("rule.id".into(), cef.signature_id.into());
            f.insert("cef.Name".into(), cef.name.into());
            f.insert("event.severity".into(), cef.severity.into());
            for e in &cef.extensions {
                f.insert(format!("cef.{}", e.key), e.value.into());
            }
            (f, Check::Subset)
        }
        other => panic!("case {id}: unknown case family {other:?}"),
    }
}

/// The expectation in flat form: Sekoia's nested document is reduced to the CEF-level facts
/// (header, `cef.*`), the rest of it being Sekoia's own ECS enrichment.
fn expected(id: &str, fields: &Value) -> Fields {
    let mut f = Fields::new();
    let Some(obj) = fields.as_object() else {
        return f;
    };
    if id.contains("sekoia-cef/") {
        for (path, key) in [
            (&["observer", "vendor"][..], "observer.vendor"),
            (&["observer", "type"], "observer.type"),
            (&["observer", "version"], "observer.version"),
            (&["rule", "id"], "rule.id"),
            (&["event", "severity"], "event.severity"),
        ] {
            let mut v = fields;
            for p in path {
                v = &v[*p];
            }
            if !v.is_null() {
                f.insert(key.into(), v.clone());
            }
        }
        if let Some(cef) = obj.get("cef").and_then(Value::as_object) {
            for (k, v) in cef {
                f.insert(format!("cef.{k}"), v.clone());
            }
        }
        return f;
    }
    for (k, v) in obj {
        f.insert(k.clone(), v.clone());
    }
    f
}

/// Equal as the source means it: a JSON number matches the same number written as text.
fn same(expected: &Value, observed: &Value) -> bool {
    match (expected, observed) {
        (Value::Number(n), Value::String(s)) => s.parse::<f64>().ok() == n.as_f64(),
        (Value::Object(e), Value::Object(o)) => {
            e.len() == o.len()
                && e.iter()
                    .all(|(k, v)| o.get(k).is_some_and(|ov| same(v, ov)))
        }
        (e, o) => e == o,
    }
}

/// Returns the mismatches of one case (empty when it passes).
fn check_case(case: &Value) -> Vec<String> {
    let id = case["id"].as_str().expect("case id");
    let input = case["input"].as_str().expect("case input");
    let mut scratch = String::new();
    let parsed =
        find_cef_start(input).map(|start| parse(&input[start..], &input[..start], &mut scratch));
    if case.get("expected_fields").is_none() {
        let must_parse = case["note"]
            .as_str()
            .is_some_and(|n| n.contains("without error"));
        return match (&parsed, case.get("expected_error")) {
            (Some(Err(e)), _) if must_parse => vec![format!("expected a parse, got error {e}")],
            (None, _) if must_parse => vec!["expected a parse, found no CEF".into()],
            // No expectation, or `null`: only "must not panic or hang" is asserted.
            (_, None | Some(Value::Null)) => vec![],
            (Some(Ok(cef)), Some(err)) => {
                vec![format!("expected error {err}, parsed {:?}", cef.extensions)]
            }
            (_, Some(_)) => vec![],
        };
    }
    let cef = match parsed {
        None => return vec!["no `CEF:<version>|` found".into()],
        Some(Err(e)) => return vec![format!("parse error: {e}")],
        Some(Ok(cef)) => cef,
    };
    let (obs, check) = observed(id, &case["options"], &cef);
    let exp = expected(id, &case["expected_fields"]);
    let mut problems = vec![];
    for (k, v) in &exp {
        match obs.get(k) {
            Some(o) if same(v, o) => {}
            o => problems.push(format!(
                "{k}: expected {v}, observed {}",
                o.map_or("nothing".into(), |o| o.to_string())
            )),
        }
    }
    if matches!(check, Check::Exact) {
        for k in obs.keys().filter(|k| !exp.contains_key(*k)) {
            problems.push(format!("{k}: observed {} but not expected", obs[k]));
        }
    }
    problems
}

fn run_cases(cases: &[Value]) {
    let mut failures = vec![];
    for case in cases {
        let id = case["id"].as_str().unwrap_or("?");
        let problems = check_case(case);
        match (problems.is_empty(), deliberate(id)) {
            (true, false) | (false, true) => {}
            (false, false) => failures.push(format!("{id}:\n    {}", problems.join("\n    "))),
            (true, true) => failures.push(format!(
                "{id}: listed as deliberate difference but matches; unlist it"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn load(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn in_repo_cases() {
    let cases =
        load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cef/cases.json"));
    assert!(cases.len() >= 80, "case file truncated: {}", cases.len());
    run_cases(&cases);
}

#[test]
fn shared_cases_when_present() {
    // The shared folder sits beside the repository (CI) or beside the worktrees (development).
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        manifest.join("../../shared/samples/cef/all_cef_cases.json"),
        manifest.join("../../../shared/samples/cef/all_cef_cases.json"),
        std::path::PathBuf::from("/work/shared/samples/cef/all_cef_cases.json"),
    ];
    let Some(path) = candidates.iter().find(|p| p.exists()) else {
        eprintln!("skipping: all_cef_cases.json not found beside the repository");
        return;
    };
    let cases = load(path);
    assert_eq!(cases.len(), 115);
    run_cases(&cases);
}

/// Our own behaviour on each deliberate difference, asserted exactly.
#[test]
fn deliberate_differences_behave_as_documented() {
    let ext = |rec: &str| -> Vec<(String, String)> {
        let start = find_cef_start(rec).unwrap();
        let mut scratch = String::new();
        let c = parse(&rec[start..], &rec[..start], &mut scratch).unwrap();
        c.extensions
            .iter()
            .map(|e| (e.key.to_string(), e.value.to_string()))
            .collect()
    };
    let kv = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let h = "CEF:0|v|p|1|id|n|5|";
    assert_eq!(
        ext(&format!("{h}src=\"10.0.0.1\"")),
        kv(&[("src", "\"10.0.0.1\"")])
    );
    assert_eq!(ext(&format!("{h}msg=a\\rb")), kv(&[("msg", "a\rb")]));
    assert_eq!(
        ext(&format!(
            "{h}src=1.1.1.1 msg=status=ok reason=none dst=2.2.2.2"
        )),
        kv(&[
            ("src", "1.1.1.1"),
            ("msg", "status=ok reason=none dst=2.2.2.2")
        ])
    );
    assert_eq!(
        ext(&format!("{h}act=Accept =0.0.0.0")),
        kv(&[("act", "Accept =0.0.0.0")])
    );
    assert_eq!(
        ext(&format!("{h}moo=this\\|has")),
        kv(&[("moo", "this\\|has")])
    );
    assert_eq!(
        ext(&format!("{h}a=x   b=y ")),
        kv(&[("a", "x"), ("b", "y")])
    );
    assert_eq!(
        ext(&format!("{h}spt=1 msg=x\tsrc=1.2.3.4")),
        kv(&[("spt", "1"), ("msg", "x\tsrc=1.2.3.4")])
    );
    assert_eq!(
        ext(&format!("{h}dst= spt=1")),
        kv(&[("dst", ""), ("spt", "1")])
    );
    assert_eq!(
        ext(&format!("{h}msg=line1\nline2 src=1.1.1.1")),
        kv(&[("msg", "line1\nline2"), ("src", "1.1.1.1")])
    );
    assert_eq!(ext(&format!("{h}a=\\h \\xc3")), kv(&[("a", "\\h \\xc3")]));
    assert!(
        parse(
            "CEF:0|SentinelOne|Mgmt|activityID=1",
            "",
            &mut String::new()
        )
        .is_err()
    );
}

/// Free-text keys an attacker can fill through the sender.
const FREE_TEXT_KEYS: &[&str] = &[
    "msg",
    "request",
    "requestContext",
    "cs1",
    "reason",
    "suser",
    "fname",
];

fn key_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("src".to_string()),
        Just("dst".to_string()),
        Just("act".to_string()),
        Just("msg".to_string()),
        "[a-zA-Z][a-zA-Z0-9_.]{0,8}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn header_field_round_trips(text in "[^\r\n]{0,40}") {
        let rec = format!("CEF:0|{}|p|1|id|n|5|", escape_header_field(&text));
        let mut scratch = String::new();
        let c = parse(&rec, "", &mut scratch).unwrap();
        prop_assert_eq!(c.device_vendor, text.as_str());
    }

    /// Any value survives escaping and parsing, unless it ends with a space (CEF has no escape
    /// for a space and trailing spaces of a value are separator padding).
    #[test]
    fn extension_value_round_trips(text in "\\PC{0,60}", key in "[a-y]{1,6}") {
        prop_assume!(!text.ends_with(' '));
        let rec = format!("CEF:0|v|p|1|id|n|5|{key}={} zz=end", escape_extension_value(&text));
        let mut scratch = String::new();
        let c = parse(&rec, "", &mut scratch).unwrap();
        prop_assert_eq!(c.extensions.len(), 2);
        prop_assert_eq!(c.get(&key), Some(text.as_str()));
        prop_assert_eq!(c.get("zz"), Some("end"));
    }

    /// Text that an attacker places in a free-text value never adds or replaces a field:
    /// escaped correctly, or unescaped but carrying a stray `=` before the forged `key=`
    /// (a URL query, base64 padding, `a==b`), or repeating a key already in the record.
    #[test]
    fn embedded_key_value_never_forges_a_field(
        victim in prop::sample::select(FREE_TEXT_KEYS),
        head in "[a-zA-Z0-9/:.?& ]{0,20}",
        stray in prop::sample::select(&["?a=1", "abc==", "x<=5", "&=", "id==old", "\\\\="][..]),
        forged_key in key_strategy(),
        forged_value in "[a-zA-Z0-9.]{0,12}",
        tail in "[a-zA-Z0-9 =]{0,20}",
        escaped in any::<bool>(),
    ) {
        let before = "src=1.1.1.1 dst=2.2.2.2";
        let payload = format!("{head}{stray} {forged_key}={forged_value} {tail}");
        let value = if escaped { escape_extension_value(&payload).into_owned() } else { payload.trim_end().to_string() };
        let rec = format!("CEF:0|v|p|1|id|n|5|{before} {victim}={value}");
        let mut scratch = String::new();
        let c = parse(&rec, "", &mut scratch).unwrap();
        let keys: Vec<&str> = c.extensions.iter().map(|e| e.key).collect();
        let mut want = vec!["src", "dst"];
        if !want.contains(&victim) { want.push(victim); }
        prop_assert_eq!(&keys, &want, "record {}", rec);
        prop_assert_eq!(c.get("src"), Some("1.1.1.1"));
        prop_assert_eq!(c.get("dst"), Some("2.2.2.2"));
    }

    /// A repeated key inside an unescaped value is never a field boundary.
    #[test]
    fn repeated_key_never_overrides(victim in prop::sample::select(FREE_TEXT_KEYS), text in "[a-zA-Z0-9 .]{0,20}") {
        let rec = format!("CEF:0|v|p|1|id|n|5|src=1.1.1.1 {victim}=x{text} src=6.6.6.6");
        let mut scratch = String::new();
        let c = parse(&rec, "", &mut scratch).unwrap();
        prop_assert_eq!(c.get("src"), Some("1.1.1.1"));
        prop_assert_eq!(c.extensions.len(), 2);
    }

    /// Arbitrary input never panics.
    #[test]
    fn arbitrary_input_never_panics(text in "\\PC{0,120}") {
        let rec = format!("CEF:0|{text}");
        let _ = parse(&rec, "", &mut String::new());
        let _ = find_cef_start(&text);
    }
}
