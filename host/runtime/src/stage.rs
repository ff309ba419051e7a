//! One pipeline stage: a live plugin instance, its limits, and the calls into it.

use std::sync::Arc;

use tocsin_config::{Grants, Limits};
use tocsin_message::Message;
use wasmtime::{Engine, Store, Trap};

use crate::bindings::{decoder, filter, sink, source, v0_1, wit_types};
use crate::convert::{delivery_error_from_wit1, from_wit, from_wit1, into_wit, into_wit1, to_wit};
use crate::group_digest::{group_digest, GroupInfo};
use crate::guest_text::GuestText;
use crate::log_budget::LogBudget;
use crate::outbound::OutboundPool;
use crate::plugin::{Plugin, PluginKind, Pre, Runtime};
use crate::proc_view::{self, ProcGrant, ProcView};
use crate::stdout_cap::CappedStdout;
use crate::store::PluginState;

/// The guest yields to the async runtime every this much fuel (about a millisecond of guest
/// code), so the wall-clock timeout can fire even in a tight loop.
const FUEL_YIELD_INTERVAL: u64 = 10_000_000;
/// Messages one call may return.
pub const MAX_OUTPUT_MESSAGES: usize = 1000;
/// Total approximate size of the messages one call may return.
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;

/// Reads a stage's committed plugin state (the engine scopes it to pipeline and stage).
pub trait StateReader: Send + Sync {
    /// The committed value of `key`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
}

/// State writes of one successful call: key → new value (`None` deletes), to be committed
/// with the call's hand-over.
pub type StateChanges = Vec<(String, Option<Vec<u8>>)>;

/// Everything a stage needs besides its plugin.
#[derive(Clone)]
pub struct StageContext {
    /// The pipeline's name.
    pub pipeline: String,
    /// The stage's name: `source`, `filter.0`, `sink.<name>`.
    pub stage: String,
    /// The `config` table as JSON, for `init`.
    pub config_json: String,
    /// What the plugin may reach.
    pub grants: Grants,
    /// Resource bounds.
    pub limits: Limits,
    /// Granted secrets, resolved: (name, value).
    pub secrets: Arc<Vec<(String, String)>>,
    /// The stage's committed state.
    pub state: Arc<dyn StateReader>,
    /// A dry run: outbound HTTP is recorded here and answered `200 {}` instead of sent, and a
    /// granted stdout is captured here instead of printed.
    pub dry_run: Option<Arc<crate::http_policy::DryRunRecorder>>,
    /// The server's side of the `control` interface; `None` denies every call (a dry run, a
    /// benchmark). Calls reach it only as far as `grants.control` lets them.
    pub control: Option<Arc<dyn crate::control::ControlPlane>>,
}

/// An HTTP request for a decoder.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    /// Upper-case method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Lower-case header names and values.
    pub headers: Vec<(String, String)>,
    /// Raw body.
    pub body: Vec<u8>,
}

/// A decoder's refusal: status (clamped to 400–499) and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 400–499.
    pub status: u16,
    /// For the client.
    pub reason: String,
}

/// What a sink said about one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Delivered.
    Delivered,
    /// Try again later.
    Retryable(String),
    /// Never going to work.
    Permanent(String),
    /// Try again after this many milliseconds.
    RateLimited(u64),
}

/// Why the host stopped a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// Used up its fuel (CPU bound on guest code).
    Cpu,
    /// Took longer than its wall-clock bound.
    Timeout,
    /// Tried to grow memory past its cap.
    Memory,
    /// Overflowed its stack (deep recursion) on wasmtime's call stack.
    StackOverflow,
    /// Accessed linear memory out of bounds. Rust and C guests keep their stack in linear
    /// memory, so deep recursion there ends this way rather than as [`TrapKind::StackOverflow`].
    MemoryFault,
    /// Panicked or aborted (a Rust guest's panic is an `unreachable` trap).
    Panic,
    /// Broke a host quota (state or log volume).
    Quota,
    /// Any other trap.
    Other,
}

impl std::fmt::Display for TrapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrapKind::Cpu => "cpu",
            TrapKind::Timeout => "timeout",
            TrapKind::Memory => "memory",
            TrapKind::StackOverflow => "stack-overflow",
            TrapKind::MemoryFault => "memory-fault",
            TrapKind::Panic => "panic",
            TrapKind::Quota => "quota",
            TrapKind::Other => "trap",
        })
    }
}

/// Why a call did not produce a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The plugin could not be started: instantiation or its `init` failed.
    #[error("plugin failed to start: {0}")]
    Init(String),
    /// The plugin returned an error.
    #[error("plugin returned an error: {0}")]
    Guest(String),
    /// The host stopped the plugin; its instance was discarded.
    #[error("plugin stopped ({kind}): {detail}")]
    Trap {
        /// Which bound or fault.
        kind: TrapKind,
        /// Details for the log and dead letters.
        detail: String,
    },
    /// The plugin returned more than the host accepts.
    #[error("plugin output refused: {0}")]
    Output(String),
    /// The plugin does not implement what this call needs.
    #[error("{0}")]
    WrongKind(String),
}

impl CallError {
    /// Whether the host stopped the plugin and discarded the instance: a trap, or an output
    /// over the caps (the instance that built it holds that much memory; it is not kept).
    pub fn is_trap(&self) -> bool {
        matches!(self, CallError::Trap { .. } | CallError::Output(_))
    }
}

/// A live instance's exports, by world and contract version.
enum Exports {
    Source(source::SourcePlugin),
    Decoder(decoder::DecoderPlugin),
    Filter(filter::FilterPlugin),
    Sink(sink::SinkPlugin),
    SourceV0_1(v0_1::source::SourcePlugin),
    DecoderV0_1(v0_1::decoder::DecoderPlugin),
    FilterV0_1(v0_1::filter::FilterPlugin),
    SinkV0_1(v0_1::sink::SinkPlugin),
}

/// The most messages the host hands a sink in one `deliver` call of a batch.
pub const MAX_BATCH: u32 = 1000;

struct Live {
    store: Store<PluginState>,
    exports: Exports,
    /// A sink's `batch-limit` (1 for other kinds and for 0.1.0 sinks), clamped to
    /// 1..=[`MAX_BATCH`].
    batch_limit: u32,
}

/// A plugin bound to one stage of one pipeline, with at most one live instance.
pub struct Stage {
    engine: Engine,
    plugin: Arc<Plugin>,
    ctx: StageContext,
    /// The grants as the pipeline wrote them (`ctx.grants` has a granted `/proc` replaced by
    /// this stage's view of it), for [`Stage::sibling`].
    granted: Grants,
    /// Outbound HTTP connections, kept across calls and across instances (and shared with
    /// its siblings).
    outbound: Arc<OutboundPool>,
    live: Option<Live>,
    traps: u64,
    instantiations: u64,
    /// What a granted `/proc` shows, refreshed before each call and during it.
    proc_view: Option<Arc<ProcView>>,
    /// A grant the sandbox refuses (inside `/proc`): every start fails with it.
    refused_grant: Option<String>,
    /// Cleans the plugin's error texts (secrets redacted, one line).
    text: GuestText,
    /// The host log lines its plugin may cause.
    log: LogBudget,
    /// Its granted stdout, bounded per call and per second.
    stdout: CappedStdout,
    /// How far ahead of the clock its outputs may be dated, in ms.
    timestamp_ahead_ms: u64,
}

impl Stage {
    /// A stage of `plugin`; nothing runs until the first call (or [`Stage::start`]).
    pub fn new(runtime: &Runtime, plugin: Arc<Plugin>, mut ctx: StageContext) -> Self {
        let outbound = Arc::new(OutboundPool::new(
            runtime.tls().clone(),
            format!("{}/{}", ctx.pipeline, ctx.stage),
        ));
        let granted = ctx.grants.clone();
        let (proc_view, refused_grant) = sandbox_procfs(&mut ctx.grants);
        let text = GuestText::new(&ctx.secrets);
        let log = LogBudget::new(&ctx.pipeline, &ctx.stage);
        let stdout = CappedStdout::new(&ctx.pipeline, &ctx.stage, log.clone());
        Stage {
            engine: runtime.engine().clone(),
            plugin,
            ctx,
            granted,
            outbound,
            live: None,
            traps: 0,
            instantiations: 0,
            proc_view,
            refused_grant,
            text,
            log,
            stdout,
            timestamp_ahead_ms: runtime.timestamp_ahead_ms(),
        }
    }

    /// Another stage of the same plugin and context, for one more call in flight (a sink's
    /// `concurrency`): its own instance (built at its first call), its own per-call stdout
    /// count and, when `/proc` is granted, its own view of it; the same outbound connections,
    /// log budget and per-second stdout bound as this one, which are the stage's.
    pub fn sibling(&self) -> Stage {
        let mut ctx = self.ctx.clone();
        ctx.grants = self.granted.clone();
        let (proc_view, refused_grant) = sandbox_procfs(&mut ctx.grants);
        Stage {
            engine: self.engine.clone(),
            plugin: self.plugin.clone(),
            ctx,
            granted: self.granted.clone(),
            outbound: self.outbound.clone(),
            live: None,
            traps: 0,
            instantiations: 0,
            proc_view,
            refused_grant,
            text: self.text.clone(),
            log: self.log.clone(),
            stdout: self.stdout.sibling(),
            timestamp_ahead_ms: self.timestamp_ahead_ms,
        }
    }

    /// Log lines its plugin caused that were dropped (over the stage's log budget, or a
    /// per-call or byte cap), over the stage's life.
    pub fn log_lines_dropped(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.log.dropped()
    }

    /// The plugin this stage runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// The stage's context.
    pub fn context(&self) -> &StageContext {
        &self.ctx
    }

    /// Replaces where the plugin's `state-get` reads from. The live instance, if any, is
    /// dropped so the next call builds one with the new reader; call it before the first call.
    pub fn set_state_reader(&mut self, state: Arc<dyn StateReader>) {
        self.ctx.state = state;
        self.live = None;
    }

    /// Calls the host stopped (traps, timeouts, caps) over this stage's life.
    pub fn traps(&self) -> u64 {
        self.traps
    }

    /// Instances created over this stage's life (1 + one per recovery).
    pub fn instantiations(&self) -> u64 {
        self.instantiations
    }

    /// Instantiates the plugin and runs its `init`, if no instance is live.
    pub async fn start(&mut self) -> Result<(), CallError> {
        if self.live.is_some() {
            return Ok(());
        }
        if let Some(reason) = &self.refused_grant {
            return Err(CallError::Init(reason.clone()));
        }
        self.refresh_proc_view()?;
        let state = PluginState::new(
            &self.ctx,
            self.outbound.clone(),
            self.log.clone(),
            self.text.clone(),
            self.stdout.clone(),
        )
        .map_err(|e| CallError::Init(format!("cannot build the sandbox: {e:#}")))?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        let setup = store
            .set_fuel(self.ctx.limits.fuel)
            .and_then(|_| store.fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL)));
        setup.map_err(|e| CallError::Init(format!("{e:#}")))?;
        let config = self.ctx.config_json.clone();
        let pre = &self.plugin.pre;
        let started = tokio::time::timeout(self.ctx.limits.timeout, async {
            let exports = match pre {
                Pre::Source(p) => Exports::Source(p.instantiate_async(&mut store).await?),
                Pre::Decoder(p) => Exports::Decoder(p.instantiate_async(&mut store).await?),
                Pre::Filter(p) => Exports::Filter(p.instantiate_async(&mut store).await?),
                Pre::Sink(p) => Exports::Sink(p.instantiate_async(&mut store).await?),
                Pre::SourceV0_1(p) => Exports::SourceV0_1(p.instantiate_async(&mut store).await?),
                Pre::DecoderV0_1(p) => Exports::DecoderV0_1(p.instantiate_async(&mut store).await?),
                Pre::FilterV0_1(p) => Exports::FilterV0_1(p.instantiate_async(&mut store).await?),
                Pre::SinkV0_1(p) => Exports::SinkV0_1(p.instantiate_async(&mut store).await?),
            };
            let s = &mut store;
            let init = match &exports {
                Exports::Source(e) => {
                    e.tocsin_plugin0_2_1_source()
                        .call_init(&mut *s, &config)
                        .await?
                }
                Exports::Decoder(e) => {
                    e.tocsin_plugin0_2_1_decoder()
                        .call_init(&mut *s, &config)
                        .await?
                }
                Exports::Filter(e) => {
                    e.tocsin_plugin0_2_1_filter()
                        .call_init(&mut *s, &config)
                        .await?
                }
                Exports::Sink(e) => {
                    e.tocsin_plugin0_2_1_sink()
                        .call_init(&mut *s, &config)
                        .await?
                }
                Exports::SourceV0_1(e) => {
                    e.tocsin_plugin0_1_0_source()
                        .call_init(&mut *s, &config)
                        .await?
                }
                Exports::DecoderV0_1(e) => {
                    e.tocsin_plugin0_1_0_decoder()
                        .call_init(&mut *s, &config)
                        .await?
                }
                Exports::FilterV0_1(e) => {
                    e.tocsin_plugin0_1_0_filter()
                        .call_init(&mut *s, &config)
                        .await?
                }
                Exports::SinkV0_1(e) => {
                    e.tocsin_plugin0_1_0_sink()
                        .call_init(&mut *s, &config)
                        .await?
                }
            };
            let batch_limit = match (&exports, &init) {
                (Exports::Sink(e), Ok(())) => {
                    e.tocsin_plugin0_2_1_sink()
                        .call_batch_limit(&mut *s)
                        .await?
                }
                _ => 1,
            };
            wasmtime::Result::Ok((exports, init.map(|()| batch_limit)))
        })
        .await;
        self.instantiations += 1;
        self.remove_planted_links();
        let (exports, init) = match started {
            Err(_) => {
                self.traps += 1;
                return Err(CallError::Trap {
                    kind: TrapKind::Timeout,
                    detail: format!("init took longer than {:?}", self.ctx.limits.timeout),
                });
            }
            Ok(Err(e)) => {
                self.traps += 1;
                // A trap in `init` is reported as one (and counted as one by the engine).
                return Err(match classify(e, &self.ctx.limits) {
                    CallError::Trap { kind, detail } => CallError::Trap {
                        kind,
                        detail: format!("in init: {detail}"),
                    },
                    other => CallError::Init(other.to_string()),
                });
            }
            Ok(Ok(r)) => r,
        };
        let batch_limit = init.map_err(|e| CallError::Init(self.text.clean(&e)))?;
        // State written by `init` belongs to no message: it is discarded.
        store.data_mut().host.pending.clear();
        self.live = Some(Live {
            store,
            exports,
            batch_limit: batch_limit.clamp(1, MAX_BATCH),
        });
        Ok(())
    }

    /// How many messages a sink takes in one `deliver` call when the host batches messages
    /// that are not grouped: its `batch-limit` (contract 0.2.0), clamped to 1..=[`MAX_BATCH`];
    /// 1 for a 0.1.0 sink. Starts the instance if none is live.
    pub async fn batch_limit(&mut self) -> Result<u32, CallError> {
        self.expect(PluginKind::Sink)?;
        self.start().await?;
        Ok(self.live.as_ref().map_or(1, |l| l.batch_limit))
    }

    /// Runs one call under the stage's fuel and time bounds. On a trap the instance is
    /// discarded; on success the call's state writes are returned.
    async fn run<R>(
        &mut self,
        call: impl AsyncFnOnce(&Exports, &mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<(R, StateChanges), CallError> {
        self.start().await?;
        self.refresh_proc_view()?;
        self.stdout.new_call();
        // A plugin may sample twice within a call (CPU use over 250 ms): the view follows.
        let _refresher = self.proc_view.clone().map(|view| {
            AbortOnDrop(tokio::spawn(async move {
                let mut every = tokio::time::interval(proc_view::REFRESH_INTERVAL);
                every.tick().await;
                loop {
                    every.tick().await;
                    let _ = view.refresh();
                }
            }))
        });
        let limits = self.ctx.limits;
        let live = self.live.as_mut().expect("started above");
        {
            let data = live.store.data_mut();
            data.host.pending.clear();
            data.host.log_lines = 0;
            data.host.control_calls = 0;
        }
        if let Err(e) = live.store.set_fuel(limits.fuel) {
            return Err(CallError::Init(format!("{e:#}")));
        }
        let outcome = within(limits.timeout, call(&live.exports, &mut live.store)).await;
        self.remove_planted_links();
        let live = self.live.as_mut().expect("started above");
        let result = match outcome {
            Err(_) => Err(CallError::Trap {
                kind: TrapKind::Timeout,
                detail: format!("call exceeded its wall-clock limit of {:?}", limits.timeout),
            }),
            Ok(Err(e)) => Err(classify(e, &limits)),
            Ok(Ok(r)) => Ok(r),
        };
        match result {
            Ok(r) => {
                let pending = std::mem::take(&mut live.store.data_mut().host.pending);
                Ok((r, pending.into_iter().collect()))
            }
            Err(e) => {
                self.live = None;
                self.traps += 1;
                Err(e)
            }
        }
    }

    /// Removes the symlinks the plugin left in its writable grants (see `planted_links`).
    fn remove_planted_links(&self) {
        if self.ctx.grants.write_dirs.is_empty() {
            return;
        }
        let dirs: Vec<&std::path::Path> = self
            .ctx
            .grants
            .write_dirs
            .iter()
            .map(|d| d.host.as_path())
            .collect();
        let cleanup = crate::planted_links::remove_planted_links(&dirs);
        for path in &cleanup.removed {
            if self.log.admit() {
                tracing::warn!(pipeline = %self.ctx.pipeline, stage = %self.ctx.stage, path = %path.display(), "removed a symlink the plugin created in its writable grant");
            }
        }
        if cleanup.cut_short && self.log.admit() {
            tracing::warn!(pipeline = %self.ctx.pipeline, stage = %self.ctx.stage, "a writable grant holds more than {} entries; only that many were checked for planted symlinks", crate::planted_links::MAX_ENTRIES);
        }
    }

    /// Brings a granted `/proc` up to date, so the call reads current figures.
    fn refresh_proc_view(&self) -> Result<(), CallError> {
        match &self.proc_view {
            Some(view) => view
                .refresh()
                .map_err(|e| CallError::Init(format!("cannot prepare the granted /proc: {e}"))),
            None => Ok(()),
        }
    }

    fn expect(&self, kind: PluginKind) -> Result<(), CallError> {
        if self.plugin.kind == kind {
            Ok(())
        } else {
            Err(CallError::WrongKind(format!(
                "{} is a {} plugin, not a {kind}",
                self.plugin.origin, self.plugin.kind
            )))
        }
    }

    /// Polls a source for the tick at `tick_ms`.
    pub async fn poll(&mut self, tick_ms: u64) -> Result<(Vec<Message>, StateChanges), CallError> {
        self.expect(PluginKind::Source)?;
        let (out, changes) = self
            .run(async |exports, store| match exports {
                Exports::Source(e) => {
                    let out = e.tocsin_plugin0_2_1_source().call_poll(store, tick_ms);
                    Ok(out.await?.map(|ms| ms.into_iter().map(from_wit).collect()))
                }
                Exports::SourceV0_1(e) => {
                    let out = e.tocsin_plugin0_1_0_source().call_poll(store, tick_ms);
                    Ok(out.await?.map(|ms| ms.into_iter().map(from_wit1).collect()))
                }
                _ => unreachable!("kind checked"),
            })
            .await?;
        Ok((
            self.checked(out.map_err(|e| self.guest_error(e))?)?,
            changes,
        ))
    }

    /// The call's output, if it is within the caps; otherwise the instance that built it is
    /// discarded (with the memory it holds) and the refusal counted as the host stopping it.
    fn checked(&mut self, out: Vec<Message>) -> Result<Vec<Message>, CallError> {
        checked_output(out, self.timestamp_ahead_ms).inspect_err(|_| {
            self.live = None;
            self.traps += 1;
        })
    }

    /// A plugin's own error, cleaned.
    fn guest_error(&self, text: String) -> CallError {
        CallError::Guest(self.text.clean(&text))
    }

    /// Decodes an ingest request.
    pub async fn decode(
        &mut self,
        request: &IngestRequest,
    ) -> Result<(Result<Vec<Message>, Rejection>, StateChanges), CallError> {
        self.expect(PluginKind::Decoder)?;
        let (method, path) = (request.method.clone(), request.path.clone());
        let (headers, body) = (request.headers.clone(), request.body.clone());
        let (out, changes) = self
            .run(async |exports, store| match exports {
                Exports::Decoder(e) => {
                    let req = wit_types::HttpRequest {
                        method,
                        path,
                        headers,
                        body,
                    };
                    let out = e.tocsin_plugin0_2_1_decoder().call_decode(store, &req);
                    Ok(match out.await? {
                        Ok(ms) => Ok(ms.into_iter().map(from_wit).collect()),
                        Err(r) => Err((r.status, r.reason)),
                    })
                }
                Exports::DecoderV0_1(e) => {
                    let req = v0_1::wit_types::HttpRequest {
                        method,
                        path,
                        headers,
                        body,
                    };
                    let out = e.tocsin_plugin0_1_0_decoder().call_decode(store, &req);
                    Ok(match out.await? {
                        Ok(ms) => Ok(ms.into_iter().map(from_wit1).collect()),
                        Err(r) => Err((r.status, r.reason)),
                    })
                }
                _ => unreachable!("kind checked"),
            })
            .await?;
        let out = match out {
            Ok(messages) => Ok(self.checked(messages)?),
            Err((status, reason)) => Err(Rejection {
                status: status.clamp(400, 499),
                reason: self.text.clean(&reason),
            }),
        };
        Ok((out, changes))
    }

    /// Runs a filter on one message. The message is taken, not borrowed: its strings move into
    /// the call instead of being copied (in a chain, each filter's output goes on to the next
    /// one without a copy).
    ///
    /// A 0.1.0 filter knows no link or key: its outputs inherit the input's, since whatever
    /// it made of the message is still about the same thing.
    pub async fn process(
        &mut self,
        mut msg: Message,
    ) -> Result<(Vec<Message>, StateChanges), CallError> {
        self.expect(PluginKind::Filter)?;
        let inherited = (msg.link.take(), msg.key.take());
        let (out, changes) = self
            .run(async |exports, store| match exports {
                Exports::Filter(e) => {
                    let mut input = into_wit(msg);
                    (input.link, input.key) = inherited;
                    let out = e.tocsin_plugin0_2_1_filter().call_process(store, &input);
                    Ok(out.await?.map(|ms| ms.into_iter().map(from_wit).collect()))
                }
                Exports::FilterV0_1(e) => {
                    let input = into_wit1(msg);
                    let out = e.tocsin_plugin0_1_0_filter().call_process(store, &input);
                    Ok(out.await?.map(|ms: Vec<_>| {
                        ms.into_iter()
                            .map(|m| Message {
                                link: inherited.0.clone(),
                                key: inherited.1.clone(),
                                ..from_wit1(m)
                            })
                            .collect()
                    }))
                }
                _ => unreachable!("kind checked"),
            })
            .await?;
        Ok((
            self.checked(out.map_err(|e| self.guest_error(e))?)?,
            changes,
        ))
    }

    /// Delivers one message through a sink: a notification of one message (contract
    /// 0.2.0), or the message itself (0.1.0).
    pub async fn deliver(
        &mut self,
        msg: &Message,
        idempotency_key: &str,
    ) -> Result<(DeliveryOutcome, StateChanges), CallError> {
        self.deliver_batch(&[msg], idempotency_key).await
    }

    /// Delivers several messages that are not grouped in one call, as one notification (at
    /// most the sink's [`Stage::batch_limit`], which is 1 for a 0.1.0 sink: more is refused
    /// before the plugin is called).
    pub async fn deliver_batch(
        &mut self,
        messages: &[&Message],
        idempotency_key: &str,
    ) -> Result<(DeliveryOutcome, StateChanges), CallError> {
        let limit = self.batch_limit().await?;
        if messages.is_empty() || messages.len() > limit as usize {
            return Err(CallError::WrongKind(format!(
                "{} takes 1 to {limit} messages per call, not {}",
                self.plugin.origin,
                messages.len()
            )));
        }
        self.deliver_notification(messages, None, idempotency_key)
            .await
    }

    /// Delivers one group's notification (any number of messages): as a `group`
    /// notification to a 0.2.0 sink, as one message summing the group up
    /// ([`group_digest`]) to a 0.1.0 sink.
    pub async fn deliver_group(
        &mut self,
        messages: &[&Message],
        group: &GroupInfo,
        idempotency_key: &str,
    ) -> Result<(DeliveryOutcome, StateChanges), CallError> {
        self.expect(PluginKind::Sink)?;
        if messages.is_empty() {
            return Err(CallError::WrongKind(
                "a group notification without messages".into(),
            ));
        }
        self.deliver_notification(messages, Some(group), idempotency_key)
            .await
    }

    async fn deliver_notification(
        &mut self,
        messages: &[&Message],
        group: Option<&GroupInfo>,
        idempotency_key: &str,
    ) -> Result<(DeliveryOutcome, StateChanges), CallError> {
        let (out, changes) = self
            .run(async |exports, store| match exports {
                Exports::Sink(e) => {
                    let notification = wit_types::Notification {
                        messages: messages.iter().map(|m| to_wit(m)).collect(),
                        group: group.map(|g| wit_types::Group {
                            labels: g.labels.clone(),
                            key: g.key.clone(),
                            sequence: g.sequence,
                            firing: g.firing,
                        }),
                    };
                    e.tocsin_plugin0_2_1_sink()
                        .call_deliver(store, &notification, idempotency_key)
                        .await
                }
                Exports::SinkV0_1(e) => {
                    let message = match group {
                        Some(g) => into_wit1(group_digest(messages, g)),
                        None => into_wit1(messages[0].clone()),
                    };
                    let out =
                        e.tocsin_plugin0_1_0_sink()
                            .call_deliver(store, &message, idempotency_key);
                    Ok(out.await?.map_err(delivery_error_from_wit1))
                }
                _ => unreachable!("kind checked"),
            })
            .await?;
        let outcome = match out {
            Ok(()) => DeliveryOutcome::Delivered,
            Err(wit_types::DeliveryError::Retryable(m)) => {
                DeliveryOutcome::Retryable(self.text.clean(&m))
            }
            Err(wit_types::DeliveryError::Permanent(m)) => {
                DeliveryOutcome::Permanent(self.text.clean(&m))
            }
            Err(wit_types::DeliveryError::RateLimited(ms)) => DeliveryOutcome::RateLimited(ms),
        };
        Ok((outcome, changes))
    }
}

/// Runs `call` under a wall-clock bound of `limit`, as `tokio::time::timeout` does, but arms
/// the timer only for a call that does not finish in its first poll.
///
/// A guest gives control back only at a host call that waits (a sink's HTTP request) or at a
/// fuel yield (every [`FUEL_YIELD_INTERVAL`]), so a timer can fire at no other point; most
/// filter and decoder calls do neither and finish in the first poll. Registering and
/// clearing a tokio timer for each of them was a sixth of a filter call's cost (profiled on
/// the `filter stage` benchmark). The deadline still counts from the call's start.
async fn within<F: std::future::Future>(
    limit: std::time::Duration,
    call: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let start = tokio::time::Instant::now();
    let mut call = std::pin::pin!(call);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(output) => Ok(output),
        std::task::Poll::Pending => tokio::time::timeout_at(start + limit, call).await,
    }
}

fn checked_output(out: Vec<Message>, timestamp_ahead_ms: u64) -> Result<Vec<Message>, CallError> {
    if out.len() > MAX_OUTPUT_MESSAGES {
        return Err(CallError::Output(format!(
            "{} messages in one call; the cap is {MAX_OUTPUT_MESSAGES}",
            out.len()
        )));
    }
    let messages = out;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for m in &messages {
        tocsin_message::check_message(m, now, timestamp_ahead_ms).map_err(CallError::Output)?;
    }
    let bytes: usize = messages.iter().map(Message::approx_size).sum();
    if bytes > MAX_OUTPUT_BYTES {
        return Err(CallError::Output(format!(
            "{bytes} bytes of messages in one call; the cap is {MAX_OUTPUT_BYTES}"
        )));
    }
    Ok(messages)
}

/// Names the bound or fault behind a wasmtime error.
fn classify(e: wasmtime::Error, limits: &Limits) -> CallError {
    let (kind, detail) = match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => (
            TrapKind::Cpu,
            format!("used up its CPU budget of {} fuel", limits.fuel),
        ),
        Some(Trap::StackOverflow) => (TrapKind::StackOverflow, "stack overflow".to_string()),
        Some(Trap::MemoryOutOfBounds) => (
            TrapKind::MemoryFault,
            "accessed memory out of bounds (in Rust and C guests usually a stack overflow from \
             deep recursion: their stack lives in linear memory)"
                .to_string(),
        ),
        Some(Trap::UnreachableCodeReached) => (
            TrapKind::Panic,
            "panicked or aborted (wasm `unreachable`)".to_string(),
        ),
        Some(Trap::Interrupt) => (TrapKind::Timeout, "interrupted".to_string()),
        Some(other) => (TrapKind::Other, other.to_string()),
        None => match e.downcast_ref::<crate::host_api::QuotaExceeded>() {
            Some(quota) => (TrapKind::Quota, quota.0.clone()),
            None => {
                let text = format!("{e:#}");
                if text.contains("forcing trap when growing memory") {
                    (
                        TrapKind::Memory,
                        format!(
                            "tried to grow memory past its cap of {} bytes",
                            limits.memory
                        ),
                    )
                } else {
                    (TrapKind::Other, text)
                }
            }
        },
    };
    CallError::Trap { kind, detail }
}

/// Puts a [`ProcView`] in place of a granted `/proc`, and finds a grant inside procfs (read or
/// write), which the sandbox refuses.
fn sandbox_procfs(grants: &mut Grants) -> (Option<Arc<ProcView>>, Option<String>) {
    let mut view = None;
    for dir in &mut grants.read_dirs {
        match proc_view::classify(&dir.host) {
            ProcGrant::Plain => {}
            ProcGrant::Refused(reason) => return (None, Some(reason)),
            ProcGrant::View => match ProcView::new() {
                Ok(v) => {
                    dir.host = v.path().to_path_buf();
                    view = Some(Arc::new(v));
                }
                Err(e) => return (None, Some(format!("cannot prepare the granted /proc: {e}"))),
            },
        }
    }
    for dir in &grants.write_dirs {
        if proc_view::classify(&dir.host) != ProcGrant::Plain {
            let reason = format!(
                "{} is in /proc, which is never writable",
                dir.host.display()
            );
            return (None, Some(reason));
        }
    }
    (view, None)
}

/// Aborts its task when dropped (when the call it serves ends, however it ends).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
