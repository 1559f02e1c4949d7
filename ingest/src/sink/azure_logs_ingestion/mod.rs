//! Azure Monitor Logs Ingestion API (`type = "azure_logs_ingestion"`, Microsoft Sentinel).
//!
//! `POST {endpoint}/dataCollectionRules/{dcr}/streams/{stream}?api-version=2023-01-01`, body a
//! gzipped JSON array of rows, `Authorization: Bearer` from the client-credentials grant
//! (cached, refreshed before expiry). The service limits a call to 1 MB, compressed and
//! uncompressed alike, so batches are cut into requests under both bounds: chunks are planned
//! from the observed compression ratio and capped at `max_uncompressed_request_bytes` of JSON,
//! and a chunk over either limit is halved before it is sent — no body over
//! `max_request_bytes` (gzipped) or `max_uncompressed_request_bytes` (before gzip) ever
//! leaves. String fields over `max_field_bytes` are truncated (counted); a single row still
//! over a limit is dead-lettered.

mod config;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};

pub use config::{AZURE_MAX_CALL_BYTES, AzureLogsIngestionConfig};

use crate::config::credential::{Credential, Renew};
use crate::sink::http::SinkBuildError;
use crate::sink::http::common::{self, Attempt, ChunkSender};
use crate::sink::runtime::SinkMetrics;
use crate::sink::secret::Secret;
use crate::sink::{Batch, Delivery, Sink};

pub struct AzureLogsIngestionSink {
    name: String,
    url: reqwest::Url,
    token_url: reqwest::Url,
    client_id: String,
    client_secret: Arc<Credential<Secret, SinkBuildError>>,
    scope: String,
    max_request_bytes: usize,
    max_uncompressed: usize,
    max_field_bytes: usize,
    client: reqwest::Client,
    /// See `max_response_bytes` in the sink's config.
    max_response_bytes: usize,
    token: tokio::sync::Mutex<Option<CachedToken>>,
    /// Observed compressed/uncompressed ratio × 1e6, to plan chunk sizes.
    ratio_ppm: AtomicU64,
    metrics: Arc<SinkMetrics>,
}

struct CachedToken {
    header: HeaderValue,
    /// Of the client secret it was got with.
    generation: u64,
    refresh_at: Instant,
}

impl AzureLogsIngestionSink {
    pub fn new(
        name: &str,
        config: &AzureLogsIngestionConfig,
        metrics: Arc<SinkMetrics>,
    ) -> Result<Self, SinkBuildError> {
        let bad = |key: &'static str, value: String, reason: &str| SinkBuildError::Config {
            sink: name.to_owned(),
            key,
            value,
            reason: reason.to_owned(),
        };
        if config.max_request_bytes > AZURE_MAX_CALL_BYTES || config.max_request_bytes < 16 * 1024 {
            return Err(bad(
                "max_request_bytes",
                config.max_request_bytes.to_string(),
                "must be between 16384 and 1048576 (the service's 1 MB per call)",
            ));
        }
        if config.max_uncompressed_request_bytes < 16 * 1024 {
            return Err(bad(
                "max_uncompressed_request_bytes",
                config.max_uncompressed_request_bytes.to_string(),
                "must be at least 16384 (smaller would dead-letter ordinary rows)",
            ));
        }
        if config.max_uncompressed_request_bytes > AZURE_MAX_CALL_BYTES {
            tracing::warn!(
                sink = name,
                max_uncompressed_request_bytes = config.max_uncompressed_request_bytes,
                "above the 1 MB per call Microsoft documents for uncompressed data too; \
                the service may refuse such calls"
            );
        }
        for (key, value) in [
            ("dcr_immutable_id", &config.dcr_immutable_id),
            ("stream", &config.stream),
            ("tenant_id", &config.tenant_id),
            ("client_id", &config.client_id),
        ] {
            if value.is_empty() || value.contains(['/', '?', '#']) {
                return Err(bad(
                    key,
                    value.clone(),
                    "must be non-empty and contain no '/', '?' or '#'",
                ));
            }
        }
        let mut url = common::check_url(
            name,
            "endpoint",
            &format!(
                "{}/dataCollectionRules/{}/streams/{}",
                config.endpoint.trim_end_matches('/'),
                config.dcr_immutable_id,
                config.stream
            ),
        )?;
        url.query_pairs_mut()
            .append_pair("api-version", &config.api_version);
        let token_url = common::check_url(
            name,
            "authority",
            &format!(
                "{}/{}/oauth2/v2.0/token",
                config.authority.trim_end_matches('/'),
                config.tenant_id
            ),
        )?;
        let client_secret = common::secret_credential(
            name,
            "client_secret",
            config.client_secret_file.clone(),
            config.client_secret_env.clone(),
        )?;
        Ok(AzureLogsIngestionSink {
            name: name.to_owned(),
            url,
            token_url,
            client_id: config.client_id.clone(),
            client_secret,
            scope: config.scope.clone(),
            max_request_bytes: config.max_request_bytes,
            max_uncompressed: config.max_uncompressed_request_bytes,
            max_field_bytes: config.max_field_bytes.max(1024),
            client: common::client(name, Duration::from_millis(config.timeout_ms))?,
            max_response_bytes: config.max_response_bytes,
            token: tokio::sync::Mutex::new(None),
            ratio_ppm: AtomicU64::new(250_000),
            metrics,
        })
    }

    /// A bearer token, from cache or a fresh client-credentials grant. Refreshed 5 minutes
    /// before expiry (or at half-life for short-lived tokens).
    async fn bearer(&self) -> Result<HeaderValue, String> {
        let mut cached = self.token.lock().await;
        let (client_secret, generation) = self.client_secret.snapshot();
        // A token got with a client secret rotated since is not used: a request with it would
        // not tell whether the new secret works.
        if let Some(t) = cached.as_ref()
            && Instant::now() < t.refresh_at
            && t.generation == generation
        {
            return Ok(t.header.clone());
        }
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", client_secret.expose()),
            ("scope", self.scope.as_str()),
        ];
        let req = self.client.post(self.token_url.clone()).form(&form);
        let r = common::execute(&self.metrics, req, 0, self.max_response_bytes)
            .await
            .map_err(|e| format!("token endpoint: {e}"))?;
        if r.status != 200 {
            // A secret rotated in its file is taken at the next try, without a reload.
            match self.client_secret.renew() {
                Ok(true) => tracing::info!(sink = %self.name,
                    "the token endpoint refused the client secret; its file holds a new one, used from the next try"),
                Ok(false) => {}
                Err(e) => tracing::warn!(sink = %self.name, "reading the client secret again: {e}"),
            }
            return Err(format!(
                "token endpoint answered HTTP {}: {}",
                r.status,
                common::truncate_for_log(&String::from_utf8_lossy(&r.body))
            ));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&r.body).map_err(|e| format!("token endpoint reply: {e}"))?;
        let token = v
            .get("access_token")
            .and_then(|t| t.as_str())
            .ok_or("token endpoint reply has no access_token")?;
        let expires_in = match v.get("expires_in") {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(3600);
        let margin = (expires_in / 2).min(300);
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "token endpoint returned an invalid token".to_owned())?;
        header.set_sensitive(true);
        *cached = Some(CachedToken {
            header: header.clone(),
            generation,
            refresh_at: Instant::now() + Duration::from_secs(expires_in - margin),
        });
        Ok(header)
    }

    async fn invalidate_token(&self) {
        *self.token.lock().await = None;
    }

    /// Truncates string values over `max_field_bytes`; returns the line (borrowed when
    /// untouched — a line shorter than the limit cannot hold a longer field) and the count.
    fn truncate_fields<'a>(&self, line: &'a [u8]) -> (Cow<'a, [u8]>, u64) {
        if line.len() <= self.max_field_bytes {
            return (Cow::Borrowed(line), 0);
        }
        let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(line) else {
            return (Cow::Borrowed(line), 0);
        };
        let n = truncate_strings(&mut value, self.max_field_bytes);
        if n == 0 {
            return (Cow::Borrowed(line), 0);
        }
        (
            Cow::Owned(serde_json::to_vec(&value).expect("Value serialises")),
            n,
        )
    }

    /// Cuts `lines` into chunks expected to compress under the limit.
    fn plan<'a>(&self, lines: &[&'a [u8]]) -> Vec<Vec<&'a [u8]>> {
        let ratio = self.ratio_ppm.load(Ordering::Relaxed).max(10_000) as f64 / 1e6;
        // 80 % of the limit: ratios vary between batches; an overshoot costs a recompression.
        let target =
            ((self.max_request_bytes as f64 * 0.8 / ratio) as usize).min(self.max_uncompressed);
        let mut chunks = Vec::new();
        let mut current = Vec::new();
        let mut size = 2;
        for &line in lines {
            if !current.is_empty() && size + line.len() + 1 > target {
                chunks.push(std::mem::take(&mut current));
                size = 2;
            }
            size += line.len() + 1;
            current.push(line);
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        chunks
    }

    async fn post(&self, body: Vec<u8>) -> Result<common::Response, String> {
        let bearer = self.bearer().await?;
        let len = body.len();
        let req = self
            .client
            .post(self.url.clone())
            .header(AUTHORIZATION, bearer)
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_ENCODING, "gzip")
            .body(body);
        common::execute(&self.metrics, req, len, self.max_response_bytes).await
    }
}

fn truncate_strings(value: &mut serde_json::Value, max: usize) -> u64 {
    match value {
        serde_json::Value::String(s) if s.len() > max => {
            let mut end = max;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            1
        }
        serde_json::Value::Array(items) => items.iter_mut().map(|v| truncate_strings(v, max)).sum(),
        serde_json::Value::Object(map) => map.values_mut().map(|v| truncate_strings(v, max)).sum(),
        _ => 0,
    }
}

impl ChunkSender for AzureLogsIngestionSink {
    async fn send(&self, lines: &[&[u8]]) -> Attempt {
        let json = common::json_array(lines.iter().copied());
        if json.len() > self.max_uncompressed {
            return too_large_or_reject(
                lines.len(),
                "uncompressed",
                json.len(),
                self.max_uncompressed,
            );
        }
        let body = common::gzip(&json);
        let ratio = (body.len() as u64 * 1_000_000 / json.len().max(1) as u64).max(1);
        let old = self.ratio_ppm.load(Ordering::Relaxed);
        self.ratio_ppm
            .store((old * 3 + ratio) / 4, Ordering::Relaxed);
        if body.len() > self.max_request_bytes {
            return too_large_or_reject(
                lines.len(),
                "compressed",
                body.len(),
                self.max_request_bytes,
            );
        }
        let mut fresh_token_tried = false;
        loop {
            let r = match self.post(body.clone()).await {
                Ok(r) => r,
                Err(reason) => {
                    return Attempt::Retry {
                        after: None,
                        reason,
                    };
                }
            };
            if r.status == 401 && !fresh_token_tried {
                // The token may have been revoked or expired early: one retry with a new one.
                fresh_token_tried = true;
                self.invalidate_token().await;
                continue;
            }
            return common::classify(r.status, &r.headers, &r.body);
        }
    }
}

fn too_large_or_reject(lines: usize, what: &str, size: usize, limit: usize) -> Attempt {
    if lines > 1 {
        // Not sent: `deliver_chunks` halves the chunk.
        Attempt::TooLarge {
            status: 413,
            body: String::new(),
        }
    } else {
        Attempt::Reject {
            status: None,
            reason: format!("one row is {size} bytes {what}, over the {limit}-byte request limit"),
            body: String::new(),
        }
    }
}

impl Sink for AzureLogsIngestionSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&self, batch: &Batch) -> Delivery {
        let mut truncated = 0;
        let rows: Vec<Cow<'_, [u8]>> = batch
            .lines()
            .map(|line| {
                let (row, n) = self.truncate_fields(line);
                truncated += n;
                row
            })
            .collect();
        self.metrics.truncated_fields(truncated);
        let lines: Vec<&[u8]> = rows.iter().map(|r| r.as_ref()).collect();
        let chunks = self.plan(&lines);
        common::deliver_chunks(self, chunks, Vec::new()).await
    }

    fn credentials(&self) -> Vec<Arc<dyn Renew>> {
        vec![self.client_secret.clone()]
    }
}
