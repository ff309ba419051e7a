//! Python tools from PyPI, each installed once into a venv under `tests/.cache/` and reused by
//! later runs: Synapse (see `synapse.rs`) and componentize-py, which builds the Python plugin
//! of `examples/python-sink`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::repo_root;

/// The componentize-py release the Python plugin is built and tested with.
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// `tests/.cache/<name>`, a venv where `python -c "import <module>"` works, made with
/// `pip install <packages>` when it does not yet.
pub fn venv(name: &str, module: &str, packages: &[&str]) -> PathBuf {
    let venv = repo_root().join("tests/.cache").join(name);
    let python = venv.join("bin/python");
    let installed = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        std::fs::create_dir_all(venv.parent().unwrap()).unwrap();
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "cannot create a Python venv (is python3-venv installed?)"
        );
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet"])
            .args(packages)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot install {packages:?} from PyPI");
    }
    venv
}

/// Builds `examples/python-sink` (once per test process) with componentize-py; returns the
/// directory holding `python_jsonl.wasm`.
pub fn python_plugins_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let venv = venv(
            "componentize-py-venv",
            "componentize_py",
            &[COMPONENTIZE_PY],
        );
        let out = repo_root().join("tests/.cache/python-plugins");
        std::fs::create_dir_all(&out).unwrap();
        let example = repo_root().join("examples/python-sink");
        let status = Command::new(venv.join("bin/componentize-py"))
            .args([
                "-d",
                "../../wit",
                "-w",
                "sink-plugin",
                "componentize",
                "app",
                "-o",
            ])
            .arg(out.join("python_jsonl.wasm"))
            .current_dir(&example)
            .stdout(Stdio::null())
            .status()
            .expect("componentize-py runs");
        assert!(
            status.success(),
            "componentize-py failed on examples/python-sink"
        );
        out
    })
}
