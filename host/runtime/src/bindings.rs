//! The host side of the WIT contract: one `bindgen!` per world and contract version.
//!
//! The current contract (`wit/tocsin.wit`, 0.2.1) is generated at the top; the frozen 0.1.0
//! contract (`wit/0.1.0/`) in [`v0_1`], so plugins built against either run. Within a version
//! the four worlds share one `types` and one `host` interface (generated in `source`).
//!
//! Exports are `async` (every call runs under a fuel budget that yields to tokio, so a
//! wall-clock timeout can stop it). Host imports are plain functions that may trap
//! (`trappable`), which is how quotas on state and logs are enforced; those of `control` are
//! `async` too (they wait for the server's store). A plugin built against 0.2.0 links against
//! these 0.2.1 bindings: wasmtime matches names semver-compatibly.

#![allow(missing_docs)]

/// `source-plugin`, and the shared `types`, `host` and `control` interfaces.
pub mod source {
    wasmtime::component::bindgen!({
        world: "tocsin:plugin/source-plugin@0.2.1",
        path: ["../../wit", "../../wit/0.1.0"],
        exports: { default: async },
        imports: {
            "tocsin:plugin/control": async | trappable,
            default: trappable,
        },
    });
}

/// `decoder-plugin`.
pub mod decoder {
    wasmtime::component::bindgen!({
        world: "tocsin:plugin/decoder-plugin@0.2.1",
        path: ["../../wit", "../../wit/0.1.0"],
        exports: { default: async },
        imports: { default: trappable },
        with: {
            "tocsin:plugin/types@0.2.1": crate::bindings::wit_types,
            "tocsin:plugin/host@0.2.1": crate::bindings::wit_host,
            "tocsin:plugin/control@0.2.1": crate::bindings::wit_control,
        },
    });
}

/// `filter-plugin`.
pub mod filter {
    wasmtime::component::bindgen!({
        world: "tocsin:plugin/filter-plugin@0.2.1",
        path: ["../../wit", "../../wit/0.1.0"],
        exports: { default: async },
        imports: { default: trappable },
        with: {
            "tocsin:plugin/types@0.2.1": crate::bindings::wit_types,
            "tocsin:plugin/host@0.2.1": crate::bindings::wit_host,
            "tocsin:plugin/control@0.2.1": crate::bindings::wit_control,
        },
    });
}

/// `sink-plugin`; its `wasi:http` import is served by wasmtime-wasi-http.
pub mod sink {
    wasmtime::component::bindgen!({
        world: "tocsin:plugin/sink-plugin@0.2.1",
        path: ["../../wit", "../../wit/0.1.0"],
        exports: { default: async },
        imports: { default: trappable },
        with: {
            "tocsin:plugin/types@0.2.1": crate::bindings::wit_types,
            "tocsin:plugin/host@0.2.1": crate::bindings::wit_host,
            "tocsin:plugin/control@0.2.1": crate::bindings::wit_control,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

/// The frozen contract 0.1.0: plugins built against it run unchanged. Their messages have no
/// link or key, and a 0.1.0 sink delivers one message per call (see `stage.rs`).
pub mod v0_1 {
    /// `source-plugin@0.1.0`, and its `types` and `host` interfaces.
    pub mod source {
        wasmtime::component::bindgen!({
            world: "tocsin:plugin/source-plugin@0.1.0",
            path: ["../../wit", "../../wit/0.1.0"],
            exports: { default: async },
            imports: { default: trappable },
        });
    }

    /// `decoder-plugin@0.1.0`.
    pub mod decoder {
        wasmtime::component::bindgen!({
            world: "tocsin:plugin/decoder-plugin@0.1.0",
            path: ["../../wit", "../../wit/0.1.0"],
            exports: { default: async },
            imports: { default: trappable },
            with: {
                "tocsin:plugin/types@0.1.0": crate::bindings::v0_1::wit_types,
                "tocsin:plugin/host@0.1.0": crate::bindings::v0_1::wit_host,
            },
        });
    }

    /// `filter-plugin@0.1.0`.
    pub mod filter {
        wasmtime::component::bindgen!({
            world: "tocsin:plugin/filter-plugin@0.1.0",
            path: ["../../wit", "../../wit/0.1.0"],
            exports: { default: async },
            imports: { default: trappable },
            with: {
                "tocsin:plugin/types@0.1.0": crate::bindings::v0_1::wit_types,
                "tocsin:plugin/host@0.1.0": crate::bindings::v0_1::wit_host,
            },
        });
    }

    /// `sink-plugin@0.1.0`.
    pub mod sink {
        wasmtime::component::bindgen!({
            world: "tocsin:plugin/sink-plugin@0.1.0",
            path: ["../../wit", "../../wit/0.1.0"],
            exports: { default: async },
            imports: { default: trappable },
            with: {
                "tocsin:plugin/types@0.1.0": crate::bindings::v0_1::wit_types,
                "tocsin:plugin/host@0.1.0": crate::bindings::v0_1::wit_host,
                "wasi:http": wasmtime_wasi_http::p2::bindings::http,
                "wasi:io": wasmtime_wasi::p2::bindings::io,
                "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            },
        });
    }

    pub use source::tocsin::plugin0_1_0::host as wit_host;
    pub use source::tocsin::plugin0_1_0::types as wit_types;
}

pub use source::tocsin::plugin0_2_1::control as wit_control;
pub use source::tocsin::plugin0_2_1::host as wit_host;
pub use source::tocsin::plugin0_2_1::types as wit_types;
