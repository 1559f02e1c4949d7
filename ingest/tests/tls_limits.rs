//! Acceptance tests of TLS syslog sources and of the connection limits, against the real
//! `sluice` binary on loopback (ports picked by the kernel; attackers use other 127.0.0.0/8
//! addresses so per-address limits can tell them from the well-behaved client).
//!
//! Certificates are made at test time with the `openssl` CLI in a temp directory; nothing
//! secret is committed. Run: `cargo test -p sluice-ingest --test tls_limits -- --nocapture`
//! (the hostile-client tests print the daemon's memory figures).

mod daemon_support;
use daemon_support::metric_value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const OPENSSL: &str = "/usr/bin/openssl";

// ---------------------------------------------------------------------------------------------
// The daemon

struct Daemon {
    child: Child,
    log: daemon_support::Log,
    dir: tempfile::TempDir,
    listen: Vec<(String, SocketAddr)>,
    metrics: SocketAddr,
}

impl Daemon {
    /// `tables` are the `[sources.*]` tables; a file sink writing to `{out}` is added.
    /// `pipeline` holds extra `[pipeline]` keys.
    fn start(dir: tempfile::TempDir, pipeline: &str, tables: &str) -> Daemon {
        let out = dir.path().join("out");
        let config = format!(
            "data_dir = {data:?}\n[metrics]\nlisten = \"127.0.0.1:0\"\n[pipeline]\nworkers = 2\n\
             {pipeline}\n{tables}\n[sinks.out]\ntype = \"file\"\npath = {out:?}\ncompression = \"none\"\n\
             batch_timeout_ms = 200\n",
            data = dir.path().join("data").display().to_string(),
            out = out.display().to_string(),
        );
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, config).unwrap();
        let check = daemon_support::check_config(&path);
        assert!(
            check.status.success(),
            "check-config failed:\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let (child, log) = daemon_support::started(
            daemon_support::run_command(&path)
                .env(
                    "SLUICE_LOG",
                    std::env::var("TLS_LIMITS_LOG").unwrap_or_else(|_| "info".into()),
                )
                .env("RUST_BACKTRACE", "0")
                .spawn()
                .unwrap(),
        );
        let mut listen = Vec::new();
        for line in log.lock().unwrap().iter() {
            for proto in ["tcp", "tls", "udp"] {
                if let Some(rest) = line.split(&format!("listening on {proto} ")).nth(1)
                    && let Some(addr) = rest.split_whitespace().next().and_then(|a| a.parse().ok())
                {
                    listen.push((proto.to_string(), addr));
                }
            }
        }
        Daemon {
            metrics: daemon_support::logged_addr(&log, "metrics on http://")
                .expect("metrics address in the log"),
            child,
            log,
            dir,
            listen,
        }
    }

    fn addr(&self, proto: &str) -> SocketAddr {
        self.listen
            .iter()
            .find(|(p, _)| p == proto)
            .unwrap_or_else(|| panic!("no {proto} listener in\n{}", self.log()))
            .1
    }

    fn log(&self) -> String {
        daemon_support::log_text(&self.log)
    }

    fn metrics_text(&self) -> String {
        daemon_support::scrape_metrics(self.metrics, None)
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        metric_value(&self.metrics_text(), name, labels)
    }

    /// Waits until `f(metrics text)` holds.
    fn wait_until(&self, what: &str, timeout: Duration, f: impl Fn(&str) -> bool) {
        let started = Instant::now();
        loop {
            let text = self.metrics_text();
            if f(&text) {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "{what}: not reached after {timeout:?}\n{}\n--- log\n{}",
                sluice_lines(&text),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child process by its pid.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// `VmRSS` and `VmHWM` of the daemon, in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Every line the file sink has written so far (finished files only).
    fn output(&self) -> Vec<String> {
        daemon_support::finished_batch_lines(&self.dir.path().join("out"))
    }

    /// Waits until the output holds a line containing each of `markers`.
    fn wait_for_output(&self, markers: &[String], timeout: Duration) {
        let started = Instant::now();
        loop {
            let out = self.output();
            let missing: Vec<&String> = markers
                .iter()
                .filter(|m| !out.iter().any(|l| l.contains(m.as_str())))
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "not delivered: {missing:?}\n--- log\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sluice_lines(text: &str) -> String {
    text.lines()
        .filter(|l| l.starts_with("sluice_") && !l.contains("_bucket") && !l.contains("stage_"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// Certificates (openssl CLI, P-256, valid one day)

/// A temporary directory with a CA and the daemon's certificate for `localhost` signed by it.
fn server_pki() -> (tempfile::TempDir, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.leaf("server", "ca", true);
    (dir, pki)
}

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        pki.ca("ca", "Sluice Test CA");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new(OPENSSL)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `NAME.pem` / `NAME.key`: a self-signed CA.
    fn ca(&self, name: &str, cn: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// `NAME.pem` / `NAME.key` signed by CA `ca`: a server (`localhost`, 127.0.0.1) or client.
    fn leaf(&self, name: &str, ca: &str, server: bool) {
        self.leaf_valid_for(name, ca, server, 1);
    }

    /// [`Pki::leaf`], valid for `days` from now.
    fn leaf_valid_for(&self, name: &str, ca: &str, server: bool, days: u32) {
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        let ext = if server {
            "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        } else {
            "basicConstraints=CA:FALSE\nsubjectAltName=DNS:client.test\nextendedKeyUsage=clientAuth\n"
        };
        std::fs::write(self.path(&format!("{name}.ext")), ext).unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            &days.to_string(),
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    fn cert_der(&self, name: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(self.path(&format!("{name}.pem"))).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

fn tls_client_config(pki: &Pki, client_cert: Option<&str>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.cert_der("ca")).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match client_cert {
        None => builder.with_no_client_auth(),
        Some(name) => builder
            .with_client_auth_cert(
                vec![pki.cert_der(name)],
                PrivateKeyDer::from_pem_file(pki.path(&format!("{name}.key"))).unwrap(),
            )
            .unwrap(),
    })
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TCP connection from `local` (any port) to `to`.
fn connect_from(local: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&format!("{local}:0").parse::<SocketAddr>().unwrap().into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

/// A finished TLS handshake with the daemon.
fn tls_connect(
    config: &Arc<rustls::ClientConfig>,
    local: &str,
    to: SocketAddr,
) -> std::io::Result<TlsStream> {
    let mut tcp = connect_from(local, to)?;
    let mut conn =
        rustls::ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap())
            .map_err(std::io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// RFC 5425 framing: `LEN SP MSG`.
fn octet(msg: &str) -> Vec<u8> {
    format!("{} {msg}", msg.len()).into_bytes()
}

fn syslog(marker: &str) -> String {
    format!("<13>1 2026-11-23T01:00:00Z host app - - - {marker}")
}

/// Sends `lines` (LF-framed) through `openssl s_client`; returns its exit status and output.
fn s_client(
    pki: &Pki,
    to: SocketAddr,
    client_cert: Option<&str>,
    lines: &[String],
) -> (bool, String) {
    let mut cmd = Command::new(OPENSSL);
    cmd.args([
        "s_client",
        "-connect",
        &to.to_string(),
        "-servername",
        "localhost",
    ])
    .arg("-CAfile")
    .arg(pki.path("ca.pem"))
    .args(["-verify_return_error", "-quiet", "-no_ign_eof"]);
    if let Some(name) = client_cert {
        cmd.arg("-cert")
            .arg(pki.path(&format!("{name}.pem")))
            .arg("-key")
            .arg(pki.path(&format!("{name}.key")));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        let _ = writeln!(stdin, "{line}");
    }
    // Give the session time to carry the data (and the server's verdict) before EOF.
    std::thread::sleep(Duration::from_millis(500));
    drop(stdin);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (status.success(), err)
}

fn tls_source(pki: &Pki, extra: &str) -> String {
    format!(
        "[sources.tls]\ntype = \"tls\"\nlisten = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}\n{extra}",
        pki.path("server.pem").display().to_string(),
        pki.path("server.key").display().to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// TLS

#[test]
fn tls_delivers_from_openssl_and_rustls_clients() {
    let (dir, pki) = server_pki();
    let daemon = Daemon::start(dir, "", &tls_source(&pki, ""));
    let addr = daemon.addr("tls");

    let openssl_lines: Vec<String> = (0..3)
        .map(|i| syslog(&format!("via-openssl-{i}")))
        .collect();
    let (ok, err) = s_client(&pki, addr, None, &openssl_lines);
    assert!(ok, "s_client failed: {err}");

    let config = tls_client_config(&pki, None);
    let mut stream = tls_connect(&config, "127.0.0.1", addr).unwrap();
    for i in 0..3 {
        stream
            .write_all(&octet(&syslog(&format!("via-rustls-{i}"))))
            .unwrap();
    }
    stream.flush().unwrap();
    stream.conn.send_close_notify();
    let _ = stream.conn.complete_io(&mut stream.sock);
    drop(stream);

    // Plain text to the TLS port is no TLS handshake: refused, counted, not delivered; five
    // of them are logged once (the rest within 10 s only counted).
    for _ in 0..5 {
        let mut plain = connect_from("127.0.0.1", addr).unwrap();
        plain
            .write_all(format!("{}\n", syslog("plaintext-to-tls")).as_bytes())
            .unwrap();
        let mut sink = Vec::new();
        let _ = plain.read_to_end(&mut sink);
    }

    let markers: Vec<String> = (0..3)
        .flat_map(|i| [format!("via-openssl-{i}"), format!("via-rustls-{i}")])
        .collect();
    daemon.wait_for_output(&markers, Duration::from_secs(20));
    daemon.wait_until("handshake refusal counted", Duration::from_secs(10), |t| {
        metric_value(
            t,
            "sluice_connections_refused_total",
            &[("source", "tls"), ("reason", "tls_handshake")],
        ) == 5
    });
    let logged = daemon
        .log()
        .lines()
        .filter(|l| l.contains("TLS handshake failed"))
        .count();
    assert_eq!(logged, 1, "{}", daemon.log());
    assert_eq!(
        daemon.metric("sluice_received_messages_total", &[("source", "tls")]),
        6
    );
    assert!(
        !daemon
            .output()
            .iter()
            .any(|l| l.contains("plaintext-to-tls"))
    );
}

/// A sender that writes and closes without ever reading must leave no unread bytes behind:
/// closing over unread data makes its kernel send a reset and discard what it had not yet
/// transmitted (this lost the last messages of the test above, intermittently, while the
/// server still sent TLS 1.3 session tickets).
#[test]
fn tls_server_sends_nothing_after_the_handshake() {
    let (dir, pki) = server_pki();
    let daemon = Daemon::start(dir, "", &tls_source(&pki, ""));
    let addr = daemon.addr("tls");

    let config = tls_client_config(&pki, None);
    let mut stream = tls_connect(&config, "127.0.0.1", addr).unwrap();
    stream
        .write_all(&octet(&syslog("write-only-sender")))
        .unwrap();
    stream.flush().unwrap();
    daemon.wait_for_output(&["write-only-sender".into()], Duration::from_secs(20));
    // The message was read, so anything the server sends after the handshake has been sent.
    stream
        .sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut unread = [0u8; 512];
    match stream.sock.peek(&mut unread) {
        Ok(n) => panic!("the server sent {n} bytes after the handshake"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
}

#[test]
fn mtls_refuses_clients_without_a_valid_certificate() {
    let (dir, pki) = server_pki();
    pki.leaf("client", "ca", false);
    // A client certificate from a CA the daemon does not trust.
    pki.ca("rogue-ca", "Rogue CA");
    pki.leaf("rogue", "rogue-ca", false);
    let extra = format!(
        "client_ca_file = {:?}\n",
        pki.path("ca.pem").display().to_string()
    );
    let daemon = Daemon::start(dir, "", &tls_source(&pki, &extra));
    let addr = daemon.addr("tls");
    // The client CA (made valid for a day) is watched for expiry too.
    let ca_expiry = metric_value(
        &daemon.metrics_text(),
        "sluice_tls_certificate_expiry_timestamp_seconds",
        &[("source", "tls"), ("certificate", "client_ca")],
    );
    let now = daemon_support::unix_now();
    assert!(
        ca_expiry.abs_diff(now + 86_400) < 600,
        "{ca_expiry} vs {now}"
    );

    // Refused: no certificate (rustls and openssl), and a certificate of another CA.
    let attempt = |config: Arc<rustls::ClientConfig>, marker: &str| {
        let Ok(mut s) = tls_connect(&config, "127.0.0.1", addr) else {
            return;
        };
        // TLS 1.3 clients finish before the server has judged their certificate: the
        // refusal shows as an alert when they write or read next.
        let _ = s.write_all(&octet(&syslog(marker)));
        let _ = s.flush();
        let mut buf = [0u8; 64];
        let r = s.read(&mut buf);
        assert!(
            !matches!(r, Ok(n) if n > 0),
            "the daemon sent data to an unauthenticated client"
        );
    };
    attempt(tls_client_config(&pki, None), "mtls-no-cert");
    attempt(tls_client_config(&pki, Some("rogue")), "mtls-rogue-cert");
    let (_, err) = s_client(&pki, addr, None, &[syslog("mtls-openssl-no-cert")]);

    // Accepted: a certificate of the configured CA, with rustls and with openssl.
    let config = tls_client_config(&pki, Some("client"));
    let mut good = tls_connect(&config, "127.0.0.1", addr).unwrap();
    good.write_all(&octet(&syslog("mtls-good-rustls"))).unwrap();
    good.flush().unwrap();
    let (ok, good_err) = s_client(&pki, addr, Some("client"), &[syslog("mtls-good-openssl")]);
    assert!(ok, "s_client with a valid certificate failed: {good_err}");
    daemon.wait_for_output(
        &["mtls-good-rustls".into(), "mtls-good-openssl".into()],
        Duration::from_secs(20),
    );
    daemon.wait_until("three refusals", Duration::from_secs(10), |t| {
        metric_value(
            t,
            "sluice_connections_refused_total",
            &[("source", "tls"), ("reason", "tls_handshake")],
        ) == 3
    });
    let out = daemon.output();
    for refused in ["mtls-no-cert", "mtls-rogue-cert", "mtls-openssl-no-cert"] {
        assert!(
            !out.iter().any(|l| l.contains(refused)),
            "{refused} was delivered (openssl said: {err})"
        );
    }
    assert_eq!(
        daemon.metric("sluice_received_messages_total", &[("source", "tls")]),
        2
    );
}

#[test]
fn sighup_reload_serves_the_new_certificate_and_keeps_old_sessions() {
    let (dir, pki) = server_pki();
    pki.leaf_valid_for("server2", "ca", true, 90);
    let first = pki.cert_der("server");
    let second = pki.cert_der("server2");
    assert_ne!(first, second);
    let daemon = Daemon::start(dir, "", &tls_source(&pki, ""));
    let addr = daemon.addr("tls");
    let config = tls_client_config(&pki, None);
    let peer_cert = |s: &TlsStream| s.conn.peer_certificates().unwrap()[0].clone();

    let mut old = tls_connect(&config, "127.0.0.1", addr).unwrap();
    assert_eq!(peer_cert(&old), first);
    old.write_all(&octet(&syslog("old-before-reload"))).unwrap();
    old.flush().unwrap();
    daemon.wait_for_output(&["old-before-reload".into()], Duration::from_secs(20));

    // The reload series exist before the first reload (an alert on `increase()` of one born
    // with its first failure would miss it), and are all the alerting rules need of TLS.
    let exported = daemon_support::exported_names(&daemon.metrics_text());
    let dashboard = daemon_support::dashboard_metric_names(&daemon_support::dashboard());
    for name in daemon_support::alert_rule_metric_names()
        .into_iter()
        .chain(dashboard)
    {
        if name.starts_with("sluice_tls_") {
            assert!(exported.contains(&name), "{name} not exported");
        }
    }
    assert!(exported.contains("sluice_tls_reloads_total"));
    // When the served certificate expires (a day from now), and a warning: under 30 days.
    let expiry = |t: &str| {
        metric_value(
            t,
            "sluice_tls_certificate_expiry_timestamp_seconds",
            &[("source", "tls"), ("certificate", "server")],
        ) as i64
    };
    let now = || daemon_support::unix_now() as i64;
    let served = expiry(&daemon.metrics_text());
    assert!(
        (served - (now() + 86_400)).abs() < 600,
        "expiry {served}, now {}",
        now()
    );
    assert!(
        daemon.log().contains("TLS server certificate expires soon"),
        "{}",
        daemon.log()
    );
    let check = daemon_support::check_config(&daemon.dir.path().join("sluice.toml"));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        check.status.success()
            && stderr.contains("sources.tls: TLS server certificate expires soon"),
        "{stderr}"
    );

    // Replace the files in place (as certbot-style renewals do), then SIGHUP.
    std::fs::copy(pki.path("server2.pem"), pki.path("server.pem")).unwrap();
    std::fs::copy(pki.path("server2.key"), pki.path("server.key")).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_until("reload", Duration::from_secs(10), |t| {
        metric_value(t, "sluice_tls_reloads_total", &[("result", "ok")]) == 1
    });
    // The renewed certificate's expiry, 90 days out.
    let renewed = expiry(&daemon.metrics_text());
    assert!(
        (renewed - (now() + 90 * 86_400)).abs() < 600,
        "expiry {renewed}, now {}",
        now()
    );

    let mut new = tls_connect(&config, "127.0.0.1", addr).unwrap();
    assert_eq!(
        peer_cert(&new),
        second,
        "a new connection got the old certificate"
    );
    new.write_all(&octet(&syslog("new-after-reload"))).unwrap();
    new.flush().unwrap();
    old.write_all(&octet(&syslog("old-after-reload"))).unwrap();
    old.flush().unwrap();
    daemon.wait_for_output(
        &["new-after-reload".into(), "old-after-reload".into()],
        Duration::from_secs(20),
    );

    // A broken file on reload keeps the running certificate.
    std::fs::write(pki.path("server.pem"), "garbage\n").unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_until("failed reload counted", Duration::from_secs(10), |t| {
        metric_value(t, "sluice_tls_reloads_total", &[("result", "error")]) == 1
    });
    let again = tls_connect(&config, "127.0.0.1", addr).unwrap();
    assert_eq!(peer_cert(&again), second);
    assert_eq!(
        daemon.metric("sluice_received_messages_total", &[("source", "tls")]),
        3
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile clients

/// How hostile clients talk to the source under test.
#[derive(Clone)]
enum Wire {
    Tcp,
    Tls(Arc<rustls::ClientConfig>),
}

enum Conn {
    Tcp(TcpStream),
    Tls(Box<TlsStream>),
}

impl Wire {
    fn connect(&self, local: &str, to: SocketAddr) -> std::io::Result<Conn> {
        Ok(match self {
            Wire::Tcp => Conn::Tcp(connect_from(local, to)?),
            Wire::Tls(config) => Conn::Tls(Box::new(tls_connect(config, local, to)?)),
        })
    }
}

impl Conn {
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.write_all(bytes),
            Conn::Tls(s) => {
                s.write_all(bytes)?;
                s.flush()
            }
        }
    }
}

const SLOWLORIS: usize = 12;
const FLOOD: usize = 200;
const PER_ADDRESS: usize = 8;

/// Slowloris, a connection flood and a 100 MB line without a newline, all at once, while a
/// well-behaved client keeps sending; checks delivery, memory and the counters.
fn hostile(proto: &str, backend: &str) {
    let (dir, pki) = server_pki();
    let limits = format!(
        "max_message_bytes = 65536\nmax_connections = 256\nmax_connections_per_address = {PER_ADDRESS}\n\
         idle_timeout_secs = 2\nmax_frame_backlog_bytes = 1048576\n\
         allow = [\"127.0.0.0/8\"]\n"
    );
    let (source, wire) = if proto == "tls" {
        (
            tls_source(&pki, &limits),
            Wire::Tls(tls_client_config(&pki, None)),
        )
    } else {
        (
            format!("[sources.tcp]\ntype = \"tcp\"\nlisten = \"127.0.0.1:0\"\n{limits}"),
            Wire::Tcp,
        )
    };
    let daemon = Daemon::start(dir, &format!("io_backend = \"{backend}\""), &source);
    let addr = daemon.addr(proto);
    let label = [("source", proto)];

    // The well-behaved client: one message every 50 ms on one connection, for the whole attack.
    let stop = Arc::new(AtomicBool::new(false));
    let good_sent = Arc::new(AtomicU64::new(0));
    let good = {
        let (wire, stop, sent) = (wire.clone(), stop.clone(), good_sent.clone());
        std::thread::spawn(move || {
            let mut conn = wire.connect("127.0.0.1", addr).unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                conn.send(format!("{}\n", syslog(&format!("good-{i:05}"))).as_bytes())
                    .expect("the well-behaved client was cut off");
                i += 1;
                sent.store(i, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
            i
        })
    };
    daemon.wait_for_output(&["good-00000".into()], Duration::from_secs(20));
    let (baseline_rss, _) = daemon.memory_kib();

    // Slowloris from 127.0.0.2: SLOWLORIS connections (PER_ADDRESS get in), each trickling one
    // byte of a never-ending line every 200 ms until the daemon hangs up.
    let slowloris: Vec<_> = (0..SLOWLORIS)
        .map(|_| {
            let wire = wire.clone();
            std::thread::spawn(move || {
                let Ok(mut conn) = wire.connect("127.0.0.2", addr) else {
                    return 0;
                };
                let started = Instant::now();
                let mut sent = 0;
                while started.elapsed() < Duration::from_secs(30) {
                    if conn.send(if sent == 0 { b"<" } else { b"x" }).is_err() {
                        break;
                    }
                    sent += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                sent
            })
        })
        .collect();

    // Flood from 127.0.0.3: FLOOD connections opened as fast as possible and held silent.
    let flood = std::thread::spawn(move || {
        (0..FLOOD)
            .filter_map(|_| connect_from("127.0.0.3", addr).ok())
            .collect::<Vec<_>>()
    });

    // 100 MB without a newline from 127.0.0.4.
    let giant = {
        let wire = wire.clone();
        std::thread::spawn(move || {
            let mut conn = wire.connect("127.0.0.4", addr).unwrap();
            let chunk = vec![b'A'; 64 * 1024];
            let mut sent = 0usize;
            while sent < 100 * 1024 * 1024 {
                if conn.send(&chunk).is_err() {
                    break;
                }
                sent += chunk.len();
            }
            sent
        })
    };

    // Sample the daemon's memory while the attacks run.
    let mut peak_rss = baseline_rss;
    let sample_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < sample_until {
        peak_rss = peak_rss.max(daemon.memory_kib().0);
        std::thread::sleep(Duration::from_millis(50));
    }
    let flood_conns = flood.join().unwrap();
    let giant_sent = giant.join().unwrap();
    let trickled: Vec<usize> = slowloris.into_iter().map(|h| h.join().unwrap()).collect();

    // Every hostile connection is refused or closed by a limit, and counted; the good one not.
    let attempts = (SLOWLORIS + flood_conns.len()) as u64;
    let attacks_joined = Instant::now();
    daemon.wait_until(
        "every hostile connection refused or closed",
        Duration::from_secs(30),
        |t| {
            let m = |name: &str, reason: &str| {
                metric_value(t, name, &[("source", proto), ("reason", reason)])
            };
            m("sluice_connections_refused_total", "per_address")
                + m("sluice_connections_refused_total", "tls_handshake")
                + m("sluice_connections_closed_total", "idle")
                == attempts
                && m("sluice_connections_closed_total", "frame_backlog") == 1
                // Counted when the limit strikes; the slot is free once the socket is closed.
                && metric_value(t, "sluice_tcp_connections_open", &[("source", proto)]) == 1
        },
    );
    let settled = Instant::now();
    let text = daemon.metrics_text();
    let m = |name: &str, reason: &str| {
        metric_value(&text, name, &[("source", proto), ("reason", reason)])
    };
    let refused_per_address = m("sluice_connections_refused_total", "per_address");
    assert!(
        refused_per_address >= (SLOWLORIS - PER_ADDRESS) as u64 + FLOOD as u64 / 2,
        "{}",
        sluice_lines(&text)
    );
    // Only the well-behaved client is still connected.
    assert_eq!(
        metric_value(&text, "sluice_tcp_connections_open", &label),
        1,
        "{}\n--- log\n{}",
        sluice_lines(&text),
        daemon
            .log()
            .lines()
            .filter(|l| l.contains("127.0.0.1:") || l.contains("WARN") || l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The good client kept being served during all of it.
    stop.store(true, Ordering::Relaxed);
    let good_total = good.join().unwrap();
    let markers: Vec<String> = (0..good_total).map(|i| format!("good-{i:05}")).collect();
    daemon.wait_for_output(&markers, Duration::from_secs(20));
    let (rss, hwm) = daemon.memory_kib();
    let backend_used = if proto == "tls" {
        "thread-per-connection TLS"
    } else if daemon.log().contains("backend: io_uring") {
        "io_uring"
    } else {
        "portable"
    };
    eprintln!(
        "{proto}/{backend} ({backend_used} readers; limits settled {:?} after the attackers \
         finished): VmRSS baseline {baseline_rss} KiB, peak sampled {peak_rss} KiB, \
         after {rss} KiB, VmHWM {hwm} KiB; giant line: {} MiB sent before the daemon hung up; \
         slowloris bytes per connection {trickled:?}; flood {} connections, {refused_per_address} \
         refused per address; good client {good_total} messages, all delivered",
        settled - attacks_joined,
        giant_sent >> 20,
        flood_conns.len(),
    );
    assert!(
        giant_sent < 100 * 1024 * 1024,
        "the daemon read a 100 MB line to the end"
    );
    // Bounded: the attack costs at most a few MiB per admitted connection (64 KiB read buffer,
    // 64 KiB framer, thread stack pages) — far from the 100 MB the giant line carried.
    assert!(
        hwm < baseline_rss + 48 * 1024,
        "memory grew from {baseline_rss} KiB to a high-water mark of {hwm} KiB"
    );
    drop(flood_conns);
}

#[test]
fn hostile_clients_tcp_portable() {
    hostile("tcp", "portable");
}

#[test]
fn hostile_clients_tcp_auto_backend() {
    // io_uring where the kernel allows it, otherwise the portable readers again.
    hostile("tcp", "auto");
}

#[test]
fn hostile_clients_tls() {
    // TLS connections always use the thread-per-connection readers.
    hostile("tls", "auto");
}

/// How often a trickling client sends its next byte: well inside the readers' 50 ms poll, so
/// every socket read the daemon makes brings a byte.
const TRICKLE_EVERY: Duration = Duration::from_millis(20);

/// Writes `bytes` one at a time, one every [`TRICKLE_EVERY`], until a write fails (the daemon
/// hung up) or `give_up` has passed; how long the daemon let it go on, `None` if it never hung up.
fn trickle(mut tcp: TcpStream, bytes: &[u8], give_up: Duration) -> Option<Duration> {
    let started = Instant::now();
    for byte in bytes {
        if tcp.write_all(std::slice::from_ref(byte)).is_err() {
            return Some(started.elapsed());
        }
        if started.elapsed() >= give_up {
            return None;
        }
        std::thread::sleep(TRICKLE_EVERY);
    }
    None
}

/// A ClientHello that announces 16 KiB and never gets there: rustls waits for the whole record.
fn endless_client_hello() -> Vec<u8> {
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc, 0x03, 0x03,
    ];
    hello.resize(5 + 0x4000, 0x5a);
    hello
}

/// A finished handshake, then one 16 KiB application record to trickle: the client's TCP
/// stream and the record's bytes.
fn session_with_endless_record(pki: &Pki, to: SocketAddr) -> (TcpStream, Vec<u8>) {
    let config = tls_client_config(pki, None);
    let mut stream = tls_connect(&config, "127.0.0.1", to).unwrap();
    stream.conn.writer().write_all(&[b'x'; 16_000]).unwrap();
    let mut record = Vec::new();
    while stream.conn.wants_write() {
        stream.conn.write_tls(&mut record).unwrap();
    }
    (stream.sock, record)
}

/// Clients that trickle a byte every 20 ms and never complete a TLS record: one in its
/// ClientHello, one in its first record after the handshake. rustls reads on for as long as
/// bytes come, so without a bound of our own around its reads neither limit ever struck.
#[test]
fn tls_tricklers_are_cut_off_at_the_handshake_and_idle_limits() {
    let (dir, pki) = server_pki();
    // idle_timeout_secs also bounds the handshake (to 1 s here instead of 10).
    let daemon = Daemon::start(dir, "", &tls_source(&pki, "idle_timeout_secs = 1\n"));
    let addr = daemon.addr("tls");
    let give_up = Duration::from_secs(20);
    let (session, record) = session_with_endless_record(&pki, addr);
    let in_session = std::thread::spawn(move || trickle(session, &record, give_up));
    let handshake = connect_from("127.0.0.1", addr).unwrap();
    let in_handshake =
        std::thread::spawn(move || trickle(handshake, &endless_client_hello(), give_up));
    for (what, thread) in [("handshake", in_handshake), ("session", in_session)] {
        let lasted = thread.join().unwrap();
        // 1 s limit, plus a poll or two to notice and the client's next write to fail.
        assert!(
            lasted.is_some_and(|t| t < Duration::from_secs(4)),
            "trickling client in its {what} was served for {lasted:?} (limit 1 s)\n--- log\n{}",
            daemon.log()
        );
    }
    daemon.wait_until("both counted", Duration::from_secs(10), |t| {
        metric_value(
            t,
            "sluice_connections_refused_total",
            &[("source", "tls"), ("reason", "tls_handshake")],
        ) == 1
            && metric_value(
                t,
                "sluice_connections_closed_total",
                &[("source", "tls"), ("reason", "idle")],
            ) == 1
            && metric_value(t, "sluice_tcp_connections_open", &[("source", "tls")]) == 0
    });
}

/// Connection threads are joined at shutdown: one held inside rustls by a trickling client
/// held the daemon's exit up for as long as the client went on.
#[test]
fn shutdown_does_not_wait_for_trickling_tls_clients() {
    let (dir, pki) = server_pki();
    // Default limits: 10 s for the handshake, 600 s idle; shutdown must not wait for either.
    let mut daemon = Daemon::start(dir, "", &tls_source(&pki, ""));
    let addr = daemon.addr("tls");
    let give_up = Duration::from_secs(30);
    let (session, record) = session_with_endless_record(&pki, addr);
    let in_session = std::thread::spawn(move || trickle(session, &record, give_up));
    let handshake = connect_from("127.0.0.1", addr).unwrap();
    let in_handshake =
        std::thread::spawn(move || trickle(handshake, &endless_client_hello(), give_up));
    daemon.wait_until("both connections open", Duration::from_secs(10), |t| {
        metric_value(t, "sluice_tcp_connections_open", &[("source", "tls")]) == 2
    });
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    daemon_support::stop_cleanly(&mut daemon.child, &daemon.log, Duration::from_secs(8));
    let took = asked.elapsed();
    for (what, thread) in [("handshake", in_handshake), ("session", in_session)] {
        let lasted = thread.join().unwrap();
        assert!(
            lasted.is_some(),
            "trickling client in its {what} still served after the daemon exited"
        );
    }
    // The exit itself: queues drained, files written; no connection held it.
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?}\n--- log\n{}",
        daemon.log()
    );
}

#[test]
fn udp_allowlist_drops_and_counts_other_senders() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        dir,
        "",
        "[sources.udp]\ntype = \"udp\"\nlisten = \"127.0.0.1:0\"\nthreads = 1\nallow = [\"127.0.0.1/32\"]\n",
    );
    let addr = daemon.addr("udp");
    let good = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let other = std::net::UdpSocket::bind("127.0.0.5:0").unwrap();
    for i in 0..5 {
        other
            .send_to(syslog(&format!("udp-outsider-{i}")).as_bytes(), addr)
            .unwrap();
        good.send_to(syslog(&format!("udp-allowed-{i}")).as_bytes(), addr)
            .unwrap();
    }
    let markers: Vec<String> = (0..5).map(|i| format!("udp-allowed-{i}")).collect();
    daemon.wait_for_output(&markers, Duration::from_secs(20));
    daemon.wait_until("outsiders counted", Duration::from_secs(10), |t| {
        metric_value(
            t,
            "sluice_dropped_messages_total",
            &[("source", "udp"), ("reason", "not_allowed")],
        ) == 5
    });
    assert!(!daemon.output().iter().any(|l| l.contains("udp-outsider")));
    assert_eq!(
        daemon.metric("sluice_received_messages_total", &[("source", "udp")]),
        5
    );
}

#[test]
fn total_limit_and_tcp_allowlist_refuse_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        dir,
        "io_backend = \"portable\"",
        "[sources.tcp]\ntype = \"tcp\"\nlisten = \"127.0.0.1:0\"\nmax_connections = 2\n\
         allow = [\"127.0.0.1/32\", \"127.0.0.2/32\"]\n",
    );
    let addr = daemon.addr("tcp");
    let label = [("source", "tcp")];
    let mut first = connect_from("127.0.0.1", addr).unwrap();
    let mut second = connect_from("127.0.0.2", addr).unwrap();
    first
        .write_all(format!("{}\n", syslog("limit-first")).as_bytes())
        .unwrap();
    second
        .write_all(format!("{}\n", syslog("limit-second")).as_bytes())
        .unwrap();
    daemon.wait_for_output(
        &["limit-first".into(), "limit-second".into()],
        Duration::from_secs(20),
    );
    // Third at once: accepted by the kernel, closed by the daemon (EOF), counted.
    let mut third = connect_from("127.0.0.1", addr).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(third.read(&mut buf), Ok(0) | Err(_)));
    // From outside the allowlist.
    let mut outsider = connect_from("127.0.0.9", addr).unwrap();
    let _ = outsider.write_all(format!("{}\n", syslog("limit-outsider")).as_bytes());
    assert!(matches!(outsider.read(&mut buf), Ok(0) | Err(_)));
    daemon.wait_until("refusals counted", Duration::from_secs(10), |t| {
        metric_value(
            t,
            "sluice_connections_refused_total",
            &[("source", "tcp"), ("reason", "max_connections")],
        ) == 1
            && metric_value(
                t,
                "sluice_connections_refused_total",
                &[("source", "tcp"), ("reason", "not_allowed")],
            ) == 1
    });
    // A slot frees when a client leaves.
    drop(first);
    daemon.wait_until("slot released", Duration::from_secs(10), |t| {
        metric_value(t, "sluice_tcp_connections_open", &label) == 1
    });
    let mut fourth = connect_from("127.0.0.1", addr).unwrap();
    fourth
        .write_all(format!("{}\n", syslog("limit-fourth")).as_bytes())
        .unwrap();
    daemon.wait_for_output(&["limit-fourth".into()], Duration::from_secs(20));
    assert!(!daemon.output().iter().any(|l| l.contains("limit-outsider")));
    drop(second);
}
