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

/// One pipeline's tree and the bytes it holds.
#[derive(Clone)]
pub(crate) struct PipelineTree {
    tree: sled::Tree,
    /// Bytes of this pipeline's records (keys and values).
    bytes: Arc<AtomicI64>,
    /// Bytes of every pipeline's records, shared by all trees of the store.
    total: Arc<AtomicI64>,
}

impl std::ops::Deref for PipelineTree {
    type Target = sled::Tree;
    fn deref(&self) -> &sled::Tree {
        &self.tree
    }
}

impl PipelineTree {
    /// `tree`, which holds `bytes` now; adds them to `total`.
    pub(crate) fn new(tree: sled::Tree, bytes: u64, total: Arc<AtomicI64>) -> Self {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        total.fetch_add(bytes, Ordering::Relaxed);
        PipelineTree {
            tree,
            bytes: Arc::new(AtomicI64::new(bytes)),
            total,
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

/// The bytes a record takes in the count: its key and its value.
pub(crate) fn record_bytes(key: &[u8], value_len: usize) -> i64 {
    i64::try_from(key.len() + value_len).unwrap_or(i64::MAX)
}

/// The value a write replaces, as far as the writer knows it.
enum Old {
    /// Look it up.
    Unknown,
    /// The key is new (a fresh sequence number).
    Absent,
    /// A value of this many bytes.
    Len(usize),
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

    /// Replaces a record whose current value, of `old_len` bytes, the caller just read.
    pub(crate) fn replace(&mut self, key: Vec<u8>, value: impl Into<sled::IVec>, old_len: usize) {
        self.0.push((key, Some(value.into()), Old::Len(old_len)));
    }

    /// Removes a record, if there.
    pub(crate) fn remove(&mut self, key: Vec<u8>) {
        self.0.push((key, None, Old::Unknown));
    }

    /// Removes a record whose current value, of `old_len` bytes, the caller just read.
    pub(crate) fn remove_read(&mut self, key: Vec<u8>, old_len: usize) {
        self.0.push((key, None, Old::Len(old_len)));
    }

    /// Applies the writes, and their change in size to the tree's count.
    pub(crate) fn apply(mut self, tree: &PipelineTree) -> std::result::Result<(), sled::Error> {
        if self.0.len() <= 1 {
            let Some((key, value, _)) = self.0.pop() else {
                return Ok(());
            };
            let new = value.as_ref().map_or(0, |v| record_bytes(&key, v.len()));
            let old = match value {
                Some(value) => tree.tree.insert(&key, value)?,
                None => tree.tree.remove(&key)?,
            };
            tree.account(new - old.map_or(0, |v| record_bytes(&key, v.len())));
            return Ok(());
        }
        let delta = self.size_change(tree)?;
        let mut batch = sled::Batch::default();
        for (key, value, _) in self.0 {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        tree.tree.apply_batch(batch)?;
        tree.account(delta);
        Ok(())
    }

    /// What applying the writes in order changes in the tree's bytes. A key written twice in
    /// one batch replaces its own earlier write, not what the tree holds.
    fn size_change(&self, tree: &PipelineTree) -> std::result::Result<i64, sled::Error> {
        let mut now: HashMap<&[u8], i64> = HashMap::new();
        let mut delta = 0;
        for (key, value, old) in &self.0 {
            let before = match now.get(key.as_slice()) {
                Some(&bytes) => bytes,
                None => match old {
                    Old::Absent => 0,
                    Old::Len(len) => record_bytes(key, *len),
                    Old::Unknown => tree
                        .tree
                        .get(key)?
                        .map_or(0, |v| record_bytes(key, v.len())),
                },
            };
            let after = value.as_ref().map_or(0, |v| record_bytes(key, v.len()));
            delta += after - before;
            now.insert(key, after);
        }
        Ok(delta)
    }
}
