//! Secrets for sinks: read from a file (`*_file` keys) or an environment variable (`*_env`
//! keys), held in a type whose `Debug`/`Display` never reveal the value.

use std::fmt;
use std::path::{Path, PathBuf};

/// A credential. `Debug` and `Display` print `***`; read it only via [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Loads a secret from exactly one of `file` or `env`. A trailing newline in the file is
    /// dropped (editors and `echo` add one; no service expects it in a key).
    pub fn load(key: &str, file: Option<&Path>, env: Option<&str>) -> Result<Secret, SecretError> {
        let value = match (file, env) {
            (Some(_), Some(_)) => {
                return Err(SecretError::Ambiguous {
                    key: key.to_owned(),
                });
            }
            (Some(path), None) => {
                let text = std::fs::read_to_string(path).map_err(|source| SecretError::File {
                    key: key.to_owned(),
                    path: path.to_owned(),
                    source,
                })?;
                text.trim_end_matches(['\n', '\r']).to_owned()
            }
            (None, Some(var)) => std::env::var(var).map_err(|_| SecretError::Env {
                key: key.to_owned(),
                var: var.to_owned(),
            })?,
            (None, None) => {
                return Err(SecretError::Missing {
                    key: key.to_owned(),
                });
            }
        };
        if value.is_empty() {
            return Err(SecretError::Empty {
                key: key.to_owned(),
            });
        }
        if value.bytes().any(|b| b.is_ascii_control()) {
            // A control byte cannot go into an HTTP header; failing here beats a confusing
            // request-building error on every upload.
            return Err(SecretError::ControlCharacter {
                key: key.to_owned(),
            });
        }
        Ok(Secret(value))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a secret comes from, as written in config: `{ file = "..." }` or `{ env = "..." }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    pub file: Option<PathBuf>,
    pub env: Option<String>,
}

impl SecretRef {
    pub fn load(&self, key: &str) -> Result<Secret, SecretError> {
        Secret::load(key, self.file.as_deref(), self.env.as_deref())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret `{key}`: set either `{key}_file` or `{key}_env`, not both")]
    Ambiguous { key: String },
    #[error("secret `{key}`: neither `{key}_file` nor `{key}_env` is set")]
    Missing { key: String },
    #[error("secret `{key}`: cannot read {path}: {source}")]
    File {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret `{key}`: environment variable `{var}` is not set or not UTF-8")]
    Env { key: String, var: String },
    #[error("secret `{key}` is empty")]
    Empty { key: String },
    #[error("secret `{key}` contains a control character")]
    ControlCharacter { key: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert!(!format!("{:?}", Some(&s)).contains("hunter2"));
    }

    #[test]
    fn file_secret_drops_trailing_newline_and_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "abc123\n").unwrap();
        assert_eq!(
            Secret::load("token", Some(&path), None).unwrap().expose(),
            "abc123"
        );
        let missing = Secret::load("token", None, None).unwrap_err().to_string();
        assert!(missing.contains("token_file"), "{missing}");
        let both = Secret::load("token", Some(&path), Some("X")).unwrap_err();
        assert!(matches!(both, SecretError::Ambiguous { .. }));
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            Secret::load("token", Some(&path), None),
            Err(SecretError::Empty { .. })
        ));
        std::fs::write(&path, "a\tb").unwrap();
        assert!(matches!(
            Secret::load("token", Some(&path), None),
            Err(SecretError::ControlCharacter { .. })
        ));
    }

    #[test]
    fn env_secret() {
        // Only the unset case: `set_var` races with other test threads reading the environment.
        let var = "SLUICE_TEST_SECRET_ENV_ONLY_HERE";
        assert!(matches!(
            Secret::load("k", None, Some(var)),
            Err(SecretError::Env { .. })
        ));
    }
}
