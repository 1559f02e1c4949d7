//! `ecs` schema. Dispatch by body; CEF here, Darktrace JSON in `darktrace.rs`.
//! PLACEHOLDER until the real mapping lands.

mod darktrace;

use crate::event::{Body, Event};
use crate::map::json_writer::ObjectWriter;

pub fn write(event: &Event<'_>, out: &mut Vec<u8>) {
    if let Body::Json(json) = &event.body {
        return darktrace::write(event, json, out);
    }
    let mut o = ObjectWriter::begin(out);
    o.str("message", event.raw);
    o.end();
}
