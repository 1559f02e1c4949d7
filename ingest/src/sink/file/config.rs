//! `[sinks.NAME] type = "file"`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::compress::Compression;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Directory the batch files are written to (created if missing).
    pub path: PathBuf,
    #[serde(default)]
    pub compression: Compression,
    /// Codec level; default: [`Compression::default_level`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
    /// Batches compressed and written at once (threads of their own, off the receive and parse path).
    #[serde(default = "default_threads")]
    pub compression_threads: usize,
    /// fsync each file (and the directory) before it is renamed into place.
    #[serde(default)]
    pub fsync: bool,
    /// Put the sink's disk spool (`[sinks.NAME.spool]`) in front of the files. Off by default:
    /// the batch files are themselves the durable copy, and the spool would write every byte
    /// twice, fsync it and read it back. On, the files are written by the sink runtime with
    /// its retries, like the HTTP sinks.
    #[serde(default)]
    pub use_spool: bool,
    /// Write files with `O_DIRECT`: the device reads the batch from our buffer instead of the
    /// kernel copying it into freshly allocated page-cache pages, which costs ~1.6 CPU-s per GB
    /// on the reference VM (more than parsing). Falls back to ordinary writes, once and with a
    /// warning, where the filesystem refuses it (e.g. tmpfs on older kernels).
    #[serde(default = "default_direct_io")]
    pub direct_io: bool,
    /// `[sinks.NAME.retention]`: how much and how long this directory keeps.
    #[serde(default)]
    pub retention: RetentionConfig,
}

/// Bounds on the batch files a file sink keeps. Unbounded by default: removing delivered data
/// is the operator's decision. Only files this sink's naming scheme produces are counted or
/// removed (`<time>-<core>-<seq>.ndjson[.zst|.gz]`), files of earlier runs included; anything
/// else in the directory is left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Total size of the batch files; the oldest are removed beyond it (the newest file is
    /// always kept). 0: no bound.
    #[serde(default)]
    pub max_bytes: u64,
    /// Batch files older than this, by the time in their name, are removed. 0: no bound.
    #[serde(default)]
    pub max_age_secs: u64,
}

/// Below this a byte bound would hold a handful of batches: more likely a unit mistake.
pub const MIN_RETENTION_BYTES: u64 = 1 << 20;

impl RetentionConfig {
    pub fn is_bounded(&self) -> bool {
        self.max_bytes > 0 || self.max_age_secs > 0
    }
}
fn default_direct_io() -> bool {
    true
}
fn default_threads() -> usize {
    1
}

impl FileSinkConfig {
    pub fn level(&self) -> i32 {
        self.compression_level
            .unwrap_or_else(|| self.compression.default_level())
    }

    /// `Err((key, message))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.path.as_os_str().is_empty() {
            return Err(("path".into(), "must not be empty".into()));
        }
        for (key, v) in [("compression_threads", self.compression_threads)] {
            if v == 0 {
                return Err((key.into(), "must be greater than 0".into()));
            }
        }
        if self.retention.max_bytes > 0 && self.retention.max_bytes < MIN_RETENTION_BYTES {
            return Err((
                "retention.max_bytes".into(),
                format!(
                    "{} is below {MIN_RETENTION_BYTES} (1 MiB); 0 means no bound",
                    self.retention.max_bytes
                ),
            ));
        }
        let range = self.compression.level_range();
        if let Some(level) = self.compression_level
            && !range.contains(&level)
        {
            return Err((
                "compression_level".into(),
                format!(
                    "{level} is outside {}..={} for {:?}",
                    range.start(),
                    range.end(),
                    self.compression
                ),
            ));
        }
        Ok(())
    }
}
