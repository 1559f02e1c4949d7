//! The dead-letter directory of a sink, `data_dir/dead_letter/<sink>/`: events the service
//! refused for good, one pair of files per refused batch (`<stem>.ndjson` with the events,
//! `<stem>.json` with status, reason and response). Bounded by `retry.max_dead_letter_bytes`:
//! a sink whose every batch is refused (a wrong schema, a revoked permission) would otherwise
//! fill the disk at line rate. At the bound nothing is deleted: the refused events stay in the
//! spool (whose own bound and `when_full` then apply) until an operator has dealt with the
//! dead letters already there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Rejected;

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(
        "the dead-letter directory holds {used} bytes; {needed} more would pass retry.max_dead_letter_bytes = {max}"
    )]
    Full { used: u64, needed: u64, max: u64 },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub struct DeadLetters {
    dir: PathBuf,
    max_bytes: u64,
    /// Bytes in the directory as last measured plus what was written since; `None` until
    /// measured. Also serialises the writers, so two cannot both take the last room.
    used: Mutex<Option<u64>>,
    bytes_gauge: metrics::Gauge,
}

impl DeadLetters {
    pub fn new(sink: &str, dir: PathBuf, max_bytes: u64) -> DeadLetters {
        let letters = DeadLetters {
            dir,
            max_bytes,
            used: Mutex::new(None),
            bytes_gauge: metrics::gauge!(crate::metrics::SINK_DEAD_LETTER_BYTES,
                "sink" => sink.to_owned()),
        };
        // Shows what earlier runs left from start-up on; unreadable is measured again later.
        if let Ok(used) = directory_bytes(&letters.dir) {
            letters.bytes_gauge.set(used as f64);
            *letters.lock() = Some(used);
        }
        letters
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `rejected` as a pair of files (events, then metadata, both synced) named after
    /// the record `seq` and its `part`; returns the events' file. A pair that would pass the
    /// bound is not written, unless the directory is empty (a batch larger than the whole
    /// bound must not wait forever).
    pub fn write(
        &self,
        sink: &str,
        seq: u64,
        part: usize,
        rejected: &Rejected,
    ) -> Result<PathBuf, DeadLetterError> {
        let meta = serde_json::json!({
            "sink": sink,
            "events": rejected.batch.events,
            "status": rejected.status,
            "reason": rejected.reason,
            "response_body": rejected.response_body,
        })
        .to_string();
        let needed = (rejected.batch.ndjson.len() + meta.len()) as u64;
        let fits = |used: u64| used == 0 || used + needed <= self.max_bytes;
        let mut used = self.lock();
        let mut known = match *used {
            Some(bytes) => bytes,
            None => directory_bytes(&self.dir)?,
        };
        if !fits(known) {
            // An operator may have moved dead letters away since: look again before refusing.
            known = directory_bytes(&self.dir)?;
            *used = Some(known);
            self.bytes_gauge.set(known as f64);
            if !fits(known) {
                return Err(DeadLetterError::Full {
                    used: known,
                    needed,
                    max: self.max_bytes,
                });
            }
        }
        let stem = format!("{}-{seq}-{part}", super::runtime::now_ms());
        let data_path = self.dir.join(format!("{stem}.ndjson"));
        let meta_path = self.dir.join(format!("{stem}.json"));
        let written = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let mut data = std::fs::File::create(&data_path)?;
            data.write_all(&rejected.batch.ndjson)?;
            data.sync_all()?;
            let mut f = std::fs::File::create(&meta_path)?;
            f.write_all(meta.as_bytes())?;
            f.sync_all()
        })();
        if let Err(e) = written {
            // A half-written pair would be replayed by hand as if complete; the next attempt
            // writes a fresh pair.
            let _ = std::fs::remove_file(&data_path);
            let _ = std::fs::remove_file(&meta_path);
            // What the failed attempt left is unknown: measure again next time.
            *used = None;
            return Err(e.into());
        }
        *used = Some(known + needed);
        self.bytes_gauge.set((known + needed) as f64);
        Ok(data_path)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Bytes of the files directly in `dir`; a missing directory holds none.
fn directory_bytes(dir: &Path) -> std::io::Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = 0;
    for entry in entries {
        // A file removed while listing holds nothing.
        if let Ok(meta) = entry?.metadata()
            && meta.is_file()
        {
            total += meta.len();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Batch;

    fn rejected(events: u64, bytes: usize) -> Rejected {
        let mut ndjson = Vec::new();
        for _ in 0..events {
            ndjson.extend(std::iter::repeat_n(b'x', bytes / events as usize - 1));
            ndjson.push(b'\n');
        }
        Rejected {
            batch: Batch { events, ndjson },
            status: Some(400),
            reason: "bad schema".into(),
            response_body: "{\"error\":\"InvalidStream\"}".into(),
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn pairs_are_written_until_the_bound_then_refused_until_room_is_made() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("dead_letter/out");
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let letters = metrics::with_local_recorder(&recorder, || {
            DeadLetters::new("out", dir.clone(), 100_000)
        });
        let first = letters.write("out", 7, 0, &rejected(10, 40_000)).unwrap();
        letters.write("out", 8, 0, &rejected(10, 40_000)).unwrap();
        assert_eq!(files(&dir).len(), 4);
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(first.with_extension("json")).unwrap())
                .unwrap();
        assert_eq!(meta["status"], 400);
        assert_eq!(meta["events"], 10);
        assert_eq!(meta["response_body"], "{\"error\":\"InvalidStream\"}");
        assert_eq!(std::fs::read(&first).unwrap().len(), 40_000);

        // A third 40 kB pair would pass 100 kB: refused, nothing written.
        let err = letters
            .write("out", 9, 0, &rejected(10, 40_000))
            .unwrap_err();
        assert!(
            matches!(err, DeadLetterError::Full { max: 100_000, .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("retry.max_dead_letter_bytes = 100000")
        );
        assert_eq!(files(&dir).len(), 4);
        let used = |text: &str| {
            text.lines()
                .find(|l| l.starts_with("sluice_sink_dead_letter_bytes{sink=\"out\"}"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap()
        };
        assert!(used(&handle.render()) > 80_000.0);

        // The operator moves the first pair away: the next attempt sees the room.
        std::fs::remove_file(&first).unwrap();
        std::fs::remove_file(first.with_extension("json")).unwrap();
        letters.write("out", 9, 0, &rejected(10, 40_000)).unwrap();
        assert_eq!(files(&dir).len(), 4);
        assert!(used(&handle.render()) > 80_000.0);
    }

    #[test]
    fn an_empty_directory_takes_a_batch_larger_than_the_bound_and_earlier_runs_count() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("dead_letter/out");
        let letters = DeadLetters::new("out", dir.clone(), 10_000);
        letters.write("out", 1, 0, &rejected(2, 30_000)).unwrap();
        assert!(matches!(
            letters.write("out", 2, 0, &rejected(1, 100)),
            Err(DeadLetterError::Full { .. })
        ));
        // A new run (restart) measures what the last one left.
        let again = DeadLetters::new("out", dir.clone(), 10_000);
        assert!(matches!(
            again.write("out", 3, 0, &rejected(1, 100)),
            Err(DeadLetterError::Full { .. })
        ));
        assert_eq!(files(&dir).len(), 2);
    }
}
