//! The queues' disk budget: past it, ingest answers 503 with `Retry-After` and cron sources
//! skip their ticks — back-pressure, never a silent drop. Deliveries go on and free space.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tocsin_queue::QueueStore;

/// How long a measured size is trusted (measuring walks the store's files).
pub const MEASURE_EVERY: Duration = Duration::from_secs(1);

/// The budget and the last measurement.
pub struct DiskBudget {
    limit: Option<u64>,
    queue: Arc<dyn QueueStore>,
    measured: Mutex<Option<Instant>>,
    size: AtomicU64,
}

impl DiskBudget {
    /// A budget of `limit` bytes (`None`: unlimited) over `queue`.
    pub fn new(limit: Option<u64>, queue: Arc<dyn QueueStore>) -> Arc<Self> {
        Arc::new(DiskBudget {
            limit,
            queue,
            measured: Mutex::new(None),
            size: AtomicU64::new(0),
        })
    }

    /// Whether the store is at or past its budget.
    pub fn exceeded(&self) -> bool {
        let Some(limit) = self.limit else {
            return false;
        };
        let mut measured = self.measured.lock().unwrap_or_else(|p| p.into_inner());
        if measured.is_none_or(|at| at.elapsed() >= MEASURE_EVERY) {
            match self.queue.size_on_disk() {
                Ok(size) => self.size.store(size, Ordering::Relaxed),
                Err(e) => tracing::warn!(error = %e, "cannot measure the queue store"),
            }
            *measured = Some(Instant::now());
        }
        self.size.load(Ordering::Relaxed) >= limit
    }

    /// The budget in bytes, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }
}
