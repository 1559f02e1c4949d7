//! A parser worker: one per core. Parses each frame once, then maps it into the open batch of
//! every sink that takes it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam::channel::{Receiver, Select, Sender, TryRecvError};

use crate::batch::{Batcher, SealedBatch};
use crate::config::BatchLimits;
use crate::event::{Body, EventKind, Received, Timestamp};
use crate::map::Schema;
use crate::metrics::SinkCounters;
use crate::net::FrameBatch;
use crate::parse::{LocalZone, ParseErrorKind, ParseOptions, Parser};
use crate::pipeline::senders::{ExpectedSenders, SenderWatch, Tally};
use crate::pipeline::stall::Pulse;
use crate::pipeline::{Lost, Totals};
use crate::sink::Envelope;

/// Test seam: a frame of exactly this text makes the worker panic before it parses its batch,
/// standing in for a parser or mapper bug. Only in unit-test builds: no config or input can
/// reach it in the daemon.
#[cfg(test)]
pub(super) const PANIC_FRAME: &[u8] = b"sluice unit test: panic this worker";

/// Test seam: a frame of exactly this text makes the worker wait, holding its batch, until
/// [`STALL_RELEASED`] is set, standing in for a parser bug that loops. Unit-test builds only.
#[cfg(test)]
pub(super) const STALL_FRAME: &[u8] = b"sluice unit test: stall this worker";
#[cfg(test)]
pub(super) static STALL_RELEASED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// A worker's connection to one sink.
pub(super) struct SinkPort {
    pub schema: Schema,
    pub envelope: Envelope,
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
    /// Input queues: the datagram queue (deep: UDP cannot push back) and the stream queue
    /// (shallow: TCP, TLS and API sources wait through flow control); see [`Worker::run`].
    pub queues: Vec<Receiver<FrameBatch>>,
    pub recycle: Vec<Sender<FrameBatch>>,
    pub source_names: Vec<Arc<str>>,
    /// Per source: indexes of the sinks that take it.
    pub routes: Vec<Vec<usize>>,
    pub sinks: &'a [SinkPort],
    pub parse: ParseOptions,
    /// Per source (as `source_names`): the zone of its unzoned timestamps.
    pub source_zones: Vec<LocalZone>,
    /// Per source (as `source_names`): its `expected_senders`, as reloads replace them.
    pub source_senders: Vec<Arc<ExpectedSenders>>,
    pub totals: Arc<Totals>,
    /// What the supervising loop sees of this worker (stall detection).
    pub pulse: Arc<Pulse>,
}

struct WorkerSink {
    schema: Schema,
    envelope: Envelope,
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

    /// Seals the open batch of sink number `index` and queues it.
    fn seal(&mut self, totals: &Totals, pulse: &Pulse, index: usize) {
        let Some(sealed) = self.batcher.seal(self.spare.try_recv().ok()) else {
            return;
        };
        pulse.open_events(index, 0);
        self.counters
            .batch_fill
            .record(sealed.opened_at.elapsed().as_secs_f64());
        let events = sealed.batch.events;
        // Blocks while the delivery stage is behind: backpressure reaches the readers, and
        // the wait is not a stall.
        let in_hand = pulse.wait_for_sink();
        let sent = self.queue.send(sealed);
        pulse.back_from_sink(in_hand);
        if let Err(lost) = sent {
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
    zone: LocalZone,
    senders: SenderWatch,
}

pub(super) struct Worker {
    core: usize,
    queues: Vec<Receiver<FrameBatch>>,
    recycle: Vec<Sender<FrameBatch>>,
    sources: Vec<WorkerSource>,
    /// The source whose zone the parser holds.
    parser_source: Option<u16>,
    sinks: Vec<WorkerSink>,
    parser: Parser,
    parse_errors: HashMap<(u16, ParseErrorKind), (metrics::Counter, u64)>,
    parse_map_seconds: metrics::Histogram,
    /// Messages per expected sender in the batch being processed.
    tally: Tally,
    totals: Arc<Totals>,
    /// What the supervising loop sees of this worker, and the count of what a panic loses:
    /// the reader batch in hand and how many of its frames every routed sink batch took.
    pulse: Arc<Pulse>,
}

impl Drop for Worker {
    /// A panic loses the reader batch in hand and the open sink batches: counted, so that the
    /// accounting still adds up (queued batches are counted by the pipeline at shutdown).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        if let Some((source, undone, done)) = self.pulse.batch_in_hand() {
            let name = self
                .sources
                .get(usize::from(source))
                .map_or("unknown", |s| &s.name);
            self.totals
                .lost_batch_in_hand(name, undone, done, Lost::Panicked);
        }
        for sink in &self.sinks {
            self.totals.lost_events(
                &sink.counters.dropped_events,
                sink.batcher.len(),
                Lost::Panicked,
            );
        }
    }
}

impl Worker {
    pub fn new(setup: WorkerSetup<'_>) -> Worker {
        Worker {
            core: setup.core,
            queues: setup.queues,
            recycle: setup.recycle,
            sources: setup
                .source_names
                .iter()
                .zip(setup.routes)
                .zip(setup.source_zones)
                .zip(setup.source_senders)
                .map(|(((name, routes), zone), senders)| WorkerSource {
                    name: name.clone(),
                    routes,
                    zone,
                    senders: SenderWatch::new(senders),
                })
                .collect(),
            parser_source: None,
            tally: Tally::default(),
            sinks: setup
                .sinks
                .iter()
                .map(|p| WorkerSink {
                    schema: p.schema,
                    envelope: p.envelope,
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
            pulse: setup.pulse,
        }
    }

    /// Runs until every reader feeding this worker is gone and its queues are empty.
    pub fn run(mut self) {
        let mut open = std::mem::take(&mut self.queues);
        let mut first = 0;
        while !open.is_empty() {
            let deadline = self.sinks.iter().filter_map(|s| s.batcher.deadline()).min();
            if let Some(batch) = receive(&mut open, &mut first, deadline) {
                let started = Instant::now();
                self.pulse.begin(started, batch.source, batch.len() as u64);
                self.process(batch, started);
                self.pulse.end();
            }
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    for (index, sink) in self.sinks.iter_mut().enumerate() {
                        if sink.batcher.timed_out(now) {
                            sink.seal(&self.totals, &self.pulse, index);
                        }
                    }
                }
            }
        }
        for (index, sink) in self.sinks.iter_mut().enumerate() {
            sink.seal(&self.totals, &self.pulse, index);
        }
        self.flush_parse_errors();
        tracing::debug!(core = self.core, "worker drained");
    }

    fn process(&mut self, mut batch: FrameBatch, started: Instant) {
        let Some(source) = self.sources.get_mut(batch.source as usize) else {
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
        if self.parser_source != Some(batch.source) {
            self.parser.options.zone = source.zone.clone();
            self.parser_source = Some(batch.source);
        }
        let received_at = batch.received_at.unwrap_or_else(Timestamp::now);
        let mut errors = 0u64;
        // Frames whose events every routed sink batch took (sealed ones are on their way).
        let mut done = 0u64;
        // One UTF-8 check for the whole batch: per frame, the call's set-up cost more than the
        // check. A frame is then valid text if it starts and ends on character boundaries
        // (a frame cut inside a character takes the per-frame path and its replacement).
        let text = simdutf8::basic::from_utf8(&batch.data).ok();
        let senders = source.senders.current();
        if let Some(senders) = senders {
            self.tally.begin(senders);
        }
        for frame in &batch.frames {
            #[cfg(test)]
            if batch.frame(frame) == PANIC_FRAME {
                panic!("test seam: a worker bug");
            }
            #[cfg(test)]
            if batch.frame(frame) == STALL_FRAME {
                while !STALL_RELEASED.load(Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            let received = Received {
                source: &source.name,
                peer: frame.peer,
                received_at,
            };
            if let Some(senders) = senders {
                self.tally.count(senders, frame.peer);
            }
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
                let (schema, envelope) = (sink.schema, sink.envelope);
                let full = sink
                    .batcher
                    .push_with(|out| envelope.write(schema, &event, out));
                self.pulse.open_events(j, sink.batcher.len());
                // ack hook (API sources only): this sink batch now holds events of `batch`.
                if let Some(ack) = &batch.ack {
                    sink.batcher.attach_ack(ack);
                }
                if full {
                    sink.seal(&self.totals, &self.pulse, j);
                }
            }
            let storage = event.into_storage();
            self.parser.recycle(storage);
            done += 1;
            self.pulse.done(done);
        }
        if let Some(senders) = senders {
            self.tally.publish(senders, received_at.unix_secs());
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

/// The next batch from any of `open`, taking turns (`first`) so that a busy queue cannot
/// starve the other; blocks until one has a batch or `deadline` passes (then `None`). A queue
/// whose senders are all gone is removed once it is empty.
fn receive(
    open: &mut Vec<Receiver<FrameBatch>>,
    first: &mut usize,
    deadline: Option<Instant>,
) -> Option<FrameBatch> {
    let n = open.len();
    if n == 0 {
        return None;
    }
    let mut gone = None;
    for k in 0..n {
        let i = (*first + k) % n;
        match open[i].try_recv() {
            Ok(batch) => {
                *first = (i + 1) % n;
                return Some(batch);
            }
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => gone = Some(i),
        }
    }
    if let Some(i) = gone {
        open.remove(i);
        return None;
    }
    let mut select = Select::new();
    for queue in open.iter() {
        select.recv(queue);
    }
    let ready = match deadline {
        Some(d) => select.select_deadline(d).ok()?,
        None => select.select(),
    };
    let i = ready.index();
    match ready.recv(&open[i]) {
        Ok(batch) => Some(batch),
        Err(_) => {
            open.remove(i);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::FrameBatch;

    fn tagged(source: u16) -> FrameBatch {
        FrameBatch {
            source,
            ..FrameBatch::default()
        }
    }

    #[test]
    fn receive_takes_turns_and_outlives_a_closed_queue() {
        let (udp_tx, udp_rx) = crossbeam::channel::bounded(8);
        let (tcp_tx, tcp_rx) = crossbeam::channel::bounded(8);
        for _ in 0..3 {
            udp_tx.send(tagged(0)).unwrap();
        }
        tcp_tx.send(tagged(1)).unwrap();
        let mut open = vec![udp_rx, tcp_rx];
        let mut first = 0;
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(receive(&mut open, &mut first, None).unwrap().source);
        }
        // A full UDP queue does not keep the TCP batch waiting behind it.
        assert_eq!(got, [0, 1, 0, 0]);

        // Closed with a batch still queued: the batch comes out first, then the queue goes.
        tcp_tx.send(tagged(1)).unwrap();
        drop(tcp_tx);
        assert_eq!(receive(&mut open, &mut first, None).unwrap().source, 1);
        assert!(receive(&mut open, &mut first, None).is_none());
        assert_eq!(open.len(), 1);

        // Nothing queued: the deadline ends the wait; a batch sent meanwhile wakes it.
        let deadline = Instant::now() + std::time::Duration::from_millis(30);
        assert!(receive(&mut open, &mut first, Some(deadline)).is_none());
        assert!(Instant::now() >= deadline);
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            udp_tx.send(tagged(0)).unwrap();
        });
        assert_eq!(receive(&mut open, &mut first, None).unwrap().source, 0);
        sender.join().unwrap();
        // All senders gone and nothing left: the last queue is removed.
        assert!(receive(&mut open, &mut first, None).is_none());
        assert!(open.is_empty());
        assert!(receive(&mut open, &mut first, None).is_none());
    }

    /// The rows a worker writes for `frames` sent as one batch.
    fn worker_rows(frames: &[&[u8]], received_at: Timestamp) -> Vec<String> {
        let (queue_tx, queue_rx) = crossbeam::channel::unbounded();
        let (sealed_tx, sealed_rx) = crossbeam::channel::unbounded();
        let (_spare_tx, spare_rx) = crossbeam::channel::unbounded();
        let (recycle_tx, _recycle_rx) = crossbeam::channel::unbounded();
        let sinks = [SinkPort {
            schema: Schema::Sluice,
            envelope: Envelope::Row,
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
            queues: vec![queue_rx],
            recycle: vec![recycle_tx],
            source_names: vec![Arc::from("test")],
            routes: vec![vec![0]],
            sinks: &sinks,
            parse: ParseOptions::default(),
            source_zones: vec![LocalZone::default()],
            source_senders: vec![ExpectedSenders::register("in", &[], 0)],
            totals: Arc::default(),
            pulse: Arc::new(Pulse::new(Instant::now(), sinks.len())),
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
