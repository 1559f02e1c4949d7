//! Syslog over TLS (RFC 5425): rustls (ring provider) on the portable thread-per-connection
//! accept loop, whatever the configured socket backend.
//!
//! The handshake runs first with its own deadline; then the decrypted stream goes through the
//! same framer, limits and worker hand-off as plain TCP (`portable::read_stream`), so a full
//! worker queue stops the reading (no loss). The certificate, key and CA bundle are read again
//! on SIGHUP: each new connection takes the server config current at its accept, established
//! sessions keep theirs.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::net::guard::Refusal;
use crate::net::portable::{self, ConnectionContext};
use crate::net::{ReaderContext, SHUTDOWN_POLL};

/// A client must finish the handshake within this (a silent client holds a slot no longer).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Writes (handshake, alerts, close_notify) to a client that does not read give up after this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files of a TLS source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        key: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{path}: {message}")]
    Pem {
        key: &'static str,
        path: String,
        message: String,
    },
    #[error("{message}")]
    Config { key: &'static str, message: String },
}

impl TlsError {
    /// The config key the error is about (`cert_file`, `key_file`, `client_ca_file`).
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Read { key, .. }
            | TlsError::Pem { key, .. }
            | TlsError::Config { key, .. } => key,
        }
    }
}

fn pem_error(key: &'static str, path: &Path, e: rustls_pki_types::pem::Error) -> TlsError {
    match e {
        rustls_pki_types::pem::Error::Io(source) => TlsError::Read {
            key,
            path: path.display().to_string(),
            source,
        },
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Pem {
            key,
            path: path.display().to_string(),
            message: match key {
                "key_file" => "no PEM private key (PKCS#8, PKCS#1 or SEC1) found".into(),
                _ => "no PEM certificate found".into(),
            },
        },
        other => TlsError::Pem {
            key,
            path: path.display().to_string(),
            message: format!("malformed PEM: {other:?}"),
        },
    }
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(key, path, e))?;
    if certs.is_empty() {
        return Err(pem_error(
            key,
            path,
            rustls_pki_types::pem::Error::NoItemsFound,
        ));
    }
    Ok(certs)
}

/// The TLS server state of one source, shared by its listener threads.
pub struct TlsAcceptor {
    source: Arc<str>,
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// Set by SIGHUP.
    reload_requested: Arc<AtomicBool>,
    reloads_ok: metrics::Counter,
    reloads_failed: metrics::Counter,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("source", &self.source)
            .field("files", &self.files)
            .finish()
    }
}

impl TlsAcceptor {
    /// Loads the files and asks to be told of SIGHUP.
    pub fn new(source: &str, files: TlsFiles) -> Result<Arc<TlsAcceptor>, TlsError> {
        let (config, expiry) = Self::load(&files)?;
        expiry.export(source);
        let reload_requested = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, reload_requested.clone())
            .map_err(|e| TlsError::Config {
                key: "cert_file",
                message: format!("cannot watch SIGHUP for certificate reloads: {e}"),
            })?;
        let result = |r: &'static str| metrics::counter!(crate::metrics::TLS_RELOADS, "source" => source.to_string(), "result" => r);
        Ok(Arc::new(TlsAcceptor {
            source: Arc::from(source),
            files,
            current: RwLock::new(Arc::new(config)),
            reload_requested,
            reloads_ok: result("ok"),
            reloads_failed: result("error"),
        }))
    }

    /// A rustls server config from the files: the certificate chain and key, and when a CA
    /// bundle is given, a verifier that requires a client certificate it signs.
    pub fn build_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
        Self::load(files).map(|(config, _)| config)
    }

    /// [`Self::build_config`], and when its certificates expire.
    fn load(files: &TlsFiles) -> Result<(ServerConfig, Expiry), TlsError> {
        let certs = read_certs("cert_file", &files.cert_file)?;
        let mut expiry = Expiry {
            server: not_after(&certs[0]),
            client_ca: None,
        };
        let key = PrivateKeyDer::from_pem_file(&files.key_file)
            .map_err(|e| pem_error("key_file", &files.key_file, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config {
                key: "cert_file",
                message: e.to_string(),
            })?;
        let builder = match &files.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                let bundle = read_certs("client_ca_file", ca)?;
                expiry.client_ca = bundle.iter().filter_map(not_after).min();
                for cert in bundle {
                    roots.add(cert).map_err(|e| TlsError::Pem {
                        key: "client_ca_file",
                        path: ca.display().to_string(),
                        message: format!("not a usable CA certificate: {e}"),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::Config {
                            key: "client_ca_file",
                            message: format!("{}: {e}", ca.display()),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config {
                key: "key_file",
                message: format!(
                    "{} does not go with {}: {e}",
                    files.key_file.display(),
                    files.cert_file.display()
                ),
            })?;
        // Syslog senders only write. TLS 1.3 session tickets would be the one thing the server
        // sends unasked after the handshake; a sender that closes with them unread makes its
        // kernel reset the connection and discard what it had not yet transmitted (seen: the
        // last messages before a client's close lost). Long-lived syslog sessions gain little
        // from resumption.
        config.send_tls13_tickets = 0;
        Ok((config, expiry))
    }

    /// Reloads the files if SIGHUP asked for it. A failed reload keeps the previous config.
    pub fn poll_reload(&self) {
        if self.reload_requested.swap(false, Ordering::Relaxed) {
            self.reload();
        }
    }

    /// Reads the files again; on error the running config stays and the error is logged.
    pub fn reload(&self) -> bool {
        match Self::load(&self.files) {
            Ok((config, expiry)) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
                self.reloads_ok.increment(1);
                tracing::info!(source = %self.source, cert = %self.files.cert_file.display(), "TLS certificate reloaded; new connections use it");
                expiry.export(&self.source);
                true
            }
            Err(e) => {
                self.reloads_failed.increment(1);
                tracing::error!(source = %self.source, "TLS reload failed, keeping the previous certificate: {e}");
                false
            }
        }
    }

    /// The server config for a connection accepted now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.poll_reload();
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// When a source's certificates stop being valid, in Unix seconds (`None`: not readable as
/// X.509 here, though rustls took it; nothing is exported then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expiry {
    server: Option<i64>,
    /// The earliest of the client CA bundle's.
    client_ca: Option<i64>,
}

/// A certificate due to expire within this long is warned about at every (re)load.
const EXPIRY_WARNING_SECS: i64 = 30 * 86_400;

impl Expiry {
    fn each(&self) -> impl Iterator<Item = (&'static str, i64)> {
        [("server", self.server), ("client_ca", self.client_ca)]
            .into_iter()
            .filter_map(|(certificate, at)| Some((certificate, at?)))
    }

    /// Sets the gauges, and says in the log when a certificate has expired or soon will:
    /// senders refuse an expired server certificate, and an expired CA refuses every client.
    fn export(&self, source: &str) {
        for (certificate, not_after) in self.each() {
            metrics::gauge!(crate::metrics::TLS_CERTIFICATE_EXPIRY, "source" => source.to_string(), "certificate" => certificate)
                .set(not_after as f64);
        }
        for (expired, concern) in self.concerns(crate::event::Timestamp::now().unix_secs()) {
            if expired {
                tracing::error!(
                    source,
                    "{concern}: senders refuse it; renew it and `systemctl reload sluice`"
                );
            } else {
                tracing::warn!(source, "{concern}");
            }
        }
    }

    /// `(expired, sentence)` for each certificate that has expired or will within
    /// [`EXPIRY_WARNING_SECS`] of `now`.
    fn concerns(&self, now: i64) -> Vec<(bool, String)> {
        self.each()
            .filter(|(_, at)| at - now < EXPIRY_WARNING_SECS)
            .map(|(certificate, at)| {
                let when = jiff::Timestamp::from_second(at)
                    .map_or_else(|_| at.to_string(), |t| t.to_string());
                let certificate = certificate.replace('_', " ");
                if at <= now {
                    (
                        true,
                        format!("TLS {certificate} certificate EXPIRED on {when}"),
                    )
                } else {
                    let days = (at - now) / 86_400;
                    (
                        false,
                        format!(
                            "TLS {certificate} certificate expires soon, on {when} (in {days} days)"
                        ),
                    )
                }
            })
            .collect()
    }
}

/// What `sluice check-config` warns about a TLS source's certificates: expired, or expiring
/// within 30 days.
pub fn expiry_concerns(files: &TlsFiles) -> Result<Vec<String>, TlsError> {
    let (_, expiry) = TlsAcceptor::load(files)?;
    Ok(expiry
        .concerns(crate::event::Timestamp::now().unix_secs())
        .into_iter()
        .map(|(_, sentence)| sentence)
        .collect())
}

/// A certificate's notAfter in Unix seconds.
fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    let at = cert.tbs_certificate.validity.not_after.to_unix_duration();
    i64::try_from(at.as_secs()).ok()
}

/// Accepts TLS connections until `ctx.shutdown` is set; returns after every connection has
/// handed over what it read.
pub fn run_tls(
    listener: TcpListener,
    ctx: ReaderContext,
    acceptor: Arc<TlsAcceptor>,
) -> io::Result<()> {
    portable::run_stream_listener(listener, ctx, "tls", move |stream, peer, conn| {
        serve(&acceptor, stream, peer, conn)
    })
}

/// The TCP side of a TLS connection as rustls sees it: reads fail with `TimedOut` from `until`
/// on.
///
/// rustls reads until it has what it waits for: `complete_io` goes on through the handshake,
/// and `StreamOwned::read` until a whole record is in, as long as each socket read brings a
/// byte, so the socket's read timeout ([`SHUTDOWN_POLL`]) alone never hands control back while
/// a client trickles bytes faster than that. The handshake deadline, the idle limit and
/// shutdown would all wait for a record that may never end (a handshake record can be 64 KiB,
/// ten minutes at a byte every 10 ms). Failing a read mid-record loses nothing: rustls keeps
/// what it read in its own buffer and goes on from there on the next call.
struct Paced {
    tcp: TcpStream,
    until: Instant,
}

impl Read for Paced {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Checked before the read, never after: bytes taken off the socket must reach rustls.
        // One socket read can still add up to its own timeout (SHUTDOWN_POLL).
        if Instant::now() >= self.until {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.tcp.read(buf)
    }
}

impl Write for Paced {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// A TLS session after its handshake, read the way [`portable::read_stream`] expects of a
/// stream: each call waits about one [`SHUTDOWN_POLL`] at most, whether or not bytes trickle
/// in meanwhile.
struct Session(rustls::StreamOwned<ServerConnection, Paced>);

impl Read for Session {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.sock.until = Instant::now() + SHUTDOWN_POLL;
        self.0.read(buf)
    }
}

fn serve(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: &ConnectionContext,
) -> io::Result<()> {
    tcp.set_nonblocking(false)?;
    tcp.set_read_timeout(Some(SHUTDOWN_POLL))?;
    tcp.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut tls = ServerConnection::new(acceptor.current()).map_err(io::Error::other)?;
    // A silent client must not hold its slot longer than an idle one would.
    let timeout = ctx
        .guard
        .limits()
        .idle_timeout
        .map_or(HANDSHAKE_TIMEOUT, |idle| idle.min(HANDSHAKE_TIMEOUT));
    let deadline = Instant::now() + timeout;
    let mut sock = Paced {
        tcp,
        until: deadline,
    };
    while tls.is_handshaking() {
        if ctx.shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            ctx.guard.refused(Refusal::TlsHandshake);
            tracing::debug!(source = %ctx.source_name, %peer, "TLS handshake timed out");
            return Ok(());
        }
        // Back here within a poll, to look at shutdown and the deadline.
        sock.until = deadline.min(now + SHUTDOWN_POLL);
        match tls.complete_io(&mut sock) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                // rustls has already tried to send the alert that explains the failure.
                ctx.guard.refused(Refusal::TlsHandshake);
                if let Some(unlogged) = ctx.counters.logs.handshake.permit() {
                    tracing::info!(source = %ctx.source_name, %peer, unlogged,
                        "TLS handshake failed: {e} (further failures within 10 s are only counted in sluice_connections_refused_total{{reason=\"tls_handshake\"}})");
                }
                return Ok(());
            }
        }
    }
    let mut stream = Session(rustls::StreamOwned::new(tls, sock));
    let ended = portable::read_stream(&mut stream, peer, ctx);
    let stream = &mut stream.0;
    // Only the close_notify is sent; nothing is waited for from the client.
    stream.sock.until = Instant::now();
    stream.conn.send_close_notify();
    let _ = stream.conn.complete_io(&mut stream.sock);
    let _ = stream.sock.flush();
    ended.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_malformed_files_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem\n").unwrap();
        let files = TlsFiles {
            cert_file: dir.path().join("absent.pem"),
            key_file: junk.clone(),
            client_ca_file: None,
        };
        let e = TlsAcceptor::build_config(&files).unwrap_err();
        assert_eq!(e.key(), "cert_file");
        assert!(e.to_string().contains("absent.pem"), "{e}");
        let files = TlsFiles {
            cert_file: junk.clone(),
            ..files
        };
        let e = TlsAcceptor::build_config(&files).unwrap_err();
        assert_eq!(e.key(), "cert_file");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
    }

    /// A self-signed certificate valid until `not_after`, as `(cert.pem, key.pem)` in `dir`.
    fn certificate(dir: &Path, name: &str, not_after: (i32, u8, u8)) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.self_signed(&key).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    #[test]
    fn expiry_of_the_served_certificate_and_the_earliest_client_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = certificate(dir.path(), "server", (2030, 1, 2));
        let (ca_late, _) = certificate(dir.path(), "ca-late", (2031, 1, 1));
        let (ca_early, _) = certificate(dir.path(), "ca-early", (2029, 1, 1));
        let bundle = dir.path().join("bundle.pem");
        let text = std::fs::read_to_string(&ca_late).unwrap()
            + &std::fs::read_to_string(&ca_early).unwrap();
        std::fs::write(&bundle, text).unwrap();
        let files = TlsFiles {
            cert_file,
            key_file,
            client_ca_file: None,
        };
        let (_, expiry) = TlsAcceptor::load(&files).unwrap();
        // 2030-01-02T00:00:00Z
        assert_eq!(
            expiry,
            Expiry {
                server: Some(1_893_542_400),
                client_ca: None
            }
        );
        let files = TlsFiles {
            client_ca_file: Some(bundle),
            ..files
        };
        let (_, expiry) = TlsAcceptor::load(&files).unwrap();
        // 2029-01-01T00:00:00Z, the earlier of the two CAs.
        assert_eq!(expiry.client_ca, Some(1_861_920_000));

        // Warned about from 30 days before; an error once past.
        let day = 86_400;
        assert!(expiry.concerns(1_861_920_000 - 31 * day).is_empty());
        assert_eq!(
            expiry.concerns(1_861_920_000 - 29 * day - 1),
            [(
                false,
                "TLS client ca certificate expires soon, on 2029-01-01T00:00:00Z (in 29 days)"
                    .to_string()
            )]
        );
        let late = expiry.concerns(1_893_542_400);
        assert_eq!(late.len(), 2, "{late:?}");
        assert!(late.iter().all(|(expired, _)| *expired));
        assert_eq!(
            late[0].1,
            "TLS server certificate EXPIRED on 2030-01-02T00:00:00Z"
        );
    }
}
