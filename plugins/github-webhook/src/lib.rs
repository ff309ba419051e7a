//! `github-webhook`: an ingest decoder for GitHub webhook deliveries.
//!
//! Pair it with `auth = { github_secret = "env:NAME" }`: the host checks
//! `X-Hub-Signature-256` before this plugin sees the request. The delivery GUID
//! (`X-GitHub-Delivery`) becomes the message id, so GitHub's redeliveries are the same message;
//! the event (`X-GitHub-Event`), repository, action and sender become labels. Both content
//! types GitHub offers are read: `application/json` and the form-encoded `payload=`. Every
//! event family gets a sentence in GitHub's own words (`ada merged pull request #12: Fix
//! login`, `sentences.rs`), checked over GitHub's payload examples (`corpus_tests.rs`).
//!
//! Severity from what happened: `error` for a failed workflow run or job, check run or suite,
//! deployment status or commit status (`failure`, `error`, `timed_out`, `startup_failure`);
//! a security alert (Dependabot, code scanning, secret scanning, a repository vulnerability
//! alert, an advisory) takes its advisory's or rule's severity — critical or high `error`,
//! medium `warning`, low or note `info`; a leaked secret is at least `error`. A security alert
//! carries a key (its kind, repository and number) and a `status` label: `firing` when it is
//! created or reopened, `resolved` when it is fixed, dismissed or resolved — so grouping and
//! per-alert order treat them as one alert. Otherwise `info`.

mod sentences;

use serde::Deserialize;
use serde_json::Value;
use tocsin_sdk::{
    export_decoder, Decoder, HttpRequest, Message, MessageExt, OutputBudget, Rejection, Severity,
};

/// Decodes GitHub webhook deliveries; pair it with `auth = { github_secret = … }`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// Keep the delivery's JSON as the message payload (default false: payloads are large).
    #[serde(default)]
    keep_payload: bool,
    /// Only these events make messages (others are answered 202 and dropped); all when empty.
    /// An entry is an event (`push`) or an event and one of its actions
    /// (`pull_request.closed`); an event GitHub does not send is refused, naming the nearest.
    #[serde(default)]
    events: Vec<String>,
}

struct GithubWebhook {
    keep_payload: bool,
    events: Vec<Wanted>,
}

/// GitHub's webhook events, as `X-GitHub-Event` names them.
const KNOWN_EVENTS: &[&str] = &[
    "branch_protection_configuration",
    "branch_protection_rule",
    "check_run",
    "check_suite",
    "code_scanning_alert",
    "commit_comment",
    "create",
    "custom_property",
    "custom_property_values",
    "delete",
    "dependabot_alert",
    "deploy_key",
    "deployment",
    "deployment_protection_rule",
    "deployment_review",
    "deployment_status",
    "discussion",
    "discussion_comment",
    "fork",
    "github_app_authorization",
    "gollum",
    "installation",
    "installation_repositories",
    "installation_target",
    "issue_comment",
    "issues",
    "label",
    "marketplace_purchase",
    "member",
    "membership",
    "merge_group",
    "meta",
    "milestone",
    "org_block",
    "organization",
    "package",
    "page_build",
    "personal_access_token_request",
    "ping",
    "project",
    "project_card",
    "project_column",
    "projects_v2",
    "projects_v2_item",
    "public",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "pull_request_review_thread",
    "push",
    "registry_package",
    "release",
    "repository",
    "repository_advisory",
    "repository_dispatch",
    "repository_import",
    "repository_ruleset",
    "repository_vulnerability_alert",
    "secret_scanning_alert",
    "secret_scanning_alert_location",
    "security_advisory",
    "security_and_analysis",
    "sponsorship",
    "star",
    "status",
    "sub_issues",
    "team",
    "team_add",
    "watch",
    "workflow_dispatch",
    "workflow_job",
    "workflow_run",
];

/// One entry of `events`: an event, and maybe one of its actions.
#[derive(Debug, PartialEq)]
struct Wanted {
    event: String,
    action: Option<String>,
}

impl Wanted {
    /// `push` or `pull_request.closed`; an unknown event is refused naming the nearest known.
    fn parse(entry: &str) -> Result<Wanted, String> {
        let (event, action) = match entry.split_once('.') {
            Some((event, action)) => (event, Some(action)),
            None => (entry, None),
        };
        if !KNOWN_EVENTS.contains(&event) {
            let nearest = KNOWN_EVENTS
                .iter()
                .min_by_key(|known| strsim::levenshtein(known, event))
                .copied()
                .unwrap_or("push");
            return Err(format!(
                "events: `{event}` is not a GitHub webhook event; did you mean `{nearest}`?"
            ));
        }
        if let Some(action) = action {
            if action.is_empty() || !action.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                return Err(format!(
                    "events: `{entry}`: after the dot comes an action, such as `{event}.created`"
                ));
            }
        }
        Ok(Wanted {
            event: event.to_string(),
            action: action.map(str::to_string),
        })
    }

    fn takes(&self, event: &str, action: &str) -> bool {
        self.event == event && self.action.as_deref().is_none_or(|a| a == action)
    }
}

fn reject(status: u16, reason: impl Into<String>) -> Rejection {
    Rejection {
        status,
        reason: reason.into(),
    }
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// The JSON document of a delivery, from either content type.
fn document(req: &HttpRequest) -> Result<(Value, String), Rejection> {
    let form = header(req, "content-type")
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    let raw = if form {
        form_urlencoded::parse(&req.body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| reject(400, "form-encoded delivery without a `payload` field"))?
    } else {
        String::from_utf8(req.body.clone()).map_err(|_| reject(400, "the body is not UTF-8"))?
    };
    let value =
        serde_json::from_str(&raw).map_err(|e| reject(400, format!("malformed JSON: {e}")))?;
    Ok((value, raw))
}

/// Where the web page of what an event is about is, most specific first: the comment or
/// review, the alert, the job or run, the pull request or issue, the release, a push's
/// comparison, else the repository.
const LINKS: [&str; 14] = [
    "/comment/html_url",
    "/review/html_url",
    "/alert/html_url",
    "/workflow_job/html_url",
    "/workflow_run/html_url",
    "/check_run/html_url",
    "/deployment_status/target_url",
    "/pull_request/html_url",
    "/issue/html_url",
    "/discussion/html_url",
    "/release/html_url",
    "/compare",
    "/repository/html_url",
    "/organization/html_url",
];

/// The link of an event's message: the first of [`LINKS`] the payload has.
fn link_of(p: &Value) -> Option<String> {
    LINKS
        .iter()
        .filter_map(|at| p.pointer(at).and_then(Value::as_str))
        .find(|url| !url.is_empty())
        .map(str::to_string)
}

/// How an event's message is judged beyond its sentence: a severity of its own, the alert it
/// is about, and whether it opens or closes that alert.
#[derive(Debug, Default, PartialEq)]
struct Assessment {
    severity: Option<Severity>,
    key: Option<String>,
    status: Option<&'static str>,
}

/// The severity a security advisory or rule names: critical/high/error → error,
/// medium/moderate/warning → warning, low/note → info.
fn advisory_severity(name: &str) -> Option<Severity> {
    Some(match name.to_ascii_lowercase().as_str() {
        "critical" | "high" | "error" => Severity::Error,
        "medium" | "moderate" | "warning" => Severity::Warning,
        "low" | "note" => Severity::Info,
        _ => return None,
    })
}

fn is_failure(state: Option<&str>) -> bool {
    matches!(
        state,
        Some("failure" | "error" | "timed_out" | "startup_failure")
    )
}

/// Judges what [`describe`] does not: failed jobs and deployments, and security alerts.
fn assess(event: &str, p: &Value) -> Assessment {
    let action = s(p, &["action"]).unwrap_or("");
    let repo = s(p, &["repository", "full_name"]).unwrap_or("");
    let failure = |state: Option<&str>| Assessment {
        severity: is_failure(state).then_some(Severity::Error),
        ..Assessment::default()
    };
    let alert = |kind: &str, severity: Option<Severity>, opens: &[&str], closes: &[&str]| {
        let number = p
            .pointer("/alert/number")
            .and_then(Value::as_u64)
            .map(|n| n.to_string());
        let status = if closes.contains(&action) {
            Some("resolved")
        } else if opens.contains(&action) {
            Some("firing")
        } else {
            None
        };
        Assessment {
            severity: match status {
                Some("resolved") => Some(Severity::Info),
                _ => severity,
            },
            key: number.map(|n| format!("{kind}/{repo}/{n}")),
            status,
        }
    };
    match event {
        "workflow_job" => failure(s(p, &["workflow_job", "conclusion"])),
        "deployment_status" => failure(s(p, &["deployment_status", "state"])),
        "status" => failure(s(p, &["state"])),
        "dependabot_alert" => alert(
            "dependabot",
            s(p, &["alert", "security_advisory", "severity"])
                .or(s(p, &["alert", "security_vulnerability", "severity"]))
                .and_then(advisory_severity),
            &["created", "reopened", "reintroduced"],
            &["fixed", "dismissed", "auto_dismissed"],
        ),
        "code_scanning_alert" => alert(
            "code-scanning",
            s(p, &["alert", "rule", "security_severity_level"])
                .or(s(p, &["alert", "rule", "severity"]))
                .and_then(advisory_severity),
            &[
                "created",
                "reopened",
                "appeared_in_branch",
                "reopened_by_user",
            ],
            &["fixed", "closed_by_user"],
        ),
        "secret_scanning_alert" => alert(
            "secret-scanning",
            Some(Severity::Error),
            &["created", "reopened", "publicly_leaked"],
            &["resolved"],
        ),
        "repository_vulnerability_alert" => {
            let mut a = alert(
                "vulnerability",
                s(p, &["alert", "severity"]).and_then(advisory_severity),
                &["create", "reopen"],
                &["resolve", "dismiss"],
            );
            if a.key.is_none() {
                a.key = p
                    .pointer("/alert/id")
                    .and_then(Value::as_u64)
                    .map(|id| format!("vulnerability/{repo}/{id}"));
            }
            a
        }
        "security_advisory" => Assessment {
            severity: s(p, &["security_advisory", "severity"]).and_then(advisory_severity),
            ..Assessment::default()
        },
        _ => Assessment::default(),
    }
}

/// One line saying what happened, and how bad it is.
fn describe(event: &str, p: &Value) -> (String, Severity) {
    let action = s(p, &["action"]).unwrap_or("");
    let failed = |conclusion: Option<&str>| {
        if matches!(
            conclusion,
            Some("failure" | "timed_out" | "startup_failure")
        ) {
            Severity::Error
        } else {
            Severity::Info
        }
    };
    match event {
        "push" => (sentences::push(p), Severity::Info),
        "pull_request" => (sentences::pull_request_event(action, p), Severity::Info),
        "issues" => (sentences::issues_event(action, p), Severity::Info),
        "workflow_run" => {
            // An empty name falls back to the run's title, then to the word.
            let name = s(p, &["workflow_run", "name"])
                .filter(|n| !n.is_empty())
                .or(s(p, &["workflow_run", "display_title"]).filter(|n| !n.is_empty()))
                .unwrap_or("workflow");
            let conclusion = s(p, &["workflow_run", "conclusion"]);
            (
                format!("{name} {action}: {}", conclusion.unwrap_or("in progress")),
                failed(conclusion),
            )
        }
        "check_run" | "check_suite" => {
            let conclusion = s(p, &[event, "conclusion"]);
            let name = s(p, &[event, "name"])
                .or(s(p, &[event, "app", "name"]))
                .unwrap_or(event);
            (
                format!("{name} {action}: {}", conclusion.unwrap_or("in progress")),
                failed(conclusion),
            )
        }
        "ping" => (
            format!("ping: {}", s(p, &["zen"]).unwrap_or("hello")),
            Severity::Info,
        ),
        other => match sentences::sentence(other, action, p) {
            Some(sentence) => (sentence, Severity::Info),
            None if action.is_empty() => (format!("{other} event"), Severity::Info),
            None => (format!("{other} {action}"), Severity::Info),
        },
    }
}

impl Decoder for GithubWebhook {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        Ok(GithubWebhook {
            keep_payload: c.keep_payload,
            events: c
                .events
                .iter()
                .map(|e| Wanted::parse(e))
                .collect::<Result<_, _>>()?,
        })
    }

    fn decode(&mut self, req: HttpRequest) -> Result<Vec<Message>, Rejection> {
        let event = header(&req, "x-github-event")
            .ok_or_else(|| reject(400, "missing X-GitHub-Event"))?
            .to_string();
        let delivery = header(&req, "x-github-delivery")
            .ok_or_else(|| reject(400, "missing X-GitHub-Delivery"))?
            .to_string();
        if delivery.is_empty() || delivery.len() > 100 {
            return Err(reject(400, "X-GitHub-Delivery must be 1 to 100 characters"));
        }
        let (payload, raw) = document(&req)?;
        let action = s(&payload, &["action"]).unwrap_or_default();
        if !self.events.is_empty() && !self.events.iter().any(|w| w.takes(&event, action)) {
            return Ok(vec![]);
        }
        let (text, described) = describe(&event, &payload);
        let assessed = assess(&event, &payload);
        let severity = assessed.severity.unwrap_or(described);
        let repo = s(&payload, &["repository", "full_name"]).unwrap_or("");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut m = Message::new(delivery.clone(), now, text);
        m.severity = severity;
        m.summary = Some(if repo.is_empty() {
            format!("GitHub {event}")
        } else {
            format!("GitHub {event} on {repo}")
        });
        m.set_label("github-event", event);
        m.set_label("github-delivery", delivery);
        for (label, path) in [
            ("repository", &["repository", "full_name"][..]),
            ("action", &["action"]),
            ("sender", &["sender", "login"]),
        ] {
            if let Some(v) = s(&payload, path) {
                m.set_label(label, v);
            }
        }
        if let Some(link) = link_of(&payload) {
            m.set_link(link);
        }
        m.key = assessed.key;
        if let Some(status) = assessed.status {
            m.set_label("status", status);
        }
        if self.keep_payload {
            m.payload = Some(raw);
        }
        // An id the host would refuse (a delivery header with control characters): say so.
        tocsin_sdk::check_message(&m, now).map_err(|reason| reject(400, reason))?;
        // Past the host's cap on one call's output (possible with a `body_limit` over 16 MiB),
        // the host would fail the call with a 500: refuse the request instead.
        OutputBudget::default()
            .admit(&m)
            .map_err(|reason| reject(413, reason))?;
        Ok(vec![m])
    }
}

export_decoder!(GithubWebhook);
tocsin_sdk::declare_settings!(Config);

#[cfg(test)]
mod corpus_tests;
#[cfg(test)]
mod prop_tests;

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn request(event: &str, body: &str, form: bool) -> HttpRequest {
        let mut headers = vec![
            ("x-github-event".to_string(), event.to_string()),
            (
                "x-github-delivery".to_string(),
                "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_string(),
            ),
        ];
        let body = if form {
            headers.push((
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ));
            form_urlencoded::Serializer::new(String::new())
                .append_pair("payload", body)
                .finish()
        } else {
            headers.push(("content-type".into(), "application/json".into()));
            body.to_string()
        };
        HttpRequest {
            method: "POST".into(),
            path: "/ingest/gh".into(),
            headers,
            body: body.into_bytes(),
        }
    }

    pub(crate) fn plugin() -> GithubWebhook {
        GithubWebhook::new(Config {
            keep_payload: false,
            events: vec![],
        })
        .unwrap()
    }

    #[test]
    fn a_push_becomes_a_message_named_by_its_delivery() {
        let body = r#"{"ref":"refs/heads/main","commits":[{},{}],"pusher":{"name":"ada"},"repository":{"full_name":"acme/api"},"sender":{"login":"ada"}}"#;
        for form in [false, true] {
            let m = &plugin().decode(request("push", body, form)).unwrap()[0];
            assert_eq!(m.id, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
            assert_eq!(m.body, "ada pushed 2 commits to main");
            assert_eq!(m.summary.as_deref(), Some("GitHub push on acme/api"));
            assert_eq!(m.label("github-event"), Some("push"));
            assert_eq!(m.label("repository"), Some("acme/api"));
        }
    }

    #[test]
    fn a_failed_workflow_is_an_error() {
        let body = r#"{"action":"completed","workflow_run":{"name":"CI","conclusion":"failure"}}"#;
        let m = &plugin()
            .decode(request("workflow_run", body, false))
            .unwrap()[0];
        assert_eq!(m.severity, Severity::Error);
        assert_eq!(m.body, "CI completed: failure");
    }

    #[test]
    fn hostile_or_broken_deliveries_are_rejected_with_a_reason() {
        let mut req = request("push", "{}", false);
        req.headers.retain(|(k, _)| k != "x-github-event");
        assert_eq!(
            plugin().decode(req).unwrap_err().reason,
            "missing X-GitHub-Event"
        );
        assert_eq!(
            plugin()
                .decode(request("push", "{not json", false))
                .unwrap_err()
                .status,
            400
        );
        let mut req = request("push", "{}", true);
        req.body = b"other=1".to_vec();
        assert!(plugin().decode(req).unwrap_err().reason.contains("payload"));
        let mut req = request("push", "{}", false);
        req.body = vec![0xff, 0xfe];
        assert_eq!(plugin().decode(req).unwrap_err().status, 400);
    }

    /// Regression (found by `prop_huge_deliveries_are_refused_past_the_output_caps`): with a
    /// `body_limit` over 16 MiB, a delivery kept as payload (or with a huge title) made a
    /// message larger than the host takes from one call, and the host answered 500.
    #[test]
    fn deliveries_past_the_output_cap_are_refused_with_413() {
        let body = format!(r#"{{"zen": "{}"}}"#, "z".repeat(9 << 20));
        let mut p = GithubWebhook::new(Config {
            keep_payload: true,
            events: vec![],
        })
        .unwrap();
        let e = p.decode(request("ping", &body, false)).unwrap_err();
        assert_eq!(e.status, 413);
        assert!(e.reason.contains("bytes of messages"), "{}", e.reason);
        assert_eq!(
            plugin()
                .decode(request("ping", &body, false))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn unwanted_events_are_dropped() {
        let mut p = GithubWebhook::new(Config {
            keep_payload: false,
            events: vec!["push".into()],
        })
        .unwrap();
        assert!(p.decode(request("star", "{}", false)).unwrap().is_empty());
    }

    #[test]
    fn events_are_chosen_by_action_too() {
        let mut p = GithubWebhook::new(Config {
            keep_payload: false,
            events: vec![
                "pull_request.opened".into(),
                "pull_request.closed".into(),
                "release".into(),
            ],
        })
        .unwrap();
        let pr =
            |action: &str| format!(r#"{{"action": "{action}", "pull_request": {{"number": 2}}}}"#);
        assert_eq!(
            p.decode(request("pull_request", &pr("opened"), false))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            p.decode(request("pull_request", &pr("closed"), false))
                .unwrap()
                .len(),
            1
        );
        assert!(p
            .decode(request("pull_request", &pr("labeled"), false))
            .unwrap()
            .is_empty());
        let release = r#"{"action": "published", "release": {"tag_name": "v1"}}"#;
        assert_eq!(
            p.decode(request("release", release, false)).unwrap().len(),
            1
        );
    }

    #[test]
    fn an_unknown_event_is_refused_naming_the_nearest() {
        let refused = |events: &[&str]| {
            GithubWebhook::new(Config {
                keep_payload: false,
                events: events.iter().map(|e| e.to_string()).collect(),
            })
            .err()
        };
        let typo = refused(&["pull_requests.opened"]).unwrap();
        assert!(typo.contains("did you mean `pull_request`?"), "{typo}");
        let action = refused(&["issues.Opened!"]).unwrap();
        assert!(action.contains("an action"), "{action}");
        assert!(refused(&["workflow_run.completed", "dependabot_alert"]).is_none());
    }

    #[test]
    fn the_link_is_the_most_specific_page_the_payload_has() {
        let pr = serde_json::json!({
            "pull_request": {"html_url": "https://github.com/o/r/pull/2"},
            "repository": {"html_url": "https://github.com/o/r"}
        });
        assert_eq!(
            link_of(&pr).as_deref(),
            Some("https://github.com/o/r/pull/2")
        );
        let comment = serde_json::json!({
            "comment": {"html_url": "https://github.com/o/r/pull/2#issuecomment-1"},
            "pull_request": {"html_url": "https://github.com/o/r/pull/2"}
        });
        assert_eq!(
            link_of(&comment).as_deref(),
            Some("https://github.com/o/r/pull/2#issuecomment-1")
        );
        let push = serde_json::json!({
            "compare": "https://github.com/o/r/compare/a...b",
            "repository": {"html_url": "https://github.com/o/r"}
        });
        assert_eq!(
            link_of(&push).as_deref(),
            Some("https://github.com/o/r/compare/a...b")
        );
        assert_eq!(link_of(&serde_json::json!({})), None);
    }

    #[test]
    fn failures_of_jobs_deployments_and_statuses_are_errors() {
        let job =
            serde_json::json!({"action": "completed", "workflow_job": {"conclusion": "failure"}});
        assert_eq!(assess("workflow_job", &job).severity, Some(Severity::Error));
        let ok =
            serde_json::json!({"action": "completed", "workflow_job": {"conclusion": "success"}});
        assert_eq!(assess("workflow_job", &ok).severity, None);
        let dep = serde_json::json!({"deployment_status": {"state": "error"}});
        assert_eq!(
            assess("deployment_status", &dep).severity,
            Some(Severity::Error)
        );
        let status = serde_json::json!({"state": "failure"});
        assert_eq!(assess("status", &status).severity, Some(Severity::Error));
        assert_eq!(assess("push", &status), Assessment::default());
    }

    #[test]
    fn security_alerts_take_their_severity_and_a_key_and_close_when_fixed() {
        let dependabot = |action: &str, severity: &str| {
            serde_json::json!({
                "action": action,
                "alert": {"number": 7, "security_advisory": {"severity": severity}},
                "repository": {"full_name": "o/r"}
            })
        };
        let a = assess("dependabot_alert", &dependabot("created", "medium"));
        assert_eq!(a.severity, Some(Severity::Warning));
        assert_eq!(a.key.as_deref(), Some("dependabot/o/r/7"));
        assert_eq!(a.status, Some("firing"));
        assert_eq!(
            assess("dependabot_alert", &dependabot("created", "critical")).severity,
            Some(Severity::Error)
        );
        let fixed = assess("dependabot_alert", &dependabot("fixed", "critical"));
        assert_eq!(fixed.severity, Some(Severity::Info));
        assert_eq!(fixed.status, Some("resolved"));
        assert_eq!(fixed.key, a.key, "the fix closes the same alert");
        let code = serde_json::json!({
            "action": "created",
            "alert": {"number": 3, "rule": {"severity": "note"}},
            "repository": {"full_name": "o/r"}
        });
        assert_eq!(
            assess("code_scanning_alert", &code).severity,
            Some(Severity::Info)
        );
        let secret = serde_json::json!({"action": "created", "alert": {"number": 1}, "repository": {"full_name": "o/r"}});
        let s = assess("secret_scanning_alert", &secret);
        assert_eq!(
            s.severity,
            Some(Severity::Error),
            "a leaked secret is at least an error"
        );
        assert_eq!(s.key.as_deref(), Some("secret-scanning/o/r/1"));
    }

    #[test]
    fn a_workflow_run_without_a_name_is_named_by_its_title() {
        let p = serde_json::json!({"action": "completed", "workflow_run": {"name": "", "display_title": "Fix login", "conclusion": "success"}});
        assert_eq!(
            describe("workflow_run", &p).0,
            "Fix login completed: success"
        );
        let p = serde_json::json!({"action": "completed", "workflow_run": {"name": "", "conclusion": "success"}});
        assert_eq!(
            describe("workflow_run", &p).0,
            "workflow completed: success"
        );
    }
}
