//! Numbers for people: a duration in seconds as "3 days", a size in bytes as "92.3 GiB", a
//! percentage as "99 %" — at most one decimal. `threshold`'s `unit` and the template filters
//! `duration`, `bytes` and `percent` say numbers this way.

/// `v` with at most one decimal (`2.1`, `3`).
fn one_decimal(v: f64) -> String {
    let text = format!("{v:.1}");
    match text.strip_suffix(".0") {
        Some(whole) => whole.to_string(),
        None => text,
    }
}

/// A duration in seconds in the largest of days, hours, minutes it is at least two of:
/// `259393` → "3 days", `93600` → "26 hours", `150` → "2.5 minutes", `1` → "1 second".
pub fn duration(seconds: f64) -> String {
    let scales = [(86_400.0, "day"), (3_600.0, "hour"), (60.0, "minute")];
    let (n, name) = scales
        .iter()
        .find(|(scale, _)| seconds.abs() >= 2.0 * scale)
        .map_or((seconds, "second"), |(scale, name)| {
            (seconds / scale, *name)
        });
    let n = one_decimal(n);
    let plural = if n == "1" { "" } else { "s" };
    format!("{n} {name}{plural}")
}

/// A size in bytes in binary units: `99103948390` → "92.3 GiB", `512` → "512 B".
pub fn size(bytes: f64) -> String {
    let units = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    match units
        .iter()
        .find(|(shift, _)| bytes.abs() >= (1u64 << shift) as f64)
    {
        Some((shift, name)) => format!("{} {name}", one_decimal(bytes / (1u64 << shift) as f64)),
        None => format!("{} B", one_decimal(bytes)),
    }
}

/// A percentage: `92.04` → "92 %".
pub fn percent(value: f64) -> String {
    format!("{} %", one_decimal(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_said_for_people() {
        assert_eq!(duration(259_393.0), "3 days");
        assert_eq!(duration(180_000.0), "2.1 days");
        assert_eq!(duration(93_600.0), "26 hours");
        assert_eq!(duration(150.0), "2.5 minutes");
        assert_eq!(duration(1.0), "1 second");
        assert_eq!(size(99_103_948_390.0), "92.3 GiB");
        assert_eq!(size(512.0), "512 B");
        assert_eq!(percent(92.04), "92 %");
    }
}
