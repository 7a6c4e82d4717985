//! Quantities with explicit units: bytes, CPU millicores and durations.
//!
//! The book mixed bytes, KiB and "MiB" in one field; here every quantity has one type and its
//! text form always carries its unit. Input accepts what people write ("256MiB", "1GiB",
//! "500m", 0.5, "1m30s"); output is canonical so JSON stays stable.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::CoreError;

/// A size in bytes. JSON/TOML: an integer (bytes) or a string with a unit (`"256MiB"`,
/// `"1.5GiB"`, `"512MB"`, `"100KiB"`, `"42B"`); written back as the largest exact binary unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub u64);

/// CPU capacity in thousandths of a core. JSON/TOML: a number of cores (`0.5`, `2`) or a string
/// (`"500m"`, `"1.5"`); written back as a number of cores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millicores(pub u64);

const UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("kB", 1_000),
    ("B", 1),
];

impl Bytes {
    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        Self(n << 20)
    }

    /// `n` gibibytes.
    pub const fn gib(n: u64) -> Self {
        Self(n << 30)
    }

    /// The value in bytes.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Adds without overflowing (quantities add up across many tasks).
    pub const fn saturating_add(self, other: Self) -> Self {
        Self(self.0.saturating_add(other.0))
    }

    /// Subtracts, stopping at zero.
    pub const fn saturating_sub(self, other: Self) -> Self {
        Self(self.0.saturating_sub(other.0))
    }

    /// The size for people, rounded in binary units: whole units below a GiB (`512B`, `100KiB`,
    /// `64MiB`), one decimal from a GiB up (`1.0GiB`, `23.5GiB`, `2.0TiB`). [`Display`] is
    /// the exact form that parses back.
    ///
    /// [`Display`]: fmt::Display
    pub fn human(self) -> String {
        const UNITS: [(&str, u64); 4] =
            [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (unit, size) in UNITS {
            if self.0 >= size {
                // For people: the rounding of a u64 to f64 does not show at one decimal.
                let value = self.0 as f64 / size as f64;
                return if size >= 1 << 30 {
                    format!("{value:.1}{unit}")
                } else {
                    format!("{}{unit}", value.round())
                };
            }
        }
        format!("{}B", self.0)
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Binary units only, and only when exact, so Display/FromStr round-trip.
        for (unit, size) in &UNITS[..4] {
            if self.0 >= *size && self.0.is_multiple_of(*size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl FromStr for Bytes {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CoreError::InvalidQuantity {
            input: s.to_owned(),
            expected: "a size such as 256MiB, 1GiB, 500MB or a number of bytes",
        };
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let unit = unit.trim();
        let multiplier = if unit.is_empty() {
            1
        } else {
            UNITS.iter().find(|(u, _)| *u == unit).map(|(_, m)| *m).ok_or_else(bad)?
        };
        scale(number, multiplier).map(Bytes).ok_or_else(bad)
    }
}

impl Millicores {
    /// `n` whole cores.
    pub const fn cores(n: u64) -> Self {
        Self(n * 1000)
    }

    /// The value in millicores.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The value in cores, for display and for Docker's `NanoCpus`.
    pub fn as_cores(self) -> f64 {
        // Millicore counts are far below 2^52, so the conversion is exact.
        self.0 as f64 / 1000.0
    }

    /// Adds without overflowing.
    pub const fn saturating_add(self, other: Self) -> Self {
        Self(self.0.saturating_add(other.0))
    }

    /// Subtracts, stopping at zero.
    pub const fn saturating_sub(self, other: Self) -> Self {
        Self(self.0.saturating_sub(other.0))
    }
}

impl fmt::Display for Millicores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

impl FromStr for Millicores {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CoreError::InvalidQuantity {
            input: s.to_owned(),
            expected: "CPU as cores (0.5, 2) or millicores (500m)",
        };
        let t = s.trim();
        match t.strip_suffix('m') {
            Some(millis) => millis.trim().parse::<u64>().map(Millicores).map_err(|_| bad()),
            None => scale(t, 1000).map(Millicores).ok_or_else(bad),
        }
    }
}

/// Parses a non-negative decimal `number` and multiplies it by `multiplier`, rounding to the
/// nearest integer. Plain integer arithmetic, so "0.1" cores is exactly 100 millicores.
fn scale(number: &str, multiplier: u64) -> Option<u64> {
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    if !whole.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut value = whole.checked_mul(multiplier)?;
    let mut denominator: u64 = 1;
    let mut numerator: u64 = 0;
    for digit in frac.chars().take(12) {
        denominator *= 10;
        numerator = numerator * 10 + u64::from(digit.to_digit(10)?);
    }
    if numerator > 0 {
        let extra = (u128::from(numerator) * u128::from(multiplier) + u128::from(denominator / 2))
            / u128::from(denominator);
        value = value.checked_add(u64::try_from(extra).ok()?)?;
    }
    Some(value)
}

/// Written as a size with a unit (`"256MiB"`); a number of bytes is accepted too.
impl schemars::JsonSchema for Bytes {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Bytes".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A size: a string with a unit (\"256MiB\", \"1.5GB\") or a number of bytes.",
            "oneOf": [
                {"type": "string", "examples": ["256MiB", "1GiB", "0B"]},
                {"type": "integer", "minimum": 0},
            ],
        })
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"256MiB\" or a non-negative number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bytes, E> {
                u64::try_from(v)
                    .map(Bytes)
                    .map_err(|_| E::custom(format!("must not be negative (got {v})")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Bytes, E> {
                Err(E::custom(format!(
                    "{v} is not a whole number of bytes; write a unit, e.g. \"1.5GiB\""
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Written as a number of cores (`0.5`, `2`); `"500m"` is accepted too.
impl schemars::JsonSchema for Millicores {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cpu".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "CPU: a number of cores (0.5, 2) or millicores as a string (\"500m\").",
            "oneOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?m?\\s*$"},
            ],
        })
    }
}

impl Serialize for Millicores {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(1000) {
            serializer.serialize_u64(self.0 / 1000)
        } else {
            serializer.serialize_f64(self.as_cores())
        }
    }
}

impl<'de> Deserialize<'de> for Millicores {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Millicores;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("CPU as a number of cores (0.5) or millicores (\"500m\")")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millicores, E> {
                v.checked_mul(1000).map(Millicores).ok_or_else(|| E::custom("too large"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millicores, E> {
                let v = u64::try_from(v)
                    .map_err(|_| E::custom(format!("must not be negative (got {v})")))?;
                self.visit_u64(v)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Millicores, E> {
                if !v.is_finite() || v < 0.0 {
                    return Err(E::custom(format!("must not be negative (got {v})")));
                }
                // Go through the decimal text so 0.1 means exactly 100m.
                format!("{v}").parse().map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Millicores, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Formats a duration the way it is parsed, to the millisecond: `"1h30m"`, `"10s"`,
/// `"1m30s250ms"`, `"0s"` (jiff's friendly format, compact).
pub fn format_duration(d: Duration) -> String {
    use jiff::fmt::friendly::{Designator, Spacing, SpanPrinter};
    static PRINTER: SpanPrinter =
        SpanPrinter::new().designator(Designator::Compact).spacing(Spacing::None);
    // Durations count in whole milliseconds; anything finer is not shown.
    let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let whole = jiff::SignedDuration::from_millis(i64::try_from(millis).unwrap_or(i64::MAX));
    PRINTER.duration_to_string(&whole)
}

/// Parses a duration such as `"10s"`, `"250ms"`, `"1m30s"`, `"1.5s"`, `"2h"`, `"90d"` or `"1 hour"`
/// (jiff's friendly format, or ISO 8601 `PT10S`), rounded to the millisecond. A bare number is
/// refused ("10" could mean anything), and so is a negative duration.
pub fn parse_duration(s: &str) -> Result<Duration, CoreError> {
    let bad = || CoreError::InvalidQuantity {
        input: s.to_owned(),
        expected: "a duration such as 500ms, 10s, 1m30s or 2h",
    };
    let signed: jiff::SignedDuration = match s.trim().parse() {
        Ok(d) => d,
        // Days (`90d`, for a token's life) are not a fixed length to jiff's duration type:
        // read them as 24 hours, as every other tool does.
        Err(_) => s
            .trim()
            .parse::<jiff::Span>()
            .and_then(|span| span.to_duration(jiff::SpanRelativeTo::days_are_24_hours()))
            .map_err(|_| bad())?,
    };
    let d = Duration::try_from(signed).map_err(|_| bad())?;
    // Round to the nearest millisecond, as specs count in them.
    let millis = (d.as_nanos() + 500_000) / 1_000_000;
    Ok(Duration::from_millis(u64::try_from(millis).map_err(|_| bad())?))
}

/// Serde adapter for `std::time::Duration` fields written as `"10s"`-style strings.
pub mod duration_serde {
    use super::*;

    /// Writes the duration as a string with units.
    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(*d))
    }

    /// Reads a string with units (a bare number is rejected: "10" could mean anything).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"10s\" or \"500ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse_duration(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "a bare number ({v}) is ambiguous; write a unit, e.g. \"{v}s\""
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "a bare number ({v}) is ambiguous; write a unit, e.g. \"{v}s\""
                )))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Serde adapter for `Option<Duration>` fields: a duration string, or absent / `null`.
pub mod option_duration_serde {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(transparent)]
    struct Written(#[serde(with = "duration_serde")] Duration);

    /// Writes the duration as a string with units, or `null`.
    pub fn serialize<S: Serializer>(
        d: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&d.map(Written), serializer)
    }

    /// Reads a string with units, or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let written: Option<Written> = serde::Deserialize::deserialize(deserializer)?;
        Ok(written.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_parse_every_unit_and_print_canonically() {
        let cases = [
            ("256MiB", 256 << 20, "256MiB"),
            ("1GiB", 1 << 30, "1GiB"),
            ("1.5GiB", 3 << 29, "1536MiB"),
            ("500MB", 500_000_000, "500000000B"),
            ("100KiB", 100 << 10, "100KiB"),
            ("42", 42, "42B"),
            ("42B", 42, "42B"),
            (" 2 TiB ", 2 << 40, "2TiB"),
            ("0", 0, "0B"),
        ];
        for (input, bytes, shown) in cases {
            let parsed: Bytes = input.parse().unwrap();
            assert_eq!(parsed, Bytes(bytes), "{input}");
            assert_eq!(parsed.to_string(), shown, "{input}");
            assert_eq!(shown.parse::<Bytes>().unwrap(), parsed, "round trip of {input}");
        }
        for bad in ["", "MiB", "12XB", "-1", "1.2.3GiB", "12 MiB x"] {
            assert!(bad.parse::<Bytes>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn bytes_for_people_round_to_a_unit() {
        let cases = [
            (512, "512B"),
            (100 << 10, "100KiB"),
            (64 << 20, "64MiB"),
            ((3 << 19) + 1, "2MiB"),
            (1 << 30, "1.0GiB"),
            (3 << 29, "1.5GiB"),
            (2 << 40, "2.0TiB"),
        ];
        for (bytes, shown) in cases {
            assert_eq!(Bytes(bytes).human(), shown, "{bytes}");
        }
    }

    #[test]
    fn bytes_json_accepts_numbers_and_strings_and_rejects_negatives() {
        assert_eq!(serde_json::from_str::<Bytes>("1024").unwrap(), Bytes(1024));
        assert_eq!(serde_json::from_str::<Bytes>("\"64MiB\"").unwrap(), Bytes::mib(64));
        let err = serde_json::from_str::<Bytes>("-5").unwrap_err().to_string();
        assert!(err.contains("must not be negative"), "{err}");
        assert_eq!(serde_json::to_string(&Bytes::mib(64)).unwrap(), "\"64MiB\"");
    }

    #[test]
    fn millicores_parse_cores_and_millis() {
        assert_eq!("500m".parse::<Millicores>().unwrap(), Millicores(500));
        assert_eq!("0.1".parse::<Millicores>().unwrap(), Millicores(100));
        assert_eq!("2".parse::<Millicores>().unwrap(), Millicores(2000));
        assert_eq!(serde_json::from_str::<Millicores>("0.25").unwrap(), Millicores(250));
        assert_eq!(serde_json::from_str::<Millicores>("3").unwrap(), Millicores(3000));
        assert!(serde_json::from_str::<Millicores>("-1").is_err());
        assert!(serde_json::from_str::<Millicores>("-0.5").is_err());
        assert_eq!(serde_json::to_string(&Millicores(1500)).unwrap(), "1.5");
        assert_eq!(serde_json::to_string(&Millicores(2000)).unwrap(), "2");
        assert_eq!(Millicores(250).to_string(), "250m");
    }

    #[test]
    fn durations_round_trip() {
        let cases = [
            ("10s", 10_000),
            ("250ms", 250),
            ("1m30s", 90_000),
            ("1.5s", 1_500),
            ("2h", 7_200_000),
            ("1h 5m", 3_900_000),
            ("90d", 90 * 86_400_000),
            ("1d 12h", 129_600_000),
        ];
        for (input, ms) in cases {
            let d = parse_duration(input).unwrap();
            assert_eq!(d, Duration::from_millis(ms), "{input}");
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert_eq!(format_duration(Duration::from_millis(90_250)), "1m30s250ms");
        for bad in ["", "10", "10x", "s", "-1s", "-1d", "1mo"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!(parse_duration("1 hour").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1.0004s").unwrap(), Duration::from_secs(1), "to the ms");
        assert_eq!(format_duration(Duration::from_micros(1_500)), "1ms");
    }
}
