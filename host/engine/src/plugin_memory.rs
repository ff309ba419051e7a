//! The memory all plugin instances may claim together.
//!
//! Each stage's `limits.memory` caps one instance (up to 4 GiB), but nothing bounded the sum:
//! one `memory = "4GiB"` stage took the process to 2 GB of RSS. So a pipeline reserves, when it
//! starts, the caps of the instances it starts with (source, filters, one per sink) against a
//! process-wide budget (`--max-plugin-memory`, by default half of this machine's memory); a
//! pipeline that does not fit fails to start with the figures, and the others go on. A sink
//! with `concurrency = N` adds instances only when its queue has work for them, each one
//! [`Reservation::grow`]n first; when the budget is full it delivers on the instances it has.
//! The reservation is released when the pipeline stops.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tocsin_config::PipelineSpec;

/// The process-wide budget and what each running pipeline reserved of it.
#[derive(Debug)]
pub struct PluginMemory {
    limit: u64,
    /// Per pipeline: the reservation's number and its bytes.
    reserved: Mutex<BTreeMap<String, (u64, u64)>>,
    /// The number of the next reservation: a pipeline restarted under the same name gets a
    /// new one, and the old one's release or growth leaves the new one alone.
    next: std::sync::atomic::AtomicU64,
}

/// A pipeline's reservation; released when dropped. Clones share it.
#[derive(Debug, Clone)]
pub struct Reservation(Arc<Held>);

#[derive(Debug)]
struct Held {
    budget: Arc<PluginMemory>,
    pipeline: String,
    number: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut reserved = self.budget.lock();
        if reserved.get(&self.pipeline).map(|(n, _)| *n) == Some(self.number) {
            reserved.remove(&self.pipeline);
        }
    }
}

impl Reservation {
    /// Adds `bytes` (one more instance's cap) if the budget has room; whether it had.
    pub fn grow(&self, bytes: u64) -> bool {
        let held = &self.0;
        let mut reserved = held.budget.lock();
        let total: u64 = reserved.values().map(|(_, b)| b).sum();
        if total.saturating_add(bytes) > held.budget.limit {
            return false;
        }
        match reserved.get_mut(&held.pipeline) {
            Some((number, mine)) if *number == held.number => {
                *mine += bytes;
                true
            }
            _ => false,
        }
    }
}

impl PluginMemory {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(PluginMemory {
            limit,
            reserved: Mutex::new(BTreeMap::new()),
            next: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (u64, u64)>> {
        self.reserved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes reserved by all pipelines together.
    pub fn reserved(&self) -> u64 {
        self.lock().values().map(|(_, b)| b).sum()
    }

    /// The budget in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Reserves the memory caps of `spec`'s instances, or says why it does not fit.
    pub fn reserve(self: &Arc<Self>, spec: &PipelineSpec) -> Result<Reservation, String> {
        let need = pipeline_memory(spec);
        let mut reserved = self.lock();
        let others: u64 = reserved
            .iter()
            .filter(|(name, _)| **name != spec.name)
            .map(|(_, (_, bytes))| bytes)
            .sum();
        if others.saturating_add(need) > self.limit {
            return Err(format!(
                "its plugins' memory caps add up to {}, and the other pipelines' to {}: over the \
                 budget of {} for all plugins (--max-plugin-memory); lower `limits.memory` or \
                 `concurrency`, or raise the budget",
                mib(need),
                mib(others),
                mib(self.limit)
            ));
        }
        let number = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        reserved.insert(spec.name.clone(), (number, need));
        Ok(Reservation(Arc::new(Held {
            budget: self.clone(),
            pipeline: spec.name.clone(),
            number,
        })))
    }
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// The memory caps of the instances `spec` starts with: its source (none for `@tocsin`),
/// each filter, one per sink.
pub fn pipeline_memory(spec: &PipelineSpec) -> u64 {
    let source = spec.source.stage.as_ref().map_or(0, |s| s.limits.memory);
    let filters: u64 = spec.filters.iter().map(|f| f.limits.memory).sum();
    let sinks: u64 = spec.sinks.iter().map(|s| s.stage.limits.memory).sum();
    source + filters + sinks
}

/// Half of this machine's memory (`MemTotal`), at least 1 GiB; 4 GiB when it cannot be read.
pub fn default_limit() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
    match total_kib {
        Some(kib) => (kib * 1024 / 2).max(1 << 30),
        None => 4 << 30,
    }
}
