//! PLACEHOLDER mapping until the real one lands.

use crate::event::Event;
use crate::map::json_writer::ObjectWriter;

pub fn write(event: &Event<'_>, out: &mut Vec<u8>) {
    let mut o = ObjectWriter::begin(out);
    o.str("message", event.raw);
    o.end();
}
