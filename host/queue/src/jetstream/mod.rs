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
//! stream's leader). That is exact while one process owns a pipeline's queues.

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
    /// When another process holds the namespace: wait, and take over once it stops (a hot
    /// standby), instead of refusing to start.
    pub standby: bool,
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
            standby: false,
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
    pipelines: Mutex<HashMap<String, Arc<Pipeline>>>,
    /// This process's hold on the namespace (one process at a time: see [`lease`]).
    lease: Mutex<Option<lease::Lease>>,
    bridge: Bridge,
}

/// One pipeline's stream, bucket and what this process knows of them.
struct Pipeline {
    name: String,
    names: PipelineNames,
    stream: stream::Stream,
    kv: kv::Store,
    index: Mutex<Index>,
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
            let lease = until_available(|| {
                lease::Lease::acquire(server_kv.clone(), &holder, &opts.namespace, opts.standby)
            })
            .await?;
            Ok::<_, QueueError>((js, server_kv, server_kv_stream, lease))
        })?;
        Ok(JetStreamStore {
            js,
            options,
            server_kv,
            server_kv_stream,
            pipelines: Mutex::new(HashMap::new()),
            lease: Mutex::new(Some(lease)),
            bridge,
        })
    }

    /// The pipeline's stream and bucket, created and read on first use.
    fn pipeline(&self, pipeline: &str) -> Result<Arc<Pipeline>> {
        if let Some(p) = self.lock_pipelines().get(pipeline) {
            return Ok(p.clone());
        }
        let names = PipelineNames::new(&self.options.namespace, pipeline);
        let js = self.js.clone();
        let replicas = self.options.replicas;
        let name = pipeline.to_string();
        let opened = self.bridge.wait(async move {
            until_available(|| open_pipeline(&js, &names, &name, replicas)).await
        })?;
        let mut pipelines = self.lock_pipelines();
        Ok(pipelines
            .entry(pipeline.to_string())
            .or_insert_with(|| Arc::new(opened))
            .clone())
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
    let index = load_index(names, &stream, &kv_stream).await?;
    Ok(Pipeline {
        name: name.to_string(),
        names: names.clone(),
        stream,
        kv,
        index: Mutex::new(index),
    })
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
/// meanwhile is refused, not overwritten), and records the new revisions.
async fn write_state(p: Arc<Pipeline>, state: Vec<StateWrite>) -> Result<()> {
    // The last write of a key wins, as in one sled batch.
    let mut last: BTreeMap<String, Option<Bytes>> = BTreeMap::new();
    for w in state {
        last.insert(names::state_key(&w.stage, &w.key), w.value.map(Bytes::from));
    }
    let known: Vec<(String, Option<u64>, Option<Bytes>)> = {
        let index = p.index.lock().unwrap_or_else(|e| e.into_inner());
        last.into_iter()
            .map(|(k, v)| {
                let revision = index.state.get(&k).map(|(r, _)| *r);
                (k, revision, v)
            })
            .collect()
    };
    let kv = &p.kv;
    let mut written = Vec::new();
    for (key, revision, value) in known {
        let revision =
            match (&value, revision) {
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
                        if !duplicate {
                            index.ingress.insert(seq, body.len() as u64);
                            index.add(body.len() as u64);
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
        let p = self.pipeline(pipeline)?;
        let seqs: Vec<Seq> = {
            let index = p.index.lock().unwrap_or_else(|e| e.into_inner());
            index.ingress.keys().take(limit).copied().collect()
        };
        self.entries(&p, FILTERS_QUEUE, seqs)
    }

    fn update_ingress(&self, pipeline: &str, seq: Seq, envelope: &Envelope) -> Result<()> {
        let p = self.pipeline(pipeline)?;
        self.put_attempts(&p, FILTERS_QUEUE, seq, envelope)
    }

    fn hand_over_all(&self, pipeline: &str, hand_overs: Vec<HandOver>) -> Commit {
        let run = || -> Result<()> {
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
                    if let Some(size) = index.ingress.remove(seq) {
                        index.sub(size);
                    }
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
            self.pipeline(pipeline)
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
        let mut out: Vec<(String, Vec<u8>)> = entries
            .into_iter()
            .filter(|e| !is_kv_deletion(&e.headers))
            .filter_map(|e| {
                let key = names::untoken(e.subject.strip_prefix(&subject_prefix)?)?;
                key.starts_with(prefix).then(|| (key, e.payload.to_vec()))
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
        let p = self.pipeline(pipeline)?;
        self.put_attempts(&p, sink, seq, envelope)
    }

    fn dead_letter(&self, pipeline: &str, queue: &str, seq: Seq, envelope: &Envelope) -> Commit {
        let run = || -> Result<()> {
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
                let removed = if queue == FILTERS_QUEUE {
                    index.ingress.remove(&seq)
                } else {
                    index.sinks.get_mut(queue).and_then(|q| q.remove(&seq))
                };
                if let Some(size) = removed {
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
        let p = self.pipeline(pipeline)?;
        self.letters(&p, queue, None)
    }

    fn replay(&self, pipeline: &str, queue: &str, seq: Option<Seq>) -> Result<usize> {
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
                    index.ingress.insert(seq, size);
                } else {
                    index
                        .sinks
                        .entry(queue.to_string())
                        .or_default()
                        .insert(seq, size);
                }
                index.add(size);
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
        let index = p.index.lock().unwrap_or_else(|e| e.into_inner());
        Ok(index
            .state
            .get(&names::state_key(stage, key))
            .map(|(_, v)| v.to_vec()))
    }

    fn depths(&self, pipeline: &str) -> Result<Depths> {
        let p = self.pipeline(pipeline)?;
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
            if p.index.lock().unwrap_or_else(|e| e.into_inner()).bytes > 0 {
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

    fn stored_bytes(&self, pipeline: &str) -> Result<u64> {
        let p = self.pipeline(pipeline)?;
        let bytes = p.index.lock().unwrap_or_else(|e| e.into_inner()).bytes;
        Ok(bytes)
    }

    fn stored_bytes_total(&self) -> u64 {
        let pipelines: Vec<Arc<Pipeline>> = self.lock_pipelines().values().cloned().collect();
        pipelines
            .iter()
            .map(|p| p.index.lock().unwrap_or_else(|e| e.into_inner()).bytes)
            .sum()
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
