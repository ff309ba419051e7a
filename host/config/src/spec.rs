//! The validated model of a pipeline: what the engine runs.

use std::path::PathBuf;
use std::time::Duration;

use tocsin_message::{Message, Severity};

/// The pipeline-file format version this build reads.
pub const PIPELINE_FORMAT_VERSION: u32 = 1;

/// Default linear-memory cap of a plugin instance.
pub const DEFAULT_MEMORY: u64 = 64 << 20;
/// Default fuel per call of a source or filter: a few hundred ms of guest CPU at most.
pub const DEFAULT_FUEL: u64 = 2_000_000_000;
/// The role a stage plays, for its default limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageRole {
    /// A source (polled, or decoding ingest requests).
    Source,
    /// A filter.
    Filter,
    /// A sink.
    Sink,
}

/// The fuel and timeout a stage gets when its file sets none: filters are on every message's
/// way and get a second, sinks wait on the network and get more of both.
pub fn default_limits(role: StageRole) -> Limits {
    let (fuel, timeout) = match role {
        StageRole::Source => (DEFAULT_FUEL, DEFAULT_SOURCE_TIMEOUT),
        StageRole::Filter => (DEFAULT_FUEL, DEFAULT_FILTER_TIMEOUT),
        StageRole::Sink => (DEFAULT_SINK_FUEL, DEFAULT_SINK_TIMEOUT),
    };
    Limits {
        memory: DEFAULT_MEMORY,
        fuel,
        timeout,
    }
}

/// Default fuel per call of a sink (sinks format and parse more).
pub const DEFAULT_SINK_FUEL: u64 = 5_000_000_000;
/// Default wall-clock bound of a filter call.
pub const DEFAULT_FILTER_TIMEOUT: Duration = Duration::from_secs(1);
/// Default wall-clock bound of a source call (sources read files and directories).
pub const DEFAULT_SOURCE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default wall-clock bound of a sink call, outbound HTTP included.
pub const DEFAULT_SINK_TIMEOUT: Duration = Duration::from_secs(30);

/// A checked pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSpec {
    /// The file stem.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Paused: loaded and checked, but not run.
    pub disabled: bool,
    /// Where messages come from.
    pub source: SourceSpec,
    /// Steps between source and sinks.
    pub filters: Vec<StageSpec>,
    /// Retry policy of the filter chain.
    pub filter_retry: RetryPolicy,
    /// The most its queues, dead letters and plugin state may hold, in bytes; `None`: the
    /// server's default share (see the engine's `budget` module).
    pub queue_budget: Option<u64>,
    /// Where messages go.
    pub sinks: Vec<SinkSpec>,
    /// When matching messages are muted.
    pub maintenance: Vec<crate::maintenance::MaintenanceWindow>,
    /// Who is expected to report how often; `None`: no absence alerts.
    pub expect: Option<ExpectPolicy>,
    /// Alerts that mute others while they are open.
    pub inhibit: Vec<InhibitRule>,
}

/// Alertmanager's inhibition: while an open alert of the pipeline matches every `source`
/// matcher, a message of another alert matching every `target` matcher, with the same values
/// of the `equal` labels, is muted (held, and announced if still open when the source
/// resolves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InhibitRule {
    /// Which alerts inhibit.
    pub source: Vec<crate::matchers::Matcher>,
    /// Which alerts they mute.
    pub target: Vec<crate::matchers::Matcher>,
    /// Labels whose values must be equal in both (a missing label counts as empty).
    pub equal: Vec<String>,
}

/// Absence alerts, as push monitors (healthchecks.io, Cronitor) raise them: each reporter —
/// the values of `key_labels` in the messages the source produces — is expected to report
/// at least every `every`; when one has not for `every + grace`, one alert goes through the
/// pipeline, and a resolution when it reports again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectPolicy {
    /// How often each reporter reports.
    pub every: Duration,
    /// How late a report may be.
    pub grace: Duration,
    /// The labels whose values name a reporter; empty: the source as a whole is one.
    pub key_labels: Vec<String>,
    /// The severity of the absence alert and its resolution.
    pub severity: Severity,
}

impl ExpectPolicy {
    /// How long a reporter may be silent before it is absent: `every + grace`.
    pub fn allowed_silence(&self) -> Duration {
        self.every + self.grace
    }
}

/// `expect.grace` when the file does not say: a quarter of `every`.
pub fn default_grace(every: Duration) -> Duration {
    every / 4
}

/// The severity of an absence alert when the file does not say.
pub const DEFAULT_EXPECT_SEVERITY: Severity = Severity::Error;

/// The source stage and what fires it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSpec {
    /// The plugin stage; `None` exactly for the built-in `@tocsin` source
    /// ([`Trigger::Tocsin`]), which runs no plugin.
    pub stage: Option<StageSpec>,
    /// Schedule or ingest.
    pub trigger: Trigger,
}

/// What makes a source produce messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// Polled on a cron schedule.
    Schedule(Box<ScheduleSpec>),
    /// Fed by `POST /ingest/{pipeline}`.
    Ingest(IngestSpec),
    /// The built-in `@tocsin` source: tocsin's own events.
    Tocsin(crate::self_events::SelfEventsSpec),
}

/// Default largest request body of an ingest source.
pub const DEFAULT_BODY_LIMIT: u64 = 1 << 20;

/// The linear memory a decoder needs to take a request body of `body_limit` bytes: the body
/// itself, what the decoder parses out of it, and room for its own code and data. Measured
/// with the shipped decoders on 60 MB bodies (2026-12-05): `json` with an escaped body and
/// `github-webhook` fit in 4 × the body + 32 MiB; 60 MB of 150 000 Alertmanager alerts need
/// more (and are answered 413, as the notification's size, not as a plugin fault).
pub fn decoder_memory(body_limit: u64) -> u64 {
    4 * body_limit + (32 << 20)
}

/// The fuel a decoder gets by default for a request body of `body_limit` bytes: the default,
/// or 160 instructions per byte when that is more (a 60 MB JSON body of `\u` escapes took
/// between 2 × 10⁹ and 9 × 10⁹ in `json`).
pub fn decoder_fuel(body_limit: u64) -> u64 {
    DEFAULT_FUEL.max(160 * body_limit)
}

/// How an ingest source accepts requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestSpec {
    /// Who may post.
    pub auth: IngestAuth,
    /// The largest body accepted (413 beyond).
    pub body_limit: u64,
}

/// The authentication the host checks before a decoder sees a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestAuth {
    /// Anyone who can reach the listener.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(SecretRef),
    /// GitHub's `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
    GithubHmac(SecretRef),
    /// An OIDC JWT (RS256) in `Authorization: Bearer`, as Google Pub/Sub push sends.
    Oidc(OidcSpec),
}

/// The issuers Google signs Pub/Sub push tokens as.
pub const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];

/// What an OIDC token must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSpec {
    /// Where the signing keys come from.
    pub jwks: JwksSource,
    /// Required `aud`.
    pub audience: String,
    /// Accepted `iss`.
    pub issuers: Vec<String>,
    /// Required `email` (with `email_verified`), if any.
    pub email: Option<String>,
}

/// A JSON Web Key Set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A local file.
    File(PathBuf),
    /// Fetched over HTTP(S), refreshed when a token names an unknown key.
    Url(String),
}

/// A cron schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSpec {
    /// The expression as written.
    pub expression: String,
    /// The parsed schedule.
    pub cron: cron::Schedule,
    /// Its time zone.
    pub timezone: chrono_tz::Tz,
    /// Poll once at start besides the schedule.
    pub run_on_start: bool,
}

/// One plugin stage: which plugin, its config, grants and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpec {
    /// Which plugin.
    pub plugin: PluginRef,
    /// The `config` table as JSON (`{}` when absent).
    pub config_json: String,
    /// What it may reach.
    pub grants: Grants,
    /// Resource bounds.
    pub limits: Limits,
    /// Whether its plugin declares a settings schema (`config` was checked against it).
    pub settings_declared: bool,
}

/// How a pipeline names its plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRef {
    /// As written in the file.
    pub name: String,
    /// The component it resolved to: a `.wasm` file, or a plugin built into the binary.
    pub origin: crate::plugin_origin::PluginOrigin,
    /// The pinned sha256 (hex, lower case), if any.
    pub sha256: Option<String>,
}

/// What a plugin may reach; nothing by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Mounted read-only.
    pub read_dirs: Vec<DirGrant>,
    /// Mounted read-write.
    pub write_dirs: Vec<DirGrant>,
    /// Allowed outbound HTTP authorities, lower case: `host` or `host:port`.
    pub hosts: Vec<String>,
    /// Secrets by the name the plugin asks for.
    pub secrets: Vec<(String, SecretRef)>,
    /// May write to the host's stdout.
    pub stdout: bool,
    /// What of the server's `control` interface it may use, and for whom.
    pub control: ControlGrant,
}

/// A group of the `control` interface (contract 0.2.1) a pipeline may grant a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ControlGroup {
    /// `status` and `alerts`: read the hosts' latest metrics and the open alerts.
    Status,
    /// `acknowledge`: acknowledge an open alert.
    Ack,
    /// `silences`, `silence`, `unsilence`: list, make and end silences.
    Silence,
}

impl ControlGroup {
    /// Every group, in the order the docs list them.
    pub const ALL: [ControlGroup; 3] = [
        ControlGroup::Status,
        ControlGroup::Ack,
        ControlGroup::Silence,
    ];

    /// The group's name in a pipeline file.
    pub fn as_str(self) -> &'static str {
        match self {
            ControlGroup::Status => "status",
            ControlGroup::Ack => "ack",
            ControlGroup::Silence => "silence",
        }
    }

    /// The group named `name` in a pipeline file.
    pub fn parse(name: &str) -> Option<ControlGroup> {
        ControlGroup::ALL.into_iter().find(|g| g.as_str() == name)
    }
}

impl std::fmt::Display for ControlGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a stage may act for through the `control` interface, per group. A group absent is not
/// granted; [`ControlGrant::ANYONE`] in a group's list lets any `who` the plugin names through
/// (the plugin then decides who may ask).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlGrant {
    /// The granted groups and, for each, the actors allowed (Matrix user ids, or `*`).
    pub groups: std::collections::BTreeMap<ControlGroup, Vec<String>>,
}

impl ControlGrant {
    /// The actor that stands for anyone.
    pub const ANYONE: &'static str = "*";

    /// Whether nothing of `control` is granted.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Whether `who` may use `group`; the error says why not, for the plugin and the log.
    pub fn allows(&self, group: ControlGroup, who: &str) -> Result<(), String> {
        let Some(actors) = self.groups.get(&group) else {
            return Err(format!(
                "this pipeline does not grant `control` group `{group}` to this stage"
            ));
        };
        if actors.iter().any(|a| a == Self::ANYONE || a == who) {
            Ok(())
        } else {
            Err(format!("`{who}` may not use `{group}` here"))
        }
    }
}

/// A directory mounted into a plugin's sandbox.
///
/// An absolute path is mounted at the same path. A relative path (no `..`) is taken relative
/// to the pipeline file's directory on the host and mounted under the same relative path in
/// the guest, so a pipeline and its data can move together (the repo's demo does this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// The path the plugin uses for it.
    pub guest: String,
}

/// Where a secret's value comes from. Never printed with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable of the tocsin process.
    Env(String),
    /// A file (trailing newline trimmed).
    File(PathBuf),
}

impl SecretRef {
    /// Parses `env:NAME` or `file:PATH` (a relative path against `base`). The error never
    /// repeats the text: it may be the secret itself, pasted by mistake.
    pub fn parse(text: &str, base: &std::path::Path) -> Result<SecretRef, String> {
        match text.split_once(':') {
            Some(("env", var)) if !var.is_empty() => Ok(SecretRef::Env(var.to_string())),
            Some(("file", path)) if !path.is_empty() => Ok(SecretRef::File(base.join(path))),
            _ => Err("a secret must be `env:NAME` or `file:/path` (the value is not shown)".into()),
        }
    }

    /// Reads the secret's value now.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            SecretRef::Env(name) => {
                std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
            }
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| format!("cannot read secret file {}: {e}", path.display())),
        }
    }
}

/// Resource bounds of one plugin instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory cap in bytes.
    pub memory: u64,
    /// Fuel per call (CPU bound on guest code only: host calls burn none).
    pub fuel: u64,
    /// Wall-clock bound per call, host calls included.
    pub timeout: Duration,
}

/// A sink stage.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSpec {
    /// Unique in the pipeline.
    pub name: String,
    /// The plugin stage.
    pub stage: StageSpec,
    /// How to retry.
    pub retry: RetryPolicy,
    /// Deliveries in flight at once, each on its own plugin instance ([`DEFAULT_SINK_CONCURRENCY`]
    /// unless the file says). Order is kept per alert: messages of one alert go one at a time
    /// in queue order, different alerts side by side. 1 keeps strict order for the whole sink:
    /// a retrying message holds back every one behind it.
    pub concurrency: u32,
    /// Which messages reach it.
    pub route: Route,
    /// When set, messages go out one notification per group (see [`GroupPolicy`]).
    pub group: Option<GroupPolicy>,
}

/// How a sink groups alerts, as Alertmanager's `group_by`, `group_wait` and
/// `group_interval` do: the first message of a group waits `wait` for others, then all of
/// them go out as one notification; what arrives later goes out together at most every
/// `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPolicy {
    /// The labels whose values form a group (a missing label counts as empty); empty: one
    /// group for every message.
    pub by: Vec<String>,
    /// How long a group's first message waits for others.
    pub wait: Duration,
    /// The least time between two notifications of one group.
    pub interval: Duration,
    /// The most messages one notification carries (at most [`MAX_GROUP_MESSAGES`]); the rest
    /// go in the next one, right after.
    pub max_messages: usize,
}

/// Alertmanager's default `group_wait`.
pub const DEFAULT_GROUP_WAIT: Duration = Duration::from_secs(30);
/// Alertmanager's default `group_interval`.
pub const DEFAULT_GROUP_INTERVAL: Duration = Duration::from_secs(300);

/// The most messages one group notification may carry, and what it carries unless the file
/// sets `max_messages`; the rest go in the next one.
pub const MAX_GROUP_MESSAGES: usize = 1000;

/// The most deliveries a sink may have in flight.
pub const MAX_SINK_CONCURRENCY: u32 = 64;
/// Deliveries a sink has in flight at most when its file does not say: enough for a storm of
/// different alerts to go out at several times Alertmanager's rate (docs/benchmarks.md), while
/// each alert's messages keep their order. Instances beyond the first are made only when the
/// queue has work for them.
pub const DEFAULT_SINK_CONCURRENCY: u32 = 8;

/// Exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all before dead letters.
    pub max_attempts: u32,
    /// First retry delay.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 12,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(600),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// The default policy of the filter chain: filters fail for bugs, not outages, so give up
    /// sooner than sinks do.
    pub const FILTER_DEFAULT: RetryPolicy = RetryPolicy {
        max_attempts: 5,
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
        multiplier: 2.0,
    };

    /// The delay before the next attempt after `attempts` failed ones (1-based), before
    /// jitter: `initial * multiplier^(attempts-1)`, capped at `max`.
    pub fn base_delay(&self, attempts: u32) -> Duration {
        let exp = self
            .multiplier
            .powi(attempts.saturating_sub(1).min(64) as i32);
        let secs = self.initial.as_secs_f64() * exp;
        // Compare in f64 but return `max` itself: a `max` near `Duration::MAX` (a file may say
        // `max = "18446744073709551615s"`) rounds up as f64 to more than a Duration holds.
        if secs.is_nan() || secs >= self.max.as_secs_f64() {
            return self.max;
        }
        Duration::try_from_secs_f64(secs.max(0.0)).map_or(self.max, |d| d.min(self.max))
    }

    /// The delay with "equal jitter": uniformly in `[base/2, base]`, given `unit` in `[0, 1)`.
    /// Keeps a floor so retries never hammer, while spreading sinks that failed together.
    pub fn jittered_delay(&self, attempts: u32, unit: f64) -> Duration {
        let base = self.base_delay(attempts);
        let factor = 0.5
            + 0.5
                * if unit.is_nan() {
                    1.0
                } else {
                    unit.clamp(0.0, 1.0)
                };
        // Not `Duration::mul_f64`, which panics when the product rounds past `Duration::MAX`.
        Duration::try_from_secs_f64(base.as_secs_f64() * factor).map_or(base, |d| d.min(base))
    }
}

/// A host-evaluated routing rule on a sink.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// Severity comparison, if any.
    pub severity: Option<(Comparison, Severity)>,
    /// Labels that must match exactly.
    pub labels: Vec<(String, String)>,
}

/// A comparison operator in a `match`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `==`
    Eq,
    /// `>=`
    Ge,
    /// `>`
    Gt,
    /// `<=`
    Le,
    /// `<`
    Lt,
}

impl Route {
    /// Whether a message goes to this sink.
    pub fn matches(&self, msg: &Message) -> bool {
        let severity_ok = match self.severity {
            None => true,
            Some((op, level)) => match op {
                Comparison::Eq => msg.severity == level,
                Comparison::Ge => msg.severity >= level,
                Comparison::Gt => msg.severity > level,
                Comparison::Le => msg.severity <= level,
                Comparison::Lt => msg.severity < level,
            },
        };
        severity_ok
            && self
                .labels
                .iter()
                .all(|(k, v)| msg.label(k) == Some(v.as_str()))
    }
}
