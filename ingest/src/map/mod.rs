//! Schema mappings: one [`Event`] → one JSON object in the schema a sink wants.
//! Mappers write straight into an output buffer (no intermediate value tree).

pub mod commonsecuritylog;
pub mod ecs;
pub mod json_writer;
pub mod raw;
mod slots;
pub mod sluice;

#[cfg(test)]
mod golden;

use crate::event::Event;

/// Output schema of a sink (`schema = "..."` in `[sinks.NAME]`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Schema {
    /// Native: syslog header, CEF header + extensions or the JSON object, receive metadata.
    Sluice,
    /// Microsoft Sentinel CommonSecurityLog row.
    Commonsecuritylog,
    /// Elastic Common Schema.
    Ecs,
    /// The original message, untouched, as a JSON string.
    Raw,
}

impl Schema {
    pub fn as_str(&self) -> &'static str {
        match self {
            Schema::Sluice => "sluice",
            Schema::Commonsecuritylog => "commonsecuritylog",
            Schema::Ecs => "ecs",
            Schema::Raw => "raw",
        }
    }
}

/// The event's own time in Unix milliseconds, as the `ecs` schema's `@timestamp` gives it: CEF
/// `rt` (in `dtz`), a Darktrace record's time, else the syslog timestamp, else the receive
/// time. For envelopes that carry the time beside a row of any schema (Splunk HEC `time`).
pub fn event_time_millis(event: &Event<'_>) -> i64 {
    ecs::event_time_millis(event)
}

/// Appends `event` in `schema` to `out` as one JSON value (no trailing newline).
pub fn write(schema: Schema, event: &Event<'_>, out: &mut Vec<u8>) {
    match schema {
        Schema::Sluice => sluice::write(event, out),
        Schema::Commonsecuritylog => commonsecuritylog::write(event, out),
        Schema::Ecs => ecs::write(event, out),
        Schema::Raw => raw::write(event, out),
    }
}

/// `line` parsed as a worker parses it, received from `peer`, and mapped to `schema`.
#[cfg(test)]
pub(crate) fn mapped_from(schema: Schema, line: &str, peer: Option<&str>) -> serde_json::Value {
    let mut parser = crate::parse::Parser::new(Default::default());
    let received = crate::event::Received {
        source: "t",
        peer: peer.map(|p| p.parse().expect("socket address")),
        received_at: crate::event::Timestamp::from_unix_nanos(1_700_000_000_123_000_000),
    };
    let mut out = Vec::new();
    write(schema, &parser.parse(received, line.as_bytes()), &mut out);
    serde_json::from_slice(&out).expect("the mapped event is JSON")
}
