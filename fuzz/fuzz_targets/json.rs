//! JSON body parser: never panics; whatever it accepts, serde_json accepts too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::parse::{ParseOptions, json};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let options = ParseOptions {
        json_max_depth: 32,
        json_max_bytes: 64 * 1024,
        ..ParseOptions::default()
    };
    let mut scratch = json::JsonScratch::default();
    let accepted = json::parse(text, &options, &mut scratch).is_ok();
    if accepted && text.len() <= options.json_max_bytes {
        assert!(
            serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok(),
            "accepted invalid JSON"
        );
    }
});
