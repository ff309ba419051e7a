//! The `control` interface (contract 0.2.1): a plugin asks the server for status, open alerts,
//! acknowledgements and silences — a chat bot answering `!status db1` or `!silence …`.
//!
//! The runtime does not know the server: it checks the stage's grant
//! ([`tocsin_config::spec::ControlGrant`]) for the group and the actor, bounds the calls per
//! plugin call, writes every call to the access log (target `tocsin::access`, with the actor),
//! and hands what is let through to a [`ControlPlane`] the engine supplies in the
//! [`StageContext`](crate::StageContext). Without a grant, or without a plane (a dry run), every
//! call is `denied`.

use std::future::Future;
use std::pin::Pin;

use tocsin_config::spec::ControlGroup;
use tocsin_message::Severity;

use crate::bindings::wit_control as wit;
use crate::store::PluginState;

/// Control calls a plugin may make while handling one message; past it the call traps.
pub const MAX_CONTROL_CALLS_PER_CALL: u32 = 16;
/// Longest `who`, `request`, id or comment a plugin may pass.
pub const MAX_CONTROL_TEXT_BYTES: usize = 1024;

/// The latest value of one metric of a host.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The pipeline that measured it.
    pub pipeline: String,
    /// The metric.
    pub metric: String,
    /// Its latest value.
    pub value: f64,
    /// When, ms since the epoch.
    pub at_ms: u64,
}

/// An open alert as the interface shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertView {
    /// Its identity in its pipeline's register.
    pub id: String,
    /// Its pipeline.
    pub pipeline: String,
    /// Its latest summary.
    pub summary: Option<String>,
    /// Its latest severity.
    pub severity: Severity,
    /// Its latest labels.
    pub labels: Vec<(String, String)>,
    /// When it opened.
    pub since_ms: u64,
    /// Who acknowledged it, while that is in force.
    pub acknowledged_by: Option<String>,
}

/// One host's readings and open alerts.
#[derive(Debug, Clone, PartialEq)]
pub struct HostStatus {
    /// The `host` label.
    pub host: String,
    /// Latest readings.
    pub readings: Vec<Reading>,
    /// Open alerts.
    pub alerts: Vec<AlertView>,
}

/// A silence as the interface shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SilenceInfo {
    /// Its id.
    pub id: String,
    /// Its matchers as written.
    pub matchers: Vec<String>,
    /// When it begins.
    pub starts_at_ms: u64,
    /// When it ends.
    pub ends_at_ms: u64,
    /// Who made it.
    pub created_by: String,
    /// Why.
    pub comment: String,
}

/// Why a control call did nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Not granted, or not for this actor.
    #[error("denied: {0}")]
    Denied(String),
    /// A wrong argument.
    #[error("invalid: {0}")]
    Invalid(String),
    /// No such alert or silence.
    #[error("not found: {0}")]
    NotFound(String),
    /// The server could not do it now.
    #[error("failed: {0}")]
    Failed(String),
}

/// What a control call returns.
pub type ControlFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ControlError>> + Send + 'a>>;

/// The server side of `control`, supplied by the engine. Calls reach it only once the grant
/// let them through; `pipeline` is the calling stage's.
pub trait ControlPlane: Send + Sync {
    /// Readings and open alerts of `host`, or of every host.
    fn status(&self, host: Option<String>) -> ControlFuture<'_, Vec<HostStatus>>;
    /// Every open alert, oldest first.
    fn alerts(&self) -> ControlFuture<'_, Vec<AlertView>>;
    /// Acknowledges the open alert `alert` names (an id or a prefix naming one).
    fn acknowledge(
        &self,
        who: String,
        alert: String,
        comment: String,
        duration_ms: Option<u64>,
    ) -> ControlFuture<'_, AlertView>;
    /// The silences in force or pending.
    fn silences(&self) -> ControlFuture<'_, Vec<SilenceInfo>>;
    /// Makes a silence, once per (`pipeline`, `request`).
    fn silence(&self, request: SilenceRequest) -> ControlFuture<'_, SilenceInfo>;
    /// Ends a silence now; one already ended is returned as it is.
    fn unsilence(&self, id: String) -> ControlFuture<'_, SilenceInfo>;
}

/// A silence a plugin asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct SilenceRequest {
    /// The pipeline whose stage asks.
    pub pipeline: String,
    /// Names the request: the same one makes one silence.
    pub request: String,
    /// Who asked.
    pub who: String,
    /// Matchers as written.
    pub matchers: Vec<String>,
    /// How long from now.
    pub duration_ms: u64,
    /// Why.
    pub comment: String,
}

impl PluginState {
    /// Lets a call of `group` for `who` through, or says why not; logs either way.
    fn control_admit(
        &mut self,
        group: ControlGroup,
        action: &str,
        who: &str,
        texts: &[&str],
    ) -> wasmtime::Result<Result<std::sync::Arc<dyn ControlPlane>, ControlError>> {
        let h = &mut self.host;
        h.control_calls += 1;
        if h.control_calls > MAX_CONTROL_CALLS_PER_CALL {
            return Err(wasmtime::Error::new(crate::host_api::QuotaExceeded(
                format!("more than {MAX_CONTROL_CALLS_PER_CALL} control calls in one call"),
            )));
        }
        let admitted = if let Some(long) = texts
            .iter()
            .chain([&who])
            .find(|t| t.len() > MAX_CONTROL_TEXT_BYTES)
        {
            Err(ControlError::Invalid(format!(
                "an argument of {} bytes; the most is {MAX_CONTROL_TEXT_BYTES}",
                long.len()
            )))
        } else if who.trim().is_empty() {
            Err(ControlError::Invalid(
                "`who` is empty: name who asked".into(),
            ))
        } else {
            match h.control_grant.allows(group, who) {
                Err(why) => Err(ControlError::Denied(why)),
                Ok(()) => h.control.clone().ok_or_else(|| {
                    ControlError::Failed(
                        "a dry run has no server to ask; `tocsin run` answers this".into(),
                    )
                }),
            }
        };
        if let Err(e) = &admitted {
            self.control_done::<()>(action, who, "", &Err(e.clone()));
        }
        Ok(admitted)
    }

    /// Writes the access-log line of a call, let through or refused.
    fn control_done<T>(
        &self,
        action: &str,
        who: &str,
        detail: &str,
        outcome: &Result<T, ControlError>,
    ) {
        let h = &self.host;
        let who = h.text.clean(who);
        let detail = h.text.clean(detail);
        let outcome = match outcome {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        tracing::info!(
            target: "tocsin::access",
            pipeline = &*h.pipeline,
            stage = &*h.stage,
            actor = %who,
            action,
            detail = %detail,
            outcome = %outcome,
            "control call"
        );
    }
}

fn error_to_wit(e: ControlError) -> wit::ControlError {
    match e {
        ControlError::Denied(s) => wit::ControlError::Denied(s),
        ControlError::Invalid(s) => wit::ControlError::Invalid(s),
        ControlError::NotFound(s) => wit::ControlError::NotFound(s),
        ControlError::Failed(s) => wit::ControlError::Failed(s),
    }
}

fn alert_to_wit(a: AlertView) -> wit::OpenAlert {
    wit::OpenAlert {
        id: a.id,
        pipeline: a.pipeline,
        summary: a.summary,
        severity: crate::convert::severity_to_wit(a.severity),
        labels: a.labels,
        since_ms: a.since_ms,
        acknowledged_by: a.acknowledged_by,
    }
}

fn silence_to_wit(s: SilenceInfo) -> wit::SilenceInfo {
    wit::SilenceInfo {
        id: s.id,
        matchers: s.matchers,
        starts_at_ms: s.starts_at_ms,
        ends_at_ms: s.ends_at_ms,
        created_by: s.created_by,
        comment: s.comment,
    }
}

fn status_to_wit(s: HostStatus) -> wit::HostStatus {
    wit::HostStatus {
        host: s.host,
        readings: s
            .readings
            .into_iter()
            .map(|r| wit::Reading {
                pipeline: r.pipeline,
                metric: r.metric,
                value: r.value,
                at_ms: r.at_ms,
            })
            .collect(),
        alerts: s.alerts.into_iter().map(alert_to_wit).collect(),
    }
}

/// The result a guest sees.
type Answer<T> = wasmtime::Result<Result<T, wit::ControlError>>;

impl wit::Host for PluginState {
    async fn status(&mut self, who: String, host: Option<String>) -> Answer<Vec<wit::HostStatus>> {
        let detail = host.clone().unwrap_or_default();
        let plane = match self.control_admit(ControlGroup::Status, "status", &who, &[&detail])? {
            Ok(plane) => plane,
            Err(e) => return Ok(Err(error_to_wit(e))),
        };
        let out = plane.status(host).await;
        self.control_done("status", &who, &detail, &out);
        Ok(out
            .map(|v| v.into_iter().map(status_to_wit).collect())
            .map_err(error_to_wit))
    }

    async fn alerts(&mut self, who: String) -> Answer<Vec<wit::OpenAlert>> {
        let plane = match self.control_admit(ControlGroup::Status, "alerts", &who, &[])? {
            Ok(plane) => plane,
            Err(e) => return Ok(Err(error_to_wit(e))),
        };
        let out = plane.alerts().await;
        self.control_done("alerts", &who, "", &out);
        Ok(out
            .map(|v| v.into_iter().map(alert_to_wit).collect())
            .map_err(error_to_wit))
    }

    async fn acknowledge(
        &mut self,
        who: String,
        alert: String,
        comment: String,
        duration_ms: Option<u64>,
    ) -> Answer<wit::OpenAlert> {
        let plane = match self.control_admit(
            ControlGroup::Ack,
            "acknowledge",
            &who,
            &[&alert, &comment],
        )? {
            Ok(plane) => plane,
            Err(e) => return Ok(Err(error_to_wit(e))),
        };
        let out = plane
            .acknowledge(who.clone(), alert.clone(), comment, duration_ms)
            .await;
        self.control_done("acknowledge", &who, &alert, &out);
        Ok(out.map(alert_to_wit).map_err(error_to_wit))
    }

    async fn silences(&mut self, who: String) -> Answer<Vec<wit::SilenceInfo>> {
        let plane = match self.control_admit(ControlGroup::Silence, "silences", &who, &[])? {
            Ok(plane) => plane,
            Err(e) => return Ok(Err(error_to_wit(e))),
        };
        let out = plane.silences().await;
        self.control_done("silences", &who, "", &out);
        Ok(out
            .map(|v| v.into_iter().map(silence_to_wit).collect())
            .map_err(error_to_wit))
    }

    async fn silence(
        &mut self,
        who: String,
        request: String,
        matchers: Vec<String>,
        duration_ms: u64,
        comment: String,
    ) -> Answer<wit::SilenceInfo> {
        let joined = matchers.join(" ");
        let plane = match self.control_admit(
            ControlGroup::Silence,
            "silence",
            &who,
            &[&request, &comment, &joined],
        )? {
            Ok(plane) => plane,
            Err(e) => return Ok(Err(error_to_wit(e))),
        };
        if request.trim().is_empty() {
            let empty = ControlError::Invalid("`request` is empty: name the request".into());
            self.control_done::<()>("silence", &who, &joined, &Err(empty.clone()));
            return Ok(Err(error_to_wit(empty)));
        }
        let out = plane
            .silence(SilenceRequest {
                pipeline: self.host.pipeline.to_string(),
                request,
                who: who.clone(),
                matchers,
                duration_ms,
                comment,
            })
            .await;
        let detail = match &out {
            Ok(s) => format!("{joined} -> {}", s.id),
            Err(_) => joined,
        };
        self.control_done("silence", &who, &detail, &out);
        Ok(out.map(silence_to_wit).map_err(error_to_wit))
    }

    async fn unsilence(&mut self, who: String, id: String) -> Answer<wit::SilenceInfo> {
        let plane = match self.control_admit(ControlGroup::Silence, "unsilence", &who, &[&id])? {
            Ok(plane) => plane,
            Err(e) => return Ok(Err(error_to_wit(e))),
        };
        let out = plane.unsilence(id.clone()).await;
        self.control_done("unsilence", &who, &id, &out);
        Ok(out.map(silence_to_wit).map_err(error_to_wit))
    }
}
