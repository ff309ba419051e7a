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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::open_alerts::OpenAlert;
    use tocsin_message::Severity;
    use tocsin_queue::StateWrite;

    struct Fixture {
        _dir: tempfile::TempDir,
        control: EngineControl,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let queue: Arc<dyn QueueStore> = tocsin_queue::SledStore::open(dir.path()).unwrap();
        let board = crate::status::StatusBoard::default();
        board
            .lock()
            .unwrap()
            .insert("hosts".to_string(), crate::status::PipelineStatus::new());
        Fixture {
            control: EngineControl {
                history: crate::history::History::new(queue.clone()),
                silences: Silences::load(queue.clone()).unwrap(),
                register_locks: open_alerts::Locks::default(),
                board,
                queue,
            },
            _dir: dir,
        }
    }

    /// Writes an open alert of `host` into `pipeline`'s register.
    async fn open_alert(control: &EngineControl, pipeline: &str, identity: &str, host: &str) {
        let alert = OpenAlert {
            open: true,
            since_ms: 1_000,
            seen_ms: 1_000,
            summary: Some(format!("DiskFull on {host}")),
            severity: Severity::Error,
            labels: vec![("host".into(), host.into())],
            handed: Default::default(),
            held: Default::default(),
            ack: None,
        };
        let write = StateWrite {
            stage: open_alerts::STAGE.to_string(),
            key: identity.to_string(),
            value: Some(serde_json::to_vec(&alert).unwrap()),
        };
        control.queue.put_state(pipeline, &[write]).await.unwrap();
    }

    fn request(request: &str) -> SilenceRequest {
        SilenceRequest {
            pipeline: "chat".into(),
            request: request.into(),
            who: "@alice:example.org".into(),
            matchers: vec!["host=db1".into()],
            duration_ms: 3_600_000,
            comment: "kernel upgrade".into(),
        }
    }

    #[tokio::test]
    async fn one_request_makes_one_silence_however_often_it_is_handled() {
        let fx = fixture();
        let first = fx.control.silence(request("$event1")).await.unwrap();
        let again = fx.control.silence(request("$event1")).await.unwrap();
        assert_eq!(first, again);
        assert_eq!(first.id, silence_id("chat", "$event1"));
        assert_eq!(first.created_by, "@alice:example.org");
        assert_eq!(fx.control.silences().await.unwrap().len(), 1);
        let other = fx.control.silence(request("$event2")).await.unwrap();
        assert_ne!(other.id, first.id);
        assert_eq!(fx.control.silences().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn ending_a_silence_twice_answers_with_it_and_a_bad_one_is_invalid() {
        let fx = fixture();
        let made = fx.control.silence(request("$event1")).await.unwrap();
        let ended = fx
            .control
            .unsilence(made.id[..6].to_string())
            .await
            .unwrap();
        assert_eq!(ended.id, made.id);
        assert!(ended.ends_at_ms <= tocsin_queue::now_ms());
        let again = fx.control.unsilence(made.id.clone()).await.unwrap();
        assert_eq!(again, ended);
        assert!(fx.control.silences().await.unwrap().is_empty());
        assert!(matches!(
            fx.control.unsilence("ffffffff".into()).await,
            Err(ControlError::NotFound(_))
        ));
        let mut wrong = request("$event3");
        wrong.matchers = vec!["host".into()];
        assert!(matches!(
            fx.control.silence(wrong).await,
            Err(ControlError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn alerts_are_acknowledged_by_a_prefix_of_their_short_id() {
        let fx = fixture();
        open_alert(&fx.control, "hosts", "k:DiskFull/db1", "db1").await;
        open_alert(&fx.control, "hosts", "k:DiskFull/db2", "db2").await;
        let alerts = fx.control.alerts().await.unwrap();
        assert_eq!(alerts.len(), 2);
        let db1 = alerts.iter().find(|a| a.labels[0].1 == "db1").unwrap();
        assert_eq!(db1.id, alert_id("hosts", "k:DiskFull/db1"));
        assert_eq!(db1.id.len(), ALERT_ID_DIGITS);

        let acked = fx
            .control
            .acknowledge(
                "@alice:example.org".into(),
                db1.id[..5].into(),
                "on it".into(),
                None,
            )
            .await
            .unwrap();
        assert_eq!(acked.id, db1.id);
        assert_eq!(acked.acknowledged_by.as_deref(), Some("@alice:example.org"));
        let listed = fx.control.alerts().await.unwrap();
        let db1 = listed.iter().find(|a| a.id == acked.id).unwrap();
        assert_eq!(db1.acknowledged_by.as_deref(), Some("@alice:example.org"));

        for (wanted, short) in [("ab", true), ("00000000", false)] {
            let out = fx
                .control
                .acknowledge("@alice:example.org".into(), wanted.into(), "x".into(), None)
                .await;
            match short {
                true => assert!(matches!(out, Err(ControlError::Invalid(_))), "{out:?}"),
                false => assert!(matches!(out, Err(ControlError::NotFound(_))), "{out:?}"),
            }
        }
    }

    #[tokio::test]
    async fn status_of_a_host_has_its_latest_readings_and_its_open_alerts_only() {
        let fx = fixture();
        open_alert(&fx.control, "hosts", "k:DiskFull/db1", "db1").await;
        open_alert(&fx.control, "hosts", "k:DiskFull/db2", "db2").await;
        let reading = |host: &str, value: f64, at: u64| tocsin_message::Message {
            id: format!("{host}-{at}"),
            timestamp_ms: at,
            severity: Severity::Info,
            summary: None,
            body: String::new(),
            labels: vec![("host".into(), host.into())],
            metrics: vec![("disk-used-percent".into(), value)],
            payload: None,
            link: None,
            key: None,
        };
        let now = tocsin_queue::now_ms();
        fx.control.history.record(
            "hosts",
            &[
                reading("db1", 80.0, now - 2_000),
                reading("db1", 93.5, now - 1_000),
                reading("db2", 10.0, now),
            ],
        );
        let db1 = fx.control.status(Some("db1".into())).await.unwrap();
        assert_eq!(db1.len(), 1);
        assert_eq!(db1[0].host, "db1");
        assert_eq!(db1[0].readings.len(), 1);
        assert_eq!(db1[0].readings[0].metric, "disk-used-percent");
        assert_eq!(db1[0].readings[0].value, 93.5);
        assert_eq!(db1[0].readings[0].pipeline, "hosts");
        assert_eq!(db1[0].alerts.len(), 1);
        assert_eq!(db1[0].alerts[0].summary.as_deref(), Some("DiskFull on db1"));

        let all = fx.control.status(None).await.unwrap();
        let hosts: Vec<&str> = all.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(hosts, ["db1", "db2"]);
        assert!(fx
            .control
            .status(Some("db9".into()))
            .await
            .unwrap()
            .is_empty());
    }
}
