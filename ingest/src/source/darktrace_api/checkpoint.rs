//! Per-endpoint checkpoints: where the next poll starts, and which events at that instant were
//! already taken.
//!
//! `starttime` is inclusive, so the next poll returns again every event whose time equals the
//! checkpoint's; their ids are kept in the checkpoint and those events are dropped as
//! duplicates. The file (`data_dir/checkpoints/<source>/<endpoint>.json`) is replaced
//! atomically (temp file, fsync, rename, fsync of the directory), and only once the events it
//! covers are in every routed sink's spool (see `pipeline::ack`). The file names the appliance
//! and endpoint it was written for: a time is only meaningful against the stream it counts.
//!
//! With `overlap_secs`, open-ended polls ask from before the checkpoint again, for events the
//! appliance indexed after the cursor passed their time; the checkpoint then also lists the
//! events taken in that overlap ([`Cursor::recent`]), so that only the late ones are taken.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use serde::{Deserialize, Serialize};

use super::config::Endpoint;
use super::forwarded::ForwardedIds;
use super::page::ApiEvent;

/// Where an endpoint's next poll starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// `starttime` of the next poll, epoch ms.
    pub time_ms: i64,
    /// Ids of the events at exactly `time_ms` that were already taken.
    pub ids_at_time: BTreeSet<String>,
    /// With `overlap_secs`: ids of the events taken before `time_ms` and not before
    /// `recent_since_ms`, by time. A poll that asks again from before the checkpoint forwards
    /// only the events it finds there that are not listed (the appliance indexed them late).
    /// Empty without an overlap.
    pub recent: BTreeMap<i64, BTreeSet<String>>,
    /// Every event taken with a time from here up to `time_ms` is listed in `recent` (or
    /// `ids_at_time`): a poll may look back to here, no further.
    pub recent_since_ms: i64,
}

impl Cursor {
    /// A cursor at `time_ms` that knows of no event taken there or before.
    pub fn at(time_ms: i64) -> Cursor {
        Cursor {
            time_ms,
            ids_at_time: BTreeSet::new(),
            recent: BTreeMap::new(),
            recent_since_ms: time_ms,
        }
    }

    /// `starttime` of a poll that looks `overlap_ms` back from the cursor: no further back
    /// than `recent` covers, or events taken there would be forwarded again.
    pub fn look_back_start(&self, overlap_ms: i64) -> i64 {
        self.time_ms
            .saturating_sub(overlap_ms)
            .max(self.recent_since_ms)
            .min(self.time_ms)
    }

    /// Whether the event at `time` with `id` was taken, as far as this cursor knows (events
    /// before `recent_since_ms` are taken; the poll did not ask for them).
    fn has_taken(&self, time: i64, id: &str) -> bool {
        match time.cmp(&self.time_ms) {
            std::cmp::Ordering::Less => {
                time < self.recent_since_ms
                    || self.recent.get(&time).is_some_and(|ids| ids.contains(id))
            }
            std::cmp::Ordering::Equal => self.ids_at_time.contains(id),
            std::cmp::Ordering::Greater => false,
        }
    }

    /// The cursor moved on to `time_ms`, where `ids_at_time` were taken; `taken` are the
    /// events taken since this cursor, dated before `time_ms`. With an overlap, `recent` keeps
    /// what was taken in the `overlap.ms` before the new time, at most `overlap.max_ids` ids: past
    /// that the oldest instants are forgotten and the look-back shortens, so that no event is
    /// forwarded twice.
    pub fn moved_to<'e>(
        &self,
        time_ms: i64,
        ids_at_time: BTreeSet<String>,
        taken: impl Iterator<Item = (i64, &'e str)>,
        overlap: Overlap,
    ) -> Cursor {
        let mut next = Cursor {
            ids_at_time,
            ..Cursor::at(time_ms)
        };
        if overlap.ms <= 0 {
            return next;
        }
        let mut recent = self.recent.clone();
        if self.time_ms < time_ms && !self.ids_at_time.is_empty() {
            recent
                .entry(self.time_ms)
                .or_default()
                .extend(self.ids_at_time.iter().cloned());
        }
        for (t, id) in taken.filter(|&(t, _)| t < time_ms) {
            recent.entry(t).or_default().insert(id.to_owned());
        }
        let mut since = self
            .recent_since_ms
            .max(time_ms.saturating_sub(overlap.ms))
            .min(time_ms);
        recent = recent.split_off(&since);
        let mut count: usize = recent.values().map(BTreeSet::len).sum();
        while count > overlap.max_ids {
            let Some((t, ids)) = recent.pop_first() else {
                break;
            };
            count -= ids.len();
            since = t.saturating_add(1).min(time_ms);
        }
        next.recent = recent;
        next.recent_since_ms = since;
        next
    }
}

/// How far back open-ended polls look again (`overlap_secs`), and how many ids of the events
/// taken there a cursor keeps (`max_remembered_ids`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overlap {
    /// 0: no look-back.
    pub ms: i64,
    pub max_ids: usize,
}

/// One poll, as [`select`] needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poll {
    /// The `starttime` asked for: the cursor's time, or earlier for a look-back.
    pub from_ms: i64,
    /// When the request was made, by this host's clock.
    pub at_ms: i64,
    pub overlap: Overlap,
}

impl Poll {
    /// A poll from the cursor on, keeping no look-back.
    pub fn from_cursor(cursor: &Cursor, at_ms: i64) -> Poll {
        Poll {
            from_ms: cursor.time_ms,
            at_ms,
            overlap: Overlap::default(),
        }
    }
}

/// What to do with one response.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Indexes (into the response) of the events to hand to the pipeline.
    pub new: Vec<usize>,
    /// Dropped: at the boundary and already taken, before the boundary, or repeated in the
    /// response.
    pub duplicates: u64,
    /// Dropped: forwarded before without a usable time, and returned again.
    pub suppressed_untimed: u64,
    /// Dropped: forwarded before while dated after the request, and returned again.
    pub suppressed_future: u64,
    /// Of `new`, those without a usable time: they cannot move the cursor.
    pub untimed: Vec<usize>,
    /// Of `new`, those dated more than [`FUTURE_SLACK_MS`] after the request.
    pub future: Vec<usize>,
    /// Of `new`, those dated before the cursor, found by a look-back: indexed late.
    pub late: Vec<usize>,
    /// Ids of `new` events the next cursor does not cover (no usable time, or dated after
    /// it): remembered once they are committed, so that their return is not forwarded again.
    pub remember: Vec<String>,
    /// The cursor once the `new` events are committed.
    pub next: Cursor,
}

/// An event dated this far after the request that fetched it is not explained by clock skew
/// or by the request's own latency: it is reported (logged once, counted) as future-dated.
/// The same margin as the windowing's open end: the skew the API itself tolerates.
pub const FUTURE_SLACK_MS: i64 = super::window::OPEN_END_MARGIN_MS;

/// Picks the events of a response that were not taken yet and computes the next cursor.
///
/// `poll.at_ms` is when the request was made, by this host's clock: the cursor moves to the
/// latest event dated no later than that, never past it. An event dated later (a wrong clock
/// on the appliance or on whatever it learnt the event from) is forwarded, but moving the
/// cursor to its time would skip every event dated between now and then. Such events, and
/// those without a usable time, are returned again by later polls; `forwarded` holds the ids
/// already sent. A poll that looked back (`poll.from_ms` before the cursor) takes the events
/// there that the cursor does not list as taken: the appliance indexed them late.
pub fn select(
    cursor: &Cursor,
    events: &[ApiEvent<'_>],
    poll: Poll,
    forwarded: &ForwardedIds,
) -> Selection {
    let requested_at_ms = poll.at_ms;
    let mut s = Selection::default();
    let mut seen: HashSet<(Option<i64>, &str)> = HashSet::new();
    let mut passed_again = Vec::new();
    let mut max_time = cursor.time_ms;
    for (i, e) in events.iter().enumerate() {
        let Some(t) = e.time_ms else {
            if !seen.insert((None, e.id.as_str())) {
                s.duplicates += 1;
            } else if forwarded.contains(&e.id) {
                s.suppressed_untimed += 1;
            } else {
                s.untimed.push(i);
                s.new.push(i);
            }
            continue;
        };
        // Before `from_ms`: not asked for, so taken before (or never to be taken).
        let taken = t < poll.from_ms || cursor.has_taken(t, &e.id);
        if taken || !seen.insert((Some(t), e.id.as_str())) {
            s.duplicates += 1;
            continue;
        }
        if forwarded.contains(&e.id) {
            s.suppressed_future += 1;
            // Forwarded while it was dated after its request; if its time has come since, the
            // cursor may pass it like any taken event. Otherwise enough such events to fill an
            // answer that the appliance caps would hold the cursor back for good.
            if t <= requested_at_ms {
                max_time = max_time.max(t);
                passed_again.push(i);
            }
            continue;
        }
        if t > requested_at_ms.saturating_add(FUTURE_SLACK_MS) {
            s.future.push(i);
        }
        if t < cursor.time_ms {
            s.late.push(i);
        }
        // Not to the request time either: with this host's clock ahead of the appliance's,
        // that would pass events the appliance dates (or indexes) later but before it.
        if t <= requested_at_ms {
            max_time = max_time.max(t);
        }
        s.new.push(i);
    }
    // Never backwards, even when the checkpoint is already later than this host's clock.
    let next_time = max_time.max(cursor.time_ms);
    let mut ids: BTreeSet<String> = if next_time == cursor.time_ms {
        cursor.ids_at_time.clone()
    } else {
        BTreeSet::new()
    };
    for &i in &passed_again {
        if events[i].time_ms == Some(next_time) {
            ids.insert(events[i].id.clone());
        }
    }
    for &i in &s.new {
        match events[i].time_ms {
            Some(t) if t == next_time => {
                ids.insert(events[i].id.clone());
            }
            Some(t) if t < next_time => {}
            _ => s.remember.push(events[i].id.clone()),
        }
    }
    let taken = passed_again
        .iter()
        .chain(&s.new)
        .filter_map(|&i| Some((events[i].time_ms?, events[i].id.as_str())));
    s.next = cursor.moved_to(next_time, ids, taken, poll.overlap);
    s
}

/// How a checkpoint names the appliance: scheme, host, port (when not the default) and the
/// path prefix without its trailing `/`, so that spellings of one base URL compare equal.
pub fn stream_url(base: &reqwest::Url) -> String {
    format!(
        "{}{}",
        base.origin().ascii_serialization(),
        base.path().trim_end_matches('/')
    )
}

/// The file's format: version 2 records the appliance's URL, version 3 may also list the events
/// taken shortly before the cursor (`recent`, with `overlap_secs`). A version 2 file is read
/// as a version 3 without them.
pub const VERSION: u32 = 3;

/// The file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub version: u32,
    /// The appliance ([`stream_url`]) whose events the cursor counts; absent in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub endpoint: String,
    pub time_ms: i64,
    pub ids_at_time: BTreeSet<String>,
    /// [`Cursor::recent`]: ids by event time (JSON object keys are the times as text).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub recent: BTreeMap<i64, BTreeSet<String>>,
    /// [`Cursor::recent_since_ms`]; absent means `time_ms` (nothing listed before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent_since_ms: Option<i64>,
    /// The parameters the source sent after `starttime` (`k=v&k=v`, version 3): the cursor
    /// counts only the events that query returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// When this file was written, epoch ms (diagnostics).
    pub written_at_ms: i64,
}

impl Checkpoint {
    pub fn new(url: &str, endpoint: Endpoint, cursor: &Cursor) -> Checkpoint {
        Checkpoint {
            version: VERSION,
            url: Some(url.to_owned()),
            endpoint: endpoint.name().to_owned(),
            time_ms: cursor.time_ms,
            ids_at_time: cursor.ids_at_time.clone(),
            recent: cursor.recent.clone(),
            recent_since_ms: (cursor.recent_since_ms < cursor.time_ms)
                .then_some(cursor.recent_since_ms),
            query: None,
            written_at_ms: 0,
        }
    }

    pub fn cursor(&self) -> Cursor {
        let since = self
            .recent_since_ms
            .unwrap_or(self.time_ms)
            .min(self.time_ms);
        Cursor {
            time_ms: self.time_ms,
            ids_at_time: self.ids_at_time.clone(),
            // Only instants the cursor consults: from `since` up to (not at) its time.
            recent: self
                .recent
                .range(since..self.time_ms)
                .map(|(&t, ids)| (t, ids.clone()))
                .collect(),
            recent_since_ms: since,
        }
    }

    /// Where to resume at `now_ms`: `Err` when the checkpoint is dated more than
    /// [`FUTURE_SLACK_MS`] ahead, with the cursor to resume from instead. Versions that let a
    /// future-dated event move the checkpoint wrote such files, and the cursor never goes
    /// back, so the source would never ask for the events in between. It restarts from when
    /// the file was written (less the slack): events dated before that write had been
    /// fetched already, those after it never were. `fallback_ms` when that time is unusable.
    pub fn resume_at(&self, now_ms: i64, fallback_ms: i64) -> Result<Cursor, Cursor> {
        if self.time_ms <= now_ms.saturating_add(FUTURE_SLACK_MS) {
            return Ok(self.cursor());
        }
        let written = if self.written_at_ms > 0 {
            self.written_at_ms.min(now_ms)
        } else {
            fallback_ms
        };
        Err(Cursor::at(written.saturating_sub(FUTURE_SLACK_MS)))
    }
}

/// What the stored checkpoint means for this source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// There is none yet.
    Nothing,
    /// Written for this appliance and endpoint.
    Resume(Checkpoint),
    /// Version 1, which did not record the URL: taken to be this appliance's, and written
    /// in the current format at the next commit.
    Adopted(Checkpoint),
    /// Written for another appliance (or endpoint): its time means nothing here.
    OtherStream(Checkpoint),
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
    /// The appliance ([`stream_url`]) and endpoint the checkpoints are written for.
    url: String,
    endpoint: Endpoint,
    /// Sequence number of the last commit written; commits never go backwards.
    written: Mutex<u64>,
    /// When the checkpoint was last known to be current (a commit, or a poll that found
    /// nothing new), epoch ms: the `checkpoint_age_seconds` gauge.
    current_at_ms: AtomicI64,
    /// Event time of the last written checkpoint, epoch ms.
    time_ms: AtomicI64,
    /// The query parameters the source sends, recorded in each checkpoint.
    query: Option<String>,
}

impl CheckpointStore {
    pub fn new(dir: &Path, url: &str, endpoint: Endpoint) -> CheckpointStore {
        CheckpointStore {
            path: dir.join(format!("{}.json", endpoint.file_stem())),
            url: url.to_owned(),
            endpoint,
            written: Mutex::new(0),
            current_at_ms: AtomicI64::new(now_ms()),
            time_ms: AtomicI64::new(0),
            query: None,
        }
    }

    /// Records `query` (the parameters sent after `starttime`) in the checkpoints written.
    pub fn with_query(mut self, query: String) -> CheckpointStore {
        self.query = Some(query);
        self
    }

    /// The query the stored checkpoint `cp` was written under, when it differs from this
    /// store's: the cursor did not count the events only the new query returns.
    pub fn query_changed<'c>(&self, cp: &'c Checkpoint) -> Option<&'c str> {
        cp.query
            .as_deref()
            .filter(|&old| self.query.as_deref().is_some_and(|new| new != old))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The checkpoint of `cursor` for this store's appliance and endpoint.
    pub fn checkpoint(&self, cursor: &Cursor) -> Checkpoint {
        Checkpoint {
            query: self.query.clone(),
            ..Checkpoint::new(&self.url, self.endpoint, cursor)
        }
    }

    /// The stored checkpoint, and whether it belongs to this appliance and endpoint.
    pub fn load(&self) -> Result<Loaded, CheckpointError> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Nothing),
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
        let damaged = |message: String| CheckpointError::Damaged {
            path: self.path.clone(),
            message,
        };
        let loaded = match (cp.version, cp.url.as_deref()) {
            (1, None) if cp.endpoint == self.endpoint.name() => Loaded::Adopted(cp),
            (1, None) => Loaded::OtherStream(cp),
            (1, Some(_)) => return Err(damaged("version 1 has no `url`".into())),
            (2 | VERSION, None) => return Err(damaged("`url` is missing".into())),
            (2, Some(_))
                if !cp.recent.is_empty() || cp.recent_since_ms.is_some() || cp.query.is_some() =>
            {
                return Err(damaged(
                    "version 2 has no `recent`, `recent_since_ms` or `query`".into(),
                ));
            }
            (2 | VERSION, Some(url)) if url == self.url && cp.endpoint == self.endpoint.name() => {
                Loaded::Resume(cp)
            }
            (2 | VERSION, Some(_)) => Loaded::OtherStream(cp),
            (v, _) => return Err(damaged(format!("unknown version {v}"))),
        };
        if let Loaded::Resume(cp) | Loaded::Adopted(cp) = &loaded {
            self.current_at_ms
                .store(cp.written_at_ms, Ordering::Relaxed);
            self.time_ms.store(cp.time_ms, Ordering::Relaxed);
        }
        Ok(loaded)
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

    const URL: &str = "https://dt.example";
    /// A request time later than every event of these tests.
    const LATER: i64 = 1_000_000;

    fn ev(time: i64, id: &str) -> ApiEvent<'static> {
        ApiEvent {
            raw: "{}",
            time_ms: Some(time),
            id: id.to_owned(),
            has_log_type: false,
        }
    }

    fn none() -> ForwardedIds {
        ForwardedIds::new(16)
    }

    #[test]
    fn boundary_events_are_taken_once() {
        let start = Cursor::at(100);
        let first = [ev(100, "a"), ev(300, "c"), ev(200, "b"), ev(300, "d")];
        let s = select(&start, &first, Poll::from_cursor(&start, LATER), &none());
        assert_eq!(s.new, vec![0, 1, 2, 3]);
        assert_eq!(s.next.time_ms, 300);
        assert_eq!(
            s.next.ids_at_time,
            ["c", "d"].map(String::from).into_iter().collect()
        );
        assert!(s.remember.is_empty() && s.future.is_empty());
        // The next poll (starttime=300) returns c and d again, plus e at the same ms and f.
        let second = [
            ev(300, "c"),
            ev(300, "d"),
            ev(300, "e"),
            ev(400, "f"),
            ev(250, "x"),
        ];
        let s2 = select(&s.next, &second, Poll::from_cursor(&s.next, LATER), &none());
        assert_eq!(s2.new, vec![2, 3]);
        assert_eq!(s2.duplicates, 3);
        assert_eq!(s2.next.time_ms, 400);
        // Only boundary repeats: nothing new, cursor unchanged.
        let s3 = select(
            &s2.next,
            &[ev(400, "f")],
            Poll::from_cursor(&s2.next, LATER),
            &none(),
        );
        assert!(s3.new.is_empty());
        assert_eq!(s3.next, s2.next);
        // New events at the boundary instant extend the id set.
        let s4 = select(
            &s2.next,
            &[ev(400, "f"), ev(400, "g"), ev(400, "g")],
            Poll::from_cursor(&s2.next, LATER),
            &none(),
        );
        assert_eq!((s4.new.clone(), s4.duplicates), (vec![1], 2));
        assert_eq!(
            s4.next.ids_at_time,
            ["f", "g"].map(String::from).into_iter().collect()
        );
    }

    #[test]
    fn untimed_events_pass_once_and_do_not_move_the_cursor() {
        let mut e = ev(0, "z");
        e.time_ms = None;
        let page = [e.clone(), e];
        let s = select(
            &Cursor::default(),
            &page,
            Poll::from_cursor(&Cursor::default(), LATER),
            &none(),
        );
        assert_eq!((s.new, s.untimed, s.duplicates), (vec![0], vec![0], 1));
        assert_eq!(s.next, Cursor::default());
        assert_eq!(s.remember, vec!["z".to_owned()]);
        // Once committed, its id is remembered: returned again, it is suppressed.
        let mut forwarded = none();
        forwarded.insert("z".into());
        let again = select(
            &Cursor::default(),
            &page,
            Poll::from_cursor(&Cursor::default(), LATER),
            &forwarded,
        );
        assert!(again.new.is_empty());
        assert_eq!((again.suppressed_untimed, again.duplicates), (1, 1));
    }

    /// The old code moved the cursor to 9e12 (year 2255): everything after the request time
    /// and before then would never have been asked for.
    #[test]
    fn the_cursor_stops_at_the_request_time() {
        let start = Cursor::at(100);
        let now = 1_000;
        let page = [
            ev(200, "a"),
            ev(9_000_000_000_000, "far"),
            ev(1_000 + 5, "soon"),
        ];
        let s = select(&start, &page, Poll::from_cursor(&start, now), &none());
        assert_eq!(s.new, vec![0, 1, 2]);
        // The latest event dated before the request, not the request time: this host's clock
        // may be ahead of the appliance's.
        assert_eq!(s.next.time_ms, 200);
        assert_eq!(s.next.ids_at_time, ["a".to_owned()].into());
        assert_eq!(s.future, vec![1], "only beyond the slack is reported");
        assert_eq!(s.remember, vec!["far".to_owned(), "soon".to_owned()]);
        // The next poll starts there and gets both again, a new event after them, and one the
        // appliance dated before the first request but returned only now (a cursor moved to
        // the request time counted it as a duplicate and lost it).
        let mut forwarded = none();
        for id in s.remember {
            forwarded.insert(id);
        }
        let page = [
            ev(9_000_000_000_000, "far"),
            ev(1_005, "soon"),
            ev(1_003, "b"),
            ev(600, "late"),
        ];
        let s2 = select(
            &s.next,
            &page,
            Poll::from_cursor(&s.next, 2_000),
            &forwarded,
        );
        assert_eq!((s2.new, s2.suppressed_future), (vec![2, 3], 2));
        // "soon" is in the past now: the cursor passes it, and takes it as seen there.
        assert_eq!(s2.next.time_ms, 1_005);
        assert_eq!(s2.next.ids_at_time, ["soon".to_owned()].into());
        // An answer of nothing but such events still moves the cursor.
        let s2 = select(
            &s.next,
            &[ev(1_005, "soon")],
            Poll::from_cursor(&s.next, 2_000),
            &forwarded,
        );
        assert!(s2.new.is_empty());
        assert_eq!(s2.next.time_ms, 1_005);
        // A cursor already later than the clock does not go back.
        let late = Cursor::at(5_000);
        let s3 = select(
            &late,
            &[ev(6_000, "c")],
            Poll::from_cursor(&late, 2_000),
            &none(),
        );
        assert_eq!(s3.next.time_ms, 5_000);
        assert_eq!(s3.remember, vec!["c".to_owned()]);
    }

    fn ids(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn look_back(cursor: &Cursor, at_ms: i64, overlap: Overlap) -> Poll {
        Poll {
            from_ms: cursor.look_back_start(overlap.ms),
            at_ms,
            overlap,
        }
    }

    /// An event the appliance returns only after the cursor passed its time is taken by the
    /// next look-back, once; the events taken before it are not forwarded again.
    #[test]
    fn a_look_back_takes_late_events_once() {
        let overlap = Overlap {
            ms: 1_000,
            max_ids: 100,
        };
        let start = Cursor::at(100);
        // A fresh cursor knows of nothing taken before it: no look-back yet.
        assert_eq!(start.look_back_start(overlap.ms), 100);
        let first = [ev(100, "a"), ev(200, "b"), ev(300, "c")];
        let s = select(&start, &first, look_back(&start, LATER, overlap), &none());
        assert_eq!(s.new, vec![0, 1, 2]);
        assert!(s.late.is_empty());
        assert_eq!(
            (s.next.time_ms, s.next.ids_at_time.clone()),
            (300, ids(&["c"]))
        );
        assert_eq!(
            s.next.recent,
            BTreeMap::from([(100, ids(&["a"])), (200, ids(&["b"]))])
        );
        assert_eq!(s.next.look_back_start(overlap.ms), 100);
        // The look-back returns a, b and c again, `late` (dated 250, indexed after c) and d.
        let second = [
            ev(100, "a"),
            ev(200, "b"),
            ev(250, "late"),
            ev(300, "c"),
            ev(400, "d"),
        ];
        let s2 = select(
            &s.next,
            &second,
            look_back(&s.next, LATER, overlap),
            &none(),
        );
        assert_eq!((s2.new.clone(), s2.late.clone()), (vec![2, 4], vec![2]));
        assert_eq!(s2.duplicates, 3);
        assert_eq!(s2.next.time_ms, 400);
        assert_eq!(
            s2.next.recent.keys().copied().collect::<Vec<_>>(),
            vec![100, 200, 250, 300]
        );
        // Once more: nothing new, and the cursor is unchanged (nothing to commit).
        let s3 = select(
            &s2.next,
            &second,
            look_back(&s2.next, LATER, overlap),
            &none(),
        );
        assert!(s3.new.is_empty());
        assert_eq!(s3.duplicates, 5);
        assert_eq!(s3.next, s2.next);
        // Without a look-back the same late event is not asked for: before `starttime`.
        let plain = select(&s.next, &second, Poll::from_cursor(&s.next, LATER), &none());
        assert_eq!((plain.new, plain.late), (vec![4], vec![]));
        // A window that brought nothing moves the cursor to its end: what was taken at the old
        // time joins the list.
        let windowed = s2
            .next
            .moved_to(900, BTreeSet::new(), std::iter::empty(), overlap);
        assert_eq!((windowed.time_ms, windowed.recent_since_ms), (900, 100));
        assert_eq!(windowed.recent.get(&400), Some(&ids(&["d"])));
        assert!(windowed.ids_at_time.is_empty());
        // The list keeps only the overlap before the cursor: at 1,300 it starts at 300.
        let s4 = select(
            &s2.next,
            &[ev(1_300, "e")],
            look_back(&s2.next, LATER, overlap),
            &none(),
        );
        assert_eq!(s4.next.recent_since_ms, 300);
        assert_eq!(
            s4.next.recent,
            BTreeMap::from([(300, ids(&["c"])), (400, ids(&["d"]))])
        );
        assert_eq!(s4.next.look_back_start(overlap.ms), 300);
    }

    /// Past `max_ids` the oldest instants are forgotten and the look-back no longer reaches
    /// them: an event there that comes back is a duplicate, not forwarded again.
    #[test]
    fn a_full_look_back_list_shortens_the_look_back_instead_of_repeating() {
        let overlap = Overlap {
            ms: 10_000,
            max_ids: 2,
        };
        let start = Cursor::at(0);
        let page = [ev(100, "a"), ev(200, "b"), ev(200, "b2"), ev(300, "c")];
        let s = select(&start, &page, look_back(&start, LATER, overlap), &none());
        // a (100), b and b2 (200) do not fit in two: the oldest instant goes, whole.
        assert_eq!(s.next.recent, BTreeMap::from([(200, ids(&["b", "b2"]))]));
        assert_eq!(s.next.recent_since_ms, 101);
        assert_eq!(s.next.look_back_start(overlap.ms), 101);
        let again = select(&s.next, &page, look_back(&s.next, LATER, overlap), &none());
        assert!(again.new.is_empty() && again.late.is_empty());
        assert_eq!(again.duplicates, 4);
        // Without an overlap nothing is kept.
        let plain = select(&start, &page, Poll::from_cursor(&start, LATER), &none());
        assert!(plain.next.recent.is_empty());
        assert_eq!(plain.next.recent_since_ms, plain.next.time_ms);
    }

    #[test]
    fn the_look_back_list_survives_a_restart_and_version_2_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), URL, Endpoint::ModelBreaches);
        let overlap = Overlap {
            ms: 1_000,
            max_ids: 100,
        };
        let start = Cursor::at(100);
        let page = [ev(100, "a"), ev(200, "b"), ev(300, "c")];
        let next = select(&start, &page, look_back(&start, LATER, overlap), &none()).next;
        let store = store.with_query("a=1".into());
        store.commit(1, &store.checkpoint(&next)).unwrap();
        let Loaded::Resume(cp) = store.load().unwrap() else {
            panic!("not resumed")
        };
        assert_eq!(cp.cursor(), next);
        assert_eq!(cp.query.as_deref(), Some("a=1"));
        assert_eq!(store.query_changed(&cp), None);
        let requery =
            CheckpointStore::new(dir.path(), URL, Endpoint::ModelBreaches).with_query("a=2".into());
        assert_eq!(requery.query_changed(&cp), Some("a=1"));
        // Instants the cursor does not consult are not kept, whatever the file says.
        let mut odd = cp.clone();
        odd.recent.insert(50, ids(&["before"]));
        odd.recent.insert(300, ids(&["at"]));
        assert_eq!(odd.cursor(), next);
        std::fs::write(
            store.path(),
            r#"{ "version": 2, "url": "https://dt.example", "endpoint": "modelbreaches",
                 "time_ms": 300, "ids_at_time": ["c"], "written_at_ms": 1 }"#,
        )
        .unwrap();
        let Loaded::Resume(v2) = store.load().unwrap() else {
            panic!("version 2 not resumed")
        };
        let resumed = v2.cursor();
        assert_eq!((resumed.time_ms, resumed.recent_since_ms), (300, 300));
        assert!(resumed.recent.is_empty());
        std::fs::write(
            store.path(),
            r#"{ "version": 2, "url": "https://dt.example", "endpoint": "modelbreaches",
                 "time_ms": 300, "ids_at_time": ["c"], "recent": {"200": ["b"]},
                 "written_at_ms": 1 }"#,
        )
        .unwrap();
        assert!(store.load().unwrap_err().to_string().contains("damaged"));
    }

    #[test]
    fn store_round_trips_atomically_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(&dir.path().join("cp"), URL, Endpoint::ModelBreaches);
        assert_eq!(store.load().unwrap(), Loaded::Nothing);
        let c1 = Cursor {
            ids_at_time: ["1".to_owned()].into(),
            ..Cursor::at(5)
        };
        store.commit(2, &store.checkpoint(&c1)).unwrap();
        let older = Cursor::at(1);
        store.commit(1, &store.checkpoint(&older)).unwrap();
        let again = CheckpointStore::new(&dir.path().join("cp"), URL, Endpoint::ModelBreaches);
        let Loaded::Resume(loaded) = again.load().unwrap() else {
            panic!("not resumed")
        };
        assert_eq!(loaded.cursor(), c1);
        assert_eq!(loaded.endpoint, "modelbreaches");
        assert_eq!(loaded.url.as_deref(), Some(URL));
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

    #[test]
    fn a_checkpoint_of_another_appliance_is_not_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let cp = dir.path().join("cp");
        let old = CheckpointStore::new(&cp, "https://old.example", Endpoint::ModelBreaches);
        let cursor = Cursor::at(7);
        old.commit(1, &old.checkpoint(&cursor)).unwrap();
        let new = CheckpointStore::new(&cp, URL, Endpoint::ModelBreaches);
        let Loaded::OtherStream(found) = new.load().unwrap() else {
            panic!("resumed another appliance's checkpoint")
        };
        assert_eq!(found.url.as_deref(), Some("https://old.example"));
        assert_eq!(new.event_time_ms(), 0, "its time is not reported as ours");
        // Spellings of one base URL are one appliance.
        let spelled = |u: &str| stream_url(&reqwest::Url::parse(u).unwrap());
        assert_eq!(spelled("https://DT.example:443/"), spelled(URL));
        assert_eq!(
            spelled("https://dt.example/p/"),
            spelled("https://dt.example/p")
        );
        assert_ne!(spelled("https://dt.example:8443"), spelled(URL));
    }

    /// The old code could write a checkpoint a month ahead; resuming from it would skip that
    /// month. It resumes from when the file was written instead.
    #[test]
    fn a_checkpoint_dated_in_the_future_resumes_from_when_it_was_written() {
        const DAY: i64 = 86_400_000;
        let now = 1_800_000_000_000;
        let mut cp = Checkpoint::new(
            URL,
            Endpoint::ModelBreaches,
            &Cursor {
                ids_at_time: ["far".to_owned()].into(),
                ..Cursor::at(now + 30 * DAY)
            },
        );
        cp.written_at_ms = now - DAY;
        let repaired = cp.resume_at(now, now - 3_600_000).unwrap_err();
        assert_eq!(repaired.time_ms, now - DAY - FUTURE_SLACK_MS);
        assert!(repaired.ids_at_time.is_empty());
        cp.written_at_ms = 0;
        assert_eq!(
            cp.resume_at(now, now - 3_600_000).unwrap_err().time_ms,
            now - 3_600_000 - FUTURE_SLACK_MS
        );
        // A little ahead (clock skew) is resumed as it is.
        cp.time_ms = now + 60_000;
        assert_eq!(cp.resume_at(now, 0), Ok(cp.cursor()));
    }

    /// Files written before the URL was recorded still load, and are rewritten with it.
    #[test]
    fn a_version_1_checkpoint_is_adopted_and_rewritten_with_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), URL, Endpoint::AiAnalystIncidentEvents);
        std::fs::write(
            store.path(),
            r#"{ "version": 1, "endpoint": "aianalyst/incidentevents", "time_ms": 1687774142000,
                 "ids_at_time": ["u-1"], "written_at_ms": 1732327200123 }"#,
        )
        .unwrap();
        let Loaded::Adopted(cp) = store.load().unwrap() else {
            panic!("not adopted")
        };
        assert_eq!(cp.cursor().time_ms, 1_687_774_142_000);
        assert_eq!(store.event_time_ms(), 1_687_774_142_000);
        store.commit(1, &store.checkpoint(&cp.cursor())).unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(store.path()).unwrap()).unwrap();
        assert_eq!(
            (written["version"].as_u64(), written["url"].as_str()),
            (Some(u64::from(VERSION)), Some(URL))
        );
        assert!(matches!(store.load().unwrap(), Loaded::Resume(_)));
        // A version 1 file of the other endpoint is not this stream's.
        let other = CheckpointStore::new(dir.path(), URL, Endpoint::ModelBreaches);
        std::fs::copy(store.path(), dir.path().join("modelbreaches.json")).unwrap();
        assert!(matches!(other.load().unwrap(), Loaded::OtherStream(_)));
    }

    /// The appliance's side of [`look_back_properties`]: released events, answered oldest
    /// first from `from`, at most `cap` of them (0: all).
    fn answer(released: &[(i64, String)], from: i64, cap: usize) -> Vec<ApiEvent<'static>> {
        let mut page: Vec<_> = released
            .iter()
            .filter(|(t, _)| *t >= from)
            .map(|(t, id)| ev(*t, id))
            .collect();
        page.sort_by_key(|e| e.time_ms);
        if cap > 0 {
            page.truncate(cap);
        }
        page
    }

    /// One poll and its commit; returns the ids it forwarded.
    fn poll_once(
        cursor: &mut Cursor,
        released: &[(i64, String)],
        look_back: bool,
        cap: usize,
        overlap: Overlap,
    ) -> Vec<String> {
        let from_ms = if look_back {
            cursor.look_back_start(overlap.ms)
        } else {
            cursor.time_ms
        };
        let page = answer(released, from_ms, cap);
        let poll = Poll {
            from_ms,
            at_ms: i64::MAX / 4,
            overlap,
        };
        let s = select(cursor, &page, poll, &none());
        *cursor = s.next;
        s.new.iter().map(|&i| page[i].id.clone()).collect()
    }

    /// What a restart keeps: the checkpoint file's content.
    fn restarted(cursor: &Cursor) -> Cursor {
        let cp = Checkpoint::new(URL, Endpoint::ModelBreaches, cursor);
        let text = serde_json::to_vec(&cp).unwrap();
        serde_json::from_slice::<Checkpoint>(&text)
            .unwrap()
            .cursor()
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// An event dated this many ms from the cursor's time (before it when negative).
        Release(i64),
        Poll {
            look_back: bool,
            cap: usize,
        },
        Restart,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (-3_000i64..3_000).prop_map(Step::Release),
            (any::<bool>(), 0usize..4).prop_map(|(look_back, cap)| Step::Poll { look_back, cap }),
            Just(Step::Restart),
        ]
    }

    proptest::proptest! {
        /// Any mix of releases (late ones included), capped or whole answers, look-backs or
        /// not, restarts and a small id list: no event is forwarded twice, and polling whole
        /// answers at the end forwards every event from the cursor on.
        #[test]
        fn look_back_properties(
            steps in proptest::collection::vec(step(), 1..60),
            overlap_ms in 0i64..2_500,
            max_ids in 1usize..6,
        ) {
            let overlap = Overlap { ms: overlap_ms, max_ids };
            let mut cursor = Cursor::at(1_000_000);
            let mut released: Vec<(i64, String)> = Vec::new();
            let mut forwarded: Vec<String> = Vec::new();
            for step in steps {
                match step {
                    Step::Release(offset) => {
                        let id = format!("e{}", released.len());
                        released.push((cursor.time_ms + offset, id));
                    }
                    Step::Poll { look_back, cap } => forwarded
                        .extend(poll_once(&mut cursor, &released, look_back, cap, overlap)),
                    Step::Restart => cursor = restarted(&cursor),
                }
            }
            for look_back in [true, false, true, false] {
                forwarded.extend(poll_once(&mut cursor, &released, look_back, 0, overlap));
            }
            let mut once = std::collections::HashSet::new();
            for id in &forwarded {
                proptest::prop_assert!(once.insert(id), "{} forwarded twice", id);
            }
            for (t, id) in &released {
                if *t >= cursor.time_ms {
                    proptest::prop_assert!(once.contains(id), "{} at {} never forwarded", id, t);
                }
            }
        }

        /// Each event released and then looked for at once (a look-back, then a poll from the
        /// cursor, whole answers): it is forwarded exactly when it is dated no earlier than
        /// where the look-back starts, however full the id list, across restarts.
        #[test]
        fn a_late_event_is_forwarded_exactly_when_the_look_back_reaches_it(
            releases in proptest::collection::vec((-3_000i64..3_000, proptest::bool::ANY), 1..40),
            overlap_ms in 1i64..2_500,
            max_ids in 1usize..6,
        ) {
            let overlap = Overlap { ms: overlap_ms, max_ids };
            let mut cursor = Cursor::at(1_000_000);
            let mut released: Vec<(i64, String)> = Vec::new();
            for (n, (offset, restart)) in releases.into_iter().enumerate() {
                let id = format!("e{n}");
                let time = cursor.time_ms + offset;
                let reachable = time >= cursor.look_back_start(overlap.ms);
                released.push((time, id.clone()));
                let mut got = poll_once(&mut cursor, &released, true, 0, overlap);
                got.extend(poll_once(&mut cursor, &released, false, 0, overlap));
                let expected = if reachable { vec![id] } else { vec![] };
                proptest::prop_assert_eq!(got, expected, "at {}", time);
                if restart {
                    cursor = restarted(&cursor);
                }
            }
        }
    }
}
