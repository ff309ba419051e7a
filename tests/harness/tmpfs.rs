//! A small tmpfs mounted for one test, to fill a disk or make it read-only for real. Mounting
//! needs CAP_SYS_ADMIN (root on a VM); where it is not permitted, [`Tmpfs::mount`] says so and
//! returns `None`, and the test reports itself skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, unmounted on drop.
pub struct Tmpfs {
    path: PathBuf,
}

fn mount(args: &[&str], path: &Path) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .arg(path)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `"4m"`) on `path` (created if missing).
    pub fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).expect("mount point");
        match mount(
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            path,
        ) {
            Ok(()) => Some(Tmpfs {
                path: path.to_path_buf(),
            }),
            Err(e) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here ({e}); this test needs CAP_SYS_ADMIN"
                );
                None
            }
        }
    }

    /// Changes its size (space returns, or goes).
    pub fn resize(&self, size: &str) {
        mount(&["-o", &format!("remount,size={size}")], &self.path).expect("remount");
    }

    /// Makes it read-only (`true`) or writable again.
    pub fn read_only(&self, ro: bool) {
        let mode = if ro { "remount,ro" } else { "remount,rw" };
        mount(&["-o", mode], &self.path).expect("remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
