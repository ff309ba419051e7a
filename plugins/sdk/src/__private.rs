//! Glue used by the export macros. Not part of the API.

use std::any::Any;
use std::cell::RefCell;

thread_local! {
    /// The plugin value built by `init`; a component instance runs one plugin.
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Parses `config` (JSON) and builds the plugin with `make`.
pub fn init<T: 'static, C: serde::de::DeserializeOwned>(
    config: &str,
    make: fn(C) -> Result<T, String>,
) -> Result<(), String> {
    let config: C = serde_json::from_str(if config.trim().is_empty() {
        "{}"
    } else {
        config
    })
    .map_err(|e| format!("invalid config: {e}"))?;
    let plugin = make(config)?;
    INSTANCE.with(|i| *i.borrow_mut() = Some(Box::new(plugin)));
    Ok(())
}

/// Runs `f` on the plugin value; an error when `init` has not succeeded.
pub fn with<T: 'static, R>(f: impl FnOnce(&mut T) -> R) -> Result<R, String> {
    INSTANCE.with(|i| {
        let mut slot = i.borrow_mut();
        match slot.as_mut().and_then(|b| b.downcast_mut::<T>()) {
            Some(plugin) => Ok(f(plugin)),
            None => Err("the plugin was called before a successful init".to_string()),
        }
    })
}
