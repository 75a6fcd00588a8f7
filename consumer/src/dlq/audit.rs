//! The audit record that each replay writes to the audit topic and prints.
//!
//! The audit topic is `<group>.dlq.audit`, one partition, keyed by replay id, never
//! compacted. A replay creates it when it is missing, so browsing a dead-letter topic
//! needs no write access, and `topics ensure` stays unchanged.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use super::filter::{format_ms, Filter};
use super::replay::checkpoint::ReplayCounts;
use super::replay::{ReplayReport, ReplayStatus};
use crate::config::KafkaConfig;

/// One replay, as the audit topic records it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// Replay id, also the record key.
    pub replay_id: String,
    /// Outcome of the run.
    pub status: ReplayStatus,
    /// Whether the run resumed an interrupted replay.
    pub resumed: bool,
    /// Start of the replay's first run, RFC 3339.
    pub started_at: String,
    /// End of this run, RFC 3339.
    pub finished_at: String,
    /// Operating-system user that ran the command.
    pub user: String,
    /// Host that ran the command.
    pub host: String,
    /// Dead-letter topic.
    pub dlq_topic: String,
    /// Target as given: `origin`, `topic:<name>` or `retry-tier:<name>`.
    pub target: String,
    /// The filter options as given.
    pub filter_text: String,
    /// The resolved filter.
    pub filter: Filter,
    /// Counts over every run of the replay.
    pub counts: ReplayCounts,
    /// Copies per target topic in this run.
    pub per_target: std::collections::BTreeMap<String, u64>,
}

impl AuditRecord {
    /// Builds the record of a finished run.
    pub fn new(
        report: &ReplayReport,
        dlq_topic: &str,
        target: &str,
        filter_text: &str,
        filter: &Filter,
    ) -> Self {
        Self {
            replay_id: report.replay_id.clone(),
            status: report.status,
            resumed: report.resumed,
            started_at: format_ms(report.started_at_ms),
            finished_at: format_ms(report.finished_at_ms),
            user: current_user(),
            host: current_host(),
            dlq_topic: dlq_topic.to_owned(),
            target: target.to_owned(),
            filter_text: filter_text.to_owned(),
            filter: filter.clone(),
            counts: report.counts,
            per_target: report.per_target.clone(),
        }
    }

    /// Returns the record as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an audit record serializes to JSON")
    }
}

/// Returns the user from `USER` or `LOGNAME`, else the name of the process's user id in
/// `/etc/passwd`, else `uid <n>`, else `unknown`.
pub fn current_user() -> String {
    if let Some(name) = ["USER", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
    {
        return name;
    }
    let Some(uid) = process_uid() else {
        return "unknown".to_owned();
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    user_name(&passwd, uid).unwrap_or_else(|| format!("uid {uid}"))
}

/// Returns the owner of `/proc/self`, which is the process's user id on Linux.
fn process_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;

    std::fs::metadata("/proc/self").ok().map(|meta| meta.uid())
}

/// Returns the name of user `uid` in `/etc/passwd` text.
fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let entry_uid: u32 = fields.nth(1)?.parse().ok()?;
        (entry_uid == uid).then(|| name.to_owned())
    })
}

fn current_host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|value| !value.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|text| text.trim().to_owned())
        })
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Error writing the audit record.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The audit topic could not be created.
    #[error("failed to create audit topic {topic}: {error}; create it with one partition or grant the CreateTopics permission")]
    Create {
        /// Audit topic.
        topic: String,
        /// Client error.
        error: KafkaError,
    },
    /// The audit record was not acknowledged.
    #[error("failed to write the audit record to {topic}: {error}")]
    Produce {
        /// Audit topic.
        topic: String,
        /// Client error.
        error: KafkaError,
    },
}

/// Creates the audit topic if it is missing, then writes `record` and waits for the
/// broker's acknowledgement.
pub async fn publish(
    kafka: &KafkaConfig,
    topic: &str,
    replication_factor: i32,
    record: &AuditRecord,
    timeout: Duration,
) -> Result<(), AuditError> {
    let create_error = |error| AuditError::Create {
        topic: topic.to_owned(),
        error,
    };
    let admin: AdminClient<DefaultClientContext> =
        kafka.client_config().create().map_err(create_error)?;
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let new_topic = NewTopic::new(topic, 1, TopicReplication::Fixed(replication_factor))
        .set("cleanup.policy", "delete")
        .set("retention.ms", "-1");
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .map_err(create_error)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(create_error(KafkaError::AdminOp(code))),
        }
    }

    let produce_error = |error| AuditError::Produce {
        topic: topic.to_owned(),
        error,
    };
    let mut config = kafka.client_config();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", timeout.as_millis().to_string());
    let producer: FutureProducer = config.create().map_err(produce_error)?;
    let json = record.to_json();
    producer
        .send(
            FutureRecord::to(topic)
                .key(record.replay_id.as_str())
                .payload(json.as_str()),
            timeout,
        )
        .await
        .map(|_| ())
        .map_err(|(error, _)| produce_error(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_name_reads_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nops:x:1000:1000::/home/ops:/bin/sh\n";
        assert_eq!(user_name(passwd, 1000).as_deref(), Some("ops"));
        assert_eq!(user_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(user_name(passwd, 7), None);
    }
}
