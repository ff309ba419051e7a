//! Back-pressure on storage: before a producer's messages are written, the guard checks that
//! the store has not failed, that the queues' filesystem keeps its free-space reserve and is
//! writable, and that the write fits the budgets — the pipeline's own (`queue_budget` in its
//! file) and the server's (`--queue-budget`). When a check fails, ingest answers 503 with
//! `Retry-After` and cron sources skip their ticks — never a silent drop — while deliveries go
//! on and free space. When the space returns, so does ingest.
//!
//! Checking *before* the write matters with sled: once sled hits `ENOSPC` or `EROFS` it
//! refuses every later write until the process reopens it (see [`crate::server`]'s store
//! watchdog), so the reserve keeps a full disk an ordinary, recoverable 503.
//!
//! # Budgets, and by how much they can be passed
//! A write is admitted while what is held, plus what was admitted and is still being written,
//! is under every budget; it then reserves its size (a bound computed before the write) until
//! it is durable. So concurrent writers see each other, and a budget is passed by at most the
//! last write admitted under it: one request's messages. Two measures are held to
//! `--queue-budget`:
//! - the bytes the queues hold (every record's key and value, counted exactly by the store as
//!   it writes: [`QueueStore::stored_bytes`]); a pipeline's own budget is held to its share of
//!   these;
//! - the size of the store's files, which is larger (sled's log keeps superseded pages until
//!   it reclaims them). Measuring it walks the directory, so it is measured every
//!   [`MEASURE_EVERY`], and near the budget every [`MEASURE_NEAR_BUDGET_EVERY`]; between two
//!   measurements it is estimated as the last one plus the bytes admitted since.
//!
//! A pipeline without a budget of its own gets half the server's, so one open pipeline
//! flooded by anyone leaves room for the others.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tocsin_queue::QueueStore;

/// How long a measurement of the filesystem and of the store's files is trusted.
pub const MEASURE_EVERY: Duration = Duration::from_millis(250);

/// How long a measurement of the store's files is trusted once the estimate is within a tenth
/// of the budget.
pub const MEASURE_NEAR_BUDGET_EVERY: Duration = Duration::from_millis(5);

/// How much sled's data file grows at a time (its default `segment_size`).
pub const SLED_SEGMENT: u64 = 512 << 10;

/// The most the files' growth between two measurements is assumed to exceed the growth of
/// what they hold.
const MAX_FILES_RATIO: u64 = 8;

/// What the queues must hold before the files' size is taken as a multiple of it.
const MIN_HELD_FOR_RATIO: u64 = 1 << 20;

/// The default free space kept on the queues' filesystem.
pub const DEFAULT_MIN_FREE_SPACE: u64 = 64 << 20;

/// The storage checks and budgets of the whole server.
pub struct DiskBudget {
    limit: Option<u64>,
    min_free: u64,
    dir: PathBuf,
    queue: Arc<dyn QueueStore>,
    /// The last verdict of the health checks (store, filesystem), and when it was made.
    health: Mutex<(Option<Instant>, Option<String>)>,
    /// The last measurement of the store's files.
    files: Mutex<FilesMeasure>,
    /// Bytes admitted and not yet durable, in all and per pipeline. Admission checks and
    /// reserves under this lock, so two writers never both take the last room.
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct FilesMeasure {
    at: Option<Instant>,
    /// The files' size then.
    size: u64,
    /// What the queues held then, with what was admitted.
    held_then: u64,
}

#[derive(Default)]
struct Pending {
    total: u64,
    by_pipeline: HashMap<String, u64>,
}

/// The queues' storage as the `@tocsin` source reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageReport {
    /// Why nothing can be written now (the store failed, the filesystem is full or
    /// read-only), if so.
    pub refusal: Option<String>,
    /// Free bytes on the queues' filesystem, when it could be asked.
    pub free_bytes: Option<u64>,
    /// The free space kept (`--min-free-space`).
    pub reserve: u64,
    /// What the queues use of the server's budget: the bytes they hold, or their files'
    /// size when larger (either refuses at the budget).
    pub held: u64,
    /// The server's budget (`--queue-budget`), if any.
    pub limit: Option<u64>,
}

impl DiskBudget {
    /// A guard over `queue`, stored in `dir`: at most `limit` bytes (`None`: unlimited), and at
    /// least `min_free` bytes left free on the filesystem.
    pub fn new(
        limit: Option<u64>,
        min_free: u64,
        dir: PathBuf,
        queue: Arc<dyn QueueStore>,
    ) -> Arc<Self> {
        Arc::new(DiskBudget {
            limit,
            min_free,
            dir,
            queue,
            health: Mutex::new((None, None)),
            files: Mutex::new(FilesMeasure::default()),
            pending: Mutex::new(Pending::default()),
        })
    }

    /// The server's budget in bytes, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// The storage now: its refusal, free space and reserve, and the server budget's use.
    pub fn storage(&self) -> StorageReport {
        let free_bytes = rustix::fs::statvfs(&self.dir)
            .ok()
            .map(|fs| fs.f_bavail.saturating_mul(fs.f_frsize));
        let held = self.queue.stored_bytes_total();
        let held = match self.limit {
            Some(limit) => held.max(self.files_estimate(held, limit)),
            None => held,
        };
        StorageReport {
            refusal: self.health_refusal(),
            free_bytes,
            reserve: self.min_free,
            held,
            limit: self.limit,
        }
    }

    /// The budget of a pipeline whose file says `own`: that, or else half the server's.
    pub fn budget_of(&self, own: Option<u64>) -> Option<u64> {
        own.or(self.limit.map(|l| l / 2))
    }

    /// The guard of pipeline `pipeline`, whose own budget is `own` (`None`: the default
    /// share).
    pub fn for_pipeline(self: &Arc<Self>, pipeline: &str, own: Option<u64>) -> PipelineBudget {
        PipelineBudget {
            shared: self.clone(),
            pipeline: pipeline.to_string(),
            limit: self.budget_of(own),
            refusing: AtomicBool::new(false),
        }
    }

    /// Why nothing should be written now for `pipeline` (held to `own`), or `None`; with
    /// `bytes` to write, reserves them when admitted.
    fn check(&self, pipeline: &str, own: Option<u64>, bytes: u64) -> Result<(), String> {
        if let Some(why) = self.health_refusal() {
            return Err(why);
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(own) = own {
            let held = self.queue.stored_bytes(pipeline).unwrap_or(0)
                + pending.by_pipeline.get(pipeline).copied().unwrap_or(0);
            if held >= own {
                return Err(format!(
                    "pipeline `{pipeline}` holds {held} bytes of messages, at its queue \
                     budget of {own}"
                ));
            }
        }
        if let Some(limit) = self.limit {
            let held = self.queue.stored_bytes_total() + pending.total;
            if held >= limit {
                return Err(format!(
                    "the queues hold {held} bytes of messages, at their budget of {limit} \
                     (--queue-budget)"
                ));
            }
            let files = self.files_estimate(held, limit);
            // sled's data file grows a segment at a time: the one being filled counts whole.
            if files.saturating_add(SLED_SEGMENT) >= limit {
                return Err(format!(
                    "the queues' files take {files} bytes, at their budget of {limit} \
                     (--queue-budget)"
                ));
            }
        }
        if bytes > 0 {
            pending.total += bytes;
            *pending.by_pipeline.entry(pipeline.to_string()).or_default() += bytes;
        }
        Ok(())
    }

    fn release(&self, pipeline: &str, bytes: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.total = pending.total.saturating_sub(bytes);
        if let Some(mine) = pending.by_pipeline.get_mut(pipeline) {
            *mine = mine.saturating_sub(bytes);
            if *mine == 0 {
                pending.by_pipeline.remove(pipeline);
            }
        }
    }

    /// The size of the store's files: measured when the last measurement is too old, else
    /// that measurement plus what the queues gained since (`held` now), scaled by how much
    /// larger the files were than what they held then (sled's log writes a page again when it
    /// changes, and reclaims the old copy later: the files grow faster than what they hold).
    fn files_estimate(&self, held: u64, limit: u64) -> u64 {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let growth = held.saturating_sub(files.held_then);
        // A small store's files are mostly sled's fixed overhead: no ratio to learn from.
        let ratio = if files.held_then < MIN_HELD_FOR_RATIO {
            1
        } else {
            (files.size / files.held_then).clamp(1, MAX_FILES_RATIO)
        };
        let estimate = files.size.saturating_add(growth.saturating_mul(ratio));
        let near = limit.saturating_sub(limit / 10 + SLED_SEGMENT);
        let trusted_for = if estimate >= near {
            MEASURE_NEAR_BUDGET_EVERY
        } else {
            MEASURE_EVERY
        };
        if files.at.is_some_and(|at| at.elapsed() < trusted_for) {
            return estimate;
        }
        match self.queue.size_on_disk() {
            Ok(size) => {
                *files = FilesMeasure {
                    at: Some(Instant::now()),
                    size,
                    held_then: held,
                };
                size
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot measure the queue store");
                estimate
            }
        }
    }

    /// Why nothing can be written at all now (the store failed, the filesystem is full or
    /// read-only), or `None`; measured at most every [`MEASURE_EVERY`].
    fn health_refusal(&self) -> Option<String> {
        let mut verdict = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if verdict.0.is_none_or(|at| at.elapsed() >= MEASURE_EVERY) {
            let refusal = self.measure_health();
            if refusal.is_some() != verdict.1.is_some() {
                match &refusal {
                    Some(why) => tracing::warn!(reason = %why, "refusing new messages"),
                    None => tracing::info!("storage is fine again; accepting new messages"),
                }
            }
            *verdict = (Some(Instant::now()), refusal);
        }
        verdict.1.clone()
    }

    fn measure_health(&self) -> Option<String> {
        if let Some(failure) = self.queue.failure() {
            return Some(format!("the queue store failed: {failure}"));
        }
        match rustix::fs::statvfs(&self.dir) {
            Ok(fs) => {
                if fs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
                    return Some("the queues' filesystem is read-only".into());
                }
                let free = fs.f_bavail.saturating_mul(fs.f_frsize);
                if free < self.min_free {
                    return Some(format!(
                        "the queues' filesystem has {free} bytes free, under the reserve of {}",
                        self.min_free
                    ));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.dir.display(), "cannot ask the filesystem for free space")
            }
        }
        None
    }
}

/// One pipeline's view of the storage checks: its own budget besides the server's.
pub struct PipelineBudget {
    shared: Arc<DiskBudget>,
    pipeline: String,
    limit: Option<u64>,
    /// Whether the last check refused (to log changes, not every refusal).
    refusing: AtomicBool,
}

impl PipelineBudget {
    /// The pipeline's own budget in bytes, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Why nothing should be written for this pipeline now, or `None`: the early check, before
    /// a request's body is read or a source polled.
    pub fn refusal(&self) -> Option<String> {
        self.verdict(self.shared.check(&self.pipeline, self.limit, 0))
            .err()
    }

    /// Admits a write of at most `bytes`, or says why not. The returned reservation counts
    /// against the budgets until dropped: drop it once the store's write call has returned
    /// (the store counts the bytes from then on; waiting for the commit would count them
    /// twice meanwhile and refuse early).
    pub fn admit(&self, bytes: u64) -> Result<Reservation, String> {
        self.verdict(self.shared.check(&self.pipeline, self.limit, bytes))?;
        Ok(Reservation {
            shared: self.shared.clone(),
            pipeline: self.pipeline.clone(),
            bytes,
        })
    }

    fn verdict(&self, verdict: Result<(), String>) -> Result<(), String> {
        let refusing = verdict.is_err();
        if self.refusing.swap(refusing, Ordering::Relaxed) != refusing {
            match &verdict {
                Err(why) => {
                    tracing::warn!(pipeline = %self.pipeline, reason = %why, "refusing new messages for this pipeline")
                }
                Ok(()) => {
                    tracing::info!(pipeline = %self.pipeline, "accepting new messages again")
                }
            }
        }
        verdict
    }
}

/// Bytes admitted and not yet durable; released when dropped.
#[must_use = "the bytes are counted only while the reservation is held"]
pub struct Reservation {
    shared: Arc<DiskBudget>,
    pipeline: String,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.shared.release(&self.pipeline, self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_message::{Message, Severity};

    fn message(body_len: usize) -> Message {
        Message {
            id: "m".into(),
            timestamp_ms: 1,
            severity: Severity::Error,
            summary: None,
            body: "x".repeat(body_len),
            labels: vec![],
            metrics: vec![],
            payload: None,
            link: None,
            key: None,
        }
    }

    fn store() -> (tempfile::TempDir, Arc<dyn QueueStore>) {
        let dir = tempfile::tempdir().unwrap();
        let queue: Arc<dyn QueueStore> = tocsin_queue::SledStore::open(dir.path()).unwrap();
        (dir, queue)
    }

    /// Admitting while under the budget and writing what was admitted: the pipeline ends at
    /// most one write over its budget, and writes that were admitted but are still being
    /// written count, so concurrent writers cannot all take the last room.
    #[tokio::test]
    async fn a_pipeline_budget_is_passed_by_at_most_one_write_and_counts_writes_in_flight() {
        let (dir, queue) = store();
        let budget = DiskBudget::new(None, 0, dir.path().into(), queue.clone());
        let open = budget.for_pipeline("open", Some(100_000));
        let batch = vec![message(3_000)];
        let size = queue.append_size_bound(&batch, &[]);
        let mut written = 0;
        while let Ok(reservation) = open.admit(size) {
            queue.append_ingress("open", &batch, &[]).await.unwrap();
            drop(reservation);
            written += 1;
        }
        let held = queue.stored_bytes("open").unwrap();
        assert!(written > 0);
        assert!(
            (100_000..100_000 + size).contains(&held),
            "{held} bytes held under a budget of 100000 with writes of {size}"
        );
        let why = open.refusal().expect("at the budget");
        assert!(
            why.contains("pipeline `open`") && why.contains("queue budget"),
            "{why}"
        );

        // Another pipeline is not touched; its reservations count before they are written.
        let other = budget.for_pipeline("other", Some(10_000));
        let first = other.admit(6_000).expect("room");
        let second = other.admit(6_000).expect("still under: 6000 < 10000");
        assert!(other.admit(1).is_err(), "12000 reserved is over 10000");
        drop((first, second));
        assert!(
            other.admit(1).is_ok(),
            "released reservations free the room"
        );
    }

    /// The server's budget holds across pipelines, and a pipeline without its own gets half
    /// of it.
    #[tokio::test]
    async fn the_server_budget_holds_across_pipelines_and_gives_each_half_by_default() {
        let (dir, queue) = store();
        let budget = DiskBudget::new(Some(1 << 30), 0, dir.path().into(), queue.clone());
        assert_eq!(budget.for_pipeline("p", None).limit(), Some(1 << 29));
        assert_eq!(budget.for_pipeline("p", Some(5)).limit(), Some(5));

        let (dir, queue) = store();
        let budget = DiskBudget::new(Some(64 << 20), 0, dir.path().into(), queue.clone());
        let a = budget.for_pipeline("a", Some(1 << 30));
        let b = budget.for_pipeline("b", Some(1 << 30));
        let _a_reserved = a.admit(40 << 20).unwrap();
        let _b_reserved = b.admit(20 << 20).unwrap();
        let _last = b
            .admit(5 << 20)
            .expect("60 MiB is under 64 MiB: the last write admitted");
        let why = a.admit(1).map(drop).unwrap_err();
        assert!(
            why.contains("hold") && why.contains("--queue-budget"),
            "{why}"
        );
    }

    /// The store's files are held to the server's budget too, measured.
    #[tokio::test]
    async fn the_files_of_the_store_are_held_to_the_server_budget() {
        let (dir, queue) = store();
        queue
            .append_ingress("p", &[message(10)], &[])
            .await
            .unwrap();
        queue.flush().await.unwrap();
        let on_disk = queue.size_on_disk().unwrap();
        let budget = DiskBudget::new(Some(on_disk), 0, dir.path().into(), queue.clone());
        let why = budget.for_pipeline("p", None).refusal().unwrap();
        assert!(why.contains("files take"), "{why}");
    }
}
