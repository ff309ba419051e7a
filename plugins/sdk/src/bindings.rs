//! The WIT bindings, generated once per world from `wit/tocsin.wit`.
//!
//! The four worlds share the `types`, `host` and `control` interfaces: they are generated in [`source`]
//! and reused by the others, so a [`crate::Message`] is one type whatever the plugin kind.
//! Export macros are public (`pub_export_macro`), so each world's exports only reach the final
//! component when a plugin calls the matching `export_*!` macro.

#![allow(missing_docs)]

/// The `source-plugin` world (and the shared `types`, `host` and `control` interfaces).
pub mod source {
    wit_bindgen::generate!({
        world: "source-plugin",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_source_world",
        default_bindings_module: "tocsin_sdk::bindings::source",
        additional_derives: [PartialEq],
    });
}

/// The `decoder-plugin` world.
pub mod decoder {
    wit_bindgen::generate!({
        world: "decoder-plugin",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_decoder_world",
        default_bindings_module: "tocsin_sdk::bindings::decoder",
        with: {
            "tocsin:plugin/types@0.2.1": tocsin_sdk::bindings::source::tocsin::plugin::types,
            "tocsin:plugin/host@0.2.1": tocsin_sdk::bindings::source::tocsin::plugin::host,
            "tocsin:plugin/control@0.2.1": tocsin_sdk::bindings::source::tocsin::plugin::control,
        },
    });
}

/// The `filter-plugin` world.
pub mod filter {
    wit_bindgen::generate!({
        world: "filter-plugin",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_filter_world",
        default_bindings_module: "tocsin_sdk::bindings::filter",
        with: {
            "tocsin:plugin/types@0.2.1": tocsin_sdk::bindings::source::tocsin::plugin::types,
            "tocsin:plugin/host@0.2.1": tocsin_sdk::bindings::source::tocsin::plugin::host,
            "tocsin:plugin/control@0.2.1": tocsin_sdk::bindings::source::tocsin::plugin::control,
        },
    });
}

/// The `sink-plugin` world, with `wasi:http` for [`crate::http`].
pub mod sink {
    wit_bindgen::generate!({
        world: "sink-plugin",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_sink_world",
        default_bindings_module: "tocsin_sdk::bindings::sink",
        with: {
            "tocsin:plugin/types@0.2.1": tocsin_sdk::bindings::source::tocsin::plugin::types,
            "tocsin:plugin/host@0.2.1": tocsin_sdk::bindings::source::tocsin::plugin::host,
            "tocsin:plugin/control@0.2.1": tocsin_sdk::bindings::source::tocsin::plugin::control,
        },
        generate_all,
    });
}
