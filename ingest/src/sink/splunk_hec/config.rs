use std::path::PathBuf;

use crate::sink::http::Compression;

/// `[sinks.NAME] type = "splunk_hec"`: Splunk HTTP Event Collector.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplunkHecConfig {
    /// Base URL of the collector, e.g. `https://splunk.example:8088`.
    pub endpoint: String,
    /// File holding the HEC token (or `token_env`).
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub index: Option<String>,
    pub sourcetype: Option<String>,
    pub source: Option<String>,
    /// `host` of the events whose message names no host (each other event has its syslog
    /// hostname); unset: the sender's IP address, as Splunk's own network inputs record it
    /// (`connection_host = ip`), and HEC's default for events that have none (API sources).
    pub host: Option<String>,
    /// Indexer acknowledgement: poll `/services/collector/ack` and only then let the batch
    /// leave the spool. Needs `useACK` on the token; without it HEC replies with no `ackId`,
    /// and the batch is taken as delivered (logged, counted) rather than indexed again.
    #[serde(default)]
    pub ack: bool,
    /// Channel GUID sent as `X-Splunk-Request-Channel` (generated when unset).
    pub channel: Option<String>,
    #[serde(default = "default_ack_poll_ms")]
    pub ack_poll_interval_ms: u64,
    /// Give up waiting for the ack and resend after this long (duplicates, never loss).
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
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

fn default_ack_poll_ms() -> u64 {
    500
}

fn default_ack_timeout_ms() -> u64 {
    120_000
}

fn default_max_request_bytes() -> usize {
    // HEC's default max_content_length is 800 MB uncompressed, but big requests hurt retries.
    8 << 20
}
