//! Per-record cost of the worker's parse and map over the benchmark corpus: 4,096 distinct
//! Darktrace-shaped CEF syslog messages (the sender's corpus, seed 1), one pass per iteration.
//!
//! A single repeated record (`benches/cef.rs`) lets the branch predictor learn every branch;
//! varied records do not, and that is what the daemon sees. The in-run baseline is a
//! `memchr2` pass over the same bytes; quote ratios to it.
//!
//! A second baseline, `baseline_naive_single_pass_to_csl`, is a floor for the whole job rather
//! than a scan: one straightforward pass from record to a CommonSecurityLog-shaped row (split
//! the header at its pipes, each extension at ` key=`, look the key up, copy the value with JSON
//! escaping), with none of the daemon's rules — no syslog header, no CEF unescaping, no
//! anti-forgery rule, no types or timestamps, no UTF-8 check. Its output is not a valid row for
//! every input and is not checked: it only tells how far the real parse → CSL is from the
//! simplest code that does the same amount of work.
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
    g.bench_function("baseline_naive_single_pass_to_csl", |b| {
        b.iter(|| {
            out.clear();
            for r in &records {
                floor::cef_to_csl(black_box(r), &mut out);
            }
            out.len()
        })
    });
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

/// The naive single pass of the module docs.
mod floor {
    use memchr::{memchr_iter, memmem, memrchr};

    /// `,"Column":"` for the keys the corpus uses most; others go to AdditionalExtensions.
    fn column(key: &[u8]) -> Option<&'static [u8]> {
        Some(match key {
            b"src" => b",\"SourceIP\":\"",
            b"dst" => b",\"DestinationIP\":\"",
            b"dvc" => b",\"DeviceAddress\":\"",
            b"dvchost" => b",\"DeviceName\":\"",
            b"dhost" => b",\"DestinationHostName\":\"",
            b"shost" => b",\"SourceHostName\":\"",
            b"msg" => b",\"Message\":\"",
            b"cat" => b",\"DeviceEventCategory\":\"",
            b"externalId" => b",\"ExternalID\":\"",
            b"rt" => b",\"ReceiptTime\":\"",
            b"spt" => b",\"SourcePort\":\"",
            b"dpt" => b",\"DestinationPort\":\"",
            b"proto" => b",\"Protocol\":\"",
            b"cs1" => b",\"DeviceCustomString1\":\"",
            b"cs1Label" => b",\"DeviceCustomString1Label\":\"",
            b"cs2" => b",\"DeviceCustomString2\":\"",
            b"cs2Label" => b",\"DeviceCustomString2Label\":\"",
            b"cs3" => b",\"DeviceCustomString3\":\"",
            b"cs3Label" => b",\"DeviceCustomString3Label\":\"",
            b"cs4" => b",\"DeviceCustomString4\":\"",
            b"cs4Label" => b",\"DeviceCustomString4Label\":\"",
            b"cs5" => b",\"DeviceCustomString5\":\"",
            b"cs5Label" => b",\"DeviceCustomString5Label\":\"",
            b"cn1" => b",\"DeviceCustomNumber1\":\"",
            b"cn1Label" => b",\"DeviceCustomNumber1Label\":\"",
            _ => return None,
        })
    }

    /// Eight bytes at a time: any control byte, `"` or `\`.
    fn needs_escape(v: &[u8]) -> bool {
        const LO: u64 = 0x0101_0101_0101_0101;
        const HI: u64 = 0x8080_8080_8080_8080;
        let has = |w: u64, b: u8| {
            let x = w ^ (LO * u64::from(b));
            x.wrapping_sub(LO) & !x & HI != 0
        };
        let mut chunks = v.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            if (w.wrapping_sub(LO * 0x20) & !w & HI) != 0 || has(w, b'"') || has(w, b'\\') {
                return true;
            }
        }
        chunks
            .remainder()
            .iter()
            .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
    }

    fn write_value(out: &mut Vec<u8>, v: &[u8]) {
        if !needs_escape(v) {
            out.extend_from_slice(v);
            return;
        }
        for &b in v {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                c if c < 0x20 => out.extend_from_slice(b"\\u0000"),
                c => out.push(c),
            }
        }
    }

    pub fn cef_to_csl(line: &[u8], out: &mut Vec<u8>) {
        let Some(start) = memmem::find(line, b"CEF:") else {
            return;
        };
        let record = &line[start..];
        let mut pipes = [0usize; 7];
        for (slot, p) in pipes.iter_mut().zip(memchr_iter(b'|', record)) {
            *slot = p;
        }
        out.extend_from_slice(
            b"{\"TimeGenerated\":\"2026-11-01T00:00:00.000Z\",\"DeviceVendor\":\"",
        );
        const AFTER: [&[u8]; 6] = [
            b"\",\"DeviceProduct\":\"",
            b"\",\"DeviceVersion\":\"",
            b"\",\"DeviceEventClassID\":\"",
            b"\",\"Activity\":\"",
            b"\",\"LogSeverity\":\"",
            b"\"",
        ];
        for (i, after) in AFTER.iter().enumerate() {
            write_value(out, &record[pipes[i] + 1..pipes[i + 1]]);
            out.extend_from_slice(after);
        }
        let ext = &record[pipes[6] + 1..];
        let mut additional = [(0u32, 0u32, 0u32, 0u32); 32];
        let mut n_additional = 0;
        let mut emit =
            |out: &mut Vec<u8>, (ks, ke): (usize, usize), vs: usize, ve: usize| match column(
                &ext[ks..ke],
            ) {
                Some(col) => {
                    out.extend_from_slice(col);
                    write_value(out, &ext[vs..ve]);
                    out.push(b'"');
                }
                None if n_additional < additional.len() => {
                    additional[n_additional] = (ks as u32, ke as u32, vs as u32, ve as u32);
                    n_additional += 1;
                }
                None => {}
            };
        let mut key: Option<(usize, usize)> = None;
        let mut value_start = 0;
        for p in memchr_iter(b'=', ext) {
            if p > 0 && ext[p - 1] == b'\\' {
                continue;
            }
            let key_start =
                memrchr(b' ', &ext[value_start..p]).map_or(value_start, |s| value_start + s + 1);
            if let Some(k) = key {
                emit(
                    out,
                    k,
                    value_start,
                    key_start.saturating_sub(1).max(value_start),
                );
            }
            key = Some((key_start, p));
            value_start = p + 1;
        }
        if let Some(k) = key {
            let end = ext.len() - usize::from(ext.last() == Some(&b'\n'));
            emit(out, k, value_start, end.max(value_start));
        }
        if n_additional > 0 {
            out.extend_from_slice(b",\"AdditionalExtensions\":\"");
            for (i, &(ks, ke, vs, ve)) in additional[..n_additional].iter().enumerate() {
                if i > 0 {
                    out.push(b';');
                }
                out.extend_from_slice(&ext[ks as usize..ke as usize]);
                out.push(b'=');
                write_value(out, &ext[vs as usize..ve as usize]);
            }
            out.push(b'"');
        }
        out.extend_from_slice(b"}\n");
    }
}

criterion_group! {
    name = cef_corpus_benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4)).warm_up_time(std::time::Duration::from_secs(1));
    targets = benches
}
criterion_main!(cef_corpus_benches);
