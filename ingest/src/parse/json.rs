//! JSON bodies (simd-json) and Darktrace event-type recognition.
//! PLACEHOLDER until the JSON parser lands.

use crate::event::EventKind;
use crate::parse::{ParseErrorKind, ParseOptions};

#[derive(Debug)]
pub struct JsonBody<'a> {
    pub kind: EventKind,
    pub value: simd_json::BorrowedValue<'a>,
}

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("invalid JSON: {0}")]
    Syntax(String),
}

impl JsonError {
    pub fn kind(&self) -> ParseErrorKind {
        match self {
            JsonError::Syntax(_) => ParseErrorKind::JsonSyntax,
        }
    }
}

pub fn parse<'a>(text: &'a str, _options: &ParseOptions, scratch: &'a mut Vec<u8>) -> Result<JsonBody<'a>, JsonError> {
    scratch.clear();
    scratch.extend_from_slice(text.as_bytes());
    let value = simd_json::to_borrowed_value(scratch).map_err(|e| JsonError::Syntax(e.to_string()))?;
    Ok(JsonBody { kind: EventKind::Json, value })
}
