//! What an operator sees and does, over a [`QueueStore`]: the listings of queues and dead
//! letters, a peek at a queue's head, replay and purge.
//!
//! The admin API answers with these views as JSON, and the CLI prints them — from the running
//! server's API, or from the store when no server runs — with one formatter each, so
//! `tocsin dlq ls` reads the same either way.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use tocsin_queue::{Envelope, QueueError, QueueStore, Seq};

use crate::status::StatusBoard;
use crate::status::{PipelineState, PipelineStatus};

/// The queue name of a pipeline's ingress (what its source produced, waiting for the filters).
pub const INGRESS_QUEUE: &str = "ingress";

/// One dead letter, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRow {
    /// Its pipeline.
    pub pipeline: String,
    /// The queue it was taken from: a sink's name, or `@filters`.
    pub queue: String,
    /// Its sequence number in that queue (what `show`, `replay` and `purge` name).
    pub seq: Seq,
    /// Attempts made.
    pub attempts: u32,
    /// The message's id.
    pub id: String,
    /// The last attempt's error.
    pub last_error: Option<String>,
}

/// One pipeline's queues, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRow {
    /// The pipeline.
    pub pipeline: String,
    /// Messages waiting for the filters.
    pub ingress: usize,
    /// Messages waiting for delivery, per sink.
    pub sinks: BTreeMap<String, usize>,
    /// Dead letters, per queue (sinks and `@filters`).
    pub dead_letters: BTreeMap<String, usize>,
}

/// An entry of a queue, left in place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedEntry {
    /// Its sequence number.
    pub seq: Seq,
    /// The message and its delivery history.
    pub envelope: Envelope,
}

/// Which dead letters a replay or purge takes: `{"seqs": [..]}` or `{"all": true}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// These, by sequence number.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seqs: Vec<Seq>,
    /// Every dead letter of the queue.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

impl Selection {
    /// The named ones (`Some`), or every one (`None`); an error unless exactly one of the two
    /// is asked for.
    pub fn target(&self) -> Result<Option<&[Seq]>, String> {
        match (self.all, self.seqs.is_empty()) {
            (true, true) => Ok(None),
            (false, false) => Ok(Some(&self.seqs)),
            (true, false) => Err("give `seqs` or `all`, not both".into()),
            (false, true) => {
                Err("name the dead letters: `{\"seqs\": [..]}`, or `{\"all\": true}`".into())
            }
        }
    }
}

/// A pipeline as the status page and `GET /api/v1/pipelines` show it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PipelineView {
    /// Its name (its file's stem).
    pub name: String,
    /// `starting`, `running`, `failed`, `disabled`, `paused`, `stopped`, or `no_file` (its
    /// file is gone and its queues are kept).
    pub state: String,
    /// Why it is not running, when it failed.
    pub reason: Option<String>,
    /// Why its edited file was refused, while the previous version still runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_error: Option<String>,
    /// Its counters since this process started (`messages_in`, `delivered`, …).
    pub counters: BTreeMap<String, u64>,
    /// Its queues: ingress, then each sink's.
    pub queues: Vec<QueueView>,
    /// Dead letters per queue (sinks and `@filters`).
    pub dead_letters: BTreeMap<String, usize>,
    /// Bytes its queues, dead letters and plugin state hold.
    pub stored_bytes: u64,
    /// Its queue budget in bytes, if it has one.
    pub queue_budget: Option<u64>,
    /// The plugin of each stage it runs (`source`, `filter.0`, `sink.NAME`): as its file names
    /// it, and the sha256 of the `.wasm` loaded (pin it with `sha256 = "…"`).
    #[serde(default)]
    pub plugins: Vec<PluginView>,
    /// Reporters it expects (`expect`) whose absence alert is open: (reporter, last report
    /// in ms since the epoch, if known).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<(String, Option<u64>)>,
}

impl PipelineView {
    /// A running pipeline named `name` with nothing queued, counted or stored.
    pub fn running(name: &str) -> Self {
        PipelineView {
            name: name.to_string(),
            state: "running".into(),
            ..PipelineView::default()
        }
    }
}

/// One stage's plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginView {
    /// `source`, `filter.0`, `sink.NAME`.
    pub stage: String,
    /// As the pipeline file names it.
    pub plugin: String,
    /// The sha256 of the component loaded, hex.
    pub sha256: String,
}

/// One queue of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueView {
    /// `ingress`, or a sink's name.
    pub queue: String,
    /// Messages waiting.
    pub depth: usize,
    /// How long the oldest has waited since it entered the pipeline, in seconds.
    pub oldest_age_seconds: Option<f64>,
}

/// Every pipeline of the board, then those with only stored data left.
pub fn pipelines(
    board: &StatusBoard,
    store: &dyn QueueStore,
) -> Result<Vec<PipelineView>, QueueError> {
    let statuses = crate::status::board_snapshot(board);
    let now = tocsin_queue::now_ms();
    // A process that does not deliver (a shared store) keeps no index to find the heads by:
    // it shows depths, the delivering process shows ages too.
    let delivering = *store.delivers().borrow();
    let age = |head: Result<Option<(Seq, Envelope)>, QueueError>| {
        if !delivering {
            return Ok(None);
        }
        head.map(|h| h.map(|(_, e)| now.saturating_sub(e.enqueued_ms) as f64 / 1000.0))
    };
    // A pipeline on the board has a status; one with only stored data left has none.
    let view = |name: &str, status: Option<&PipelineStatus>| {
        let depths = store.depths(name)?;
        let depth_of = |sink: &str| {
            depths
                .sinks
                .iter()
                .find_map(|(s, n)| (s == sink).then_some(*n))
                .unwrap_or(0)
        };
        let mut queues = vec![QueueView {
            queue: INGRESS_QUEUE.into(),
            depth: depths.ingress,
            oldest_age_seconds: age(store.ingress_head(name))?,
        }];
        let mut sink_names = status.map(|s| s.sinks()).unwrap_or_default();
        for (sink, _) in &depths.sinks {
            if !sink_names.contains(sink) {
                sink_names.push(sink.clone());
            }
        }
        for sink in sink_names {
            queues.push(QueueView {
                depth: depth_of(&sink),
                oldest_age_seconds: age(store.sink_head(name, &sink))?,
                queue: sink,
            });
        }
        let (state, reason) = match status.map(|s| s.state()) {
            None => ("no_file", None),
            Some(PipelineState::Starting) => ("starting", None),
            Some(PipelineState::Running) => ("running", None),
            Some(PipelineState::IngestOnly) => ("ingest_only", None),
            Some(PipelineState::Failed(why)) => ("failed", Some(why)),
            Some(PipelineState::Disabled) => ("disabled", None),
            Some(PipelineState::Paused) => ("paused", None),
            Some(PipelineState::Stopped) => ("stopped", None),
        };
        let plugins = status.map(|s| s.plugins()).unwrap_or_default();
        Ok::<_, QueueError>(PipelineView {
            name: name.to_string(),
            state: state.into(),
            reason,
            file_error: status.and_then(|s| s.file_error()),
            counters: status.map(|s| s.counters.snapshot()).unwrap_or_default(),
            queues,
            dead_letters: depths.dead.into_iter().collect(),
            stored_bytes: store.stored_bytes(name)?,
            queue_budget: status.and_then(|s| s.queue_budget()),
            plugins: plugins
                .into_iter()
                .map(|(stage, (plugin, sha256))| PluginView {
                    stage,
                    plugin,
                    sha256,
                })
                .collect(),
            absent: crate::absence::stored_rows(store, name)?
                .into_iter()
                .filter(|r| r.absent_since_ms.is_some())
                .map(|r| (r.reporter, r.last_seen_ms))
                .collect(),
        })
    };
    let mut views = Vec::new();
    for (name, status) in &statuses {
        views.push(view(name, Some(status))?);
    }
    for name in store.pipelines()? {
        if !statuses.iter().any(|(n, _)| *n == name) {
            views.push(view(&name, None)?);
        }
    }
    Ok(views)
}

/// The dead letters of `pipeline` (or of every pipeline with anything stored), by queue and
/// age.
pub fn dead_letters(
    store: &dyn QueueStore,
    pipeline: Option<&str>,
) -> Result<Vec<DeadLetterRow>, QueueError> {
    let pipelines = match pipeline {
        Some(p) => vec![p.to_string()],
        None => store.pipelines()?,
    };
    let mut rows = Vec::new();
    for p in pipelines {
        for (queue, _) in store.depths(&p)?.dead {
            for (seq, env) in store.dead_letters(&p, &queue)? {
                rows.push(DeadLetterRow {
                    pipeline: p.clone(),
                    queue: queue.clone(),
                    seq,
                    attempts: env.attempts,
                    id: env.message.id,
                    last_error: env.last_error,
                });
            }
        }
    }
    Ok(rows)
}

/// One dead letter whole.
pub fn dead_letter(
    store: &dyn QueueStore,
    pipeline: &str,
    queue: &str,
    seq: Seq,
) -> Result<Envelope, QueueError> {
    store
        .dead_letters(pipeline, queue)?
        .into_iter()
        .find_map(|(s, env)| (s == seq).then_some(env))
        .ok_or_else(|| QueueError::NotFound {
            queue: format!("dead letters of {pipeline}/{queue}"),
            seq,
        })
}

/// The queues of every pipeline with anything stored (deleted ones included).
pub fn queues(store: &dyn QueueStore) -> Result<Vec<QueueRow>, QueueError> {
    store
        .pipelines()?
        .into_iter()
        .map(|pipeline| {
            let d = store.depths(&pipeline)?;
            Ok(QueueRow {
                pipeline,
                ingress: d.ingress,
                sinks: d.sinks.into_iter().collect(),
                dead_letters: d.dead.into_iter().collect(),
            })
        })
        .collect()
}

/// Up to `limit` of the oldest entries of `queue` ([`INGRESS_QUEUE`] or a sink's name).
pub fn peek(
    store: &dyn QueueStore,
    pipeline: &str,
    queue: &str,
    limit: usize,
) -> Result<Vec<QueuedEntry>, QueueError> {
    let entries = if queue == INGRESS_QUEUE {
        let mut heads = store.ingress_heads(pipeline, limit)?;
        heads.truncate(limit);
        heads
    } else {
        store.sink_heads(pipeline, queue, limit)?
    };
    Ok(entries
        .into_iter()
        .map(|(seq, envelope)| QueuedEntry { seq, envelope })
        .collect())
}

/// What to do with dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposal {
    /// Move them back to the tail of their queue with a fresh attempt count.
    Replay,
    /// Delete them.
    Purge,
}

/// Replays or purges the selected dead letters; returns how many. A named one that is not
/// there is an error for a replay (after the ones before it moved), and counts 0 for a purge.
/// A replay is a step of each message's trace, when `tracer` records.
pub fn dispose(
    store: &dyn QueueStore,
    tracer: Option<&crate::trace::Tracer>,
    disposal: Disposal,
    pipeline: &str,
    queue: &str,
    selection: &Selection,
) -> Result<usize, QueueError> {
    let target = selection.target().map_err(QueueError::Storage)?;
    let tracer = tracer.filter(|t| t.enabled() && disposal == Disposal::Replay);
    // The ids first: a replay moves the letters away.
    let ids: Vec<String> = match tracer {
        None => Vec::new(),
        Some(_) => store
            .dead_letters(pipeline, queue)?
            .into_iter()
            .filter(|(seq, _)| target.is_none_or(|seqs| seqs.contains(seq)))
            .map(|(_, env)| env.message.id)
            .collect(),
    };
    let one = |seq| match disposal {
        Disposal::Replay => store.replay(pipeline, queue, seq),
        Disposal::Purge => store.purge_dead(pipeline, queue, seq),
    };
    let n = match target {
        None => one(None)?,
        Some(seqs) => seqs
            .iter()
            .map(|&seq| one(Some(seq)))
            .sum::<Result<usize, _>>()?,
    };
    if let Some(tracer) = tracer {
        for id in ids.iter().take(n) {
            let step = crate::trace::Step::Replayed {
                queue: queue.to_string(),
            };
            tracer.record(pipeline, id, step);
        }
        tracer.flush();
    }
    Ok(n)
}

/// The dead-letter table as `tocsin dlq ls` prints it.
pub fn format_dead_letters(rows: &[DeadLetterRow]) -> String {
    let mut out = format!(
        "{:<24} {:<16} {:>20} {:>8}  {:<24} last error\n",
        "pipeline", "queue", "seq", "attempts", "message"
    );
    for row in rows {
        out += &format!(
            "{:<24} {:<16} {:>20} {:>8}  {:<24} {}\n",
            row.pipeline,
            row.queue,
            row.seq,
            row.attempts,
            tocsin_message::one_line(&row.id),
            tocsin_message::one_line(row.last_error.as_deref().unwrap_or_default())
        );
    }
    out
}

/// The pipelines as `tocsin status` prints them: state, counters, queues with the age of their
/// oldest message, dead letters.
pub fn format_pipelines(views: &[PipelineView]) -> String {
    let mut out = format!(
        "{:<24} {:<10} {:>8} {:>9} {:>5}  queues (depth, oldest)\n",
        "pipeline", "state", "in", "delivered", "dead"
    );
    for view in views {
        let counter = |name: &str| view.counters.get(name).copied().unwrap_or(0);
        let queues: Vec<String> = view
            .queues
            .iter()
            .map(|q| match q.oldest_age_seconds {
                Some(age) if q.depth > 0 => {
                    format!("{}={} ({})", q.queue, q.depth, format_age(age))
                }
                _ => format!("{}={}", q.queue, q.depth),
            })
            .collect();
        out += &format!(
            "{:<24} {:<10} {:>8} {:>9} {:>5}  {}\n",
            view.name,
            view.state,
            counter("messages_in"),
            counter("delivered"),
            view.dead_letters.values().sum::<usize>(),
            queues.join(" ")
        );
        if let Some(reason) = &view.reason {
            out += &format!("    {}\n", tocsin_message::one_line(reason));
        }
    }
    out
}

/// An age for a person: `42s`, `7m`, `3h`, `2d`.
fn format_age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The queue table as `tocsin queue ls` prints it.
pub fn format_queues(rows: &[QueueRow]) -> String {
    let fmt = |counts: &BTreeMap<String, usize>| {
        counts
            .iter()
            .map(|(n, c)| format!("{n}={c}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = format!(
        "{:<24} {:>8} {:<32} dead letters\n",
        "pipeline", "ingress", "sinks"
    );
    for row in rows {
        out += &format!(
            "{:<24} {:>8} {:<32} {}\n",
            row.pipeline,
            row.ingress,
            fmt(&row.sinks),
            fmt(&row.dead_letters)
        );
    }
    out
}

/// A queue whose oldest message waited longer than this (seconds) is an open problem.
pub const STALE_QUEUE_SECONDS: f64 = 300.0;

/// Something that needs someone, as the status page and `tocsin status` list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `bad` (a pipeline failed, messages dead-lettered) or `warn` (paused, waiting long,
    /// being retried, data without a pipeline file).
    pub level: String,
    /// What it is, in words.
    pub text: String,
}

/// The open problems: pipelines that failed or are paused, stored data without a pipeline
/// file, dead letters, queues whose oldest message waited over [`STALE_QUEUE_SECONDS`], and
/// recent messages being retried (with their error).
pub fn problems(views: &[PipelineView], recent: &[crate::recent::RecentMessage]) -> Vec<Problem> {
    let mut found = Vec::new();
    let mut add = |level: &str, text: String| {
        found.push(Problem {
            level: level.to_string(),
            text,
        })
    };
    for view in views {
        let name = &view.name;
        match view.state.as_str() {
            "failed" => add(
                "bad",
                match &view.reason {
                    Some(why) => format!("{name} failed: {}", tocsin_message::one_line(why)),
                    None => format!("{name} failed"),
                },
            ),
            "paused" => add("warn", format!("{name} is paused")),
            "no_file" => add(
                "warn",
                format!("{name} has stored messages but no pipeline file"),
            ),
            _ => {}
        }
        if let Some(errors) = &view.file_error {
            add(
                "warn",
                format!(
                    "{name}: its edited file is refused, the previous version still runs: {}",
                    tocsin_message::one_line(errors)
                ),
            );
        }
        for (reporter, last) in &view.absent {
            let since = last.map_or_else(
                || "stopped reporting".to_string(),
                |ms| {
                    let age = crate::absence::now_seconds_since(ms);
                    format!("has not reported for {}", format_age(age))
                },
            );
            add("bad", format!("{name}: {reporter} {since}"));
        }
        for (queue, &count) in &view.dead_letters {
            if count > 0 {
                let s = if count == 1 { "" } else { "s" };
                add("bad", format!("{name}/{queue}: {count} dead letter{s}"));
            }
        }
        for q in &view.queues {
            if let Some(age) = q.oldest_age_seconds.filter(|a| *a > STALE_QUEUE_SECONDS) {
                add(
                    "warn",
                    format!(
                        "{name}/{}: {} waiting, the oldest for {}",
                        q.queue,
                        q.depth,
                        format_age(age)
                    ),
                );
            }
        }
    }
    for m in recent.iter().filter(|m| m.state == "retrying") {
        let detail = m.detail.as_deref().unwrap_or_default();
        add(
            "warn",
            format!(
                "{}: {} is retried: {}",
                m.pipeline,
                m.id,
                tocsin_message::one_line(detail)
            ),
        );
    }
    found
}

/// Open problems as `tocsin status` prints them.
pub fn format_problems(problems: &[Problem]) -> String {
    if problems.is_empty() {
        return "open problems: none\n".into();
    }
    let mut out = String::from("open problems:\n");
    for p in problems {
        let mark = if p.level == "bad" { "!!" } else { " !" };
        out += &format!("  {mark} {}\n", p.text);
    }
    out
}

/// Recent messages as `tocsin status` prints them: those a sink took (or should have), newest
/// first, at most `limit`.
pub fn format_recent(recent: &[crate::recent::RecentMessage], limit: usize) -> String {
    let shown: Vec<_> = recent
        .iter()
        .filter(|m| !matches!(m.state.as_str(), "dropped" | "routed_nowhere"))
        .take(limit)
        .collect();
    if shown.is_empty() {
        return "recent messages: none\n".into();
    }
    let now = tocsin_queue::now_ms();
    let mut out = String::from("recent messages:\n");
    for m in shown {
        let age = now.saturating_sub(m.accepted_at_ms) as f64 / 1000.0;
        let what = m.summary.as_deref().unwrap_or(&m.id);
        out += &format!(
            "  {:>6} ago  {:<16} {:<14} {}{}\n",
            format_age(age),
            m.pipeline,
            m.state,
            tocsin_message::one_line(what),
            m.detail
                .as_deref()
                .map(|d| format!(" ({})", tocsin_message::one_line(d)))
                .unwrap_or_default()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, state: &str) -> PipelineView {
        PipelineView {
            state: state.into(),
            reason: (state == "failed").then(|| "filter.0 (dedup): init failed".into()),
            ..PipelineView::running(name)
        }
    }

    #[test]
    fn problems_name_what_needs_someone_and_nothing_else() {
        let mut backups = view("backups", "running");
        let twenty_min_ago = tocsin_queue::now_ms() - 20 * 60_000;
        backups.absent = vec![
            ("host=db7".into(), Some(twenty_min_ago)),
            ("host=db8".into(), None),
        ];
        backups.dead_letters.insert("matrix".into(), 2);
        backups.queues.push(QueueView {
            queue: "matrix".into(),
            depth: 7,
            oldest_age_seconds: Some(900.0),
        });
        backups.queues.push(QueueView {
            queue: "ingress".into(),
            depth: 1,
            oldest_age_seconds: Some(2.0),
        });
        let views = [
            backups,
            view("web", "failed"),
            view("night", "paused"),
            view("fine", "running"),
            view("stopped", "stopped"),
        ];
        let retried = crate::recent::RecentMessage {
            pipeline: "backups".into(),
            id: "b-1".into(),
            accepted_at_ms: 1,
            summary: None,
            severity: None,
            state: "retrying".into(),
            detail: Some("matrix: HTTP 503".into()),
            last_at_ms: 2,
        };
        let texts: Vec<(String, String)> = problems(&views, &[retried])
            .into_iter()
            .map(|p| (p.level, p.text))
            .collect();
        let expected = [
            ("bad", "backups: host=db7 has not reported for 20m"),
            ("bad", "backups: host=db8 stopped reporting"),
            ("bad", "backups/matrix: 2 dead letters"),
            ("warn", "backups/matrix: 7 waiting, the oldest for 15m"),
            ("bad", "web failed: filter.0 (dedup): init failed"),
            ("warn", "night is paused"),
            ("warn", "backups: b-1 is retried: matrix: HTTP 503"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(l, t)| (l.to_string(), t.to_string()))
            .collect();
        assert_eq!(texts, expected);
        assert_eq!(format_problems(&[]), "open problems: none\n");
    }
}
