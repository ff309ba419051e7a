//! `GET /metrics`: Prometheus text exposition of every pipeline's counters, queue depths and
//! delivery latency.
//!
//! Counters live in each pipeline's [`crate::status::Counters`] (also read by tests and,
//! later, the status API); a collector turns them into metric families at scrape time, with
//! queue depths read from the store. The delivery-latency histogram (from a message entering
//! its pipeline to its delivery by a sink) is recorded by the delivery workers.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use tocsin_queue::{QueueStore, FILTERS_QUEUE};

use crate::status::{Counters, PipelineState, PipelineStatus, StatusBoard};

/// Labels of a per-sink series.
pub type SinkLabels = Vec<(&'static str, String)>;

type LatencyFamily = Family<SinkLabels, Histogram, fn() -> Histogram>;

/// The metrics of the process.
pub struct Metrics {
    registry: Registry,
    delivery_latency: LatencyFamily,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    /// Metrics over these pipelines' statuses and this store.
    pub fn new(board: StatusBoard, queue: Arc<dyn QueueStore>) -> Arc<Self> {
        let mut registry = Registry::default();
        let delivery_latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "tocsin_delivery_latency_seconds",
            "Time from a message entering its pipeline to its delivery by a sink",
            delivery_latency.clone(),
        );
        registry.register_collector(Box::new(PipelineCollector { board, queue }));
        Arc::new(Metrics {
            registry,
            delivery_latency,
        })
    }

    /// Records one delivery's latency.
    pub fn observe_delivery(&self, pipeline: &str, sink: &str, seconds: f64) {
        self.delivery_latency
            .get_or_create(&vec![
                ("pipeline", pipeline.to_string()),
                ("sink", sink.to_string()),
            ])
            .observe(seconds);
    }

    /// Drops the latency series of these sinks of a pipeline: sinks a new version of its file
    /// no longer has, or all of them when the file was deleted (its counters go with its
    /// status, off the board).
    pub fn forget_sinks(&self, pipeline: &str, sinks: &[String]) {
        for sink in sinks {
            self.delivery_latency.remove(&vec![
                ("pipeline", pipeline.to_string()),
                ("sink", sink.to_string()),
            ]);
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

struct PipelineCollector {
    board: StatusBoard,
    queue: Arc<dyn QueueStore>,
}

impl std::fmt::Debug for PipelineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PipelineCollector")
    }
}

/// (metric name without `_total`, help, counter).
type CounterField = (&'static str, &'static str, fn(&Counters) -> &AtomicU64);

const COUNTERS: [CounterField; 10] = [
    ("tocsin_polls", "Source polls run", |c| &c.polls),
    (
        "tocsin_messages_in",
        "Messages produced by sources (polled or ingested)",
        |c| &c.produced,
    ),
    (
        "tocsin_handed_over",
        "Messages moved from ingress through the filters to sink queues",
        |c| &c.handed_over,
    ),
    ("tocsin_delivered", "Messages delivered by sinks", |c| {
        &c.delivered
    }),
    (
        "tocsin_retries",
        "Failed attempts that will be retried (filters and sinks)",
        |c| &c.retries,
    ),
    (
        "tocsin_dead_lettered",
        "Messages moved to dead letters",
        |c| &c.dead_lettered,
    ),
    (
        "tocsin_plugin_traps",
        "Plugin calls stopped by the host (CPU, memory, timeout, trap)",
        |c| &c.plugin_traps,
    ),
    (
        "tocsin_plugin_errors",
        "Plugin calls that returned an error",
        |c| &c.plugin_errors,
    ),
    (
        "tocsin_silenced",
        "Messages a silence kept from a sink (counted once per sink)",
        |c| &c.silenced,
    ),
    (
        "tocsin_acknowledged",
        "Reminders of acknowledged alerts kept from a sink (counted once per sink)",
        |c| &c.acknowledged,
    ),
];

/// Sizes per (pipeline, queue).
type QueueSizes = BTreeMap<(String, String), usize>;

impl PipelineCollector {
    /// Messages waiting and dead letters per queue: every queue of every known pipeline, `0`
    /// when empty (a dashboard or an alert rule on `> 0` must tell "empty" from "gone"), and
    /// whatever else the store holds (pipelines deleted with messages left).
    fn queue_sizes(&self, statuses: &[(String, Arc<PipelineStatus>)]) -> (QueueSizes, QueueSizes) {
        let mut waiting = QueueSizes::new();
        let mut dead = QueueSizes::new();
        for (pipeline, status) in statuses {
            let key = |queue: &str| (pipeline.clone(), queue.to_string());
            waiting.insert(key("ingress"), 0);
            dead.insert(key(FILTERS_QUEUE), 0);
            for sink in status.sinks() {
                waiting.insert(key(&sink), 0);
                dead.insert(key(&sink), 0);
            }
        }
        for pipeline in self.queue.pipelines().unwrap_or_default() {
            let Ok(d) = self.queue.depths(&pipeline) else {
                continue;
            };
            let key = |queue: &str| (pipeline.clone(), queue.to_string());
            waiting.insert(key("ingress"), d.ingress);
            for (sink, n) in d.sinks {
                waiting.insert(key(&sink), n);
            }
            for (queue, n) in d.dead {
                dead.insert(key(&queue), n);
            }
        }
        (waiting, dead)
    }
}

impl Collector for PipelineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let statuses = crate::status::board_snapshot(&self.board);
        for (name, help, pick) in COUNTERS {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (pipeline, status) in &statuses {
                let labels = vec![("pipeline", pipeline.clone())];
                ConstCounter::new(Counters::get(pick(&status.counters)))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let mut events = encoder.encode_descriptor(
            "tocsin_stage_events",
            "Plugin traps and errors, retries, dead letters and messages silences kept from a sink, per stage (`source`, `filter.N`, `sink.NAME`)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (pipeline, status) in &statuses {
            for (stage, event, n) in status.stage_events() {
                let labels = vec![
                    ("pipeline", pipeline.clone()),
                    ("stage", stage),
                    ("event", event.as_str().to_string()),
                ];
                ConstCounter::new(n).encode(events.encode_family(&labels)?)?;
            }
        }
        let mut dropped = encoder.encode_descriptor(
            "tocsin_plugin_log_lines_dropped",
            "Log lines a plugin caused (its own, and the host's about it) that were dropped: over the stage's log budget or a quota",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (pipeline, status) in &statuses {
            for (stage, n) in status.log_lines_dropped() {
                let labels = vec![("pipeline", pipeline.clone()), ("stage", stage)];
                ConstCounter::new(n).encode(dropped.encode_family(&labels)?)?;
            }
        }
        let mut rejected = encoder.encode_descriptor(
            "tocsin_ingest_rejected",
            "Ingest requests to a pipeline answered with an error, per status (401 auth, 413 too large, 415 and 400 from the decoder, 408 slow body, 503 budget or storage)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (pipeline, status) in &statuses {
            for (code, n) in status.rejections() {
                let labels = vec![("pipeline", pipeline.clone()), ("status", code.to_string())];
                ConstCounter::new(n).encode(rejected.encode_family(&labels)?)?;
            }
        }
        let mut up = encoder.encode_descriptor(
            "tocsin_pipeline_up",
            "1 when the pipeline runs, 0 when it failed, is disabled or stopped",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (pipeline, status) in &statuses {
            let running = i64::from(status.state() == PipelineState::Running);
            ConstGauge::new(running)
                .encode(up.encode_family(&vec![("pipeline", pipeline.clone())])?)?;
        }
        let (waiting, dead_letters) = self.queue_sizes(&statuses);
        let mut depth = encoder.encode_descriptor(
            "tocsin_queue_depth",
            "Messages waiting, per queue (`ingress`, or a sink's name)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for ((pipeline, queue), n) in waiting {
            let labels = vec![("pipeline", pipeline), ("queue", queue)];
            ConstGauge::new(n as i64).encode(depth.encode_family(&labels)?)?;
        }
        let mut dead = encoder.encode_descriptor(
            "tocsin_dead_letters",
            "Messages in dead letters, per queue (a sink's name, or `@filters`)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for ((pipeline, queue), n) in dead_letters {
            let labels = vec![("pipeline", pipeline), ("queue", queue)];
            ConstGauge::new(n as i64).encode(dead.encode_family(&labels)?)?;
        }
        self.encode_storage(&mut encoder, &statuses)
    }
}

impl PipelineCollector {
    /// What the queues hold and take on disk, against their budgets.
    fn encode_storage(
        &self,
        encoder: &mut DescriptorEncoder,
        statuses: &[(String, Arc<PipelineStatus>)],
    ) -> Result<(), std::fmt::Error> {
        let mut pipelines: BTreeMap<String, Option<u64>> = statuses
            .iter()
            .map(|(name, status)| (name.clone(), status.queue_budget()))
            .collect();
        for name in self.queue.pipelines().unwrap_or_default() {
            pipelines.entry(name).or_default();
        }
        let mut stored = encoder.encode_descriptor(
            "tocsin_queue_stored_bytes",
            "Bytes of messages and plugin state a pipeline's queues hold (what its queue budget counts)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for name in pipelines.keys() {
            let bytes = self.queue.stored_bytes(name).unwrap_or(0);
            ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX))
                .encode(stored.encode_family(&vec![("pipeline", name.clone())])?)?;
        }
        let mut budgets = encoder.encode_descriptor(
            "tocsin_queue_budget_bytes",
            "A pipeline's queue budget (`queue_budget`, or its share of --queue-budget), when it has one",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (name, budget) in &pipelines {
            if let Some(budget) = budget {
                ConstGauge::new(i64::try_from(*budget).unwrap_or(i64::MAX))
                    .encode(budgets.encode_family(&vec![("pipeline", name.clone())])?)?;
            }
        }
        let files = encoder.encode_descriptor(
            "tocsin_queue_disk_bytes",
            "Bytes the queue store's files take on disk (held to --queue-budget with what they hold)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        let size = self.queue.size_on_disk().unwrap_or(0);
        ConstGauge::new(i64::try_from(size).unwrap_or(i64::MAX)).encode(files)?;
        let delivering = encoder.encode_descriptor(
            "tocsin_delivering",
            "1 when this process delivers (always, on sled); 0 when it takes ingest only and stands by, another process delivering for the shared queue store",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(*self.queue.delivers().borrow())).encode(delivering)?;
        Ok(())
    }
}
