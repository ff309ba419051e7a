//! A `/proc` grant without the host's own secrets.
//!
//! procfs mixes system-wide figures (`stat`, `meminfo`, `loadavg`) with files about each
//! process, the host's included: `/proc/self/environ` holds every secret given to tocsin as
//! `env:`, `cmdline` and `maps` more. A read-only preopen of the real `/proc` gave a plugin all
//! of it. So a granted `/proc` is a *view*: a private directory holding copies of the
//! system-wide files in [`SYSTEM_FILES`], refreshed before every call of the stage and every
//! [`REFRESH_INTERVAL`] during one (a plugin may sample twice in a call); no process
//! directory, no `self`, no `environ` exists in it. A grant of a path inside `/proc` (such as
//! `/proc/self` or `/proc/1/root`) is refused.

use std::path::{Path, PathBuf};

/// The system-wide files of procfs a granted `/proc` shows (those that exist on this kernel).
pub const SYSTEM_FILES: &[&str] = &[
    "stat",
    "loadavg",
    "meminfo",
    "uptime",
    "cpuinfo",
    "diskstats",
    "vmstat",
    "version",
    "net/dev",
    "pressure/cpu",
    "pressure/memory",
    "pressure/io",
];

/// How often a view is refreshed while a call runs (it is refreshed before each call too).
pub const REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Where procfs is mounted.
const PROCFS: &str = "/proc";

/// What a granted directory is, as far as procfs goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ProcGrant {
    /// Not procfs: preopened as it is.
    Plain,
    /// procfs itself: shown through a [`ProcView`].
    View,
    /// A path inside procfs: refused, with the reason.
    Refused(String),
}

/// Classifies the granted host directory `host` (symlinks resolved, so a link to `/proc`
/// elsewhere is procfs too).
pub(crate) fn classify(host: &Path) -> ProcGrant {
    let real = std::fs::canonicalize(host).unwrap_or_else(|_| host.to_path_buf());
    if real == Path::new(PROCFS) {
        ProcGrant::View
    } else if real.starts_with(PROCFS) {
        ProcGrant::Refused(format!(
            "the grant of {} is inside /proc, whose per-process files expose the host's \
             environment and memory maps: grant `/proc` itself, which shows the system-wide \
             files ({})",
            host.display(),
            SYSTEM_FILES.join(", ")
        ))
    } else {
        ProcGrant::Plain
    }
}

/// A private directory mirroring [`SYSTEM_FILES`] of procfs.
pub(crate) struct ProcView {
    dir: tempfile::TempDir,
    source: PathBuf,
}

impl ProcView {
    /// A view of procfs, filled once.
    pub(crate) fn new() -> std::io::Result<ProcView> {
        Self::of(Path::new(PROCFS))
    }

    /// A view of `source` (a procfs, or a directory shaped like one in tests).
    pub(crate) fn of(source: &Path) -> std::io::Result<ProcView> {
        let view = ProcView {
            dir: tempfile::Builder::new().prefix("tocsin-proc-").tempdir()?,
            source: source.to_path_buf(),
        };
        view.refresh()?;
        Ok(view)
    }

    /// The directory to preopen in place of `/proc`.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies the current content of each file (a file the kernel does not have is left out).
    /// Each is replaced by a rename, so a plugin never reads half of one.
    pub(crate) fn refresh(&self) -> std::io::Result<()> {
        for name in SYSTEM_FILES {
            let content = match std::fs::read(self.source.join(name)) {
                Ok(content) => content,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                // Unreadable here (a hardened kernel): the plugin sees it missing.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => continue,
                Err(e) => return Err(e),
            };
            let target = self.dir.path().join(name);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let partial = target.with_extension("partial");
            std::fs::write(&partial, content)?;
            std::fs::rename(&partial, &target)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procfs_is_a_view_a_path_inside_it_is_refused_anything_else_is_plain() {
        assert_eq!(classify(Path::new("/proc")), ProcGrant::View);
        assert_eq!(classify(Path::new("/proc/")), ProcGrant::View);
        assert!(matches!(
            classify(Path::new("/proc/self")),
            ProcGrant::Refused(_)
        ));
        assert!(matches!(
            classify(Path::new("/proc/1/root")),
            ProcGrant::Refused(_)
        ));
        assert_eq!(classify(Path::new("/srv")), ProcGrant::Plain);
        // A symlink to /proc is /proc.
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("p");
        std::os::unix::fs::symlink("/proc", &link).unwrap();
        assert_eq!(classify(&link), ProcGrant::View);
    }

    #[test]
    fn the_view_holds_the_system_files_and_nothing_about_processes() {
        let view = ProcView::new().unwrap();
        let stat = std::fs::read_to_string(view.path().join("stat")).unwrap();
        assert!(stat.starts_with("cpu "), "{stat}");
        assert!(view.path().join("meminfo").is_file());
        for private in [
            "self",
            "1",
            "environ",
            "self/environ",
            "thread-self",
            "mounts",
        ] {
            assert!(
                !view.path().join(private).exists(),
                "{private} is in the view"
            );
        }
    }

    #[test]
    fn a_refresh_shows_the_source_as_it_is_now() {
        let source = tempfile::tempdir().unwrap();
        std::fs::write(source.path().join("loadavg"), "0.10 0.20 0.30 1/100 42\n").unwrap();
        let view = ProcView::of(source.path()).unwrap();
        let read = || std::fs::read_to_string(view.path().join("loadavg")).unwrap();
        assert!(read().starts_with("0.10"));
        std::fs::write(source.path().join("loadavg"), "9.99 0.20 0.30 1/100 42\n").unwrap();
        view.refresh().unwrap();
        assert!(read().starts_with("9.99"));
    }
}
