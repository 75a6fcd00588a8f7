//! Topic names derived from the consumer group, and the settings each topic needs.

use serde::{Deserialize, Serialize};

/// Names of the topics one notifier group reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    /// Topic the producers write events to.
    pub source: String,
    /// Consumer group, which prefixes the group's own topics.
    pub group: String,
    /// Number of retry tiers.
    pub tiers: usize,
}

impl TopicNames {
    /// Returns the topic of retry tier `tier` (1-based): `<group>.retry.<tier>`.
    pub fn retry(&self, tier: usize) -> String {
        format!("{}.retry.{tier}", self.group)
    }

    /// Returns every retry tier topic, tier 1 first.
    pub fn retries(&self) -> Vec<String> {
        (1..=self.tiers).map(|tier| self.retry(tier)).collect()
    }

    /// Returns the dead-letter topic: `<group>.dlq`.
    pub fn dlq(&self) -> String {
        format!("{}.dlq", self.group)
    }

    /// Returns the audit topic of dead-letter replays: `<group>.dlq.audit`.
    pub fn dlq_audit(&self) -> String {
        format!("{}.dlq.audit", self.group)
    }

    /// Returns the ledger changelog topic: `<group>.ledger`.
    pub fn ledger(&self) -> String {
        format!("{}.ledger", self.group)
    }

    /// Returns the tier number of `topic` when it is one of this group's retry topics.
    pub fn tier_of(&self, topic: &str) -> Option<usize> {
        let prefix = format!("{}.retry.", self.group);
        let tier: usize = topic.strip_prefix(&prefix)?.parse().ok()?;
        (1..=self.tiers).contains(&tier).then_some(tier)
    }

    /// Returns the topics the notifier subscribes to: the source and every retry tier.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut topics = vec![self.source.clone()];
        topics.extend(self.retries());
        topics
    }
}

/// Partition counts and retention of the topics that `topics ensure` creates.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicSettings {
    /// Partitions of the source topic. Every retry tier and the ledger changelog get the
    /// same count, because both are written to the partition number of the source record.
    pub partitions: i32,
    /// Partitions of the dead-letter topic.
    pub dlq_partitions: i32,
    /// Replication factor of every topic; -1 takes the broker default.
    pub replication_factor: i32,
    /// Retention of the source topic, in milliseconds.
    pub source_retention_ms: i64,
    /// Retention of the dead-letter topic, in milliseconds; -1 keeps records forever.
    pub dlq_retention_ms: i64,
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self {
            partitions: 6,
            dlq_partitions: 6,
            replication_factor: -1,
            source_retention_ms: 7 * 24 * 60 * 60 * 1000,
            dlq_retention_ms: 30 * 24 * 60 * 60 * 1000,
        }
    }
}

impl TopicSettings {
    /// Checks the settings and returns a message naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.partitions < 1 {
            return Err(format!(
                "topics.partitions is {}; set it to 1 or more",
                self.partitions
            ));
        }
        if self.dlq_partitions < 1 {
            return Err(format!(
                "topics.dlq_partitions is {}; set it to 1 or more",
                self.dlq_partitions
            ));
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            return Err(format!(
                "topics.replication_factor is {}; use -1 for the broker default or 1 or more",
                self.replication_factor
            ));
        }
        Ok(())
    }
}

/// One topic that `topics ensure` manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor, or -1 for the broker default.
    pub replication_factor: i32,
    /// Topic configuration entries such as `cleanup.policy`.
    pub configs: Vec<(&'static str, String)>,
}

/// Lists every topic of the group with its required settings.
pub fn plan(names: &TopicNames, settings: &TopicSettings) -> Vec<TopicSpec> {
    let spec = |name: String, partitions: i32, configs: Vec<(&'static str, String)>| TopicSpec {
        name,
        partitions,
        replication_factor: settings.replication_factor,
        configs,
    };
    let mut topics = vec![spec(
        names.source.clone(),
        settings.partitions,
        vec![
            ("cleanup.policy", "delete".into()),
            ("retention.ms", settings.source_retention_ms.to_string()),
        ],
    )];
    for retry in names.retries() {
        topics.push(spec(
            retry,
            settings.partitions,
            vec![("cleanup.policy", "delete".into())],
        ));
    }
    topics.push(spec(
        names.dlq(),
        settings.dlq_partitions,
        vec![
            ("cleanup.policy", "delete".into()),
            ("retention.ms", settings.dlq_retention_ms.to_string()),
        ],
    ));
    // The changelog mirrors the source partitioning so one source partition restores
    // from exactly one changelog partition.
    topics.push(spec(
        names.ledger(),
        settings.partitions,
        vec![("cleanup.policy", "compact".into())],
    ));
    topics
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> TopicNames {
        TopicNames {
            source: "transactions.v1".into(),
            group: "txnotify-email".into(),
            tiers: 3,
        }
    }

    #[test]
    fn derived_names_follow_group() {
        let names = names();
        assert_eq!(names.retry(2), "txnotify-email.retry.2");
        assert_eq!(names.dlq(), "txnotify-email.dlq");
        assert_eq!(names.ledger(), "txnotify-email.ledger");
        assert_eq!(names.subscriptions().len(), 4);
    }

    #[test]
    fn tier_of_recognises_only_own_tiers() {
        let names = names();
        assert_eq!(names.tier_of("txnotify-email.retry.3"), Some(3));
        assert_eq!(names.tier_of("txnotify-email.retry.4"), None);
        assert_eq!(names.tier_of("other.retry.1"), None);
        assert_eq!(names.tier_of("transactions.v1"), None);
    }

    #[test]
    fn plan_compacts_only_the_ledger() {
        let plan = plan(&names(), &TopicSettings::default());
        assert_eq!(plan.len(), 6);
        let compacted: Vec<_> = plan
            .iter()
            .filter(|topic| {
                topic
                    .configs
                    .contains(&("cleanup.policy", "compact".into()))
            })
            .map(|topic| topic.name.as_str())
            .collect();
        assert_eq!(compacted, ["txnotify-email.ledger"]);
        let ledger = plan.last().unwrap();
        assert_eq!(ledger.partitions, plan[0].partitions);
    }
}
