//! Builds the `ingest-ebpf` object (bpfel, nightly) and hands its path to `xdp/` via
//! `SLUICE_XDP_OBJECT`, so the daemon embeds exactly the programs of this checkout.
//!
//! Set `SLUICE_EBPF_OBJECT=/path/to/object` to embed a prebuilt object instead. Without the
//! `xdp` cargo feature (default on) nothing is built or embedded.
//! When the eBPF toolchain is missing the build fails with the command that installs it
//! (`cargo xtask build-ebpf`): a daemon silently built without its XDP half would be worse.

use std::path::{Path, PathBuf};

include!("../xtask/src/ebpf.rs");

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let ebpf_dir = manifest_dir.join("../ingest-ebpf");
    println!("cargo::rerun-if-env-changed=SLUICE_EBPF_OBJECT");
    for input in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo::rerun-if-changed={}", ebpf_dir.join(input).display());
    }
    println!(
        "cargo::rerun-if-changed={}",
        manifest_dir.join("../xtask/src/ebpf.rs").display()
    );
    if std::env::var_os("CARGO_FEATURE_XDP").is_none() {
        // Built without the `xdp` feature: nothing to embed (see `xdp::PROGRAM_EMBEDDED`).
        return;
    }

    let object = match std::env::var_os("SLUICE_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => build(&ebpf_dir),
    };
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("sluice-xdp.o");
    if let Err(error) = std::fs::copy(&object, &out) {
        fail(&format!(
            "cannot copy the eBPF object {}: {error}",
            object.display()
        ));
    }
    println!("cargo::rustc-env=SLUICE_XDP_OBJECT={}", out.display());
}

fn build(ebpf_dir: &Path) -> PathBuf {
    let mut cmd = ebpf_build_command(ebpf_dir);
    // Cargo reads build-script stdout as directives: keep the nested build's output on stderr.
    cmd.stdout(std::process::Stdio::from(std::io::stderr()));
    match cmd.status() {
        Ok(status) if status.success() => ebpf_object_path(ebpf_dir),
        Ok(status) => fail(&format!("the eBPF build ({cmd:?}) failed: {status}")),
        Err(error) => fail(&format!("cannot run the eBPF build ({cmd:?}): {error}")),
    }
}

fn fail(reason: &str) -> ! {
    eprintln!(
        "error: {reason}\n\
         The daemon embeds its XDP programs. Install the eBPF toolchain and build them with\n\
         \n    cargo xtask build-ebpf\n\n\
         (nightly rust-src + bpf-linker 0.10; `cargo xtask ci` and `cargo xtask run` do this first)."
    );
    std::process::exit(1);
}
