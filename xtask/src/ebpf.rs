// How the eBPF object is built. Shared verbatim (via `include!`) by `cargo xtask build-ebpf`
// and `ingest/build.rs`, so the two can never disagree on flags or output path.

/// The bpfel build of `ingest-ebpf`: a nested cargo with a clean environment (an outer cargo's
/// RUSTFLAGS, target dir or profile variables must not leak into a build for another target).
pub fn ebpf_build_command(ebpf_dir: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("rustup");
    cmd.env_clear();
    for keep in ["PATH", "HOME", "RUSTUP_HOME", "CARGO_HOME", "TERM", "TMPDIR", "http_proxy", "https_proxy"] {
        if let Some(value) = std::env::var_os(keep) {
            cmd.env(keep, value);
        }
    }
    let rustflags = ["--cfg=bpf_target_arch=\"x86_64\"", "-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f");
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .current_dir(ebpf_dir)
        .args(["run", "nightly", "cargo", "build", "--release", "--locked"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--features", "programs", "--bin", "sluice-xdp"]);
    cmd
}

/// Where [`ebpf_build_command`] leaves the object.
pub fn ebpf_object_path(ebpf_dir: &std::path::Path) -> std::path::PathBuf {
    ebpf_dir.join("target/bpfel-unknown-none/release/sluice-xdp")
}
