//! The sandbox: loads plugin components and runs them under limits and grants.
//!
//! This is the only crate that names wasmtime types. Read it top to bottom:
//!
//! 1. [`Runtime::new`] builds one `Engine` (fuel metering, Cranelift) and one `Linker` holding
//!    WASI p2, `wasi:http` and our `host` interface, in both contract versions it runs (0.2.0,
//!    and the frozen 0.1.0: [`bindings`], [`Contract`]).
//! 2. [`Runtime::load`] compiles a `.wasm` once — or loads the cached artifact, keyed by the
//!    wasm's sha256 and the engine's compatibility hash — checks which world it implements and
//!    prepares an `InstancePre` (see [`cache`] and [`plugin`]).
//! 3. [`Stage`] owns one live instance of a plugin for one pipeline stage: it instantiates
//!    lazily with a fresh `Store` (memory cap, grants, secrets — see [`store`]), calls `init`
//!    once, then reuses the instance. Every call gets a fuel budget (CPU time of guest code
//!    only: host calls burn none) and a wall-clock timeout (host calls and outbound HTTP
//!    included). A trap, an exhausted budget, a timeout or a memory cap hit discards the
//!    instance; the next call builds a fresh one.
//! 4. Host imports live in [`host_api`] (log, state, secrets, disk usage) and [`control`]
//!    (status, alerts, acknowledgements, silences; granted per pipeline); outbound HTTP goes
//!    through [`http_policy`], which refuses hosts the pipeline did not grant, then out over
//!    the stage's own keep-alive connection pool ([`outbound`]).
//!
//! Plugin state written during a call is buffered and handed back with the call's result
//! ([`StateChanges`]); the engine commits it with the message's hand-over, so a failed call's
//! writes vanish with it.

pub mod bindings;
pub mod cache;
pub mod control;
mod convert;
pub mod group_digest;
pub mod guest_text;
pub mod host_api;
pub mod http_policy;
pub mod log_budget;
mod log_stream;
pub mod outbound;
mod planted_links;
pub mod plugin;
pub mod proc_view;
pub mod stage;
mod stdout_cap;
pub mod store;

pub use group_digest::GroupInfo;
pub use outbound::TlsTrust;
pub use plugin::{
    Contract, Inspection, Plugin, PluginKind, Runtime, RuntimeConfig, CONTRACT_PACKAGE,
    CONTRACT_VERSION,
};
pub use stage::{
    CallError, DeliveryOutcome, IngestRequest, Rejection, Stage, StageContext, StateChanges,
    StateReader, TrapKind,
};

/// Errors loading a plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not a component we can run.
    #[error("{path}: {reason}")]
    Invalid {
        /// Which file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Its sha256 differs from the pinned one.
    #[error("{path} has sha256 {actual}, not the pinned {expected}")]
    DigestMismatch {
        /// Which file.
        path: String,
        /// Pinned.
        expected: String,
        /// Found.
        actual: String,
    },
}
