//! Copies of damaged spool ranges, `quarantine/<segment>-<offset>.bad`, kept for inspection
//! within `max_quarantine_bytes`. A failing disk or repeated corruption would otherwise fill
//! the disk with copies: the oldest copies go first, and a range larger than the whole bound
//! is copied only as far as it fits. Copies left by earlier runs count toward the bound.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub(super) const QUARANTINE_DIR: &str = "quarantine";

pub(super) struct Quarantine {
    dir: PathBuf,
    max_bytes: u64,
    /// Copies on disk, oldest first, with their sizes.
    files: VecDeque<(PathBuf, u64)>,
    bytes: u64,
}

/// What one [`Quarantine::keep`] (or the start-up check of the bound) did, in bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Kept {
    /// Copied into the new quarantine file.
    pub copied: u64,
    /// In older copies deleted to make room.
    pub deleted: u64,
    pub deleted_files: u64,
    /// Of the damaged range, beyond the bound: skipped without a copy.
    pub not_copied: u64,
}

impl Quarantine {
    /// Takes stock of `spool_dir/quarantine` and deletes the oldest copies while they exceed
    /// `max_bytes` (the bound may have been lowered since they were made).
    pub fn open(spool_dir: &Path, max_bytes: u64) -> io::Result<(Quarantine, Kept)> {
        let dir = spool_dir.join(QUARANTINE_DIR);
        let mut found = Vec::new();
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    let path = entry.path();
                    if path.extension().is_none_or(|e| e != "bad") {
                        continue;
                    }
                    let meta = entry.metadata()?;
                    if !meta.is_file() {
                        continue;
                    }
                    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((modified, path, meta.len()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Names order copies of one run (segment ids grow); times order runs.
        found.sort();
        let mut quarantine = Quarantine {
            dir,
            max_bytes,
            bytes: found.iter().map(|(_, _, len)| len).sum(),
            files: found
                .into_iter()
                .map(|(_, path, len)| (path, len))
                .collect(),
        };
        let mut kept = Kept::default();
        quarantine.make_room(0, &mut kept)?;
        Ok((quarantine, kept))
    }

    /// Bytes of copies on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Copies `start..end` of `segment`'s `file`, deleting the oldest copies first when the
    /// bound requires it.
    pub fn keep(&mut self, file: &File, segment: u64, start: u64, end: u64) -> io::Result<Kept> {
        let path = self.dir.join(format!("{segment:016x}-{start}.bad"));
        // The same range again (its segment is scanned anew at every start): replaced, not
        // counted as deleted.
        if let Some(i) = self.files.iter().position(|(p, _)| *p == path) {
            let (_, len) = self.files.remove(i).expect("found");
            self.bytes -= len;
        }
        let len = end - start;
        let copy = len.min(self.max_bytes);
        let mut kept = Kept {
            not_copied: len - copy,
            ..Kept::default()
        };
        self.make_room(copy, &mut kept)?;
        if copy == 0 {
            // `max_quarantine_bytes = 0`: a copy replaced above must not stay uncounted.
            remove_if_present(&path)?;
            return Ok(kept);
        }
        fs::create_dir_all(&self.dir)?;
        if let Err(e) = copy_range(file, start, start + copy, &path) {
            // A partial copy would sit there uncounted.
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        self.files.push_back((path, copy));
        self.bytes += copy;
        kept.copied = copy;
        Ok(kept)
    }

    /// Deletes the oldest copies until `incoming` more bytes fit the bound.
    fn make_room(&mut self, incoming: u64, kept: &mut Kept) -> io::Result<()> {
        while self.bytes + incoming > self.max_bytes {
            let Some((path, len)) = self.files.pop_front() else {
                break;
            };
            remove_if_present(&path)?;
            self.bytes -= len;
            kept.deleted += len;
            kept.deleted_files += 1;
        }
        Ok(())
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn copy_range(file: &File, start: u64, end: u64, to: &Path) -> io::Result<()> {
    let mut out = File::create(to)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = start;
    while pos < end {
        let n = buf.len().min((end - pos) as usize);
        file.read_exact_at(&mut buf[..n], pos)?;
        out.write_all(&buf[..n])?;
        pos += n as u64;
    }
    out.sync_all()
}
