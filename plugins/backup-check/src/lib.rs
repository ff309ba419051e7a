//! `backup-check`: finds the newest file matching a pattern in a granted directory and reports
//! its age and size as metrics (`backup-age-seconds`, `backup-size-bytes`). A missing
//! directory, or no matching file, is itself an alert (severity error, no metrics).
//!
//! ```toml
//! [source]
//! plugin   = "backup-check"
//! schedule = "0 */15 * * * *"
//! config   = { dir = "/srv/backups", pattern = "*.tar.zst", host = "db1" }
//! grants   = { read_dirs = ["/srv/backups"] }
//! ```

use serde::Deserialize;
use tocsin_sdk::{export_source, Message, MessageExt, Severity, Source};

/// Finds the newest file matching `pattern` in a granted directory and reports its age and
/// size as metrics (`backup-age-seconds`, `backup-size-bytes`); a missing directory or no
/// matching file is an error.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// The directory to look in (grant it in `read_dirs`).
    dir: String,
    /// A glob on file names, such as `*.tar.zst`; every file when absent.
    #[serde(default = "any")]
    pattern: String,
    /// The `host` label of the messages; `"local"` when absent.
    host: Option<String>,
}

fn any() -> String {
    "*".into()
}

struct BackupCheck {
    dir: String,
    pattern: glob::Pattern,
    host: String,
}

impl BackupCheck {
    fn message(&self, tick_ms: u64, severity: Severity, body: String) -> Message {
        let mut m = Message::new(format!("tick-{tick_ms}"), tick_ms, body);
        m.severity = severity;
        m.summary = Some(format!("Backup check on {}", self.host));
        m.set_label("check", "backup");
        m.set_label("host", self.host.clone());
        m.set_label("dir", self.dir.clone());
        m
    }
}

impl Source for BackupCheck {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        let pattern =
            glob::Pattern::new(&c.pattern).map_err(|e| format!("pattern `{}`: {e}", c.pattern))?;
        Ok(BackupCheck {
            dir: c.dir,
            pattern,
            host: c.host.unwrap_or_else(|| "local".into()),
        })
    }

    fn poll(&mut self, tick_ms: u64) -> Result<Vec<Message>, String> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                let body = format!("cannot read backup directory {}: {e}", self.dir);
                return Ok(vec![self.message(tick_ms, Severity::Error, body)]);
            }
        };
        let mut newest: Option<(u64, u64, String)> = None; // (mtime ms, size, name)
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !self.pattern.matches(&name) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            if newest.as_ref().is_none_or(|(m, _, _)| mtime > *m) {
                newest = Some((mtime, meta.len(), name));
            }
        }
        Ok(vec![match newest {
            None => self.message(
                tick_ms,
                Severity::Error,
                format!("no backup matching `{}` in {}", self.pattern, self.dir),
            ),
            Some((mtime, size, name)) => {
                let age = tick_ms.saturating_sub(mtime) / 1000;
                let mut m = self.message(
                    tick_ms,
                    Severity::None,
                    format!("newest backup {name} is {age} s old and {size} bytes"),
                );
                m.set_metric("backup-age-seconds", age as f64);
                m.set_metric("backup-size-bytes", size as f64);
                m.set_label("file", name);
                m
            }
        }])
    }
}

export_source!(BackupCheck);
tocsin_sdk::declare_settings!(Config);
