//! What each pipeline is doing, and counters of what it did.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tocsin_runtime::CallError;

/// The state of one pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineState {
    /// Building its stages.
    Starting,
    /// Running.
    Running,
    /// Only its ingest endpoint runs here: another tocsin process delivers for the shared
    /// queue store, and this one takes over if that one is lost.
    IngestOnly,
    /// Not running, and why (an invalid file, a plugin that failed `init`, …).
    Failed(String),
    /// Its file says `disabled = true`.
    Disabled,
    /// An operator paused it (through the admin API); kept across restarts.
    Paused,
    /// Stopped by the shutdown. (A pipeline whose file was removed leaves the board; its
    /// queues are kept and reported as `no_file`.)
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
    /// Messages a silence kept from a sink (one per sink).
    pub silenced: AtomicU64,
    /// Reminders of acknowledged alerts kept from a sink (one per sink).
    pub acknowledged: AtomicU64,
}

impl Counters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Every counter by name (`messages_in`, `delivered`, …), as the admin API shows them.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        [
            ("polls", &self.polls),
            ("messages_in", &self.produced),
            ("handed_over", &self.handed_over),
            ("delivered", &self.delivered),
            ("retries", &self.retries),
            ("dead_lettered", &self.dead_lettered),
            ("plugin_traps", &self.plugin_traps),
            ("plugin_errors", &self.plugin_errors),
            ("silenced", &self.silenced),
            ("acknowledged", &self.acknowledged),
        ]
        .into_iter()
        .map(|(name, counter)| (name.to_string(), Counters::get(counter)))
        .collect()
    }
}

/// What happened at one stage, counted per stage for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StageEvent {
    /// The host stopped a call (CPU, memory, timeout, trap).
    Trap,
    /// A call returned an error.
    Error,
    /// A failed attempt that will be retried.
    Retry,
    /// A message moved to dead letters.
    DeadLetter,
    /// A silence kept a message from the sink.
    Silenced,
    /// An acknowledgement kept a reminder of its alert from the sink.
    Acknowledged,
}

impl StageEvent {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StageEvent::Trap => "trap",
            StageEvent::Error => "error",
            StageEvent::Retry => "retry",
            StageEvent::DeadLetter => "dead_letter",
            StageEvent::Silenced => "silenced",
            StageEvent::Acknowledged => "acknowledged",
        }
    }
}

/// Shared status of one pipeline.
#[derive(Debug)]
pub struct PipelineStatus {
    state: Mutex<PipelineState>,
    /// Its counters.
    pub counters: Counters,
    /// Events per (stage, event).
    stage_events: Mutex<BTreeMap<(String, StageEvent), u64>>,
    /// The names of its sinks, as its file declares them (empty until the file was read).
    sinks: Mutex<Vec<String>>,
    /// Its queue budget in bytes; 0 for none.
    queue_budget: AtomicU64,
    /// Ingest requests answered with an error, per status code.
    rejections: Mutex<BTreeMap<u16, u64>>,
    /// Per stage, the plugin it runs and its sha256.
    plugins: Mutex<BTreeMap<String, (String, String)>>,
    /// Per stage, the counters of log lines its plugin caused that were dropped (a stage's
    /// instances share one).
    log_drops: Mutex<BTreeMap<String, Vec<Arc<AtomicU64>>>>,
    /// Why its edited file was refused while the previous version still runs.
    file_error: Mutex<Option<String>>,
    /// Per sink whose deliveries fail: the first failure since its last delivery (ms since
    /// the epoch) and the last error.
    failing_sinks: Mutex<BTreeMap<String, (u64, String)>>,
    /// Per queue (a sink's name, `@filters`), why its last dead letter was moved there.
    dead_letter_errors: Mutex<BTreeMap<String, String>>,
}

impl PipelineStatus {
    /// A new status in `Starting`.
    pub fn new() -> Arc<Self> {
        Arc::new(PipelineStatus {
            state: Mutex::new(PipelineState::Starting),
            counters: Counters::default(),
            stage_events: Mutex::new(BTreeMap::new()),
            sinks: Mutex::new(Vec::new()),
            queue_budget: AtomicU64::new(0),
            rejections: Mutex::new(BTreeMap::new()),
            plugins: Mutex::new(BTreeMap::new()),
            log_drops: Mutex::new(BTreeMap::new()),
            file_error: Mutex::new(None),
            failing_sinks: Mutex::new(BTreeMap::new()),
            dead_letter_errors: Mutex::new(BTreeMap::new()),
        })
    }

    /// Starts a new version of the pipeline (its file changed and is valid): back to
    /// `Starting`, the plugins of the old version and a refusal of an earlier edit forgotten.
    /// Counters, stage events, rejections and dropped log lines are kept: they count what this
    /// process did, across reloads.
    pub fn begin_version(&self) {
        self.set(PipelineState::Starting);
        self.set_file_error(None);
        self.plugins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Counts `dropped` (a stage instance's dropped log lines) in the stage's total.
    pub fn track_log_drops(&self, stage: &str, dropped: Arc<AtomicU64>) {
        self.log_drops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(stage.to_string())
            .or_default()
            .push(dropped);
    }

    /// Log lines dropped per stage (over its log budget or a quota), for the metrics.
    pub fn log_lines_dropped(&self) -> Vec<(String, u64)> {
        self.log_drops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(stage, counters)| {
                let n = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
                (stage.clone(), n)
            })
            .collect()
    }

    /// Records the names of the pipeline's sinks, so its queues are reported (as empty)
    /// before anything was queued in them.
    pub fn set_sinks(&self, sinks: Vec<String>) {
        *self.sinks.lock().unwrap_or_else(|p| p.into_inner()) = sinks;
    }

    /// Records the plugin `stage` runs (as the file names it) and its sha256.
    pub fn record_plugin(&self, stage: &str, plugin: &str, sha256: &str) {
        self.plugins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stage.to_string(), (plugin.to_string(), sha256.to_string()));
    }

    /// Per stage, the plugin it runs and its sha256.
    pub fn plugins(&self) -> BTreeMap<String, (String, String)> {
        self.plugins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts an ingest request answered with `status` (an error).
    pub fn record_rejection(&self, status: u16) {
        *self
            .rejections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(status)
            .or_default() += 1;
    }

    /// Ingest requests answered with an error so far, per status code.
    pub fn rejections(&self) -> BTreeMap<u16, u64> {
        self.rejections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the pipeline's queue budget (for the metrics).
    pub fn set_queue_budget(&self, bytes: Option<u64>) {
        self.queue_budget
            .store(bytes.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    /// The pipeline's queue budget in bytes, if it has one.
    pub fn queue_budget(&self) -> Option<u64> {
        Some(self.queue_budget.load(std::sync::atomic::Ordering::Relaxed)).filter(|&b| b > 0)
    }

    /// The names of the pipeline's sinks.
    pub fn sinks(&self) -> Vec<String> {
        self.sinks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current state.
    pub fn state(&self) -> PipelineState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets the state.
    pub fn set(&self, state: PipelineState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// Counts an event of `stage` (and the pipeline's matching counter).
    pub fn record(&self, stage: &str, event: StageEvent) {
        let c = &self.counters;
        Counters::bump(match event {
            StageEvent::Trap => &c.plugin_traps,
            StageEvent::Error => &c.plugin_errors,
            StageEvent::Retry => &c.retries,
            StageEvent::DeadLetter => &c.dead_lettered,
            StageEvent::Silenced => &c.silenced,
            StageEvent::Acknowledged => &c.acknowledged,
        });
        *self
            .stage_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((stage.to_string(), event))
            .or_default() += 1;
    }

    /// Counts a failed plugin call of `stage`: a trap or an error.
    pub fn call_failed(&self, stage: &str, error: &CallError) {
        let event = if error.is_trap() {
            StageEvent::Trap
        } else {
            StageEvent::Error
        };
        self.record(stage, event);
    }

    /// Records that the pipeline's file changed and was refused (`Some`, with the errors)
    /// while its previous version still runs, or that no refusal stands (`None`).
    pub fn set_file_error(&self, errors: Option<String>) {
        *lock(&self.file_error) = errors;
    }

    /// Why its edited file was refused, while the previous version still runs.
    pub fn file_error(&self) -> Option<String> {
        lock(&self.file_error).clone()
    }

    /// Counts a failed delivery attempt of `sink` that will be retried, keeping when the
    /// failures began.
    pub fn sink_failed(&self, sink: &str, error: &str) {
        self.record(&format!("sink.{sink}"), StageEvent::Retry);
        let now = tocsin_queue::now_ms();
        lock(&self.failing_sinks)
            .entry(sink.to_string())
            .and_modify(|(_, last)| *last = error.to_string())
            .or_insert_with(|| (now, error.to_string()));
    }

    /// `sink` delivered: it is not failing any more.
    pub fn sink_delivered(&self, sink: &str) {
        lock(&self.failing_sinks).remove(sink);
    }

    /// The sinks whose deliveries fail, since when, with the last error.
    pub fn failing_sinks(&self) -> Vec<crate::self_events::FailingSink> {
        lock(&self.failing_sinks)
            .iter()
            .map(
                |(sink, (since_ms, error))| crate::self_events::FailingSink {
                    sink: sink.clone(),
                    since_ms: *since_ms,
                    last_error: error.clone(),
                },
            )
            .collect()
    }

    /// Counts a message of `stage` moved to the dead letters of `queue`, and why.
    pub fn dead_lettered(&self, stage: &str, queue: &str, error: &str) {
        self.record(stage, StageEvent::DeadLetter);
        lock(&self.dead_letter_errors).insert(queue.to_string(), error.to_string());
    }

    /// Per queue, why its last dead letter was moved there (since this process started).
    pub fn dead_letter_errors(&self) -> Vec<(String, String)> {
        lock(&self.dead_letter_errors)
            .iter()
            .map(|(q, e)| (q.clone(), e.clone()))
            .collect()
    }

    /// Every (stage, event, count) so far.
    pub fn stage_events(&self) -> Vec<(String, StageEvent, u64)> {
        self.stage_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((stage, event), n)| (stage.clone(), *event, *n))
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The statuses of every known pipeline, shared with whoever reports them.
pub type StatusBoard = Arc<Mutex<BTreeMap<String, Arc<PipelineStatus>>>>;

/// Every pipeline's status as the board holds it now, by name (the board's lock is held only
/// while they are copied).
pub fn board_snapshot(board: &StatusBoard) -> Vec<(String, Arc<PipelineStatus>)> {
    lock(board)
        .iter()
        .map(|(name, status)| (name.clone(), status.clone()))
        .collect()
}
