//! Settings of the SMTP sender, checked before anything connects.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use lettre::message::Mailbox;
use serde::Deserialize;

use crate::email::message::validate_message_id_domain;

/// Encryption of the connection to the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain text. Only for servers on the same host or a trusted network.
    None,
    /// Plain-text greeting, then an upgrade with the STARTTLS command
    /// (RFC 3207). Fails if the server does not offer STARTTLS.
    Starttls,
    /// TLS from the first byte, also called implicit TLS or SMTPS (RFC 8314).
    Tls,
}

impl TlsMode {
    /// Returns the standard port of the mode: 25, 587 or 465.
    pub fn default_port(self) -> u16 {
        match self {
            TlsMode::None => 25,
            TlsMode::Starttls => 587,
            TlsMode::Tls => 465,
        }
    }
}

/// Settings of the [`SmtpSender`](super::SmtpSender).
///
/// The password is never part of this struct. It is read from the environment
/// variable named by `password_env` or from the file at `password_file` when
/// the sender is built, so the struct can be logged and printed safely.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Host name or IP address of the SMTP server.
    pub host: String,
    /// TCP port; defaults to the standard port of `tls`.
    pub port: Option<u16>,
    /// Connection encryption.
    pub tls: TlsMode,
    /// User name for SMTP AUTH (PLAIN or LOGIN). No AUTH when unset.
    pub username: Option<String>,
    /// Name of the environment variable that contains the password.
    pub password_env: Option<String>,
    /// Path of a file that contains the password. One trailing newline is
    /// ignored.
    pub password_file: Option<PathBuf>,
    /// Time allowed to open a session: TCP connect, TLS handshake, greeting,
    /// EHLO, STARTTLS and AUTH together, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Time allowed for each of the MAIL, RCPT and DATA commands, and for the
    /// checks of idle pooled connections, in milliseconds.
    pub command_timeout_ms: u64,
    /// Time allowed to transmit the message content and receive the final
    /// reply, in milliseconds. RFC 5321 suggests 10 minutes for the final
    /// reply alone. A shorter value turns a slow server into more
    /// unknown-outcome failures.
    pub data_timeout_ms: u64,
    /// Name sent with EHLO; defaults to the host name of this machine.
    pub hello_name: Option<String>,
    /// Maximum number of connections open at the same time, which is also the
    /// maximum number of idle connections kept for reuse.
    pub max_connections: usize,
    /// An idle connection older than this is checked with NOOP before reuse,
    /// in milliseconds.
    pub idle_check_after_ms: u64,
    /// An idle connection older than this is closed instead of reused, in
    /// milliseconds.
    pub idle_timeout_ms: u64,
    /// Sender mailbox, such as `Payments <payments@example.com>`.
    pub from: String,
    /// Domain of the `Message-ID`; defaults to the domain of `from`.
    pub message_id_domain: Option<String>,
    /// Skip verification of the server certificate chain. The host name is
    /// still checked. Only for tests with self-signed certificates.
    pub accept_invalid_certs: bool,
    /// PEM file with extra CA certificates to trust besides the built-in
    /// Mozilla roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: "localhost".to_owned(),
            port: None,
            tls: TlsMode::Starttls,
            username: None,
            password_env: None,
            password_file: None,
            connect_timeout_ms: 10_000,
            command_timeout_ms: 30_000,
            data_timeout_ms: 120_000,
            hello_name: None,
            max_connections: 4,
            idle_check_after_ms: 5_000,
            idle_timeout_ms: 60_000,
            from: String::new(),
            message_id_domain: None,
            accept_invalid_certs: false,
            ca_file: None,
        }
    }
}

/// An invalid [`SmtpConfig`] field, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid smtp.{field}: {problem}")]
pub struct ConfigError {
    /// Name of the field.
    pub field: &'static str,
    /// Description of the problem and of the fix.
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

impl SmtpConfig {
    /// Checks every field and the rules between fields, without touching the
    /// network, the environment or the file system.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.validate_credentials()?;
        self.validate_timeouts()?;
        self.validate_identity()?;
        Ok(())
    }

    fn validate_server(&self) -> Result<(), ConfigError> {
        if self.host.trim().is_empty() {
            return Err(ConfigError::new(
                "host",
                "is empty; set the SMTP server's host name",
            ));
        }
        if self
            .host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::new(
                "host",
                "contains whitespace; set a bare host name or IP address",
            ));
        }
        if self.port == Some(0) {
            return Err(ConfigError::new("port", "is 0; set the server's TCP port"));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new("max_connections", "is 0; set at least 1"));
        }
        if self.tls == TlsMode::None && (self.accept_invalid_certs || self.ca_file.is_some()) {
            let field = if self.ca_file.is_some() {
                "ca_file"
            } else {
                "accept_invalid_certs"
            };
            return Err(ConfigError::new(
                field,
                "has no effect with tls = \"none\"; remove it or set tls to \"starttls\" or \"tls\"",
            ));
        }
        Ok(())
    }

    fn validate_credentials(&self) -> Result<(), ConfigError> {
        match (&self.username, &self.password_env, &self.password_file) {
            (_, Some(_), Some(_)) => Err(ConfigError::new(
                "password_file",
                "is set together with password_env; keep only one of them",
            )),
            (None, Some(_), None) | (None, None, Some(_)) => Err(ConfigError::new(
                "username",
                "is missing while a password is configured; set it or remove the password",
            )),
            (Some(_), None, None) => Err(ConfigError::new(
                "password_env",
                "is missing while username is set; set password_env or password_file",
            )),
            (Some(username), _, _) if username.is_empty() => Err(ConfigError::new(
                "username",
                "is empty; set the user name or remove it",
            )),
            (Some(_), _, _) if self.tls == TlsMode::None && !self.host_is_loopback() => {
                Err(ConfigError::new(
                    "tls",
                    "is \"none\" while username is set, which would send the password in clear \
                     text; set tls to \"starttls\" or \"tls\"",
                ))
            }
            _ => Ok(()),
        }
    }

    fn validate_timeouts(&self) -> Result<(), ConfigError> {
        let timeouts = [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("command_timeout_ms", self.command_timeout_ms),
            ("data_timeout_ms", self.data_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ];
        for (field, value) in timeouts {
            if value == 0 {
                return Err(ConfigError::new(
                    field,
                    "is 0; set a positive number of milliseconds",
                ));
            }
        }
        if self.idle_check_after_ms > self.idle_timeout_ms {
            return Err(ConfigError::new(
                "idle_check_after_ms",
                "is larger than idle_timeout_ms; set it to at most idle_timeout_ms",
            ));
        }
        Ok(())
    }

    fn validate_identity(&self) -> Result<(), ConfigError> {
        let from = self.parse_from()?;
        match &self.message_id_domain {
            Some(domain) => validate_message_id_domain(domain).map_err(|reason| {
                ConfigError::new("message_id_domain", format!("{reason}; set a domain name"))
            })?,
            None => validate_message_id_domain(from.email.domain()).map_err(|reason| {
                ConfigError::new(
                    "message_id_domain",
                    format!("is unset and the domain of from cannot be used ({reason}); set it"),
                )
            })?,
        }
        if let Some(name) = &self.hello_name {
            if validate_message_id_domain(name).is_err() {
                return Err(ConfigError::new(
                    "hello_name",
                    "is not a domain name; set this host's fully qualified name or remove it",
                ));
            }
        }
        Ok(())
    }

    /// Parses `from` into a mailbox.
    pub(crate) fn parse_from(&self) -> Result<Mailbox, ConfigError> {
        if self.from.trim().is_empty() {
            return Err(ConfigError::new(
                "from",
                "is empty; set the sender, such as \"Payments <payments@example.com>\"",
            ));
        }
        self.from.parse().map_err(|_| {
            ConfigError::new(
                "from",
                format!(
                    "{:?} is not a valid mailbox; use a form such as \"Payments <payments@example.com>\"",
                    self.from
                ),
            )
        })
    }

    /// Returns the configured or the derived `Message-ID` domain.
    pub(crate) fn effective_message_id_domain(&self, from: &Mailbox) -> String {
        self.message_id_domain
            .clone()
            .unwrap_or_else(|| from.email.domain().to_owned())
    }

    /// Returns the configured port or the standard port of the TLS mode.
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.tls.default_port())
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }

    pub(crate) fn data_timeout(&self) -> Duration {
        Duration::from_millis(self.data_timeout_ms)
    }

    fn host_is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .trim_matches(['[', ']'])
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> SmtpConfig {
        SmtpConfig {
            host: "smtp.example.com".to_owned(),
            from: "Payments <payments@shop.example>".to_owned(),
            ..SmtpConfig::default()
        }
    }

    #[test]
    fn validate_accepts_minimal_config() {
        assert_eq!(valid().validate(), Ok(()));
    }

    #[test]
    fn validate_names_invalid_field() {
        let cases: Vec<(&str, SmtpConfig, &str)> = vec![
            (
                "empty host",
                SmtpConfig {
                    host: String::new(),
                    ..valid()
                },
                "host",
            ),
            (
                "host with space",
                SmtpConfig {
                    host: "a b".to_owned(),
                    ..valid()
                },
                "host",
            ),
            (
                "port zero",
                SmtpConfig {
                    port: Some(0),
                    ..valid()
                },
                "port",
            ),
            (
                "no connections",
                SmtpConfig {
                    max_connections: 0,
                    ..valid()
                },
                "max_connections",
            ),
            (
                "empty from",
                SmtpConfig {
                    from: String::new(),
                    ..valid()
                },
                "from",
            ),
            (
                "bad from",
                SmtpConfig {
                    from: "not an address".to_owned(),
                    ..valid()
                },
                "from",
            ),
            (
                "bad message id domain",
                SmtpConfig {
                    message_id_domain: Some("a b".to_owned()),
                    ..valid()
                },
                "message_id_domain",
            ),
            (
                "bad hello name",
                SmtpConfig {
                    hello_name: Some("host\r\nname".to_owned()),
                    ..valid()
                },
                "hello_name",
            ),
            (
                "zero connect timeout",
                SmtpConfig {
                    connect_timeout_ms: 0,
                    ..valid()
                },
                "connect_timeout_ms",
            ),
            (
                "zero command timeout",
                SmtpConfig {
                    command_timeout_ms: 0,
                    ..valid()
                },
                "command_timeout_ms",
            ),
            (
                "zero data timeout",
                SmtpConfig {
                    data_timeout_ms: 0,
                    ..valid()
                },
                "data_timeout_ms",
            ),
            (
                "idle check after idle timeout",
                SmtpConfig {
                    idle_check_after_ms: 10,
                    idle_timeout_ms: 5,
                    ..valid()
                },
                "idle_check_after_ms",
            ),
            (
                "password without username",
                SmtpConfig {
                    password_env: Some("SMTP_PASSWORD".to_owned()),
                    ..valid()
                },
                "username",
            ),
            (
                "username without password",
                SmtpConfig {
                    username: Some("mailer".to_owned()),
                    ..valid()
                },
                "password_env",
            ),
            (
                "two password sources",
                SmtpConfig {
                    username: Some("mailer".to_owned()),
                    password_env: Some("SMTP_PASSWORD".to_owned()),
                    password_file: Some("/run/secrets/smtp".into()),
                    ..valid()
                },
                "password_file",
            ),
            (
                "password in clear text",
                SmtpConfig {
                    tls: TlsMode::None,
                    username: Some("mailer".to_owned()),
                    password_env: Some("SMTP_PASSWORD".to_owned()),
                    ..valid()
                },
                "tls",
            ),
            (
                "ca file without tls",
                SmtpConfig {
                    tls: TlsMode::None,
                    ca_file: Some("/ca.pem".into()),
                    ..valid()
                },
                "ca_file",
            ),
            (
                "invalid certs without tls",
                SmtpConfig {
                    tls: TlsMode::None,
                    accept_invalid_certs: true,
                    ..valid()
                },
                "accept_invalid_certs",
            ),
        ];

        for (name, config, expected_field) in cases {
            let error = config.validate().expect_err(name);
            assert_eq!(error.field, expected_field, "{name}: {error}");
            assert!(
                error.to_string().starts_with("invalid smtp."),
                "{name}: {error}"
            );
        }
    }

    #[test]
    fn validate_allows_clear_text_auth_on_loopback() {
        for host in ["localhost", "127.0.0.1", "::1", "[::1]"] {
            let config = SmtpConfig {
                host: host.to_owned(),
                tls: TlsMode::None,
                username: Some("mailer".to_owned()),
                password_env: Some("SMTP_PASSWORD".to_owned()),
                ..valid()
            };
            assert_eq!(config.validate(), Ok(()), "host {host}");
        }
    }

    #[test]
    fn effective_port_follows_tls_mode() {
        let cases = [
            (TlsMode::None, 25),
            (TlsMode::Starttls, 587),
            (TlsMode::Tls, 465),
        ];
        for (tls, port) in cases {
            assert_eq!(
                SmtpConfig { tls, ..valid() }.effective_port(),
                port,
                "{tls:?}"
            );
        }
        assert_eq!(
            SmtpConfig {
                port: Some(2525),
                ..valid()
            }
            .effective_port(),
            2525
        );
    }

    #[test]
    fn message_id_domain_defaults_to_from_domain() {
        let config = valid();
        let from = config.parse_from().expect("from");

        assert_eq!(config.effective_message_id_domain(&from), "shop.example");
    }

    #[test]
    fn config_parses_from_toml() {
        let parsed: SmtpConfig = toml::from_str(
            r#"
            host = "smtp.example.com"
            tls = "tls"
            username = "mailer"
            password_env = "SMTP_PASSWORD"
            from = "payments@shop.example"
            data_timeout_ms = 5000
            "#,
        )
        .expect("parse");

        assert_eq!(parsed.tls, TlsMode::Tls);
        assert_eq!(parsed.data_timeout_ms, 5000);
        assert_eq!(
            parsed.command_timeout_ms,
            SmtpConfig::default().command_timeout_ms
        );
        assert_eq!(parsed.validate(), Ok(()));
    }

    #[test]
    fn config_rejects_unknown_fields() {
        let cases = [
            ("password = \"hunter2\"", "password"),
            ("data_timeout = 5", "data_timeout"),
            ("tls = \"ssl\"", "ssl"),
        ];
        for (toml_text, expected) in cases {
            let error = toml::from_str::<SmtpConfig>(toml_text).expect_err(toml_text);
            assert!(error.to_string().contains(expected), "{toml_text}: {error}");
        }
    }
}
