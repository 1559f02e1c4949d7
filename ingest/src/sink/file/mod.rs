//! File sink: each batch becomes one file `<path>/<time>-<core>-<seq>.ndjson[.zst|.gz]`, one JSON
//! value per line, written to a hidden temp file and linked into place, so a reader never sees a
//! partial file and a crash leaves at most a stale `.tmp-*` (removed at the next start). Once the
//! final name exists the batch is delivered: a temp file that then cannot be removed is logged,
//! counted and removed again later, never a reason to write the batch a second time.

mod config;
mod direct;
mod retention;

pub use config::{FileSinkConfig, RetentionConfig};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
#[cfg(test)]
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::compress::Compressor;
use crate::log_every::LogEvery;
use crate::sink::{Batch, Delivery, Sink};

const TEMP_PREFIX: &str = ".tmp-";
/// Output buffers larger than this are freed after use rather than pooled.
const OUTPUT_BUFFER_KEEP_BYTES: usize = 16 << 20;

/// What one delivered batch became.
#[derive(Debug)]
pub struct WrittenFile {
    pub path: PathBuf,
    pub compressed_bytes: u64,
    pub compress_time: std::time::Duration,
}

pub struct FileSink {
    name: String,
    config: FileSinkConfig,
    seq: AtomicU64,
    /// Compression contexts and output buffers, reused across batches.
    pool: Mutex<Vec<(Compressor, Vec<u8>)>>,
    /// Aligned scratch buffers for direct writes, one per concurrent writer.
    bounces: Mutex<Vec<direct::Bounce>>,
    /// Cleared for good, with one warning, once the filesystem refuses `O_DIRECT`.
    direct_io: AtomicBool,
    /// The daemon's per-sink counters, fed by [`Sink::deliver`].
    counters: Option<FileCounters>,
    /// Temp files this sink could not remove: tried again after the next publish. Only these,
    /// never a `.tmp-*` found in the directory, which may be another writer's batch in progress.
    leftovers: Mutex<Leftovers>,
    /// `sluice_sink_temp_removal_errors_total`: temp files left behind, each counted once.
    temp_removal_errors: metrics::Counter,
    /// `[retention]` bounds, when set: told of every published file; its sweeper thread
    /// stops when the sink is dropped.
    retention: Option<retention::Sweeper>,
    /// Test seam: the next this-many temp-file removals fail.
    #[cfg(test)]
    fail_temp_removals: AtomicUsize,
}

struct Leftovers {
    paths: Vec<PathBuf>,
    /// A filesystem that links but never unlinks (an append-only directory) fails every batch:
    /// one warning per interval, the metric counts each.
    log: LogEvery,
}

/// Leftover temp files remembered for removal; past this many (removal keeps failing), the
/// next start removes the rest.
const MAX_LEFTOVERS: usize = 256;
const LEFTOVER_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// What [`Sink::deliver`] records for the daemon: bytes written and time spent compressing.
pub struct FileCounters {
    pub compressed_bytes: metrics::Counter,
    pub compress_seconds: metrics::Histogram,
}

std::thread_local! {
    /// The worker core a delivering thread is writing for; names files delivered through the
    /// generic [`Sink`] interface (e.g. from a spool).
    pub static DELIVERY_CORE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl FileSink {
    /// Creates the directory and removes temp files a previous run left behind.
    pub fn new(name: &str, config: FileSinkConfig) -> std::io::Result<FileSink> {
        std::fs::create_dir_all(&config.path)?;
        for entry in std::fs::read_dir(&config.path)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                tracing::warn!(sink = name, file = %entry.path().display(), "removing an unfinished batch file from an earlier run");
                let _ = std::fs::remove_file(entry.path());
            }
        }
        // Probe: fail at start-up rather than at the first batch.
        Compressor::new(config.compression, config.level())?;
        let retention = if config.retention.is_bounded() {
            Some(
                retention::Retention::open(name, &config.path, config.retention.clone())?
                    .start_sweeper()?,
            )
        } else {
            None
        };
        Ok(FileSink {
            name: name.to_string(),
            direct_io: AtomicBool::new(config.direct_io),
            config,
            seq: AtomicU64::new(0),
            pool: Mutex::new(Vec::new()),
            bounces: Mutex::new(Vec::new()),
            counters: None,
            leftovers: Mutex::new(Leftovers {
                paths: Vec::new(),
                log: LogEvery::new(LEFTOVER_LOG_EVERY),
            }),
            temp_removal_errors: metrics::counter!(crate::metrics::SINK_TEMP_REMOVAL_ERRORS,
                "sink" => name.to_owned()),
            retention,
            #[cfg(test)]
            fail_temp_removals: AtomicUsize::new(0),
        })
    }

    pub fn with_counters(mut self, counters: FileCounters) -> FileSink {
        self.counters = Some(counters);
        self
    }

    pub fn config(&self) -> &FileSinkConfig {
        &self.config
    }

    pub fn directory(&self) -> &Path {
        &self.config.path
    }

    /// Compresses and writes `batch` atomically. Safe to call from several threads.
    pub fn write_batch(&self, batch: &Batch, core: usize) -> std::io::Result<WrittenFile> {
        if self.config.compression == crate::compress::Compression::None {
            // Straight from the batch buffer: a compressor would only copy it.
            let path = self.write_file(&batch.ndjson, core)?;
            return Ok(WrittenFile {
                path,
                compressed_bytes: batch.ndjson.len() as u64,
                compress_time: std::time::Duration::ZERO,
            });
        }
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let (mut compressor, mut out) = match pooled {
            Some(p) => p,
            None => (
                Compressor::new(self.config.compression, self.config.level())?,
                Vec::new(),
            ),
        };
        let started = std::time::Instant::now();
        let result = compressor
            .compress(&batch.ndjson, &mut out)
            .map(|_| started.elapsed());
        let result = result.and_then(|compress_time| {
            let path = self.write_file(&out, core)?;
            Ok(WrittenFile {
                path,
                compressed_bytes: out.len() as u64,
                compress_time,
            })
        });
        // Keep big buffers from pinning memory after a burst of large batches.
        if out.capacity() > OUTPUT_BUFFER_KEEP_BYTES {
            out = Vec::new();
        }
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((compressor, out));
        result
    }

    fn write_file(&self, bytes: &[u8], core: usize) -> std::io::Result<PathBuf> {
        let time = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let ext = self.config.compression.extension();
        loop {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let name = format!("{time}-{core}-{seq:06}.ndjson{ext}");
            let final_path = self.config.path.join(&name);
            let temp_path = self.config.path.join(format!("{TEMP_PREFIX}{name}"));
            let written = self.write_new(&temp_path, bytes);
            if let Err(e) = written {
                let _ = std::fs::remove_file(&temp_path);
                return Err(e);
            }
            // A hard link fails if the name exists, unlike rename: a restarted daemon reusing a
            // sequence number within the same millisecond can never overwrite a delivered file.
            match std::fs::hard_link(&temp_path, &final_path) {
                Ok(()) => {
                    // Delivered from here on: an error now would have the caller write the
                    // batch again under another name, a duplicate for whoever reads the files.
                    self.remove_leftovers();
                    self.remove_temp(&temp_path);
                    if let Some(sweeper) = &self.retention {
                        sweeper.retention().published(&name, bytes.len() as u64);
                    }
                    // Except when syncing the directory fails (`fsync = true`): whether the
                    // link survives a power loss is then unknown, so the batch is written again,
                    // a possible duplicate rather than a possible loss.
                    if self.config.fsync {
                        std::fs::File::open(&self.config.path)?.sync_all()?;
                    }
                    return Ok(final_path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    self.remove_temp(&temp_path);
                    continue;
                }
                Err(e) => {
                    self.remove_temp(&temp_path);
                    return Err(e);
                }
            }
        }
    }
}

impl FileSink {
    /// Removes a temp file this sink wrote; one that stays is remembered for
    /// [`FileSink::remove_leftovers`] (and the next start removes it in any case).
    fn remove_temp(&self, path: &Path) {
        if let Err(e) = self.remove_file(path) {
            self.temp_removal_errors.increment(1);
            let mut leftovers = self.leftovers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(suppressed) = leftovers.log.permit() {
                tracing::warn!(sink = %self.name, file = %path.display(), error = %e, suppressed,
                    "cannot remove a temp batch file; trying again after the next batch (a batch whose file is in place is never written twice)");
            }
            if leftovers.paths.len() < MAX_LEFTOVERS {
                leftovers.paths.push(path.to_owned());
            }
        }
    }

    /// Tries the remembered temp files again; those that still fail stay for the next time
    /// (already logged and counted once).
    fn remove_leftovers(&self) {
        let mut leftovers = self.leftovers.lock().unwrap_or_else(|p| p.into_inner());
        leftovers.paths.retain(|path| match self.remove_file(path) {
            Ok(()) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(_) => true,
        });
    }

    /// Test seam: the next `n` temp-file removals fail.
    #[cfg(test)]
    pub(crate) fn fail_next_temp_removals(&self, n: usize) {
        self.fail_temp_removals.store(n, Ordering::Relaxed);
    }

    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        #[cfg(test)]
        if self
            .fail_temp_removals
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(std::io::Error::other("injected removal failure"));
        }
        std::fs::remove_file(path)
    }

    /// Creates `path` and writes `bytes` into it (fsync'd if configured), directly if allowed.
    fn write_new(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let file = match direct::create(path, self.direct_io.load(Ordering::Relaxed))? {
            direct::Opened::Direct(mut file) => {
                let mut bounce = self
                    .bounces
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pop()
                    .unwrap_or_default();
                let result = direct::write_all(&mut file, bytes, &mut bounce);
                self.bounces
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(bounce);
                if !result? {
                    self.give_up_direct_io();
                }
                file
            }
            direct::Opened::Buffered(mut file) => {
                if self.direct_io.load(Ordering::Relaxed) {
                    self.give_up_direct_io();
                }
                file.write_all(bytes)?;
                file
            }
        };
        if self.config.fsync {
            file.sync_all()?;
        }
        Ok(())
    }

    fn give_up_direct_io(&self) {
        if self.direct_io.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                sink = %self.name,
                path = %self.config.path.display(),
                "the filesystem refuses O_DIRECT; writing batch files through the page cache (set direct_io = false to silence this)"
            );
        }
    }
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&self, batch: &Batch) -> Delivery {
        let core = DELIVERY_CORE.with(|c| c.get());
        // Compressing and writing block for milliseconds: on a multi-threaded runtime, tell
        // tokio so other sinks' uploads move to another worker meanwhile.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let written = if multi_thread {
            tokio::task::block_in_place(|| self.write_batch(batch, core))
        } else {
            self.write_batch(batch, core)
        };
        match written {
            Ok(file) => {
                if let Some(c) = &self.counters {
                    c.compressed_bytes.increment(file.compressed_bytes);
                    c.compress_seconds.record(file.compress_time.as_secs_f64());
                }
                Delivery::Delivered
            }
            Err(e) => Delivery::Retry {
                after: None,
                reason: format!("writing {}: {e}", self.config.path.display()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Compression;
    use std::io::Read;

    fn config(dir: &Path, compression: Compression) -> FileSinkConfig {
        let text = format!(
            "path = {:?}\ncompression = \"{}\"\n",
            dir.display().to_string(),
            match compression {
                Compression::Zstd => "zstd",
                Compression::Gzip => "gzip",
                Compression::None => "none",
            }
        );
        toml::from_str(&text).unwrap()
    }

    fn batch() -> Batch {
        Batch {
            events: 2,
            ndjson: b"{\"a\":1}\n{\"a\":2}\n".to_vec(),
        }
    }

    #[test]
    fn writes_named_atomic_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".tmp-leftover"), b"x").unwrap();
        let sink = FileSink::new("out", config(dir.path(), Compression::Zstd)).unwrap();
        assert!(!dir.path().join(".tmp-leftover").exists());
        let a = sink.write_batch(&batch(), 3).unwrap();
        let b = sink.write_batch(&batch(), 3).unwrap();
        assert_ne!(a.path, b.path);
        let name = a.path.file_name().unwrap().to_string_lossy().to_string();
        assert!(name.ends_with("-3-000000.ndjson.zst"), "{name}");
        assert_eq!(
            zstd::decode_all(std::fs::File::open(&a.path).unwrap()).unwrap(),
            batch().ndjson
        );
        assert_eq!(
            a.compressed_bytes,
            std::fs::metadata(&a.path).unwrap().len()
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temp files left: {names:?}");
    }

    #[test]
    fn gzip_and_none() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new("gz", config(dir.path(), Compression::Gzip)).unwrap();
        let f = sink.write_batch(&batch(), 0).unwrap();
        assert!(f.path.to_string_lossy().ends_with(".ndjson.gz"));
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&f.path).unwrap())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, batch().ndjson);

        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new("plain", config(dir.path(), Compression::None)).unwrap();
        let f = sink.write_batch(&batch(), 0).unwrap();
        assert!(f.path.to_string_lossy().ends_with(".ndjson"));
        assert_eq!(std::fs::read(&f.path).unwrap(), batch().ndjson);
    }

    fn names_in(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        paths.into_iter().partition(|p| {
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(TEMP_PREFIX)
        })
    }

    #[test]
    fn a_temp_file_left_after_publishing_is_counted_and_never_republishes_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let sink = metrics::with_local_recorder(&recorder, || {
            FileSink::new("out", config(dir.path(), Compression::None)).unwrap()
        });
        sink.fail_next_temp_removals(1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // As the spool runtime delivers: anything but Delivered would send the batch again.
        let delivery = rt.block_on(sink.deliver(&batch()));
        assert!(matches!(delivery, Delivery::Delivered), "{delivery:?}");
        let (published, temps) = names_in(dir.path());
        assert_eq!(published.len(), 1, "{published:?}");
        assert_eq!(std::fs::read(&published[0]).unwrap(), batch().ndjson);
        assert_eq!(temps.len(), 1, "the temp file stays until the next batch");
        assert!(
            handle
                .render()
                .contains("sluice_sink_temp_removal_errors_total{sink=\"out\"} 1"),
            "{}",
            handle.render()
        );

        // The next publish removes the leftover; the first batch is still there exactly once.
        sink.write_batch(&batch(), 0).unwrap();
        let (published, temps) = names_in(dir.path());
        assert_eq!(published.len(), 2, "{published:?}");
        assert!(temps.is_empty(), "{temps:?}");
        assert!(
            handle
                .render()
                .contains("sluice_sink_temp_removal_errors_total{sink=\"out\"} 1")
        );
    }

    #[test]
    fn unwritable_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        assert!(FileSink::new("bad", config(&file, Compression::None)).is_err());
    }
}
