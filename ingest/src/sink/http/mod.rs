//! Generic HTTP sink (`type = "http"`): POSTs each batch as NDJSON or a JSON array, with
//! headers from config, optional compression; 413 splits the batch.

pub mod common;
mod config;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

pub use common::{Compression, SinkBuildError};
pub use config::{
    HttpFormat, HttpSinkConfig, default_max_response_bytes as config_default_max_response_bytes,
    default_timeout_ms as config_default_timeout_ms,
};

use crate::config::credential::{Credential, Renew};
use crate::sink::runtime::SinkMetrics;
use crate::sink::{Batch, Delivery, Sink};
use common::{Attempt, ChunkSender};

pub struct HttpSink {
    name: String,
    url: reqwest::Url,
    headers: HeaderMap,
    /// Applied after `headers` (a name in both takes the secret's value).
    secret_headers: Arc<Credential<HeaderMap, SinkBuildError>>,
    format: HttpFormat,
    compression: Compression,
    client: reqwest::Client,
    /// See `max_response_bytes` in the sink's config.
    max_response_bytes: usize,
    metrics: Arc<SinkMetrics>,
}

impl HttpSink {
    pub fn new(
        name: &str,
        config: &HttpSinkConfig,
        metrics: Arc<SinkMetrics>,
    ) -> Result<Self, SinkBuildError> {
        let url = common::check_url(name, "url", &config.url)?;
        let bad = |key: &'static str, value: &str, reason: String| SinkBuildError::Config {
            sink: name.to_owned(),
            key,
            value: value.to_owned(),
            reason,
        };
        let mut headers = HeaderMap::new();
        for (k, v) in &config.headers {
            let hn = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| bad("headers", k, e.to_string()))?;
            let hv = HeaderValue::from_str(v).map_err(|e| bad("headers", k, e.to_string()))?;
            headers.insert(hn, hv);
        }
        let (sink, secrets) = (name.to_owned(), config.secret_headers.clone());
        let secret_headers = Credential::load(format!("sinks.{name}.secret_headers"), move || {
            secret_header_map(&sink, &secrets)
        })?;
        Ok(HttpSink {
            name: name.to_owned(),
            url,
            headers,
            secret_headers,
            format: config.format,
            compression: config.compression,
            client: common::client(name, Duration::from_millis(config.timeout_ms))?,
            max_response_bytes: config.max_response_bytes,
            metrics,
        })
    }
}

impl ChunkSender for HttpSink {
    async fn send(&self, lines: &[&[u8]]) -> Attempt {
        let (body, content_type) = match self.format {
            HttpFormat::Ndjson => {
                let mut body = Vec::new();
                for line in lines {
                    body.extend_from_slice(line);
                    body.push(b'\n');
                }
                (body, "application/x-ndjson")
            }
            HttpFormat::JsonArray => (
                common::json_array(lines.iter().copied()),
                "application/json",
            ),
        };
        let body = self.compression.compress(&body);
        let len = body.len();
        let (secret_headers, generation) = self.secret_headers.snapshot();
        let mut req = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .headers((*secret_headers).clone())
            .header(CONTENT_TYPE, content_type);
        if let Some(enc) = self.compression.content_encoding() {
            req = req.header(CONTENT_ENCODING, enc);
        }
        match common::execute_authorised(
            &self.metrics,
            req.body(body),
            len,
            self.max_response_bytes,
            &self.name,
            &*self.secret_headers,
            generation,
        )
        .await
        {
            Ok(_) => Attempt::Accepted,
            Err(attempt) => attempt,
        }
    }
}

impl Sink for HttpSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&self, batch: &Batch) -> Delivery {
        let lines: Vec<&[u8]> = batch.lines().collect();
        common::deliver_chunks(self, vec![lines], Vec::new()).await
    }

    fn credentials(&self) -> Vec<Arc<dyn Renew>> {
        vec![self.secret_headers.clone()]
    }
}

/// The `secret_headers`, loaded.
fn secret_header_map(
    sink: &str,
    secrets: &std::collections::BTreeMap<String, crate::sink::secret::SecretRef>,
) -> Result<HeaderMap, SinkBuildError> {
    let mut headers = HeaderMap::new();
    for (k, secret) in secrets {
        let bad = |reason: String| SinkBuildError::Config {
            sink: sink.to_owned(),
            key: "secret_headers",
            value: k.clone(),
            reason,
        };
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let value = secret
            .load(&format!("secret_headers.{k}"))
            .map_err(|source| SinkBuildError::Secret {
                sink: sink.to_owned(),
                source,
            })?;
        let mut value = HeaderValue::from_str(value.expose())
            .map_err(|_| bad("not a valid header value".to_owned()))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}
