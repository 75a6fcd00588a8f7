//! Smoke tests of the system-test harness itself: the Tansu broker, the
//! fault-injecting SMTP server and the txnotify process wrapper.

mod common;

use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{json, Value};

use common::{Broker, SmtpOptions, SmtpServer, SmtpTls};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(20);
const SMTP_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Broker

#[test]
fn broker_accepts_tcp_and_restarts() {
    common::require_system_tests!();

    let mut broker = Broker::start();
    assert_eq!(broker.bootstrap(), format!("127.0.0.1:{}", broker.port()));
    assert!(
        accepts_tcp(broker.port()),
        "a started broker accepts TCP on {}",
        broker.bootstrap()
    );

    broker.pause();
    assert!(broker.is_running(), "a paused broker is still running");
    broker.resume();

    let first_pid = broker.pid();
    broker.restart();
    assert_ne!(broker.pid(), first_pid, "restart() starts a new process");
    assert!(
        accepts_tcp(broker.port()),
        "a restarted broker accepts TCP on the same port"
    );

    broker.kill();
    assert!(!broker.is_running(), "kill() ends the process");
    assert!(
        !accepts_tcp(broker.port()),
        "a killed broker no longer accepts TCP"
    );

    broker.restart();
    assert!(
        accepts_tcp(broker.port()),
        "a broker restarted after kill() accepts TCP"
    );

    broker.stop();
    assert!(!broker.is_running(), "stop() ends the process");
}

#[test]
fn sqlite_broker_keeps_records_across_restarts() {
    common::require_system_tests!();

    let data_dir = tempfile::tempdir().expect("create a data directory");
    let mut broker = Broker::start_sqlite(data_dir.path());
    assert!(
        data_dir.path().join("tansu.db").exists(),
        "the SQLite file is in the given directory"
    );

    let topic = common::unique_name("harness-smoke");
    create_topic(&broker.bootstrap(), &topic);
    produce(&broker.bootstrap(), &topic, "account-1", "payload-1");
    assert_eq!(
        consume_first(&broker.bootstrap(), &topic),
        ("account-1".to_string(), "payload-1".to_string())
    );

    broker.restart();
    assert_eq!(
        consume_first(&broker.bootstrap(), &topic),
        ("account-1".to_string(), "payload-1".to_string()),
        "the record is still there after a restart"
    );

    broker.kill();
    broker.restart();
    assert_eq!(
        consume_first(&broker.bootstrap(), &topic),
        ("account-1".to_string(), "payload-1".to_string()),
        "an acknowledged record survives SIGKILL"
    );
}

fn accepts_tcp(port: u16) -> bool {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok()
}

fn create_topic(bootstrap: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("create a Kafka admin client");
    let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
    let results = futures::executor::block_on(admin.create_topics(
        &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
        &options,
    ))
    .expect("send the CreateTopics request");
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("creating topic {name} failed: {code}"));
    }
}

fn produce(bootstrap: &str, topic: &str, key: &str, payload: &str) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", KAFKA_TIMEOUT.as_millis().to_string())
        .create()
        .expect("create a Kafka producer");
    let delivery = producer
        .send_result(FutureRecord::to(topic).key(key).payload(payload))
        .unwrap_or_else(|(error, _)| panic!("enqueueing a record for {topic} failed: {error}"));
    futures::executor::block_on(delivery)
        .expect("the producer dropped the delivery report")
        .unwrap_or_else(|(error, _)| panic!("producing to {topic} failed: {error}"));
}

/// Reads the first record of partition 0 and returns its key and payload.
fn consume_first(bootstrap: &str, topic: &str) -> (String, String) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", common::unique_name("harness-smoke"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("create a Kafka consumer");
    let mut partitions = TopicPartitionList::new();
    partitions
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("add partition 0 to the assignment");
    consumer.assign(&partitions).expect("assign partition 0");

    let mut received = None;
    let mut last_error = None;
    common::wait_until(KAFKA_TIMEOUT, Duration::ZERO, || {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let text = |bytes: Option<&[u8]>| {
                    String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned()
                };
                received = Some((text(message.key()), text(message.payload())));
                true
            }
            Some(Err(error)) => {
                last_error = Some(error);
                false
            }
            None => false,
        }
    });
    received.unwrap_or_else(|| {
        panic!(
            "no record arrived from {topic} within {KAFKA_TIMEOUT:?}; last error: {last_error:?}"
        )
    })
}

// ---------------------------------------------------------------------------
// SMTP server

#[test]
fn smtp_server_injects_faults_per_recipient() {
    common::require_system_tests!();

    let server = SmtpServer::start(json!([
        {"recipient": "a@example.test", "action": "451", "times": 1},
        {"recipient": "b@example.test", "action": "550"},
        {"recipient": "c@example.test", "action": "stall-after-data"},
        {"recipient": "*@drop.example.test", "action": "drop"},
    ]));
    let mut client = SmtpClient::connect(server.port());
    assert_eq!(client.command("EHLO localhost").code, 250);

    // 451 once for a@, then a normal delivery.
    assert_eq!(client.command("MAIL FROM:<sender@example.test>").code, 250);
    assert_eq!(
        client.command("RCPT TO:<a@example.test>").code,
        451,
        "first attempt for a@ is deferred"
    );
    assert_eq!(client.command("RSET").code, 250);
    assert_eq!(client.command("MAIL FROM:<sender@example.test>").code, 250);
    assert_eq!(
        client.command("RCPT TO:<a@example.test>").code,
        250,
        "second attempt for a@ is accepted"
    );
    assert_eq!(client.command("DATA").code, 354);
    let accepted = client.send_message(&test_message("a@example.test", "<harness-a@example.test>"));
    assert_eq!(
        accepted.code, 250,
        "message for a@ is accepted: {}",
        accepted.text
    );

    // 550 for b@ on every attempt.
    for attempt in 1..=2 {
        assert_eq!(client.command("MAIL FROM:<sender@example.test>").code, 250);
        assert_eq!(
            client.command("RCPT TO:<b@example.test>").code,
            550,
            "attempt {attempt} for b@ is rejected"
        );
        assert_eq!(client.command("RSET").code, 250);
    }

    // c@ gets its content accepted but never a final reply.
    assert_eq!(client.command("MAIL FROM:<sender@example.test>").code, 250);
    assert_eq!(client.command("RCPT TO:<c@example.test>").code, 250);
    assert_eq!(client.command("DATA").code, 354);
    client.set_read_timeout(Duration::from_millis(1500));
    let stalled =
        client.try_send_message(&test_message("c@example.test", "<harness-c@example.test>"));
    let error = stalled.expect_err("the final reply for c@ never comes");
    assert!(
        matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "reading the reply for c@ times out, got {error}"
    );

    // The connection is dropped at RCPT for any address in drop.example.test.
    let mut client = SmtpClient::connect(server.port());
    assert_eq!(client.command("EHLO localhost").code, 250);
    assert_eq!(client.command("MAIL FROM:<sender@example.test>").code, 250);
    let dropped = client.try_command("RCPT TO:<x@drop.example.test>");
    assert!(
        dropped.is_err(),
        "the server closes the connection instead of replying, got {dropped:?}"
    );

    let messages = server.messages();
    assert_eq!(
        messages.len(),
        1,
        "only the message for a@ is accepted: {messages:#?}"
    );
    let message = &messages[0];
    assert_eq!(message.status, "accepted");
    assert_eq!(message.mail_from, "sender@example.test");
    assert_eq!(message.rcpt_tos, vec!["a@example.test".to_string()]);
    assert_eq!(
        message.message_id.as_deref(),
        Some("<harness-a@example.test>")
    );
    assert_eq!(message.subject.as_deref(), Some("Harness smoke test"));
    assert!(
        message.raw.contains("Body of the smoke test."),
        "raw message has the body: {}",
        message.raw
    );
    assert!(
        message.peer.starts_with("127.0.0.1:"),
        "peer is a loopback address: {}",
        message.peer
    );
    assert!(!message.tls, "a plain connection is not TLS");
    let queue_id = message
        .queue_id
        .as_deref()
        .expect("an accepted message has a queue id");
    assert!(
        accepted.text.contains(queue_id),
        "the 250 reply {:?} names queue id {queue_id}",
        accepted.text
    );

    let stalled: Vec<_> = server
        .records()
        .into_iter()
        .filter(|record| record.status == "stalled")
        .collect();
    assert_eq!(
        stalled.len(),
        1,
        "the stalled message for c@ is recorded: {stalled:#?}"
    );
    assert_eq!(
        stalled[0].message_id.as_deref(),
        Some("<harness-c@example.test>")
    );
    assert_eq!(stalled[0].queue_id, None);
}

#[test]
fn smtp_server_rules_change_while_running() {
    common::require_system_tests!();

    let mut server = SmtpServer::start(json!([{"recipient": "*@example.test", "action": 421}]));
    let mut client = SmtpClient::connect(server.port());
    assert_eq!(client.command("EHLO localhost").code, 250);
    assert_eq!(client.command("MAIL FROM:<sender@example.test>").code, 250);
    assert_eq!(
        client.command("RCPT TO:<d@example.test>").code,
        421,
        "the glob rule matches"
    );
    assert_eq!(client.command("RSET").code, 250);

    server.set_rules(
        json!({"rules": [{"recipient": "d@example.test", "action": "452", "stage": "data"}]}),
    );
    assert_eq!(client.command("MAIL FROM:<sender@example.test>").code, 250);
    assert_eq!(
        client.command("RCPT TO:<d@example.test>").code,
        250,
        "the new rules act at DATA, not RCPT"
    );
    assert_eq!(client.command("DATA").code, 354);
    let reply = client.send_message(&test_message("d@example.test", "<harness-d1@example.test>"));
    assert_eq!(
        reply.code, 452,
        "a data-stage rule answers the DATA command"
    );

    server.set_rules(json!([]));
    assert_eq!(client.command("MAIL FROM:<sender@example.test>").code, 250);
    assert_eq!(client.command("RCPT TO:<d@example.test>").code, 250);
    assert_eq!(client.command("DATA").code, 354);
    let reply = client.send_message(&test_message("d@example.test", "<harness-d2@example.test>"));
    assert_eq!(reply.code, 250, "without rules the message is accepted");
    assert_eq!(server.wait_for_messages(1, SMTP_TIMEOUT).len(), 1);
    drop(client);

    let port = server.port();
    server.stop();
    assert!(
        !accepts_tcp(port),
        "a stopped SMTP server refuses connections"
    );
    server.start_again();
    assert_eq!(server.port(), port, "start_again() keeps the port");
    let mut client = SmtpClient::connect(server.port());
    assert_eq!(
        client.command("EHLO localhost").code,
        250,
        "the server answers again after start_again()"
    );
    assert_eq!(
        server.messages().len(),
        1,
        "the record file survives a restart"
    );
}

#[test]
fn smtp_server_rejects_invalid_rules() {
    common::require_system_tests!();

    let mut server = SmtpServer::start(json!([]));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        server.set_rules(json!([{"recipient": "a@example.test", "action": "299"}]));
    }));
    let message = panic_text(result.expect_err("set_rules() panics on an invalid action"));
    assert!(
        message.contains("rejected the rules"),
        "panic names the rejection: {message}"
    );
    assert!(
        message.contains("'299'"),
        "panic names the invalid action: {message}"
    );
}

#[test]
fn smtp_server_starttls_requires_auth() {
    common::require_system_tests!();

    let options = SmtpOptions {
        tls: SmtpTls::StartTls,
        auth: Some(("notifier".to_string(), "secret".to_string())),
        ..SmtpOptions::default()
    };
    let server = SmtpServer::start_with(json!([]), options);
    let cert = server
        .tls_cert_path()
        .expect("a TLS server has a certificate");
    let cert = cert.to_str().expect("certificate path is UTF-8");
    let port = server.port().to_string();

    let sent = send_with_python(&[
        "--port",
        &port,
        "--to",
        "t@example.test",
        "--starttls",
        "--cafile",
        cert,
        "--auth",
        "notifier:secret",
    ]);
    assert_eq!(sent["sent"], true, "STARTTLS with AUTH delivers: {sent}");

    let wrong_password = send_with_python(&[
        "--port",
        &port,
        "--to",
        "t@example.test",
        "--starttls",
        "--cafile",
        cert,
        "--auth",
        "notifier:wrong",
    ]);
    assert_eq!(
        wrong_password["code"], 535,
        "a wrong password is rejected: {wrong_password}"
    );

    let no_auth = send_with_python(&[
        "--port",
        &port,
        "--to",
        "t@example.test",
        "--starttls",
        "--cafile",
        cert,
    ]);
    assert_eq!(
        no_auth["code"], 530,
        "mail without AUTH is rejected: {no_auth}"
    );

    let messages = server.wait_for_messages(1, SMTP_TIMEOUT);
    assert_eq!(
        messages.len(),
        1,
        "only the authenticated message arrives: {messages:#?}"
    );
    assert!(messages[0].tls, "the message arrived over TLS");
    assert_eq!(messages[0].auth_user.as_deref(), Some("notifier"));
}

#[test]
fn smtp_server_implicit_tls() {
    common::require_system_tests!();

    let server = SmtpServer::start_with(
        json!([]),
        SmtpOptions {
            tls: SmtpTls::Implicit,
            ..SmtpOptions::default()
        },
    );
    let cert = server
        .tls_cert_path()
        .expect("a TLS server has a certificate");
    let port = server.port().to_string();

    let sent = send_with_python(&[
        "--port",
        &port,
        "--to",
        "t@example.test",
        "--implicit-tls",
        "--cafile",
        cert.to_str().unwrap(),
    ]);
    assert_eq!(sent["sent"], true, "implicit TLS delivers: {sent}");

    let plain = send_with_python(&["--port", &port, "--to", "t@example.test", "--timeout", "2"]);
    assert_eq!(
        plain["sent"], false,
        "a plain client cannot talk to an implicit-TLS port: {plain}"
    );

    let messages = server.wait_for_messages(1, SMTP_TIMEOUT);
    assert!(messages[0].tls, "the message arrived over TLS");
}

// ---------------------------------------------------------------------------
// txnotify binary

#[test]
fn txnotify_binary_runs() {
    common::require_system_tests!();

    let output = common::run_txnotify(&["--help"], &[], Duration::from_secs(30));
    assert!(
        output.status.success(),
        "txnotify --help exits with success: {output:?}"
    );
}

// ---------------------------------------------------------------------------
// Helpers

fn test_message(recipient: &str, message_id: &str) -> String {
    format!(
        "From: sender@example.test\r\nTo: {recipient}\r\nSubject: Harness smoke test\r\n\
         Message-ID: {message_id}\r\n\r\nBody of the smoke test.\r\n"
    )
}

/// Runs tests/support/send_mail.py and returns its JSON outcome.
fn send_with_python(args: &[&str]) -> Value {
    let python = common::tool_from_env("TXNOTIFY_PYTHON", "the test virtualenv's python");
    let output = Command::new(python)
        .arg(common::support_script("send_mail.py"))
        .args(args)
        .output()
        .expect("run send_mail.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "send_mail.py failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|error| panic!("send_mail.py printed invalid JSON ({error}): {stdout}"))
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|text| text.to_string()))
        .unwrap_or_default()
}

/// SMTP reply: the code and the text of its last line.
#[derive(Debug)]
struct Reply {
    code: u16,
    text: String,
}

/// Minimal SMTP client on std's TcpStream, to check the server's replies
/// command by command.
struct SmtpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl SmtpClient {
    fn connect(port: u16) -> SmtpClient {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream =
            TcpStream::connect_timeout(&address, SMTP_TIMEOUT).expect("connect to the SMTP server");
        stream
            .set_read_timeout(Some(SMTP_TIMEOUT))
            .expect("set the read timeout");
        let writer = stream.try_clone().expect("clone the SMTP socket");
        let mut client = SmtpClient {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = client.read_reply().expect("read the SMTP greeting");
        assert_eq!(greeting.code, 220, "greeting: {greeting:?}");
        client
    }

    fn set_read_timeout(&mut self, timeout: Duration) {
        self.writer
            .set_read_timeout(Some(timeout))
            .expect("set the read timeout");
    }

    fn command(&mut self, line: &str) -> Reply {
        self.try_command(line)
            .unwrap_or_else(|error| panic!("SMTP command {line:?} failed: {error}"))
    }

    fn try_command(&mut self, line: &str) -> io::Result<Reply> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        self.read_reply()
    }

    /// Sends the content after a 354 reply, with the final dot, and reads the reply.
    fn send_message(&mut self, message: &str) -> Reply {
        self.try_send_message(message)
            .unwrap_or_else(|error| panic!("sending the message failed: {error}"))
    }

    fn try_send_message(&mut self, message: &str) -> io::Result<Reply> {
        // The test messages have no line that starts with a dot, so no dot-stuffing is needed.
        self.writer.write_all(message.as_bytes())?;
        self.writer.write_all(b".\r\n")?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> io::Result<Reply> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ));
            }
            let code = line
                .get(..3)
                .and_then(|code| code.parse().ok())
                .ok_or_else(|| {
                    io::Error::new(
                        ErrorKind::InvalidData,
                        format!("invalid SMTP reply line {line:?}"),
                    )
                })?;
            // "250-..." continues a multi-line reply; "250 ..." ends it.
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply {
                    code,
                    text: line.get(4..).unwrap_or_default().trim_end().to_string(),
                });
            }
        }
    }
}
