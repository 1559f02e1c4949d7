//! Elasticsearch (`type = "elasticsearch"`): `POST {endpoint}/_bulk` NDJSON, gzip. A 200 can
//! still carry per-item failures (`"errors": true`): items failing with 429/5xx are retried,
//! other item errors are dead-lettered one by one with Elasticsearch's error object.

mod config;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};

pub use config::ElasticsearchConfig;

use crate::config::credential::{Credential, Renew};
use crate::event::Event;
use crate::map::Schema;
use crate::sink::http::common::{self, Attempt};
use crate::sink::http::{Compression, SinkBuildError};
use crate::sink::runtime::SinkMetrics;
use crate::sink::secret::Secret;
use crate::sink::{Batch, Delivery, Rejected, Sink};

/// An event as the document the worker writes for this sink. A data stream refuses a document
/// without `@timestamp`, and only the `ecs` row has one: the others get the event's own time
/// (the `ecs` schema's `@timestamp`, [`crate::map::event_time_millis`]) as their first name —
/// `commonsecuritylog` and `sluice` rows keep every name they have beside it, a `raw` row (a
/// JSON string) becomes `{"@timestamp":"…","message":"<raw>"}`.
pub fn write_document(schema: Schema, event: &Event<'_>, out: &mut Vec<u8>) {
    match schema {
        Schema::Ecs => crate::map::write(schema, event, out),
        Schema::Raw => {
            write_timestamp_name(event, out);
            out.extend_from_slice(b",\"message\":");
            crate::map::raw::write(event, out);
            out.push(b'}');
        }
        Schema::Sluice | Schema::Commonsecuritylog => {
            write_timestamp_name(event, out);
            let row = out.len();
            crate::map::write(schema, event, out);
            // The row's `{` becomes the separator after `@timestamp`, in place: no copy.
            debug_assert_eq!(out.get(row), Some(&b'{'));
            if out.get(row + 1) == Some(&b'}') {
                out.truncate(row);
                out.push(b'}');
            } else {
                out[row] = b',';
            }
        }
    }
}

/// `{"@timestamp":"<RFC 3339 UTC, ms>"`: an open object.
fn write_timestamp_name(event: &Event<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"@timestamp\":");
    crate::map::commonsecuritylog::write_rfc3339_millis(out, crate::map::event_time_millis(event));
}

/// The `Authorization` header the config gives: `ApiKey …`, `Basic …` or none.
fn auth_header(
    name: &str,
    config: &ElasticsearchConfig,
) -> Result<Option<HeaderValue>, SinkBuildError> {
    let secret_err = |source| SinkBuildError::Secret {
        sink: name.to_owned(),
        source,
    };
    let has_api_key = config.api_key_file.is_some() || config.api_key_env.is_some();
    let auth = match (has_api_key, &config.username) {
        (true, Some(_)) => {
            return Err(SinkBuildError::Config {
                sink: name.to_owned(),
                key: "username",
                value: config.username.clone().unwrap_or_default(),
                reason: "set either api_key_file/api_key_env or username/password_file, not both"
                    .to_owned(),
            });
        }
        (true, None) => {
            let key = Secret::load(
                "api_key",
                config.api_key_file.as_deref(),
                config.api_key_env.as_deref(),
            )
            .map_err(secret_err)?;
            Some(format!("ApiKey {}", key.expose()))
        }
        (false, Some(user)) => {
            let pw = Secret::load(
                "password",
                config.password_file.as_deref(),
                config.password_env.as_deref(),
            )
            .map_err(secret_err)?;
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", pw.expose()));
            Some(format!("Basic {basic}"))
        }
        (false, None) => None,
    };
    Ok(match auth {
        Some(a) => {
            let mut v = HeaderValue::from_str(&a).map_err(|_| SinkBuildError::Config {
                sink: name.to_owned(),
                key: "api_key_file",
                value: "***".to_owned(),
                reason: "not a valid header value".to_owned(),
            })?;
            v.set_sensitive(true);
            Some(v)
        }
        None => None,
    })
}

pub struct ElasticsearchSink {
    name: String,
    url: reqwest::Url,
    auth: Arc<Credential<Option<HeaderValue>, SinkBuildError>>,
    /// The action line, prebuilt: `{"create":{"_index":"…"}}\n`.
    action: Vec<u8>,
    compression: Compression,
    max_request_bytes: usize,
    client: reqwest::Client,
    /// See `max_response_bytes` in the sink's config.
    max_response_bytes: usize,
    metrics: Arc<SinkMetrics>,
}

impl ElasticsearchSink {
    pub fn new(
        name: &str,
        config: &ElasticsearchConfig,
        metrics: Arc<SinkMetrics>,
    ) -> Result<Self, SinkBuildError> {
        let base = config.endpoint.trim_end_matches('/');
        let mut url = common::check_url(name, "endpoint", &format!("{base}/_bulk"))?;
        if let Some(p) = &config.pipeline {
            url.query_pairs_mut().append_pair("pipeline", p);
        }
        let (sink, auth_config) = (name.to_owned(), config.clone());
        let key = match (&config.api_key_file, &config.api_key_env, &config.username) {
            (None, None, Some(_)) => "password",
            _ => "api_key",
        };
        let auth = Credential::load(format!("sinks.{name}.{key}"), move || {
            auth_header(&sink, &auth_config)
        })?;
        let mut action = b"{\"create\":{\"_index\":".to_vec();
        serde_json::to_writer(&mut action, &config.index).expect("Vec write");
        action.extend_from_slice(b"}}\n");
        Ok(ElasticsearchSink {
            name: name.to_owned(),
            url,
            auth,
            action,
            compression: config.compression,
            max_request_bytes: config.max_request_bytes.max(1024),
            client: common::client(name, Duration::from_millis(config.timeout_ms))?,
            max_response_bytes: config.max_response_bytes,
            metrics,
        })
    }

    fn body(&self, lines: &[&[u8]]) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(lines.iter().map(|l| l.len() + self.action.len() + 16).sum());
        for line in lines {
            out.extend_from_slice(&self.action);
            if line.first() == Some(&b'{') {
                out.extend_from_slice(line);
            } else {
                // A document must be an object. The worker writes `raw` rows as documents
                // (`write_document`); a `raw` string spooled by an older version is wrapped
                // as then, without `@timestamp`.
                out.extend_from_slice(b"{\"message\":");
                out.extend_from_slice(line);
                out.push(b'}');
            }
            out.push(b'\n');
        }
        out
    }

    async fn send(&self, lines: &[&[u8]]) -> BulkOutcome {
        let body = self.compression.compress(&self.body(lines));
        if body.len() > self.max_request_bytes && lines.len() > 1 {
            return BulkOutcome::Whole(Attempt::TooLarge {
                status: 413,
                body: String::new(),
            });
        }
        let len = body.len();
        let mut req = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/x-ndjson");
        let (auth, generation) = self.auth.snapshot();
        if let Some(auth) = &*auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        if let Some(enc) = self.compression.content_encoding() {
            req = req.header(CONTENT_ENCODING, enc);
        }
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
            Err(attempt) => return BulkOutcome::Whole(attempt),
        };
        let Ok(reply) = serde_json::from_slice::<BulkReply>(&r.body) else {
            return BulkOutcome::Whole(Attempt::Retry {
                after: None,
                reason: "unparseable _bulk reply".to_owned(),
            });
        };
        if !reply.errors {
            return BulkOutcome::Whole(Attempt::Accepted);
        }
        if reply.items.len() != lines.len() {
            return BulkOutcome::Whole(Attempt::Retry {
                after: None,
                reason: format!(
                    "_bulk reply has {} items for {} documents",
                    reply.items.len(),
                    lines.len()
                ),
            });
        }
        let mut retry = Vec::new();
        let mut rejected = Vec::new();
        for (i, item) in reply.items.iter().enumerate() {
            let Some(result) = item.values().next() else {
                continue;
            };
            match result.status {
                200..=299 => {}
                429 | 500..=599 => retry.push(i),
                status => rejected.push((i, status, result.error.to_string())),
            }
        }
        BulkOutcome::Items { retry, rejected }
    }
}

enum BulkOutcome {
    Whole(Attempt),
    /// Indices (into the lines sent) to retry and to reject.
    Items {
        retry: Vec<usize>,
        rejected: Vec<(usize, u16, String)>,
    },
}

#[derive(serde::Deserialize)]
struct BulkReply {
    errors: bool,
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, BulkItem>>,
}

#[derive(serde::Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: serde_json::Value,
}

impl Sink for ElasticsearchSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&self, batch: &Batch) -> Delivery {
        let lines: Vec<&[u8]> = batch.lines().collect();
        let total = lines.len();
        let mut stack: Vec<Vec<&[u8]>> = vec![lines];
        let mut retry_lines: Vec<&[u8]> = Vec::new();
        let mut rejected: Vec<Rejected> = Vec::new();
        let mut accepted_any = false;
        let mut retry_reason = String::new();
        let mut retry_after = None;
        while let Some(chunk) = stack.pop() {
            match self.send(&chunk).await {
                BulkOutcome::Whole(Attempt::Accepted) => accepted_any = true,
                BulkOutcome::Whole(Attempt::TooLarge { status, body }) => {
                    if chunk.len() > 1 {
                        let (a, b) = chunk.split_at(chunk.len() / 2);
                        stack.push(b.to_vec());
                        stack.push(a.to_vec());
                    } else {
                        rejected.push(Rejected {
                            batch: Batch::from_lines(chunk),
                            status: Some(status),
                            reason: "document too large for one _bulk request".to_owned(),
                            response_body: body,
                        });
                    }
                }
                BulkOutcome::Whole(Attempt::Reject {
                    status,
                    reason,
                    body,
                }) => {
                    rejected.push(Rejected {
                        batch: Batch::from_lines(chunk),
                        status,
                        reason,
                        response_body: body,
                    });
                }
                BulkOutcome::Whole(Attempt::Retry { after, reason }) => {
                    retry_lines.extend(chunk);
                    for rest in stack.drain(..).rev() {
                        retry_lines.extend(rest);
                    }
                    retry_reason = reason;
                    retry_after = after;
                }
                BulkOutcome::Items {
                    retry,
                    rejected: item_errors,
                } => {
                    accepted_any |= retry.len() + item_errors.len() < chunk.len();
                    if !retry.is_empty() {
                        retry_reason =
                            format!("{} documents failed with a retryable status", retry.len());
                    }
                    retry_lines.extend(retry.iter().map(|&i| chunk[i]));
                    for (i, status, error) in item_errors {
                        rejected.push(Rejected {
                            batch: Batch::from_lines([chunk[i]]),
                            status: Some(status),
                            reason: format!("document rejected with status {status}"),
                            response_body: error,
                        });
                    }
                }
            }
        }
        if retry_lines.is_empty() && rejected.is_empty() {
            return Delivery::Delivered;
        }
        if !accepted_any && rejected.is_empty() && retry_lines.len() == total {
            return Delivery::Retry {
                after: retry_after,
                reason: retry_reason,
            };
        }
        if !accepted_any
            && retry_lines.is_empty()
            && rejected.len() == 1
            && rejected[0].batch.events as usize == total
        {
            let r = rejected.pop().expect("one");
            return Delivery::Reject {
                status: r.status,
                reason: r.reason,
                response_body: r.response_body,
            };
        }
        let retry = (!retry_lines.is_empty()).then(|| Batch::from_lines(retry_lines));
        Delivery::Partial {
            retry,
            after: retry_after,
            reason: retry_reason,
            rejected,
        }
    }

    fn credentials(&self) -> Vec<Arc<dyn Renew>> {
        vec![self.auth.clone()]
    }
}
