//! In-process fakes of the services the sinks upload to. Each one implements the documented
//! contract and refuses what the real service refuses: wrong credentials, wrong path,
//! unsupported `Content-Encoding`, malformed bodies, oversize calls. Faults (5xx, 429 with
//! `Retry-After`) are injected through [`Faults`].

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub type Reply = Response<Full<Bytes>>;
pub type Handler = Arc<dyn Fn(&Parts, &[u8]) -> Reply + Send + Sync>;

pub fn reply(status: u16, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub path: String,
    pub status: u16,
    pub body_len: usize,
}

/// Injected failures, checked before the service logic.
#[derive(Default)]
pub struct Faults {
    /// Answer this status to every request until the instant.
    pub fail_until: Mutex<Option<(Instant, u16)>>,
    /// Answer these (status, Retry-After) to the next requests, one each.
    pub next: Mutex<VecDeque<(u16, Option<&'static str>)>>,
}

pub struct Server {
    pub addr: SocketAddr,
    pub faults: Arc<Faults>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests seen so far, after checking that every one was answered `status`.
    pub fn all_answered(&self, status: u16) -> Vec<Seen> {
        let seen = self.seen();
        let other: Vec<&Seen> = seen.iter().filter(|s| s.status != status).collect();
        assert!(other.is_empty(), "requests answered otherwise: {other:?}");
        seen
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve(handler: Handler) -> Server {
    serve_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), handler)
}

pub async fn serve_at(addr: SocketAddr, handler: Handler) -> Server {
    serve_on(TcpListener::bind(addr).await.unwrap(), handler)
}

/// A loopback address nothing listens on (yet).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn serve_on(listener: TcpListener, handler: Handler) -> Server {
    let addr = listener.local_addr().unwrap();
    let faults = Arc::new(Faults::default());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (f, s) = (faults.clone(), seen.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (handler, faults, seen) = (handler.clone(), f.clone(), s.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (handler, faults, seen) = (handler.clone(), faults.clone(), seen.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let resp = inject(&faults).unwrap_or_else(|| handler(&parts, &body));
                        seen.lock().unwrap().push(Seen {
                            at: Instant::now(),
                            path: parts.uri.path().to_owned(),
                            status: resp.status().as_u16(),
                            body_len: body.len(),
                        });
                        Ok::<_, hyper::Error>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Server {
        addr,
        faults,
        seen,
        task,
    }
}

fn inject(faults: &Faults) -> Option<Reply> {
    if let Some((status, retry_after)) = faults.next.lock().unwrap().pop_front() {
        let mut r = reply(status, r#"{"error":"injected"}"#);
        if let Some(ra) = retry_after {
            r.headers_mut().insert("retry-after", ra.parse().unwrap());
        }
        return Some(r);
    }
    if let Some((until, status)) = *faults.fail_until.lock().unwrap()
        && Instant::now() < until
    {
        return Some(reply(status, r#"{"error":"injected outage"}"#));
    }
    None
}

fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Decodes the body per `Content-Encoding`; `Err` is the reply for an unsupported one.
#[allow(clippy::result_large_err)]
fn decode(parts: &Parts, body: &[u8]) -> Result<Vec<u8>, Reply> {
    match header(parts, "content-encoding") {
        None | Some("identity") => Ok(body.to_vec()),
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .map_err(|_| reply(400, r#"{"error":"invalid gzip body"}"#))?;
            Ok(out)
        }
        Some(other) => Err(reply(
            415,
            format!(r#"{{"error":"unsupported content-encoding {other}"}}"#),
        )),
    }
}

/// Events accepted by a fake service, in arrival order.
#[derive(Default)]
pub struct Accepted {
    pub events: Mutex<Vec<serde_json::Value>>,
    pub requests: AtomicU64,
}

impl Accepted {
    pub fn count(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    /// Every accepted event as JSON text, in arrival order.
    pub fn texts(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    /// The `ExternalID` of every accepted event, sorted.
    pub fn ids(&self, field: &str) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .events
            .lock()
            .unwrap()
            .iter()
            .map(|e| {
                e[field]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no {field} in {e}"))
            })
            .collect();
        ids.sort_unstable();
        ids
    }
}

// ---------------------------------------------------------------------------------------------
// Microsoft Entra token endpoint + Azure Monitor Logs Ingestion API.

pub struct AzureFake {
    pub tenant: &'static str,
    pub client_id: &'static str,
    pub client_secret: &'static str,
    pub dcr: &'static str,
    pub stream: &'static str,
    pub tokens_issued: AtomicU64,
    /// Lifetime of issued tokens, seconds.
    pub token_lifetime: AtomicU64,
    pub accepted: Accepted,
    pub max_body_seen: AtomicU64,
    /// Largest body after `Content-Encoding` was undone.
    pub max_uncompressed_seen: AtomicU64,
}

impl AzureFake {
    pub fn new() -> Arc<AzureFake> {
        Arc::new(AzureFake {
            tenant: "00000000-1111-2222-3333-444444444444",
            client_id: "app-client-id",
            client_secret: "s3cr3t~value",
            dcr: "dcr-0123456789abcdef0123456789abcdef",
            stream: "Custom-CommonSecurityLog",
            tokens_issued: AtomicU64::new(0),
            token_lifetime: AtomicU64::new(3599),
            accepted: Accepted::default(),
            max_body_seen: AtomicU64::new(0),
            max_uncompressed_seen: AtomicU64::new(0),
        })
    }

    pub fn token_handler(self: &Arc<Self>) -> Handler {
        let me = self.clone();
        Arc::new(move |parts, body| {
            if parts.method != hyper::Method::POST
                || parts.uri.path() != format!("/{}/oauth2/v2.0/token", me.tenant)
            {
                return reply(404, r#"{"error":"invalid_request"}"#);
            }
            if header(parts, "content-type") != Some("application/x-www-form-urlencoded") {
                return reply(400, r#"{"error":"invalid_request"}"#);
            }
            let form: HashMap<String, String> = url_decode_form(body);
            let get = |k: &str| form.get(k).map(String::as_str);
            if get("grant_type") != Some("client_credentials")
                || get("scope") != Some("https://monitor.azure.com//.default")
            {
                return reply(400, r#"{"error":"invalid_request"}"#);
            }
            if get("client_id") != Some(me.client_id)
                || get("client_secret") != Some(me.client_secret)
            {
                return reply(
                    401,
                    r#"{"error":"invalid_client","error_description":"AADSTS7000215"}"#,
                );
            }
            let n = me.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
            let life = me.token_lifetime.load(Ordering::SeqCst);
            reply(
                200,
                format!(
                    r#"{{"token_type":"Bearer","expires_in":{life},"ext_expires_in":{life},"access_token":"tok-{n}"}}"#
                ),
            )
        })
    }

    pub fn ingestion_handler(self: &Arc<Self>) -> Handler {
        let me = self.clone();
        Arc::new(move |parts, body| {
            me.max_body_seen
                .fetch_max(body.len() as u64, Ordering::SeqCst);
            let expected_path = format!("/dataCollectionRules/{}/streams/{}", me.dcr, me.stream);
            if parts.method != hyper::Method::POST || parts.uri.path() != expected_path {
                return reply(404, r#"{"error":{"code":"NotFound"}}"#);
            }
            if parts.uri.query() != Some("api-version=2023-01-01") {
                return reply(400, r#"{"error":{"code":"InvalidApiVersion"}}"#);
            }
            let issued = me.tokens_issued.load(Ordering::SeqCst);
            let valid = header(parts, "authorization")
                .and_then(|a| a.strip_prefix("Bearer tok-"))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= 1 && n <= issued);
            if !valid {
                return reply(401, r#"{"error":{"code":"InvalidToken"}}"#);
            }
            // The documented limit: 1 MB per call.
            if body.len() > 1 << 20 {
                return reply(413, r#"{"error":{"code":"ContentLengthLimitExceeded"}}"#);
            }
            let json = match decode(parts, body) {
                Ok(j) => j,
                Err(r) => return r,
            };
            me.max_uncompressed_seen
                .fetch_max(json.len() as u64, Ordering::SeqCst);
            // Documented for "both compressed and uncompressed data".
            if json.len() > 1 << 20 {
                return reply(413, r#"{"error":{"code":"ContentLengthLimitExceeded"}}"#);
            }
            let Ok(serde_json::Value::Array(rows)) = serde_json::from_slice(&json) else {
                return reply(400, r#"{"error":{"code":"InvalidJson"}}"#);
            };
            if rows.iter().any(|r| !r.is_object()) {
                return reply(
                    400,
                    r#"{"error":{"code":"InvalidJson","message":"rows must be objects"}}"#,
                );
            }
            me.accepted.requests.fetch_add(1, Ordering::SeqCst);
            me.accepted.events.lock().unwrap().extend(rows);
            reply(204, "")
        })
    }
}

fn url_decode_form(body: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (pct_decode(k), pct_decode(v)))
        .collect()
}

fn pct_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Sekoia.io intake.

pub struct SekoiaFake {
    pub key: &'static str,
    pub accepted: Accepted,
    /// Leave this many ids out of each reply, as an intake that dropped events would.
    pub missing_ids: AtomicU64,
}

impl SekoiaFake {
    pub fn new() -> Arc<SekoiaFake> {
        Arc::new(SekoiaFake {
            key: "intake-key-abc",
            accepted: Accepted::default(),
            missing_ids: AtomicU64::new(0),
        })
    }

    pub fn handler(self: &Arc<Self>) -> Handler {
        let me = self.clone();
        Arc::new(move |parts, body| {
            if parts.method != hyper::Method::POST || parts.uri.path() != "/jsons" {
                return reply(404, r#"{"message":"not found"}"#);
            }
            if header(parts, "x-sekoiaio-intake-key") != Some(me.key) {
                return reply(401, r#"{"message":"invalid intake key"}"#);
            }
            let json = match decode(parts, body) {
                Ok(j) => j,
                Err(r) => return r,
            };
            let Ok(serde_json::Value::Array(items)) = serde_json::from_slice(&json) else {
                return reply(400, r#"{"message":"body must be a JSON array"}"#);
            };
            let mut events = Vec::new();
            for item in &items {
                // Raw event strings; Sekoia parses them server-side.
                let Some(s) = item.as_str() else {
                    return reply(400, r#"{"message":"events must be strings"}"#);
                };
                events.push(serde_json::Value::String(s.to_owned()));
            }
            let missing = me.missing_ids.load(Ordering::SeqCst) as usize;
            let ids: Vec<String> = (0..events.len().saturating_sub(missing))
                .map(|i| format!("\"id-{i}\""))
                .collect();
            me.accepted.requests.fetch_add(1, Ordering::SeqCst);
            me.accepted.events.lock().unwrap().extend(events);
            reply(200, format!(r#"{{"event_ids":[{}]}}"#, ids.join(",")))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Splunk HTTP Event Collector, with indexer acknowledgement.

pub struct SplunkFake {
    pub token: &'static str,
    /// The tokens HEC takes: `token` at first; a test rotating tokens changes the list.
    pub valid_tokens: Mutex<Vec<String>>,
    pub ack_enabled: bool,
    pub accepted: Accepted,
    /// ackId → polls left before it reports indexed.
    pending_acks: Mutex<HashMap<u64, u32>>,
    next_ack: AtomicU64,
    pub ack_polls: AtomicU64,
    pub envelopes: Mutex<Vec<serde_json::Value>>,
}

impl SplunkFake {
    pub fn new(ack_enabled: bool) -> Arc<SplunkFake> {
        Arc::new(SplunkFake {
            token: "11111111-2222-3333-4444-555555555555",
            valid_tokens: Mutex::new(vec!["11111111-2222-3333-4444-555555555555".to_owned()]),
            ack_enabled,
            accepted: Accepted::default(),
            pending_acks: Mutex::new(HashMap::new()),
            next_ack: AtomicU64::new(0),
            ack_polls: AtomicU64::new(0),
            envelopes: Mutex::new(Vec::new()),
        })
    }

    pub fn handler(self: &Arc<Self>) -> Handler {
        let me = self.clone();
        Arc::new(move |parts, body| {
            let valid = header(parts, "authorization").is_some_and(|auth| {
                me.valid_tokens
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|t| auth == format!("Splunk {t}"))
            });
            if !valid {
                return reply(401, r#"{"text":"Invalid token","code":4}"#);
            }
            let channel = header(parts, "x-splunk-request-channel");
            if me.ack_enabled && channel.is_none() {
                return reply(400, r#"{"text":"Data channel is missing","code":10}"#);
            }
            match parts.uri.path() {
                "/services/collector/event" => {
                    let data = match decode(parts, body) {
                        Ok(d) => d,
                        Err(r) => return r,
                    };
                    let mut events = Vec::new();
                    let mut envelopes = Vec::new();
                    for v in
                        serde_json::Deserializer::from_slice(&data).into_iter::<serde_json::Value>()
                    {
                        let Ok(v) = v else {
                            return reply(400, r#"{"text":"Invalid data format","code":6}"#);
                        };
                        let Some(event) = v.get("event") else {
                            return reply(400, r#"{"text":"Event field is required","code":12}"#);
                        };
                        // `time`: epoch seconds, a number (or its text); `host`: a string.
                        let time_ok = match v.get("time") {
                            None => true,
                            Some(t) => {
                                t.is_number()
                                    || t.as_str().is_some_and(|s| s.parse::<f64>().is_ok())
                            }
                        };
                        if !time_ok || v.get("host").is_some_and(|h| !h.is_string()) {
                            return reply(400, r#"{"text":"Invalid data format","code":6}"#);
                        }
                        events.push(event.clone());
                        envelopes.push(v);
                    }
                    if events.is_empty() {
                        return reply(400, r#"{"text":"No data","code":5}"#);
                    }
                    me.accepted.requests.fetch_add(1, Ordering::SeqCst);
                    me.accepted.events.lock().unwrap().extend(events);
                    me.envelopes.lock().unwrap().extend(envelopes);
                    if me.ack_enabled {
                        let id = me.next_ack.fetch_add(1, Ordering::SeqCst);
                        me.pending_acks.lock().unwrap().insert(id, 2);
                        reply(
                            200,
                            format!(r#"{{"text":"Success","code":0,"ackId":{id}}}"#),
                        )
                    } else {
                        reply(200, r#"{"text":"Success","code":0}"#)
                    }
                }
                "/services/collector/ack" if me.ack_enabled => {
                    me.ack_polls.fetch_add(1, Ordering::SeqCst);
                    let Ok(req) = serde_json::from_slice::<serde_json::Value>(body) else {
                        return reply(400, r#"{"text":"Invalid data format","code":6}"#);
                    };
                    let mut pending = me.pending_acks.lock().unwrap();
                    let mut answer = serde_json::Map::new();
                    for id in req["acks"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_u64())
                    {
                        let done = match pending.get_mut(&id) {
                            Some(0) => true,
                            Some(n) => {
                                *n -= 1;
                                false
                            }
                            None => false,
                        };
                        answer.insert(id.to_string(), serde_json::Value::Bool(done));
                    }
                    reply(200, serde_json::json!({ "acks": answer }).to_string())
                }
                _ => reply(
                    404,
                    r#"{"text":"The requested URL was not found on this server.","code":404}"#,
                ),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Elasticsearch `_bulk`.

pub struct ElasticFake {
    pub api_key: &'static str,
    pub accepted: Accepted,
    /// The target is a data stream: a document without a date in `@timestamp` is refused, as
    /// Elasticsearch refuses it when no ingest pipeline sets one.
    data_stream: bool,
    /// Documents with `"flaky": true` get a per-item 429 this many times first.
    flaky_failures: Mutex<HashMap<u64, u32>>,
}

impl ElasticFake {
    pub fn new() -> Arc<ElasticFake> {
        Arc::new(ElasticFake {
            api_key: "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==",
            accepted: Accepted::default(),
            data_stream: false,
            flaky_failures: Mutex::new(HashMap::new()),
        })
    }

    /// [`ElasticFake::new`] whose index is a data stream.
    pub fn data_stream() -> Arc<ElasticFake> {
        let mut fake = ElasticFake::new();
        Arc::get_mut(&mut fake).unwrap().data_stream = true;
        fake
    }

    pub fn handler(self: &Arc<Self>) -> Handler {
        let me = self.clone();
        Arc::new(move |parts, body| {
            if parts.uri.path() != "/_bulk" || parts.method != hyper::Method::POST {
                return reply(404, r#"{"error":"no handler"}"#);
            }
            if header(parts, "authorization") != Some(&format!("ApiKey {}", me.api_key)) {
                return reply(
                    401,
                    r#"{"error":{"type":"security_exception"},"status":401}"#,
                );
            }
            if !header(parts, "content-type").is_some_and(|c| c.starts_with("application/x-ndjson"))
            {
                return reply(
                    406,
                    r#"{"error":"Content-Type header is not supported","status":406}"#,
                );
            }
            let data = match decode(parts, body) {
                Ok(d) => d,
                Err(r) => return r,
            };
            if data.last() != Some(&b'\n') {
                return reply(
                    400,
                    r#"{"error":{"type":"illegal_argument_exception","reason":"The bulk request must be terminated by a newline [\\n]"},"status":400}"#,
                );
            }
            let lines: Vec<&[u8]> = data
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .collect();
            if !lines.len().is_multiple_of(2) {
                return reply(
                    400,
                    r#"{"error":{"type":"action_request_validation_exception"},"status":400}"#,
                );
            }
            let mut items = Vec::new();
            let mut errors = false;
            let mut docs = Vec::new();
            for pair in lines.chunks(2) {
                let Ok(action) = serde_json::from_slice::<serde_json::Value>(pair[0]) else {
                    return reply(
                        400,
                        r#"{"error":{"type":"x_content_parse_exception"},"status":400}"#,
                    );
                };
                if action["create"]["_index"].as_str().is_none() {
                    return reply(
                        400,
                        r#"{"error":{"type":"illegal_argument_exception","reason":"Malformed action"},"status":400}"#,
                    );
                }
                let doc = serde_json::from_slice::<serde_json::Value>(pair[1]);
                let dated = |d: &serde_json::Value| {
                    d["@timestamp"]
                        .as_str()
                        .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
                };
                let (status, error) = match doc {
                    Ok(d) if d.is_object() && me.data_stream && !dated(&d) => (
                        400,
                        Some(
                            r#"{"type":"document_parsing_exception","reason":"data stream timestamp field [@timestamp] is missing"}"#,
                        ),
                    ),
                    Ok(d) if d.is_object() && d["reject"] == true => (
                        400,
                        Some(r#"{"type":"mapper_parsing_exception","reason":"failed to parse"}"#),
                    ),
                    Ok(d) if d.is_object() && d["flaky"] == true => {
                        let id = d["ExternalID"].as_u64().unwrap_or(0);
                        let mut flaky = me.flaky_failures.lock().unwrap();
                        let left = flaky.entry(id).or_insert(2);
                        if *left > 0 {
                            *left -= 1;
                            (429, Some(r#"{"type":"es_rejected_execution_exception"}"#))
                        } else {
                            docs.push(d);
                            (201, None)
                        }
                    }
                    Ok(d) if d.is_object() => {
                        docs.push(d);
                        (201, None)
                    }
                    _ => (400, Some(r#"{"type":"document_parsing_exception"}"#)),
                };
                errors |= error.is_some();
                items.push(match error {
                    Some(e) => format!(r#"{{"create":{{"_index":"x","status":{status},"error":{e}}}}}"#),
                    None => format!(r#"{{"create":{{"_index":"x","_id":"a","status":{status},"result":"created"}}}}"#),
                });
            }
            me.accepted.requests.fetch_add(1, Ordering::SeqCst);
            me.accepted.events.lock().unwrap().extend(docs);
            reply(
                200,
                format!(
                    r#"{{"took":3,"errors":{errors},"items":[{}]}}"#,
                    items.join(",")
                ),
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// A generic NDJSON relay with a header key.

pub struct RelayFake {
    pub key: &'static str,
    pub accepted: Accepted,
}

impl RelayFake {
    pub fn new() -> Arc<RelayFake> {
        Arc::new(RelayFake {
            key: "relay-key",
            accepted: Accepted::default(),
        })
    }

    pub fn handler(self: &Arc<Self>) -> Handler {
        let me = self.clone();
        Arc::new(move |parts, body| {
            if header(parts, "x-api-key") != Some(me.key) {
                return reply(401, r#"{"error":"unauthorized"}"#);
            }
            let data = match decode(parts, body) {
                Ok(d) => d,
                Err(r) => return r,
            };
            let ct = header(parts, "content-type").unwrap_or("");
            let events: Vec<serde_json::Value> = if ct.starts_with("application/x-ndjson") {
                let mut v = Vec::new();
                for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    match serde_json::from_slice(line) {
                        Ok(e) => v.push(e),
                        Err(_) => return reply(400, r#"{"error":"bad json line"}"#),
                    }
                }
                v
            } else if ct.starts_with("application/json") {
                match serde_json::from_slice(&data) {
                    Ok(serde_json::Value::Array(a)) => a,
                    _ => return reply(400, r#"{"error":"expected a JSON array"}"#),
                }
            } else {
                return reply(415, r#"{"error":"unsupported content type"}"#);
            };
            me.accepted.requests.fetch_add(1, Ordering::SeqCst);
            me.accepted.events.lock().unwrap().extend(events);
            reply(200, "{}")
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Events.

/// A CommonSecurityLog row shaped like a Darktrace alert; `ExternalID` identifies it.
pub fn csl_row(id: u64) -> String {
    serde_json::json!({
        "TimeGenerated": "2026-11-22T10:00:00.000Z",
        "DeviceVendor": "Darktrace",
        "DeviceProduct": "DCIP",
        "DeviceVersion": "6.1",
        "DeviceEventClassID": "Anomalous Connection / Data Sent to Rare Domain",
        "Activity": "Anomalous Connection / Data Sent to Rare Domain",
        "LogSeverity": "7",
        "SourceIP": format!("10.{}.{}.{}", id % 200, (id / 200) % 250, id % 250),
        "DestinationHostName": format!("rare-{id:x}.example.net"),
        "Message": format!("Model breach {id}: device sent unusual volume to a rare external endpoint"),
        "ExternalID": id,
    })
    .to_string()
}

pub fn csl_batch(ids: std::ops::Range<u64>) -> sluice::sink::Batch {
    let mut ndjson = Vec::new();
    let mut events = 0;
    for id in ids {
        ndjson.extend_from_slice(csl_row(id).as_bytes());
        ndjson.push(b'\n');
        events += 1;
    }
    sluice::sink::Batch { events, ndjson }
}

/// Schema `raw`: each line is the original syslog message as a JSON string.
pub fn raw_batch(ids: std::ops::Range<u64>) -> sluice::sink::Batch {
    let mut ndjson = Vec::new();
    let mut events = 0;
    for id in ids {
        let msg = format!(
            "<134>1 2026-11-22T10:00:00Z dt-master darktrace - - - {{\"uuid\":\"{id}\",\"model\":\"Anomalous Connection\",\"score\":0.87}}"
        );
        serde_json::to_writer(&mut ndjson, &msg).unwrap();
        ndjson.push(b'\n');
        events += 1;
    }
    sluice::sink::Batch { events, ndjson }
}

pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn secret_file(dir: &std::path::Path, name: &str, value: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{value}\n")).unwrap();
    p
}
