//! `sluice run`: start the appliance and run until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::pipeline::Pipeline;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Config file (TOML). Without it, the embedded default is used (see `deploy/sluice.toml`).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => {
            tracing::info!(
                "no --config given: using the embedded default (UDP+TCP 514, files under ./sluice-data/out)"
            );
            Config::embedded_default()?
        }
    };
    if config.xdp.is_some() {
        tracing::warn!(
            "[xdp] is configured but this build does not attach XDP programs yet; continuing without"
        );
    }

    // SIGINT/SIGTERM ask for a graceful drain; a second one while draining exits at once.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())?;
        signal_hook::flag::register(signal, stop.clone())?;
    }

    let healthy = Arc::new(AtomicBool::new(true));
    if config.metrics.enabled {
        let handle = crate::metrics::install()?;
        let token = config
            .metrics
            .token()
            .map_err(|e| anyhow::anyhow!("[metrics] {e}"))?;
        let addr = crate::metrics::serve(config.metrics.listen, handle, healthy.clone(), token)?;
        tracing::info!("metrics on http://{addr}/metrics, health on http://{addr}/health");
    }

    let pipeline = Pipeline::start(&config, Vec::new()).context("starting the pipeline")?;
    tracing::info!(
        "sluice {} running; SIGINT or SIGTERM to stop",
        env!("CARGO_PKG_VERSION")
    );
    let mut failure = None;
    while !stop.load(Ordering::Relaxed) {
        if let Some(why) = pipeline.failed() {
            failure = Some(why);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    healthy.store(false, Ordering::Relaxed);
    tracing::info!("stopping: draining queues and writing the last batches");
    let summary = pipeline.shutdown();
    if let Some(why) = failure {
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}
