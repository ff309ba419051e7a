//! Where a plugin's component comes from: a `.wasm` file, or the copy built into the `tocsin`
//! binary.
//!
//! The shipped plugins are compiled into the binary (the engine's build script embeds them), so
//! a `tocsin` copied alone onto a machine runs pipelines that name `json`, `threshold` or
//! `matrix`. A plugin directory still comes first: an operator overrides a shipped plugin by
//! dropping a `.wasm` of the same name there. A digest pin (`sha256`) checks whichever copy a
//! name resolved to.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;

/// A plugin compiled into the binary.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedPlugin {
    /// Its name as pipelines write it (`rate-limit`).
    pub name: &'static str,
    /// The component.
    pub bytes: &'static [u8],
}

impl fmt::Debug for EmbeddedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedPlugin")
            .field("name", &self.name)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// Where the component a pipeline names was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginOrigin {
    /// A `.wasm` file: in a plugin directory, or a path written in the pipeline file.
    File(PathBuf),
    /// Built into this `tocsin`.
    Embedded(EmbeddedPlugin),
}

impl PluginOrigin {
    /// The component's bytes (read from the file, or borrowed from the binary).
    pub fn read(&self) -> std::io::Result<Cow<'static, [u8]>> {
        match self {
            PluginOrigin::File(path) => std::fs::read(path).map(Cow::Owned),
            PluginOrigin::Embedded(plugin) => Ok(Cow::Borrowed(plugin.bytes)),
        }
    }
}

/// A file's path, or `json (built into tocsin)`.
impl fmt::Display for PluginOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginOrigin::File(path) => write!(f, "{}", path.display()),
            PluginOrigin::Embedded(plugin) => write!(f, "{} (built into tocsin)", plugin.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_embedded_plugin_reads_its_bytes_and_says_where_it_comes_from() {
        let origin = PluginOrigin::Embedded(EmbeddedPlugin {
            name: "json",
            bytes: b"\0asm",
        });
        assert_eq!(&*origin.read().unwrap(), b"\0asm");
        assert_eq!(origin.to_string(), "json (built into tocsin)");
        let missing = PluginOrigin::File("/nonexistent/json.wasm".into());
        assert!(missing.read().is_err());
        assert_eq!(missing.to_string(), "/nonexistent/json.wasm");
    }
}
