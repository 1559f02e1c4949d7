//! Syslog headers: RFC 5424 and RFC 3164 with real-world variants.
//! PLACEHOLDER until the syslog parser lands: treats the whole message as body.

use crate::event::{SyslogHeader, Timestamp};
use crate::parse::ParseOptions;

/// Splits `text` into its syslog header and the body (MSG) that follows it.
pub fn parse_header<'a>(text: &'a str, _received_at: Timestamp, _options: &ParseOptions) -> (SyslogHeader<'a>, &'a str) {
    (crate::parse::no_header(), text)
}
