//! Per-record cost of the worker's parse and map over the benchmark corpus: 4,096 distinct
//! Darktrace-shaped CEF syslog messages (the sender's corpus, seed 1), one pass per iteration.
//!
//! A single repeated record (`benches/cef.rs`) lets the branch predictor learn every branch;
//! varied records do not, and that is what the daemon sees. The in-run baseline is a
//! `memchr2` pass over the same bytes; quote ratios to it.
//!
//! `SLUICE_BENCH_DISTINCT=N` cycles through only the first N records (same total): N = 1 shows
//! what a single repeated record costs, N = 256 the varied corpus with every record in L2.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::event::{Received, Timestamp};
use sluice::map::{self, Schema};
use sluice::parse::{ParseOptions, Parser};
use sluice_bench::corpus::{Corpus, CorpusSpec, Mix};

fn corpus() -> Vec<Vec<u8>> {
    let spec = CorpusSpec {
        mix: "cef".parse::<Mix>().expect("mix"),
        ..CorpusSpec::default()
    };
    Corpus::generate(&spec)
        .messages
        .into_iter()
        .map(|m| m.bytes)
        .collect()
}

fn benches(c: &mut Criterion) {
    let mut records = corpus();
    if let Ok(n) = std::env::var("SLUICE_BENCH_DISTINCT") {
        let n: usize = n.parse().expect("count");
        let head: Vec<_> = records[..n].to_vec();
        records
            .iter_mut()
            .enumerate()
            .for_each(|(i, r)| *r = head[i % n].clone());
    }
    let received = Received {
        source: "bench",
        peer: None,
        received_at: Timestamp::from_unix_nanos(1_793_491_200_000_000_000),
    };
    let mut g = c.benchmark_group("cef_corpus");
    g.throughput(Throughput::Elements(records.len() as u64));
    g.bench_function("baseline_memchr2_scan", |b| {
        b.iter(|| {
            records
                .iter()
                .map(|r| memchr::memchr2_iter(b'=', b'\\', black_box(r)).count())
                .sum::<usize>()
        })
    });
    let mut parser = Parser::new(ParseOptions::default());
    g.bench_function("parse", |b| {
        b.iter(|| {
            let mut n = 0;
            for r in &records {
                let event = parser.parse(received, black_box(r));
                n += event.raw.len();
                // As the worker does: the next record reuses this one's extension vector.
                let storage = event.into_storage();
                parser.recycle(storage);
            }
            n
        })
    });
    let mut out = Vec::with_capacity(8 << 20);
    for schema in [Schema::Commonsecuritylog, Schema::Raw] {
        g.bench_function(format!("parse_to_{}", schema.as_str()), |b| {
            b.iter(|| {
                out.clear();
                for r in &records {
                    let event = parser.parse(received, black_box(r));
                    map::write(schema, &event, &mut out);
                    out.push(b'\n');
                    let storage = event.into_storage();
                    parser.recycle(storage);
                }
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = cef_corpus_benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4)).warm_up_time(std::time::Duration::from_secs(1));
    targets = benches
}
criterion_main!(cef_corpus_benches);
