//! `[sinks.NAME.retention]`: keeps a file sink's directory within `max_bytes` and
//! `max_age_secs` by removing its oldest batch files.
//!
//! The sink reports every file it publishes, so the byte bound holds after each batch without
//! listing the directory. A sweeper thread lists it every [`Retention::sweep_every`] anyway:
//! files a downstream reader took away stop counting, and the age bound holds while no batch
//! arrives. Age is read from the time in the file's name (the time it was written), not from
//! its mtime, which a copy or `touch` would change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::config::RetentionConfig;
use crate::log_every::LogEvery;

const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);
const SWEEP_AT_MOST_EVERY: Duration = Duration::from_secs(60);
const SWEEP_AT_LEAST_EVERY: Duration = Duration::from_secs(1);

/// Why a file was removed: the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    MaxBytes,
    MaxAge,
}

struct ReasonCounters {
    files: metrics::Counter,
    bytes: metrics::Counter,
}

struct Metrics {
    max_bytes: ReasonCounters,
    max_age: ReasonCounters,
    errors: metrics::Counter,
    files: metrics::Gauge,
    bytes: metrics::Gauge,
}

impl Metrics {
    fn register(sink: &str) -> Metrics {
        use crate::metrics::{
            SINK_RETAINED_BYTES, SINK_RETAINED_FILES, SINK_RETENTION_ERRORS,
            SINK_RETENTION_REMOVED_BYTES, SINK_RETENTION_REMOVED_FILES,
        };
        let by_reason = |reason: &'static str| ReasonCounters {
            files: metrics::counter!(SINK_RETENTION_REMOVED_FILES,
                "sink" => sink.to_owned(), "reason" => reason),
            bytes: metrics::counter!(SINK_RETENTION_REMOVED_BYTES,
                "sink" => sink.to_owned(), "reason" => reason),
        };
        Metrics {
            max_bytes: by_reason("max_bytes"),
            max_age: by_reason("max_age"),
            errors: metrics::counter!(SINK_RETENTION_ERRORS, "sink" => sink.to_owned()),
            files: metrics::gauge!(SINK_RETAINED_FILES, "sink" => sink.to_owned()),
            bytes: metrics::gauge!(SINK_RETAINED_BYTES, "sink" => sink.to_owned()),
        }
    }

    fn removed(&self, reason: Reason) -> &ReasonCounters {
        match reason {
            Reason::MaxBytes => &self.max_bytes,
            Reason::MaxAge => &self.max_age,
        }
    }
}

/// The sink's batch files as last seen: name (which sorts by write time) → size.
struct Index {
    files: BTreeMap<String, u64>,
    total_bytes: u64,
    error_log: LogEvery,
    /// Logged once: from then on removing the oldest files is routine, and counted.
    bound_reached_logged: bool,
}

impl Index {
    fn insert(&mut self, name: String, size: u64) {
        if let Some(old) = self.files.insert(name, size) {
            self.total_bytes -= old;
        }
        self.total_bytes += size;
    }

    fn forget(&mut self, name: &str) {
        if let Some(size) = self.files.remove(name) {
            self.total_bytes -= size;
        }
    }
}

pub struct Retention {
    sink: String,
    dir: PathBuf,
    config: RetentionConfig,
    index: Mutex<Index>,
    metrics: Metrics,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// Runs [`Retention::sweep_at`] every [`Retention::sweep_every`] until dropped.
pub struct Sweeper {
    retention: Arc<Retention>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sweeper {
    pub fn retention(&self) -> &Retention {
        &self.retention
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        *self
            .retention
            .stop
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = true;
        self.retention.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Retention {
    /// Lists `dir` and applies the bounds once, so a lowered bound holds from start-up on.
    pub fn open(sink: &str, dir: &Path, config: RetentionConfig) -> std::io::Result<Arc<Self>> {
        let retention = Arc::new(Retention {
            sink: sink.to_owned(),
            dir: dir.to_owned(),
            config,
            index: Mutex::new(Index {
                files: BTreeMap::new(),
                total_bytes: 0,
                error_log: LogEvery::new(ERROR_LOG_EVERY),
                bound_reached_logged: false,
            }),
            metrics: Metrics::register(sink),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let removed = retention.sweep_at(SystemTime::now())?;
        if removed.files > 0 {
            tracing::info!(
                sink,
                files = removed.files,
                bytes = removed.bytes,
                max_bytes = retention.config.max_bytes,
                max_age_secs = retention.config.max_age_secs,
                "retention: removed batch files of earlier runs beyond the bounds"
            );
        }
        Ok(retention)
    }

    /// Starts the thread that sweeps every [`Retention::sweep_every`].
    pub fn start_sweeper(self: &Arc<Self>) -> std::io::Result<Sweeper> {
        let retention = self.clone();
        let thread = std::thread::Builder::new()
            .name(format!("sluice-retain-{}", self.sink))
            .spawn(move || {
                let every = retention.sweep_every();
                let mut stop = retention.stop.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    let (guard, _) = retention
                        .wake
                        .wait_timeout_while(stop, every, |stop| !*stop)
                        .unwrap_or_else(|p| p.into_inner());
                    stop = guard;
                    if *stop {
                        return;
                    }
                    drop(stop);
                    if let Err(e) = retention.sweep_at(SystemTime::now()) {
                        let mut index = retention.lock();
                        retention.failed(
                            &mut index,
                            format_args!("cannot list {}: {e}", retention.dir.display()),
                        );
                    }
                    stop = retention.stop.lock().unwrap_or_else(|p| p.into_inner());
                }
            })?;
        Ok(Sweeper {
            retention: self.clone(),
            thread: Some(thread),
        })
    }

    /// A tenth of the age bound, so files are removed at most ~10 % late; within 1–60 s.
    pub fn sweep_every(&self) -> Duration {
        if self.config.max_age_secs == 0 {
            return SWEEP_AT_MOST_EVERY;
        }
        Duration::from_secs(self.config.max_age_secs)
            .div_f64(10.0)
            .clamp(SWEEP_AT_LEAST_EVERY, SWEEP_AT_MOST_EVERY)
    }

    /// The sink has linked `name` (`size` bytes) into place.
    pub fn published(&self, name: &str, size: u64) {
        let mut index = self.lock();
        index.insert(name.to_owned(), size);
        self.enforce(&mut index, SystemTime::now());
    }

    /// Lists the directory afresh, then applies both bounds. The index stays locked while
    /// listing, so a file published meanwhile is counted once, after.
    fn sweep_at(&self, now: SystemTime) -> std::io::Result<Removed> {
        let mut index = self.lock();
        let mut files = BTreeMap::new();
        let mut total_bytes = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if batch_file_written_ms(&name).is_none() {
                continue;
            }
            // Gone since listed (a reader took it): not ours to count.
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            total_bytes += meta.len();
            files.insert(name, meta.len());
        }
        index.files = files;
        index.total_bytes = total_bytes;
        Ok(self.enforce(&mut index, now))
    }

    fn enforce(&self, index: &mut Index, now: SystemTime) -> Removed {
        let mut removed = Removed::default();
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let oldest_kept_ms =
            now_ms.saturating_sub(self.config.max_age_secs.saturating_mul(1000) as i64);
        // Oldest first, under whichever bound it passes (age first); the byte bound always
        // leaves the newest file.
        while let Some((name, size)) = index.files.first_key_value() {
            let too_old = self.config.max_age_secs > 0
                && batch_file_written_ms(name).unwrap_or(i64::MAX) < oldest_kept_ms;
            let too_big = self.config.max_bytes > 0
                && index.total_bytes > self.config.max_bytes
                && index.files.len() > 1;
            let reason = match (too_old, too_big) {
                (true, _) => Reason::MaxAge,
                (false, true) => Reason::MaxBytes,
                (false, false) => break,
            };
            let (name, size) = (name.clone(), *size);
            if !self.remove(index, &name, size, reason, &mut removed) {
                break;
            }
        }
        if removed.files > 0 && !index.bound_reached_logged {
            index.bound_reached_logged = true;
            tracing::info!(sink = %self.sink, max_bytes = self.config.max_bytes,
                max_age_secs = self.config.max_age_secs,
                "retention: the oldest batch files are now being removed to stay within the bounds (sluice_sink_retention_removed_files_total counts them)");
        }
        self.metrics.files.set(index.files.len() as f64);
        self.metrics.bytes.set(index.total_bytes as f64);
        removed
    }

    /// False when the file cannot be removed: the pass stops there (an unwritable directory
    /// would fail for every file) and the next batch or sweep tries again.
    fn remove(
        &self,
        index: &mut Index,
        name: &str,
        size: u64,
        reason: Reason,
        removed: &mut Removed,
    ) -> bool {
        match std::fs::remove_file(self.dir.join(name)) {
            Ok(()) => {
                index.forget(name);
                let counters = self.metrics.removed(reason);
                counters.files.increment(1);
                counters.bytes.increment(size);
                removed.files += 1;
                removed.bytes += size;
                true
            }
            // Someone else took it: no longer ours to count or remove.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                index.forget(name);
                true
            }
            Err(e) => {
                self.failed(
                    index,
                    format_args!("cannot remove {name}: {e}; trying again after the next batch"),
                );
                false
            }
        }
    }

    /// Counts a failed removal or listing, and logs it at most once per [`ERROR_LOG_EVERY`].
    fn failed(&self, index: &mut Index, message: std::fmt::Arguments<'_>) {
        self.metrics.errors.increment(1);
        if let Some(suppressed) = index.error_log.permit() {
            tracing::warn!(sink = %self.sink, suppressed, "retention: {message}");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default, Debug, PartialEq, Eq)]
struct Removed {
    files: u64,
    bytes: u64,
}

/// Unix milliseconds a batch file was written at, from its name
/// (`20261207T081500.123Z-<core>-<seq>.ndjson[.zst|.gz]`); `None` for any other name, which
/// retention never counts or removes.
pub fn batch_file_written_ms(name: &str) -> Option<i64> {
    // chrono reads `%.3f` as any fraction or none; the sink always writes three digits.
    if name.as_bytes().get(15) != Some(&b'.') || name.as_bytes().get(19) != Some(&b'Z') {
        return None;
    }
    let (time, rest) =
        chrono::NaiveDateTime::parse_and_remainder(name, "%Y%m%dT%H%M%S%.3fZ-").ok()?;
    let (core, rest) = rest.split_once('-')?;
    let (seq, extension) = rest.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let known = matches!(extension, "ndjson" | "ndjson.zst" | "ndjson.gz");
    (digits(core) && digits(seq) && known).then(|| time.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn name_at(unix_ms: i64, seq: u32) -> String {
        let time = chrono::DateTime::from_timestamp_millis(unix_ms).unwrap();
        format!(
            "{}-0-{seq:06}.ndjson.zst",
            time.format("%Y%m%dT%H%M%S%.3fZ")
        )
    }

    fn write(dir: &Path, name: &str, size: u64) {
        let file = std::fs::File::create(dir.join(name)).unwrap();
        file.set_len(size).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn now_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    #[test]
    fn batch_file_names_and_only_those_are_recognised() {
        assert_eq!(
            batch_file_written_ms("20261207T081500.123Z-0-000042.ndjson.zst"),
            Some(1_796_631_300_123)
        );
        for name in [
            "20261207T081500.123Z-11-000042.ndjson",
            "20261207T081500.123Z-1-1234567.ndjson.gz",
        ] {
            assert!(batch_file_written_ms(name).is_some(), "{name}");
        }
        for name in [
            ".tmp-20261207T081500.123Z-0-000042.ndjson.zst",
            "20261207T081500.123Z-0-000042.ndjson.zst.bak",
            "20261207T081500.123Z-0-000042.json",
            "20261207T081500Z-0-000042.ndjson",
            "20261207T081500.1234Z-0-000042.ndjson",
            "20261207T081500.123Z-x-000042.ndjson",
            "20261207T081500.123Z-0-.ndjson",
            "notes.txt",
            "",
        ] {
            assert_eq!(batch_file_written_ms(name), None, "{name}");
        }
    }

    #[test]
    fn the_byte_bound_removes_the_oldest_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let start = now_ms() - 10_000;
        // Three files of an earlier run (2 MiB each) and a stranger that is never touched.
        for i in 0..3 {
            write(dir.path(), &name_at(start + i, i as u32), 2 * MIB);
        }
        write(dir.path(), "README.txt", 50 * MIB);
        let config = RetentionConfig {
            max_bytes: 5 * MIB,
            max_age_secs: 0,
        };
        let retention = metrics::with_local_recorder(&recorder, || {
            Retention::open("out", dir.path(), config).unwrap()
        });
        // At start-up: 6 MiB > 5, so the oldest went.
        assert_eq!(
            names(dir.path()),
            vec![
                name_at(start + 1, 1),
                name_at(start + 2, 2),
                "README.txt".to_owned()
            ]
        );
        // Each publish keeps the total within the bound, oldest first.
        for i in 3..6 {
            let name = name_at(start + i, i as u32);
            write(dir.path(), &name, 2 * MIB);
            retention.published(&name, 2 * MIB);
        }
        assert_eq!(
            names(dir.path()),
            vec![
                name_at(start + 4, 4),
                name_at(start + 5, 5),
                "README.txt".to_owned()
            ]
        );
        // One file larger than the whole bound is kept: it is the newest.
        let big = name_at(start + 6, 6);
        write(dir.path(), &big, 8 * MIB);
        retention.published(&big, 8 * MIB);
        assert_eq!(
            names(dir.path()),
            vec![big.clone(), "README.txt".to_owned()]
        );
        let text = handle.render();
        for line in [
            "sluice_sink_retention_removed_files_total{sink=\"out\",reason=\"max_bytes\"} 6",
            "sluice_sink_retention_removed_bytes_total{sink=\"out\",reason=\"max_bytes\"} 12582912",
            "sluice_sink_retained_files{sink=\"out\"} 1",
            "sluice_sink_retained_bytes{sink=\"out\"} 8388608",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn the_age_bound_reads_the_time_in_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_ms();
        let old = name_at(now - 3_600_000, 0);
        let recent = name_at(now - 60_000, 1);
        write(dir.path(), &old, 10);
        write(dir.path(), &recent, 10);
        // A stranger's old file: not ours, kept.
        write(dir.path(), "old-notes.txt", 10);
        let config = RetentionConfig {
            max_bytes: 0,
            max_age_secs: 600,
        };
        let retention = Retention::open("out", dir.path(), config).unwrap();
        assert_eq!(
            names(dir.path()),
            vec![recent.clone(), "old-notes.txt".to_owned()]
        );
        // Later, the sweep removes what has aged past the bound meanwhile.
        let later = SystemTime::now() + Duration::from_secs(600);
        let removed = retention.sweep_at(later).unwrap();
        assert_eq!(
            removed,
            Removed {
                files: 1,
                bytes: 10
            }
        );
        assert_eq!(names(dir.path()), vec!["old-notes.txt".to_owned()]);
    }

    #[test]
    fn a_sweep_forgets_files_taken_away_so_no_newer_file_pays_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let start = now_ms() - 10_000;
        let config = RetentionConfig {
            max_bytes: 4 * MIB,
            max_age_secs: 0,
        };
        let retention = Retention::open("out", dir.path(), config).unwrap();
        for i in 0..2 {
            let name = name_at(start + i, i as u32);
            write(dir.path(), &name, 2 * MIB);
            retention.published(&name, 2 * MIB);
        }
        // A downstream reader moves the newer file away; the sweep notices.
        std::fs::remove_file(dir.path().join(name_at(start + 1, 1))).unwrap();
        retention.sweep_at(SystemTime::now()).unwrap();
        let next = name_at(start + 2, 2);
        write(dir.path(), &next, 2 * MIB);
        retention.published(&next, 2 * MIB);
        // 4 MiB on disk: within the bound, the oldest stays.
        assert_eq!(names(dir.path()), vec![name_at(start, 0), next]);
    }

    #[test]
    fn a_file_that_cannot_be_removed_is_counted_and_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let start = now_ms() - 10_000;
        let config = RetentionConfig {
            max_bytes: 3 * MIB,
            max_age_secs: 0,
        };
        let retention = metrics::with_local_recorder(&recorder, || {
            Retention::open("out", dir.path(), config).unwrap()
        });
        // The oldest "file" is a non-empty directory: remove_file fails on it (EISDIR), as it
        // would on a file in a read-only directory, even for root.
        let stuck = name_at(start, 0);
        std::fs::create_dir(dir.path().join(&stuck)).unwrap();
        std::fs::write(dir.path().join(&stuck).join("x"), b"x").unwrap();
        retention.lock().insert(stuck.clone(), 2 * MIB);
        let next = name_at(start + 1, 1);
        write(dir.path(), &next, 2 * MIB);
        retention.published(&next, 2 * MIB);
        assert!(dir.path().join(&stuck).exists());
        assert!(
            handle
                .render()
                .contains("sluice_sink_retention_errors_total{sink=\"out\"} 1"),
            "{}",
            handle.render()
        );
        // Once it can go, the next batch removes it.
        std::fs::remove_dir_all(dir.path().join(&stuck)).unwrap();
        write(dir.path(), &stuck, 2 * MIB);
        let last = name_at(start + 2, 2);
        write(dir.path(), &last, 10);
        retention.published(&last, 10);
        assert_eq!(names(dir.path()), vec![next, last]);
    }

    #[test]
    fn the_sweeper_applies_the_age_bound_without_traffic_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let config = RetentionConfig {
            max_bytes: 0,
            max_age_secs: 2,
        };
        let retention = Retention::open("out", dir.path(), config).unwrap();
        assert_eq!(retention.sweep_every(), Duration::from_secs(1));
        let sweeper = retention.start_sweeper().unwrap();
        let name = name_at(now_ms(), 0);
        write(dir.path(), &name, 10);
        retention.published(&name, 10);
        assert_eq!(names(dir.path()), vec![name]);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !names(dir.path()).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the sweeper never removed the file"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let stopping = std::time::Instant::now();
        drop(sweeper);
        assert!(stopping.elapsed() < Duration::from_secs(5));
        assert_eq!(Arc::strong_count(&retention), 1, "the thread let go");
    }

    #[test]
    fn sweeps_come_a_tenth_of_the_age_bound_apart_within_limits() {
        let every = |max_age_secs| {
            let dir = tempfile::tempdir().unwrap();
            let config = RetentionConfig {
                max_bytes: 0,
                max_age_secs,
            };
            Retention::open("out", dir.path(), config)
                .unwrap()
                .sweep_every()
        };
        assert_eq!(every(0), Duration::from_secs(60));
        assert_eq!(every(5), Duration::from_secs(1));
        assert_eq!(every(300), Duration::from_secs(30));
        assert_eq!(every(7 * 86_400), Duration::from_secs(60));
    }
}
