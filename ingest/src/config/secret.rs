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
        s.serialize_str(REDACTED)
    }
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
