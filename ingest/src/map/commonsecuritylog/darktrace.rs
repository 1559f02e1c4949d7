//! Darktrace JSON → `commonsecuritylog`. PLACEHOLDER until the real mapping lands.

use crate::event::Event;
use crate::map::json_writer::ObjectWriter;
use crate::parse::json::JsonBody;

pub(super) fn write(event: &Event<'_>, _json: &JsonBody<'_>, out: &mut Vec<u8>) {
    let mut o = ObjectWriter::begin(out);
    o.str("message", event.raw);
    o.end();
}
