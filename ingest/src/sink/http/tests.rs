use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

use super::common::{self, Attempt, ChunkSender};
use crate::sink::{Batch, Delivery};

#[test]
fn retry_after_seconds_and_http_date() {
    let mut h = HeaderMap::new();
    h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
    assert_eq!(common::retry_after(&h), Some(Duration::from_secs(2)));
    let future = chrono::Utc::now() + chrono::Duration::seconds(30);
    let date = future.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    h.insert(RETRY_AFTER, HeaderValue::from_str(&date).unwrap());
    let d = common::retry_after(&h).unwrap();
    assert!(
        d > Duration::from_secs(28) && d <= Duration::from_secs(30),
        "{d:?}"
    );
    h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
    assert_eq!(common::retry_after(&h), None);
}

#[test]
fn status_classification() {
    let h = HeaderMap::new();
    assert!(matches!(common::classify(204, &h, b""), Attempt::Accepted));
    assert!(matches!(
        common::classify(413, &h, b""),
        Attempt::TooLarge { .. }
    ));
    for s in [408, 429, 500, 502, 503] {
        assert!(
            matches!(common::classify(s, &h, b""), Attempt::Retry { .. }),
            "{s}"
        );
    }
    for s in [400, 401, 403, 415] {
        let Attempt::Reject { status, body, .. } = common::classify(s, &h, b"why") else {
            panic!("{s}")
        };
        assert_eq!((status, body.as_str()), (Some(s), "why"));
    }
}

#[test]
fn raw_strings_pass_through_and_objects_become_strings() {
    let mut out = Vec::new();
    common::push_as_json_string(br#""<134>msg \"q\"""#, &mut out);
    out.push(b',');
    common::push_as_json_string(br#"{"a":"b"}"#, &mut out);
    assert_eq!(out, br#""<134>msg \"q\"","{\"a\":\"b\"}""#);
    assert_eq!(common::json_array([&b"1"[..], b"2"]), b"[1,2]");
}

/// Refuses chunks over `max` lines with 413, line `fail_at` with a retryable error (once),
/// and lines equal to `bad` for good.
struct Scripted {
    max: usize,
    bad: &'static [u8],
    fail_once: Mutex<Option<&'static [u8]>>,
    sent: Mutex<Vec<usize>>,
}

impl ChunkSender for Scripted {
    async fn send(&self, lines: &[&[u8]]) -> Attempt {
        self.sent.lock().unwrap().push(lines.len());
        if lines.len() > self.max {
            return Attempt::TooLarge {
                status: 413,
                body: String::new(),
            };
        }
        if lines.contains(&self.bad) {
            return Attempt::Reject {
                status: Some(400),
                reason: "bad".into(),
                body: "{}".into(),
            };
        }
        let mut once = self.fail_once.lock().unwrap();
        if once.is_some_and(|f| lines.contains(&f)) {
            *once = None;
            return Attempt::Retry {
                after: Some(Duration::from_secs(1)),
                reason: "busy".into(),
            };
        }
        Attempt::Accepted
    }
}

#[tokio::test]
async fn deliver_chunks_splits_on_413_and_isolates_a_bad_event() {
    let lines: Vec<&[u8]> = vec![b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8"];
    let s = Scripted {
        max: 2,
        bad: b"6",
        fail_once: Mutex::new(None),
        sent: Mutex::new(vec![]),
    };
    let Delivery::Partial {
        retry: None,
        rejected,
        ..
    } = common::deliver_chunks(&s, vec![lines], vec![]).await
    else {
        panic!()
    };
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].batch.ndjson, b"5\n6\n");
    assert_eq!(*s.sent.lock().unwrap(), vec![8, 4, 2, 2, 4, 2, 2]);
}

#[tokio::test]
async fn deliver_chunks_hands_back_only_what_was_not_accepted() {
    let lines: Vec<&[u8]> = vec![b"1", b"2", b"3", b"4"];
    let chunks = vec![lines[..2].to_vec(), lines[2..].to_vec()];
    let s = Scripted {
        max: 10,
        bad: b"x",
        fail_once: Mutex::new(Some(b"3")),
        sent: Mutex::new(vec![]),
    };
    let Delivery::Partial {
        retry: Some(retry),
        after,
        rejected,
        ..
    } = common::deliver_chunks(&s, chunks, vec![]).await
    else {
        panic!()
    };
    assert!(rejected.is_empty());
    assert_eq!(after, Some(Duration::from_secs(1)));
    assert_eq!(retry.ndjson, b"3\n4\n");
    assert_eq!(retry.events, 2);
    // Nothing accepted yet: a plain retry of the whole batch.
    let s = Scripted {
        max: 10,
        bad: b"x",
        fail_once: Mutex::new(Some(b"1")),
        sent: Mutex::new(vec![]),
    };
    let d = common::deliver_chunks(&s, vec![vec![&b"1"[..], b"2"]], vec![]).await;
    assert!(matches!(d, Delivery::Retry { .. }));
    let all_bad = Scripted {
        max: 10,
        bad: b"1",
        fail_once: Mutex::new(None),
        sent: Mutex::new(vec![]),
    };
    let d = common::deliver_chunks(&all_bad, vec![vec![&b"1"[..]]], vec![]).await;
    assert!(matches!(
        d,
        Delivery::Reject {
            status: Some(400),
            ..
        }
    ));
}

#[test]
fn batch_lines_round_trip() {
    let b = Batch::from_lines([&b"{\"a\":1}"[..], b"\"x\""]);
    assert_eq!(b.events, 2);
    assert_eq!(
        b.lines().collect::<Vec<_>>(),
        vec![&b"{\"a\":1}"[..], b"\"x\""]
    );
}

#[test]
fn config_rejects_unknown_keys_and_bad_urls() {
    let err = toml::from_str::<super::HttpSinkConfig>("url = \"http://x\"\nformt = \"ndjson\"")
        .unwrap_err();
    assert!(err.to_string().contains("formt"), "{err}");
    assert!(common::check_url("s", "url", "ftp://x").is_err());
    assert!(common::check_url("s", "url", "not a url").is_err());
    assert!(common::check_url("s", "url", "http://127.0.0.1:1/").is_ok());
}
