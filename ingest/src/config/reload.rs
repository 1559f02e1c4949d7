//! `systemctl reload` (SIGHUP): what a running daemon can take from an edited config file, and
//! what needs a restart. Who may send, and who is expected to, is reloadable — adding an
//! appliance must not cost the UDP datagrams a restart drops — and so is the XDP rate limit;
//! sockets, threads, sinks and the rest are built once at start.

use super::Config;

/// Keys a reload applies (`*` is any source name).
pub const RELOADABLE: &[&str] = &[
    "sources.*.allow",
    "sources.*.expected_senders",
    "xdp.allow",
    "xdp.enforce_allowlist",
    "xdp.rate_limit_pps",
    "xdp.rate_limit_burst",
];

fn reloadable(path: &[String]) -> bool {
    RELOADABLE.iter().any(|pattern| {
        let pattern: Vec<&str> = pattern.split('.').collect();
        pattern.len() == path.len()
            && pattern
                .iter()
                .zip(path)
                .all(|(want, got)| *want == "*" || want == got)
    })
}

/// Dotted keys whose effective values differ between the running config and `edited`, except
/// the reloadable ones: what the operator changed that only a restart applies. An inline
/// secret is compared by a fingerprint (see [`super::secret::with_fingerprints`]); secret files
/// by path, since a reload reads their contents again (see [`super::credential`]).
pub fn needs_restart(running: &Config, edited: &Config) -> Vec<String> {
    let table = |c: &Config| {
        super::secret::with_fingerprints(|| {
            toml::from_str::<toml::Table>(&c.to_redacted_toml()).unwrap_or_default()
        })
    };
    let mut changed = Vec::new();
    diff(
        &mut Vec::new(),
        &toml::Value::Table(table(running)),
        &toml::Value::Table(table(edited)),
        &mut changed,
    );
    changed
}

fn diff(path: &mut Vec<String>, old: &toml::Value, new: &toml::Value, changed: &mut Vec<String>) {
    if reloadable(path) {
        return;
    }
    match (old, new) {
        (toml::Value::Table(old), toml::Value::Table(new)) => {
            let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
            keys.sort();
            keys.dedup();
            let absent = toml::Value::Table(toml::Table::new());
            for key in keys {
                path.push(key.clone());
                match (old.get(key), new.get(key)) {
                    (Some(o), Some(n)) => diff(path, o, n, changed),
                    // A table that comes or goes: its reloadable keys still do not count.
                    (Some(o @ toml::Value::Table(_)), None) => {
                        diff(path, o, &absent, changed);
                    }
                    (None, Some(n @ toml::Value::Table(_))) => {
                        diff(path, &absent, n, changed);
                    }
                    _ if reloadable(path) => {}
                    _ => changed.push(path.join(".")),
                }
                path.pop();
            }
        }
        (old, new) if old != new => changed.push(path.join(".")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
data_dir = "/tmp/sluice-reload"
[metrics]
listen = "127.0.0.1:9514"
[sources.udp_in]
type = "udp"
listen = "127.0.0.1:5514"
allow = ["10.0.0.0/8"]
[sources.tcp_in]
type = "tcp"
listen = "127.0.0.1:5515"
[sinks.out]
type = "file"
path = "/tmp/sluice-reload/out"
"#;

    fn config(text: &str) -> Config {
        Config::from_toml(text, "test.toml").unwrap()
    }

    #[test]
    fn source_allowlists_reload_everything_else_waits_for_a_restart() {
        let running = config(BASE);
        assert_eq!(needs_restart(&running, &config(BASE)), Vec::<String>::new());
        let edited = BASE
            .replace(
                r#"allow = ["10.0.0.0/8"]"#,
                r#"allow = ["10.0.0.0/8", "192.0.2.7"]"#,
            )
            .replace(
                "listen = \"127.0.0.1:5515\"",
                "listen = \"127.0.0.1:5515\"\nallow = [\"10.1.0.0/16\"]",
            );
        assert_eq!(
            needs_restart(&running, &config(&edited)),
            Vec::<String>::new()
        );

        let edited = BASE.replace("127.0.0.1:5515", "127.0.0.1:6515").replace(
            "path = \"/tmp/sluice-reload/out\"",
            "path = \"/tmp/elsewhere\"\ncompression = \"gzip\"",
        );
        assert_eq!(
            needs_restart(&running, &config(&edited)),
            vec![
                "sinks.out.compression".to_owned(),
                "sinks.out.path".to_owned(),
                "sources.tcp_in.listen".to_owned()
            ]
        );
        // A whole new source or sink is a restart.
        let edited = format!("{BASE}[sources.more]\ntype = \"udp\"\nlisten = \"127.0.0.1:5516\"\n");
        let changed = needs_restart(&running, &config(&edited));
        assert!(
            changed.contains(&"sources.more.listen".to_owned()),
            "{changed:?}"
        );
        assert!(
            changed.contains(&"sources.more.type".to_owned()),
            "{changed:?}"
        );
    }

    /// An inline secret changed in the file is a restart (a reload reads secret files again,
    /// not the running config's inline values); the same secret is no change, and the
    /// comparison leaves the redacted rendering as it was.
    #[test]
    fn a_changed_inline_secret_waits_for_a_restart() {
        let with_token = |token: &str| {
            config(&BASE.replace(
                "listen = \"127.0.0.1:9514\"",
                &format!("listen = \"127.0.0.1:9514\"\nbearer_token = \"{token}\""),
            ))
        };
        let running = with_token("first-token");
        assert_eq!(
            needs_restart(&running, &with_token("first-token")),
            Vec::<String>::new()
        );
        assert_eq!(
            needs_restart(&running, &with_token("second-token")),
            vec!["metrics.bearer_token".to_owned()]
        );
        let shown = running.to_redacted_toml();
        assert!(shown.contains("bearer_token = \"<redacted>\""), "{shown}");
        assert!(!shown.contains("first-token"), "{shown}");
    }

    /// A new `[xdp]` table is a restart, except its reloadable keys; within one, only the
    /// filters reload. (Builds without the XDP program refuse `[xdp]` outright.)
    #[test]
    fn xdp_filters_reload_the_rest_of_xdp_waits_for_a_restart() {
        if !crate::xdp::PROGRAM_EMBEDDED {
            return;
        }
        let running = config(BASE);
        let xdp =
            "[xdp]\ninterfaces = [\"eth0\"]\nallow = [\"10.0.0.0/8\"]\nenforce_allowlist = true\n";
        let changed = needs_restart(&running, &config(&format!("{BASE}{xdp}")));
        assert!(
            changed.contains(&"xdp.interfaces".to_owned()),
            "{changed:?}"
        );
        assert!(
            !changed
                .iter()
                .any(|k| k == "xdp.allow" || k == "xdp.enforce_allowlist")
        );

        let running = config(&format!("{BASE}{xdp}"));
        let edited =
            format!("{BASE}{xdp}rate_limit_pps = 1000\n").replace("10.0.0.0/8", "10.0.0.0/16");
        assert_eq!(
            needs_restart(&running, &config(&edited)),
            Vec::<String>::new()
        );
        let edited = format!("{BASE}{xdp}").replace("eth0", "eth1");
        assert_eq!(
            needs_restart(&running, &config(&edited)),
            vec!["xdp.interfaces".to_owned()]
        );
    }
}
