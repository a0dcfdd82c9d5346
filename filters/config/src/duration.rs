//! [`Duration`]: the one way a meshwasm configuration writes a span of time.

use std::fmt;

/// A duration written as a whole number and a unit: `"250ms"`, `"5s"`, `"1m"` or `"1h"`. Whether 0
/// or a long span is acceptable is up to the field that uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }

    /// Parses `<digits><unit>` with unit `ms`, `s`, `m` or `h` (surrounding spaces are ignored, as
    /// the filters' earlier parsers did); the error says what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let bad = || {
            format!(
                "`{s}` is not a duration: write a whole number and a unit, like \"250ms\", \"5s\", \"1m\" or \"1h\""
            )
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        let ms_per_unit = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        n.checked_mul(ms_per_unit).map(Self::from_millis).ok_or_else(|| format!("`{s}` is too long"))
    }

    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whole seconds, for fields the filter keeps in seconds; a fraction is an error.
    pub fn as_whole_secs(self) -> Result<u64, String> {
        if self.0.subsec_nanos() == 0 {
            Ok(self.0.as_secs())
        } else {
            Err(format!("{self} is not a whole number of seconds"))
        }
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl fmt::Display for Duration {
    /// The shortest exact spelling, quoted as it is written in a JSON configuration.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.as_millis();
        match ms {
            0 => f.write_str("\"0s\""),
            _ if ms.is_multiple_of(3_600_000) => write!(f, "\"{}h\"", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => write!(f, "\"{}m\"", ms / 60_000),
            _ if ms.is_multiple_of(1000) => write!(f, "\"{}s\"", ms / 1000),
            _ => write!(f, "\"{ms}ms\""),
        }
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

/// Reads a duration string and converts it with `convert`, inside the visitor, so that serde_json
/// attaches the position (and so the field path) to a conversion error too.
struct Visit<T>(fn(Duration) -> Result<T, String>);

impl<T> serde::de::Visitor<'_> for Visit<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string like \"250ms\", \"5s\", \"1m\" or \"1h\"")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        Duration::parse(v).and_then(self.0).map_err(E::custom)
    }
}

impl<'de> serde::Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Visit(Ok))
    }
}

/// `#[serde(deserialize_with = "meshwasm_config::millis")]`: a duration string into a field the
/// filter keeps as `u64` milliseconds.
pub fn millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_str(Visit(|d| Ok(d.as_millis())))
}

/// `#[serde(deserialize_with = "meshwasm_config::secs")]`: a duration string into a field the
/// filter keeps as `u64` seconds; a fraction of a second is refused.
pub fn secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_str(Visit(Duration::as_whole_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(Duration::parse("250ms").unwrap().as_millis(), 250);
        assert_eq!(Duration::parse("5s").unwrap().as_millis(), 5000);
        assert_eq!(Duration::parse("2m").unwrap().as_millis(), 120_000);
        assert_eq!(Duration::parse("1h").unwrap().as_millis(), 3_600_000);
        assert_eq!(Duration::parse("0s").unwrap(), Duration::default());
        assert_eq!(Duration::parse(" 5s ").unwrap().as_millis(), 5000);
    }

    #[test]
    fn malformed_durations_say_how_to_write_one() {
        for bad in ["5", "s", "-1s", "1.5s", "5 s", "5sec", "5S", "", "1d", "ms5"] {
            let e = Duration::parse(bad).unwrap_err();
            assert!(e.contains("is not a duration") && e.contains("\"250ms\""), "{bad}: {e}");
        }
        assert!(Duration::parse("99999999999999999999h").unwrap_err().contains("not a duration"));
        assert!(Duration::parse("18446744073709551615h").unwrap_err().contains("too long"));
    }

    #[test]
    fn deserializes_only_from_strings() {
        #[derive(Debug, serde::Deserialize)]
        struct W {
            d: Duration,
        }
        let w: W = serde_json::from_str(r#"{"d": "30s"}"#).unwrap();
        assert_eq!(w.d, Duration::from_secs(30));
        let e = crate::from_json::<W>(br#"{"d": 30}"#).unwrap_err();
        assert_eq!(e.path(), "d");
        assert!(e.reason().contains("a duration string like"), "{e}");
        let e = crate::from_json::<W>(br#"{"d": "30"}"#).unwrap_err();
        assert_eq!(e.path(), "d");
        assert!(e.reason().contains("`30` is not a duration"), "{e}");
    }

    #[test]
    fn whole_seconds_and_display() {
        assert_eq!(Duration::parse("2m").unwrap().as_whole_secs(), Ok(120));
        assert!(Duration::parse("1500ms").unwrap().as_whole_secs().unwrap_err().contains("\"1500ms\""));
        assert_eq!(Duration::from_millis(90_000).to_string(), "\"90s\"");
        assert_eq!(Duration::from_secs(7200).to_string(), "\"2h\"");
        assert_eq!(Duration::from_secs(120).to_string(), "\"2m\"");
        assert_eq!(Duration::default().to_string(), "\"0s\"");
    }

    #[test]
    fn integer_field_adapters() {
        #[derive(Debug, serde::Deserialize)]
        struct W {
            #[serde(deserialize_with = "crate::millis")]
            ms: u64,
            #[serde(deserialize_with = "crate::secs")]
            s: u64,
        }
        let w: W = serde_json::from_str(r#"{"ms": "2s", "s": "1m"}"#).unwrap();
        assert_eq!((w.ms, w.s), (2000, 60));
        let e = crate::from_json::<W>(br#"{"ms": "2s", "s": "2500ms"}"#).unwrap_err();
        assert_eq!(e.path(), "s");
        assert!(e.reason().contains("not a whole number of seconds"), "{e}");
    }
}
