//! Sekoia.io intake (`type = "sekoia"`): `POST {url}/jsons` with `X-SEKOIAIO-INTAKE-KEY`,
//! body a JSON array of raw event strings (Sekoia parses server-side), gzip. The intake
//! answers `{"event_ids": [...]}`.

mod config;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};

pub use config::SekoiaConfig;

use crate::config::credential::{Credential, Renew};
use crate::sink::http::common::{self, Attempt, ChunkSender};
use crate::sink::http::{Compression, SinkBuildError};
use crate::sink::runtime::SinkMetrics;
use crate::sink::{Batch, Delivery, Sink};

pub const INTAKE_KEY_HEADER: &str = "X-SEKOIAIO-INTAKE-KEY";

pub struct SekoiaSink {
    name: String,
    url: reqwest::Url,
    key: Arc<Credential<HeaderValue, SinkBuildError>>,
    compression: Compression,
    max_request_bytes: usize,
    client: reqwest::Client,
    /// See `max_response_bytes` in the sink's config.
    max_response_bytes: usize,
    metrics: Arc<SinkMetrics>,
}

impl SekoiaSink {
    pub fn new(
        name: &str,
        config: &SekoiaConfig,
        metrics: Arc<SinkMetrics>,
    ) -> Result<Self, SinkBuildError> {
        let url = common::check_url(
            name,
            "url",
            &format!("{}/jsons", config.url.trim_end_matches('/')),
        )?;
        let key = common::secret_header(
            name,
            "intake_key",
            "intake_key_file",
            config.intake_key_file.clone(),
            config.intake_key_env.clone(),
            str::to_owned,
        )?;
        metrics.unconfirmed(0, "missing_event_ids");
        Ok(SekoiaSink {
            name: name.to_owned(),
            url,
            key,
            compression: config.compression,
            max_request_bytes: config.max_request_bytes.max(1024),
            client: common::client(name, Duration::from_millis(config.timeout_ms))?,
            max_response_bytes: config.max_response_bytes,
            metrics,
        })
    }

    fn body(lines: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum::<usize>() + 2);
        out.push(b'[');
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            common::push_as_json_string(line, &mut out);
        }
        out.push(b']');
        out
    }
}

impl ChunkSender for SekoiaSink {
    async fn send(&self, lines: &[&[u8]]) -> Attempt {
        let body = self.compression.compress(&Self::body(lines));
        if body.len() > self.max_request_bytes && lines.len() > 1 {
            return Attempt::TooLarge {
                status: 413,
                body: "split before sending".to_owned(),
            };
        }
        let len = body.len();
        let (key, generation) = self.key.snapshot();
        let mut req = self
            .client
            .post(self.url.clone())
            .header(INTAKE_KEY_HEADER, (*key).clone())
            .header(CONTENT_TYPE, "application/json");
        if let Some(enc) = self.compression.content_encoding() {
            req = req.header(CONTENT_ENCODING, enc);
        }
        let r = match common::execute_authorised(
            &self.metrics,
            req.body(body),
            len,
            self.max_response_bytes,
            &self.name,
            &*self.key,
            generation,
        )
        .await
        {
            Ok(r) => r,
            Err(attempt) => return attempt,
        };
        // The intake returns one id per accepted event; fewer means it dropped some.
        let ids = serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| {
                v.get("event_ids")
                    .and_then(|ids| ids.as_array().map(Vec::len))
            });
        if let Some(n) = ids
            && n != lines.len()
        {
            tracing::warn!(sink = %self.name, sent = lines.len(), ids = n,
                "Sekoia intake returned a different number of event ids");
            // Resending cannot tell which events were dropped and would duplicate the rest;
            // the shortfall is counted so the gap shows in metrics, not only in the log.
            self.metrics
                .unconfirmed(lines.len().saturating_sub(n) as u64, "missing_event_ids");
        }
        Attempt::Accepted
    }
}

impl Sink for SekoiaSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&self, batch: &Batch) -> Delivery {
        let lines: Vec<&[u8]> = batch.lines().collect();
        common::deliver_chunks(self, vec![lines], Vec::new()).await
    }

    fn credentials(&self) -> Vec<Arc<dyn Renew>> {
        vec![self.key.clone()]
    }
}
