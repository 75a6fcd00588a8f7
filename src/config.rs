//! Program configuration: a TOML file, overridden by `TXNOTIFY_*` variables, then flags.
//!
//! A variable names a nested key with double underscores, for example
//! `TXNOTIFY_KAFKA__BOOTSTRAP_SERVERS` or `TXNOTIFY_SMTP__HOST`. Variables without a
//! double underscore, such as `TXNOTIFY_SMTP_PASSWORD`, are not configuration keys.
//! Everything is validated before any client connects.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use txnotify_consumer::config::{KafkaConfig, NotifierConfig};
use txnotify_consumer::dlq::DlqConfig;
use txnotify_consumer::email::{RenderConfig, SmtpConfig};
use txnotify_consumer::topics::TopicSettings;
use txnotify_producer::outbox::OutboxConfig;
use txnotify_producer::PublisherConfig;

/// Producer settings that are not shared with the notifier.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerSection {
    /// Maximum wait for room in the local send queue, in milliseconds.
    pub enqueue_timeout_ms: u64,
    /// Maximum time librdkafka keeps trying to deliver a record, in milliseconds.
    pub delivery_timeout_ms: u64,
}

impl Default for ProducerSection {
    fn default() -> Self {
        let defaults = PublisherConfig::default();
        Self {
            enqueue_timeout_ms: defaults.enqueue_timeout_ms,
            delivery_timeout_ms: defaults.delivery_timeout_ms,
        }
    }
}

/// The telemetry HTTP endpoint of `notify`: `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// `IP:port` to listen on. The default serves only this host; containers need
    /// `0.0.0.0:9464` so that probes and Prometheus can reach it.
    pub listen_address: String,
    /// Time in-flight records may go without any outcome before `/readyz` reports the
    /// worker as stalled, in milliseconds.
    pub stall_timeout_ms: u64,
    /// Interval between updates of the ledger entry gauge, in milliseconds. Counting
    /// reads the whole ledger, so keep it in the tens of seconds.
    pub ledger_gauge_interval_ms: u64,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        Self {
            listen_address: "127.0.0.1:9464".to_owned(),
            stall_timeout_ms: 300_000,
            ledger_gauge_interval_ms: 30_000,
        }
    }
}

impl TelemetrySection {
    /// Checks the settings and returns a message naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        txnotify_consumer::telemetry::server::parse_listen_address(&self.listen_address)
            .map_err(|error| error.to_string())?;
        if self.stall_timeout_ms < 1_000 {
            return Err(format!(
                "telemetry.stall_timeout_ms is {}; set it to 1000 or more, above the longest SMTP send",
                self.stall_timeout_ms
            ));
        }
        if self.ledger_gauge_interval_ms < 1_000 {
            return Err(format!(
                "telemetry.ledger_gauge_interval_ms is {}; set it to 1000 or more",
                self.ledger_gauge_interval_ms
            ));
        }
        Ok(())
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppConfig {
    /// Kafka connection, shared by every command.
    pub kafka: KafkaConfig,
    /// Topic partitions and retention for `topics ensure`.
    pub topics: TopicSettings,
    /// Notifier worker settings.
    pub notifier: NotifierConfig,
    /// Producer settings.
    pub producer: ProducerSection,
    /// SMTP server and sender identity.
    pub smtp: SmtpConfig,
    /// Email templates.
    pub render: RenderConfig,
    /// Dead-letter commands.
    pub dlq: DlqConfig,
    /// Postgres outbox relay.
    pub outbox: OutboxConfig,
    /// Metrics and health endpoint.
    pub telemetry: TelemetrySection,
}

impl AppConfig {
    /// Loads defaults, then the file (if given), then `TXNOTIFY_*` variables.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(AppConfig::default()));
        if let Some(path) = path {
            if !path.is_file() {
                anyhow::bail!(
                    "configuration file {} not found; pass an existing TOML file with --config",
                    path.display()
                );
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(
            Env::prefixed("TXNOTIFY_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        );
        figment
            .extract()
            .map_err(|error| anyhow::anyhow!("invalid configuration: {error}"))
    }

    /// Checks the settings every command needs.
    pub fn validate_common(&self) -> anyhow::Result<()> {
        self.kafka
            .validate()
            .map_err(|message| anyhow::anyhow!("invalid configuration: {message}"))?;
        self.notifier
            .validate()
            .map_err(|message| anyhow::anyhow!("invalid configuration: {message}"))?;
        self.topics
            .validate()
            .map_err(|message| anyhow::anyhow!("invalid configuration: {message}"))
    }

    /// Returns the publisher settings derived from the shared sections.
    pub fn publisher(&self) -> PublisherConfig {
        PublisherConfig {
            bootstrap_servers: self.kafka.bootstrap_servers.clone(),
            topic: self.notifier.source_topic.clone(),
            enqueue_timeout_ms: self.producer.enqueue_timeout_ms,
            delivery_timeout_ms: self.producer.delivery_timeout_ms,
            max_payload_bytes: self.notifier.max_payload_bytes,
            properties: self.kafka.properties.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn file_values_override_defaults() {
        let file = write(
            "[kafka]\nbootstrap_servers = \"10.0.0.1:9093\"\n[notifier]\ngroup_id = \"g1\"\n",
        );
        let config = AppConfig::load(Some(file.path())).unwrap();
        assert_eq!(config.kafka.bootstrap_servers, "10.0.0.1:9093");
        assert_eq!(config.notifier.group_id, "g1");
        assert_eq!(config.notifier.source_topic, "transactions.v1");
    }

    #[test]
    fn telemetry_settings_are_checked() {
        // (case, settings, text the error must contain; empty when valid)
        let cases = [
            ("defaults", TelemetrySection::default(), ""),
            (
                "host name",
                TelemetrySection {
                    listen_address: "localhost:9464".into(),
                    ..TelemetrySection::default()
                },
                "telemetry.listen_address \"localhost:9464\"",
            ),
            (
                "zero stall timeout",
                TelemetrySection {
                    stall_timeout_ms: 0,
                    ..TelemetrySection::default()
                },
                "telemetry.stall_timeout_ms is 0",
            ),
            (
                "short gauge interval",
                TelemetrySection {
                    ledger_gauge_interval_ms: 10,
                    ..TelemetrySection::default()
                },
                "telemetry.ledger_gauge_interval_ms is 10",
            ),
        ];
        for (case, settings, expected) in cases {
            match settings.validate() {
                Ok(()) => assert!(expected.is_empty(), "{case}: accepted"),
                Err(error) => assert!(
                    !expected.is_empty() && error.contains(expected),
                    "{case}: {error}"
                ),
            }
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let file = write("[notifier]\ngroupid = \"g1\"\n");
        let error = AppConfig::load(Some(file.path())).unwrap_err().to_string();
        assert!(error.contains("groupid"), "{error}");
    }

    #[test]
    fn missing_file_is_reported() {
        let error = AppConfig::load(Some(Path::new("/nonexistent/txnotify.toml")))
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/txnotify.toml"), "{error}");
    }
}
