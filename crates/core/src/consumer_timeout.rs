//! When a consumer timeout starts counting for a delivery.
//!
//! The timeout (`x-consumer-timeout`, policy `consumer-timeout`) cancels a
//! consumer that holds a delivery unacked for too long. A celery worker
//! holds an ETA/countdown task unacked on purpose until its ETA, and celery
//! takes any `basic.cancel` as a lost connection (it reconnects, and tasks
//! it held run again: celery/celery#6760 is the same pain with RabbitMQ's
//! channel-closing timeout). So for a message carrying celery's `eta`
//! header (task protocol 2: ISO 8601, e.g. `2026-11-30T11:00:49.1+00:00`)
//! the clock starts at its ETA, not at its delivery: a worker is timed out
//! only when a task it holds is overdue by the timeout, i.e. it is stuck.

use warren_protocol::AMQPValue;

use crate::message::Message;

/// When the timeout starts for `message` delivered at `now` (ms since the
/// epoch): its celery ETA if that is later, else `now`.
pub fn clock_start(message: &Message, now: u64) -> u64 {
    let eta = match message.header("eta") {
        Some(AMQPValue::LongString(s)) => parse_iso8601_ms(&String::from_utf8_lossy(s.as_bytes())),
        Some(AMQPValue::ShortString(s)) => parse_iso8601_ms(s.as_str()),
        _ => None,
    };
    eta.map_or(now, |eta| eta.max(now))
}

/// Milliseconds since the Unix epoch of `YYYY-MM-DDTHH:MM:SS[.frac]` with an
/// optional `Z` or `±HH:MM` offset (none: UTC).
pub fn parse_iso8601_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        at = start;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        let digits = &s[start..at];
        if digits.is_empty() {
            return None;
        }
        let ms: String = digits.chars().chain("000".chars()).take(3).collect();
        millis = ms.parse::<i64>().ok()?;
    }
    let offset_min = match b.get(at) {
        None => 0,
        Some(b'Z') if at + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if b.len() == at + 6 && b[at + 3] == b':' => {
            let m = num(at + 1..at + 3)? * 60 + num(at + 4..at + 6)?;
            if sign == b'+' {
                m
            } else {
                -m
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    u64::try_from(secs * 1000 + millis).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_celery_etas() {
        assert_eq!(parse_iso8601_ms("1970-01-01T00:00:00"), Some(0));
        assert_eq!(parse_iso8601_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        // date -u -d 2026-11-30T11:00:49 +%s → 1796036449
        assert_eq!(parse_iso8601_ms("2026-11-30T11:00:49.123456+00:00"), Some(1_796_036_449_123));
        assert_eq!(parse_iso8601_ms("2026-11-30T12:00:49.123+01:00"), Some(1_796_036_449_123));
        assert_eq!(parse_iso8601_ms("2026-11-30T10:30:49-00:30"), Some(1_796_036_449_000));
        assert_eq!(parse_iso8601_ms("2000-02-29T00:00:00"), Some(951_782_400_000));
        for bad in ["", "soon", "2026-11-30", "2026-13-01T00:00:00", "2026-11-30T11:00:49.", "2026-11-30T11:00:49+1"] {
            assert_eq!(parse_iso8601_ms(bad), None, "{bad}");
        }
    }
}
