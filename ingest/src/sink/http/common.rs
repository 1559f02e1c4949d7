//! HTTP plumbing shared by the HTTP sinks: client construction, compression, status
//! classification, `Retry-After`, and delivery of a batch in chunks with split-on-413.

use std::io::Write;
use std::time::{Duration, Instant};

use std::path::PathBuf;
use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderValue};

use crate::config::credential::{Credential, Renew};
use crate::sink::runtime::SinkMetrics;
use crate::sink::secret::{Secret, SecretError};
use crate::sink::{Batch, Delivery, Rejected};

#[derive(Debug, thiserror::Error)]
pub enum SinkBuildError {
    #[error("sink `{sink}`: {source}")]
    Secret { sink: String, source: SecretError },
    #[error("sink `{sink}`: `{key}` = {value:?}: {reason}")]
    Config {
        sink: String,
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("sink `{sink}`: HTTP client: {source}")]
    Client {
        sink: String,
        source: reqwest::Error,
    },
}

/// Body compression (`compression = "gzip" | "zstd" | "none"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    #[default]
    Gzip,
    Zstd,
}

impl Compression {
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
        }
    }

    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => data.to_vec(),
            Compression::Gzip => gzip(data),
            Compression::Zstd => {
                zstd::bulk::compress(data, 3).expect("zstd into a Vec cannot fail")
            }
        }
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::default(),
    );
    enc.write_all(data).expect("writing into a Vec cannot fail");
    enc.finish().expect("writing into a Vec cannot fail")
}

/// Validates an endpoint URL; plain `http://` is allowed (tests, internal relays) with a
/// warning because credentials and events then cross the network in clear.
pub fn check_url(
    sink: &str,
    key: &'static str,
    value: &str,
) -> Result<reqwest::Url, SinkBuildError> {
    let url = reqwest::Url::parse(value).map_err(|e| SinkBuildError::Config {
        sink: sink.to_owned(),
        key,
        value: value.to_owned(),
        reason: e.to_string(),
    })?;
    match url.scheme() {
        "https" => {}
        "http" => tracing::warn!(sink, key, url = %value,
            "plain http:// endpoint: credentials and events are sent unencrypted"),
        other => {
            return Err(SinkBuildError::Config {
                sink: sink.to_owned(),
                key,
                value: value.to_owned(),
                reason: format!("scheme `{other}` is not http or https"),
            });
        }
    }
    Ok(url)
}

pub fn client(sink: &str, timeout: Duration) -> Result<reqwest::Client, SinkBuildError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|source| SinkBuildError::Client {
            sink: sink.to_owned(),
            source,
        })
}

/// `Retry-After`: delay-seconds or an HTTP-date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = at.timestamp_millis() - chrono::Utc::now().timestamp_millis();
    Some(Duration::from_millis(delta.max(0) as u64))
}

/// The outcome of one request.
#[derive(Debug)]
pub enum Attempt {
    Accepted,
    /// 413: the body is too large; split and try the halves.
    TooLarge {
        status: u16,
        body: String,
    },
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    Reject {
        status: Option<u16>,
        reason: String,
        body: String,
    },
}

/// The usual reading of a status code for an intake API.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> Attempt {
    let body_text = || String::from_utf8_lossy(&body[..body.len().min(64 * 1024)]).into_owned();
    match status {
        200..=299 => Attempt::Accepted,
        413 => Attempt::TooLarge {
            status,
            body: body_text(),
        },
        // 408/429 and every 5xx can succeed later; so can 404 during a rolling restart of a
        // relay, but a wrong path never will — still, retrying keeps the data, and the
        // requests_total{status="404"} metric makes the misconfiguration visible.
        408 | 404 | 429 | 500..=599 => Attempt::Retry {
            after: retry_after(headers),
            reason: format!("HTTP {status}: {}", truncate_for_log(&body_text())),
        },
        _ => Attempt::Reject {
            status: Some(status),
            reason: format!("HTTP {status}"),
            body: body_text(),
        },
    }
}

pub fn truncate_for_log(s: &str) -> &str {
    let mut end = s.len().min(300);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A sent request: status, headers, body.
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// The sink's secret `key`, from `{key}_file` or `{key}_env`, as a [`Credential`] named
/// `sinks.<sink>.<key>`: a file rotated while the daemon runs is read again (reload, refusal).
pub fn secret_credential(
    sink: &str,
    key: &'static str,
    file: Option<PathBuf>,
    env: Option<String>,
) -> Result<Arc<Credential<Secret, SinkBuildError>>, SinkBuildError> {
    let owner = sink.to_owned();
    Credential::load(format!("sinks.{sink}.{key}"), move || {
        load_secret(&owner, key, &file, &env)
    })
}

/// The sink's secret `key`, read now.
fn load_secret(
    sink: &str,
    key: &'static str,
    file: &Option<PathBuf>,
    env: &Option<String>,
) -> Result<Secret, SinkBuildError> {
    Secret::load(key, file.as_deref(), env.as_deref()).map_err(|source| SinkBuildError::Secret {
        sink: sink.to_owned(),
        source,
    })
}

/// [`secret_credential`] sent as a header value: what `value` makes of the secret (`Splunk
/// <token>`, the key itself), marked sensitive. A value no header can carry is an error naming
/// `{key}_file`.
pub fn secret_header(
    sink: &str,
    key: &'static str,
    file_key: &'static str,
    file: Option<PathBuf>,
    env: Option<String>,
    value: fn(&str) -> String,
) -> Result<Arc<Credential<HeaderValue, SinkBuildError>>, SinkBuildError> {
    let owner = sink.to_owned();
    Credential::load(format!("sinks.{sink}.{key}"), move || {
        let secret = load_secret(&owner, key, &file, &env)?;
        let mut header =
            HeaderValue::from_str(&value(secret.expose())).map_err(|_| SinkBuildError::Config {
                sink: owner.clone(),
                key: file_key,
                value: "***".to_owned(),
                reason: "not a valid header value".to_owned(),
            })?;
        header.set_sensitive(true);
        Ok(header)
    })
}

/// A refusal of the credentials (401/403) of a request sent with generation `sent_with` of
/// `credential`: the credential is read again first, and when the value in use is no longer
/// the one that was sent (rotated in its file, renewed by a reload or by another request
/// meanwhile), the request is tried again with it after the backoff instead of dead-lettered.
/// Anything else comes back unchanged.
fn retry_if_credential_renewed(
    attempt: Attempt,
    sink: &str,
    credential: &dyn Renew,
    sent_with: u64,
) -> Attempt {
    let Attempt::Reject {
        status: Some(status @ (401 | 403)),
        ..
    } = attempt
    else {
        return attempt;
    };
    if let Err(e) = credential.renew() {
        tracing::warn!(
            sink,
            credential = credential.name(),
            "reading the credential again after HTTP {status}: {e}"
        );
    }
    if credential.generation() == sent_with {
        return attempt;
    }
    tracing::info!(
        sink,
        credential = credential.name(),
        "HTTP {status} for a credential that has been renewed since: trying again with the new one"
    );
    Attempt::Retry {
        after: None,
        reason: format!("HTTP {status} with a credential renewed since"),
    }
}

/// The least `max_response_bytes` can be: room for any error answer worth reading.
pub const MIN_RESPONSE_BYTES: usize = 64 << 10;

/// Sends one request and records it (status, latency, body size) in `metrics`. The answer is
/// read up to `max_response` bytes: a longer one that is not a success is kept cut (only its
/// start is logged or dead-lettered anyway); a longer success cannot be interpreted and is an
/// error (retried) rather than an unbounded read.
pub async fn execute(
    metrics: &SinkMetrics,
    request: reqwest::RequestBuilder,
    body_len: usize,
    max_response: usize,
) -> Result<Response, String> {
    let start = Instant::now();
    let max_response = max_response.max(MIN_RESPONSE_BYTES);
    let result = async {
        let mut resp = request.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        let mut whole = true;
        while let Some(chunk) = resp.chunk().await? {
            let room = max_response - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                whole = false;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok::<_, reqwest::Error>((
            Response {
                status,
                headers,
                body,
            },
            whole,
        ))
    }
    .await;
    match result {
        Ok((r, whole)) => {
            metrics.request(Some(r.status), start.elapsed(), body_len as u64);
            if !whole && (200..300).contains(&r.status) {
                return Err(format!(
                    "HTTP {}: the answer is longer than max_response_bytes ({max_response}); not read whole",
                    r.status
                ));
            }
            Ok(r)
        }
        Err(e) => {
            metrics.request(None, start.elapsed(), body_len as u64);
            Err(format!("request failed: {}", error_chain(&e)))
        }
    }
}

/// [`execute_accepted`] for a request that carries generation `sent_with` of `credential`: a
/// refusal of the credential (401/403) is retried instead of final when the credential, read
/// again, is no longer the one the request carried.
pub async fn execute_authorised(
    metrics: &SinkMetrics,
    request: reqwest::RequestBuilder,
    body_len: usize,
    max_response: usize,
    sink: &str,
    credential: &dyn Renew,
    sent_with: u64,
) -> Result<Response, Attempt> {
    execute_accepted(metrics, request, body_len, max_response)
        .await
        .map_err(|attempt| retry_if_credential_renewed(attempt, sink, credential, sent_with))
}

/// Sends one request and reads it as an intake answer: `Ok` only when accepted (2xx), so the
/// caller can go on to inspect the body; any other outcome (transport failure → retry, or the
/// status's [`classify`] reading) comes back as the [`Attempt`] to return.
pub async fn execute_accepted(
    metrics: &SinkMetrics,
    request: reqwest::RequestBuilder,
    body_len: usize,
    max_response: usize,
) -> Result<Response, Attempt> {
    let r = execute(metrics, request, body_len, max_response)
        .await
        .map_err(|reason| Attempt::Retry {
            after: None,
            reason,
        })?;
    match classify(r.status, &r.headers, &r.body) {
        Attempt::Accepted => Ok(r),
        other => Err(other),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// One request for a chunk of event lines.
pub trait ChunkSender: Sync {
    fn send(&self, lines: &[&[u8]]) -> impl std::future::Future<Output = Attempt> + Send;
}

/// Sends `chunks` in order. A 413 splits a chunk in halves (down to one event, which is then
/// rejected); a retryable failure stops and hands back everything not yet accepted; a
/// rejection dead-letters that chunk and goes on. `rejected` carries events the sink already
/// refused before sending (e.g. too large to ever fit).
pub async fn deliver_chunks<C: ChunkSender>(
    sender: &C,
    chunks: Vec<Vec<&[u8]>>,
    mut rejected: Vec<Rejected>,
) -> Delivery {
    let mut stack: Vec<Vec<&[u8]>> = chunks.into_iter().rev().filter(|c| !c.is_empty()).collect();
    let mut accepted_any = false;
    while let Some(chunk) = stack.pop() {
        match sender.send(&chunk).await {
            Attempt::Accepted => accepted_any = true,
            Attempt::TooLarge { status, body } => {
                if chunk.len() > 1 {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    stack.push(b.to_vec());
                    stack.push(a.to_vec());
                } else {
                    rejected.push(Rejected {
                        batch: Batch::from_lines(chunk),
                        status: Some(status),
                        reason: "request too large with a single event".to_owned(),
                        response_body: body,
                    });
                }
            }
            Attempt::Reject {
                status,
                reason,
                body,
            } => rejected.push(Rejected {
                batch: Batch::from_lines(chunk),
                status,
                reason,
                response_body: body,
            }),
            Attempt::Retry { after, reason } => {
                if !accepted_any && rejected.is_empty() {
                    return Delivery::Retry { after, reason };
                }
                let remaining = chunk.into_iter().chain(stack.into_iter().rev().flatten());
                return Delivery::Partial {
                    retry: Some(Batch::from_lines(remaining)),
                    after,
                    reason,
                    rejected,
                };
            }
        }
    }
    if rejected.is_empty() {
        return Delivery::Delivered;
    }
    if !accepted_any && rejected.len() == 1 {
        let r = rejected.pop().expect("one");
        return Delivery::Reject {
            status: r.status,
            reason: r.reason,
            response_body: r.response_body,
        };
    }
    Delivery::Partial {
        retry: None,
        after: None,
        reason: String::new(),
        rejected,
    }
}

/// Appends `line` to a JSON array body as a JSON string: as-is if it already is one (schema
/// `raw`), otherwise its text escaped into a string.
pub fn push_as_json_string(line: &[u8], out: &mut Vec<u8>) {
    if line.first() == Some(&b'"') {
        out.extend_from_slice(line);
    } else {
        let text = String::from_utf8_lossy(line);
        serde_json::to_writer(&mut *out, text.as_ref()).expect("writing into a Vec cannot fail");
    }
}

/// `[` lines joined by `,` `]`.
pub fn json_array<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, line) in lines.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(line);
    }
    out.push(b']');
    out
}
