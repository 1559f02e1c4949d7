//! One API response: a JSON array of events → each event's time, id and the message bytes the
//! pipeline gets.
//!
//! The message is the event as the appliance sent it, with insignificant whitespace removed
//! (responses are pretty-printed; one event must be one line in NDJSON-based sinks) and
//! `"log_type":"<endpoint>"` put first when the event has none: that is what SEKOIA's
//! connector forwards, and what the parser's event-type recognition reads first
//! (`parse/json.rs`), so an API event and the same event over syslog map alike.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::config::Endpoint;

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("the response is not a JSON array of events: {0}")]
    NotAnArray(serde_json::Error),
}

/// One event of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiEvent<'a> {
    /// The event's text as received (a view into the response body).
    pub raw: &'a str,
    /// Epoch ms from the endpoint's time field; `None` when missing or not a time.
    pub time_ms: Option<i64>,
    /// The endpoint's id field as text, or `sha1:<hex>` of the event when it has none.
    pub id: String,
    pub has_log_type: bool,
}

/// The fields read from every event; everything else is skipped without building values.
#[derive(Deserialize)]
struct Probe {
    time: Option<serde_json::Value>,
    #[serde(rename = "createdAt")]
    created_at: Option<serde_json::Value>,
    #[serde(rename = "creationTime")]
    creation_time: Option<serde_json::Value>,
    pbid: Option<serde_json::Value>,
    id: Option<serde_json::Value>,
    log_type: Option<serde::de::IgnoredAny>,
}

/// Splits a response body into its events, in response order.
pub fn parse(body: &[u8], endpoint: Endpoint) -> Result<Vec<ApiEvent<'_>>, PageError> {
    let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(PageError::NotAnArray)?;
    Ok(items
        .into_iter()
        .map(|item| event(item.get(), endpoint))
        .collect())
}

fn event(raw: &str, endpoint: Endpoint) -> ApiEvent<'_> {
    let probe: Option<Probe> = if raw.trim_start().starts_with('{') {
        serde_json::from_str(raw).ok()
    } else {
        None
    };
    let (time, id, has_log_type) = match probe {
        Some(p) => {
            let (time, id) = match endpoint {
                Endpoint::ModelBreaches => (p.time.or(p.creation_time), p.pbid),
                Endpoint::AiAnalystIncidentEvents => (p.created_at, p.id),
            };
            (time, id, p.log_type.is_some())
        }
        None => (None, None, false),
    };
    let id = id.as_ref().and_then(id_text).unwrap_or_else(|| {
        use sha1::Digest;
        format!("sha1:{}", hex::encode(sha1::Sha1::digest(raw.as_bytes())))
    });
    ApiEvent {
        raw,
        time_ms: time.as_ref().and_then(epoch_ms),
        id,
        has_log_type,
    }
}

fn id_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Epoch ms from what Darktrace writes: integer ms (the API), float epoch seconds or digits in
/// a string (seen over syslog). Values below 1e11 are taken as seconds (1e11 ms is 1973).
fn epoch_ms(v: &serde_json::Value) -> Option<i64> {
    let f = match v {
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) if i >= 100_000_000_000 => return Some(i),
            _ => n.as_f64()?,
        },
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if !f.is_finite() || f <= 0.0 {
        return None;
    }
    let ms = if f < 1e11 { f * 1000.0 } else { f };
    (ms < 1e15).then_some(ms.round() as i64)
}

/// Appends the pipeline message for `event`: compact, with `log_type` first when missing.
pub fn write_message(event: &ApiEvent<'_>, endpoint: Endpoint, out: &mut Vec<u8>) {
    let raw = event.raw.trim();
    if event.has_log_type || !raw.starts_with('{') {
        compact_into(raw.as_bytes(), out);
        return;
    }
    out.extend_from_slice(b"{\"log_type\":\"");
    // Endpoint names are plain ASCII: nothing to escape.
    out.extend_from_slice(endpoint.name().as_bytes());
    out.push(b'"');
    let start = out.len();
    compact_into(&raw.as_bytes()[1..], out);
    if out.get(start) != Some(&b'}') {
        out.insert(start, b',');
    }
}

/// Copies JSON text without the whitespace between tokens (strings are copied verbatim, so no
/// escape is touched and nothing is re-encoded).
fn compact_into(json: &[u8], out: &mut Vec<u8>) {
    let mut in_string = false;
    let mut escaped = false;
    let mut run_start = 0;
    for (i, &b) in json.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b' ' | b'\t' | b'\n' | b'\r' => {
                out.extend_from_slice(&json[run_start..i]);
                run_start = i + 1;
            }
            _ => {}
        }
    }
    out.extend_from_slice(&json[run_start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(raw: &str, endpoint: Endpoint) -> String {
        let body = format!("[{raw}]");
        let events = parse(body.as_bytes(), endpoint).unwrap();
        let mut out = Vec::new();
        write_message(&events[0], endpoint, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn compacts_without_touching_strings_and_adds_log_type() {
        let m = message(
            "{\n  \"pbid\" : 7,\n  \"time\": 1687774142000,\n  \"d\": \"a  b\\\" \\n\\\\ \"\n}",
            Endpoint::ModelBreaches,
        );
        assert_eq!(
            m,
            r#"{"log_type":"modelbreaches","pbid":7,"time":1687774142000,"d":"a  b\" \n\\ "}"#
        );
        assert_eq!(
            message("{ }", Endpoint::AiAnalystIncidentEvents),
            r#"{"log_type":"aianalyst/incidentevents"}"#
        );
        // An existing log_type is kept as it is.
        assert_eq!(
            message(r#"{"log_type": "x", "id": "u"}"#, Endpoint::ModelBreaches),
            r#"{"log_type":"x","id":"u"}"#
        );
    }

    #[test]
    fn time_and_id_per_endpoint() {
        let body = br#"[{"pbid":25808,"time":1687774142000},{"id":"u-1","createdAt":1694169156370},
            {"pbid":1,"creationTime":1687774148000},{"pbid":2,"time":1687774.5},{"x":1},"text"]"#;
        let mb = parse(body, Endpoint::ModelBreaches).unwrap();
        assert_eq!(mb[0].time_ms, Some(1_687_774_142_000));
        assert_eq!(mb[0].id, "25808");
        assert_eq!(mb[2].time_ms, Some(1_687_774_148_000));
        assert_eq!(mb[3].time_ms, Some(1_687_774_500));
        assert_eq!(mb[4].time_ms, None);
        assert!(mb[4].id.starts_with("sha1:") && mb[4].id.len() == 45);
        assert_eq!(mb[5].time_ms, None);
        let aia = parse(body, Endpoint::AiAnalystIncidentEvents).unwrap();
        assert_eq!(aia[1].time_ms, Some(1_694_169_156_370));
        assert_eq!(aia[1].id, "u-1");
        assert!(matches!(
            parse(b"{\"error\":\"x\"}", Endpoint::ModelBreaches),
            Err(PageError::NotAnArray(_))
        ));
    }
}
