//! Calendar arithmetic on UTC milliseconds, without a clock (callers pass the time in).

/// Days since 1970-01-01 for a proleptic Gregorian date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(year, month, day)` of a day number counted from 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

pub const MS_PER_DAY: i64 = 86_400_000;

/// The UTC day number of a millisecond timestamp.
pub fn day_of_ms(ms: i64) -> i64 {
    ms.div_euclid(MS_PER_DAY)
}

/// `YYYY-MM-DD` for a day number.
pub fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Parses `YYYY-MM-DD` strictly (real calendar dates only) into a day number.
pub fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        s.get(r)?.bytes().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + (c - b'0') as u32)
        })
    };
    let (y, m, d) = (num(0..4)? as i64, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    (civil_from_days(days) == (y, m, d)).then_some(days)
}

/// RFC 3339 UTC timestamp with milliseconds, e.g. `2026-11-21T23:44:15.123Z`.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let days = day_of_ms(ms);
    let in_day = ms - days * MS_PER_DAY;
    let (h, rem) = (in_day / 3_600_000, in_day % 3_600_000);
    let (mi, rem) = (rem / 60_000, rem % 60_000);
    let (s, milli) = (rem / 1000, rem % 1000);
    format!("{}T{h:02}:{mi:02}:{s:02}.{milli:03}Z", format_date(days))
}

/// Parses an RFC 3339 timestamp (`2026-11-21T23:44:15Z`, `...15.123Z`, `...15+02:00`) into
/// milliseconds since the Unix epoch. Fractions finer than a millisecond are truncated; a leap
/// second (`:60`) and lowercase `t`/`z` are refused, as is anything else that is not the
/// strict `date-time` grammar.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let days = parse_date(s.get(0..10)?)?;
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let mut rest = &s[19..];
    let mut milli = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        milli = padded.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" => 0,
        _ => {
            let o = rest.as_bytes();
            if o.len() != 6 || !(o[0] == b'+' || o[0] == b'-') || o[3] != b':' {
                return None;
            }
            let part = |r: std::ops::Range<usize>| -> Option<i64> {
                let t = rest.get(r)?;
                t.bytes()
                    .all(|c| c.is_ascii_digit())
                    .then(|| t.parse().ok())?
            };
            let (oh, om) = (part(1..3)?, part(4..6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let m = oh * 60 + om;
            if o[0] == b'-' {
                -m
            } else {
                m
            }
        }
    };
    Some(days * MS_PER_DAY + ((h * 60 + mi - offset_min) * 60 + sec) * 1000 + milli)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_strictly() {
        assert_eq!(
            parse_rfc3339_ms("2026-11-22T00:04:15.123Z"),
            Some(1_795_305_855_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-22T00:04:15Z"),
            Some(1_795_305_855_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-22T02:04:15.1+02:00"),
            Some(1_795_305_855_100)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-21T23:04:15.123456-01:00"),
            Some(1_795_305_855_123)
        );
        for ms in [0, 1_795_305_855_123, -1] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms));
        }
        for bad in [
            "",
            "2026-11-22",
            "2026-11-22T00:04:15",
            "2026-11-22t00:04:15Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T00:04:60Z",
            "2026-02-30T00:00:00Z",
            "2026-11-22T00:04:15.Z",
            "2026-11-22T00:04:15+0200",
            "2026-11-22T00:04:15z",
            "2026-11-22T0a:04:15Z",
            "2026-11-22T00:04:15+02:00x",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(parse_date("2000-02-29"), Some(days_from_civil(2000, 2, 29)));
        assert_eq!(parse_date("2026-02-29"), None);
        assert_eq!(parse_date("2026-13-01"), None);
        assert_eq!(parse_date("2026-1-01"), None);
        assert_eq!(parse_date("20x6-01-01"), None);
        assert_eq!(
            format_rfc3339_ms(1_795_305_855_123),
            "2026-11-22T00:04:15.123Z"
        );
        assert_eq!(format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn round_trip_many_days() {
        for d in (-800_000..800_000).step_by(97) {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }
}
