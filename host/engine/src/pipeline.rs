//! One running pipeline: its stages, built from a [`PipelineSpec`], and its tasks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use tocsin_config::self_events::TOCSIN_SOURCE;
use tocsin_config::{PipelineSpec, StageSpec, Trigger};
use tocsin_queue::QueueStore;
use tocsin_runtime::{Plugin, PluginKind, Runtime, Stage, StageContext, StateReader};

use crate::delivery::DeliveryWorker;
use crate::filtering::{FilterWorker, PendingState, SinkRoute};
use crate::group_delivery::GroupWorker;
use crate::ingest::auth::Authenticator;
use crate::ingest::{IngestEndpoint, IngestTable};
use crate::schedule::Scheduler;
use crate::sink_instances::SinkInstances;
use crate::status::PipelineStatus;

/// How long stopping a pipeline waits for its tasks to finish their current call.
pub const STOP_GRACE: Duration = Duration::from_secs(35);

/// What every pipeline shares: the queue store and the sandbox runtime.
#[derive(Clone)]
pub struct Shared {
    /// Durable queues and plugin state.
    pub queue: Arc<dyn QueueStore>,
    /// The wasm engine and linker.
    pub runtime: Runtime,
    /// Where ingest pipelines make themselves reachable over HTTP.
    pub ingest: IngestTable,
    /// Process metrics (delivery latency).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The queues' disk budget.
    pub budget: Arc<crate::budget::DiskBudget>,
    /// The memory all plugin instances may claim together.
    pub plugin_memory: Arc<crate::plugin_memory::PluginMemory>,
    /// Where the steps of each message are recorded.
    pub tracer: Arc<crate::trace::Tracer>,
    /// Where the metrics of messages are kept as time series.
    pub history: Arc<crate::history::History>,
    /// The server's silences.
    pub silences: Arc<crate::silences::Silences>,
    /// The running pipelines' expected reporters, for the admin API.
    pub expectations: crate::absence::Registry,
    /// The running pipelines' register locks, for acknowledgements through the API.
    pub register_locks: crate::open_alerts::Locks,
    /// Every pipeline's status, for the `@tocsin` source.
    pub board: crate::status::StatusBoard,
}

/// A pipeline whose tasks are running.
pub struct RunningPipeline {
    /// What it runs.
    pub spec: PipelineSpec,
    /// Its status and counters.
    pub status: Arc<PipelineStatus>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    ingest: Option<(IngestTable, Arc<IngestEndpoint>)>,
    /// A scheduled source's "poll now".
    run_now: Option<Arc<Notify>>,
    /// Its plugins' memory caps, held against the process-wide budget until it stops.
    _memory: crate::plugin_memory::Reservation,
    /// Its expected reporters, listed in the registry while it runs.
    expectations: Option<(crate::absence::Registry, Arc<crate::absence::Expectations>)>,
    /// Its register lock, listed while it runs.
    register_lock: (
        crate::open_alerts::Locks,
        crate::silence_release::RegisterLock,
    ),
    /// Only its ingest endpoint runs here: another process delivers (see
    /// [`QueueStore::delivers`]).
    pub ingest_only: bool,
}

impl RunningPipeline {
    /// Stops its tasks between messages (an in-flight plugin call finishes first, bounded by
    /// its own timeout and [`STOP_GRACE`]). Queued messages stay in the store. An ingest
    /// pipeline stops taking requests first (404).
    pub async fn stop(self) {
        self.begin_stop();
        self.finish_stop(tokio::time::Instant::now() + STOP_GRACE)
            .await;
    }

    /// Has a scheduled source poll now, besides its schedule; `false` for an ingest source.
    pub fn run_now(&self) -> bool {
        self.run_now.as_ref().map(|n| n.notify_one()).is_some()
    }

    /// Stops taking requests and asks every task to stop after its current message.
    pub fn begin_stop(&self) {
        if let Some((table, endpoint)) = &self.ingest {
            table.unregister(endpoint);
        }
        if let Some((registry, expectations)) = &self.expectations {
            registry.remove(&self.spec.name, expectations);
        }
        let (locks, lock) = &self.register_lock;
        locks.remove(&self.spec.name, lock);
        self.cancel.cancel();
    }

    /// Waits for the tasks until `deadline`, then abandons what is still running: a delivery
    /// or filter call cut off here was never acknowledged, so its message stays queued and is
    /// delivered again (under the same idempotency key) after the restart.
    pub async fn finish_stop(self, deadline: tokio::time::Instant) {
        for mut task in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                tracing::warn!(pipeline = %self.spec.name, "a plugin call was still running at the shutdown deadline; abandoned it, its message stays queued");
            }
        }
    }
}

/// Reads a stage's committed state from the queue store.
struct QueueStateReader {
    queue: Arc<dyn QueueStore>,
    pipeline: String,
    stage: String,
}

impl StateReader for QueueStateReader {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.queue
            .state_get(&self.pipeline, &self.stage, key)
            .map_err(|e| e.to_string())
    }
}

/// A filter's state as its next call must see it: the current batch's uncommitted writes
/// first, then the committed state.
struct PendingFirst {
    pending: Arc<PendingState>,
    committed: Arc<dyn StateReader>,
    stage: String,
}

impl StateReader for PendingFirst {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self.pending.get(&self.stage, key) {
            Some(written) => Ok(written),
            None => self.committed.get(key),
        }
    }
}

/// Builds the pipeline's stages (loading, checking and initialising every plugin) and starts
/// its tasks. An error is a sentence for the pipeline's status; nothing is left running.
pub async fn start(
    shared: &Shared,
    spec: PipelineSpec,
    status: Arc<PipelineStatus>,
) -> Result<RunningPipeline, String> {
    let name = spec.name.clone();
    let queue_budget = spec.queue_budget;
    status.set_queue_budget(shared.budget.budget_of(queue_budget));
    let memory = shared.plugin_memory.reserve(&spec)?;
    if !*shared.queue.delivers().borrow() {
        return start_ingest_only(shared, spec, status, memory).await;
    }
    // The built-in `@tocsin` source runs no plugin.
    let mut source = match (&spec.source.stage, source_kind(&spec.source.trigger)) {
        (Some(stage), Some(kind)) => {
            Some(build_stage(shared, &status, &name, "source", stage, kind).await?)
        }
        _ => {
            status.record_plugin("source", TOCSIN_SOURCE, "built-in");
            None
        }
    };
    let pending = Arc::new(PendingState::default());
    let mut filters = Vec::new();
    for (i, f) in spec.filters.iter().enumerate() {
        let mut stage = build_stage(
            shared,
            &status,
            &name,
            &format!("filter.{i}"),
            f,
            PluginKind::Filter,
        )
        .await?;
        stage.set_state_reader(Arc::new(PendingFirst {
            pending: pending.clone(),
            committed: stage.context().state.clone(),
            stage: format!("filter.{i}"),
        }));
        filters.push(stage);
    }
    // One instance per sink to start with; more as its deliveries need them (`SinkInstances`).
    let mut sinks: Vec<Stage> = Vec::new();
    for s in &spec.sinks {
        let stage_name = format!("sink.{}", s.name);
        sinks.push(
            build_stage(
                shared,
                &status,
                &name,
                &stage_name,
                &s.stage,
                PluginKind::Sink,
            )
            .await?,
        );
    }
    // Run every `init` now, so a bad config fails the pipeline at start, not at 3 am.
    for stage in source
        .iter_mut()
        .chain(filters.iter_mut())
        .chain(sinks.iter_mut())
    {
        let stage_name = stage.context().stage.clone();
        status.track_log_drops(&stage_name, stage.log_lines_dropped());
        if let Err(e) = stage.start().await {
            // A trap in `init` is a trap like any other: counted, not only logged.
            status.call_failed(&stage_name, &e);
            return Err(format!("{stage_name} ({}): {e}", stage.plugin().origin));
        }
    }

    let cancel = CancellationToken::new();
    let ingress_ready = Arc::new(Notify::new());
    // Woken too when another process (a shared store) appends to the ingress.
    shared.queue.watch_ingress(&name, ingress_ready.clone());
    let register_lock = crate::silence_release::RegisterLock::default();
    let expectations = match &spec.expect {
        Some(policy) => {
            let expectations = crate::absence::Expectations::load(
                &name,
                policy.clone(),
                tocsin_queue::now_ms(),
                shared.queue.clone(),
                register_lock.clone(),
                ingress_ready.clone(),
                shared.tracer.clone(),
            )
            .await
            .map_err(|e| format!("expect: cannot read the reporters: {e}"))?;
            Some(expectations)
        }
        None => {
            // A file that no longer expects reports: what was kept for them goes.
            let stale = crate::absence::clear_writes(shared.queue.as_ref(), &name)
                .map_err(|e| format!("expect: {e}"))?;
            if !stale.is_empty() {
                shared
                    .queue
                    .put_state(&name, &stale)
                    .await
                    .map_err(|e| format!("expect: {e}"))?;
            }
            None
        }
    };
    let inhibitions = if spec.inhibit.is_empty() {
        None
    } else {
        let register = crate::open_alerts::list(shared.queue.as_ref(), &name)
            .map_err(|e| format!("inhibit: cannot read the open-alert register: {e}"))?;
        Some(Arc::new(crate::inhibition::Inhibitions::new(
            spec.inhibit.clone(),
            &register,
        )))
    };
    let release_wake = Arc::new(Notify::new());
    let routes: Vec<SinkRoute> = spec
        .sinks
        .iter()
        .map(|s| SinkRoute {
            name: s.name.clone(),
            route: s.route.clone(),
            ready: Arc::new(Notify::new()),
        })
        .collect();
    let mut tasks = Vec::new();
    let mut ingest = None;
    let mut run_now = None;
    match (&spec.source.trigger, source) {
        (Trigger::Tocsin(events), _) => {
            let self_source = crate::self_events::SelfSource {
                pipeline: name.clone(),
                spec: events.clone(),
                board: shared.board.clone(),
                queue: shared.queue.clone(),
                budget: shared.budget.clone(),
                status: status.clone(),
                ingress_ready: ingress_ready.clone(),
                tracer: shared.tracer.clone(),
                cancel: cancel.clone(),
            };
            tasks.push(tokio::spawn(self_source.run()));
        }
        (Trigger::Schedule(schedule), Some(source)) => {
            let scheduler = Scheduler {
                pipeline: name.clone(),
                schedule: (**schedule).clone(),
                source,
                queue: shared.queue.clone(),
                budget: shared.budget.for_pipeline(&name, queue_budget),
                ingress_ready: ingress_ready.clone(),
                run_now: run_now.insert(Arc::new(Notify::new())).clone(),
                tracer: shared.tracer.clone(),
                history: shared.history.clone(),
                status: status.clone(),
                cancel: cancel.clone(),
            };
            tasks.push(tokio::spawn(scheduler.run()));
        }
        (Trigger::Ingest(ingest_spec), Some(source)) => {
            let endpoint = ingest_endpoint(
                shared,
                &spec,
                ingest_spec,
                source,
                ingress_ready.clone(),
                &status,
            )
            .await?;
            ingest = Some((shared.ingest.clone(), endpoint));
        }
        (_, None) => return Err("source: its plugin was not built".into()),
    }
    let maintenance: Arc<[tocsin_config::maintenance::MaintenanceWindow]> =
        spec.maintenance.clone().into();
    let release = crate::silence_release::SilenceRelease {
        pipeline: name.clone(),
        queue: shared.queue.clone(),
        sinks: routes.clone(),
        silences: shared.silences.subscribe(),
        lock: register_lock.clone(),
        tracer: shared.tracer.clone(),
        cancel: cancel.clone(),
        maintenance: maintenance.clone(),
        inhibitions: inhibitions.clone(),
        wake: release_wake.clone(),
    };
    tasks.push(tokio::spawn(release.run()));
    if let Some(expectations) = &expectations {
        tasks.push(tokio::spawn(expectations.clone().run(cancel.clone())));
    }
    let filter_worker = FilterWorker {
        pipeline: name.clone(),
        filters,
        retry: spec.filter_retry,
        sinks: routes.clone(),
        queue: shared.queue.clone(),
        ingress_ready: ingress_ready.clone(),
        status: status.clone(),
        cancel: cancel.clone(),
        pending,
        tracer: shared.tracer.clone(),
        filter_names: spec
            .filters
            .iter()
            .enumerate()
            .map(|(i, f)| format!("filter.{i} ({})", f.plugin.name))
            .collect(),
        silences: shared.silences.subscribe(),
        register_lock: register_lock.clone(),
        maintenance,
        expectations: expectations.clone(),
        inhibitions,
        release_wake,
    };
    tasks.push(tokio::spawn(filter_worker.run()));
    for ((sink_spec, first), route) in spec.sinks.iter().zip(sinks).zip(&routes) {
        let concurrency = sink_spec.concurrency.max(1) as usize;
        let worker = DeliveryWorker {
            pipeline: name.clone(),
            sink: sink_spec.name.clone(),
            instances: SinkInstances::new(first, concurrency, memory.clone()),
            concurrency,
            retry: sink_spec.retry,
            queue: shared.queue.clone(),
            ready: route.ready.clone(),
            status: status.clone(),
            metrics: shared.metrics.clone(),
            cancel: cancel.clone(),
            tracer: shared.tracer.clone(),
        };
        match &sink_spec.group {
            None => tasks.push(tokio::spawn(worker.run())),
            Some(policy) => {
                let grouped = GroupWorker {
                    delivery: worker,
                    policy: policy.clone(),
                };
                tasks.push(tokio::spawn(grouped.run()));
            }
        }
    }
    if let Some((table, endpoint)) = &ingest {
        table.register(endpoint.clone());
    }
    if let Some(expectations) = &expectations {
        shared.expectations.insert(&name, expectations.clone());
    }
    shared.register_locks.insert(&name, register_lock.clone());
    Ok(RunningPipeline {
        spec,
        status,
        cancel,
        tasks,
        ingest,
        run_now,
        _memory: memory,
        expectations: expectations.map(|e| (shared.expectations.clone(), e)),
        register_lock: (shared.register_locks.clone(), register_lock),
        ingest_only: false,
    })
}

/// Starts what runs of a pipeline in a process that does not deliver (another one holds the
/// shared store): an ingest source's endpoint, its decoder appending to the shared ingress.
/// Scheduled and built-in sources, filters and sinks run in the delivering process only (a
/// cron tick is polled once); the manager starts the pipeline again, whole, when this process
/// takes over.
async fn start_ingest_only(
    shared: &Shared,
    spec: PipelineSpec,
    status: Arc<PipelineStatus>,
    memory: crate::plugin_memory::Reservation,
) -> Result<RunningPipeline, String> {
    let mut ingest = None;
    if let (Trigger::Ingest(ingest_spec), Some(stage)) = (&spec.source.trigger, &spec.source.stage)
    {
        let mut source = build_stage(
            shared,
            &status,
            &spec.name,
            "source",
            stage,
            PluginKind::Decoder,
        )
        .await?;
        status.track_log_drops("source", source.log_lines_dropped());
        if let Err(e) = source.start().await {
            status.call_failed("source", &e);
            return Err(format!("source ({}): {e}", source.plugin().origin));
        }
        // Nobody here takes from the ingress: the delivering process is woken by the store.
        let ready = Arc::new(Notify::new());
        let endpoint = ingest_endpoint(shared, &spec, ingest_spec, source, ready, &status).await?;
        shared.ingest.register(endpoint.clone());
        ingest = Some((shared.ingest.clone(), endpoint));
    } else {
        status.record_plugin("source", "(runs where the pipeline delivers)", "");
    }
    Ok(RunningPipeline {
        spec,
        status,
        cancel: CancellationToken::new(),
        tasks: Vec::new(),
        ingest,
        run_now: None,
        _memory: memory,
        expectations: None,
        register_lock: (
            shared.register_locks.clone(),
            crate::silence_release::RegisterLock::default(),
        ),
        ingest_only: true,
    })
}

/// The HTTP endpoint of an ingest pipeline, decoding with `decoder`.
async fn ingest_endpoint(
    shared: &Shared,
    spec: &PipelineSpec,
    ingest_spec: &tocsin_config::IngestSpec,
    decoder: Stage,
    ingress_ready: Arc<Notify>,
    status: &Arc<PipelineStatus>,
) -> Result<Arc<IngestEndpoint>, String> {
    let name = &spec.name;
    if ingest_spec.auth == tocsin_config::IngestAuth::None
        && shared.budget.budget_of(spec.queue_budget).is_none()
    {
        tracing::warn!(pipeline = %name, "this pipeline accepts requests from anyone who can reach it and has no queue budget: a flood can fill the queues' disk for every pipeline. Set `queue_budget` in its file, or --queue-budget");
    }
    Ok(Arc::new(IngestEndpoint {
        pipeline: name.clone(),
        decoder: tokio::sync::Mutex::new(decoder),
        auth: Authenticator::from_spec(&ingest_spec.auth)
            .await
            .map_err(|e| format!("source.auth: {e}"))?,
        body_limit: usize::try_from(ingest_spec.body_limit).unwrap_or(usize::MAX),
        queue: shared.queue.clone(),
        budget: shared.budget.for_pipeline(name, spec.queue_budget),
        ingress_ready,
        status: status.clone(),
        tracer: shared.tracer.clone(),
        history: shared.history.clone(),
    }))
}

async fn build_stage(
    shared: &Shared,
    status: &PipelineStatus,
    pipeline: &str,
    stage: &str,
    spec: &StageSpec,
    expected: PluginKind,
) -> Result<Stage, String> {
    let plugin = load_stage_plugin(&shared.runtime, stage, spec, expected).await?;
    status.record_plugin(stage, &spec.plugin.name, &plugin.sha256);
    let mut secrets = Vec::new();
    for (secret_name, reference) in &spec.grants.secrets {
        let value = reference
            .resolve()
            .map_err(|e| format!("{stage}: secret `{secret_name}`: {e}"))?;
        secrets.push((secret_name.clone(), value));
    }
    let control = (!spec.grants.control.is_empty()).then(|| {
        Arc::new(crate::control::EngineControl::of(shared))
            as Arc<dyn tocsin_runtime::control::ControlPlane>
    });
    let ctx = StageContext {
        dry_run: None,
        control,
        pipeline: pipeline.to_string(),
        stage: stage.to_string(),
        config_json: spec.config_json.clone(),
        grants: spec.grants.clone(),
        limits: spec.limits,
        secrets: Arc::new(secrets),
        state: Arc::new(QueueStateReader {
            queue: shared.queue.clone(),
            pipeline: pipeline.to_string(),
            stage: stage.to_string(),
        }),
    };
    Ok(Stage::new(&shared.runtime, plugin, ctx))
}

/// The source stage's expected plugin kind: a scheduled source polls, an ingest one decodes;
/// `None` for the built-in `@tocsin` source, which runs no plugin.
pub fn source_kind(trigger: &Trigger) -> Option<PluginKind> {
    match trigger {
        Trigger::Schedule(_) => Some(PluginKind::Source),
        Trigger::Ingest(_) => Some(PluginKind::Decoder),
        Trigger::Tocsin(_) => None,
    }
}

/// Loads (or takes from the compile cache) the plugin of `stage`, checking its pinned digest
/// and that it is the kind of plugin the stage needs.
pub async fn load_stage_plugin(
    runtime: &Runtime,
    stage: &str,
    spec: &StageSpec,
    expected: PluginKind,
) -> Result<Arc<Plugin>, String> {
    let plugin: Arc<Plugin> = {
        let runtime = runtime.clone();
        let origin = spec.plugin.origin.clone();
        let pin = spec.plugin.sha256.clone();
        tokio::task::spawn_blocking(move || runtime.load_from(&origin, pin.as_deref()))
            .await
            .map_err(|e| format!("{stage}: loading the plugin panicked: {e}"))?
            .map_err(|e| format!("{stage}: {e}"))?
    };
    if plugin.kind != expected {
        let hint = match (stage, expected) {
            ("source", PluginKind::Source) => " (a pipeline with a `schedule` needs a source-plugin)",
            ("source", PluginKind::Decoder) => {
                " (a pipeline without a `schedule` is fed by HTTP ingest and needs a decoder-plugin)"
            }
            _ => "",
        };
        return Err(format!(
            "{stage}: plugin `{}` is a {} plugin, but this stage needs a {expected} plugin{hint}",
            spec.plugin.name, plugin.kind
        ));
    }
    Ok(plugin)
}
