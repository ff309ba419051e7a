//! The set of running pipelines, kept in step with the pipelines directory.
//!
//! [`Manager::reconcile`] reads the directory and applies what changed, one pipeline at a
//! time: a new valid file starts its pipeline; a changed valid file replaces it between
//! messages (its queued messages stay and are processed by the new version); a changed invalid
//! file is reported and the previous version keeps running; a deleted file stops its pipeline
//! and keeps its queues (re-adding the file resumes them). A pipeline that could not start —
//! a secret file not there yet, a JWKS URL unreachable, a granted directory missing — is tried
//! again with backoff ([`retry_delay`]) even when its file does not change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tocsin_config::{load_dir_files, parse_pipeline, MachineCheck, PipelineSpec};

use crate::pipeline::{start, RunningPipeline, Shared};
use crate::settings::Settings;
use crate::status::StatusBoard;
use crate::status::{PipelineState, PipelineStatus};

/// An empty status board.
pub fn new_board() -> StatusBoard {
    Arc::new(Mutex::new(BTreeMap::new()))
}

struct Entry {
    /// Digest of the file text last applied (valid or not), so an unchanged file is skipped.
    digest: u64,
    running: Option<RunningPipeline>,
    /// Set when the pipeline is not running because it failed: when to try again, and how
    /// many tries failed in a row.
    retry: Option<(tokio::time::Instant, u32)>,
}

/// How long to wait before starting a failed pipeline again after `failures` failed tries in a
/// row: 10 s, doubling, at most 5 minutes (the directory rescan, every 10 s, does the retry).
pub fn retry_delay(failures: u32) -> std::time::Duration {
    let secs = 10u64.saturating_mul(1 << failures.saturating_sub(1).min(5));
    std::time::Duration::from_secs(secs.min(300))
}

/// Runs the pipelines of one directory.
pub struct Manager {
    shared: Shared,
    settings: Settings,
    entries: BTreeMap<String, Entry>,
    board: StatusBoard,
    paused: crate::paused::Paused,
}

/// What an operator asks of the running pipelines (through the admin API); the server's loop
/// hands each to [`Manager::command`] and sends the answer back.
#[derive(Debug)]
pub enum Command {
    /// Stop a pipeline and keep it stopped, across restarts, until resumed.
    Pause(String),
    /// Start a paused pipeline from its file.
    Resume(String),
    /// Have a scheduled source poll now.
    RunNow(String),
}

/// A command and where its answer goes: what was done, or why not (the HTTP status to
/// answer with, and the reason).
pub type CommandRequest = (
    Command,
    tokio::sync::oneshot::Sender<Result<String, (u16, String)>>,
);

/// What one reconcile did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Pipelines started for the first time.
    pub started: Vec<String>,
    /// Pipelines replaced by a new version.
    pub replaced: Vec<String>,
    /// Pipelines stopped because their file went away.
    pub removed: Vec<String>,
    /// Files with errors (each reported in the log), with the errors.
    pub invalid: Vec<(String, Vec<String>)>,
    /// Pipelines whose file was valid but which failed to start, with why.
    pub failed: Vec<(String, String)>,
}

impl Manager {
    /// A manager with nothing running yet, reporting to `board`.
    pub fn new(shared: Shared, settings: Settings, board: StatusBoard) -> Self {
        Manager {
            paused: crate::paused::Paused::load(&settings.data_dir),
            shared,
            settings,
            entries: BTreeMap::new(),
            board,
        }
    }

    /// The shared status board.
    pub fn board(&self) -> StatusBoard {
        self.board.clone()
    }

    /// Reads the pipelines directory and applies every change.
    pub async fn reconcile(&mut self) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let files = match load_dir_files(&self.settings.pipelines_dir) {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(dir = %self.settings.pipelines_dir.display(), error = %e, "cannot read the pipelines directory");
                return report;
            }
        };
        let mut seen = Vec::new();
        for (name, path, text) in files {
            seen.push(name.clone());
            let digest = text_digest(&text);
            let now = tokio::time::Instant::now();
            let unchanged_and_not_due = self.entries.get(&name).is_some_and(|e| {
                e.digest == digest
                    && !e
                        .retry
                        .is_some_and(|(at, _)| e.running.is_none() && now >= at)
            });
            if unchanged_and_not_due {
                continue;
            }
            self.apply(&name, path, &text, digest, &mut report).await;
        }
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|name| !seen.contains(name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(entry) = self.entries.remove(&name) {
                if let Some(running) = entry.running {
                    running.stop().await;
                }
                // Its status and counters go with its file; queues it left are still
                // reported, from the store.
                let status = self
                    .board
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&name);
                if let Some(status) = status {
                    self.shared.metrics.forget_sinks(&name, &status.sinks());
                }
                tracing::info!(pipeline = %name, "pipeline file removed; pipeline stopped, its queues are kept");
                report.removed.push(name);
            }
        }
        report
    }

    async fn apply(
        &mut self,
        name: &str,
        path: PathBuf,
        text: &str,
        digest: u64,
        report: &mut ReconcileReport,
    ) {
        let resolver = self.settings.resolver();
        // Failed tries in a row so far, when this is a retry of the same text.
        let failures = self
            .entries
            .get(name)
            .filter(|e| e.digest == digest)
            .and_then(|e| e.retry)
            .map_or(0, |(_, n)| n);
        let spec: PipelineSpec = match parse_pipeline(&path, text, &resolver, MachineCheck::Check) {
            Ok(spec) => spec,
            Err(diags) => {
                let lines: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
                for line in &lines {
                    tracing::error!(pipeline = %name, "invalid pipeline file: {line}");
                }
                let entry = self.entries.entry(name.to_string()).or_insert(Entry {
                    digest,
                    running: None,
                    retry: None,
                });
                entry.digest = digest;
                if entry.running.is_some() {
                    tracing::warn!(pipeline = %name, "keeping the previous version running");
                    self.board_status(name)
                        .set_file_error(Some(lines.join("\n")));
                } else {
                    let delay = retry_delay(failures + 1);
                    entry.retry = Some((tokio::time::Instant::now() + delay, failures + 1));
                    tracing::warn!(pipeline = %name, retry_in = ?delay, "the pipeline is not running; its file is read again then, or as soon as it changes");
                    self.board_status(name)
                        .set(PipelineState::Failed(lines.join("; ")));
                }
                report.invalid.push((name.to_string(), lines));
                return;
            }
        };
        let previous = self.entries.remove(name).and_then(|e| e.running);
        let replacing = previous.is_some();
        // Requests to an ingest pipeline being replaced get 503 (retry), not 404.
        self.shared.ingest.begin_reload(name);
        if let Some(old) = previous {
            old.stop().await;
        }
        // Counters belong to the process, as Prometheus expects: a reload keeps the
        // pipeline's status and its counters; only what described the old version goes.
        let status = self.board_status(name);
        status.begin_version();
        let sinks: Vec<String> = spec.sinks.iter().map(|s| s.name.clone()).collect();
        let gone: Vec<String> = status
            .sinks()
            .into_iter()
            .filter(|sink| !sinks.contains(sink))
            .collect();
        self.shared.metrics.forget_sinks(name, &gone);
        status.set_sinks(sinks);
        let spec_disabled = spec.disabled || self.paused.contains(name);
        let running = if spec.disabled {
            status.set(PipelineState::Disabled);
            tracing::info!(pipeline = %name, "pipeline is disabled");
            None
        } else if self.paused.contains(name) {
            status.set(PipelineState::Paused);
            tracing::info!(pipeline = %name, "pipeline is paused (resume it through the admin API)");
            None
        } else {
            match start(&self.shared, spec, status.clone()).await {
                Ok(running) => {
                    status.set(if running.ingest_only {
                        PipelineState::IngestOnly
                    } else {
                        PipelineState::Running
                    });
                    tracing::info!(pipeline = %name, "pipeline {}", if replacing { "reloaded" } else { "started" });
                    if replacing {
                        report.replaced.push(name.to_string());
                    } else {
                        report.started.push(name.to_string());
                    }
                    Some(running)
                }
                Err(reason) => {
                    let delay = retry_delay(failures + 1);
                    tracing::error!(pipeline = %name, error = %reason, retry_in = ?delay, "pipeline failed to start; it is tried again then, or as soon as its file changes");
                    status.set(PipelineState::Failed(reason.clone()));
                    report.failed.push((name.to_string(), reason));
                    None
                }
            }
        };
        self.shared.ingest.end_reload(name);
        let retry = match (&running, spec_disabled) {
            (None, false) => Some((
                tokio::time::Instant::now() + retry_delay(failures + 1),
                failures + 1,
            )),
            _ => None,
        };
        self.entries.insert(
            name.to_string(),
            Entry {
                digest,
                running,
                retry,
            },
        );
    }

    /// Carries out an operator's command; `Ok` says what was done.
    pub async fn command(&mut self, command: Command) -> Result<String, (u16, String)> {
        let known = |name: &str| self.entries.contains_key(name);
        match command {
            Command::Pause(name) => {
                if !known(&name) {
                    return Err((404, format!("no pipeline named `{name}`")));
                }
                if self.paused.contains(&name) {
                    return Ok(format!("pipeline `{name}` was paused already"));
                }
                self.paused
                    .set(&name, true)
                    .map_err(|e| (500, format!("cannot record the pause: {e}")))?;
                if let Some(running) = self.entries.get_mut(&name).and_then(|e| e.running.take()) {
                    running.stop().await;
                }
                if let Some(entry) = self.entries.get_mut(&name) {
                    entry.retry = None;
                }
                self.board_status(&name).set(PipelineState::Paused);
                tracing::info!(pipeline = %name, "pipeline paused; its queues are kept");
                Ok(format!("pipeline `{name}` paused"))
            }
            Command::Resume(name) => {
                if !self.paused.contains(&name) {
                    return Err((409, format!("pipeline `{name}` is not paused")));
                }
                self.paused
                    .set(&name, false)
                    .map_err(|e| (500, format!("cannot record the resume: {e}")))?;
                // Read its file again, as it is now.
                if let Some(entry) = self.entries.get_mut(&name) {
                    entry.digest = 0;
                }
                self.reconcile().await;
                let state = self.board_get(&name).map(|s| s.state());
                tracing::info!(pipeline = %name, state = ?state, "pipeline resumed");
                match state {
                    Some(PipelineState::Running) => Ok(format!("pipeline `{name}` resumed")),
                    Some(PipelineState::Failed(why)) => Err((
                        409,
                        format!("pipeline `{name}` is resumed but failed to start: {why}"),
                    )),
                    other => Ok(format!("pipeline `{name}` resumed; it is {other:?}")),
                }
            }
            Command::RunNow(name) => {
                let Some(entry) = self.entries.get(&name) else {
                    return Err((404, format!("no pipeline named `{name}`")));
                };
                match &entry.running {
                    None => Err((409, format!("pipeline `{name}` is not running"))),
                    Some(running) if running.run_now() => {
                        Ok(format!("pipeline `{name}` polls its source now"))
                    }
                    Some(_) => Err((
                        409,
                        format!(
                            "pipeline `{name}` has no schedule: it is fed by POST /ingest/{name}"
                        ),
                    )),
                }
            }
        }
    }

    fn board_get(&self, name: &str) -> Option<Arc<PipelineStatus>> {
        self.board
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn board_status(&self, name: &str) -> Arc<PipelineStatus> {
        self.board
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_insert_with(PipelineStatus::new)
            .clone()
    }

    /// Starts every pipeline again from its file, as if each had changed: when this process
    /// took over delivery from another (a shared queue store), so that what ran ingest-only
    /// now runs whole.
    pub async fn restart_all(&mut self) -> ReconcileReport {
        for entry in self.entries.values_mut() {
            entry.digest = 0;
        }
        self.reconcile().await
    }

    /// Stops every pipeline at once (between messages) and waits for them until `deadline`;
    /// a plugin call still running then is abandoned and its message stays queued (see
    /// [`RunningPipeline::finish_stop`]).
    pub async fn stop_all(&mut self, deadline: tokio::time::Instant) {
        let running: Vec<(String, RunningPipeline)> = std::mem::take(&mut self.entries)
            .into_iter()
            .filter_map(|(name, entry)| entry.running.map(|r| (name, r)))
            .collect();
        for (_, pipeline) in &running {
            pipeline.begin_stop();
        }
        for (name, pipeline) in running {
            pipeline.finish_stop(deadline).await;
            if let Some(status) = self.board_get(&name) {
                status.set(PipelineState::Stopped);
            }
        }
    }
}

/// A digest of a file's text, to notice changes within one process.
fn text_digest(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::retry_delay;
    use std::time::Duration;

    #[test]
    fn failed_pipelines_are_retried_sooner_then_later() {
        let secs: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(300));
    }
}
