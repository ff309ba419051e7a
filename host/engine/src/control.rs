//! The server's side of the `control` interface (contract 0.2.1): what a granted plugin — the
//! `run-commands` filter answering `!status db1` in a Matrix room — reads and changes.
//!
//! The runtime has checked the grant and the actor, and logs every call
//! (`tocsin_runtime::control`); this answers from the parts the admin API serves: the metric
//! history (latest readings by host), the open-alert registers (open alerts, acknowledgements)
//! and the silences.
//!
//! Open alerts are shown under a short id — 8 hex digits of a hash of pipeline and identity,
//! stable while the alert lives — that a person can type (`!ack 3fa2c1d0`, or a prefix naming
//! one). A silence made through `control` takes its id from the pipeline and the request that
//! asked for it, so a command read twice after a crash makes one silence.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tocsin_queue::{QueueError, QueueStore};
use tocsin_runtime::control::{
    AlertView, ControlError, ControlFuture, ControlPlane, HostStatus, Reading, SilenceInfo,
    SilenceRequest,
};

use crate::admin::silences::{alert_rows, AlertRow};
use crate::open_alerts::{self, AckError, NewAck};
use crate::silences::{NewSilence, Silence, SilenceError, SilenceState, Silences};

/// Digits of an alert's short id.
pub const ALERT_ID_DIGITS: usize = 8;
/// The fewest digits of a short id `acknowledge` takes.
pub const MIN_ALERT_PREFIX: usize = 4;

/// The control plane of a running server.
#[derive(Clone)]
pub struct EngineControl {
    /// The open-alert registers.
    pub queue: Arc<dyn QueueStore>,
    /// The metric history.
    pub history: Arc<crate::history::History>,
    /// The silences.
    pub silences: Arc<Silences>,
    /// The pipelines' register locks (an acknowledgement waits for its pipeline's).
    pub register_locks: open_alerts::Locks,
    /// The pipelines, whose history is read.
    pub board: crate::status::StatusBoard,
}

impl EngineControl {
    /// The plane over `shared`'s parts.
    pub fn of(shared: &crate::pipeline::Shared) -> EngineControl {
        EngineControl {
            queue: shared.queue.clone(),
            history: shared.history.clone(),
            silences: shared.silences.clone(),
            register_locks: shared.register_locks.clone(),
            board: shared.board.clone(),
        }
    }

    /// Every open alert of every pipeline, oldest first.
    async fn open_alerts(&self) -> Result<Vec<AlertRow>, ControlError> {
        let queue = self.queue.clone();
        let mut rows = blocking(move || alert_rows(queue.as_ref(), None)).await?;
        rows.retain(|r| r.alert.open);
        rows.sort_by(|a, b| {
            (a.alert.since_ms, &a.pipeline, &a.identity).cmp(&(
                b.alert.since_ms,
                &b.pipeline,
                &b.identity,
            ))
        });
        Ok(rows)
    }
}

/// The short id of an alert: the first [`ALERT_ID_DIGITS`] hex digits of
/// sha256(`pipeline` NUL `identity`).
pub fn alert_id(pipeline: &str, identity: &str) -> String {
    let digest = Sha256::new()
        .chain_update(pipeline)
        .chain_update([0])
        .chain_update(identity)
        .finalize();
    hex::encode(digest)[..ALERT_ID_DIGITS].to_string()
}

/// The id of the silence that `request` of `pipeline` makes: 16 hex digits, like the ids of
/// silences made otherwise.
pub fn silence_id(pipeline: &str, request: &str) -> String {
    let digest = Sha256::new()
        .chain_update("control")
        .chain_update([0])
        .chain_update(pipeline)
        .chain_update([0])
        .chain_update(request)
        .finalize();
    hex::encode(digest)[..16].to_string()
}

fn view(row: &AlertRow, now_ms: u64) -> AlertView {
    AlertView {
        id: alert_id(&row.pipeline, &row.identity),
        pipeline: row.pipeline.clone(),
        summary: row.alert.summary.clone(),
        severity: row.alert.severity,
        labels: row.alert.labels.clone(),
        since_ms: row.alert.since_ms,
        acknowledged_by: row
            .alert
            .ack
            .as_ref()
            .filter(|a| a.active(now_ms))
            .map(|a| a.by.clone()),
    }
}

fn silence_info(s: &Silence) -> SilenceInfo {
    SilenceInfo {
        id: s.id.clone(),
        matchers: s.matchers.iter().map(ToString::to_string).collect(),
        starts_at_ms: s.starts_at_ms,
        ends_at_ms: s.ends_at_ms,
        created_by: s.created_by.clone(),
        comment: s.comment.clone(),
    }
}

fn store_failed(e: QueueError) -> ControlError {
    match e {
        QueueError::NotDelivering { .. } => ControlError::Failed(format!(
            "{e}: ask again once this node delivers, or ask the node that does"
        )),
        e => ControlError::Failed(format!("the store failed: {e}")),
    }
}

fn silence_error(e: SilenceError) -> ControlError {
    match e {
        SilenceError::Invalid(why) => ControlError::Invalid(why),
        SilenceError::NotFound(id) => ControlError::NotFound(format!("no silence {id}")),
        SilenceError::Store(e) => store_failed(e),
    }
}

async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, ControlError> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(store_failed),
        Err(e) => Err(ControlError::Failed(e.to_string())),
    }
}

impl ControlPlane for EngineControl {
    fn status(&self, host: Option<String>) -> ControlFuture<'_, Vec<HostStatus>> {
        Box::pin(async move {
            let now = tocsin_queue::now_ms();
            let pipelines: Vec<String> = crate::status::board_snapshot(&self.board)
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            let history = self.history.clone();
            let series = blocking(move || {
                history.flush();
                let mut all = Vec::new();
                for pipeline in pipelines {
                    for s in history.series(&pipeline)? {
                        all.push((pipeline.clone(), s));
                    }
                }
                Ok(all)
            })
            .await?;
            let alerts = self.open_alerts().await?;
            let mut hosts: std::collections::BTreeMap<String, HostStatus> = Default::default();
            for (pipeline, s) in series {
                if s.host.is_empty() || host.as_ref().is_some_and(|h| *h != s.host) {
                    continue;
                }
                hosts
                    .entry(s.host.clone())
                    .or_insert_with(|| empty_status(&s.host))
                    .readings
                    .push(Reading {
                        pipeline,
                        metric: s.metric,
                        value: s.last_value,
                        at_ms: s.last_at_ms,
                    });
            }
            for row in &alerts {
                let Some((_, name)) = row.alert.labels.iter().find(|(k, _)| k == "host") else {
                    continue;
                };
                if host.as_ref().is_some_and(|h| h != name) {
                    continue;
                }
                hosts
                    .entry(name.clone())
                    .or_insert_with(|| empty_status(name))
                    .alerts
                    .push(view(row, now));
            }
            for status in hosts.values_mut() {
                status
                    .readings
                    .sort_by(|a, b| (&a.metric, &a.pipeline).cmp(&(&b.metric, &b.pipeline)));
            }
            Ok(hosts.into_values().collect())
        })
    }

    fn alerts(&self) -> ControlFuture<'_, Vec<AlertView>> {
        Box::pin(async move {
            let now = tocsin_queue::now_ms();
            Ok(self
                .open_alerts()
                .await?
                .iter()
                .map(|row| view(row, now))
                .collect())
        })
    }

    fn acknowledge(
        &self,
        who: String,
        alert: String,
        comment: String,
        duration_ms: Option<u64>,
    ) -> ControlFuture<'_, AlertView> {
        Box::pin(async move {
            let wanted = alert.trim().to_ascii_lowercase();
            if wanted.len() < MIN_ALERT_PREFIX {
                return Err(ControlError::Invalid(format!(
                    "`{alert}`: give at least {MIN_ALERT_PREFIX} digits of the alert's id"
                )));
            }
            let open = self.open_alerts().await?;
            let named: Vec<&AlertRow> = open
                .iter()
                .filter(|r| alert_id(&r.pipeline, &r.identity).starts_with(&wanted))
                .collect();
            let row = match named.as_slice() {
                [one] => *one,
                [] => {
                    return Err(ControlError::NotFound(format!(
                        "no open alert has id `{alert}`"
                    )))
                }
                many => {
                    return Err(ControlError::Invalid(format!(
                        "`{alert}` begins the ids of {} open alerts: give more of it",
                        many.len()
                    )))
                }
            };
            let new = NewAck {
                pipeline: row.pipeline.clone(),
                alert: row.identity.clone(),
                comment,
                duration: duration_ms.map(|ms| format!("{ms}ms")),
                by: Some(who.clone()),
            };
            let now = tocsin_queue::now_ms();
            let (identity, acked) = open_alerts::acknowledge(
                self.queue.as_ref(),
                &self.register_locks,
                &new,
                &who,
                now,
            )
            .await
            .map_err(|e| match e {
                AckError::Invalid(why) => ControlError::Invalid(why),
                AckError::NotFound(why) => ControlError::NotFound(why),
                AckError::Store(e) => store_failed(e),
            })?;
            Ok(view(
                &AlertRow {
                    pipeline: row.pipeline.clone(),
                    identity,
                    alert: acked,
                },
                now,
            ))
        })
    }

    fn silences(&self) -> ControlFuture<'_, Vec<SilenceInfo>> {
        Box::pin(async move {
            let now = tocsin_queue::now_ms();
            Ok(self
                .silences
                .snapshot()
                .all()
                .iter()
                .filter(|s| s.state(now) != SilenceState::Expired)
                .map(silence_info)
                .collect())
        })
    }

    fn silence(&self, request: SilenceRequest) -> ControlFuture<'_, SilenceInfo> {
        Box::pin(async move {
            if request.duration_ms == 0 {
                return Err(ControlError::Invalid(
                    "a silence needs a duration, e.g. 2h".into(),
                ));
            }
            let now = tocsin_queue::now_ms();
            let new = NewSilence {
                matchers: request.matchers.clone(),
                ends_at_ms: Some(now.saturating_add(request.duration_ms)),
                comment: request.comment.clone(),
                created_by: Some(request.who.clone()),
                ..NewSilence::default()
            };
            let id = silence_id(&request.pipeline, &request.request);
            self.silences
                .add_once(&id, &new, &request.who)
                .await
                .map(|s| silence_info(&s))
                .map_err(silence_error)
        })
    }

    fn unsilence(&self, id: String) -> ControlFuture<'_, SilenceInfo> {
        Box::pin(async move {
            let now = tocsin_queue::now_ms();
            let wanted = id.trim().to_ascii_lowercase();
            // Ending one that has ended already answers with it: the command may be read again
            // after a crash, and its answer should not turn into an error.
            let snapshot = self.silences.snapshot();
            let named: Vec<&Silence> = snapshot
                .all()
                .iter()
                .filter(|s| !wanted.is_empty() && s.id.starts_with(&wanted))
                .collect();
            if let [one] = named.as_slice() {
                if one.state(now) == SilenceState::Expired {
                    return Ok(silence_info(one));
                }
            }
            self.silences
                .expire(&wanted)
                .await
                .map(|s| silence_info(&s))
                .map_err(silence_error)
        })
    }
}

fn empty_status(host: &str) -> HostStatus {
    HostStatus {
        host: host.to_string(),
        readings: Vec::new(),
        alerts: Vec::new(),
    }
}
