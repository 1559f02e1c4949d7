use std::path::PathBuf;

use crate::sink::http::Compression;

/// `[sinks.NAME] type = "sekoia"`: Sekoia.io HTTP intake, `POST {url}/jsons`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SekoiaConfig {
    #[serde(default = "default_url")]
    pub url: String,
    /// File holding the intake key (or `intake_key_env`).
    pub intake_key_file: Option<PathBuf>,
    pub intake_key_env: Option<String>,
    #[serde(default)]
    pub compression: Compression,
    /// Requests larger than this (compressed) are split before sending.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    #[serde(default = "crate::sink::http::config_default_timeout_ms")]
    pub timeout_ms: u64,
    /// The service's answer is read up to this many bytes (at least 64 KiB): a longer error
    /// answer is kept cut, a longer success answer cannot be read whole and is retried.
    #[serde(default = "crate::sink::http::config_default_max_response_bytes")]
    pub max_response_bytes: usize,
}

fn default_url() -> String {
    "https://intake.sekoia.io".to_owned()
}

fn default_max_request_bytes() -> usize {
    // Stays well under the intake's documented body limit (check the docs of your region).
    4 << 20
}
