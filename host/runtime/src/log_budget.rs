//! How many host log lines one stage's plugin may cause: its own log lines (the `log` import,
//! stderr) and the host's lines about what it did (a refused outbound request). One budget per
//! stage, shared by its instances: a token bucket of [`LINES_PER_SECOND`] with bursts of
//! [`BURST`].
//!
//! Without it a plugin could write the host's log full: one `deliver` call that tried 200 000
//! ungranted requests wrote 200 002 warnings (46 MB) in two seconds. Past the budget lines are
//! dropped and counted ([`LogBudget::dropped`], exported as
//! `tocsin_plugin_log_lines_dropped_total`), and the next line let through is preceded by one
//! saying how many were suppressed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Lines per second a stage's plugin may cause, on average.
pub const LINES_PER_SECOND: f64 = 20.0;
/// Lines it may cause at once.
pub const BURST: f64 = 100.0;

struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// Dropped since the last notice.
    suppressed: u64,
}

/// One stage's log budget; cheap to clone (clones share it).
#[derive(Clone)]
pub struct LogBudget {
    bucket: Arc<Mutex<Bucket>>,
    dropped: Arc<AtomicU64>,
    pipeline: Arc<str>,
    stage: Arc<str>,
}

impl LogBudget {
    /// A full budget for `pipeline`'s `stage`.
    pub fn new(pipeline: &str, stage: &str) -> Self {
        LogBudget {
            bucket: Arc::new(Mutex::new(Bucket {
                tokens: BURST,
                refilled: Instant::now(),
                suppressed: 0,
            })),
            dropped: Arc::new(AtomicU64::new(0)),
            pipeline: pipeline.into(),
            stage: stage.into(),
        }
    }

    /// Lines dropped over the stage's life.
    pub fn dropped(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }

    /// Whether one more line may be logged now. Before the first line let through after some
    /// were dropped, logs how many were.
    pub fn admit(&self) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let earned = now.duration_since(bucket.refilled).as_secs_f64() * LINES_PER_SECOND;
        bucket.tokens = (bucket.tokens + earned).min(BURST);
        bucket.refilled = now;
        if bucket.tokens < 1.0 {
            bucket.suppressed += 1;
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        bucket.tokens -= 1.0;
        let suppressed = std::mem::take(&mut bucket.suppressed);
        drop(bucket);
        if suppressed > 0 {
            tracing::warn!(
                pipeline = %self.pipeline,
                stage = %self.stage,
                suppressed,
                "suppressed {suppressed} log lines caused by this plugin (over {LINES_PER_SECOND} lines/s)"
            );
        }
        true
    }

    /// Counts a line dropped by another rule (a per-call cap, a byte budget) too.
    pub fn count_dropped(&self) {
        self.bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .suppressed += 1;
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_burst_and_counted() {
        let budget = LogBudget::new("p", "sink.s");
        let admitted = (0..10_000).filter(|_| budget.admit()).count();
        // The burst, and whatever the clock earned while the loop ran (well under a second,
        // even on a loaded machine).
        assert!((100..=120).contains(&admitted), "{admitted}");
        assert_eq!(
            budget.dropped().load(Ordering::Relaxed),
            10_000 - admitted as u64
        );
    }
}
