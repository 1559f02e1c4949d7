//! Credentials that stay current while the daemon runs. Tokens, keys and client secrets are
//! rotated: an operator writes the new value into the secret file, or an agent (Vault,
//! a Kubernetes secret mount) does it on its own. A [`Credential`] is read again
//!
//! - on `systemctl reload` (SIGHUP), for every credential the daemon holds, and
//! - by a sink whose service refused its credentials (HTTP 401/403), before the refusal is
//!   taken as final: a value that changed since is sent instead.
//!
//! No restart is needed, so no UDP datagram is lost to one. A value given inline or in the
//! environment cannot change while the daemon runs: reading it again gives the same value
//! (an inline edit of the file is reported as needing a restart, see `config::reload`).

use std::fmt::Display;
use std::sync::Arc;

use super::live::Live;

/// A value built from secrets (a header, a token pair), and how to build it again.
pub struct Credential<T, E> {
    /// The dotted config key it comes from (`sinks.hec.token`), for the log.
    name: String,
    load: Box<dyn Fn() -> Result<T, E> + Send + Sync>,
    /// Its generation tells holders of something derived from the value (a cached OAuth
    /// token) that it is stale.
    value: Live<T>,
}

impl<T, E> Credential<T, E>
where
    T: PartialEq + Send + Sync + 'static,
    E: Display + 'static,
{
    /// Loads the value once; `load` is kept to load it again.
    pub fn load(
        name: impl Into<String>,
        load: impl Fn() -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Arc<Self>, E> {
        let value = Live::new(load()?);
        Ok(Arc::new(Credential {
            name: name.into(),
            load: Box::new(load),
            value,
        }))
    }

    /// The value in use.
    pub fn current(&self) -> Arc<T> {
        self.value.get()
    }

    /// The value in use and its generation, as one pair: a request sent with it can tell
    /// afterwards whether the value changed meanwhile (see [`Renew::generation`]).
    pub fn snapshot(&self) -> (Arc<T>, u64) {
        self.value.snapshot()
    }
}

/// Names the credential, never its value.
impl<T, E> std::fmt::Debug for Credential<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("generation", &self.value.generation())
            .finish_non_exhaustive()
    }
}

/// A credential the daemon can read again, whatever it holds.
pub trait Renew: Send + Sync {
    /// The dotted config key.
    fn name(&self) -> &str;
    /// Reads the value again and puts it in use if it changed: `Ok(true)` then. On an error
    /// (the file is gone, empty, unreadable) the value in use stays.
    fn renew(&self) -> Result<bool, String>;
    /// Changes so far: compare with the generation a derived value was made at.
    fn generation(&self) -> u64;
}

impl<T, E> Renew for Credential<T, E>
where
    T: PartialEq + Send + Sync + 'static,
    E: Display + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn renew(&self) -> Result<bool, String> {
        let value = (self.load)().map_err(|e| e.to_string())?;
        Ok(self.value.replace(value))
    }

    fn generation(&self) -> u64 {
        self.value.generation()
    }
}

/// Renews every credential in `all`: the names of those that changed, and `(name, error)` for
/// those that could not be read (their old values stay in use).
pub fn renew_all(all: &[Arc<dyn Renew>]) -> (Vec<String>, Vec<(String, String)>) {
    let (mut changed, mut failed) = (Vec::new(), Vec::new());
    for credential in all {
        match credential.renew() {
            Ok(true) => changed.push(credential.name().to_owned()),
            Ok(false) => {}
            Err(e) => failed.push((credential.name().to_owned(), e)),
        }
    }
    (changed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_file(path: std::path::PathBuf) -> Arc<Credential<String, String>> {
        Credential::load("sinks.x.token", move || {
            std::fs::read_to_string(&path)
                .map(|s| s.trim_end().to_owned())
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        })
        .unwrap()
    }

    #[test]
    fn a_rotated_file_is_put_in_use_and_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "old\n").unwrap();
        let credential = from_file(path.clone());
        let (held_before, generation) = credential.snapshot();
        assert_eq!(generation, 0);
        assert_eq!((held_before.as_str(), credential.generation()), ("old", 0));

        assert_eq!(credential.renew(), Ok(false), "unchanged: nothing to do");
        assert_eq!(credential.generation(), 0);

        std::fs::write(&path, "new\n").unwrap();
        assert_eq!(credential.renew(), Ok(true));
        assert_eq!(*credential.current(), "new");
        assert_eq!(credential.generation(), 1);
        // A request that took the value before the renewal finishes with it.
        assert_eq!(*held_before, "old");
        assert_eq!(credential.renew(), Ok(false));
        assert_eq!(credential.generation(), 1);
    }

    #[test]
    fn an_unreadable_file_keeps_the_value_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "kept").unwrap();
        let credential = from_file(path.clone());
        std::fs::remove_file(&path).unwrap();
        let all: Vec<Arc<dyn Renew>> = vec![credential.clone()];
        let (changed, failed) = renew_all(&all);
        assert!(changed.is_empty());
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "sinks.x.token");
        assert!(failed[0].1.contains("cannot read"), "{}", failed[0].1);
        assert_eq!(
            (credential.current().as_str(), credential.generation()),
            ("kept", 0)
        );
    }
}
