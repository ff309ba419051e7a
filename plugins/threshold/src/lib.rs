//! `threshold`: compares a named metric with a warn and an error level and speaks only when the
//! state changes (ok → warning → error, and "resolved" on the way back to ok), with hysteresis
//! so a value hovering at a line does not flap, and an optional reminder while a problem lasts.
//!
//! State is kept per key (the values of `key_labels`) in durable plugin state, so a stale backup
//! checked every 15 minutes posts once, not every tick, even across restarts.
//!
//! ```toml
//! [[filter]]
//! plugin = "threshold"
//! config = { metric = "backup-age-seconds", above = { warn = 93600, error = 180000 },
//!            key_labels = ["host"], hysteresis = 600, repeat_every = "24h" }
//! ```
//! A message without the metric carries its source's own verdict: its severity (warning or
//! worse) is taken as the level, so "no backup found" is an alert like any other. A message
//! without the metric and below warning says nothing about this check: it is dropped and
//! changes nothing (so another measurement of the same host cannot resolve the alert).

use serde::Deserialize;
use tocsin_sdk::host::{state_get_json, state_set_json};
use tocsin_sdk::{declare_settings, export_filter, Filter, Message, MessageExt, Severity};

/// Warn and error levels; either may be left out.
#[derive(Deserialize, Clone, Copy)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Levels {
    /// The warning level.
    warn: Option<f64>,
    /// The error level.
    error: Option<f64>,
}

/// What a metric's numbers are, so messages say them for people.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
enum Unit {
    /// A duration in seconds: said as seconds, minutes, hours or days ("3 days").
    Seconds,
    /// A size in bytes: said in binary units ("92.3 GiB").
    Bytes,
    /// A percentage: "92 %".
    Percent,
}

impl Unit {
    /// `value` for people, with at most one decimal.
    fn show(self, value: f64) -> String {
        match self {
            Unit::Seconds => tocsin_sdk::units::duration(value),
            Unit::Bytes => tocsin_sdk::units::size(value),
            Unit::Percent => tocsin_sdk::units::percent(value),
        }
    }
}

/// Compares a metric of each message with warn and error levels and speaks only when the state
/// changes, with hysteresis and an optional reminder.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// The metric to compare.
    metric: String,
    /// Alert when the value is at or above these levels.
    above: Option<Levels>,
    /// Alert when the value is at or below these levels.
    below: Option<Levels>,
    /// How far back past a level the value must go to leave it; default 5 % of the level.
    hysteresis: Option<f64>,
    /// Labels whose values make the state key (one state per host, say).
    #[serde(default)]
    key_labels: Vec<String>,
    /// Repeat a warning or error this often while it lasts, e.g. "24h".
    repeat_every: Option<String>,
    /// Name of the check in messages; defaults to the metric.
    name: Option<String>,
    /// What the metric's numbers are (`seconds`, `bytes`, `percent`), so messages say "3 days"
    /// or "92.3 GiB" instead of the raw number; raw when absent.
    unit: Option<Unit>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, Deserialize, Debug)]
enum Level {
    Ok,
    Warning,
    Error,
}

impl Level {
    fn severity(self) -> Severity {
        match self {
            Level::Ok => Severity::Info,
            Level::Warning => Severity::Warning,
            Level::Error => Severity::Error,
        }
    }
    fn word(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
        }
    }
}

#[derive(serde::Serialize, Deserialize)]
struct KeyState {
    level: Level,
    last_spoken_ms: u64,
}

struct Threshold {
    metric: String,
    name: String,
    /// +1 for `above`, -1 for `below`: compare `sign * value` against `sign * level`.
    sign: f64,
    levels: Levels,
    hysteresis_warn: f64,
    hysteresis_error: f64,
    key_labels: Vec<String>,
    repeat_every_ms: Option<u64>,
    unit: Option<Unit>,
}

impl Threshold {
    fn classify(&self, value: f64, current: Level) -> Level {
        let v = self.sign * value;
        let reached = |level: Option<f64>, hysteresis: f64, held: bool| {
            level.is_some_and(|l| {
                let l = self.sign * l;
                if held {
                    v >= l - hysteresis
                } else {
                    v >= l
                }
            })
        };
        if reached(
            self.levels.error,
            self.hysteresis_error,
            current == Level::Error,
        ) {
            Level::Error
        } else if reached(
            self.levels.warn,
            self.hysteresis_warn,
            current >= Level::Warning,
        ) {
            Level::Warning
        } else {
            Level::Ok
        }
    }

    fn describe(&self, value: f64, level: Level) -> String {
        let (cmp, limit) = match level {
            Level::Error => ("reached the error level", self.levels.error),
            Level::Warning => ("reached the warning level", self.levels.warn),
            Level::Ok => (
                "is back within limits",
                self.levels.warn.or(self.levels.error),
            ),
        };
        let dir = if self.sign > 0.0 { "above" } else { "below" };
        let show = |v: f64| self.unit.map_or_else(|| v.to_string(), |u| u.show(v));
        let value = show(value);
        match limit.map(show) {
            Some(l) if level != Level::Ok => {
                format!("{} is {value} and {cmp} ({dir} {l})", self.metric)
            }
            Some(l) => format!("{} is {value} and {cmp} (not {dir} {l})", self.metric),
            None => format!("{} is {value}", self.metric),
        }
    }
}

impl Filter for Threshold {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        let (sign, levels) = match (c.above, c.below) {
            (Some(l), None) => (1.0, l),
            (None, Some(l)) => (-1.0, l),
            _ => return Err("set exactly one of `above` and `below`".into()),
        };
        if levels.warn.is_none() && levels.error.is_none() {
            return Err("set `warn`, `error` or both".into());
        }
        if let (Some(w), Some(e)) = (levels.warn, levels.error) {
            if sign * w > sign * e {
                return Err(format!("the warn level {w} is beyond the error level {e}"));
            }
        }
        let pct = |l: Option<f64>| l.map_or(0.0, |l| l.abs() * 0.05);
        let repeat_every_ms = match &c.repeat_every {
            None => None,
            Some(text) => Some(
                humantime::parse_duration(text)
                    .map_err(|e| format!("repeat_every `{text}`: {e}"))?
                    .as_millis() as u64,
            ),
        };
        Ok(Threshold {
            name: c.name.unwrap_or_else(|| c.metric.clone()),
            metric: c.metric,
            sign,
            levels,
            hysteresis_warn: c.hysteresis.unwrap_or_else(|| pct(levels.warn)),
            hysteresis_error: c.hysteresis.unwrap_or_else(|| pct(levels.error)),
            key_labels: c.key_labels,
            repeat_every_ms,
            unit: c.unit,
        })
    }

    fn process(&mut self, msg: Message) -> Result<Vec<Message>, String> {
        let key: Vec<String> = self
            .key_labels
            .iter()
            .map(|l| msg.label(l).unwrap_or("").to_string())
            .collect();
        let state_key = format!("level/{}", key.join("/"));
        let previous: Option<KeyState> = state_get_json(&state_key);
        let current = previous.as_ref().map_or(Level::Ok, |s| s.level);

        let value = msg.metric(&self.metric);
        let level = match value {
            Some(v) => self.classify(v, current),
            // No metric: the source judged for itself (e.g. "no backup found").
            None => match msg.severity {
                Severity::Error | Severity::Alert => Level::Error,
                Severity::Warning => Level::Warning,
                // A message about something else (sysmetrics' per-disk message under a CPU
                // threshold): no verdict, so it neither raises nor resolves anything.
                _ => return Ok(vec![]),
            },
        };

        let now = msg.timestamp_ms;
        let changed = level != current;
        let reminder = !changed
            && level != Level::Ok
            && match (self.repeat_every_ms, &previous) {
                (Some(every), Some(p)) => now.saturating_sub(p.last_spoken_ms) >= every,
                _ => false,
            };
        if !changed && !reminder {
            return Ok(vec![]);
        }
        state_set_json(
            &state_key,
            &KeyState {
                level,
                last_spoken_ms: now,
            },
        );

        let mut out = msg;
        let detail = match value {
            Some(v) => self.describe(v, level),
            None => out.body.clone(),
        };
        let subject = match &key[..] {
            [] => self.name.clone(),
            _ => format!("{} on {}", self.name, key.join("/")),
        };
        if level == Level::Ok {
            out.summary = Some(format!("RESOLVED: {subject}"));
            // Only a measurement resolves (a message without the metric is dropped above).
            out.body = detail;
            out.set_label("status", "resolved");
        } else {
            let prefix = if reminder { "STILL " } else { "" };
            out.summary = Some(format!("{prefix}{}: {subject}", level.word()));
            out.body = detail;
            out.set_label("status", "firing");
        }
        out.severity = level.severity();
        out.set_label("previous-level", current.word().to_ascii_lowercase());
        // The problem's identity across its notifications (firing, reminders, resolved): a
        // sink with `concurrency` keeps them in order by it.
        out.set_label("fingerprint", format!("{}/{}", self.name, key.join("/")));
        Ok(vec![out])
    }
}

export_filter!(Threshold);
declare_settings!(Config);

#[cfg(test)]
mod tests {
    use super::*;

    fn threshold(config: serde_json::Value) -> Threshold {
        Threshold::new(serde_json::from_value(config).unwrap()).unwrap()
    }

    #[test]
    fn units_say_numbers_for_people() {
        assert_eq!(Unit::Bytes.show(99_103_948_390.0), "92.3 GiB");
        assert_eq!(Unit::Percent.show(92.04), "92 %");
        let t = threshold(serde_json::json!({
            "metric": "backup-age-seconds", "above": {"warn": 93600, "error": 180000},
            "unit": "seconds"
        }));
        assert_eq!(
            t.describe(259_393.0, Level::Error),
            "backup-age-seconds is 3 days and reached the error level (above 2.1 days)"
        );
        let raw = threshold(serde_json::json!({"metric": "m", "above": {"warn": 1.5}}));
        assert_eq!(
            raw.describe(2.0, Level::Warning),
            "m is 2 and reached the warning level (above 1.5)"
        );
    }

    #[test]
    fn a_value_hovering_at_a_line_does_not_flap() {
        // Hysteresis defaults to 5 % of each level: 5 for warn, 10 for error.
        let t =
            threshold(serde_json::json!({"metric": "m", "above": {"warn": 100.0, "error": 200.0}}));
        assert_eq!(t.classify(99.0, Level::Ok), Level::Ok);
        assert_eq!(t.classify(100.0, Level::Ok), Level::Warning);
        // Dipping just under the line keeps the warning…
        assert_eq!(t.classify(97.0, Level::Warning), Level::Warning);
        assert_eq!(t.classify(100.5, Level::Warning), Level::Warning);
        // …only going back past the band clears it.
        assert_eq!(t.classify(94.0, Level::Warning), Level::Ok);
        assert_eq!(t.classify(200.0, Level::Warning), Level::Error);
        assert_eq!(t.classify(195.0, Level::Error), Level::Error);
        assert_eq!(t.classify(189.0, Level::Error), Level::Warning);
        assert_eq!(t.classify(50.0, Level::Error), Level::Ok);
    }

    #[test]
    fn below_levels_mirror_above_levels() {
        let t = threshold(
            serde_json::json!({"metric": "free", "below": {"warn": 10.0, "error": 5.0}, "hysteresis": 1.0}),
        );
        assert_eq!(t.classify(11.0, Level::Ok), Level::Ok);
        assert_eq!(t.classify(10.0, Level::Ok), Level::Warning);
        assert_eq!(t.classify(10.5, Level::Warning), Level::Warning);
        assert_eq!(t.classify(11.5, Level::Warning), Level::Ok);
        assert_eq!(t.classify(4.0, Level::Warning), Level::Error);
        assert_eq!(t.classify(5.8, Level::Error), Level::Error);
        assert_eq!(t.classify(6.5, Level::Error), Level::Warning);
    }

    #[test]
    fn contradictory_configs_are_refused() {
        let bad = |v: serde_json::Value| {
            Threshold::new(serde_json::from_value(v).unwrap())
                .err()
                .unwrap()
        };
        assert!(
            bad(serde_json::json!({"metric": "m", "above": {"warn": 300.0, "error": 200.0}}))
                .contains("beyond")
        );
        assert!(bad(serde_json::json!({"metric": "m"})).contains("exactly one"));
        assert!(bad(serde_json::json!({"metric": "m", "above": {}})).contains("`warn`, `error`"));
        assert!(bad(
            serde_json::json!({"metric": "m", "above": {"warn": 1.0}, "repeat_every": "often"})
        )
        .contains("repeat_every"));
    }
}
