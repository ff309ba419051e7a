//! Back-pressure on storage: before a producer's messages are written, the guard checks that
//! the queues are under their disk budget, that their filesystem has the free space reserve
//! and is writable, and that the store has not failed. When any check fails, ingest answers
//! 503 with `Retry-After` and cron sources skip their ticks — never a silent drop — while
//! deliveries go on and free space. When the space returns, so does ingest.
//!
//! Checking *before* the write matters with sled: once sled hits `ENOSPC` or `EROFS` it
//! refuses every later write until the process reopens it (see [`crate::server`]'s store
//! watchdog), so the reserve keeps a full disk an ordinary, recoverable 503.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tocsin_queue::QueueStore;

/// How long a measurement is trusted (measuring walks the store's files and asks the
/// filesystem).
pub const MEASURE_EVERY: Duration = Duration::from_millis(250);

/// The default free space kept on the queues' filesystem.
pub const DEFAULT_MIN_FREE_SPACE: u64 = 64 << 20;

/// The checks, and the last verdict.
pub struct DiskBudget {
    limit: Option<u64>,
    min_free: u64,
    dir: PathBuf,
    queue: Arc<dyn QueueStore>,
    verdict: Mutex<(Option<Instant>, Option<String>)>,
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
            verdict: Mutex::new((None, None)),
        })
    }

    /// Why nothing should be written now, or `None` when writing is fine.
    pub fn refusal(&self) -> Option<String> {
        let mut verdict = self.verdict.lock().unwrap_or_else(|p| p.into_inner());
        if verdict.0.is_none_or(|at| at.elapsed() >= MEASURE_EVERY) {
            let refusal = self.measure();
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

    fn measure(&self) -> Option<String> {
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
        if let Some(limit) = self.limit {
            match self.queue.size_on_disk() {
                Ok(size) if size >= limit => {
                    return Some(format!(
                        "the queues take {size} bytes, over their disk budget of {limit}"
                    ))
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot measure the queue store"),
            }
        }
        None
    }

    /// The budget in bytes, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }
}
