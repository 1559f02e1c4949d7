use std::path::PathBuf;

/// `[sinks.NAME] type = "azure_logs_ingestion"`: Azure Monitor Logs Ingestion API
/// (Microsoft Sentinel).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AzureLogsIngestionConfig {
    /// Data collection endpoint (or the DCR's logs ingestion endpoint),
    /// e.g. `https://my-dce-abcd.westeurope-1.ingest.monitor.azure.com`.
    pub endpoint: String,
    /// The DCR's immutable id, `dcr-…`.
    pub dcr_immutable_id: String,
    /// Input stream declared in the DCR's `streamDeclarations` (always `Custom-…`); the DCR's
    /// data flow sends it on to the table, e.g. `outputStream: Microsoft-CommonSecurityLog`.
    /// The URL must name the declared input stream, not the output one.
    #[serde(default = "default_stream")]
    pub stream: String,
    pub tenant_id: String,
    pub client_id: String,
    /// File holding the app registration's client secret (or `client_secret_env`).
    pub client_secret_file: Option<PathBuf>,
    pub client_secret_env: Option<String>,
    /// Entra ID login host; sovereign clouds use another (e.g. `https://login.microsoftonline.us`).
    #[serde(default = "default_authority")]
    pub authority: String,
    #[serde(default = "default_scope")]
    pub scope: String,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// Largest request body, compressed. The service's limit is 1 MB per call; this cannot be
    /// set above 1,048,576.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Largest request body before gzip. Microsoft documents the 1 MB per call for "both
    /// compressed and uncompressed data"; bounding only the compressed size let a call carry
    /// several MB of JSON.
    #[serde(default = "default_max_uncompressed_request_bytes")]
    pub max_uncompressed_request_bytes: usize,
    /// String values longer than this are truncated (the service truncates at 64 KB anyway;
    /// doing it here keeps the request size honest and counts it).
    #[serde(default = "default_max_field_bytes")]
    pub max_field_bytes: usize,
    #[serde(default = "crate::sink::http::config_default_timeout_ms")]
    pub timeout_ms: u64,
    /// The service's answer is read up to this many bytes (at least 64 KiB): a longer error
    /// answer is kept cut, a longer success answer cannot be read whole and is retried.
    #[serde(default = "crate::sink::http::config_default_max_response_bytes")]
    pub max_response_bytes: usize,
}

pub const AZURE_MAX_CALL_BYTES: usize = 1 << 20;

fn default_stream() -> String {
    "Custom-CommonSecurityLog".to_owned()
}

fn default_authority() -> String {
    "https://login.microsoftonline.com".to_owned()
}

fn default_scope() -> String {
    "https://monitor.azure.com//.default".to_owned()
}

fn default_api_version() -> String {
    "2023-01-01".to_owned()
}

fn default_max_request_bytes() -> usize {
    1_000_000
}

fn default_max_uncompressed_request_bytes() -> usize {
    1_000_000
}

fn default_max_field_bytes() -> usize {
    64 * 1024
}
