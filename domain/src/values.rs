//! Value types that can only hold valid values: each is built by `parse`, which says which
//! rule the input broke, so a command made of them is valid by construction.
//!
//! None implements `Deserialize`: deserialising would build one without `parse` (and the rules
//! of birth dates and start times need today's date, which serde cannot be given). Requests are
//! read into plain types and parsed; events carry plain types (see [`crate::event`]).

use chrono::{DateTime, NaiveDate, Utc};

/// Why a value was refused; `field` is filled in by the caller, which knows the field's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn text(input: &str, min: usize, max: usize) -> Result<String, Invalid> {
    let trimmed = input.trim();
    let length = trimmed.chars().count();
    if length < min {
        return Err(Invalid(if min == 1 {
            "must not be empty".into()
        } else {
            format!("must have at least {min} characters")
        }));
    }
    if length > max {
        return Err(Invalid(format!("must have at most {max} characters")));
    }
    if trimmed
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Invalid("must not contain control characters".into()));
    }
    Ok(trimmed.to_owned())
}

macro_rules! text_type {
    ($(#[$doc:meta])* $name:ident, $min:expr, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = $max;

            /// Trims surrounding white space, then checks the length.
            pub fn parse(input: &str) -> Result<Self, Invalid> {
                text(input, $min, $max).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

text_type!(
    /// A person's full name.
    PersonName, 1, 200
);
text_type!(
    /// A patient's identity document number, unique per tenant.
    DocumentNumber, 1, 40
);
text_type!(
    /// A physician's professional license number, unique per tenant.
    LicenseNumber, 1, 40
);
text_type!(
    /// A physician's medical specialty.
    Specialty, 1, 100
);
text_type!(
    /// A free-text reason (for a consultation, a cancellation or a deactivation).
    Reason, 1, 500
);
text_type!(
    /// A physician's notes on a consultation.
    Notes, 1, 5000
);
text_type!(
    /// The content of a clinical record.
    RecordContent, 1, 20000
);

/// An e-mail address: one `@` with something on both sides and a dot in the domain. Deeper
/// checks need a message to be sent, which is not the domain's job.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let value = text(input, 3, 254)?;
        let valid = match value.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !value.contains(char::is_whitespace)
            }
            None => false,
        };
        if valid {
            Ok(Self(value))
        } else {
            Err(Invalid(
                "must be an e-mail address such as name@example.org".into(),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A phone number as people write it: digits with optional `+`, spaces, dashes, dots and
/// parentheses, and between 6 and 20 digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Phone(String);

impl Phone {
    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let value = text(input, 1, 30)?;
        let allowed = value
            .chars()
            .all(|c| c.is_ascii_digit() || " +-.()".contains(c));
        let digits = value.chars().filter(char::is_ascii_digit).count();
        if allowed && (6..=20).contains(&digits) {
            Ok(Self(value))
        } else {
            Err(Invalid(
                "must be a phone number of 6 to 20 digits (with optional +, spaces, dashes, parentheses)"
                    .into(),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A birth date: not in the future and not before 1900.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BirthDate(NaiveDate);

impl BirthDate {
    /// `today` is passed in so that the rule is testable and the domain never reads a clock.
    pub fn parse(date: NaiveDate, today: NaiveDate) -> Result<Self, Invalid> {
        let earliest = NaiveDate::from_ymd_opt(1900, 1, 1).expect("1900-01-01 is a valid date");
        if date > today {
            Err(Invalid("must not be in the future".into()))
        } else if date < earliest {
            Err(Invalid("must not be before 1900-01-01".into()))
        } else {
            Ok(Self(date))
        }
    }

    pub fn date(&self) -> NaiveDate {
        self.0
    }
}

/// How long a consultation lasts, in minutes: 5 to 240.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DurationMinutes(u16);

impl DurationMinutes {
    pub const DEFAULT: Self = Self(30);

    pub fn parse(minutes: i64) -> Result<Self, Invalid> {
        if (5..=240).contains(&minutes) {
            Ok(Self(minutes as u16))
        } else {
            Err(Invalid("must be between 5 and 240 minutes".into()))
        }
    }

    pub fn minutes(&self) -> u16 {
        self.0
    }
}

/// When a consultation starts: strictly after `now`. Stored to the millisecond, the precision
/// that survives JSON and PostgreSQL round trips unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StartsAt(DateTime<Utc>);

impl StartsAt {
    pub fn parse(at: DateTime<Utc>, now: DateTime<Utc>) -> Result<Self, Invalid> {
        if at <= now {
            return Err(Invalid("must be in the future".into()));
        }
        let millis = at.timestamp_millis();
        let at = DateTime::from_timestamp_millis(millis).expect("a parsed timestamp fits");
        Ok(Self(at))
    }

    pub fn at(&self) -> DateTime<Utc> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(
            PersonName::parse("  Ana Lima ").unwrap().as_str(),
            "Ana Lima"
        );
        assert!(PersonName::parse("   ").is_err());
        assert!(PersonName::parse(&"a".repeat(200)).is_ok());
        assert!(PersonName::parse(&"a".repeat(201)).is_err());
        assert!(DocumentNumber::parse(&"1".repeat(41)).is_err());
        assert!(RecordContent::parse(&"x".repeat(20_000)).is_ok());
        assert!(RecordContent::parse(&"x".repeat(20_001)).is_err());
        assert!(PersonName::parse("Ana\u{0}").is_err());
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert!(PersonName::parse(&"é".repeat(200)).is_ok());
    }

    #[test]
    fn birth_date_is_between_1900_and_today() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        assert!(BirthDate::parse(today, today).is_ok());
        assert!(BirthDate::parse(today.succ_opt().unwrap(), today).is_err());
        assert!(BirthDate::parse(NaiveDate::from_ymd_opt(1900, 1, 1).unwrap(), today).is_ok());
        assert!(BirthDate::parse(NaiveDate::from_ymd_opt(1899, 12, 31).unwrap(), today).is_err());
    }

    #[test]
    fn duration_is_between_5_and_240_minutes() {
        assert!(DurationMinutes::parse(4).is_err());
        assert_eq!(DurationMinutes::parse(5).unwrap().minutes(), 5);
        assert_eq!(DurationMinutes::parse(240).unwrap().minutes(), 240);
        assert!(DurationMinutes::parse(241).is_err());
    }

    #[test]
    fn consultations_start_in_the_future() {
        let now = Utc::now();
        assert!(StartsAt::parse(now, now).is_err());
        assert!(StartsAt::parse(now - chrono::Duration::minutes(1), now).is_err());
        assert!(StartsAt::parse(now + chrono::Duration::minutes(1), now).is_ok());
    }

    #[test]
    fn emails_and_phones_look_like_ones() {
        assert!(Email::parse("ana@example.org").is_ok());
        for bad in [
            "ana",
            "ana@",
            "@example.org",
            "ana@example",
            "a b@example.org",
            "a@b@c.d",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        assert!(Phone::parse("+55 (11) 91234-5678").is_ok());
        assert!(Phone::parse("12345").is_err());
        assert!(Phone::parse("call me").is_err());
    }
}
