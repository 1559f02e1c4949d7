//! Syslog header parsing throughput on Darktrace-shaped lines (RFC 5424 and RFC 3164), with a
//! naive baseline in the same run: splitting the same line on spaces into its header tokens.
//!
//! `cargo bench -p sluice-bench --bench syslog_header`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::event::Timestamp;
use sluice::parse::ParseOptions;
use sluice::parse::syslog::parse_header;

const BODY: &str = r#"{"model":{"name":"Device::Attack and Recon Tools","pid":135},"device":{"ip":"10.0.0.5"},"score":0.67}"#;

fn lines() -> [(&'static str, String); 3] {
    [
        (
            "rfc5424_darktrace",
            format!(
                "<165>1 2022-02-12T19:10:23+00:00 example.cloud.darktrace.com darktrace - - - {BODY}"
            ),
        ),
        (
            "rfc3164_darktrace",
            format!("<165>Aug  5 03:34:46 example.cloud.darktrace.com darktrace {BODY}"),
        ),
        (
            "rfc5424_sd_fraction",
            format!(
                "<165>1 2003-10-11T22:14:15.003-05:00 mymachine.example.com evntslog 8710 ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\"] {BODY}"
            ),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let options = ParseOptions::default();
    let received = Timestamp::from_unix_nanos(1_660_000_000_000_000_000);
    let mut group = c.benchmark_group("syslog_header");
    for (name, line) in lines() {
        group.throughput(Throughput::Bytes(line.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let (header, body) = parse_header(black_box(&line), received, &options);
                black_box((
                    header.timestamp,
                    header.hostname,
                    header.app_name,
                    body.len(),
                ))
            })
        });
        // Baseline: only finding the header tokens, no validation or time arithmetic.
        group.bench_function(format!("{name}/baseline_splitn"), |b| {
            b.iter(|| {
                let mut tokens = black_box(&line).splitn(8, ' ');
                let mut n = 0usize;
                for t in tokens.by_ref() {
                    n += t.len();
                }
                black_box(n)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
