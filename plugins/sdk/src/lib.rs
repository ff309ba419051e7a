//! Write tocsin plugins — sources, decoders, filters and sinks — in plain Rust.
//!
//! A plugin is a `cdylib` crate built for `wasm32-wasip2`. Implement one trait and call its
//! export macro; the SDK turns the stage's `config` table into your `Config` type, keeps your
//! plugin value between calls, and hides the generated WIT bindings.
//!
//! ```ignore
//! use tocsin_sdk::{export_filter, Filter, Message, Severity};
//!
//! #[derive(serde::Deserialize)]
//! struct Config { min: String }
//!
//! struct MinSeverity(Severity);
//!
//! impl Filter for MinSeverity {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self, String> {
//!         tocsin_sdk::severity_from_str(&config.min).map(MinSeverity).ok_or("bad `min`".into())
//!     }
//!     fn process(&mut self, msg: Message) -> Result<Vec<Message>, String> {
//!         Ok(if tocsin_sdk::rank(msg.severity) >= tocsin_sdk::rank(self.0) { vec![msg] } else { vec![] })
//!     }
//! }
//! export_filter!(MinSeverity);
//! ```
//!
//! # Layout
//! - [`Source`], [`Decoder`], [`Filter`], [`Sink`]: the four plugin kinds and their macros.
//! - [`host`]: what the host offers every plugin (log, durable state, secrets, disk usage).
//! - [`control`]: the server's status, open alerts, acknowledgements and silences, where the
//!   pipeline grants them (contract 0.2.1).
//! - [`http`]: a small blocking HTTP client over `wasi:http`, for sinks.
//! - [`group`]: a group of alerts rendered as one message (a sink's default for groups).
//! - `template` (feature `template`): Jinja templates over a message.
//! - `fuzz` (feature `fuzz`, for dev-dependencies): property tests of decoders.
//! - [`declare_settings!`] and `settings` (feature `settings`, for dev-dependencies): the
//!   plugin's settings as a JSON Schema carried in the component, checked against `Config`.
//! - [`bindings`]: the generated WIT bindings, if you need them directly.

// Every public item is documented; `make lint` (clippy -D warnings) holds it so.
#![warn(missing_docs)]

extern crate self as tocsin_sdk;

pub mod bindings;
pub mod control;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod group;
pub mod host;
pub mod http;
mod message;
#[cfg(feature = "settings")]
pub mod settings;
#[cfg(feature = "template")]
pub mod template;
pub mod units;

#[doc(hidden)]
pub mod __private;

pub use bindings::source::tocsin::plugin::types::{
    DeliveryError, Group, HttpRequest, Message, Notification, Rejection, Severity,
};
pub use message::{
    check_link, check_message, is_unprintable, rank, severity_emoji, severity_from_str,
    severity_name, MessageExt, OutputBudget, MAX_ID_BYTES, MAX_LINK_BYTES, MAX_TIMESTAMP_AHEAD_MS,
    MIN_TIMESTAMP_MS,
};

/// The contract version this SDK builds plugins against (`wit/tocsin.wit`).
pub const CONTRACT_VERSION: &str = "0.2.1";
pub use serde;
pub use serde_json;

/// The most messages one call may return. The host fails a call that returns more (see
/// `docs/operations.md`); decoders count with [`OutputBudget`] and refuse such a request.
pub const MAX_OUTPUT_MESSAGES: usize = 1000;

/// The most bytes of messages (as [`MessageExt::approx_size`] counts them) one call may
/// return; beyond, the host fails the call.
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;

/// A source polled on its pipeline's schedule.
pub trait Source: Sized + 'static {
    /// The stage's `config` table, deserialised from JSON.
    type Config: serde::de::DeserializeOwned;
    /// Builds the plugin from its config (called once per instance).
    fn new(config: Self::Config) -> Result<Self, String>;
    /// Looks at the world at the scheduled time `tick_ms` and reports what it saw.
    fn poll(&mut self, tick_ms: u64) -> Result<Vec<Message>, String>;
}

/// A source fed by `POST /ingest/{pipeline}`.
pub trait Decoder: Sized + 'static {
    /// The stage's `config` table, deserialised from JSON.
    type Config: serde::de::DeserializeOwned;
    /// Builds the plugin from its config (called once per instance).
    fn new(config: Self::Config) -> Result<Self, String>;
    /// Turns one request into messages, or rejects it with a 4xx and a reason.
    fn decode(&mut self, request: HttpRequest) -> Result<Vec<Message>, Rejection>;
}

/// A step between source and sinks.
pub trait Filter: Sized + 'static {
    /// The stage's `config` table, deserialised from JSON.
    type Config: serde::de::DeserializeOwned;
    /// Builds the plugin from its config (called once per instance).
    fn new(config: Self::Config) -> Result<Self, String>;
    /// `vec![]` drops, `vec![m]` passes or rewrites, more splits.
    fn process(&mut self, msg: Message) -> Result<Vec<Message>, String>;
}

/// The end of a pipeline.
///
/// The host hands a sink a [`Notification`]: most often one message, which the default
/// [`Sink::deliver_notification`] passes to [`Sink::deliver`]. A sink that can send several
/// messages in one request says so with [`Sink::batch_limit`] and overrides
/// `deliver_notification`; one that renders a group of alerts as one post (a pipeline's
/// `group` setting) overrides it too.
pub trait Sink: Sized + 'static {
    /// The stage's `config` table, deserialised from JSON.
    type Config: serde::de::DeserializeOwned;
    /// Builds the plugin from its config (called once per instance).
    fn new(config: Self::Config) -> Result<Self, String>;
    /// Delivers one message; pass `idempotency_key` on to the service.
    fn deliver(&mut self, msg: Message, idempotency_key: &str) -> Result<(), DeliveryError>;
    /// The most messages one [`Sink::deliver_notification`] takes when the host batches
    /// messages that are not grouped (asked once, after [`Sink::new`]). 1, the default,
    /// means one message per call.
    fn batch_limit(&self) -> u32 {
        1
    }
    /// Delivers a notification: one message, a batch (at most [`Sink::batch_limit`]) or a
    /// group. The whole call succeeds or fails: on a failure every message of it is tried
    /// again (with the same key when the host forms the same notification).
    ///
    /// The default: a group is rendered as one message ([`group::group_digest`]: its title
    /// and a line per alert) and delivered with [`Sink::deliver`]; otherwise each message is
    /// delivered with `deliver` — the only one under `idempotency_key`, several under
    /// `<idempotency_key>/<n>`, stopping at the first failure (the ones before it are
    /// delivered again, under the same keys, on the retry).
    fn deliver_notification(
        &mut self,
        notification: Notification,
        idempotency_key: &str,
    ) -> Result<(), DeliveryError> {
        if let Some(group) = &notification.group {
            let digest = group::group_digest(&notification, group);
            return self.deliver(digest, idempotency_key);
        }
        let mut messages = notification.messages;
        if messages.len() == 1 {
            return self.deliver(messages.remove(0), idempotency_key);
        }
        for (n, msg) in messages.into_iter().enumerate() {
            self.deliver(msg, &format!("{idempotency_key}/{n}"))?;
        }
        Ok(())
    }
}

/// The name of the custom section that carries a plugin's settings schema (see
/// [`declare_settings!`]).
pub const SETTINGS_SECTION: &str = "tocsin-settings";

/// Declares the plugin's settings: embeds `settings.schema.json` (next to `Cargo.toml`) in the
/// component as the custom section [`SETTINGS_SECTION`], where `tocsin validate`,
/// `tocsin plugin inspect` and the reference pages read it, and adds a unit test that the file
/// is the schema of `$config` (which derives `schemars::JsonSchema` in tests; enable the SDK's
/// `settings` feature in `[dev-dependencies]`). `TOCSIN_BLESS=1 cargo test` writes the file.
#[macro_export]
macro_rules! declare_settings {
    ($config:ty) => {
        #[cfg(target_family = "wasm")]
        #[link_section = "tocsin-settings"]
        #[used]
        static __TOCSIN_SETTINGS: [u8; include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/settings.schema.json"
        ))
        .len()] = *include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/settings.schema.json"));

        #[cfg(test)]
        #[test]
        fn settings_schema_is_the_schema_of_the_config() {
            $crate::settings::check_committed::<$config>(
                env!("CARGO_PKG_NAME"),
                env!("CARGO_MANIFEST_DIR"),
            );
        }
    };
}

/// Exports a [`Source`] implementation as the plugin's `source` interface.
#[macro_export]
macro_rules! export_source {
    ($ty:ty) => {
        const _: () = {
            struct __TocsinExport;
            impl $crate::bindings::source::exports::tocsin::plugin::source::Guest for __TocsinExport {
                fn init(config: String) -> Result<(), String> {
                    $crate::__private::init::<$ty, _>(&config, <$ty as $crate::Source>::new)
                }
                fn poll(tick_ms: u64) -> Result<Vec<$crate::Message>, String> {
                    $crate::__private::with::<$ty, _>(|p| $crate::Source::poll(p, tick_ms))?
                }
            }
            $crate::bindings::source::export_source_world!(__TocsinExport with_types_in $crate::bindings::source);
        };
    };
}

/// Exports a [`Decoder`] implementation as the plugin's `decoder` interface.
#[macro_export]
macro_rules! export_decoder {
    ($ty:ty) => {
        const _: () = {
            struct __TocsinExport;
            impl $crate::bindings::decoder::exports::tocsin::plugin::decoder::Guest for __TocsinExport {
                fn init(config: String) -> Result<(), String> {
                    $crate::__private::init::<$ty, _>(&config, <$ty as $crate::Decoder>::new)
                }
                fn decode(request: $crate::HttpRequest) -> Result<Vec<$crate::Message>, $crate::Rejection> {
                    $crate::__private::with::<$ty, _>(|p| $crate::Decoder::decode(p, request))
                        .map_err(|reason| $crate::Rejection { status: 400, reason })?
                }
            }
            $crate::bindings::decoder::export_decoder_world!(__TocsinExport with_types_in $crate::bindings::decoder);
        };
    };
}

/// Exports a [`Filter`] implementation as the plugin's `filter` interface.
#[macro_export]
macro_rules! export_filter {
    ($ty:ty) => {
        const _: () = {
            struct __TocsinExport;
            impl $crate::bindings::filter::exports::tocsin::plugin::filter::Guest for __TocsinExport {
                fn init(config: String) -> Result<(), String> {
                    $crate::__private::init::<$ty, _>(&config, <$ty as $crate::Filter>::new)
                }
                fn process(msg: $crate::Message) -> Result<Vec<$crate::Message>, String> {
                    $crate::__private::with::<$ty, _>(|p| $crate::Filter::process(p, msg))?
                }
            }
            $crate::bindings::filter::export_filter_world!(__TocsinExport with_types_in $crate::bindings::filter);
        };
    };
}

/// Exports a [`Sink`] implementation as the plugin's `sink` interface.
#[macro_export]
macro_rules! export_sink {
    ($ty:ty) => {
        const _: () = {
            struct __TocsinExport;
            impl $crate::bindings::sink::exports::tocsin::plugin::sink::Guest for __TocsinExport {
                fn init(config: String) -> Result<(), String> {
                    $crate::__private::init::<$ty, _>(&config, <$ty as $crate::Sink>::new)
                }
                fn batch_limit() -> u32 {
                    $crate::__private::with::<$ty, _>(|p| $crate::Sink::batch_limit(p)).unwrap_or(1)
                }
                fn deliver(notification: $crate::Notification, idempotency_key: String) -> Result<(), $crate::DeliveryError> {
                    $crate::__private::with::<$ty, _>(|p| $crate::Sink::deliver_notification(p, notification, &idempotency_key))
                        .map_err($crate::DeliveryError::Permanent)?
                }
            }
            $crate::bindings::sink::export_sink_world!(__TocsinExport with_types_in $crate::bindings::sink);
        };
    };
}
