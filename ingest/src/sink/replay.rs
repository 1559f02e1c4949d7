//! Replaying dead letters: once the cause of a refusal is fixed (a schema, a permission, a
//! stream name), an operator moves the sink's dead letters into
//! `data_dir/dead_letter/<sink>/replay/`, and the running daemon puts their events back into
//! the sink's spool, to be delivered like any other batch. No restart and no tool: a `mv`.
//!
//! A file is removed only once its events are in the spool (durably, per the spool's `fsync`);
//! one the spool cannot take (closed, larger than its bound, a disk error) stays and is tried
//! again. Events refused again go back to the dead-letter directory itself, never into
//! `replay/`, so nothing loops.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::sink::Batch;
use crate::spool::{Spool, SpoolError};

/// How often `replay/` is looked at.
pub const REPLAY_EVERY: Duration = Duration::from_secs(5);

/// The sink's replay directory.
pub fn replay_dir(dead_letter_dir: &Path) -> PathBuf {
    dead_letter_dir.join("replay")
}

/// Looks at `dir` every [`REPLAY_EVERY`] until `stop` turns true.
pub(super) async fn run(
    sink: String,
    dir: PathBuf,
    spool: Arc<Spool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let replayed = metrics::counter!(crate::metrics::SINK_REPLAYED_EVENTS, "sink" => sink.clone());
    replayed.increment(0);
    let mut state = ReplayState::default();
    loop {
        let (sink, dir, spool) = (sink.clone(), dir.clone(), spool.clone());
        let mut taken = std::mem::take(&mut state);
        let pass = tokio::task::spawn_blocking(move || {
            let events = replay_once(&sink, &dir, &spool, &mut taken);
            (events, taken)
        });
        if let Ok((events, kept)) = pass.await {
            replayed.increment(events);
            state = kept;
        }
        tokio::select! {
            _ = tokio::time::sleep(REPLAY_EVERY) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// What one look at `replay/` leaves for the next.
#[derive(Default)]
pub struct ReplayState {
    /// Files whose failure was logged already: logged once, tried at every look.
    reported: HashSet<PathBuf>,
    /// Files whose events are spooled but which could not be removed: never spooled again
    /// (that would duplicate them at every look).
    spooled: HashSet<PathBuf>,
}

/// One look at `dir`: every `*.ndjson` file is appended to `spool` as one batch and removed
/// (with its `.json` beside it). Returns the events replayed.
pub fn replay_once(sink: &str, dir: &Path, spool: &Spool, state: &mut ReplayState) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ndjson") && p.is_file())
        .collect();
    // Oldest first: dead letters are named after the time they were written.
    files.sort();
    let mut events = 0;
    for path in files {
        if state.spooled.contains(&path) {
            continue;
        }
        match replay_file(&path, spool) {
            Ok(n) => {
                state.reported.remove(&path);
                events += n;
                tracing::info!(sink, file = %path.display(), events = n,
                    "dead letter replayed: its events are back in the spool");
            }
            Err((e, spooled)) => {
                events += spooled;
                if matches!(e, ReplayError::Remove(_)) {
                    tracing::error!(sink, file = %path.display(),
                        "{e}; remove it by hand: it is not replayed again by this run");
                    state.spooled.insert(path);
                    continue;
                }
                if state.reported.insert(path.clone()) {
                    tracing::warn!(sink, file = %path.display(),
                        "dead letter not replayed, it stays and is tried again: {e}");
                }
                if matches!(e, ReplayError::Spool(SpoolError::Closed)) {
                    break;
                }
            }
        }
    }
    events
}

#[derive(Debug, thiserror::Error)]
enum ReplayError {
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    #[error("the spool refused it: {0}")]
    Spool(SpoolError),
    #[error("its events are spooled, but it cannot be removed (they would be replayed again): {0}")]
    Remove(std::io::Error),
}

/// The events spooled from `path`; on an error, also how many were spooled before it.
fn replay_file(path: &Path, spool: &Spool) -> Result<u64, (ReplayError, u64)> {
    let data = std::fs::read(path).map_err(|e| (ReplayError::Read(e), 0))?;
    let batch = Batch::from_lines(data.split(|&b| b == b'\n').filter(|l| !l.is_empty()));
    if batch.events > 0 {
        spool
            .append(&batch)
            .map_err(|e| (ReplayError::Spool(e), 0))?;
    }
    std::fs::remove_file(path).map_err(|e| (ReplayError::Remove(e), batch.events))?;
    // The metadata (status, reason, answer) goes with it, if it was moved too.
    let _ = std::fs::remove_file(path.with_extension("json"));
    Ok(batch.events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{FsyncPolicy, SpoolConfig, WhenFull};

    fn spool(dir: &Path, max_bytes: u64) -> Spool {
        Spool::open(
            dir,
            SpoolConfig {
                max_bytes,
                segment_bytes: max_bytes / 4,
                when_full: WhenFull::DropOldest,
                fsync: FsyncPolicy::Never,
                fsync_interval_ms: 10,
                max_quarantine_bytes: 1 << 20,
            },
        )
        .unwrap()
    }

    /// A dead letter the spool cannot take stays where it is and is tried at every look,
    /// logged once; the others go, oldest first, each as one batch with its events intact.
    #[test]
    fn what_the_spool_cannot_take_stays_and_the_rest_goes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let replay = dir.path().join("replay");
        std::fs::create_dir(&replay).unwrap();
        std::fs::write(replay.join("100-1-0.ndjson"), "{\"n\":1}\n{\"n\":2}\n").unwrap();
        std::fs::write(replay.join("100-1-0.json"), "{\"status\":400}").unwrap();
        std::fs::write(replay.join("200-2-0.ndjson"), "{\"n\":3}\n\n").unwrap();
        let huge = "x".repeat(64 << 10);
        std::fs::write(replay.join("150-9-0.ndjson"), format!("\"{huge}\"\n")).unwrap();
        let spool = spool(&dir.path().join("spool"), 32 << 10);
        let mut state = ReplayState::default();

        assert_eq!(replay_once("s", &replay, &spool, &mut state), 3);
        let mut batches = Vec::new();
        while let Some(record) = spool.next().unwrap() {
            batches.push(String::from_utf8(record.batch.ndjson.clone()).unwrap());
            spool.ack(record.id).unwrap();
        }
        assert_eq!(batches, ["{\"n\":1}\n{\"n\":2}\n", "{\"n\":3}\n"]);
        let left: Vec<String> = std::fs::read_dir(&replay)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["150-9-0.ndjson"], "too large for the spool: kept");
        assert!(state.reported.contains(&replay.join("150-9-0.ndjson")));
        assert_eq!(replay_once("s", &replay, &spool, &mut state), 0);
        assert!(replay.join("150-9-0.ndjson").is_file());
    }
}
