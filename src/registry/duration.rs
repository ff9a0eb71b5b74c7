//! Go-syntax durations (`"500ms"`, `"1h30m"`, plus `d` = 24h), shared by the registry and Lua modules.

use std::time::Duration;

/// Parses a Go duration string. Negative values are rejected (callers that accept them parse the sign).
pub fn parse(s: &str) -> Result<Duration, String> {
    let nanos = parse_signed_nanos(s)?;
    if nanos < 0 {
        return Err(format!("negative duration {s:?}"));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// Parses to signed nanoseconds (`"-1.5s"` → -1_500_000_000).
pub fn parse_signed_nanos(s: &str) -> Result<i128, String> {
    let bad = || format!("invalid duration {s:?}");
    let mut rest = s.trim();
    let negative = rest.starts_with('-');
    if negative || rest.starts_with('+') {
        rest = &rest[1..];
    }
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86400e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += number * unit;
    }
    let nanos = total.round() as i128;
    Ok(if negative { -nanos } else { nanos })
}

/// Go's `Duration.String()` form (`"1h2m3.5s"`, `"150ms"`), used for `uptime` fields.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", trim(nanos as f64 / 1e3));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", trim(nanos as f64 / 1e6));
    }
    let secs = d.as_secs();
    let (h, m) = (secs / 3600, (secs % 3600) / 60);
    let s = (nanos % 60_000_000_000) as f64 / 1e9;
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{}s", trim(s)));
    out
}

fn trim(x: f64) -> String {
    let s = format!("{x:.9}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_forms() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse("10us").unwrap(), Duration::from_micros(10));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_signed_nanos("-2s").unwrap(), -2_000_000_000);
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "10", "5x", "ms", "1h-2m", "-1s"] {
            assert!(parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format(Duration::from_millis(150)), "150ms");
        assert_eq!(format(Duration::from_millis(3723500)), "1h2m3.5s");
        assert_eq!(format(Duration::from_secs(5)), "5s");
    }
}
