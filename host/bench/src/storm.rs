//! A storm: a fixed number of unique alerts posted by 16 clients as fast as each system takes
//! them, then how fast and how late they reach the receiver — Alertmanager alone, tocsin alone
//! with its defaults, and Alertmanager delivering to tocsin (`alertmanager-webhook`), which
//! delivers to the receiver. The same run, the same receiver, ratios printed.

use std::time::{Duration, Instant};

use crate::load::{closed_loop_count, Outcome, Target};
use crate::procs::{alertmanager, Process};
use crate::report::{quantile, stats, Report};
use crate::system::{
    alert, alertmanager_version, delivering_pipeline, ingest_target, single, Bench, STOP_BOUND,
};

/// The paths compared.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Alertmanager,
    Tocsin,
    AlertmanagerThenTocsin,
}

impl Path {
    const ALL: [Path; 3] = [
        Path::Alertmanager,
        Path::Tocsin,
        Path::AlertmanagerThenTocsin,
    ];

    fn name(self) -> &'static str {
        match self {
            Path::Alertmanager => "Alertmanager → receiver",
            Path::Tocsin => "tocsin (defaults) → receiver",
            Path::AlertmanagerThenTocsin => "Alertmanager → tocsin → receiver",
        }
    }
}

/// What one storm measured.
struct Storm {
    accepted_per_s: f64,
    delivered_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    lost: u64,
}

/// The processes one path runs; stopped when dropped (SIGTERM, then SIGKILL).
struct Running {
    processes: Vec<Process>,
    target: Target,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Alertmanager first: it stops sending before tocsin stops taking.
        for process in &mut self.processes {
            process.stop(STOP_BOUND);
        }
    }
}

impl Bench<'_> {
    /// The storm section (see the module's text).
    pub async fn storm(&self, report: &mut Report) -> anyhow::Result<()> {
        let alerts = self.args.storm;
        report.section(&format!(
            "A storm: {alerts} unique alerts from 16 clients, three paths side by side"
        ));
        if !std::path::Path::new(crate::procs::ALERTMANAGER_BIN).exists() {
            report.note(format!(
                "SKIPPED: {} is missing (apt-get install prometheus-alertmanager; `.ci/run` does)",
                crate::procs::ALERTMANAGER_BIN
            ));
            return Ok(());
        }
        let mut delivered_medians = [f64::NAN; 3];
        let mut p99_medians = [f64::NAN; 3];
        for (slot, path) in Path::ALL.into_iter().enumerate() {
            let mut figures = Vec::new();
            for _ in 0..self.args.runs {
                figures.push(self.one_storm(path, alerts).await?);
            }
            let column = |f: fn(&Storm) -> f64| figures.iter().map(f).collect::<Vec<f64>>();
            let name = path.name();
            let accepted = column(|s| s.accepted_per_s);
            let delivered = column(|s| s.delivered_per_s);
            let p99 = column(|s| s.p99_ms);
            delivered_medians[slot] = stats(&delivered).1;
            p99_medians[slot] = stats(&p99).1;
            report.row(format!("{name}: accepted/s"), accepted, 0, "—");
            let target = match path {
                Path::Tocsin => "≥ 3 × Alertmanager's",
                Path::AlertmanagerThenTocsin => "≥ Alertmanager's",
                Path::Alertmanager => "—",
            };
            report.row(format!("{name}: delivered/s"), delivered, 0, target);
            report.row(format!("{name}: p50 ms"), column(|s| s.p50_ms), 1, "—");
            let target = if path == Path::Tocsin {
                "< Alertmanager's"
            } else {
                "—"
            };
            report.row(format!("{name}: p99 ms"), p99, 1, target);
            let lost: u64 = figures.iter().map(|s| s.lost).sum();
            if lost > 0 {
                report.note(format!(
                    "{name}: {lost} accepted alerts had not arrived 120 s after their storms"
                ));
            }
        }
        report.note(format!(
            "Delivered/s ÷ Alertmanager's (medians): tocsin × {:.2}; Alertmanager → tocsin × \
             {:.2}. p99 ÷ Alertmanager's: tocsin × {:.2}; Alertmanager → tocsin × {:.2}.",
            delivered_medians[1] / delivered_medians[0],
            delivered_medians[2] / delivered_medians[0],
            p99_medians[1] / p99_medians[0],
            p99_medians[2] / p99_medians[0],
        ));
        report.note(format!(
            "Each storm: fresh processes on empty state; 16 clients post one alert per request, \
             back to back, until {alerts} are sent; delivered/s counts until the last accepted \
             alert reaches the receiver; latency runs from each request's send time to its \
             alert's arrival. tocsin: `json` → `webhook` with no setting changed (the sink's \
             `concurrency` is 8: order per alert); behind Alertmanager, `alertmanager-webhook` → \
             `webhook`, each alert's `fingerprint` its ordering key. Alertmanager {}: \
             clustering off, every alert its own group, `group_wait: 0s`, memory only; tocsin \
             answers after fsync.",
            alertmanager_version()
        ));
        Ok(())
    }

    async fn one_storm(&self, path: Path, alerts: u64) -> anyhow::Result<Storm> {
        let running = self.start_path(path).await?;
        self.receiver.take();
        let start = Instant::now();
        let body = match path {
            Path::Tocsin => single(0),
            Path::Alertmanager | Path::AlertmanagerThenTocsin => std::sync::Arc::new(alert),
        };
        let outcome: Outcome =
            closed_loop_count(&running.target, 16, alerts, self.clock, body).await;
        let took = self
            .drained(outcome.ok as usize, start, Duration::from_secs(120))
            .await;
        drop(running);
        let latencies = self.receiver.take();
        let got = latencies.len() as u64;
        Ok(Storm {
            accepted_per_s: outcome.rate(),
            delivered_per_s: got as f64 / took.as_secs_f64(),
            p50_ms: quantile(&latencies, 0.50) as f64 / 1000.0,
            p99_ms: quantile(&latencies, 0.99) as f64 / 1000.0,
            lost: outcome.ok.saturating_sub(got),
        })
    }

    /// Starts what `path` runs, on empty state; returns where the storm goes.
    async fn start_path(&self, path: Path) -> anyhow::Result<Running> {
        let receiver = (self.receiver.url(), self.receiver.port);
        let alertmanager_dir = self.work.path().join("storm-alertmanager");
        let _ = std::fs::remove_dir_all(&alertmanager_dir);
        let alertmanager_target = |process: &Process| Target {
            addr: ([127, 0, 0, 1], process.port).into(),
            path: "/api/v2/alerts".into(),
            headers: Vec::new(),
        };
        match path {
            Path::Alertmanager => {
                let am = alertmanager(&alertmanager_dir, &receiver.0).await?;
                let target = alertmanager_target(&am);
                Ok(Running {
                    processes: vec![am],
                    target,
                })
            }
            Path::Tocsin => {
                let tocsin = self.tocsin("storm")?;
                tocsin.pipeline("bench", &delivering_pipeline(&receiver.0, receiver.1))?;
                let process = self.start(&tocsin).await?;
                let target = ingest_target(process.port, "bench");
                Ok(Running {
                    processes: vec![process],
                    target,
                })
            }
            Path::AlertmanagerThenTocsin => {
                let tocsin = self.tocsin("storm-behind-alertmanager")?;
                let decoding = delivering_pipeline(&receiver.0, receiver.1)
                    .replace("plugin = \"json\"", "plugin = \"alertmanager-webhook\"");
                tocsin.pipeline("am", &decoding)?;
                let behind = self.start(&tocsin).await?;
                let url = format!("http://127.0.0.1:{}/ingest/am", behind.port);
                let am = alertmanager(&alertmanager_dir, &url).await?;
                let target = alertmanager_target(&am);
                Ok(Running {
                    processes: vec![am, behind],
                    target,
                })
            }
        }
    }
}
