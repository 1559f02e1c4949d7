//! Framer: any stream, any framing mode, policy and limit, cut into reads at fuzzer-chosen
//! points, must give exactly the events of the uncut stream, with bounded buffering.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::frame::{FrameEvent, FrameLimits, Framing, OversizePolicy, StreamFramer};

#[derive(Debug, PartialEq, Eq)]
enum Ev {
    Frame(Vec<u8>, bool),
    Rejected(usize),
    Desync(usize),
}

fn run(framer: &mut StreamFramer, chunks: &[&[u8]]) -> Vec<Ev> {
    let max = framer.limits.max_frame_bytes;
    let mut events = Vec::new();
    let mut push = |e: FrameEvent<'_>| {
        events.push(match e {
            FrameEvent::Frame { bytes, truncated } => {
                assert!(
                    !bytes.is_empty() && bytes.len() <= max,
                    "frame of {} bytes, limit {max}",
                    bytes.len()
                );
                Ev::Frame(bytes.to_vec(), truncated)
            }
            FrameEvent::Rejected { len } => Ev::Rejected(len),
            FrameEvent::Desync { skipped } => Ev::Desync(skipped),
        })
    };
    for chunk in chunks {
        framer.feed(chunk, &mut push);
        assert!(framer.buffered_bytes() <= max);
    }
    framer.finish(&mut push);
    events
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let framing = [Framing::Auto, Framing::Lf, Framing::Octet][data[0] as usize % 3];
    let oversize = if data[1] & 1 == 0 {
        OversizePolicy::Truncate
    } else {
        OversizePolicy::Reject
    };
    let max_frame_bytes = 1 + usize::from(u16::from_le_bytes([data[2], data[3]]) % 512);
    let limits = FrameLimits {
        max_frame_bytes,
        oversize,
    };
    let stream = &data[4..];

    // Cut points come from the stream's own bytes so that the fuzzer controls them.
    let mut chunks = Vec::new();
    let mut rest = stream;
    let mut seed = data[1] as usize;
    while !rest.is_empty() {
        let n = (seed % 17).min(rest.len());
        seed = seed.wrapping_mul(31).wrapping_add(rest[0] as usize + 1);
        let (head, tail) = rest.split_at(n);
        chunks.push(head);
        rest = tail;
    }

    let whole = run(&mut StreamFramer::new(framing, limits), &[stream]);
    let mut reused = StreamFramer::new(framing, limits);
    let cut = run(&mut reused, &chunks);
    assert_eq!(whole, cut);
    // finish() resets: the same framer gives the same events again.
    assert_eq!(run(&mut reused, &[stream]), whole);
});
