//! Framing: turning a datagram or a TCP byte stream into messages.
//!
//! TCP streams are either LF-delimited or RFC 6587 octet-counted (`LEN SP MSG`). The framer is a
//! byte-at-a-time state machine only at frame boundaries; frame bodies are located with
//! `memchr` / arithmetic and handed out as slices of the caller's buffer whenever a frame lies
//! wholly inside one `feed` call, so the common case copies nothing. Only a frame split across
//! two reads is copied, into a buffer that never grows past `max_frame_bytes`.

/// TCP framing (`framing = "..."` in a tcp source).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
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
        FrameLimits {
            max_frame_bytes: 256 * 1024,
            oversize: OversizePolicy::Truncate,
        }
    }
}

/// What the framer reports to its caller.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameEvent<'a> {
    /// A complete message. `truncated` is set when it was cut to `max_frame_bytes`, or when the
    /// stream ended inside an octet-counted frame (the bytes that did arrive are kept).
    Frame { bytes: &'a [u8], truncated: bool },
    /// An oversize frame was dropped under [`OversizePolicy::Reject`]; `len` is its length
    /// as far as it is known.
    Rejected { len: usize },
    /// The stream broke the framing (e.g. a non-numeric octet count); the framer resynchronised
    /// by skipping to the next LF. `skipped` bytes were discarded (the LF included).
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

/// An octet count longer than this is not a count but garbage (10 digits is already ~10 GB).
pub const MAX_OCTET_COUNT_DIGITS: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `Framing::Auto` before the first significant byte of the connection.
    Undecided,
    /// LF mode: collecting a line (partial bytes, if any, are in `buf`).
    Line,
    /// LF mode: a line outgrew the limit; discarding up to the next LF. `len` counts the line so far.
    LineSkip { len: usize },
    /// Octet mode: reading `LEN`. `digits == 0` means we are between frames.
    Count { value: usize, digits: u32 },
    /// Octet mode: inside a frame of `len` bytes of which `done` have been consumed; the first
    /// `keep` bytes are delivered (the rest, if any, is oversize and skipped without buffering).
    Body {
        len: usize,
        done: usize,
        keep: usize,
    },
    /// Octet mode: a malformed count; discarding up to the next LF.
    Resync { skipped: usize },
}

/// Incremental framer for one TCP connection. Memory is bounded by `max_frame_bytes`.
pub struct StreamFramer {
    pub framing: Framing,
    pub limits: FrameLimits,
    state: State,
    /// Bytes of a frame that started in an earlier `feed` call. Never longer than `max_frame_bytes`.
    buf: Vec<u8>,
}

impl StreamFramer {
    pub fn new(framing: Framing, limits: FrameLimits) -> Self {
        StreamFramer {
            framing,
            limits,
            state: Self::initial_state(framing),
            buf: Vec::new(),
        }
    }

    fn initial_state(framing: Framing) -> State {
        match framing {
            Framing::Auto => State::Undecided,
            Framing::Lf => State::Line,
            Framing::Octet => State::Count {
                value: 0,
                digits: 0,
            },
        }
    }

    /// Bytes currently held for a frame split across reads (at most `max_frame_bytes`).
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Bytes of the stream consumed since the last frame boundary: the length so far of the
    /// message being received, whether its bytes are held, already delivered truncated, or
    /// skipped. Readers close a connection whose unfinished message grows past a bound.
    pub fn unfinished_frame_bytes(&self) -> usize {
        match self.state {
            State::Undecided => 0,
            State::Line => self.buf.len(),
            State::LineSkip { len } => len,
            State::Count { digits, .. } => digits as usize,
            State::Body { done, .. } => done,
            State::Resync { skipped } => skipped,
        }
    }

    /// The framing chosen for this connection, once known (`Auto` until the first byte).
    pub fn detected_framing(&self) -> Framing {
        match self.state {
            State::Undecided => Framing::Auto,
            State::Line | State::LineSkip { .. } => Framing::Lf,
            _ => Framing::Octet,
        }
    }

    /// Feeds the next bytes of the stream; `emit` is called for every event, in order.
    pub fn feed(&mut self, data: &[u8], emit: &mut dyn FnMut(FrameEvent<'_>)) {
        let max = self.limits.max_frame_bytes;
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            match self.state {
                State::Undecided => {
                    match rest[0] {
                        // Blank lines before the first message say nothing about the framing.
                        b'\n' | b'\r' => pos += 1,
                        b'1'..=b'9' => {
                            self.state = State::Count {
                                value: 0,
                                digits: 0,
                            }
                        }
                        _ => self.state = State::Line,
                    }
                }
                State::Line => match memchr::memchr(b'\n', rest) {
                    Some(nl) => {
                        pos += nl + 1;
                        let line = &rest[..nl];
                        if self.buf.is_empty() {
                            if nl <= max {
                                emit_line(line, emit);
                            } else {
                                emit_oversize(&line[..max], nl, self.limits.oversize, emit);
                            }
                        } else {
                            let total = self.buf.len() + nl;
                            if total <= max {
                                self.buf.extend_from_slice(line);
                                emit_line(&self.buf, emit);
                            } else {
                                let room = max - self.buf.len();
                                self.buf.extend_from_slice(&line[..room]);
                                emit_oversize(&self.buf, total, self.limits.oversize, emit);
                            }
                            self.buf.clear();
                        }
                    }
                    None => {
                        pos = data.len();
                        let room = max - self.buf.len();
                        if rest.len() <= room {
                            self.push_partial(rest);
                        } else {
                            // The LF is not in view yet: deliver what fits now and skip the rest
                            // so that the buffer never exceeds the limit.
                            let len = self.buf.len() + rest.len();
                            self.push_partial(&rest[..room]);
                            if self.limits.oversize == OversizePolicy::Truncate {
                                emit(FrameEvent::Frame {
                                    bytes: &self.buf,
                                    truncated: true,
                                });
                            }
                            self.buf.clear();
                            self.state = State::LineSkip { len };
                        }
                    }
                },
                State::LineSkip { len } => match memchr::memchr(b'\n', rest) {
                    Some(nl) => {
                        pos += nl + 1;
                        if self.limits.oversize == OversizePolicy::Reject {
                            emit(FrameEvent::Rejected { len: len + nl });
                        }
                        self.state = State::Line;
                    }
                    None => {
                        pos = data.len();
                        self.state = State::LineSkip {
                            len: len + rest.len(),
                        };
                    }
                },
                State::Count { value, digits } => {
                    let byte = rest[0];
                    pos += 1;
                    match byte {
                        // Stray line ends between frames (some senders add them) carry nothing.
                        b'\n' | b'\r' if digits == 0 => {}
                        b'1'..=b'9' if digits == 0 => {
                            self.state = State::Count {
                                value: (byte - b'0') as usize,
                                digits: 1,
                            }
                        }
                        b'0'..=b'9' if digits > 0 && digits < MAX_OCTET_COUNT_DIGITS => {
                            let value = value
                                .saturating_mul(10)
                                .saturating_add((byte - b'0') as usize);
                            self.state = State::Count {
                                value,
                                digits: digits + 1,
                            };
                        }
                        b' ' if digits > 0 => self.start_body(value, emit),
                        b'\n' => {
                            emit(FrameEvent::Desync {
                                skipped: digits as usize + 1,
                            });
                            self.state = State::Count {
                                value: 0,
                                digits: 0,
                            };
                        }
                        _ => {
                            self.state = State::Resync {
                                skipped: digits as usize + 1,
                            }
                        }
                    }
                }
                State::Body {
                    len,
                    mut done,
                    keep,
                } => {
                    let truncated = keep < len;
                    if done < keep {
                        let want = keep - done;
                        let take = want.min(rest.len());
                        if self.buf.is_empty() && take == want {
                            emit(FrameEvent::Frame {
                                bytes: &rest[..want],
                                truncated,
                            });
                        } else {
                            self.push_partial(&rest[..take]);
                            if take == want {
                                emit(FrameEvent::Frame {
                                    bytes: &self.buf,
                                    truncated,
                                });
                                self.buf.clear();
                            }
                        }
                        pos += take;
                        done += take;
                    } else {
                        // Oversize remainder: counted off, never buffered.
                        let skip = (len - done).min(rest.len());
                        pos += skip;
                        done += skip;
                    }
                    self.state = if done == len {
                        State::Count {
                            value: 0,
                            digits: 0,
                        }
                    } else {
                        State::Body { len, done, keep }
                    };
                }
                State::Resync { skipped } => match memchr::memchr(b'\n', rest) {
                    Some(nl) => {
                        pos += nl + 1;
                        emit(FrameEvent::Desync {
                            skipped: skipped + nl + 1,
                        });
                        self.state = State::Count {
                            value: 0,
                            digits: 0,
                        };
                    }
                    None => {
                        pos = data.len();
                        self.state = State::Resync {
                            skipped: skipped + rest.len(),
                        };
                    }
                },
            }
        }
    }

    /// End of stream: emits a final unterminated LF frame, a partial octet-counted frame (marked
    /// truncated), or the pending rejection / desync, and resets the framer for reuse.
    pub fn finish(&mut self, emit: &mut dyn FnMut(FrameEvent<'_>)) {
        match self.state {
            State::Undecided => {}
            State::Line => emit_line(&self.buf, emit),
            State::LineSkip { len } => {
                if self.limits.oversize == OversizePolicy::Reject {
                    emit(FrameEvent::Rejected { len });
                }
            }
            State::Count { digits, .. } => {
                if digits > 0 {
                    emit(FrameEvent::Desync {
                        skipped: digits as usize,
                    });
                }
            }
            State::Body { done, keep, .. } => {
                if done < keep && done > 0 {
                    emit(FrameEvent::Frame {
                        bytes: &self.buf,
                        truncated: true,
                    });
                }
            }
            State::Resync { skipped } => emit(FrameEvent::Desync { skipped }),
        }
        self.buf.clear();
        self.state = Self::initial_state(self.framing);
    }

    fn start_body(&mut self, len: usize, emit: &mut dyn FnMut(FrameEvent<'_>)) {
        let max = self.limits.max_frame_bytes;
        let keep = if len <= max {
            len
        } else if self.limits.oversize == OversizePolicy::Truncate {
            max
        } else {
            emit(FrameEvent::Rejected { len });
            0
        };
        self.state = State::Body { len, done: 0, keep };
    }

    /// Appends to `buf` without letting its capacity run far past `max_frame_bytes`.
    fn push_partial(&mut self, bytes: &[u8]) {
        let needed = self.buf.len() + bytes.len();
        if needed > self.buf.capacity() {
            let ceiling = self.limits.max_frame_bytes.max(needed);
            let target = (self.buf.capacity() * 2).max(needed).max(256).min(ceiling);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }
}

/// Emits one LF-delimited line (without its LF and a trailing CR); empty lines are not messages.
fn emit_line(line: &[u8], emit: &mut dyn FnMut(FrameEvent<'_>)) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if !line.is_empty() {
        emit(FrameEvent::Frame {
            bytes: line,
            truncated: false,
        });
    }
}

/// An oversize line whose end is in view: `kept` is its first `max_frame_bytes`, `len` its length.
fn emit_oversize(
    kept: &[u8],
    len: usize,
    policy: OversizePolicy,
    emit: &mut dyn FnMut(FrameEvent<'_>),
) {
    match policy {
        OversizePolicy::Truncate => emit(FrameEvent::Frame {
            bytes: kept,
            truncated: true,
        }),
        OversizePolicy::Reject => emit(FrameEvent::Rejected { len }),
    }
}
