//! Byte sizes in the registry (`max_memory: 64MB`): a whole number of bytes, or a whole number
//! with a unit. KB, MB and GB are binary (1024-based), as KiB, MiB and GiB are.

/// Parses `"64MB"`, `"512 KiB"`, `"1048576"`; units are case-insensitive.
pub fn parse(s: &str) -> Result<usize, String> {
    let bad = || format!("invalid size {s:?} (expected bytes or a number with KB, MB or GB)");
    let text = s.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits == 0 {
        return Err(bad());
    }
    let number: usize = text[..digits].parse().map_err(|_| bad())?;
    let shift = match text[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "kb" | "kib" | "k" => 10,
        "mb" | "mib" | "m" => 20,
        "gb" | "gib" | "g" => 30,
        _ => return Err(bad()),
    };
    number.checked_mul(1 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn sizes_with_and_without_units() {
        for (text, bytes) in [
            ("1048576", 1 << 20),
            ("64MB", 64 << 20),
            ("64 mib", 64 << 20),
            ("512KB", 512 << 10),
            ("2GiB", 2 << 30),
            ("7b", 7),
        ] {
            assert_eq!(parse(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "MB",
            "1.5MB",
            "-1MB",
            "12 parsecs",
            "99999999999999999999GB",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
