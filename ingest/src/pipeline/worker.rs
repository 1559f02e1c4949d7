//! A parser worker: one per core. Parses each frame once, then maps it into the open batch of
//! every sink that takes it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};

use crate::batch::{Batcher, SealedBatch};
use crate::config::BatchLimits;
use crate::event::{Body, EventKind, Received, Timestamp};
use crate::map::Schema;
use crate::metrics::SinkCounters;
use crate::net::FrameBatch;
use crate::parse::{ParseErrorKind, ParseOptions, Parser};
use crate::pipeline::Totals;

/// A worker's connection to one sink.
pub(super) struct SinkPort {
    pub schema: Schema,
    /// Empty: every kind.
    pub kinds: Vec<EventKind>,
    pub limits: BatchLimits,
    pub queue: Sender<SealedBatch>,
    /// Emptied batch buffers coming back from the delivery threads.
    pub spare: Receiver<Vec<u8>>,
    pub counters: SinkCounters,
}

pub(super) struct WorkerSetup<'a> {
    pub core: usize,
    pub queue: Receiver<FrameBatch>,
    pub recycle: Vec<Sender<FrameBatch>>,
    pub source_names: Vec<Arc<str>>,
    /// Per source: indexes of the sinks that take it.
    pub routes: Vec<Vec<usize>>,
    pub sinks: &'a [SinkPort],
    pub parse: ParseOptions,
    pub totals: Arc<Totals>,
}

struct WorkerSink {
    schema: Schema,
    kinds: Vec<EventKind>,
    batcher: Batcher,
    queue: Sender<SealedBatch>,
    spare: Receiver<Vec<u8>>,
    counters: SinkCounters,
}

impl WorkerSink {
    fn takes(&self, kind: EventKind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }

    fn seal(&mut self, totals: &Totals) {
        let Some(sealed) = self.batcher.seal(self.spare.try_recv().ok()) else {
            return;
        };
        self.counters
            .batch_fill
            .record(sealed.opened_at.elapsed().as_secs_f64());
        let events = sealed.batch.events;
        // Blocks while the delivery stage is behind: backpressure reaches the readers.
        if let Err(lost) = self.queue.send(sealed) {
            // ack hook: the events are not committed; tell the sources that wait for it.
            for ack in &lost.0.acks {
                ack.fail();
            }
            tracing::error!(events, "sink delivery threads are gone; batch lost");
            self.counters.dropped_events.increment(events);
            totals
                .sink_dropped_events
                .fetch_add(events, Ordering::Relaxed);
        }
    }
}

struct WorkerSource {
    name: Arc<str>,
    routes: Vec<usize>,
}

pub(super) struct Worker {
    core: usize,
    queue: Receiver<FrameBatch>,
    recycle: Vec<Sender<FrameBatch>>,
    sources: Vec<WorkerSource>,
    sinks: Vec<WorkerSink>,
    parser: Parser,
    parse_errors: HashMap<(u16, ParseErrorKind), (metrics::Counter, u64)>,
    parse_map_seconds: metrics::Histogram,
    totals: Arc<Totals>,
}

impl Worker {
    pub fn new(setup: WorkerSetup<'_>) -> Worker {
        Worker {
            core: setup.core,
            queue: setup.queue,
            recycle: setup.recycle,
            sources: setup
                .source_names
                .iter()
                .zip(setup.routes)
                .map(|(name, routes)| WorkerSource {
                    name: name.clone(),
                    routes,
                })
                .collect(),
            sinks: setup
                .sinks
                .iter()
                .map(|p| WorkerSink {
                    schema: p.schema,
                    kinds: p.kinds.clone(),
                    batcher: Batcher::new(p.limits, setup.core),
                    queue: p.queue.clone(),
                    spare: p.spare.clone(),
                    counters: p.counters.clone(),
                })
                .collect(),
            parser: Parser::new(setup.parse),
            parse_errors: HashMap::new(),
            parse_map_seconds: crate::metrics::parse_map_histogram(setup.core),
            totals: setup.totals,
        }
    }

    /// Runs until every reader feeding this worker is gone and the queue is empty.
    pub fn run(mut self) {
        loop {
            let deadline = self.sinks.iter().filter_map(|s| s.batcher.deadline()).min();
            let received = match deadline {
                Some(d) => self.queue.recv_deadline(d),
                None => self
                    .queue
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            match received {
                Ok(batch) => self.process(batch),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    for sink in &mut self.sinks {
                        if sink.batcher.timed_out(now) {
                            sink.seal(&self.totals);
                        }
                    }
                }
            }
        }
        for sink in &mut self.sinks {
            sink.seal(&self.totals);
        }
        self.flush_parse_errors();
        tracing::debug!(core = self.core, "worker drained");
    }

    fn process(&mut self, mut batch: FrameBatch) {
        let started = Instant::now();
        let Some(source) = self.sources.get(batch.source as usize) else {
            tracing::error!(
                source = batch.source,
                frames = batch.len(),
                "batch from an unknown source index"
            );
            // ack hook: nothing of it was committed.
            if let Some(ack) = &batch.ack {
                ack.fail();
            }
            return;
        };
        let received_at = batch.received_at.unwrap_or_else(Timestamp::now);
        let mut errors = 0u64;
        // One UTF-8 check for the whole batch: per frame, the call's set-up cost more than the
        // check. A frame is then valid text if it starts and ends on character boundaries
        // (a frame cut inside a character takes the per-frame path and its replacement).
        let text = simdutf8::basic::from_utf8(&batch.data).ok();
        for frame in &batch.frames {
            let received = Received {
                source: &source.name,
                peer: frame.peer,
                received_at,
            };
            let start = frame.offset as usize;
            let event = match text.and_then(|t| t.get(start..start + frame.len as usize)) {
                Some(text) => self.parser.parse_text(received, text),
                None => self.parser.parse(received, batch.frame(frame)),
            };
            let kind = event.kind();
            if let Body::Error { kind: error, .. } = &event.body {
                errors += 1;
                let key = (batch.source, *error);
                match self.parse_errors.get_mut(&key) {
                    Some((_, n)) => *n += 1,
                    None => {
                        let counter =
                            crate::metrics::parse_error_counter(&source.name, error.as_str());
                        self.parse_errors.insert(key, (counter, 1));
                    }
                }
            }
            for &j in &source.routes {
                let sink = &mut self.sinks[j];
                if !sink.takes(kind) {
                    continue;
                }
                let schema = sink.schema;
                let full = sink
                    .batcher
                    .push_with(|out| crate::map::write(schema, &event, out));
                // ack hook (API sources only): this sink batch now holds events of `batch`.
                if let Some(ack) = &batch.ack {
                    sink.batcher.attach_ack(ack);
                }
                if full {
                    sink.seal(&self.totals);
                }
            }
            let storage = event.into_storage();
            self.parser.recycle(storage);
        }
        self.totals
            .parsed_messages
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        if errors > 0 {
            self.totals
                .parse_errors
                .fetch_add(errors, Ordering::Relaxed);
            self.flush_parse_errors();
        }
        self.parse_map_seconds
            .record(started.elapsed().as_secs_f64());
        let index = batch.source as usize;
        batch.clear();
        let _ = self.recycle[index].try_send(batch);
    }

    fn flush_parse_errors(&mut self) {
        for (counter, n) in self.parse_errors.values_mut() {
            if *n > 0 {
                counter.increment(std::mem::take(n));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::FrameBatch;

    /// The rows a worker writes for `frames` sent as one batch.
    fn worker_rows(frames: &[&[u8]], received_at: Timestamp) -> Vec<String> {
        let (queue_tx, queue_rx) = crossbeam::channel::unbounded();
        let (sealed_tx, sealed_rx) = crossbeam::channel::unbounded();
        let (_spare_tx, spare_rx) = crossbeam::channel::unbounded();
        let (recycle_tx, _recycle_rx) = crossbeam::channel::unbounded();
        let sinks = [SinkPort {
            schema: Schema::Sluice,
            kinds: Vec::new(),
            limits: BatchLimits {
                max_events: 1000,
                max_bytes: 1 << 20,
                timeout: std::time::Duration::from_secs(60),
            },
            queue: sealed_tx,
            spare: spare_rx,
            counters: SinkCounters::register("worker-test"),
        }];
        let mut batch = FrameBatch {
            received_at: Some(received_at),
            ..FrameBatch::default()
        };
        for frame in frames {
            batch.push(frame, None, false);
        }
        queue_tx.send(batch).unwrap();
        drop(queue_tx);
        Worker::new(WorkerSetup {
            core: 0,
            queue: queue_rx,
            recycle: vec![recycle_tx],
            source_names: vec![Arc::from("test")],
            routes: vec![vec![0]],
            sinks: &sinks,
            parse: ParseOptions::default(),
            totals: Arc::default(),
        })
        .run();
        let sealed = sealed_rx.try_recv().expect("one sealed batch");
        String::from_utf8(sealed.batch.ndjson)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn batch_wide_utf8_check_gives_what_each_frame_parsed_alone_gives() {
        let e_acute = "é".as_bytes();
        let frames: [&[u8]; 5] = [
            b"<13>Nov  1 00:00:00 host app: plain",
            "<13>Nov  1 00:00:00 host app: caf\u{e9} CEF:0|v|p|1|s|n|5|msg=\u{e9}t\u{e9}"
                .as_bytes(),
            // Cut inside a character: valid as part of the batch, not as a frame.
            &e_acute[..1],
            &e_acute[1..],
            b"<13>Nov  1 00:00:00 host app: bad \xff byte",
        ];
        let received_at = Timestamp::now();
        let expected: Vec<String> = frames
            .iter()
            .map(|frame| {
                let mut parser = Parser::new(ParseOptions::default());
                let received = Received {
                    source: "test",
                    peer: None,
                    received_at,
                };
                let mut out = Vec::new();
                crate::map::write(Schema::Sluice, &parser.parse(received, frame), &mut out);
                String::from_utf8(out).unwrap()
            })
            .collect();
        assert_eq!(worker_rows(&frames, received_at), expected);
        // Only the cut and the invalid frames hold a replacement character.
        let replaced: Vec<bool> = expected.iter().map(|r| r.contains('\u{fffd}')).collect();
        assert_eq!(replaced, [false, false, true, true, true]);
    }
}
