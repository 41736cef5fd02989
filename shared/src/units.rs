//! Durations and sizes written as strings in configuration: `"250ms"`, `"1s"`, `"5m"`; `"64KiB"`, `"1MiB"`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as a string (`"250ms"`, `"1s"`, `"5m"`, `"1h"`), parsed by `humantime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationStr(pub Duration);

impl DurationStr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || format!(r#"invalid duration "{text}", expected e.g. "1s", "500ms", "1m""#);
        // humantime accepts "1h 30m"; a bare number ("10") is refused because its unit would be a guess.
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed.chars().all(|c| c.is_ascii_digit()) {
            return Err(invalid());
        }
        humantime::parse_duration(trimmed).map(DurationStr).map_err(|_| invalid())
    }

    pub fn as_nanos_u64(self) -> u64 {
        u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Milliseconds for host APIs that take `u32` milliseconds (timeouts), saturating.
    pub fn as_millis_u32(self) -> u32 {
        u32::try_from(self.0.as_millis()).unwrap_or(u32::MAX)
    }
}

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        DurationStr::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for DurationStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A size in bytes written as a string: `"512"`, `"512B"`, `"64KiB"`, `"1MiB"`, `"1GiB"` (binary units only:
/// `"1MB"` is refused rather than guessed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || format!(r#"invalid size "{text}", expected e.g. "512B", "64KiB", "1MiB""#);
        let trimmed = text.trim();
        let digits_end = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(digits_end);
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return Err(invalid()),
        };
        number.checked_mul(multiplier).map(ByteSize).ok_or_else(invalid)
    }

    /// The size as `usize`, saturating (a 32-bit wasm VM cannot hold more anyway).
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ByteSize::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(DurationStr::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(DurationStr::parse("1s").unwrap().0, Duration::from_secs(1));
        assert_eq!(DurationStr::parse("5m").unwrap().0, Duration::from_secs(300));
        assert_eq!(DurationStr::parse("1h").unwrap().0, Duration::from_secs(3600));
        assert_eq!(DurationStr::parse(" 20ms ").unwrap().as_millis_u32(), 20);
        assert_eq!(DurationStr::parse("2s").unwrap().as_nanos_u64(), 2_000_000_000);
    }

    #[test]
    fn bad_durations_are_explained() {
        for bad in ["1x", "", "10", "s", "-1s", "1.5.s"] {
            let err = DurationStr::parse(bad).unwrap_err();
            assert_eq!(err, format!(r#"invalid duration "{bad}", expected e.g. "1s", "500ms", "1m""#));
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("512").unwrap().0, 512);
        assert_eq!(ByteSize::parse("512B").unwrap().0, 512);
        assert_eq!(ByteSize::parse("64KiB").unwrap().0, 65536);
        assert_eq!(ByteSize::parse("1MiB").unwrap().as_usize(), 1 << 20);
        assert_eq!(ByteSize::parse("2 GiB").unwrap().0, 2 << 30);
    }

    #[test]
    fn bad_sizes_are_explained() {
        for bad in ["", "1MB", "KiB", "-1", "1.5MiB", "99999999999999999999GiB", "18014398509481984GiB"] {
            let err = ByteSize::parse(bad).unwrap_err();
            assert_eq!(err, format!(r#"invalid size "{bad}", expected e.g. "512B", "64KiB", "1MiB""#));
        }
    }

    #[test]
    fn deserialize_from_json_strings_only() {
        let d: DurationStr = serde_json::from_str(r#""20ms""#).unwrap();
        assert_eq!(d.0, Duration::from_millis(20));
        assert!(serde_json::from_str::<DurationStr>("20").is_err());
        let s: ByteSize = serde_json::from_str(r#""1KiB""#).unwrap();
        assert_eq!(s.0, 1024);
    }
}
