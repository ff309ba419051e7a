//! `tocsin-bench`: measures the per-message cost of a WASM filter stage and the throughput of
//! durable (fsync'd, group-committed) enqueues, and prints a markdown report.
//!
//! Run with `make bench` (release build). Each figure is measured `--runs` times; the report
//! gives min / median / max. Timed assertions do not belong in tests: compare reports.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tocsin_config::{Grants, Limits};
use tocsin_message::{Message, Severity};
use tocsin_queue::{QueueStore, SledStore};
use tocsin_runtime::{Runtime, RuntimeConfig, Stage, StageContext, StateReader};

#[derive(Parser)]
struct Args {
    /// Directory of built plugins.
    #[arg(long, default_value = "plugins/target/wasm32-wasip2/release")]
    plugin_dir: PathBuf,
    /// Repetitions of each measurement.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Filter calls per run.
    #[arg(long, default_value_t = 200_000)]
    calls: usize,
    /// Seconds per enqueue run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

struct NoState;
impl StateReader for NoState {
    fn get(&self, _: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
}

fn message(i: usize) -> Message {
    Message {
        id: format!("bench-{i}"),
        timestamp_ms: 1_700_000_000_000 + i as u64,
        severity: Severity::Warning,
        summary: Some("CPU high on web-1".into()),
        body: "cpu-percent is 93.5 and reached the warning level (above 90)".into(),
        labels: vec![
            ("host".into(), "web-1".into()),
            ("check".into(), "cpu".into()),
        ],
        metrics: vec![("cpu-percent".into(), 93.5)],
        payload: None,
    }
}

fn stage(
    runtime: &Runtime,
    plugin_dir: &std::path::Path,
    name: &str,
    config: &str,
) -> anyhow::Result<Stage> {
    let plugin = runtime.load(&plugin_dir.join(format!("{name}.wasm")), None)?;
    Ok(Stage::new(
        runtime,
        plugin,
        StageContext {
            pipeline: "bench".into(),
            stage: "filter.0".into(),
            config_json: config.into(),
            grants: Grants::default(),
            limits: Limits {
                memory: 64 << 20,
                fuel: 2_000_000_000,
                timeout: Duration::from_secs(1),
            },
            secrets: Arc::new(vec![]),
            state: Arc::new(NoState),
            dry_run: None,
        },
    ))
}

/// Nanoseconds per `process` call on one live instance.
async fn filter_cost(stage: &mut Stage, calls: usize) -> anyhow::Result<f64> {
    let msgs: Vec<Message> = (0..64).map(message).collect();
    for m in msgs.iter().cycle().take(10_000) {
        stage.process(m).await?;
    }
    let start = Instant::now();
    for m in msgs.iter().cycle().take(calls) {
        std::hint::black_box(stage.process(m).await?);
    }
    Ok(start.elapsed().as_nanos() as f64 / calls as f64)
}

/// Acknowledged (durable) messages per second with `producers` concurrent producers, each
/// appending `batch` messages per commit and waiting for it.
async fn enqueue_rate(producers: usize, batch: usize, seconds: f64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn QueueStore> = SledStore::open(dir.path())?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let msgs: Vec<Message> = (0..batch).map(|i| message(p * 1_000_000 + i)).collect();
            let mut acked = 0usize;
            while Instant::now() < deadline {
                store
                    .append_ingress(&format!("p{}", p % 4), &msgs, &[])
                    .await?;
                acked += batch;
            }
            anyhow::Ok(acked)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Runs the `hostile` filter in `mode` on a thread of its own, call after call (each call is
/// stopped by the sandbox and the next one gets a fresh instance), until `stop`; returns how
/// many calls were stopped.
fn hostile_neighbour(
    runtime: Runtime,
    plugin_dir: PathBuf,
    mode: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<u64>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let config = format!(r#"{{"mode":"{mode}"}}"#);
            let mut hostile = stage(&runtime, &plugin_dir, "hostile", &config)?;
            let msg = message(0);
            let mut stopped = 0;
            while !stop.load(Ordering::Relaxed) {
                if hostile.process(&msg).await.is_err() {
                    stopped += 1;
                }
            }
            Ok(stopped)
        })
    })
}

fn stats(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(|a, b| a.total_cmp(b));
    (xs[0], xs[xs.len() / 2], xs[xs.len() - 1])
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
    format!("{cpu}, {cores} cores")
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
    let args = Args::parse();
    let runtime = Runtime::new(RuntimeConfig::default()).map_err(anyhow::Error::msg)?;
    println!("# tocsin benchmark report\n");
    println!("- machine: {}", machine());
    println!(
        "- date: {}",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    println!(
        "- commit: {}",
        command_output("git", &["rev-parse", "--short", "HEAD"])
    );
    println!("- runs per figure: {}\n", args.runs);
    println!("| figure | min | median | max | target |");
    println!("| --- | --- | --- | --- | --- |");

    let cases = [
        (
            "filter stage, message passes (`hostile` pass mode)",
            "hostile",
            r#"{"mode":"pass"}"#,
        ),
        (
            "filter stage, `threshold`, no change of state (dropped)",
            "threshold",
            r#"{"metric":"cpu-percent","above":{"warn":99}}"#,
        ),
    ];
    for (label, plugin, config) in cases {
        let mut stage = stage(&runtime, &args.plugin_dir, plugin, config)?;
        let mut xs = Vec::new();
        for _ in 0..args.runs {
            xs.push(filter_cost(&mut stage, args.calls).await? / 1000.0);
        }
        let (min, med, max) = stats(xs);
        println!("| {label}: µs per message | {min:.2} | {med:.2} | {max:.2} | ≤ 2 µs |");
    }
    // The same healthy filter while a hostile one misbehaves next to it, each on its own
    // thread: how far does a neighbour that the sandbox keeps stopping move its latency?
    let quiet = {
        let mut pass = stage(&runtime, &args.plugin_dir, "hostile", r#"{"mode":"pass"}"#)?;
        let mut xs = Vec::new();
        for _ in 0..args.runs {
            xs.push(filter_cost(&mut pass, args.calls).await? / 1000.0);
        }
        stats(xs).1
    };
    for (mode, what) in [
        ("loop", "spins until its fuel runs out"),
        ("alloc", "allocates until its memory cap"),
        ("recurse", "recurses until its stack faults"),
    ] {
        let stop = Arc::new(AtomicBool::new(false));
        let neighbour =
            hostile_neighbour(runtime.clone(), args.plugin_dir.clone(), mode, stop.clone());
        let mut pass = stage(&runtime, &args.plugin_dir, "hostile", r#"{"mode":"pass"}"#)?;
        let mut xs = Vec::new();
        for _ in 0..args.runs {
            xs.push(filter_cost(&mut pass, args.calls).await? / 1000.0);
        }
        stop.store(true, Ordering::Relaxed);
        let stopped = neighbour
            .join()
            .map_err(|_| anyhow::anyhow!("the neighbour thread panicked"))??;
        let (min, med, max) = stats(xs);
        println!(
            "| filter stage, passes, while a hostile neighbour {what} ({stopped} calls stopped): µs per message (× {:.2} of quiet) | {min:.2} | {med:.2} | {max:.2} | — |",
            med / quiet
        );
    }
    for (producers, batch, target) in [
        (1, 1, "—"),
        (16, 1, "—"),
        (64, 1, "≥ 20 k/s"),
        (16, 32, "≥ 100 k/s"),
    ] {
        let mut xs = Vec::new();
        for _ in 0..args.runs {
            xs.push(enqueue_rate(producers, batch, args.seconds).await?);
        }
        let (min, med, max) = stats(xs);
        println!(
            "| durable enqueue (fsync, group commit), {producers} producer(s) × {batch} msg per commit: msgs/s | {min:.0} | {med:.0} | {max:.0} | {target} |"
        );
    }
    Ok(())
}
