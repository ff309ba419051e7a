//! Our `host` interface, as the guest sees it: log, durable state, secrets, disk usage.
//!
//! Every import is bounded: a plugin is untrusted and could call these in a loop.

use crate::bindings::wit_host::{self, Level};
use crate::bindings::wit_types;
use crate::store::PluginState;

/// Log lines per call; the rest are dropped and counted (a guest can log ~440 k lines/s).
pub const MAX_LOG_LINES_PER_CALL: u32 = 100;
/// Bytes per log line; longer lines are cut.
pub const MAX_LOG_LINE_BYTES: usize = 2048;
/// Longest state key.
pub const MAX_STATE_KEY_BYTES: usize = 512;
/// Largest state value.
pub const MAX_STATE_VALUE_BYTES: usize = 256 * 1024;
/// Distinct keys written per call (a guest can write 100 k values in 0.13 s).
pub const MAX_STATE_WRITES_PER_CALL: usize = 1024;

/// A plugin broke one of the host's quotas; the call traps with this error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct QuotaExceeded(pub String);

fn quota(message: String) -> wasmtime::Error {
    wasmtime::Error::new(QuotaExceeded(message))
}

impl wit_types::Host for PluginState {}

impl wit_host::Host for PluginState {
    fn log(&mut self, level: Level, text: String) -> wasmtime::Result<()> {
        let h = &mut self.host;
        h.log_lines += 1;
        if h.log_lines > MAX_LOG_LINES_PER_CALL {
            h.log.count_dropped();
            return Ok(());
        }
        if !h.log.admit() {
            return Ok(());
        }
        let mut text = h.text.clean(&text);
        crate::guest_text::cut(&mut text, MAX_LOG_LINE_BYTES);
        let (pipeline, stage) = (&*h.pipeline, &*h.stage);
        match level {
            Level::Trace => tracing::trace!(pipeline, stage, "{text}"),
            Level::Debug => tracing::debug!(pipeline, stage, "{text}"),
            Level::Info => tracing::info!(pipeline, stage, "{text}"),
            Level::Warn => tracing::warn!(pipeline, stage, "{text}"),
            Level::Error => tracing::error!(pipeline, stage, "{text}"),
        }
        Ok(())
    }

    fn state_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        if let Some(pending) = self.host.pending.get(&key) {
            return Ok(pending.clone());
        }
        self.host
            .state
            .get(&key)
            .map_err(|e| wasmtime::format_err!("plugin state unavailable: {e}"))
    }

    fn state_set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        check_key(&key)?;
        if value.len() > MAX_STATE_VALUE_BYTES {
            return Err(quota(format!(
                "state value for `{key}` is {} bytes; the cap is {MAX_STATE_VALUE_BYTES}",
                value.len()
            )));
        }
        self.pending_write(key, Some(value))
    }

    fn state_delete(&mut self, key: String) -> wasmtime::Result<()> {
        check_key(&key)?;
        self.pending_write(key, None)
    }

    fn secret(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self
            .host
            .secrets
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone()))
    }

    fn disk_usage(&mut self, granted_dir: String) -> wasmtime::Result<Result<(u64, u64), String>> {
        let wanted = granted_dir.trim_end_matches('/');
        let Some((_, dir)) = self.host.dirs.iter().find(|(guest, _)| guest == wanted) else {
            return Ok(Err(format!(
                "{granted_dir} is not a directory granted to this stage"
            )));
        };
        Ok(fs4::total_space(dir)
            .and_then(|total| Ok((total, fs4::available_space(dir)?)))
            .map_err(|e| format!("{granted_dir}: {e}")))
    }
}

/// The `host` interface of contract 0.1.0: the same functions, served by the ones above.
impl crate::bindings::v0_1::wit_types::Host for PluginState {}

impl crate::bindings::v0_1::wit_host::Host for PluginState {
    fn log(
        &mut self,
        level: crate::bindings::v0_1::wit_host::Level,
        text: String,
    ) -> wasmtime::Result<()> {
        use crate::bindings::v0_1::wit_host::Level as L;
        let level = match level {
            L::Trace => Level::Trace,
            L::Debug => Level::Debug,
            L::Info => Level::Info,
            L::Warn => Level::Warn,
            L::Error => Level::Error,
        };
        wit_host::Host::log(self, level, text)
    }

    fn state_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        wit_host::Host::state_get(self, key)
    }

    fn state_set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        wit_host::Host::state_set(self, key, value)
    }

    fn state_delete(&mut self, key: String) -> wasmtime::Result<()> {
        wit_host::Host::state_delete(self, key)
    }

    fn secret(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        wit_host::Host::secret(self, name)
    }

    fn disk_usage(&mut self, granted_dir: String) -> wasmtime::Result<Result<(u64, u64), String>> {
        wit_host::Host::disk_usage(self, granted_dir)
    }
}

impl PluginState {
    fn pending_write(&mut self, key: String, value: Option<Vec<u8>>) -> wasmtime::Result<()> {
        let pending = &mut self.host.pending;
        if !pending.contains_key(&key) && pending.len() >= MAX_STATE_WRITES_PER_CALL {
            return Err(quota(format!(
                "more than {MAX_STATE_WRITES_PER_CALL} state keys written in one call"
            )));
        }
        pending.insert(key, value);
        Ok(())
    }
}

fn check_key(key: &str) -> wasmtime::Result<()> {
    if key.is_empty() || key.len() > MAX_STATE_KEY_BYTES {
        return Err(quota(format!(
            "state keys must be 1..={MAX_STATE_KEY_BYTES} bytes"
        )));
    }
    Ok(())
}
