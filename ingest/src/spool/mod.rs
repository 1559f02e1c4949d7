//! Crash-safe disk spool, one per sink, under `data_dir/spool/<sink>/`.
//!
//! Every batch is appended to a segment file (`<id>.seg`, framing in [`record`]) before it is
//! uploaded. The reader hands records out in order; acks may come back out of order (several
//! uploads run at once), so the spool tracks in-flight records and advances a durable cursor
//! (`cursor`: the highest sequence number below which everything is acked, replaced atomically
//! by rename) only over the acked prefix. A segment is deleted once the reader has passed it
//! and none of its records is in flight. After a crash, records above the cursor are replayed:
//! delivery is at-least-once.
//!
//! Replay streams record by record (one record in memory at a time). Damaged bytes — a torn
//! tail after a crash, a flipped bit — are copied to `quarantine/<segment>-<offset>.bad`
//! (within `max_quarantine_bytes`, see `quarantine`), counted, and skipped up to the next
//! record that validates.

mod quarantine;
pub mod record;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quarantine::{Kept, Quarantine};
use record::ReadOutcome;

use crate::sink::Batch;

/// `[sinks.NAME.spool]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Bound on the spool's files for this sink, bytes.
    pub max_bytes: u64,
    /// A segment is sealed and a new one started past this size. Clamped to `max_bytes / 4`
    /// so that acked segments can always be reclaimed before the bound is hit.
    pub segment_bytes: u64,
    pub when_full: WhenFull,
    pub fsync: FsyncPolicy,
    /// For `fsync = "interval"`: longest time appended data may stay unsynced.
    pub fsync_interval_ms: u64,
    /// Bound on the copies of damaged ranges under `quarantine/`, bytes: the oldest copies
    /// are deleted to make room, a range larger than the bound is copied only in part. 0: no
    /// copies (damage is still skipped and counted).
    pub max_quarantine_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            max_bytes: 1 << 30,
            segment_bytes: 32 << 20,
            when_full: WhenFull::Block,
            fsync: FsyncPolicy::Batch,
            fsync_interval_ms: 1000,
            max_quarantine_bytes: 64 << 20,
        }
    }
}

impl SpoolConfig {
    fn effective_segment_bytes(&self) -> u64 {
        self.segment_bytes.min(self.max_bytes / 4).max(4096)
    }
}

/// What `append` does when the spool is at `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// The caller waits for uploads to free space (TCP readers stop reading: backpressure).
    Block,
    /// The oldest sealed segment is deleted and its records counted as dropped.
    DropOldest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// fsync every append, every cursor update and every directory change.
    Always,
    /// fsync every appended batch (and the directory with the first batch of a new segment);
    /// the cursor is renamed without fsync (a lost cursor update only means redelivery, never
    /// loss); deleted segments reach the disk with the runtime's next timer tick.
    Batch,
    /// fsync appended data, and the directory after segments were created or deleted, at
    /// most every `fsync_interval_ms`.
    Interval,
    /// Leave it to the kernel (the directory too).
    Never,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {dir}: {op}: {source}")]
    Io {
        dir: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error("batch of {len} bytes exceeds the spool bound of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("spool is closed")]
    Closed,
    #[error("spool is full and the shutdown grace period is over")]
    FullAtShutdown,
    #[error("spool {dir} is in use by another process (lock held on {dir}/lock)")]
    Locked { dir: PathBuf },
}

/// Result of a successful [`Spool::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Appended {
    /// Records (batches) and events deleted to make room under `drop_oldest`.
    pub dropped_records: u64,
    pub dropped_events: u64,
    /// Time spent waiting for space under `block`.
    pub waited: Duration,
}

/// Identifies a handed-out record for [`Spool::ack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordId {
    pub seq: u64,
    segment: u64,
}

#[derive(Debug)]
pub struct SpooledRecord {
    pub id: RecordId,
    pub created_ms: u64,
    pub batch: Batch,
}

/// Point-in-time view for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Bytes of segment files on disk (acked records included until their segment goes).
    pub bytes: u64,
    /// Records and events not yet acked (in flight included).
    pub records: u64,
    pub events: u64,
    /// Creation time of the oldest unacked record, Unix ms (0 when empty).
    pub oldest_created_ms: u64,
    pub in_flight: u64,
    pub dropped_records: u64,
    pub dropped_events: u64,
    pub quarantined_ranges: u64,
    pub quarantined_bytes: u64,
    /// Bytes of quarantine copies on disk now.
    pub quarantine_bytes: u64,
    /// Bytes of older quarantine copies deleted to stay within `max_quarantine_bytes`.
    pub quarantine_deleted_bytes: u64,
    /// Bytes of damaged ranges not copied: beyond `max_quarantine_bytes` on their own.
    pub quarantine_not_copied_bytes: u64,
    pub appended_records: u64,
    pub acked_records: u64,
}

struct Segment {
    id: u64,
    path: PathBuf,
    /// Committed length: appends are complete up to here.
    len: u64,
    pending_records: u64,
    pending_events: u64,
    first_created_ms: u64,
    /// Damaged ranges already copied to quarantine (by start offset).
    quarantined: Vec<u64>,
}

struct InFlight {
    seq: u64,
    segment: u64,
    events: u64,
    created_ms: u64,
    done: bool,
    /// Its segment was dropped (`drop_oldest`) while it was being uploaded.
    orphaned: bool,
}

struct Reader {
    segment: u64,
    offset: u64,
    file: File,
}

struct State {
    segments: VecDeque<Segment>,
    writer: File,
    reader: Option<Reader>,
    next_seq: u64,
    next_segment_id: u64,
    acked_upto: u64,
    persisted_cursor: u64,
    in_flight: VecDeque<InFlight>,
    stats: SpoolStats,
    last_fsync: Instant,
    unsynced: bool,
    /// A segment was created or deleted since the spool directory's last fsync. Without that
    /// fsync, a power loss can drop a new segment's entry (and with it data already fsynced
    /// into it) or bring back a deleted one.
    dir_unsynced: bool,
    blocked_writers: usize,
    /// Set by [`Spool::stop_waiting`]: `block` refuses instead of waiting.
    no_waiting: bool,
    closed: bool,
    encode_buf: Vec<u8>,
    quarantine: Quarantine,
    /// Test seam: this many coming segment fsyncs fail with EIO.
    #[cfg(test)]
    fail_syncs: u32,
    /// Test seam: directory fsyncs done (power loss itself cannot be observed in a test).
    #[cfg(test)]
    dir_syncs: u64,
}

impl State {
    /// fsync of the active segment's data.
    fn sync_writer(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if self.fail_syncs > 0 {
            self.fail_syncs -= 1;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.writer.sync_data()
    }

    /// fsync of the spool directory if a segment was created or deleted since the last one.
    fn sync_dir_if_changed(&mut self, dir: &Path) -> io::Result<()> {
        if !self.dir_unsynced {
            return Ok(());
        }
        sync_dir(dir)?;
        self.dir_unsynced = false;
        #[cfg(test)]
        {
            self.dir_syncs += 1;
        }
        Ok(())
    }
}

pub struct Spool {
    dir: PathBuf,
    /// Held (flock) for the spool's lifetime: two writers on one spool would corrupt it.
    _lock: File,
    config: SpoolConfig,
    state: Mutex<State>,
    space_freed: Condvar,
    data_ready: tokio::sync::Notify,
}

const CURSOR_FILE: &str = "cursor";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, scanning existing segments record by
    /// record to rebuild counts and quarantine damage. Always starts a fresh segment for
    /// appends, so a torn tail is never written after.
    pub fn open(dir: &Path, config: SpoolConfig) -> Result<Spool, SpoolError> {
        let io_err = |op: &'static str| {
            let dir = dir.to_owned();
            move |source| SpoolError::Io {
                dir: dir.clone(),
                op,
                source,
            }
        };
        fs::create_dir_all(dir).map_err(io_err("create directory"))?;
        let lock = lock_dir(dir)
            .map_err(io_err("lock"))?
            .ok_or_else(|| SpoolError::Locked {
                dir: dir.to_owned(),
            })?;
        let acked_upto = read_cursor(dir);

        let mut ids = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err("list segments"))? {
            let entry = entry.map_err(io_err("list segments"))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(hex) = name.strip_suffix(".seg")
                && let Ok(id) = u64::from_str_radix(hex, 16)
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();

        let mut stats = SpoolStats::default();
        let (mut quarantine, kept) =
            Quarantine::open(dir, config.max_quarantine_bytes).map_err(io_err("quarantine"))?;
        count_quarantine(
            dir,
            &mut stats,
            &quarantine,
            kept,
            config.max_quarantine_bytes,
        );
        let mut segments = VecDeque::new();
        let mut max_seq = acked_upto;
        for id in &ids {
            let path = segment_path(dir, *id);
            let file = File::open(&path).map_err(io_err("open segment"))?;
            let len = file.metadata().map_err(io_err("stat segment"))?.len();
            let mut seg = Segment {
                id: *id,
                path,
                len,
                pending_records: 0,
                pending_events: 0,
                first_created_ms: 0,
                quarantined: Vec::new(),
            };
            let mut offset = 0;
            loop {
                match record::read_at(&file, offset, len).map_err(io_err("scan segment"))? {
                    ReadOutcome::End => break,
                    ReadOutcome::Record(r) => {
                        max_seq = max_seq.max(r.seq);
                        if r.seq > acked_upto {
                            seg.pending_records += 1;
                            seg.pending_events += r.events;
                            if seg.first_created_ms == 0 {
                                seg.first_created_ms = r.created_ms;
                            }
                        }
                        offset += r.len;
                    }
                    ReadOutcome::Corrupt { start, end } => {
                        quarantine_range(
                            dir,
                            &mut stats,
                            &mut quarantine,
                            (&file, *id),
                            (start, end),
                            config.max_quarantine_bytes,
                        )
                        .map_err(io_err("quarantine"))?;
                        seg.quarantined.push(start);
                        offset = end;
                    }
                }
            }
            if seg.pending_records == 0 {
                // Fully acked (or only damage, already quarantined): nothing to replay.
                fs::remove_file(&seg.path).map_err(io_err("remove acked segment"))?;
                continue;
            }
            stats.bytes += seg.len;
            stats.records += seg.pending_records;
            stats.events += seg.pending_events;
            segments.push_back(seg);
        }

        let next_segment_id = ids.last().map_or(1, |id| id + 1);
        let (writer, active) =
            create_segment(dir, next_segment_id).map_err(io_err("create segment"))?;
        segments.push_back(active);
        let state = State {
            segments,
            writer,
            reader: None,
            next_seq: max_seq + 1,
            next_segment_id: next_segment_id + 1,
            acked_upto,
            persisted_cursor: acked_upto,
            in_flight: VecDeque::new(),
            stats,
            last_fsync: Instant::now(),
            unsynced: false,
            // The active segment was just created (and acked ones maybe removed).
            dir_unsynced: true,
            blocked_writers: 0,
            no_waiting: false,
            closed: false,
            encode_buf: Vec::new(),
            quarantine,
            #[cfg(test)]
            fail_syncs: 0,
            #[cfg(test)]
            dir_syncs: 0,
        };
        let spool = Spool {
            dir: dir.to_owned(),
            _lock: lock,
            config,
            state: Mutex::new(state),
            space_freed: Condvar::new(),
            data_ready: tokio::sync::Notify::new(),
        };
        {
            let mut st = spool.lock();
            if spool.config.fsync == FsyncPolicy::Always {
                st.sync_dir_if_changed(dir)
                    .map_err(io_err("fsync directory"))?;
            }
            spool.refresh_oldest(&mut st);
        }
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &SpoolConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters possibly stale but the files intact;
        // continuing is better than poisoning every later upload.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn io_err(&self, op: &'static str) -> impl Fn(io::Error) -> SpoolError + '_ {
        move |source| SpoolError::Io {
            dir: self.dir.clone(),
            op,
            source,
        }
    }

    /// Appends a batch, applying `when_full`. Blocks (this thread) under `block`: call it from
    /// a pipeline thread, or via `spawn_blocking` from async code.
    pub fn append(&self, batch: &Batch) -> Result<Appended, SpoolError> {
        self.append_created(batch, now_ms())
    }

    /// [`Spool::append`] with the record's creation time given (Unix ms): the pipeline passes
    /// when the batch's first event was mapped, so end-to-end latency and the oldest-record age
    /// cover the time a batch spent filling, not only its time in the spool.
    pub fn append_created(&self, batch: &Batch, created_ms: u64) -> Result<Appended, SpoolError> {
        let len = record::encoded_len(batch.ndjson.len());
        let max = self
            .config
            .max_bytes
            .min(record::encoded_len(record::MAX_NDJSON_LEN as usize));
        if len > max {
            return Err(SpoolError::TooLarge { len, max });
        }
        let mut st = self.lock();
        let mut outcome = Appended::default();
        let started = Instant::now();
        loop {
            if st.closed {
                return Err(SpoolError::Closed);
            }
            if st.stats.bytes + len <= self.config.max_bytes {
                break;
            }
            // Everything acked but the active segment still holds bytes: seal and reclaim it.
            self.reclaim(&mut st, true)?;
            if st.stats.bytes + len <= self.config.max_bytes {
                break;
            }
            match self.config.when_full {
                WhenFull::Block => {
                    if st.no_waiting {
                        return Err(SpoolError::FullAtShutdown);
                    }
                    st.blocked_writers += 1;
                    st = self
                        .space_freed
                        .wait_timeout(st, Duration::from_millis(200))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    st.blocked_writers -= 1;
                }
                WhenFull::DropOldest => {
                    if st.segments.len() == 1 {
                        self.rotate(&mut st)?;
                    }
                    let (records, events) = self.drop_oldest_segment(&mut st)?;
                    outcome.dropped_records += records;
                    outcome.dropped_events += events;
                }
            }
        }
        outcome.waited = started.elapsed();

        let active_len = st.segments.back().map_or(0, |s| s.len);
        if active_len > 0 && active_len + len > self.config.effective_segment_bytes() {
            self.rotate(&mut st)?;
        }
        let seq = st.next_seq;
        // Used up even by a failed append: should its bytes outlive it (a crash before the
        // truncation below), they must not share a number with the next record.
        st.next_seq += 1;
        let mut buf = std::mem::take(&mut st.encode_buf);
        record::encode(seq, created_ms, batch.events, &batch.ndjson, &mut buf);
        // One write per record: a crash leaves at most one torn record at the tail.
        let written = st.writer.write_all(&buf);
        let buf_cap_ok = buf.capacity() <= 8 << 20;
        st.encode_buf = if buf_cap_ok { buf } else { Vec::new() };
        let durable =
            written
                .map_err(self.io_err("append"))
                .and_then(|()| match self.config.fsync {
                    // The directory too when this record is the first in a new segment: the
                    // batch is durable only once the segment's entry is.
                    FsyncPolicy::Always | FsyncPolicy::Batch => st
                        .sync_writer()
                        .map_err(self.io_err("fsync segment"))
                        .and_then(|()| {
                            st.sync_dir_if_changed(&self.dir)
                                .map_err(self.io_err("fsync directory"))
                        }),
                    FsyncPolicy::Interval => {
                        st.unsynced = true;
                        self.sync_if_due(&mut st)
                    }
                    FsyncPolicy::Never => Ok(()),
                });
        if let Err(e) = durable {
            // Refused (the caller counts it), so it must not stay in the file either.
            self.undo_append(&mut st);
            return Err(e);
        }
        let seg = st.segments.back_mut().expect("active segment");
        seg.len += len;
        seg.pending_records += 1;
        seg.pending_events += batch.events;
        if seg.first_created_ms == 0 {
            seg.first_created_ms = created_ms;
        }
        st.stats.bytes += len;
        st.stats.records += 1;
        st.stats.events += batch.events;
        st.stats.appended_records += 1;
        if st.stats.oldest_created_ms == 0 {
            st.stats.oldest_created_ms = created_ms;
        }
        drop(st);
        self.data_ready.notify_one();
        Ok(outcome)
    }

    /// Cuts a failed append's bytes (all of them when only the fsync failed) off the active
    /// segment. Left there, they would be replayed at the next start although the batch was
    /// refused, and the next record would be written after them, past the committed length
    /// where the reader stops.
    fn undo_append(&self, st: &mut State) {
        let committed = st.segments.back().map_or(0, |s| s.len);
        if let Err(e) = st.writer.set_len(committed) {
            tracing::error!(spool = %self.dir.display(), error = %e,
                "cannot cut a failed append off its segment; starting a new one");
            // The reader never passes the committed length; later appends go elsewhere.
            if let Err(e) = self.rotate(st) {
                tracing::error!(spool = %self.dir.display(), error = %e,
                    "cannot start a new segment");
            }
        }
    }

    /// The interval fsync: the active segment's data and, with it, the directory entries of
    /// segments created or deleted since the last one (no directory fsync per append or per
    /// new segment). Under `batch` the appends sync data and new segments; what is left are
    /// deletions, synced here so acked segments stay gone.
    fn sync_if_due(&self, st: &mut State) -> Result<(), SpoolError> {
        match self.config.fsync {
            FsyncPolicy::Interval => {
                if (st.unsynced || st.dir_unsynced)
                    && st.last_fsync.elapsed()
                        >= Duration::from_millis(self.config.fsync_interval_ms)
                {
                    if st.unsynced {
                        st.sync_writer().map_err(self.io_err("fsync segment"))?;
                        st.unsynced = false;
                    }
                    st.sync_dir_if_changed(&self.dir)
                        .map_err(self.io_err("fsync directory"))?;
                    st.last_fsync = Instant::now();
                }
            }
            FsyncPolicy::Batch => st
                .sync_dir_if_changed(&self.dir)
                .map_err(self.io_err("fsync directory"))?,
            FsyncPolicy::Always | FsyncPolicy::Never => {}
        }
        Ok(())
    }

    /// The runtime calls this on a timer: under `fsync = "interval"` quiet periods get synced,
    /// under `batch` deleted segments.
    pub fn flush_if_due(&self) -> Result<(), SpoolError> {
        let mut st = self.lock();
        self.sync_if_due(&mut st)
    }

    /// The next record not yet handed out, or `None` when the reader is at the end.
    /// Reads one record from disk (page cache in the common case).
    pub fn next(&self) -> Result<Option<SpooledRecord>, SpoolError> {
        let mut st = self.lock();
        loop {
            let st = &mut *st;
            if st.reader.is_none() {
                let first = st.segments.front().expect("active segment always present");
                let file = File::open(&first.path).map_err(self.io_err("open segment"))?;
                st.reader = Some(Reader {
                    segment: first.id,
                    offset: 0,
                    file,
                });
            }
            let reader = st.reader.as_mut().expect("reader");
            let Some(idx) = st.segments.iter().position(|s| s.id == reader.segment) else {
                // Its segment was dropped; restart at the oldest remaining one.
                st.reader = None;
                continue;
            };
            let is_active = idx + 1 == st.segments.len();
            let seg_len = st.segments[idx].len;
            match record::read_at(&reader.file, reader.offset, seg_len)
                .map_err(self.io_err("read segment"))?
            {
                ReadOutcome::End => {
                    if is_active {
                        return Ok(None);
                    }
                    let next = &st.segments[idx + 1];
                    let file = File::open(&next.path).map_err(self.io_err("open segment"))?;
                    st.reader = Some(Reader {
                        segment: next.id,
                        offset: 0,
                        file,
                    });
                    self.reclaim(st, false)?;
                }
                ReadOutcome::Corrupt { start, end } => {
                    let seg = &mut st.segments[idx];
                    if !seg.quarantined.contains(&start) {
                        quarantine_range(
                            &self.dir,
                            &mut st.stats,
                            &mut st.quarantine,
                            (&reader.file, seg.id),
                            (start, end),
                            self.config.max_quarantine_bytes,
                        )
                        .map_err(self.io_err("quarantine"))?;
                        seg.quarantined.push(start);
                    }
                    reader.offset = end;
                }
                ReadOutcome::Record(r) => {
                    reader.offset += r.len;
                    if r.seq <= st.acked_upto {
                        continue; // delivered before a restart; the cursor says so
                    }
                    let segment = reader.segment;
                    st.in_flight.push_back(InFlight {
                        seq: r.seq,
                        segment,
                        events: r.events,
                        created_ms: r.created_ms,
                        done: false,
                        orphaned: false,
                    });
                    st.stats.in_flight += 1;
                    return Ok(Some(SpooledRecord {
                        id: RecordId {
                            seq: r.seq,
                            segment,
                        },
                        created_ms: r.created_ms,
                        batch: Batch {
                            events: r.events,
                            ndjson: r.ndjson,
                        },
                    }));
                }
            }
        }
    }

    /// Marks a handed-out record as accepted by the sink (or dead-lettered). Advances and
    /// persists the cursor over the acked prefix and deletes segments no longer needed.
    pub fn ack(&self, id: RecordId) -> Result<(), SpoolError> {
        self.retire(self.lock(), id, true)
    }

    /// The upload of `id` ended without delivering its last `events` events (shutdown came
    /// first). Such a record normally stays on disk and is replayed at the next start; but one
    /// whose segment `drop_oldest` deleted while it was being uploaded exists nowhere else, so
    /// it is counted as dropped here, where its fate is known, and retired. Returns whether it
    /// was.
    pub fn abandon(&self, id: RecordId, events: u64) -> Result<bool, SpoolError> {
        let mut st = self.lock();
        let orphaned = st
            .in_flight
            .iter()
            .any(|e| e.seq == id.seq && !e.done && e.orphaned);
        if !orphaned {
            return Ok(false);
        }
        st.stats.dropped_records += 1;
        st.stats.dropped_events += events;
        tracing::warn!(spool = %self.dir.display(), seq = id.seq, events,
            "upload ended undelivered after its segment was dropped (when_full = drop_oldest): \
             events dropped");
        self.retire(st, id, false)?;
        Ok(true)
    }

    /// Takes a handed-out record off the in-flight list (`acked`: delivered or dead-lettered;
    /// otherwise counted as dropped by the caller), then moves the cursor and reclaims space.
    fn retire(
        &self,
        mut st: MutexGuard<'_, State>,
        id: RecordId,
        acked: bool,
    ) -> Result<(), SpoolError> {
        let Some(entry) = st.in_flight.iter_mut().find(|e| e.seq == id.seq && !e.done) else {
            return Ok(()); // unknown or already acked: idempotent
        };
        entry.done = true;
        let (events, orphaned, segment) = (entry.events, entry.orphaned, entry.segment);
        st.stats.in_flight -= 1;
        if acked {
            st.stats.acked_records += 1;
        }
        st.stats.records -= 1;
        st.stats.events -= events;
        if !orphaned && let Some(seg) = st.segments.iter_mut().find(|s| s.id == segment) {
            seg.pending_records -= 1;
            seg.pending_events -= events;
        }
        let mut advanced = false;
        while st.in_flight.front().is_some_and(|e| e.done) {
            let e = st.in_flight.pop_front().expect("front");
            st.acked_upto = st.acked_upto.max(e.seq);
            advanced = true;
        }
        if advanced {
            self.persist_cursor(&mut st)?;
        }
        let seal = st.blocked_writers > 0;
        self.reclaim(&mut st, seal)?;
        self.refresh_oldest(&mut st);
        drop(st);
        self.space_freed.notify_all();
        Ok(())
    }

    /// Ends the waits of `when_full = "block"`: from now on an append that finds the spool
    /// full fails with [`SpoolError::FullAtShutdown`] at once (appends that fit still go in).
    /// For shutdown once its grace is over, when nothing will free space in time: the pipeline
    /// threads waiting here must finish so their batches can be counted.
    pub fn stop_waiting(&self) {
        self.lock().no_waiting = true;
        self.space_freed.notify_all();
    }

    /// Wakes blocked appenders with [`SpoolError::Closed`]; files stay for the next start.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        if st.unsynced {
            let _ = st.sync_writer();
            st.unsynced = false;
        }
        if self.config.fsync != FsyncPolicy::Never {
            let _ = st.sync_dir_if_changed(&self.dir);
        }
        drop(st);
        self.space_freed.notify_all();
        self.data_ready.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub fn stats(&self) -> SpoolStats {
        self.lock().stats
    }

    /// Whether appended data awaits an fsync (`fsync = "interval"`).
    #[cfg(test)]
    pub(crate) fn unsynced(&self) -> bool {
        self.lock().unsynced
    }

    /// Directory fsyncs so far, and whether a segment change awaits one.
    #[cfg(test)]
    pub(crate) fn dir_sync_state(&self) -> (u64, bool) {
        let st = self.lock();
        (st.dir_syncs, st.dir_unsynced)
    }

    /// Makes the next interval fsync due now, as if `fsync_interval_ms` had passed.
    #[cfg(test)]
    pub(crate) fn expire_fsync_interval(&self) {
        let mut st = self.lock();
        let interval = Duration::from_millis(self.config.fsync_interval_ms);
        if let Some(past) = Instant::now().checked_sub(interval) {
            st.last_fsync = past;
        }
    }

    /// Notified after every append; the runtime waits on it when [`Spool::next`] is empty.
    pub fn data_ready(&self) -> &tokio::sync::Notify {
        &self.data_ready
    }

    fn persist_cursor(&self, st: &mut State) -> Result<(), SpoolError> {
        if st.acked_upto == st.persisted_cursor {
            return Ok(());
        }
        let durable = self.config.fsync == FsyncPolicy::Always;
        write_cursor(&self.dir, st.acked_upto, durable).map_err(self.io_err("write cursor"))?;
        st.persisted_cursor = st.acked_upto;
        Ok(())
    }

    /// Deletes sealed segments the reader has passed with nothing in flight. With
    /// `seal_drained_active`, also seals the active segment when everything in it is acked, so
    /// its bytes can go too.
    fn reclaim(&self, st: &mut State, seal_drained_active: bool) -> Result<(), SpoolError> {
        let active = st.segments.back().expect("active segment");
        let reader_at_active_end = match &st.reader {
            Some(r) => r.segment == active.id && r.offset == active.len,
            None => active.len == 0 && st.segments.len() == 1,
        };
        if seal_drained_active && active.len > 0 && reader_at_active_end && st.in_flight.is_empty()
        {
            self.rotate(st)?;
            // The reader moves on to the new active segment.
            let new_active = st.segments.back().expect("active");
            let file = File::open(&new_active.path).map_err(self.io_err("open segment"))?;
            st.reader = Some(Reader {
                segment: new_active.id,
                offset: 0,
                file,
            });
        }
        let reader_segment = st.reader.as_ref().map(|r| r.segment);
        let oldest_in_flight = st.in_flight.front().map(|e| e.segment);
        let mut removed = false;
        while st.segments.len() > 1 {
            let front = st.segments.front().expect("segment");
            let passed = reader_segment.is_some_and(|r| r > front.id);
            let none_in_flight = oldest_in_flight.is_none_or(|s| s > front.id);
            if !(passed && none_in_flight) {
                break;
            }
            let seg = st.segments.pop_front().expect("segment");
            fs::remove_file(&seg.path).map_err(self.io_err("remove segment"))?;
            st.dir_unsynced = true;
            st.stats.bytes -= seg.len;
            removed = true;
        }
        if removed && self.config.fsync == FsyncPolicy::Always {
            st.sync_dir_if_changed(&self.dir)
                .map_err(self.io_err("fsync directory"))?;
        }
        Ok(())
    }

    fn rotate(&self, st: &mut State) -> Result<(), SpoolError> {
        if st.unsynced {
            st.sync_writer().map_err(self.io_err("fsync segment"))?;
            st.unsynced = false;
        }
        let id = st.next_segment_id;
        let (writer, seg) = create_segment(&self.dir, id).map_err(self.io_err("create segment"))?;
        st.next_segment_id += 1;
        st.writer = writer;
        st.segments.push_back(seg);
        st.dir_unsynced = true;
        if self.config.fsync == FsyncPolicy::Always {
            st.sync_dir_if_changed(&self.dir)
                .map_err(self.io_err("fsync directory"))?;
        }
        Ok(())
    }

    /// Deletes the oldest sealed segment; returns the records/events lost with it. Records
    /// being uploaded are not counted here: their upload may still succeed, and
    /// [`Spool::abandon`] counts them if it ends undelivered.
    fn drop_oldest_segment(&self, st: &mut State) -> Result<(u64, u64), SpoolError> {
        let seg = st.segments.pop_front().expect("a sealed segment");
        fs::remove_file(&seg.path).map_err(self.io_err("remove segment"))?;
        // Synced with the next append's or interval's fsync.
        st.dir_unsynced = true;
        let mut records = seg.pending_records;
        let mut events = seg.pending_events;
        let mut uploading = 0;
        for e in st
            .in_flight
            .iter_mut()
            .filter(|e| e.segment == seg.id && !e.done)
        {
            e.orphaned = true;
            records -= 1;
            events -= e.events;
            uploading += 1;
        }
        st.stats.bytes -= seg.len;
        st.stats.records -= records;
        st.stats.events -= events;
        st.stats.dropped_records += records;
        st.stats.dropped_events += events;
        if st.reader.as_ref().is_some_and(|r| r.segment == seg.id) {
            st.reader = None;
        }
        tracing::warn!(spool = %self.dir.display(), records, events, uploading,
            "spool full: dropped oldest segment (when_full = drop_oldest; records being \
             uploaded count as dropped only if shutdown ends their upload undelivered)");
        self.refresh_oldest(st);
        Ok((records, events))
    }

    fn refresh_oldest(&self, st: &mut State) {
        let in_flight = st
            .in_flight
            .iter()
            .find(|e| !e.done && !e.orphaned)
            .map(|e| e.created_ms);
        let queued = st
            .segments
            .iter()
            .find(|s| s.pending_records > 0)
            .map(|s| s.first_created_ms);
        st.stats.oldest_created_ms = match (in_flight, queued) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(0),
        };
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if st.unsynced {
            let _ = st.sync_writer();
        }
        if self.config.fsync != FsyncPolicy::Never {
            let _ = st.sync_dir_if_changed(&self.dir);
        }
    }
}

/// Creates segment `id`; the caller marks the directory for its next fsync.
fn create_segment(dir: &Path, id: u64) -> io::Result<(File, Segment)> {
    let path = segment_path(dir, id);
    let writer = OpenOptions::new().create(true).append(true).open(&path)?;
    // A stale file of the same id can only come from an older, fully acked run.
    writer.set_len(0)?;
    let seg = Segment {
        id,
        path,
        len: 0,
        pending_records: 0,
        pending_events: 0,
        first_created_ms: 0,
        quarantined: Vec::new(),
    };
    Ok((writer, seg))
}

/// Takes an exclusive `flock` on `dir/lock`. Waits up to 5 s: a previous owner in this
/// process (an aborted runtime) may still be releasing it. `None` = held by someone else.
fn lock_dir(dir: &Path) -> io::Result<Option<File>> {
    use std::os::fd::AsRawFd;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(file));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err);
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Counts (and logs) what keeping the quarantine within its bound cost.
/// Copies a damaged range of `segment` to the quarantine, logs it and counts it: the same at
/// start-up's scan and when a reader meets damage later.
fn quarantine_range(
    dir: &Path,
    stats: &mut SpoolStats,
    quarantine: &mut Quarantine,
    (file, segment): (&File, u64),
    (start, end): (u64, u64),
    max_quarantine_bytes: u64,
) -> io::Result<()> {
    let kept = quarantine.keep(file, segment, start, end)?;
    tracing::warn!(spool = %dir.display(), segment, start, end, "damaged spool bytes quarantined");
    stats.quarantined_ranges += 1;
    stats.quarantined_bytes += end - start;
    count_quarantine(dir, stats, quarantine, kept, max_quarantine_bytes);
    Ok(())
}

fn count_quarantine(
    dir: &Path,
    stats: &mut SpoolStats,
    quarantine: &Quarantine,
    kept: Kept,
    max_quarantine_bytes: u64,
) {
    stats.quarantine_bytes = quarantine.bytes();
    stats.quarantine_deleted_bytes += kept.deleted;
    stats.quarantine_not_copied_bytes += kept.not_copied;
    if kept.deleted > 0 {
        tracing::warn!(spool = %dir.display(), files = kept.deleted_files, bytes = kept.deleted,
            max_quarantine_bytes, "quarantine full: deleted its oldest copies of damaged ranges");
    }
    if kept.not_copied > 0 {
        tracing::warn!(spool = %dir.display(), copied = kept.copied, not_copied = kept.not_copied,
            max_quarantine_bytes,
            "damaged range larger than the quarantine bound: only its start was copied");
    }
}

/// `cursor` = acked_upto u64 LE | crc32 of those 8 bytes. Unreadable → 0 (replay everything:
/// duplicates, never loss).
fn read_cursor(dir: &Path) -> u64 {
    let Ok(bytes) = fs::read(dir.join(CURSOR_FILE)) else {
        return 0;
    };
    if bytes.len() != 12 {
        tracing::warn!(spool = %dir.display(), "spool cursor unreadable; replaying everything");
        return 0;
    }
    let value: [u8; 8] = bytes[..8].try_into().expect("8 bytes");
    let crc = u32::from_le_bytes(bytes[8..].try_into().expect("4 bytes"));
    if crc32fast::hash(&value) != crc {
        tracing::warn!(spool = %dir.display(), "spool cursor checksum mismatch; replaying everything");
        return 0;
    }
    u64::from_le_bytes(value)
}

fn write_cursor(dir: &Path, acked_upto: u64, durable: bool) -> io::Result<()> {
    let value = acked_upto.to_le_bytes();
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&value);
    bytes[8..].copy_from_slice(&crc32fast::hash(&value).to_le_bytes());
    let tmp = dir.join("cursor.tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        if durable {
            f.sync_all()?;
        }
    }
    fs::rename(&tmp, dir.join(CURSOR_FILE))?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}
