//! Sources that are not socket readers (those are in `net/`): they fetch events themselves and
//! hand them to the parser workers as [`crate::net::FrameBatch`]es, like a reader does.

pub mod darktrace_api;
