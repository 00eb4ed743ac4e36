//! Human-friendly quantities: byte sizes (`512M`, `16G`), durations (`90s`,
//! `1h30m`) and CPU counts (`0.5`, `4`). Each parses from the forms a person
//! writes in a policy file or on the command line and prints back in a form
//! that parses again.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a quantity did not parse. The message names the expected form; the
/// caller adds which setting it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// expected a size like "512M", "16G" or a byte count, got {0:?}
    Size(String),
    /// expected a duration like "30s", "5m", "4h" or "1h30m", got {0:?}
    Duration(String),
    /// expected a number of CPUs like "0.5" or "4", got {0:?}
    Cpus(String),
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitError::Size(s) => write!(
                f,
                "expected a size like \"512M\", \"16G\" or a byte count, got {s:?}"
            ),
            UnitError::Duration(s) => write!(
                f,
                "expected a duration like \"30s\", \"5m\", \"4h\" or \"1h30m\", got {s:?}"
            ),
            UnitError::Cpus(s) => {
                write!(
                    f,
                    "expected a number of CPUs like \"0.5\" or \"4\", got {s:?}"
                )
            }
        }
    }
}

/// A size in bytes. Suffixes are binary (K = 1024), as in `docker --memory`;
/// `K`, `KB`, `KiB` (any case) all mean the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const KIB: u64 = 1024;
    pub const MIB: u64 = 1024 * 1024;
    pub const GIB: u64 = 1024 * 1024 * 1024;

    pub const fn mib(n: u64) -> Self {
        ByteSize(n * Self::MIB)
    }
    pub const fn gib(n: u64) -> Self {
        ByteSize(n * Self::GIB)
    }
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UnitError::Size(s.to_string());
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(err());
        }
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => Self::KIB,
            "m" | "mb" | "mib" => Self::MIB,
            "g" | "gb" | "gib" => Self::GIB,
            "t" | "tb" | "tib" => Self::GIB * 1024,
            _ => return Err(err()),
        };
        if num.contains('.') {
            let v: f64 = num.parse().map_err(|_| err())?;
            let bytes = v * mult as f64;
            if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
                return Err(err());
            }
            Ok(ByteSize(bytes.round() as u64))
        } else {
            let v: u64 = num.parse().map_err(|_| err())?;
            v.checked_mul(mult).map(ByteSize).ok_or_else(err)
        }
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the value exactly, so that
    /// printing and parsing round-trip.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, size) in [
            ("T", Self::GIB * 1024),
            ("G", Self::GIB),
            ("M", Self::MIB),
            ("K", Self::KIB),
        ] {
            if b >= size && b.is_multiple_of(size) {
                return write!(f, "{}{unit}", b / size);
            }
        }
        write!(f, "{b}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"512M\", \"16G\" or a byte count")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(UnitError::Size(v.to_string())))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A wall-clock duration, written as a sum of parts with units `ms`, `s`,
/// `m`, `h`, `d` (`1h30m`), or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span(pub Duration);

impl Span {
    pub const fn secs(n: u64) -> Self {
        Span(Duration::from_secs(n))
    }
    pub const fn duration(self) -> Duration {
        self.0
    }
}

impl FromStr for Span {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UnitError::Duration(s.to_string());
        let t = s.trim();
        if t.is_empty() {
            return Err(err());
        }
        if let Ok(secs) = t.parse::<f64>() {
            return secs_to_span(secs).ok_or_else(err);
        }
        let mut total = 0f64;
        let mut rest = t;
        while !rest.is_empty() {
            let n_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(err)?;
            if n_end == 0 {
                return Err(err());
            }
            let n: f64 = rest[..n_end].parse().map_err(|_| err())?;
            rest = &rest[n_end..];
            let u_end = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let scale = match &rest[..u_end] {
                "ms" => 0.001,
                "s" | "sec" => 1.0,
                "m" | "min" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                _ => return Err(err()),
            };
            total += n * scale;
            rest = &rest[u_end..];
        }
        secs_to_span(total).ok_or_else(err)
    }
}

fn secs_to_span(secs: f64) -> Option<Span> {
    if secs.is_finite() && (0.0..1e12).contains(&secs) {
        Some(Span(Duration::from_secs_f64(secs)))
    } else {
        None
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let mut s = (ms / 1000) as u64;
        if s == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("h", 3600), ("m", 60), ("s", 1)] {
            if s >= size {
                write!(f, "{}{unit}", s / size)?;
                s %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Span;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like \"30s\", \"5m\", \"4h\" or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Span, E> {
                Ok(Span::secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Span, E> {
                u64::try_from(v)
                    .map(Span::secs)
                    .map_err(|_| E::custom(UnitError::Duration(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Span, E> {
                secs_to_span(v).ok_or_else(|| E::custom(UnitError::Duration(v.to_string())))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Span, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A CPU allowance in cores; fractional values are enforced as a CFS quota.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Cpus(pub f64);

impl FromStr for Cpus {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| UnitError::Cpus(s.to_string()))?;
        if v.is_finite() {
            Ok(Cpus(v))
        } else {
            Err(UnitError::Cpus(s.to_string()))
        }
    }
}

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Cpus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Cpus;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of CPUs like 0.5 or 4")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cpus, E> {
                Ok(Cpus(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cpus, E> {
                Ok(Cpus(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cpus, E> {
                Ok(Cpus(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Cpus, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_in_binary_units() {
        assert_eq!("512M".parse::<ByteSize>().unwrap(), ByteSize::mib(512));
        assert_eq!("16G".parse::<ByteSize>().unwrap(), ByteSize::gib(16));
        assert_eq!("16GiB".parse::<ByteSize>().unwrap(), ByteSize::gib(16));
        assert_eq!("1k".parse::<ByteSize>().unwrap(), ByteSize(1024));
        assert_eq!("4096".parse::<ByteSize>().unwrap(), ByteSize(4096));
        assert_eq!(
            "1.5G".parse::<ByteSize>().unwrap(),
            ByteSize(3 * ByteSize::GIB / 2)
        );
    }

    #[test]
    fn rejects_malformed_sizes() {
        for bad in ["", "G", "12Q", "-1M", "1..2G", "99999999999999T"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn sizes_round_trip_through_display() {
        for s in ["1G", "512M", "3K", "1000", "2T"] {
            assert_eq!(s.parse::<ByteSize>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn parses_durations() {
        assert_eq!("30s".parse::<Span>().unwrap(), Span::secs(30));
        assert_eq!("1h30m".parse::<Span>().unwrap(), Span::secs(5400));
        assert_eq!("4h".parse::<Span>().unwrap(), Span::secs(4 * 3600));
        assert_eq!("90".parse::<Span>().unwrap(), Span::secs(90));
        assert_eq!(
            "250ms".parse::<Span>().unwrap(),
            Span(Duration::from_millis(250))
        );
        assert_eq!(
            "0.5".parse::<Span>().unwrap(),
            Span(Duration::from_millis(500))
        );
    }

    #[test]
    fn rejects_malformed_durations() {
        for bad in ["", "h", "5x", "1h30", "-3s", "s5"] {
            assert!(bad.parse::<Span>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn durations_round_trip_through_display() {
        for s in ["4h", "1h30m", "45s", "250ms", "1h0m5s"] {
            let span: Span = s.parse().unwrap();
            assert_eq!(span.to_string().parse::<Span>().unwrap(), span);
        }
    }

    #[test]
    fn parses_cpus() {
        assert_eq!("0.5".parse::<Cpus>().unwrap(), Cpus(0.5));
        assert!("many".parse::<Cpus>().is_err());
        assert!("inf".parse::<Cpus>().is_err());
    }
}
