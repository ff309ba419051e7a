//! `tocsin alerts` and `tocsin ack`: the open-alert register, listed, and an open alert
//! acknowledged — through the admin API of the running server, or in the store when none
//! runs.

use std::process::ExitCode;

use anyhow::Context;

use tocsin::admin::silences::AlertRow;
use tocsin::open_alerts::NewAck;
use tocsin_queue::now_ms;

use crate::Target;

/// Lists the open alerts of `pipeline`, or of every pipeline.
pub fn list(target: Target, pipeline: Option<String>, json: bool) -> anyhow::Result<ExitCode> {
    let rows = match target {
        Target::Server(api, rt) => rt
            .block_on(api.alerts(pipeline.as_deref()))
            .map_err(anyhow::Error::msg)?,
        Target::Store(store) => tocsin::admin::silences::alert_rows(store.as_ref(), pipeline)?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", format_alerts(&rows, now_ms()));
    }
    Ok(ExitCode::SUCCESS)
}

/// Acknowledges an open alert.
pub fn ack(target: Target, new: NewAck) -> anyhow::Result<ExitCode> {
    let row = match target {
        Target::Server(api, rt) => rt
            .block_on(api.acknowledge(&new))
            .map_err(anyhow::Error::msg)?,
        Target::Store(store) => {
            let by = std::env::var("USER").unwrap_or_else(|_| "cli".to_string());
            let (identity, alert) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(tocsin::open_alerts::acknowledge(
                    store.as_ref(),
                    &tocsin::open_alerts::Locks::default(),
                    &new,
                    &by,
                    now_ms(),
                ))?;
            AlertRow {
                pipeline: new.pipeline.clone(),
                identity,
                alert,
            }
        }
    };
    let by = row.alert.ack.as_ref().map_or("?", |a| a.by.as_str());
    println!(
        "{} {} acknowledged by {by}: its reminders stay back until it resolves{}",
        row.pipeline,
        row.identity,
        match row.alert.ack.as_ref().and_then(|a| a.until_ms) {
            Some(until) => format!(" or until {}", tocsin::silences::format_time_ms(until)),
            None => String::new(),
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// One line per alert: pipeline, identity, state, severity, summary, acknowledgement.
fn format_alerts(rows: &[AlertRow], now: u64) -> String {
    if rows.is_empty() {
        return "no open alerts\n".to_string();
    }
    let id_width = rows.iter().map(|r| r.identity.len()).max().unwrap_or(0);
    let pipe_width = rows.iter().map(|r| r.pipeline.len()).max().unwrap_or(0);
    let mut out = String::new();
    for r in rows {
        let a = &r.alert;
        let state = if a.open { "OPEN" } else { "resolved" };
        let mut line = format!(
            "{:pipe_width$}  {:id_width$}  {state:8}  {:7}  {}",
            r.pipeline,
            r.identity,
            a.severity.as_str(),
            a.summary.as_deref().unwrap_or("")
        );
        if let Some(ack) = a.ack.as_ref().filter(|ack| ack.active(now)) {
            line.push_str(&format!("  [acknowledged by {}: {}]", ack.by, ack.comment));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin::open_alerts::{Ack, OpenAlert};
    use tocsin_message::Severity;

    #[test]
    fn alerts_are_listed_with_their_state_and_who_acknowledged() {
        let alert = |open: bool, ack: Option<Ack>| OpenAlert {
            open,
            since_ms: 0,
            seen_ms: 0,
            summary: Some("disk full on db1".into()),
            severity: Severity::Error,
            labels: vec![],
            handed: Default::default(),
            held: Default::default(),
            ack,
        };
        let ack = Ack {
            by: "alice".into(),
            comment: "replacing it".into(),
            at_ms: 0,
            until_ms: Some(100),
            severity: Severity::Error,
        };
        let rows = vec![
            AlertRow {
                pipeline: "disks".into(),
                identity: "k:DiskFull/db1".into(),
                alert: alert(true, Some(ack)),
            },
            AlertRow {
                pipeline: "disks".into(),
                identity: "k:X".into(),
                alert: alert(false, None),
            },
        ];
        assert_eq!(
            format_alerts(&rows, 50),
            "disks  k:DiskFull/db1  OPEN      error    disk full on db1  [acknowledged by alice: replacing it]\n\
             disks  k:X             resolved  error    disk full on db1\n"
        );
        // A lapsed acknowledgement is not shown.
        assert!(!format_alerts(&rows, 100).contains("acknowledged"));
        assert_eq!(format_alerts(&[], 0), "no open alerts\n");
    }
}
