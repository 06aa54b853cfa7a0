//! Where things are in the store: a stream's version and an event's global position.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How many events a stream holds; 0 for a stream that does not exist yet. After an append of
/// `n` events at version `v`, the stream is at `v + n`. In JSON, a number.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct StreamVersion(u64);

impl StreamVersion {
    pub const EMPTY: Self = Self(0);

    pub fn new(version: u64) -> Self {
        Self(version)
    }

    pub fn value(self) -> u64 {
        self.0
    }

    /// As PostgreSQL stores it.
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0).expect("a stream never holds 2^63 events")
    }

    pub(crate) fn from_i64(version: i64) -> Self {
        Self(u64::try_from(version).expect("versions are positive (check constraint)"))
    }
}

impl fmt::Display for StreamVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An event's place in the global insertion order. Clients see it as an opaque token (the
/// `position` of a command response); its text form is its decimal value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(i64);

impl Position {
    pub fn new(position: i64) -> Self {
        Self(position)
    }

    pub fn value(self) -> i64 {
        self.0
    }

    /// Reads a token as given by a client; `None` if it is not one HAP issued.
    pub fn parse(token: &str) -> Option<Self> {
        token.parse::<i64>().ok().filter(|p| *p > 0).map(Self)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// In JSON, the token as clients see it: its text form (the store fills remembered outcomes'
/// positions in that form too).
impl Serialize for Position {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let token = String::deserialize(deserializer)?;
        Self::parse(&token)
            .ok_or_else(|| serde::de::Error::custom(format!("{token:?} is not a position")))
    }
}

/// How far a reader of the global order has come: the (transaction id, position) of the last
/// event it took. Events are read in that order, which is commit-safe (see `read::read_all`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GlobalCheckpoint {
    pub transaction_id: i64,
    pub position: i64,
}

impl GlobalCheckpoint {
    /// Before the first event.
    pub const START: Self = Self {
        transaction_id: 0,
        position: 0,
    };
}
