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
    /// tocsin with the webhook's `batch = 100`: a JSON array per request.
    TocsinBatched,
}

impl Path {
    const ALL: [Path; 4] = [
        Path::Alertmanager,
        Path::Tocsin,
        Path::AlertmanagerThenTocsin,
        Path::TocsinBatched,
    ];

    fn name(self) -> &'static str {
        match self {
            Path::Alertmanager => "Alertmanager → receiver",
            Path::Tocsin => "tocsin (defaults) → receiver",
            Path::AlertmanagerThenTocsin => "Alertmanager → tocsin → receiver",
            Path::TocsinBatched => "tocsin, webhook batch = 100 → receiver",
        }
    }
}

/// The grouping both systems use in the grouped storm.
const GROUP_WAIT: &str = "2s";
/// See [`GROUP_WAIT`].
const GROUP_INTERVAL: &str = "10s";

/// What one grouped storm measured.
struct GroupedStorm {
    posts: f64,
    to_last_s: f64,
    distinct: f64,
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
        let mut delivered_medians = [f64::NAN; 4];
        let mut p99_medians = [f64::NAN; 4];
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
                Path::Alertmanager | Path::TocsinBatched => "—",
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
             {:.2}; tocsin with webhook batch = 100 × {:.2}. p99 ÷ Alertmanager's: tocsin × \
             {:.2}; Alertmanager → tocsin × {:.2}; batched × {:.2}.",
            delivered_medians[1] / delivered_medians[0],
            delivered_medians[2] / delivered_medians[0],
            delivered_medians[3] / delivered_medians[0],
            p99_medians[1] / p99_medians[0],
            p99_medians[2] / p99_medians[0],
            p99_medians[3] / p99_medians[0],
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
            Path::Tocsin | Path::TocsinBatched => single(0),
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
            Path::TocsinBatched => {
                let tocsin = self.tocsin("storm-batched")?;
                let batched = delivering_pipeline(&receiver.0, receiver.1)
                    .replace("config = { url = ", "config = { batch = 100, url = ");
                tocsin.pipeline("bench", &batched)?;
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

impl Bench<'_> {
    /// The grouped storm: the same storm into Alertmanager and tocsin, both grouping every
    /// alert by `alertname` (one group) with the same wait and interval; how many posts the
    /// receiver gets and when the last alert first arrives.
    pub async fn grouped_storm(&self, report: &mut Report) -> anyhow::Result<()> {
        let alerts = self.args.storm;
        report.section(&format!(
            "A grouped storm: {alerts} alerts of one alertname, grouped by both systems \
             (wait {GROUP_WAIT}, interval {GROUP_INTERVAL})"
        ));
        if !std::path::Path::new(crate::procs::ALERTMANAGER_BIN).exists() {
            report.note("SKIPPED: Alertmanager is missing");
            return Ok(());
        }
        for tocsin in [false, true] {
            let mut figures = Vec::new();
            for _ in 0..self.args.runs {
                figures.push(self.one_grouped_storm(tocsin, alerts).await?);
            }
            let name = if tocsin { "tocsin" } else { "Alertmanager" };
            let column = |f: fn(&GroupedStorm) -> f64| figures.iter().map(f).collect::<Vec<f64>>();
            report.row(format!("{name}: posts"), column(|g| g.posts), 0, "—");
            report.row(
                format!("{name}: s from the storm's start to its last alert's first post"),
                column(|g| g.to_last_s),
                1,
                "—",
            );
            report.row(
                format!("{name}: distinct alerts posted"),
                column(|g| g.distinct),
                0,
                "all",
            );
        }
        report.note(format!(
            "Each run: fresh processes on empty state; 16 clients post one alert per request until \
             {alerts} are sent. Alertmanager {}: `group_by: [alertname]`, `group_wait: \
             {GROUP_WAIT}`, `group_interval: {GROUP_INTERVAL}`, `max_alerts: 0` (a notification \
             lists every alert of the group, also those sent before). tocsin: `json` → \
             `webhook` with `group = {{ by = [\"alertname\"], wait = \"{GROUP_WAIT}\", \
             interval = \"{GROUP_INTERVAL}\" }}` (a notification carries what changed, at most \
             1000 alerts; a fuller group sends the rest at once). Posts are counted until \
             {GROUP_INTERVAL} after the last new alert arrived.",
            alertmanager_version()
        ));
        Ok(())
    }

    async fn one_grouped_storm(&self, tocsin: bool, alerts: u64) -> anyhow::Result<GroupedStorm> {
        let receiver = (self.receiver.url(), self.receiver.port);
        let interval = Duration::from_secs(10);
        let (processes, target, body) = if tocsin {
            let t = self.tocsin("grouped-storm")?;
            let pipeline = format!(
                "{}group = {{ by = [\"alertname\"], wait = \"{GROUP_WAIT}\", interval = \"{GROUP_INTERVAL}\" }}\n",
                delivering_pipeline(&receiver.0, receiver.1)
            );
            t.pipeline("bench", &pipeline)?;
            let process = self.start(&t).await?;
            let target = ingest_target(process.port, "bench");
            (vec![process], target, single(0))
        } else {
            let dir = self.work.path().join("grouped-storm-alertmanager");
            let _ = std::fs::remove_dir_all(&dir);
            let config =
                crate::procs::alertmanager_grouped_config(&receiver.0, GROUP_WAIT, GROUP_INTERVAL);
            let am = crate::procs::alertmanager_with(&dir, &config).await?;
            let target = Target {
                addr: ([127, 0, 0, 1], am.port).into(),
                path: "/api/v2/alerts".into(),
                headers: Vec::new(),
            };
            (
                vec![am],
                target,
                std::sync::Arc::new(alert) as crate::load::BodyFn,
            )
        };
        let running = Running { processes, target };
        self.receiver.take();
        self.receiver.take_posts();
        let start_us = self.clock.elapsed().as_micros() as u64;
        let outcome: Outcome =
            closed_loop_count(&running.target, 16, alerts, self.clock, body).await;
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut last_new = (0usize, Instant::now());
        loop {
            let seen = self.receiver.posts_distinct();
            if seen != last_new.0 {
                last_new = (seen, Instant::now());
            }
            let settled = seen as u64 >= outcome.ok && last_new.1.elapsed() > interval;
            if settled || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(running);
        let posts = self.receiver.take_posts();
        self.receiver.take();
        if outcome.ok < alerts {
            eprintln!(
                "  note: grouped storm ({}): {} of {alerts} alerts accepted",
                if tocsin { "tocsin" } else { "Alertmanager" },
                outcome.ok
            );
        }
        Ok(GroupedStorm {
            posts: posts.requests as f64,
            to_last_s: posts.last_new_us.saturating_sub(start_us) as f64 / 1e6,
            distinct: posts.distinct.len() as f64,
        })
    }
}
