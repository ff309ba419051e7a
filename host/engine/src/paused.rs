//! Pipelines an operator paused, kept in `DATA/paused.json` so a pause survives a restart
//! without editing the pipeline's file (which may be managed by configuration management, or
//! read-only).
//!
//! A paused pipeline is loaded and checked but not run: its source takes nothing (ingest
//! answers 503, ticks do not fire), its queues wait, and it shows as `paused`. Resuming
//! starts it from its file as it is then.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The file, in the data directory.
pub const PAUSED_FILE: &str = "paused.json";

/// The set of paused pipelines and where it is kept.
#[derive(Debug)]
pub struct Paused {
    path: PathBuf,
    names: BTreeSet<String>,
}

impl Paused {
    /// Reads the set kept in `data_dir` (empty when there is none; an unreadable file is
    /// reported and read as empty, so a damaged file never stops alerting).
    pub fn load(data_dir: &Path) -> Paused {
        let path = data_dir.join(PAUSED_FILE);
        let names = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                tracing::error!(file = %path.display(), error = %e, "cannot read the paused pipelines; running all of them");
                BTreeSet::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read the paused pipelines; running all of them");
                BTreeSet::new()
            }
        };
        Paused { path, names }
    }

    /// Whether `name` is paused.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Pauses (`true`) or resumes `name`, and writes the set (to a new file renamed over the
    /// old one, so a crash leaves the old set or the new one).
    pub fn set(&mut self, name: &str, paused: bool) -> std::io::Result<()> {
        let mut names = self.names.clone();
        if paused {
            names.insert(name.to_string());
        } else {
            names.remove(name);
        }
        let text = serde_json::to_string_pretty(&names).map_err(std::io::Error::other)?;
        let fresh = self.path.with_extension("json.new");
        std::fs::write(&fresh, text + "\n")?;
        std::fs::File::open(&fresh)?.sync_all()?;
        std::fs::rename(&fresh, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        self.names = names;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_is_kept_across_loads_and_a_damaged_file_pauses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut paused = Paused::load(dir.path());
        assert!(!paused.contains("backups"));
        paused.set("backups", true).unwrap();
        paused.set("github", true).unwrap();
        paused.set("github", false).unwrap();
        let again = Paused::load(dir.path());
        assert!(again.contains("backups") && !again.contains("github"));
        std::fs::write(dir.path().join(PAUSED_FILE), "{not json").unwrap();
        assert!(!Paused::load(dir.path()).contains("backups"));
    }
}
