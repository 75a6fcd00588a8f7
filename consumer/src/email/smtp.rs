//! SMTP delivery with a timeout on every phase and a small connection pool.
//!
//! Guarantees:
//! - Every network step has a deadline, measured with `tokio::time`. Opening
//!   a session (TCP connect, implicit TLS handshake, greeting, EHLO, STARTTLS,
//!   AUTH) shares `connect_timeout_ms`. MAIL, RCPT and DATA each get
//!   `command_timeout_ms`. Transmitting the content and reading the final
//!   reply share `data_timeout_ms`.
//! - Every failure is a [`SendError`] whose [`SendError::class`] says whether
//!   the message was certainly not accepted (transient or permanent) or may
//!   have been accepted (unknown outcome: a timeout or connection loss after
//!   content transmission began).
//! - A connection is reused only after a send on it succeeded. A connection
//!   that returned an error or timed out is closed. An idle connection older
//!   than `idle_check_after_ms` is checked with NOOP first, and one older
//!   than `idle_timeout_ms` is closed.
//! - At most `max_connections` connections are open at a time. Callers wait
//!   for a free one without a deadline of their own, so a caller waits at most
//!   as long as the sends ahead of it, each bounded by the timeouts above.
//! - TCP_NODELAY is set on every connection. lettre 0.11.23 does not set it on
//!   the sockets it opens itself, and Nagle's algorithm together with delayed
//!   ACKs then stalls each message, so this module opens the socket and hands
//!   it to lettre. In the `pooled_connection_throughput` test (500 messages
//!   over one connection to mailin-embedded on loopback, 2-core Linux
//!   machine) this took 22 s without TCP_NODELAY and 0.13 s with it.
//! - The password is read once from the environment or a file and never
//!   appears in `Debug` output, logs or errors. Errors contain neither
//!   addresses nor server reply text.

mod config;
mod error;
mod tls;

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use lettre::{Address, Message};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{timeout, Instant};
use tracing::Instrument;

pub use self::config::{ConfigError, SmtpConfig, TlsMode};
pub use self::error::{ConnectionFailure, Phase, SendError, SendFailureClass};
use self::tls::{TlsSetup, TlsTokioStream};
use super::text::clean_line;
use crate::telemetry::metrics::{self, SendResult};

/// Longest reply text kept in a [`SmtpReceipt`], in characters.
const MAX_RECEIPT_REPLY_CHARS: usize = 120;

/// Replacement for a word of a server reply that contains an email address.
const REDACTED: &str = "[redacted]";

/// The server's final reply to an accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReceipt {
    /// Three-digit SMTP reply code, 250 in practice.
    pub code: u16,
    /// First line of the reply text, shortened, with every word that
    /// contains `@` replaced so no address is kept.
    pub reply: String,
}

/// A pooled connection and the time it was last used.
struct IdleConnection {
    connection: AsyncSmtpConnection,
    idle_since: Instant,
}

/// Sends messages to one SMTP server, reusing connections.
///
/// Build it once with [`SmtpSender::new`] and share it; [`SmtpSender::send`]
/// takes `&self` and may be called concurrently.
pub struct SmtpSender {
    config: SmtpConfig,
    host: String,
    port: u16,
    from: Mailbox,
    message_id_domain: String,
    hello_name: ClientId,
    credentials: Option<Credentials>,
    tls: TlsSetup,
    connection_permits: Semaphore,
    idle: Mutex<Vec<IdleConnection>>,
}

impl fmt::Debug for SmtpSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpSender")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.config.tls)
            .field("username", &self.config.username)
            .field("password", &self.credentials.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl SmtpSender {
    /// Validates `config`, reads the password and CA file it names, and
    /// prepares TLS. Opens no connection.
    pub fn new(config: SmtpConfig) -> Result<Self, ConfigError> {
        config.validate()?;

        let from = config.parse_from()?;
        let message_id_domain = config.effective_message_id_domain(&from);
        let host = config.host.trim_matches(['[', ']']).to_owned();
        let credentials = match &config.username {
            Some(username) => Some(Credentials::new(username.clone(), read_password(&config)?)),
            None => None,
        };
        let hello_name = match &config.hello_name {
            Some(name) => ClientId::Domain(name.clone()),
            None => ClientId::default(),
        };
        let tls = TlsSetup::new(&config, &host)?;

        Ok(Self {
            port: config.effective_port(),
            connection_permits: Semaphore::new(config.max_connections),
            idle: Mutex::new(Vec::with_capacity(config.max_connections)),
            host,
            from,
            message_id_domain,
            hello_name,
            credentials,
            tls,
            config,
        })
    }

    /// Returns the sender mailbox from the configuration.
    pub fn sender_mailbox(&self) -> &Mailbox {
        &self.from
    }

    /// Returns the domain to use in `Message-ID` headers.
    pub fn message_id_domain(&self) -> &str {
        &self.message_id_domain
    }

    /// Sends `message` to the recipients of its envelope.
    ///
    /// Reuses an idle connection when one passes its checks. If the server
    /// had closed a reused connection, the failure shows at MAIL, before any
    /// part of the message reached the server, so the message is sent once
    /// more on a new connection.
    ///
    /// Runs in an `smtp.send` span and records the duration and result in
    /// `txnotify_smtp_send_duration_seconds`.
    pub async fn send(&self, message: &Message) -> Result<SmtpReceipt, SendError> {
        let started = Instant::now();
        let result = self
            .send_untimed(message)
            .instrument(tracing::info_span!("smtp.send"))
            .await;
        let outcome = match &result {
            Ok(_) => SendResult::Accepted,
            Err(error) => match error.class() {
                SendFailureClass::Transient => SendResult::Transient,
                SendFailureClass::Permanent => SendResult::Permanent,
                SendFailureClass::UnknownOutcome => SendResult::UnknownOutcome,
            },
        };
        metrics::observe_smtp_send(started.elapsed(), outcome);
        result
    }

    async fn send_untimed(&self, message: &Message) -> Result<SmtpReceipt, SendError> {
        let envelope = message.envelope();
        if envelope.to().is_empty() {
            return Err(SendError::InvalidRecipient);
        }
        let content = message.formatted();

        // Nothing calls `close` on this private semaphore, so `acquire`
        // cannot fail.
        let _permit = self
            .connection_permits
            .acquire()
            .await
            .expect("connection semaphore is never closed");

        if let Some(mut connection) = self.take_idle_connection().await {
            match self.transmit(&mut connection, envelope, &content).await {
                Ok(reply) => return Ok(self.finish_success(connection, &reply)),
                Err(error) if is_stale_connection(&error) => {
                    tracing::info!(
                        error = %error,
                        "Reused SMTP connection was closed by the server; retrying on a new connection."
                    );
                }
                Err(error) => {
                    discard_after_error(connection, &error);
                    return Err(error);
                }
            }
        }

        let mut connection = self.open_connection().await?;
        match self.transmit(&mut connection, envelope, &content).await {
            Ok(reply) => Ok(self.finish_success(connection, &reply)),
            Err(error) => {
                discard_after_error(connection, &error);
                Err(error)
            }
        }
    }

    /// Opens a session (connect, greeting, EHLO, STARTTLS and AUTH as configured) and keeps
    /// it in the pool, so a circuit breaker can test the server without sending a message.
    pub async fn probe(&self) -> Result<(), SendError> {
        let _permit = self
            .connection_permits
            .acquire()
            .await
            .expect("connection semaphore is never closed");
        let connection = self.open_connection().await?;
        let mut idle = self.lock_idle();
        if idle.len() < self.config.max_connections {
            idle.push(IdleConnection {
                connection,
                idle_since: Instant::now(),
            });
        }
        Ok(())
    }

    /// Returns the server as `host:port`, the identity of its circuit breaker.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Closes every idle connection with QUIT, each bounded by
    /// `command_timeout_ms`. Call on shutdown; later sends open new
    /// connections.
    pub async fn close_idle(&self) {
        let idle: Vec<IdleConnection> = std::mem::take(&mut *self.lock_idle());
        for mut entry in idle {
            let _ = timeout(self.config.command_timeout(), entry.connection.quit()).await;
        }
    }

    /// Returns the number of idle connections in the pool.
    pub fn idle_connections(&self) -> usize {
        self.lock_idle().len()
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<IdleConnection>> {
        // A panic while holding the lock cannot leave the Vec inconsistent,
        // so a poisoned lock is still safe to use.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns the most recently used idle connection that is still usable,
    /// closing the ones that are too old or fail the NOOP check.
    async fn take_idle_connection(&self) -> Option<AsyncSmtpConnection> {
        let idle_timeout = Duration::from_millis(self.config.idle_timeout_ms);
        let idle_check_after = Duration::from_millis(self.config.idle_check_after_ms);

        loop {
            let entry = self.lock_idle().pop()?;
            let IdleConnection {
                mut connection,
                idle_since,
            } = entry;
            let idle_for = idle_since.elapsed();

            if connection.has_broken() {
                continue;
            }
            if idle_for > idle_timeout {
                tracing::debug!(
                    idle_ms = idle_for.as_millis(),
                    "Closing idle SMTP connection."
                );
                close_in_background(connection, self.config.command_timeout());
                continue;
            }
            if idle_for > idle_check_after {
                let check = timeout(self.config.command_timeout(), connection.test_connected());
                if !matches!(check.await, Ok(true)) {
                    tracing::debug!(
                        idle_ms = idle_for.as_millis(),
                        "Idle SMTP connection failed the NOOP check; discarding it."
                    );
                    continue;
                }
            }
            return Some(connection);
        }
    }

    fn finish_success(&self, connection: AsyncSmtpConnection, reply: &Response) -> SmtpReceipt {
        let mut idle = self.lock_idle();
        if idle.len() < self.config.max_connections {
            idle.push(IdleConnection {
                connection,
                idle_since: Instant::now(),
            });
        }
        drop(idle);
        receipt_from(reply)
    }

    /// Opens a session within `connect_timeout_ms`.
    async fn open_connection(&self) -> Result<AsyncSmtpConnection, SendError> {
        let connect_timeout = self.config.connect_timeout();
        let mut phase = Phase::Connect;

        let result = timeout(connect_timeout, self.open_session(&mut phase)).await;

        match result {
            Ok(Ok(connection)) => {
                tracing::debug!(host = %self.host, port = self.port, "Opened SMTP connection.");
                Ok(connection)
            }
            Ok(Err(error)) => Err(error),
            Err(_elapsed) => Err(SendError::Timeout {
                phase,
                timeout: connect_timeout,
            }),
        }
    }

    /// Runs the session setup steps, recording the current step in `phase`
    /// so a timeout can name it.
    async fn open_session(&self, phase: &mut Phase) -> Result<AsyncSmtpConnection, SendError> {
        // 1. TCP, with Nagle's algorithm off.
        *phase = Phase::Connect;
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|error| connection_error(Phase::Connect, error))?;
        tcp.set_nodelay(true)
            .map_err(|error| connection_error(Phase::Connect, error))?;

        // 2. Implicit TLS before lettre reads the greeting.
        let stream: Box<dyn AsyncTokioStream> = match &self.tls {
            TlsSetup::Implicit {
                connector,
                server_name,
            } => {
                *phase = Phase::TlsHandshake;
                let tls = connector
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(|error| SendError::Tls {
                        phase: Phase::TlsHandshake,
                        source: error.into(),
                    })?;
                Box::new(TlsTokioStream(tls))
            }
            TlsSetup::None | TlsSetup::Starttls(_) => Box::new(tcp),
        };

        // 3. Greeting and EHLO.
        *phase = Phase::Greeting;
        let mut connection = AsyncSmtpConnection::connect_with_transport(stream, &self.hello_name)
            .await
            .map_err(|error| SendError::from_lettre(Phase::Greeting, error))?;

        // 4. STARTTLS, which repeats EHLO on the encrypted stream.
        if let TlsSetup::Starttls(parameters) = &self.tls {
            *phase = Phase::Starttls;
            if !connection.can_starttls() {
                connection.abort().await;
                return Err(SendError::Unsupported {
                    extension: "STARTTLS",
                });
            }
            connection
                .starttls(parameters.clone(), &self.hello_name)
                .await
                .map_err(|error| SendError::from_lettre(Phase::Starttls, error))?;
        }

        // 5. AUTH.
        if let Some(credentials) = &self.credentials {
            *phase = Phase::Auth;
            let mechanisms = [Mechanism::Plain, Mechanism::Login];
            if let Err(error) = connection.auth(&mechanisms, credentials).await {
                connection.abort().await;
                // lettre reports a missing common mechanism as a client error.
                return Err(if error.is_client() {
                    SendError::Unsupported {
                        extension: "AUTH PLAIN or LOGIN",
                    }
                } else {
                    SendError::from_lettre(Phase::Auth, error)
                });
            }
        }

        Ok(connection)
    }

    /// Runs one mail transaction: MAIL, RCPT for each recipient, DATA, then
    /// the content. Returns the final reply.
    async fn transmit(
        &self,
        connection: &mut AsyncSmtpConnection,
        envelope: &Envelope,
        content: &[u8],
    ) -> Result<Response, SendError> {
        let mail_parameters = mail_parameters(connection, envelope, content)?;

        self.command(
            connection,
            Phase::Mail,
            Mail::new(envelope.from().cloned(), mail_parameters),
        )
        .await?;
        for recipient in envelope.to() {
            self.command(
                connection,
                Phase::Rcpt,
                Rcpt::new(recipient.clone(), Vec::new()),
            )
            .await?;
        }
        self.command(connection, Phase::Data, Data).await?;

        let data_timeout = self.config.data_timeout();
        match timeout(data_timeout, connection.message(content)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => Err(SendError::from_lettre(Phase::Content, error)),
            Err(_elapsed) => Err(SendError::Timeout {
                phase: Phase::Content,
                timeout: data_timeout,
            }),
        }
    }

    /// Sends one command and reads its reply within `command_timeout_ms`.
    async fn command<C: fmt::Display>(
        &self,
        connection: &mut AsyncSmtpConnection,
        phase: Phase,
        command: C,
    ) -> Result<Response, SendError> {
        let command_timeout = self.config.command_timeout();
        match timeout(command_timeout, connection.command(command)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => Err(SendError::from_lettre(phase, error)),
            Err(_elapsed) => Err(SendError::Timeout {
                phase,
                timeout: command_timeout,
            }),
        }
    }
}

/// Picks the MAIL parameters the envelope and content need, failing if the
/// server lacks the extension for them (RFC 6531 SMTPUTF8, RFC 6152
/// 8BITMIME).
fn mail_parameters(
    connection: &AsyncSmtpConnection,
    envelope: &Envelope,
    content: &[u8],
) -> Result<Vec<MailParameter>, SendError> {
    let server = connection.server_info();
    let mut parameters = Vec::new();

    let non_ascii_address = envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .any(|address: &Address| !AsRef::<str>::as_ref(address).is_ascii());
    if non_ascii_address {
        if !server.supports_feature(Extension::SmtpUtfEight) {
            return Err(SendError::InvalidRecipient);
        }
        parameters.push(MailParameter::SmtpUtfEight);
    }

    if !content.is_ascii() {
        if !server.supports_feature(Extension::EightBitMime) {
            return Err(SendError::Unsupported {
                extension: "8BITMIME",
            });
        }
        parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }

    Ok(parameters)
}

/// Returns `true` if a reused connection failed in a way that shows the
/// server had closed it while idle: the connection broke or the server
/// replied 421 (closing channel) at MAIL, before any part of the message was
/// accepted.
fn is_stale_connection(error: &SendError) -> bool {
    matches!(
        error,
        SendError::Connection {
            phase: Phase::Mail,
            ..
        } | SendError::Rejected {
            phase: Phase::Mail,
            code: 421,
            ..
        }
    )
}

/// Closes a connection after a failed send. After a rejection the server is
/// still talking, so it gets a QUIT; after a timeout or a broken connection
/// the socket is simply closed.
fn discard_after_error(connection: AsyncSmtpConnection, error: &SendError) {
    match error {
        SendError::Rejected { .. }
        | SendError::Unsupported { .. }
        | SendError::InvalidRecipient => {
            // QUIT gets a short fixed time because the connection is already
            // discarded and nothing waits for the reply.
            close_in_background(connection, Duration::from_secs(5));
        }
        SendError::Timeout { .. } | SendError::Connection { .. } | SendError::Tls { .. } => {
            drop(connection);
        }
    }
}

/// Sends QUIT on a spawned task, bounded by `quit_timeout`, then drops the
/// connection.
fn close_in_background(mut connection: AsyncSmtpConnection, quit_timeout: Duration) {
    tokio::spawn(async move {
        let _ = timeout(quit_timeout, connection.quit()).await;
    });
}

fn connection_error(phase: Phase, error: std::io::Error) -> SendError {
    SendError::Connection {
        phase,
        source: error.into(),
    }
}

fn receipt_from(reply: &Response) -> SmtpReceipt {
    let first_line = reply.first_line().unwrap_or_default();
    let redacted: Vec<&str> = first_line
        .split_whitespace()
        .map(|word| if word.contains('@') { REDACTED } else { word })
        .collect();
    SmtpReceipt {
        code: u16::from(reply.code()),
        reply: clean_line(&redacted.join(" "), MAX_RECEIPT_REPLY_CHARS),
    }
}

/// Reads the password from the environment variable or file the
/// configuration names.
fn read_password(config: &SmtpConfig) -> Result<String, ConfigError> {
    if let Some(variable) = &config.password_env {
        return match std::env::var(variable) {
            Ok(password) if !password.is_empty() => Ok(password),
            Ok(_) => Err(ConfigError::new(
                "password_env",
                format!("environment variable {variable} is empty; set it to the SMTP password"),
            )),
            Err(std::env::VarError::NotPresent) => Err(ConfigError::new(
                "password_env",
                format!("environment variable {variable} is not set; set it to the SMTP password"),
            )),
            Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::new(
                "password_env",
                format!("environment variable {variable} is not valid UTF-8"),
            )),
        };
    }

    if let Some(path) = &config.password_file {
        let contents = std::fs::read_to_string(path).map_err(|error| {
            ConfigError::new(
                "password_file",
                format!(
                    "cannot read {}: {error}; check the path and permissions",
                    path.display()
                ),
            )
        })?;
        // Secret files written by editors and `echo` end with a newline that
        // is not part of the password.
        let password = contents
            .strip_suffix("\r\n")
            .or_else(|| contents.strip_suffix('\n'))
            .unwrap_or(&contents);
        if password.is_empty() {
            return Err(ConfigError::new(
                "password_file",
                format!(
                    "{} is empty; write the SMTP password into it",
                    path.display()
                ),
            ));
        }
        return Ok(password.to_owned());
    }

    Err(ConfigError::new(
        "password_env",
        "is missing while username is set; set password_env or password_file",
    ))
}

#[cfg(test)]
mod tests;
