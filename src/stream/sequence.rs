//! Sequence numbers: positions of records within a shard.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Position of a record within its shard: a non-negative decimal integer of any length, compared
/// numerically.
///
/// Kinesis sequence numbers are decimal strings of up to 129 digits (56 in practice, about 186
/// bits), so no machine integer holds them; the embedded log counts 1, 2, 3, ... and converts with
/// [`SequenceNumber::from`]`(u64)` and [`SequenceNumber::as_u64`]. The text is kept canonical (no
/// leading zeros), which makes numeric order "shorter first, then byte order".
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SequenceNumber(String);

/// Longer than any Kinesis sequence number (at most 129 digits), so it orders after all of them.
const SHARD_END_TEXT: &str = "shard-end";
const SHARD_END_RANK: usize = 1_000;

impl SequenceNumber {
    /// The checkpoint a sink saves when it has processed a closed shard to its end. A reader of a
    /// child shard (after a reshard) starts only once every parent's checkpoint is this.
    pub fn shard_end() -> Self {
        SequenceNumber(SHARD_END_TEXT.to_owned())
    }

    pub fn is_shard_end(&self) -> bool {
        self.0 == SHARD_END_TEXT
    }

    /// The value as a `u64`, when it is one (always, for the embedded log).
    pub fn as_u64(&self) -> Option<u64> {
        self.0.parse().ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number right before this one, for "read from this record on" as "after its predecessor";
    /// `None` for 0 and for the shard end.
    pub fn predecessor(&self) -> Option<SequenceNumber> {
        if self.is_shard_end() || self.0 == "0" {
            return None;
        }
        let mut digits = self.0.clone().into_bytes();
        for d in digits.iter_mut().rev() {
            if *d == b'0' {
                *d = b'9';
            } else {
                *d -= 1;
                break;
            }
        }
        let text = String::from_utf8(digits).expect("digits are ASCII");
        let trimmed = text.trim_start_matches('0');
        Some(SequenceNumber(if trimmed.is_empty() {
            "0".to_owned()
        } else {
            trimmed.to_owned()
        }))
    }

    /// How many numbers lie between `earlier` and this one, when both fit a `u64` (dense numbering
    /// makes that a record count).
    pub fn distance_from(&self, earlier: &SequenceNumber) -> Option<u64> {
        Some(self.as_u64()?.saturating_sub(earlier.as_u64()?))
    }

    fn rank(&self) -> usize {
        if self.is_shard_end() {
            SHARD_END_RANK
        } else {
            self.0.len()
        }
    }
}

impl From<u64> for SequenceNumber {
    fn from(v: u64) -> Self {
        SequenceNumber(v.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a sequence number (expected a non-negative decimal integer)")]
pub struct BadSequenceNumber(String);

impl FromStr for SequenceNumber {
    type Err = BadSequenceNumber;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == SHARD_END_TEXT {
            return Ok(Self::shard_end());
        }
        if s.is_empty() || s.len() > 200 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadSequenceNumber(s.chars().take(40).collect()));
        }
        let trimmed = s.trim_start_matches('0');
        Ok(SequenceNumber(if trimmed.is_empty() {
            "0".to_owned()
        } else {
            trimmed.to_owned()
        }))
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank()
            .cmp(&other.rank())
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// As a JSON string: JSON numbers do not carry 56 digits exactly.
impl Serialize for SequenceNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SequenceNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sn(s: &str) -> SequenceNumber {
        s.parse().unwrap()
    }

    #[test]
    fn orders_numerically_beyond_128_bits() {
        let kinesis = sn("49590338271490256608559692538361571095921575989136588898");
        let next = sn("49590338271490256608559692540000000000000000000000000000");
        assert!(kinesis < next);
        assert!(sn("9") < sn("10"));
        assert!(sn("007") == sn("7"));
        assert!(next < SequenceNumber::shard_end());
        assert!(sn(&"9".repeat(129)) < SequenceNumber::shard_end());
    }

    #[test]
    fn predecessor_borrows() {
        assert_eq!(sn("100").predecessor(), Some(sn("99")));
        assert_eq!(sn("1").predecessor(), Some(sn("0")));
        assert_eq!(sn("0").predecessor(), None);
        assert_eq!(SequenceNumber::shard_end().predecessor(), None);
        let big = sn("49590338271490256608559692538361571095921575989136588898");
        assert_eq!(
            big.predecessor(),
            Some(sn(
                "49590338271490256608559692538361571095921575989136588897"
            ))
        );
    }

    #[test]
    fn u64_round_trip_and_distance() {
        let a = SequenceNumber::from(41);
        assert_eq!(a.as_u64(), Some(41));
        assert_eq!(SequenceNumber::from(50).distance_from(&a), Some(9));
        assert_eq!(sn(&"9".repeat(56)).as_u64(), None);
    }

    #[test]
    fn rejects_garbage_and_round_trips_json() {
        assert!("".parse::<SequenceNumber>().is_err());
        assert!("-1".parse::<SequenceNumber>().is_err());
        assert!("12a".parse::<SequenceNumber>().is_err());
        let s = SequenceNumber::shard_end();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SequenceNumber>(&j).unwrap(), s);
        let j = serde_json::to_string(&sn("123")).unwrap();
        assert_eq!(j, "\"123\"");
    }
}
