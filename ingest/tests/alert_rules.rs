//! The Prometheus alerting rules shipped in `deploy/prometheus/`: `promtool check rules` (syntax,
//! templates) and `promtool test rules` (the unit tests beside them: which alerts fire, when,
//! with which labels and text). That every series they query is exported is checked against
//! running daemons (tests/deploy.rs, darktrace_api.rs, tls_limits.rs, daemon_sinks.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

/// `SLUICE_PROMTOOL` (set by `cargo xtask ci`, which installs it: then it must exist), else
/// `promtool` on PATH.
fn promtool() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_PROMTOOL") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "SLUICE_PROMTOOL={} does not exist",
            path.display()
        );
        return Some(path);
    }
    let found = Command::new("sh")
        .args(["-c", "command -v promtool"])
        .output()
        .ok()?;
    found
        .status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&found.stdout).trim()))
}

#[test]
fn alerting_rules_pass_promtool_checks_and_unit_tests() {
    let Some(promtool) = promtool() else {
        eprintln!("SKIPPED: no promtool (`cargo xtask ci` installs it)");
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    for args in [
        ["check", "rules", "sluice-alerts.yml"],
        ["test", "rules", "sluice-alerts.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        assert!(text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
}
