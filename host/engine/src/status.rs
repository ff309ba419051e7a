//! What each pipeline is doing, and counters of what it did.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The state of one pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineState {
    /// Building its stages.
    Starting,
    /// Running.
    Running,
    /// Not running, and why (an invalid file, a plugin that failed `init`, …).
    Failed(String),
    /// Its file says `disabled = true`.
    Disabled,
    /// Stopped (shutdown, or its file was removed; its queues are kept).
    Stopped,
}

/// Counters of one pipeline; cheap to update from any task.
#[derive(Debug, Default)]
pub struct Counters {
    /// Source polls run.
    pub polls: AtomicU64,
    /// Messages the source produced.
    pub produced: AtomicU64,
    /// Messages handed over to sink queues.
    pub handed_over: AtomicU64,
    /// Messages delivered by sinks.
    pub delivered: AtomicU64,
    /// Failed attempts (filters and sinks) that will be retried.
    pub retries: AtomicU64,
    /// Messages moved to dead letters.
    pub dead_lettered: AtomicU64,
    /// Plugin calls the host stopped (traps, CPU, memory, timeouts).
    pub plugin_traps: AtomicU64,
    /// Plugin calls that returned an error.
    pub plugin_errors: AtomicU64,
}

impl Counters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Shared status of one pipeline.
#[derive(Debug)]
pub struct PipelineStatus {
    state: Mutex<PipelineState>,
    /// Its counters.
    pub counters: Counters,
}

impl PipelineStatus {
    /// A new status in `Starting`.
    pub fn new() -> Arc<Self> {
        Arc::new(PipelineStatus {
            state: Mutex::new(PipelineState::Starting),
            counters: Counters::default(),
        })
    }

    /// The current state.
    pub fn state(&self) -> PipelineState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets the state.
    pub fn set(&self, state: PipelineState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }
}
