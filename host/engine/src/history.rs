//! Metric history: the numbers messages carry (sysmetrics' CPU, memory, load, temperature and
//! disk; a backup's age and size; whatever a decoder emits) kept as time series per pipeline,
//! per `host` label and metric name, for graphs and the admin API.
//!
//! Points are taken where messages enter a pipeline (before any filter drops the healthy
//! ones), held in memory and written every [`FLUSH_EVERY`] in one batch per pipeline, apart
//! from the queues. Kept: every point for [`RAW_KEEP`], then 5-minute averages (with min and
//! max) for [`BUCKET_KEEP`]; at most [`MAX_SERIES`] series per pipeline (new ones beyond are
//! dropped and counted). So one series of a point every 10 s takes about 8 640 raw points and
//! 8 640 five-minute points: under half a megabyte.
//!
//! Layout of a pipeline's history tree (`host` and `metric` never contain a zero byte):
//!
//! | key | value |
//! | --- | --- |
//! | `s` host `\0` metric | the last point: time ms, value |
//! | `r` host `\0` metric `\0` time ms | value |
//! | `b` host `\0` metric `\0` bucket start ms | count, sum, min, max |

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use tocsin_message::Message;
use tocsin_queue::{QueueError, QueueStore};

/// How often recorded points are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often old points are folded into 5-minute buckets and the oldest removed.
pub const MAINTAIN_EVERY: Duration = Duration::from_secs(300);
/// Every point is kept this long.
pub const RAW_KEEP: Duration = Duration::from_secs(24 * 3600);
/// The width of a bucket.
pub const BUCKET: Duration = Duration::from_secs(300);
/// Buckets are kept this long.
pub const BUCKET_KEEP: Duration = Duration::from_secs(30 * 24 * 3600);
/// Series kept per pipeline at most.
pub const MAX_SERIES: usize = 10_000;
/// Points held in memory between two writes at most.
const MAX_PENDING: usize = 100_000;

/// One series of a pipeline, and its last point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// The `host` label of the messages (empty when they had none).
    pub host: String,
    /// The metric's name.
    pub metric: String,
    /// When the last point was taken, ms since the epoch.
    pub last_at_ms: u64,
    /// Its value.
    pub last_value: f64,
}

/// A point of a series as queried: a raw point (min = max = avg), or an aggregate over `step`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Its time (a bucket's start), ms since the epoch.
    pub at_ms: u64,
    /// The average.
    pub avg: f64,
    /// The least value.
    pub min: f64,
    /// The greatest value.
    pub max: f64,
}

struct Pending {
    pipeline: String,
    host: String,
    metric: String,
    at_ms: u64,
    value: f64,
}

/// Records points and answers queries.
pub struct History {
    queue: Arc<dyn QueueStore>,
    pending: Mutex<Vec<Pending>>,
    /// The series known per pipeline (loaded at its first point), to hold [`MAX_SERIES`].
    known: Mutex<HashMap<String, HashSet<(String, String)>>>,
    dropped: AtomicU64,
}

impl History {
    /// A history kept in `queue`.
    pub fn new(queue: Arc<dyn QueueStore>) -> Arc<Self> {
        Arc::new(History {
            queue,
            pending: Mutex::new(Vec::new()),
            known: Mutex::new(HashMap::new()),
            dropped: AtomicU64::new(0),
        })
    }

    /// Takes the metrics of `messages`, as they entered `pipeline`.
    pub fn record(&self, pipeline: &str, messages: &[Message]) {
        if messages.iter().all(|m| m.metrics.is_empty()) {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for m in messages {
            let host = clean(m.label("host").unwrap_or_default());
            for (metric, value) in &m.metrics {
                if !value.is_finite() {
                    continue;
                }
                if pending.len() >= MAX_PENDING {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                pending.push(Pending {
                    pipeline: pipeline.to_string(),
                    host: host.clone(),
                    metric: clean(metric),
                    at_ms: m.timestamp_ms,
                    value: *value,
                });
            }
        }
    }

    /// Points dropped (memory full, or a pipeline at [`MAX_SERIES`]).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes the points recorded so far.
    pub fn flush(&self) {
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let mut by_pipeline: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
        for point in taken {
            by_pipeline
                .entry(point.pipeline.clone())
                .or_default()
                .push(point);
        }
        for (pipeline, points) in by_pipeline {
            if let Err(e) = self.write(&pipeline, points) {
                tracing::warn!(pipeline = %pipeline, error = %e, "cannot write the metric history");
            }
        }
    }

    fn write(&self, pipeline: &str, points: Vec<Pending>) -> Result<(), QueueError> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if !known.contains_key(pipeline) {
            let series = self.series(pipeline)?;
            known.insert(
                pipeline.to_string(),
                series.into_iter().map(|s| (s.host, s.metric)).collect(),
            );
        }
        let known = known.get_mut(pipeline).expect("inserted above");
        let mut last: BTreeMap<(String, String), (u64, f64)> = BTreeMap::new();
        let mut writes = Vec::new();
        for p in points {
            let id = (p.host.clone(), p.metric.clone());
            if !known.contains(&id) {
                if known.len() >= MAX_SERIES {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                known.insert(id.clone());
            }
            writes.push((
                point_key(b'r', &p.host, &p.metric, p.at_ms),
                Some(p.value.to_be_bytes().to_vec()),
            ));
            let entry = last.entry(id).or_insert((p.at_ms, p.value));
            if p.at_ms >= entry.0 {
                *entry = (p.at_ms, p.value);
            }
        }
        for ((host, metric), (at_ms, value)) in last {
            let mut v = at_ms.to_be_bytes().to_vec();
            v.extend_from_slice(&value.to_be_bytes());
            writes.push((series_key(&host, &metric), Some(v)));
        }
        self.queue.history_write(pipeline, &writes)
    }

    /// Every series of `pipeline`, with its last point.
    pub fn series(&self, pipeline: &str) -> Result<Vec<Series>, QueueError> {
        let mut out = Vec::new();
        self.queue
            .history_range(pipeline, b"s", b"t", &mut |key, value| {
                let name = &key[1..];
                if let (Some(zero), Ok(at), Ok(v)) = (
                    name.iter().position(|&b| b == 0),
                    <[u8; 8]>::try_from(&value[..8.min(value.len())]),
                    <[u8; 8]>::try_from(&value[8.min(value.len())..]),
                ) {
                    out.push(Series {
                        host: String::from_utf8_lossy(&name[..zero]).into_owned(),
                        metric: String::from_utf8_lossy(&name[zero + 1..]).into_owned(),
                        last_at_ms: u64::from_be_bytes(at),
                        last_value: f64::from_be_bytes(v),
                    });
                }
                true
            })?;
        Ok(out)
    }

    /// The points of one series from `since_ms` to `until_ms`: raw when `step_ms` is 0, else
    /// aggregated into buckets of `step_ms` (at least [`BUCKET`] where only buckets are left).
    pub fn points(
        &self,
        pipeline: &str,
        host: &str,
        metric: &str,
        since_ms: u64,
        until_ms: u64,
        step_ms: u64,
    ) -> Result<Vec<Point>, QueueError> {
        self.flush();
        let mut raw = Vec::new();
        let (from, to) = (
            point_key(b'r', host, metric, since_ms),
            point_key(b'r', host, metric, until_ms),
        );
        self.queue
            .history_range(pipeline, &from, &to, &mut |key, value| {
                if let (Some(at), Ok(v)) = (key_time(key), <[u8; 8]>::try_from(value)) {
                    let v = f64::from_be_bytes(v);
                    raw.push(Point {
                        at_ms: at,
                        avg: v,
                        min: v,
                        max: v,
                    });
                }
                true
            })?;
        let mut buckets = Vec::new();
        let (from, to) = (
            point_key(b'b', host, metric, since_ms),
            point_key(b'b', host, metric, until_ms),
        );
        self.queue
            .history_range(pipeline, &from, &to, &mut |key, value| {
                if let (Some(at), Some(agg)) = (key_time(key), Aggregate::decode(value)) {
                    buckets.push((at, agg));
                }
                true
            })?;
        if step_ms == 0 && buckets.is_empty() {
            return Ok(raw);
        }
        let step = step_ms.max(BUCKET.as_millis() as u64);
        let mut folded: BTreeMap<u64, Aggregate> = BTreeMap::new();
        for (at, agg) in buckets {
            folded.entry(at - at % step).or_default().merge(&agg);
        }
        for p in raw {
            folded
                .entry(p.at_ms - p.at_ms % step)
                .or_default()
                .add(p.avg);
        }
        Ok(folded
            .into_iter()
            .filter(|(_, a)| a.count > 0)
            .map(|(at_ms, a)| Point {
                at_ms,
                avg: a.sum / f64::from(a.count),
                min: a.min,
                max: a.max,
            })
            .collect())
    }

    /// Folds points older than [`RAW_KEEP`] into buckets, and removes buckets older than
    /// [`BUCKET_KEEP`] and series silent that long, for every pipeline.
    pub fn maintain(&self, now_ms: u64) -> Result<(), QueueError> {
        self.flush();
        let raw_cut = now_ms.saturating_sub(RAW_KEEP.as_millis() as u64);
        let bucket_cut = now_ms.saturating_sub(BUCKET_KEEP.as_millis() as u64);
        let width = BUCKET.as_millis() as u64;
        for pipeline in self.queue.history_pipelines()? {
            for series in self.series(&pipeline)? {
                let (host, metric) = (&series.host, &series.metric);
                let mut writes = Vec::new();
                let mut fold: BTreeMap<u64, Aggregate> = BTreeMap::new();
                let (from, to) = (
                    point_key(b'r', host, metric, 0),
                    point_key(b'r', host, metric, raw_cut),
                );
                self.queue
                    .history_range(&pipeline, &from, &to, &mut |key, value| {
                        if let (Some(at), Ok(v)) = (key_time(key), <[u8; 8]>::try_from(value)) {
                            fold.entry(at - at % width)
                                .or_default()
                                .add(f64::from_be_bytes(v));
                        }
                        writes.push((key.to_vec(), None));
                        true
                    })?;
                for (start, mut agg) in fold {
                    let key = point_key(b'b', host, metric, start);
                    let to = point_key(b'b', host, metric, start + 1);
                    self.queue
                        .history_range(&pipeline, &key, &to, &mut |_, value| {
                            if let Some(old) = Aggregate::decode(value) {
                                agg.merge(&old);
                            }
                            false
                        })?;
                    writes.push((key, Some(agg.encode())));
                }
                let (from, to) = (
                    point_key(b'b', host, metric, 0),
                    point_key(b'b', host, metric, bucket_cut),
                );
                self.queue
                    .history_range(&pipeline, &from, &to, &mut |key, _| {
                        writes.push((key.to_vec(), None));
                        true
                    })?;
                if series.last_at_ms < bucket_cut {
                    writes.push((series_key(host, metric), None));
                    if let Some(known) = self
                        .known
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(&pipeline)
                    {
                        known.remove(&(host.clone(), metric.clone()));
                    }
                }
                if !writes.is_empty() {
                    self.queue.history_write(&pipeline, &writes)?;
                }
            }
        }
        Ok(())
    }

    /// Writes every [`FLUSH_EVERY`] and maintains every [`MAINTAIN_EVERY`] until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut maintain = tokio::time::interval(MAINTAIN_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = flush.tick() => {
                    let history = self.clone();
                    let _ = tokio::task::spawn_blocking(move || history.flush()).await;
                }
                _ = maintain.tick() => {
                    let history = self.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Err(e) = history.maintain(tocsin_queue::now_ms()) {
                            tracing::warn!(error = %e, "cannot fold the metric history");
                        }
                    })
                    .await;
                }
            }
        }
        self.flush();
    }
}

/// count, sum, min, max of a bucket.
#[derive(Debug, Clone, Copy)]
struct Aggregate {
    count: u32,
    sum: f64,
    min: f64,
    max: f64,
}

impl Default for Aggregate {
    fn default() -> Self {
        Aggregate {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl Aggregate {
    fn add(&mut self, v: f64) {
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    fn merge(&mut self, other: &Aggregate) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = self.count.to_be_bytes().to_vec();
        for x in [self.sum, self.min, self.max] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v
    }

    fn decode(bytes: &[u8]) -> Option<Aggregate> {
        let count = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
        let f = |i: usize| -> Option<f64> {
            Some(f64::from_be_bytes(
                bytes.get(4 + 8 * i..12 + 8 * i)?.try_into().ok()?,
            ))
        };
        Some(Aggregate {
            count,
            sum: f(0)?,
            min: f(1)?,
            max: f(2)?,
        })
    }
}

/// A name as a key part: zero bytes (the separator) become spaces.
fn clean(name: &str) -> String {
    name.replace('\0', " ")
}

fn series_key(host: &str, metric: &str) -> Vec<u8> {
    let mut k = vec![b's'];
    k.extend_from_slice(host.as_bytes());
    k.push(0);
    k.extend_from_slice(metric.as_bytes());
    k
}

fn point_key(kind: u8, host: &str, metric: &str, at_ms: u64) -> Vec<u8> {
    let mut k = vec![kind];
    k.extend_from_slice(host.as_bytes());
    k.push(0);
    k.extend_from_slice(metric.as_bytes());
    k.push(0);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k
}

/// The time at the end of a point or bucket key.
fn key_time(key: &[u8]) -> Option<u64> {
    let tail = key.get(key.len().checked_sub(8)?..)?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_message::Severity;

    fn sample(host: &str, at_ms: u64, cpu: f64) -> Message {
        Message {
            id: format!("{host}-{at_ms}"),
            timestamp_ms: at_ms,
            severity: Severity::Info,
            summary: None,
            body: String::new(),
            labels: vec![("host".into(), host.into())],
            metrics: vec![("cpu".into(), cpu), ("load".into(), cpu / 10.0)],
            payload: None,
            link: None,
            key: None,
        }
    }

    /// Points are kept per host and metric, queried raw or aggregated, folded into 5-minute
    /// buckets after a day (the aggregates unchanged) and gone after 30 days.
    #[test]
    fn points_are_kept_per_series_folded_after_a_day_and_dropped_after_a_month() {
        let dir = tempfile::tempdir().unwrap();
        let queue: Arc<dyn QueueStore> = tocsin_queue::SledStore::open(dir.path()).unwrap();
        let history = History::new(queue);
        let day = RAW_KEEP.as_millis() as u64;
        let t0 = 1_800_000_000_000u64; // on a 5-minute boundary
                                       // Two hosts; web1 every minute for 10 minutes (cpu 0..9), db1 once.
        let web1: Vec<Message> = (0..10)
            .map(|i| sample("web1", t0 + i * 60_000, i as f64))
            .collect();
        history.record("sys", &web1);
        history.record("sys", &[sample("db1", t0, 50.0)]);
        history.flush();
        let mut series = history.series("sys").unwrap();
        series.sort_by(|a, b| (&a.host, &a.metric).cmp(&(&b.host, &b.metric)));
        let names: Vec<(String, String)> = series
            .iter()
            .map(|s| (s.host.clone(), s.metric.clone()))
            .collect();
        assert_eq!(
            names,
            [
                ("db1", "cpu"),
                ("db1", "load"),
                ("web1", "cpu"),
                ("web1", "load")
            ]
            .map(|(h, m)| (h.to_string(), m.to_string()))
        );
        let web1_cpu = series
            .iter()
            .find(|s| s.host == "web1" && s.metric == "cpu")
            .unwrap();
        assert_eq!(
            (web1_cpu.last_at_ms, web1_cpu.last_value),
            (t0 + 9 * 60_000, 9.0)
        );

        let raw = history
            .points("sys", "web1", "cpu", t0, t0 + day, 0)
            .unwrap();
        assert_eq!(raw.len(), 10);
        assert_eq!(
            raw[3],
            Point {
                at_ms: t0 + 180_000,
                avg: 3.0,
                min: 3.0,
                max: 3.0
            }
        );
        let five = history
            .points("sys", "web1", "cpu", t0, t0 + day, 300_000)
            .unwrap();
        assert_eq!(five.len(), 2);
        assert_eq!((five[0].avg, five[0].min, five[0].max), (2.0, 0.0, 4.0));
        assert_eq!((five[1].avg, five[1].min, five[1].max), (7.0, 5.0, 9.0));

        // A day later the raw points are folded; the 5-minute view is the same.
        history.maintain(t0 + day + 20 * 60_000).unwrap();
        assert!(
            history
                .points("sys", "web1", "cpu", t0, t0 + day, 0)
                .unwrap()
                .len()
                == 2
        );
        assert_eq!(
            history
                .points("sys", "web1", "cpu", t0, t0 + day, 300_000)
                .unwrap(),
            five
        );
        // A month later they are gone, and so are the silent series.
        history.maintain(t0 + 31 * day).unwrap();
        assert!(history
            .points("sys", "web1", "cpu", 0, u64::MAX, 300_000)
            .unwrap()
            .is_empty());
        assert!(history.series("sys").unwrap().is_empty());
    }
}
