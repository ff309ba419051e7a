//! Maintenance windows: recurring times, written in a pipeline file, when the messages they
//! match are muted as by a silence — Alertmanager's `time_intervals`.
//!
//! ```toml
//! [[maintenance]]
//! name = "nightly backups"
//! timezone = "Europe/Berlin"
//! weekdays = ["mon:fri"]
//! times = ["02:00-04:30"]
//! match = ["job=backup"]
//! ```
//!
//! A window is open at an instant when, in its time zone, every field it gives holds:
//! `weekdays` (`mon`…`sun` or full names, ranges `mon:fri`), `times` (`HH:MM-HH:MM`, start
//! included, end excluded, end up to `24:00`), `days_of_month` (`1`…`31`, or from the month's
//! end `-1`…`-31`; ranges `1:7`, `-3:-1`) and `months` (`jan`…`dec`, full names or `1`…`12`;
//! ranges `jun:aug`). A field left out holds always; at least one must be given.

use chrono::{Datelike, TimeZone, Timelike};

use crate::matchers::Matcher;
use tocsin_message::Message;

/// One maintenance window of a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct MaintenanceWindow {
    /// Its name, as traces show it (`maintenance[0]` when the file gives none).
    pub name: String,
    /// The zone its fields are read in.
    pub timezone: chrono_tz::Tz,
    /// Weekday ranges, `0` = Monday, inclusive.
    pub weekdays: Vec<(u32, u32)>,
    /// Minute-of-day ranges, start included, end excluded.
    pub times: Vec<(u32, u32)>,
    /// Day-of-month ranges, inclusive; negative counts from the month's end (`-1` = last).
    pub days_of_month: Vec<(i32, i32)>,
    /// Month ranges, `1` = January, inclusive.
    pub months: Vec<(u32, u32)>,
    /// What it mutes: messages all of them pick (every message when empty).
    pub matchers: Vec<Matcher>,
    /// The sinks it covers; empty for all of the pipeline's.
    pub sinks: Vec<String>,
}

impl MaintenanceWindow {
    /// The id traces and the open-alert register give it: `maintenance:<name>`.
    pub fn id(&self) -> String {
        format!("maintenance:{}", self.name)
    }

    /// Whether it is open at `now_ms` (ms since the epoch).
    pub fn open_at(&self, now_ms: u64) -> bool {
        let Some(utc) = chrono::DateTime::from_timestamp_millis(now_ms as i64) else {
            return false;
        };
        let t = self.timezone.from_utc_datetime(&utc.naive_utc());
        let weekday = t.weekday().num_days_from_monday();
        let minute = t.hour() * 60 + t.minute();
        let day = t.day() as i32;
        let month = t.month();
        let month_days = days_in_month(t.year(), month) as i32;
        let in_ranges = |ranges: &[(u32, u32)], v: u32| {
            ranges.is_empty() || ranges.iter().any(|(a, b)| (*a..=*b).contains(&v))
        };
        in_ranges(&self.weekdays, weekday)
            && in_ranges(&self.months, month)
            && (self.times.is_empty() || self.times.iter().any(|(a, b)| (*a..*b).contains(&minute)))
            && (self.days_of_month.is_empty()
                || self.days_of_month.iter().any(|(a, b)| {
                    let resolve = |d: i32| if d < 0 { month_days + 1 + d } else { d };
                    (resolve(*a)..=resolve(*b)).contains(&day)
                }))
    }

    /// Whether it mutes `message` on its way to `sink` at `now_ms`.
    pub fn mutes(&self, sink: &str, message: &Message, now_ms: u64) -> bool {
        self.covers(sink, message) && self.open_at(now_ms)
    }

    /// Whether it mutes `message` on its way to `sink` while it is open.
    pub fn covers(&self, sink: &str, message: &Message) -> bool {
        (self.sinks.is_empty() || self.sinks.iter().any(|s| s == sink))
            && self.matchers.iter().all(|m| m.matches(message))
    }
}

/// Days of `month` (1–12) of `year`.
fn days_in_month(year: i32, month: u32) -> u32 {
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    chrono::NaiveDate::from_ymd_opt(next_year, next_month, 1)
        .and_then(|d| d.pred_opt())
        .map_or(31, |d| d.day())
}

const WEEKDAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// A name of `names` (full or its first three letters, any case) → its index.
fn named(names: &[&str], text: &str) -> Option<u32> {
    let lower = text.trim().to_ascii_lowercase();
    names
        .iter()
        .position(|n| *n == lower || (lower.len() == 3 && n.starts_with(&lower)))
        .map(|i| i as u32)
}

/// `a` or `a:b` (for weekdays also `a-b`), each end read by `one`; start ≤ end.
fn range<T: PartialOrd + Copy>(
    text: &str,
    dash_too: bool,
    one: impl Fn(&str) -> Result<T, String>,
) -> Result<(T, T), String> {
    let split = text
        .split_once(':')
        .or_else(|| dash_too.then(|| text.split_once('-')).flatten());
    let (a, b) = match split {
        Some((a, b)) => (one(a)?, one(b)?),
        None => {
            let v = one(text)?;
            (v, v)
        }
    };
    if a > b {
        return Err(format!("`{text}` ends before it begins"));
    }
    Ok((a, b))
}

/// A weekday range: `mon`, `monday`, `mon:fri`, `mon-fri` → (0, 4).
pub fn parse_weekdays(text: &str) -> Result<(u32, u32), String> {
    range(text, true, |d| {
        named(&WEEKDAYS, d).ok_or_else(|| {
            format!(
                "`{}` is not a weekday (mon, tue, …, sun, or full names)",
                d.trim()
            )
        })
    })
}

/// A month range: `jan`, `june`, `6`, `jun:aug` → (6, 8).
pub fn parse_months(text: &str) -> Result<(u32, u32), String> {
    range(text, true, |m| {
        let m = m.trim();
        named(&MONTHS, m)
            .map(|i| i + 1)
            .or_else(|| m.parse::<u32>().ok().filter(|n| (1..=12).contains(n)))
            .ok_or_else(|| format!("`{m}` is not a month (jan … dec, or 1 … 12)"))
    })
}

/// A day-of-month range: `1`, `1:7`, `-1` (the last day), `-3:-1`; both ends of one sign.
pub fn parse_days_of_month(text: &str) -> Result<(i32, i32), String> {
    let (a, b) = range(text, false, |d| {
        d.trim()
            .parse::<i32>()
            .ok()
            .filter(|n| (1..=31).contains(&n.abs()))
            .ok_or_else(|| {
                format!(
                    "`{}` is not a day of the month (1 … 31, or -1 … -31 from its end)",
                    d.trim()
                )
            })
    })?;
    if (a < 0) != (b < 0) {
        return Err(format!(
            "`{text}`: both ends count from the start of the month, or both from its end"
        ));
    }
    Ok((a, b))
}

/// A time-of-day range `HH:MM-HH:MM` → minutes (start, end); the end is excluded and may be
/// `24:00`; a range cannot cross midnight (write two).
pub fn parse_times(text: &str) -> Result<(u32, u32), String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("`{text}` is not a time range such as \"02:00-04:30\""))?;
    let minute = |t: &str| -> Result<u32, String> {
        let t = t.trim();
        let (h, m) = t
            .split_once(':')
            .and_then(|(h, m)| Some((h.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
            .filter(|(h, m)| *m < 60 && (*h < 24 || (*h == 24 && *m == 0)) && t.len() == 5)
            .ok_or_else(|| format!("`{t}` is not a time of day HH:MM (00:00 … 24:00)"))?;
        Ok(h * 60 + m)
    };
    let (start, end) = (minute(a)?, minute(b)?);
    if start >= end {
        return Err(format!(
            "`{text}` ends before it begins (a range cannot cross midnight: write \"22:00-24:00\" and \"00:00-02:00\")"
        ));
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// ms since the epoch of a UTC time.
    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> u64 {
        chrono::Utc
            .with_ymd_and_hms(y, mo, d, h, mi, 0)
            .unwrap()
            .timestamp_millis() as u64
    }

    fn window() -> MaintenanceWindow {
        MaintenanceWindow {
            name: "w".into(),
            timezone: chrono_tz::UTC,
            weekdays: vec![],
            times: vec![],
            days_of_month: vec![],
            months: vec![],
            matchers: vec![],
            sinks: vec![],
        }
    }

    #[test]
    fn ranges_read_names_numbers_and_both_separators() {
        assert_eq!(parse_weekdays("mon:fri"), Ok((0, 4)));
        assert_eq!(parse_weekdays("Monday-Friday"), Ok((0, 4)));
        assert_eq!(parse_weekdays("sun"), Ok((6, 6)));
        assert_eq!(parse_months("jun:aug"), Ok((6, 8)));
        assert_eq!(parse_months("12"), Ok((12, 12)));
        assert_eq!(parse_days_of_month("-3:-1"), Ok((-3, -1)));
        assert_eq!(parse_days_of_month("1:7"), Ok((1, 7)));
        assert_eq!(parse_times("02:00-04:30"), Ok((120, 270)));
        assert_eq!(parse_times("22:00-24:00"), Ok((1320, 1440)));
    }

    #[test]
    fn bad_ranges_say_why() {
        assert!(parse_weekdays("fri:mon")
            .unwrap_err()
            .contains("ends before"));
        assert!(parse_weekdays("someday")
            .unwrap_err()
            .contains("not a weekday"));
        assert!(parse_months("13").unwrap_err().contains("not a month"));
        assert!(parse_days_of_month("0").unwrap_err().contains("not a day"));
        assert!(parse_days_of_month("-1:5")
            .unwrap_err()
            .contains("both ends"));
        assert!(parse_times("04:00-02:00")
            .unwrap_err()
            .contains("cross midnight"));
        assert!(parse_times("2:00-04:00").unwrap_err().contains("HH:MM"));
        assert!(parse_times("02:00").unwrap_err().contains("time range"));
        assert!(parse_times("23:00-24:30").unwrap_err().contains("HH:MM"));
    }

    #[test]
    fn a_window_is_open_when_every_field_it_gives_holds_in_its_zone() {
        let mut w = window();
        w.weekdays = vec![(0, 4)];
        w.times = vec![(120, 270)];
        // 2026-12-07 is a Monday.
        assert!(w.open_at(at(2026, 12, 7, 2, 0)));
        assert!(w.open_at(at(2026, 12, 7, 4, 29)));
        assert!(!w.open_at(at(2026, 12, 7, 4, 30)), "the end is excluded");
        assert!(!w.open_at(at(2026, 12, 6, 3, 0)), "a Sunday");
        w.timezone = "Europe/Berlin".parse().unwrap();
        assert!(
            !w.open_at(at(2026, 12, 7, 4, 0)),
            "05:00 in Berlin: past the window"
        );
        assert!(w.open_at(at(2026, 12, 7, 1, 0)), "02:00 in Berlin");
    }

    #[test]
    fn days_from_the_months_end_follow_its_length() {
        let mut w = window();
        w.days_of_month = vec![(-1, -1)];
        assert!(w.open_at(at(2027, 2, 28, 12, 0)));
        assert!(!w.open_at(at(2028, 2, 28, 12, 0)), "2028 is a leap year");
        assert!(w.open_at(at(2028, 2, 29, 12, 0)));
        w.days_of_month = vec![(1, 1)];
        w.months = vec![(1, 1)];
        assert!(w.open_at(at(2027, 1, 1, 0, 0)));
        assert!(!w.open_at(at(2027, 2, 1, 0, 0)));
    }

    proptest! {
        /// Any time range `parse_times` takes is well-formed, and a window of it is open
        /// exactly at the minutes inside it.
        #[test]
        fn a_time_range_opens_exactly_its_minutes(
            a in 0u32..1440, len in 1u32..1440, probe in 0u32..1440,
        ) {
            let b = (a + len).min(1440);
            prop_assume!(a < b);
            let text = format!("{:02}:{:02}-{:02}:{:02}", a / 60, a % 60, b / 60, b % 60);
            let (start, end) = parse_times(&text).unwrap();
            prop_assert_eq!((start, end), (a, b));
            let mut w = window();
            w.times = vec![(start, end)];
            let t = at(2026, 12, 7, 0, 0) + u64::from(probe) * 60_000;
            prop_assert_eq!(w.open_at(t), (a..b).contains(&probe));
        }

        /// Anything at all is a range or an error, never a panic.
        #[test]
        fn any_text_parses_or_is_refused(text in "\\PC{0,16}") {
            let _ = parse_times(&text);
            let _ = parse_weekdays(&text);
            let _ = parse_months(&text);
            let _ = parse_days_of_month(&text);
        }

        /// Every weekday range holds exactly on its days.
        #[test]
        fn a_weekday_range_opens_exactly_its_days(a in 0usize..7, b in 0usize..7, day in 0u64..7) {
            let text = format!("{}:{}", &WEEKDAYS[a][..3], WEEKDAYS[b]);
            match parse_weekdays(&text) {
                Ok(range) => {
                    prop_assert!(a <= b);
                    let mut w = window();
                    w.weekdays = vec![range];
                    // 2026-12-07 is a Monday (0).
                    let t = at(2026, 12, 7, 12, 0) + day * 86_400_000;
                    prop_assert_eq!(w.open_at(t), (a as u64..=b as u64).contains(&day));
                }
                Err(_) => prop_assert!(a > b),
            }
        }
    }
}
