//! Field rules of a [`TransactionEvent`] and the limits they enforce.
//!
//! | field | rule |
//! |---|---|
//! | `event_id` | any UUID version except the nil UUID |
//! | `schema_version` | [`crate::SCHEMA_VERSION`] |
//! | `transaction_id`, `account_id` | 1 to [`MAX_ID_CHARS`] characters, no control characters |
//! | `amount.minor_units` | at most [`MAX_ABS_MINOR_UNITS`] either side of zero; not negative unless `status` is `refunded` |
//! | `amount.currency` | a code in [`crate::CURRENCIES`], uppercase |
//! | `occurred_at` | writable as RFC 3339: year 0 to 9999, UTC offset in whole minutes |
//! | `recipient.email` | the syntax in [`crate::email`] |
//! | `recipient.display_name` | at most [`MAX_DISPLAY_NAME_CHARS`] characters, no control characters |
//! | `recipient.locale` | BCP 47 tag: 2 or 3 letters, then subtags of 2 to 8 letters or digits, each after a `-`; at most [`MAX_LOCALE_CHARS`] characters |
//! | `merchant` | at most [`MAX_MERCHANT_CHARS`] characters, no control characters |
//! | `description` | at most [`MAX_DESCRIPTION_CHARS`] characters, no control characters |
//! | `metadata` | at most [`MAX_METADATA_ENTRIES`] entries; keys of 1 to [`MAX_METADATA_KEY_CHARS`] characters from `A-Z a-z 0-9 _ . -`; values of at most [`MAX_METADATA_VALUE_CHARS`] characters, no control characters |
//!
//! Lengths count Unicode scalar values, as JSON Schema's `maxLength` does. Control
//! characters are the Unicode `Cc` category (U+0000 to U+001F and U+007F to U+009F), which
//! includes CR, LF, tab and NUL, so no text field can inject a mail header line. Optional
//! strings may be empty. HTML is allowed in text fields because renderers escape it.
//!
//! [`decode`](fn@crate::decode) runs the same checks field by field while it reads a payload, so both
//! paths report the same errors.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::currency::currency_exponent;
use crate::email;
use crate::error::{describe_untrusted, FieldError, ValidationErrors};
use crate::event::{TransactionEvent, TransactionStatus};

/// Maximum length of `transaction_id` and `account_id`, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// Maximum absolute value of `amount.minor_units`: 10^15, which is 10 trillion in a
/// currency with two decimal places and leaves ample headroom below `i64::MAX` (about
/// 9.2 * 10^18) for sums.
pub const MAX_ABS_MINOR_UNITS: i64 = 1_000_000_000_000_000;

/// Maximum length of `recipient.display_name`, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;

/// Maximum length of `recipient.locale`, in characters. It fits a language, script, region
/// and two variants, such as `sl-Latn-IT-rozaj-biske` (22 characters), with room to spare.
pub const MAX_LOCALE_CHARS: usize = 35;

/// Maximum length of `merchant`, in characters.
pub const MAX_MERCHANT_CHARS: usize = 256;

/// Maximum length of `description`, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1024;

/// Maximum number of `metadata` entries.
pub const MAX_METADATA_ENTRIES: usize = 32;

/// Maximum length of a `metadata` key, in characters.
pub const MAX_METADATA_KEY_CHARS: usize = 64;

/// Maximum length of a `metadata` value, in characters.
pub const MAX_METADATA_VALUE_CHARS: usize = 512;

impl TransactionEvent {
    /// Checks every field rule listed in [`crate::validate`] and returns all broken rules,
    /// in field order.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = Vec::new();

        check_event_id(&self.event_id, &mut errors);
        check_schema_version(self.schema_version, &mut errors);
        check_identifier("transaction_id", &self.transaction_id, &mut errors);
        check_identifier("account_id", &self.account_id, &mut errors);
        check_minor_units(self.amount.minor_units, Some(self.status), &mut errors);
        check_currency(&self.amount.currency, &mut errors);
        check_occurred_at(&self.occurred_at, &mut errors);

        check_email(&self.recipient.email, &mut errors);
        check_display_name(self.recipient.display_name.as_deref(), &mut errors);
        check_locale(self.recipient.locale.as_deref(), &mut errors);

        check_merchant(self.merchant.as_deref(), &mut errors);
        check_description(self.description.as_deref(), &mut errors);

        check_metadata_len(self.metadata.len(), &mut errors);
        for (key, value) in &self.metadata {
            if check_metadata_key(key, &mut errors) {
                check_metadata_value(key, value, &mut errors);
            }
        }

        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errors))
        }
    }
}

// The checks below append at most one error per field to `errors`. The decoder calls them
// for each field as soon as it has the field's typed value.

pub(crate) fn check_event_id(event_id: &Uuid, errors: &mut Vec<FieldError>) {
    if event_id.is_nil() {
        errors.push(FieldError::new("event_id", "must not be the nil UUID"));
    }
}

pub(crate) fn check_schema_version(schema_version: u32, errors: &mut Vec<FieldError>) {
    if schema_version != crate::SCHEMA_VERSION {
        errors.push(FieldError::new(
            "schema_version",
            format!("must be {}, got {schema_version}", crate::SCHEMA_VERSION),
        ));
    }
}

pub(crate) fn check_identifier(path: &str, value: &str, errors: &mut Vec<FieldError>) {
    if let Some(reason) = text_problem(value, 1, MAX_ID_CHARS) {
        errors.push(FieldError::new(path, reason));
    }
}

/// Checks the bounds of `amount.minor_units`, and its sign when `status` is known.
pub(crate) fn check_minor_units(
    minor_units: i64,
    status: Option<TransactionStatus>,
    errors: &mut Vec<FieldError>,
) {
    const PATH: &str = "amount.minor_units";

    if minor_units.unsigned_abs() > MAX_ABS_MINOR_UNITS.unsigned_abs() {
        errors.push(FieldError::new(
            PATH,
            format!(
                "must be between -{MAX_ABS_MINOR_UNITS} and {MAX_ABS_MINOR_UNITS}, got {minor_units}"
            ),
        ));
        return;
    }

    if let Some(status) = status {
        if minor_units < 0 && !status.allows_negative_amount() {
            errors.push(FieldError::new(
                PATH,
                format!(
                    "must not be negative when status is {status} because only refunds \
                     may be negative, got {minor_units}"
                ),
            ));
        }
    }
}

pub(crate) fn check_currency(currency: &str, errors: &mut Vec<FieldError>) {
    const PATH: &str = "amount.currency";

    if currency_exponent(currency).is_some() {
        return;
    }

    let uppercase = currency.to_ascii_uppercase();
    let reason = if currency_exponent(&uppercase).is_some() {
        format!("must be an uppercase ISO 4217 code such as {uppercase:?}, got {currency:?}")
    } else {
        format!(
            "must be an active ISO 4217 code such as \"EUR\", got {}",
            describe_untrusted(currency)
        )
    };
    errors.push(FieldError::new(PATH, reason));
}

pub(crate) fn check_occurred_at(occurred_at: &OffsetDateTime, errors: &mut Vec<FieldError>) {
    const PATH: &str = "occurred_at";

    let year = occurred_at.year();
    if !(0..=9999).contains(&year) {
        errors.push(FieldError::new(
            PATH,
            format!("year must be between 0 and 9999 to be written as RFC 3339, got {year}"),
        ));
    } else if occurred_at.offset().seconds_past_minute() != 0 {
        errors.push(FieldError::new(
            PATH,
            "UTC offset must be a whole number of minutes to be written as RFC 3339",
        ));
    }
}

pub(crate) fn check_email(address: &str, errors: &mut Vec<FieldError>) {
    if let Err(reason) = email::check_address(address) {
        errors.push(FieldError::new("recipient.email", reason));
    }
}

pub(crate) fn check_display_name(display_name: Option<&str>, errors: &mut Vec<FieldError>) {
    check_optional_text(
        "recipient.display_name",
        display_name,
        MAX_DISPLAY_NAME_CHARS,
        errors,
    );
}

pub(crate) fn check_locale(locale: Option<&str>, errors: &mut Vec<FieldError>) {
    const PATH: &str = "recipient.locale";

    let Some(locale) = locale else {
        return;
    };

    let length = locale.chars().count();
    if length > MAX_LOCALE_CHARS {
        errors.push(FieldError::new(
            PATH,
            format!("must be at most {MAX_LOCALE_CHARS} characters, got {length}"),
        ));
    } else if !is_language_tag(locale) {
        errors.push(FieldError::new(
            PATH,
            "must be a BCP 47 language tag such as \"de\" or \"de-DE\": 2 or 3 letters, \
             then subtags of 2 to 8 letters or digits, each after a '-'",
        ));
    }
}

/// Returns whether `tag` has the shape `ll`, `lll` or either followed by `-` subtags of 2
/// to 8 ASCII letters or digits. Letter case is not checked because BCP 47 tags are
/// case-insensitive.
///
/// NOTE: this is a subset of BCP 47. One-character singletons such as the `u` in
/// `th-TH-u-nu-thai` and private-use tags such as `x-klingon` are rejected.
fn is_language_tag(tag: &str) -> bool {
    let mut subtags = tag.split('-');

    let language = subtags.next().unwrap_or_default();
    let language_ok =
        (2..=3).contains(&language.len()) && language.bytes().all(|b| b.is_ascii_alphabetic());

    language_ok
        && subtags.all(|subtag| {
            (2..=8).contains(&subtag.len()) && subtag.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

pub(crate) fn check_merchant(merchant: Option<&str>, errors: &mut Vec<FieldError>) {
    check_optional_text("merchant", merchant, MAX_MERCHANT_CHARS, errors);
}

pub(crate) fn check_description(description: Option<&str>, errors: &mut Vec<FieldError>) {
    check_optional_text("description", description, MAX_DESCRIPTION_CHARS, errors);
}

pub(crate) fn check_metadata_len(entries: usize, errors: &mut Vec<FieldError>) {
    if entries > MAX_METADATA_ENTRIES {
        errors.push(FieldError::new(
            "metadata",
            format!("must have at most {MAX_METADATA_ENTRIES} entries, got {entries}"),
        ));
    }
}

/// Checks one metadata key and returns whether it is valid. An invalid key is reported
/// under the path `metadata` with its length only, because it may contain anything.
pub(crate) fn check_metadata_key(key: &str, errors: &mut Vec<FieldError>) -> bool {
    let length = key.chars().count();
    let valid = (1..=MAX_METADATA_KEY_CHARS).contains(&length)
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));

    if !valid {
        errors.push(FieldError::new(
            "metadata",
            format!(
                "keys must be 1 to {MAX_METADATA_KEY_CHARS} characters of A-Z, a-z, 0-9, '_', '.' \
                 or '-', got a key of {length} characters that breaks this rule"
            ),
        ));
    }
    valid
}

/// Checks the value stored under a valid metadata `key`.
pub(crate) fn check_metadata_value(key: &str, value: &str, errors: &mut Vec<FieldError>) {
    if let Some(reason) = text_problem(value, 0, MAX_METADATA_VALUE_CHARS) {
        errors.push(FieldError::new(format!("metadata.{key}"), reason));
    }
}

fn check_optional_text(
    path: &str,
    value: Option<&str>,
    max_chars: usize,
    errors: &mut Vec<FieldError>,
) {
    if let Some(reason) = value.and_then(|value| text_problem(value, 0, max_chars)) {
        errors.push(FieldError::new(path, reason));
    }
}

/// Returns the first broken rule of a text field that must have `min_chars` to `max_chars`
/// characters and no control characters. The reason names the offending code point and its
/// position but never the text.
fn text_problem(value: &str, min_chars: usize, max_chars: usize) -> Option<String> {
    let length = value.chars().count();
    if length < min_chars {
        return Some(if min_chars == 1 {
            "must not be empty".to_owned()
        } else {
            format!("must be at least {min_chars} characters, got {length}")
        });
    }
    if length > max_chars {
        return Some(format!(
            "must be at most {max_chars} characters, got {length}"
        ));
    }

    let control = value.chars().enumerate().find(|(_, c)| c.is_control());
    control.map(|(position, c)| {
        format!(
            "must not contain control characters such as CR, LF or NUL, \
             found U+{:04X} at character {}",
            u32::from(c),
            position + 1
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_tags() {
        let valid = [
            "de",
            "DE",
            "de-DE",
            "gsw",
            "zh-Hant-TW",
            "es-419",
            "sl-rozaj-biske",
        ];
        for tag in valid {
            assert!(is_language_tag(tag), "tag {tag:?}");
        }

        let invalid = [
            "",
            "d",
            "deut",
            "de_DE",
            "de-",
            "-de",
            "de--DE",
            "de-D",
            "1d",
            "th-TH-u-nu-thai",
            "de-abcdefghi",
        ];
        for tag in invalid {
            assert!(!is_language_tag(tag), "tag {tag:?}");
        }
    }

    #[test]
    fn text_problem_reports_control_character() {
        let reason = text_problem("Jane\r\nBcc: x", 0, 256).unwrap();
        assert_eq!(
            reason,
            "must not contain control characters such as CR, LF or NUL, found U+000D at character 5"
        );
    }

    #[test]
    fn text_problem_counts_characters_not_bytes() {
        let name = "ü".repeat(256);
        assert_eq!(text_problem(&name, 0, 256), None);

        let longer = "ü".repeat(257);
        assert_eq!(
            text_problem(&longer, 0, 256).as_deref(),
            Some("must be at most 256 characters, got 257")
        );
    }

    #[test]
    fn text_problem_rejects_c1_controls() {
        assert!(text_problem("a\u{85}b", 0, 10).is_some());
        assert!(text_problem("a\u{7f}b", 0, 10).is_some());
        assert_eq!(text_problem("a\u{a0}b", 0, 10), None);
    }

    #[test]
    fn currency_reason_quotes_only_code_like_values() {
        let mut errors = Vec::new();
        check_currency("jane doe <jane@example.com>", &mut errors);
        assert_eq!(
            errors[0].reason,
            "must be an active ISO 4217 code such as \"EUR\", got a string of 27 characters"
        );
    }

    #[test]
    fn occurred_at_must_be_writable_as_rfc_3339() {
        let mut errors = Vec::new();
        check_occurred_at(
            &time::macros::datetime!(2024-05-01 12:30 +02:00),
            &mut errors,
        );
        check_occurred_at(&time::macros::datetime!(0000-01-01 00:00 UTC), &mut errors);
        assert_eq!(errors, vec![]);

        check_occurred_at(&time::macros::datetime!(-0001-12-31 23:59 UTC), &mut errors);
        check_occurred_at(
            &time::macros::datetime!(2024-05-01 12:30 +01:00:30),
            &mut errors,
        );
        let paths: Vec<&str> = errors.iter().map(|error| error.path.as_str()).collect();
        assert_eq!(paths, ["occurred_at", "occurred_at"]);
    }

    #[test]
    fn minor_units_bounds() {
        let mut errors = Vec::new();
        check_minor_units(
            MAX_ABS_MINOR_UNITS,
            Some(TransactionStatus::Completed),
            &mut errors,
        );
        check_minor_units(
            -MAX_ABS_MINOR_UNITS,
            Some(TransactionStatus::Refunded),
            &mut errors,
        );
        assert_eq!(errors, vec![]);

        check_minor_units(MAX_ABS_MINOR_UNITS + 1, None, &mut errors);
        check_minor_units(i64::MIN, None, &mut errors);
        assert_eq!(errors.len(), 2);
    }
}
