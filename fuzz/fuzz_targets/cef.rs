//! CEF parser: never panics on any text, never marks a value or header field JSON-clean that is
//! not, and stores each key's own hash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::parse::cef;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (prefix, record) = match cef::find_cef_start(text) {
        Some(start) => (&text[..start], &text[start..]),
        None => ("", text),
    };
    let mut scratch = String::new();
    if let Ok(parsed) = cef::parse(record, prefix, &mut scratch) {
        for (n, field) in parsed.header_fields().iter().enumerate() {
            if parsed.header_json_clean & (1 << n) != 0 {
                assert!(
                    !field.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\'),
                    "header field {n}: {field:?}"
                );
            }
        }
        for ext in &parsed.extensions {
            assert!(!ext.key.is_empty());
            assert_eq!(ext.key_hash, cef::key_hash32(ext.key));
            assert_eq!(ext.key_tail, cef::key_tail(ext.key.as_bytes()));
            if ext.json_clean {
                assert!(
                    !ext.value
                        .bytes()
                        .any(|b| b < 0x20 || b == b'"' || b == b'\\'),
                    "{ext:?}"
                );
            }
        }
    }
});
