use time::macros::datetime;
use txnotify_schemas::{Money, TransactionStatus};

use super::*;
use crate::email::test_support::sample_event;

fn renderer() -> Renderer {
    Renderer::new(&RenderConfig::default()).expect("default config is valid")
}

fn money(minor_units: i64, currency: &str) -> Money {
    Money {
        minor_units,
        currency: currency.to_owned(),
    }
}

#[test]
fn format_amount_cases() {
    let cases: &[(i64, &str, Locale, &str)] = &[
        (1999, "EUR", Locale::En, "19.99 EUR"),
        (1999, "EUR", Locale::De, "19,99 EUR"),
        (500, "JPY", Locale::En, "500 JPY"),
        (500, "JPY", Locale::De, "500 JPY"),
        (1234, "BHD", Locale::En, "1.234 BHD"),
        (1234, "BHD", Locale::De, "1,234 BHD"),
        (5, "EUR", Locale::En, "0.05 EUR"),
        (0, "EUR", Locale::En, "0.00 EUR"),
        (-1999, "EUR", Locale::En, "-19.99 EUR"),
        (-1999, "EUR", Locale::De, "-19,99 EUR"),
        (123_456_789, "EUR", Locale::En, "1,234,567.89 EUR"),
        (123_456_789, "EUR", Locale::De, "1.234.567,89 EUR"),
        (100_000, "EUR", Locale::En, "1,000.00 EUR"),
        (1_234_567, "JPY", Locale::En, "1,234,567 JPY"),
        (1_234_567, "JPY", Locale::De, "1.234.567 JPY"),
        (1_234_567, "BHD", Locale::De, "1.234,567 BHD"),
        (
            i64::MIN,
            "EUR",
            Locale::En,
            "-92,233,720,368,547,758.08 EUR",
        ),
    ];

    for (minor_units, currency, locale, expected) in cases {
        let formatted = format_amount(&money(*minor_units, currency), *locale)
            .unwrap_or_else(|error| panic!("{minor_units} {currency}: {error}"));
        assert_eq!(
            formatted, *expected,
            "{minor_units} {currency} in {locale:?}"
        );
    }
}

#[test]
fn format_amount_rejects_unknown_currency() {
    let cases: &[(&str, &str)] = &[
        (
            "XXX",
            "unknown currency code \"XXX\": cannot format the amount",
        ),
        (
            "eur",
            "unknown currency code \"eur\": cannot format the amount",
        ),
        (
            "<b>\r\nBcc: x",
            "unknown currency code \"<b> Bcc…\": cannot format the amount",
        ),
    ];

    for (currency, expected_message) in cases {
        let error = format_amount(&money(100, currency), Locale::En)
            .expect_err("currency must be rejected");
        assert!(matches!(error, RenderError::UnknownCurrency { .. }));
        assert_eq!(
            error.to_string(),
            *expected_message,
            "currency {currency:?}"
        );
    }
}

#[test]
fn format_date_cases() {
    let cases = [
        (
            datetime!(2025-03-07 14:05:09 UTC),
            Locale::En,
            "March 7, 2025 at 14:05 UTC",
        ),
        (
            datetime!(2025-03-07 14:05:09 UTC),
            Locale::De,
            "7. März 2025 um 14:05 UTC",
        ),
        (
            datetime!(2025-12-31 23:30:00 -02:00),
            Locale::En,
            "January 1, 2026 at 01:30 UTC",
        ),
        (
            datetime!(2025-12-31 23:30:00 -02:00),
            Locale::De,
            "1. Januar 2026 um 01:30 UTC",
        ),
        (
            datetime!(2024-10-01 00:00:00 +05:30),
            Locale::En,
            "September 30, 2024 at 18:30 UTC",
        ),
    ];

    for (at, locale, expected) in cases {
        assert_eq!(format_date(at, locale), expected, "{at} in {locale:?}");
    }
}

#[test]
fn locale_resolution_cases() {
    let cases: &[(Option<&str>, Locale)] = &[
        (None, Locale::En),
        (Some(""), Locale::En),
        (Some("en"), Locale::En),
        (Some("en-GB"), Locale::En),
        (Some("de"), Locale::De),
        (Some("de-AT"), Locale::De),
        (Some("de-CH"), Locale::De),
        (Some("DE_de"), Locale::De),
        (Some("fr-FR"), Locale::En),
        (Some("deu"), Locale::En),
        (Some("<script>"), Locale::En),
    ];

    for (tag, expected) in cases {
        assert_eq!(Locale::resolve(*tag), *expected, "locale tag {tag:?}");
    }
}

/// Event status, recipient locale, minor units and merchant, then the
/// expected locale and subject.
type SubjectCase = (
    TransactionStatus,
    Option<&'static str>,
    i64,
    Option<&'static str>,
    &'static str,
    &'static str,
);

#[test]
fn render_subject_per_status_and_locale() {
    let cases: &[SubjectCase] = &[
        (
            TransactionStatus::Completed,
            Some("en"),
            1999,
            Some("ACME Books"),
            "en",
            "Payment of 19.99 EUR to ACME Books completed",
        ),
        (
            TransactionStatus::Failed,
            Some("en-US"),
            1999,
            Some("ACME Books"),
            "en",
            "Payment of 19.99 EUR to ACME Books failed",
        ),
        (
            TransactionStatus::Refunded,
            None,
            1999,
            Some("ACME Books"),
            "en",
            "Refund of 19.99 EUR from ACME Books",
        ),
        (
            TransactionStatus::Refunded,
            Some("fr"),
            -1999,
            Some("ACME Books"),
            "en",
            "Refund of 19.99 EUR from ACME Books",
        ),
        (
            TransactionStatus::Completed,
            Some("en"),
            1999,
            None,
            "en",
            "Payment of 19.99 EUR completed",
        ),
        (
            TransactionStatus::Completed,
            Some("de-AT"),
            1999,
            Some("ACME Books"),
            "de",
            "Zahlung über 19,99 EUR an ACME Books abgeschlossen",
        ),
        (
            TransactionStatus::Failed,
            Some("de"),
            1999,
            Some("ACME Books"),
            "de",
            "Zahlung über 19,99 EUR an ACME Books fehlgeschlagen",
        ),
        (
            TransactionStatus::Refunded,
            Some("de-CH"),
            -1999,
            Some("ACME Books"),
            "de",
            "Erstattung über 19,99 EUR von ACME Books",
        ),
        (
            TransactionStatus::Refunded,
            Some("de"),
            1999,
            None,
            "de",
            "Erstattung über 19,99 EUR",
        ),
    ];
    let renderer = renderer();

    for (status, locale, minor_units, merchant, expected_locale, expected_subject) in cases {
        let mut event = sample_event();
        event.status = *status;
        event.recipient.locale = locale.map(str::to_owned);
        event.amount.minor_units = *minor_units;
        event.merchant = merchant.map(str::to_owned);

        let rendered = renderer.render(&event).expect("render");

        let case = format!("{status:?} {locale:?} {minor_units} {merchant:?}");
        assert_eq!(rendered.subject, *expected_subject, "{case}");
        assert_eq!(rendered.locale, *expected_locale, "{case}");
    }
}

#[test]
fn render_text_body_exact() {
    let rendered = renderer().render(&sample_event()).expect("render");

    assert_eq!(
        rendered.text,
        "Hello Alice,\n\
         \n\
         Your payment of 19.99 EUR to ACME Books was completed on March 7, 2025 at 14:05 UTC.\n\
         \n\
         Description: Order 77\n\
         \n\
         Transaction reference: tx-1001\n\
         \n\
         txnotify"
    );
}

#[test]
fn render_text_body_without_optional_fields() {
    let mut event = sample_event();
    event.recipient.display_name = None;
    event.merchant = None;
    event.description = Some("  \r\n ".to_owned());
    event.recipient.locale = Some("de".to_owned());

    let rendered = renderer().render(&event).expect("render");

    assert_eq!(
        rendered.text,
        "Guten Tag,\n\
         \n\
         Ihre Zahlung über 19,99 EUR wurde am 7. März 2025 um 14:05 UTC abgeschlossen.\n\
         \n\
         Transaktionsreferenz: tx-1001\n\
         \n\
         txnotify"
    );
}

#[test]
fn render_html_body_exact() {
    let rendered = renderer().render(&sample_event()).expect("render");

    assert_eq!(
        rendered.html,
        "<!DOCTYPE html>\n\
         <html lang=\"en\">\n\
         <head>\n\
         <meta charset=\"utf-8\">\n\
         <title>Payment completed</title>\n\
         </head>\n\
         <body style=\"font-family: sans-serif; color: #222222;\">\n\
         <p>Hello Alice,</p>\n\
         <p>Your payment of <strong>19.99 EUR</strong> to ACME Books was completed on March 7, 2025 at 14:05 UTC.</p>\n\
         <p>Description: Order 77</p>\n\
         <p>Transaction reference: tx-1001</p>\n\
         <p style=\"color: #777777; font-size: 12px;\">You are receiving this email because of a transaction on your txnotify account.</p>\n\
         </body>\n\
         </html>"
    );
}

/// One hostile value placed into one event field.
struct HostileCase {
    name: &'static str,
    display_name: Option<String>,
    merchant: Option<String>,
    description: Option<String>,
    expected_subject: String,
    expected_html_fragment: String,
    expected_text_fragment: String,
}

fn hostile_cases() -> Vec<HostileCase> {
    vec![
        HostileCase {
            name: "script tag in display name",
            display_name: Some("<script>alert(1)</script>".to_owned()),
            merchant: None,
            description: None,
            expected_subject: "Payment of 19.99 EUR completed".to_owned(),
            expected_html_fragment: "<p>Hello &lt;script&gt;alert(1)&lt;&#x2f;script&gt;,</p>"
                .to_owned(),
            expected_text_fragment: "Hello <script>alert(1)</script>,\n".to_owned(),
        },
        HostileCase {
            name: "attribute breakout in merchant",
            display_name: None,
            merchant: Some("\"><img src=x onerror=alert(1)>".to_owned()),
            description: None,
            expected_subject: "Payment of 19.99 EUR to \"><img src=x onerror=alert(1)> completed"
                .to_owned(),
            expected_html_fragment:
                " to &quot;&gt;&lt;img src=x onerror=alert(1)&gt; was completed".to_owned(),
            expected_text_fragment: " to \"><img src=x onerror=alert(1)> was completed".to_owned(),
        },
        HostileCase {
            name: "quote and ampersand in display name",
            display_name: Some("O'Brien & Sons".to_owned()),
            merchant: None,
            description: None,
            expected_subject: "Payment of 19.99 EUR completed".to_owned(),
            expected_html_fragment: "<p>Hello O&#x27;Brien &amp; Sons,</p>".to_owned(),
            expected_text_fragment: "Hello O'Brien & Sons,\n".to_owned(),
        },
        HostileCase {
            name: "header injection in merchant",
            display_name: None,
            merchant: Some("ACME\r\nBcc: evil@example.net\r\n\r\nbody".to_owned()),
            description: None,
            expected_subject: "Payment of 19.99 EUR to ACME Bcc: evil@example.net body completed"
                .to_owned(),
            expected_html_fragment: " to ACME Bcc: evil@example.net body was completed".to_owned(),
            expected_text_fragment: " to ACME Bcc: evil@example.net body was completed".to_owned(),
        },
        HostileCase {
            name: "bidi override in merchant",
            display_name: None,
            merchant: Some("\u{202E}skooB EMCA\u{202C}".to_owned()),
            description: None,
            expected_subject: "Payment of 19.99 EUR to skooB EMCA completed".to_owned(),
            expected_html_fragment: " to skooB EMCA was completed".to_owned(),
            expected_text_fragment: " to skooB EMCA was completed".to_owned(),
        },
        HostileCase {
            name: "bidi isolates and newlines in description",
            display_name: None,
            merchant: None,
            description: Some("Refund\u{2067}\n\nfor\u{2069} order".to_owned()),
            expected_subject: "Payment of 19.99 EUR completed".to_owned(),
            expected_html_fragment: "<p>Description: Refund for order</p>".to_owned(),
            expected_text_fragment: "\nDescription: Refund for order\n".to_owned(),
        },
        HostileCase {
            name: "template syntax in description",
            display_name: None,
            merchant: None,
            description: Some("{{ 7 * 7 }} {% if true %}x{% endif %}".to_owned()),
            expected_subject: "Payment of 19.99 EUR completed".to_owned(),
            expected_html_fragment: "<p>Description: {{ 7 * 7 }} {% if true %}x{% endif %}</p>"
                .to_owned(),
            expected_text_fragment: "Description: {{ 7 * 7 }} {% if true %}x{% endif %}\n"
                .to_owned(),
        },
        HostileCase {
            name: "very long merchant",
            display_name: None,
            merchant: Some("M".repeat(100_000)),
            description: None,
            expected_subject: format!("Payment of 19.99 EUR to {}… completed", "M".repeat(39)),
            expected_html_fragment: format!(" to {}… was completed", "M".repeat(199)),
            expected_text_fragment: format!(" to {}… was completed", "M".repeat(199)),
        },
        HostileCase {
            name: "very long display name with markup",
            display_name: Some("<".repeat(500)),
            merchant: None,
            description: None,
            expected_subject: "Payment of 19.99 EUR completed".to_owned(),
            expected_html_fragment: format!("<p>Hello {}…,</p>", "&lt;".repeat(199)),
            expected_text_fragment: format!("Hello {}…,\n", "<".repeat(199)),
        },
    ]
}

#[test]
fn render_escapes_hostile_fields() {
    let renderer = renderer();

    for case in hostile_cases() {
        let mut event = sample_event();
        event.recipient.display_name = case.display_name.clone();
        event.merchant = case.merchant.clone();
        event.description = case.description.clone();

        let rendered = renderer.render(&event).expect(case.name);

        assert_eq!(
            rendered.subject, case.expected_subject,
            "{}: subject",
            case.name
        );
        assert!(
            rendered.html.contains(&case.expected_html_fragment),
            "{}: html lacks {:?}:\n{}",
            case.name,
            case.expected_html_fragment,
            rendered.html
        );
        assert!(
            rendered.text.contains(&case.expected_text_fragment),
            "{}: text lacks {:?}:\n{}",
            case.name,
            case.expected_text_fragment,
            rendered.text
        );
        assert!(
            !rendered.html.contains("<script"),
            "{}: html has <script",
            case.name
        );
        assert!(
            !rendered.html.contains("<img"),
            "{}: html has <img",
            case.name
        );
        assert!(
            !rendered.subject.chars().any(char::is_control),
            "{}: subject has a control character",
            case.name
        );
    }
}

#[test]
fn render_caps_subject_length() {
    let config = RenderConfig {
        subject_max_chars: 30,
        subject_field_max_chars: 30,
        ..RenderConfig::default()
    };
    let renderer = Renderer::new(&config).expect("valid config");
    let mut event = sample_event();
    event.merchant = Some("A very long merchant name indeed".to_owned());

    let rendered = renderer.render(&event).expect("render");

    assert_eq!(rendered.subject, "Payment of 19.99 EUR to A ver…");
    assert_eq!(rendered.subject.chars().count(), 30);
}

#[test]
fn render_rejects_unknown_currency() {
    let mut event = sample_event();
    event.amount.currency = "ZZZ".to_owned();

    let error = renderer().render(&event).expect_err("unknown currency");

    assert!(matches!(error, RenderError::UnknownCurrency { ref code } if code == "ZZZ"));
}

#[test]
fn render_config_validate_cases() {
    let cases: &[(RenderConfig, Option<&str>)] = &[
        (RenderConfig::default(), None),
        (
            RenderConfig {
                brand_name: " \r\n".to_owned(),
                ..RenderConfig::default()
            },
            Some("brand_name"),
        ),
        (
            RenderConfig {
                subject_max_chars: 19,
                ..RenderConfig::default()
            },
            Some("subject_max_chars"),
        ),
        (
            RenderConfig {
                subject_field_max_chars: 1,
                ..RenderConfig::default()
            },
            Some("subject_field_max_chars"),
        ),
        (
            RenderConfig {
                subject_max_chars: 50,
                subject_field_max_chars: 51,
                ..RenderConfig::default()
            },
            Some("subject_field_max_chars"),
        ),
        (
            RenderConfig {
                body_field_max_chars: 1,
                ..RenderConfig::default()
            },
            Some("body_field_max_chars"),
        ),
    ];

    for (config, expected_field) in cases {
        let result = config.validate();
        match (result, expected_field) {
            (Ok(()), None) => {}
            (Err(RenderError::InvalidConfig { field, .. }), Some(expected)) => {
                assert_eq!(field, *expected, "{config:?}");
            }
            (result, expected) => panic!("{config:?}: got {result:?}, expected {expected:?}"),
        }
    }
}

#[test]
fn render_config_rejects_unknown_fields() {
    let parsed: Result<RenderConfig, _> =
        toml::from_str("brand_name = \"Shop\"\nsubjet_max_chars = 10\n");

    let error = parsed.expect_err("unknown field must be rejected");

    assert!(error.to_string().contains("subjet_max_chars"), "{error}");
}

#[test]
fn render_config_defaults_fill_missing_fields() {
    let parsed: RenderConfig = toml::from_str("brand_name = \"Shop\"\n").expect("parse");

    assert_eq!(parsed.brand_name, "Shop");
    assert_eq!(
        parsed.subject_max_chars,
        RenderConfig::default().subject_max_chars
    );
}
