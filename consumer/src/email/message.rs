//! Assembly of a rendered email into a MIME message.
//!
//! Guarantees:
//! - The message is `multipart/alternative` with the plain-text part first and
//!   the HTML part second, so clients that cannot show HTML show the text.
//! - `Message-ID` is `<{event_id}@{message_id_domain}>`. A resend of the same
//!   event carries the same id, so receivers and operators can recognise it.
//!   `X-Txnotify-Event-Id` carries the event id on its own.
//! - Header values are built by lettre, which encodes and folds them. The
//!   display name is also cleaned of control characters first, so no event
//!   field can add or end a header line.
//! - An address lettre cannot parse yields [`BuildError::InvalidRecipient`],
//!   which never contains the address.

use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::{Address, Message};
use txnotify_schemas::TransactionEvent;

use super::render::RenderedEmail;
use super::text::clean_line;

/// Maximum length of the display name in the `To` header, in characters.
const MAX_DISPLAY_NAME_CHARS: usize = 64;

/// Maximum length of a domain name under RFC 1035, in octets.
const MAX_DOMAIN_LEN: usize = 253;

/// Failure to assemble a message. Every variant is permanent for the event:
/// building the same event again fails the same way.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The recipient's email address is not a valid address.
    #[error("recipient email address is invalid")]
    InvalidRecipient,
    /// The domain for the `Message-ID` is not a valid domain name.
    #[error("message id domain is invalid: {reason}")]
    InvalidMessageIdDomain {
        /// Description of the problem with the domain.
        reason: &'static str,
    },
    /// lettre rejected the message.
    #[error("failed to build the email message")]
    Message {
        /// Error reported by lettre.
        #[source]
        source: lettre::error::Error,
    },
}

/// `X-Txnotify-Event-Id` header: the event id the message was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventIdHeader(pub uuid::Uuid);

impl Header for EventIdHeader {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("X-Txnotify-Event-Id")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.trim().parse()?))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.hyphenated().to_string())
    }
}

/// Builds the email for `event` from its rendered parts.
///
/// `from` is the sender mailbox and `message_id_domain` the domain part of the
/// `Message-ID`. The `Date` header is the time of building.
pub fn build_message(
    event: &TransactionEvent,
    rendered: &RenderedEmail,
    from: &Mailbox,
    message_id_domain: &str,
) -> Result<Message, BuildError> {
    validate_message_id_domain(message_id_domain)
        .map_err(|reason| BuildError::InvalidMessageIdDomain { reason })?;

    let address: Address = event
        .recipient
        .email
        .parse()
        .map_err(|_| BuildError::InvalidRecipient)?;
    let display_name = event
        .recipient
        .display_name
        .as_deref()
        .map(|name| clean_line(name, MAX_DISPLAY_NAME_CHARS))
        .filter(|name| !name.is_empty());
    let to = Mailbox::new(display_name, address);

    let message_id = format!("<{}@{}>", event.event_id.hyphenated(), message_id_domain);
    // The renderer already cleans the subject; cleaning again keeps this
    // function safe for subjects from any other source.
    let subject = clean_line(&rendered.subject, rendered.subject.chars().count());

    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject)
        .message_id(Some(message_id))
        .header(EventIdHeader(event.event_id))
        .date_now()
        .multipart(MultiPart::alternative_plain_html(
            rendered.text.clone(),
            rendered.html.clone(),
        ))
        .map_err(|source| BuildError::Message { source })
}

/// Checks that `domain` is a plain ASCII domain name usable on the right of
/// the `@` in a `Message-ID`.
pub(crate) fn validate_message_id_domain(domain: &str) -> Result<(), &'static str> {
    if domain.is_empty() {
        return Err("it is empty");
    }
    if domain.len() > MAX_DOMAIN_LEN {
        return Err("it is longer than 253 characters");
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    if !domain.chars().all(allowed) {
        return Err("only ASCII letters, digits, '-' and '.' are allowed");
    }
    if domain.split('.').any(str::is_empty) {
        return Err("it has an empty label");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::email::render::{RenderConfig, Renderer};
    use crate::email::test_support::sample_event;

    fn sender() -> Mailbox {
        "Payments <payments@shop.example>".parse().expect("mailbox")
    }

    fn build(event: &TransactionEvent) -> Result<Message, BuildError> {
        let renderer = Renderer::new(&RenderConfig::default()).expect("renderer");
        let rendered = renderer.render(event).expect("render");
        build_message(event, &rendered, &sender(), "mail.shop.example")
    }

    /// Returns the header section of a formatted message, one entry per line.
    fn header_lines(formatted: &[u8]) -> Vec<String> {
        let text = String::from_utf8(formatted.to_vec()).expect("formatted message is UTF-8");
        let (headers, _body) = text.split_once("\r\n\r\n").expect("header section ends");
        headers.split("\r\n").map(str::to_owned).collect()
    }

    /// Returns the names of the header fields, skipping folded continuation
    /// lines.
    fn header_names(formatted: &[u8]) -> Vec<String> {
        header_lines(formatted)
            .iter()
            .filter(|line| !line.starts_with([' ', '\t']))
            .map(|line| {
                line.split_once(':')
                    .expect("header line has a colon")
                    .0
                    .to_owned()
            })
            .collect()
    }

    const EXPECTED_HEADER_NAMES: [&str; 8] = [
        "From",
        "To",
        "Subject",
        "Message-ID",
        "X-Txnotify-Event-Id",
        "Date",
        "MIME-Version",
        "Content-Type",
    ];

    #[test]
    fn build_message_sets_headers() {
        let event = sample_event();

        let message = build(&event).expect("build");
        let formatted = String::from_utf8(message.formatted()).expect("utf-8");

        let lines = header_lines(formatted.as_bytes());
        let expected_id = "Message-ID: <01234567-89ab-cdef-0123-456789abcdef@mail.shop.example>";
        assert!(lines.iter().any(|line| line == expected_id), "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|line| line == "X-Txnotify-Event-Id: 01234567-89ab-cdef-0123-456789abcdef"),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|line| line == "To: Alice <alice@example.com>"),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|line| line == "From: Payments <payments@shop.example>"),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|line| line == "Subject: Payment of 19.99 EUR to ACME Books completed"),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|line| line.starts_with("Content-Type: multipart/alternative;")),
            "{lines:#?}"
        );
        let mut names = header_names(formatted.as_bytes());
        names.sort();
        let mut expected: Vec<String> = EXPECTED_HEADER_NAMES
            .iter()
            .map(|n| n.to_string())
            .collect();
        expected.sort();
        assert_eq!(names, expected);
    }

    #[test]
    fn build_message_orders_text_before_html() {
        let message = build(&sample_event()).expect("build");
        let formatted = String::from_utf8(message.formatted()).expect("utf-8");

        let text_at = formatted
            .find("Content-Type: text/plain")
            .expect("text part");
        let html_at = formatted
            .find("Content-Type: text/html")
            .expect("html part");

        assert!(text_at < html_at);
    }

    #[test]
    fn build_message_envelope_has_recipient() {
        let message = build(&sample_event()).expect("build");

        let envelope = message.envelope();

        let to: Vec<String> = envelope.to().iter().map(ToString::to_string).collect();
        assert_eq!(to, ["alice@example.com"]);
        assert_eq!(
            envelope.from().map(ToString::to_string).as_deref(),
            Some("payments@shop.example")
        );
    }

    #[test]
    fn build_message_message_id_is_stable() {
        let event = sample_event();

        let first = build(&event).expect("first build");
        let second = build(&event).expect("second build");

        let id = |message: &Message| {
            header_lines(&message.formatted())
                .into_iter()
                .find(|line| line.starts_with("Message-ID:"))
                .expect("Message-ID header")
        };
        assert_eq!(id(&first), id(&second));
    }

    #[test]
    fn build_message_blocks_header_injection() {
        let hostile_names = [
            "Eve\r\nBcc: evil@x",
            "Eve\nBcc: evil@x",
            "Eve\rBcc: evil@x",
            "Eve\r\n\r\n<html>body</html>",
            "Eve\u{85}Bcc: evil@x",
            "Eve\u{2028}Bcc: evil@x",
            "\"Eve\" <evil@x>, Bcc: evil@x",
        ];

        for name in hostile_names {
            let mut event = sample_event();
            event.recipient.display_name = Some(name.to_owned());
            event.merchant = Some(name.to_owned());

            let message = build(&event).expect(name);
            let formatted = message.formatted();

            let mut names = header_names(&formatted);
            names.sort();
            let mut expected: Vec<String> = EXPECTED_HEADER_NAMES
                .iter()
                .map(|n| n.to_string())
                .collect();
            expected.sort();
            assert_eq!(names, expected, "display name {name:?}");
            let lowercase = String::from_utf8_lossy(&formatted).to_lowercase();
            assert!(!lowercase.contains("\nbcc:"), "display name {name:?}");
            assert!(!lowercase.contains("\rbcc:"), "display name {name:?}");
            let recipients: Vec<String> = message
                .envelope()
                .to()
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(recipients, ["alice@example.com"], "display name {name:?}");
        }
    }

    #[test]
    fn build_message_rejects_invalid_recipient() {
        let invalid = [
            "",
            "not-an-address",
            "alice@",
            "@example.com",
            "alice@example.com\r\nBcc: evil@x",
            "alice@example.com, bob@example.com",
            "Alice <alice@example.com>",
        ];

        for address in invalid {
            let mut event = sample_event();
            event.recipient.email = address.to_owned();

            let error = build(&event).expect_err(address);

            assert!(
                matches!(error, BuildError::InvalidRecipient),
                "{address:?}: {error:?}"
            );
            assert_eq!(error.to_string(), "recipient email address is invalid");
        }
    }

    #[test]
    fn validate_message_id_domain_cases() {
        let cases: &[(&str, bool)] = &[
            ("mail.shop.example", true),
            ("localhost", true),
            ("a-b.example", true),
            ("", false),
            ("shop..example", false),
            (".shop.example", false),
            ("shop.example.", false),
            ("shop example", false),
            ("shop>example", false),
            ("shop@example", false),
            ("bücher.example", false),
        ];

        for (domain, valid) in cases {
            assert_eq!(
                validate_message_id_domain(domain).is_ok(),
                *valid,
                "domain {domain:?}"
            );
        }
        assert!(validate_message_id_domain(&"a".repeat(254)).is_err());
    }
}
