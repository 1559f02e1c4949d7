//! CEF parse and CEF → CommonSecurityLog / ECS JSON on Darktrace-shaped CEF (~800 B), with a
//! memchr-only scan of the same bytes as the in-run baseline. Compare medians as ratios.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::event::{Body, Event, Received, Timestamp};
use sluice::map::{self, Schema};
use sluice::parse::{LocalZone, cef};

/// Built from the public Darktrace sample's shape (word severity, space after the last header
/// pipe, escaped `\=`, dotted/URL values, values with spaces) and the documented key order.
const DARKTRACE_CEF: &str = concat!(
    "CEF:0|Darktrace|DCIP|6.1.4|537|Antigena/Network/Compliance/Antigena RDP Block|Low| ",
    "externalId=1462565 dvc=10.140.1.12 dvchost=dt-master-01.corp.example.com dst=10.12.48.117 ",
    "dhost=ws-finance-117.corp.example.com darktraceUrl=https://dt-master-01.corp.example.com/#modelbreach/1462565 ",
    "rt=1709633472000 src=10.12.48.22 shost=jump-02.corp.example.com spt=51544 dpt=3389 proto=TCP act=Blocked ",
    "msg=Antigena blocked RDP from jump-02 to ws-finance-117 after an anomalous connection pattern, score 0.87 ",
    "cs1=Compliance::Antigena RDP Block cs1Label=Model Name ",
    "cs2=https://dt-master-01.corp.example.com/#modelbreach/1462565?filter\\=rdp&window\\=24h cs2Label=Breach Link ",
    "cn1=87 cn1Label=Score dtz=Europe/London cat=Compliance ",
    "aid=3mAvC02UBABCAa72iNm4jZA\\=\\= deviceExternalId=dt-master-01"
);

fn event<'a>(body: &'a str, scratch: &'a mut String) -> Event<'a> {
    let start = cef::find_cef_start(body).expect("CEF");
    let parsed = cef::parse(&body[start..], &body[..start], scratch).expect("valid CEF");
    let mut syslog = sluice::parse::no_header();
    syslog.hostname = Some("dt-master-01");
    Event {
        received: Received {
            source: "bench",
            peer: None,
            received_at: Timestamp::from_unix_nanos(1_709_633_472_000_000_000),
        },
        zone: &LocalZone::Fixed(0),
        raw: body,
        syslog,
        body: Body::Cef(parsed),
    }
}

fn benches(c: &mut Criterion) {
    let body = DARKTRACE_CEF;
    let bytes = body.len() as u64;
    let mut g = c.benchmark_group("cef");
    g.throughput(Throughput::Bytes(bytes));

    // Baseline: the least any tokenizer must do, one memchr pass over the same bytes.
    g.bench_function("baseline_memchr2_scan", |b| {
        b.iter(|| memchr::memchr2_iter(b'=', b'\\', black_box(body).as_bytes()).count())
    });
    let mut scratch = String::new();
    g.bench_function("parse", |b| {
        b.iter(|| {
            let s = black_box(body);
            let start = cef::find_cef_start(s).unwrap();
            let c = cef::parse(&s[start..], &s[..start], &mut scratch).unwrap();
            black_box(c.extensions.len())
        })
    });
    let mut out = Vec::with_capacity(4096);
    g.bench_function("parse_to_commonsecuritylog_json", |b| {
        b.iter(|| {
            out.clear();
            let e = event(black_box(body), &mut scratch);
            map::write(Schema::Commonsecuritylog, &e, &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("parse_to_ecs_json", |b| {
        b.iter(|| {
            out.clear();
            let e = event(black_box(body), &mut scratch);
            map::write(Schema::Ecs, &e, &mut out);
            black_box(out.len())
        })
    });
    let mut parsed_scratch = String::new();
    let parsed = event(body, &mut parsed_scratch);
    g.bench_function("commonsecuritylog_json_only", |b| {
        b.iter(|| {
            out.clear();
            map::write(Schema::Commonsecuritylog, black_box(&parsed), &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group! {
    name = cef_benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = benches
}
criterion_main!(cef_benches);
