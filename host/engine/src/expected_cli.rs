//! `tocsin expected ls|forget`: the reporters a pipeline with `expect` knows, through the
//! admin API of the running server, or in the store when none runs.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use tocsin::absence::ReporterRow;

use crate::Target;

/// What `tocsin expected` does.
#[derive(Subcommand)]
pub enum ExpectedAction {
    /// List the reporters PIPELINE expects: when each last reported, when it is absent if
    /// nothing comes, and whether an absence alert of it is open.
    Ls {
        /// The pipeline.
        pipeline: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop expecting a reporter that is gone for good (a host retired): its records go and
    /// an open absence alert of it is resolved. It is expected again once it reports.
    Forget {
        /// The pipeline.
        pipeline: String,
        /// The reporter as `tocsin expected ls` names it: host=db1, or source.
        reporter: String,
    },
}

/// Runs `action` against `target`.
pub fn run(target: Target, action: ExpectedAction) -> anyhow::Result<ExitCode> {
    match action {
        ExpectedAction::Ls { pipeline, json } => {
            let rows = match target {
                Target::Server(api, rt) => rt
                    .block_on(api.expected(&pipeline))
                    .map_err(anyhow::Error::msg)?,
                Target::Store(store) => tocsin::absence::stored_rows(store.as_ref(), &pipeline)?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", format_rows(&pipeline, &rows, tocsin_queue::now_ms()));
            }
        }
        ExpectedAction::Forget { pipeline, reporter } => {
            let forgotten = match target {
                Target::Server(api, rt) => {
                    rt.block_on(api.forget_expected(&pipeline, &reporter))
                        .map_err(anyhow::Error::msg)?;
                    true
                }
                Target::Store(store) => {
                    let by = std::env::var("USER").unwrap_or_else(|_| "cli".to_string());
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("cannot start the async runtime")?
                        .block_on(tocsin::absence::forget_stored(
                            store.as_ref(),
                            &pipeline,
                            &reporter,
                            &by,
                        ))?
                }
            };
            if !forgotten {
                anyhow::bail!(
                    "pipeline `{pipeline}` expects no reporter `{reporter}` (`tocsin expected ls {pipeline}` lists them)"
                );
            }
            println!("{pipeline}: {reporter} is no longer expected");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per reporter: `host=db1  last report 3m ago  absent in 17m`.
fn format_rows(pipeline: &str, rows: &[ReporterRow], now: u64) -> String {
    if rows.is_empty() {
        return format!(
            "{pipeline} knows no reporter (none reported yet, or no `expect` in its file)\n"
        );
    }
    let ago = |ms: u64| {
        let secs = now.saturating_sub(ms) / 1000;
        humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
    };
    let width = rows.iter().map(|r| r.reporter.len()).max().unwrap_or(0);
    let mut out = String::new();
    for r in rows {
        let last = r.last_seen_ms.map_or_else(
            || "no report known".to_string(),
            |t| format!("last report {} ago", ago(t)),
        );
        let state = match (r.absent_since_ms, r.due_ms) {
            (Some(since), _) => format!("ABSENT for {} (alert open)", ago(since)),
            (None, Some(due)) if due > now => format!(
                "absent in {}",
                humantime::format_duration(std::time::Duration::from_secs((due - now) / 1000))
            ),
            (None, Some(_)) => "due now".to_string(),
            (None, None) => String::new(),
        };
        let line = format!("{:width$}  {last}  {state}", r.reporter);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_say_when_each_reporter_last_reported_and_whether_it_is_absent() {
        let now = 10_000_000;
        let rows = vec![
            ReporterRow {
                reporter: "host=db1".into(),
                labels: vec![("host".into(), "db1".into())],
                last_seen_ms: Some(now - 180_000),
                due_ms: Some(now + 1_020_000),
                absent_since_ms: None,
            },
            ReporterRow {
                reporter: "host=web22".into(),
                labels: vec![("host".into(), "web22".into())],
                last_seen_ms: Some(now - 3_600_000),
                due_ms: None,
                absent_since_ms: Some(now - 2_400_000),
            },
        ];
        let text = format_rows("janitor", &rows, now);
        assert_eq!(
            text,
            "host=db1    last report 3m ago  absent in 17m\n\
             host=web22  last report 1h ago  ABSENT for 40m (alert open)\n"
        );
        assert!(format_rows("janitor", &[], now).contains("knows no reporter"));
    }
}
