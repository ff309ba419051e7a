//! The on-disk compile cache: a component is compiled once per engine configuration.
//!
//! Artifacts live in `<cache dir>/<engine hash>/<sha256 of the wasm>.cwasm`. The engine hash
//! is `Engine::precompile_compatibility_hash` (wasmtime version, target and every setting
//! that changes generated code), so an upgrade or a config change never loads a stale artifact.
//! Files are written to a temporary name and renamed, so a crash never leaves half an artifact
//! under the real name; an artifact that fails to load is recompiled and replaced.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::component::Component;
use wasmtime::Engine;

/// The compile cache of one engine.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

/// Where a component came from: useful in logs and start-up measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded a precompiled artifact.
    Hit,
    /// Compiled (and stored, when possible).
    Compiled,
}

impl CompileCache {
    /// The cache for `engine` under `base`.
    pub fn new(base: &Path, engine: &Engine) -> std::io::Result<Self> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let dir = base.join(format!("{:016x}", hasher.finish()));
        std::fs::create_dir_all(&dir)?;
        Ok(CompileCache { dir })
    }

    /// The directory of this engine's artifacts.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads the artifact for `sha256`, or compiles `wasm` and stores it.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        sha256: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let artifact = self.dir.join(format!("{sha256}.cwasm"));
        if artifact.is_file() {
            // SAFETY: artifacts in this directory are written only by `store` below, from
            // `Component::serialize` of an engine with the same compatibility hash (the
            // directory name). A damaged file fails to deserialize and is recompiled.
            #[allow(unsafe_code)]
            let loaded = unsafe { Component::deserialize_file(engine, &artifact) };
            match loaded {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => tracing::warn!(
                    artifact = %artifact.display(),
                    error = %e,
                    "cached plugin artifact is unusable; recompiling"
                ),
            }
        }
        let component = Component::new(engine, wasm)?;
        if let Err(e) = self.store(&artifact, &component) {
            tracing::warn!(artifact = %artifact.display(), error = %e, "cannot cache compiled plugin");
        }
        Ok((component, CacheOutcome::Compiled))
    }

    fn store(&self, artifact: &Path, component: &Component) -> wasmtime::Result<()> {
        let bytes = component.serialize()?;
        let tmp = artifact.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, artifact)?;
        Ok(())
    }
}
