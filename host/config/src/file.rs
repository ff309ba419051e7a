//! The raw shape of a pipeline file, as serde reads it.
//!
//! Every struct denies unknown fields, so a typo is an error rather than a silent default.
//! Fields whose values need checks beyond their type are [`Spanned`], so errors can name the
//! line they come from. See `docs/pipeline-reference.md` for what each field means.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A whole pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// The pipeline-file format version; `1` when absent.
    pub version: Option<Spanned<u32>>,
    /// Pause the pipeline without deleting its file or queues.
    #[serde(default)]
    pub disabled: bool,
    /// How often the filter chain is retried on one message before it goes to the
    /// `@filters` dead letters (default: 5 attempts, 1 s doubling to 1 m).
    #[serde(default)]
    pub filter_retry: RetryTable,
    /// The most this pipeline's queues, dead letters and plugin state may hold, e.g.
    /// `"256MiB"`; past it, its ingest answers 503 and its cron source skips ticks.
    pub queue_budget: Option<Spanned<String>>,
    /// Where messages come from.
    pub source: SourceTable,
    /// Steps between source and sinks, in order.
    #[serde(default, rename = "filter")]
    pub filters: Vec<StageTable>,
    /// Where messages go; at least one.
    #[serde(default, rename = "sink")]
    pub sinks: Vec<SinkTable>,
    /// Recurring windows when matching messages are muted.
    #[serde(default, rename = "maintenance")]
    pub maintenance: Vec<MaintenanceTable>,
    /// Who is expected to report how often: an absence alert when one stops.
    pub expect: Option<Spanned<ExpectTable>>,
    /// Alerts that mute others while they are open.
    #[serde(default, rename = "inhibit")]
    pub inhibit: Vec<InhibitTable>,
}

/// `[[inhibit]]`: while an alert `source` picks is open, the alerts `target` picks with the
/// same `equal` labels are muted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitTable {
    /// Label matchers of the alerts that inhibit.
    pub source: Spanned<Vec<String>>,
    /// Label matchers of the alerts they mute.
    pub target: Spanned<Vec<String>>,
    /// Labels both must have equal.
    pub equal: Option<Spanned<Vec<String>>>,
}

/// `expect = { every = "15m", grace = "5m", key_labels = ["host"] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectTable {
    /// How often each reporter reports, e.g. `"15m"`.
    pub every: Spanned<String>,
    /// How late a report may be before it counts as missing.
    pub grace: Option<Spanned<String>>,
    /// The labels whose values name a reporter; `[]`: the pipeline's source as a whole.
    pub key_labels: Option<Spanned<Vec<String>>>,
    /// The severity of an absence alert: `"error"` by default.
    pub severity: Option<Spanned<String>>,
}

/// `[[maintenance]]`: a recurring window when matching messages are muted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceTable {
    /// Its name, shown in traces.
    pub name: Option<Spanned<String>>,
    /// The IANA zone its fields are read in.
    pub timezone: Option<Spanned<String>>,
    /// Weekday ranges: `"mon:fri"`, `"sun"`.
    pub weekdays: Option<Spanned<Vec<String>>>,
    /// Time-of-day ranges: `"02:00-04:30"`.
    pub times: Option<Spanned<Vec<String>>>,
    /// Day-of-month ranges: `"1:7"`, `"-1"`.
    pub days_of_month: Option<Spanned<Vec<String>>>,
    /// Month ranges: `"jun:aug"`.
    pub months: Option<Spanned<Vec<String>>>,
    /// Label matchers of the messages it mutes.
    #[serde(rename = "match")]
    pub matchers: Option<Spanned<Vec<String>>>,
    /// The sinks it covers.
    pub sinks: Option<Spanned<Vec<String>>>,
}

/// `[source]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceTable {
    /// The plugin: a shipped name or a path to a `.wasm`.
    pub plugin: Spanned<String>,
    /// Expected sha256 of the plugin's `.wasm` (hex).
    pub sha256: Option<Spanned<String>>,
    /// Cron expression: poll the source on this schedule. Absent: fed by `POST /ingest/{name}`.
    pub schedule: Option<Spanned<String>>,
    /// IANA time zone of the schedule; UTC when absent.
    pub timezone: Option<Spanned<String>>,
    /// Poll once at start, besides the schedule.
    #[serde(default)]
    pub run_on_start: bool,
    /// Ingest sources only: who may post (required, so an open endpoint is a decision).
    pub auth: Option<Spanned<AuthTable>>,
    /// Ingest sources only: the largest request body accepted, e.g. `"1MiB"`.
    pub body_limit: Option<Spanned<String>>,
    /// The plugin's own configuration, handed to its `init` as JSON.
    #[serde(default)]
    pub config: Option<Spanned<toml::Table>>,
    /// What the plugin may reach.
    #[serde(default)]
    pub grants: GrantsTable,
    /// Resource bounds.
    #[serde(default)]
    pub limits: LimitsTable,
}

/// `config` of the built-in `@tocsin` source (`plugin = "@tocsin"`): which of tocsin's own
/// events it reports, and when a condition counts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfEventsTable {
    /// The kinds of event reported; all of them when absent.
    pub events: Option<Spanned<Vec<String>>>,
    /// How often the conditions are looked at, e.g. `"15s"`.
    pub every: Option<Spanned<String>>,
    /// How long a sink's deliveries fail before it is reported, e.g. `"10m"`.
    pub retrying_for: Option<Spanned<String>>,
    /// How many stopped calls of one plugin within `stops_within` are reported.
    pub plugin_stops: Option<Spanned<u32>>,
    /// The window `plugin_stops` counts in, e.g. `"10m"`.
    pub stops_within: Option<Spanned<String>>,
    /// The share of a queue budget, in percent, whose use is reported.
    pub budget_percent: Option<Spanned<u32>>,
}

/// One `[[filter]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageTable {
    /// The plugin: a shipped name or a path to a `.wasm`.
    pub plugin: Spanned<String>,
    /// Expected sha256 of the plugin's `.wasm` (hex).
    pub sha256: Option<Spanned<String>>,
    /// The plugin's own configuration.
    #[serde(default)]
    pub config: Option<Spanned<toml::Table>>,
    /// What the plugin may reach.
    #[serde(default)]
    pub grants: GrantsTable,
    /// Resource bounds.
    #[serde(default)]
    pub limits: LimitsTable,
}

/// One `[[sink]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkTable {
    /// Unique within the pipeline; names the sink's queue and dead letters.
    pub name: Spanned<String>,
    /// The plugin: a shipped name or a path to a `.wasm`.
    pub plugin: Spanned<String>,
    /// Expected sha256 of the plugin's `.wasm` (hex).
    pub sha256: Option<Spanned<String>>,
    /// The plugin's own configuration.
    #[serde(default)]
    pub config: Option<Spanned<toml::Table>>,
    /// What the plugin may reach.
    #[serde(default)]
    pub grants: GrantsTable,
    /// Resource bounds.
    #[serde(default)]
    pub limits: LimitsTable,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryTable,
    /// Deliveries in flight at once (1–64; default 1, strictly in order).
    pub concurrency: Option<Spanned<u32>>,
    /// Only messages matching this reach the sink.
    #[serde(default, rename = "match")]
    pub route: Option<MatchTable>,
    /// Alerts of one group go out together: `group = { by = ["alertname"], wait = "30s" }`.
    pub group: Option<Spanned<GroupTable>>,
}

/// `group = { by = ["alertname", "host"], wait = "30s", interval = "5m" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupTable {
    /// The labels whose values form a group; `[]` puts every message in one group.
    pub by: Spanned<Vec<String>>,
    /// How long the first message of a group waits for others, e.g. `"30s"`.
    pub wait: Option<Spanned<String>>,
    /// The least time between two notifications of one group, e.g. `"5m"`.
    pub interval: Option<Spanned<String>>,
    /// The most messages one notification carries (1–1000); the rest go in the next one.
    pub max_messages: Option<Spanned<u32>>,
}

/// `grants = { … }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsTable {
    /// Directories mounted read-only at the same path inside the guest.
    #[serde(default)]
    pub read_dirs: Vec<Spanned<String>>,
    /// Directories mounted read-write at the same path (for the `file` sink).
    #[serde(default)]
    pub write_dirs: Vec<Spanned<String>>,
    /// Outbound HTTP hosts: `host` or `host:port`.
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// Secrets by the name the plugin asks for: `env:NAME` or `file:/path`.
    #[serde(default)]
    pub secrets: BTreeMap<String, Spanned<String>>,
    /// Let the guest write to the host's standard output (the `stdout` sink).
    #[serde(default)]
    pub stdout: bool,
    /// The `control` interface: `["status", "ack"]` (any actor the plugin names), or
    /// `{ status = ["*"], ack = ["@alice:example.org"] }` (who may, per group).
    pub control: Option<Spanned<ControlTable>>,
}

/// `grants.control`, in either of its forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlTable {
    /// `["status", "ack"]`: these groups, for any actor.
    Groups(Vec<String>),
    /// `{ status = ["*"], ack = ["@alice:example.org"] }`: these groups, for these actors.
    Actors(BTreeMap<String, Vec<String>>),
}

impl<'de> Deserialize<'de> for ControlTable {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = ControlTable;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a list of groups, `[\"status\", \"ack\", \"silence\"]`, or a table of \
                     who may use each, `{ ack = [\"@alice:example.org\"] }`",
                )
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<ControlTable, A::Error> {
                Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(ControlTable::Groups)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ControlTable, A::Error> {
                Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ControlTable::Actors)
            }
        }
        de.deserialize_any(Either)
    }
}

/// `auth = { … }` of an ingest source: exactly one of the fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthTable {
    /// `true`: anyone who can reach the listener may post.
    #[serde(default)]
    pub none: bool,
    /// `Authorization: Bearer <token>`, the token from `env:NAME` or `file:/path`.
    pub bearer: Option<Spanned<String>>,
    /// GitHub's `X-Hub-Signature-256` HMAC, keyed with this secret (`env:`/`file:`).
    pub github_secret: Option<Spanned<String>>,
    /// An OIDC JWT in `Authorization: Bearer` (Google Pub/Sub push).
    pub oidc: Option<OidcTable>,
}

/// `auth = { oidc = { … } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcTable {
    /// Where the signing keys are: `file:/path/jwks.json` or an `https://` URL.
    pub jwks: Spanned<String>,
    /// The audience the token must name (`aud`).
    pub audience: String,
    /// Accepted issuers (`iss`); Google's two spellings when absent.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// The service account the token must be for (`email`, verified).
    pub email: Option<String>,
}

/// `limits = { … }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsTable {
    /// Linear memory cap, e.g. `"64MiB"`.
    pub memory: Option<Spanned<String>>,
    /// CPU bound: fuel (about one unit per WebAssembly instruction) per call.
    pub fuel: Option<Spanned<u64>>,
    /// Wall-clock bound per call, outbound HTTP included, e.g. `"1s"`.
    pub timeout: Option<Spanned<String>>,
}

/// `retry = { … }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryTable {
    /// Attempts before the message goes to dead letters (the first delivery counts).
    pub max_attempts: Option<Spanned<u32>>,
    /// Delay before the first retry, e.g. `"1s"`.
    pub initial: Option<Spanned<String>>,
    /// Longest delay between attempts, e.g. `"10m"`.
    pub max: Option<Spanned<String>>,
    /// Growth factor of the delay per attempt.
    pub multiplier: Option<Spanned<f64>>,
}

/// `match = { severity = ">= warning", labels = { team = "ops" } }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchTable {
    /// A comparison such as `">= warning"` or `"error"` (equal).
    pub severity: Option<Spanned<String>>,
    /// Labels that must be present with these exact values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}
