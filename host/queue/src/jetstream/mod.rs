//! The NATS JetStream backend: the same queues as [`crate::SledStore`], kept in replicated
//! JetStream streams, so that more than one machine can hold them and a machine lost loses
//! nothing acknowledged.
//!
//! # Layout (see [`names`])
//! Each pipeline has a stream of file storage (`replicas` copies) with a subject per queue:
//! ingress, each sink queue, each queue's dead letters, and the failed-attempt records of
//! queued entries (`….att.<queue>`, one message per entry that failed, replaced at each
//! failure). A queue entry is one stream message; its [`Seq`] is the stream sequence. Its
//! plugin and host state is a KV bucket of the same name, written with the revision the
//! store last saw (`update`/`create`), so a write made meanwhile by another process is
//! refused rather than overwritten. The server's own state (silences) is a bucket of its own.
//!
//! # What is atomic, what is at least once
//! A JetStream publish is durable once acknowledged (after a quorum of replicas stored it),
//! but there is no transaction across messages, so the steps sled does in one batch are
//! ordered here so that a crash between them repeats work, never loses it:
//! - `append_ingress` publishes each message with `Nats-Msg-Id` = its id (a client's retry
//!   within the stream's two-minute duplicate window is stored once), then the state. The
//!   `202` waits for all of it.
//! - a hand-over publishes the outputs (`Nats-Msg-Id` = ingress seq, sink and position, so a
//!   repeat within the window is dropped), writes the state, then deletes the ingress entry.
//!   A crash before the delete hands the entry over again: its outputs reach the sink queues
//!   twice at worst, as the same messages, delivered under the same idempotency keys.
//! - `dead_letter` and `replay` publish the new entry before deleting the old one.
//!
//! # What the process keeps
//! Opening a pipeline reads its stream once (subjects and sizes, not bodies) and its bucket:
//! queue lengths, byte counts and state are then answered from memory, kept up to date by
//! this process's writes, and only message bodies are fetched (by sequence, from the
//! stream's leader). That is exact while one process moves a pipeline's entries.
//!
//! # Several processes
//! Every process on a namespace takes ingest; one of them, the holder of the namespace's
//! [`lease`], *delivers*: it runs filters, deliveries and schedules, and keeps the index
//! above. The others append ingress only (their stores keep no index: depths and sizes are
//! read from JetStream) and stand by; one takes the lease over when the holder is gone.
//! The holder learns of ingress appended elsewhere by following the ingress subject from
//! where its index was read (a headers-only ordered consumer), and wakes the pipeline's
//! filters ([`QueueStore::watch_ingress`]). Ingress order is the stream's order, whichever
//! process appended: the order in which the `202`s were answered.

mod bridge;
pub mod lease;
pub mod names;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use tocsin_message::{decode_record, encode_record, Message};

use crate::attempts::Attempts;
use crate::{
    dead_letters_of, decode_envelope, Commit, Depths, Envelope, HandOver, QueueError, QueueStore,
    Result, Seq, StateWrite, FILTERS_QUEUE,
};
use bridge::Bridge;
use names::{PipelineNames, Queue};

/// The header that carries a dead letter's or an attempt record's entry: its seq in the
/// queue it came from.
const SEQ_HEADER: &str = "Tocsin-Seq";

/// How long the stream remembers a `Nats-Msg-Id` (JetStream's default).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The stage whose state every process writes (an ingest pipeline's decoder).
const SOURCE_STAGE: &str = "source";

/// How long one request to JetStream may take before the call fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach JetStream, and where to keep the queues.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// Server URLs (`nats://host:4222`); several for a cluster.
    pub servers: Vec<String>,
    /// A token for the servers' `authorization { token }`.
    pub token: Option<String>,
    /// A user and password.
    pub user_password: Option<(String, String)>,
    /// A `.creds` file (JWT and NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for TLS; TLS is then required.
    pub ca_file: Option<PathBuf>,
    /// Copies of each stream and bucket: 1 on one server, 3 in a cluster.
    pub replicas: usize,
    /// Prefix of every stream, bucket and subject (`[A-Za-z0-9_]`, default `tocsin`): two
    /// tocsin deployments sharing servers keep apart by it.
    pub namespace: String,
}

impl JetStreamOptions {
    /// One or more servers, no credentials, one replica, namespace `tocsin`.
    pub fn new(servers: Vec<String>) -> Self {
        JetStreamOptions {
            servers,
            token: None,
            user_password: None,
            credentials_file: None,
            ca_file: None,
            replicas: 1,
            namespace: "tocsin".to_string(),
        }
    }
}

/// The JetStream-backed [`QueueStore`].
pub struct JetStreamStore {
    // Dropped last: the client's tasks run on it.
    js: jetstream::Context,
    options: JetStreamOptions,
    server_kv: kv::Store,
    server_kv_stream: stream::Stream,
    pipelines: Arc<Mutex<HashMap<String, Arc<Pipeline>>>>,
    /// This process's hold on the namespace, once it has it (see [`lease`]).
    lease: Arc<Mutex<Option<lease::Lease>>>,
    /// Whether this process delivers (holds the lease); the others take ingest only.
    delivering: Arc<tokio::sync::watch::Sender<bool>>,
    /// A follower's wait for the lease.
    standing_by: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Each pipeline's "new ingress" signal, woken when another process appended.
    wakers: Wakers,
    bridge: Bridge,
}

/// Each pipeline's "new ingress" signal, by pipeline name.
type Wakers = Arc<Mutex<HashMap<String, Arc<tokio::sync::Notify>>>>;

/// One pipeline's stream, bucket and what this process knows of them.
struct Pipeline {
    name: String,
    names: PipelineNames,
    stream: stream::Stream,
    kv: kv::Store,
    /// The bucket's stream, to read a stage's state in one go where no index holds it.
    kv_stream: stream::Stream,
    /// Opened by the delivering process: `index` is exact and follows others' ingress. A
    /// follower's index holds only its own appends; its depths and sizes come from JetStream.
    owned: bool,
    index: Mutex<Index>,
    /// The task following others' ingress (owned pipelines), ended with the pipeline.
    tail: Mutex<Option<tokio::task::AbortHandle>>,
    /// A follower's last reading of the stream's size, and when.
    remote_bytes: Mutex<Option<(std::time::Instant, u64)>>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(tail) = self.tail.lock().unwrap_or_else(|e| e.into_inner()).take() {
            tail.abort();
        }
    }
}

/// What a pipeline's stream and bucket hold, by queue (no bodies).
#[derive(Debug, Default)]
struct Index {
    /// Ingress entries: seq → bytes.
    ingress: BTreeMap<Seq, u64>,
    /// Sink entries per sink: seq → bytes.
    sinks: BTreeMap<String, BTreeMap<Seq, u64>>,
    /// Dead letters per queue: the seq they had in their queue → (stream seq, bytes).
    dead: BTreeMap<String, BTreeMap<Seq, (Seq, u64)>>,
    /// Failed attempts of queued entries, by (queue, seq): the record and its stream seq.
    attempts: HashMap<(String, Seq), (Attempts, Seq)>,
    /// Plugin and host state: KV key → (revision, value).
    state: BTreeMap<String, (u64, Bytes)>,
    /// Bytes of everything above: what the queue budget is checked against.
    bytes: u64,
    /// Bodies of entries this process wrote, so reading them back takes no round trip (up to
    /// [`BODY_CACHE_BYTES`]; past it, bodies are fetched).
    bodies: HashMap<Seq, Bytes>,
    /// Bytes of `bodies`.
    body_bytes: u64,
    /// Ingress up to this seq is known (read at open, or seen by the tail that follows
    /// other processes' appends).
    tailed_to: Seq,
    /// Ingress entries past `tailed_to` that this process appended and already removed: the
    /// tail, reaching them, must not bring them back.
    gone_ahead: std::collections::BTreeSet<Seq>,
}

/// The most bytes of message bodies a pipeline keeps in memory.
const BODY_CACHE_BYTES: u64 = 64 << 20;

impl Index {
    fn cache_body(&mut self, seq: Seq, body: Bytes) {
        let len = body.len() as u64;
        if self.body_bytes + len <= BODY_CACHE_BYTES {
            self.body_bytes += len;
            self.bodies.insert(seq, body);
        }
    }

    fn forget_body(&mut self, seq: Seq) {
        if let Some(body) = self.bodies.remove(&seq) {
            self.body_bytes -= body.len() as u64;
        }
    }

    fn add(&mut self, bytes: u64) {
        self.bytes += bytes;
    }

    /// Lists ingress entry `seq` unless it is known already (listed, or listed and gone):
    /// each entry enters once, by this process's append or by the tail, whichever is first.
    fn admit_ingress(&mut self, seq: Seq, size: u64) -> bool {
        if seq <= self.tailed_to || self.gone_ahead.contains(&seq) {
            return false;
        }
        if self.ingress.insert(seq, size).is_some() {
            return false;
        }
        self.add(size);
        true
    }

    /// The tail saw ingress entry `seq` (of `size` bytes); `true` when it is new here.
    fn tailed(&mut self, seq: Seq, size: u64) -> bool {
        let fresh = self.admit_ingress(seq, size);
        self.tailed_to = self.tailed_to.max(seq);
        self.gone_ahead = self.gone_ahead.split_off(&(seq + 1));
        fresh
    }

    /// Removes ingress entry `seq`; its size if it was listed.
    fn remove_ingress(&mut self, seq: Seq) -> Option<u64> {
        let size = self.ingress.remove(&seq)?;
        if seq > self.tailed_to {
            self.gone_ahead.insert(seq);
        }
        self.sub(size);
        Some(size)
    }

    fn sub(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

fn storage(what: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Storage(format!("JetStream: {what}: {e}"))
}

fn queue_name(pipeline: &str, queue: &str) -> String {
    if queue == FILTERS_QUEUE {
        format!("ingress of {pipeline}")
    } else {
        format!("{pipeline}/{queue}")
    }
}

/// A message read from a stream while loading.
struct Stored {
    seq: Seq,
    subject: String,
    headers: Option<HeaderMap>,
    payload: Bytes,
}

fn header_seq(headers: &Option<HeaderMap>) -> Option<Seq> {
    headers
        .as_ref()?
        .get(SEQ_HEADER)
        .and_then(|v| v.as_str().parse().ok())
}

/// Every message of `stream` on subjects matching `filter` (only the last of each subject
/// with `last_per_subject`), in stream order, read with an ordered consumer.
async fn read_all(
    stream: &stream::Stream,
    filter: &str,
    last_per_subject: bool,
) -> std::result::Result<Vec<Stored>, String> {
    let mut counts = stream
        .info_with_subjects(filter)
        .await
        .map_err(|e| e.to_string())?;
    let mut expected = 0u64;
    while let Some(entry) = counts.next().await {
        let (_, count) = entry.map_err(|e| e.to_string())?;
        expected += if last_per_subject { 1 } else { count as u64 };
    }
    if expected == 0 {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: if last_per_subject {
                consumer::DeliverPolicy::LastPerSubject
            } else {
                consumer::DeliverPolicy::All
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(REQUEST_TIMEOUT, messages.next())
            .await
            .map_err(|_| format!("reading {filter} stalled"))?;
        let Some(message) = next else { break };
        let message = message.map_err(|e| e.to_string())?;
        let info = message.info().map_err(|e| e.to_string())?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        out.push(Stored {
            seq,
            subject: message.subject.to_string(),
            headers: message.headers.clone(),
            payload: message.payload.clone(),
        });
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// The KV keys (subjects without `subject_prefix`) and values of bucket entries read from its
/// stream, deletions left out.
fn live_values(
    entries: Vec<Stored>,
    subject_prefix: &str,
) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
    entries
        .into_iter()
        .filter(|e| !is_kv_deletion(&e.headers))
        .filter_map(move |e| {
            let key = e.subject.strip_prefix(subject_prefix)?.to_string();
            Some((key, e.payload.to_vec()))
        })
}

/// Whether a KV entry read from the bucket's stream is a deletion.
fn is_kv_deletion(headers: &Option<HeaderMap>) -> bool {
    headers
        .as_ref()
        .and_then(|h| h.get("KV-Operation"))
        .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"))
}

impl JetStreamStore {
    /// Connects to JetStream and makes sure the server's bucket exists. Pipelines' streams
    /// are created when first used.
    pub fn connect(options: JetStreamOptions) -> Result<Self> {
        if !names::valid_namespace(&options.namespace) {
            return Err(QueueError::Storage(format!(
                "JetStream namespace {:?}: use 1-32 of A-Z, a-z, 0-9 and _",
                options.namespace
            )));
        }
        let bridge = Bridge::new()?;
        let opts = options.clone();
        let (js, server_kv, server_kv_stream, lease) = bridge.wait(async move {
            let mut connect = async_nats::ConnectOptions::new()
                .name("tocsin")
                .request_timeout(Some(REQUEST_TIMEOUT));
            if let Some(token) = &opts.token {
                connect = connect.token(token.clone());
            }
            if let Some((user, password)) = &opts.user_password {
                connect = connect.user_and_password(user.clone(), password.clone());
            }
            if let Some(file) = &opts.credentials_file {
                connect = connect
                    .credentials_file(file)
                    .await
                    .map_err(|e| storage(&format!("credentials {}", file.display()), e))?;
            }
            if let Some(ca) = &opts.ca_file {
                connect = connect.add_root_certificates(ca.clone()).require_tls(true);
            }
            let addresses = opts
                .servers
                .iter()
                .flat_map(|s| s.split(','))
                .map(|s| s.trim().parse::<async_nats::ServerAddr>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| {
                    storage(&format!("server address in {}", opts.servers.join(",")), e)
                })?;
            let client = connect.connect(addresses).await.map_err(|e| {
                storage(&format!("cannot connect to {}", opts.servers.join(",")), e)
            })?;
            let js = jetstream::new(client);
            let bucket = names::server_bucket(&opts.namespace);
            let (server_kv, server_kv_stream) =
                until_available(|| open_bucket(&js, &bucket, opts.replicas)).await?;
            let holder = lease::holder_name();
            let joined = until_available(|| lease::join(server_kv.clone(), &holder)).await?;
            Ok::<_, QueueError>((js, server_kv, server_kv_stream, joined))
        })?;
        let (delivering, lease) = match lease {
            lease::Joined::Holder(lease) => (true, Some(*lease)),
            lease::Joined::Follower(holder) => {
                tracing::info!(delivering_node = %holder, "another tocsin process delivers for this JetStream namespace; this one takes ingest and stands by to take over");
                (false, None)
            }
        };
        let store = JetStreamStore {
            js,
            options,
            server_kv,
            server_kv_stream,
            pipelines: Arc::default(),
            lease: Arc::new(Mutex::new(lease)),
            delivering: Arc::new(tokio::sync::watch::Sender::new(delivering)),
            standing_by: Mutex::new(None),
            wakers: Arc::default(),
            bridge,
        };
        if !delivering {
            store.stand_by();
        }
        Ok(store)
    }

    /// Waits (in the background) for the lease; once taken, this process delivers: the
    /// followers' views of the pipelines are dropped (reopened with an index on next use)
    /// and [`QueueStore::delivers`] turns `true`.
    fn stand_by(&self) {
        let kv = self.server_kv.clone();
        let (slot, pipelines, delivering) = (
            self.lease.clone(),
            self.pipelines.clone(),
            self.delivering.clone(),
        );
        let task = self.bridge.handle().spawn(async move {
            let holder = lease::holder_name();
            let lease = loop {
                match lease::take_over(kv.clone(), &holder).await {
                    Ok(lease) => break lease,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch the JetStream namespace's lease; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
            // Turned on first: a view opened from now on is the delivering kind.
            delivering.send_replace(true);
            pipelines.lock().unwrap_or_else(|e| e.into_inner()).clear();
            tracing::info!("took over the JetStream namespace's lease: this process delivers now");
        });
        *self.standing_by.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    fn is_delivering(&self) -> bool {
        *self.delivering.borrow()
    }

    /// Refuses a call that moves entries in a process that does not deliver.
    fn require_delivering(&self, what: &str) -> Result<()> {
        if self.is_delivering() {
            return Ok(());
        }
        Err(QueueError::NotDelivering {
            what: what.to_string(),
            delivering: self
                .delivered_by()
                .unwrap_or_else(|| "another process".into()),
        })
    }

    /// Queue depths counted by JetStream (a follower's answer): messages per subject.
    fn remote_depths(&self, p: &Pipeline) -> Result<Depths> {
        let (stream, filter) = (p.stream.clone(), p.names.all_subjects());
        let counts = self.bridge.wait(async move {
            let mut counts = stream
                .info_with_subjects(filter)
                .await
                .map_err(|e| storage("stream subjects", e))?;
            let mut out = Vec::new();
            while let Some(entry) = counts.next().await {
                out.push(entry.map_err(|e| storage("stream subjects", e))?);
            }
            Ok::<_, QueueError>(out)
        })?;
        let mut depths = Depths::default();
        let (mut sinks, mut dead) = (BTreeMap::new(), BTreeMap::new());
        for (subject, count) in counts {
            match p.names.queue_of(&subject) {
                Some(Queue::Ingress) => depths.ingress += count,
                Some(Queue::Sink(sink)) => *sinks.entry(sink).or_default() += count,
                Some(Queue::Dead(queue)) => *dead.entry(queue).or_default() += count,
                Some(Queue::Attempts(_)) | None => {}
            }
        }
        depths.sinks = sinks.into_iter().filter(|(_, n)| *n > 0).collect();
        depths.dead = dead.into_iter().filter(|(_, n)| *n > 0).collect();
        Ok(depths)
    }

    /// A pipeline's stream size: exact from the index when delivering, else read from
    /// JetStream (at most once a second).
    fn bytes_of(&self, p: &Pipeline) -> u64 {
        if p.owned {
            return p.index.lock().unwrap_or_else(|e| e.into_inner()).bytes;
        }
        let mut cached = p.remote_bytes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, bytes)) = *cached {
            if at.elapsed() < Duration::from_secs(1) {
                return bytes;
            }
        }
        let stream = p.stream.clone();
        let read = self
            .bridge
            .wait(async move { stream.get_info().await.map(|i| i.state.bytes) });
        match read {
            Ok(bytes) => {
                *cached = Some((std::time::Instant::now(), bytes));
                bytes
            }
            Err(e) => {
                tracing::warn!(pipeline = %p.name, error = %e, "cannot read the stream's size from JetStream");
                cached.map_or(0, |(_, b)| b)
            }
        }
    }

    /// The pipeline's stream and bucket, created and read on first use.
    /// The pipeline's stream and bucket, created and read on first use — read into an index
    /// when this process delivers (a view opened before it took over is opened again).
    fn pipeline(&self, pipeline: &str) -> Result<Arc<Pipeline>> {
        let owned = self.is_delivering();
        if let Some(p) = self.lock_pipelines().get(pipeline) {
            if p.owned == owned {
                return Ok(p.clone());
            }
        }
        let names = PipelineNames::new(&self.options.namespace, pipeline);
        let js = self.js.clone();
        let replicas = self.options.replicas;
        let name = pipeline.to_string();
        let opened = Arc::new(self.bridge.wait(async move {
            until_available(|| open_pipeline(&js, &names, &name, replicas, owned)).await
        })?);
        let mut pipelines = self.lock_pipelines();
        let p = match pipelines.get(pipeline) {
            Some(p) if p.owned == owned => return Ok(p.clone()),
            _ => {
                pipelines.insert(pipeline.to_string(), opened.clone());
                opened
            }
        };
        drop(pipelines);
        if owned {
            let tail = self.bridge.handle().spawn(follow_ingress(
                Arc::downgrade(&p),
                p.stream.clone(),
                p.names.ingress(),
                self.wakers.clone(),
            ));
            *p.tail.lock().unwrap_or_else(|e| e.into_inner()) = Some(tail.abort_handle());
        }
        Ok(p)
    }

    fn lock_pipelines(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Pipeline>>> {
        self.pipelines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`publish_messages`], waited for.
    fn publish_all(&self, messages: Vec<(String, HeaderMap, Bytes)>) -> Result<Vec<(Seq, bool)>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        self.bridge
            .wait(publish_messages(self.js.clone(), messages))
    }

    /// Deletes stream messages by seq (queue entries that moved on), and waits.
    fn delete_all(&self, p: &Pipeline, seqs: Vec<Seq>) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.bridge.wait(delete_seqs(p.stream.clone(), seqs))
    }

    /// Deletes stream messages in the background: for a removal whose loss in a crash only
    /// delivers a message again under its idempotency key (an acknowledgement, as sled's are
    /// made durable by the next commit).
    fn delete_later(&self, p: &Pipeline, seqs: Vec<Seq>) {
        if seqs.is_empty() {
            return;
        }
        let (stream, pipeline) = (p.stream.clone(), p.name.clone());
        self.bridge.handle().spawn(async move {
            if let Err(e) = delete_seqs(stream, seqs).await {
                tracing::warn!(pipeline = %pipeline, error = %e, "cannot remove delivered entries from JetStream; after a restart they go again under their idempotency keys");
            }
        });
    }

    /// [`write_state`], waited for.
    fn write_state(&self, p: &Arc<Pipeline>, state: &[StateWrite]) -> Result<()> {
        if state.is_empty() {
            return Ok(());
        }
        self.bridge.wait(write_state(p.clone(), state.to_vec()))
    }

    /// The bodies of `seqs`, fetched together, in order; an entry gone meanwhile is left out.
    fn fetch(&self, p: &Pipeline, seqs: Vec<Seq>) -> Result<Vec<(Seq, Bytes)>> {
        let cached: Vec<Option<Bytes>> = {
            let index = p.index.lock().unwrap_or_else(|e| e.into_inner());
            seqs.iter().map(|s| index.bodies.get(s).cloned()).collect()
        };
        if cached.iter().all(Option::is_some) {
            return Ok(seqs.into_iter().zip(cached.into_iter().flatten()).collect());
        }
        let stream = p.stream.clone();
        self.bridge.wait(async move {
            let gets = seqs.iter().zip(cached).map(|(&seq, cached)| {
                let stream = stream.clone();
                async move {
                    match cached {
                        Some(body) => (seq, Ok(body)),
                        None => (seq, stream.get_raw_message(seq).await.map(|m| m.payload)),
                    }
                }
            });
            let mut out = Vec::new();
            for (seq, got) in futures_util::future::join_all(gets).await {
                match got {
                    Ok(body) => out.push((seq, body)),
                    Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {}
                    Err(e) => return Err(storage(&format!("read {seq}"), e)),
                }
            }
            Ok(out)
        })
    }

    /// Queue entries with their attempts applied.
    fn entries(&self, p: &Pipeline, queue: &str, seqs: Vec<Seq>) -> Result<Vec<(Seq, Envelope)>> {
        let bodies = self.fetch(p, seqs)?;
        let index = p.index.lock().unwrap_or_else(|e| e.into_inner());
        bodies
            .into_iter()
            .map(|(seq, body)| {
                let mut envelope = decode_envelope(&body, || queue_name(&p.name, queue))?;
                if let Some((attempts, _)) = index.attempts.get(&(queue.to_string(), seq)) {
                    attempts.clone().apply(&mut envelope);
                }
                Ok((seq, envelope))
            })
            .collect()
    }

    /// The dead letters of `queue` (only the one that had seq `only`, when given), oldest
    /// first: only their bodies are fetched.
    fn letters(
        &self,
        p: &Pipeline,
        queue: &str,
        only: Option<Seq>,
    ) -> Result<Vec<(Seq, Envelope)>> {
        let letters: Vec<(Seq, Seq)> = {
            let index = p.index.lock().unwrap_or_else(|e| e.into_inner());
            index
                .dead
                .get(queue)
                .map(|d| {
                    d.iter()
                        .filter(|(was, _)| only.is_none_or(|o| o == **was))
                        .map(|(was, (at, _))| (*was, *at))
                        .collect()
                })
                .unwrap_or_default()
        };
        let was_of: HashMap<Seq, Seq> = letters.iter().map(|(was, at)| (*at, *was)).collect();
        let bodies = self.fetch(p, letters.iter().map(|(_, at)| *at).collect())?;
        bodies
            .into_iter()
            .map(|(at, body)| {
                Ok((
                    was_of[&at],
                    decode_envelope(&body, || dead_letters_of(&p.name, queue))?,
                ))
            })
            .collect()
    }

    /// Records a failed attempt of entry `seq` of `queue`: a new record, the old one deleted.
    fn put_attempts(&self, p: &Pipeline, queue: &str, seq: Seq, envelope: &Envelope) -> Result<()> {
        let attempts = Attempts::of(envelope);
        let payload = Bytes::from(encode_record(&attempts));
        let mut headers = HeaderMap::new();
        headers.insert(SEQ_HEADER, seq.to_string().as_str());
        let subject = format!("{}.{}", p.names.attempts_subject(), names::token(queue));
        let size = payload.len() as u64;
        let [(at, _)] = self.publish_all(vec![(subject, headers, payload)])?[..] else {
            unreachable!("one publish, one acknowledgement")
        };
        let old = {
            let mut index = p.index.lock().unwrap_or_else(|e| e.into_inner());
            index.add(size);
            let old = index
                .attempts
                .insert((queue.to_string(), seq), (attempts, at));
            old.map(|(a, old_seq)| {
                index.sub(encode_record(&a).len() as u64);
                old_seq
            })
        };
        self.delete_all(p, old.into_iter().collect())
    }

    /// Forgets the attempt records of entries that left their queue; their stream seqs.
    fn drop_attempts(index: &mut Index, queue: &str, seqs: &[Seq]) -> Vec<Seq> {
        let mut gone = Vec::new();
        for seq in seqs {
            if let Some((a, at)) = index.attempts.remove(&(queue.to_string(), *seq)) {
                index.sub(encode_record(&a).len() as u64);
                gone.push(at);
            }
        }
        gone
    }

    /// Envelopes for sink queues, published in order; returns what to add to the index.
    fn publish_to_sinks(
        &self,
        p: &Pipeline,
        outputs: Vec<(String, Envelope, Option<String>)>,
    ) -> Result<Vec<(String, Seq, Bytes, bool)>> {
        let messages: Vec<(String, HeaderMap, Bytes)> = outputs
            .iter()
            .map(|(sink, env, msg_id)| {
                let mut headers = HeaderMap::new();
                if let Some(id) = msg_id {
                    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
                }
                (p.names.sink(sink), headers, Bytes::from(encode_record(env)))
            })
            .collect();
        let bodies: Vec<Bytes> = messages.iter().map(|(_, _, b)| b.clone()).collect();
        let acks = self.publish_all(messages)?;
        Ok(outputs
            .into_iter()
            .zip(bodies)
            .zip(acks)
            .map(|(((sink, _, _), body), (seq, duplicate))| (sink, seq, body, duplicate))
            .collect())
    }

    fn index_sink_entries(p: &Pipeline, added: Vec<(String, Seq, Bytes, bool)>) {
        let mut index = p.index.lock().unwrap_or_else(|e| e.into_inner());
        for (sink, seq, body, duplicate) in added {
            // A duplicate names the entry stored the first time: counted once, if still there.
            if duplicate {
                continue;
            }
            let size = body.len() as u64;
            index.sinks.entry(sink).or_default().insert(seq, size);
            index.add(size);
            index.cache_body(seq, body);
        }
    }
}

impl Drop for JetStreamStore {
    /// Gives the namespace back, so the next start takes it at once.
    fn drop(&mut self) {
        if let Some(task) = self
            .standing_by
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
        if let Some(lease) = self.lease.lock().unwrap_or_else(|e| e.into_inner()).take() {
            self.bridge.wait(lease.release());
        }
    }
}

/// How long opening a stream may wait for JetStream to become available (a cluster electing
/// a leader after a server was lost takes seconds).
const AVAILABLE_WITHIN: Duration = Duration::from_secs(120);

/// Runs `attempt` until it succeeds, or fails otherwise than by JetStream being unavailable
/// for now (a timeout, no leader yet), or [`AVAILABLE_WITHIN`] has passed.
async fn until_available<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + AVAILABLE_WITHIN;
    loop {
        match attempt().await {
            Err(QueueError::Storage(e))
                if tokio::time::Instant::now() < deadline
                    && (e.contains("timed out") || e.contains("unavailable")) =>
            {
                tracing::warn!(error = %e, "JetStream is not available yet; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

/// Creates (or finds) a pipeline's stream and bucket and reads them.
async fn open_pipeline(
    js: &jetstream::Context,
    names: &PipelineNames,
    name: &str,
    replicas: usize,
    owned: bool,
) -> Result<Pipeline> {
    let stream = js
        .get_or_create_stream(stream::Config {
            name: names.stream.clone(),
            subjects: vec![names.all_subjects()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|e| storage(&format!("stream {}", names.stream), e))?;
    let (kv, kv_stream) = open_bucket(js, &names.stream, replicas).await?;
    let index = if owned {
        // Everything up to here is read below; what comes after, the tail follows.
        let last = stream
            .get_info()
            .await
            .map_err(|e| storage(&format!("stream {}", names.stream), e))?
            .state
            .last_sequence;
        let mut index = load_index(names, &stream, &kv_stream).await?;
        index.tailed_to = last;
        index
    } else {
        Index::default()
    };
    Ok(Pipeline {
        name: name.to_string(),
        names: names.clone(),
        stream,
        kv,
        kv_stream,
        owned,
        index: Mutex::new(index),
        tail: Mutex::new(None),
        remote_bytes: Mutex::new(None),
    })
}

/// Follows a delivering pipeline's ingress subject from where its index was read, listing
/// what other processes append (headers only: sizes, not bodies) and waking the pipeline's
/// filters for it. Runs until the pipeline's view is dropped; a broken consumer is made again
/// from the last seq seen.
async fn follow_ingress(
    pipeline: std::sync::Weak<Pipeline>,
    stream: stream::Stream,
    subject: String,
    wakers: Wakers,
) {
    loop {
        let Some(from) = pipeline
            .upgrade()
            .map(|p| p.index.lock().unwrap_or_else(|e| e.into_inner()).tailed_to)
        else {
            return;
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from + 1,
                },
                headers_only: true,
                ..Default::default()
            })
            .await;
        let messages = match consumer {
            Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match messages {
            Ok(mut messages) => {
                while let Some(Ok(message)) = messages.next().await {
                    let Ok(info) = message.info() else { continue };
                    let seq = info.stream_sequence;
                    let size = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Msg-Size"))
                        .and_then(|v| v.as_str().parse().ok())
                        .unwrap_or(0);
                    let Some(p) = pipeline.upgrade() else { return };
                    let fresh = p
                        .index
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .tailed(seq, size);
                    if fresh {
                        let waker = wakers
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(&p.name)
                            .cloned();
                        if let Some(waker) = waker {
                            waker.notify_one();
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(subject = %subject, error = %e, "cannot follow the ingress other tocsin processes append; trying again");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Creates (or finds) KV bucket `bucket` and its stream. The stream is made here as the
/// client's `create_key_value` would make it: that call first reads the account's limits in a
/// shape nats-server 2.9 does not answer in.
async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<(kv::Store, stream::Stream)> {
    let stream = js
        .get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| storage(&format!("bucket {bucket}"), e))?;
    let kv = js
        .get_key_value(bucket)
        .await
        .map_err(|e| storage(&format!("bucket {bucket}"), e))?;
    Ok((kv, stream))
}

/// Publishes `(subject, headers, payload)` in order, pipelined, and waits for every
/// acknowledgement: their seqs, and whether JetStream took each as a duplicate.
async fn publish_messages(
    js: jetstream::Context,
    messages: Vec<(String, HeaderMap, Bytes)>,
) -> Result<Vec<(Seq, bool)>> {
    let mut acks = Vec::with_capacity(messages.len());
    for (subject, headers, payload) in messages {
        let ack = js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|e| storage(&format!("publish to {subject}"), e))?;
        acks.push((subject, ack));
    }
    let mut seqs = Vec::with_capacity(acks.len());
    for (subject, ack) in acks {
        let ack = ack
            .await
            .map_err(|e| storage(&format!("publish to {subject}"), e))?;
        seqs.push((ack.sequence, ack.duplicate));
    }
    Ok(seqs)
}

/// Writes state values with the revisions last seen (so a write made by another process
/// meanwhile is refused, not overwritten), and records the new revisions. The source stage's
/// values are the exception: an ingest pipeline's decoder runs on every process that takes
/// ingest, so its writes are plain puts (the last one wins).
async fn write_state(p: Arc<Pipeline>, state: Vec<StateWrite>) -> Result<()> {
    // The last write of a key wins, as in one sled batch.
    let mut last: BTreeMap<String, (bool, Option<Bytes>)> = BTreeMap::new();
    for w in state {
        let shared = w.stage == SOURCE_STAGE;
        last.insert(
            names::state_key(&w.stage, &w.key),
            (shared, w.value.map(Bytes::from)),
        );
    }
    let known: Vec<(String, bool, Option<u64>, Option<Bytes>)> = {
        let index = p.index.lock().unwrap_or_else(|e| e.into_inner());
        last.into_iter()
            .map(|(k, (shared, v))| {
                let revision = index.state.get(&k).map(|(r, _)| *r);
                (k, shared, revision, v)
            })
            .collect()
    };
    let kv = &p.kv;
    let mut written = Vec::new();
    for (key, shared, revision, value) in known {
        let revision =
            match (&value, revision) {
                (Some(v), _) if shared => Some(
                    kv.put(&key, v.clone())
                        .await
                        .map_err(|e| storage(&format!("state {key}"), e))?,
                ),
                (None, _) if shared => {
                    kv.delete(&key)
                        .await
                        .map_err(|e| storage(&format!("state {key}"), e))?;
                    None
                }
                (Some(v), Some(r)) => Some(kv.update(&key, v.clone(), r).await.map_err(|e| {
                    storage(&format!("state {key} (changed by another process?)"), e)
                })?),
                (Some(v), None) => Some(kv.create(&key, v.clone()).await.map_err(|e| {
                    storage(&format!("state {key} (written by another process?)"), e)
                })?),
                (None, Some(r)) => {
                    kv.delete_expect_revision(&key, Some(r))
                        .await
                        .map_err(|e| storage(&format!("state {key}"), e))?;
                    None
                }
                (None, None) => None,
            };
        written.push((key, revision, value));
    }
    let mut index = p.index.lock().unwrap_or_else(|e| e.into_inner());
    for (key, revision, value) in written {
        if let Some((_, old)) = index.state.remove(&key) {
            let gone = (key.len() + old.len()) as u64;
            index.sub(gone);
        }
        if let (Some(revision), Some(value)) = (revision, value) {
            index.add((key.len() + value.len()) as u64);
            index.state.insert(key, (revision, value));
        }
    }
    Ok(())
}

/// Deletes stream messages by seq, together; one already gone (a repeat after a crash) is
/// what was wanted.
async fn delete_seqs(stream: stream::Stream, seqs: Vec<Seq>) -> Result<()> {
    let deletes = seqs.into_iter().map(|seq| {
        let stream = stream.clone();
        async move {
            match stream.delete_message(seq).await {
                Ok(_) => Ok(()),
                Err(e) => match e.kind() {
                    stream::DeleteMessageErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::SEQUENCE_NOT_FOUND =>
                    {
                        Ok(())
                    }
                    _ => Err(storage(&format!("delete {seq}"), e)),
                },
            }
        }
    });
    futures_util::future::join_all(deletes)
        .await
        .into_iter()
        .collect()
}

/// Reads a pipeline's stream and bucket into an [`Index`].
async fn load_index(
    names: &PipelineNames,
    stream: &stream::Stream,
    kv_stream: &stream::Stream,
) -> Result<Index> {
    let mut index = Index::default();
    let messages = read_all(stream, &names.all_subjects(), false)
        .await
        .map_err(|e| storage(&format!("read stream {}", names.stream), e))?;
    for m in messages {
        let size = m.payload.len() as u64;
        match names.queue_of(&m.subject) {
            Some(Queue::Ingress) => {
                index.ingress.insert(m.seq, size);
            }
            Some(Queue::Sink(sink)) => {
                index.sinks.entry(sink).or_default().insert(m.seq, size);
            }
            Some(Queue::Dead(queue)) => {
                let was = header_seq(&m.headers).unwrap_or(m.seq);
                index
                    .dead
                    .entry(queue)
                    .or_default()
                    .insert(was, (m.seq, size));
            }
            Some(Queue::Attempts(queue)) => {
                let (Some(seq), Ok(attempts)) = (
                    header_seq(&m.headers),
                    decode_record::<Attempts>(&m.payload),
                ) else {
                    continue;
                };
                index.attempts.insert((queue, seq), (attempts, m.seq));
            }
            None => continue,
        }
        index.add(size);
    }
    let prefix = format!("$KV.{}.", names.stream);
    let entries = read_all(kv_stream, &format!("{prefix}>"), true)
        .await
        .map_err(|e| storage(&format!("read bucket {}", names.stream), e))?;
    for e in entries {
        if is_kv_deletion(&e.headers) {
            continue;
        }
        let Some(key) = e.subject.strip_prefix(&prefix) else {
            continue;
        };
        index.add((key.len() + e.payload.len()) as u64);
        index.state.insert(key.to_string(), (e.seq, e.payload));
    }
    Ok(index)
}

impl QueueStore for JetStreamStore {
    /// Counted in the byte totals at once (what the budgets check), published and its state
    /// written on the client's runtime: the caller's thread waits for nothing but the commit,
    /// which resolves once JetStream acknowledged all of it and the entries are readable.
    fn append_ingress(&self, pipeline: &str, messages: &[Message], state: &[StateWrite]) -> Commit {
        let p = match self.pipeline(pipeline) {
            Ok(p) => p,
            Err(e) => return Commit::ready(Err(e)),
        };
        let now = crate::now_ms();
        let published: Vec<(String, HeaderMap, Bytes)> = messages
            .iter()
            .map(|m| {
                let mut headers = HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, m.id.as_str());
                let body = encode_record(&Envelope::new(m.clone(), now));
                (p.names.ingress(), headers, Bytes::from(body))
            })
            .collect();
        let bodies: Vec<Bytes> = published.iter().map(|(_, _, b)| b.clone()).collect();
        let counted: u64 = bodies.iter().map(|b| b.len() as u64).sum();
        p.index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(counted);
        let (js, state) = (self.js.clone(), state.to_vec());
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.bridge.handle().spawn(async move {
            let acks = publish_messages(js, published).await;
            let result = {
                let mut index = p.index.lock().unwrap_or_else(|e| e.into_inner());
                // Counted again below for what was stored.
                index.sub(counted);
                acks.map(|acks| {
                    for ((seq, duplicate), body) in acks.into_iter().zip(bodies) {
                        if !duplicate && index.admit_ingress(seq, body.len() as u64) {
                            index.cache_body(seq, body);
                        }
                    }
                })
            };
            let result = match result {
                Ok(()) if !state.is_empty() => write_state(p, state).await,
                other => other,
            };
            let _ = tx.send(result);
        });
        Commit::waiting(rx)
    }

    fn ingress_head(&self, pipeline: &str) -> Result<Option<(Seq, Envelope)>> {
        Ok(self.ingress_heads(pipeline, 1)?.into_iter().next())
    }

    fn ingress_heads(&self, pipeline: &str, limit: usize) -> Result<Vec<(Seq, Envelope)>> {
        self.require_delivering("read the ingress queue")?;
        let p = self.pipeline(pipeline)?;
        let seqs: Vec<Seq> = {
            let index = p.index.lock().unwrap_or_else(|e| e.into_inner());
            index.ingress.keys().take(limit).copied().collect()
        };
        self.entries(&p, FILTERS_QUEUE, seqs)
    }

    fn update_ingress(&self, pipeline: &str, seq: Seq, envelope: &Envelope) -> Result<()> {
        self.require_delivering("update an ingress entry")?;
        let p = self.pipeline(pipeline)?;
        self.put_attempts(&p, FILTERS_QUEUE, seq, envelope)
    }

    fn hand_over_all(&self, pipeline: &str, hand_overs: Vec<HandOver>) -> Commit {
        let run = || -> Result<()> {
            self.require_delivering("hand entries over to the sinks")?;
            let p = self.pipeline(pipeline)?;
            let mut outputs = Vec::new();
            for h in &hand_overs {
                let mut n = 0;
                for (sink, envelopes) in &h.outputs {
                    for env in envelopes {
                        let id = format!("h:{}:{}:{n}", h.ingress, names::token(sink));
                        outputs.push((sink.clone(), env.clone(), Some(id)));
                        n += 1;
                    }
                }
            }
            let added = self.publish_to_sinks(&p, outputs)?;
            Self::index_sink_entries(&p, added);
            let state: Vec<StateWrite> = hand_overs.iter().flat_map(|h| h.state.clone()).collect();
            self.write_state(&p, &state)?;
            let taken: Vec<Seq> = hand_overs.iter().map(|h| h.ingress).collect();
            let mut gone = taken.clone();
            {
                let mut index = p.index.lock().unwrap_or_else(|e| e.into_inner());
                for seq in &taken {
                    index.remove_ingress(*seq);
                    index.forget_body(*seq);
                }
                gone.extend(Self::drop_attempts(&mut index, FILTERS_QUEUE, &taken));
            }
            self.delete_all(&p, gone)
        };
        Commit::ready(run())
    }

    fn sink_head(&self, pipeline: &str, sink: &str) -> Result<Option<(Seq, Envelope)>> {
        Ok(self.sink_heads(pipeline, sink, 1)?.into_iter().next())
    }

    fn sink_heads(&self, pipeline: &str, sink: &str, limit: usize) -> Result<Vec<(Seq, Envelope)>> {
        self.require_delivering("read a sink's queue")?;
        let p = self.pipeline(pipeline)?;
        let seqs: Vec<Seq> = {
            let index = p.index.lock().unwrap_or_else(|e| e.into_inner());
            index
                .sinks
                .get(sink)
                .map(|q| q.keys().take(limit).copied().collect())
                .unwrap_or_default()
        };
        self.entries(&p, sink, seqs)
    }

    fn ack(&self, pipeline: &str, sink: &str, seq: Seq, state: &[StateWrite]) -> Result<()> {
        self.require_delivering("acknowledge a delivery")?;
        let p = self.pipeline(pipeline)?;
        self.write_state(&p, state)?;
        let gone = {
            let mut index = p.index.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(size) = index.sinks.get_mut(sink).and_then(|q| q.remove(&seq)) {
                index.sub(size);
            }
            index.forget_body(seq);
            let mut gone = vec![seq];
            gone.extend(Self::drop_attempts(&mut index, sink, &[seq]));
            gone
        };
        self.delete_later(&p, gone);
        Ok(())
    }

    fn put_state(&self, pipeline: &str, state: &[StateWrite]) -> Commit {
        Commit::ready(
            self.require_delivering("write state")
                .and_then(|()| self.pipeline(pipeline))
                .and_then(|p| self.write_state(&p, state)),
        )
    }

    fn append_to_sinks(
        &self,
        pipeline: &str,
        outputs: &[(String, Vec<Envelope>)],
        state: &[StateWrite],
    ) -> Commit {
        let run = || -> Result<()> {
            self.require_delivering("append to the sinks' queues")?;
            let p = self.pipeline(pipeline)?;
            let outputs = outputs
                .iter()
                .flat_map(|(sink, envs)| envs.iter().map(|e| (sink.clone(), e.clone(), None)))
                .collect();
            let added = self.publish_to_sinks(&p, outputs)?;
            Self::index_sink_entries(&p, added);
            self.write_state(&p, state)
        };
        Commit::ready(run())
    }

    fn state_scan(&self, pipeline: &str, stage: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let p = self.pipeline(pipeline)?;
        let prefix = names::state_prefix(stage);
        if !p.owned {
            // Read from the bucket: a follower keeps no copy.
            let subject_prefix = format!("$KV.{}.", p.names.stream);
            let (stream, filter) = (p.kv_stream.clone(), format!("{subject_prefix}{prefix}>"));
            let entries = self.bridge.wait(async move {
                read_all(&stream, &filter, true)
                    .await
                    .map_err(|e| storage("state", e))
            })?;
            let mut values: Vec<(String, Vec<u8>)> = live_values(entries, &subject_prefix)
                .filter_map(|(key, value)| Some((names::parse_state_key(&key)?.1, value)))
                .collect();
            values.sort();
            return Ok(values);
        }
        let index = p.index.lock().unwrap_or_else(|e| e.into_inner());
        let mut values: Vec<(String, Vec<u8>)> = index
            .state
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, (_, v))| Some((names::parse_state_key(k)?.1, v.to_vec())))
            .collect();
        values.sort();
        Ok(values)
    }

    fn server_state_put(&self, key: &str, value: Option<&[u8]>) -> Commit {
        let kv = self.server_kv.clone();
        let key = names::token(key);
        let value = value.map(Bytes::copy_from_slice);
        Commit::ready(self.bridge.wait(async move {
            match value {
                Some(v) => kv
                    .put(&key, v)
                    .await
                    .map(drop)
                    .map_err(|e| storage("server state", e)),
                None => kv
                    .delete(&key)
                    .await
                    .map_err(|e| storage("server state", e)),
            }
        }))
    }

    fn server_state_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let stream = self.server_kv_stream.clone();
        let subject_prefix = format!("$KV.{}.", names::server_bucket(&self.options.namespace));
        let filter = format!("{subject_prefix}>");
        // Read with a consumer of its own: right after a server was lost its creation can
        // time out while the cluster moves leaders, so it is tried again.
        let entries = self.bridge.wait(async move {
            until_available(|| async {
                read_all(&stream, &filter, true)
                    .await
                    .map_err(|e| storage("server state", e))
            })
            .await
        })?;
        let mut out: Vec<(String, Vec<u8>)> = live_values(entries, &subject_prefix)
            .filter_map(|(key, value)| {
                let key = names::untoken(&key)?;
                key.starts_with(prefix).then_some((key, value))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn record_failure(
        &self,
        pipeline: &str,
        sink: &str,
        seq: Seq,
        envelope: &Envelope,
    ) -> Result<()> {
        self.require_delivering("record a failed delivery")?;
        let p = self.pipeline(pipeline)?;
        self.put_attempts(&p, sink, seq, envelope)
    }

    fn dead_letter(&self, pipeline: &str, queue: &str, seq: Seq, envelope: &Envelope) -> Commit {
        let run = || -> Result<()> {
            self.require_delivering("park a dead letter")?;
            let p = self.pipeline(pipeline)?;
            let mut headers = HeaderMap::new();
            headers.insert(SEQ_HEADER, seq.to_string().as_str());
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("d:{}:{seq}", names::token(queue)).as_str(),
            );
            let body = Bytes::from(encode_record(envelope));
            let size = body.len() as u64;
            let acks = self.publish_all(vec![(p.names.dead(queue), headers, body)])?;
            let gone = {
                let mut index = p.index.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(&(at, duplicate)) = acks.first() {
                    if !duplicate {
                        index
                            .dead
                            .entry(queue.to_string())
                            .or_default()
                            .insert(seq, (at, size));
                        index.add(size);
                    }
                }
                if queue == FILTERS_QUEUE {
                    index.remove_ingress(seq);
                } else if let Some(size) = index.sinks.get_mut(queue).and_then(|q| q.remove(&seq)) {
                    index.sub(size);
                }
                index.forget_body(seq);
                let mut gone = vec![seq];
                gone.extend(Self::drop_attempts(&mut index, queue, &[seq]));
                gone
            };
            self.delete_all(&p, gone)
        };
        Commit::ready(run())
    }

    fn dead_letters(&self, pipeline: &str, queue: &str) -> Result<Vec<(Seq, Envelope)>> {
        self.require_delivering("list dead letters")?;
        let p = self.pipeline(pipeline)?;
        self.letters(&p, queue, None)
    }

    fn replay(&self, pipeline: &str, queue: &str, seq: Option<Seq>) -> Result<usize> {
        self.require_delivering("replay dead letters")?;
        let p = self.pipeline(pipeline)?;
        let letters = self.letters(&p, queue, seq)?;
        if let (Some(seq), true) = (seq, letters.is_empty()) {
            return Err(QueueError::NotFound {
                queue: dead_letters_of(pipeline, queue),
                seq,
            });
        }
        let subject = if queue == FILTERS_QUEUE {
            p.names.ingress()
        } else {
            p.names.sink(queue)
        };
        let published: Vec<(String, HeaderMap, Bytes)> = letters
            .iter()
            .map(|(_, env)| {
                (
                    subject.clone(),
                    HeaderMap::new(),
                    Bytes::from(encode_record(&env.replayed())),
                )
            })
            .collect();
        let sizes: Vec<u64> = published.iter().map(|(_, _, b)| b.len() as u64).collect();
        let acks = self.publish_all(published)?;
        let gone = {
            let mut index = p.index.lock().unwrap_or_else(|e| e.into_inner());
            for ((seq, _), size) in acks.into_iter().zip(sizes) {
                if queue == FILTERS_QUEUE {
                    index.admit_ingress(seq, size);
                } else {
                    index
                        .sinks
                        .entry(queue.to_string())
                        .or_default()
                        .insert(seq, size);
                    index.add(size);
                }
            }
            let mut gone = Vec::new();
            for (was, _) in &letters {
                if let Some((at, size)) = index.dead.get_mut(queue).and_then(|d| d.remove(was)) {
                    index.sub(size);
                    gone.push(at);
                }
            }
            gone
        };
        self.delete_all(&p, gone)?;
        Ok(letters.len())
    }

    fn purge_dead(&self, pipeline: &str, queue: &str, seq: Option<Seq>) -> Result<usize> {
        self.require_delivering("purge dead letters")?;
        let p = self.pipeline(pipeline)?;
        let gone: Vec<Seq> = {
            let mut index = p.index.lock().unwrap_or_else(|e| e.into_inner());
            let Some(dead) = index.dead.get_mut(queue) else {
                return Ok(0);
            };
            let removed: Vec<(Seq, u64)> = match seq {
                Some(seq) => dead.remove(&seq).into_iter().collect(),
                None => std::mem::take(dead).into_values().collect(),
            };
            for (_, size) in &removed {
                index.sub(*size);
            }
            removed.into_iter().map(|(at, _)| at).collect()
        };
        let count = gone.len();
        self.delete_all(&p, gone)?;
        Ok(count)
    }

    fn state_get(&self, pipeline: &str, stage: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let p = self.pipeline(pipeline)?;
        if !p.owned {
            // Read from the bucket: a follower keeps no copy.
            let (kv, key) = (p.kv.clone(), names::state_key(stage, key));
            return self.bridge.wait(async move {
                kv.get(&key)
                    .await
                    .map(|v| v.map(|v| v.to_vec()))
                    .map_err(|e| storage(&format!("state {key}"), e))
            });
        }
        let index = p.index.lock().unwrap_or_else(|e| e.into_inner());
        Ok(index
            .state
            .get(&names::state_key(stage, key))
            .map(|(_, v)| v.to_vec()))
    }

    fn depths(&self, pipeline: &str) -> Result<Depths> {
        let p = self.pipeline(pipeline)?;
        if !p.owned {
            return self.remote_depths(&p);
        }
        let index = p.index.lock().unwrap_or_else(|e| e.into_inner());
        let counts = |queues: &BTreeMap<String, usize>| -> Vec<(String, usize)> {
            queues
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(q, n)| (q.clone(), *n))
                .collect()
        };
        let sinks: BTreeMap<String, usize> = index
            .sinks
            .iter()
            .map(|(s, q)| (s.clone(), q.len()))
            .collect();
        let dead: BTreeMap<String, usize> = index
            .dead
            .iter()
            .map(|(s, q)| (s.clone(), q.len()))
            .collect();
        Ok(Depths {
            ingress: index.ingress.len(),
            sinks: counts(&sinks),
            dead: counts(&dead),
        })
    }

    fn pipelines(&self) -> Result<Vec<String>> {
        let js = self.js.clone();
        let prefix = format!("{}-", self.options.namespace);
        let streams = self.bridge.wait(async move {
            until_available(|| async {
                let mut names = js.stream_names();
                let mut out = Vec::new();
                while let Some(name) = names.next().await {
                    out.push(name.map_err(|e| storage("list streams", e))?);
                }
                Ok(out)
            })
            .await
        })?;
        let mut pipelines = Vec::new();
        for stream in streams {
            let Some(name) = stream.strip_prefix(&prefix).and_then(names::untoken) else {
                continue;
            };
            let p = self.pipeline(&name)?;
            if self.bytes_of(&p) > 0 {
                pipelines.push(name);
            }
        }
        pipelines.sort();
        Ok(pipelines)
    }

    fn purge_pipeline(&self, pipeline: &str) -> Result<()> {
        let names = PipelineNames::new(&self.options.namespace, pipeline);
        self.lock_pipelines().remove(pipeline);
        let js = self.js.clone();
        self.bridge.wait(async move {
            for stream in [names.stream.clone(), format!("KV_{}", names.stream)] {
                if let Err(e) = js.delete_stream(&stream).await {
                    let missing = matches!(e.kind(), jetstream::context::DeleteStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND);
                    if !missing {
                        return Err(storage(&format!("delete stream {stream}"), e));
                    }
                }
            }
            Ok(())
        })
    }

    fn flush(&self) -> Commit {
        // Every write waited for its acknowledgement.
        Commit::ready(Ok(()))
    }

    /// What this namespace's streams and buckets hold (JetStream's own files are on the
    /// servers' disks, not this machine's).
    fn size_on_disk(&self) -> Result<u64> {
        let js = self.js.clone();
        let ours = format!("{}-", self.options.namespace);
        let buckets = format!("KV_{ours}");
        self.bridge.wait(async move {
            let mut streams = js.streams();
            let mut bytes = 0;
            while let Some(info) = streams.next().await {
                let info = info.map_err(|e| storage("list streams", e))?;
                let name = &info.config.name;
                if name.starts_with(&ours) || name.starts_with(&buckets) {
                    bytes += info.state.bytes;
                }
            }
            Ok(bytes)
        })
    }

    /// Exact in the delivering process; elsewhere the stream's size as JetStream reports it
    /// (read at most once a second), plus nothing for state: a budget is checked against
    /// what the cluster holds, a second late at worst.
    fn stored_bytes(&self, pipeline: &str) -> Result<u64> {
        let p = self.pipeline(pipeline)?;
        Ok(self.bytes_of(&p))
    }

    fn stored_bytes_total(&self) -> u64 {
        let pipelines: Vec<Arc<Pipeline>> = self.lock_pipelines().values().cloned().collect();
        pipelines.iter().map(|p| self.bytes_of(p)).sum()
    }

    fn delivers(&self) -> tokio::sync::watch::Receiver<bool> {
        self.delivering.subscribe()
    }

    fn delivered_by(&self) -> Option<String> {
        if self.is_delivering() {
            return None;
        }
        let kv = self.server_kv.clone();
        let holder = self
            .bridge
            .wait(async move { lease::holder(&kv).await })
            .unwrap_or_default();
        Some(holder.unwrap_or_else(|| {
            "no process (the lease is free; one takes it within seconds)".into()
        }))
    }

    fn watch_ingress(&self, pipeline: &str, ready: Arc<tokio::sync::Notify>) {
        self.wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pipeline.to_string(), ready);
    }

    fn failure(&self) -> Option<String> {
        self.lease
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(lease::Lease::lost)
    }

    fn append_size_bound(&self, messages: &[Message], state: &[StateWrite]) -> u64 {
        let messages: usize = messages
            .iter()
            .map(|m| encode_record(&Envelope::new(m.clone(), 0)).len() + 16)
            .sum();
        let state: usize = state
            .iter()
            .map(|w| {
                names::state_key(&w.stage, &w.key).len() + w.value.as_ref().map_or(0, Vec::len)
            })
            .sum();
        (messages + state) as u64
    }
}
