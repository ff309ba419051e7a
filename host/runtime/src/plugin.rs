//! The engine, the linker, and loading plugin components.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tocsin_config::plugin_origin::PluginOrigin;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

use crate::bindings::{decoder, filter, sink, source, v0_1, wit_host, wit_types};
use crate::cache::{CacheOutcome, CompileCache};
use crate::store::PluginState;
use crate::LoadError;

/// The WIT package plugins must export.
pub const CONTRACT_PACKAGE: &str = "tocsin:plugin";
/// The newest contract version this host speaks (it runs [`Contract::ALL`]).
pub const CONTRACT_VERSION: &str = "0.2.1";

/// A version of the contract (`wit/`) a plugin is built against; the host runs each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Contract {
    /// `tocsin:plugin@0.1.x`, frozen in `wit/0.1.0/`: no link or key on messages, a sink
    /// delivers one message per call.
    V0_1,
    /// `tocsin:plugin@0.2.x`, `wit/tocsin.wit`.
    V0_2,
}

impl Contract {
    /// Every version this host runs, oldest first.
    pub const ALL: [Contract; 2] = [Contract::V0_1, Contract::V0_2];

    /// The newest version of it this host speaks, as WIT writes it: `0.2.1`.
    pub fn version(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1.0",
            Contract::V0_2 => "0.2.1",
        }
    }

    /// The contract of an interface version such as `0.1.0` or `0.2.3` (the same minor
    /// version: 0.x versions are compatible within a minor one).
    pub fn of_version(version: &str) -> Option<Contract> {
        let major_minor: Vec<&str> = version.split('.').take(2).collect();
        Contract::ALL.into_iter().find(|c| {
            c.version()
                .split('.')
                .take(2)
                .eq(major_minor.iter().copied())
        })
    }
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.version())
    }
}

/// Which world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginKind {
    /// `source-plugin`: polled on a schedule.
    Source,
    /// `decoder-plugin`: fed by HTTP ingest.
    Decoder,
    /// `filter-plugin`.
    Filter,
    /// `sink-plugin`.
    Sink,
}

impl PluginKind {
    /// The exported interface that identifies the kind.
    pub fn interface(self) -> &'static str {
        match self {
            PluginKind::Source => "source",
            PluginKind::Decoder => "decoder",
            PluginKind::Filter => "filter",
            PluginKind::Sink => "sink",
        }
    }

    /// The WIT world a plugin of this kind targets.
    pub fn world(self) -> &'static str {
        match self {
            PluginKind::Source => "source-plugin",
            PluginKind::Decoder => "decoder-plugin",
            PluginKind::Filter => "filter-plugin",
            PluginKind::Sink => "sink-plugin",
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.interface())
    }
}

/// Settings of the [`Runtime`].
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// Where compiled artifacts are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// The authorities sinks' HTTPS requests trust.
    pub tls: crate::outbound::TlsTrust,
    /// How far ahead of this machine's clock a message's timestamp may be; `None` for
    /// [`tocsin_message::MAX_TIMESTAMP_AHEAD_MS`] (a day).
    pub max_timestamp_ahead: Option<std::time::Duration>,
}

/// The engine and linker every plugin runs on. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<PluginState>>,
    cache: Option<CompileCache>,
    tls: Arc<crate::outbound::TlsContext>,
    /// See [`RuntimeConfig::max_timestamp_ahead`], in ms.
    timestamp_ahead_ms: u64,
}

/// A compiled, linked plugin, ready to instantiate many times.
pub struct Plugin {
    /// Which world it implements.
    pub kind: PluginKind,
    /// Which contract version it is built against.
    pub contract: Contract,
    /// Where it was loaded from.
    pub origin: PluginOrigin,
    /// sha256 of its bytes (hex).
    pub sha256: String,
    /// Whether it came from the compile cache.
    pub cache: CacheOutcome,
    pub(crate) pre: Pre,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("kind", &self.kind)
            .field("origin", &self.origin)
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// A plugin ready to instantiate, by world and contract version.
pub(crate) enum Pre {
    Source(source::SourcePluginPre<PluginState>),
    Decoder(decoder::DecoderPluginPre<PluginState>),
    Filter(filter::FilterPluginPre<PluginState>),
    Sink(sink::SinkPluginPre<PluginState>),
    SourceV0_1(v0_1::source::SourcePluginPre<PluginState>),
    DecoderV0_1(v0_1::decoder::DecoderPluginPre<PluginState>),
    FilterV0_1(v0_1::filter::FilterPluginPre<PluginState>),
    SinkV0_1(v0_1::sink::SinkPluginPre<PluginState>),
}

impl Runtime {
    /// Builds the engine (fuel metering on, so guest CPU is bounded per call) and the linker.
    pub fn new(config: RuntimeConfig) -> Result<Self, String> {
        let mut cfg = Config::new();
        cfg.consume_fuel(true);
        let engine =
            Engine::new(&cfg).map_err(|e| format!("cannot create the wasm engine: {e:#}"))?;
        let linker =
            Self::linker(&engine).map_err(|e| format!("cannot link host imports: {e:#}"))?;
        let cache = match &config.cache_dir {
            None => None,
            Some(dir) => Some(CompileCache::new(dir, &engine).map_err(|e| {
                format!("cannot create the compile cache in {}: {e}", dir.display())
            })?),
        };
        let tls = crate::outbound::TlsContext::new(&config.tls)?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            cache,
            tls: Arc::new(tls),
            timestamp_ahead_ms: config
                .max_timestamp_ahead
                .map_or(tocsin_message::MAX_TIMESTAMP_AHEAD_MS, |d| {
                    d.as_millis() as u64
                }),
        })
    }

    /// How far ahead of the clock, in ms, a plugin's output may be dated.
    pub fn timestamp_ahead_ms(&self) -> u64 {
        self.timestamp_ahead_ms
    }

    fn linker(engine: &Engine) -> wasmtime::Result<Linker<PluginState>> {
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        wit_types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        wit_host::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        crate::bindings::wit_control::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        v0_1::wit_types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        v0_1::wit_host::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        Ok(linker)
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn tls(&self) -> &Arc<crate::outbound::TlsContext> {
        &self.tls
    }

    /// Reads, checks and compiles (or loads from cache) the plugin at `path`. With `pinned`,
    /// refuses a file whose sha256 differs.
    pub fn load(&self, path: &Path, pinned: Option<&str>) -> Result<Arc<Plugin>, LoadError> {
        self.load_from(&PluginOrigin::File(path.to_path_buf()), pinned)
    }

    /// [`Runtime::load`] of a plugin wherever it comes from: a file, or built into the binary.
    pub fn load_from(
        &self,
        origin: &PluginOrigin,
        pinned: Option<&str>,
    ) -> Result<Arc<Plugin>, LoadError> {
        let display = origin.to_string();
        let bytes = origin.read().map_err(|source| LoadError::Read {
            path: display.clone(),
            source,
        })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if let Some(expected) = pinned {
            if !expected.eq_ignore_ascii_case(&sha256) {
                return Err(LoadError::DigestMismatch {
                    path: display,
                    expected: expected.to_ascii_lowercase(),
                    actual: sha256,
                });
            }
        }
        let invalid = |reason: String| LoadError::Invalid {
            path: display.clone(),
            reason,
        };
        check_is_component(&bytes).map_err(invalid)?;
        let (component, cache) = match &self.cache {
            Some(cache) => cache.load_or_compile(&self.engine, &bytes, &sha256),
            None => Component::new(&self.engine, &bytes).map(|c| (c, CacheOutcome::Compiled)),
        }
        .map_err(|e| invalid(format!("cannot compile: {e:#}")))?;
        let (kind, contract) = self.kind_of(&component).map_err(invalid)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| invalid(format!("imports something the host does not offer: {e:#}")))?;
        let wrong =
            |e: wasmtime::Error| invalid(format!("exports do not match the {kind} world: {e:#}"));
        let i = instance_pre;
        let pre = match (kind, contract) {
            (PluginKind::Source, Contract::V0_2) => {
                Pre::Source(source::SourcePluginPre::new(i).map_err(wrong)?)
            }
            (PluginKind::Decoder, Contract::V0_2) => {
                Pre::Decoder(decoder::DecoderPluginPre::new(i).map_err(wrong)?)
            }
            (PluginKind::Filter, Contract::V0_2) => {
                Pre::Filter(filter::FilterPluginPre::new(i).map_err(wrong)?)
            }
            (PluginKind::Sink, Contract::V0_2) => {
                Pre::Sink(sink::SinkPluginPre::new(i).map_err(wrong)?)
            }
            (PluginKind::Source, Contract::V0_1) => {
                Pre::SourceV0_1(v0_1::source::SourcePluginPre::new(i).map_err(wrong)?)
            }
            (PluginKind::Decoder, Contract::V0_1) => {
                Pre::DecoderV0_1(v0_1::decoder::DecoderPluginPre::new(i).map_err(wrong)?)
            }
            (PluginKind::Filter, Contract::V0_1) => {
                Pre::FilterV0_1(v0_1::filter::FilterPluginPre::new(i).map_err(wrong)?)
            }
            (PluginKind::Sink, Contract::V0_1) => {
                Pre::SinkV0_1(v0_1::sink::SinkPluginPre::new(i).map_err(wrong)?)
            }
        };
        Ok(Arc::new(Plugin {
            kind,
            contract,
            origin: origin.clone(),
            sha256,
            cache,
            pre,
        }))
    }

    /// Describes the component at `path` without running it: its size and digest, what it
    /// imports and exports, the world it implements and whether this host can run it. Only an
    /// unreadable file, or one that is not a component, is an `Err`; every other misfit is in
    /// [`Inspection::verdict`].
    pub fn inspect(&self, path: &Path) -> Result<Inspection, LoadError> {
        self.inspect_from(&PluginOrigin::File(path.to_path_buf()))
    }

    /// [`Runtime::inspect`] of a plugin wherever it comes from: a file, or built into the binary.
    pub fn inspect_from(&self, origin: &PluginOrigin) -> Result<Inspection, LoadError> {
        let display = origin.to_string();
        let bytes = origin.read().map_err(|source| LoadError::Read {
            path: display.clone(),
            source,
        })?;
        let invalid = |reason: String| LoadError::Invalid {
            path: display.clone(),
            reason,
        };
        check_is_component(&bytes).map_err(invalid)?;
        let component = Component::new(&self.engine, &bytes)
            .map_err(|e| invalid(format!("cannot compile: {e:#}")))?;
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let exports = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let found = self.kind_of(&component);
        let verdict = match &found {
            Err(e) => Err(e.clone()),
            Ok((kind, _)) => self
                .linker
                .instantiate_pre(&component)
                .map(|_| ())
                .map_err(|e| format!("imports something the {kind} world does not offer: {e:#}")),
        };
        Ok(Inspection {
            origin: origin.clone(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
            kind: found.as_ref().ok().map(|f| f.0),
            contract: found.as_ref().ok().map(|f| f.1),
            imports,
            exports,
            verdict,
        })
    }

    /// Which of our worlds, at which contract version, a component implements, from its
    /// exports.
    fn kind_of(&self, component: &Component) -> Result<(PluginKind, Contract), String> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let ours: Vec<&String> = exports
            .iter()
            .filter(|e| e.starts_with(&format!("{CONTRACT_PACKAGE}/")))
            .collect();
        let Some(first) = ours.first() else {
            return Err(format!(
                "exports none of the {CONTRACT_PACKAGE} interfaces (it exports: {}); build it against wit/ with the tocsin SDK",
                if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
            ));
        };
        if ours.len() > 1 {
            return Err(format!(
                "exports several plugin interfaces ({}); a plugin implements one world",
                exports.join(", ")
            ));
        }
        let rest = &first[CONTRACT_PACKAGE.len() + 1..];
        let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
        let Some(contract) = Contract::of_version(version) else {
            let spoken: Vec<String> = Contract::ALL
                .iter()
                .map(|c| format!("{CONTRACT_PACKAGE}@{}", c.version()))
                .collect();
            return Err(format!(
                "is built for {CONTRACT_PACKAGE}@{version}; this host speaks {} (and their patch releases)",
                spoken.join(" and ")
            ));
        };
        let kind = match interface {
            "source" => PluginKind::Source,
            "decoder" => PluginKind::Decoder,
            "filter" => PluginKind::Filter,
            "sink" => PluginKind::Sink,
            other => return Err(format!("exports an unknown plugin interface `{other}`")),
        };
        Ok((kind, contract))
    }
}

/// What [`Runtime::inspect`] found in a component.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The file, or the plugin built in.
    pub origin: PluginOrigin,
    /// Its size in bytes.
    pub size: u64,
    /// sha256 of its bytes (hex): what a pipeline file pins with `sha256 = "…"`.
    pub sha256: String,
    /// The world it implements, when it exports exactly one of ours at a contract version
    /// this host runs.
    pub kind: Option<PluginKind>,
    /// That contract version.
    pub contract: Option<Contract>,
    /// Its imports (interface names with versions).
    pub imports: Vec<String>,
    /// Its exports.
    pub exports: Vec<String>,
    /// `Ok` when this host can run it; else why not.
    pub verdict: Result<(), String>,
}

/// A component starts with the wasm magic and layer 1; a core module has layer 0.
fn check_is_component(bytes: &[u8]) -> Result<(), String> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(
            "is a core WebAssembly module, not a component; build for wasm32-wasip2 (cargo build --target wasm32-wasip2) or wrap it with `wasm-tools component new`".into(),
        ),
        _ => Err("is not a WebAssembly file".into()),
    }
}
