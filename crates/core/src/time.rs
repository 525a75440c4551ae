//! When a record was made: a point in time with microsecond precision, written as Kubernetes
//! writes `metav1.MicroTime` (RFC 3339, UTC, six fractional digits:
//! `2024-06-15T07:00:00.123456Z`).
//!
//! Why microseconds and not whole seconds: CNI GC keeps "a binding made in the last second", and
//! the controller keeps records newer than its pod list. With whole-second timestamps such a guard
//! is off by up to a second depending on where in the second the record was made; with
//! microseconds it is the stated guard.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time, microseconds since the Unix epoch (UTC), within RFC 3339's years 0001–9999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    micros: i64,
}

/// Microseconds of 0001-01-01T00:00:00Z, the first time RFC 3339 (and Kubernetes' `MicroTime`)
/// can write, and of 9999-12-30T22:00:00.000000Z, the last one the time library handles.
const MIN_MICROS: i64 = -62_135_596_800_000_000;
const MAX_MICROS: i64 = 253_402_207_200_000_000;

/// Why a timestamp string is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not an RFC 3339 time such as \"2024-06-15T07:00:00.123456Z\": {reason}")]
pub struct TimestampError {
    /// The string given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp { micros: 0 };

    /// A timestamp `micros` microseconds after the epoch (before it when negative), clamped to
    /// the years RFC 3339 can write.
    pub fn from_micros(micros: i64) -> Self {
        Timestamp {
            micros: micros.clamp(MIN_MICROS, MAX_MICROS),
        }
    }

    /// Microseconds since the epoch.
    pub fn as_micros(self) -> i64 {
        self.micros
    }

    /// A timestamp from a system time (sub-microsecond parts are dropped). Callers that read the
    /// clock pass `SystemTime::now()`; this crate does no I/O and reads no clock itself.
    pub fn from_system(t: SystemTime) -> Self {
        let micros = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
            Err(e) => i64::try_from(e.duration().as_micros())
                .map(|m| -m)
                .unwrap_or(i64::MIN),
        };
        Self::from_micros(micros)
    }

    /// This time plus `d` (clamped).
    pub fn saturating_add(self, d: Duration) -> Self {
        let d = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        Self::from_micros(self.micros.saturating_add(d))
    }

    /// This time minus `d` (clamped).
    pub fn saturating_sub(self, d: Duration) -> Self {
        let d = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        Self::from_micros(self.micros.saturating_sub(d))
    }

    /// How long after `earlier` this is; zero when it is not after it.
    pub fn since(self, earlier: Timestamp) -> Duration {
        let d = self.micros.saturating_sub(earlier.micros);
        Duration::from_micros(u64::try_from(d).unwrap_or(0))
    }

    fn jiff(self) -> jiff::Timestamp {
        // The range is clamped on construction to what jiff represents (it reaches further).
        jiff::Timestamp::from_microsecond(self.micros).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with exactly six fractional digits, as `metav1.MicroTime`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let printer = jiff::fmt::temporal::DateTimePrinter::new().precision(Some(6));
        f.write_str(&printer.timestamp_to_string(&self.jiff()))
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    /// An RFC 3339 time with an offset (`Z` or `±hh:mm`) and up to nine fractional digits;
    /// digits beyond microseconds are dropped.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| TimestampError {
            value: s.to_string(),
            reason,
        };
        // RFC 3339 only: the date, 'T', the time and an offset. jiff's parser also takes
        // ISO 8601 variants and time zone annotations, which Kubernetes would refuse.
        let b = s.as_bytes();
        let shape = b.len() >= 20
            && b[4] == b'-'
            && b[7] == b'-'
            && matches!(b[10], b'T' | b't')
            && b[13] == b':'
            && b[16] == b':'
            && !s.contains('[');
        if !shape {
            return Err(err("expected YYYY-MM-DDThh:mm:ss[.ffffff](Z|±hh:mm)".into()));
        }
        let t = jiff::fmt::temporal::DateTimeParser::new()
            .parse_timestamp(s)
            .map_err(|e| err(e.to_string()))?;
        let micros = t.as_microsecond();
        if !(MIN_MICROS..=MAX_MICROS).contains(&micros) {
            return Err(err(
                "it must lie between 0001-01-01 and 9999-12-30T22:00:00Z".into(),
            ));
        }
        Ok(Timestamp { micros })
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// In CRDs a timestamp is what Kubernetes calls `MicroTime`: a `date-time` string, which the API
/// server checks.
#[cfg(feature = "schema")]
impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MicroTime".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339 time in UTC with microseconds, as metav1.MicroTime"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_as_micro_time_and_read_back() {
        let t = Timestamp::from_micros(1_718_434_800_123_456);
        assert_eq!(t.to_string(), "2024-06-15T07:00:00.123456Z");
        assert_eq!("2024-06-15T07:00:00.123456Z".parse::<Timestamp>(), Ok(t));
        assert_eq!(Timestamp::EPOCH.to_string(), "1970-01-01T00:00:00.000000Z");
        // Offsets, fewer or more digits (nanoseconds are dropped) are RFC 3339 too.
        assert_eq!(
            "2024-06-15T09:00:00.123456789+02:00".parse::<Timestamp>(),
            Ok(t)
        );
        assert_eq!(
            "2024-06-15T07:00:00Z"
                .parse::<Timestamp>()
                .map(|t| t.as_micros()),
            Ok(1_718_434_800_000_000)
        );
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2024-06-15T07:00:00.123456Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }

    #[test]
    fn refuses_what_is_not_rfc_3339() {
        for bad in [
            "",
            "1",
            "2024-06-15",
            "2024-06-15T07:00:00",          // no offset
            "2024-06-15 07:00:00Z",         // space instead of T
            "2024-13-15T07:00:00Z",         // month 13
            "2024-06-15T07:00:00Z[Europe]", // annotation
            "yesterday at noon, roughly",
        ] {
            let e = bad.parse::<Timestamp>().unwrap_err();
            assert!(e.to_string().contains("RFC 3339"), "{bad:?}: {e}");
        }
        assert!(serde_json::from_str::<Timestamp>("1718434800").is_err());
    }

    proptest::proptest! {
        /// Every timestamp is written in one fixed width and reads back as itself, and the
        /// written form sorts as the times do (so `kubectl` sorts records by `since` correctly).
        #[test]
        fn written_form_round_trips_and_sorts(a in MIN_MICROS..=MAX_MICROS, b in MIN_MICROS..=MAX_MICROS) {
            let (ta, tb) = (Timestamp::from_micros(a), Timestamp::from_micros(b));
            let (sa, sb) = (ta.to_string(), tb.to_string());
            proptest::prop_assert_eq!(sa.len(), 27, "{}", sa);
            proptest::prop_assert_eq!(sa.parse::<Timestamp>(), Ok(ta));
            proptest::prop_assert_eq!(sa.cmp(&sb), ta.cmp(&tb));
        }
    }

    #[test]
    fn arithmetic_is_exact_to_the_microsecond() {
        let t = Timestamp::from_micros(10_000_000);
        let later = t.saturating_add(Duration::from_micros(1_500_000));
        assert_eq!(later.as_micros(), 11_500_000);
        assert_eq!(later.since(t), Duration::from_micros(1_500_000));
        assert_eq!(t.since(later), Duration::ZERO);
        assert_eq!(
            later.saturating_sub(Duration::from_secs(1)).as_micros(),
            10_500_000
        );
        let sys = UNIX_EPOCH + Duration::from_nanos(1_500_000_999);
        assert_eq!(Timestamp::from_system(sys).as_micros(), 1_500_000);
        assert_eq!(
            Timestamp::from_micros(i64::MAX).to_string(),
            "9999-12-30T22:00:00.000000Z"
        );
    }
}
