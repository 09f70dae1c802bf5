//! Durations as Dockerfiles and CI files write them, with one parser for both: Go's `1m30s`,
//! `500ms`, `1.5h` (`HEALTHCHECK --interval`) and GitLab's `3600`, `90 minutes`, `1h 30m`,
//! `1 hour and 30 minutes`, `2 days` (`timeout`, `start_in`, `expire_in`).

use std::time::Duration;

/// Parses a duration: numbers (fractions allowed) each followed by a unit, optionally separated
/// by spaces, commas or `and`; a number without a unit is seconds. Units: `ns`, `us`/`µs`,
/// `ms`, `s`/`sec`/`second(s)`, `m`/`min`/`minute(s)`, `h`/`hr`/`hour(s)`, `d`/`day(s)`,
/// `w`/`wk`/`week(s)`, case-insensitive. `None` for anything else (or nothing).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim().to_lowercase();
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut unit = String::new();
    let mut any = false;
    let mut flush = |num: &mut String, unit: &mut String| -> Option<()> {
        if num.is_empty() {
            // Only a connecting word may stand without a number.
            let ok = unit.is_empty() || unit == "and";
            unit.clear();
            return ok.then_some(());
        }
        let n: f64 = num.parse().ok()?;
        let seconds = match unit.as_str() {
            "ns" | "nsec" | "nsecs" | "nanosecond" | "nanoseconds" => 1e-9,
            "us" | "µs" | "usec" | "usecs" | "microsecond" | "microseconds" => 1e-6,
            "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 1e-3,
            "" | "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            "w" | "wk" | "week" | "weeks" => 604_800.0,
            _ => return None,
        };
        total = total.checked_add(Duration::try_from_secs_f64(n * seconds).ok()?)?;
        num.clear();
        unit.clear();
        Some(())
    };
    for c in s.chars() {
        if c.is_ascii_digit() || c == '.' {
            if !unit.is_empty() {
                flush(&mut num, &mut unit)?;
            }
            num.push(c);
            any = true;
        } else if c.is_alphabetic() {
            unit.push(c);
        } else if c.is_whitespace() || c == ',' {
            if !unit.is_empty() {
                flush(&mut num, &mut unit)?;
            }
        } else {
            return None;
        }
    }
    flush(&mut num, &mut unit)?;
    any.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_and_gitlab_forms() {
        let secs = |s: u64| Some(Duration::from_secs(s));
        for (text, want) in [
            ("3600", secs(3600)),
            ("1h 30m", secs(5400)),
            ("1h30m", secs(5400)),
            ("1 hour 30 minutes", secs(5400)),
            ("1 hour and 30 minutes", secs(5400)),
            ("90 minutes", secs(5400)),
            ("2 days", secs(172_800)),
            ("1 week", secs(604_800)),
            ("30s", secs(30)),
            ("1m30s", secs(90)),
            ("1.5h", secs(5400)),
            ("500ms", Some(Duration::from_millis(500))),
            ("2us", Some(Duration::from_micros(2))),
            ("3µs", Some(Duration::from_micros(3))),
            ("10ns", Some(Duration::from_nanos(10))),
            ("10 lightyears", None),
            ("", None),
            ("and", None),
            ("5 minutes ago", None),
            ("-1s", None),
            ("1..2s", None),
        ] {
            assert_eq!(parse_duration(text), want, "{text:?}");
        }
    }
}
