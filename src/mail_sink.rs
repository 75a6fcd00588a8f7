//! Local SMTP sink for the demo and for tests.
//!
//! [`MailSink`] runs a mailin-embedded SMTP server on `127.0.0.1` with an
//! ephemeral port, in background threads, and records every accepted message
//! in memory. Faults can be set per recipient: a temporary 451 rejection for
//! the first N RCPT attempts, or a permanent 550 rejection.
//!
//! The sink speaks plain-text SMTP only (no STARTTLS, no AUTH) and keeps
//! every message in memory, so it suits short demos and tests, not load.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mailin_embedded::{response, Handler, Response, Server};

/// Fault injected for one recipient, decided at the RCPT command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFault {
    /// Reject the first `n` RCPT attempts with 451, then accept.
    TransientFirst(u32),
    /// Reject every RCPT attempt with 550.
    AlwaysReject,
}

/// A message the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkMessage {
    /// Envelope recipients that were accepted.
    pub recipients: Vec<String>,
    /// `Message-ID` header value, if present.
    pub message_id: Option<String>,
    /// `Subject` header value with RFC 2047 encoded words decoded, if present.
    pub subject: Option<String>,
    /// Raw message content as received after DATA.
    pub content: Vec<u8>,
}

/// State shared by all sessions of one sink.
#[derive(Debug, Default)]
struct SinkState {
    faults: HashMap<String, SinkFault>,
    rcpt_attempts: HashMap<String, u32>,
    messages: Vec<SinkMessage>,
}

/// A running SMTP sink. See the module documentation.
#[derive(Debug)]
pub struct MailSink {
    addr: SocketAddr,
    state: Arc<Mutex<SinkState>>,
    stopped: Arc<AtomicBool>,
}

impl MailSink {
    /// Starts a sink on `127.0.0.1` with an ephemeral port. `faults` maps
    /// recipient addresses (compared case-insensitively) to injected faults.
    pub fn start(faults: Vec<(String, SinkFault)>) -> io::Result<MailSink> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(SinkState {
            faults: faults
                .into_iter()
                .map(|(recipient, fault)| (recipient.to_ascii_lowercase(), fault))
                .collect(),
            ..SinkState::default()
        }));
        let stopped = Arc::new(AtomicBool::new(false));

        let handler = SinkHandler {
            state: Arc::clone(&state),
            stopped: Arc::clone(&stopped),
            recipients: Vec::new(),
            content: Vec::new(),
        };
        let mut server = Server::new(handler);
        server
            .with_name("txnotify-sink")
            .with_tcp_listener(listener);

        std::thread::Builder::new()
            .name("mail-sink".to_owned())
            .spawn(move || {
                if let Err(error) = server.serve() {
                    tracing::error!(error = %error, "Mail sink stopped with an error.");
                }
            })?;
        tracing::info!(%addr, "Mail sink started.");

        Ok(MailSink {
            addr,
            state,
            stopped,
        })
    }

    /// Returns the address the sink listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns a copy of the accepted messages, oldest first.
    pub fn received(&self) -> Vec<SinkMessage> {
        lock(&self.state).messages.clone()
    }

    /// Stops accepting mail: the sink rejects every later greeting, MAIL or
    /// end of DATA with 421 and closes the session.
    ///
    /// NOTE: mailin-embedded 0.8 offers no way to end its accept loop, so
    /// the listening socket and its thread stay until the process exits.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        tracing::info!(addr = %self.addr, "Mail sink now rejects new mail.");
    }
}

fn lock(state: &Mutex<SinkState>) -> MutexGuard<'_, SinkState> {
    // The state stays consistent even if a session thread panicked while
    // holding the lock, because each update is a single insert or push.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Per-session mailin handler; mailin-embedded clones it for each connection.
#[derive(Clone)]
struct SinkHandler {
    state: Arc<Mutex<SinkState>>,
    stopped: Arc<AtomicBool>,
    recipients: Vec<String>,
    content: Vec<u8>,
}

impl SinkHandler {
    fn closing(&self) -> Option<Response> {
        self.stopped
            .load(Ordering::SeqCst)
            .then_some(response::NO_SERVICE)
    }
}

impl Handler for SinkHandler {
    fn helo(&mut self, _ip: IpAddr, _domain: &str) -> Response {
        self.closing().unwrap_or(response::OK)
    }

    fn mail(&mut self, _ip: IpAddr, _domain: &str, _from: &str) -> Response {
        self.closing().unwrap_or(response::OK)
    }

    fn rcpt(&mut self, to: &str) -> Response {
        let recipient = to.to_ascii_lowercase();
        let mut state = lock(&self.state);
        let attempts = state.rcpt_attempts.entry(recipient.clone()).or_default();
        *attempts += 1;
        let attempt = *attempts;

        match state.faults.get(&recipient) {
            Some(SinkFault::TransientFirst(n)) if attempt <= *n => Response::custom(
                451,
                "4.3.0 Temporary failure injected by the sink".to_owned(),
            ),
            Some(SinkFault::AlwaysReject) => {
                Response::custom(550, "5.1.1 Mailbox unavailable".to_owned())
            }
            Some(SinkFault::TransientFirst(_)) | None => response::OK,
        }
    }

    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.recipients = to.to_vec();
        self.content.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> io::Result<()> {
        self.content.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        if let Some(closing) = self.closing() {
            return closing;
        }
        let content = std::mem::take(&mut self.content);
        let message = SinkMessage {
            recipients: std::mem::take(&mut self.recipients),
            message_id: header_value(&content, "Message-ID"),
            subject: header_value(&content, "Subject")
                .map(|subject| decode_encoded_words(&subject)),
            content,
        };
        lock(&self.state).messages.push(message);
        response::OK
    }
}

/// Returns the unfolded value of the first header field called `name`
/// (compared case-insensitively) in a raw message.
fn header_value(content: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(content);
    let header_section = text.split("\r\n\r\n").next().unwrap_or_default();

    let mut value: Option<String> = None;
    for line in header_section.split("\r\n") {
        let is_continuation = line.starts_with([' ', '\t']);
        match (&mut value, is_continuation) {
            (Some(value), true) => value.push_str(line),
            (Some(_), false) => break,
            (None, false) => {
                if let Some((field, rest)) = line.split_once(':') {
                    if field.eq_ignore_ascii_case(name) {
                        value = Some(rest.to_owned());
                    }
                }
            }
            (None, true) => {}
        }
    }
    value.map(|value| value.trim().to_owned())
}

/// Decodes RFC 2047 encoded words (`=?utf-8?b?...?=` and `=?utf-8?q?...?=`)
/// in a header value. Whitespace between two adjacent encoded words is
/// dropped, as RFC 2047 section 6.2 requires. Words in other charsets and
/// malformed words are kept as they are.
fn decode_encoded_words(value: &str) -> String {
    let mut decoded = String::new();
    let mut previous_was_encoded = false;

    for (index, word) in value.split([' ', '\t']).enumerate() {
        match decode_encoded_word(word) {
            Some(text) => {
                if index > 0 && !previous_was_encoded {
                    decoded.push(' ');
                }
                decoded.push_str(&text);
                previous_was_encoded = true;
            }
            None => {
                if index > 0 {
                    decoded.push(' ');
                }
                decoded.push_str(word);
                previous_was_encoded = false;
            }
        }
    }
    decoded
}

fn decode_encoded_word(word: &str) -> Option<String> {
    let inner = word.strip_prefix("=?")?.strip_suffix("?=")?;
    let mut parts = inner.splitn(3, '?');
    let (charset, encoding, text) = (parts.next()?, parts.next()?, parts.next()?);
    if !charset.eq_ignore_ascii_case("utf-8") {
        return None;
    }
    let bytes = match encoding {
        "b" | "B" => decode_base64(text)?,
        "q" | "Q" => decode_q(text)?,
        _ => return None,
    };
    String::from_utf8(bytes).ok()
}

/// Decodes standard base64 with optional `=` padding.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn sextet(byte: u8) -> Option<u32> {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        Some(u32::from(value))
    }

    let mut output = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for byte in text.trim_end_matches('=').bytes() {
        buffer = (buffer << 6) | sextet(byte)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            output.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(output)
}

/// Decodes the RFC 2047 "Q" encoding: `_` is a space and `=XX` a byte.
fn decode_q(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut output = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'_' => output.push(b' '),
            b'=' => {
                let hex = text.get(index + 1..index + 3)?;
                output.push(u8::from_str_radix(hex, 16).ok()?);
                index += 2;
            }
            byte => output.push(byte),
        }
        index += 1;
    }
    Some(output)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use txnotify_consumer::email::{
        build_message, RenderConfig, Renderer, SendError, SendFailureClass, SmtpConfig, SmtpSender,
        TlsMode,
    };
    use txnotify_schemas::{Money, Recipient, TransactionEvent, TransactionStatus};

    use super::*;

    fn event_for(recipient: &str, locale: &str) -> TransactionEvent {
        TransactionEvent {
            event_id: uuid::Uuid::new_v4(),
            schema_version: 1,
            transaction_id: "tx-7".to_owned(),
            account_id: "acct-7".to_owned(),
            status: TransactionStatus::Completed,
            amount: Money {
                minor_units: 1999,
                currency: "EUR".to_owned(),
            },
            occurred_at: time::macros::datetime!(2025-03-07 14:05:09 UTC),
            recipient: Recipient {
                email: recipient.to_owned(),
                display_name: Some("Kim".to_owned()),
                locale: Some(locale.to_owned()),
            },
            merchant: Some("Bücherstube".to_owned()),
            description: None,
            metadata: BTreeMap::new(),
        }
    }

    fn sender_for(sink: &MailSink) -> SmtpSender {
        SmtpSender::new(SmtpConfig {
            host: sink.addr().ip().to_string(),
            port: Some(sink.addr().port()),
            tls: TlsMode::None,
            from: "Payments <payments@shop.example>".to_owned(),
            hello_name: Some("client.test".to_owned()),
            ..SmtpConfig::default()
        })
        .expect("sender")
    }

    async fn send(sender: &SmtpSender, event: &TransactionEvent) -> Result<u16, SendError> {
        let renderer = Renderer::new(&RenderConfig::default()).expect("renderer");
        let rendered = renderer.render(event).expect("render");
        let message = build_message(
            event,
            &rendered,
            sender.sender_mailbox(),
            sender.message_id_domain(),
        )
        .expect("build");
        sender.send(&message).await.map(|receipt| receipt.code)
    }

    #[tokio::test]
    async fn sink_records_accepted_message() {
        let sink = MailSink::start(Vec::new()).expect("start");
        let sender = sender_for(&sink);
        let event = event_for("kim@example.com", "de");

        let code = send(&sender, &event).await.expect("send");

        assert_eq!(code, 250);
        let received = sink.received();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].recipients, ["kim@example.com"]);
        assert_eq!(
            received[0].message_id.as_deref(),
            Some(format!("<{}@shop.example>", event.event_id).as_str())
        );
        assert_eq!(
            received[0].subject.as_deref(),
            Some("Zahlung über 19,99 EUR an Bücherstube abgeschlossen")
        );
    }

    #[tokio::test]
    async fn sink_rejects_with_451_then_accepts() {
        let faults = vec![("Busy@Example.com".to_owned(), SinkFault::TransientFirst(2))];
        let sink = MailSink::start(faults).expect("start");
        let sender = sender_for(&sink);
        let event = event_for("busy@example.com", "en");

        for attempt in 1..=2 {
            let error = send(&sender, &event).await.expect_err("451");
            assert_eq!(error.reply_code(), Some(451), "attempt {attempt}");
            assert_eq!(
                error.class(),
                SendFailureClass::Transient,
                "attempt {attempt}"
            );
        }
        let code = send(&sender, &event).await.expect("third attempt");

        assert_eq!(code, 250);
        assert_eq!(sink.received().len(), 1);
    }

    #[tokio::test]
    async fn sink_always_rejects_with_550() {
        let faults = vec![("gone@example.com".to_owned(), SinkFault::AlwaysReject)];
        let sink = MailSink::start(faults).expect("start");
        let sender = sender_for(&sink);
        let event = event_for("gone@example.com", "en");

        for attempt in 1..=3 {
            let error = send(&sender, &event).await.expect_err("550");
            assert_eq!(error.reply_code(), Some(550), "attempt {attempt}");
            assert_eq!(
                error.class(),
                SendFailureClass::Permanent,
                "attempt {attempt}"
            );
        }
        assert!(sink.received().is_empty());
    }

    #[tokio::test]
    async fn sink_refuses_mail_after_stop() {
        let sink = MailSink::start(Vec::new()).expect("start");
        let sender = sender_for(&sink);

        sink.stop();
        let error = send(&sender, &event_for("kim@example.com", "en"))
            .await
            .expect_err("stopped");

        assert_eq!(error.reply_code(), Some(421));
        assert_eq!(error.class(), SendFailureClass::Transient);
        assert!(sink.received().is_empty());
    }

    #[test]
    fn header_value_cases() {
        let content = b"From: a@example.com\r\n\
            Subject: first part\r\n second part\r\n\
            message-id: <id@example.com>\r\n\
            \r\n\
            Subject: in the body\r\n";
        let cases: &[(&str, Option<&str>)] = &[
            ("Subject", Some("first part second part")),
            ("Message-ID", Some("<id@example.com>")),
            ("From", Some("a@example.com")),
            ("Bcc", None),
        ];

        for (name, expected) in cases {
            assert_eq!(header_value(content, name).as_deref(), *expected, "{name}");
        }
    }

    #[test]
    fn decode_encoded_words_cases() {
        let cases: &[(&str, &str)] = &[
            ("plain subject", "plain subject"),
            ("=?utf-8?b?WmFobHVuZyDDvGJlcg==?=", "Zahlung über"),
            (
                "=?utf-8?b?WmFobHVuZyDDvGJlcg==?= =?utf-8?b?IDE5?=",
                "Zahlung über 19",
            ),
            ("=?UTF-8?Q?B=C3=BCcher_shop?= now", "Bücher shop now"),
            ("pre =?utf-8?q?=C3=A4?= post", "pre ä post"),
            ("=?iso-8859-1?q?=E4?=", "=?iso-8859-1?q?=E4?="),
            ("=?utf-8?b?!!!?=", "=?utf-8?b?!!!?="),
        ];

        for (input, expected) in cases {
            assert_eq!(decode_encoded_words(input), *expected, "{input}");
        }
    }
}
