use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use super::*;

fn batch(source: u16, seed: usize, frames: usize) -> FrameBatch {
    let mut b = FrameBatch {
        source,
        received_at: Some(Timestamp {
            unix_nanos: 1_700_000_000_123_456_789 + seed as i64,
            offset_secs: seed.is_multiple_of(2).then_some(-3600),
        }),
        ..FrameBatch::default()
    };
    for i in 0..frames {
        let peer = match (seed + i) % 3 {
            0 => None,
            1 => Some(SocketAddr::from((
                Ipv4Addr::new(10, 0, (i % 256) as u8, 7),
                514,
            ))),
            _ => Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, i as u16),
                40_000 + i as u16,
                0x0001_2345,
                3,
            ))),
        };
        // Empty frames too: the frame table, not the bytes, delimits them.
        let text = format!(
            "<13>batch {seed} frame {i} {}",
            "x".repeat((seed * 7 + i) % 300)
        );
        let bytes = if i % 17 == 5 {
            &b""[..]
        } else {
            text.as_bytes()
        };
        b.push(bytes, peer, i % 5 == 1);
    }
    b
}

fn same(a: &FrameBatch, b: &FrameBatch) {
    assert_eq!(a.source, b.source);
    assert_eq!(a.received_at, b.received_at);
    assert_eq!(a.data, b.data);
    assert_eq!(a.frames.len(), b.frames.len());
    for (x, y) in a.frames.iter().zip(&b.frames) {
        assert_eq!(
            (x.offset, x.len, x.peer, x.truncated),
            (y.offset, y.len, y.peer, y.truncated)
        );
    }
}

#[test]
fn batches_come_back_whole_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut overflow = Overflow::create(dir.path(), 64 << 20).unwrap();
    let written: Vec<FrameBatch> = (0..40).map(|s| batch(3, s, 1 + s * 13)).collect();
    let mut out = FrameBatch::default();
    // Interleaved: the file holds some while others are read back.
    let mut next = 0;
    for (i, b) in written.iter().enumerate() {
        assert!(overflow.has_room(b));
        overflow.push(b).unwrap();
        if i % 3 == 2 {
            overflow.pop_into(&mut out).unwrap().unwrap();
            same(&written[next], &out);
            next += 1;
        }
    }
    let held: u64 = written[next..].iter().map(|b| b.len() as u64).sum();
    assert_eq!(overflow.frames_held(), held);
    while let Some(r) = overflow.pop_into(&mut out) {
        r.unwrap();
        same(&written[next], &out);
        next += 1;
    }
    assert_eq!(next, written.len());
    assert!(overflow.is_empty());
    assert_eq!(overflow.frames_held(), 0);
    assert_eq!(overflow.bytes_held(), 0);
    assert_eq!(
        overflow.file.metadata().unwrap().len(),
        0,
        "emptied file is truncated"
    );
}

#[test]
fn the_bound_refuses_what_does_not_fit_and_reading_frees_room() {
    let dir = tempfile::tempdir().unwrap();
    let one = batch(0, 1, 200);
    let record = Overflow::record_len(&one);
    let mut overflow = Overflow::create(dir.path(), record * 3 + record / 2).unwrap();
    for _ in 0..3 {
        assert!(overflow.has_room(&one));
        overflow.push(&one).unwrap();
    }
    assert!(
        !overflow.has_room(&one),
        "a fourth record would pass the bound"
    );
    let mut out = FrameBatch::default();
    overflow.pop_into(&mut out).unwrap().unwrap();
    assert!(
        overflow.has_room(&one),
        "reading one back makes room for one"
    );
    assert!(overflow.bytes_held() <= record * 2);
}

#[test]
fn read_space_is_returned_to_the_filesystem_before_the_file_runs_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut overflow = Overflow::create(dir.path(), 256 << 20).unwrap();
    let big = batch(0, 9, 500);
    for _ in 0..200 {
        overflow.push(&big).unwrap();
    }
    let full = overflow.allocated_bytes().unwrap();
    let mut out = FrameBatch::default();
    for _ in 0..190 {
        overflow.pop_into(&mut out).unwrap().unwrap();
    }
    let after = overflow.allocated_bytes().unwrap();
    assert!(overflow.punch, "ext4 and tmpfs punch holes");
    assert!(
        after * 5 < full,
        "allocated {full} bytes with 200 records, still {after} with 10 left"
    );
    same(&big, &out);
}

#[test]
fn a_damaged_record_is_reported_with_its_frame_count_and_the_rest_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut overflow = Overflow::create(dir.path(), 64 << 20).unwrap();
    let (a, b, c) = (batch(1, 1, 10), batch(1, 2, 20), batch(1, 3, 30));
    for x in [&a, &b, &c] {
        overflow.push(x).unwrap();
    }
    // Overwrite the second record's magic and a byte of its frame table.
    let second = Overflow::record_len(&a);
    overflow.file.write_all_at(b"XXXX", second).unwrap();
    let mut out = FrameBatch::default();
    same(&a, &{
        overflow.pop_into(&mut out).unwrap().unwrap();
        std::mem::take(&mut out)
    });
    let lost = overflow.pop_into(&mut out).unwrap().unwrap_err();
    let (frames, error) = (lost.frames, lost.error);
    assert_eq!(frames, 20);
    assert_eq!(lost.bytes, Overflow::record_len(&b));
    assert!(error.to_string().contains("bad magic"), "{error}");
    assert!(out.is_empty(), "nothing of a damaged record is handed on");
    overflow.pop_into(&mut out).unwrap().unwrap();
    same(&c, &out);
    assert!(overflow.pop_into(&mut out).is_none());
}

#[test]
fn frames_claiming_more_bytes_than_the_record_holds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut overflow = Overflow::create(dir.path(), 64 << 20).unwrap();
    let a = batch(0, 4, 3);
    overflow.push(&a).unwrap();
    // The first frame's length field: say it runs past the data.
    overflow
        .file
        .write_all_at(&u32::MAX.to_le_bytes(), HEADER_BYTES as u64)
        .unwrap();
    let mut out = FrameBatch::default();
    let lost = overflow.pop_into(&mut out).unwrap().unwrap_err();
    let (frames, error) = (lost.frames, lost.error);
    assert_eq!(frames, 3);
    assert!(error.to_string().contains("past the data"), "{error}");
}

#[test]
fn discarding_counts_what_was_held_frees_the_file_and_leaves_it_usable() {
    let dir = tempfile::tempdir().unwrap();
    let mut overflow = Overflow::create(dir.path(), 64 << 20).unwrap();
    let (a, b, c) = (batch(2, 1, 7), batch(2, 2, 11), batch(2, 3, 5));
    for x in [&a, &b, &c] {
        overflow.push(x).unwrap();
    }
    let mut out = FrameBatch::default();
    overflow.pop_into(&mut out).unwrap().unwrap();
    assert_eq!(overflow.discard(), 16, "the two records not read back");
    assert!(overflow.is_empty());
    assert_eq!(overflow.bytes_held(), 0);
    assert_eq!(overflow.file.metadata().unwrap().len(), 0);
    overflow.push(&c).unwrap();
    overflow.pop_into(&mut out).unwrap().unwrap();
    same(&c, &out);
}

#[test]
fn the_file_has_no_name() {
    let dir = tempfile::tempdir().unwrap();
    let overflow = Overflow::create(dir.path(), 1 << 20).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    drop(overflow);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
    /// Whatever bytes of the file are damaged, reading back never panics, never hands on more
    /// frames than a record was written with, and every record ends as a batch or as an
    /// error naming its frame count: together they account for every datagram written.
    #[test]
    fn damaged_files_never_panic_and_every_frame_is_accounted_for(
        sizes in proptest::collection::vec(0usize..40, 1..8),
        damage in proptest::collection::vec((proptest::prelude::any::<u64>(), proptest::prelude::any::<u8>()), 0..12),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut overflow = Overflow::create(dir.path(), 64 << 20).unwrap();
        let written: Vec<FrameBatch> =
            sizes.iter().enumerate().map(|(i, &n)| batch(1, i, n)).collect();
        for b in &written {
            overflow.push(b).unwrap();
        }
        let len = overflow.write_pos;
        for (at, byte) in &damage {
            overflow.file.write_all_at(&[*byte], at % len).unwrap();
        }
        let mut out = FrameBatch::default();
        let mut accounted = 0u64;
        for b in &written {
            match overflow.pop_into(&mut out).unwrap() {
                Ok(_) => {
                    proptest::prop_assert_eq!(out.len(), b.len());
                    proptest::prop_assert_eq!(out.data.len(), b.data.len());
                    accounted += out.len() as u64;
                }
                Err(lost) => {
                    proptest::prop_assert_eq!(lost.frames as usize, b.len());
                    proptest::prop_assert!(out.is_empty());
                    accounted += u64::from(lost.frames);
                }
            }
        }
        proptest::prop_assert!(overflow.pop_into(&mut out).is_none());
        let total: u64 = written.iter().map(|b| b.len() as u64).sum();
        proptest::prop_assert_eq!(accounted, total);
    }
}
