//! One sentence per event family, in the words GitHub's own pages use: who did what to which
//! item ("ada published release v1.4.0", "Dependabot alert #2 created: lodash — Prototype
//! Pollution (high) in package.json"). The families with a severity or a state of their own
//! (push, pull requests, issues, runs and checks) are in `describe`; this covers the rest. A
//! field a payload lacks falls back to a plainer word, never to an empty name.

use serde_json::Value;

use crate::s;

/// The longest title or comment quoted.
const QUOTE: usize = 100;

/// Who did it: the sender's login.
fn who(p: &Value) -> &str {
    s(p, &["sender", "login"]).unwrap_or("someone")
}

/// A number at `pointer`, as `#12`, or nothing.
fn number(p: &Value, pointer: &str) -> String {
    p.pointer(pointer)
        .and_then(Value::as_u64)
        .map_or_else(String::new, |n| format!(" #{n}"))
}

/// The text at `pointer`: its first line, cut at [`QUOTE`] characters.
fn quote(p: &Value, pointer: &str) -> Option<String> {
    let text = p.pointer(pointer)?.as_str()?.trim();
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return None;
    }
    Some(match line.char_indices().nth(QUOTE) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    })
}

/// A string at `pointer`, if not empty.
fn text<'a>(p: &'a Value, pointer: &str) -> Option<&'a str> {
    p.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
}

/// `: title` when there is one.
fn titled(title: Option<String>) -> String {
    title.map_or_else(String::new, |t| format!(": {t}"))
}

/// An action as words: `review_requested` → `review requested`.
fn words(action: &str) -> String {
    action.replace('_', " ")
}

/// The item a comment or review is on: `pull request #12: Fix login` or `issue #7: …`.
fn issue_or_pull(p: &Value) -> String {
    let kind = if p.pointer("/issue/pull_request").is_some() {
        "pull request"
    } else {
        "issue"
    };
    format!(
        "{kind}{}{}",
        number(p, "/issue/number"),
        titled(quote(p, "/issue/title"))
    )
}

fn pull_request(p: &Value) -> String {
    format!(
        "pull request{}{}",
        number(p, "/pull_request/number"),
        titled(quote(p, "/pull_request/title"))
    )
}

/// A push, as the repository's activity says it: `ada pushed 2 commits to main`, `ada
/// pushed tag v1.4.0`, `ada deleted branch old`.
pub(crate) fn push(p: &Value) -> String {
    let who = s(p, &["pusher", "name"])
        .or(s(p, &["sender", "login"]))
        .unwrap_or("someone");
    let r#ref = text(p, "/ref").unwrap_or("?");
    let (kind, name) = match (
        r#ref.strip_prefix("refs/heads/"),
        r#ref.strip_prefix("refs/tags/"),
    ) {
        (Some(branch), _) => ("branch", branch),
        (_, Some(tag)) => ("tag", tag),
        _ => ("ref", r#ref),
    };
    let flag = |field: &str| p.get(field).and_then(Value::as_bool).unwrap_or(false);
    let commits = p
        .get("commits")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if flag("deleted") {
        format!("{who} deleted {kind} {name}")
    } else if commits == 0 || kind == "tag" {
        format!("{who} pushed {kind} {name}")
    } else {
        format!(
            "{who} pushed {commits} commit{} to {name}",
            if commits == 1 { "" } else { "s" }
        )
    }
}

/// `ada merged pull request #12: Fix login`, `ada opened pull request #13: …`.
pub(crate) fn pull_request_event(action: &str, p: &Value) -> String {
    let merged = p.pointer("/pull_request/merged").and_then(Value::as_bool) == Some(true);
    let verb = match action {
        "closed" if merged => "merged".to_string(),
        other => words(other),
    };
    format!("{} {verb} {}", who(p), pull_request(p))
}

/// `ada opened issue #7: Spelling error`.
pub(crate) fn issues_event(action: &str, p: &Value) -> String {
    format!(
        "{} {} issue{}{}",
        who(p),
        words(action),
        number(p, "/issue/number"),
        titled(quote(p, "/issue/title"))
    )
}

/// The sentence of `event` (with `action`), for the families `describe` leaves generic.
pub(crate) fn sentence(event: &str, action: &str, p: &Value) -> Option<String> {
    let who = who(p);
    let repo = s(p, &["repository", "full_name"]).unwrap_or("the repository");
    let act = words(action);
    Some(match event {
        "branch_protection_rule" => format!(
            "{who} {act} the branch protection rule {}",
            text(p, "/rule/name").unwrap_or("of a branch")
        ),
        "code_scanning_alert" => format!(
            "code scanning alert{} {act}: {}{}",
            number(p, "/alert/number"),
            quote(p, "/alert/rule/description")
                .or(quote(p, "/alert/rule/id"))
                .unwrap_or_else(|| "a finding".into()),
            text(p, "/alert/rule/security_severity_level")
                .or(text(p, "/alert/rule/severity"))
                .map_or_else(String::new, |sev| format!(" ({sev})")),
        ),
        "commit_comment" => format!(
            "{who} commented on commit {}{}",
            text(p, "/comment/commit_id").map_or("?", |id| &id[..id.len().min(7)]),
            titled(quote(p, "/comment/body"))
        ),
        "create" | "delete" => format!(
            "{who} {} {} {}",
            if event == "create" {
                "created"
            } else {
                "deleted"
            },
            text(p, "/ref_type").unwrap_or("ref"),
            text(p, "/ref").unwrap_or("?")
        ),
        "dependabot_alert" => format!(
            "Dependabot alert{} {act}: {} — {}{}{}",
            number(p, "/alert/number"),
            text(p, "/alert/dependency/package/name")
                .or(text(p, "/alert/security_vulnerability/package/name"))
                .unwrap_or("a dependency"),
            quote(p, "/alert/security_advisory/summary").unwrap_or_else(|| "an advisory".into()),
            text(p, "/alert/security_advisory/severity")
                .map_or_else(String::new, |sev| format!(" ({sev})")),
            text(p, "/alert/dependency/manifest_path")
                .map_or_else(String::new, |m| format!(" in {m}")),
        ),
        "deploy_key" => format!(
            "{who} {act} the deploy key {}",
            text(p, "/key/title").unwrap_or("of the repository")
        ),
        "deployment" => format!(
            "{who} {act} a deployment of {} to {}",
            text(p, "/deployment/ref").unwrap_or("?"),
            text(p, "/deployment/environment").unwrap_or("an environment")
        ),
        "deployment_review" => format!(
            "{} {act} a deployment{}",
            text(p, "/approver/login").unwrap_or(who),
            text(p, "/workflow_run/name")
                .or(text(p, "/environment"))
                .map_or_else(String::new, |w| format!(" of {w}"))
        ),
        "deployment_status" => format!(
            "deployment to {} {}{}",
            text(p, "/deployment/environment").unwrap_or("an environment"),
            words(text(p, "/deployment_status/state").unwrap_or(action)),
            titled(quote(p, "/deployment_status/description"))
        ),
        "discussion" => format!(
            "{who} {act} discussion{}{}",
            number(p, "/discussion/number"),
            titled(quote(p, "/discussion/title"))
        ),
        "discussion_comment" => format!(
            "{who} {} discussion{}{}",
            if action == "created" {
                "commented on".to_string()
            } else {
                format!("{act} a comment on")
            },
            number(p, "/discussion/number"),
            titled(quote(p, "/discussion/title"))
        ),
        "fork" => format!(
            "{who} forked {repo} to {}",
            text(p, "/forkee/full_name").unwrap_or("a repository of their own")
        ),
        "github_app_authorization" => format!("{who} {act} their authorization of a GitHub App"),
        "gollum" => {
            let pages = p.get("pages").and_then(Value::as_array);
            let first = pages.and_then(|pages| pages.first());
            let more = pages.map_or(0, |pages| pages.len().saturating_sub(1));
            format!(
                "{who} {} the wiki page {}{}",
                first
                    .and_then(|page| s(page, &["action"]))
                    .unwrap_or("changed"),
                first.and_then(|page| s(page, &["title"])).unwrap_or("?"),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )
        }
        "installation" => format!(
            "{who} {act} the GitHub App {}",
            text(p, "/installation/app_slug").unwrap_or("installation")
        ),
        "installation_repositories" => {
            let count = |field: &str| p.get(field).and_then(Value::as_array).map_or(0, Vec::len);
            let (n, direction) = if action == "removed" {
                (count("repositories_removed"), "from")
            } else {
                (count("repositories_added"), "to")
            };
            format!(
                "{who} {act} {n} {} {direction} the GitHub App {}",
                if n == 1 { "repository" } else { "repositories" },
                text(p, "/installation/app_slug").unwrap_or("installation"),
            )
        }
        "issue_comment" => format!(
            "{who} {} {}",
            if action == "created" {
                "commented on".to_string()
            } else {
                format!("{act} a comment on")
            },
            issue_or_pull(p)
        ),
        "label" => format!(
            "{who} {act} the label {}",
            text(p, "/label/name").unwrap_or("?")
        ),
        "marketplace_purchase" => {
            let plan = text(p, "/marketplace_purchase/plan/name").unwrap_or("Marketplace");
            format!(
                "{} {act} the {plan}{}",
                text(p, "/marketplace_purchase/account/login").unwrap_or(who),
                if plan.to_ascii_lowercase().ends_with("plan") {
                    ""
                } else {
                    " plan"
                }
            )
        }
        "member" => format!(
            "{who} {act} {} as a collaborator on {repo}",
            text(p, "/member/login").unwrap_or("someone")
        ),
        "membership" => format!(
            "{who} {act} {} {} the team {}",
            text(p, "/member/login").unwrap_or("someone"),
            if action == "removed" { "from" } else { "to" },
            text(p, "/team/name").unwrap_or("?")
        ),
        "merge_group" => format!(
            "merge group {act} for {}",
            text(p, "/merge_group/head_ref")
                .or(text(p, "/merge_group/base_ref"))
                .unwrap_or("a branch")
        ),
        "meta" => format!("{who} {act} this webhook"),
        "milestone" => format!(
            "{who} {act} the milestone {}",
            text(p, "/milestone/title").unwrap_or("?")
        ),
        "org_block" => format!(
            "{who} {act} {}",
            text(p, "/blocked_user/login").unwrap_or("a user")
        ),
        "organization" => {
            let org = text(p, "/organization/login").unwrap_or("?");
            let user = text(p, "/membership/user/login")
                .or(text(p, "/invitation/login"))
                .unwrap_or("someone");
            match action {
                "member_added" => format!("{who} added {user} to the organization {org}"),
                "member_removed" => format!("{who} removed {user} from the organization {org}"),
                "member_invited" => format!("{who} invited {user} to the organization {org}"),
                _ => format!("{who} {act} the organization {org}"),
            }
        }
        "package" | "registry_package" => {
            let root = if event == "package" {
                "/package"
            } else {
                "/registry_package"
            };
            format!(
                "{who} {act} the package {}{}",
                text(p, &format!("{root}/name")).unwrap_or("?"),
                text(p, &format!("{root}/package_version/version"))
                    .map_or_else(String::new, |v| format!(" {v}"))
            )
        }
        "page_build" => format!(
            "GitHub Pages build: {}{}",
            text(p, "/build/status").unwrap_or("finished"),
            titled(quote(p, "/build/error/message"))
        ),
        "project" => format!(
            "{who} {act} the project {}",
            text(p, "/project/name").unwrap_or("?")
        ),
        "project_card" => format!(
            "{who} {act} a project card{}",
            titled(quote(p, "/project_card/note"))
        ),
        "project_column" => format!(
            "{who} {act} the project column {}",
            text(p, "/project_column/name").unwrap_or("?")
        ),
        "projects_v2_item" => format!(
            "{who} {act} a project item{}",
            text(p, "/projects_v2_item/content_type")
                .map_or_else(String::new, |kind| format!(" ({kind})"))
        ),
        "public" => format!("{who} made {repo} public"),
        "pull_request_review" => {
            let verb = match (action, text(p, "/review/state")) {
                ("submitted", Some("approved")) => "approved".to_string(),
                ("submitted", Some("changes_requested")) => "requested changes on".to_string(),
                ("submitted", _) => "reviewed".to_string(),
                _ => format!("{act} a review of"),
            };
            format!("{who} {verb} {}", pull_request(p))
        }
        "pull_request_review_comment" => format!(
            "{who} {} {}",
            if action == "created" {
                "commented on".to_string()
            } else {
                format!("{act} a review comment on")
            },
            pull_request(p)
        ),
        "pull_request_review_thread" => {
            format!("{who} {act} a review thread on {}", pull_request(p))
        }
        "release" => format!(
            "{who} {act} release {}{}",
            text(p, "/release/tag_name").unwrap_or("?"),
            text(p, "/release/name")
                .filter(|name| Some(*name) != text(p, "/release/tag_name"))
                .map_or_else(String::new, |name| format!(": {name}"))
        ),
        "repository" => format!("{who} {act} the repository {repo}"),
        "repository_vulnerability_alert" => format!(
            "vulnerability alert {}: {} {}{}",
            match action {
                "create" => "created",
                "dismiss" => "dismissed",
                "resolve" => "resolved",
                "reopen" => "reopened",
                other => other,
            },
            text(p, "/alert/affected_package_name").unwrap_or("a dependency"),
            text(p, "/alert/affected_range").unwrap_or(""),
            text(p, "/alert/severity").map_or_else(String::new, |sev| format!(" ({sev})"))
        ),
        "secret_scanning_alert" => format!(
            "secret scanning alert{} {act}: {}",
            number(p, "/alert/number"),
            text(p, "/alert/secret_type_display_name")
                .or(text(p, "/alert/secret_type"))
                .unwrap_or("a secret")
        ),
        "security_advisory" => format!(
            "security advisory {act}: {}{}",
            quote(p, "/security_advisory/summary").unwrap_or_else(|| "an advisory".into()),
            text(p, "/security_advisory/severity")
                .map_or_else(String::new, |sev| format!(" ({sev})"))
        ),
        "sponsorship" => format!(
            "{} {act} a sponsorship of {}{}",
            text(p, "/sponsorship/sponsor/login").unwrap_or(who),
            text(p, "/sponsorship/sponsorable/login").unwrap_or("someone"),
            text(p, "/sponsorship/tier/name").map_or_else(String::new, |t| format!(" ({t})"))
        ),
        "star" => format!(
            "{who} {} {repo}",
            if action == "deleted" {
                "unstarred"
            } else {
                "starred"
            }
        ),
        "status" => format!(
            "commit {} {}{}{}",
            text(p, "/sha").map_or("?", |sha| &sha[..sha.len().min(7)]),
            text(p, "/state").unwrap_or("?"),
            text(p, "/context").map_or_else(String::new, |c| format!(": {c}")),
            text(p, "/description").map_or_else(String::new, |d| format!(" — {d}"))
        ),
        "team" => {
            let team = text(p, "/team/name").unwrap_or("?");
            match action {
                "added_to_repository" => format!("{who} added the team {team} to {repo}"),
                "removed_from_repository" => {
                    format!("{who} removed the team {team} from {repo}")
                }
                _ => format!("{who} {act} the team {team}"),
            }
        }
        "team_add" => format!(
            "the team {} was given access to {repo}",
            text(p, "/team/name").unwrap_or("?")
        ),
        "watch" => format!("{who} starred {repo}"),
        "workflow_job" => format!(
            "{} {act}: {}",
            text(p, "/workflow_job/name").unwrap_or("a job"),
            text(p, "/workflow_job/conclusion")
                .or(text(p, "/workflow_job/status"))
                .unwrap_or("in progress")
        ),
        _ => return None,
    })
}
