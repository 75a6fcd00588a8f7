//! Rendering of a [`TransactionEvent`] into a subject, a plain-text body and an
//! HTML body.
//!
//! Guarantees:
//! - Templates are compiled into the binary and checked when the [`Renderer`]
//!   is built, so a broken template fails at startup, not per event.
//! - Every producer-supplied text (display name, merchant, description,
//!   transaction id) is reduced to one line of bounded length before it
//!   reaches a template. Control characters become spaces, bidirectional
//!   formatting and zero-width characters are removed, and a value over its
//!   limit is cut and ends with an ellipsis. The HTML templates escape every
//!   value, so such text cannot add markup.
//! - The subject is a single line without control or bidirectional formatting
//!   characters, at most [`RenderConfig::subject_max_chars`] characters long.
//! - Amounts are formatted from integer minor units with the currency's ISO
//!   4217 exponent, never through floating point. Dates are shown in UTC.
//!
//! Supported locales are `en` and `de`. A recipient locale is matched on its
//! primary language subtag (`de-AT` and `de-CH` render German), and any other
//! or missing locale renders English.

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, UtcOffset};
use txnotify_schemas::{currency_exponent, Money, TransactionEvent, TransactionStatus};

use super::text::clean_line;

/// Maximum length of a currency code quoted in an error message.
const MAX_CURRENCY_CHARS_IN_ERROR: usize = 8;

/// Template sources, embedded at compile time. Files ending in `.html` are
/// HTML-escaped, all others are plain text.
const TEMPLATES: &[(&str, &str)] = &[
    ("en/layout.html", include_str!("templates/en/layout.html")),
    ("en/subject.txt", include_str!("templates/en/subject.txt")),
    (
        "en/completed.txt",
        include_str!("templates/en/completed.txt"),
    ),
    (
        "en/completed.html",
        include_str!("templates/en/completed.html"),
    ),
    ("en/failed.txt", include_str!("templates/en/failed.txt")),
    ("en/failed.html", include_str!("templates/en/failed.html")),
    ("en/refunded.txt", include_str!("templates/en/refunded.txt")),
    (
        "en/refunded.html",
        include_str!("templates/en/refunded.html"),
    ),
    ("de/layout.html", include_str!("templates/de/layout.html")),
    ("de/subject.txt", include_str!("templates/de/subject.txt")),
    (
        "de/completed.txt",
        include_str!("templates/de/completed.txt"),
    ),
    (
        "de/completed.html",
        include_str!("templates/de/completed.html"),
    ),
    ("de/failed.txt", include_str!("templates/de/failed.txt")),
    ("de/failed.html", include_str!("templates/de/failed.html")),
    ("de/refunded.txt", include_str!("templates/de/refunded.txt")),
    (
        "de/refunded.html",
        include_str!("templates/de/refunded.html"),
    ),
];

/// Settings of the [`Renderer`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenderConfig {
    /// Name of the sending service, shown in the closing line of each body.
    pub brand_name: String,
    /// Maximum length of the subject in characters, including any ellipsis.
    pub subject_max_chars: usize,
    /// Maximum length in characters of one producer-supplied field (such as
    /// the merchant) inside the subject.
    pub subject_field_max_chars: usize,
    /// Maximum length in characters of one producer-supplied field inside the
    /// bodies.
    pub body_field_max_chars: usize,
}

impl Default for RenderConfig {
    fn default() -> Self {
        Self {
            brand_name: "txnotify".to_owned(),
            // RFC 5322 recommends header lines of at most 78 characters; 100
            // leaves room for a merchant name while staying readable.
            subject_max_chars: 100,
            subject_field_max_chars: 40,
            body_field_max_chars: 200,
        }
    }
}

impl RenderConfig {
    /// Checks the settings, naming the first invalid field.
    pub fn validate(&self) -> Result<(), RenderError> {
        let invalid = |field: &'static str, problem: &str| {
            Err(RenderError::InvalidConfig {
                field,
                problem: problem.to_owned(),
            })
        };

        if clean_line(&self.brand_name, self.body_field_max_chars).is_empty() {
            return invalid(
                "brand_name",
                "is empty; set the name of the sending service",
            );
        }
        if self.subject_max_chars < 20 {
            return invalid("subject_max_chars", "is below 20; use at least 20");
        }
        if self.subject_field_max_chars < 2 || self.subject_field_max_chars > self.subject_max_chars
        {
            return invalid(
                "subject_field_max_chars",
                "must be between 2 and subject_max_chars",
            );
        }
        if self.body_field_max_chars < 2 {
            return invalid("body_field_max_chars", "is below 2; use at least 2");
        }
        Ok(())
    }
}

/// Failure to render an email for an event.
///
/// `UnknownCurrency` is a property of the event and so permanent for it.
/// `Template` means a bug in the embedded templates.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A [`RenderConfig`] field is invalid.
    #[error("invalid render config field {field}: {problem}")]
    InvalidConfig {
        /// Name of the field.
        field: &'static str,
        /// Description of the problem and of the fix.
        problem: String,
    },
    /// The event's currency code is not an ISO 4217 code with a known exponent.
    #[error("unknown currency code {code:?}: cannot format the amount")]
    UnknownCurrency {
        /// The code, cleaned and shortened for display.
        code: String,
    },
    /// An embedded template failed to compile or render.
    #[error("email template {name} failed")]
    Template {
        /// Name of the template.
        name: String,
        /// Error reported by minijinja.
        #[source]
        source: minijinja::Error,
    },
}

/// The rendered parts of one email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedEmail {
    /// Single-line subject without control characters.
    pub subject: String,
    /// Plain-text body.
    pub text: String,
    /// HTML body.
    pub html: String,
    /// Locale the email was rendered in: `en` or `de`.
    pub locale: String,
}

/// Locale supported by the templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Locale {
    En,
    De,
}

impl Locale {
    /// Picks the template locale for a recipient's BCP 47 tag by its primary
    /// language subtag, falling back to English.
    fn resolve(tag: Option<&str>) -> Locale {
        let primary = tag
            .and_then(|tag| tag.split(['-', '_']).next())
            .map(|subtag| subtag.trim().to_ascii_lowercase());

        match primary.as_deref() {
            Some("de") => Locale::De,
            _ => Locale::En,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Locale::En => "en",
            Locale::De => "de",
        }
    }

    fn decimal_separator(self) -> char {
        match self {
            Locale::En => '.',
            Locale::De => ',',
        }
    }

    fn group_separator(self) -> char {
        match self {
            Locale::En => ',',
            Locale::De => '.',
        }
    }
}

/// Values handed to the templates. Every string is already cleaned.
#[derive(Debug, Serialize)]
struct TemplateContext {
    lang: &'static str,
    status: &'static str,
    brand: String,
    name: Option<String>,
    merchant: Option<String>,
    merchant_short: Option<String>,
    description: Option<String>,
    amount: String,
    date: String,
    transaction_id: String,
}

/// Renders transaction events into emails with the embedded templates.
#[derive(Debug)]
pub struct Renderer {
    env: Environment<'static>,
    config: RenderConfig,
}

impl Renderer {
    /// Validates `config` and compiles the embedded templates.
    pub fn new(config: &RenderConfig) -> Result<Self, RenderError> {
        config.validate()?;

        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .map_err(|source| RenderError::Template {
                    name: (*name).to_owned(),
                    source,
                })?;
        }

        Ok(Self {
            env,
            config: config.clone(),
        })
    }

    /// Renders the subject and both bodies for `event` in the recipient's
    /// locale.
    pub fn render(&self, event: &TransactionEvent) -> Result<RenderedEmail, RenderError> {
        let locale = Locale::resolve(event.recipient.locale.as_deref());
        let context = self.context(event, locale)?;

        let lang = locale.as_str();
        let status = event.status.as_str();
        let subject = self.render_template(&format!("{lang}/subject.txt"), &context)?;
        let text = self.render_template(&format!("{lang}/{status}.txt"), &context)?;
        let html = self.render_template(&format!("{lang}/{status}.html"), &context)?;

        Ok(RenderedEmail {
            subject: clean_line(&subject, self.config.subject_max_chars),
            text,
            html,
            locale: lang.to_owned(),
        })
    }

    fn context(
        &self,
        event: &TransactionEvent,
        locale: Locale,
    ) -> Result<TemplateContext, RenderError> {
        let body_max = self.config.body_field_max_chars;
        let subject_max = self.config.subject_field_max_chars;
        let clean_optional = |value: &Option<String>, max: usize| {
            value
                .as_deref()
                .map(|value| clean_line(value, max))
                .filter(|value| !value.is_empty())
        };

        // A refund reads as "refund of 19.99 EUR" whether the producer sent
        // the amount as positive or negative minor units.
        let amount = match event.status {
            TransactionStatus::Refunded => Money {
                minor_units: event.amount.minor_units.saturating_abs(),
                currency: event.amount.currency.clone(),
            },
            TransactionStatus::Completed | TransactionStatus::Failed => event.amount.clone(),
        };

        Ok(TemplateContext {
            lang: locale.as_str(),
            status: event.status.as_str(),
            brand: clean_line(&self.config.brand_name, body_max),
            name: clean_optional(&event.recipient.display_name, body_max),
            merchant: clean_optional(&event.merchant, body_max),
            merchant_short: clean_optional(&event.merchant, subject_max),
            description: clean_optional(&event.description, body_max),
            amount: format_amount(&amount, locale)?,
            date: format_date(event.occurred_at, locale),
            transaction_id: clean_line(&event.transaction_id, body_max),
        })
    }

    fn render_template(
        &self,
        name: &str,
        context: &TemplateContext,
    ) -> Result<String, RenderError> {
        let to_error = |source| RenderError::Template {
            name: name.to_owned(),
            source,
        };
        self.env
            .get_template(name)
            .and_then(|template| template.render(context))
            .map_err(to_error)
    }
}

/// Formats an amount of minor units as a decimal number with the locale's
/// separators, followed by the currency code: EUR 123456 is `1,234.56 EUR` in
/// English and `1.234,56 EUR` in German.
fn format_amount(money: &Money, locale: Locale) -> Result<String, RenderError> {
    let exponent =
        currency_exponent(&money.currency).ok_or_else(|| RenderError::UnknownCurrency {
            code: clean_line(&money.currency, MAX_CURRENCY_CHARS_IN_ERROR),
        })?;

    // ISO 4217 exponents are at most 4, so an exponent whose scale does not
    // fit in u128 can only come from a broken currency table.
    let scale =
        10u128
            .checked_pow(u32::from(exponent))
            .ok_or_else(|| RenderError::UnknownCurrency {
                code: clean_line(&money.currency, MAX_CURRENCY_CHARS_IN_ERROR),
            })?;
    let magnitude = u128::from(money.minor_units.unsigned_abs());
    let whole = magnitude / scale;
    let fraction = magnitude % scale;

    let mut formatted = String::new();
    if money.minor_units < 0 {
        formatted.push('-');
    }
    formatted.push_str(&group_thousands(whole, locale.group_separator()));
    if exponent > 0 {
        formatted.push(locale.decimal_separator());
        formatted.push_str(&format!(
            "{fraction:0width$}",
            width = usize::from(exponent)
        ));
    }
    formatted.push(' ');
    formatted.push_str(&money.currency);
    Ok(formatted)
}

/// Writes `value` in decimal with `separator` between groups of three digits.
fn group_thousands(value: u128, separator: char) -> String {
    let digits = value.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(separator);
        }
        grouped.push(digit);
    }
    grouped
}

const MONTHS_EN: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

const MONTHS_DE: [&str; 12] = [
    "Januar",
    "Februar",
    "März",
    "April",
    "Mai",
    "Juni",
    "Juli",
    "August",
    "September",
    "Oktober",
    "November",
    "Dezember",
];

/// Formats a point in time in UTC with the locale's word order and month
/// names, to the minute.
fn format_date(at: OffsetDateTime, locale: Locale) -> String {
    let utc = at.to_offset(UtcOffset::UTC);
    let month_index = usize::from(u8::from(utc.month())) - 1;
    let (day, year, hour, minute) = (utc.day(), utc.year(), utc.hour(), utc.minute());

    match locale {
        Locale::En => format!(
            "{} {day}, {year} at {hour:02}:{minute:02} UTC",
            MONTHS_EN[month_index]
        ),
        Locale::De => format!(
            "{day}. {} {year} um {hour:02}:{minute:02} UTC",
            MONTHS_DE[month_index]
        ),
    }
}

#[cfg(test)]
mod tests;
