//! Parsing: raw message bytes → [`Event`]. Never fails: a message that cannot be parsed becomes
//! an event with [`Body::Error`] carrying the error kind and the raw text.

mod bytescan;
pub mod cef;
pub mod json;
pub mod syslog;

use crate::event::{Body, Event, Received, SyslogFormat, SyslogHeader};

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
    /// Offset assumed for timestamps written without a zone (RFC 3164), in seconds east of UTC.
    pub default_offset_secs: i32,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            json_max_depth: 128,
            json_max_bytes: 256 * 1024,
            default_offset_secs: 0,
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
        let Scratch { utf8, json, cef } = &mut self.scratch;
        let text: &'a str = match simdutf8::basic::from_utf8(raw) {
            Ok(s) => s,
            Err(_) => {
                utf8.clear();
                utf8.push_str(&String::from_utf8_lossy(raw));
                utf8.as_str()
            }
        };
        let (syslog, body_text) = syslog::parse_header(text, received.received_at, &self.options);
        let body = parse_body(body_text, &self.options, json, cef);
        Event {
            received,
            raw: text,
            syslog,
            body,
        }
    }
}

/// Decides what the body is (JSON, CEF or text) and parses it.
pub fn parse_body<'a>(
    body: &'a str,
    options: &ParseOptions,
    json_scratch: &'a mut json::JsonScratch,
    cef_scratch: &'a mut String,
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
    parse_cef_or_text(body, cef_scratch)
}

/// A body that is not JSON: CEF when it holds `CEF:<digits>|`, else plain text. `scratch`
/// receives CEF fields that held escapes (see [`cef::parse`]).
pub fn parse_cef_or_text<'a>(body: &'a str, scratch: &'a mut String) -> Body<'a> {
    match cef::find_cef_start(body) {
        Some(start) => match cef::parse(&body[start..], &body[..start], scratch) {
            Ok(c) => Body::Cef(c),
            Err(e) => Body::Error {
                kind: e.kind(),
                detail: e.to_string(),
                text: body,
            },
        },
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
