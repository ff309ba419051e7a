//! Silences: "do not tell anyone about `host=db1` until 14:00" — label matchers, a start, an
//! end, who and why, and optionally the sinks they cover.
//!
//! Silences belong to the server, not to a pipeline: one silence mutes its matching messages
//! in every pipeline (a silence may name sinks, as `matrix` — that sink of every pipeline — or
//! `alerts/matrix`). They are kept in the store's server tree, one record per silence
//! (`silence/<id>`, JSON), and held in memory as a [`SilenceSet`] that the filter workers read
//! at each hand-over through a `watch` channel: adding or expiring one reaches every pipeline
//! at once, with no lock on the hot path.
//!
//! A silence is applied when a message is handed to the sink queues (see `filtering.rs`): a
//! muted message is not queued for the sinks the silence covers, is counted
//! (`tocsin_stage_events{event="silenced"}`) and shows in the message trace. What happens at
//! the end of a silence to the alerts it muted is the open-alert register's business
//! (`open_alerts.rs`).
//!
//! Expired silences are listed for [`EXPIRED_KEPT`], then deleted.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use tocsin_config::maintenance::MaintenanceWindow;
use tocsin_config::matchers::{picks_everything, Matcher};
use tocsin_message::Message;
use tocsin_queue::{now_ms, QueueStore};

/// Key prefix of silence records in the server tree.
const RECORD_PREFIX: &str = "silence/";

/// How long an expired silence is still listed.
pub const EXPIRED_KEPT: Duration = Duration::from_secs(5 * 24 * 3600);

/// The most silences kept at once (expired ones included).
pub const MAX_SILENCES: usize = 10_000;

/// The longest comment or author, in bytes.
const MAX_TEXT_BYTES: usize = 2048;

/// One silence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    /// Its id: 16 hex digits.
    pub id: String,
    /// Every one must pick a message for the silence to mute it.
    pub matchers: Vec<Matcher>,
    /// When it begins, ms since the epoch.
    pub starts_at_ms: u64,
    /// When it ends, ms since the epoch (set to the time it was expired by hand).
    pub ends_at_ms: u64,
    /// Who made it (the API token's name unless given).
    pub created_by: String,
    /// Why.
    pub comment: String,
    /// The sinks it covers: `name` (that sink of every pipeline) or `pipeline/name`; empty
    /// for every sink.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<String>,
    /// When it was made.
    pub created_at_ms: u64,
}

/// Where a silence stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SilenceState {
    /// It has not begun.
    Pending,
    /// It mutes.
    Active,
    /// It has ended.
    Expired,
}

impl SilenceState {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SilenceState::Pending => "pending",
            SilenceState::Active => "active",
            SilenceState::Expired => "expired",
        }
    }
}

impl Silence {
    /// Where it stands at `now_ms`.
    pub fn state(&self, now_ms: u64) -> SilenceState {
        if now_ms < self.starts_at_ms {
            SilenceState::Pending
        } else if now_ms < self.ends_at_ms {
            SilenceState::Active
        } else {
            SilenceState::Expired
        }
    }

    /// Whether it covers `sink` of `pipeline`.
    pub fn covers_sink(&self, pipeline: &str, sink: &str) -> bool {
        self.sinks.is_empty()
            || self.sinks.iter().any(|s| match s.split_once('/') {
                Some((p, name)) => p == pipeline && name == sink,
                None => s == sink,
            })
    }

    /// Whether it mutes `message` on its way to `sink` of `pipeline` at `now_ms`.
    pub fn mutes(&self, pipeline: &str, sink: &str, message: &Message, now_ms: u64) -> bool {
        self.state(now_ms) == SilenceState::Active
            && self.covers_sink(pipeline, sink)
            && self.matchers.iter().all(|m| m.matches(message))
    }
}

/// The silences in force or to come, as the filter workers read them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SilenceSet {
    /// Every silence kept, expired ones included, by id.
    silences: Vec<Silence>,
}

impl SilenceSet {
    /// A set of these silences.
    pub fn new(mut silences: Vec<Silence>) -> SilenceSet {
        silences.sort_by(|a, b| a.id.cmp(&b.id));
        SilenceSet { silences }
    }

    /// Every silence, by id.
    pub fn all(&self) -> &[Silence] {
        &self.silences
    }

    /// The first silence that mutes `message` on its way to `sink` of `pipeline` now, if any.
    pub fn muting(
        &self,
        pipeline: &str,
        sink: &str,
        message: &Message,
        now_ms: u64,
    ) -> Option<&Silence> {
        self.silences
            .iter()
            .find(|s| s.mutes(pipeline, sink, message, now_ms))
    }

    /// Whether a silence ended in `(from_ms, to_ms]`.
    pub fn ended_between(&self, from_ms: u64, to_ms: u64) -> bool {
        self.silences
            .iter()
            .any(|s| s.ends_at_ms > from_ms && s.ends_at_ms <= to_ms)
    }

    /// The next time after `now_ms` a silence begins or ends.
    pub fn next_change_after(&self, now_ms: u64) -> Option<u64> {
        self.silences
            .iter()
            .flat_map(|s| [s.starts_at_ms, s.ends_at_ms])
            .filter(|t| *t > now_ms)
            .min()
    }
}

/// What mutes at one instant: the silences active then and a pipeline's maintenance windows
/// open then, found once for a whole hand-over (or release) rather than per message.
pub struct Muting<'a> {
    silences: Vec<&'a Silence>,
    windows: Vec<&'a MaintenanceWindow>,
}

impl<'a> Muting<'a> {
    /// What of `set` and `windows` mutes at `now_ms`.
    pub fn at(set: &'a SilenceSet, windows: &'a [MaintenanceWindow], now_ms: u64) -> Self {
        Muting {
            silences: set
                .silences
                .iter()
                .filter(|s| s.state(now_ms) == SilenceState::Active)
                .collect(),
            windows: windows.iter().filter(|w| w.open_at(now_ms)).collect(),
        }
    }

    /// Whether nothing mutes (every check can be skipped).
    pub fn is_empty(&self) -> bool {
        self.silences.is_empty() && self.windows.is_empty()
    }

    /// The id of what mutes `message` on its way to `sink` of `pipeline`: a silence's, else
    /// `maintenance:NAME`.
    pub fn muted_by(&self, pipeline: &str, sink: &str, message: &Message) -> Option<String> {
        self.silences
            .iter()
            .find(|s| {
                s.covers_sink(pipeline, sink) && s.matchers.iter().all(|m| m.matches(message))
            })
            .map(|s| s.id.clone())
            .or_else(|| {
                self.windows
                    .iter()
                    .find(|w| w.covers(sink, message))
                    .map(|w| w.id())
            })
    }
}

/// A silence as asked for (the API's request body; the CLI sends the same).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    /// Matchers as written: `host=db1`, `alertname=~"Disk.*"`.
    pub matchers: Vec<String>,
    /// When it begins, ms since the epoch [default: now].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at_ms: Option<u64>,
    /// When it ends, ms since the epoch; or give `duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at_ms: Option<u64>,
    /// How long from its start, e.g. `2h`, `90m`; or give `ends_at_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Why: required.
    pub comment: String,
    /// Who [default: the API token's name].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// The sinks it covers (`name` or `pipeline/name`) [default: every sink].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<String>,
}

/// Why a silence could not be made or expired.
#[derive(Debug, thiserror::Error)]
pub enum SilenceError {
    /// The request is wrong; the text says how.
    #[error("{0}")]
    Invalid(String),
    /// No silence has that id.
    #[error("no silence {0}")]
    NotFound(String),
    /// The store failed.
    #[error("the store failed: {0}")]
    Store(#[from] tocsin_queue::QueueError),
}

impl NewSilence {
    /// The silence this asks for, made by `author` (unless it names its own) at `now_ms`, or
    /// what is wrong with it.
    pub fn build(&self, author: &str, now_ms: u64) -> Result<Silence, SilenceError> {
        let invalid = |why: String| SilenceError::Invalid(why);
        if self.matchers.is_empty() {
            return Err(invalid(
                "a silence needs at least one matcher, e.g. host=db1".into(),
            ));
        }
        let matchers = self
            .matchers
            .iter()
            .map(|m| Matcher::parse(m).map_err(|e| invalid(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        if picks_everything(&matchers) {
            return Err(invalid(
                "these matchers would mute every message (each matches a missing label): add \
                 one that needs a value, e.g. host=db1"
                    .into(),
            ));
        }
        // A start in the past is kept as given: it mutes from now on either way.
        let starts_at_ms = self.starts_at_ms.unwrap_or(now_ms);
        let ends_at_ms = match (&self.duration, self.ends_at_ms) {
            (Some(_), Some(_)) => {
                return Err(invalid("give duration or ends_at_ms, not both".into()))
            }
            (None, None) => {
                return Err(invalid(
                    "a silence needs an end: duration (e.g. 2h) or ends_at_ms".into(),
                ))
            }
            (None, Some(end)) => end,
            (Some(text), None) => {
                let d = tocsin_config::units::parse_duration(text)
                    .map_err(|e| invalid(format!("duration: {e}")))?;
                starts_at_ms.saturating_add(d.as_millis() as u64)
            }
        };
        if ends_at_ms <= starts_at_ms {
            return Err(invalid("the silence ends before it begins".into()));
        }
        if ends_at_ms <= now_ms {
            return Err(invalid("the silence would end in the past".into()));
        }
        let comment = self.comment.trim().to_string();
        if comment.is_empty() {
            return Err(invalid(
                "a silence needs a comment: why it is there (a ticket, \"kernel upgrade\")".into(),
            ));
        }
        let created_by = self
            .created_by
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .unwrap_or(author)
            .to_string();
        if comment.len() > MAX_TEXT_BYTES || created_by.len() > MAX_TEXT_BYTES {
            return Err(invalid(format!(
                "the comment and the author may hold at most {MAX_TEXT_BYTES} bytes"
            )));
        }
        for sink in &self.sinks {
            let names: Vec<&str> = sink.split('/').collect();
            if names.len() > 2 || names.iter().any(|n| n.is_empty()) {
                return Err(invalid(format!(
                    "sink {sink:?}: write a sink's name, or pipeline/name"
                )));
            }
        }
        Ok(Silence {
            id: new_id(),
            matchers,
            starts_at_ms,
            ends_at_ms,
            created_by,
            comment,
            sinks: self.sinks.clone(),
            created_at_ms: now_ms,
        })
    }
}

/// 16 hex digits from the thread's random generator.
fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The server's silences: kept in the store, published to the pipelines.
pub struct Silences {
    store: Arc<dyn QueueStore>,
    current: watch::Sender<Arc<SilenceSet>>,
    /// One change at a time (read, write the record, publish).
    changing: tokio::sync::Mutex<()>,
}

impl Silences {
    /// Reads the silences kept in `store`, deleting those expired for longer than
    /// [`EXPIRED_KEPT`].
    pub fn load(store: Arc<dyn QueueStore>) -> tocsin_queue::Result<Arc<Silences>> {
        let kept = Self::read(store.as_ref())?;
        let (current, _) = watch::channel(Arc::new(SilenceSet::new(kept)));
        Ok(Arc::new(Silences {
            store,
            current,
            changing: tokio::sync::Mutex::new(()),
        }))
    }

    /// Reads the silences again and publishes them: when this process took over delivery
    /// from another (a shared store), whose operators may have changed them meanwhile.
    pub async fn reload(&self) -> tocsin_queue::Result<()> {
        let _one = self.changing.lock().await;
        let kept = Self::read(self.store.as_ref())?;
        self.current.send_replace(Arc::new(SilenceSet::new(kept)));
        Ok(())
    }

    fn read(store: &dyn QueueStore) -> tocsin_queue::Result<Vec<Silence>> {
        let now = now_ms();
        let mut kept = Vec::new();
        for (key, value) in store.server_state_scan(RECORD_PREFIX)? {
            match serde_json::from_slice::<Silence>(&value) {
                Ok(s) if s.ends_at_ms + (EXPIRED_KEPT.as_millis() as u64) < now => {
                    // Durable with the next commit; kept if it is lost, and deleted again.
                    drop(store.server_state_put(&key, None));
                }
                Ok(s) => kept.push(s),
                Err(e) => {
                    tracing::warn!(record = %key, error = %e, "skipping an unreadable silence")
                }
            }
        }
        Ok(kept)
    }

    /// The silences now.
    pub fn snapshot(&self) -> Arc<SilenceSet> {
        self.current.borrow().clone()
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<SilenceSet>> {
        self.current.subscribe()
    }

    /// Makes the silence `new` asks for, durably, and publishes it.
    pub async fn add(&self, new: &NewSilence, author: &str) -> Result<Silence, SilenceError> {
        self.add_as(None, new, author).await
    }

    /// Makes the silence `new` asks for under the id `id`, or returns the silence of that id
    /// when there is one: a request that names itself (a chat command read again after a
    /// crash) makes one silence, however often it is made.
    pub async fn add_once(
        &self,
        id: &str,
        new: &NewSilence,
        author: &str,
    ) -> Result<Silence, SilenceError> {
        self.add_as(Some(id), new, author).await
    }

    async fn add_as(
        &self,
        id: Option<&str>,
        new: &NewSilence,
        author: &str,
    ) -> Result<Silence, SilenceError> {
        let _one = self.changing.lock().await;
        if let Some(made) =
            id.and_then(|id| self.snapshot().all().iter().find(|s| s.id == id).cloned())
        {
            return Ok(made);
        }
        let now = now_ms();
        let mut silence = new.build(author, now)?;
        if let Some(id) = id {
            silence.id = id.to_string();
        }
        let mut all = self.snapshot().all().to_vec();
        if all.len() >= MAX_SILENCES {
            return Err(SilenceError::Invalid(format!(
                "{MAX_SILENCES} silences are kept already: expire some first"
            )));
        }
        self.write(&silence).await?;
        all.push(silence.clone());
        self.current.send_replace(Arc::new(SilenceSet::new(all)));
        tracing::info!(silence = %silence.id, matchers = %matchers_text(&silence.matchers), by = %silence.created_by, "silence added");
        Ok(silence)
    }

    /// Ends silence `id` now (a pending one never begins), durably, and publishes it. An id
    /// may be shortened to a prefix that names one silence.
    pub async fn expire(&self, id: &str) -> Result<Silence, SilenceError> {
        let _one = self.changing.lock().await;
        let now = now_ms();
        let mut all = self.snapshot().all().to_vec();
        let found: Vec<usize> = (0..all.len())
            .filter(|i| all[*i].id.starts_with(id) && !id.is_empty())
            .collect();
        let i = match found.as_slice() {
            [i] => *i,
            [] => return Err(SilenceError::NotFound(id.to_string())),
            _ => {
                return Err(SilenceError::Invalid(format!(
                    "{id:?} begins {} silences' ids: give more of it",
                    found.len()
                )))
            }
        };
        if all[i].state(now) == SilenceState::Expired {
            return Err(SilenceError::Invalid(format!(
                "silence {} has expired already",
                all[i].id
            )));
        }
        all[i].ends_at_ms = now;
        all[i].starts_at_ms = all[i].starts_at_ms.min(now);
        let silence = all[i].clone();
        self.write(&silence).await?;
        self.current.send_replace(Arc::new(SilenceSet::new(all)));
        tracing::info!(silence = %silence.id, "silence expired");
        Ok(silence)
    }

    async fn write(&self, silence: &Silence) -> Result<(), SilenceError> {
        let bytes = serde_json::to_vec(silence)
            .map_err(|e| SilenceError::Invalid(format!("cannot encode the silence: {e}")))?;
        self.store
            .server_state_put(&format!("{RECORD_PREFIX}{}", silence.id), Some(&bytes))
            .await?;
        Ok(())
    }
}

/// Matchers as written, separated by spaces: `host=db1 alertname=~"Disk.*"`.
pub fn matchers_text(matchers: &[Matcher]) -> String {
    matchers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `2026-12-06 14:00:00 UTC`.
pub fn format_time_ms(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX)).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// A silence as the CLI and the API list it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SilenceView {
    /// The silence.
    #[serde(flatten)]
    pub silence: Silence,
    /// `pending`, `active` or `expired`, when it was listed.
    pub state: String,
}

impl SilenceView {
    /// `silence` as it stands at `now_ms`.
    pub fn at(silence: &Silence, now_ms: u64) -> SilenceView {
        SilenceView {
            silence: silence.clone(),
            state: silence.state(now_ms).as_str().to_string(),
        }
    }
}

/// The silences of `set` as a table: id, state, until, matchers, sinks, by, comment; expired
/// ones only with `all`.
pub fn format_silences(views: &[SilenceView], all: bool) -> String {
    use std::fmt::Write;
    let shown: Vec<&SilenceView> = views
        .iter()
        .filter(|v| all || v.state != SilenceState::Expired.as_str())
        .collect();
    if shown.is_empty() {
        return if all {
            "no silences\n".to_string()
        } else {
            "no silences in force or to come (--all lists expired ones too)\n".to_string()
        };
    }
    let mut out = String::new();
    for v in shown {
        let s = &v.silence;
        let _ = writeln!(
            out,
            "{}  {:<7}  {} → {}  {}{}\n    by {}: {}",
            s.id,
            v.state,
            format_time_ms(s.starts_at_ms),
            format_time_ms(s.ends_at_ms),
            matchers_text(&s.matchers),
            if s.sinks.is_empty() {
                String::new()
            } else {
                format!("  (sinks: {})", s.sinks.join(", "))
            },
            s.created_by,
            s.comment,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_message::Severity;

    fn message(labels: &[(&str, &str)]) -> Message {
        Message::with_labels("m", Severity::Error, labels)
    }

    fn new(matchers: &[&str]) -> NewSilence {
        NewSilence {
            matchers: matchers.iter().map(|m| m.to_string()).collect(),
            duration: Some("2h".into()),
            comment: "kernel upgrade".into(),
            ..NewSilence::default()
        }
    }

    #[test]
    fn a_silence_mutes_matching_messages_while_active_on_the_sinks_it_names() {
        let mut ask = new(&["host=db1"]);
        ask.sinks = vec!["matrix".into(), "alerts/file".into()];
        let s = ask.build("ops", 1_000).unwrap();
        assert_eq!(s.ends_at_ms, 1_000 + 2 * 3600 * 1000);
        assert_eq!(s.created_by, "ops");
        let db1 = message(&[("host", "db1")]);
        assert!(s.mutes("alerts", "matrix", &db1, 2_000));
        assert!(s.mutes("other", "matrix", &db1, 2_000));
        assert!(s.mutes("alerts", "file", &db1, 2_000));
        assert!(
            !s.mutes("other", "file", &db1, 2_000),
            "file only of alerts"
        );
        assert!(!s.mutes("alerts", "mastodon", &db1, 2_000));
        assert!(!s.mutes("alerts", "matrix", &message(&[("host", "db2")]), 2_000));
        assert!(!s.mutes("alerts", "matrix", &db1, s.ends_at_ms), "expired");
        assert!(!s.mutes("alerts", "matrix", &db1, 999), "not begun");
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let why = |ask: NewSilence| ask.build("ops", 10_000).unwrap_err().to_string();
        assert!(why(new(&[])).contains("at least one matcher"));
        assert!(why(new(&["host=~\".*\""])).contains("every message"));
        assert!(why(new(&["host"])).contains("no operator"));
        let mut no_comment = new(&["host=db1"]);
        no_comment.comment = "  ".into();
        assert!(why(no_comment).contains("comment"));
        let mut no_end = new(&["host=db1"]);
        no_end.duration = None;
        assert!(why(no_end).contains("needs an end"));
        let mut past = new(&["host=db1"]);
        past.duration = None;
        past.starts_at_ms = Some(1_000);
        past.ends_at_ms = Some(5_000);
        assert!(why(past).contains("past"));
        let mut bad_duration = new(&["host=db1"]);
        bad_duration.duration = Some("soon".into());
        assert!(why(bad_duration).contains("duration"));
        let mut bad_sink = new(&["host=db1"]);
        bad_sink.sinks = vec!["a/b/c".into()];
        assert!(why(bad_sink).contains("pipeline/name"));
    }

    #[test]
    fn the_set_finds_the_muting_silence_and_its_next_change() {
        let a = new(&["host=db1"]).build("ops", 1_000).unwrap();
        let mut later = new(&["host=db2"]);
        later.starts_at_ms = Some(5_000);
        let b = later.build("ops", 1_000).unwrap();
        let set = SilenceSet::new(vec![a.clone(), b.clone()]);
        assert_eq!(
            set.muting("p", "s", &message(&[("host", "db1")]), 2_000)
                .map(|s| &s.id),
            Some(&a.id)
        );
        assert!(set
            .muting("p", "s", &message(&[("host", "db2")]), 2_000)
            .is_none());
        assert_eq!(set.next_change_after(2_000), Some(5_000));
        assert!(!Muting::at(&set, &[], 2_000).is_empty());
        assert!(Muting::at(&SilenceSet::default(), &[], 2_000).is_empty());
        assert_eq!(
            Muting::at(&set, &[], 2_000).muted_by("p", "s", &message(&[("host", "db1")])),
            Some(a.id.clone())
        );
    }
}
