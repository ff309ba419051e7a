//! The built-in `@tocsin` source: which of tocsin's own events a pipeline hears, and when a
//! condition counts as one. The engine's `self_events` module watches for them.

use std::collections::BTreeSet;
use std::time::Duration;

/// The plugin name of the built-in source.
pub const TOCSIN_SOURCE: &str = "@tocsin";

/// One kind of event tocsin reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SelfEvent {
    /// Messages moved to a queue's dead letters (more than were announced).
    DeadLetter,
    /// A pipeline is not running: its file is invalid, or it failed to start.
    PipelineFailed,
    /// An edited pipeline file is invalid; the previous version still runs.
    PipelineInvalid,
    /// The host stopped a plugin's calls repeatedly (traps, CPU, memory, time).
    PluginStopped,
    /// A sink's deliveries have failed for longer than `retrying_for`.
    SinkRetrying,
    /// A pipeline's (or the server's) queues hold most of their budget.
    QueueBudget,
    /// The queues' filesystem is near its free-space reserve, or refuses writes.
    DiskReserve,
}

impl SelfEvent {
    /// Every kind, in the order the reference lists them.
    pub const ALL: [SelfEvent; 7] = [
        SelfEvent::DeadLetter,
        SelfEvent::PipelineFailed,
        SelfEvent::PipelineInvalid,
        SelfEvent::PluginStopped,
        SelfEvent::SinkRetrying,
        SelfEvent::QueueBudget,
        SelfEvent::DiskReserve,
    ];

    /// Its name in `events = [...]`.
    pub fn as_str(self) -> &'static str {
        match self {
            SelfEvent::DeadLetter => "dead_letter",
            SelfEvent::PipelineFailed => "pipeline_failed",
            SelfEvent::PipelineInvalid => "pipeline_invalid",
            SelfEvent::PluginStopped => "plugin_stopped",
            SelfEvent::SinkRetrying => "sink_retrying",
            SelfEvent::QueueBudget => "queue_budget",
            SelfEvent::DiskReserve => "disk_reserve",
        }
    }

    /// The `alertname` label of its messages.
    pub fn alertname(self) -> &'static str {
        match self {
            SelfEvent::DeadLetter => "TocsinDeadLetters",
            SelfEvent::PipelineFailed => "TocsinPipelineFailed",
            SelfEvent::PipelineInvalid => "TocsinPipelineFileInvalid",
            SelfEvent::PluginStopped => "TocsinPluginStopped",
            SelfEvent::SinkRetrying => "TocsinSinkRetrying",
            SelfEvent::QueueBudget => "TocsinQueueBudget",
            SelfEvent::DiskReserve => "TocsinDiskReserve",
        }
    }

    /// The kind named `name`, or an error naming the known ones.
    pub fn parse(name: &str) -> Result<SelfEvent, String> {
        SelfEvent::ALL
            .into_iter()
            .find(|e| e.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = SelfEvent::ALL.iter().map(|e| e.as_str()).collect();
                format!(
                    "`{name}` is not an event of the @tocsin source (events: {})",
                    known.join(", ")
                )
            })
    }
}

/// Default of `every`: how often the conditions are looked at.
pub const DEFAULT_SELF_EVERY: Duration = Duration::from_secs(15);
/// Default of `retrying_for`.
pub const DEFAULT_RETRYING_FOR: Duration = Duration::from_secs(10 * 60);
/// Default of `plugin_stops`.
pub const DEFAULT_PLUGIN_STOPS: u32 = 3;
/// Default of `stops_within`.
pub const DEFAULT_STOPS_WITHIN: Duration = Duration::from_secs(10 * 60);
/// Default of `budget_percent`.
pub const DEFAULT_BUDGET_PERCENT: u32 = 80;

/// A checked `@tocsin` source: what it reports and its thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfEventsSpec {
    /// The kinds of event reported (every kind unless the file names some).
    pub events: BTreeSet<SelfEvent>,
    /// How often the conditions are looked at.
    pub every: Duration,
    /// How long a sink's deliveries fail before [`SelfEvent::SinkRetrying`].
    pub retrying_for: Duration,
    /// How many stopped calls of one plugin within `stops_within` make
    /// [`SelfEvent::PluginStopped`].
    pub plugin_stops: u32,
    /// The window `plugin_stops` is counted in.
    pub stops_within: Duration,
    /// The share of a queue budget (in percent) whose use makes [`SelfEvent::QueueBudget`].
    pub budget_percent: u32,
}

impl Default for SelfEventsSpec {
    fn default() -> Self {
        SelfEventsSpec {
            events: SelfEvent::ALL.into_iter().collect(),
            every: DEFAULT_SELF_EVERY,
            retrying_for: DEFAULT_RETRYING_FOR,
            plugin_stops: DEFAULT_PLUGIN_STOPS,
            stops_within: DEFAULT_STOPS_WITHIN,
            budget_percent: DEFAULT_BUDGET_PERCENT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_parses_from_its_name_and_an_unknown_one_lists_them() {
        for event in SelfEvent::ALL {
            assert_eq!(SelfEvent::parse(event.as_str()), Ok(event));
            assert!(event.alertname().starts_with("Tocsin"));
        }
        let err = SelfEvent::parse("dead_letters").unwrap_err();
        assert!(err.contains("dead_letter, pipeline_failed"), "{err}");
    }
}
