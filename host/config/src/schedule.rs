//! Cron schedules: 6- or 7-field expressions with seconds, and 5-field crontab lines.

use std::str::FromStr;

/// Parses a cron expression. A 5-field crontab line (`*/15 * * * *`) gets a `0` seconds field
/// prepended; 6 and 7 fields are taken as the `cron` crate reads them (sec min hour dom mon dow
/// [year]).
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    let fields = expr.split_whitespace().count();
    let full = match fields {
        5 => format!("0 {expr}"),
        6 | 7 => expr.to_string(),
        n => {
            return Err(format!(
                "`{expr}` has {n} fields; write 6 (sec min hour day month weekday), \
                 7 (with year), or a 5-field crontab line"
            ))
        }
    };
    cron::Schedule::from_str(&full).map_err(|e| format!("`{expr}` is not a cron expression: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_seconds_and_crontab_forms() {
        assert!(parse_cron("0 */15 * * * *").is_ok());
        assert!(parse_cron("*/15 * * * *").is_ok());
        assert!(parse_cron("* * * * * * 2030").is_ok());
    }

    #[test]
    fn rejects_bad_expressions_with_the_expression_in_the_message() {
        let e = parse_cron("every day").unwrap_err();
        assert!(e.contains("every day") && e.contains("2 fields"), "{e}");
        let e = parse_cron("0 61 * * * *").unwrap_err();
        assert!(e.contains("0 61"), "{e}");
    }
}
