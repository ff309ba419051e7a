//! The memory all plugin instances may claim together.
//!
//! Each stage's `limits.memory` caps one instance (up to 4 GiB), but nothing bounded the sum:
//! one `memory = "4GiB"` stage took the process to 2 GB of RSS. So a pipeline reserves, when it
//! starts, the caps of every instance it runs (source, filters, each sink times its
//! `concurrency`) against a process-wide budget (`--max-plugin-memory`, by default half of this
//! machine's memory); a pipeline that does not fit fails to start with the figures, and the
//! others go on. The reservation is released when the pipeline stops.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tocsin_config::PipelineSpec;

/// The process-wide budget and what each running pipeline reserved of it.
#[derive(Debug)]
pub struct PluginMemory {
    limit: u64,
    reserved: Mutex<BTreeMap<String, u64>>,
}

/// A pipeline's reservation; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<PluginMemory>,
    pipeline: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget
            .reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.pipeline);
    }
}

impl PluginMemory {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(PluginMemory {
            limit,
            reserved: Mutex::new(BTreeMap::new()),
        })
    }

    /// The budget in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Reserves the memory caps of `spec`'s instances, or says why it does not fit.
    pub fn reserve(self: &Arc<Self>, spec: &PipelineSpec) -> Result<Reservation, String> {
        let need = pipeline_memory(spec);
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        let others: u64 = reserved
            .iter()
            .filter(|(name, _)| **name != spec.name)
            .map(|(_, bytes)| bytes)
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
        reserved.insert(spec.name.clone(), need);
        Ok(Reservation {
            budget: self.clone(),
            pipeline: spec.name.clone(),
        })
    }
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// The memory caps of every instance `spec` runs.
pub fn pipeline_memory(spec: &PipelineSpec) -> u64 {
    let source = spec.source.stage.limits.memory;
    let filters: u64 = spec.filters.iter().map(|f| f.limits.memory).sum();
    let sinks: u64 = spec
        .sinks
        .iter()
        .map(|s| s.stage.limits.memory * u64::from(s.concurrency.max(1)))
        .sum();
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
