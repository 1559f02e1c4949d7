//! Whole message path: parse any bytes, then map to every schema; each output must be one
//! valid JSON value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::event::{Received, Timestamp};
use sluice::map::{self, Schema};
use sluice::parse::{ParseOptions, Parser};

fuzz_target!(|data: &[u8]| {
    let mut parser = Parser::new(ParseOptions::default());
    let received = Received {
        source: "fuzz",
        peer: None,
        received_at: Timestamp::from_unix_nanos(1_700_000_000_000_000_000),
    };
    let event = parser.parse(received, data);
    let mut out = Vec::new();
    for schema in [
        Schema::Sluice,
        Schema::Commonsecuritylog,
        Schema::Ecs,
        Schema::Raw,
    ] {
        out.clear();
        map::write(schema, &event, &mut out);
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&out) {
            panic!(
                "{} wrote invalid JSON ({e}): {}",
                schema.as_str(),
                String::from_utf8_lossy(&out)
            );
        }
    }
});
