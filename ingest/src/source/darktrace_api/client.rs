//! The signed HTTPS client and the classification of the appliance's answers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::credential::{Credential, Renew};

use super::config::{DarktraceApiConfig, Endpoint, Tokens};
use super::signing::{RequestPart, date_header, signature};

/// Why a poll failed; `as_str` is the `kind` label of `sluice_darktrace_api_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 400 `API SIGNATURE ERROR`: wrong private token (or public token) or signed string.
    Signature,
    /// 400 `API DATE ERROR`: clock skew between this host and the appliance.
    Date,
    /// 401/403, or a redirect to `/403`: the token lacks permission.
    Permission,
    /// A redirect to `/login`: signature accepted but the endpoint is not valid here.
    Endpoint,
    /// 429.
    RateLimited,
    /// Any other non-2xx status.
    HttpStatus,
    Timeout,
    /// Connection, TLS or protocol failure.
    Transport,
    ResponseTooLarge,
    /// The body is not a JSON array.
    BadResponse,
    /// A sink did not take the events (spool refused them): they are fetched again.
    NotCommitted,
    /// The events are spooled but the checkpoint could not be written.
    CheckpointWrite,
}

impl ErrorKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::Signature => "signature",
            ErrorKind::Date => "date",
            ErrorKind::Permission => "permission",
            ErrorKind::Endpoint => "endpoint",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Transport => "transport",
            ErrorKind::ResponseTooLarge => "response_too_large",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::NotCommitted => "not_committed",
            ErrorKind::CheckpointWrite => "checkpoint_write",
        }
    }

    /// Errors that waiting will not fix: an operator must act (logged at error level).
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            ErrorKind::Signature | ErrorKind::Date | ErrorKind::Permission | ErrorKind::Endpoint
        )
    }
}

#[derive(Debug)]
pub struct FetchError {
    pub kind: ErrorKind,
    pub message: String,
    /// `Retry-After` of a 429 / 503.
    pub retry_after: Option<Duration>,
}

impl FetchError {
    fn new(kind: ErrorKind, message: String) -> FetchError {
        FetchError {
            kind,
            message,
            retry_after: None,
        }
    }
}

/// Reads a PEM bundle (one or more certificates).
pub fn load_ca_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{}: not a PEM certificate bundle: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

pub struct Client {
    http: reqwest::Client,
    base: reqwest::Url,
    /// The base URL's path without its trailing `/`.
    prefix: String,
    tokens: Arc<Credential<Tokens, String>>,
    query: Vec<(String, String)>,
    max_response_bytes: usize,
}

impl Client {
    /// The client of source `name`.
    pub fn new(name: &str, config: &DarktraceApiConfig) -> anyhow::Result<Client> {
        let base = config.base_url().map_err(|e| anyhow::anyhow!("url: {e}"))?;
        let tokens_config = config.clone();
        let tokens = Credential::load(format!("sources.{name}.tokens"), move || {
            tokens_config
                .tokens()
                .map_err(|(key, message)| format!("{key}: {message}"))
        })
        .map_err(|e| anyhow::anyhow!(e))?;
        let mut builder = reqwest::Client::builder()
            .timeout(config.request_timeout())
            .connect_timeout(config.request_timeout().min(Duration::from_secs(10)))
            // A redirect is an answer here (`/login`: bad endpoint, `/403`: no permission).
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(!config.verify_tls);
        if let Some(path) = &config.ca_file {
            for cert in load_ca_bundle(path).map_err(|e| anyhow::anyhow!("ca_file: {e}"))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build()?;
        Ok(Client {
            prefix: base.path().trim_end_matches('/').to_owned(),
            base,
            http,
            tokens,
            query: config
                .query
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            max_response_bytes: config.max_response_bytes,
        })
    }

    /// The appliance's base URL as configured (checked).
    pub fn base(&self) -> &reqwest::Url {
        &self.base
    }

    pub fn request_part(
        &self,
        endpoint: Endpoint,
        starttime_ms: i64,
        endtime_ms: Option<i64>,
    ) -> RequestPart {
        RequestPart::new(
            &self.prefix,
            endpoint.path(),
            starttime_ms,
            endtime_ms,
            self.query.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }

    /// One signed GET for the events from `starttime_ms` (to `endtime_ms`, when bounded); the
    /// body of a 2xx answer, bounded by `max_response_bytes`.
    pub async fn fetch(
        &self,
        endpoint: Endpoint,
        starttime_ms: i64,
        endtime_ms: Option<i64>,
    ) -> Result<Vec<u8>, FetchError> {
        let part = self.request_part(endpoint, starttime_ms, endtime_ms);
        let url = part
            .url(&self.base)
            .map_err(|m| FetchError::new(ErrorKind::BadResponse, m))?;
        let date = date_header(chrono::Utc::now());
        let (tokens, generation) = self.tokens.snapshot();
        let sig = signature(
            tokens.private.expose(),
            tokens.public.expose(),
            part.as_str(),
            &date,
        );
        let response = self
            .http
            .get(url)
            .header("DTAPI-Token", tokens.public.expose())
            .header("DTAPI-Date", &date)
            .header("DTAPI-Signature", sig)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let retry_after = crate::sink::http::common::retry_after(response.headers());
        let body = self.read_body(response).await?;
        if status.is_success() {
            return Ok(body);
        }
        let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
        let mut e = classify(status.as_u16(), location.as_deref(), &text, &date);
        e.retry_after = retry_after;
        if matches!(e.kind, ErrorKind::Signature | ErrorKind::Permission) {
            self.renew_tokens(generation);
        }
        Err(e)
    }

    /// After the appliance refused tokens of generation `sent_with`: reads them again, so that
    /// tokens rotated in their files are used from the next poll without a reload.
    fn renew_tokens(&self, sent_with: u64) {
        if let Err(e) = self.tokens.renew() {
            tracing::warn!(
                credential = self.tokens.name(),
                "reading the API tokens again: {e}"
            );
        }
        if self.tokens.generation() != sent_with {
            tracing::info!(
                credential = self.tokens.name(),
                "the appliance refused API tokens that have been renewed since: the next poll uses the new ones"
            );
        }
    }

    /// The API tokens, for `systemctl reload` to read again.
    pub fn credentials(&self) -> Arc<dyn Renew> {
        self.tokens.clone()
    }

    async fn read_body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, FetchError> {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if body.len() + chunk.len() > self.max_response_bytes {
                return Err(FetchError::new(
                    ErrorKind::ResponseTooLarge,
                    format!(
                        "the response is larger than max_response_bytes = {}",
                        self.max_response_bytes
                    ),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

fn transport_error(e: reqwest::Error) -> FetchError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Transport
    };
    FetchError::new(kind, message)
}

/// Maps a non-2xx answer to its kind and an explanation an operator can act on.
pub fn classify(status: u16, location: Option<&str>, body: &str, date: &str) -> FetchError {
    let (kind, message) = if body.contains("API SIGNATURE ERROR") {
        (
            ErrorKind::Signature,
            "the appliance rejected the request signature (API SIGNATURE ERROR): check \
             public_token and private_token (a wrong private token gives exactly this)"
                .to_owned(),
        )
    } else if body.contains("API DATE ERROR") {
        (
            ErrorKind::Date,
            format!(
                "the appliance rejected DTAPI-Date {date} UTC (API DATE ERROR): this host's clock \
                 and the appliance's differ (clock skew is the usual cause): check NTP on both"
            ),
        )
    } else if (300..400).contains(&status) && location.is_some_and(|l| l.contains("403")) {
        (
            ErrorKind::Permission,
            "redirected to /403: the API token lacks permission for this endpoint".to_owned(),
        )
    } else if (300..400).contains(&status) && location.is_some_and(|l| l.contains("login")) {
        (
            ErrorKind::Endpoint,
            "redirected to /login: the signature was accepted but the endpoint is not valid on \
             this appliance (check `url` and `endpoints`)"
                .to_owned(),
        )
    } else if status == 401 || status == 403 {
        (
            ErrorKind::Permission,
            format!("HTTP {status}: not authorised: check the API tokens and their permissions"),
        )
    } else if status == 429 {
        (
            ErrorKind::RateLimited,
            "HTTP 429: rate limited by the appliance (lower rate_limit_per_second)".to_owned(),
        )
    } else {
        (ErrorKind::HttpStatus, format!("HTTP {status}"))
    };
    let body = body.trim();
    let message = if body.is_empty() {
        message
    } else {
        format!("{message}; response: {body}")
    };
    FetchError::new(kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appliance_errors_are_told_apart() {
        let d = "20230628T125331";
        let e = classify(400, None, "{\"error\":\"API SIGNATURE ERROR\"}", d);
        assert_eq!(e.kind, ErrorKind::Signature);
        assert!(e.message.contains("private_token"), "{}", e.message);
        let e = classify(400, None, "\"API DATE ERROR\"", d);
        assert_eq!(e.kind, ErrorKind::Date);
        assert!(e.message.contains("clock skew") && e.message.contains(d));
        let e = classify(302, Some("/login"), "Found. Redirecting to /login", d);
        assert_eq!(e.kind, ErrorKind::Endpoint);
        let e = classify(302, Some("/403"), "Found. Redirecting to /403", d);
        assert_eq!(e.kind, ErrorKind::Permission);
        assert_eq!(classify(503, None, "", d).kind, ErrorKind::HttpStatus);
        assert!(ErrorKind::Date.needs_operator() && !ErrorKind::Timeout.needs_operator());
    }
}
