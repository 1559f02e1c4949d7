//! The internal event: one received syslog message, parsed, borrowing from the receive buffer.
//!
//! Every parser returns views into the message text, or for text that held escapes into the
//! parser's reusable scratch buffers.

use std::net::{IpAddr, SocketAddr};

use crate::parse::LocalZone;

/// A point in time: nanoseconds since the Unix epoch (UTC) plus the offset it was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub unix_nanos: i64,
    /// Offset from UTC in seconds as written by the sender; `None` when the sender gave none
    /// (RFC 3164) and the receiver's zone (UTC by default) was assumed.
    pub offset_secs: Option<i32>,
}

impl Timestamp {
    pub fn from_unix_nanos(unix_nanos: i64) -> Self {
        Timestamp {
            unix_nanos,
            offset_secs: Some(0),
        }
    }

    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self::from_unix_nanos(d.as_nanos() as i64)
    }

    pub fn unix_millis(&self) -> i64 {
        self.unix_nanos.div_euclid(1_000_000)
    }

    pub fn unix_secs(&self) -> i64 {
        self.unix_nanos.div_euclid(1_000_000_000)
    }
}

/// What the reader knows about a message before it is parsed.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// Name of the configured source (`[sources.NAME]`).
    pub source: &'a str,
    pub peer: Option<SocketAddr>,
    pub received_at: Timestamp,
}

impl Received<'_> {
    /// The sender's IP address as a host name stands in for a message that names none (an
    /// IPv4 sender seen by a dual-stack socket as `::ffff:a.b.c.d` is shown as IPv4).
    pub fn sender_ip(&self) -> Option<IpAddr> {
        self.peer.map(|p| p.ip().to_canonical())
    }
}

/// Syslog priority, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pri {
    pub facility: u8,
    pub severity: u8,
}

impl Pri {
    pub fn from_value(value: u8) -> Option<Pri> {
        (value <= 191).then_some(Pri {
            facility: value >> 3,
            severity: value & 7,
        })
    }
    pub fn value(&self) -> u8 {
        (self.facility << 3) | self.severity
    }
    pub fn facility_name(&self) -> &'static str {
        const NAMES: [&str; 24] = [
            "kern",
            "user",
            "mail",
            "daemon",
            "auth",
            "syslog",
            "lpr",
            "news",
            "uucp",
            "cron",
            "authpriv",
            "ftp",
            "ntp",
            "security",
            "console",
            "solaris-cron",
            "local0",
            "local1",
            "local2",
            "local3",
            "local4",
            "local5",
            "local6",
            "local7",
        ];
        NAMES
            .get(self.facility as usize)
            .copied()
            .unwrap_or("unknown")
    }
    pub fn severity_name(&self) -> &'static str {
        const NAMES: [&str; 8] = [
            "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
        ];
        NAMES[(self.severity & 7) as usize]
    }

    /// The severity's name as ECS writes `log.syslog.severity.name` (`Error`, `Notice`): RFC
    /// 5424's words, as in ECS's own example and Elastic's syslog inputs.
    pub fn severity_title(&self) -> &'static str {
        const NAMES: [&str; 8] = [
            "Emergency",
            "Alert",
            "Critical",
            "Error",
            "Warning",
            "Notice",
            "Informational",
            "Debug",
        ];
        NAMES[(self.severity & 7) as usize]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogFormat {
    Rfc5424,
    Rfc3164,
    /// No recognisable header: the whole message is the body.
    None,
}

/// The syslog header. RFC 5424 NIL (`-`) fields are `None`.
#[derive(Debug, Clone)]
pub struct SyslogHeader<'a> {
    pub format: SyslogFormat,
    pub pri: Option<Pri>,
    pub version: Option<u8>,
    pub timestamp: Option<Timestamp>,
    pub hostname: Option<&'a str>,
    /// RFC 5424 APP-NAME, or the RFC 3164 TAG.
    pub app_name: Option<&'a str>,
    pub proc_id: Option<&'a str>,
    pub msg_id: Option<&'a str>,
    /// Raw RFC 5424 STRUCTURED-DATA text (escapes intact), `None` when NIL.
    /// Decode with [`crate::parse::syslog::structured_data`].
    pub structured_data: Option<&'a str>,
}

/// One CEF extension `key=value`, value unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension<'a> {
    pub key: &'a str,
    pub value: &'a str,
    /// `value` holds no byte that JSON escapes (`"`, `\`, control): writers may copy it as is.
    /// `false` only means "not known", so it is always safe.
    pub json_clean: bool,
    /// [`crate::parse::cef::key_hash32`] of `key`, computed while tokenising: mappers look the
    /// key up in their tables without hashing it again.
    pub key_hash: u32,
    /// [`crate::parse::cef::key_tail`] of `key`: with `key_hash`, what a table lookup
    /// compares.
    pub key_tail: u128,
}

/// A parsed CEF record. Header fields are unescaped (`\|`, `\\`).
#[derive(Debug, Clone)]
pub struct Cef<'a> {
    /// Any text before `CEF:` that is not part of the syslog header.
    pub prefix: &'a str,
    pub version: &'a str,
    pub device_vendor: &'a str,
    pub device_product: &'a str,
    pub device_version: &'a str,
    pub signature_id: &'a str,
    pub name: &'a str,
    pub severity: &'a str,
    /// Bit `n` set when header field `n` of [`Cef::header_fields`] holds no byte that JSON
    /// escapes: writers may copy it as is. Unset only means "not known".
    pub header_json_clean: u8,
    /// In message order. Keys are unique: a repeated key is not a field boundary, so the first
    /// occurrence is kept (see docs/cef.md, forged fields).
    pub extensions: Vec<Extension<'a>>,
}

impl<'a> Cef<'a> {
    /// [`Cef::header_json_clean`] bits.
    pub const VENDOR_CLEAN: u8 = 1;
    pub const PRODUCT_CLEAN: u8 = 1 << 1;
    pub const VERSION_CLEAN: u8 = 1 << 2;
    pub const SIGNATURE_ID_CLEAN: u8 = 1 << 3;
    pub const NAME_CLEAN: u8 = 1 << 4;
    pub const SEVERITY_CLEAN: u8 = 1 << 5;

    /// The six header fields after the version, in message order (the order of the
    /// [`Cef::header_json_clean`] bits).
    pub fn header_fields(&self) -> [&'a str; 6] {
        [
            self.device_vendor,
            self.device_product,
            self.device_version,
            self.signature_id,
            self.name,
            self.severity,
        ]
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value)
    }
}

/// What a JSON or CEF body is, as far as the SIEM mappings care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// CEF from any vendor.
    Cef,
    DarktraceModelBreach,
    DarktraceAiAnalyst,
    DarktraceSystemStatus,
    DarktraceAudit,
    /// Valid JSON that is not a recognised Darktrace event.
    Json,
    /// Plain text body (neither CEF nor JSON).
    Text,
    /// The message could not be parsed; the raw text is kept.
    Error,
}

impl EventKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Cef => "cef",
            EventKind::DarktraceModelBreach => "darktrace_model_breach",
            EventKind::DarktraceAiAnalyst => "darktrace_ai_analyst",
            EventKind::DarktraceSystemStatus => "darktrace_system_status",
            EventKind::DarktraceAudit => "darktrace_audit",
            EventKind::Json => "json",
            EventKind::Text => "text",
            EventKind::Error => "error",
        }
    }
}

/// The message body after the syslog header.
// The CEF variant is large (inline extension storage) on purpose: an event lives on the stack
// for one message, and boxing it would put an allocation on the hot path of every message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Body<'a> {
    Cef(Cef<'a>),
    Json(crate::parse::json::JsonBody<'a>),
    Text(&'a str),
    /// Parsing failed; `text` is the unparsed body.
    Error {
        kind: crate::parse::ParseErrorKind,
        detail: String,
        text: &'a str,
    },
}

/// A fully parsed message.
#[derive(Debug)]
pub struct Event<'a> {
    pub received: Received<'a>,
    /// Zone of times the sender wrote without one: its source's `timezone`. The syslog header
    /// is already placed with it; CEF date values are placed with it when they name no zone
    /// and the record has no `dtz`.
    pub zone: &'a LocalZone,
    /// The whole message as received (after framing), as UTF-8 (invalid bytes replaced).
    pub raw: &'a str,
    pub syslog: SyslogHeader<'a>,
    pub body: Body<'a>,
}

impl Event<'_> {
    pub fn kind(&self) -> EventKind {
        match &self.body {
            Body::Cef(_) => EventKind::Cef,
            Body::Json(j) => j.kind,
            Body::Text(_) => EventKind::Text,
            Body::Error { .. } => EventKind::Error,
        }
    }
}
