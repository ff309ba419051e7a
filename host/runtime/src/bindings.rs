//! The host side of the WIT contract: one `bindgen!` per world, sharing `types` and `host`.
//!
//! Exports are `async` (every call runs under a fuel budget that yields to tokio, so a
//! wall-clock timeout can stop it). Host imports are plain functions that may trap
//! (`trappable`), which is how quotas on state and logs are enforced.

#![allow(missing_docs)]

/// `source-plugin`, and the shared `types` and `host` interfaces.
pub mod source {
    wasmtime::component::bindgen!({
        world: "source-plugin",
        path: "../../wit",
        exports: { default: async },
        imports: { default: trappable },
    });
}

/// `decoder-plugin`.
pub mod decoder {
    wasmtime::component::bindgen!({
        world: "decoder-plugin",
        path: "../../wit",
        exports: { default: async },
        imports: { default: trappable },
        with: {
            "tocsin:plugin/types": crate::bindings::source::tocsin::plugin::types,
            "tocsin:plugin/host": crate::bindings::source::tocsin::plugin::host,
        },
    });
}

/// `filter-plugin`.
pub mod filter {
    wasmtime::component::bindgen!({
        world: "filter-plugin",
        path: "../../wit",
        exports: { default: async },
        imports: { default: trappable },
        with: {
            "tocsin:plugin/types": crate::bindings::source::tocsin::plugin::types,
            "tocsin:plugin/host": crate::bindings::source::tocsin::plugin::host,
        },
    });
}

/// `sink-plugin`; its `wasi:http` import is served by wasmtime-wasi-http.
pub mod sink {
    wasmtime::component::bindgen!({
        world: "sink-plugin",
        path: "../../wit",
        exports: { default: async },
        imports: { default: trappable },
        with: {
            "tocsin:plugin/types": crate::bindings::source::tocsin::plugin::types,
            "tocsin:plugin/host": crate::bindings::source::tocsin::plugin::host,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

pub use source::tocsin::plugin::host as wit_host;
pub use source::tocsin::plugin::types as wit_types;
