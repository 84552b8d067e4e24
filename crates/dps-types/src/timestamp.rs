//! UTC timestamps in the DPS wire form: RFC 3339 with seven fractional digits and `Z`
//! (`2023-05-19T23:10:47.3759621Z`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::TypeError;

/// A point in time, always held in UTC and to the 100 ns its wire form shows, so that a value
/// equals itself read back from JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

/// Nanoseconds per digit of the seventh (last) fractional digit of the wire form.
const WIRE_RESOLUTION_NANOS: u32 = 100;

impl Timestamp {
    /// `t`, already in UTC, cut to the wire resolution.
    fn utc(t: OffsetDateTime) -> Self {
        let nanos = t.nanosecond() / WIRE_RESOLUTION_NANOS * WIRE_RESOLUTION_NANOS;
        // `replace_nanosecond` fails only above 999_999_999, which `nanos` never is.
        Self(t.replace_nanosecond(nanos).unwrap_or(t))
    }

    /// The current time.
    pub fn now() -> Self {
        Self::utc(OffsetDateTime::now_utc())
    }

    /// From whole seconds since the Unix epoch.
    pub fn from_unix(secs: i64) -> Result<Self, TypeError> {
        OffsetDateTime::from_unix_timestamp(secs)
            .map(Self::utc)
            .map_err(|_| TypeError::Timestamp(secs.to_string()))
    }

    /// Whole seconds since the Unix epoch.
    pub fn unix(&self) -> i64 {
        self.0.unix_timestamp()
    }

    /// Nanoseconds since the Unix epoch (used to order and version records).
    pub fn unix_nanos(&self) -> i128 {
        self.0.unix_timestamp_nanos()
    }

    /// Parses any RFC 3339 time and converts it to UTC; a time whose UTC form falls outside
    /// the years 0 to 9999 is refused.
    pub fn parse(text: &str) -> Result<Self, TypeError> {
        OffsetDateTime::parse(text, &Rfc3339)
            .ok()
            .and_then(|t| t.checked_to_offset(time::UtcOffset::UTC))
            .map(Self::utc)
            .ok_or_else(|| TypeError::Timestamp(text.to_owned()))
    }

    /// The underlying `time` value.
    pub fn as_offset_date_time(&self) -> OffsetDateTime {
        self.0
    }
}

impl From<OffsetDateTime> for Timestamp {
    /// `t` in UTC; a `t` whose UTC form would leave the supported years keeps its offset's
    /// wall-clock time instead of panicking (certificate times are UTC already).
    fn from(t: OffsetDateTime) -> Self {
        Self::utc(
            t.checked_to_offset(time::UtcOffset::UTC)
                .unwrap_or_else(|| t.replace_offset(time::UtcOffset::UTC)),
        )
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond() / 100
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_seven_fraction_digits() {
        let t = Timestamp::parse("2023-05-19T23:10:47.3759621Z").unwrap();
        assert_eq!(t.to_string(), "2023-05-19T23:10:47.3759621Z");
        let t = Timestamp::parse("2023-05-19T23:10:47+02:00").unwrap();
        assert_eq!(t.to_string(), "2023-05-19T21:10:47.0000000Z");
    }

    #[test]
    fn a_time_past_year_9999_in_utc_is_refused() {
        // Converting to UTC must not panic when it crosses the last representable year.
        assert!(Timestamp::parse("9999-12-31T23:59:59-01:00").is_err());
        assert!(serde_json::from_str::<Timestamp>(r#""9999-12-31T23:30:00-00:31""#).is_err());
    }

    #[test]
    fn holds_only_what_its_wire_form_shows() {
        // Nanoseconds beyond the seven wire digits made a value differ from itself after a
        // JSON round trip.
        for text in ["2023-05-19T23:10:47.123456789Z", "2016-12-31T23:59:60Z"] {
            let t = Timestamp::parse(text).unwrap();
            assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t, "{text}");
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(Timestamp::parse("yesterday").is_err());
    }
}
