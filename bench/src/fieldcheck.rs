//! Checks a receiver's parsed CEF output against the fields the corpus generated.
//!
//! Output rows are matched back to their corpus message by the breach id inside the
//! `#modelbreach/<id>` URL, which survives even when a parser mangles key names.

use std::collections::HashMap;

use serde_json::Value;

use crate::corpus::Message;

/// How the receiver names the parsed fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStyle {
    /// Extension keys kept as-is somewhere in the JSON (rsyslog mmnormalize, syslog-ng kv-parser).
    CefKeys,
    /// Microsoft Sentinel CommonSecurityLog columns (Sluice `commonsecuritylog` schema).
    CommonSecurityLog,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FieldCheck {
    /// Output rows matched to a corpus CEF message.
    pub rows: u64,
    /// Rows with at least one wrong or missing field.
    pub rows_with_errors: u64,
    pub field_errors: u64,
    /// A few distinct kinds of error, for the report.
    pub examples: Vec<String>,
}

impl FieldCheck {
    fn note(&mut self, example: String) {
        if self.examples.len() < 4
            && !self
                .examples
                .iter()
                .any(|e| e.split(':').next() == example.split(':').next())
        {
            self.examples.push(example);
        }
    }
}

fn flatten(value: &Value, path: &mut String, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                flatten(child, path, out);
                path.truncate(len);
            }
        }
        Value::String(s) => out.push((path.clone(), s.clone())),
        Value::Null => out.push((path.clone(), String::new())),
        other => out.push((path.clone(), other.to_string())),
    }
}

fn breach_id(fields: &[(String, String)]) -> Option<String> {
    fields.iter().find_map(|(_, value)| {
        let at = value.find("#modelbreach/")?;
        let digits: String = value[at + 13..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        (!digits.is_empty()).then_some(digits)
    })
}

fn csl_column(key: &str) -> Option<String> {
    let fixed = match key {
        "externalId" => "ExternalID",
        "dvc" => "DeviceAddress",
        "dvchost" => "DeviceName",
        "dst" => "DestinationIP",
        "dhost" => "DestinationHostName",
        "src" => "SourceIP",
        "shost" => "SourceHostName",
        "spt" => "SourcePort",
        "dpt" => "DestinationPort",
        "proto" => "Protocol",
        "cat" => "DeviceEventCategory",
        "msg" => "Message",
        _ => "",
    };
    if !fixed.is_empty() {
        return Some(fixed.to_string());
    }
    for (prefix, column) in [("cs", "DeviceCustomString"), ("cn", "DeviceCustomNumber")] {
        if let Some(rest) = key.strip_prefix(prefix) {
            let (digit, label) = match rest.strip_suffix("Label") {
                Some(d) => (d, "Label"),
                None => (rest, ""),
            };
            if digit.len() == 1 && digit.as_bytes()[0].is_ascii_digit() {
                return Some(format!("{column}{digit}{label}"));
            }
        }
    }
    None
}

fn values_match(got: &str, want: &str) -> bool {
    got == want || matches!((got.parse::<f64>(), want.parse::<f64>()), (Ok(a), Ok(b)) if a == b)
}

fn shorten(text: &str) -> String {
    let mut s: String = text.chars().take(40).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

/// Checks up to `limit` rows of `lines` (one JSON object per line).
pub fn check<'a>(
    lines: impl Iterator<Item = &'a str>,
    expected: &HashMap<String, &Message>,
    style: OutputStyle,
    limit: usize,
) -> FieldCheck {
    let mut result = FieldCheck::default();
    let mut fields = Vec::new();
    for line in lines {
        if result.rows as usize >= limit {
            break;
        }
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        fields.clear();
        flatten(&value, &mut String::new(), &mut fields);
        let Some(id) = breach_id(&fields) else {
            continue;
        };
        let Some(message) = expected.get(&id) else {
            continue;
        };
        result.rows += 1;
        let mut row_errors = 0;
        for (key, want) in &message.cef_extensions {
            let outcome = match style {
                OutputStyle::CefKeys => {
                    let suffix = format!(".{key}");
                    fields
                        .iter()
                        .find(|(path, _)| path == key || path.ends_with(&suffix))
                        .map(|(_, v)| v.as_str())
                }
                OutputStyle::CommonSecurityLog => {
                    if key == "rt" {
                        continue; // converted to a timestamp column; not a string comparison
                    }
                    match csl_column(key) {
                        Some(column) => fields
                            .iter()
                            .find(|(path, _)| *path == column)
                            .map(|(_, v)| v.as_str()),
                        // Unmapped keys land in AdditionalExtensions: the value must appear there.
                        None => fields
                            .iter()
                            .find(|(path, _)| path == "AdditionalExtensions")
                            .and_then(|(_, v)| v.contains(want.as_str()).then_some(want.as_str())),
                    }
                }
            };
            match outcome {
                Some(got) if values_match(got, want) => {}
                None if want.is_empty() && style == OutputStyle::CommonSecurityLog => {}
                Some(got) => {
                    row_errors += 1;
                    result.note(format!(
                        "{key}: got {:?}, want {:?}",
                        shorten(got),
                        shorten(want)
                    ));
                }
                None => {
                    row_errors += 1;
                    result.note(format!("{key}: missing"));
                }
            }
        }
        if row_errors > 0 {
            result.rows_with_errors += 1;
            result.field_errors += row_errors;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::{Corpus, CorpusSpec, Kind};

    #[test]
    fn finds_wrong_and_missing_fields_and_accepts_correct_ones() {
        let corpus = Corpus::generate(&CorpusSpec {
            seed: 5,
            messages: 20,
            mix: "cef".parse().unwrap(),
            rfc5424_percent: 50,
        });
        let expected = corpus.cef_by_external_id();
        let message = corpus
            .messages
            .iter()
            .find(|m| m.kind == Kind::Cef)
            .unwrap();
        let mut ext = serde_json::Map::new();
        for (k, v) in &message.cef_extensions {
            ext.insert(k.clone(), Value::String(v.clone()));
        }
        let good = serde_json::json!({"cef": {"Extensions": ext.clone()}}).to_string();
        let mut bad_ext = ext.clone();
        bad_ext.remove("dvc");
        bad_ext.insert("dst".into(), Value::String("wrong".into()));
        let bad = serde_json::json!({"cef": {"Extensions": bad_ext}}).to_string();
        let check = super::check(
            [good.as_str(), bad.as_str(), "not json"].into_iter(),
            &expected,
            OutputStyle::CefKeys,
            100,
        );
        assert_eq!(check.rows, 2);
        assert_eq!(check.rows_with_errors, 1);
        assert_eq!(check.field_errors, 2);
        assert!(check.examples.iter().any(|e| e.starts_with("dvc: missing")));
    }

    #[test]
    fn commonsecuritylog_columns() {
        assert_eq!(
            csl_column("cs3Label").as_deref(),
            Some("DeviceCustomString3Label")
        );
        assert_eq!(csl_column("cn2").as_deref(), Some("DeviceCustomNumber2"));
        assert_eq!(csl_column("darktraceUrl"), None);
        assert!(values_match("42", "42.0"));
        assert!(!values_match("42", "43"));
    }
}
