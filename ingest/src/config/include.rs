//! `include = ["conf.d", "sentinel.toml"]` in the main config file: more `[sources.NAME]` and
//! `[sinks.NAME]` tables from other files, so that configuration management can drop one file
//! per sender or per SIEM beside a main file it does not edit.
//!
//! An entry is a file, or a directory whose `*.toml` files are read in name order (hidden
//! files and other names — editor backups, `.dpkg-old` — are skipped). Relative entries are
//! resolved against the main file's directory. An included file holds only `sources` and
//! `sinks` tables and includes nothing itself; a name defined twice, in any two files, is an
//! error naming both. Errors name the included file and its line, as for the main file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Config, ConfigError, ConfigFile, SinkConfig, SourceConfig, locate_key, parse_error};

/// The tables an included file may hold.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fragment {
    #[serde(default)]
    sources: BTreeMap<String, SourceConfig>,
    #[serde(default)]
    sinks: BTreeMap<String, SinkConfig>,
}

/// Which file each table of the merged config came from, so that a validation error points
/// into the right file.
pub(super) struct Origins {
    /// (name in messages, text) of the main file first, then of every included file.
    files: Vec<(String, String)>,
    /// `sources.NAME` / `sinks.NAME` → index into `files`.
    tables: BTreeMap<String, usize>,
}

impl Origins {
    /// Records table `key` (`sources.NAME`) as defined by file `index`; an error when another
    /// file defined it already.
    fn claim(&mut self, key: String, index: usize) -> Result<(), ConfigError> {
        let Some(&first) = self.tables.get(&key) else {
            self.tables.insert(key, index);
            return Ok(());
        };
        let (path, text) = &self.files[index];
        let (first_path, first_text) = &self.files[first];
        let first_line = locate_key(first_text, &key)
            .map(|l| format!(":{l}"))
            .unwrap_or_default();
        Err(ConfigError::Invalid {
            path: path.clone(),
            line: locate_key(text, &key),
            message: format!("already defined in {first_path}{first_line}"),
            key,
        })
    }

    /// Every file read, main file first, each with the dotted `keys` it holds.
    pub(super) fn files_holding(&self, keys: &[String]) -> Vec<ConfigFile> {
        let mut files: Vec<ConfigFile> = self
            .files
            .iter()
            .map(|(path, _)| ConfigFile {
                path: PathBuf::from(path),
                inline_secrets: Vec::new(),
            })
            .collect();
        for key in keys {
            let (path, _) = self.file_of(key);
            if let Some(file) = files.iter_mut().find(|f| f.path.as_os_str() == path) {
                file.inline_secrets.push(key.clone());
            }
        }
        files
    }

    /// The file and text where dotted `key` is written.
    pub(super) fn file_of(&self, key: &str) -> (&str, &str) {
        let index = self
            .tables
            .iter()
            .find(|(table, _)| {
                key.strip_prefix(table.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            })
            .map_or(0, |(_, &i)| i);
        let (path, text) = &self.files[index];
        (path, text)
    }
}

/// Reads every file `config.include` names (relative to `base`) into `config`.
pub(super) fn merge(
    config: &mut Config,
    origin: &str,
    text: &str,
    base: &Path,
) -> Result<Origins, ConfigError> {
    let mut origins = Origins {
        files: vec![(origin.to_string(), text.to_string())],
        tables: BTreeMap::new(),
    };
    for name in config.sources.keys() {
        origins.tables.insert(format!("sources.{name}"), 0);
    }
    for name in config.sinks.keys() {
        origins.tables.insert(format!("sinks.{name}"), 0);
    }
    for path in included_files(base, &config.include, origin, text)? {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        let fragment: Fragment = toml::from_str(&text).map_err(|e| {
            let mut error = parse_error(&text, &display, &e);
            if let ConfigError::Parse { message, .. } = &mut error
                && message.contains("expected `sources` or `sinks`")
            {
                message.push_str(
                    " (an included file holds [sources.NAME] and [sinks.NAME] tables only)",
                );
            }
            error
        })?;
        let index = origins.files.len();
        origins.files.push((display, text));
        for name in fragment.sources.keys() {
            origins.claim(format!("sources.{name}"), index)?;
        }
        for name in fragment.sinks.keys() {
            origins.claim(format!("sinks.{name}"), index)?;
        }
        config.sources.extend(fragment.sources);
        config.sinks.extend(fragment.sinks);
    }
    Ok(origins)
}

/// The files `entries` name, in order: a directory's `*.toml` files sorted by name.
fn included_files(
    base: &Path,
    entries: &[PathBuf],
    origin: &str,
    text: &str,
) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    for entry in entries {
        let path = base.join(entry);
        let unreadable = |e: std::io::Error| ConfigError::Invalid {
            path: origin.to_string(),
            key: "include".into(),
            line: locate_key(text, "include"),
            message: format!("{}: {e}", path.display()),
        };
        let meta = std::fs::metadata(&path).map_err(unreadable)?;
        if !meta.is_dir() {
            files.push(path);
            continue;
        }
        let mut found = Vec::new();
        for item in std::fs::read_dir(&path).map_err(unreadable)? {
            let item = item.map_err(unreadable)?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".toml") {
                continue;
            }
            found.push(item.path());
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = r#"data_dir = "/tmp/x"
include = ["conf.d"]
[sources.udp]
type = "udp"
listen = "127.0.0.1:5514"
"#;

    const SINK: &str = r#"[sinks.archive]
type = "file"
path = "/tmp/x/out"
"#;

    fn setup(fragments: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("sluice.toml");
        std::fs::write(&main, MAIN).unwrap();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        for (name, text) in fragments {
            std::fs::write(dir.path().join("conf.d").join(name), text).unwrap();
        }
        (dir, main)
    }

    fn error(main: &Path) -> String {
        Config::load(main).unwrap_err().to_string()
    }

    #[test]
    fn included_tables_join_the_main_files() {
        let tcp = "[sources.tcp]\ntype = \"tcp\"\nlisten = \"127.0.0.1:5514\"\n";
        let (_dir, main) = setup(&[
            ("10-sink.toml", SINK),
            ("20-tcp.toml", tcp),
            // Not read: not *.toml, or hidden.
            ("20-tcp.toml.dpkg-old", tcp),
            ("30-tcp.toml~", tcp),
            (".40-tcp.toml", tcp),
        ]);
        let config = Config::load(&main).unwrap();
        assert_eq!(
            config.sources.keys().collect::<Vec<_>>(),
            ["tcp", "udp"],
            "{config:?}"
        );
        assert_eq!(config.sinks.keys().collect::<Vec<_>>(), ["archive"]);
        // The effective config is the merged one, with nothing left to include.
        let effective = config.to_redacted_toml();
        assert!(effective.contains("[sinks.archive]"), "{effective}");
        assert!(!effective.contains("include"), "{effective}");
        assert!(Config::from_toml(&effective, "effective").is_ok());
    }

    /// A config file any user may write is refused, main or included; an inline secret in a
    /// file any user may read is a warning naming the key and that file (not the main one).
    #[test]
    fn file_modes_are_checked_per_file() {
        use std::os::unix::fs::PermissionsExt;
        let chmod = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let api = "[sources.dt]\ntype = \"darktrace_api\"\nurl = \"https://dt.example\"\n\
                   public_token = \"p\"\nprivate_token = \"q\"\n";
        let (dir, main) = setup(&[("10-sink.toml", SINK), ("20-api.toml", api)]);
        let api_file = dir.path().join("conf.d/20-api.toml");
        for (path, mode) in [(&main, 0o640), (&api_file, 0o644)] {
            chmod(path, mode);
        }
        let check = || Config::load(&main).unwrap().check_file_modes();
        let warnings = check().unwrap();
        let expected: Vec<String> = ["private_token", "public_token"]
            .iter()
            .map(|key| {
                format!(
                    "`sources.dt.{key}` is written inline in {0}, which every user may read \
                     (mode 0644): `chmod o-r {0}`, or give it as `sources.dt.{key}_file`",
                    api_file.display()
                )
            })
            .collect();
        assert_eq!(warnings, expected);
        chmod(&api_file, 0o640);
        assert_eq!(check(), Ok(vec![]));
        // A file others may read holding no inline secret: fine.
        chmod(&main, 0o644);
        assert_eq!(check(), Ok(vec![]));

        for path in [&main, &api_file] {
            chmod(path, 0o666);
            let error = check().unwrap_err();
            assert_eq!(
                error,
                format!(
                    "config file {0} is writable by every user (mode 0666): anyone on this \
                     machine could redirect or drop what sluice forwards; `chmod o-w {0}`",
                    path.display()
                )
            );
            chmod(path, 0o640);
        }
    }

    #[test]
    fn a_name_defined_twice_names_both_files_and_lines() {
        let again = "# the same sink\n\n[sinks.archive]\ntype = \"file\"\npath = \"/tmp/y\"\n";
        let (dir, main) = setup(&[("10-sink.toml", SINK), ("20-again.toml", again)]);
        let message = error(&main);
        let first = dir.path().join("conf.d/10-sink.toml");
        let second = dir.path().join("conf.d/20-again.toml");
        assert_eq!(
            message,
            format!(
                "{}:3: `sinks.archive`: already defined in {}:1",
                second.display(),
                first.display()
            )
        );
        // And against the main file.
        let udp = "[sources.udp]\ntype = \"udp\"\nlisten = \"127.0.0.1:6514\"\n";
        let (_dir, main) = setup(&[("10-sink.toml", SINK), ("20-udp.toml", udp)]);
        let message = error(&main);
        assert!(
            message.ends_with(&format!("already defined in {}:3", main.display())),
            "{message}"
        );
    }

    #[test]
    fn errors_in_an_included_file_name_that_file_and_line() {
        let unknown =
            "[sinks.archive]\ntype = \"file\"\npath = \"/tmp/x/out\"\ncompresion = \"zstd\"\n";
        let (dir, main) = setup(&[("10-sink.toml", unknown)]);
        let message = error(&main);
        let file = dir.path().join("conf.d/10-sink.toml");
        assert!(
            message.starts_with(&format!("{}:4: unknown field `compresion`", file.display())),
            "{message}"
        );

        let invalid =
            "[sinks.archive]\ntype = \"file\"\npath = \"/tmp/x/out\"\nbatch_max_events = 0\n";
        let (dir, main) = setup(&[("10-sink.toml", invalid)]);
        let message = error(&main);
        let file = dir.path().join("conf.d/10-sink.toml");
        assert!(
            message.starts_with(&format!(
                "{}:4: `sinks.archive.batch_max_events`",
                file.display()
            )),
            "{message}"
        );

        // Top-level keys and nested includes belong to the main file.
        let top = format!("data_dir = \"/elsewhere\"\n{SINK}");
        let (_dir, main) = setup(&[("10-sink.toml", &top)]);
        let message = error(&main);
        assert!(
            message.contains(":1: unknown field `data_dir`")
                && message.contains("[sources.NAME] and [sinks.NAME] tables only"),
            "{message}"
        );
    }

    #[test]
    fn a_missing_include_is_an_error_of_the_main_file() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("sluice.toml");
        std::fs::write(&main, format!("{MAIN}{SINK}")).unwrap();
        let message = error(&main);
        assert!(
            message.starts_with(&format!(
                "{}:2: `include`: {}",
                main.display(),
                dir.path().join("conf.d").display()
            )),
            "{message}"
        );
        // An empty directory is fine: the main file has everything.
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        assert!(Config::load(&main).is_ok());
    }
}
