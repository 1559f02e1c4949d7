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
        // serde_json keeps the last of a repeated name; Elasticsearch refuses the document.
        // (`raw` rows are one JSON string.)
        if schema != Schema::Raw
            && let Err(e) = serde_json::from_slice::<UniqueNames>(&out)
        {
            panic!(
                "{} wrote a row with a repeated name ({e}): {}",
                schema.as_str(),
                String::from_utf8_lossy(&out)
            );
        }
    }
});

/// A row whose top-level object names each appear once.
struct UniqueNames;

impl<'de> serde::Deserialize<'de> for UniqueNames {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Names;
        impl<'de> serde::de::Visitor<'de> for Names {
            type Value = UniqueNames;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueNames, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(name) = map.next_key::<String>()? {
                    if !seen.insert(name.clone()) {
                        return Err(serde::de::Error::custom(format!("{name:?} twice")));
                    }
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
                Ok(UniqueNames)
            }
        }
        d.deserialize_map(Names)
    }
}
