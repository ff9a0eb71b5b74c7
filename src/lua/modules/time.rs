//! The value half of the `time` module (§6.4): Time, Duration and Location userdata, Go layouts,
//! calendar math. `sleep/after/timer/ticker` need the scheduler and are added by
//! `lua::channel::register_time_async`.
//!
//! No time-zone database: locations are UTC, `Local` (treated as UTC, the usual container
//! setting) and fixed offsets. Calendar conversion uses Hinnant's days-from-civil algorithms.

use crate::lua::errors::{fail, ok};
use crate::process::value::ErrorKind;
use crate::registry::duration;
use mlua::{Lua, MetaMethod, Table, UserData, UserDataMethods, UserDataRef, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const NANOSECOND: i64 = 1;
pub const MICROSECOND: i64 = 1_000;
pub const MILLISECOND: i64 = 1_000_000;
pub const SECOND: i64 = 1_000_000_000;
pub const MINUTE: i64 = 60 * SECOND;
pub const HOUR: i64 = 60 * MINUTE;

const NS: i128 = 1_000_000_000;
/// Unix seconds of Go's zero time, 0001-01-01T00:00:00Z (`is_zero`, `round`, `truncate`).
const ZERO_UNIX: i64 = -62_135_596_800;
/// Times are clamped to ±2^62 seconds so later arithmetic can never overflow.
const MAX_SECS: i128 = 1 << 62;

pub const RFC3339: &str = "2006-01-02T15:04:05Z07:00";
pub const RFC3339_NANO: &str = "2006-01-02T15:04:05.999999999Z07:00";
const LAYOUTS: [(&str, &str); 15] = [
    ("RFC3339", RFC3339),
    ("RFC3339NANO", RFC3339_NANO),
    ("RFC822", "02 Jan 06 15:04 MST"),
    ("RFC822Z", "02 Jan 06 15:04 -0700"),
    ("RFC850", "Monday, 02-Jan-06 15:04:05 MST"),
    ("RFC1123", "Mon, 02 Jan 2006 15:04:05 MST"),
    ("RFC1123Z", "Mon, 02 Jan 2006 15:04:05 -0700"),
    ("DATE_TIME", "2006-01-02 15:04:05"),
    ("DATE_ONLY", "2006-01-02"),
    ("TIME_ONLY", "15:04:05"),
    ("KITCHEN", "3:04PM"),
    ("STAMP", "Jan _2 15:04:05"),
    ("STAMP_MILLI", "Jan _2 15:04:05.000"),
    ("STAMP_MICRO", "Jan _2 15:04:05.000000"),
    ("STAMP_NANO", "Jan _2 15:04:05.000000000"),
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

// ---- values -----------------------------------------------------------------------------

/// A time zone: UTC, the process-local zone (UTC here) or a fixed offset east of UTC.
#[derive(Clone, Debug, PartialEq)]
pub enum Location {
    Utc,
    Local,
    Fixed { name: Arc<str>, offset: i32 },
}

impl Location {
    pub fn offset(&self) -> i32 {
        match self {
            Location::Utc | Location::Local => 0,
            Location::Fixed { offset, .. } => *offset,
        }
    }

    /// `Location.String()`: the name it was created with.
    pub fn name(&self) -> &str {
        match self {
            Location::Utc => "UTC",
            Location::Local => "Local",
            Location::Fixed { name, .. } => name,
        }
    }

    /// The zone abbreviation `MST` formats to; empty means "print the numeric offset".
    fn abbrev(&self) -> &str {
        match self {
            Location::Utc | Location::Local => "UTC",
            Location::Fixed { name, .. } => name,
        }
    }
}

/// `time.Time`: an instant (Unix seconds + nanoseconds) viewed in a location.
#[derive(Clone, Debug)]
pub struct LuaTime {
    secs: i64,
    nsec: u32,
    loc: Location,
}

/// `time.Duration`: signed nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LuaDuration(pub i64);

/// `time.Location` userdata.
#[derive(Clone, Debug)]
pub struct LuaLocation(pub Location);

/// Broken-down civil time in the value's location.
struct Parts {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    min: u32,
    sec: u32,
    nsec: u32,
    weekday: u32,
    yday: u32,
}

impl LuaTime {
    /// The current time in the local zone (what `time.now()` returns; ticks carry these).
    pub fn now() -> LuaTime {
        LuaTime::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> LuaTime {
        let nanos = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        LuaTime::from_unix_nanos(nanos, Location::Local)
    }

    fn from_unix_nanos(nanos: i128, loc: Location) -> LuaTime {
        let secs = nanos.div_euclid(NS).clamp(-MAX_SECS, MAX_SECS);
        LuaTime {
            secs: secs as i64,
            nsec: nanos.rem_euclid(NS) as u32,
            loc,
        }
    }

    fn unix_nanos_wide(&self) -> i128 {
        self.secs as i128 * NS + self.nsec as i128
    }

    /// Nanoseconds since the Unix epoch, saturated to i64 (about years 1678–2262).
    pub fn unix_nano(&self) -> i64 {
        self.unix_nanos_wide()
            .clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }

    pub fn unix(&self) -> i64 {
        self.secs
    }

    pub fn location(&self) -> &Location {
        &self.loc
    }

    /// Go's `time.Date`, including its normalisation of out-of-range fields (month 13, day 0 …).
    #[allow(clippy::too_many_arguments)]
    fn from_civil(
        year: i64,
        month: i64,
        day: i64,
        hour: i64,
        min: i64,
        sec: i64,
        nsec: i64,
        loc: Location,
    ) -> LuaTime {
        let m0 = month as i128 - 1;
        let year = year as i128 + m0.div_euclid(12);
        let month = (m0.rem_euclid(12) + 1) as u32;
        let days = days_from_civil(year, month, 1) + (day as i128 - 1);
        let local_secs = days * 86_400 + hour as i128 * 3_600 + min as i128 * 60 + sec as i128;
        let nanos = (local_secs - loc.offset() as i128) * NS + nsec as i128;
        LuaTime::from_unix_nanos(nanos, loc)
    }

    fn parts(&self) -> Parts {
        let local = self.secs as i128 + self.loc.offset() as i128;
        let days = local.div_euclid(86_400);
        let sod = local.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        Parts {
            year: year as i64,
            month,
            day,
            hour: sod / 3_600,
            min: sod % 3_600 / 60,
            sec: sod % 60,
            nsec: self.nsec,
            weekday: (days + 4).rem_euclid(7) as u32,
            yday: (days - days_from_civil(year, 1, 1) + 1) as u32,
        }
    }

    fn with_loc(&self, loc: Location) -> LuaTime {
        LuaTime {
            loc,
            ..self.clone()
        }
    }

    fn add_nanos(&self, d: i64) -> LuaTime {
        LuaTime::from_unix_nanos(self.unix_nanos_wide() + d as i128, self.loc.clone())
    }

    /// `t.Sub(u)`, saturated to the Duration range like Go.
    fn sub(&self, other: &LuaTime) -> LuaDuration {
        let d = self.unix_nanos_wide() - other.unix_nanos_wide();
        LuaDuration(d.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
    }

    fn is_zero(&self) -> bool {
        self.secs == ZERO_UNIX && self.nsec == 0
    }

    /// Remainder of the time since Go's zero time modulo `d` (`d > 0`).
    fn rem_since_zero(&self, d: i64) -> i64 {
        let abs = (self.secs as i128 - ZERO_UNIX as i128) * NS + self.nsec as i128;
        abs.rem_euclid(d as i128) as i64
    }

    fn truncate(&self, d: i64) -> LuaTime {
        if d <= 0 {
            return self.clone();
        }
        self.add_nanos(-self.rem_since_zero(d))
    }

    fn round(&self, d: i64) -> LuaTime {
        if d <= 0 {
            return self.clone();
        }
        let r = self.rem_since_zero(d);
        if (r as u64) * 2 < d as u64 {
            self.add_nanos(-r)
        } else {
            self.add_nanos(d - r)
        }
    }

    /// Formats with a Go layout (`"2006-01-02 15:04:05"`).
    pub fn format(&self, layout: &str) -> String {
        format_layout(self, layout)
    }

    pub fn format_rfc3339_nano(&self) -> String {
        format_layout(self, RFC3339_NANO)
    }

    /// Go's `Time.String()`.
    fn go_string(&self) -> String {
        format_layout(self, "2006-01-02 15:04:05.999999999 -0700 MST")
    }
}

impl LuaDuration {
    /// Go's `Duration.String()` (`"1h2m3.5s"`, `"-150ms"`, `"0s"`).
    pub fn go_string(self) -> String {
        let s = duration::format(Duration::from_nanos(self.0.unsigned_abs()));
        if self.0 < 0 {
            format!("-{s}")
        } else {
            s
        }
    }

    /// Go's float accessors split whole units and remainder to keep precision.
    fn in_units(self, unit: i64) -> f64 {
        (self.0 / unit) as f64 + (self.0 % unit) as f64 / unit as f64
    }
}

// ---- calendar ---------------------------------------------------------------------------

fn days_from_civil(y: i128, m: u32, d: u32) -> i128 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i128 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i128 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i128) -> (i128, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(m: i64, y: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// ---- Go layouts -------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Std {
    LongMonth,
    Month,
    NumMonth,
    ZeroMonth,
    LongWeekDay,
    WeekDay,
    Day,
    UnderDay,
    ZeroDay,
    UnderYearDay,
    ZeroYearDay,
    Hour,
    Hour12,
    ZeroHour12,
    Minute,
    ZeroMinute,
    Second,
    ZeroSecond,
    LongYear,
    Year,
    PM,
    Pm,
    TZ,
    Iso8601TZ,
    Iso8601SecondsTZ,
    Iso8601ShortTZ,
    Iso8601ColonTZ,
    Iso8601ColonSecondsTZ,
    NumTZ,
    NumSecondsTZ,
    NumShortTZ,
    NumColonTZ,
    NumColonSecondsTZ,
    /// `.000` (fixed digits) / `.999` (trailing zeros trimmed); `sep` is `.` or `,`.
    Frac0 {
        digits: usize,
        sep: u8,
    },
    Frac9 {
        digits: usize,
        sep: u8,
    },
}

/// Go's `nextStdChunk`: literal prefix, the first layout element, and the rest.
fn next_std_chunk(layout: &str) -> (&str, Option<Std>, &str) {
    let b = layout.as_bytes();
    let n = b.len();
    // Only called where b[i] is ASCII, so slicing at `i` is a char boundary.
    let has = |i: usize, s: &str| layout[i..].starts_with(s);
    let lower_at = |j: usize| j < n && b[j].is_ascii_lowercase();
    for i in 0..n {
        use Std::*;
        let found: Option<(Std, usize)> = match b[i] {
            b'J' if has(i, "January") => Some((LongMonth, 7)),
            b'J' if has(i, "Jan") && !lower_at(i + 3) => Some((Month, 3)),
            b'M' if has(i, "Monday") => Some((LongWeekDay, 6)),
            b'M' if has(i, "Mon") && !lower_at(i + 3) => Some((WeekDay, 3)),
            b'M' if has(i, "MST") => Some((TZ, 3)),
            b'0' if i + 1 < n && (b'1'..=b'6').contains(&b[i + 1]) => {
                let std = [ZeroMonth, ZeroDay, ZeroHour12, ZeroMinute, ZeroSecond, Year]
                    [(b[i + 1] - b'1') as usize];
                Some((std, 2))
            }
            b'0' if has(i, "002") => Some((ZeroYearDay, 3)),
            b'1' if has(i, "15") => Some((Hour, 2)),
            b'1' => Some((NumMonth, 1)),
            b'2' if has(i, "2006") => Some((LongYear, 4)),
            b'2' => Some((Day, 1)),
            // `_2006` is a literal underscore followed by the year.
            b'_' if has(i, "_2006") => return (&layout[..i + 1], Some(LongYear), &layout[i + 5..]),
            b'_' if has(i, "_2") => Some((UnderDay, 2)),
            b'_' if has(i, "__2") => Some((UnderYearDay, 3)),
            b'3' => Some((Hour12, 1)),
            b'4' => Some((Minute, 1)),
            b'5' => Some((Second, 1)),
            b'P' if has(i, "PM") => Some((PM, 2)),
            b'p' if has(i, "pm") => Some((Pm, 2)),
            b'-' if has(i, "-070000") => Some((NumSecondsTZ, 7)),
            b'-' if has(i, "-07:00:00") => Some((NumColonSecondsTZ, 9)),
            b'-' if has(i, "-0700") => Some((NumTZ, 5)),
            b'-' if has(i, "-07:00") => Some((NumColonTZ, 6)),
            b'-' if has(i, "-07") => Some((NumShortTZ, 3)),
            b'Z' if has(i, "Z070000") => Some((Iso8601SecondsTZ, 7)),
            b'Z' if has(i, "Z07:00:00") => Some((Iso8601ColonSecondsTZ, 9)),
            b'Z' if has(i, "Z0700") => Some((Iso8601TZ, 5)),
            b'Z' if has(i, "Z07:00") => Some((Iso8601ColonTZ, 6)),
            b'Z' if has(i, "Z07") => Some((Iso8601ShortTZ, 3)),
            c @ (b'.' | b',') if i + 1 < n && (b[i + 1] == b'0' || b[i + 1] == b'9') => {
                let ch = b[i + 1];
                let mut j = i + 1;
                while j < n && b[j] == ch {
                    j += 1;
                }
                // A fraction only if the digit run is not followed by more digits (`.0001`).
                if !(j < n && b[j].is_ascii_digit()) {
                    let digits = j - (i + 1);
                    let std = if ch == b'0' {
                        Frac0 { digits, sep: c }
                    } else {
                        Frac9 { digits, sep: c }
                    };
                    return (&layout[..i], Some(std), &layout[j..]);
                }
                None
            }
            _ => None,
        };
        if let Some((std, len)) = found {
            return (&layout[..i], Some(std), &layout[i + len..]);
        }
    }
    (layout, None, "")
}

fn pad(out: &mut String, v: i64, width: usize) {
    if v < 0 {
        out.push('-');
    }
    let s = v.unsigned_abs().to_string();
    for _ in s.len()..width {
        out.push('0');
    }
    out.push_str(&s);
}

fn push_offset(out: &mut String, std: Std, offset: i32) {
    use Std::*;
    let mut zone = offset / 60;
    let mut abs = offset;
    if zone < 0 {
        out.push('-');
        zone = -zone;
        abs = -abs;
    } else {
        out.push('+');
    }
    pad(out, (zone / 60) as i64, 2);
    let colon = matches!(
        std,
        Iso8601ColonTZ | NumColonTZ | Iso8601ColonSecondsTZ | NumColonSecondsTZ
    );
    if colon {
        out.push(':');
    }
    if !matches!(std, NumShortTZ | Iso8601ShortTZ) {
        pad(out, (zone % 60) as i64, 2);
    }
    if matches!(
        std,
        Iso8601SecondsTZ | NumSecondsTZ | NumColonSecondsTZ | Iso8601ColonSecondsTZ
    ) {
        if colon {
            out.push(':');
        }
        pad(out, (abs % 60) as i64, 2);
    }
}

fn format_layout(t: &LuaTime, layout: &str) -> String {
    use Std::*;
    let p = t.parts();
    let offset = t.loc.offset();
    let mut out = String::with_capacity(layout.len() + 10);
    let mut rest = layout;
    loop {
        let (prefix, std, suffix) = next_std_chunk(rest);
        out.push_str(prefix);
        let Some(std) = std else { break };
        rest = suffix;
        match std {
            Year => pad(&mut out, p.year.rem_euclid(100), 2),
            LongYear => pad(&mut out, p.year, 4),
            Month => out.push_str(&MONTHS[p.month as usize - 1][..3]),
            LongMonth => out.push_str(MONTHS[p.month as usize - 1]),
            NumMonth => pad(&mut out, p.month as i64, 0),
            ZeroMonth => pad(&mut out, p.month as i64, 2),
            WeekDay => out.push_str(&DAYS[p.weekday as usize][..3]),
            LongWeekDay => out.push_str(DAYS[p.weekday as usize]),
            Day => pad(&mut out, p.day as i64, 0),
            UnderDay => {
                if p.day < 10 {
                    out.push(' ');
                }
                pad(&mut out, p.day as i64, 0);
            }
            ZeroDay => pad(&mut out, p.day as i64, 2),
            UnderYearDay => {
                let s = p.yday.to_string();
                for _ in s.len()..3 {
                    out.push(' ');
                }
                out.push_str(&s);
            }
            ZeroYearDay => pad(&mut out, p.yday as i64, 3),
            Hour => pad(&mut out, p.hour as i64, 2),
            Hour12 | ZeroHour12 => {
                let h = match p.hour % 12 {
                    0 => 12,
                    h => h,
                };
                pad(&mut out, h as i64, if std == Hour12 { 0 } else { 2 });
            }
            Minute => pad(&mut out, p.min as i64, 0),
            ZeroMinute => pad(&mut out, p.min as i64, 2),
            Second => pad(&mut out, p.sec as i64, 0),
            ZeroSecond => pad(&mut out, p.sec as i64, 2),
            PM => out.push_str(if p.hour >= 12 { "PM" } else { "AM" }),
            Pm => out.push_str(if p.hour >= 12 { "pm" } else { "am" }),
            Iso8601TZ
            | Iso8601SecondsTZ
            | Iso8601ShortTZ
            | Iso8601ColonTZ
            | Iso8601ColonSecondsTZ
                if offset == 0 =>
            {
                out.push('Z')
            }
            Iso8601TZ
            | Iso8601SecondsTZ
            | Iso8601ShortTZ
            | Iso8601ColonTZ
            | Iso8601ColonSecondsTZ
            | NumTZ
            | NumSecondsTZ
            | NumShortTZ
            | NumColonTZ
            | NumColonSecondsTZ => push_offset(&mut out, std, offset),
            TZ => {
                let name = t.loc.abbrev();
                if name.is_empty() {
                    push_offset(&mut out, NumTZ, offset);
                } else {
                    out.push_str(name);
                }
            }
            Frac0 { digits, sep } | Frac9 { digits, sep } => {
                let trim = matches!(std, Frac9 { .. });
                let digits = digits.min(9);
                if trim && (digits == 0 || p.nsec == 0) {
                    continue;
                }
                let all = format!("{:09}", p.nsec);
                let mut frac = &all[..digits];
                if trim {
                    frac = frac.trim_end_matches('0');
                    if frac.is_empty() {
                        continue;
                    }
                }
                out.push(sep as char);
                out.push_str(frac);
            }
        }
    }
    out
}

/// Go's `getnum`: one or two digits (exactly two when `fixed`).
fn getnum(s: &[u8], fixed: bool) -> Option<(i64, &[u8])> {
    let digit = |i: usize| {
        s.get(i)
            .filter(|c| c.is_ascii_digit())
            .map(|c| (c - b'0') as i64)
    };
    let d0 = digit(0)?;
    match digit(1) {
        Some(d1) => Some((d0 * 10 + d1, &s[2..])),
        None if fixed => None,
        None => Some((d0, &s[1..])),
    }
}

fn getnum3(s: &[u8], fixed: bool) -> Option<(i64, &[u8])> {
    let mut n = 0i64;
    let mut i = 0;
    while i < 3 && i < s.len() && s[i].is_ascii_digit() {
        n = n * 10 + (s[i] - b'0') as i64;
        i += 1;
    }
    if i == 0 || (fixed && i != 3) {
        return None;
    }
    Some((n, &s[i..]))
}

fn atoi(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 18 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Case-insensitive prefix lookup in a name table (`Jan`, `monday` …).
fn lookup<'a>(names: &[&str], value: &'a [u8]) -> Option<(usize, &'a [u8])> {
    names.iter().enumerate().find_map(|(i, name)| {
        let n = name.len();
        (value.len() >= n && value[..n].eq_ignore_ascii_case(name.as_bytes()))
            .then(|| (i, &value[n..]))
    })
}

/// Go's `parseNanoseconds`: `value[0]` is the separator, then `nbytes - 1` digits.
fn parse_nanos(value: &[u8], nbytes: usize) -> Option<i64> {
    if !matches!(value.first(), Some(b'.' | b',')) {
        return None;
    }
    let nbytes = nbytes.min(10);
    let mut ns = atoi(&value[1..nbytes])?;
    for _ in nbytes..10 {
        ns *= 10;
    }
    Some(ns)
}

/// Go's `skip`: matches a literal layout chunk; a space matches any run of spaces.
fn skip<'a>(mut value: &'a [u8], prefix: &str) -> Option<&'a [u8]> {
    let mut prefix = prefix.as_bytes();
    while let Some(&c) = prefix.first() {
        if c == b' ' {
            if !value.is_empty() && value[0] != b' ' {
                return None;
            }
            while prefix.first() == Some(&b' ') {
                prefix = &prefix[1..];
            }
            while value.first() == Some(&b' ') {
                value = &value[1..];
            }
            continue;
        }
        if value.first() != Some(&c) {
            return None;
        }
        prefix = &prefix[1..];
        value = &value[1..];
    }
    Some(value)
}

/// Length of a zone abbreviation at the start of `value` (`MST`, `CEST`), as Go's heuristic.
fn zone_abbrev_len(value: &[u8]) -> Option<usize> {
    let n = value.iter().take_while(|c| c.is_ascii_uppercase()).count();
    match n {
        3 => Some(3),
        4 | 5 if value[n - 1] == b'T' => Some(n),
        _ => None,
    }
}

/// Go's `time.Parse` / `ParseInLocation`: `default_loc` applies when the value names no zone;
/// `local` is reused when a parsed offset equals its offset.
fn parse_layout(
    layout: &str,
    value_str: &str,
    default_loc: &Location,
    local: &Location,
) -> Result<LuaTime, String> {
    use Std::*;
    let err_at = |elem: &str, rest: &[u8], why: &str| {
        let rest = String::from_utf8_lossy(rest);
        if why.is_empty() {
            format!("parsing time {value_str:?} as {layout:?}: cannot parse {rest:?} as {elem:?}")
        } else {
            format!("parsing time {value_str:?}: {why}")
        }
    };
    let mut value = value_str.as_bytes();
    let mut lay = layout;
    let (mut year, mut month, mut day, mut yday) = (0i64, -1i64, -1i64, -1i64);
    let (mut hour, mut min, mut sec, mut nsec) = (0i64, 0i64, 0i64, 0i64);
    let (mut pm_set, mut am_set) = (false, false);
    let mut utc = false;
    let mut zone_offset: Option<i32> = None;
    let mut zone_name: Option<String> = None;

    loop {
        let (prefix, std, suffix) = next_std_chunk(lay);
        let elem = &lay[prefix.len()..lay.len() - suffix.len()];
        value = skip(value, prefix).ok_or_else(|| err_at(prefix, value, ""))?;
        let Some(std) = std else {
            if !value.is_empty() {
                return Err(format!(
                    "parsing time {value_str:?}: extra text: {:?}",
                    String::from_utf8_lossy(value)
                ));
            }
            break;
        };
        lay = suffix;
        let hold = value;
        let bad = |why: &str| err_at(elem, hold, why);
        let mut range_err = "";
        match std {
            Year => {
                let y = value.get(..2).and_then(atoi).ok_or_else(|| bad(""))?;
                value = &value[2..];
                year = if y >= 69 { y + 1900 } else { y + 2000 };
            }
            LongYear => {
                if value.len() < 4 || !value[0].is_ascii_digit() {
                    return Err(bad(""));
                }
                year = atoi(&value[..4]).ok_or_else(|| bad(""))?;
                value = &value[4..];
            }
            Month | LongMonth => {
                let names: Vec<&str> = if std == Month {
                    MONTHS.iter().map(|m| &m[..3]).collect()
                } else {
                    MONTHS.to_vec()
                };
                let (i, rest) = lookup(&names, value).ok_or_else(|| bad(""))?;
                month = i as i64 + 1;
                value = rest;
            }
            NumMonth | ZeroMonth => {
                let (m, rest) = getnum(value, std == ZeroMonth).ok_or_else(|| bad(""))?;
                if !(1..=12).contains(&m) {
                    range_err = "month out of range";
                }
                month = m;
                value = rest;
            }
            WeekDay | LongWeekDay => {
                // Go checks the weekday name but ignores its value.
                let names: Vec<&str> = if std == WeekDay {
                    DAYS.iter().map(|d| &d[..3]).collect()
                } else {
                    DAYS.to_vec()
                };
                value = lookup(&names, value).ok_or_else(|| bad(""))?.1;
            }
            Day | UnderDay | ZeroDay => {
                if std == UnderDay && value.first() == Some(&b' ') {
                    value = &value[1..];
                }
                let (d, rest) = getnum(value, std == ZeroDay).ok_or_else(|| bad(""))?;
                day = d;
                value = rest;
            }
            UnderYearDay | ZeroYearDay => {
                for _ in 0..2 {
                    if std == UnderYearDay && value.first() == Some(&b' ') {
                        value = &value[1..];
                    }
                }
                let (d, rest) = getnum3(value, std == ZeroYearDay).ok_or_else(|| bad(""))?;
                yday = d;
                value = rest;
            }
            Hour => {
                let (h, rest) = getnum(value, false).ok_or_else(|| bad(""))?;
                if !(0..24).contains(&h) {
                    range_err = "hour out of range";
                }
                hour = h;
                value = rest;
            }
            Hour12 | ZeroHour12 => {
                let (h, rest) = getnum(value, std == ZeroHour12).ok_or_else(|| bad(""))?;
                if !(0..=12).contains(&h) {
                    range_err = "hour out of range";
                }
                hour = h;
                value = rest;
            }
            Minute | ZeroMinute => {
                let (m, rest) = getnum(value, std == ZeroMinute).ok_or_else(|| bad(""))?;
                if !(0..60).contains(&m) {
                    range_err = "minute out of range";
                }
                min = m;
                value = rest;
            }
            Second | ZeroSecond => {
                let (s, rest) = getnum(value, std == ZeroSecond).ok_or_else(|| bad(""))?;
                if !(0..60).contains(&s) {
                    range_err = "second out of range";
                }
                sec = s;
                value = rest;
                // A fraction in the value but none in the layout is still accepted.
                if value.len() >= 2 && matches!(value[0], b'.' | b',') && value[1].is_ascii_digit()
                {
                    let (_, next, _) = next_std_chunk(lay);
                    if !matches!(next, Some(Frac0 { .. } | Frac9 { .. })) {
                        let mut n = 2;
                        while n < value.len() && value[n].is_ascii_digit() {
                            n += 1;
                        }
                        nsec = parse_nanos(value, n).ok_or_else(|| bad(""))?;
                        value = &value[n..];
                    }
                }
            }
            PM | Pm => {
                let p = value.get(..2).ok_or_else(|| bad(""))?;
                let (am, pm): (&[u8], &[u8]) = if std == PM {
                    (b"AM", b"PM")
                } else {
                    (b"am", b"pm")
                };
                if p == pm {
                    pm_set = true;
                } else if p == am {
                    am_set = true;
                } else {
                    return Err(bad(""));
                }
                value = &value[2..];
            }
            Iso8601TZ
            | Iso8601SecondsTZ
            | Iso8601ShortTZ
            | Iso8601ColonTZ
            | Iso8601ColonSecondsTZ
            | NumTZ
            | NumSecondsTZ
            | NumShortTZ
            | NumColonTZ
            | NumColonSecondsTZ => {
                let iso = matches!(
                    std,
                    Iso8601TZ
                        | Iso8601SecondsTZ
                        | Iso8601ShortTZ
                        | Iso8601ColonTZ
                        | Iso8601ColonSecondsTZ
                );
                if iso && value.first() == Some(&b'Z') {
                    value = &value[1..];
                    utc = true;
                } else {
                    let (sign, h, m, s, used): (u8, &[u8], &[u8], &[u8], usize) = match std {
                        Iso8601ColonTZ | NumColonTZ => {
                            if value.len() < 6 || value[3] != b':' {
                                return Err(bad(""));
                            }
                            (value[0], &value[1..3], &value[4..6], b"00", 6)
                        }
                        NumShortTZ | Iso8601ShortTZ => {
                            if value.len() < 3 {
                                return Err(bad(""));
                            }
                            (value[0], &value[1..3], b"00", b"00", 3)
                        }
                        Iso8601ColonSecondsTZ | NumColonSecondsTZ => {
                            if value.len() < 9 || value[3] != b':' || value[6] != b':' {
                                return Err(bad(""));
                            }
                            (value[0], &value[1..3], &value[4..6], &value[7..9], 9)
                        }
                        Iso8601SecondsTZ | NumSecondsTZ => {
                            if value.len() < 7 {
                                return Err(bad(""));
                            }
                            (value[0], &value[1..3], &value[3..5], &value[5..7], 7)
                        }
                        _ => {
                            if value.len() < 5 {
                                return Err(bad(""));
                            }
                            (value[0], &value[1..3], &value[3..5], b"00", 5)
                        }
                    };
                    let (h, m, s) = match (atoi(h), atoi(m), atoi(s)) {
                        (Some(h), Some(m), Some(s)) => (h, m, s),
                        _ => return Err(bad("")),
                    };
                    let off = ((h * 60 + m) * 60 + s) as i32;
                    zone_offset = Some(match sign {
                        b'+' => off,
                        b'-' => -off,
                        _ => return Err(bad("")),
                    });
                    value = &value[used..];
                }
            }
            TZ => {
                if value.starts_with(b"UTC") {
                    value = &value[3..];
                    utc = true;
                } else {
                    let n = zone_abbrev_len(value).ok_or_else(|| bad(""))?;
                    zone_name = Some(String::from_utf8_lossy(&value[..n]).into_owned());
                    value = &value[n..];
                }
            }
            Frac0 { digits, .. } => {
                let nbytes = 1 + digits;
                if value.len() < nbytes {
                    return Err(bad(""));
                }
                nsec = parse_nanos(value, nbytes).ok_or_else(|| bad(""))?;
                value = &value[nbytes..];
            }
            Frac9 { .. } => {
                if value.len() >= 2 && matches!(value[0], b'.' | b',') && value[1].is_ascii_digit()
                {
                    let mut i = 0;
                    while i + 1 < value.len() && value[i + 1].is_ascii_digit() {
                        i += 1;
                    }
                    nsec = parse_nanos(value, 1 + i).ok_or_else(|| bad(""))?;
                    value = &value[1 + i..];
                }
            }
        }
        if !range_err.is_empty() {
            return Err(bad(range_err));
        }
    }

    let why = |w: &str| format!("parsing time {value_str:?}: {w}");
    if pm_set && hour < 12 {
        hour += 12;
    } else if am_set && hour == 12 {
        hour = 0;
    }
    if yday >= 0 {
        let len = if is_leap(year) { 366 } else { 365 };
        if !(1..=len).contains(&yday) {
            return Err(why("day-of-year out of range"));
        }
        let days = days_from_civil(year as i128, 1, 1) + yday as i128 - 1;
        let (_, m, d) = civil_from_days(days);
        if (month >= 0 && month != m as i64) || (day >= 0 && day != d as i64) {
            return Err(why("day-of-year does not match month and day"));
        }
        month = m as i64;
        day = d as i64;
    } else {
        if month < 0 {
            month = 1;
        }
        if day < 0 {
            day = 1;
        }
    }
    if day < 1 || day > days_in_month(month, year) {
        return Err(why("day out of range"));
    }

    let civil = |loc: Location| LuaTime::from_civil(year, month, day, hour, min, sec, nsec, loc);
    if utc {
        return Ok(civil(Location::Utc));
    }
    if let Some(off) = zone_offset {
        let t = civil(Location::Utc).add_nanos(-(off as i64) * SECOND);
        let loc =
            if off == local.offset() && zone_name.as_deref().is_none_or(|n| n == local.abbrev()) {
                local.clone()
            } else {
                Location::Fixed {
                    name: zone_name.unwrap_or_default().into(),
                    offset: off,
                }
            };
        return Ok(t.with_loc(loc));
    }
    if let Some(name) = zone_name {
        // Without a zone database an abbreviation says nothing about the offset: Go records
        // it with offset 0 unless it names the local zone.
        let loc = if name == local.abbrev() {
            local.clone()
        } else {
            Location::Fixed {
                name: name.into(),
                offset: 0,
            }
        };
        return Ok(civil(Location::Utc).with_loc(loc));
    }
    Ok(civil(default_loc.clone()))
}

// ---- Lua bindings -----------------------------------------------------------------------

/// A duration argument for the scheduler side (`sleep after timer ticker`): a Go-syntax string,
/// a number of nanoseconds or a Duration. Negative values are an error.
pub fn duration_arg(v: &Value) -> Result<Duration, String> {
    let n = duration_nanos(v)?;
    if n < 0 {
        return Err(format!("negative duration {}", LuaDuration(n).go_string()));
    }
    Ok(Duration::from_nanos(n as u64))
}

/// Signed nanoseconds from a string, number or Duration (`Time:add`, `parse_duration`).
fn duration_nanos(v: &Value) -> Result<i64, String> {
    match v {
        Value::Integer(i) => Ok(*i),
        Value::Number(f) if f.is_finite() && f.abs() < 9.2e18 => Ok(f.round() as i64),
        Value::Number(f) => Err(format!("duration {f} out of range")),
        Value::String(s) => {
            let s = s
                .to_str()
                .map_err(|_| "invalid duration (not UTF-8)".to_string())?;
            let n = duration::parse_signed_nanos(&s)?;
            i64::try_from(n).map_err(|_| format!("duration {s:?} out of range"))
        }
        Value::UserData(ud) => ud
            .borrow::<LuaDuration>()
            .map(|d| d.0)
            .map_err(|_| "expected a Duration".to_string()),
        other => Err(format!(
            "expected a duration (string, number or Duration), got {}",
            other.type_name()
        )),
    }
}

fn arg_err(fname: &str, e: String) -> mlua::Error {
    mlua::Error::runtime(format!("bad argument to '{fname}' ({e})"))
}

/// A Time userdata holding `t` (for tick values and other bindings).
pub fn time_value(lua: &Lua, t: LuaTime) -> mlua::Result<Value> {
    lua.create_userdata(t).map(Value::UserData)
}

fn loc_value(lua: &Lua, loc: Location) -> mlua::Result<Value> {
    lua.create_userdata(LuaLocation(loc)).map(Value::UserData)
}

impl UserData for LuaTime {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("add", |_, t, d: Value| {
            Ok(t.add_nanos(duration_nanos(&d).map_err(|e| arg_err("add", e))?))
        });
        m.add_method("sub", |_, t, u: UserDataRef<LuaTime>| Ok(t.sub(&u)));
        m.add_method(
            "add_date",
            |_, t, (y, mo, d): (Option<i64>, Option<i64>, Option<i64>)| {
                let p = t.parts();
                Ok(LuaTime::from_civil(
                    p.year.saturating_add(y.unwrap_or(0)),
                    (p.month as i64).saturating_add(mo.unwrap_or(0)),
                    (p.day as i64).saturating_add(d.unwrap_or(0)),
                    p.hour as i64,
                    p.min as i64,
                    p.sec as i64,
                    p.nsec as i64,
                    t.loc.clone(),
                ))
            },
        );
        m.add_method("before", |_, t, u: UserDataRef<LuaTime>| {
            Ok(t.unix_nanos_wide() < u.unix_nanos_wide())
        });
        m.add_method("after", |_, t, u: UserDataRef<LuaTime>| {
            Ok(t.unix_nanos_wide() > u.unix_nanos_wide())
        });
        m.add_method("equal", |_, t, u: UserDataRef<LuaTime>| {
            Ok(t.unix_nanos_wide() == u.unix_nanos_wide())
        });
        m.add_method("format", |_, t, layout: mlua::String| {
            Ok(t.format(&layout.to_str()?))
        });
        m.add_method("format_rfc3339", |_, t, ()| Ok(t.format(RFC3339)));
        m.add_method("unix", |_, t, ()| Ok(t.secs));
        m.add_method("unix_nano", |_, t, ()| Ok(t.unix_nano()));
        m.add_method("date", |_, t, ()| {
            let p = t.parts();
            Ok((p.year, p.month, p.day))
        });
        m.add_method("clock", |_, t, ()| {
            let p = t.parts();
            Ok((p.hour, p.min, p.sec))
        });
        m.add_method("year", |_, t, ()| Ok(t.parts().year));
        m.add_method("month", |_, t, ()| Ok(t.parts().month));
        m.add_method("day", |_, t, ()| Ok(t.parts().day));
        m.add_method("hour", |_, t, ()| Ok(t.parts().hour));
        m.add_method("minute", |_, t, ()| Ok(t.parts().min));
        m.add_method("second", |_, t, ()| Ok(t.parts().sec));
        m.add_method("nanosecond", |_, t, ()| Ok(t.nsec));
        m.add_method("weekday", |_, t, ()| Ok(t.parts().weekday));
        m.add_method("year_day", |_, t, ()| Ok(t.parts().yday));
        m.add_method("is_zero", |_, t, ()| Ok(t.is_zero()));
        m.add_method("utc", |_, t, ()| Ok(t.with_loc(Location::Utc)));
        m.add_method("in_local", |_, t, ()| Ok(t.with_loc(Location::Local)));
        m.add_method("in_location", |_, t, loc: UserDataRef<LuaLocation>| {
            Ok(t.with_loc(loc.0.clone()))
        });
        m.add_method("location", |lua, t, ()| loc_value(lua, t.loc.clone()));
        m.add_method("round", |_, t, d: Value| {
            Ok(t.round(duration_nanos(&d).map_err(|e| arg_err("round", e))?))
        });
        m.add_method("truncate", |_, t, d: Value| {
            Ok(t.truncate(duration_nanos(&d).map_err(|e| arg_err("truncate", e))?))
        });
        m.add_meta_method(MetaMethod::ToString, |_, t, ()| Ok(t.go_string()));
        m.add_meta_function(
            MetaMethod::Eq,
            |_, (a, b): (UserDataRef<LuaTime>, UserDataRef<LuaTime>)| {
                Ok(a.unix_nanos_wide() == b.unix_nanos_wide())
            },
        );
        m.add_meta_function(
            MetaMethod::Lt,
            |_, (a, b): (UserDataRef<LuaTime>, UserDataRef<LuaTime>)| {
                Ok(a.unix_nanos_wide() < b.unix_nanos_wide())
            },
        );
        m.add_meta_function(
            MetaMethod::Le,
            |_, (a, b): (UserDataRef<LuaTime>, UserDataRef<LuaTime>)| {
                Ok(a.unix_nanos_wide() <= b.unix_nanos_wide())
            },
        );
    }
}

impl UserData for LuaDuration {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("hours", |_, d, ()| Ok(d.in_units(HOUR)));
        m.add_method("minutes", |_, d, ()| Ok(d.in_units(MINUTE)));
        m.add_method("seconds", |_, d, ()| Ok(d.in_units(SECOND)));
        m.add_method("milliseconds", |_, d, ()| Ok(d.0 / MILLISECOND));
        m.add_method("microseconds", |_, d, ()| Ok(d.0 / MICROSECOND));
        m.add_method("nanoseconds", |_, d, ()| Ok(d.0));
        m.add_method("string", |_, d, ()| Ok(d.go_string()));
        m.add_meta_method(MetaMethod::ToString, |_, d, ()| Ok(d.go_string()));
        m.add_meta_function(
            MetaMethod::Eq,
            |_, (a, b): (UserDataRef<LuaDuration>, UserDataRef<LuaDuration>)| Ok(a.0 == b.0),
        );
        m.add_meta_function(
            MetaMethod::Lt,
            |_, (a, b): (UserDataRef<LuaDuration>, UserDataRef<LuaDuration>)| Ok(a.0 < b.0),
        );
        m.add_meta_function(
            MetaMethod::Le,
            |_, (a, b): (UserDataRef<LuaDuration>, UserDataRef<LuaDuration>)| Ok(a.0 <= b.0),
        );
    }
}

impl UserData for LuaLocation {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("string", |_, l, ()| Ok(l.0.name().to_string()));
        m.add_meta_method(MetaMethod::ToString, |_, l, ()| Ok(l.0.name().to_string()));
        m.add_meta_function(
            MetaMethod::Eq,
            |_, (a, b): (UserDataRef<LuaLocation>, UserDataRef<LuaLocation>)| Ok(a.0 == b.0),
        );
    }
}

fn int_arg(v: &Value, i: usize, fname: &str) -> mlua::Result<i64> {
    match v {
        Value::Integer(n) => Ok(*n),
        Value::Number(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(*f as i64),
        other => Err(mlua::Error::runtime(format!(
            "bad argument #{i} to '{fname}' (integer expected, got {})",
            other.type_name()
        ))),
    }
}

fn opt_loc(v: Option<Value>, i: usize, fname: &str) -> mlua::Result<Option<Location>> {
    match v {
        None | Some(Value::Nil) => Ok(None),
        Some(Value::UserData(ud)) if ud.is::<LuaLocation>() => {
            Ok(Some(ud.borrow::<LuaLocation>()?.0.clone()))
        }
        Some(other) => Err(mlua::Error::runtime(format!(
            "bad argument #{i} to '{fname}' (Location expected, got {})",
            other.type_name()
        ))),
    }
}

pub fn loader(lua: &Lua) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    table.set("now", lua.create_function(|_, ()| Ok(LuaTime::now()))?)?;
    table.set(
        "unix",
        lua.create_function(|_, (sec, nsec): (Value, Option<Value>)| {
            let whole = match &sec {
                Value::Number(f) if f.is_finite() => (*f * 1e9).round() as i128,
                other => int_arg(other, 1, "unix")? as i128 * NS,
            };
            let frac = match nsec {
                None | Some(Value::Nil) => 0,
                Some(v) => int_arg(&v, 2, "unix")? as i128,
            };
            Ok(LuaTime::from_unix_nanos(whole + frac, Location::Local))
        })?,
    )?;
    table.set(
        "date",
        lua.create_function(|_, args: mlua::Variadic<Value>| {
            let mut f = [0i64; 7];
            for (i, slot) in f.iter_mut().enumerate() {
                match args.get(i) {
                    // Clock fields may be left out; the calendar date may not.
                    None | Some(Value::Nil) if i >= 3 => {}
                    v => *slot = int_arg(v.unwrap_or(&Value::Nil), i + 1, "date")?,
                }
            }
            let loc = opt_loc(args.get(7).cloned(), 8, "date")?.unwrap_or(Location::Local);
            Ok(LuaTime::from_civil(
                f[0], f[1], f[2], f[3], f[4], f[5], f[6], loc,
            ))
        })?,
    )?;
    table.set(
        "parse",
        lua.create_function(
            |lua, (layout, value, loc): (mlua::String, mlua::String, Option<Value>)| {
                let loc = opt_loc(loc, 3, "parse")?;
                let (default_loc, local) = match &loc {
                    Some(l) => (l.clone(), l.clone()),
                    None => (Location::Utc, Location::Local),
                };
                let (layout, value) = (layout.to_string_lossy(), value.to_string_lossy());
                match parse_layout(&layout, &value, &default_loc, &local) {
                    Ok(t) => ok(lua, t),
                    Err(e) => fail(lua, ErrorKind::Invalid, e),
                }
            },
        )?,
    )?;
    table.set(
        "parse_duration",
        lua.create_function(|lua, v: Value| {
            if !matches!(v, Value::String(_) | Value::Integer(_) | Value::Number(_) | Value::UserData(_)) {
                return Err(mlua::Error::runtime(format!(
                    "bad argument #1 to 'parse_duration' (string, number or Duration expected, got {})",
                    v.type_name()
                )));
            }
            match duration_nanos(&v) {
                Ok(n) => ok(lua, LuaDuration(n)),
                Err(e) => fail(lua, ErrorKind::Invalid, e),
            }
        })?,
    )?;
    table.set(
        "load_location",
        lua.create_function(|lua, name: mlua::String| {
            let name = name.to_string_lossy();
            let loc = match name.as_str() {
                "" => return fail(lua, ErrorKind::Invalid, "empty location name"),
                "UTC" | "Etc/UTC" | "GMT" | "Etc/GMT" => Location::Utc,
                "Local" => Location::Local,
                other => {
                    return fail(
                        lua,
                        ErrorKind::NotFound,
                        format!("unknown time zone {other} (only UTC and Local are available)"),
                    )
                }
            };
            ok(lua, LuaLocation(loc))
        })?,
    )?;
    table.set(
        "fixed_zone",
        lua.create_function(|_, (name, offset): (mlua::String, Value)| {
            let offset = int_arg(&offset, 2, "fixed_zone")?.clamp(-86_400 * 7, 86_400 * 7) as i32;
            Ok(LuaLocation(Location::Fixed {
                name: name.to_string_lossy().into(),
                offset,
            }))
        })?,
    )?;
    table.set("utc", loc_value(lua, Location::Utc)?)?;
    table.set("localtz", loc_value(lua, Location::Local)?)?;

    for (name, v) in [
        ("NANOSECOND", NANOSECOND),
        ("MICROSECOND", MICROSECOND),
        ("MILLISECOND", MILLISECOND),
        ("SECOND", SECOND),
        ("MINUTE", MINUTE),
        ("HOUR", HOUR),
    ] {
        table.set(name, v)?;
    }
    for (name, layout) in LAYOUTS {
        table.set(name, layout)?;
    }
    for (i, m) in MONTHS.iter().enumerate() {
        table.set(m.to_ascii_uppercase(), i as i64 + 1)?;
    }
    for (i, d) in DAYS.iter().enumerate() {
        table.set(d.to_ascii_uppercase(), i as i64)?;
    }

    // sleep, after, timer and ticker need the scheduler: lua::modules adds them
    // (lua::channel::register_time_async).
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lua::modules::json::testing::{run, run_script, state};

    fn utc(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64, ns: i64) -> LuaTime {
        LuaTime::from_civil(y, mo, d, h, mi, s, ns, Location::Utc)
    }

    #[test]
    fn civil_round_trip() {
        for days in [-719_468i128, -1, 0, 1, 10_957, 19_723, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(utc(1, 1, 1, 0, 0, 0, 0).secs, ZERO_UNIX);
        assert_eq!(utc(2024, 2, 29, 0, 0, 0, 0).parts().yday, 60);
        assert_eq!(utc(2024, 12, 25, 0, 0, 0, 0).parts().weekday, 3);
    }

    #[test]
    fn date_normalises_like_go() {
        assert_eq!(
            utc(2024, 13, 1, 0, 0, 0, 0).format(RFC3339),
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(
            utc(2024, 3, 0, 0, 0, 0, 0).format(RFC3339),
            "2024-02-29T00:00:00Z"
        );
        assert_eq!(
            utc(2024, 1, 1, 25, 61, -1, 0).format(RFC3339),
            "2024-01-02T02:00:59Z"
        );
        assert_eq!(
            utc(2024, 1, 1, 0, 0, 0, -1).format(RFC3339_NANO),
            "2023-12-31T23:59:59.999999999Z"
        );
    }

    #[test]
    fn formats_go_layouts() {
        let t = utc(2006, 1, 2, 15, 4, 5, 123_456_789);
        let cases = [
            (RFC3339, "2006-01-02T15:04:05Z"),
            (RFC3339_NANO, "2006-01-02T15:04:05.123456789Z"),
            ("02 Jan 06 15:04 MST", "02 Jan 06 15:04 UTC"),
            (
                "Monday, 02-Jan-06 15:04:05 MST",
                "Monday, 02-Jan-06 15:04:05 UTC",
            ),
            (
                "Mon, 02 Jan 2006 15:04:05 -0700",
                "Mon, 02 Jan 2006 15:04:05 +0000",
            ),
            ("3:04PM", "3:04PM"),
            ("Jan _2 15:04:05.000", "Jan  2 15:04:05.123"),
            ("2006-01-02 15:04:05.999", "2006-01-02 15:04:05.123"),
            ("002 __2", "002   2"),
            ("January", "January"),
            ("_2006", "_2006"),
            ("pm 03", "pm 03"),
        ];
        for (layout, want) in cases {
            assert_eq!(t.format(layout), want, "{layout}");
        }
        let ist = Location::Fixed {
            name: "IST".into(),
            offset: 5 * 3600 + 1800,
        };
        let t2 = LuaTime::from_civil(2024, 1, 15, 12, 0, 0, 0, ist);
        assert_eq!(t2.format(RFC3339), "2024-01-15T12:00:00+05:30");
        assert_eq!(
            t2.format("-0700 -07 Z07:00:00 MST"),
            "+0530 +05 +05:30:00 IST"
        );
        assert_eq!(t2.utc().format(RFC3339), "2024-01-15T06:30:00Z");
        let noname = Location::Fixed {
            name: "".into(),
            offset: -8 * 3600,
        };
        assert_eq!(t2.with_loc(noname).format("MST"), "-0800");
        assert_eq!(utc(2024, 1, 1, 0, 0, 0, 0).format(".999 .000"), " .000");
        assert_eq!(t.go_string(), "2006-01-02 15:04:05.123456789 +0000 UTC");
    }

    impl LuaTime {
        fn utc(&self) -> LuaTime {
            self.with_loc(Location::Utc)
        }
    }

    #[test]
    fn parses_go_layouts() {
        let p = |layout: &str, v: &str| parse_layout(layout, v, &Location::Utc, &Location::Local);
        let t = p(RFC3339, "2024-12-29T15:04:05Z").unwrap();
        assert_eq!(t.unix(), 1_735_484_645);
        assert_eq!(t.loc, Location::Utc);
        let t = p(RFC3339, "2024-12-29T15:04:05.5+02:00").unwrap();
        assert_eq!(t.unix(), 1_735_477_445);
        assert_eq!(t.nsec, 500_000_000);
        assert_eq!(t.format(RFC3339_NANO), "2024-12-29T15:04:05.5+02:00");
        assert_eq!(
            p("2006-01-02", "2024-02-29").unwrap().format(RFC3339),
            "2024-02-29T00:00:00Z"
        );
        assert_eq!(
            p("15:04:05", "14:30:00")
                .unwrap()
                .format("2006-01-02 15:04"),
            "0000-01-01 14:30"
        );
        assert_eq!(p("3:04PM", "3:04PM").unwrap().parts().hour, 15);
        assert_eq!(p("3:04pm", "12:00am").unwrap().parts().hour, 0);
        assert_eq!(
            p("Jan _2 2006", "feb  3 2020").unwrap().format(RFC3339),
            "2020-02-03T00:00:00Z"
        );
        assert_eq!(
            p(
                "Mon, 02 Jan 2006 15:04:05 MST",
                "Sun, 29 Dec 2024 14:30:00 EST"
            )
            .unwrap()
            .loc
            .name(),
            "EST"
        );
        assert_eq!(
            p("2006-01-02 15:04:05 -0700", "2024-01-01 00:00:00 -0130")
                .unwrap()
                .loc
                .offset(),
            -5400
        );
        assert_eq!(p("2006 002", "2024 060").unwrap().format("01-02"), "02-29");
        assert_eq!(
            p("2006-01-02T15:04:05.000Z", "2024-01-01T00:00:00.250Z")
                .unwrap()
                .nsec,
            250_000_000
        );
        let offset_zero = p(RFC3339, "2024-01-01T00:00:00+00:00").unwrap();
        assert_eq!(offset_zero.loc, Location::Local);

        for (layout, v) in [
            (RFC3339, "invalid"),
            (RFC3339, "2024-13-01T00:00:00Z"),
            (RFC3339, "2024-02-30T00:00:00Z"),
            (RFC3339, "2024-01-01T24:00:00Z"),
            (RFC3339, "2024-01-01T00:00:00"),
            (RFC3339, "2024-01-01T00:00:00Zjunk"),
            ("2006-01-02", "2024-1-02"),
            ("Jan", "Foo"),
            ("2006 002", "2023 366"),
            ("", "x"),
        ] {
            assert!(p(layout, v).is_err(), "{layout} {v}");
        }
    }

    #[test]
    fn round_and_truncate() {
        let t = utc(2024, 1, 1, 10, 29, 30, 0);
        assert_eq!(t.truncate(HOUR).format(RFC3339), "2024-01-01T10:00:00Z");
        assert_eq!(t.round(HOUR).format(RFC3339), "2024-01-01T10:00:00Z");
        assert_eq!(t.round(MINUTE).format(RFC3339), "2024-01-01T10:30:00Z");
        assert_eq!(
            t.truncate(15 * MINUTE).format(RFC3339),
            "2024-01-01T10:15:00Z"
        );
        assert_eq!(t.round(0).format(RFC3339), t.format(RFC3339));
    }

    #[test]
    fn duration_args() {
        let lua = Lua::new();
        let s = |x: &str| Value::String(lua.create_string(x).unwrap());
        assert_eq!(duration_arg(&s("10ms")).unwrap(), Duration::from_millis(10));
        assert_eq!(
            duration_arg(&Value::Integer(1_500)).unwrap(),
            Duration::from_nanos(1_500)
        );
        assert_eq!(
            duration_arg(&Value::Number(2e9)).unwrap(),
            Duration::from_secs(2)
        );
        let ud = lua.create_userdata(LuaDuration(SECOND)).unwrap();
        assert_eq!(
            duration_arg(&Value::UserData(ud)).unwrap(),
            Duration::from_secs(1)
        );
        assert!(duration_arg(&s("-1s")).is_err());
        assert!(duration_arg(&Value::Integer(-1)).is_err());
        assert!(duration_arg(&s("soon")).is_err());
        assert!(duration_arg(&Value::Boolean(true)).is_err());
        assert_eq!(duration_nanos(&s("-1.5s")).unwrap(), -1_500_000_000);
        assert_eq!(LuaDuration(-1_500_000_000).go_string(), "-1.5s");
    }

    #[test]
    fn error_paths() {
        let lua = state();
        run(
            &lua,
            r#"
            local function inv(v, err) return v == nil and errors.is(err, errors.INVALID) end
            assert(inv(time.parse(time.RFC3339, "invalid")))
            assert(inv(time.parse_duration("5 parsecs")))
            assert(inv(time.parse_duration("")))
            assert(inv(time.load_location("")))
            local l, err = time.load_location("America/New_York")
            assert(l == nil and errors.is(err, errors.NOT_FOUND))
            assert(not pcall(time.parse_duration, {}))
            assert(not pcall(time.parse_duration, nil))
            assert(not pcall(time.date, "2024", 1, 1))
            assert(not pcall(time.date, 2024, 1))
            assert(not pcall(time.date, 2024, 1, 1, 0, 0, 0, 0, "UTC"))
            assert(not pcall(time.now().add, time.now(), "soon"))
            assert(not pcall(time.now().sub, time.now(), 5))
            assert(not pcall(time.now().before, time.now(), "x"))
            assert(not pcall(time.unix, "x"))
            "#,
        );
    }

    #[test]
    fn lua_script_passes() {
        let lua = state();
        run_script(
            &lua,
            "time_test.lua",
            include_str!("../../../tests/lua/time_test.lua"),
        );
    }
}
