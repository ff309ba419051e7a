//! The server's status, open alerts, acknowledgements and silences (contract 0.2.1), for a
//! plugin that answers people — the `run-commands` filter answering `!status db1` in a Matrix
//! room.
//!
//! Nothing here works unless the pipeline file grants it to the stage:
//!
//! ```toml
//! [[filter]]
//! plugin = "run-commands"
//! grants = { control = { status = ["*"], ack = ["@alice:example.org"], silence = ["@alice:example.org"] } }
//! ```
//!
//! Each call names `who` asked; the host refuses ([`ControlError::Denied`]) a group the file
//! does not grant, or grants to others, and writes every call to its access log with `who`.

pub use crate::bindings::source::tocsin::plugin::control::{
    acknowledge, alerts, silence, silences, status, unsilence, ControlError, HostStatus, OpenAlert,
    Reading, SilenceInfo,
};

/// What went wrong, as a sentence for the person who asked.
pub fn explain(error: &ControlError) -> String {
    match error {
        ControlError::Denied(why) => format!("not allowed: {why}"),
        ControlError::Invalid(why) => why.clone(),
        ControlError::NotFound(why) => why.clone(),
        ControlError::Failed(why) => format!("the server could not do it now: {why}"),
    }
}
