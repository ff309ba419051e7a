//! Message templates (Jinja syntax, by minijinja), for plugins that format messages.
//!
//! A template sees the message as: `id`, `timestamp_ms`, `severity` (`"warning"`), `emoji`
//! (`"⚠️ "`, empty for none), `summary` (or `none`), `body`, `labels` (a map:
//! `labels.host`, `labels["event-type"]`), `metrics` (a map) and `payload`. Numbers for
//! people: the filters `duration` (seconds → "3 days"), `bytes` ("92.3 GiB") and `percent`
//! ("99 %"), e.g. `{{ metrics["backup-age-seconds"] | duration }}` ([`crate::units`]).
//!
//! ```ignore
//! let t = Template::compile("body", "{{ emoji }}{{ labels.host }}: {{ body }}")?;
//! let text = t.render(&msg)?;
//! ```

use std::collections::BTreeMap;

use crate::{severity_emoji, severity_name, Message};

/// A compiled template.
pub struct Template {
    env: minijinja::Environment<'static>,
    name: &'static str,
}

impl Template {
    /// Compiles `source`; `name` appears in error messages.
    pub fn compile(name: &str, source: &str) -> Result<Template, String> {
        let mut env = minijinja::Environment::new();
        env.add_filter("duration", |v: f64| crate::units::duration(v));
        env.add_filter("bytes", |v: f64| crate::units::size(v));
        env.add_filter("percent", |v: f64| crate::units::percent(v));
        // A plugin instance compiles its templates once, in `init`; leaking them gives the
        // environment the 'static sources it wants, for the instance's lifetime.
        let name: &'static str = Box::leak(name.to_string().into_boxed_str());
        let source: &'static str = Box::leak(source.to_string().into_boxed_str());
        env.add_template(name, source)
            .map_err(|e| format!("template `{name}`: {e}"))?;
        Ok(Template { env, name })
    }

    /// Renders the template for `msg`.
    pub fn render(&self, msg: &Message) -> Result<String, String> {
        let labels: BTreeMap<&str, &str> = msg
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let metrics: BTreeMap<&str, f64> =
            msg.metrics.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let ctx = minijinja::context! {
            id => msg.id,
            timestamp_ms => msg.timestamp_ms,
            severity => severity_name(msg.severity),
            emoji => severity_emoji(msg.severity),
            summary => msg.summary,
            body => msg.body,
            labels => labels,
            metrics => metrics,
            payload => msg.payload,
            link => msg.link,
            key => msg.key,
        };
        self.env
            .get_template(self.name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| format!("template `{}`: {e}", self.name))
    }
}
