//! Symlinks a plugin leaves in its writable grants are removed after each call.
//!
//! Inside the sandbox a link is harmless: the WASI implementation refuses to follow one out of
//! a preopened directory. But the directory is on the host's disk, and a host tool that later
//! walks it (a backup, a log shipper, an operator's `grep -r`) would follow
//! `planted → ../../../../etc`. WASI has no permission that allows files but not links, so the
//! host looks after the call: it walks each writable grant (at most [`MAX_ENTRIES`] entries, not
//! following links) and removes every symlink it finds.

use std::path::{Path, PathBuf};

/// The most entries one cleanup looks at, over all of a stage's writable grants; a bigger tree
/// is walked that far, and the walk says so.
pub const MAX_ENTRIES: usize = 100_000;

/// What one cleanup did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Cleanup {
    /// The links removed.
    pub removed: Vec<PathBuf>,
    /// Whether the walk stopped at [`MAX_ENTRIES`].
    pub cut_short: bool,
}

/// Removes every symlink below each of `dirs` (the roots themselves are the operator's).
pub(crate) fn remove_planted_links(dirs: &[&Path]) -> Cleanup {
    let mut cleanup = Cleanup::default();
    let mut pending: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    let mut seen = 0;
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES {
                cleanup.cut_short = true;
                return cleanup;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_symlink() {
                let path = entry.path();
                if std::fs::remove_file(&path).is_ok() {
                    cleanup.removed.push(path);
                }
            } else if kind.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    cleanup
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_anywhere_below_are_removed_and_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/alerts.jsonl"), "x").unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("planted-rel")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("a/b/planted-abs")).unwrap();
        let cleanup = remove_planted_links(&[root]);
        assert_eq!(cleanup.removed.len(), 2, "{cleanup:?}");
        assert!(!cleanup.cut_short);
        assert!(root.join("a/b/alerts.jsonl").is_file());
        assert!(std::fs::symlink_metadata(root.join("planted-rel")).is_err());
        assert!(std::fs::symlink_metadata(root.join("a/b/planted-abs")).is_err());
    }
}
