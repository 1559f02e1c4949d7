//! `raw`: the original message, untouched, as one JSON string (what Sekoia's intake wants:
//! it parses events server-side).

use crate::event::Event;
use crate::map::json_writer::write_str;

pub fn write(event: &Event<'_>, out: &mut Vec<u8>) {
    write_str(out, event.raw);
}
