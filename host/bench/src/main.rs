//! `tocsin-bench`: tocsin's benchmark suite. `make bench` runs it and writes a markdown report
//! (machine, date, commit, each figure's min / median / max over several runs, its target).
//!
//! - [`micro`]: in process — the WASM filter stage alone, in chains of 5, by message size and
//!   next to hostile neighbours; durable enqueues on the sled store.
//! - [`system`]: the release `tocsin` binary over HTTP — durable ingest, ingest → delivered
//!   latency at several loads, start-up with 20 plugin stages, RSS, restart after SIGKILL with
//!   a million queued messages, scaling by message size and pipeline count — and Prometheus
//!   Alertmanager side by side, through the same webhook receiver ([`receiver`]), driven by the
//!   same load generator ([`load`]).
//! - [`jetstream`]: the queues on NATS JetStream (one server, three) next to sled.
//! - [`storm`]: a storm of unique alerts through Alertmanager alone, tocsin alone with its
//!   defaults, and Alertmanager → tocsin, side by side.
//!
//! Timed assertions do not belong in tests: regressions are caught by comparing reports.

mod jetstream;
mod load;
mod micro;
mod procs;
mod receiver;
mod report;
mod storm;
mod system;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use tocsin_runtime::{Runtime, RuntimeConfig};

/// The parts of the suite.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Section {
    /// In-process filter-stage, sink-stage and enqueue figures.
    Micro,
    /// The in-process sink figure alone (one `webhook` delivery), e.g. under a profiler.
    Sink,
    /// Durable ingest over HTTP.
    Ingest,
    /// tocsin and Alertmanager side by side: throughput and latency.
    SideBySide,
    /// Start-up with 20 plugin stages; idle RSS.
    Startup,
    /// RSS and restart after SIGKILL with many queued messages.
    Queued,
    /// By message size and by pipeline count.
    Scaling,
    /// What recording each message's steps (`tocsin trace`) costs: on and off, same run.
    Trace,
    /// A storm of unique alerts: Alertmanager alone, tocsin with its defaults, Alertmanager →
    /// tocsin, side by side.
    Storm,
    /// The queues on NATS JetStream (one server, three) next to sled.
    Jetstream,
}

/// The command line.
#[derive(Parser)]
pub struct Args {
    /// Directory of built plugins.
    #[arg(long, default_value = "plugins/target/wasm32-wasip2/release")]
    pub plugin_dir: PathBuf,
    /// The tocsin binary (build it with `cargo build --release -p tocsin`).
    #[arg(long, default_value = "target/release/tocsin")]
    pub tocsin_bin: PathBuf,
    /// Where the markdown report is written (it is also printed on stdout).
    #[arg(long, default_value = "target/bench-report.md")]
    pub out: PathBuf,
    /// Repetitions of each measurement.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Filter calls per in-process run.
    #[arg(long, default_value_t = 200_000)]
    pub calls: usize,
    /// Seconds per load run.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Offered loads (messages/s) of the latency figures.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,3000")]
    pub loads: Vec<f64>,
    /// Sink concurrency of the second tocsin in the side-by-side section (the first keeps the
    /// default); 1, strict order for the whole sink, unless set; 0 leaves it out (e.g. for a
    /// binary older than the `concurrency` field).
    #[arg(long, default_value_t = 1)]
    pub sink_concurrency: u32,
    /// Unique alerts in one storm (the storm section).
    #[arg(long, default_value_t = 20_000)]
    pub storm: u64,
    /// Messages in the backlog-drain figure.
    #[arg(long, default_value_t = 20_000)]
    pub backlog: u64,
    /// Messages queued for the memory and restart figures.
    #[arg(long, default_value_t = 1_000_000)]
    pub queued: u64,
    /// Only these sections (repeat, or separate with ','); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Section>,
    /// A quick smoke run: 1 run per figure, 1 s loads, 20 k queued.
    #[arg(long)]
    pub quick: bool,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            let kib: f64 = t.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!(", {:.0} GiB RAM", kib / (1 << 20) as f64))
        })
        .unwrap_or_default();
    format!("{cpu}, {cores} cores{mem}")
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.runs = 1;
        args.seconds = 1.0;
        args.calls = 20_000;
        args.queued = 20_000;
        args.backlog = 5_000;
        args.storm = 5_000;
    }
    let wanted = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let mut report = report::Report::default();
    report.header(format!("machine: {}", machine()));
    report.header(format!(
        "date: {}",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    ));
    let dirty =
        if command_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
            ""
        } else {
            " (with uncommitted changes)"
        };
    report.header(format!(
        "commit: {}{dirty}",
        command_output("git", &["rev-parse", "--short", "HEAD"])
    ));
    report.header(format!(
        "runs per figure: {}; {} s per load run",
        args.runs, args.seconds
    ));

    if wanted(Section::Micro) || args.only.contains(&Section::Sink) {
        let runtime = Runtime::new(RuntimeConfig::default()).map_err(anyhow::Error::msg)?;
        if wanted(Section::Micro) {
            micro::run(&mut report, &args, &runtime).await?;
        } else {
            micro::sink(&mut report, &args, &runtime).await?;
        }
    }
    let clock = Instant::now();
    let bench = system::Bench {
        args: &args,
        clock,
        receiver: receiver::Receiver::start(clock).await?,
        work: tempfile::Builder::new().prefix("tocsin-bench-").tempdir()?,
    };
    if wanted(Section::Ingest) {
        bench.ingest(&mut report).await?;
    }
    if wanted(Section::SideBySide) {
        bench.side_by_side(&mut report).await?;
    }
    if wanted(Section::Startup) {
        bench.startup(&mut report).await?;
    }
    if wanted(Section::Queued) {
        bench.queued(&mut report).await?;
    }
    if wanted(Section::Scaling) {
        bench.scaling(&mut report).await?;
    }
    if wanted(Section::Trace) {
        bench.trace_cost(&mut report).await?;
    }
    if wanted(Section::Jetstream) {
        bench.jetstream(&mut report).await?;
    }
    if wanted(Section::Storm) {
        bench.storm(&mut report).await?;
        bench.grouped_storm(&mut report).await?;
    }
    let markdown = report.markdown();
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, &markdown)?;
    println!("{markdown}");
    eprintln!("report written to {}", args.out.display());
    Ok(())
}
