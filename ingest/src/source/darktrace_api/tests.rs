//! The real (pseudonymised) API responses through page splitting and the pipeline's parser:
//! each event must arrive as the same kind of event as over syslog.

use super::checkpoint::{Cursor, Poll, select};
use super::config::Endpoint;
use super::forwarded::ForwardedIds;
use super::page;
use super::{NotSent, send_to_worker};
use crate::event::{EventKind, Received, SyslogFormat, Timestamp};
use crate::net::FrameBatch;
use crate::parse::{ParseOptions, Parser};
use crate::pipeline::ack::{AckOutcome, AckToken};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

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
    let start = Cursor::at(0);
    let later = i64::MAX;
    let none = ForwardedIds::new(1);
    let first = select(&start, &events, Poll::from_cursor(&start, later), &none);
    assert_eq!(first.new.len(), 16);
    // Unsorted response: the cursor is the latest createdAt, not the last element's.
    let latest = events.iter().filter_map(|e| e.time_ms).max().unwrap();
    assert_eq!(first.next.time_ms, latest);
    assert_eq!(first.next.ids_at_time.len(), 1);
    // Polling again from there returns the latest event again: a duplicate, nothing new.
    let again = select(
        &first.next,
        &events,
        Poll::from_cursor(&first.next, later),
        &none,
    );
    assert!(again.new.is_empty());
    assert_eq!(again.duplicates, 16);
}

fn acked_batch() -> (FrameBatch, std::sync::mpsc::Receiver<AckOutcome>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut batch = FrameBatch::default();
    batch.push(b"{}", None, false);
    batch.ack = Some(AckToken::new(move |o| {
        let _ = tx.send(o);
    }));
    (batch, rx)
}

/// A full worker queue must not stop the source's (single-threaded) runtime: other tasks,
/// here a ticker standing for the other endpoint and the shutdown check, keep running while
/// the batch waits, and the batch goes in once there is room. The old blocking `send` held
/// the thread: the ticker never moved and this timed out.
#[test]
fn a_full_worker_queue_does_not_block_the_runtime() {
    let (to_worker, from_source) = crossbeam::channel::bounded::<FrameBatch>(1);
    to_worker.send(FrameBatch::default()).unwrap();
    let ticks = Arc::new(AtomicU64::new(0));
    let shutdown = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (batch, acks) = acked_batch();
    let source = {
        let ticks = ticks.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let ticker = tokio::spawn(async move {
                    loop {
                        ticks.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                });
                let sent = send_to_worker(&to_worker, &shutdown, batch).await;
                ticker.abort();
                let _ = done_tx.send(sent);
            });
        })
    };
    let started = std::time::Instant::now();
    while ticks.load(Ordering::Relaxed) < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the runtime is blocked while the worker queue is full"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(done_rx.try_recv().is_err(), "sent into a full queue");
    // The worker takes a batch: the waiting one goes in, whole and once.
    assert!(from_source.recv().unwrap().frames.is_empty());
    let sent = done_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(sent, Ok(()));
    let got = from_source.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(got.frames.len(), 1);
    assert!(from_source.try_recv().is_err());
    source.join().unwrap();
    drop(got);
    assert_eq!(acks.try_recv(), Ok(AckOutcome::Committed));
}

/// Shutdown while the queue stays full: the send gives up promptly, and the batch's token
/// reports its events as not committed, so no checkpoint moves past them.
#[test]
fn shutdown_gives_up_a_send_into_a_full_queue_uncommitted() {
    let (to_worker, _from_source) = crossbeam::channel::bounded::<FrameBatch>(1);
    to_worker.send(FrameBatch::default()).unwrap();
    let shutdown = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (batch, acks) = acked_batch();
    let stop = shutdown.clone();
    let source = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sent = runtime.block_on(send_to_worker(&to_worker, &stop, batch));
        let _ = done_tx.send(sent);
    });
    std::thread::sleep(Duration::from_millis(100));
    shutdown.store(true, Ordering::Relaxed);
    let sent = done_rx.recv_timeout(Duration::from_secs(30));
    assert_eq!(sent, Ok(Err(NotSent::Stopping)));
    source.join().unwrap();
    assert_eq!(acks.try_recv(), Ok(AckOutcome::Failed));
}

/// A checkpoint the old code moved a month ahead (a future-dated event) is not resumed from:
/// the source would never have asked for the month in between.
#[test]
fn a_checkpoint_dated_in_the_future_is_not_resumed_from() {
    let dir = tempfile::tempdir().unwrap();
    let now = super::checkpoint::now_ms();
    let written_at = now - 3_600_000;
    let cp_dir = super::checkpoint_dir(dir.path(), "dt");
    std::fs::create_dir_all(&cp_dir).unwrap();
    std::fs::write(
        cp_dir.join("modelbreaches.json"),
        format!(
            r#"{{ "version": 1, "endpoint": "modelbreaches", "time_ms": {},
                 "ids_at_time": ["far"], "written_at_ms": {written_at} }}"#,
            now + 30 * 86_400_000
        ),
    )
    .unwrap();
    let config: super::DarktraceApiConfig = toml::from_str(
        "url = \"https://dt.example\"\npublic_token = \"p\"\nprivate_token = \"q\"\n\
         endpoints = [\"modelbreaches\"]",
    )
    .unwrap();
    let source = super::DarktraceApiSource::prepare("dt", &config, dir.path()).unwrap();
    let cursor = &source.pollers[0].cursor;
    assert_eq!(
        cursor.time_ms,
        written_at - super::checkpoint::FUTURE_SLACK_MS
    );
    assert!(cursor.ids_at_time.is_empty());
}
