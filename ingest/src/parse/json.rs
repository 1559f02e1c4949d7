//! JSON bodies and Darktrace event-type recognition.
//!
//! Parsing uses simd-json's tape: one flat `Vec<Node>` per document, no value tree and no
//! per-key allocation. Every buffer (the padded input copy, simd-json's stage-1/2 buffers and
//! the tape itself) lives in a per-worker [`JsonScratch`] and is reused from one message to the
//! next, so a steady stream of similar messages parses without allocating.
//!
//! simd-json's stage 2 walks the document with an explicit stack and enforces the depth limit,
//! and everything here that walks a tape ([`JsonRef::write_json`]) is iterative too, so deeply
//! nested input can never overflow the thread's stack.
//!
//! # Darktrace event types
//! Decided from the top-level keys of the object, in this order:
//! 1. `log_type` (added by Sekoia's Darktrace connector): contains `breach` → model breach,
//!    `analyst`/`aia`/`incident` → AI Analyst, `status` → system status, `audit` → audit.
//! 2. AI Analyst incident event: `aiaScore`, `incidentEventUrl`, `groupScore`, or
//!    `summariser` together with `periods`.
//! 3. Model breach: `pbid` together with an *object* `model` (current `{name,pid,…}` and the
//!    legacy `{then,now}` form) or `triggeredComponents`, or `breachUrl`.
//!    (Antigena state-change events carry `pbid` but `model` is a string: they stay generic JSON.)
//! 4. System status alert: `alert_name`, `priority_level` or `last_updated_status`.
//! 5. Audit event (`darktrace_audit` syslog tag): `endpoint` together with `method`.
//!
//! Anything else, and any top-level array (an API response page), is [`EventKind::Json`].

use simd_json::{Buffers, Node, StaticNode, Tape};

use crate::event::{EventKind, Timestamp};
use crate::parse::{ParseErrorKind, ParseOptions};

/// Reusable buffers for [`parse`]; one per worker.
pub struct JsonScratch {
    /// Copy of the body followed by [`simd_json::INPUT_PADDING`] bytes: simd-json unescapes
    /// strings in place and reads ahead in 64-byte blocks.
    input: Vec<u8>,
    buffers: Buffers,
    /// The depth limit `buffers` was built with (simd-json fixes it at construction).
    buffers_depth: usize,
    /// The tape allocation, parked here between messages (empty, so no borrow is held).
    tape: Vec<Node<'static>>,
}

impl Default for JsonScratch {
    fn default() -> Self {
        JsonScratch {
            input: Vec::new(),
            buffers: Buffers::with_max_depth(0, ParseOptions::default().json_max_depth),
            buffers_depth: ParseOptions::default().json_max_depth,
            tape: Vec::new(),
        }
    }
}

impl std::fmt::Debug for JsonScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonScratch")
            .field("input_capacity", &self.input.capacity())
            .finish()
    }
}

/// A parsed JSON body. Borrows the scratch it was parsed into and gives its tape allocation
/// back when dropped.
pub struct JsonBody<'a> {
    pub kind: EventKind,
    tape: Vec<Node<'a>>,
    home: Option<&'a mut Vec<Node<'static>>>,
}

impl<'a> JsonBody<'a> {
    /// The document's root value.
    pub fn root(&self) -> JsonRef<'_, 'a> {
        JsonRef(&self.tape)
    }
}

impl Drop for JsonBody<'_> {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            // `reset` clears the tape, after which no borrow of the input remains in it.
            *home = Tape(std::mem::take(&mut self.tape)).reset().0;
        }
    }
}

impl std::fmt::Debug for JsonBody<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonBody")
            .field("kind", &self.kind)
            .field("nodes", &self.tape.len())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("invalid JSON at byte {offset}: {message}")]
    Syntax { offset: usize, message: String },
    #[error("JSON nested deeper than {limit}")]
    Depth { limit: usize },
    #[error("JSON body of {len} bytes exceeds the limit of {limit}")]
    Size { len: usize, limit: usize },
}

impl JsonError {
    pub fn kind(&self) -> ParseErrorKind {
        match self {
            JsonError::Syntax { .. } => ParseErrorKind::JsonSyntax,
            JsonError::Depth { .. } => ParseErrorKind::JsonDepth,
            JsonError::Size { .. } => ParseErrorKind::JsonSize,
        }
    }
}

/// Parses `text` as one JSON document and recognises its Darktrace event type.
pub fn parse<'a>(
    text: &'a str,
    options: &ParseOptions,
    scratch: &'a mut JsonScratch,
) -> Result<JsonBody<'a>, JsonError> {
    if text.len() > options.json_max_bytes {
        return Err(JsonError::Size {
            len: text.len(),
            limit: options.json_max_bytes,
        });
    }
    let JsonScratch {
        input,
        buffers,
        buffers_depth,
        tape: home,
    } = scratch;
    if *buffers_depth != options.json_max_depth {
        *buffers = Buffers::with_max_depth(text.len(), options.json_max_depth);
        *buffers_depth = options.json_max_depth;
    }
    input.clear();
    input.reserve(text.len() + simd_json::INPUT_PADDING);
    input.extend_from_slice(text.as_bytes());
    input.resize(text.len() + simd_json::INPUT_PADDING, 0);

    let mut tape: Tape<'a> = Tape(std::mem::take(home)).reset();
    if let Err(e) = simd_json::fill_tape_padded(input, text.len(), buffers, &mut tape) {
        *home = tape.reset().0;
        return Err(match e.error() {
            simd_json::ErrorType::DepthLimitExceeded => JsonError::Depth {
                limit: options.json_max_depth,
            },
            _ => JsonError::Syntax {
                offset: e.index(),
                message: format!("{:?}", e.error()),
            },
        });
    }
    let kind = classify(JsonRef(&tape.0));
    Ok(JsonBody {
        kind,
        tape: tape.0,
        home: Some(home),
    })
}

/// Recognises the Darktrace event type from the top-level keys (see the module docs).
pub fn classify(root: JsonRef<'_, '_>) -> EventKind {
    if !root.is_object() {
        return EventKind::Json;
    }
    let mut aia = false;
    let mut pbid = false;
    let mut model_object = false;
    let mut components = false;
    let mut breach_url = false;
    let mut summariser = false;
    let mut periods = false;
    let mut system = false;
    let mut endpoint = false;
    let mut method = false;
    for (key, value) in root.entries() {
        match key {
            "log_type" => {
                if let Some(kind) = value.str().and_then(kind_from_log_type) {
                    return kind;
                }
            }
            "aiaScore" | "incidentEventUrl" | "groupScore" => aia = true,
            "summariser" => summariser = true,
            "periods" => periods = true,
            "pbid" => pbid = true,
            "model" => model_object = value.is_object(),
            "triggeredComponents" => components = true,
            "breachUrl" => breach_url = true,
            "alert_name" | "priority_level" | "last_updated_status" => system = true,
            "endpoint" => endpoint = true,
            "method" => method = true,
            _ => {}
        }
    }
    if aia || (summariser && periods) {
        EventKind::DarktraceAiAnalyst
    } else if (pbid && (model_object || components)) || breach_url {
        EventKind::DarktraceModelBreach
    } else if system {
        EventKind::DarktraceSystemStatus
    } else if endpoint && method {
        EventKind::DarktraceAudit
    } else {
        EventKind::Json
    }
}

fn kind_from_log_type(log_type: &str) -> Option<EventKind> {
    let l = |word: &str| contains_ignore_ascii_case(log_type, word);
    if l("breach") {
        Some(EventKind::DarktraceModelBreach)
    } else if l("analyst") || l("aia") || l("incident") {
        Some(EventKind::DarktraceAiAnalyst)
    } else if l("status") {
        Some(EventKind::DarktraceSystemStatus)
    } else if l("audit") {
        Some(EventKind::DarktraceAudit)
    } else {
        None
    }
}

/// `haystack.to_ascii_lowercase().contains(word)` for a lower-case ASCII `word`, without
/// allocating the lower-cased copy.
pub fn contains_ignore_ascii_case(haystack: &str, word: &str) -> bool {
    haystack
        .as_bytes()
        .windows(word.len().max(1))
        .any(|w| w.eq_ignore_ascii_case(word.as_bytes()))
        || word.is_empty()
}

/// The model definition of a model breach: `model{…}`, or in the legacy form
/// `model{then{…},now{…}}` the current definition (`now`, else `then`).
pub fn darktrace_model<'t, 'a>(root: JsonRef<'t, 'a>) -> Option<JsonRef<'t, 'a>> {
    let model = root.get("model")?;
    for version in ["now", "then"] {
        if let Some(m) = model.get(version).filter(JsonRef::is_object) {
            return Some(m);
        }
    }
    model.is_object().then_some(model)
}

/// When the event happened, from the field each Darktrace event type carries it in.
pub fn darktrace_event_time(kind: EventKind, root: JsonRef<'_, '_>) -> Option<Timestamp> {
    let field = |k: &str| root.get(k).and_then(|v| v.timestamp());
    match kind {
        EventKind::DarktraceModelBreach => field("time").or_else(|| field("creationTime")),
        EventKind::DarktraceAiAnalyst => field("createdAt"),
        EventKind::DarktraceSystemStatus => {
            field("last_updated").or_else(|| field("last_updated_status"))
        }
        EventKind::DarktraceAudit => field("time").or_else(|| field("timestamp")),
        _ => None,
    }
}

/// The connection a model breach fired on, from the values its triggered filters displayed.
#[derive(Debug, Default, Clone, Copy)]
pub struct TriggeredConnection<'t, 'a> {
    pub destination_ip: Option<JsonRef<'t, 'a>>,
    pub destination_host: Option<JsonRef<'t, 'a>>,
    pub destination_port: Option<JsonRef<'t, 'a>>,
    /// A metric label mentions connections (Elastic adds `network`/`connection` for these).
    pub connection_metric: bool,
}

pub fn darktrace_triggered_connection<'t, 'a>(
    root: JsonRef<'t, 'a>,
) -> TriggeredConnection<'t, 'a> {
    let mut c = TriggeredConnection::default();
    let Some(components) = root.get("triggeredComponents") else {
        return c;
    };
    for component in components.items() {
        if let Some(label) = component.path(&["metric", "label"]).and_then(|l| l.str())
            && contains_ignore_ascii_case(label, "connection")
        {
            c.connection_metric = true;
        }
        let Some(filters) = component.get("triggeredFilters") else {
            continue;
        };
        for filter in filters.items() {
            let Some(value) = filter.path(&["trigger", "value"]) else {
                continue;
            };
            let slot = match filter.get("filterType").and_then(|t| t.str()) {
                Some("Destination IP") => &mut c.destination_ip,
                Some("Connection hostname") => &mut c.destination_host,
                Some("Destination port") => &mut c.destination_port,
                _ => continue,
            };
            if slot.is_none() && !value.is_null() {
                *slot = Some(value);
            }
        }
    }
    c
}

/// A view of one value on a tape: the slice starts at the value's node and covers its span.
#[derive(Clone, Copy, Debug)]
pub struct JsonRef<'t, 'a>(&'t [Node<'a>]);

/// Number of tape nodes a value occupies, its own node included.
#[inline]
fn span(node: &Node<'_>) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

impl<'t, 'a> JsonRef<'t, 'a> {
    fn node(&self) -> Option<&'t Node<'a>> {
        self.0.first()
    }

    pub fn is_object(&self) -> bool {
        matches!(self.node(), Some(Node::Object { .. }))
    }

    pub fn is_array(&self) -> bool {
        matches!(self.node(), Some(Node::Array { .. }))
    }

    pub fn is_null(&self) -> bool {
        matches!(self.node(), None | Some(Node::Static(StaticNode::Null)))
    }

    /// The member `key` of an object (the first one when a key repeats).
    pub fn get(&self, key: &str) -> Option<JsonRef<'t, 'a>> {
        self.entries().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Follows a path of object keys.
    pub fn path(&self, keys: &[&str]) -> Option<JsonRef<'t, 'a>> {
        let mut v = *self;
        for k in keys {
            v = v.get(k)?;
        }
        Some(v)
    }

    pub fn str(&self) -> Option<&'a str> {
        match self.node()? {
            Node::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn bool(&self) -> Option<bool> {
        match self.node()? {
            Node::Static(StaticNode::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    /// An integral number (floats with no fraction included).
    pub fn i64(&self) -> Option<i64> {
        match self.node()? {
            Node::Static(StaticNode::I64(n)) => Some(*n),
            Node::Static(StaticNode::U64(n)) => i64::try_from(*n).ok(),
            Node::Static(StaticNode::F64(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                Some(*f as i64)
            }
            _ => None,
        }
    }

    /// Any number, or a string holding one: Darktrace sends e.g. `groupScore` both ways.
    pub fn f64_lenient(&self) -> Option<f64> {
        match self.node()? {
            Node::Static(StaticNode::I64(n)) => Some(*n as f64),
            Node::Static(StaticNode::U64(n)) => Some(*n as f64),
            Node::Static(StaticNode::F64(f)) => Some(*f),
            Node::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
            _ => None,
        }
    }

    /// A Darktrace time in any of the forms it sends: epoch milliseconds, epoch seconds
    /// (integer or float, e.g. `1658110810.556194`), either as a number or a numeric string, a
    /// zone-less `"2022-07-11 11:47:51"` (taken as UTC, offset unknown) or RFC 3339.
    /// Numbers from 10^11 up are milliseconds (10^11 s is the year 5138).
    pub fn timestamp(&self) -> Option<Timestamp> {
        let epoch = |n: f64| -> Option<Timestamp> {
            if !n.is_finite() || n < 0.0 {
                return None;
            }
            // Microsecond resolution: an f64 holds ~16 digits, so nanoseconds would be noise.
            let micros = if n >= 1.0e11 { n * 1.0e3 } else { n * 1.0e6 };
            (micros < 9.0e15).then(|| Timestamp::from_unix_nanos(micros.round() as i64 * 1000))
        };
        match self.node()? {
            Node::Static(StaticNode::I64(n)) if *n >= 100_000_000_000 => {
                Some(Timestamp::from_unix_nanos(n.checked_mul(1_000_000)?))
            }
            Node::Static(StaticNode::I64(n)) if *n >= 0 => {
                Some(Timestamp::from_unix_nanos(n.checked_mul(1_000_000_000)?))
            }
            Node::Static(StaticNode::U64(n)) => epoch(*n as f64),
            Node::Static(StaticNode::F64(f)) => epoch(*f),
            Node::String(s) => {
                let s = s.trim();
                if let Ok(n) = s.parse::<f64>() {
                    return epoch(n);
                }
                if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(s) {
                    return Some(Timestamp {
                        unix_nanos: dt.timestamp_nanos_opt()?,
                        offset_secs: Some(dt.offset().local_minus_utc()),
                    });
                }
                let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
                    .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
                    .ok()?;
                Some(Timestamp {
                    unix_nanos: naive.and_utc().timestamp_nanos_opt()?,
                    offset_secs: None,
                })
            }
            _ => None,
        }
    }

    /// Members of an object, in document order; empty for anything else.
    pub fn entries(&self) -> Entries<'t, 'a> {
        match self.node() {
            Some(Node::Object { len, .. }) => Entries {
                rest: &self.0[1..],
                left: *len,
            },
            _ => Entries { rest: &[], left: 0 },
        }
    }

    /// Elements of an array; empty for anything else.
    pub fn items(&self) -> Items<'t, 'a> {
        match self.node() {
            Some(Node::Array { len, .. }) => Items {
                rest: &self.0[1..],
                left: *len,
            },
            _ => Items { rest: &[], left: 0 },
        }
    }

    /// Appends this value as compact JSON.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        write_nodes(self.0, out, KeyStyle::AsIs);
    }

    /// Appends this value as compact JSON with object keys in `snake_case` (`aiaScore` →
    /// `aia_score`), the way Elastic's Darktrace integration names its fields.
    pub fn write_json_snake_keys(&self, out: &mut Vec<u8>) {
        write_nodes(self.0, out, KeyStyle::Snake);
    }

    /// Appends a scalar as the text a `key=value` list wants: strings as they are, numbers and
    /// booleans in JSON form, `null` as nothing; containers as compact JSON.
    pub fn write_text(&self, out: &mut Vec<u8>) {
        match self.node() {
            Some(Node::String(s)) => out.extend_from_slice(s.as_bytes()),
            Some(Node::Static(StaticNode::Null)) | None => {}
            // Directly, not through the container serialiser: flattening renders tens of
            // numbers per Darktrace event.
            Some(Node::Static(scalar)) => write_static(out, scalar),
            Some(_) => self.write_json(out),
        }
    }
}

pub struct Entries<'t, 'a> {
    rest: &'t [Node<'a>],
    left: usize,
}

impl<'t, 'a> Iterator for Entries<'t, 'a> {
    type Item = (&'a str, JsonRef<'t, 'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (key, rest) = self.rest.split_first()?;
        let key = match key {
            Node::String(s) => *s,
            _ => return None,
        };
        let n = span(rest.first()?).min(rest.len());
        let (value, rest) = rest.split_at(n);
        self.rest = rest;
        Some((key, JsonRef(value)))
    }
}

pub struct Items<'t, 'a> {
    rest: &'t [Node<'a>],
    left: usize,
}

impl<'t, 'a> Iterator for Items<'t, 'a> {
    type Item = JsonRef<'t, 'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let n = span(self.rest.first()?).min(self.rest.len());
        let (value, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(JsonRef(value))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyStyle {
    AsIs,
    Snake,
}

fn write_key(out: &mut Vec<u8>, key: &str, style: KeyStyle) {
    match style {
        KeyStyle::AsIs => crate::map::json_writer::write_str(out, key),
        KeyStyle::Snake => {
            out.push(b'"');
            write_snake_case(out, key);
            out.push(b'"');
        }
    }
}

/// `camelCase` / `kebab-case` → `snake_case`, escaped for a JSON string. An upper-case run is
/// one word (`techniqueID` → `technique_id`). Writes straight into `out`: ECS output converts
/// hundreds of keys per event.
pub fn write_snake_case(out: &mut Vec<u8>, key: &str) {
    let bytes = key.as_bytes();
    if !has_upper_or_dash(bytes) {
        crate::map::json_writer::write_str_contents(out, key);
        return;
    }
    let mut prev_lower_or_digit = false;
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let replacement: Option<&[u8]> = if b.is_ascii_uppercase() {
            Some(if prev_lower_or_digit { b"_" } else { b"" })
        } else if b == b'-' {
            Some(b"_")
        } else {
            None
        };
        match replacement {
            Some(prefix) => {
                crate::map::json_writer::write_str_contents(out, &key[start..i]);
                out.extend_from_slice(prefix);
                if b != b'-' {
                    out.push(b.to_ascii_lowercase());
                }
                start = i + 1;
                prev_lower_or_digit = false;
            }
            None => prev_lower_or_digit = b.is_ascii_lowercase() || b.is_ascii_digit(),
        }
    }
    crate::map::json_writer::write_str_contents(out, &key[start..]);
}

/// Whether `bytes` holds an ASCII upper-case letter or `-`: eight bytes at a time (the last
/// word overlapping the one before), since most keys hold neither and a byte loop was ≈ 5 % of
/// an ECS row.
#[inline]
fn has_upper_or_dash(bytes: &[u8]) -> bool {
    use crate::parse::bytescan::{HIGHS, LOW7, ONES, eq_bits};
    // The high bit of each byte that is `A`–`Z` or `-`. Adding to the low seven bits never
    // carries out of a byte (≤ 0x7f + 0x3f), and bytes with their own high bit set (not ASCII)
    // are excluded.
    let hits = |w: u64| {
        let low = w & LOW7;
        let at_least_a = low + ONES * u64::from(0x80 - b'A');
        let past_z = low + ONES * u64::from(0x80 - b'Z' - 1);
        (at_least_a & !past_z & !w & HIGHS) | eq_bits(w, b'-')
    };
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let n = bytes.len();
    if n < 8 {
        return bytes.iter().any(|b| b.is_ascii_uppercase() || *b == b'-');
    }
    let mut at = 0;
    while at + 8 <= n {
        if hits(word(at)) != 0 {
            return true;
        }
        at += 8;
    }
    at < n && hits(word(n - 8)) != 0
}

#[inline(always)]
fn write_static(out: &mut Vec<u8>, s: &StaticNode) {
    match s {
        StaticNode::Null => out.extend_from_slice(b"null"),
        StaticNode::Bool(true) => out.extend_from_slice(b"true"),
        StaticNode::Bool(false) => out.extend_from_slice(b"false"),
        StaticNode::I64(n) => out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
        StaticNode::U64(n) => out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
        StaticNode::F64(f) if f.is_finite() => {
            out.extend_from_slice(ryu::Buffer::new().format_finite(*f).as_bytes())
        }
        StaticNode::F64(_) => out.extend_from_slice(b"null"),
    }
}

/// Serialises the value starting at `nodes[0]` without recursion: a tape is the document in
/// pre-order, so one pass with a stack of open containers (remaining members, is-object) is enough.
fn write_nodes(nodes: &[Node<'_>], out: &mut Vec<u8>, style: KeyStyle) {
    // A `Vec` (allocating at the first container, not for a scalar), not a `SmallVec`: the
    // inline-or-heap check on every access cost ≈ 5 % of an ECS row (callgrind).
    let mut open: Vec<(usize, bool)> = Vec::new();
    let mut first = true;
    let mut i = 0;
    if nodes.is_empty() {
        out.extend_from_slice(b"null");
        return;
    }
    loop {
        if let Some(top) = open.last_mut() {
            top.0 -= 1;
            if !first {
                out.push(b',');
            }
            if top.1 {
                match nodes.get(i) {
                    Some(Node::String(k)) => write_key(out, k, style),
                    _ => out.extend_from_slice(b"\"\""),
                }
                out.push(b':');
                i += 1;
            }
        }
        first = false;
        match nodes.get(i) {
            Some(Node::String(s)) => crate::map::json_writer::write_str(out, s),
            Some(Node::Static(s)) => write_static(out, s),
            Some(Node::Object { len, .. }) => {
                out.push(b'{');
                open.push((*len, true));
                first = true;
            }
            Some(Node::Array { len, .. }) => {
                out.push(b'[');
                open.push((*len, false));
                first = true;
            }
            // A truncated tape cannot come out of simd-json; close what is open and stop.
            None => {
                out.extend_from_slice(b"null");
                for &(_, is_object) in open.iter().rev() {
                    out.push(if is_object { b'}' } else { b']' });
                }
                return;
            }
        }
        i += 1;
        while let Some(&(left, is_object)) = open.last() {
            if left > 0 {
                break;
            }
            out.push(if is_object { b'}' } else { b']' });
            open.pop();
            first = false;
        }
        if open.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_or_dash_is_found_for_every_byte_in_every_position() {
        for len in 1..=24 {
            for pos in 0..len {
                for byte in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[pos] = byte;
                    let expected = byte.is_ascii_uppercase() || byte == b'-';
                    assert_eq!(
                        has_upper_or_dash(&bytes),
                        expected,
                        "{byte:#04x} at {pos} of {len}"
                    );
                }
            }
        }
        assert!(!has_upper_or_dash(b""));
    }

    #[test]
    fn case_insensitive_contains_matches_lowercase_copy() {
        for hay in [
            "",
            "Connections",
            "ext CONNECTION",
            "conn",
            "Ünïcode connection",
            "xConnectio",
        ] {
            for word in ["connection", "", "c", "n"] {
                assert_eq!(
                    contains_ignore_ascii_case(hay, word),
                    hay.to_ascii_lowercase().contains(word),
                    "{hay:?} {word:?}"
                );
            }
        }
    }

    fn parse_with(text: &str, options: &ParseOptions) -> Result<(EventKind, String), JsonError> {
        let mut scratch = JsonScratch::default();
        let body = parse(text, options, &mut scratch)?;
        let mut out = Vec::new();
        body.root().write_json(&mut out);
        Ok((body.kind, String::from_utf8(out).unwrap()))
    }

    fn kind_of(text: &str) -> EventKind {
        parse_with(text, &ParseOptions::default()).unwrap().0
    }

    #[test]
    fn recognises_event_types_by_shape() {
        assert_eq!(
            kind_of(r#"{"pbid":1,"model":{"name":"x"},"score":0.5}"#),
            EventKind::DarktraceModelBreach
        );
        assert_eq!(
            kind_of(r#"{"pbid":1,"model":{"then":{"name":"x"},"now":{"name":"x"}}}"#),
            EventKind::DarktraceModelBreach
        );
        assert_eq!(
            kind_of(r#"{"breachUrl":"https://x/#modelbreach/1"}"#),
            EventKind::DarktraceModelBreach
        );
        assert_eq!(
            kind_of(r#"{"aiaScore":98,"title":"t"}"#),
            EventKind::DarktraceAiAnalyst
        );
        assert_eq!(
            kind_of(r#"{"summariser":"S","periods":[]}"#),
            EventKind::DarktraceAiAnalyst
        );
        assert_eq!(
            kind_of(r#"{"alert_name":"Probe Down","status":"Active"}"#),
            EventKind::DarktraceSystemStatus
        );
        assert_eq!(
            kind_of(r#"{"username":"u","method":"POST","endpoint":"/login"}"#),
            EventKind::DarktraceAudit
        );
        // Antigena state change: pbid but a string model.
        assert_eq!(
            kind_of(r#"{"pbid":0,"model":"m","action":"CREATE"}"#),
            EventKind::Json
        );
        assert_eq!(kind_of(r#"[{"pbid":1,"model":{}}]"#), EventKind::Json);
        assert_eq!(kind_of(r#""just a string""#), EventKind::Json);
    }

    #[test]
    fn log_type_wins_over_sniffing() {
        assert_eq!(
            kind_of(r#"{"pbid":1,"model":{},"log_type":"aianalyst"}"#),
            EventKind::DarktraceAiAnalyst
        );
        assert_eq!(
            kind_of(r#"{"aiaScore":1,"log_type":"modelbreaches"}"#),
            EventKind::DarktraceModelBreach
        );
        assert_eq!(
            kind_of(r#"{"log_type":"unknown","aiaScore":1}"#),
            EventKind::DarktraceAiAnalyst
        );
    }

    #[test]
    fn round_trips_through_serde_json() {
        let text = r#"{"a":[1,-2,3.5,true,false,null,{"b":"c\\n\"d"}],"e":{},"f":[],"g":{"h":[[[]]]},"u":18446744073709551615}"#;
        let (_, out) = parse_with(text, &ParseOptions::default()).unwrap();
        let expected: serde_json::Value = serde_json::from_str(text).unwrap();
        let got: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(got, expected);
        // The literal backslash-n survives as such: not unescaped twice.
        assert!(out.contains(r#"c\\n\"d"#), "{out}");
    }

    #[test]
    fn scalar_roots_serialise() {
        assert_eq!(parse_with("42", &ParseOptions::default()).unwrap().1, "42");
        assert_eq!(
            parse_with(" \"x\" ", &ParseOptions::default()).unwrap().1,
            "\"x\""
        );
    }

    #[test]
    fn depth_limit_is_enforced_without_recursion() {
        let options = ParseOptions {
            json_max_depth: 8,
            ..ParseOptions::default()
        };
        let ok = format!("{}{}", "[".repeat(8), "]".repeat(8));
        assert!(parse_with(&ok, &options).is_ok());
        let deep = format!("{}{}", "[".repeat(9), "]".repeat(9));
        let err = parse_with(&deep, &options).unwrap_err();
        assert_eq!(err.kind(), ParseErrorKind::JsonDepth);

        // Very deep input with the default limit: an error, not a stack overflow.
        let huge = format!("{}{}", "[{\"a\":".repeat(200_000), "}]".repeat(200_000));
        let options = ParseOptions {
            json_max_bytes: 8 << 20,
            ..ParseOptions::default()
        };
        assert_eq!(
            parse_with(&huge, &options).unwrap_err().kind(),
            ParseErrorKind::JsonDepth
        );
    }

    #[test]
    fn a_deep_but_allowed_document_writes_back_iteratively() {
        let options = ParseOptions {
            json_max_depth: 100_000,
            json_max_bytes: 8 << 20,
            ..ParseOptions::default()
        };
        let deep = format!("{}1{}", "[".repeat(50_000), "]".repeat(50_000));
        let (_, out) = parse_with(&deep, &options).unwrap();
        assert_eq!(out, deep);
    }

    #[test]
    fn size_limit_is_enforced() {
        let options = ParseOptions {
            json_max_bytes: 10,
            ..ParseOptions::default()
        };
        assert!(parse_with(r#"{"a":"b"}"#, &options).is_ok());
        let err = parse_with(r#"{"a":"bcdefg"}"#, &options).unwrap_err();
        assert_eq!(err.kind(), ParseErrorKind::JsonSize);
    }

    #[test]
    fn syntax_errors_are_reported() {
        for bad in [
            r#"{"a":}"#,
            r#"{"a":1"#,
            r#"{"a":1} trailing"#,
            "[1,2,,]",
            r#"{"a":"\x"}"#,
        ] {
            let err = parse_with(bad, &ParseOptions::default()).unwrap_err();
            assert_eq!(err.kind(), ParseErrorKind::JsonSyntax, "{bad}: {err}");
        }
    }

    #[test]
    fn scratch_is_reused_across_messages() {
        let mut scratch = JsonScratch::default();
        let options = ParseOptions::default();
        for i in 0..3 {
            let text = format!(r#"{{"pbid":{i},"model":{{"name":"m{i}"}}}}"#);
            let body = parse(&text, &options, &mut scratch).unwrap();
            assert_eq!(
                body.root().path(&["model", "name"]).and_then(|v| v.str()),
                Some(format!("m{i}").as_str())
            );
            assert_eq!(body.root().get("pbid").and_then(|v| v.i64()), Some(i));
        }
        assert!(
            scratch.tape.capacity() > 0,
            "tape allocation returned to the scratch"
        );
        // An error in between leaves the scratch usable.
        assert!(parse("{", &options, &mut scratch).is_err());
        assert_eq!(
            parse("{\"aiaScore\":1}", &options, &mut scratch)
                .unwrap()
                .kind,
            EventKind::DarktraceAiAnalyst
        );
    }

    #[test]
    fn lenient_numbers_accept_strings() {
        let mut scratch = JsonScratch::default();
        let body = parse(
            r#"{"a":"72.9","b":72.9,"c":"x","d":7}"#,
            &ParseOptions::default(),
            &mut scratch,
        )
        .unwrap();
        let r = body.root();
        assert_eq!(r.get("a").unwrap().f64_lenient(), Some(72.9));
        assert_eq!(r.get("b").unwrap().f64_lenient(), Some(72.9));
        assert_eq!(r.get("c").unwrap().f64_lenient(), None);
        assert_eq!(r.get("d").unwrap().i64(), Some(7));
    }

    #[test]
    fn times_in_every_darktrace_form() {
        let mut scratch = JsonScratch::default();
        let text = r#"{"ms":1657748807000,"s":1618760651,"fs":1658110810.556194,"str":"2022-07-11 11:47:51","iso":"2021-08-03T14:48:09.240+02:00","sms":"1657748807000","bad":"yesterday","neg":-5}"#;
        let body = parse(text, &ParseOptions::default(), &mut scratch).unwrap();
        let t = |k: &str| {
            body.root()
                .get(k)
                .unwrap()
                .timestamp()
                .map(|t| t.unix_nanos)
        };
        assert_eq!(t("ms"), Some(1_657_748_807_000_000_000));
        assert_eq!(t("s"), Some(1_618_760_651_000_000_000));
        assert_eq!(t("fs"), Some(1_658_110_810_556_194_000));
        assert_eq!(t("str"), Some(1_657_540_071_000_000_000));
        assert_eq!(
            body.root()
                .get("str")
                .unwrap()
                .timestamp()
                .unwrap()
                .offset_secs,
            None
        );
        assert_eq!(t("iso"), Some(1_627_994_889_240_000_000));
        assert_eq!(t("sms"), Some(1_657_748_807_000_000_000));
        assert_eq!(t("bad"), None);
        assert_eq!(t("neg"), None);
    }

    #[test]
    fn snake_case_keys() {
        let mut out = Vec::new();
        for (k, want) in [
            ("aiaScore", "aia_score"),
            ("techniqueID", "technique_id"),
            ("iris-event-type", "iris_event_type"),
            ("ip6", "ip6"),
            ("log_type", "log_type"),
            ("pbid", "pbid"),
            ("aB\"c", "a_b\\\"c"),
            ("ÉtatX", "État_x"),
        ] {
            out.clear();
            write_snake_case(&mut out, k);
            assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        }
    }
}
