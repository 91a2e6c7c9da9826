//! Alertmanager's time intervals (`time_intervals:`), used by routes'
//! `mute_time_intervals` and `active_time_intervals`: weekdays, times of
//! day, days of the month (negative = from the end), months and years, in
//! a location (`UTC`, `Local` or an IANA name read from
//! `/usr/share/zoneinfo`).

use crate::alert::Millis;
use crate::config::{TimeIntervalConfig, TimeIntervalSpec};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One `time_intervals:` entry: every set field must match.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeInterval {
    /// `[start, end)` in minutes of the day.
    pub times: Vec<(u32, u32)>,
    /// Inclusive, Sunday = 0.
    pub weekdays: Vec<(u32, u32)>,
    /// Inclusive, negative counts from the month's end (-1 = last day).
    pub days_of_month: Vec<(i32, i32)>,
    /// Inclusive, January = 1.
    pub months: Vec<(u32, u32)>,
    pub years: Vec<(i32, i32)>,
    pub location: Location,
}

/// Named intervals, as `time_intervals:` (and the deprecated
/// `mute_time_intervals:`) define them.
pub type TimeIntervals = BTreeMap<String, Vec<TimeInterval>>;

/// Whether any of the named interval's entries contains `t`. Unknown names
/// are never active (config validation rejects them).
pub fn is_active(intervals: &TimeIntervals, name: &str, t: Millis) -> bool {
    intervals
        .get(name)
        .is_some_and(|v| v.iter().any(|ti| ti.contains(t)))
}

pub fn compile_all(cfgs: &[TimeIntervalConfig]) -> Result<TimeIntervals, String> {
    let mut out = TimeIntervals::new();
    for c in cfgs {
        let v = c
            .time_intervals
            .iter()
            .map(TimeInterval::compile)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("time interval {:?}: {e}", c.name))?;
        out.insert(c.name.clone(), v);
    }
    Ok(out)
}

const WEEKDAYS: [&str; 7] = [
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
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

fn split_range(s: &str) -> (&str, &str) {
    match s.split_once(':') {
        Some((a, b)) => (a, b),
        None => (s, s),
    }
}

fn parse_hhmm(s: &str) -> Result<u32, String> {
    let bad = || format!("couldn't parse timestamp {s}, invalid format");
    if s == "24:00" {
        return Ok(24 * 60);
    }
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl TimeInterval {
    pub fn compile(spec: &TimeIntervalSpec) -> Result<TimeInterval, String> {
        let mut times = Vec::new();
        for t in &spec.times {
            let (s, e) = (parse_hhmm(&t.start_time)?, parse_hhmm(&t.end_time)?);
            if s >= e {
                return Err(format!(
                    "start time {} cannot be equal or greater than end time {}",
                    t.start_time, t.end_time
                ));
            }
            times.push((s, e));
        }
        let named = |s: &str, names: &[&str], base: u32, what: &str| -> Result<u32, String> {
            let l = s.trim().to_lowercase();
            if let Some(i) = names.iter().position(|n| *n == l) {
                return Ok(i as u32 + base);
            }
            if base == 1
                && let Ok(n) = l.parse::<u32>()
                && (1..=12).contains(&n)
            {
                return Ok(n);
            }
            Err(format!("{s:?} is not a valid {what}"))
        };
        let mut weekdays = Vec::new();
        for w in &spec.weekdays {
            let (a, b) = split_range(w);
            let (a, b) = (
                named(a, &WEEKDAYS, 0, "weekday")?,
                named(b, &WEEKDAYS, 0, "weekday")?,
            );
            if a > b {
                return Err(format!("start day cannot be before end day: {w}"));
            }
            weekdays.push((a, b));
        }
        let mut months = Vec::new();
        for m in &spec.months {
            let (a, b) = split_range(m);
            let (a, b) = (
                named(a, &MONTHS, 1, "month")?,
                named(b, &MONTHS, 1, "month")?,
            );
            if a > b {
                return Err(format!("end month {b} is before start month {a}"));
            }
            months.push((a, b));
        }
        let int = |s: &str| {
            s.trim()
                .parse::<i32>()
                .map_err(|_| format!("{s:?} is not a number"))
        };
        let mut days_of_month = Vec::new();
        for d in &spec.days_of_month {
            let (a, b) = split_range(d);
            let (a, b) = (int(a)?, int(b)?);
            for x in [a, b] {
                if x == 0 || !(-31..=31).contains(&x) {
                    return Err(format!("{x} is not a valid day of the month: out of range"));
                }
            }
            if a < 0 && b > 0 {
                return Err("end day must be negative if start day is negative".into());
            }
            let cb = if a < 0 { 28 + a } else { a };
            let ce = if b < 0 { 28 + b } else { b };
            if cb > ce {
                return Err(format!("end day {b} is always before start day {a}"));
            }
            days_of_month.push((a, b));
        }
        let mut years = Vec::new();
        for y in &spec.years {
            let (a, b) = split_range(y);
            let (a, b) = (int(a)?, int(b)?);
            if a > b {
                return Err(format!("end year {b} is before start year {a}"));
            }
            years.push((a, b));
        }
        let location = match &spec.location {
            None => Location::Utc,
            Some(name) => Location::load(name)?,
        };
        Ok(TimeInterval {
            times,
            weekdays,
            days_of_month,
            months,
            years,
            location,
        })
    }

    /// Whether the instant `t` (ms since the epoch) falls in this interval.
    pub fn contains(&self, t: Millis) -> bool {
        let secs = t.div_euclid(1000) + i64::from(self.location.offset_at(t.div_euclid(1000)));
        let days = secs.div_euclid(86_400);
        let minute = (secs.rem_euclid(86_400) / 60) as u32;
        let (year, month, day) = civil_from_days(days);
        // 1970-01-01 was a Thursday.
        let weekday = (days + 4).rem_euclid(7) as u32;
        if !self.times.is_empty() && !self.times.iter().any(|&(s, e)| minute >= s && minute < e) {
            return false;
        }
        if !self.days_of_month.is_empty() {
            let dim = days_in_month(year, month) as i32;
            let day = day as i32;
            let ok = self.days_of_month.iter().any(|&(b, e)| {
                let b = if b < 0 { dim + b + 1 } else { b };
                let e = if e < 0 { dim + e + 1 } else { e };
                if b > dim {
                    return false;
                }
                let (b, e) = (b.clamp(-dim, dim), e.clamp(-dim, dim));
                day >= b && day <= e
            });
            if !ok {
                return false;
            }
        }
        if !self.months.is_empty() && !self.months.iter().any(|&(b, e)| month >= b && month <= e) {
            return false;
        }
        if !self.weekdays.is_empty()
            && !self
                .weekdays
                .iter()
                .any(|&(b, e)| weekday >= b && weekday <= e)
        {
            return false;
        }
        if !self.years.is_empty() && !self.years.iter().any(|&(b, e)| year >= b && year <= e) {
            return false;
        }
        true
    }
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31), proleptic
/// Gregorian (H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    ((if m <= 2 { y + 1 } else { y }) as i32, m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Where a time interval's wall clock is.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    Utc,
    /// A TZif zone (an IANA name, or `Local` from `/etc/localtime`).
    Zone(Arc<Zone>),
}

impl Location {
    /// `UTC`, `Local` (the `TZ` environment variable or `/etc/localtime`;
    /// UTC when neither exists, as Go does) or an IANA name read from
    /// `$ZONEINFO` or `/usr/share/zoneinfo`.
    pub fn load(name: &str) -> Result<Location, String> {
        if name.is_empty() || name == "UTC" {
            return Ok(Location::Utc);
        }
        if name == "Local" {
            if let Ok(tz) = std::env::var("TZ")
                && !tz.is_empty()
                && tz != "Local"
            {
                return Location::load(tz.trim_start_matches(':'));
            }
            return match std::fs::read("/etc/localtime") {
                Ok(b) => Zone::parse("Local", &b).map(|z| Location::Zone(Arc::new(z))),
                Err(_) => Ok(Location::Utc),
            };
        }
        if name.contains("..") || name.starts_with('/') || name.contains('\\') {
            return Err(format!("unknown time zone {name}"));
        }
        let dirs = std::env::var("ZONEINFO").into_iter().chain([
            "/usr/share/zoneinfo".to_string(),
            "/usr/lib/zoneinfo".to_string(),
        ]);
        for dir in dirs {
            if let Ok(b) = std::fs::read(std::path::Path::new(&dir).join(name)) {
                return Zone::parse(name, &b).map(|z| Location::Zone(Arc::new(z)));
            }
        }
        Err(format!(
            "unknown time zone {name} (no such file in /usr/share/zoneinfo; install the tzdata package or set ZONEINFO)"
        ))
    }

    /// Seconds east of UTC at the instant `t` (seconds since the epoch).
    pub fn offset_at(&self, t: i64) -> i32 {
        match self {
            Location::Utc => 0,
            Location::Zone(z) => z.offset_at(t),
        }
    }
}

/// A TZif file's transitions and its POSIX TZ footer for later times.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    pub name: String,
    transitions: Vec<(i64, i32)>,
    initial: i32,
    rule: Option<PosixTz>,
}

fn be_u32(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| "truncated TZif file".to_string())
}

impl Zone {
    pub fn parse(name: &str, b: &[u8]) -> Result<Zone, String> {
        let bad = |m: &str| format!("time zone {name}: {m}");
        if b.len() < 44 || &b[..4] != b"TZif" {
            return Err(bad("not a TZif file"));
        }
        let version = b[4];
        let counts = |at: usize| -> Result<[usize; 6], String> {
            let mut c = [0usize; 6];
            for (i, v) in c.iter_mut().enumerate() {
                *v = be_u32(b, at + 20 + 4 * i).map_err(|e| bad(&e))? as usize;
            }
            Ok(c)
        };
        let [isut, isstd, leap, timecnt, typecnt, charcnt] = counts(0)?;
        let v1_len = timecnt * 5 + typecnt * 6 + charcnt + leap * 8 + isstd + isut;
        let (data, tsize, [_, _, leap, timecnt, typecnt, charcnt], isut, isstd) = if version >= b'2'
        {
            let h2 = 44 + v1_len;
            let c = counts(h2)?;
            (h2 + 44, 8, c, c[0], c[1])
        } else {
            (
                44,
                4,
                [isut, isstd, leap, timecnt, typecnt, charcnt],
                isut,
                isstd,
            )
        };
        let need = data
            + timecnt * (tsize + 1)
            + typecnt * 6
            + charcnt
            + leap * (tsize + 4)
            + isstd
            + isut;
        if b.len() < need || typecnt == 0 {
            return Err(bad("truncated TZif file"));
        }
        let mut times = Vec::with_capacity(timecnt);
        for i in 0..timecnt {
            let at = data + i * tsize;
            let t = if tsize == 8 {
                i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
            } else {
                i64::from(i32::from_be_bytes(
                    b[at..at + 4].try_into().expect("4 bytes"),
                ))
            };
            times.push(t);
        }
        let idx_at = data + timecnt * tsize;
        let types_at = idx_at + timecnt;
        let utoff = |i: usize| -> Result<(i32, bool), String> {
            if i >= typecnt {
                return Err(bad("bad type index"));
            }
            let at = types_at + i * 6;
            Ok((
                i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes")),
                b[at + 4] != 0,
            ))
        };
        let mut transitions = Vec::with_capacity(timecnt);
        for (i, t) in times.into_iter().enumerate() {
            transitions.push((t, utoff(b[idx_at + i] as usize)?.0));
        }
        // Before the first transition: the first standard-time type.
        let initial = (0..typecnt)
            .map(utoff)
            .collect::<Result<Vec<_>, _>>()?
            .iter()
            .find(|(_, dst)| !dst)
            .map(|(o, _)| *o)
            .unwrap_or(utoff(0)?.0);
        let rule = if version >= b'2' {
            let footer = &b[need..];
            std::str::from_utf8(footer)
                .ok()
                .and_then(|s| s.trim_matches('\n').lines().next().map(str::to_string))
                .and_then(|s| PosixTz::parse(&s))
        } else {
            None
        };
        Ok(Zone {
            name: name.to_string(),
            transitions,
            initial,
            rule,
        })
    }

    pub fn offset_at(&self, t: i64) -> i32 {
        match self.transitions.last() {
            Some(&(last, off)) if t >= last => match &self.rule {
                Some(r) => r.offset_at(t),
                None => off,
            },
            None => self.rule.as_ref().map_or(self.initial, |r| r.offset_at(t)),
            Some(_) => {
                let i = self.transitions.partition_point(|&(at, _)| at <= t);
                if i == 0 {
                    self.initial
                } else {
                    self.transitions[i - 1].1
                }
            }
        }
    }
}

/// A POSIX TZ string such as `CET-1CEST,M3.5.0,M10.5.0/3` (only the
/// `Mm.w.d` rule form; others fall back to standard time).
#[derive(Debug, Clone, PartialEq)]
struct PosixTz {
    std_off: i32,
    dst: Option<(i32, RuleDate, i32, RuleDate, i32)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct RuleDate {
    month: u32,
    week: u32,
    weekday: u32,
}

impl PosixTz {
    fn parse(s: &str) -> Option<PosixTz> {
        let mut p = s;
        fn name(p: &mut &str) -> Option<()> {
            if let Some(r) = p.strip_prefix('<') {
                let end = r.find('>')?;
                *p = &r[end + 1..];
            } else {
                let n = p
                    .find(|c: char| !c.is_ascii_alphabetic())
                    .unwrap_or(p.len());
                if n < 3 {
                    return None;
                }
                *p = &p[n..];
            }
            Some(())
        }
        fn hms(p: &mut &str) -> Option<i32> {
            let (sign, r) = match p.as_bytes().first()? {
                b'-' => (-1, &p[1..]),
                b'+' => (1, &p[1..]),
                _ => (1, *p),
            };
            let n = r
                .find(|c: char| !(c.is_ascii_digit() || c == ':'))
                .unwrap_or(r.len());
            let mut secs = 0;
            for (i, part) in r[..n].split(':').enumerate() {
                let v: i32 = part.parse().ok()?;
                secs += v * [3600, 60, 1].get(i)?;
            }
            *p = &r[n..];
            Some(sign * secs)
        }
        fn rule(p: &mut &str) -> Option<(RuleDate, i32)> {
            let r = p.strip_prefix('M')?;
            let n = r.find([',', '/']).unwrap_or(r.len());
            let mut it = r[..n].split('.').map(|x| x.parse::<u32>().ok());
            let d = RuleDate {
                month: it.next()??,
                week: it.next()??,
                weekday: it.next()??,
            };
            *p = &r[n..];
            let mut time = 2 * 3600;
            if let Some(r) = p.strip_prefix('/') {
                *p = r;
                time = hms(p)?;
            }
            Some((d, time))
        }
        name(&mut p)?;
        let std_off = -hms(&mut p)?;
        if p.is_empty() {
            return Some(PosixTz { std_off, dst: None });
        }
        name(&mut p)?;
        let mut dst_off = std_off + 3600;
        if !p.starts_with(',') {
            dst_off = -hms(&mut p)?;
        }
        p = p.strip_prefix(',')?;
        let (start, st) = rule(&mut p)?;
        p = p.strip_prefix(',')?;
        let (end, et) = rule(&mut p)?;
        Some(PosixTz {
            std_off,
            dst: Some((dst_off, start, st, end, et)),
        })
    }

    fn offset_at(&self, t: i64) -> i32 {
        let Some((dst_off, start, st, end, et)) = self.dst else {
            return self.std_off;
        };
        let year = civil_from_days((t + i64::from(self.std_off)).div_euclid(86_400)).0;
        // Transition instants in UTC: start is in standard time, end in DST.
        let s = rule_day(year, start) * 86_400 + i64::from(st) - i64::from(self.std_off);
        let e = rule_day(year, end) * 86_400 + i64::from(et) - i64::from(dst_off);
        let in_dst = if s < e {
            t >= s && t < e
        } else {
            !(t >= e && t < s)
        };
        if in_dst { dst_off } else { self.std_off }
    }
}

/// The day (since the epoch) of `Mm.w.d` in `year`: weekday d of week w (5
/// = last) of month m.
fn rule_day(year: i32, r: RuleDate) -> i64 {
    let first = days_from_civil(year, r.month, 1);
    let first_wd = (first + 4).rem_euclid(7) as u32;
    let mut day = 1 + (r.weekday + 7 - first_wd) % 7 + 7 * (r.week.max(1) - 1);
    let dim = days_in_month(year, r.month);
    while day > dim {
        day -= 7;
    }
    first + i64::from(day) - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TimeRangeSpec;

    fn at(y: i32, m: u32, d: u32, hh: i64, mm: i64) -> Millis {
        (days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60) * 1000
    }

    fn spec() -> TimeIntervalSpec {
        TimeIntervalSpec::default()
    }

    #[test]
    fn civil_dates_round_trip() {
        for d in [-1000, -1, 0, 1, 59, 365, 11_016, 19_000, 20_000, 100_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
    }

    #[test]
    fn business_hours() {
        let mut s = spec();
        s.weekdays = vec!["monday:friday".into()];
        s.times = vec![TimeRangeSpec {
            start_time: "09:00".into(),
            end_time: "17:00".into(),
        }];
        let ti = TimeInterval::compile(&s).unwrap();
        // 2026-03-02 is a Monday.
        assert!(ti.contains(at(2026, 3, 2, 9, 0)));
        assert!(ti.contains(at(2026, 3, 2, 16, 59)));
        assert!(!ti.contains(at(2026, 3, 2, 17, 0)), "end is exclusive");
        assert!(!ti.contains(at(2026, 3, 2, 8, 59)));
        assert!(ti.contains(at(2026, 3, 6, 12, 0)), "friday");
        assert!(!ti.contains(at(2026, 3, 7, 12, 0)), "saturday");
        assert!(!ti.contains(at(2026, 3, 8, 12, 0)), "sunday");
    }

    #[test]
    fn month_ends_and_negative_days() {
        let mut s = spec();
        s.days_of_month = vec!["-1".into()];
        let last = TimeInterval::compile(&s).unwrap();
        assert!(last.contains(at(2024, 2, 29, 12, 0)));
        assert!(!last.contains(at(2024, 2, 28, 12, 0)));
        assert!(last.contains(at(2023, 2, 28, 0, 0)));
        assert!(last.contains(at(2026, 4, 30, 23, 59)));
        assert!(!last.contains(at(2026, 5, 30, 0, 0)));
        assert!(last.contains(at(2026, 12, 31, 0, 0)));

        s.days_of_month = vec!["-7:-1".into()];
        let last_week = TimeInterval::compile(&s).unwrap();
        assert!(last_week.contains(at(2026, 2, 22, 0, 0)));
        assert!(!last_week.contains(at(2026, 2, 21, 0, 0)));
        assert!(last_week.contains(at(2026, 1, 25, 0, 0)));

        // Day 31 never matches a 30-day month; 29:31 clamps in February.
        s.days_of_month = vec!["31".into()];
        assert!(
            !TimeInterval::compile(&s)
                .unwrap()
                .contains(at(2026, 4, 30, 0, 0))
        );
        s.days_of_month = vec!["29:31".into()];
        let t = TimeInterval::compile(&s).unwrap();
        assert!(t.contains(at(2024, 2, 29, 0, 0)));
        assert!(!t.contains(at(2023, 3, 1, 0, 0)));

        s.days_of_month = vec!["1:5".into()];
        s.months = vec!["january:march".into(), "12".into()];
        s.years = vec!["2026:2027".into()];
        let t = TimeInterval::compile(&s).unwrap();
        assert!(t.contains(at(2026, 2, 3, 0, 0)));
        assert!(t.contains(at(2027, 12, 5, 23, 0)));
        assert!(!t.contains(at(2026, 4, 3, 0, 0)));
        assert!(!t.contains(at(2028, 1, 3, 0, 0)));
        assert!(!t.contains(at(2026, 2, 6, 0, 0)));
    }

    #[test]
    fn rejects_bad_specs() {
        type Edit = Box<dyn Fn(&mut TimeIntervalSpec)>;
        let cases: Vec<Edit> = vec![
            Box::new(|s| s.days_of_month = vec!["0".into()]),
            Box::new(|s| s.days_of_month = vec!["32".into()]),
            Box::new(|s| s.days_of_month = vec!["-3:5".into()]),
            Box::new(|s| s.days_of_month = vec!["10:2".into()]),
            Box::new(|s| s.weekdays = vec!["friday:monday".into()]),
            Box::new(|s| s.weekdays = vec!["funday".into()]),
            Box::new(|s| s.months = vec!["13".into()]),
            Box::new(|s| s.years = vec!["2027:2026".into()]),
            Box::new(|s| {
                s.times = vec![TimeRangeSpec {
                    start_time: "10:00".into(),
                    end_time: "09:00".into(),
                }]
            }),
            Box::new(|s| {
                s.times = vec![TimeRangeSpec {
                    start_time: "9:00".into(),
                    end_time: "10:00".into(),
                }]
            }),
            Box::new(|s| s.location = Some("Mars/Olympus_Mons".into())),
        ];
        for (i, f) in cases.iter().enumerate() {
            let mut s = spec();
            f(&mut s);
            assert!(TimeInterval::compile(&s).is_err(), "case {i}");
        }
        let mut s = spec();
        s.times = vec![TimeRangeSpec {
            start_time: "00:00".into(),
            end_time: "24:00".into(),
        }];
        assert!(
            TimeInterval::compile(&s)
                .unwrap()
                .contains(at(2026, 1, 1, 23, 59))
        );
    }

    #[test]
    fn iana_zones_when_installed() {
        let Ok(loc) = Location::load("Europe/Berlin") else {
            return; // no tzdata on this machine
        };
        // Winter: UTC+1; summer: UTC+2 (including beyond the file's last
        // transition, via its POSIX rule).
        assert_eq!(loc.offset_at(at(2026, 1, 15, 12, 0) / 1000), 3600);
        assert_eq!(loc.offset_at(at(2026, 7, 15, 12, 0) / 1000), 7200);
        assert_eq!(loc.offset_at(at(2090, 7, 15, 12, 0) / 1000), 7200);
        assert_eq!(loc.offset_at(at(2090, 12, 15, 12, 0) / 1000), 3600);
        // 2026-03-29 01:00 UTC is the switch to summer time.
        assert_eq!(loc.offset_at(at(2026, 3, 29, 0, 59) / 1000), 3600);
        assert_eq!(loc.offset_at(at(2026, 3, 29, 1, 0) / 1000), 7200);
        let mut s = spec();
        s.times = vec![TimeRangeSpec {
            start_time: "09:00".into(),
            end_time: "10:00".into(),
        }];
        s.location = Some("Europe/Berlin".into());
        let t = TimeInterval::compile(&s).unwrap();
        assert!(t.contains(at(2026, 7, 1, 7, 30)));
        assert!(!t.contains(at(2026, 7, 1, 9, 30)));
        assert!(t.contains(at(2026, 1, 1, 8, 30)));
        assert_eq!(Location::load("UTC").unwrap(), Location::Utc);
        assert!(Location::load("Local").is_ok());
        // A southern-hemisphere rule (DST across the new year).
        if let Ok(syd) = Location::load("Australia/Sydney") {
            assert_eq!(syd.offset_at(at(2090, 1, 15, 0, 0) / 1000), 11 * 3600);
            assert_eq!(syd.offset_at(at(2090, 7, 15, 0, 0) / 1000), 10 * 3600);
        }
    }
}
