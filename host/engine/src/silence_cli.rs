//! `tocsin silence add|ls|expire`: through the admin API of the running server, or in the
//! store when none runs (a silence made before the start mutes from the first message).

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use tocsin::silences::{format_silences, NewSilence, SilenceView, Silences};
use tocsin_queue::now_ms;

use crate::Target;

/// What `tocsin silence` does.
#[derive(Subcommand)]
pub enum SilenceAction {
    /// Mute the messages every MATCHER picks until the silence ends. Matchers are written as
    /// Alertmanager writes them: host=db1, env!=test, alertname=~"Disk.*", job!~"batch|cron"
    /// (a missing label is the empty value; a regex matches the whole value).
    Add {
        /// The matchers; a message is muted when all of them pick it.
        #[arg(required = true)]
        matchers: Vec<String>,
        /// How long from its start, e.g. 2h, 90m, 1d.
        #[arg(
            long = "for",
            conflicts_with = "until",
            required_unless_present = "until"
        )]
        duration: Option<String>,
        /// When it ends instead, RFC 3339: 2026-12-06T14:00:00Z.
        #[arg(long)]
        until: Option<String>,
        /// When it begins, RFC 3339 [default: now].
        #[arg(long)]
        from: Option<String>,
        /// Why it is there (required): a ticket, "kernel upgrade".
        #[arg(long, short)]
        comment: String,
        /// Who made it [default: the API token's name; without a server, $USER].
        #[arg(long)]
        author: Option<String>,
        /// Only this sink: NAME (that sink of every pipeline) or PIPELINE/NAME (repeat)
        /// [default: every sink].
        #[arg(long = "sink")]
        sinks: Vec<String>,
    },
    /// List the silences in force or to come.
    Ls {
        /// Expired ones too (kept for 5 days).
        #[arg(long)]
        all: bool,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// End a silence now: what it held back and is still open is announced.
    Expire {
        /// Its id, or enough of its start to name one.
        id: String,
    },
}

/// Runs `action` against `target`.
pub fn run(target: Target, action: SilenceAction) -> anyhow::Result<ExitCode> {
    match action {
        SilenceAction::Add {
            matchers,
            duration,
            until,
            from,
            comment,
            author,
            sinks,
        } => {
            let new = NewSilence {
                matchers,
                starts_at_ms: from.as_deref().map(|t| time_ms("--from", t)).transpose()?,
                ends_at_ms: until
                    .as_deref()
                    .map(|t| time_ms("--until", t))
                    .transpose()?,
                duration,
                comment,
                created_by: author,
                sinks,
            };
            let made = act(target, Act::Add(new))?;
            let s = &made[0].silence;
            println!(
                "silence {} mutes {} until {} (by {})",
                s.id,
                tocsin::silences::matchers_text(&s.matchers),
                chrono::DateTime::from_timestamp_millis(s.ends_at_ms as i64)
                    .map_or_else(|| s.ends_at_ms.to_string(), |t| t.to_rfc3339()),
                s.created_by
            );
        }
        SilenceAction::Ls { all, json } => {
            let views = act(target, Act::List)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                print!("{}", format_silences(&views, all));
            }
        }
        SilenceAction::Expire { id } => {
            let expired = act(target, Act::Expire(id))?;
            println!("silence {} expired", expired[0].silence.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

enum Act {
    Add(NewSilence),
    List,
    Expire(String),
}

/// Does `act` through the server's API or on the store; the silences it made, listed or
/// expired.
fn act(target: Target, act: Act) -> anyhow::Result<Vec<SilenceView>> {
    match target {
        Target::Server(api, rt) => rt
            .block_on(async {
                match act {
                    Act::Add(new) => api.add_silence(&new).await.map(|v| vec![v]),
                    Act::List => api.silences().await,
                    Act::Expire(id) => api.expire_silence(&id).await.map(|v| vec![v]),
                }
            })
            .map_err(anyhow::Error::msg),
        Target::Store(store) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let silences = Silences::load(store)?;
            let author = std::env::var("USER").unwrap_or_else(|_| "cli".to_string());
            let now = now_ms();
            rt.block_on(async {
                Ok(match act {
                    Act::Add(new) => {
                        vec![SilenceView::at(&silences.add(&new, &author).await?, now)]
                    }
                    Act::List => silences
                        .snapshot()
                        .all()
                        .iter()
                        .map(|s| SilenceView::at(s, now))
                        .collect(),
                    Act::Expire(id) => vec![SilenceView::at(&silences.expire(&id).await?, now)],
                })
            })
        }
    }
}

/// `text` (RFC 3339) in ms since the epoch.
fn time_ms(flag: &str, text: &str) -> anyhow::Result<u64> {
    let t = chrono::DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("{flag} {text}: write a time as 2026-12-06T14:00:00Z"))?;
    u64::try_from(t.timestamp_millis()).with_context(|| format!("{flag} {text}: before 1970"))
}
