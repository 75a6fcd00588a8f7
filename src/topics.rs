//! `txnotify topics ensure`: create the group's topics and report drift.
//!
//! Creating is idempotent: a topic that exists is left alone and compared with the
//! plan instead. A partition count or a configuration value that differs is drift,
//! and it is reported, never changed automatically, because adding partitions to a
//! keyed topic moves keys between partitions.

use std::process::ExitCode;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use txnotify_consumer::topics::{plan, TopicSpec};

use crate::config::AppConfig;

/// Subcommands of `txnotify topics`.
#[derive(Debug, clap::Subcommand)]
pub enum TopicsCommand {
    /// Create missing topics and report drift of existing ones.
    Ensure {
        /// Exit with status 3 when an existing topic differs from the plan.
        #[arg(long)]
        fail_on_drift: bool,
        /// Timeout of each admin request, in milliseconds.
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
    },
}

/// Runs the command.
pub async fn run(config: AppConfig, command: TopicsCommand) -> anyhow::Result<ExitCode> {
    config.validate_common()?;
    let TopicsCommand::Ensure {
        fail_on_drift,
        timeout_ms,
    } = command;
    let timeout = Duration::from_millis(timeout_ms);
    let admin: AdminClient<DefaultClientContext> = config.kafka.client_config().create()?;
    let specs = plan(&config.notifier.topic_names(), &config.topics);
    let drift = ensure(&admin, &specs, timeout).await?;
    if drift.is_empty() {
        println!("topics: all {} topics match the plan", specs.len());
        return Ok(ExitCode::SUCCESS);
    }
    for line in &drift {
        println!("drift: {line}");
    }
    if fail_on_drift {
        Ok(ExitCode::from(3))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

/// Creates missing topics and returns a description of each difference found.
pub async fn ensure(
    admin: &AdminClient<DefaultClientContext>,
    specs: &[TopicSpec],
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|spec| {
            let mut topic = NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(spec.replication_factor),
            );
            for (key, value) in &spec.configs {
                topic = topic.set(key, value);
            }
            topic
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|error| {
            anyhow::anyhow!("create topics request failed: {error}; check kafka.bootstrap_servers")
        })?;

    let mut existing = Vec::new();
    for result in results {
        match result {
            Ok(name) => println!("created: {name}"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                println!("exists: {name}");
                existing.push(name);
            }
            Err((name, code)) => anyhow::bail!("failed to create topic {name}: {code}"),
        }
    }

    let mut drift = Vec::new();
    for name in existing {
        let spec = specs
            .iter()
            .find(|spec| spec.name == name)
            .expect("created from specs");
        drift.extend(compare(admin, spec, timeout).await?);
    }
    Ok(drift)
}

async fn compare(
    admin: &AdminClient<DefaultClientContext>,
    spec: &TopicSpec,
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let mut drift = Vec::new();
    let metadata = admin
        .inner()
        .fetch_metadata(Some(&spec.name), timeout)
        .map_err(|error| {
            anyhow::anyhow!("failed to read metadata of topic {}: {error}", spec.name)
        })?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|topic| topic.name() == spec.name)
        .map_or(0, |topic| topic.partitions().len());
    if i32::try_from(partitions).ok() != Some(spec.partitions) {
        drift.push(format!(
            "topic {} has {partitions} partitions, the plan says {}",
            spec.name, spec.partitions
        ));
    }

    let options = AdminOptions::new().request_timeout(Some(timeout));
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(&spec.name)], &options)
        .await;
    let resource = match described.as_ref().map(|results| results.first()) {
        Ok(Some(Ok(resource))) => resource,
        Ok(Some(Err(code))) => {
            println!("note: configuration of topic {} not readable ({code}); only partitions were compared", spec.name);
            return Ok(drift);
        }
        Ok(None) | Err(_) => {
            println!(
                "note: configuration of topic {} not readable; only partitions were compared",
                spec.name
            );
            return Ok(drift);
        }
    };
    for (key, expected) in &spec.configs {
        match resource.get(key).and_then(|entry| entry.value.as_deref()) {
            Some(actual) if actual == expected => {}
            Some(actual) => drift.push(format!(
                "topic {} has {key}={actual}, the plan says {expected}",
                spec.name
            )),
            None => drift.push(format!(
                "topic {} does not report {key}, the plan says {expected}",
                spec.name
            )),
        }
    }
    Ok(drift)
}
