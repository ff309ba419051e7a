//! What the host offers every plugin.
//!
//! State written with [`state_set`] while handling a message is committed together with that
//! message's hand-over to the next queue: if the call fails, the writes are discarded with it.

use crate::bindings::source::tocsin::plugin::host as wit;
pub use wit::Level;

/// Writes a line to the host's log, tagged with this pipeline and stage.
pub fn log(level: Level, text: &str) {
    wit::log(level, text)
}

/// Logs at info level.
pub fn info(text: &str) {
    wit::log(Level::Info, text)
}

/// Logs at warn level.
pub fn warn(text: &str) {
    wit::log(Level::Warn, text)
}

/// Reads a value of this stage's durable state.
pub fn state_get(key: &str) -> Option<Vec<u8>> {
    wit::state_get(key)
}

/// Writes a value of this stage's durable state.
pub fn state_set(key: &str, value: &[u8]) {
    wit::state_set(key, value)
}

/// Removes a value of this stage's durable state.
pub fn state_delete(key: &str) {
    wit::state_delete(key)
}

/// Reads a JSON value of this stage's durable state; `None` when absent or unreadable.
pub fn state_get_json<T: serde::de::DeserializeOwned>(key: &str) -> Option<T> {
    state_get(key).and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

/// Writes a value of this stage's durable state as JSON.
pub fn state_set_json<T: serde::Serialize>(key: &str, value: &T) {
    // Serialising plain data to a Vec cannot fail.
    if let Ok(bytes) = serde_json::to_vec(value) {
        state_set(key, &bytes)
    }
}

/// A secret granted to this stage under `name`.
pub fn secret(name: &str) -> Option<String> {
    wit::secret(name)
}

/// A granted secret a sink cannot work without: a permanent delivery error when it is not
/// granted (retrying will not grant it).
pub fn require_secret(name: &str) -> Result<String, crate::DeliveryError> {
    secret(name).ok_or_else(|| {
        crate::DeliveryError::Permanent(format!("no secret `{name}` is granted to this sink"))
    })
}

/// Total and free bytes of the filesystem holding a granted directory.
pub fn disk_usage(granted_dir: &str) -> Result<(u64, u64), String> {
    wit::disk_usage(granted_dir)
}
