//! `sluice run`: start the appliance and run until SIGINT/SIGTERM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

use super::service_manager::ServiceManager;
use crate::config::Config;
use crate::config::credential::{Credential, Renew};
use crate::pipeline::Pipeline;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Config file (TOML). Without it, the embedded default is used (see `deploy/sluice.toml`).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    super::logging::init();
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => {
            tracing::info!(
                "no --config given: using the embedded default (UDP+TCP 514, files under ./sluice-data/out)"
            );
            Config::embedded_default()?
        }
    };
    for warning in config
        .check_file_modes()
        .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?
    {
        tracing::warn!("{warning}");
    }
    let identity = privilege_target(&config)?;

    // SIGINT/SIGTERM ask for a graceful drain; a second one while draining exits at once.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())?;
        signal_hook::flag::register(signal, stop.clone())?;
    }
    // SIGHUP (systemd's `reload`) must never kill the forwarder: it re-reads the config file
    // for what can change while running (see `config::reload`); TLS sources reload their
    // certificates on it too (net/tls.rs registers its own flag).
    let reload_requested = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload_requested.clone())?;

    let healthy = Arc::new(AtomicBool::new(true));
    // The secrets a reload reads again: the scrape token's, then the pipeline's.
    let mut credentials: Vec<Arc<dyn Renew>> = Vec::new();
    if config.metrics.enabled {
        let handle = crate::metrics::install()?;
        let metrics_config = config.metrics.clone();
        let token = Credential::load("metrics.bearer_token", move || metrics_config.token())
            .map_err(|e| anyhow::anyhow!("[metrics] {e}"))?;
        credentials.push(token.clone());
        let addr = crate::metrics::serve(config.metrics.listen, handle, healthy.clone(), token)?;
        tracing::info!("metrics on http://{addr}/metrics, health on http://{addr}/health");
        // Present from the start, so dashboards and alerts see 0 rather than no data.
        for result in ["ok", "error"] {
            metrics::counter!(crate::metrics::CONFIG_RELOADS, "result" => result).absolute(0);
        }
        metrics::gauge!(crate::metrics::CONFIG_RESTART_PENDING).set(0.0);
    }

    // XDP before the sockets: a config error stops here, nothing else does (see `start_xdp`).
    let mut xdp = start_xdp(&config)?;
    let pipeline = Pipeline::start_with(&config, Vec::new(), &mut |port, sockets| {
        let Some(handle) = xdp.as_mut() else { return };
        if let Err(e) = handle.attach_reuseport(port, sockets) {
            tracing::error!(
                port,
                "XDP SOCKET STEERING DISABLED for this port: {e}; the kernel's flow hash spreads datagrams instead"
            );
        }
    })
    .context("starting the pipeline")?;
    credentials.extend(pipeline.credentials().iter().cloned());
    if let Some(identity) = &identity
        && let Err(e) = drop_root(&config, identity, xdp.as_ref())
    {
        pipeline.shutdown();
        return Err(e);
    }
    tracing::info!(
        "sluice {} running; SIGINT or SIGTERM to stop",
        env!("CARGO_PKG_VERSION")
    );
    let mut service_manager = ServiceManager::from_env();
    service_manager.ready(&pipeline.totals().summary());
    let mut failure = None;
    let mut xdp_exported = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(why) = pipeline.failed() {
            failure = Some(why);
            break;
        }
        if reload_requested.swap(false, Ordering::Relaxed) {
            service_manager.reloading();
            let ok = reload(
                args.config.as_deref(),
                &config,
                &pipeline,
                &credentials,
                xdp.as_mut(),
            );
            service_manager.reloaded(ok, &pipeline.totals().summary());
        }
        if let Some(handle) = &xdp
            && xdp_exported.elapsed() >= XDP_METRICS_EVERY
        {
            xdp_exported = std::time::Instant::now();
            if let Err(e) = handle.export_metrics() {
                tracing::warn!("reading the XDP counters: {e}");
            }
        }
        service_manager.tick(&pipeline.totals().summary());
        std::thread::sleep(Duration::from_millis(50));
    }
    healthy.store(false, Ordering::Relaxed);
    service_manager.stopping(
        match &failure {
            Some(why) => format!("stopping after a failure ({why}): writing what was received"),
            None => "stopping: draining queues and writing the last batches".to_string(),
        }
        .as_str(),
    );
    tracing::info!("stopping: draining queues and writing the last batches");
    let summary = pipeline.shutdown();
    // Detaches the program and removes the pins (an early return or unwinding drops it too).
    drop(xdp.take());
    if let Some(why) = failure {
        if why.ends_with("panicked") {
            anyhow::bail!("{}", panic_exit_error(&why, &summary));
        }
        if why.contains(" stalled: ") {
            anyhow::bail!("{}", stall_exit_error(&why, &summary));
        }
        anyhow::bail!("{why}; shut down after writing everything received");
    }
    if summary.sink_dropped_events > 0 {
        tracing::error!(
            events = summary.sink_dropped_events,
            "some events could not be delivered"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP: reads `path` again and applies what can change while running (sources' `allow`,
/// the XDP allowlist and rate limit, and every credential read from a file); an invalid file
/// changes nothing. Returns whether everything was applied. `started` is the config
/// the daemon started with: what differs from it elsewhere is reported as needing a restart,
/// at every reload until there is one.
fn reload(
    path: Option<&Path>,
    started: &Config,
    pipeline: &Pipeline,
    credentials: &[Arc<dyn Renew>],
    xdp: Option<&mut crate::xdp::XdpHandle>,
) -> bool {
    use crate::metrics::{CONFIG_RELOADS, CONFIG_RESTART_PENDING};
    let Some(path) = path else {
        tracing::info!(
            "SIGHUP: running on the embedded default, no config file to read again (TLS sources still reload their certificates)"
        );
        return true;
    };
    /// What a reload changed, and what it could not.
    struct Applied {
        allowlists: Vec<String>,
        expected_senders: Vec<String>,
        xdp_changed: bool,
        restart: Vec<String>,
    }
    let applied = (|| -> anyhow::Result<Applied> {
        let edited = Config::load(path)?;
        for warning in edited
            .check_file_modes()
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            tracing::warn!("{warning}");
        }
        let xdp_changed = match (xdp, &edited.xdp) {
            (Some(handle), Some(cfg)) => handle.update_filters(cfg)?,
            _ => false,
        };
        Ok(Applied {
            allowlists: pipeline.reload_allowlists(&edited)?,
            expected_senders: pipeline.reload_expected_senders(&edited),
            xdp_changed,
            restart: crate::config::reload::needs_restart(started, &edited),
        })
    })();
    match applied {
        Ok(Applied {
            allowlists: sources,
            expected_senders: senders,
            xdp_changed,
            restart,
        }) => {
            // The edited file's secrets were all read by its validation: a failure here is a
            // file changed meanwhile, and only that credential keeps its running value.
            let (renewed, unreadable) = crate::config::credential::renew_all(credentials);
            let result = if unreadable.is_empty() { "ok" } else { "error" };
            metrics::counter!(CONFIG_RELOADS, "result" => result).increment(1);
            metrics::gauge!(CONFIG_RESTART_PENDING).set(if restart.is_empty() { 0.0 } else { 1.0 });
            tracing::info!(file = %path.display(), allowlists_changed = ?sources, expected_senders_changed = ?senders, xdp_filters_changed = xdp_changed,
                credentials_renewed = ?renewed, "config reloaded");
            for (name, e) in unreadable {
                tracing::error!(credential = %name, "reading the credential again failed, it keeps its running value: {e}");
            }
            if !restart.is_empty() {
                tracing::warn!(file = %path.display(), keys = ?restart,
                    "these changes take effect only after a restart (systemctl restart sluice); the running values stay");
            }
            result == "ok"
        }
        Err(e) => {
            metrics::counter!(CONFIG_RELOADS, "result" => "error").increment(1);
            tracing::error!(file = %path.display(), "config reload failed, nothing changed: {e:#}");
            false
        }
    }
}

/// The exit error after a worker or sink thread panicked: what it held or had queued had no
/// other thread to take it, and was counted as lost at shutdown.
fn panic_exit_error(why: &str, summary: &crate::pipeline::Summary) -> String {
    format!(
        "{why} (a bug: please report it with the log above); shut down, writing what the other \
         threads held — lost with the panicked thread: {} messages it held or had queued \
         (sluice_dropped_messages_total{{reason=\"thread_panicked\"}}) and {} events of sink \
         batches (in sluice_sink_dropped_events_total)",
        summary.dropped_thread_panicked, summary.sink_dropped_thread_panicked
    )
}

/// The exit error after a worker stalled: the daemon stopped so that the service manager
/// starts it again, and what the worker held could not be written.
fn stall_exit_error(why: &str, summary: &crate::pipeline::Summary) -> String {
    format!(
        "{why} (a bug, or a machine too starved to run it: please report it with the log \
         above); shut down, writing what the other threads held — lost with the stalled worker: \
         {} messages it held or had queued (sluice_dropped_messages_total{{reason=\"worker_stalled\"}}) \
         and {} events of its open sink batches (in sluice_sink_dropped_events_total)",
        summary.dropped_worker_stalled, summary.sink_dropped_worker_stalled
    )
}

/// The identity `user`/`group` name, checked before anything is bound: the user exists, the
/// process may switch to it, and it will be able to write where file sinks write.
fn privilege_target(config: &Config) -> anyhow::Result<Option<crate::privileges::Identity>> {
    let Some(user) = &config.user else {
        return Ok(None);
    };
    let identity = crate::privileges::Identity::resolve(user, config.group.as_deref())?;
    // data_dir is re-owned recursively at every start: never a system directory by mistake.
    let absolute = std::path::absolute(&config.data_dir)?;
    let shared = [
        "/var/lib",
        "/var/log",
        "/var/cache",
        "/var/spool",
        "/var/tmp",
        "/usr/local",
    ];
    let system = [
        "/proc", "/sys", "/dev", "/usr", "/etc", "/boot", "/bin", "/sbin", "/lib",
    ];
    if absolute.components().count() < 3
        || shared.iter().any(|d| absolute == Path::new(d))
        || system.iter().any(|d| absolute.starts_with(d))
    {
        anyhow::bail!(
            "data_dir {}: too close to / to hand over to user {user} recursively; use a \
             directory of its own such as /var/lib/sluice",
            absolute.display()
        );
    }
    for (name, sink) in &config.sinks {
        if let crate::config::SinkKind::File(file) = &sink.kind
            && !file.path.starts_with(&config.data_dir)
            && !identity.can_write_dir(&file.path)
        {
            anyhow::bail!(
                "sinks.{name}.path: {} is not a directory user {user} can write; \
                 create it and `chown {user} {}`, or put it under data_dir ({}), which sluice hands to {user}",
                file.path.display(),
                file.path.display(),
                config.data_dir.display()
            );
        }
    }
    Ok(Some(identity))
}

/// Capabilities kept after the switch: none without XDP; with XDP `CAP_BPF`, which kernels
/// before 6.5 require for any `bpf()` call by a non-root process when
/// `kernel.unprivileged_bpf_disabled` is set (Debian's default) — the counter reads behind
/// `sluice_xdp_*`. Detaching needs nothing (bpf_link fds; the pins are handed to the user).
fn drop_root(
    config: &Config,
    identity: &crate::privileges::Identity,
    xdp: Option<&crate::xdp::XdpHandle>,
) -> anyhow::Result<()> {
    let mut own = vec![config.data_dir.clone()];
    let mut keep = Vec::new();
    if let Some(handle) = xdp {
        own.push(handle.pin_dir().to_path_buf());
        keep.push(caps::Capability::CAP_BPF);
    }
    crate::privileges::drop_privileges(identity, &keep, &own)
        .with_context(|| format!("switching to user {}", identity.user))
}

const XDP_METRICS_EVERY: Duration = Duration::from_secs(2);

/// Loads and attaches XDP when `[xdp]` is configured. An invalid `[xdp]` section is fatal;
/// anything else (missing capabilities, no bpffs, an interface without XDP, another instance
/// holding the pins) leaves the daemon running on plain sockets, said loudly in the log and as
/// `sluice_xdp_enabled 0`.
fn start_xdp(config: &Config) -> anyhow::Result<Option<crate::xdp::XdpHandle>> {
    crate::xdp::export_configured_metric(config.xdp.is_some());
    let Some(cfg) = &config.xdp else {
        crate::xdp::export_disabled_metric();
        tracing::info!("XDP not configured (no [xdp] section)");
        return Ok(None);
    };
    cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    match crate::xdp::start_or_disable(cfg) {
        Ok(Some(handle)) => {
            tracing::info!(
                attachments = ?handle.attachments(),
                pins = %handle.pin_dir().display(),
                "XDP enabled"
            );
            if let Err(e) = handle.export_metrics() {
                tracing::warn!("reading the XDP counters: {e}");
            }
            Ok(Some(handle))
        }
        Ok(None) => Ok(None),
        Err(e) => {
            tracing::error!(
                "XDP DISABLED: {e}; running on plain sockets without in-kernel counting, \
                 allowlist, rate limit or steering"
            );
            crate::xdp::export_disabled_metric();
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_exit_error_after_a_panic_says_how_much_was_lost() {
        let summary = crate::pipeline::Summary {
            dropped_thread_panicked: 301,
            sink_dropped_thread_panicked: 5,
            ..crate::pipeline::Totals::default().summary()
        };
        let text = super::panic_exit_error("worker 0 panicked", &summary);
        assert!(text.starts_with("worker 0 panicked (a bug"), "{text}");
        assert!(text.contains("301 messages"), "{text}");
        assert!(text.contains("5 events of sink batches"), "{text}");
    }

    #[test]
    fn the_exit_error_after_a_stall_says_how_much_was_lost() {
        let summary = crate::pipeline::Summary {
            dropped_worker_stalled: 42,
            sink_dropped_worker_stalled: 7,
            ..crate::pipeline::Totals::default().summary()
        };
        let text = super::stall_exit_error("worker 1 stalled: it has held", &summary);
        assert!(
            text.starts_with("worker 1 stalled: it has held (a bug"),
            "{text}"
        );
        assert!(text.contains("42 messages"), "{text}");
        assert!(text.contains("7 events of its open sink batches"), "{text}");
    }
}
