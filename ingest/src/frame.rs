//! Framing: turning a datagram or a TCP byte stream into messages.
//! PLACEHOLDER bodies until the framer lands; the signatures are the contract readers use.

/// TCP framing (`framing = "..."` in a tcp source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// Decide per connection from the first byte: a digit means RFC 6587 octet counting.
    #[default]
    Auto,
    /// Newline-delimited (LF; a trailing CR is stripped).
    Lf,
    /// RFC 6587 octet counting: `LEN SP MSG`.
    Octet,
}

/// What to do with a frame longer than `max_frame_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OversizePolicy {
    /// Keep the first `max_frame_bytes` bytes and mark the frame truncated.
    #[default]
    Truncate,
    /// Drop the frame (counted).
    Reject,
}

#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    pub max_frame_bytes: usize,
    pub oversize: OversizePolicy,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits { max_frame_bytes: 256 * 1024, oversize: OversizePolicy::Truncate }
    }
}

/// What the framer reports to its caller.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameEvent<'a> {
    /// A complete message. `truncated` is set when it was cut to `max_frame_bytes`.
    Frame { bytes: &'a [u8], truncated: bool },
    /// An oversize frame was dropped under [`OversizePolicy::Reject`]; `len` is its length
    /// as far as it is known.
    Rejected { len: usize },
    /// The stream broke the framing (e.g. a non-numeric octet count); the framer resynchronised
    /// by skipping to the next LF. `skipped` bytes were discarded.
    Desync { skipped: usize },
}

/// One datagram is one message: strips trailing LF / CR / NUL bytes.
pub fn datagram(data: &[u8]) -> &[u8] {
    let mut end = data.len();
    while end > 0 && matches!(data[end - 1], b'\n' | b'\r' | 0) {
        end -= 1;
    }
    &data[..end]
}

/// Incremental framer for one TCP connection. Memory is bounded by `max_frame_bytes`.
pub struct StreamFramer {
    pub framing: Framing,
    pub limits: FrameLimits,
}

impl StreamFramer {
    pub fn new(framing: Framing, limits: FrameLimits) -> Self {
        StreamFramer { framing, limits }
    }

    /// Feeds the next bytes of the stream; `emit` is called for every event, in order.
    pub fn feed(&mut self, _data: &[u8], _emit: &mut dyn FnMut(FrameEvent<'_>)) {
        unimplemented!("framer placeholder")
    }

    /// End of stream: emits a final unterminated LF frame, if any.
    pub fn finish(&mut self, _emit: &mut dyn FnMut(FrameEvent<'_>)) {
        unimplemented!("framer placeholder")
    }
}
