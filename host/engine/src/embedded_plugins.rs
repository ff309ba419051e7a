//! The shipped plugins, compiled into the `tocsin` binary by the build script (`build.rs`): a
//! pipeline naming `json` or `matrix` runs with the binary alone. A plugin directory still
//! comes first (`PluginResolver::with_embedded`), so an operator can override one.

use std::path::PathBuf;

use tocsin_config::PluginResolver;

include!(concat!(env!("OUT_DIR"), "/embedded_plugins.rs"));

/// Looks plugins up in `dirs` in turn, then among the ones built in.
pub fn resolver(dirs: Vec<PathBuf>) -> PluginResolver {
    PluginResolver::new(dirs).with_embedded(PLUGINS)
}

#[cfg(test)]
mod tests {
    use super::PLUGINS;

    #[test]
    fn every_built_in_plugin_is_a_component_under_its_own_name() {
        // Built after `make plugins` (as `make test` does), every shipped plugin is here.
        assert!(PLUGINS.len() >= 17, "{} built in", PLUGINS.len());
        for plugin in PLUGINS {
            assert!(plugin.bytes.starts_with(b"\0asm"), "{}", plugin.name);
            assert!(
                tocsin_config::validate::is_valid_name(plugin.name),
                "{}",
                plugin.name
            );
        }
        assert!(PLUGINS.iter().any(|p| p.name == "rate-limit"));
    }
}
