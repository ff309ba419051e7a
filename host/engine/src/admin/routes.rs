//! The admin API's routes as documentation: `docs/api.md` is generated from [`ROUTES`] by the
//! test below, and another test sends each route to the router, so the table, the page and the
//! router cannot drift apart.

use super::tokens::Role;

/// One route of the API.
pub struct RouteDoc {
    /// The HTTP method.
    pub method: &'static str,
    /// The path under [`super::PREFIX`], with `{placeholders}`.
    pub path: &'static str,
    /// The role a token needs.
    pub role: Role,
    /// What it does.
    pub summary: &'static str,
    /// What it answers with (a JSON shape in words).
    pub answer: &'static str,
}

/// Every route of `/api/v1`.
pub const ROUTES: &[RouteDoc] = &[
    RouteDoc {
        method: "GET",
        path: "/whoami",
        role: Role::Read,
        summary: "the name and role of the token the request carries (the status page asks, to \
                  show replay and purge to an admin token only)",
        answer: "`{name, role}`",
    },
    RouteDoc {
        method: "GET",
        path: "/recent?limit=N&pipeline=P",
        role: Role::Read,
        summary: "the messages accepted most recently (of one pipeline, or of all), newest \
                  first, with where each is now, read from the message trace: `queued`, \
                  `retrying` (with the last error), `delivered` (to which sinks), `dropped` (by \
                  which filter), `dead_lettered`, `filter_failed`, `not_stored`, `routed_nowhere`, \
                  `split`; `limit` defaults to 25, at most 500",
        answer: "an array of `{pipeline, id, accepted_at_ms, summary, severity, state, detail, \
                 last_at_ms}`",
    },
    RouteDoc {
        method: "GET",
        path: "/problems",
        role: Role::Read,
        summary: "the open problems, as the status page and `tocsin status` list them: a \
                  pipeline failed (with why) or paused, stored messages without a pipeline \
                  file, dead letters per queue, a queue whose oldest message waited over 5 \
                  minutes, a recent message being retried (with its error)",
        answer: "an array of `{level, text}`, `level` `bad` or `warn`; empty when all is well",
    },
    RouteDoc {
        method: "GET",
        path: "/pipelines",
        role: Role::Read,
        summary: "every pipeline: its state (`starting`, `running`, `failed` with the reason, \
                  `disabled`, `stopped`, `no_file` for stored data without a file), counters \
                  since the process started (kept across reloads), each queue's depth and oldest message's age, dead letters per \
                  queue, bytes held and queue budget, and each stage's plugin with the sha256 \
                  of the component loaded",
        answer: "an array of `{name, state, reason, counters, queues: [{queue, depth, \
                 oldest_age_seconds}], dead_letters, stored_bytes, queue_budget, plugins: \
                 [{stage, plugin, sha256}]}`",
    },
    RouteDoc {
        method: "GET",
        path: "/pipelines/{pipeline}",
        role: Role::Read,
        summary: "one pipeline, as above",
        answer: "one object as above; 404 for an unknown pipeline",
    },
    RouteDoc {
        method: "POST",
        path: "/pipelines/{pipeline}/pause",
        role: Role::Admin,
        summary: "stops a pipeline between messages and keeps it stopped, across restarts, until \
                  resumed (kept in `DATA/paused.json`; its file is not touched): its ingest \
                  answers 503, its schedule does not fire, its queues wait",
        answer: "`{\"done\": \"…\"}`; 404 for an unknown pipeline",
    },
    RouteDoc {
        method: "POST",
        path: "/pipelines/{pipeline}/resume",
        role: Role::Admin,
        summary: "starts a paused pipeline from its file as it is now",
        answer: "`{\"done\": \"…\"}`; 409 when it is not paused, or when it failed to start (with why)",
    },
    RouteDoc {
        method: "POST",
        path: "/pipelines/{pipeline}/run",
        role: Role::Admin,
        summary: "has a scheduled source poll now, besides its schedule",
        answer: "`{\"done\": \"…\"}`; 409 for an ingest pipeline or one not running",
    },
    RouteDoc {
        method: "GET",
        path: "/queues",
        role: Role::Read,
        summary: "the depths of every pipeline with anything stored (what `tocsin queue ls` prints)",
        answer: "an array of `{pipeline, ingress, sinks: {name: depth}, dead_letters: {queue: count}}`",
    },
    RouteDoc {
        method: "GET",
        path: "/pipelines/{pipeline}/queues/{queue}?limit=N",
        role: Role::Read,
        summary: "the oldest messages of a queue (`ingress` or a sink's name), left in place; \
                  `limit` defaults to 10, at most 1000",
        answer: "an array of `{seq, envelope: {message, attempts, last_error, not_before_ms, \
                 enqueued_ms}}`",
    },
    RouteDoc {
        method: "GET",
        path: "/silences",
        role: Role::Read,
        summary: "every silence kept (expired ones for 5 days), with its state now (what \
                  `tocsin silence ls --all` prints)",
        answer: "an array of `{id, matchers, starts_at_ms, ends_at_ms, created_by, comment, \
                 sinks, created_at_ms, state}`, `state` `pending`, `active` or `expired`; \
                 `matchers` as written (`host=db1`)",
    },
    RouteDoc {
        method: "POST",
        path: "/silences",
        role: Role::Admin,
        summary: "makes a silence from `{matchers: [\"host=db1\", …], duration: \"2h\" or \
                  ends_at_ms, starts_at_ms (default now), comment, created_by (default the \
                  token's name), sinks: [\"matrix\" or \"pipeline/matrix\"] (default all)}`; \
                  it mutes from its start, in every pipeline, the messages all its matchers \
                  pick (`=`, `!=`, `=~`, `!~`; a missing label is empty; a regex matches the \
                  whole value); refused: no matchers, matchers that pick everything, no \
                  comment, an end in the past",
        answer: "201 and the silence as listed above; 400 with the reason",
    },
    RouteDoc {
        method: "DELETE",
        path: "/silences/{id}",
        role: Role::Admin,
        summary: "ends a silence now (an id may be shortened to a prefix naming one): what it \
                  held back and is still open is announced",
        answer: "the silence as listed above; 404 for an unknown id, 400 when it has expired \
                 already",
    },
    RouteDoc {
        method: "GET",
        path: "/alerts?pipeline=P",
        role: Role::Read,
        summary: "the open-alert register of one pipeline, or of all: each alert open (and \
                  each resolved one something is still held for), what each sink was last \
                  handed of it and what a silence holds back",
        answer: "an array of `{pipeline, identity, open, since_ms, seen_ms, summary, \
                 severity, labels, handed: {sink: open}, held: {sink: {silence, message}}}`",
    },
    RouteDoc {
        method: "POST",
        path: "/alerts/ack",
        role: Role::Admin,
        summary: "acknowledges an open alert from `{pipeline, alert, comment, duration: \
                  \"4h\" (default: until it resolves), by (default the token's name)}` \
                  (`alert`: its identity as `GET /alerts` lists it, or a prefix naming one): \
                  its reminders (messages no more severe than when acknowledged, to sinks \
                  already told it is open) are kept back — counted as \
                  `event=\"acknowledged\"` — until it resolves or the acknowledgement lapses; \
                  what does go out of it (an escalation, its resolution) carries the label \
                  `acknowledged_by`",
        answer: "`{pipeline, identity, …the record as GET /alerts lists it, with ack: {by, \
                 comment, at_ms, until_ms, severity}}`; 400 without a comment or for a \
                 prefix naming several; 404 for no such open alert",
    },
    RouteDoc {
        method: "GET",
        path: "/pipelines/{pipeline}/expected",
        role: Role::Read,
        summary: "the reporters a pipeline with `expect` knows (what `tocsin expected ls` \
                  prints): each one's key labels, when its latest report entered the pipeline, \
                  when it is absent if nothing comes (while the pipeline runs) and since when \
                  an absence alert of it is open",
        answer: "an array of `{reporter, labels, last_seen_ms, due_ms, absent_since_ms}` \
                 (`reporter` as `host=db1`, or `source`; the last three left out when not \
                 known or not open)",
    },
    RouteDoc {
        method: "DELETE",
        path: "/pipelines/{pipeline}/expected/{reporter}",
        role: Role::Admin,
        summary: "stops expecting a reporter that is gone for good: its records are deleted \
                  and an open absence alert of it is resolved (`no longer expected`, naming \
                  the token); it is expected again once it reports",
        answer: "`{pipeline, forgotten}`; 404 when the pipeline knows no such reporter",
    },
    RouteDoc {
        method: "GET",
        path: "/dead-letters?pipeline=P",
        role: Role::Read,
        summary: "the dead letters of one pipeline, or of all (what `tocsin dlq ls` prints)",
        answer: "an array of `{pipeline, queue, seq, attempts, id, last_error}`",
    },
    RouteDoc {
        method: "GET",
        path: "/trace/{id}?pipeline=P",
        role: Role::Read,
        summary: "every step message `id` took (and the messages a filter split it into), oldest \
                  first: `accepted` (how: the request and its client, or the poll), each \
                  filter's `passed`, `dropped`, `rewritten` or `split`, `filter_failed`, \
                  `routed` (which sinks' `match` took it, which not), `attempt_failed` (with the \
                  error), `delivered`, `dead_lettered`, `replayed`, `not_stored` (answered 503); kept for `--trace-retention` \
                  (7 days) and `--trace-max` records per pipeline",
        answer: "an array of `{pipeline, at_ms, id, step, …}` (the fields of each step: `via`, \
                 `filter`, `into`, `to`, `not_to`, `sink`, `attempt`, `error`, `retry_at_ms`, \
                 `queue`); empty when nothing is known",
    },
    RouteDoc {
        method: "GET",
        path: "/pipelines/{pipeline}/history",
        role: Role::Read,
        summary: "the metric series a pipeline's messages carried (per `host` label and metric \
                  name: sysmetrics' CPU, memory, load, temperature, disk; a backup's age and \
                  size; any decoder's numbers), taken as messages enter it",
        answer: "an array of `{host, metric, last_at_ms, last_value}`",
    },
    RouteDoc {
        method: "GET",
        path: "/pipelines/{pipeline}/history/points?host=H&metric=M&since=24h&step=5m",
        role: Role::Read,
        summary: "the points of one series over `since` (default 24h): every point for 6 hours \
                  or less unless `step` is given, else averages over `step` (at least 5 minutes \
                  where only 5-minute points are left, and wide enough for at most 2000 \
                  points). Every point is kept a day, 5-minute averages with min and max 30 days",
        answer: "an array of `{at_ms, avg, min, max}`",
    },
    RouteDoc {
        method: "GET",
        path: "/pipelines/{pipeline}/dead-letters/{queue}/{seq}",
        role: Role::Read,
        summary: "one dead letter whole (`queue` is a sink's name, or `@filters`)",
        answer: "`{message, attempts, last_error, not_before_ms, enqueued_ms}`; 404 when not there",
    },
    RouteDoc {
        method: "POST",
        path: "/pipelines/{pipeline}/dead-letters/{queue}/replay",
        role: Role::Admin,
        summary: "moves dead letters back to the tail of their queue with a fresh attempt count, \
                  while the server runs: body `{\"seqs\": [..]}` for some, `{\"all\": true}` for all",
        answer: "`{\"replayed\": n}`; 400 for a body naming neither or both; 404 for a seq not \
                 there (those named before it moved)",
    },
    RouteDoc {
        method: "POST",
        path: "/pipelines/{pipeline}/dead-letters/{queue}/purge",
        role: Role::Admin,
        summary: "deletes dead letters: body as for replay",
        answer: "`{\"purged\": n}` (a seq not there counts 0)",
    },
];

/// `docs/api.md`: how to turn the API on, then [`ROUTES`] as a table.
pub fn reference() -> String {
    let mut out = String::from(
        "<!-- Generated from host/engine/src/admin/routes.rs by the test `api_reference_is_current`; \
         do not edit. Regenerate: TOCSIN_BLESS=1 cargo test -p tocsin --lib api_reference -->\n\n\
         # The admin API\n\n\
         `/api/v1/…` on the main listener (`--listen`) shows the running server's pipelines, \
         queues and dead letters as JSON, and replays or purges dead letters **while it runs**. \
         `tocsin dlq` and `tocsin queue` use it when a server runs on their data directory.\n\n\
         ## Turning it on\n\n\
         The API is off until `tocsin run` is given `--api-tokens FILE`, a TOML file of named \
         tokens; at start tocsin logs whether it is on and how many tokens of each role it \
         has. Each token has a role — `read` may call every `GET`, `admin` may also replay \
         and purge — and its value from the environment or a file, as every secret:\n\n\
         ```toml\n\
         [[token]]\n\
         name   = \"dashboard\"\n\
         role   = \"read\"\n\
         secret = \"file:dashboard.token\"   # relative to this file\n\n\
         [[token]]\n\
         name   = \"alice\"\n\
         role   = \"admin\"\n\
         secret = \"env:TOCSIN_ALICE_TOKEN\"\n\
         ```\n\n\
         Make a value with `openssl rand -hex 32`; values shorter than 16 characters, two \
         tokens with one value and names other than letters, digits, `.`, `_` and `-` are \
         refused at start. A request carries the value as `Authorization: Bearer <value>`; \
         every token is compared in constant time. Without a token or with an unknown one \
         the answer is 401, with a `read` token on an `admin` route 403, and every request \
         to the API — let in or not — is written to the log under the target \
         `tocsin::access` with the time, the token's **name** (never its value), the \
         client's address, the method, the path and the status.\n\n\
         ```sh\n\
         curl -H \"Authorization: Bearer $(cat alice.token)\" http://127.0.0.1:8470/api/v1/dead-letters\n\
         curl -H \"Authorization: Bearer $(cat alice.token)\" -H 'Content-Type: application/json' \\\n\
         \x20    -d '{\"seqs\": [42]}' http://127.0.0.1:8470/api/v1/pipelines/backups/dead-letters/matrix/replay\n\
         ```\n\n\
         Errors are `{\"error\": \"…\"}` with their status; a malformed body is a 4xx with \
         the reason.\n\n\
         ## Routes\n\n\
         | method | path under `/api/v1` | token | what it does | answer |\n\
         | --- | --- | --- | --- | --- |\n",
    );
    for route in ROUTES {
        out += &format!(
            "| `{}` | `{}` | {} | {} | {} |\n",
            route.method,
            route.path,
            route.role.as_str(),
            route
                .summary
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            route
                .answer
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::super::tokens::{ApiTokens, Role};
    use super::*;

    /// `docs/api.md` is generated from [`ROUTES`]: regenerate it with
    /// `TOCSIN_BLESS=1 cargo test -p tocsin --lib api_reference`.
    #[test]
    fn api_reference_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api.md");
        let generated = reference();
        if std::env::var_os("TOCSIN_BLESS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/api.md is out of date: TOCSIN_BLESS=1 cargo test -p tocsin --lib api_reference"
        );
    }

    /// Every documented route is served (not the fallback's "no such API route"), and a token
    /// of the documented role is enough for it while one below is not.
    #[tokio::test]
    async fn every_documented_route_is_routed_with_its_role() {
        let dir = tempfile::tempdir().unwrap();
        let queue: Arc<dyn tocsin_queue::QueueStore> =
            tocsin_queue::SledStore::open(dir.path()).unwrap();
        let tokens = ApiTokens::from_values(vec![
            ("reader".into(), Role::Read, "r".repeat(16)),
            ("admin".into(), Role::Admin, "a".repeat(16)),
        ]);
        // Commands are answered as the server's loop would for an unknown pipeline.
        let (commands, mut requests) =
            tokio::sync::mpsc::channel::<crate::manager::CommandRequest>(4);
        tokio::spawn(async move {
            while let Some((_, reply)) = requests.recv().await {
                let _ = reply.send(Err((404, "no pipeline named `p`".into())));
            }
        });
        let tracer =
            crate::trace::Tracer::new(queue.clone(), std::time::Duration::from_secs(60), 10);
        let history = crate::history::History::new(queue.clone());
        let silences = crate::silences::Silences::load(queue.clone()).unwrap();
        let app = super::super::router(
            Some(Arc::new(tokens)),
            super::super::ServerParts {
                board: crate::manager::new_board(),
                queue,
                commands,
                tracer,
                history,
                silences,
                expectations: crate::absence::Registry::default(),
                register_locks: crate::open_alerts::Locks::default(),
            },
        );
        let send = |method: &str, path: &str, token: &str| {
            let path = path
                .split('?')
                .next()
                .unwrap()
                .replace("{pipeline}", "p")
                .replace("{queue}", "out")
                .replace("{seq}", "1")
                .replace("{id}", "0123")
                .replace("{reporter}", "host=db1");
            let request = Request::builder()
                .method(method)
                .uri(format!("{}{path}", super::super::PREFIX))
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(r#"{"all": true}"#))
                .unwrap();
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await.unwrap();
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        for route in ROUTES {
            let token = match route.role {
                Role::Read => "r".repeat(16),
                Role::Admin => "a".repeat(16),
            };
            let (status, body) = send(route.method, route.path, &token).await;
            assert!(
                !body.contains("no such API route") && status != StatusCode::METHOD_NOT_ALLOWED,
                "{} {} is not routed: {status} {body}",
                route.method,
                route.path
            );
            assert_ne!(
                status,
                StatusCode::FORBIDDEN,
                "{} {}",
                route.method,
                route.path
            );
            if route.role == Role::Admin {
                let (status, _) = send(route.method, route.path, &"r".repeat(16)).await;
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{} {}",
                    route.method,
                    route.path
                );
            }
            let (status, _) = send(route.method, route.path, "not-a-token").await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{} {}",
                route.method,
                route.path
            );
        }
        let (status, body) = send("GET", "/nothing-here", &"r".repeat(16)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("no such API route"), "{body}");
    }
}
