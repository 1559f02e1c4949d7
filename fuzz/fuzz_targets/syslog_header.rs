//! Syslog header parser: never panics, every field is a view into the input, structured data
//! decoding terminates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::event::Timestamp;
use sluice::parse::{LocalZone, ParseOptions};
use sluice::parse::syslog::{parse_header, structured_data};

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    // Receive times spread over the i64 range edges and ordinary dates.
    let received = match head % 4 {
        0 => Timestamp::from_unix_nanos(1_700_000_000_000_000_000),
        1 => Timestamp::from_unix_nanos(i64::MAX),
        2 => Timestamp::from_unix_nanos(i64::MIN),
        _ => Timestamp::from_unix_nanos(0),
    };
    // Fixed offsets past the ±24 h that config allows, and a named zone with daylight saving
    // time at the half hour.
    let zone = if head & 0x70 == 0x70 {
        LocalZone::parse("America/St_Johns").expect("in the bundled database")
    } else {
        LocalZone::Fixed(i32::from(head as i8) * 1800)
    };
    let options = ParseOptions {
        zone,
        ..ParseOptions::default()
    };
    let (header, body) = parse_header(text, received, &options);
    let range = text.as_bytes().as_ptr_range();
    let fields = [
        header.hostname,
        header.app_name,
        header.proc_id,
        header.msg_id,
        header.structured_data,
        Some(body),
    ];
    for field in fields.into_iter().flatten() {
        let end = field.as_ptr().wrapping_add(field.len());
        assert!(field.is_empty() || (range.contains(&field.as_ptr()) && end <= range.end));
    }
    if let Some(sd) = header.structured_data {
        for element in structured_data(sd) {
            let _ = element;
        }
    }
    for element in structured_data(text).take(1000) {
        let _ = element;
    }
});
