//! Durable queues between pipeline stages, behind a small trait.
//!
//! A pipeline has an *ingress* queue (what its source produced, waiting for the filters), one
//! queue per sink (waiting for delivery), one dead-letter queue per sink (and one for messages
//! the filters could not handle), and the durable state of its plugins.
//!
//! The contract every backend keeps:
//! - **Persist before acknowledge.** [`QueueStore::append_ingress`], [`QueueStore::hand_over`]
//!   and [`QueueStore::dead_letter`] return a [`Commit`] that resolves only once the write is
//!   durable. Callers acknowledge their producer (an HTTP client, a cron tick) after that.
//! - **Atomic hand-over.** Removing a message from ingress, appending what the filters made of
//!   it to the sink queues and writing the plugin state they changed happen together or not at
//!   all, even across `kill -9`.
//! - **Order.** Each queue iterates in arrival order.
//!
//! [`sled_store::SledStore`] is the embedded backend (one machine);
//! [`jetstream::JetStreamStore`] keeps the same queues in replicated NATS JetStream streams
//! (see its docs for what is atomic there and what is at least once).

mod attempts;
pub mod contract;
pub mod ingress_batch;
pub mod jetstream;
pub mod sled_store;
mod sled_writes;
mod value_files;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use tocsin_message::Message;

pub use jetstream::{JetStreamOptions, JetStreamStore};
pub use sled_store::{ScanReport, SledStore};

/// A position in a queue: increasing in arrival order, unique within its queue.
pub type Seq = u64;

/// The pseudo queue name under which messages the filters failed on are dead-lettered.
/// (Sink names cannot contain `@`.)
pub const FILTERS_QUEUE: &str = "@filters";

/// Errors of the queue store.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The storage engine failed (disk full, I/O error, corruption).
    #[error("storage error: {0}")]
    Storage(String),
    /// A record could not be decoded.
    #[error("corrupt record in {queue}: {source}")]
    Corrupt {
        /// Which queue, in words: `ingress of p`, `p/out`, `dead letters of p/out`.
        queue: String,
        /// Why.
        source: tocsin_message::DecodeError,
    },
    /// Another process (another `tocsin run`, or a `tocsin dlq`/`queue` command) has the
    /// store open. Nothing is wrong with the data.
    #[error(
        "the queue database in {dir} is in use by another tocsin process{}; only one \
         process may open it at a time. Stop that process first, or give this one another \
         --data directory. The data is not damaged: do not move it aside",
        holder.map_or(String::new(), |pid| format!(" (pid {pid})"))
    )]
    InUse {
        /// The store's directory.
        dir: String,
        /// The holder's process id, as it recorded it.
        holder: Option<u32>,
    },
    /// The call moves queue entries, and another process delivers for the shared store
    /// (this one takes ingest only; see [`QueueStore::delivers`]).
    #[error("{what}: this tocsin process takes ingest only; {delivering} delivers for the shared queue store: ask it")]
    NotDelivering {
        /// What was asked.
        what: String,
        /// The process that delivers, as the store names it.
        delivering: String,
    },
    /// The store is shutting down; the write may not be durable.
    #[error("the queue store is closed")]
    Closed,
    /// No such entry.
    #[error("no entry {seq} in {queue}")]
    NotFound {
        /// Which queue.
        queue: String,
        /// Which entry.
        seq: Seq,
    },
}

/// Shorthand.
pub type Result<T> = std::result::Result<T, QueueError>;

/// A message waiting in a queue, with its delivery history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The message.
    pub message: Message,
    /// Failed attempts so far.
    pub attempts: u32,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Do not try before this time (ms since the epoch); 0 = now.
    pub not_before_ms: u64,
    /// When the message entered its pipeline (ms since the epoch): the ingress append, kept
    /// through the hand-over so latency covers the whole way.
    pub enqueued_ms: u64,
}

/// An [`Envelope`] as record format 1 laid it out (its message without link and key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvelopeFormat1 {
    message: tocsin_message::MessageFormat1,
    attempts: u32,
    last_error: Option<String>,
    not_before_ms: u64,
    enqueued_ms: u64,
}

impl From<EnvelopeFormat1> for Envelope {
    fn from(e: EnvelopeFormat1) -> Self {
        Envelope {
            message: e.message.into(),
            attempts: e.attempts,
            last_error: e.last_error,
            not_before_ms: e.not_before_ms,
            enqueued_ms: e.enqueued_ms,
        }
    }
}

/// The envelope as format 1 holds it (for tests of old records).
impl From<&Envelope> for EnvelopeFormat1 {
    fn from(e: &Envelope) -> Self {
        EnvelopeFormat1 {
            message: (&e.message).into(),
            attempts: e.attempts,
            last_error: e.last_error.clone(),
            not_before_ms: e.not_before_ms,
            enqueued_ms: e.enqueued_ms,
        }
    }
}

/// `envelope` as a record of format 1, as builds before links and keys wrote it.
#[cfg(test)]
pub(crate) fn format_1_record(envelope: &Envelope) -> Vec<u8> {
    let mut bytes = vec![tocsin_message::RECORD_FORMAT_1];
    bytes.extend(postcard::to_stdvec(&EnvelopeFormat1::from(envelope)).unwrap());
    bytes
}

impl tocsin_message::Record for Envelope {
    type Format1 = EnvelopeFormat1;
}

/// How errors name the dead letters of `queue` in `pipeline`.
pub(crate) fn dead_letters_of(pipeline: &str, queue: &str) -> String {
    format!("dead letters of {pipeline}/{queue}")
}

/// Decodes a stored envelope; `queue` names where it lay (`ingress of p`, `p/out`,
/// `dead letters of p/out`) for the error.
pub(crate) fn decode_envelope(bytes: &[u8], queue: impl FnOnce() -> String) -> Result<Envelope> {
    tocsin_message::decode_record(bytes).map_err(|source| QueueError::Corrupt {
        queue: queue(),
        source,
    })
}

impl Envelope {
    /// The envelope a replayed dead letter goes back with: no attempts, due at once.
    pub fn replayed(&self) -> Envelope {
        Envelope {
            attempts: 0,
            not_before_ms: 0,
            ..self.clone()
        }
    }

    /// A fresh envelope with no attempts.
    pub fn new(message: Message, now_ms: u64) -> Self {
        Envelope {
            message,
            attempts: 0,
            last_error: None,
            not_before_ms: 0,
            enqueued_ms: now_ms,
        }
    }
}

/// One write to a plugin's durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWrite {
    /// The stage that owns the state (`source`, `filter.0`, `sink.<name>`).
    pub stage: String,
    /// The key.
    pub key: String,
    /// The new value; `None` deletes.
    pub value: Option<Vec<u8>>,
}

/// What the filters made of one ingress message, to commit atomically.
#[derive(Debug, Clone, Default)]
pub struct HandOver {
    /// The ingress entry to remove.
    pub ingress: Seq,
    /// Envelopes to append, per sink.
    pub outputs: Vec<(String, Vec<Envelope>)>,
    /// Plugin state the filters changed.
    pub state: Vec<StateWrite>,
}

/// Queue lengths of one pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Depths {
    /// Waiting for the filters.
    pub ingress: usize,
    /// Waiting for delivery, per sink.
    pub sinks: Vec<(String, usize)>,
    /// Dead letters, per queue name (sinks and [`FILTERS_QUEUE`]).
    pub dead: Vec<(String, usize)>,
}

/// Resolves once a write is durable (or failed to be).
#[must_use = "a write is not durable until its Commit resolves"]
pub struct Commit(CommitInner);

enum CommitInner {
    Ready(Option<Result<()>>),
    Waiting(tokio::sync::oneshot::Receiver<Result<()>>),
}

impl Commit {
    /// An already-resolved commit.
    pub fn ready(result: Result<()>) -> Self {
        Commit(CommitInner::Ready(Some(result)))
    }

    /// A commit resolved by whoever holds the sender.
    pub fn waiting(rx: tokio::sync::oneshot::Receiver<Result<()>>) -> Self {
        Commit(CommitInner::Waiting(rx))
    }

    /// Whether the write was applied: readers see it from now on, before it is durable. False
    /// only for a write that failed at once (nothing of it was applied).
    pub fn applied(&self) -> bool {
        !matches!(self.0, CommitInner::Ready(Some(Err(_))))
    }

    /// Blocks the current thread until durable (for synchronous callers such as the CLI).
    pub fn wait_blocking(self) -> Result<()> {
        match self.0 {
            CommitInner::Ready(r) => r.unwrap_or(Ok(())),
            CommitInner::Waiting(rx) => rx.blocking_recv().unwrap_or(Err(QueueError::Closed)),
        }
    }
}

impl Future for Commit {
    type Output = Result<()>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match &mut self.0 {
            CommitInner::Ready(r) => Poll::Ready(r.take().unwrap_or(Ok(()))),
            CommitInner::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(QueueError::Closed))),
        }
    }
}

/// The durable queues of every pipeline.
///
/// Reads (`*_head`, `state_get`, listings) see every write made so far, durable or not —
/// except an ingress append on JetStream, readable once its commit resolves (callers wake the
/// filters after that).
/// Writes whose loss would lose a message return a [`Commit`]; the others (`ack`,
/// `record_failure`) are made durable by the next commit or within a second, since losing them
/// only causes a redelivery under the same idempotency key.
pub trait QueueStore: Send + Sync + 'static {
    /// Appends messages to a pipeline's ingress queue, with plugin state the source changed.
    fn append_ingress(&self, pipeline: &str, messages: &[Message], state: &[StateWrite]) -> Commit;

    /// The oldest ingress entry, left in place.
    fn ingress_head(&self, pipeline: &str) -> Result<Option<(Seq, Envelope)>>;

    /// The oldest ingress entries, oldest first, left in place: up to `limit` of them, or a
    /// few more when a backend keeps entries appended together together (it may then return
    /// the rest of such a group, so the group is handed over in one piece).
    fn ingress_heads(&self, pipeline: &str, limit: usize) -> Result<Vec<(Seq, Envelope)>>;

    /// Rewrites an ingress entry after a failed filter run (attempts, last error, not before).
    fn update_ingress(&self, pipeline: &str, seq: Seq, envelope: &Envelope) -> Result<()>;

    /// Atomically removes an ingress entry, appends its outputs to sink queues and writes the
    /// plugin state (see the crate docs).
    fn hand_over(&self, pipeline: &str, hand_over: HandOver) -> Commit {
        self.hand_over_all(pipeline, vec![hand_over])
    }

    /// Several hand-overs in one atomic batch and one commit, applied in order (the filter
    /// worker's group commit: one fsync for a run of messages instead of one each).
    fn hand_over_all(&self, pipeline: &str, hand_overs: Vec<HandOver>) -> Commit;

    /// The oldest entry of a sink queue, left in place.
    fn sink_head(&self, pipeline: &str, sink: &str) -> Result<Option<(Seq, Envelope)>>;

    /// Up to `limit` of the oldest entries of a sink queue, oldest first, left in place.
    fn sink_heads(&self, pipeline: &str, sink: &str, limit: usize) -> Result<Vec<(Seq, Envelope)>>;

    /// Removes a delivered entry, writing the plugin state the sink changed in the same batch.
    fn ack(&self, pipeline: &str, sink: &str, seq: Seq, state: &[StateWrite]) -> Result<()>;

    /// Writes state on its own, not with a message's step (a grouped sink's flush record):
    /// durable when the commit resolves.
    fn put_state(&self, pipeline: &str, state: &[StateWrite]) -> Commit;

    /// Appends envelopes to sink queues and writes host or plugin state, in one atomic batch:
    /// a message that enters sink queues without coming from ingress (one a silence held
    /// back, announced when the silence ends).
    fn append_to_sinks(
        &self,
        pipeline: &str,
        outputs: &[(String, Vec<Envelope>)],
        state: &[StateWrite],
    ) -> Commit;

    /// Every value of a stage's state, in key order (the host's own state: the open-alert
    /// register, a grouped sink's groups).
    fn state_scan(&self, pipeline: &str, stage: &str) -> Result<Vec<(String, Vec<u8>)>>;

    /// Writes (or, with `None`, deletes) a record of the server's own state, outside any
    /// pipeline: silences. Durable when the commit resolves.
    fn server_state_put(&self, key: &str, value: Option<&[u8]>) -> Commit;

    /// The server's own state records whose key starts with `prefix`, in key order.
    fn server_state_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;

    /// Rewrites a sink entry after a failed attempt.
    fn record_failure(
        &self,
        pipeline: &str,
        sink: &str,
        seq: Seq,
        envelope: &Envelope,
    ) -> Result<()>;

    /// Moves an entry of `queue` (a sink name, or [`FILTERS_QUEUE`] for ingress) to that
    /// queue's dead letters, with its final envelope.
    fn dead_letter(&self, pipeline: &str, queue: &str, seq: Seq, envelope: &Envelope) -> Commit;

    /// The dead letters of `queue`, oldest first.
    fn dead_letters(&self, pipeline: &str, queue: &str) -> Result<Vec<(Seq, Envelope)>>;

    /// Moves dead letters back to the tail of their queue with a fresh attempt count;
    /// `None` replays all of them. Returns how many moved.
    fn replay(&self, pipeline: &str, queue: &str, seq: Option<Seq>) -> Result<usize>;

    /// Deletes dead letters; `None` deletes all of them. Returns how many went.
    fn purge_dead(&self, pipeline: &str, queue: &str, seq: Option<Seq>) -> Result<usize>;

    /// Reads one value of a stage's plugin state.
    fn state_get(&self, pipeline: &str, stage: &str, key: &str) -> Result<Option<Vec<u8>>>;

    /// Queue lengths of a pipeline.
    fn depths(&self, pipeline: &str) -> Result<Depths>;

    /// Pipelines that have anything stored, deleted ones included.
    fn pipelines(&self) -> Result<Vec<String>>;

    /// Removes everything stored for a pipeline.
    fn purge_pipeline(&self, pipeline: &str) -> Result<()>;

    /// Whether this process moves the queues' entries (runs filters, deliveries and
    /// schedules), and every change of it. Always `true` for an embedded store; on a shared
    /// one (JetStream), only for the process that holds the namespace: the others take
    /// ingest (they append) and stand by, and turn `true` when they take over.
    fn delivers(&self) -> tokio::sync::watch::Receiver<bool> {
        tokio::sync::watch::channel(true).1
    }

    /// Who delivers, when this process does not (as the shared store names it); `None`
    /// when this process does.
    fn delivered_by(&self) -> Option<String> {
        None
    }

    /// Wakes `ready` whenever another process appends to `pipeline`'s ingress (a shared
    /// store; an embedded one has no other process). Replaces the pipeline's previous signal.
    fn watch_ingress(&self, _pipeline: &str, _ready: std::sync::Arc<tokio::sync::Notify>) {}

    /// Makes every write so far durable.
    fn flush(&self) -> Commit;

    /// Bytes the store takes on disk (for the disk budget).
    fn size_on_disk(&self) -> Result<u64>;

    /// Bytes of what a pipeline's queues, dead letters and plugin state hold (keys and
    /// values as stored), kept up to date by every write — counted once the call that writes
    /// returns, before its [`Commit`] resolves: what its queue budget is checked against.
    fn stored_bytes(&self, pipeline: &str) -> Result<u64>;

    /// [`QueueStore::stored_bytes`] of every pipeline together.
    fn stored_bytes_total(&self) -> u64;

    /// At most how many bytes [`QueueStore::append_ingress`] of these would add to
    /// [`QueueStore::stored_bytes`] (checked against the budgets before the append).
    fn append_size_bound(&self, messages: &[Message], state: &[StateWrite]) -> u64;

    /// Writes (`Some`) or removes (`None`) keys of a pipeline's metric history, apart from its
    /// queues (not counted in [`QueueStore::stored_bytes`]), in one batch. Durable with the
    /// next commit.
    fn history_write(&self, pipeline: &str, writes: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<()> {
        let _ = (pipeline, writes);
        Ok(())
    }

    /// The metric-history entries of `pipeline` with keys in `from..to`, in key order, until
    /// `visit` returns `false`.
    fn history_range(
        &self,
        pipeline: &str,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let _ = (pipeline, from, to, visit);
        Ok(())
    }

    /// Pipelines with a metric history.
    fn history_pipelines(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Appends message-trace records `(time in ms, bytes)` of `pipeline`, apart from its
    /// queues (not counted in [`QueueStore::stored_bytes`]). Durable with the next commit.
    fn trace_append(&self, pipeline: &str, records: &[(u64, Vec<u8>)]) -> Result<()> {
        let _ = (pipeline, records);
        Ok(())
    }

    /// The trace records of `pipeline` written since about `from_ms` (whole appends begun at
    /// or after it; 0 for all), oldest first.
    fn trace_scan_since(
        &self,
        pipeline: &str,
        from_ms: u64,
        visit: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        let _ = (pipeline, from_ms, visit);
        Ok(())
    }

    /// Pipelines with trace records.
    fn traced_pipelines(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Removes the trace records of `pipeline` older than `before_ms`, then the oldest of the
    /// rest beyond the newest `keep`. Returns how many went.
    fn trace_prune(&self, pipeline: &str, before_ms: u64, keep: usize) -> Result<usize> {
        let _ = (pipeline, before_ms, keep);
        Ok(0)
    }

    /// A failure after which the store refuses every write until it is reopened (a sled
    /// database that hit `ENOSPC` or `EROFS` while syncing stays in that state); `None` while
    /// healthy. What was acknowledged before is on disk; the server restarts to recover.
    fn failure(&self) -> Option<String> {
        None
    }

    /// How long the sync now running has been running; `None` when none is. A sync that does
    /// not come back (sled wedged after an I/O error it could not recover from) leaves the
    /// process unable to acknowledge anything: the server's watchdog restarts it.
    fn stalled(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
