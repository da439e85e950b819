//! Checked numbers and durations: each value is validated inside its serde visitor,
//! where serde_yaml still knows the value's own line and column.

use std::{fmt, time::Duration};

use serde::{Deserialize, Deserializer, de};

/// A selection weight, 1 to 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Weight(pub u32);

impl Default for Weight {
    fn default() -> Self {
        Self(1)
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_u32(Checked(Weight::new))
    }
}

impl Weight {
    pub fn new(v: u32) -> Result<Self, String> {
        if (1..=1000).contains(&v) { Ok(Self(v)) } else { Err(format!("weight {v} out of range: expected 1 to 1000")) }
    }
}

/// A number above zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positive(pub u32);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_u32(Checked(|v: u32| match v {
            0 => Err("expected a number above 0".to_owned()),
            v => Ok(Positive(v)),
        }))
    }
}

/// A prime number: Maglev fills a table only when its size is prime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prime(pub u32);

impl<'de> Deserialize<'de> for Prime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_u32(Checked(|v: u32| {
            if (3..=1_000_003).contains(&v) && is_prime(v) {
                Ok(Prime(v))
            } else {
                Err(format!("{v}: expected a prime between 3 and 1000003 (for example 65537)"))
            }
        }))
    }
}

/// Validates a value inside the visitor, where serde_yaml still knows the value's own
/// line and column (an error raised after deserializing points at the parent).
pub(crate) struct Checked<F>(pub(crate) F);

impl<'de, T, F: FnOnce(u32) -> Result<T, String>> de::Visitor<'de> for Checked<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        let v = u32::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))?;
        (self.0)(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format!("{v}: expected a number of 0 or more"))),
        }
    }
}

pub fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// Durations as `500ms`, `30s`, `5m`, `1h`, `30d`.
pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as 30s")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            parse_duration(s).map_err(E::custom)
        }
    }
    d.deserialize_str(V)
}

/// An optional duration: present in the file means set.
pub(crate) fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("bad duration {s:?}: expected e.g. 30s"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(24 * 3600)),
        _ => {
            return Err(format!("bad duration {s:?}: expected a unit of ms, s, m, h or d"));
        }
    };
    // Deadlines are `Instant + duration`: bounded here, they can never overflow.
    if d > MAX_DURATION {
        return Err(format!("bad duration {s:?}: at most {}h (a year)", MAX_DURATION.as_secs() / 3600));
    }
    Ok(d)
}

/// The longest duration a config may set.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
