//! Darktrace JSON: parsing a 7 KB model breach (synthetic, same shape as the real ones:
//! nested rule logic, triggered filters, device tags) and mapping it to CommonSecurityLog,
//! ECS and the native schema. Baselines from the same run: serde_json to a `Value`,
//! simd-json `to_tape` with fresh buffers, and simd-json `fill_tape` with reused buffers (the
//! floor for our parser, which adds the input copy and event-type recognition).
//! Compare medians as ratios.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::event::{Received, Timestamp};
use sluice::map::{self, Schema};
use sluice::parse::json::{self, JsonScratch};
use sluice::parse::{ParseOptions, Parser};

const BODY: &str = include_str!("../../ingest/tests/data/darktrace/model_breach_body.json");
const LINE: &str = include_str!("../../ingest/tests/data/darktrace/model_breach_rfc5424.log");

fn received() -> Received<'static> {
    Received {
        source: "bench",
        peer: None,
        received_at: Timestamp::from_unix_nanos(1_700_000_000_000_000_000),
    }
}

fn parse_benches(c: &mut Criterion) {
    let body = BODY.trim_end();
    let mut g = c.benchmark_group("darktrace_json_parse");
    g.throughput(Throughput::Bytes(body.len() as u64));

    g.bench_function("baseline_serde_json_value", |b| {
        b.iter(|| black_box(serde_json::from_str::<serde_json::Value>(black_box(body)).unwrap()))
    });
    let mut copy = body.as_bytes().to_vec();
    g.bench_function("baseline_simd_json_to_tape_fresh_buffers", |b| {
        b.iter(|| {
            copy.clear();
            copy.extend_from_slice(black_box(body).as_bytes());
            black_box(simd_json::to_tape(&mut copy).unwrap().0.len())
        })
    });
    let mut padded = body.as_bytes().to_vec();
    padded.resize(body.len() + simd_json::INPUT_PADDING, 0);
    let mut buffers = simd_json::Buffers::new(body.len());
    let mut tape_vec = Vec::new();
    g.bench_function("baseline_simd_json_fill_tape_reused", |b| {
        b.iter(|| {
            padded[..body.len()].copy_from_slice(black_box(body).as_bytes());
            let mut tape = simd_json::Tape(std::mem::take(&mut tape_vec)).reset();
            simd_json::fill_tape_padded(&mut padded, body.len(), &mut buffers, &mut tape).unwrap();
            let n = tape.0.len();
            tape_vec = tape.reset().0;
            black_box(n)
        })
    });
    let options = ParseOptions::default();
    let mut scratch = JsonScratch::default();
    g.bench_function("parse", |b| {
        b.iter(|| {
            let parsed = json::parse(black_box(body), &options, &mut scratch).unwrap();
            black_box(parsed.kind)
        })
    });
    let line = LINE.trim_end();
    let mut parser = Parser::new(ParseOptions::default());
    g.throughput(Throughput::Bytes(line.len() as u64));
    g.bench_function("parse_syslog_message", |b| {
        b.iter(|| {
            let event = parser.parse(received(), black_box(line).as_bytes());
            black_box(event.kind())
        })
    });
    g.finish();
}

fn map_benches(c: &mut Criterion) {
    let line = LINE.trim_end();
    let mut parser = Parser::new(ParseOptions::default());
    let event = parser.parse(received(), line.as_bytes());
    assert_eq!(event.kind(), sluice::event::EventKind::DarktraceModelBreach);
    let mut g = c.benchmark_group("darktrace_json_map");
    g.throughput(Throughput::Bytes(line.len() as u64));
    let mut out = Vec::with_capacity(64 * 1024);
    for schema in [
        Schema::Commonsecuritylog,
        Schema::Ecs,
        Schema::Sluice,
        Schema::Raw,
    ] {
        g.bench_function(schema.as_str(), |b| {
            b.iter(|| {
                out.clear();
                map::write(schema, black_box(&event), &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
    drop(event);

    // Whole path for one message: parse + map, as a worker does it.
    let mut g = c.benchmark_group("darktrace_json_end_to_end");
    g.throughput(Throughput::Bytes(line.len() as u64));
    for schema in [Schema::Commonsecuritylog, Schema::Ecs] {
        g.bench_function(schema.as_str(), |b| {
            b.iter(|| {
                out.clear();
                let event = parser.parse(received(), black_box(line).as_bytes());
                map::write(schema, &event, &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, parse_benches, map_benches);
criterion_main!(benches);
