//! Sender tests against real servers on loopback: mailin-embedded for
//! protocol-correct behaviour, and scripted tokio servers for faults that a
//! correct server never shows (stalls, dropped connections).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use lettre::Message;
use mailin_embedded::{response, Handler, Server, SslConfig};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::*;
use crate::email::build_message;
use crate::email::render::{RenderConfig, Renderer};
use crate::email::test_support::sample_event;

const FROM: &str = "Payments <payments@shop.example>";

fn config_for(addr: SocketAddr) -> SmtpConfig {
    SmtpConfig {
        host: addr.ip().to_string(),
        port: Some(addr.port()),
        tls: TlsMode::None,
        from: FROM.to_owned(),
        hello_name: Some("client.test".to_owned()),
        connect_timeout_ms: 5_000,
        command_timeout_ms: 5_000,
        data_timeout_ms: 5_000,
        ..SmtpConfig::default()
    }
}

fn message_to(recipient: &str) -> Message {
    let mut event = sample_event();
    event.recipient.email = recipient.to_owned();
    event.event_id = uuid::Uuid::new_v4();
    let rendered = Renderer::new(&RenderConfig::default())
        .expect("renderer")
        .render(&event)
        .expect("render");
    let from: lettre::message::Mailbox = FROM.parse().expect("from");
    build_message(&event, &rendered, &from, "shop.example").expect("build")
}

// ---------------------------------------------------------------------------
// mailin-embedded server
// ---------------------------------------------------------------------------

/// What the mailin-embedded test server saw.
#[derive(Debug, Default)]
struct SinkLog {
    /// EHLO or HELO commands; one per plain-text session.
    hellos: usize,
    /// RCPT attempts per recipient.
    rcpt_attempts: HashMap<String, usize>,
    /// Accepted messages as (recipients, content).
    messages: Vec<(Vec<String>, Vec<u8>)>,
}

/// mailin handler: `busy…` recipients get 451, `nobody…` recipients get 550,
/// and AUTH accepts user `mailer` with password `s3cret`.
#[derive(Clone, Default)]
struct RecordingHandler {
    log: Arc<Mutex<SinkLog>>,
    recipients: Vec<String>,
    content: Vec<u8>,
}

impl Handler for RecordingHandler {
    fn helo(&mut self, _ip: std::net::IpAddr, _domain: &str) -> mailin_embedded::Response {
        self.log.lock().unwrap().hellos += 1;
        response::OK
    }

    fn rcpt(&mut self, to: &str) -> mailin_embedded::Response {
        *self
            .log
            .lock()
            .unwrap()
            .rcpt_attempts
            .entry(to.to_owned())
            .or_default() += 1;
        if to.starts_with("busy") {
            mailin_embedded::Response::custom(451, "4.2.1 Mailbox busy, try later".to_owned())
        } else if to.starts_with("nobody") {
            mailin_embedded::Response::custom(550, format!("5.1.1 <{to}>: user unknown"))
        } else {
            response::OK
        }
    }

    fn data_start(
        &mut self,
        _domain: &str,
        _from: &str,
        _is8bit: bool,
        to: &[String],
    ) -> mailin_embedded::Response {
        self.recipients = to.to_vec();
        self.content.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.content.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> mailin_embedded::Response {
        let message = (
            std::mem::take(&mut self.recipients),
            std::mem::take(&mut self.content),
        );
        self.log.lock().unwrap().messages.push(message);
        response::OK
    }

    fn auth_plain(
        &mut self,
        _authorization_id: &str,
        authentication_id: &str,
        password: &str,
    ) -> mailin_embedded::Response {
        check_credentials(authentication_id, password)
    }

    fn auth_login(&mut self, username: &str, password: &str) -> mailin_embedded::Response {
        check_credentials(username, password)
    }
}

fn check_credentials(username: &str, password: &str) -> mailin_embedded::Response {
    if username == "mailer" && password == "s3cret" {
        response::AUTH_OK
    } else {
        response::INVALID_CREDENTIALS
    }
}

/// Starts a mailin-embedded server on 127.0.0.1:0 in a background thread.
///
/// NOTE: mailin-embedded 0.8 has no way to stop a server, so the thread and
/// the listening socket live until the test process exits.
fn start_mailin(ssl: Option<SslConfig>, auth: bool) -> (SocketAddr, Arc<Mutex<SinkLog>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let handler = RecordingHandler::default();
    let log = Arc::clone(&handler.log);

    let mut server = Server::new(handler);
    server.with_name("sink.test").with_tcp_listener(listener);
    if let Some(ssl) = ssl {
        install_crypto_provider();
        server.with_ssl(ssl).expect("ssl config");
    }
    if auth {
        server
            .with_auth(mailin_embedded::AuthMechanism::Plain)
            .with_auth(mailin_embedded::AuthMechanism::Login);
    }
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    (addr, log)
}

/// mailin-embedded builds its rustls server config with the process-wide
/// provider. With both the ring and aws-lc-rs features enabled in the test
/// build, rustls cannot pick one by itself.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Self-signed certificate and its key, written as PEM files into a
/// temporary folder.
struct TestCertificate {
    _dir: tempfile::TempDir,
    cert_path: PathBuf,
    key_path: PathBuf,
    certified: rcgen::CertifiedKey,
}

/// Returns a certificate for `127.0.0.1` and `localhost`.
fn test_certificate() -> TestCertificate {
    certificate_for(&["127.0.0.1", "localhost"])
}

fn certificate_for(names: &[&str]) -> TestCertificate {
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let certified = rcgen::generate_simple_self_signed(names).expect("generate certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).expect("write cert");
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).expect("write key");
    TestCertificate {
        _dir: dir,
        cert_path,
        key_path,
        certified,
    }
}

#[tokio::test]
async fn send_delivers_to_mailin() {
    let (addr, log) = start_mailin(None, false);
    let sender = SmtpSender::new(config_for(addr)).expect("sender");
    let message = message_to("alice@example.com");

    let receipt = sender.send(&message).await.expect("send");

    assert_eq!(receipt.code, 250);
    assert_eq!(receipt.reply, "OK");
    let log = log.lock().unwrap();
    assert_eq!(log.messages.len(), 1);
    let (recipients, content) = &log.messages[0];
    assert_eq!(recipients, &["alice@example.com".to_owned()]);
    let content = String::from_utf8_lossy(content);
    assert!(
        content.contains("Subject: Payment of 19.99 EUR to ACME Books completed"),
        "{content}"
    );
    assert!(content.contains("X-Txnotify-Event-Id: "), "{content}");
}

#[tokio::test]
async fn send_reports_451_as_transient() {
    let (addr, log) = start_mailin(None, false);
    let sender = SmtpSender::new(config_for(addr)).expect("sender");

    let error = sender
        .send(&message_to("busy@example.com"))
        .await
        .expect_err("451");

    assert!(
        matches!(
            error,
            SendError::Rejected { phase: Phase::Rcpt, code: 451, ref enhanced_code }
                if enhanced_code.as_deref() == Some("4.2.1")
        ),
        "{error:?}"
    );
    assert_eq!(error.class(), SendFailureClass::Transient);
    assert_eq!(error.to_string(), "smtp rcpt rejected with 451 4.2.1");
    assert!(log.lock().unwrap().messages.is_empty());
}

#[tokio::test]
async fn send_reports_550_as_permanent_without_address() {
    let (addr, _log) = start_mailin(None, false);
    let sender = SmtpSender::new(config_for(addr)).expect("sender");

    let error = sender
        .send(&message_to("nobody@example.com"))
        .await
        .expect_err("550");

    assert_eq!(error.class(), SendFailureClass::Permanent);
    assert_eq!(error.to_string(), "smtp rcpt rejected with 550 5.1.1");
    assert!(!format!("{error:?}").contains("nobody"), "{error:?}");
}

#[tokio::test]
async fn pool_reuses_one_connection() {
    let (addr, log) = start_mailin(None, false);
    let sender = SmtpSender::new(config_for(addr)).expect("sender");

    for index in 0..20 {
        let message = message_to(&format!("user{index}@example.com"));
        sender.send(&message).await.expect("send");
    }

    let log = log.lock().unwrap();
    assert_eq!(log.messages.len(), 20);
    assert_eq!(log.hellos, 1, "all messages must share one session");
    assert_eq!(sender.idle_connections(), 1);
}

#[tokio::test]
async fn pool_drops_connection_after_error() {
    let (addr, log) = start_mailin(None, false);
    let sender = SmtpSender::new(config_for(addr)).expect("sender");

    sender
        .send(&message_to("a@example.com"))
        .await
        .expect("first");
    sender
        .send(&message_to("nobody@example.com"))
        .await
        .expect_err("rejected");
    assert_eq!(sender.idle_connections(), 0);
    sender
        .send(&message_to("b@example.com"))
        .await
        .expect("third");

    assert_eq!(log.lock().unwrap().hellos, 2);
    assert_eq!(sender.idle_connections(), 1);
}

#[tokio::test]
async fn pool_opens_up_to_max_connections_concurrently() {
    let (addr, log) = start_mailin(None, false);
    let config = SmtpConfig {
        max_connections: 2,
        ..config_for(addr)
    };
    let sender = Arc::new(SmtpSender::new(config).expect("sender"));

    let sends = (0..8).map(|index| {
        let sender = Arc::clone(&sender);
        tokio::spawn(async move {
            let message = message_to(&format!("user{index}@example.com"));
            sender.send(&message).await
        })
    });
    for send in futures::future::join_all(sends).await {
        send.expect("task").expect("send");
    }

    let log = log.lock().unwrap();
    assert_eq!(log.messages.len(), 8);
    assert!(log.hellos <= 2, "opened {} connections", log.hellos);
    assert!(sender.idle_connections() <= 2);
}

/// Sanity bound, not a benchmark. With TCP_NODELAY off, this test took 22 s
/// for 500 messages on a 2-core Linux machine (Nagle's algorithm waiting for
/// delayed ACKs), and 0.13 s with it on.
#[tokio::test]
async fn pooled_connection_throughput() {
    const MESSAGES: usize = 500;
    let (addr, log) = start_mailin(None, false);
    let sender = SmtpSender::new(config_for(addr)).expect("sender");
    let message = message_to("alice@example.com");

    let started = std::time::Instant::now();
    for _ in 0..MESSAGES {
        sender.send(&message).await.expect("send");
    }
    let elapsed = started.elapsed();

    assert_eq!(log.lock().unwrap().messages.len(), MESSAGES);
    assert_eq!(log.lock().unwrap().hellos, 1);
    assert!(
        elapsed < Duration::from_millis(40) * MESSAGES as u32,
        "{MESSAGES} messages took {elapsed:?}"
    );
}

#[tokio::test]
async fn starttls_with_auth_delivers() {
    let certificate = test_certificate();
    let ssl = SslConfig::SelfSigned {
        cert_path: certificate.cert_path.display().to_string(),
        key_path: certificate.key_path.display().to_string(),
    };
    let (addr, log) = start_mailin(Some(ssl), true);
    let password_file = certificate.cert_path.with_file_name("password");
    std::fs::write(&password_file, "s3cret\n").expect("write password");
    let config = SmtpConfig {
        tls: TlsMode::Starttls,
        ca_file: Some(certificate.cert_path.clone()),
        username: Some("mailer".to_owned()),
        password_file: Some(password_file),
        ..config_for(addr)
    };
    let sender = SmtpSender::new(config).expect("sender");

    let receipt = sender
        .send(&message_to("alice@example.com"))
        .await
        .expect("send");

    assert_eq!(receipt.code, 250);
    assert_eq!(log.lock().unwrap().messages.len(), 1);
}

#[tokio::test]
async fn starttls_auth_failure_is_transient() {
    let certificate = test_certificate();
    let ssl = SslConfig::SelfSigned {
        cert_path: certificate.cert_path.display().to_string(),
        key_path: certificate.key_path.display().to_string(),
    };
    let (addr, log) = start_mailin(Some(ssl), true);
    let password_file = certificate.cert_path.with_file_name("password");
    std::fs::write(&password_file, "wrong").expect("write password");
    let config = SmtpConfig {
        tls: TlsMode::Starttls,
        accept_invalid_certs: true,
        username: Some("mailer".to_owned()),
        password_file: Some(password_file),
        ..config_for(addr)
    };
    let sender = SmtpSender::new(config).expect("sender");

    let error = sender
        .send(&message_to("alice@example.com"))
        .await
        .expect_err("bad password");

    assert!(
        matches!(
            error,
            SendError::Rejected {
                phase: Phase::Auth,
                code: 535,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.class(), SendFailureClass::Transient);
    assert!(log.lock().unwrap().messages.is_empty());
}

#[tokio::test]
async fn starttls_missing_is_reported() {
    let (addr, _log) = start_mailin(None, false);
    let config = SmtpConfig {
        tls: TlsMode::Starttls,
        ..config_for(addr)
    };
    let sender = SmtpSender::new(config).expect("sender");

    let error = sender
        .send(&message_to("alice@example.com"))
        .await
        .expect_err("no STARTTLS");

    assert!(
        matches!(
            error,
            SendError::Unsupported {
                extension: "STARTTLS"
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.class(), SendFailureClass::Transient);
}

// ---------------------------------------------------------------------------
// Scripted servers
// ---------------------------------------------------------------------------

/// Behaviour of a scripted server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// Accepts the connection and never sends the greeting.
    StallGreeting,
    /// Replies 250 to RCPT, then closes the connection.
    CloseAfterRcpt,
    /// Replies 354 to DATA, reads the content and never replies again.
    SilentAfterContent,
    /// Replies 354 to DATA, reads one line of content and closes.
    CloseDuringContent,
    /// Accepts one message, then closes the connection without a word.
    CloseAfterMessage,
    /// Accepts every message.
    Accept,
}

/// What a scripted server saw, across all its connections.
#[derive(Debug, Default)]
struct ScriptLog {
    connections: usize,
    noops: usize,
    quits: usize,
    messages: usize,
}

/// Starts a plain-text scripted server on 127.0.0.1:0.
async fn start_scripted(script: Script) -> (SocketAddr, Arc<Mutex<ScriptLog>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let log = Arc::new(Mutex::new(ScriptLog::default()));
    let server_log = Arc::clone(&log);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            server_log.lock().unwrap().connections += 1;
            tokio::spawn(run_script(stream, script, Arc::clone(&server_log)));
        }
    });
    (addr, log)
}

/// Starts an implicit-TLS scripted server that accepts every message.
async fn start_tls_scripted(certificate: &TestCertificate) -> (SocketAddr, Arc<Mutex<ScriptLog>>) {
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certificate.certified.key_pair.serialize_der())
            .expect("key");
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![certificate.certified.cert.der().clone()], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let log = Arc::new(Mutex::new(ScriptLog::default()));
    let server_log = Arc::clone(&log);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            server_log.lock().unwrap().connections += 1;
            let acceptor = acceptor.clone();
            let log = Arc::clone(&server_log);
            tokio::spawn(async move {
                // A client that rejects the certificate aborts the handshake.
                if let Ok(tls) = acceptor.accept(stream).await {
                    run_script(tls, Script::Accept, log).await;
                }
            });
        }
    });
    (addr, log)
}

async fn run_script<S>(stream: S, script: Script, log: Arc<Mutex<ScriptLog>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if script == Script::StallGreeting {
        // Holds the socket open without a timer, so paused time does not
        // advance on the server's account.
        let _stream = stream;
        std::future::pending::<()>().await;
        return;
    }

    let mut stream = BufReader::new(stream);
    stream
        .get_mut()
        .write_all(b"220 scripted.test ESMTP\r\n")
        .await
        .expect("greeting");

    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        let answer: &[u8] = match verb.as_str() {
            "EHLO" => b"250-scripted.test\r\n250 8BITMIME\r\n",
            "MAIL" => b"250 2.1.0 Ok\r\n",
            "RCPT" if script == Script::CloseAfterRcpt => {
                let _ = stream.get_mut().write_all(b"250 2.1.5 Ok\r\n").await;
                return;
            }
            "RCPT" => b"250 2.1.5 Ok\r\n",
            "NOOP" => {
                log.lock().unwrap().noops += 1;
                b"250 2.0.0 Ok\r\n"
            }
            "RSET" => b"250 2.0.0 Ok\r\n",
            "QUIT" => {
                log.lock().unwrap().quits += 1;
                let _ = stream.get_mut().write_all(b"221 2.0.0 Bye\r\n").await;
                return;
            }
            "DATA" => {
                if stream
                    .get_mut()
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                if script == Script::CloseDuringContent {
                    let mut first = String::new();
                    let _ = stream.read_line(&mut first).await;
                    return;
                }
                if !read_content(&mut stream).await {
                    return;
                }
                if script == Script::SilentAfterContent {
                    let _stream = stream;
                    std::future::pending::<()>().await;
                    return;
                }
                log.lock().unwrap().messages += 1;
                if script == Script::CloseAfterMessage {
                    let _ = stream
                        .get_mut()
                        .write_all(b"250 2.0.0 Ok: queued\r\n")
                        .await;
                    return;
                }
                b"250 2.0.0 Ok: queued as 4QX for <alice@example.com>\r\n"
            }
            _ => b"502 5.5.2 Command not recognized\r\n",
        };
        if stream.get_mut().write_all(answer).await.is_err() {
            return;
        }
    }
}

/// Reads message content up to the terminating dot line. Returns `false` if
/// the connection closed first.
async fn read_content<S: AsyncRead + Unpin>(stream: &mut BufReader<S>) -> bool {
    loop {
        let mut line = String::new();
        match stream.read_line(&mut line).await {
            Ok(0) | Err(_) => return false,
            Ok(_) if line == ".\r\n" => return true,
            Ok(_) => {}
        }
    }
}

#[tokio::test(start_paused = true)]
async fn greeting_stall_times_out_as_transient() {
    let (addr, _log) = start_scripted(Script::StallGreeting).await;
    let config = SmtpConfig {
        connect_timeout_ms: 3_000,
        ..config_for(addr)
    };
    let sender = SmtpSender::new(config).expect("sender");

    let started = Instant::now();
    let error = sender
        .send(&message_to("alice@example.com"))
        .await
        .expect_err("stall");

    assert!(
        matches!(
            error,
            SendError::Timeout {
                phase: Phase::Greeting,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.class(), SendFailureClass::Transient);
    assert_eq!(error.to_string(), "smtp greeting timed out after 3000 ms");
    assert_eq!(started.elapsed(), Duration::from_millis(3_000));
}

#[tokio::test(start_paused = true)]
async fn silence_after_content_is_unknown_outcome() {
    let (addr, log) = start_scripted(Script::SilentAfterContent).await;
    let config = SmtpConfig {
        data_timeout_ms: 7_000,
        ..config_for(addr)
    };
    let sender = SmtpSender::new(config).expect("sender");

    let started = Instant::now();
    let error = sender
        .send(&message_to("alice@example.com"))
        .await
        .expect_err("silence");

    assert!(
        matches!(
            error,
            SendError::Timeout {
                phase: Phase::Content,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.class(), SendFailureClass::UnknownOutcome);
    assert_eq!(started.elapsed(), Duration::from_millis(7_000));
    assert_eq!(sender.idle_connections(), 0);
    assert_eq!(log.lock().unwrap().connections, 1);
}

#[tokio::test]
async fn close_during_content_is_unknown_outcome() {
    let (addr, _log) = start_scripted(Script::CloseDuringContent).await;
    let sender = SmtpSender::new(config_for(addr)).expect("sender");

    let error = sender
        .send(&message_to("alice@example.com"))
        .await
        .expect_err("closed");

    assert!(
        matches!(
            error,
            SendError::Connection {
                phase: Phase::Content,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.class(), SendFailureClass::UnknownOutcome);
}

#[tokio::test]
async fn close_after_rcpt_is_transient() {
    let (addr, _log) = start_scripted(Script::CloseAfterRcpt).await;
    let sender = SmtpSender::new(config_for(addr)).expect("sender");

    let error = sender
        .send(&message_to("alice@example.com"))
        .await
        .expect_err("closed");

    assert!(
        matches!(
            error,
            SendError::Connection {
                phase: Phase::Data,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.class(), SendFailureClass::Transient);
    assert_eq!(sender.idle_connections(), 0);
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let sender = SmtpSender::new(config_for(addr)).expect("sender");

    let error = sender
        .send(&message_to("alice@example.com"))
        .await
        .expect_err("refused");

    assert!(
        matches!(
            error,
            SendError::Connection {
                phase: Phase::Connect,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.class(), SendFailureClass::Transient);
}

#[tokio::test]
async fn stale_pooled_connection_is_replaced() {
    let (addr, log) = start_scripted(Script::CloseAfterMessage).await;
    let sender = SmtpSender::new(config_for(addr)).expect("sender");

    sender
        .send(&message_to("a@example.com"))
        .await
        .expect("first");
    // Lets the server task close its side before the reuse.
    tokio::time::sleep(Duration::from_millis(50)).await;
    sender
        .send(&message_to("b@example.com"))
        .await
        .expect("second");

    let log = log.lock().unwrap();
    assert_eq!(log.connections, 2);
    assert_eq!(log.messages, 2);
}

#[tokio::test(start_paused = true)]
async fn idle_connection_is_checked_with_noop() {
    let (addr, log) = start_scripted(Script::Accept).await;
    let config = SmtpConfig {
        idle_check_after_ms: 1_000,
        idle_timeout_ms: 10_000,
        ..config_for(addr)
    };
    let sender = SmtpSender::new(config).expect("sender");

    sender
        .send(&message_to("a@example.com"))
        .await
        .expect("first");
    sender
        .send(&message_to("b@example.com"))
        .await
        .expect("second");
    assert_eq!(log.lock().unwrap().noops, 0);
    tokio::time::advance(Duration::from_millis(1_500)).await;
    sender
        .send(&message_to("c@example.com"))
        .await
        .expect("third");

    let log = log.lock().unwrap();
    assert_eq!(log.noops, 1);
    assert_eq!(log.connections, 1);
    assert_eq!(log.messages, 3);
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_closes_connection() {
    let (addr, log) = start_scripted(Script::Accept).await;
    let config = SmtpConfig {
        idle_check_after_ms: 1_000,
        idle_timeout_ms: 10_000,
        ..config_for(addr)
    };
    let sender = SmtpSender::new(config).expect("sender");

    sender
        .send(&message_to("a@example.com"))
        .await
        .expect("first");
    tokio::time::advance(Duration::from_millis(10_001)).await;
    sender
        .send(&message_to("b@example.com"))
        .await
        .expect("second");
    // Lets the background QUIT reach the server.
    tokio::time::sleep(Duration::from_millis(10)).await;

    let log = log.lock().unwrap();
    assert_eq!(log.connections, 2);
    assert_eq!(log.quits, 1);
    assert_eq!(log.noops, 0);
}

#[tokio::test]
async fn receipt_redacts_addresses() {
    let (addr, _log) = start_scripted(Script::Accept).await;
    let sender = SmtpSender::new(config_for(addr)).expect("sender");

    let receipt = sender
        .send(&message_to("alice@example.com"))
        .await
        .expect("send");

    assert_eq!(receipt.code, 250);
    assert_eq!(receipt.reply, "2.0.0 Ok: queued as 4QX for [redacted]");
}

#[tokio::test]
async fn close_idle_sends_quit() {
    let (addr, log) = start_scripted(Script::Accept).await;
    let sender = SmtpSender::new(config_for(addr)).expect("sender");
    sender
        .send(&message_to("a@example.com"))
        .await
        .expect("send");

    sender.close_idle().await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    assert_eq!(sender.idle_connections(), 0);
    assert_eq!(log.lock().unwrap().quits, 1);
}

#[tokio::test]
async fn implicit_tls_with_ca_file_delivers() {
    let certificate = test_certificate();
    let (addr, log) = start_tls_scripted(&certificate).await;
    let config = SmtpConfig {
        tls: TlsMode::Tls,
        ca_file: Some(certificate.cert_path.clone()),
        ..config_for(addr)
    };
    let sender = SmtpSender::new(config).expect("sender");

    let receipt = sender
        .send(&message_to("alice@example.com"))
        .await
        .expect("send");

    assert_eq!(receipt.code, 250);
    assert_eq!(log.lock().unwrap().messages, 1);
}

#[tokio::test]
async fn implicit_tls_rejects_untrusted_certificate() {
    let certificate = test_certificate();
    let (addr, log) = start_tls_scripted(&certificate).await;
    let config = SmtpConfig {
        tls: TlsMode::Tls,
        ..config_for(addr)
    };
    let sender = SmtpSender::new(config).expect("sender");

    let error = sender
        .send(&message_to("alice@example.com"))
        .await
        .expect_err("untrusted");

    assert!(
        matches!(
            error,
            SendError::Tls {
                phase: Phase::TlsHandshake,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.class(), SendFailureClass::Transient);
    assert_eq!(log.lock().unwrap().messages, 0);
}

#[tokio::test]
async fn implicit_tls_accepts_invalid_certs_when_enabled() {
    let certificate = test_certificate();
    let (addr, log) = start_tls_scripted(&certificate).await;
    let config = SmtpConfig {
        tls: TlsMode::Tls,
        accept_invalid_certs: true,
        ..config_for(addr)
    };
    let sender = SmtpSender::new(config).expect("sender");

    sender
        .send(&message_to("alice@example.com"))
        .await
        .expect("send");

    assert_eq!(log.lock().unwrap().messages, 1);
}

#[tokio::test]
async fn implicit_tls_checks_host_name_with_invalid_certs() {
    let certificate = certificate_for(&["other.test"]);
    let (addr, log) = start_tls_scripted(&certificate).await;
    let config = SmtpConfig {
        tls: TlsMode::Tls,
        accept_invalid_certs: true,
        ..config_for(addr)
    };
    let sender = SmtpSender::new(config).expect("sender");

    let error = sender
        .send(&message_to("alice@example.com"))
        .await
        .expect_err("certificate names another host");

    assert!(
        matches!(
            error,
            SendError::Tls {
                phase: Phase::TlsHandshake,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(log.lock().unwrap().connections, 1);
    assert_eq!(log.lock().unwrap().messages, 0);
}

// ---------------------------------------------------------------------------
// Construction and secrets
// ---------------------------------------------------------------------------

#[test]
fn debug_output_hides_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "hunter2-very-secret\n").expect("write");
    let config = SmtpConfig {
        host: "127.0.0.1".to_owned(),
        from: FROM.to_owned(),
        tls: TlsMode::None,
        username: Some("mailer".to_owned()),
        password_file: Some(password_file),
        ..SmtpConfig::default()
    };

    let sender = SmtpSender::new(config.clone()).expect("sender");

    let debug = format!("{sender:?} {config:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
}

#[test]
fn read_password_cases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, contents: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).expect("write");
        path
    };
    let base = SmtpConfig {
        username: Some("mailer".to_owned()),
        ..SmtpConfig::default()
    };
    let cases: Vec<(&str, SmtpConfig, Result<&str, &str>)> = vec![
        (
            "file with newline",
            SmtpConfig {
                password_file: Some(write("a", "s3cret\n")),
                ..base.clone()
            },
            Ok("s3cret"),
        ),
        (
            "file with CRLF",
            SmtpConfig {
                password_file: Some(write("b", "s3cret\r\n")),
                ..base.clone()
            },
            Ok("s3cret"),
        ),
        (
            "file keeps inner spaces",
            SmtpConfig {
                password_file: Some(write("c", " s3 cret ")),
                ..base.clone()
            },
            Ok(" s3 cret "),
        ),
        (
            "empty file",
            SmtpConfig {
                password_file: Some(write("d", "\n")),
                ..base.clone()
            },
            Err("password_file"),
        ),
        (
            "missing file",
            SmtpConfig {
                password_file: Some(dir.path().join("absent")),
                ..base.clone()
            },
            Err("password_file"),
        ),
        (
            "unset variable",
            SmtpConfig {
                password_env: Some("TXNOTIFY_TEST_UNSET_SMTP_PASSWORD".to_owned()),
                ..base.clone()
            },
            Err("password_env"),
        ),
    ];

    for (name, config, expected) in cases {
        match (read_password(&config), expected) {
            (Ok(password), Ok(expected)) => assert_eq!(password, expected, "{name}"),
            (Err(error), Err(field)) => {
                assert_eq!(error.field, field, "{name}");
                assert!(!error.to_string().contains("s3cret"), "{name}: {error}");
            }
            (result, expected) => panic!("{name}: got {result:?}, expected {expected:?}"),
        }
    }
}

#[test]
fn new_rejects_unreadable_ca_file() {
    let config = SmtpConfig {
        host: "127.0.0.1".to_owned(),
        from: FROM.to_owned(),
        tls: TlsMode::Tls,
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..SmtpConfig::default()
    };

    let error = SmtpSender::new(config).expect_err("missing CA file");

    assert_eq!(error.field, "ca_file");
}

#[test]
fn new_rejects_ca_file_without_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, "not a certificate").expect("write");
    let config = SmtpConfig {
        host: "127.0.0.1".to_owned(),
        from: FROM.to_owned(),
        tls: TlsMode::Tls,
        ca_file: Some(ca_file),
        ..SmtpConfig::default()
    };

    let error = SmtpSender::new(config).expect_err("empty CA file");

    assert_eq!(error.field, "ca_file");
}
