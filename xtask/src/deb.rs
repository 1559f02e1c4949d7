//! The .deb: built with cargo-deb from `[package.metadata.deb]` in ingest/Cargo.toml, then (as
//! root, with dpkg) installed, checked and purged so the machine is left as it was. The service
//! is never enabled or started, and nothing else on the system is touched.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::{cargo, libc_geteuid, output_of, run};

/// cargo-deb 3.8 needs rustc ≥ 1.85; pinned so CI builds the same packages every time.
const CARGO_DEB_VERSION: &str = "3.8.0";
const DEB_PACKAGE: &str = "sluice";

fn step<T>(name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    eprintln!("xtask: ── {name}");
    let started = std::time::Instant::now();
    let result = f();
    let took = started.elapsed().as_secs_f64();
    match &result {
        Ok(_) => eprintln!("xtask: ── {name}: ok ({took:.1} s)"),
        Err(e) => eprintln!("xtask: ── {name}: FAILED after {took:.1} s: {e:#}"),
    }
    result
}

fn install_cargo_deb() -> anyhow::Result<()> {
    let installed = output_of("cargo-deb", &["--version"]).unwrap_or_default();
    if installed.split_whitespace().nth(1) == Some(CARGO_DEB_VERSION) {
        return Ok(());
    }
    run(cargo().args([
        "install",
        &format!("cargo-deb@{CARGO_DEB_VERSION}"),
        "--locked",
    ]))
}

/// Builds the release binary and the package; returns the .deb's path.
pub fn build_deb() -> anyhow::Result<PathBuf> {
    step("install cargo-deb", install_cargo_deb)?;
    step("cargo deb -p sluice-ingest (release build)", || {
        let mut cmd = cargo();
        cmd.args(["deb", "-p", "sluice-ingest"]);
        eprintln!("xtask: running {cmd:?}");
        let output = cmd
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("spawning {cmd:?}"))?;
        if !output.status.success() {
            bail!("{cmd:?} failed: {}", output.status);
        }
        // cargo-deb prints the package path as its last line.
        let stdout = String::from_utf8_lossy(&output.stdout);
        let deb = stdout
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.ends_with(".deb"))
            .map(PathBuf::from)
            .context("cargo deb printed no .deb path")?;
        if !deb.is_file() {
            bail!("{} does not exist", deb.display());
        }
        Ok(deb)
    })
}

fn package_installed() -> bool {
    output_of("dpkg-query", &["-W", "-f=${Status}", DEB_PACKAGE])
        .is_some_and(|status| status.contains("installed") && !status.contains("not-installed"))
}

fn purge_package() -> anyhow::Result<()> {
    run(Command::new("dpkg").args(["--purge", DEB_PACKAGE]))
}

/// `cargo xtask ci`'s last stage: build, install, verify, purge.
pub fn check_deb_package() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let deb = build_deb()?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc_geteuid() } == 0;
    if !root || output_of("dpkg", &["--version"]).is_none() {
        eprintln!(
            "xtask: built {} but not installing it (needs root and dpkg)",
            deb.display()
        );
        return Ok(());
    }
    if package_installed() {
        step(
            "purge a sluice package left by an earlier run",
            purge_package,
        )?;
    }
    step("dpkg -i", || run(Command::new("dpkg").arg("-i").arg(&deb)))?;
    let checks = step("verify the installed package", verify_installed_package);
    let purged = step("dpkg --purge", || {
        purge_package()?;
        verify_purged()
    });
    checks?;
    purged?;
    eprintln!(
        "xtask: package check passed in {:.0} s ({})",
        started.elapsed().as_secs_f64(),
        deb.display()
    );
    Ok(())
}

fn verify_installed_package() -> anyhow::Result<()> {
    run(Command::new("/usr/bin/sluice").args(["check-config", "/etc/sluice/sluice.toml"]))?;
    // conf.d is included: a file dropped there joins the config.
    let owner = output_of("stat", &["-c", "%U:%G %a", "/etc/sluice/conf.d"]).unwrap_or_default();
    if owner.trim() != "root:sluice 750" {
        bail!("/etc/sluice/conf.d is {owner:?}, want root:sluice 750");
    }
    let fragment = Path::new("/etc/sluice/conf.d/50-xtask-check.toml");
    std::fs::write(
        fragment,
        "[sinks.xtask_check]\ntype = \"file\"\npath = \"/var/lib/sluice/xtask-check\"\n",
    )?;
    let merged = Command::new("/usr/bin/sluice")
        .args(["check-config", "/etc/sluice/sluice.toml"])
        .output()
        .context("running sluice check-config")?;
    std::fs::remove_file(fragment)?;
    let effective = String::from_utf8_lossy(&merged.stdout);
    if !merged.status.success() || !effective.contains("[sinks.xtask_check]") {
        bail!(
            "a sink in conf.d did not join the config: {}\n{effective}",
            String::from_utf8_lossy(&merged.stderr)
        );
    }
    eprintln!("xtask: /etc/sluice/conf.d is included");
    // Unknown keys are only warnings for systemd-analyze: treat any output as a failure.
    let output = Command::new("systemd-analyze")
        .args(["verify", "/lib/systemd/system/sluice.service"])
        .output()
        .context("running systemd-analyze (systemd package)")?;
    let messages = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || !messages.trim().is_empty() {
        bail!(
            "systemd-analyze verify sluice.service: {}\n{messages}",
            output.status
        );
    }
    eprintln!("xtask: systemd-analyze verify /lib/systemd/system/sluice.service: clean");
    for path in [
        "/usr/lib/sysctl.d/60-sluice.conf",
        "/usr/share/doc/sluice/grafana/sluice.json",
        "/usr/share/doc/sluice/prometheus/sluice-alerts.yml",
        "/usr/share/doc/sluice/examples/sentinel.toml",
    ] {
        if !Path::new(path).is_file() {
            bail!("{path} not installed");
        }
    }
    let user = output_of("getent", &["passwd", DEB_PACKAGE]).context("user sluice missing")?;
    if !user.contains(":/var/lib/sluice:/usr/sbin/nologin") {
        bail!("unexpected passwd entry: {user}");
    }
    let owner = output_of("stat", &["-c", "%U:%G %a", "/var/lib/sluice"]).unwrap_or_default();
    if owner.trim() != "sluice:sluice 750" {
        bail!("/var/lib/sluice is {owner}, want sluice:sluice 750");
    }
    // The service must be neither enabled nor started by the installation.
    if Path::new("/etc/systemd/system/multi-user.target.wants/sluice.service").exists() {
        bail!("the package enabled sluice.service");
    }
    Ok(())
}

fn verify_purged() -> anyhow::Result<()> {
    for path in [
        "/usr/bin/sluice",
        "/etc/sluice",
        "/var/lib/sluice",
        "/lib/systemd/system/sluice.service",
        "/usr/lib/sysctl.d/60-sluice.conf",
    ] {
        if Path::new(path).exists() {
            bail!("{path} left after purge");
        }
    }
    if output_of("getent", &["passwd", DEB_PACKAGE]).is_some() {
        bail!("user sluice left after purge");
    }
    Ok(())
}
