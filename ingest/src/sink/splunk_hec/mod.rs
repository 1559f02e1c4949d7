//! Splunk HTTP Event Collector (`type = "splunk_hec"`): `POST {endpoint}/services/collector/event`
//! with `Authorization: Splunk <token>`, body = concatenated event envelopes
//! `{"time":…,"host":…,"event":…,"index":…,"sourcetype":…}`, gzip. The worker writes each
//! envelope's `time`, `host` and `event` ([`write_envelope`]); the sink adds the configured keys.
//! With `ack = true`, every request carries
//! `X-Splunk-Request-Channel`, its `ackId` is polled on `/services/collector/ack`, and the
//! batch is reported delivered only once indexed. A 2xx without `ackId` (the token has no
//! indexer acknowledgement) still means HEC took the events: delivered, logged, counted.

mod config;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};

pub use config::SplunkHecConfig;

use crate::config::credential::{Credential, Renew};
use crate::event::Event;
use crate::log_every::LogEvery;
use crate::map::Schema;
use crate::sink::http::common::{self, Attempt, ChunkSender};
use crate::sink::http::{Compression, SinkBuildError};
use crate::sink::runtime::SinkMetrics;
use crate::sink::{Batch, Delivery, Sink};

pub const CHANNEL_HEADER: &str = "X-Splunk-Request-Channel";

/// How every envelope [`write_envelope`] writes begins. No schema's row begins so (rows are
/// objects whose first key is another, or strings), which tells envelopes from rows spooled by
/// an older version.
const ENVELOPE_START: &[u8] = b"{\"time\":";
const HOST_KEY: &[u8] = b",\"host\":";

/// Writes `event` as a HEC event envelope without the sink's configured keys:
/// `{"time":<epoch seconds>.<ms>,"host":"<syslog hostname>","event":<row>}`. `time` is the
/// event's own time (see [`crate::map::event_time_millis`]), so that Splunk does not stamp an
/// alert with the hour it was uploaded after an outage. A message that names no host gets the
/// sender's IP address when `sender_as_host` (the sink configures no `host`), as Splunk's own
/// network inputs do; otherwise `host` is left out and the configured one, or HEC's default,
/// applies.
pub fn write_envelope(schema: Schema, event: &Event<'_>, sender_as_host: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(ENVELOPE_START);
    write_epoch_seconds(out, crate::map::event_time_millis(event));
    // A name that would need JSON escaping is no host name, and copying only plain ones keeps a
    // mapped event within the growth per message byte that the config's spool-record bound
    // counts on (the name is already in the row twice).
    let named = event.syslog.hostname.filter(|h| is_plain_host(h));
    let write_host = |out: &mut Vec<u8>, host: &str| {
        out.extend_from_slice(HOST_KEY);
        out.push(b'"');
        out.extend_from_slice(host.as_bytes());
        out.push(b'"');
    };
    match (named, event.received.sender_ip()) {
        (Some(host), _) => write_host(out, host),
        (None, Some(sender)) if sender_as_host => write_host(out, &sender.to_string()),
        _ => {}
    }
    out.extend_from_slice(b",\"event\":");
    crate::map::write(schema, event, out);
    out.push(b'}');
}

fn is_plain_host(host: &str) -> bool {
    !host.is_empty() && host.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// Unix milliseconds as HEC's `time`: seconds with a three-digit fraction (`1709633472.127`).
fn write_epoch_seconds(out: &mut Vec<u8>, millis: i64) {
    // A JSON number's sign covers its fraction too: -1.5 s is `-1.500`.
    if millis < 0 {
        out.push(b'-');
    }
    let abs = millis.unsigned_abs();
    let (secs, ms) = (abs / 1000, (abs % 1000) as u32);
    out.extend_from_slice(itoa::Buffer::new().format(secs).as_bytes());
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
    ]);
}

/// A spooled line that [`write_envelope`] wrote.
struct SpooledEnvelope<'a> {
    /// The envelope without its closing brace, for the configured keys to follow.
    open: &'a [u8],
    has_host: bool,
}

impl<'a> SpooledEnvelope<'a> {
    /// Looks only at the envelope's own start (time, host), never into the row.
    fn of(line: &'a [u8]) -> Option<SpooledEnvelope<'a>> {
        let rest = line.strip_prefix(ENVELOPE_START)?;
        let open = line.strip_suffix(b"}")?;
        let time_len = rest
            .iter()
            .take_while(|b| b.is_ascii_digit() || matches!(b, b'-' | b'.'))
            .count();
        Some(SpooledEnvelope {
            open,
            has_host: rest[time_len..].starts_with(HOST_KEY),
        })
    }
}

pub struct SplunkHecSink {
    name: String,
    event_url: reqwest::Url,
    ack_url: reqwest::Url,
    auth: Arc<Credential<HeaderValue, SinkBuildError>>,
    channel: String,
    /// `,"index":"…","sourcetype":"…"…}` appended after each event, prebuilt once.
    envelope_tail: Vec<u8>,
    /// `,"host":"…"` of the configured `host`, for events without a syslog hostname (empty when
    /// not configured).
    host_field: Vec<u8>,
    ack: bool,
    ack_poll: Duration,
    ack_timeout: Duration,
    compression: Compression,
    max_request_bytes: usize,
    client: reqwest::Client,
    /// See `max_response_bytes` in the sink's config.
    max_response_bytes: usize,
    metrics: Arc<SinkMetrics>,
    /// Every request hits the missing-`ackId` case once the token lacks `useACK`: one log line
    /// per interval says what to fix, the metric counts every event.
    no_ack_id_log: LogEvery,
}

/// How often the missing-`ackId` error is logged at most.
const NO_ACK_ID_LOG_EVERY: Duration = Duration::from_secs(600);

fn random_guid() -> String {
    let mut b = [0u8; 16];
    fastrand::fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl SplunkHecSink {
    pub fn new(
        name: &str,
        config: &SplunkHecConfig,
        metrics: Arc<SinkMetrics>,
    ) -> Result<Self, SinkBuildError> {
        let base = config.endpoint.trim_end_matches('/');
        let event_url = common::check_url(
            name,
            "endpoint",
            &format!("{base}/services/collector/event"),
        )?;
        let ack_url =
            common::check_url(name, "endpoint", &format!("{base}/services/collector/ack"))?;
        let auth = common::secret_header(
            name,
            "token",
            "token_file",
            config.token_file.clone(),
            config.token_env.clone(),
            |token| format!("Splunk {token}"),
        )?;
        let field = |key: &str, value: &Option<String>| {
            let mut field = Vec::new();
            if let Some(v) = value {
                field.extend_from_slice(b",\"");
                field.extend_from_slice(key.as_bytes());
                field.extend_from_slice(b"\":");
                serde_json::to_writer(&mut field, v).expect("Vec write");
            }
            field
        };
        let mut tail = Vec::new();
        for (key, value) in [
            ("index", &config.index),
            ("sourcetype", &config.sourcetype),
            ("source", &config.source),
        ] {
            tail.extend_from_slice(&field(key, value));
        }
        tail.push(b'}');
        metrics.unconfirmed(0, "no_ack_id");
        Ok(SplunkHecSink {
            name: name.to_owned(),
            event_url,
            ack_url,
            auth,
            channel: config.channel.clone().unwrap_or_else(random_guid),
            envelope_tail: tail,
            host_field: field("host", &config.host),
            ack: config.ack,
            ack_poll: Duration::from_millis(config.ack_poll_interval_ms.max(10)),
            ack_timeout: Duration::from_millis(config.ack_timeout_ms),
            compression: config.compression,
            max_request_bytes: config.max_request_bytes.max(1024),
            client: common::client(name, Duration::from_millis(config.timeout_ms))?,
            max_response_bytes: config.max_response_bytes,
            metrics,
            no_ack_id_log: LogEvery::new(NO_ACK_ID_LOG_EVERY),
        })
    }

    fn body(&self, lines: &[&[u8]]) -> Vec<u8> {
        let per_event = 10 + self.host_field.len() + self.envelope_tail.len();
        let mut out = Vec::with_capacity(lines.iter().map(|l| l.len() + per_event).sum());
        for line in lines {
            match SpooledEnvelope::of(line) {
                Some(envelope) => {
                    out.extend_from_slice(envelope.open);
                    if !envelope.has_host {
                        out.extend_from_slice(&self.host_field);
                    }
                }
                None => {
                    // A row spooled before envelopes were written by the worker: no event time
                    // or host to give, as then.
                    out.extend_from_slice(b"{\"event\":");
                    out.extend_from_slice(line);
                    out.extend_from_slice(&self.host_field);
                }
            }
            out.extend_from_slice(&self.envelope_tail);
        }
        out
    }

    /// A POST with the token in use; its generation tells whether a refusal was of an older
    /// token than the one in use.
    fn post(&self, url: &reqwest::Url) -> (reqwest::RequestBuilder, u64) {
        let (auth, generation) = self.auth.snapshot();
        let req = self
            .client
            .post(url.clone())
            .header(AUTHORIZATION, (*auth).clone());
        let req = if self.ack {
            req.header(CHANNEL_HEADER, &self.channel)
        } else {
            req
        };
        (req, generation)
    }

    /// Polls until `ack_id` is indexed. `Err` = give up and resend.
    async fn wait_for_ack(&self, ack_id: u64) -> Result<(), String> {
        let deadline = Instant::now() + self.ack_timeout;
        let body = format!("{{\"acks\":[{ack_id}]}}");
        loop {
            let req = self
                .post(&self.ack_url)
                .0
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
            match common::execute(&self.metrics, req, body.len(), self.max_response_bytes).await {
                Ok(r) if r.status == 200 => {
                    let acked = serde_json::from_slice::<serde_json::Value>(&r.body)
                        .ok()
                        .and_then(|v| v.get("acks")?.get(ack_id.to_string())?.as_bool())
                        .unwrap_or(false);
                    if acked {
                        return Ok(());
                    }
                }
                Ok(r) => {
                    tracing::warn!(sink = %self.name, status = r.status, "HEC ack poll failed");
                }
                Err(e) => tracing::warn!(sink = %self.name, error = %e, "HEC ack poll failed"),
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "ackId {ack_id} not acknowledged within {:?}",
                    self.ack_timeout
                ));
            }
            tokio::time::sleep(self.ack_poll).await;
        }
    }
}

impl SplunkHecSink {
    fn no_ack_id(&self, events: usize) {
        self.metrics.unconfirmed(events as u64, "no_ack_id");
        if let Some(suppressed) = self.no_ack_id_log.permit() {
            tracing::error!(sink = %self.name, suppressed,
                "ack = true but HEC accepted the request without an ackId: the token has no \
                indexer acknowledgement, so delivery is not confirmed. Events are counted as \
                delivered (and in sluice_sink_unconfirmed_events_total{{reason=\"no_ack_id\"}}); \
                set ack = false for this sink or enable useACK on the HEC token");
        }
    }
}

impl ChunkSender for SplunkHecSink {
    async fn send(&self, lines: &[&[u8]]) -> Attempt {
        let body = self.compression.compress(&self.body(lines));
        if body.len() > self.max_request_bytes && lines.len() > 1 {
            return Attempt::TooLarge {
                status: 413,
                body: "split before sending".to_owned(),
            };
        }
        let len = body.len();
        let (req, generation) = self.post(&self.event_url);
        let mut req = req.header(CONTENT_TYPE, "application/json");
        if let Some(enc) = self.compression.content_encoding() {
            req = req.header(CONTENT_ENCODING, enc);
        }
        // HEC answers 503 "server is busy" (code 9) under load and 400 for unparseable data;
        // 401 for an unknown token, 403 for a disabled one.
        let r = match common::execute_authorised(
            &self.metrics,
            req.body(body),
            len,
            self.max_response_bytes,
            &self.name,
            &*self.auth,
            generation,
        )
        .await
        {
            Ok(r) => r,
            Err(attempt) => return attempt,
        };
        if !self.ack {
            return Attempt::Accepted;
        }
        let ack_id = serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v.get("ackId")?.as_u64());
        let Some(ack_id) = ack_id else {
            // HEC answered 2xx, so it took the events; resending them would index them again,
            // and again on every retry, since the reply will never carry an ackId.
            self.no_ack_id(lines.len());
            return Attempt::Accepted;
        };
        match self.wait_for_ack(ack_id).await {
            Ok(()) => Attempt::Accepted,
            Err(reason) => Attempt::Retry {
                after: None,
                reason,
            },
        }
    }
}

impl Sink for SplunkHecSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&self, batch: &Batch) -> Delivery {
        let lines: Vec<&[u8]> = batch.lines().collect();
        common::deliver_chunks(self, vec![lines], Vec::new()).await
    }

    fn credentials(&self) -> Vec<Arc<dyn Renew>> {
        vec![self.auth.clone()]
    }
}
