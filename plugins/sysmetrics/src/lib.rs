//! `sysmetrics`: a machine's CPU, load, memory, temperature and disk usage, as metrics for
//! `threshold` (Janitor's checks as a scheduled pipeline).
//!
//! Read through read-only grants: `/proc` (`stat`, `loadavg`, `meminfo`) and
//! `/sys/class/thermal` (optional; machines without sensors report no temperature). Disk usage
//! comes from the host's `disk-usage` import (WASI has no statvfs) for each directory in
//! `disks`, which must be granted too.
//!
//! ```toml
//! [source]
//! plugin   = "sysmetrics"
//! schedule = "0 * * * * *"
//! config   = { host = "db1", disks = ["/srv"] }
//! grants   = { read_dirs = ["/proc", "/sys/class/thermal", "/srv"] }
//! ```
//! One message per poll with `cpu-percent` (since the previous poll), `load-1`, `load-5`,
//! `load-15`, `memory-used-percent`, `memory-available-bytes` and `temperature-celsius` (the
//! hottest zone); plus one message per disk, labelled `disk`, with `disk-used-percent` and
//! `disk-free-bytes`, so one threshold with `key_labels = ["host", "disk"]` watches them all.

use serde::Deserialize;
use tocsin_sdk::host::{disk_usage, state_get_json, state_set_json};
use tocsin_sdk::{export_source, Message, MessageExt, Source};

/// A machine's CPU, load, memory, temperature and disk usage, as the metrics of one message
/// per poll.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// The `host` label; `"local"` when absent.
    host: Option<String>,
    /// Directories whose filesystems are measured (each must be granted).
    #[serde(default)]
    disks: Vec<String>,
    /// Where procfs is mounted (granted).
    #[serde(default = "proc_dir")]
    proc: String,
    /// Where thermal zones are (granted); missing is fine.
    #[serde(default = "thermal_dir")]
    thermal: String,
}

fn proc_dir() -> String {
    "/proc".into()
}
fn thermal_dir() -> String {
    "/sys/class/thermal".into()
}

struct Sysmetrics {
    host: String,
    disks: Vec<String>,
    proc: String,
    thermal: String,
}

/// (busy, total) jiffies from the `cpu` line of /proc/stat.
fn cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    if fields.len() < 4 {
        return None;
    }
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0); // idle + iowait
    Some((total - idle, total))
}

fn cpu_percent(prev: (u64, u64), now: (u64, u64)) -> Option<f64> {
    let busy = now.0.checked_sub(prev.0)?;
    let total = now.1.checked_sub(prev.1)?;
    (total > 0).then(|| 100.0 * busy as f64 / total as f64)
}

/// (load-1, load-5, load-15) from /proc/loadavg.
fn load(loadavg: &str) -> Option<(f64, f64, f64)> {
    let mut it = loadavg.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// (used percent, available bytes) from /proc/meminfo.
fn memory(meminfo: &str) -> Option<(f64, f64)> {
    let kb = |name: &str| -> Option<f64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse::<f64>().ok()
    };
    let total = kb("MemTotal:")?;
    let available = kb("MemAvailable:")?;
    (total > 0.0).then(|| (100.0 * (total - available) / total, available * 1024.0))
}

impl Sysmetrics {
    fn read(&self, name: &str) -> Result<String, String> {
        let path = format!("{}/{name}", self.proc);
        std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {path} (is it granted?): {e}"))
    }

    fn hottest_zone(&self) -> Option<f64> {
        let zones = std::fs::read_dir(&self.thermal).ok()?;
        zones
            .flatten()
            .filter(|z| z.file_name().to_string_lossy().starts_with("thermal_zone"))
            .filter_map(|z| std::fs::read_to_string(z.path().join("temp")).ok())
            .filter_map(|t| t.trim().parse::<f64>().ok())
            .map(|milli| milli / 1000.0)
            .reduce(f64::max)
    }

    fn cpu(&self) -> Result<Option<f64>, String> {
        let now = cpu_times(&self.read("stat")?).ok_or("cannot parse /proc/stat")?;
        let previous: Option<(u64, u64)> = state_get_json("cpu-times");
        state_set_json("cpu-times", &now);
        let previous = match previous {
            Some(p) if p.1 < now.1 => p,
            // First poll (or a reboot): sample again a moment later.
            _ => {
                std::thread::sleep(std::time::Duration::from_millis(250));
                let later = cpu_times(&self.read("stat")?).ok_or("cannot parse /proc/stat")?;
                state_set_json("cpu-times", &later);
                return Ok(cpu_percent(now, later));
            }
        };
        Ok(cpu_percent(previous, now))
    }
}

impl Source for Sysmetrics {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        Ok(Sysmetrics {
            host: c.host.unwrap_or_else(|| "local".into()),
            disks: c.disks,
            proc: c.proc.trim_end_matches('/').to_string(),
            thermal: c.thermal,
        })
    }

    fn poll(&mut self, tick_ms: u64) -> Result<Vec<Message>, String> {
        let mut m = Message::new(
            format!("tick-{tick_ms}"),
            tick_ms,
            format!("system metrics of {}", self.host),
        );
        m.summary = Some(format!("System metrics on {}", self.host));
        m.set_label("host", self.host.clone());
        m.set_label("check", "system");
        if let Some(cpu) = self.cpu()? {
            m.set_metric("cpu-percent", (cpu * 10.0).round() / 10.0);
        }
        if let Some((l1, l5, l15)) = load(&self.read("loadavg")?) {
            m.set_metric("load-1", l1);
            m.set_metric("load-5", l5);
            m.set_metric("load-15", l15);
        }
        if let Some((used, available)) = memory(&self.read("meminfo")?) {
            m.set_metric("memory-used-percent", (used * 10.0).round() / 10.0);
            m.set_metric("memory-available-bytes", available);
        }
        if let Some(t) = self.hottest_zone() {
            m.set_metric("temperature-celsius", t);
        }
        let mut out = vec![m];
        for dir in &self.disks {
            let (total, free) = disk_usage(dir)?;
            let used = if total == 0 {
                0.0
            } else {
                100.0 * (total - free) as f64 / total as f64
            };
            let mut d = Message::new(
                format!("tick-{tick_ms}-disk-{dir}"),
                tick_ms,
                format!("{dir} is {used:.1} % full ({free} bytes free)"),
            );
            d.summary = Some(format!("Disk {dir} on {}", self.host));
            d.set_label("host", self.host.clone());
            d.set_label("check", "disk");
            d.set_label("disk", dir.clone());
            d.set_metric("disk-used-percent", (used * 10.0).round() / 10.0);
            d.set_metric("disk-free-bytes", free as f64);
            out.push(d);
        }
        Ok(out)
    }
}

export_source!(Sysmetrics);
tocsin_sdk::declare_settings!(Config);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed() {
        let a = cpu_times("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        let b = cpu_times("cpu  150 0 150 750 100 0 0 0 0 0\n").unwrap();
        assert_eq!(a, (200, 1000));
        assert_eq!(cpu_percent(a, b), Some(100.0 * 100.0 / 150.0));
        assert_eq!(cpu_percent(b, a), None, "counters went back: no figure");
        assert_eq!(
            load("0.52 0.58 0.59 1/389 12345\n"),
            Some((0.52, 0.58, 0.59))
        );
        let (used, avail) =
            memory("MemTotal:       16000 kB\nMemFree: 1 kB\nMemAvailable:    4000 kB\n").unwrap();
        assert_eq!((used, avail), (75.0, 4000.0 * 1024.0));
        assert_eq!(memory("garbage"), None);
        assert_eq!(cpu_times("nothing"), None);
    }
}
