//! CEF (ArcSight Common Event Format). PLACEHOLDER until the CEF parser lands.

use crate::event::Cef;
use crate::parse::ParseErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum CefError {
    #[error("CEF header has {0} of the 7 pipe-terminated fields")]
    IncompleteHeader(usize),
}

impl CefError {
    pub fn kind(&self) -> ParseErrorKind {
        match self {
            CefError::IncompleteHeader(_) => ParseErrorKind::CefHeader,
        }
    }
}

/// Byte offset of `CEF:<digits>|` in `body`, if any.
pub fn find_cef_start(body: &str) -> Option<usize> {
    body.find("CEF:")
}

/// Parses a record starting at `CEF:`; `prefix` is the text that preceded it.
pub fn parse<'a>(_record: &'a str, _prefix: &'a str) -> Result<Cef<'a>, CefError> {
    Err(CefError::IncompleteHeader(0))
}
