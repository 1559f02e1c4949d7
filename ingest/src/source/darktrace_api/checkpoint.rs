//! Per-endpoint checkpoints: where the next poll starts, and which events at that instant were
//! already taken.
//!
//! `starttime` is inclusive, so the next poll returns again every event whose time equals the
//! checkpoint's; their ids are kept in the checkpoint and those events are dropped as
//! duplicates. The file (`data_dir/checkpoints/<source>/<endpoint>.json`) is replaced
//! atomically (temp file, fsync, rename, fsync of the directory), and only once the events it
//! covers are in every routed sink's spool (see `pipeline::ack`).

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use serde::{Deserialize, Serialize};

use super::config::Endpoint;
use super::page::ApiEvent;

/// Where an endpoint's next poll starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// `starttime` of the next poll, epoch ms.
    pub time_ms: i64,
    /// Ids of the events at exactly `time_ms` that were already taken.
    pub ids_at_time: BTreeSet<String>,
}

/// What to do with one response.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Indexes (into the response) of the events to hand to the pipeline.
    pub new: Vec<usize>,
    /// Dropped: at the boundary and already taken, before the boundary, or repeated in the
    /// response.
    pub duplicates: u64,
    /// Taken without a time: they cannot move the cursor or be de-duplicated.
    pub untimed: u64,
    /// The cursor once the `new` events are committed.
    pub next: Cursor,
}

/// Picks the events of a response that were not taken yet and computes the next cursor.
pub fn select(cursor: &Cursor, events: &[ApiEvent<'_>]) -> Selection {
    let mut s = Selection::default();
    let mut seen: HashSet<(i64, &str)> = HashSet::new();
    let mut max_time = cursor.time_ms;
    for (i, e) in events.iter().enumerate() {
        let Some(t) = e.time_ms else {
            s.untimed += 1;
            s.new.push(i);
            continue;
        };
        let taken =
            t < cursor.time_ms || (t == cursor.time_ms && cursor.ids_at_time.contains(&e.id));
        if taken || !seen.insert((t, e.id.as_str())) {
            s.duplicates += 1;
            continue;
        }
        max_time = max_time.max(t);
        s.new.push(i);
    }
    let mut ids: BTreeSet<String> = if max_time == cursor.time_ms {
        cursor.ids_at_time.clone()
    } else {
        BTreeSet::new()
    };
    for &i in &s.new {
        if events[i].time_ms == Some(max_time) {
            ids.insert(events[i].id.clone());
        }
    }
    s.next = Cursor {
        time_ms: max_time,
        ids_at_time: ids,
    };
    s
}

/// The file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub version: u32,
    pub endpoint: String,
    pub time_ms: i64,
    pub ids_at_time: BTreeSet<String>,
    /// When this file was written, epoch ms (diagnostics).
    pub written_at_ms: i64,
}

impl Checkpoint {
    pub fn new(endpoint: Endpoint, cursor: &Cursor) -> Checkpoint {
        Checkpoint {
            version: 1,
            endpoint: endpoint.name().to_owned(),
            time_ms: cursor.time_ms,
            ids_at_time: cursor.ids_at_time.clone(),
            written_at_ms: 0,
        }
    }

    pub fn cursor(&self) -> Cursor {
        Cursor {
            time_ms: self.time_ms,
            ids_at_time: self.ids_at_time.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error(
        "checkpoint {path} is damaged ({message}); it is left in place: move it away to start \
         again from `first_poll_lookback_secs` (events may then be repeated or missed)"
    )]
    Damaged { path: PathBuf, message: String },
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One endpoint's checkpoint file, shared between the poller (reads, age) and the commit
/// callback that runs on a pipeline thread (writes).
pub struct CheckpointStore {
    path: PathBuf,
    /// Sequence number of the last commit written; commits never go backwards.
    written: Mutex<u64>,
    /// When the checkpoint was last known to be current (a commit, or a poll that found
    /// nothing new), epoch ms: the `checkpoint_age_seconds` gauge.
    current_at_ms: AtomicI64,
    /// Event time of the last written checkpoint, epoch ms.
    time_ms: AtomicI64,
}

impl CheckpointStore {
    pub fn new(dir: &Path, endpoint: Endpoint) -> CheckpointStore {
        CheckpointStore {
            path: dir.join(format!("{}.json", endpoint.file_stem())),
            written: Mutex::new(0),
            current_at_ms: AtomicI64::new(now_ms()),
            time_ms: AtomicI64::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored checkpoint; `None` when there is none yet.
    pub fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CheckpointError::Io {
                    path: self.path.clone(),
                    op: "read",
                    source,
                });
            }
        };
        let cp: Checkpoint =
            serde_json::from_slice(&text).map_err(|e| CheckpointError::Damaged {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        if cp.version != 1 {
            return Err(CheckpointError::Damaged {
                path: self.path.clone(),
                message: format!("unknown version {}", cp.version),
            });
        }
        self.current_at_ms
            .store(cp.written_at_ms, Ordering::Relaxed);
        self.time_ms.store(cp.time_ms, Ordering::Relaxed);
        Ok(Some(cp))
    }

    /// Writes commit number `seq` unless a later one is already written.
    pub fn commit(&self, seq: u64, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if seq <= *written {
            return Ok(());
        }
        let mut cp = checkpoint.clone();
        cp.written_at_ms = now_ms();
        self.write_atomically(&cp)?;
        *written = seq;
        self.current_at_ms
            .store(cp.written_at_ms, Ordering::Relaxed);
        self.time_ms.store(cp.time_ms, Ordering::Relaxed);
        Ok(())
    }

    /// A poll found nothing new: the checkpoint is current as of now.
    pub fn touch(&self) {
        self.current_at_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn age_seconds(&self) -> f64 {
        (now_ms() - self.current_at_ms.load(Ordering::Relaxed)).max(0) as f64 / 1000.0
    }

    pub fn event_time_ms(&self) -> i64 {
        self.time_ms.load(Ordering::Relaxed)
    }

    fn write_atomically(&self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        let io = |op: &'static str| {
            let path = self.path.clone();
            move |source| CheckpointError::Io { path, op, source }
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io("create directory"))?;
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(cp).expect("a checkpoint always serialises");
        let mut f = std::fs::File::create(&tmp).map_err(io("create temp file"))?;
        f.write_all(&body).map_err(io("write temp file"))?;
        f.sync_all().map_err(io("fsync temp file"))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io("rename"))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(time: i64, id: &str) -> ApiEvent<'static> {
        ApiEvent {
            raw: "{}",
            time_ms: Some(time),
            id: id.to_owned(),
            has_log_type: false,
        }
    }

    #[test]
    fn boundary_events_are_taken_once() {
        let start = Cursor {
            time_ms: 100,
            ids_at_time: BTreeSet::new(),
        };
        let first = [ev(100, "a"), ev(300, "c"), ev(200, "b"), ev(300, "d")];
        let s = select(&start, &first);
        assert_eq!(s.new, vec![0, 1, 2, 3]);
        assert_eq!(s.next.time_ms, 300);
        assert_eq!(
            s.next.ids_at_time,
            ["c", "d"].map(String::from).into_iter().collect()
        );
        // The next poll (starttime=300) returns c and d again, plus e at the same ms and f.
        let second = [
            ev(300, "c"),
            ev(300, "d"),
            ev(300, "e"),
            ev(400, "f"),
            ev(250, "x"),
        ];
        let s2 = select(&s.next, &second);
        assert_eq!(s2.new, vec![2, 3]);
        assert_eq!(s2.duplicates, 3);
        assert_eq!(s2.next.time_ms, 400);
        // Only boundary repeats: nothing new, cursor unchanged.
        let s3 = select(&s2.next, &[ev(400, "f")]);
        assert!(s3.new.is_empty());
        assert_eq!(s3.next, s2.next);
        // New events at the boundary instant extend the id set.
        let s4 = select(&s2.next, &[ev(400, "f"), ev(400, "g"), ev(400, "g")]);
        assert_eq!((s4.new.clone(), s4.duplicates), (vec![1], 2));
        assert_eq!(
            s4.next.ids_at_time,
            ["f", "g"].map(String::from).into_iter().collect()
        );
    }

    #[test]
    fn untimed_events_pass_and_do_not_move_the_cursor() {
        let mut e = ev(0, "z");
        e.time_ms = None;
        let s = select(&Cursor::default(), &[e]);
        assert_eq!((s.new, s.untimed), (vec![0], 1));
        assert_eq!(s.next, Cursor::default());
    }

    #[test]
    fn store_round_trips_atomically_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(&dir.path().join("cp"), Endpoint::ModelBreaches);
        assert_eq!(store.load().unwrap(), None);
        let c1 = Cursor {
            time_ms: 5,
            ids_at_time: ["1".to_owned()].into(),
        };
        store
            .commit(2, &Checkpoint::new(Endpoint::ModelBreaches, &c1))
            .unwrap();
        let older = Cursor {
            time_ms: 1,
            ids_at_time: BTreeSet::new(),
        };
        store
            .commit(1, &Checkpoint::new(Endpoint::ModelBreaches, &older))
            .unwrap();
        let again = CheckpointStore::new(&dir.path().join("cp"), Endpoint::ModelBreaches);
        let loaded = again.load().unwrap().unwrap();
        assert_eq!(loaded.cursor(), c1);
        assert_eq!(loaded.endpoint, "modelbreaches");
        let files: Vec<_> = std::fs::read_dir(dir.path().join("cp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, vec!["modelbreaches.json".to_owned()]);
        std::fs::write(store.path(), b"{not json").unwrap();
        let err = again.load().unwrap_err().to_string();
        assert!(
            err.contains("damaged") && err.contains("move it away"),
            "{err}"
        );
    }
}
