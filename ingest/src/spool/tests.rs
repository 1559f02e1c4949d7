use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn batch(tag: u64, len: usize) -> Batch {
    let mut ndjson = format!("{{\"tag\":{tag},\"pad\":\"").into_bytes();
    ndjson.extend(std::iter::repeat_n(b'x', len));
    ndjson.extend_from_slice(b"\"}\n");
    Batch { events: 1, ndjson }
}

fn tag_of(b: &Batch) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(b.ndjson.trim_ascii_end()).unwrap();
    v["tag"].as_u64().unwrap()
}

fn config(max_bytes: u64, segment_bytes: u64, when_full: WhenFull) -> SpoolConfig {
    SpoolConfig {
        max_bytes,
        segment_bytes,
        when_full,
        fsync: FsyncPolicy::Never,
        fsync_interval_ms: 10,
        max_quarantine_bytes: 64 << 20,
    }
}

fn drain(spool: &Spool) -> Vec<u64> {
    let mut tags = Vec::new();
    while let Some(r) = spool.next().unwrap() {
        tags.push(tag_of(&r.batch));
        spool.ack(r.id).unwrap();
    }
    tags
}

/// A spool in `dir` holding `records` batches of `len` padding bytes (tags `0..records`), closed
/// again: the length of one record and the segment that holds them all, to damage.
fn closed_spool_of(dir: &Path, cfg: &SpoolConfig, records: u64, len: usize) -> (u64, PathBuf) {
    let spool = Spool::open(dir, cfg.clone()).unwrap();
    for t in 0..records {
        spool.append(&batch(t, len)).unwrap();
    }
    let record_len = spool.stats().bytes / records;
    drop(spool);
    let mut segments = segment_files(dir);
    assert_eq!(segments.len(), 1, "{segments:?}");
    (record_len, segments.pop().unwrap())
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn replay_after_restart_resumes_after_the_acked_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 64 << 10, WhenFull::Block);
    {
        let spool = Spool::open(dir.path(), cfg.clone()).unwrap();
        for t in 1..=5 {
            spool.append(&batch(t, 10)).unwrap();
        }
        let r1 = spool.next().unwrap().unwrap();
        let r2 = spool.next().unwrap().unwrap();
        let r3 = spool.next().unwrap().unwrap();
        // Out of order: 3 acked but 2 not, so the cursor stops after 1.
        spool.ack(r1.id).unwrap();
        spool.ack(r3.id).unwrap();
        let s = spool.stats();
        assert_eq!((s.records, s.events, s.in_flight), (3, 3, 1));
        let _ = r2;
    }
    let spool = Spool::open(dir.path(), cfg.clone()).unwrap();
    assert_eq!(spool.stats().records, 4);
    assert_eq!(drain(&spool), vec![2, 3, 4, 5]);
    let s = spool.stats();
    assert_eq!((s.records, s.events, s.oldest_created_ms), (0, 0, 0));
    drop(spool);
    let spool = Spool::open(dir.path(), cfg).unwrap();
    assert_eq!(drain(&spool), Vec::<u64>::new());
    // Fully acked segments are gone; only the fresh active one remains.
    assert_eq!(segment_files(dir.path()).len(), 1);
}

#[test]
fn acked_segments_are_deleted_and_bytes_go_down() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), config(1 << 20, 8 << 10, WhenFull::Block)).unwrap();
    for t in 0..40 {
        spool.append(&batch(t, 1000)).unwrap();
    }
    assert!(segment_files(dir.path()).len() >= 4);
    let before = spool.stats().bytes;
    assert!(before > 40_000);
    assert_eq!(drain(&spool), (0..40).collect::<Vec<_>>());
    assert!(spool.stats().bytes < 8 << 10, "{:?}", spool.stats());
    assert!(segment_files(dir.path()).len() <= 2);
}

#[test]
fn truncated_tail_and_bit_flip_are_quarantined_and_the_rest_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 1 << 20, WhenFull::Block);
    let (record_len, seg) = closed_spool_of(dir.path(), &cfg, 10, 100);
    let mut bytes = fs::read(&seg).unwrap();
    // Flip a bit inside record 3's payload, and tear the last record in half.
    bytes[(3 * record_len + 50) as usize] ^= 0x04;
    bytes.truncate((9 * record_len + record_len / 2) as usize);
    fs::write(&seg, &bytes).unwrap();

    let spool = Spool::open(dir.path(), cfg).unwrap();
    let s = spool.stats();
    assert_eq!(s.quarantined_ranges, 2, "{s:?}");
    assert_eq!(s.quarantined_bytes, record_len + record_len / 2);
    assert_eq!(s.records, 8);
    assert_eq!(drain(&spool), vec![0, 1, 2, 4, 5, 6, 7, 8]);
    let mut quarantined: Vec<_> = fs::read_dir(dir.path().join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    quarantined.sort();
    assert_eq!(quarantined.len(), 2);
    let sizes: Vec<u64> = quarantined
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .collect();
    assert!(
        sizes.contains(&record_len) && sizes.contains(&(record_len / 2)),
        "{sizes:?}"
    );
    // Appends after recovery go to a fresh segment and are delivered too.
    spool.append(&batch(99, 10)).unwrap();
    assert_eq!(drain(&spool), vec![99]);
}

#[test]
fn a_corrupted_length_field_does_not_swallow_the_next_records() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 1 << 20, WhenFull::Block);
    {
        let spool = Spool::open(dir.path(), cfg.clone()).unwrap();
        for t in 0..4 {
            spool.append(&batch(t, 100)).unwrap();
        }
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    bytes[5] = 0x7f; // body_len of record 0 now claims far more than the file holds
    fs::write(&seg, &bytes).unwrap();
    let spool = Spool::open(dir.path(), cfg).unwrap();
    assert_eq!(drain(&spool), vec![1, 2, 3]);
    assert_eq!(spool.stats().quarantined_ranges, 1);
}

#[test]
fn a_garbage_only_segment_is_quarantined_whole() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(format!("{:016x}.seg", 7)), vec![0xAB; 5000]).unwrap();
    let spool = Spool::open(dir.path(), config(1 << 20, 1 << 20, WhenFull::Block)).unwrap();
    assert_eq!(spool.stats().quarantined_bytes, 5000);
    assert_eq!(drain(&spool), Vec::<u64>::new());
    spool.append(&batch(1, 1)).unwrap();
    assert_eq!(drain(&spool), vec![1]);
}

#[test]
fn drop_oldest_counts_exactly_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), config(64 << 10, 16 << 10, WhenFull::DropOldest)).unwrap();
    let mut dropped = 0;
    for t in 0..200 {
        let a = spool.append(&batch(t, 900)).unwrap();
        dropped += a.dropped_events;
    }
    let s = spool.stats();
    assert!(s.bytes <= 64 << 10, "{s:?}");
    assert!(dropped > 0);
    assert_eq!(s.dropped_events, dropped);
    let delivered = drain(&spool);
    assert_eq!(delivered.len() as u64 + dropped, 200);
    // What survives is the newest, in order.
    assert_eq!(*delivered.last().unwrap(), 199);
    assert!(delivered.windows(2).all(|w| w[0] + 1 == w[1]));
}

#[test]
fn drop_oldest_does_not_count_records_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), config(32 << 10, 8 << 10, WhenFull::DropOldest)).unwrap();
    spool.append(&batch(0, 900)).unwrap();
    let first = spool.next().unwrap().unwrap();
    let mut dropped = 0;
    for t in 1..100 {
        dropped += spool.append(&batch(t, 900)).unwrap().dropped_events;
    }
    // The in-flight record's upload succeeds after its segment was dropped.
    spool.ack(first.id).unwrap();
    let delivered = drain(&spool);
    assert_eq!(1 + delivered.len() as u64 + dropped, 100);
    assert_eq!(spool.stats().records, 0);
}

/// An upload that ends undelivered (shutdown): its record stays for the next start, unless
/// `drop_oldest` deleted its segment meanwhile; then it is counted as dropped, once.
#[test]
fn abandon_counts_only_records_whose_segment_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(32 << 10, 8 << 10, WhenFull::DropOldest);
    let spool = Spool::open(dir.path(), cfg.clone()).unwrap();
    spool.append(&batch(0, 900)).unwrap();
    let orphan = spool.next().unwrap().unwrap();
    let mut dropped = 0;
    for t in 1..100 {
        dropped += spool.append(&batch(t, 900)).unwrap().dropped_events;
    }
    let kept = spool.next().unwrap().unwrap();
    assert!(!spool.abandon(kept.id, 1).unwrap());
    assert!(spool.abandon(orphan.id, 1).unwrap());
    assert!(!spool.abandon(orphan.id, 1).unwrap(), "counted once");
    let s = spool.stats();
    assert_eq!(s.dropped_events, dropped + 1);
    assert_eq!((s.in_flight, s.records), (1, 100 - dropped - 1));
    drop(spool);
    let spool = Spool::open(dir.path(), cfg).unwrap();
    let replayed = drain(&spool);
    assert_eq!(replayed[0], tag_of(&kept.batch));
    assert_eq!(replayed.len() as u64 + dropped + 1, 100);
}

#[test]
fn block_waits_for_acks_then_proceeds() {
    let dir = tempfile::tempdir().unwrap();
    let spool =
        Arc::new(Spool::open(dir.path(), config(32 << 10, 8 << 10, WhenFull::Block)).unwrap());
    let writer = {
        let spool = spool.clone();
        std::thread::spawn(move || {
            let mut waited = Duration::ZERO;
            for t in 0..100 {
                waited += spool.append(&batch(t, 900)).unwrap().waited;
            }
            waited
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // The bound holds while the writer is stuck.
    let s = spool.stats();
    assert!(s.bytes <= 32 << 10 && s.records < 100, "{s:?}");
    let mut delivered = Vec::new();
    while delivered.len() < 100 {
        match spool.next().unwrap() {
            Some(r) => {
                delivered.push(tag_of(&r.batch));
                spool.ack(r.id).unwrap();
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    let waited = writer.join().unwrap();
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert_eq!(delivered, (0..100).collect::<Vec<_>>());
    assert_eq!(spool.stats().dropped_events, 0);
}

/// From another thread, appends up to 100 batches of 900 bytes until one is refused: its
/// index and the error.
fn append_until_refused(
    spool: &Arc<Spool>,
) -> std::thread::JoinHandle<Option<(usize, SpoolError)>> {
    let spool = spool.clone();
    std::thread::spawn(move || {
        (0..100).find_map(|t| spool.append(&batch(t, 900)).err().map(|e| (t as usize, e)))
    })
}

#[test]
fn close_releases_a_blocked_writer() {
    let dir = tempfile::tempdir().unwrap();
    let spool =
        Arc::new(Spool::open(dir.path(), config(16 << 10, 4 << 10, WhenFull::Block)).unwrap());
    let writer = append_until_refused(&spool);
    std::thread::sleep(Duration::from_millis(100));
    spool.close();
    assert!(matches!(
        writer.join().unwrap(),
        Some((_, SpoolError::Closed))
    ));
}

/// Shutdown's grace over: a writer waiting for room is refused, and so is every later batch
/// that does not fit, while the spool stays open for batches that do.
#[test]
fn stop_waiting_refuses_blocked_writers_but_takes_what_fits() {
    let dir = tempfile::tempdir().unwrap();
    let spool =
        Arc::new(Spool::open(dir.path(), config(16 << 10, 4 << 10, WhenFull::Block)).unwrap());
    let writer = append_until_refused(&spool);
    std::thread::sleep(Duration::from_millis(100));
    spool.stop_waiting();
    let (refused_at, _) = writer.join().unwrap().expect("a refusal");
    assert!(matches!(
        spool.append(&batch(100, 900)),
        Err(SpoolError::FullAtShutdown)
    ));
    // Delivering the first segment's records frees room.
    for _ in 0..5 {
        let r = spool.next().unwrap().unwrap();
        spool.ack(r.id).unwrap();
    }
    spool.append(&batch(101, 900)).unwrap();
    assert_eq!(spool.stats().records, refused_at as u64 - 5 + 1);
}

#[test]
fn a_spool_in_use_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 1 << 20, WhenFull::Block);
    let first = Spool::open(dir.path(), cfg.clone()).unwrap();
    let started = std::time::Instant::now();
    let err = Spool::open(dir.path(), cfg.clone()).err().unwrap();
    assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(4));
    drop(first);
    Spool::open(dir.path(), cfg).unwrap();
}

#[test]
fn oversize_batch_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), config(16 << 10, 4 << 10, WhenFull::Block)).unwrap();
    let err = spool.append(&batch(1, 20_000)).unwrap_err();
    assert!(matches!(err, SpoolError::TooLarge { .. }), "{err}");
}

#[test]
fn corrupt_cursor_means_replay_not_loss() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 1 << 20, WhenFull::Block);
    {
        let spool = Spool::open(dir.path(), cfg.clone()).unwrap();
        for t in 0..3 {
            spool.append(&batch(t, 10)).unwrap();
        }
        let r = spool.next().unwrap().unwrap();
        spool.ack(r.id).unwrap();
    }
    fs::write(dir.path().join(CURSOR_FILE), b"garbage").unwrap();
    let spool = Spool::open(dir.path(), cfg).unwrap();
    assert_eq!(drain(&spool), vec![0, 1, 2]);
}

/// A batch whose fsync fails is refused and leaves no trace: the segment's bytes, the counts
/// and the sequence numbers stay as if it had never been offered, so it is neither replayed
/// (it was counted as lost) nor able to shadow the record appended after it.
#[test]
fn a_failed_fsync_refuses_the_batch_and_keeps_the_segment_consistent() {
    for fsync in [FsyncPolicy::Batch, FsyncPolicy::Interval] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            fsync,
            // Every append is due for its sync.
            fsync_interval_ms: 0,
            ..config(1 << 20, 1 << 20, WhenFull::Block)
        };
        {
            let spool = Spool::open(dir.path(), cfg.clone()).unwrap();
            spool.append(&batch(1, 100)).unwrap();
            spool.lock().fail_syncs = 1;
            let err = spool.append(&batch(2, 100)).unwrap_err();
            assert!(matches!(err, SpoolError::Io { .. }), "{fsync:?}: {err}");
            spool.append(&batch(3, 100)).unwrap();
            let s = spool.stats();
            assert_eq!((s.records, s.appended_records), (2, 2), "{fsync:?}");
            let on_disk: u64 = segment_files(dir.path())
                .iter()
                .map(|p| fs::metadata(p).unwrap().len())
                .sum();
            assert_eq!(s.bytes, on_disk, "{fsync:?}");
        }
        let spool = Spool::open(dir.path(), cfg).unwrap();
        assert_eq!(drain(&spool), vec![1, 3], "{fsync:?}");
        assert_eq!(spool.stats().quarantined_ranges, 0, "{fsync:?}");
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    Next,
    /// Ack the n-th (mod len) record in flight.
    Ack(usize),
    /// Drop the spool without closing (as a crash would) and reopen it.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..3000).prop_map(Op::Append),
        3 => Just(Op::Next),
        3 => (0usize..8).prop_map(Op::Ack),
        1 => Just(Op::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Model: records in append order; a record is retired once it and every record handed
    /// out before it are acked (the cursor). After a crash exactly the unretired records are
    /// replayed, in order; without a crash nothing is handed out twice.
    #[test]
    fn spool_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(1 << 30, 8 << 10, WhenFull::Block);
        let mut spool = Spool::open(dir.path(), cfg.clone()).unwrap();
        let mut next_tag = 0u64;
        // Unretired records in append order: (tag, handed out in this session, acked).
        let mut model: VecDeque<(u64, bool, bool)> = VecDeque::new();
        let mut in_flight: Vec<(u64, RecordId)> = Vec::new();
        for op in ops {
            match op {
                Op::Append(len) => {
                    spool.append(&batch(next_tag, len)).unwrap();
                    model.push_back((next_tag, false, false));
                    next_tag += 1;
                }
                Op::Next => {
                    let expected = model.iter().find(|(_, out, _)| !out).map(|(t, _, _)| *t);
                    let got = spool.next().unwrap();
                    prop_assert_eq!(got.as_ref().map(|r| tag_of(&r.batch)), expected);
                    if let Some(r) = got {
                        let tag = tag_of(&r.batch);
                        model.iter_mut().find(|(t, _, _)| *t == tag).unwrap().1 = true;
                        in_flight.push((tag, r.id));
                    }
                }
                Op::Ack(n) => {
                    if !in_flight.is_empty() {
                        let (tag, id) = in_flight.remove(n % in_flight.len());
                        spool.ack(id).unwrap();
                        model.iter_mut().find(|(t, _, _)| *t == tag).unwrap().2 = true;
                        while model.front().is_some_and(|(_, _, acked)| *acked) {
                            model.pop_front();
                        }
                    }
                }
                Op::Crash => {
                    drop(spool);
                    spool = Spool::open(dir.path(), cfg.clone()).unwrap();
                    in_flight.clear();
                    for m in model.iter_mut() {
                        *m = (m.0, false, false);
                    }
                }
            }
            let s = spool.stats();
            let unacked = model.iter().filter(|(_, _, acked)| !acked).count() as u64;
            prop_assert_eq!(s.records, unacked);
            prop_assert_eq!(s.events, unacked);
            prop_assert_eq!(s.in_flight, in_flight.len() as u64);
        }
        drop(spool);
        let spool = Spool::open(dir.path(), cfg).unwrap();
        let expected: Vec<u64> = model.iter().map(|(t, _, _)| *t).collect();
        prop_assert_eq!(drain(&spool), expected);
        prop_assert_eq!(spool.stats().quarantined_ranges, 0);
    }

    /// Any single truncation or bit flip anywhere in a segment: no panic, every record not
    /// touched by the damage is still delivered, damage is counted.
    #[test]
    fn damage_anywhere_loses_only_the_damaged_record(
        n in 2usize..12, pos_frac in 0.0f64..1.0, flip in any::<bool>(), bit in 0u8..8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(1 << 30, 1 << 30, WhenFull::Block);
        let (record_len, seg) = closed_spool_of(dir.path(), &cfg, n as u64, 200);
        let record_len = record_len as usize;
        let mut bytes = fs::read(&seg).unwrap();
        let pos = ((bytes.len() - 1) as f64 * pos_frac) as usize;
        let damaged = pos / record_len;
        if flip {
            bytes[pos] ^= 1 << bit;
        } else {
            bytes.truncate(pos);
        }
        fs::write(&seg, &bytes).unwrap();
        let spool = Spool::open(dir.path(), cfg).unwrap();
        let got = drain(&spool);
        let expected: Vec<u64> = if flip {
            (0..n as u64).filter(|&t| t != damaged as u64).collect()
        } else {
            (0..damaged as u64).collect()
        };
        prop_assert_eq!(got, expected);
        let s = spool.stats();
        let torn = !flip && !pos.is_multiple_of(record_len);
        prop_assert_eq!(s.quarantined_ranges, u64::from(flip || torn));
    }
}

/// Appends until the spool has rolled over to a new segment at least once.
fn append_until_rolled(spool: &Spool, dir: &Path) {
    let before = segment_files(dir).len();
    for t in 0..100 {
        spool.append(&batch(t, 1000)).unwrap();
        if segment_files(dir).len() > before {
            return;
        }
    }
    panic!("no new segment after 100 appends");
}

/// Under `interval` a new segment's directory entry reaches the disk with the interval's
/// fsync of its data, not with each append: before, only `always` synced the directory, so a
/// power loss could take a whole segment whose data had been synced.
#[test]
fn the_interval_fsync_syncs_the_directory_after_a_new_or_deleted_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        fsync: FsyncPolicy::Interval,
        // Never due on its own during the test: only `expire_fsync_interval` makes it due.
        fsync_interval_ms: 3_600_000,
        ..config(1 << 20, 8 << 10, WhenFull::Block)
    };
    let spool = Spool::open(dir.path(), cfg).unwrap();
    append_until_rolled(&spool, dir.path());
    // Nothing synchronous per append or per new segment.
    assert_eq!(spool.dir_sync_state(), (0, true));
    spool.flush_if_due().unwrap();
    assert_eq!(spool.dir_sync_state(), (0, true), "not due yet");

    spool.expire_fsync_interval();
    spool.flush_if_due().unwrap();
    assert_eq!(spool.dir_sync_state(), (1, false));
    assert!(!spool.unsynced());

    // Acked segments are deleted: the next interval fsync syncs that too, with no data to sync.
    drain(&spool);
    assert!(segment_files(dir.path()).len() <= 2);
    assert_eq!(spool.dir_sync_state(), (1, true));
    spool.expire_fsync_interval();
    spool.flush_if_due().unwrap();
    assert_eq!(spool.dir_sync_state(), (2, false));
}

/// Under `batch` (the default) the append that writes the first record of a new segment
/// syncs the directory before it returns; later appends to the same segment do not.
#[test]
fn under_batch_the_first_append_to_a_new_segment_syncs_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        fsync: FsyncPolicy::Batch,
        ..config(1 << 20, 8 << 10, WhenFull::Block)
    };
    let spool = Spool::open(dir.path(), cfg).unwrap();
    spool.append(&batch(0, 1000)).unwrap();
    assert_eq!(
        spool.dir_sync_state(),
        (1, false),
        "the active segment's entry"
    );
    spool.append(&batch(1, 1000)).unwrap();
    assert_eq!(spool.dir_sync_state(), (1, false), "not once per append");
    append_until_rolled(&spool, dir.path());
    assert_eq!(
        spool.dir_sync_state(),
        (2, false),
        "the new segment's entry"
    );
    // Deletions wait for the runtime's timer.
    drain(&spool);
    assert_eq!(spool.dir_sync_state(), (2, true));
    spool.flush_if_due().unwrap();
    assert_eq!(spool.dir_sync_state(), (3, false));
}

fn quarantine_files(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<_> = match fs::read_dir(dir.join("quarantine")) {
        Ok(entries) => entries
            .map(|e| e.unwrap())
            .map(|e| {
                let len = e.metadata().unwrap().len();
                (e.file_name().into_string().unwrap(), len)
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// A copy an earlier run left, `age_s` seconds old.
fn old_quarantine_file(dir: &Path, name: &str, len: usize, age_s: u64) {
    let qdir = dir.join("quarantine");
    fs::create_dir_all(&qdir).unwrap();
    let file = File::create(qdir.join(name)).unwrap();
    file.write_all_at(&vec![0xCD; len], 0).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(age_s))
        .unwrap();
}

fn garbage_segment(dir: &Path, id: u64, len: usize) {
    fs::write(dir.join(format!("{id:016x}.seg")), vec![0xAB; len]).unwrap();
}

/// Copies of damaged ranges are bounded by `max_quarantine_bytes`, copies from earlier runs
/// included: the oldest go first (before, every damaged range was copied without limit, so
/// a failing disk could fill the disk with copies).
#[test]
fn the_quarantine_stays_within_its_bound_deleting_the_oldest_copies() {
    let dir = tempfile::tempdir().unwrap();
    old_quarantine_file(dir.path(), "0000000000000001-0.bad", 3000, 300);
    old_quarantine_file(dir.path(), "0000000000000002-0.bad", 3000, 200);
    garbage_segment(dir.path(), 7, 5000);
    let cfg = SpoolConfig {
        max_quarantine_bytes: 8000,
        ..config(1 << 20, 1 << 20, WhenFull::Block)
    };
    let spool = Spool::open(dir.path(), cfg.clone()).unwrap();
    let s = spool.stats();
    assert_eq!(s.quarantined_bytes, 5000);
    assert_eq!(
        (s.quarantine_bytes, s.quarantine_deleted_bytes),
        (8000, 3000)
    );
    assert_eq!(
        quarantine_files(dir.path()),
        [
            ("0000000000000002-0.bad".to_string(), 3000),
            ("0000000000000007-0.bad".to_string(), 5000),
        ]
    );
    drop(spool);

    // A bound lowered since: enforced at start-up, oldest first.
    let spool = Spool::open(
        dir.path(),
        SpoolConfig {
            max_quarantine_bytes: 6000,
            ..cfg
        },
    )
    .unwrap();
    let s = spool.stats();
    assert_eq!(
        (s.quarantine_bytes, s.quarantine_deleted_bytes),
        (5000, 3000)
    );
    assert_eq!(
        quarantine_files(dir.path()),
        [("0000000000000007-0.bad".to_string(), 5000)]
    );
}

/// A damaged range larger than the whole bound is copied only as far as it fits; with a bound
/// of 0 nothing is copied. Either way the damage is skipped and counted as before.
#[test]
fn a_damaged_range_larger_than_the_quarantine_bound_is_copied_in_part() {
    for (bound, copied) in [(2000, 2000), (0, 0)] {
        let dir = tempfile::tempdir().unwrap();
        old_quarantine_file(dir.path(), "0000000000000001-0.bad", 1000, 300);
        garbage_segment(dir.path(), 7, 5000);
        let cfg = SpoolConfig {
            max_quarantine_bytes: bound,
            ..config(1 << 20, 1 << 20, WhenFull::Block)
        };
        let spool = Spool::open(dir.path(), cfg).unwrap();
        let s = spool.stats();
        assert_eq!(s.quarantined_bytes, 5000, "{bound}");
        assert_eq!(
            (
                s.quarantine_bytes,
                s.quarantine_deleted_bytes,
                s.quarantine_not_copied_bytes
            ),
            (copied, 1000, 5000 - copied),
            "{bound}"
        );
        let expected: Vec<(String, u64)> = if copied > 0 {
            vec![("0000000000000007-0.bad".into(), copied)]
        } else {
            Vec::new()
        };
        assert_eq!(quarantine_files(dir.path()), expected, "{bound}");
        assert_eq!(drain(&spool), Vec::<u64>::new());
    }
}

/// A segment with damage and records still to deliver is scanned again at every start: its
/// copy is replaced, neither counted twice toward the bound (which would delete it to make
/// room for itself) nor as deleted.
#[test]
fn a_range_quarantined_again_after_a_restart_replaces_its_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(1 << 20, 1 << 20, WhenFull::Block);
    let (record_len, seg) = closed_spool_of(dir.path(), &cfg, 4, 100);
    let mut bytes = fs::read(&seg).unwrap();
    bytes[60] ^= 0x04; // inside record 0: the damaged range is that record
    fs::write(&seg, &bytes).unwrap();
    old_quarantine_file(dir.path(), "00000000000000aa-0.bad", 300, 300);
    // Room for the old copy, or the new one, not for both.
    cfg.max_quarantine_bytes = record_len + 200;
    let first = Spool::open(dir.path(), cfg.clone()).unwrap().stats();
    assert_eq!(first.quarantined_ranges, 1);
    assert_eq!(
        (first.quarantine_bytes, first.quarantine_deleted_bytes),
        (record_len, 300)
    );
    let again = Spool::open(dir.path(), cfg).unwrap().stats();
    assert_eq!(again.quarantined_ranges, 1);
    assert_eq!(
        (again.quarantine_bytes, again.quarantine_deleted_bytes),
        (record_len, 0)
    );
    let name = format!("{:016x}-0.bad", seg_id(&seg));
    assert_eq!(quarantine_files(dir.path()), [(name, record_len)]);
}

fn seg_id(path: &Path) -> u64 {
    let stem = path.file_stem().unwrap().to_str().unwrap();
    u64::from_str_radix(stem, 16).unwrap()
}
