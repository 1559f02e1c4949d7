use std::collections::BTreeMap;

use super::common::Compression;
use crate::sink::secret::SecretRef;

/// `[sinks.NAME] type = "http"`: generic POST of NDJSON or a JSON array.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    pub url: String,
    /// Extra request headers, sent verbatim.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers whose values are secrets, e.g. `Authorization = { file = "/run/secrets/relay" }`.
    #[serde(default)]
    pub secret_headers: BTreeMap<String, SecretRef>,
    #[serde(default)]
    pub format: HttpFormat,
    #[serde(default)]
    pub compression: Compression,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The service's answer is read up to this many bytes (at least 64 KiB): a longer error
    /// answer is kept cut, a longer success answer cannot be read whole and is retried.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpFormat {
    /// One JSON value per line, `Content-Type: application/x-ndjson`.
    #[default]
    Ndjson,
    /// One JSON array, `Content-Type: application/json`.
    JsonArray,
}

pub fn default_timeout_ms() -> u64 {
    30_000
}

/// A service's answer is read up to this many bytes (`max_response_bytes`): an Elasticsearch
/// `_bulk` reply to 10,000 documents, item errors included, is a few MB.
pub fn default_max_response_bytes() -> usize {
    16 << 20
}
