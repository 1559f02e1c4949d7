use std::path::PathBuf;

use crate::sink::http::Compression;

/// `[sinks.NAME] type = "elasticsearch"`: `_bulk` API.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchConfig {
    /// Cluster URL, e.g. `https://es.example:9200`.
    pub endpoint: String,
    /// Index or data stream; documents are sent with the `create` action (required by data
    /// streams, fine for indices).
    pub index: String,
    /// Ingest pipeline to run, if any.
    pub pipeline: Option<String>,
    /// Encoded API key (the `encoded` value Elasticsearch returns), from a file or env.
    pub api_key_file: Option<PathBuf>,
    pub api_key_env: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    #[serde(default)]
    pub compression: Compression,
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    #[serde(default = "crate::sink::http::config_default_timeout_ms")]
    pub timeout_ms: u64,
    /// The service's answer is read up to this many bytes (at least 64 KiB): a longer error
    /// answer is kept cut, a longer success answer cannot be read whole and is retried.
    #[serde(default = "crate::sink::http::config_default_max_response_bytes")]
    pub max_response_bytes: usize,
}

fn default_max_request_bytes() -> usize {
    // Elasticsearch's http.max_content_length is 100 MB uncompressed; bulk sizes of a few MB
    // are the usual sweet spot.
    10 << 20
}
