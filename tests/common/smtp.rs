//! The SMTP server process from `tests/support/smtp_server.py`.
//!
//! The script's docstring describes the fault rules and the record format.
//! In short, rules are a JSON list such as
//! `[{"recipient": "a@example.test", "action": "451", "times": 1}]`, with
//! actions `"4xx"`/`"5xx"` reply codes, `"stall-after-data"` and `"drop"`,
//! an optional `"stage"` (`"rcpt"` by default, or `"data"`), and an optional
//! `"times"` limit counted per recipient.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::process::ManagedProcess;
use super::{tool_from_env, wait_until};

/// Maximum wait for the server to write its ready file.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Maximum wait for the server to confirm that it loaded new rules. It polls
/// the rules file every 0.1 s.
const RULES_TIMEOUT: Duration = Duration::from_secs(5);

/// Wait after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

const POLL: Duration = Duration::from_millis(20);

/// TLS mode of the SMTP server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP only.
    #[default]
    Off,
    /// STARTTLS is offered on the plain port.
    StartTls,
    /// TLS starts on connect, as on port 465.
    Implicit,
}

/// Settings of an [`SmtpServer`] besides its fault rules.
#[derive(Clone, Debug, Default)]
pub struct SmtpOptions {
    /// TLS mode. With TLS, the harness creates a self-signed certificate for
    /// `localhost` and `127.0.0.1`, see [`SmtpServer::tls_cert_path`].
    pub tls: SmtpTls,
    /// With [`SmtpTls::StartTls`], reject mail commands sent before STARTTLS.
    pub require_starttls: bool,
    /// User name and password that clients must send with AUTH PLAIN or
    /// LOGIN before MAIL FROM. With STARTTLS, AUTH is offered only after it.
    pub auth: Option<(String, String)>,
    /// Time without a client command after which the server closes the
    /// connection, 300 s by default. It also ends a stall.
    pub idle_timeout: Option<Duration>,
}

/// One message that the SMTP server received, from its record file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// `accepted`, or `stalled` or `dropped` when a rule withheld the reply
    /// after the whole message had arrived.
    pub status: String,
    /// RFC 3339 time in UTC.
    pub received_at: String,
    /// Client address as `ip:port`.
    pub peer: String,
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    /// `Message-ID` header including the angle brackets, if present.
    pub message_id: Option<String>,
    /// Decoded `Subject` header, if present.
    pub subject: Option<String>,
    /// Id sent in the `250` reply, which only accepted messages have.
    pub queue_id: Option<String>,
    /// Whether the message arrived over TLS.
    pub tls: bool,
    /// User name of a successful AUTH.
    pub auth_user: Option<String>,
    /// The message as received, headers and body, with CRLF line ends.
    pub raw: String,
}

impl ReceivedMessage {
    fn from_json(line: &str, path: &Path) -> ReceivedMessage {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|error| {
            panic!("invalid JSON line in {}: {error}: {line}", path.display())
        });
        let text = |key: &str| -> String {
            value[key]
                .as_str()
                .unwrap_or_else(|| {
                    panic!("record in {} has no string {key:?}: {line}", path.display())
                })
                .to_string()
        };
        let optional_text = |key: &str| value[key].as_str().map(str::to_string);
        let rcpt_tos = value["rcpt_tos"]
            .as_array()
            .unwrap_or_else(|| panic!("record in {} has no rcpt_tos list: {line}", path.display()))
            .iter()
            .map(|recipient| recipient.as_str().unwrap_or_default().to_string())
            .collect();
        ReceivedMessage {
            status: text("status"),
            received_at: text("received_at"),
            peer: text("peer"),
            mail_from: text("mail_from"),
            rcpt_tos,
            message_id: optional_text("message_id"),
            subject: optional_text("subject"),
            queue_id: optional_text("queue_id"),
            tls: value["tls"].as_bool().unwrap_or(false),
            auth_user: optional_text("auth_user"),
            raw: text("raw"),
        }
    }
}

/// SMTP server process on a free port on 127.0.0.1 that records what it
/// receives and injects faults per recipient.
///
/// The server is killed when the handle is dropped. Its files (record,
/// rules, log, certificate) live in a temporary directory owned by the handle.
pub struct SmtpServer {
    process: ManagedProcess,
    port: u16,
    options: SmtpOptions,
    temp: TempDir,
}

impl SmtpServer {
    /// Starts a plain SMTP server with the given fault rules (`json!([])`
    /// for none).
    pub fn start(rules: Value) -> SmtpServer {
        SmtpServer::start_with(rules, SmtpOptions::default())
    }

    /// Starts an SMTP server with fault rules and options. Panics if the
    /// rules are invalid or the server is not ready within 20 seconds.
    pub fn start_with(rules: Value, options: SmtpOptions) -> SmtpServer {
        let temp = tempfile::Builder::new()
            .prefix("txnotify-smtp-")
            .tempdir()
            .unwrap_or_else(|error| {
                panic!("failed to create a temporary directory for the SMTP server: {error}")
            });
        write_rules_file(&temp.path().join("rules.json"), &rules);
        if options.tls != SmtpTls::Off {
            create_self_signed_certificate(temp.path());
        }
        let (process, port) = spawn_server(temp.path(), &options, 0);
        SmtpServer {
            process,
            port,
            options,
            temp,
        }
    }

    /// Returns the port, which stays the same across [`SmtpServer::start_again`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Returns the pid of the current server process.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Returns the PEM certificate that a TLS client must trust, if TLS is on.
    pub fn tls_cert_path(&self) -> Option<PathBuf> {
        (self.options.tls != SmtpTls::Off).then(|| self.temp.path().join("cert.pem"))
    }

    /// Returns the log file of the server.
    pub fn log_path(&self) -> PathBuf {
        self.temp.path().join("smtp.log")
    }

    /// Replaces the fault rules and, while the server runs, waits until it
    /// has loaded them, so they apply to every later command. Attempt counts
    /// (`times`) start again from zero. Panics if the server rejects the rules.
    pub fn set_rules(&mut self, rules: Value) {
        let path = self.temp.path().join("rules.json");
        write_rules_file(&path, &rules);
        if !self.process.is_running() {
            return;
        }

        let metadata = fs::metadata(&path).unwrap_or_else(|error| {
            panic!("failed to read the metadata of {}: {error}", path.display())
        });
        let mtime_ns =
            i128::from(metadata.mtime()) * 1_000_000_000 + i128::from(metadata.mtime_nsec());
        let signature = format!("{}:{}:{}", metadata.ino(), mtime_ns, metadata.size());
        let status_path = self.temp.path().join("rules.json.status");
        let mut status = Value::Null;
        let loaded = wait_until(RULES_TIMEOUT, POLL, || {
            status = fs::read_to_string(&status_path)
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or(Value::Null);
            status["signature"] == signature.as_str()
        });
        if !loaded {
            panic!(
                "the SMTP server did not load the new rules within {RULES_TIMEOUT:?}; last status: {status}\n{}",
                self.process.log_tail()
            );
        }
        if let Some(error) = status["error"].as_str() {
            panic!("the SMTP server rejected the rules {rules}: {error}");
        }
    }

    /// Returns every record: accepted, stalled and dropped messages, in the
    /// order the server received them.
    pub fn records(&self) -> Vec<ReceivedMessage> {
        let path = self.temp.path().join("record.jsonl");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(error) => panic!("failed to read {}: {error}", path.display()),
        };
        // A line without its newline is still being written.
        text.split_inclusive('\n')
            .filter(|line| line.ends_with('\n'))
            .map(|line| ReceivedMessage::from_json(line, &path))
            .collect()
    }

    /// Returns the messages that the server accepted with a 250 reply.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.records()
            .into_iter()
            .filter(|message| message.status == "accepted")
            .collect()
    }

    /// Waits until at least `count` messages were accepted and returns all
    /// accepted messages. Panics after `timeout`, listing what arrived.
    pub fn wait_for_messages(&self, count: usize, timeout: Duration) -> Vec<ReceivedMessage> {
        let mut messages = Vec::new();
        let arrived = wait_until(timeout, Duration::from_millis(50), || {
            messages = self.messages();
            messages.len() >= count
        });
        if !arrived {
            panic!(
                "expected at least {count} accepted messages within {timeout:?}, got {}: {:#?}",
                messages.len(),
                self.records()
            );
        }
        messages
    }

    /// Returns true while the server process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Stops the server with SIGTERM; it closes open connections, stalled
    /// ones included. Sends SIGKILL if it has not exited within 5 seconds.
    pub fn stop(&mut self) {
        self.process.terminate(STOP_GRACE);
    }

    /// Kills the server with SIGKILL.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts a stopped or killed server again on the same port, with the
    /// current rules and the same record file. Panics if it is still running.
    pub fn start_again(&mut self) {
        assert!(
            !self.process.is_running(),
            "start_again() needs a stopped SMTP server; call stop() first"
        );
        ManagedProcess::append_log_marker(
            &self.log_path(),
            &format!("starting again on port {}", self.port),
        );
        let (process, port) = spawn_server(self.temp.path(), &self.options, self.port);
        assert_eq!(
            port, self.port,
            "the restarted SMTP server bound another port"
        );
        self.process = process;
    }
}

fn python_bin() -> PathBuf {
    tool_from_env(
        "TXNOTIFY_PYTHON",
        "a Python with the packages in tests/support/requirements.txt",
    )
}

/// Path of a script in `tests/support/`.
pub fn support_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(name)
}

fn write_rules_file(path: &Path, rules: &Value) {
    // A rename replaces the file in one step, so the server never reads a
    // half-written file, and the new inode marks it as changed.
    let temporary = path.with_extension("json.tmp");
    fs::write(&temporary, format!("{rules}\n"))
        .unwrap_or_else(|error| panic!("failed to write {}: {error}", temporary.display()));
    fs::rename(&temporary, path).unwrap_or_else(|error| {
        panic!(
            "failed to rename {} to {}: {error}",
            temporary.display(),
            path.display()
        )
    });
}

/// Starts the script and waits for its ready file. Returns the process and its port.
fn spawn_server(dir: &Path, options: &SmtpOptions, port: u16) -> (ManagedProcess, u16) {
    let ready_path = dir.join("ready");
    let _ = fs::remove_file(&ready_path);

    let mut command = Command::new(python_bin());
    command
        .arg(support_script("smtp_server.py"))
        .args(["--host", "127.0.0.1"])
        .args(["--port", &port.to_string()])
        .arg("--record")
        .arg(dir.join("record.jsonl"))
        .arg("--rules")
        .arg(dir.join("rules.json"))
        .arg("--ready-file")
        .arg(&ready_path)
        .env("PYTHONUNBUFFERED", "1");
    if options.tls != SmtpTls::Off {
        command
            .arg("--tls-cert")
            .arg(dir.join("cert.pem"))
            .arg("--tls-key")
            .arg(dir.join("key.pem"));
    }
    if options.tls == SmtpTls::Implicit {
        command.arg("--implicit-tls");
    }
    if options.require_starttls {
        command.arg("--require-starttls");
    }
    if let Some((user, password)) = &options.auth {
        command.args(["--auth", &format!("{user}:{password}")]);
    }
    if let Some(timeout) = options.idle_timeout {
        command.args(["--idle-timeout", &timeout.as_secs_f64().to_string()]);
    }

    let log_path = dir.join("smtp.log");
    let mut process = ManagedProcess::spawn("smtp_server.py", command, &log_path, &log_path);
    let mut bound_port = None;
    let mut exited = None;
    wait_until(START_TIMEOUT, POLL, || {
        bound_port = fs::read_to_string(&ready_path)
            .ok()
            .and_then(|text| text.trim().parse::<u16>().ok());
        exited = process.try_exit_status();
        bound_port.is_some() || exited.is_some()
    });
    match (bound_port, exited) {
        (Some(port), _) => (process, port),
        (None, Some(status)) => panic!(
            "the SMTP server exited during startup with {status}\n{}",
            process.log_tail()
        ),
        (None, None) => panic!(
            "the SMTP server did not write {} within {START_TIMEOUT:?}\n{}",
            ready_path.display(),
            process.log_tail()
        ),
    }
}

/// Writes `cert.pem` and `key.pem` into `dir`: a self-signed P-256
/// certificate for `localhost` and `127.0.0.1`, valid for 7 days.
///
/// The certificate is marked as not a CA, because rustls-webpki rejects a
/// CA certificate presented as a server certificate. A client can still add
/// it as its only trusted root.
fn create_self_signed_certificate(dir: &Path) {
    let config = dir.join("openssl.cnf");
    fs::write(
        &config,
        "[req]\n\
         distinguished_name = subject\n\
         x509_extensions = server\n\
         prompt = no\n\
         [subject]\n\
         CN = localhost\n\
         [server]\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:localhost, IP:127.0.0.1\n",
    )
    .unwrap_or_else(|error| panic!("failed to write {}: {error}", config.display()));

    let output = Command::new("openssl")
        .args(["req", "-x509", "-config"])
        .arg(&config)
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "7"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap_or_else(|error| {
            panic!("failed to run openssl to create a test certificate: {error}; install the openssl package")
        });
    if !output.status.success() {
        panic!(
            "openssl failed to create a test certificate with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
