//! Wall-clock helpers: unix nanoseconds and UTC calendar formatting without a date library.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the unix epoch.
pub fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The UTC civil date (year, month, day) of a day number counted from 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a UTC civil date (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `YYYY-MM-DD` into days since 1970-01-01.
pub fn parse_day(text: &str) -> Option<i64> {
    let mut parts = text.trim().splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    let days = days_from_civil(year, month, day);
    // Reject dates like 2024-02-31 that do not round-trip.
    (civil_from_days(days) == (year, month, day)).then_some(days)
}

/// Parses a point in time as users write it: unix milliseconds (`1733400000000`), an RFC 3339
/// time (`2026-12-05T11:30:00Z`, `2026-12-05T12:30:00.250+01:00`) or a day (`2026-12-05`,
/// midnight UTC). Returns unix nanoseconds; `None` for anything else or before 1970. A time
/// past what u64 nanoseconds hold (2554-07-21) is `u64::MAX`: later than every span.
pub fn parse_time(text: &str) -> Option<u64> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u64>().ok().map(|ms| ms.saturating_mul(1_000_000));
    }
    let (date, time) = match text.split_once(['T', 't', ' ']) {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let days = parse_day(date)?;
    let mut nanos: i128 = i128::from(days) * 86_400 * 1_000_000_000;
    if let Some(time) = time {
        let (clock, offset_secs) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
            (clock, 0i64)
        } else {
            let at = time.rfind(['+', '-'])?;
            let (clock, offset) = time.split_at(at);
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let (h, m) = offset[1..].split_once(':')?;
            let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
            if h > 23 || m > 59 {
                return None;
            }
            (clock, sign * (h * 3600 + m * 60))
        };
        let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
        let mut parts = hms.split(':');
        let (h, m, s): (i64, i64, i64) =
            (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
        if parts.next().is_some() || h > 23 || m > 59 || s > 60 || fraction.len() > 9 {
            return None;
        }
        if !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let frac_nanos: i64 = if fraction.is_empty() { 0 } else { format!("{fraction:0<9}").parse().ok()? };
        nanos += i128::from(((h * 60 + m) * 60 + s - offset_secs) * 1_000_000_000 + frac_nanos);
    }
    if nanos > i128::from(u64::MAX) {
        return Some(u64::MAX);
    }
    u64::try_from(nanos).ok()
}

/// `YYYY-MM-DD` of a day number.
pub fn format_day(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in UTC.
pub fn format_utc(unix_nanos: u64) -> String {
    let secs = (unix_nanos / 1_000_000_000) as i64;
    let millis = (unix_nanos / 1_000_000) % 1000;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{millis:03}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_unix_millis_rfc3339_or_days() {
        assert_eq!(parse_time("1733400000000"), Some(1_733_400_000_000_000_000));
        assert_eq!(parse_time("2024-12-05"), Some(1_733_356_800_000_000_000));
        assert_eq!(parse_time("2024-12-05T00:00:01Z"), Some(1_733_356_801_000_000_000));
        assert_eq!(parse_time("2024-12-05T01:00:01.5+01:00"), Some(1_733_356_801_500_000_000));
        assert_eq!(parse_time("2024-12-04T23:00:00-01:00"), Some(1_733_356_800_000_000_000));
        for bad in [
            "",
            "yesterday",
            "2024-13-01",
            "2024-12-05T25:00:00Z",
            "2024-12-05T10:00",
            "1969-12-31",
            "2024-12-05T10:00:00.x1Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_time_after_2554_was_refused_as_malformed() {
        // u64 nanoseconds end in July 2554: later times are later than every span, not errors.
        assert_eq!(parse_time("2999-01-01T00:00:00Z"), Some(u64::MAX));
        assert_eq!(parse_time("2999-01-01"), Some(u64::MAX));
        assert_eq!(parse_time("99999999999999999"), Some(u64::MAX));
        assert_eq!(parse_time("2554-07-21"), Some(18_446_659_200_000_000_000), "the last whole day still fits");
    }

    #[test]
    fn known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(format_utc(1_700_000_000_123_000_000), "2023-11-14 22:13:20.123");
        for days in [-1000, 0, 59, 19_782, 20_000, 40_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert_eq!(parse_day(&format_day(days)), Some(days));
        }
        assert_eq!(parse_day("2024-02-31"), None);
        assert_eq!(parse_day("yesterday"), None);
    }
}
