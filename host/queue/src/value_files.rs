//! Large message records kept in files of their own beside sled, with a pointer in the tree.
//!
//! sled 0.34 keeps up to 16 records in a leaf and writes the whole leaf again each time it
//! consolidates the leaf's changes; a leaf over a quarter segment goes to a blob file of its
//! own, and the copies it replaces are reclaimed lazily (sled allows five times the live data
//! on disk). Records of a few hundred KB made leaves of megabytes, written again at every
//! hand-over and ack: measured, 52 MB of files for 10.6 MB of queued messages, so a disk
//! budget on what the queues hold was overshot five times on disk. A message record of more
//! than [`SPILL_OVER`] bytes (a sink-queue entry or dead letter; [`SPILL_INGRESS_OVER`] for an
//! ingress record) is therefore written once to a file under `values/`, and sled holds a
//! [`Pointer`] to it: leaves stay under sled's blob size, and the file is deleted as soon as
//! the removal of its record is durable.
//!
//! # Durability
//! A file is written (not synced) before the write that points to it is applied; the group
//! commit `fsync`s every file written since its last sync, and the directory, before it syncs
//! sled's data file — so an acknowledged pointer never outlives its file. A file whose record
//! was removed or replaced is deleted only after the sync that made the removal durable. What
//! a crash leaves behind is tidied when the store is verified at open: files no record points
//! to are deleted, and a pointer whose file is missing or damaged (a write that was never
//! acknowledged: its file is synced before any commit that covers it) is dropped with a
//! warning.
//!
//! Plugin state records are never spilled: their values are the plugin's own bytes, and a
//! pointer could not be told from them.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Sink-queue and dead-letter records larger than this are kept in a value file. Sixteen of
/// them fill a leaf to at most ~96 KiB, under sled's blob threshold (a quarter of its 512 KiB
/// segment).
pub(crate) const SPILL_OVER: usize = 6 << 10;

/// Ingress records larger than this are kept in a value file. They are transient — the
/// filters hand them over within milliseconds while the pipeline runs, so a queue that grows
/// is a sink queue — and an ingress record is often a batch of many small messages (100
/// messages of a request are one record of ~15 KB), which a file would slow down for nothing:
/// each file is created, synced and deleted (measured: 100-message requests fell from 131 k to
/// 89 k messages/s with every record over 4 KiB in a file).
pub(crate) const SPILL_INGRESS_OVER: usize = 64 << 10;

/// Threads that sync the files of one group commit.
const SYNC_THREADS: usize = 8;

/// First byte of a pointer: never a record format version (those count up from 1).
const POINTER_TAG: u8 = 0xF5;
/// Bytes of the value copied into its pointer, so a record's header (an ingress record's
/// count) is read without opening the file.
const HEAD_LEN: usize = 16;
/// Tag, id, length, CRC-32, then the head.
const POINTER_LEN: usize = 1 + 8 + 8 + 4 + HEAD_LEN;

/// Where a spilled value lies, and how to check it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pointer {
    /// The file's name (hex).
    pub(crate) id: u64,
    /// The value's length.
    pub(crate) len: u64,
    crc: u32,
}

impl Pointer {
    /// The pointer stored in `raw`, when `raw` is one.
    pub(crate) fn read(raw: &[u8]) -> Option<Pointer> {
        if raw.len() != POINTER_LEN || raw[0] != POINTER_TAG {
            return None;
        }
        let word = |at: usize| u64::from_be_bytes(raw[at..at + 8].try_into().unwrap_or_default());
        Some(Pointer {
            id: word(1),
            len: word(9),
            crc: u32::from_be_bytes(raw[17..21].try_into().unwrap_or_default()),
        })
    }

    fn encode(&self, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(POINTER_LEN);
        out.push(POINTER_TAG);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.crc.to_be_bytes());
        out.extend_from_slice(&value[..HEAD_LEN]);
        out
    }
}

/// The length of the value a stored record holds: its own, or the spilled value's.
pub(crate) fn value_len(raw: &[u8]) -> usize {
    Pointer::read(raw).map_or(raw.len(), |p| usize::try_from(p.len).unwrap_or(usize::MAX))
}

/// The first bytes of the value a stored record holds (at least [`HEAD_LEN`] of them, or all).
pub(crate) fn value_head(raw: &[u8]) -> &[u8] {
    match Pointer::read(raw) {
        Some(_) => &raw[POINTER_LEN - HEAD_LEN..],
        None => raw,
    }
}

/// Why a spilled value could not be read back.
#[derive(Debug)]
pub(crate) enum Unreadable {
    /// The file is gone: its record was removed meanwhile, or a crash lost an unacknowledged
    /// write.
    Missing,
    /// The file is there but is not what the pointer says.
    Damaged(String),
    /// The file could not be read.
    Io(std::io::Error),
}

/// The directory of value files, and what the next syncs owe it.
pub(crate) struct ValueFiles {
    dir: PathBuf,
    db: sled::Db,
    /// Files written since the last sync.
    unsynced: Mutex<Vec<u64>>,
    /// Files whose records were removed or replaced, to delete once that is durable.
    doomed: Mutex<Vec<u64>>,
    /// Bytes of the files present.
    bytes: AtomicU64,
}

impl ValueFiles {
    /// The value files of the store at `store_dir` (created if need be).
    pub(crate) fn open(store_dir: &Path, db: sled::Db) -> std::io::Result<Self> {
        let dir = store_dir.join("values");
        std::fs::create_dir_all(&dir)?;
        let mut bytes = 0;
        for entry in std::fs::read_dir(&dir)? {
            bytes += entry?.metadata()?.len();
        }
        Ok(ValueFiles {
            dir,
            db,
            unsynced: Mutex::new(Vec::new()),
            doomed: Mutex::new(Vec::new()),
            bytes: AtomicU64::new(bytes),
        })
    }

    /// Bytes of the value files present.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// How many files written are not synced yet.
    #[cfg(test)]
    pub(crate) fn unsynced(&self) -> usize {
        self.unsynced.lock().unwrap().len()
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}"))
    }

    /// Writes `value` to a new file and returns the pointer to store instead.
    pub(crate) fn spill(&self, value: &[u8]) -> std::io::Result<Vec<u8>> {
        let id = self.db.generate_id().map_err(std::io::Error::other)?;
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .open(self.path(id))?;
        file.write_all(value)?;
        self.bytes.fetch_add(value.len() as u64, Ordering::Relaxed);
        self.unsynced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id);
        let pointer = Pointer {
            id,
            len: value.len() as u64,
            crc: crc32fast::hash(value),
        };
        Ok(pointer.encode(value))
    }

    /// The value `pointer` points to, checked against its length and checksum.
    pub(crate) fn read(&self, pointer: Pointer) -> Result<Vec<u8>, Unreadable> {
        let bytes = match std::fs::read(self.path(pointer.id)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Unreadable::Missing),
            Err(e) => return Err(Unreadable::Io(e)),
        };
        if bytes.len() as u64 != pointer.len {
            return Err(Unreadable::Damaged(format!(
                "value file {:016x} holds {} bytes, its record says {}",
                pointer.id,
                bytes.len(),
                pointer.len
            )));
        }
        if crc32fast::hash(&bytes) != pointer.crc {
            return Err(Unreadable::Damaged(format!(
                "value file {:016x} does not match its checksum",
                pointer.id
            )));
        }
        Ok(bytes)
    }

    /// Marks the value of the stored record `raw` (when it is a pointer) for deletion once the
    /// write that removed or replaced the record is durable.
    pub(crate) fn doom(&self, raw: &[u8]) {
        if let Some(pointer) = Pointer::read(raw) {
            self.doom_ids([pointer.id]);
        }
    }

    fn doom_ids(&self, ids: impl IntoIterator<Item = u64>) {
        self.doomed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(ids);
    }

    /// Deletes at once files no record points to (written for a write that then failed).
    pub(crate) fn discard(&self, pointers: &[Vec<u8>]) {
        let ids: Vec<u64> = pointers
            .iter()
            .filter_map(|raw| Pointer::read(raw))
            .map(|p| p.id)
            .collect();
        self.unsynced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id| !ids.contains(id));
        self.delete(ids);
    }

    /// The files to delete after the next sync: taken before it begins, so every removal they
    /// stand for was applied before it.
    pub(crate) fn take_doomed(&self) -> Vec<u64> {
        std::mem::take(&mut *self.doomed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// `fsync`s the files written since the last call, and the directory when there were any.
    pub(crate) fn sync_written(&self) -> std::io::Result<()> {
        let written = std::mem::take(&mut *self.unsynced.lock().unwrap_or_else(|p| p.into_inner()));
        if written.is_empty() {
            return Ok(());
        }
        // Synced side by side: a file system commits concurrent syncs together (measured on
        // ext4 here: 4 000 files/s one after another, 14 000/s from 16 threads).
        let per_thread = written.len().div_ceil(SYNC_THREADS);
        let result = std::thread::scope(|scope| {
            let syncs: Vec<_> = written
                .chunks(per_thread)
                .map(|ids| scope.spawn(move || ids.iter().try_for_each(|&id| self.sync_file(id))))
                .collect();
            syncs.into_iter().try_for_each(|sync| {
                sync.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a sync thread panicked")))
            })
        });
        if let Err(e) = result {
            self.unsynced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(written);
            return Err(e);
        }
        File::open(&self.dir)?.sync_all()
    }

    fn sync_file(&self, id: u64) -> std::io::Result<()> {
        match File::open(self.path(id)) {
            Ok(file) => file.sync_all(),
            // Removed meanwhile and already deleted: nothing to keep.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes the files `ids` (their records' removal is durable).
    pub(crate) fn delete(&self, ids: Vec<u64>) {
        for id in ids {
            let path = self.path(id);
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    self.bytes.fetch_sub(len, Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete a value file")
                }
            }
        }
    }

    /// Deletes every file not in `referenced` (left by a crash between writing a file and the
    /// write that would have pointed to it); returns how many went.
    pub(crate) fn delete_unreferenced(&self, referenced: &HashSet<u64>) -> std::io::Result<usize> {
        let mut orphans = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let id = name
                .to_str()
                .and_then(|name| u64::from_str_radix(name, 16).ok());
            match id {
                Some(id) if referenced.contains(&id) => {}
                Some(id) => orphans.push(id),
                None => tracing::warn!(
                    file = %self.dir.join(&name).display(),
                    "a file that is not tocsin's in the value directory; left alone"
                ),
            }
        }
        let count = orphans.len();
        self.delete(orphans);
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pointer_reads_back_with_its_length_and_head_and_checks_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let files = ValueFiles::open(dir.path(), db).unwrap();
        let value: Vec<u8> = (0..10_000u32).map(|n| n as u8).collect();
        let raw = files.spill(&value).unwrap();
        let pointer = Pointer::read(&raw).expect("a pointer");
        assert_eq!(value_len(&raw), value.len());
        assert_eq!(value_head(&raw), &value[..HEAD_LEN]);
        assert_eq!(files.read(pointer).unwrap(), value);
        assert_eq!(files.bytes(), value.len() as u64);
        // A plain value is its own length and head.
        assert_eq!(value_len(b"plain"), 5);
        assert!(Pointer::read(&value).is_none());

        std::fs::write(files.path(pointer.id), &value[..100]).unwrap();
        assert!(matches!(files.read(pointer), Err(Unreadable::Damaged(_))));
        let mut flipped = value.clone();
        flipped[5000] ^= 1;
        std::fs::write(files.path(pointer.id), &flipped).unwrap();
        assert!(matches!(files.read(pointer), Err(Unreadable::Damaged(_))));

        files.sync_written().unwrap();
        files.doom(&raw);
        files.delete(files.take_doomed());
        assert!(matches!(files.read(pointer), Err(Unreadable::Missing)));
        assert_eq!(files.bytes(), 0);
    }

    #[test]
    fn files_no_record_points_to_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let files = ValueFiles::open(dir.path(), db).unwrap();
        let kept = Pointer::read(&files.spill(&[1; 5000]).unwrap()).unwrap();
        let orphan = Pointer::read(&files.spill(&[2; 5000]).unwrap()).unwrap();
        let referenced = HashSet::from([kept.id]);
        assert_eq!(files.delete_unreferenced(&referenced).unwrap(), 1);
        assert!(files.read(kept).is_ok());
        assert!(matches!(files.read(orphan), Err(Unreadable::Missing)));
    }
}
