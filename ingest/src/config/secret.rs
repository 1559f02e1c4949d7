//! Secrets in the config (tokens, keys, passwords): never printed, never logged.
//!
//! A sink that needs a secret accepts it three ways — inline (`token = "..."`), from a file
//! (`token_file = "/run/secrets/x"`) or from the environment (`token_env = "VAR"`) — and calls
//! [`Secret::resolve`] during validation so a missing file or variable fails at start-up.

use std::fmt;
use std::path::PathBuf;

/// Text printed in place of a secret by `check-config`, `Debug` and logs.
pub const REDACTED: &str = "<redacted>";

/// A secret value. `Serialize` and `Debug` print [`REDACTED`]; only [`Secret::expose`] reveals it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: call only where it is sent (e.g. an Authorization header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Picks the one configured way of giving `key` and loads it. Exactly one of inline, file and
    /// env may be set. A trailing newline in a secret file is removed (editors add one).
    pub fn resolve(
        key: &str,
        inline: Option<&Secret>,
        file: Option<&PathBuf>,
        env: Option<&str>,
    ) -> Result<Option<Secret>, String> {
        match (inline, file, env) {
            (None, None, None) => Ok(None),
            (Some(s), None, None) => Ok(Some(s.clone())),
            (None, Some(path), None) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("`{key}_file`: cannot read {}: {e}", path.display()))?;
                let value = text.strip_suffix('\n').unwrap_or(&text);
                let value = value.strip_suffix('\r').unwrap_or(value);
                if value.is_empty() {
                    return Err(format!("`{key}_file`: {} is empty", path.display()));
                }
                Ok(Some(Secret::new(value)))
            }
            (None, None, Some(var)) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(Secret::new(v))),
                Ok(_) => Err(format!("`{key}_env`: environment variable {var} is empty")),
                Err(_) => Err(format!(
                    "`{key}_env`: environment variable {var} is not set"
                )),
            },
            _ => Err(format!(
                "give only one of `{key}`, `{key}_file` and `{key}_env`"
            )),
        }
    }
}

/// `*_file` keys that name public material (certificates, CA bundles): any mode is fine.
fn is_public_file_key(key: &str) -> bool {
    key.ends_with("cert_file") || key.ends_with("ca_file")
}

/// Calls `f(dotted key, inside a secret_headers table, text)` for every string of the
/// serialized config: how secrets are found without a list of tables to keep in sync.
fn for_each_string(config: &impl serde::Serialize, mut f: impl FnMut(&str, bool, &str)) {
    fn walk(
        value: &toml::Value,
        key: &str,
        in_secret_table: bool,
        f: &mut impl FnMut(&str, bool, &str),
    ) {
        match value {
            toml::Value::Table(table) => {
                for (name, child) in table {
                    let dotted = if key.is_empty() {
                        name.clone()
                    } else {
                        format!("{key}.{name}")
                    };
                    let secret_table = in_secret_table || name == "secret_headers";
                    walk(child, &dotted, secret_table, f);
                }
            }
            toml::Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{key}[{i}]"), in_secret_table, f);
                }
            }
            toml::Value::String(text) => f(key, in_secret_table, text),
            _ => {}
        }
    }
    if let Ok(value) = toml::Value::try_from(config) {
        walk(&value, "", false, &mut f);
    }
}

/// Every secret file the config names, as `(dotted key, path)`: keys ending in `_file` (except
/// certificates and CA bundles) and `file` inside `secret_headers`.
pub fn secret_files(config: &impl serde::Serialize) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for_each_string(config, |key, in_secret_table, path| {
        let last = key.rsplit('.').next().unwrap_or(key);
        if (last.ends_with("_file") && !is_public_file_key(last))
            || (in_secret_table && last == "file")
        {
            out.push((key.to_owned(), PathBuf::from(path)));
        }
    });
    out
}

/// Dotted keys of the secrets written inline (not `*_file` or `*_env`): each one serializes as
/// [`REDACTED`].
pub fn inline_secrets(config: &impl serde::Serialize) -> Vec<String> {
    let mut out = Vec::new();
    for_each_string(config, |key, _, text| {
        if text == REDACTED {
            out.push(key.to_owned());
        }
    });
    out
}

/// Refuses secret files that group or others may access: the first offender, with the fix.
pub fn check_secret_file_modes(files: &[(String, PathBuf)]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for (key, path) in files {
        let mode = std::fs::metadata(path)
            .map_err(|e| format!("`{key}`: cannot stat {}: {e}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "`{key}`: secret file {} is accessible by group or others (mode {:04o}); \
                 restrict it with `chmod 600 {}` (owned by the user sluice runs as, or root)",
                path.display(),
                mode & 0o7777,
                path.display()
            ));
        }
    }
    Ok(())
}

/// Refuses a config file that every user may write or another unprivileged user owns (they
/// could redirect or drop what is forwarded); warns about one its group may write and about
/// inline secrets in a file every user may read.
pub fn check_config_file_modes(files: &[super::ConfigFile]) -> Result<Vec<String>, String> {
    // SAFETY: geteuid has no preconditions.
    check_config_file_modes_for(files, unsafe { libc::geteuid() })
}

/// [`check_config_file_modes`] for a process running as `euid`. Like sshd's `StrictModes`: a
/// file that another unprivileged user owns (and so may rewrite) is refused as one every
/// user may write is; one its group may write is a warning.
fn check_config_file_modes_for(
    files: &[super::ConfigFile],
    euid: u32,
) -> Result<Vec<String>, String> {
    use std::os::unix::fs::MetadataExt;
    let mut warnings = Vec::new();
    for file in files {
        let path = file.path.display();
        let metadata = std::fs::metadata(&file.path)
            .map_err(|e| format!("cannot stat config file {path}: {e}"))?;
        let mode = metadata.mode();
        if metadata.uid() != 0 && metadata.uid() != euid {
            return Err(format!(
                "config file {path} is owned by uid {}, neither root nor the user sluice runs \
                 as (uid {euid}): that user could redirect or drop what sluice forwards; \
                 `chown root {path}`",
                metadata.uid()
            ));
        }
        if mode & 0o020 != 0 && metadata.gid() != 0 {
            warnings.push(format!(
                "config file {path} is writable by its group (gid {}, mode {:04o}): its members \
                 could redirect or drop what sluice forwards; `chmod g-w {path}` unless that is \
                 meant",
                metadata.gid(),
                mode & 0o7777
            ));
        }
        if mode & 0o002 != 0 {
            return Err(format!(
                "config file {path} is writable by every user (mode {:04o}): anyone on this \
                 machine could redirect or drop what sluice forwards; `chmod o-w {path}`",
                mode & 0o7777
            ));
        }
        if mode & 0o004 != 0 {
            for key in &file.inline_secrets {
                warnings.push(format!(
                    "`{key}` is written inline in {path}, which every user may read (mode \
                     {:04o}): `chmod o-r {path}`, or give it as `{key}_file`",
                    mode & 0o7777
                ));
            }
        }
    }
    Ok(warnings)
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if FINGERPRINTS.get() {
            let key = FINGERPRINT_KEY.get_or_init(std::collections::hash_map::RandomState::new);
            return s.serialize_str(&format!(
                "{REDACTED} {:016x}",
                std::hash::BuildHasher::hash_one(key, &self.0)
            ));
        }
        s.serialize_str(REDACTED)
    }
}

thread_local! {
    static FINGERPRINTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
/// Random per process: a fingerprint tells equal secrets apart from different ones within this
/// process, and nothing about a secret anywhere else.
static FINGERPRINT_KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
    std::sync::OnceLock::new();

/// Runs `f` with secrets serialized as `<redacted> <fingerprint>`, so that two serialized
/// configs differ where an inline secret was changed. The output must not leave the process
/// (it is compared, never printed).
pub fn with_fingerprints<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            FINGERPRINTS.set(self.0);
        }
    }
    let _reset = Reset(FINGERPRINTS.replace(true));
    f()
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        if value.is_empty() {
            return Err(serde::de::Error::custom("a secret may not be empty"));
        }
        Ok(Secret(value))
    }
}

#[cfg(test)]
mod tests {
    /// A config file owned by another unprivileged user is refused whatever its mode; owned
    /// by root or by the user sluice runs as, it passes. One its group may write (a group
    /// other than root's) is a warning.
    #[test]
    fn config_file_owner_and_group_write_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let files = [crate::config::ConfigFile {
            path: path.clone(),
            inline_secrets: Vec::new(),
        }];
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(super::check_config_file_modes_for(&files, euid), Ok(vec![]));
        if euid != 0 {
            // Files cannot be given away without root: the rule for them is root's.
            return;
        }
        let chown =
            |uid: u32, gid: u32| std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        chown(65534, 0);
        let error = super::check_config_file_modes_for(&files, 0).unwrap_err();
        assert_eq!(
            error,
            format!(
                "config file {0} is owned by uid 65534, neither root nor the user sluice runs \
                 as (uid 0): that user could redirect or drop what sluice forwards; \
                 `chown root {0}`",
                path.display()
            )
        );
        // The user sluice runs as may own it.
        assert_eq!(
            super::check_config_file_modes_for(&files, 65534),
            Ok(vec![])
        );

        chown(0, 65534);
        assert_eq!(super::check_config_file_modes_for(&files, 0), Ok(vec![]));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).unwrap();
        assert_eq!(
            super::check_config_file_modes_for(&files, 0),
            Ok(vec![format!(
                "config file {0} is writable by its group (gid 65534, mode 0660): its members \
                 could redirect or drop what sluice forwards; `chmod g-w {0}` unless that is \
                 meant",
                path.display()
            )])
        );
        chown(0, 0);
        assert_eq!(super::check_config_file_modes_for(&files, 0), Ok(vec![]));
    }

    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, format!("\"{REDACTED}\""));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn secret_files_are_found_and_loose_modes_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        let header = dir.path().join("header");
        let cert = dir.path().join("cert.pem");
        for p in [&token, &header, &cert] {
            std::fs::write(p, "x\n").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o644)).unwrap();
        let config: toml::Value = toml::from_str(&format!(
            "[metrics]\nbearer_token_file = {token:?}\n\
             [sources.t]\ncert_file = {cert:?}\n\
             [sinks.h.secret_headers.X-Key]\nfile = {header:?}\n"
        ))
        .unwrap();
        let mut found = secret_files(&config);
        found.sort();
        assert_eq!(
            found,
            vec![
                ("metrics.bearer_token_file".to_string(), token.clone()),
                (
                    "sinks.h.secret_headers.X-Key.file".to_string(),
                    header.clone()
                ),
            ]
        );
        check_secret_file_modes(&found).unwrap();
        std::fs::set_permissions(&header, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_secret_file_modes(&found).unwrap_err();
        assert!(err.contains("sinks.h.secret_headers.X-Key.file"), "{err}");
        assert!(err.contains("mode 0644"), "{err}");
        assert!(
            err.contains(&format!("chmod 600 {}", header.display())),
            "{err}"
        );
        std::fs::set_permissions(&header, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(check_secret_file_modes(&found).is_err());
    }

    #[test]
    fn resolve_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok");
        std::fs::write(&path, "abc\n").unwrap();
        let s = Secret::resolve("token", None, Some(&path), None)
            .unwrap()
            .unwrap();
        assert_eq!(s.expose(), "abc");
        let err = Secret::resolve("token", Some(&Secret::new("x")), Some(&path), None).unwrap_err();
        assert!(err.contains("only one"), "{err}");
        let err =
            Secret::resolve("token", None, None, Some("SLUICE_TEST_SURELY_UNSET_VAR")).unwrap_err();
        assert!(err.contains("not set"), "{err}");
        let missing = dir.path().join("missing");
        assert!(Secret::resolve("token", None, Some(&missing), None).is_err());
    }
}
