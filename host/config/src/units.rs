//! Human-written durations and sizes in pipeline files.

use std::time::Duration;

/// Parses a duration such as `"250ms"`, `"1s"`, `"10m"` or `"1h 30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("`{text}` is not a duration ({e}); write e.g. \"500ms\", \"30s\", \"10m\"")
    })
}

/// Parses a size such as `"64MiB"`, `"512 KiB"` or `"1GB"` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("`{text}` is not a size ({e}); write e.g. \"64MiB\""))
}

/// Writes a size the way pipeline files do: `64MiB`, `1GiB`, `1500B` (the largest binary unit
/// that divides it).
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// A size for people, with one decimal in binary units: `850 B`, `91.3 MiB`.
pub fn human_size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse_and_reject_nonsense() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert!(parse_size("lots").is_err());
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(4 << 30), "4GiB");
        assert_eq!(format_size(1), "1B");
        assert_eq!(format_size(1536), "1536B");
        assert_eq!(parse_size(&format_size(3 << 10)).unwrap(), 3 << 10);
    }
}
