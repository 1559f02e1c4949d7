//! Project tasks: `cargo xtask <task>`.
//!
//! - `build-ebpf`: installs what the eBPF build needs (nightly `rust-src`, `bpf-linker` 0.10.x)
//!   when missing, then builds `ingest-ebpf` for bpfel.
//! - `ci`: test prerequisites (apt packages, promtool), `build-ebpf`, `cargo test --workspace`, then the
//!   package check (`deb.rs`): build the .deb, `dpkg -i` it, verify, purge it again.
//! - `deb`: `build-ebpf`, then build the .deb (installing cargo-deb if missing).
//! - `promtool`: installs promtool (unpacked from Debian's package) if missing, prints its path.
//! - `deb-check`: `build-ebpf`, then the package check alone.
//! - `run`: `build-ebpf`, then `cargo run --release --bin sluice -- run …`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

include!("ebpf.rs");

mod deb;

/// bpf-linker 0.10 loads the nightly toolchain's own LLVM; newer releases default to an LLVM
/// that this nightly cannot link against.
const BPF_LINKER_VERSION: &str = "0.10.0";

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the XDP/SK_REUSEPORT object (installing nightly rust-src and bpf-linker if missing).
    BuildEbpf,
    /// Install test prerequisites, build the eBPF object, run `cargo test --workspace`.
    Ci {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        test_args: Vec<String>,
    },
    /// Build the eBPF object, then the .deb (target/debian/).
    Deb,
    /// Install promtool if missing (for the alerting-rules test) and print its path.
    Promtool,
    /// What `ci` runs after the tests: build the .deb, `dpkg -i`, verify, `dpkg --purge`.
    DebCheck,
    /// Build the eBPF object, then `cargo run --release --bin sluice -- run <args>`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::BuildEbpf => build_ebpf().map(|_| ()),
        Task::Ci { test_args } => {
            install_test_prerequisites()?;
            let promtool = install_promtool()?;
            build_ebpf()?;
            let filtered = !test_args.is_empty();
            // Set, the alerting-rules test requires promtool rather than skipping without it.
            run(cargo()
                .args(["test", "--workspace"])
                .args(&test_args)
                .env("SLUICE_PROMTOOL", &promtool))?;
            if !filtered {
                // The build without the XDP program (the peer benchmark's) compiles, and its
                // config validation refuses `[xdp]` with the reason.
                run(cargo().args([
                    "test",
                    "-p",
                    "sluice-ingest",
                    "--no-default-features",
                    "--lib",
                    "config::",
                ]))?;
            }
            deb::check_deb_package()
        }
        Task::DebCheck => {
            build_ebpf()?;
            deb::check_deb_package()
        }
        Task::Promtool => {
            println!("{}", install_promtool()?.display());
            Ok(())
        }
        Task::Deb => {
            build_ebpf()?;
            deb::build_deb().map(|deb| eprintln!("xtask: built {}", deb.display()))
        }
        Task::Run { args } => {
            build_ebpf()?;
            run(cargo()
                .args(["run", "--release", "--bin", "sluice", "--", "run"])
                .args(args))
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn build_ebpf() -> anyhow::Result<PathBuf> {
    install_ebpf_toolchain()?;
    let ebpf_dir = workspace_root().join("ingest-ebpf");
    run(&mut ebpf_build_command(&ebpf_dir))?;
    let object = ebpf_object_path(&ebpf_dir);
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    eprintln!("xtask: eBPF object at {}", object.display());
    Ok(object)
}

fn install_ebpf_toolchain() -> anyhow::Result<()> {
    let toolchains = output_of("rustup", &["toolchain", "list"]).context("rustup is required")?;
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output_of(
        "rustup",
        &["component", "list", "--installed", "--toolchain", "nightly"],
    )
    .unwrap_or_default();
    if !components.lines().any(|line| line.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker = output_of("bpf-linker", &["--version"]).unwrap_or_default();
    let wanted_minor = BPF_LINKER_VERSION
        .rsplit_once('.')
        .map(|(minor, _)| minor)
        .unwrap_or(BPF_LINKER_VERSION);
    if !linker
        .trim()
        .strip_prefix("bpf-linker ")
        .is_some_and(|v| v.starts_with(&format!("{wanted_minor}.")))
    {
        eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} (takes a few minutes)");
        run(cargo().args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ]))?;
    }
    Ok(())
}

/// Tools the tests call: `ip` (iproute2) and `mount` (util-linux) for the root-only
/// network-namespace tests, `logger` (bsdutils on Debian/Ubuntu) for the daemon end-to-end test,
/// and what the .deb check needs.
fn install_test_prerequisites() -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        ("ip", "iproute2"),
        ("mount", "util-linux"),
        ("logger", "bsdutils"),
        // The package check: cargo-deb's `$auto` dependencies and `systemd-analyze verify`.
        ("dpkg-shlibdeps", "dpkg-dev"),
        ("systemd-analyze", "systemd"),
    ]
    .into_iter()
    .filter(|(tool, _)| output_of("sh", &["-c", &format!("command -v {tool}")]).is_none())
    .map(|(_, package)| package)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        eprintln!("xtask: not root, cannot install {missing:?}; tests that need them fail or skip");
        return Ok(());
    }
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing))
}

/// `promtool`, for the alerting-rules test (`deploy/prometheus`): the one on PATH, else the one
/// unpacked from Debian's `prometheus` package under `target/tools/` (the package itself is
/// not installed: it would start a Prometheus server).
fn install_promtool() -> anyhow::Result<PathBuf> {
    if let Some(path) = output_of("sh", &["-c", "command -v promtool"]) {
        return Ok(PathBuf::from(path.trim()));
    }
    let dir = workspace_root().join("target/tools/prometheus");
    let promtool = dir.join("usr/bin/promtool");
    if promtool.is_file() {
        return Ok(promtool);
    }
    std::fs::create_dir_all(&dir)?;
    let download = || {
        Command::new("apt-get")
            .args(["download", "prometheus"])
            .current_dir(&dir)
            .status()
            .is_ok_and(|s| s.success())
    };
    // SAFETY: geteuid has no preconditions.
    if !download() && unsafe { libc_geteuid() } == 0 {
        run(Command::new("apt-get").arg("update"))?;
    }
    if !download() {
        bail!(
            "cannot download Debian's prometheus package for promtool (apt-get download prometheus)"
        );
    }
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            run(Command::new("dpkg-deb").arg("-x").arg(&path).arg(&dir))?;
            std::fs::remove_file(&path)?;
        }
    }
    if !promtool.is_file() {
        bail!(
            "{} is missing after unpacking the prometheus package",
            promtool.display()
        );
    }
    eprintln!("xtask: promtool at {}", promtool.display());
    Ok(promtool)
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
