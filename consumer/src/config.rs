//! Settings of a notifier worker, checked before anything connects.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::breaker::BreakerConfig;
use crate::ledger::LedgerConfig;
use crate::retry::RetryPolicy;
use crate::topics::TopicNames;

/// Connection settings shared by every Kafka client of the worker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of bootstrap brokers.
    pub bootstrap_servers: String,
    /// Extra librdkafka properties, for example `security.protocol` or `sasl.mechanism`.
    /// They override the worker's own defaults.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// Checks the settings and returns a message naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(
                "kafka.bootstrap_servers is empty; set it to host:port of at least one broker"
                    .into(),
            );
        }
        for server in self.bootstrap_servers.split(',') {
            let server = server.trim();
            let port = server.rsplit_once(':').map(|(_, port)| port);
            if port.and_then(|port| port.parse::<u16>().ok()).is_none() {
                return Err(format!(
                    "kafka.bootstrap_servers entry {server:?} has no valid port; write it as host:port"
                ));
            }
        }
        Ok(())
    }

    /// Returns a librdkafka configuration with the bootstrap servers and extra properties.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// Policy for a send whose outcome is unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownOutcomePolicy {
    /// Dead-letter with class `unknown-outcome`, so no customer gets a second email; an
    /// operator decides with `txnotify dlq`.
    #[default]
    DeadLetter,
    /// Send again through the retry tiers with the same `Message-ID`, so the customer
    /// gets the email at the risk of a second copy.
    Resend,
}

/// Settings of a notifier worker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifierConfig {
    /// Consumer group, which also names the retry, dead-letter and ledger topics.
    pub group_id: String,
    /// Topic the producers write events to.
    pub source_topic: String,
    /// Records processed at once; records with the same key always run in order.
    pub max_in_flight: usize,
    /// Largest accepted event payload, in bytes.
    pub max_payload_bytes: usize,
    /// Policy for sends whose outcome is unknown.
    pub unknown_outcome: UnknownOutcomePolicy,
    /// Group session timeout, in milliseconds.
    pub session_timeout_ms: u64,
    /// Maximum time between polls before the member leaves the group, in milliseconds.
    pub max_poll_interval_ms: u64,
    /// Interval of the background offset commit, in milliseconds.
    pub commit_interval_ms: u64,
    /// Time allowed to finish in-flight records at shutdown, in milliseconds.
    pub drain_timeout_ms: u64,
    /// Delivery timeout of retry and dead-letter records, in milliseconds.
    pub produce_timeout_ms: u64,
    /// Maximum time to restore one partition's ledger from the changelog, in milliseconds.
    pub restore_timeout_ms: u64,
    /// Time without progress, while records wait, after which the consumer restarts, in
    /// milliseconds.
    pub stall_timeout_ms: u64,
    /// Retry tiers and bounds.
    pub retry: RetryPolicy,
    /// Circuit breaker of the SMTP endpoint.
    pub breaker: BreakerConfig,
    /// Dedupe ledger store.
    pub ledger: LedgerConfig,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            group_id: "txnotify-email".to_owned(),
            source_topic: "transactions.v1".to_owned(),
            max_in_flight: 32,
            max_payload_bytes: txnotify_schemas::DEFAULT_MAX_PAYLOAD_BYTES,
            unknown_outcome: UnknownOutcomePolicy::default(),
            session_timeout_ms: 45_000,
            max_poll_interval_ms: 300_000,
            commit_interval_ms: 1_000,
            drain_timeout_ms: 20_000,
            produce_timeout_ms: 30_000,
            restore_timeout_ms: 120_000,
            stall_timeout_ms: 120_000,
            retry: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
            ledger: LedgerConfig::default(),
        }
    }
}

impl NotifierConfig {
    /// Checks every setting and the rules between them; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let topic_name = |field: &str, name: &str| -> Result<(), String> {
            let valid = !name.is_empty()
                && name.len() <= 200
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if valid {
                Ok(())
            } else {
                Err(format!(
                    "{field} {name:?} is not a valid Kafka name; use 1 to 200 of [A-Za-z0-9._-]"
                ))
            }
        };
        topic_name("notifier.group_id", &self.group_id)?;
        topic_name("notifier.source_topic", &self.source_topic)?;
        if self.max_in_flight == 0 || self.max_in_flight > 4096 {
            return Err(format!(
                "notifier.max_in_flight is {}; set it between 1 and 4096",
                self.max_in_flight
            ));
        }
        if self.max_payload_bytes < 1024 || self.max_payload_bytes > 16 * 1024 * 1024 {
            return Err(format!(
                "notifier.max_payload_bytes is {}; set it between 1024 and 16777216",
                self.max_payload_bytes
            ));
        }
        if self.drain_timeout_ms >= self.session_timeout_ms {
            return Err(format!(
                "notifier.drain_timeout_ms ({}) must be below notifier.session_timeout_ms ({}), so a \
                 rebalance finishes draining before the group evicts the member",
                self.drain_timeout_ms, self.session_timeout_ms
            ));
        }
        if self.max_poll_interval_ms < self.session_timeout_ms {
            return Err(format!(
                "notifier.max_poll_interval_ms ({}) must be at least notifier.session_timeout_ms ({}); \
                 librdkafka rejects a smaller value",
                self.max_poll_interval_ms, self.session_timeout_ms
            ));
        }
        if self.commit_interval_ms == 0 {
            return Err("notifier.commit_interval_ms is 0; set it to 1000 or similar".into());
        }
        if self.produce_timeout_ms == 0 {
            return Err("notifier.produce_timeout_ms is 0; set it to 30000 or similar".into());
        }
        if self.restore_timeout_ms == 0 {
            return Err("notifier.restore_timeout_ms is 0; set it to 120000 or similar".into());
        }
        if self.stall_timeout_ms < 1_000 {
            return Err(format!(
                "notifier.stall_timeout_ms is {}; set it to 1000 or more, well above the longest send",
                self.stall_timeout_ms
            ));
        }
        self.retry.validate()?;
        self.breaker.validate()?;
        self.ledger.validate()
    }

    /// Returns the names of the topics this group reads and writes.
    pub fn topic_names(&self) -> TopicNames {
        TopicNames {
            source: self.source_topic.clone(),
            group: self.group_id.clone(),
            tiers: self.retry.tier_count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        NotifierConfig::default().validate().unwrap();
        KafkaConfig::default().validate().unwrap();
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let base = NotifierConfig::default();
        let cases = [
            (
                NotifierConfig {
                    group_id: "bad group".into(),
                    ..base.clone()
                },
                "notifier.group_id",
            ),
            (
                NotifierConfig {
                    max_in_flight: 0,
                    ..base.clone()
                },
                "notifier.max_in_flight",
            ),
            (
                NotifierConfig {
                    max_payload_bytes: 10,
                    ..base.clone()
                },
                "notifier.max_payload_bytes",
            ),
            (
                NotifierConfig {
                    drain_timeout_ms: 50_000,
                    ..base.clone()
                },
                "notifier.drain_timeout_ms",
            ),
        ];
        for (config, field) in cases {
            let message = config.validate().unwrap_err();
            assert!(message.contains(field), "{message}");
        }
    }

    #[test]
    fn bootstrap_without_port_is_rejected() {
        let config = KafkaConfig {
            bootstrap_servers: "broker-1".into(),
            ..KafkaConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("broker-1"));
    }

    #[test]
    fn unknown_field_is_rejected() {
        let error = toml::from_str::<NotifierConfig>("group_idd = \"x\"").unwrap_err();
        assert!(error.to_string().contains("group_idd"), "{error}");
    }
}
