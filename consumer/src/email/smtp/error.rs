//! Send failures and their classification as transient, permanent or
//! unknown outcome.

use std::fmt;
use std::time::Duration;

use lettre::transport::smtp::Error as LettreSmtpError;

/// Step of an SMTP session, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Opening the TCP connection.
    Connect,
    /// Implicit TLS handshake right after the TCP connect.
    TlsHandshake,
    /// Reading the server greeting and sending EHLO.
    Greeting,
    /// STARTTLS command, TLS handshake and the second EHLO.
    Starttls,
    /// SMTP AUTH.
    Auth,
    /// Checking an idle pooled connection with NOOP.
    Noop,
    /// MAIL FROM command.
    Mail,
    /// RCPT TO command.
    Rcpt,
    /// DATA command, up to the server's 354 reply.
    Data,
    /// Transmitting the message content and reading the final reply.
    Content,
}

impl Phase {
    /// Returns the lowercase name used in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::TlsHandshake => "tls handshake",
            Phase::Greeting => "greeting",
            Phase::Starttls => "starttls",
            Phase::Auth => "auth",
            Phase::Noop => "noop",
            Phase::Mail => "mail",
            Phase::Rcpt => "rcpt",
            Phase::Data => "data",
            Phase::Content => "message content",
        }
    }

    /// Returns `true` for the phases that open a session, before any command
    /// about a particular message.
    pub fn is_session_setup(self) -> bool {
        matches!(
            self,
            Phase::Connect
                | Phase::TlsHandshake
                | Phase::Greeting
                | Phase::Starttls
                | Phase::Auth
                | Phase::Noop
        )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Meaning of a failed send for the event, which decides what the pipeline
/// does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SendFailureClass {
    /// The message was not accepted and trying again later may succeed.
    Transient,
    /// The message was rejected and trying again will fail the same way.
    Permanent,
    /// The message content reached the server, or may have, but no final
    /// reply arrived. The server may have accepted it, so a resend can
    /// deliver it twice.
    UnknownOutcome,
}

/// Failure to send one message.
///
/// Messages are lowercase and contain no email addresses and no text from
/// server replies, which can contain addresses. Use [`SendError::class`] to
/// decide what to do.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The server rejected a command with a 4xx or 5xx reply.
    #[error("smtp {phase} rejected with {code}{}", enhanced_suffix(.enhanced_code))]
    Rejected {
        /// Phase whose command was rejected.
        phase: Phase,
        /// Three-digit SMTP reply code.
        code: u16,
        /// Enhanced status code (RFC 3463) from the reply, such as `5.1.1`.
        enhanced_code: Option<String>,
    },
    /// A phase did not finish within its timeout.
    #[error("smtp {phase} timed out after {} ms", .timeout.as_millis())]
    Timeout {
        /// Phase that timed out.
        phase: Phase,
        /// Timeout that ran out.
        timeout: Duration,
    },
    /// The connection failed, closed or returned something that is not an SMTP
    /// reply.
    #[error("smtp connection failed during {phase}")]
    Connection {
        /// Phase during which the connection failed.
        phase: Phase,
        /// Error reported by lettre or the socket.
        #[source]
        source: ConnectionFailure,
    },
    /// The TLS handshake or its configuration failed.
    #[error("smtp tls failed during {phase}")]
    Tls {
        /// Phase during which TLS failed.
        phase: Phase,
        /// Error reported by rustls or lettre.
        #[source]
        source: ConnectionFailure,
    },
    /// The server does not offer an extension the session needs, such as
    /// STARTTLS or an AUTH mechanism lettre supports.
    #[error("smtp server does not support {extension}")]
    Unsupported {
        /// Name of the missing extension.
        extension: &'static str,
    },
    /// The envelope has no recipient, or one the server cannot accept in this
    /// form (a non-ASCII address without SMTPUTF8 support).
    #[error("recipient email address is invalid for this server")]
    InvalidRecipient,
}

/// Source of a [`SendError::Connection`] or [`SendError::Tls`] error.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionFailure {
    /// Socket error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// lettre error that carries no SMTP reply code.
    #[error(transparent)]
    Smtp(#[from] LettreSmtpError),
    /// The server closed the connection in the middle of a reply or sent
    /// something that is not an SMTP reply. lettre's error for this quotes
    /// the received line, which may contain an address, so it is not kept.
    #[error("the server closed the connection or sent a malformed reply")]
    MalformedReply,
}

fn enhanced_suffix(enhanced_code: &Option<String>) -> String {
    match enhanced_code {
        Some(code) => format!(" {code}"),
        None => String::new(),
    }
}

impl SendError {
    /// Classifies the failure. This is the only place that decides between
    /// transient, permanent and unknown outcome.
    pub fn class(&self) -> SendFailureClass {
        use SendFailureClass::{Permanent, Transient, UnknownOutcome};

        match self {
            // RFC 5321 section 4.2.1: 4yz is a transient negative completion.
            SendError::Rejected {
                code: 400..=499, ..
            } => Transient,
            // A 5xx during session setup (greeting, EHLO, STARTTLS, AUTH)
            // is about the server or our credentials, not this message.
            // Treating it as transient lets the pipeline's circuit breaker
            // pause instead of dead-lettering every event.
            SendError::Rejected {
                code: 500..=599,
                phase,
                ..
            } if phase.is_session_setup() => Transient,
            // 5xx at MAIL, RCPT, DATA or after the content is a permanent
            // rejection of this message.
            SendError::Rejected {
                code: 500..=599, ..
            } => Permanent,
            // lettre only returns 4xx and 5xx as errors, so another code is a
            // malformed reply; nothing was accepted.
            SendError::Rejected { .. } => Transient,
            // Once content transmission began, the server may have received
            // the terminating dot and accepted the message.
            SendError::Timeout {
                phase: Phase::Content,
                ..
            }
            | SendError::Connection {
                phase: Phase::Content,
                ..
            }
            | SendError::Tls {
                phase: Phase::Content,
                ..
            } => UnknownOutcome,
            SendError::Timeout { .. } | SendError::Connection { .. } | SendError::Tls { .. } => {
                Transient
            }
            SendError::Unsupported { .. } => Transient,
            SendError::InvalidRecipient => Permanent,
        }
    }

    /// Returns true when the failure concerns the server rather than this message: it was
    /// unreachable, timed out or failed before the message content, or it refused the
    /// session (including 421 at any command). A 4xx or 5xx reply to RCPT or DATA is about
    /// one recipient or message, so it does not count. The circuit breaker counts only these.
    pub fn is_endpoint_failure(&self) -> bool {
        match self {
            SendError::Rejected { code: 421, .. } => true,
            SendError::Rejected { phase, .. } => phase.is_session_setup(),
            SendError::Timeout { phase, .. }
            | SendError::Connection { phase, .. }
            | SendError::Tls { phase, .. } => *phase != Phase::Content,
            SendError::Unsupported { .. } => true,
            SendError::InvalidRecipient => false,
        }
    }

    /// Returns the SMTP reply code, if the server rejected a command.
    pub fn reply_code(&self) -> Option<u16> {
        match self {
            SendError::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Converts a lettre error from `phase` into a [`SendError`], keeping the
    /// reply code but none of the reply text.
    pub(crate) fn from_lettre(phase: Phase, error: LettreSmtpError) -> Self {
        if let Some(code) = error.status() {
            let enhanced_code = std::error::Error::source(&error)
                .map(ToString::to_string)
                .and_then(|text| parse_enhanced_code(&text));
            return SendError::Rejected {
                phase,
                code: u16::from(code),
                enhanced_code,
            };
        }
        if error.is_response() {
            return SendError::Connection {
                phase,
                source: ConnectionFailure::MalformedReply,
            };
        }
        if error.is_tls() {
            return SendError::Tls {
                phase,
                source: error.into(),
            };
        }
        SendError::Connection {
            phase,
            source: error.into(),
        }
    }
}

/// Extracts an RFC 3463 enhanced status code (`class.subject.detail`, class
/// 2, 4 or 5, subject up to 3 digits, detail up to 3 digits) from the start of
/// a reply text.
pub(crate) fn parse_enhanced_code(reply_text: &str) -> Option<String> {
    let word = reply_text.split_whitespace().next()?;
    let mut parts = word.split('.');
    let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }

    let is_number = |part: &str, max_len: usize| {
        !part.is_empty() && part.len() <= max_len && part.bytes().all(|b| b.is_ascii_digit())
    };
    let valid = matches!(class, "2" | "4" | "5") && is_number(subject, 3) && is_number(detail, 3);
    valid.then(|| word.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use SendFailureClass::{Permanent, Transient, UnknownOutcome};

    fn rejected(phase: Phase, code: u16) -> SendError {
        SendError::Rejected {
            phase,
            code,
            enhanced_code: None,
        }
    }

    fn timeout(phase: Phase) -> SendError {
        SendError::Timeout {
            phase,
            timeout: Duration::from_millis(1500),
        }
    }

    fn connection(phase: Phase, kind: std::io::ErrorKind) -> SendError {
        SendError::Connection {
            phase,
            source: std::io::Error::from(kind).into(),
        }
    }

    #[test]
    fn class_cases() {
        use std::io::ErrorKind::{ConnectionRefused, ConnectionReset, UnexpectedEof};

        let cases: Vec<(SendError, SendFailureClass)> = vec![
            (rejected(Phase::Mail, 451), Transient),
            (rejected(Phase::Rcpt, 450), Transient),
            (rejected(Phase::Data, 452), Transient),
            (rejected(Phase::Content, 451), Transient),
            (rejected(Phase::Greeting, 421), Transient),
            (rejected(Phase::Mail, 550), Permanent),
            (rejected(Phase::Rcpt, 550), Permanent),
            (rejected(Phase::Rcpt, 553), Permanent),
            (rejected(Phase::Data, 554), Permanent),
            (rejected(Phase::Content, 552), Permanent),
            (rejected(Phase::Greeting, 554), Transient),
            (rejected(Phase::Auth, 535), Transient),
            (rejected(Phase::Starttls, 502), Transient),
            (timeout(Phase::Connect), Transient),
            (timeout(Phase::Greeting), Transient),
            (timeout(Phase::Auth), Transient),
            (timeout(Phase::Mail), Transient),
            (timeout(Phase::Rcpt), Transient),
            (timeout(Phase::Data), Transient),
            (timeout(Phase::Content), UnknownOutcome),
            (connection(Phase::Connect, ConnectionRefused), Transient),
            (connection(Phase::Rcpt, ConnectionReset), Transient),
            (connection(Phase::Data, UnexpectedEof), Transient),
            (connection(Phase::Content, ConnectionReset), UnknownOutcome),
            (connection(Phase::Content, UnexpectedEof), UnknownOutcome),
            (
                SendError::Unsupported {
                    extension: "STARTTLS",
                },
                Transient,
            ),
            (SendError::InvalidRecipient, Permanent),
        ];

        for (error, expected) in cases {
            assert_eq!(error.class(), expected, "{error}");
        }
    }

    #[test]
    fn message_cases() {
        let cases: Vec<(SendError, &str)> = vec![
            (
                SendError::Rejected {
                    phase: Phase::Rcpt,
                    code: 550,
                    enhanced_code: Some("5.1.1".to_owned()),
                },
                "smtp rcpt rejected with 550 5.1.1",
            ),
            (rejected(Phase::Mail, 451), "smtp mail rejected with 451"),
            (
                timeout(Phase::Content),
                "smtp message content timed out after 1500 ms",
            ),
            (
                connection(Phase::Connect, std::io::ErrorKind::ConnectionRefused),
                "smtp connection failed during connect",
            ),
            (
                SendError::InvalidRecipient,
                "recipient email address is invalid for this server",
            ),
        ];

        for (error, expected) in cases {
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn parse_enhanced_code_cases() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "5.1.1 <bob@example.com>: Recipient address rejected",
                Some("5.1.1"),
            ),
            ("4.7.1 Try again later", Some("4.7.1")),
            ("2.0.0 Ok: queued as ABC", Some("2.0.0")),
            ("5.7.123 policy", Some("5.7.123")),
            ("Mailbox unavailable", None),
            ("3.1.1 wrong class", None),
            ("5.1 too short", None),
            ("5.1.1.1 too long", None),
            ("5.a.1 letters", None),
            ("", None),
        ];

        for (text, expected) in cases {
            assert_eq!(parse_enhanced_code(text).as_deref(), *expected, "{text:?}");
        }
    }
}
