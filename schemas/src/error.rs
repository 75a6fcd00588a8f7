//! Errors from decoding and validating events.
//!
//! Messages are lowercase, name the field path and what was expected, and never contain
//! personal data: an email address, a name or free text from the payload is described by
//! its length or its JSON type, never quoted. Only values that are safe to log, such as
//! numbers, lengths and currency codes, appear in messages.

use std::fmt;

/// One broken rule on one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, such as `amount.minor_units`, `recipient.email` or
    /// `metadata.order_ref`. The empty path means the event as a whole.
    pub path: String,
    /// Description of the broken rule and the value found, for example
    /// `must be at most 128 characters, got 130`.
    pub reason: String,
}

impl FieldError {
    /// Creates an error for the field at `path`.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Every broken rule found in one event, in field order.
///
/// Displayed as the [`FieldError`]s joined by `"; "`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// Returns the paths of the fields that broke a rule, in order and with repeats.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|error| error.path.as_str())
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Describes an untrusted string for an error message: quoted if it is 1 to 16 ASCII
/// letters, digits, `_` or `-`, which rules out email addresses and names with spaces, and
/// by its length otherwise.
pub(crate) fn describe_untrusted(value: &str) -> String {
    let token_like = (1..=16).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');

    if token_like {
        format!("{value:?}")
    } else {
        format!("a string of {} characters", value.chars().count())
    }
}

/// Why [`decode`](fn@crate::decode) rejected a payload.
///
/// Every variant is permanent: the same bytes fail the same way on every attempt.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The payload is larger than the configured limit. It was not parsed.
    #[error("payload is too large: {size} bytes, the maximum is {max} bytes")]
    TooLarge {
        /// Size of the payload in bytes.
        size: usize,
        /// The configured maximum in bytes.
        max: usize,
    },

    /// The payload is not well-formed JSON.
    #[error("payload is not valid JSON: {message}")]
    NotJson {
        /// The parser's message, with the line and column. It never quotes the payload.
        message: String,
    },

    /// The payload names a `schema_version` that this build cannot read.
    #[error("unsupported schema_version {found}: this build reads version 1 only")]
    UnsupportedSchemaVersion {
        /// The `schema_version` number as written in the payload.
        found: String,
    },

    /// The payload is JSON but breaks one or more field rules.
    #[error("invalid event: {0}")]
    Invalid(#[source] ValidationErrors),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_errors_display_joins_with_semicolons() {
        let errors = ValidationErrors(vec![
            FieldError::new(
                "amount.currency",
                "must be an active ISO 4217 code, got \"XYZ\"",
            ),
            FieldError::new("recipient.email", "must contain exactly one '@', found 0"),
        ]);
        assert_eq!(
            errors.to_string(),
            "amount.currency: must be an active ISO 4217 code, got \"XYZ\"; \
             recipient.email: must contain exactly one '@', found 0"
        );
    }

    #[test]
    fn describe_untrusted_quotes_tokens_only() {
        assert_eq!(describe_untrusted("XYZ"), "\"XYZ\"");
        assert_eq!(describe_untrusted("pending"), "\"pending\"");
        assert_eq!(describe_untrusted(""), "a string of 0 characters");
        assert_eq!(
            describe_untrusted("jane@example.com"),
            "a string of 16 characters"
        );
        assert_eq!(describe_untrusted("Jane Doe"), "a string of 8 characters");
        assert_eq!(describe_untrusted("Müller"), "a string of 6 characters");
    }

    #[test]
    fn field_error_without_path_shows_reason_only() {
        let error = FieldError::new("", "must be a JSON object, got an array");
        assert_eq!(error.to_string(), "must be a JSON object, got an array");
    }

    #[test]
    fn decode_error_messages() {
        let too_large = DecodeError::TooLarge {
            size: 70_000,
            max: 65_536,
        };
        assert_eq!(
            too_large.to_string(),
            "payload is too large: 70000 bytes, the maximum is 65536 bytes"
        );

        let unsupported = DecodeError::UnsupportedSchemaVersion { found: "2".into() };
        assert_eq!(
            unsupported.to_string(),
            "unsupported schema_version 2: this build reads version 1 only"
        );
    }
}
