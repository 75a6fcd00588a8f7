//! Failure classes carried in the [`crate::headers::ERROR_CLASS`] header of retry and
//! dead-letter records.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a notification attempt failed, which decides whether the notifier retries it.
///
/// The header value, the serde form and the [`FromStr`] input are the kebab-case strings
/// returned by [`ErrorClass::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorClass {
    /// A failure that may succeed on a later attempt, such as an SMTP 4xx reply or a
    /// timeout before the message was sent. The record goes to the next retry tier.
    Transient,
    /// A failure that no retry can fix, such as an SMTP 5xx reply or a rejected address.
    /// The record is dead-lettered at once.
    Permanent,
    /// A transient failure that ran out of attempts or passed the overall retry deadline.
    Exhausted,
    /// The record value is not a valid event: it failed [`decode`](fn@crate::decode).
    Invalid,
    /// The send may or may not have reached the provider, for example a timeout after the
    /// SMTP DATA phase began. A configured policy decides between resending and
    /// dead-lettering.
    UnknownOutcome,
}

impl ErrorClass {
    /// Every class, in declaration order.
    pub const ALL: [ErrorClass; 5] = [
        ErrorClass::Transient,
        ErrorClass::Permanent,
        ErrorClass::Exhausted,
        ErrorClass::Invalid,
        ErrorClass::UnknownOutcome,
    ];

    /// Returns the header value: `transient`, `permanent`, `exhausted`, `invalid` or
    /// `unknown-outcome`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Exhausted => "exhausted",
            ErrorClass::Invalid => "invalid",
            ErrorClass::UnknownOutcome => "unknown-outcome",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorClass {
    type Err = ParseErrorClassError;

    /// Parses the exact lowercase header value.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        ErrorClass::ALL
            .into_iter()
            .find(|class| class.as_str() == value)
            .ok_or_else(|| ParseErrorClassError {
                value: value.to_owned(),
            })
    }
}

/// Error returned when a string is not one of the [`ErrorClass`] header values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown error class {value:?}: expected transient, permanent, exhausted, invalid or unknown-outcome"
)]
pub struct ParseErrorClassError {
    /// The rejected input.
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_round_trips_through_from_str() {
        for class in ErrorClass::ALL {
            assert_eq!(class.as_str().parse::<ErrorClass>(), Ok(class));
        }
    }

    #[test]
    fn display_matches_as_str() {
        assert_eq!(ErrorClass::UnknownOutcome.to_string(), "unknown-outcome");
        assert_eq!(ErrorClass::Transient.to_string(), "transient");
    }

    #[test]
    fn serde_uses_kebab_case() {
        let json = serde_json::to_string(&ErrorClass::UnknownOutcome).unwrap();
        assert_eq!(json, r#""unknown-outcome""#);

        let parsed: ErrorClass = serde_json::from_str(r#""exhausted""#).unwrap();
        assert_eq!(parsed, ErrorClass::Exhausted);
    }

    #[test]
    fn from_str_rejects_other_spellings() {
        for input in [
            "",
            "Transient",
            "unknown_outcome",
            "unknownoutcome",
            " invalid",
        ] {
            let error = input.parse::<ErrorClass>().unwrap_err();
            assert_eq!(error.value, input);
        }
    }
}
