//! `[sinks.NAME] type = "file"`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::compress::Compression;
use crate::config::BatchLimits;
use crate::event::EventKind;
use crate::map::Schema;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Directory the batch files are written to (created if missing).
    pub path: PathBuf,
    #[serde(default = "default_schema")]
    pub schema: Schema,
    #[serde(default)]
    pub compression: Compression,
    /// Codec level; default: [`Compression::default_level`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
    /// Threads compressing and writing this sink's batches (off the receive path).
    #[serde(default = "default_threads")]
    pub compression_threads: usize,
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    #[serde(default = "default_batch_timeout_ms")]
    pub batch_timeout_ms: u64,
    /// fsync each file (and the directory) before it is renamed into place.
    #[serde(default)]
    pub fsync: bool,
    /// Source names this sink takes; empty: all sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// Event kinds this sink takes; empty: all kinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<EventKind>,
}

fn default_schema() -> Schema {
    Schema::Sluice
}
fn default_threads() -> usize {
    1
}
fn default_batch_max_events() -> usize {
    10_000
}
fn default_batch_max_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_batch_timeout_ms() -> u64 {
    1000
}

impl FileSinkConfig {
    pub fn level(&self) -> i32 {
        self.compression_level
            .unwrap_or_else(|| self.compression.default_level())
    }

    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            max_events: self.batch_max_events,
            max_bytes: self.batch_max_bytes,
            timeout: Duration::from_millis(self.batch_timeout_ms),
        }
    }

    /// `Err((key, message))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.path.as_os_str().is_empty() {
            return Err(("path".into(), "must not be empty".into()));
        }
        for (key, v) in [
            ("batch_max_events", self.batch_max_events),
            ("batch_max_bytes", self.batch_max_bytes),
            ("batch_timeout_ms", self.batch_timeout_ms as usize),
            ("compression_threads", self.compression_threads),
        ] {
            if v == 0 {
                return Err((key.into(), "must be greater than 0".into()));
            }
        }
        if self.batch_max_bytes > 1 << 30 {
            return Err(("batch_max_bytes".into(), "must be at most 1 GiB".into()));
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
