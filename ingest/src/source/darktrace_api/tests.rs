//! The real (pseudonymised) API responses through page splitting and the pipeline's parser:
//! each event must arrive as the same kind of event as over syslog.

use super::checkpoint::{Cursor, select};
use super::config::Endpoint;
use super::page;
use crate::event::{EventKind, Received, SyslogFormat, Timestamp};
use crate::parse::{ParseOptions, Parser};

const MODELBREACHES: &[u8] =
    include_bytes!("../../../tests/data/darktrace/modelbreaches_response.txt");
const AIANALYST: &[u8] = include_bytes!("../../../tests/data/darktrace/aianalyst_response.txt");

fn messages(body: &[u8], endpoint: Endpoint) -> Vec<String> {
    page::parse(body, endpoint)
        .unwrap()
        .iter()
        .map(|e| {
            let mut out = Vec::new();
            page::write_message(e, endpoint, &mut out);
            String::from_utf8(out).unwrap()
        })
        .collect()
}

#[test]
fn real_responses_parse_as_darktrace_events_without_a_header() {
    let mut parser = Parser::new(ParseOptions::default());
    for (body, endpoint, kind, count) in [
        (
            MODELBREACHES,
            Endpoint::ModelBreaches,
            EventKind::DarktraceModelBreach,
            1,
        ),
        (
            AIANALYST,
            Endpoint::AiAnalystIncidentEvents,
            EventKind::DarktraceAiAnalyst,
            16,
        ),
    ] {
        let msgs = messages(body, endpoint);
        assert_eq!(msgs.len(), count);
        let items = page::parse(body, endpoint).unwrap();
        for (m, item) in msgs.iter().zip(&items) {
            assert!(!m.contains('\n'), "one event, one line");
            let received = Received {
                source: "dt_api",
                peer: None,
                received_at: Timestamp::now(),
            };
            let event = parser.parse(received, m.as_bytes());
            assert_eq!(event.syslog.format, SyslogFormat::None, "{m:.80}");
            assert_eq!(event.kind(), kind, "{m:.80}");
            // Nothing but whitespace was removed: the values are the appliance's.
            let original: serde_json::Value = serde_json::from_str(&m.replacen(
                &format!("\"log_type\":\"{}\",", endpoint.name()),
                "",
                1,
            ))
            .unwrap();
            assert_eq!(
                original,
                serde_json::from_str::<serde_json::Value>(item.raw).unwrap()
            );
        }
    }
}

#[test]
fn real_aianalyst_page_selects_every_event_once() {
    let events = page::parse(AIANALYST, Endpoint::AiAnalystIncidentEvents).unwrap();
    let start = Cursor {
        time_ms: 0,
        ids_at_time: Default::default(),
    };
    let first = select(&start, &events);
    assert_eq!(first.new.len(), 16);
    // Unsorted response: the cursor is the latest createdAt, not the last element's.
    let latest = events.iter().filter_map(|e| e.time_ms).max().unwrap();
    assert_eq!(first.next.time_ms, latest);
    assert_eq!(first.next.ids_at_time.len(), 1);
    // Polling again from there returns the latest event again: a duplicate, nothing new.
    let again = select(&first.next, &events);
    assert!(again.new.is_empty());
    assert_eq!(again.duplicates, 16);
}
