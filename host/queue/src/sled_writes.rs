//! A pipeline's sled tree with a count of the bytes it holds, and the writes of one step.
//!
//! The queue budgets (a pipeline's own, and the store's) are checked against what the queues
//! hold, so that count must be exact and cheap: it is kept as writes are applied — the key's
//! and the value's length of every record — rather than measured. sled's single-key insert
//! and remove return the value they replaced; a batch does not, so the writes of a batch whose
//! old value is not known already (an ingress record the hand-over just read) are looked up
//! first. Writes of one pipeline to one key do not race (each queue has one worker; plugin
//! state is written by its stage only), so the count read before a batch is the one it
//! replaces. The count is rebuilt from the records whenever the store opens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::value_files::{
    value_len, Pointer, Unreadable, ValueFiles, SPILL_INGRESS_OVER, SPILL_OVER,
};

fn storage(e: impl std::fmt::Display) -> crate::QueueError {
    crate::QueueError::Storage(e.to_string())
}

/// One pipeline's tree and the bytes it holds.
#[derive(Clone)]
pub(crate) struct PipelineTree {
    /// The pipeline's name.
    pipeline: Arc<str>,
    tree: sled::Tree,
    /// Bytes of this pipeline's records (keys and values).
    bytes: Arc<AtomicI64>,
    /// Bytes of every pipeline's records, shared by all trees of the store.
    total: Arc<AtomicI64>,
    /// Where its large message records are kept.
    pub(crate) values: Arc<ValueFiles>,
}

impl std::ops::Deref for PipelineTree {
    type Target = sled::Tree;
    fn deref(&self) -> &sled::Tree {
        &self.tree
    }
}

impl PipelineTree {
    /// `tree`, which holds `bytes` now; adds them to `total`.
    pub(crate) fn new(
        pipeline: &str,
        tree: sled::Tree,
        bytes: u64,
        total: Arc<AtomicI64>,
        values: Arc<ValueFiles>,
    ) -> Self {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        total.fetch_add(bytes, Ordering::Relaxed);
        PipelineTree {
            pipeline: pipeline.into(),
            tree,
            bytes: Arc::new(AtomicI64::new(bytes)),
            total,
            values,
        }
    }

    /// The bytes this pipeline's records take (keys and values).
    pub(crate) fn bytes(&self) -> u64 {
        u64::try_from(self.bytes.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Takes this tree's bytes out of the store's total (the tree is being dropped).
    pub(crate) fn forget(&self) {
        let bytes = self.bytes.swap(0, Ordering::Relaxed);
        self.total.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn account(&self, delta: i64) {
        if delta != 0 {
            self.bytes.fetch_add(delta, Ordering::Relaxed);
            self.total.fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// The value the stored record `raw` under `key` holds: its own bytes, or its value file's.
    /// `None` when the record was removed (or replaced, and then it is read again) while its
    /// file was being read.
    pub(crate) fn resolve(&self, key: &[u8], raw: sled::IVec) -> crate::Result<Option<sled::IVec>> {
        let mut raw = raw;
        loop {
            let Some(pointer) = Pointer::read(&raw).filter(|_| holds_message(key)) else {
                return Ok(Some(raw));
            };
            let why = match self.values.read(pointer) {
                Ok(bytes) => return Ok(Some(bytes.into())),
                Err(Unreadable::Missing) => match self.tree.get(key).map_err(storage)? {
                    Some(now) if now != raw => {
                        raw = now;
                        continue;
                    }
                    Some(_) => format!("{:016x} is missing", pointer.id),
                    None => return Ok(None),
                },
                Err(Unreadable::Damaged(why)) => why,
                Err(Unreadable::Io(e)) => return Err(storage(e)),
            };
            return Err(crate::QueueError::Corrupt {
                queue: queue_of(&self.pipeline, key),
                source: tocsin_message::DecodeError::ValueFile(why),
            });
        }
    }

    /// The value of the record under `key`, read from its value file when spilled.
    pub(crate) fn get_value(&self, key: &[u8]) -> crate::Result<Option<sled::IVec>> {
        match self.tree.get(key).map_err(storage)? {
            Some(raw) => self.resolve(key, raw),
            None => Ok(None),
        }
    }

    /// The records under `prefix` in key order, with their values read from their value files
    /// when spilled; a record removed while it was being read is skipped.
    pub(crate) fn scan_values(
        &self,
        prefix: impl AsRef<[u8]>,
    ) -> impl Iterator<Item = crate::Result<(sled::IVec, sled::IVec)>> + '_ {
        self.tree.scan_prefix(prefix).filter_map(move |entry| {
            let (key, raw) = match entry {
                Ok(entry) => entry,
                Err(e) => return Some(Err(storage(e))),
            };
            match self.resolve(&key, raw) {
                Ok(Some(value)) => Some(Ok((key, value))),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            }
        })
    }

    /// Inserts one record.
    pub(crate) fn put(
        &self,
        key: Vec<u8>,
        value: impl Into<sled::IVec>,
    ) -> std::result::Result<(), sled::Error> {
        let mut writes = Writes::default();
        writes.insert(key, value);
        writes.apply(self)
    }
}

/// The bytes a record takes in the count: its key and its value (a spilled value's own length,
/// not its pointer's).
pub(crate) fn record_bytes(key: &[u8], value_len: usize) -> i64 {
    i64::try_from(key.len() + value_len).unwrap_or(i64::MAX)
}

/// The bytes a stored record takes in the count.
pub(crate) fn stored_bytes(key: &[u8], raw: &[u8]) -> i64 {
    if holds_message(key) {
        record_bytes(key, value_len(raw))
    } else {
        record_bytes(key, raw.len())
    }
}

/// Key kinds (first byte) of a pipeline tree; see [`crate::sled_store`] for the layout.
pub(crate) const INGRESS: u8 = b'i';
pub(crate) const SINK: u8 = b'q';
pub(crate) const DEAD: u8 = b'd';
pub(crate) const FAILED: u8 = b'f';
pub(crate) const STATE: u8 = b's';

/// How errors name the queue of the record under `key` in `pipeline`: `ingress of p`, `p/out`,
/// `dead letters of p/out`, or the pipeline.
pub(crate) fn queue_of(pipeline: &str, key: &[u8]) -> String {
    let name =
        || String::from_utf8_lossy(key.get(1..key.len().saturating_sub(9)).unwrap_or_default());
    match key.first() {
        Some(&INGRESS) => format!("ingress of {pipeline}"),
        Some(&SINK) => format!("{pipeline}/{}", name()),
        Some(&DEAD) => format!("dead letters of {pipeline}/{}", name()),
        _ => pipeline.to_string(),
    }
}

/// The size over which the message record under `key` is kept in a value file.
pub(crate) fn spill_over(key: &[u8]) -> usize {
    match key.first() {
        Some(&INGRESS) => SPILL_INGRESS_OVER,
        _ => SPILL_OVER,
    }
}

/// Whether the record under `key` holds messages, whose value may be spilled to a value file.
pub(crate) fn holds_message(key: &[u8]) -> bool {
    matches!(key.first(), Some(&(INGRESS | SINK | DEAD)))
}

/// The value a write replaces, as far as the writer knows it.
enum Old {
    /// Look it up.
    Unknown,
    /// The key is new (a fresh sequence number).
    Absent,
    /// This stored value, which the caller just read.
    Was(sled::IVec),
}

/// The writes of one crash-atomic step (an append, a hand-over, an ack, …), applied to one
/// pipeline's tree.
///
/// sled's `Tree::apply_batch` is expensive: it takes sled's process-wide write lock, and its
/// log pin rolls and writes the log buffer before and after the batch marker, each time a
/// `pwrite` plus a `sync_file_range` that waits for the disk. Profiled under single-message
/// ingest: two synchronous log writes per batch, which held ingest and per-delivery acks to a
/// few thousand a second. A single-key insert or remove is crash-atomic by itself and does
/// neither, so a step of one write (one message appended, an ack without state) goes through
/// it; only steps of several writes pay for a batch.
///
/// A message record over [`spill_over`] bytes is written to a value file first and stored as
/// its pointer; the value files of records a step removes or replaces are deleted once the
/// step is durable (see [`crate::value_files`]).
#[derive(Default)]
pub(crate) struct Writes(Vec<(Vec<u8>, Option<sled::IVec>, Old)>);

impl Writes {
    /// Inserts or replaces a record.
    pub(crate) fn insert(&mut self, key: Vec<u8>, value: impl Into<sled::IVec>) {
        self.0.push((key, Some(value.into()), Old::Unknown));
    }

    /// Inserts a record under a key that cannot exist yet (a fresh sequence number).
    pub(crate) fn insert_new(&mut self, key: Vec<u8>, value: impl Into<sled::IVec>) {
        self.0.push((key, Some(value.into()), Old::Absent));
    }

    /// Replaces a record whose stored value `old` the caller just read.
    pub(crate) fn replace(&mut self, key: Vec<u8>, value: impl Into<sled::IVec>, old: sled::IVec) {
        self.0.push((key, Some(value.into()), Old::Was(old)));
    }

    /// Removes a record, if there.
    pub(crate) fn remove(&mut self, key: Vec<u8>) {
        self.0.push((key, None, Old::Unknown));
    }

    /// Removes a record whose stored value `old` the caller just read.
    pub(crate) fn remove_read(&mut self, key: Vec<u8>, old: sled::IVec) {
        self.0.push((key, None, Old::Was(old)));
    }

    /// Applies the writes, and their change in size to the tree's count.
    pub(crate) fn apply(mut self, tree: &PipelineTree) -> std::result::Result<(), sled::Error> {
        let mut spilled = Vec::new();
        for (key, value, _) in &mut self.0 {
            let Some(v) = value.as_mut().filter(|v| v.len() > spill_over(key)) else {
                continue;
            };
            if !holds_message(key) {
                continue;
            }
            match tree.values.spill(v) {
                Ok(pointer) => {
                    spilled.push(pointer.clone());
                    *v = pointer.into();
                }
                Err(e) => {
                    tree.values.discard(&spilled);
                    return Err(sled::Error::Io(e));
                }
            }
        }
        match self.apply_stored(tree) {
            Ok(replaced) => {
                for (key, raw) in replaced {
                    if holds_message(&key) {
                        tree.values.doom(&raw);
                    }
                }
                Ok(())
            }
            Err(e) => {
                tree.values.discard(&spilled);
                Err(e)
            }
        }
    }

    /// Applies the writes as they are to be stored; returns the stored values they replaced.
    fn apply_stored(
        mut self,
        tree: &PipelineTree,
    ) -> std::result::Result<Vec<(Vec<u8>, sled::IVec)>, sled::Error> {
        if self.0.len() <= 1 {
            let Some((key, value, _)) = self.0.pop() else {
                return Ok(Vec::new());
            };
            let new = value.as_ref().map_or(0, |v| stored_bytes(&key, v));
            let old = match value {
                Some(value) => tree.tree.insert(&key, value)?,
                None => tree.tree.remove(&key)?,
            };
            tree.account(new - old.as_ref().map_or(0, |v| stored_bytes(&key, v)));
            return Ok(old.map(|old| (key, old)).into_iter().collect());
        }
        let (delta, replaced) = self.replaced(tree)?;
        let mut batch = sled::Batch::default();
        for (key, value, _) in self.0 {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        tree.tree.apply_batch(batch)?;
        tree.account(delta);
        Ok(replaced)
    }

    /// What applying the writes in order changes in the tree's bytes, and the stored values
    /// they replace. A key written twice in one batch replaces its own earlier write, not what
    /// the tree holds.
    #[allow(clippy::type_complexity)]
    fn replaced(
        &self,
        tree: &PipelineTree,
    ) -> std::result::Result<(i64, Vec<(Vec<u8>, sled::IVec)>), sled::Error> {
        let mut now: HashMap<&[u8], Option<sled::IVec>> = HashMap::new();
        let mut delta = 0;
        let mut replaced = Vec::new();
        for (key, value, old) in &self.0 {
            let before = match now.remove(key.as_slice()) {
                Some(value) => value,
                None => match old {
                    Old::Absent => None,
                    Old::Was(raw) => Some(raw.clone()),
                    Old::Unknown => tree.tree.get(key)?,
                },
            };
            delta += value.as_ref().map_or(0, |v| stored_bytes(key, v))
                - before.as_ref().map_or(0, |v| stored_bytes(key, v));
            if let Some(before) = before {
                replaced.push((key.clone(), before));
            }
            now.insert(key, value.clone());
        }
        Ok((delta, replaced))
    }
}
