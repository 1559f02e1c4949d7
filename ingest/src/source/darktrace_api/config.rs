//! `[sources.NAME] type = "darktrace_api"`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// An API endpoint this source polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Endpoint {
    #[serde(rename = "modelbreaches")]
    ModelBreaches,
    #[serde(rename = "aianalyst/incidentevents")]
    AiAnalystIncidentEvents,
}

impl Endpoint {
    /// The path on the appliance (also the `log_type` Sekoia's connector adds).
    pub fn path(&self) -> &'static str {
        match self {
            Endpoint::ModelBreaches => "/modelbreaches",
            Endpoint::AiAnalystIncidentEvents => "/aianalyst/incidentevents",
        }
    }

    /// As written in the config, in logs and as the `endpoint` metric label.
    pub fn name(&self) -> &'static str {
        &self.path()[1..]
    }

    /// File-name safe form, for the checkpoint file.
    pub fn file_stem(&self) -> &'static str {
        match self {
            Endpoint::ModelBreaches => "modelbreaches",
            Endpoint::AiAnalystIncidentEvents => "aianalyst_incidentevents",
        }
    }

    /// The event field that holds its time (epoch ms) and the one that identifies it.
    pub fn time_and_id_fields(&self) -> (&'static str, &'static str) {
        match self {
            Endpoint::ModelBreaches => ("time", "pbid"),
            Endpoint::AiAnalystIncidentEvents => ("createdAt", "id"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DarktraceApiConfig {
    /// Base URL of the master or cloud instance, e.g. `https://example.cloud.darktrace.com`.
    pub url: String,
    /// Give each token inline, as `*_file` or as `*_env` (exactly one of the three).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_token_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_token_env: Option<String>,
    #[serde(default = "default_endpoints")]
    pub endpoints: Vec<Endpoint>,
    /// Pause between polls once an endpoint is caught up.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Verify the appliance's certificate (on-prem masters often have a self-signed one: prefer
    /// `ca_file` to turning this off).
    #[serde(default = "yes")]
    pub verify_tls: bool,
    /// PEM bundle of extra CAs to trust (besides the built-in roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Requests per second over all endpoints of this source (SEKOIA's connector: 10/minute).
    #[serde(default = "default_rate_limit")]
    pub rate_limit_per_second: f64,
    /// Without a checkpoint, the first poll asks for events of the last this many seconds.
    #[serde(default = "default_first_poll_lookback_secs")]
    pub first_poll_lookback_secs: u64,
    /// Larger responses are refused (counted as `response_too_large`).
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Error backoff: doubles from `initial` up to `max`, jittered.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Extra query parameters sent (and signed) on every request after `starttime`, e.g.
    /// `{ includebreachurl = "true" }`. Values must not need percent-encoding.
    #[serde(default = "default_query")]
    pub query: BTreeMap<String, String>,
    /// Per endpoint, how many ids of forwarded events the checkpoint cannot cover (no usable
    /// time, or dated after the request) are remembered so that they are not forwarded again
    /// when the appliance returns them (see `forwarded.rs`).
    #[serde(default = "default_max_remembered_ids")]
    pub max_remembered_ids: usize,
    /// Open-ended polls also ask for this many seconds before the checkpoint, so that events
    /// the appliance indexes after the cursor has passed their time are still fetched; the
    /// checkpoint lists the events taken there (at most `max_remembered_ids`) so that none is
    /// forwarded twice. 0: no look-back (what other public clients do).
    #[serde(default)]
    pub overlap_secs: u64,
}

fn yes() -> bool {
    true
}
fn default_endpoints() -> Vec<Endpoint> {
    vec![Endpoint::ModelBreaches, Endpoint::AiAnalystIncidentEvents]
}
fn default_poll_interval_ms() -> u64 {
    60_000
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_rate_limit() -> f64 {
    10.0 / 60.0
}
fn default_first_poll_lookback_secs() -> u64 {
    3600
}
fn default_max_response_bytes() -> usize {
    64 << 20
}
fn default_initial_backoff_ms() -> u64 {
    1000
}
fn default_max_backoff_ms() -> u64 {
    300_000
}
fn default_max_remembered_ids() -> usize {
    10_000
}
/// SEKOIA's connector parameters: pinned AIA incidents would otherwise come back on every
/// poll; `historicmodelonly=false` gives the `model.then`/`model.now` form the mappings read.
fn default_query() -> BTreeMap<String, String> {
    [
        ("includeallpinned", "false"),
        ("historicmodelonly", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Most `max_remembered_ids`: about 1.2 GiB of ids per endpoint at worst (≈ 120 bytes each).
const MAX_REMEMBERED_IDS: usize = 10_000_000;

/// Longest `overlap_secs`: a day. Every open-ended poll fetches the whole overlap again.
const MAX_OVERLAP_SECS: u64 = 86_400;

/// Lowest `rate_limit_per_second`: one request a day.
const MIN_RATE_PER_SECOND: f64 = 1.0 / 86_400.0;

/// Characters a query key or value may hold so that the signed bytes equal the sent bytes
/// without any percent-encoding (RFC 3986 unreserved, plus `,` and `:`).
fn plain_query_text(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~,:".contains(&b))
}

/// Both tokens, loaded.
#[derive(Clone, PartialEq)]
pub struct Tokens {
    pub public: Secret,
    pub private: Secret,
}

impl DarktraceApiConfig {
    pub fn tokens(&self) -> Result<Tokens, (String, String)> {
        let load = |key: &str, inline, file, env| match Secret::resolve(key, inline, file, env) {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err((
                key.to_owned(),
                format!("required: give `{key}`, `{key}_file` or `{key}_env`"),
            )),
            Err(message) => {
                let written = if message.contains(&format!("`{key}_file`")) {
                    format!("{key}_file")
                } else if message.contains(&format!("`{key}_env`")) {
                    format!("{key}_env")
                } else {
                    key.to_owned()
                };
                Err((written, message))
            }
        };
        Ok(Tokens {
            public: load(
                "public_token",
                self.public_token.as_ref(),
                self.public_token_file.as_ref(),
                self.public_token_env.as_deref(),
            )?,
            private: load(
                "private_token",
                self.private_token.as_ref(),
                self.private_token_file.as_ref(),
                self.private_token_env.as_deref(),
            )?,
        })
    }

    /// The parameters sent after `starttime` (and `endtime`), as sent: `k=v` in key order.
    pub fn query_text(&self) -> String {
        self.query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The look-back of open-ended polls, and the ids kept to make it safe.
    pub fn overlap(&self) -> super::checkpoint::Overlap {
        super::checkpoint::Overlap {
            // Validated to at most a day.
            ms: i64::try_from(self.overlap_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            max_ids: self.max_remembered_ids,
        }
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The base URL, checked: http(s), no query or fragment; the path (if any) is kept as a
    /// prefix without its trailing `/`.
    pub fn base_url(&self) -> Result<reqwest::Url, String> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| format!("`{}` is not a URL: {e}", self.url))?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(format!("scheme `{}` is not https or http", url.scheme()));
        }
        if url.host_str().is_none() {
            return Err("the URL has no host".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("give the base URL only, without `?query` or `#fragment`".into());
        }
        Ok(url)
    }

    /// Checks values serde cannot: `Err((key, message))`. Loads the tokens and the CA file so
    /// a missing secret or bundle fails at start-up.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.base_url().map_err(|m| ("url".to_owned(), m))?;
        self.tokens()?;
        if self.endpoints.is_empty() {
            return Err(("endpoints".into(), "list at least one endpoint".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for e in &self.endpoints {
            if !seen.insert(e) {
                return Err((
                    "endpoints".into(),
                    format!("`{}` is listed twice", e.name()),
                ));
            }
        }
        for (key, v) in [
            ("poll_interval_ms", self.poll_interval_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("initial_backoff_ms", self.initial_backoff_ms),
            ("max_backoff_ms", self.max_backoff_ms),
            ("max_response_bytes", self.max_response_bytes as u64),
        ] {
            if v == 0 {
                return Err((key.into(), "must be greater than 0".into()));
            }
        }
        if !(1..=MAX_REMEMBERED_IDS).contains(&self.max_remembered_ids) {
            return Err((
                "max_remembered_ids".into(),
                format!("must be between 1 and {MAX_REMEMBERED_IDS}"),
            ));
        }
        if self.overlap_secs > MAX_OVERLAP_SECS {
            return Err((
                "overlap_secs".into(),
                format!(
                    "must be at most {MAX_OVERLAP_SECS} (a day): every poll fetches the overlap again"
                ),
            ));
        }
        if self.max_backoff_ms < self.initial_backoff_ms {
            return Err((
                "max_backoff_ms".into(),
                "must be at least initial_backoff_ms".into(),
            ));
        }
        // The floor keeps the interval between requests (its inverse) a representable
        // duration; a source that may poll less than daily is not a source.
        if !(self.rate_limit_per_second.is_finite()
            && self.rate_limit_per_second >= MIN_RATE_PER_SECOND)
        {
            return Err((
                "rate_limit_per_second".into(),
                format!("must be a number of at least {MIN_RATE_PER_SECOND:e} (one request a day)"),
            ));
        }
        for (k, v) in &self.query {
            if k == "starttime" || k == "endtime" {
                return Err((
                    format!("query.{k}"),
                    "set by the source from its checkpoint".into(),
                ));
            }
            if !plain_query_text(k) || !plain_query_text(v) {
                return Err((
                    format!("query.{k}"),
                    "keys and values may hold only letters, digits and `-._~,:` (the signed \
                     query must equal the sent one, so nothing may need percent-encoding)"
                        .into(),
                ));
            }
        }
        if let Some(path) = &self.ca_file {
            super::client::load_ca_bundle(path).map_err(|m| ("ca_file".to_owned(), m))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> DarktraceApiConfig {
        toml::from_str(&format!(
            "url = \"https://dt.example\"\npublic_token = \"p\"\nprivate_token = \"q\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn overlap_is_off_by_default_and_at_most_a_day() {
        assert_eq!(config("").overlap().ms, 0);
        let day = config("overlap_secs = 86400\nmax_remembered_ids = 7");
        assert!(day.validate().is_ok());
        assert_eq!(
            day.overlap(),
            super::super::checkpoint::Overlap {
                ms: 86_400_000,
                max_ids: 7
            }
        );
        let (key, message) = config("overlap_secs = 86401").validate().unwrap_err();
        assert_eq!(key, "overlap_secs");
        assert!(message.contains("at most 86400"), "{message}");
    }

    #[test]
    fn the_rate_limit_keeps_the_request_interval_representable() {
        assert!(config("").validate().is_ok());
        assert!(
            config("rate_limit_per_second = 1.1574074074074073e-5")
                .validate()
                .is_ok(),
            "one a day"
        );
        for rate in ["1e-20", "0.0", "-1.0", "nan", "inf"] {
            let (key, message) = config(&format!("rate_limit_per_second = {rate}"))
                .validate()
                .unwrap_err();
            assert_eq!(key, "rate_limit_per_second", "{rate}");
            assert!(message.contains("one request a day"), "{rate}: {message}");
        }
    }

    #[test]
    fn max_remembered_ids_is_bounded_and_named_when_wrong() {
        assert_eq!(config("").max_remembered_ids, 10_000);
        assert!(config("max_remembered_ids = 1").validate().is_ok());
        for n in ["0", "10000001"] {
            let (key, message) = config(&format!("max_remembered_ids = {n}"))
                .validate()
                .unwrap_err();
            assert_eq!(key, "max_remembered_ids", "{n}");
            assert!(message.contains("between 1 and 10000000"), "{n}: {message}");
        }
        assert!(
            toml::from_str::<DarktraceApiConfig>(
                "url = \"https://dt.example\"\nmax_remembered_ids = -1"
            )
            .is_err()
        );
    }
}
