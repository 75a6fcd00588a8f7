//! Turning untrusted payload bytes into a validated [`TransactionEvent`].
//!
//! [`decode`] works in four steps, each of which can reject the payload:
//!
//! 1. Size: a payload over [`Limits::max_payload_bytes`] is rejected unread.
//! 2. Syntax: the bytes must be one JSON value.
//! 3. Version: the value must be an object whose `schema_version` is the number 1. The
//!    version is checked before any other field because a later version may change them.
//! 4. Fields: each field is read with its expected JSON type and checked against the rules
//!    in [`crate::validate`]. Every type error and broken rule is collected, in field order,
//!    so one rejection lists everything that is wrong.
//!
//! Unknown fields are ignored at every level. Optional fields may be absent or `null`.

use serde_json::{Map, Number, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{describe_untrusted, DecodeError, FieldError, ValidationErrors};
use crate::event::{Recipient, TransactionEvent, TransactionStatus};
use crate::money::Money;
use crate::validate::{
    check_currency, check_description, check_display_name, check_email, check_event_id,
    check_identifier, check_locale, check_merchant, check_metadata_key, check_metadata_len,
    check_metadata_value, check_minor_units, check_occurred_at, MAX_ABS_MINOR_UNITS,
};
use crate::{DEFAULT_MAX_PAYLOAD_BYTES, SCHEMA_VERSION};

/// Limits that [`decode`] applies before it parses a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum payload size in bytes. The default is [`DEFAULT_MAX_PAYLOAD_BYTES`] (64 KiB).
    pub max_payload_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

/// Decodes and validates one record value.
///
/// The steps and what each rejects are listed in the [module documentation](self). Every
/// error is permanent for these bytes, so a notifier dead-letters the record with
/// [`crate::ErrorClass::Invalid`] instead of retrying it.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<TransactionEvent, DecodeError> {
    if bytes.len() > limits.max_payload_bytes {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            max: limits.max_payload_bytes,
        });
    }

    let value: Value = serde_json::from_slice(bytes).map_err(not_json)?;

    let Value::Object(object) = value else {
        return Err(invalid(
            "",
            format!("must be a JSON object, got {}", json_type(&value)),
        ));
    };

    check_schema_version(&object)?;

    let event = read_event(&object).map_err(DecodeError::Invalid)?;
    debug_assert_eq!(event.validate(), Ok(()), "decode and validate disagree");
    Ok(event)
}

/// Builds the [`DecodeError::NotJson`] message from the parser error. serde_json's syntax
/// messages are fixed texts such as "expected `,` or `}`" followed by the line and column,
/// so they never quote the payload.
fn not_json(error: serde_json::Error) -> DecodeError {
    let message = match error.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => error.to_string(),
        serde_json::error::Category::Io | serde_json::error::Category::Data => format!(
            "could not be read at line {} column {}",
            error.line(),
            error.column()
        ),
    };
    DecodeError::NotJson { message }
}

fn invalid(path: &str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid(ValidationErrors(vec![FieldError::new(path, reason)]))
}

/// Accepts only the JSON number 1. Any other number is an unsupported version, while a
/// missing field or a value of another type is an invalid event.
fn check_schema_version(object: &Map<String, Value>) -> Result<(), DecodeError> {
    const PATH: &str = "schema_version";

    match object.get(PATH) {
        None => Err(invalid(PATH, "is required")),
        Some(Value::Number(number)) if number.as_u64() == Some(u64::from(SCHEMA_VERSION)) => Ok(()),
        Some(Value::Number(number)) => Err(DecodeError::UnsupportedSchemaVersion {
            found: number.to_string(),
        }),
        Some(other) => Err(invalid(
            PATH,
            format!(
                "must be the number {SCHEMA_VERSION}, got {}",
                json_type(other)
            ),
        )),
    }
}

/// Reads every field of the event, runs each field's checks, and returns the event only if
/// no field had an error.
fn read_event(object: &Map<String, Value>) -> Result<TransactionEvent, ValidationErrors> {
    let mut reader = Reader::default();

    let event_id = reader.event_id(object);
    let transaction_id = reader.identifier(object, "transaction_id");
    let account_id = reader.identifier(object, "account_id");
    let status = reader.status(object);
    let amount = reader.amount(object, status);
    let occurred_at = reader.occurred_at(object);
    let recipient = reader.recipient(object);
    let merchant = reader.optional_string(object, "merchant", "merchant");
    check_merchant(merchant.as_deref(), &mut reader.errors);
    let description = reader.optional_string(object, "description", "description");
    check_description(description.as_deref(), &mut reader.errors);
    let metadata = reader.metadata(object);

    if !reader.errors.is_empty() {
        return Err(ValidationErrors(reader.errors));
    }

    let event = (|| {
        Some(TransactionEvent {
            event_id: event_id?,
            schema_version: SCHEMA_VERSION,
            transaction_id: transaction_id?,
            account_id: account_id?,
            status: status?,
            amount: amount?,
            occurred_at: occurred_at?,
            recipient: recipient?,
            merchant,
            description,
            metadata: metadata?,
        })
    })();
    Ok(event.expect("every field was read because no error was recorded"))
}

/// Reads fields of a JSON object and collects an error for each field that is missing, has
/// the wrong JSON type or breaks a rule. Each method returns `None` when it recorded an
/// error for its field.
#[derive(Default)]
struct Reader {
    errors: Vec<FieldError>,
}

impl Reader {
    fn error(&mut self, path: &str, reason: impl Into<String>) {
        self.errors.push(FieldError::new(path, reason));
    }

    fn required<'v>(
        &mut self,
        object: &'v Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Option<&'v Value> {
        let value = object.get(key);
        if value.is_none() {
            self.error(path, "is required");
        }
        value
    }

    fn string<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v str> {
        match value {
            Value::String(text) => Some(text),
            other => {
                self.error(path, format!("must be a string, got {}", json_type(other)));
                None
            }
        }
    }

    fn object<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v Map<String, Value>> {
        match value {
            Value::Object(object) => Some(object),
            other => {
                self.error(path, format!("must be an object, got {}", json_type(other)));
                None
            }
        }
    }

    fn required_string<'v>(
        &mut self,
        object: &'v Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Option<&'v str> {
        let value = self.required(object, key, path)?;
        self.string(value, path)
    }

    /// Reads an optional string field, treating `null` like an absent field.
    fn optional_string(
        &mut self,
        object: &Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Option<String> {
        match object.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => self.string(value, path).map(str::to_owned),
        }
    }

    fn event_id(&mut self, object: &Map<String, Value>) -> Option<Uuid> {
        const PATH: &str = "event_id";

        let text = self.required_string(object, PATH, PATH)?;

        // Only the 36-character hyphenated form is accepted; `Uuid::try_parse` would also
        // take the simple, braced and URN forms, which have other lengths.
        let parsed = if text.len() == 36 {
            Uuid::try_parse(text).ok()
        } else {
            None
        };
        let Some(event_id) = parsed else {
            self.error(
                PATH,
                format!(
                    "must be a UUID in the hyphenated form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, \
                     got {}",
                    describe_untrusted(text)
                ),
            );
            return None;
        };

        let before = self.errors.len();
        check_event_id(&event_id, &mut self.errors);
        (self.errors.len() == before).then_some(event_id)
    }

    fn identifier(&mut self, object: &Map<String, Value>, key: &str) -> Option<String> {
        let text = self.required_string(object, key, key)?;

        let before = self.errors.len();
        check_identifier(key, text, &mut self.errors);
        (self.errors.len() == before).then(|| text.to_owned())
    }

    fn status(&mut self, object: &Map<String, Value>) -> Option<TransactionStatus> {
        const PATH: &str = "status";

        let text = self.required_string(object, PATH, PATH)?;
        let status = TransactionStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text);
        if status.is_none() {
            self.error(
                PATH,
                format!(
                    "must be one of \"completed\", \"failed\" or \"refunded\", got {}",
                    describe_untrusted(text)
                ),
            );
        }
        status
    }

    /// Reads `amount`. The sign of `minor_units` is checked only when `status` was read.
    fn amount(
        &mut self,
        object: &Map<String, Value>,
        status: Option<TransactionStatus>,
    ) -> Option<Money> {
        let value = self.required(object, "amount", "amount")?;
        let amount = self.object(value, "amount")?;
        let before = self.errors.len();

        let minor_units = self
            .required(amount, "minor_units", "amount.minor_units")
            .and_then(|value| self.minor_units(value));
        if let Some(minor_units) = minor_units {
            check_minor_units(minor_units, status, &mut self.errors);
        }

        let currency = self.required_string(amount, "currency", "amount.currency");
        if let Some(currency) = currency {
            check_currency(currency, &mut self.errors);
        }

        if self.errors.len() != before {
            return None;
        }
        Some(Money::new(minor_units?, currency?))
    }

    /// Reads an integer written without a fraction or exponent. serde_json parses `12.0`
    /// and `1e3` as floating-point numbers, so they are rejected here even though JSON
    /// Schema's `integer` type accepts them.
    fn minor_units(&mut self, value: &Value) -> Option<i64> {
        const PATH: &str = "amount.minor_units";

        let Value::Number(number) = value else {
            self.error(
                PATH,
                format!(
                    "must be an integer count of minor units, got {}",
                    json_type(value)
                ),
            );
            return None;
        };

        if let Some(minor_units) = number.as_i64() {
            return Some(minor_units);
        }

        if is_whole_number_beyond_i64(number) {
            self.error(
                PATH,
                format!(
                    "must be between -{MAX_ABS_MINOR_UNITS} and {MAX_ABS_MINOR_UNITS}, got {number}"
                ),
            );
        } else {
            self.error(
                PATH,
                format!(
                    "must be an integer count of minor units without a fraction or exponent, \
                     got {number}"
                ),
            );
        }
        None
    }

    fn occurred_at(&mut self, object: &Map<String, Value>) -> Option<OffsetDateTime> {
        const PATH: &str = "occurred_at";
        const EXPECTED: &str = "must be an RFC 3339 date-time such as \"2024-05-01T12:30:00Z\"";

        let text = self.required_string(object, PATH, PATH)?;

        // The `time` crate accepts any separator between date and time, but RFC 3339 and
        // the JSON Schema allow only `T` or `t`.
        if !matches!(text.as_bytes().get(10), Some(b'T' | b't')) {
            self.error(
                PATH,
                format!("{EXPECTED}, with 'T' between the date and the time"),
            );
            return None;
        }

        let occurred_at = match OffsetDateTime::parse(text, &Rfc3339) {
            Ok(occurred_at) => occurred_at,
            Err(error) => {
                self.error(PATH, format!("{EXPECTED}, {}", describe_time_error(&error)));
                return None;
            }
        };

        let before = self.errors.len();
        check_occurred_at(&occurred_at, &mut self.errors);
        (self.errors.len() == before).then_some(occurred_at)
    }

    fn recipient(&mut self, object: &Map<String, Value>) -> Option<Recipient> {
        let value = self.required(object, "recipient", "recipient")?;
        let recipient = self.object(value, "recipient")?;
        let before = self.errors.len();

        let email = self.required_string(recipient, "email", "recipient.email");
        if let Some(email) = email {
            check_email(email, &mut self.errors);
        }

        let display_name =
            self.optional_string(recipient, "display_name", "recipient.display_name");
        check_display_name(display_name.as_deref(), &mut self.errors);

        let locale = self.optional_string(recipient, "locale", "recipient.locale");
        check_locale(locale.as_deref(), &mut self.errors);

        if self.errors.len() != before {
            return None;
        }
        Some(Recipient {
            email: email?.to_owned(),
            display_name,
            locale,
        })
    }

    fn metadata(
        &mut self,
        object: &Map<String, Value>,
    ) -> Option<std::collections::BTreeMap<String, String>> {
        let entries = match object.get("metadata") {
            None | Some(Value::Null) => return Some(Default::default()),
            Some(value) => self.object(value, "metadata")?,
        };
        let before = self.errors.len();

        check_metadata_len(entries.len(), &mut self.errors);

        let mut metadata = std::collections::BTreeMap::new();
        for (key, value) in entries {
            if !check_metadata_key(key, &mut self.errors) {
                continue;
            }
            let path = format!("metadata.{key}");
            if let Some(text) = self.string(value, &path) {
                check_metadata_value(key, text, &mut self.errors);
                metadata.insert(key.clone(), text.to_owned());
            }
        }

        (self.errors.len() == before).then_some(metadata)
    }
}

/// Returns whether `number` is a whole number outside the `i64` range, such as
/// 10000000000000000000 or 1e30, so the error can name the range instead of the type.
fn is_whole_number_beyond_i64(number: &Number) -> bool {
    if number.is_u64() {
        return true;
    }
    number
        .as_f64()
        .is_some_and(|float| float.fract() == 0.0 && float.abs() >= i64::MAX as f64)
}

/// Names the part of an RFC 3339 timestamp that failed, without quoting the input.
fn describe_time_error(error: &time::error::Parse) -> String {
    use time::error::{Parse, ParseFromDescription, TryFromParsed};

    match error {
        Parse::ParseFromDescription(ParseFromDescription::InvalidComponent(component))
            if component.starts_with("offset") =>
        {
            "but its UTC offset ('Z' or +hh:mm) is missing or invalid".to_owned()
        }
        Parse::ParseFromDescription(ParseFromDescription::InvalidComponent(component)) => {
            format!("but its {component} is invalid")
        }
        Parse::TryFromParsed(TryFromParsed::ComponentRange(range)) => {
            format!("but its {} is out of range", range.name())
        }
        Parse::ParseFromDescription(ParseFromDescription::UnexpectedTrailingCharacters {
            ..
        }) => "but it has characters after the UTC offset".to_owned(),
        _ => "but it does not match that format".to_owned(),
    }
}

/// Returns the JSON type of `value` with its article, for messages such as
/// "must be a string, got a number".
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
