//! Parsing: raw message bytes → [`Event`]. Never fails: a message that cannot be parsed becomes
//! an event with [`Body::Error`] carrying the error kind and the raw text.

pub(crate) mod bytescan;
pub mod cef;
pub mod json;
pub mod syslog;
pub mod zone;

pub use zone::LocalZone;

use crate::event::{Body, Event, Extension, Received, SyslogFormat, SyslogHeader};

/// Why a message (or its body) could not be parsed. Used as the `kind` label of
/// `sluice_parse_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParseErrorKind {
    /// `CEF:` found but fewer than 7 pipe-terminated header fields.
    CefHeader,
    /// A CEF extension that cannot be tokenised.
    CefExtension,
    /// The body looks like JSON but is not valid JSON.
    JsonSyntax,
    /// JSON nested deeper than the configured limit.
    JsonDepth,
    /// JSON body larger than the configured limit.
    JsonSize,
}

impl ParseErrorKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ParseErrorKind::CefHeader => "cef_header",
            ParseErrorKind::CefExtension => "cef_extension",
            ParseErrorKind::JsonSyntax => "json_syntax",
            ParseErrorKind::JsonDepth => "json_depth",
            ParseErrorKind::JsonSize => "json_size",
        }
    }
}

/// Bounds and defaults applied while parsing. Every bound is explicit.
#[derive(Debug, Clone)]
pub struct ParseOptions {
    /// Maximum JSON nesting depth (objects + arrays).
    pub json_max_depth: usize,
    /// Maximum JSON body size in bytes.
    pub json_max_bytes: usize,
    /// Zone assumed for timestamps written without one (RFC 3164, unzoned RFC 3339).
    pub zone: LocalZone,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            json_max_depth: 128,
            json_max_bytes: 256 * 1024,
            zone: LocalZone::default(),
        }
    }
}

/// Reusable per-worker state so that parsing allocates only to unescape.
#[derive(Default)]
pub struct Scratch {
    /// Holds a lossy UTF-8 copy when the input is not valid UTF-8.
    utf8: String,
    /// simd-json parses in place, so the JSON body is copied here first; also holds the
    /// reusable simd-json buffers and tape.
    json: json::JsonScratch,
    /// CEF fields that held escapes, unescaped.
    cef: String,
    /// The next CEF record's extension vector: empty, handed back by [`Parser::recycle`].
    extensions: Vec<Extension<'static>>,
}

/// What an event owned, given back to its parser with [`Parser::recycle`] so that the next
/// event reuses it instead of allocating.
pub struct Storage {
    extensions: Vec<Extension<'static>>,
}

impl Event<'_> {
    /// Ends the event, keeping its buffers for [`Parser::recycle`].
    pub fn into_storage(self) -> Storage {
        let extensions = match self.body {
            Body::Cef(cef) => erase_lifetime(cef.extensions),
            _ => Vec::new(),
        };
        Storage { extensions }
    }
}

/// `v`, emptied, as a vector of `'static` extensions. Collected in place: an empty vector of a
/// type with the same layout keeps its allocation, so nothing is allocated or copied.
#[expect(
    clippy::unnecessary_filter_map,
    reason = "the closure only changes the element type; `filter` cannot"
)]
fn erase_lifetime(mut v: Vec<Extension<'_>>) -> Vec<Extension<'static>> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

/// A per-core parser: options plus scratch buffers.
pub struct Parser {
    pub options: ParseOptions,
    scratch: Scratch,
}

impl Parser {
    pub fn new(options: ParseOptions) -> Self {
        Parser {
            options,
            scratch: Scratch::default(),
        }
    }

    /// Parses one framed message. The returned event borrows `raw` and this parser's scratch.
    pub fn parse<'a>(&'a mut self, received: Received<'a>, raw: &'a [u8]) -> Event<'a> {
        match simdutf8::basic::from_utf8(raw) {
            Ok(text) => self.parse_text(received, text),
            Err(_) => {
                let Scratch {
                    utf8,
                    json,
                    cef,
                    extensions,
                } = &mut self.scratch;
                utf8.clear();
                utf8.push_str(&String::from_utf8_lossy(raw));
                parse_text(
                    &self.options,
                    json,
                    cef,
                    extensions,
                    received,
                    utf8.as_str(),
                )
            }
        }
    }

    /// Takes back what an event of this parser owned (see [`Event::into_storage`]).
    pub fn recycle(&mut self, storage: Storage) {
        if storage.extensions.capacity() > self.scratch.extensions.capacity() {
            self.scratch.extensions = storage.extensions;
        }
    }

    /// [`Parser::parse`] for a message already known to be UTF-8 (a worker validates a whole
    /// batch of frames in one call rather than one call per frame).
    pub fn parse_text<'a>(&'a mut self, received: Received<'a>, text: &'a str) -> Event<'a> {
        let Scratch {
            json,
            cef,
            extensions,
            ..
        } = &mut self.scratch;
        parse_text(&self.options, json, cef, extensions, received, text)
    }
}

fn parse_text<'a>(
    options: &'a ParseOptions,
    json: &'a mut json::JsonScratch,
    cef: &'a mut String,
    extensions: &mut Vec<Extension<'static>>,
    received: Received<'a>,
    text: &'a str,
) -> Event<'a> {
    let (syslog, body_text) = syslog::parse_header(text, received.received_at, options);
    let body = parse_body(body_text, options, json, cef, extensions);
    Event {
        received,
        zone: &options.zone,
        raw: text,
        syslog,
        body,
    }
}

/// Decides what the body is (JSON, CEF or text) and parses it. A CEF record's extensions go
/// into `extensions`, taken (see [`Parser::recycle`]).
fn parse_body<'a>(
    body: &'a str,
    options: &ParseOptions,
    json_scratch: &'a mut json::JsonScratch,
    cef_scratch: &'a mut String,
    extensions: &mut Vec<Extension<'static>>,
) -> Body<'a> {
    let trimmed = body.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        return match json::parse(trimmed, options, json_scratch) {
            Ok(j) => Body::Json(j),
            Err(e) => Body::Error {
                kind: e.kind(),
                detail: e.to_string(),
                text: body,
            },
        };
    }
    cef_or_text(body, cef_scratch, extensions)
}

/// A body that is not JSON: CEF when it holds `CEF:<digits>|`, else plain text. `scratch`
/// receives CEF fields that held escapes (see [`cef::parse`]).
pub fn parse_cef_or_text<'a>(body: &'a str, scratch: &'a mut String) -> Body<'a> {
    cef_or_text(body, scratch, &mut Vec::new())
}

fn cef_or_text<'a>(
    body: &'a str,
    scratch: &'a mut String,
    extensions: &mut Vec<Extension<'static>>,
) -> Body<'a> {
    match cef::find_cef_start(body) {
        Some(start) => {
            let storage = std::mem::take(extensions);
            match cef::parse_with_storage(&body[start..], &body[..start], scratch, storage) {
                Ok(c) => Body::Cef(c),
                Err(e) => Body::Error {
                    kind: e.kind(),
                    detail: e.to_string(),
                    text: body,
                },
            }
        }
        None => Body::Text(body),
    }
}

/// A header for messages that carry none.
pub fn no_header<'a>() -> SyslogHeader<'a> {
    SyslogHeader {
        format: SyslogFormat::None,
        pri: None,
        version: None,
        timestamp: None,
        hostname: None,
        app_name: None,
        proc_id: None,
        msg_id: None,
        structured_data: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Timestamp;

    fn received() -> Received<'static> {
        Received {
            source: "test",
            peer: None,
            received_at: Timestamp::from_unix_nanos(0),
        }
    }

    #[test]
    fn recycled_extension_vector_is_reused_not_reallocated() {
        let mut parser = Parser::new(ParseOptions::default());
        let event = parser.parse_text(received(), "CEF:0|v|p|1|s|n|5|a=1 b=2");
        let Body::Cef(cef) = &event.body else {
            panic!("not CEF: {event:?}")
        };
        let (ptr, capacity) = (cef.extensions.as_ptr() as usize, cef.extensions.capacity());
        let storage = event.into_storage();
        parser.recycle(storage);
        let event = parser.parse_text(received(), "x CEF:0|v|p|1|s|n|5|c=3");
        let Body::Cef(cef) = &event.body else {
            panic!("not CEF: {event:?}")
        };
        assert_eq!(
            (cef.extensions.as_ptr() as usize, cef.extensions.capacity()),
            (ptr, capacity)
        );
        assert_eq!(cef.get("c"), Some("3"));
        assert_eq!(cef.get("a"), None, "nothing of the previous record is left");
    }

    #[test]
    fn events_that_are_not_cef_leave_the_spare_vector_in_place() {
        let mut parser = Parser::new(ParseOptions::default());
        let event = parser.parse_text(received(), "CEF:0|v|p|1|s|n|5|a=1");
        let storage = event.into_storage();
        parser.recycle(storage);
        let capacity = parser.scratch.extensions.capacity();
        assert!(capacity >= 1);
        for text in ["plain text", "{\"a\":1}"] {
            let event = parser.parse_text(received(), text);
            let storage = event.into_storage();
            parser.recycle(storage);
            assert_eq!(parser.scratch.extensions.capacity(), capacity, "{text}");
        }
        // A record that fails as CEF drops the vector with its error: the next CEF record
        // allocates one again.
        let event = parser.parse_text(received(), "CEF:0|broken");
        assert!(matches!(event.body, Body::Error { .. }));
        let storage = event.into_storage();
        parser.recycle(storage);
        assert_eq!(parser.scratch.extensions.capacity(), 0);
    }
}
