//! Replay of dead letters to a topic, with a cap, a rate limit and a resumable checkpoint.
//!
//! A run has these steps:
//!
//! 1. Load the checkpoint, if one is given and exists, and check that it belongs to the
//!    same dead-letter topic, filter and target.
//! 2. Plan: read the planned offset ranges once to find the highest replay count of each
//!    event, then again to count what matches and decide for each record whether it is
//!    replayed or rejected. A dry run stops here.
//! 3. Ask the [`ReplayObserver`] to confirm.
//! 4. Save the high watermarks of each target topic in the checkpoint. When resuming,
//!    read the target topics from the saved watermarks and collect the dead letters that
//!    an interrupted run already copied.
//! 5. Read the ranges again and copy each replayed record, at the rate limit, waiting for
//!    the broker's acknowledgement of each copy before the next. Save progress every
//!    [`checkpoint::SAVE_INTERVAL_RECORDS`] records and at the end.
//!
//! The replay cap works across runs because the dead-letter topic is append-only: when a
//! replayed copy fails again, the notifier dead-letters it with its higher replay count,
//! and a later replay skips the older dead letters of that event as superseded.
//!
//! Copies keep the key and value bytes. The producer is idempotent with `acks=all` and
//! uses librdkafka's default partitioner, as the publisher does, so a copy to the origin
//! topic lands in the partition the key hashes to there.

pub mod checkpoint;
pub mod headers;
pub mod rate;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use tokio::sync::watch;
use txnotify_schemas::ErrorClass;

use self::checkpoint::{Checkpoint, CheckpointError, ReplayCounts, SAVE_INTERVAL_RECORDS};
use self::headers::{replay_headers, source_position};
use self::rate::{InvalidRate, RateLimiter};
use super::compat;
use super::filter::Filter;
use super::reader::{PartitionRange, ReadError, TopicReader};
use super::DeadLetter;
use crate::config::KafkaConfig;
use crate::pipeline::now_ms;

/// Target of replayed records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayTarget {
    /// Each record's origin topic.
    Origin,
    /// One named topic.
    Topic(String),
    /// The group's first retry tier, named here.
    FirstRetryTier(String),
}

impl ReplayTarget {
    /// Returns the description stored in checkpoints and audit records.
    pub fn describe(&self) -> String {
        match self {
            ReplayTarget::Origin => "origin".to_owned(),
            ReplayTarget::Topic(topic) => format!("topic:{topic}"),
            ReplayTarget::FirstRetryTier(topic) => format!("retry-tier:{topic}"),
        }
    }
}

/// Rules that reject a record from a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayPolicy {
    /// Replays allowed per record.
    pub max_replay_count: u32,
    /// Whether records of class `invalid` are replayed.
    pub include_invalid: bool,
}

/// Reason a matching record is not replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rejection {
    /// Its replay count reached the cap.
    ReplayCap {
        /// Replays so far.
        replay_count: u32,
        /// The cap.
        max: u32,
    },
    /// Its class is `invalid`, so a replay would fail the same way.
    Invalid,
    /// It names no origin topic, and the target is the origin.
    NoOrigin,
    /// A later dead letter of the same event has a higher replay count.
    Superseded {
        /// Replays of this dead letter.
        replay_count: u32,
        /// Replays of the latest dead letter of the event.
        latest: u32,
    },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::ReplayCap { replay_count, max } => write!(
                f,
                "replayed {replay_count} times, which reaches the cap of {max} (dlq.max_replay_count)"
            ),
            Rejection::Invalid => f.write_str(
                "class invalid: the value failed validation; pass --include-invalid to replay it anyway",
            ),
            Rejection::NoOrigin => f.write_str(
                "no origin topic in its headers; pass --to-topic to choose the target",
            ),
            Rejection::Superseded {
                replay_count,
                latest,
            } => write!(
                f,
                "superseded: replayed {replay_count} times, but a later dead letter of the event was replayed {latest} times"
            ),
        }
    }
}

/// Highest replay count of each event among the dead letters read.
pub type LatestReplays = HashMap<uuid::Uuid, u32>;

/// Decides where `record` goes, or why it is rejected. `latest` contains the highest replay
/// count of each event in the dead-letter topic.
pub fn decide(
    record: &DeadLetter,
    target: &ReplayTarget,
    policy: &ReplayPolicy,
    latest: &LatestReplays,
) -> Result<String, Rejection> {
    let info = &record.info;
    let newest = record
        .event_id()
        .and_then(|id| latest.get(&id).copied())
        .unwrap_or(0);
    if newest > info.replay_count {
        return Err(Rejection::Superseded {
            replay_count: info.replay_count,
            latest: newest,
        });
    }
    if info.replay_count >= policy.max_replay_count {
        return Err(Rejection::ReplayCap {
            replay_count: info.replay_count,
            max: policy.max_replay_count,
        });
    }
    if info.class == Some(ErrorClass::Invalid) && !policy.include_invalid {
        return Err(Rejection::Invalid);
    }
    match target {
        ReplayTarget::Origin => info
            .origin
            .as_ref()
            .map(|origin| origin.topic.clone())
            .ok_or(Rejection::NoOrigin),
        ReplayTarget::Topic(topic) | ReplayTarget::FirstRetryTier(topic) => Ok(topic.clone()),
    }
}

/// Everything a replay needs.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    /// Kafka connection.
    pub kafka: KafkaConfig,
    /// Dead-letter topic to read.
    pub dlq_topic: String,
    /// Selection.
    pub filter: Filter,
    /// The filter options as given, stored in the checkpoint and compared on resume.
    pub filter_text: String,
    /// Target of the copies.
    pub target: ReplayTarget,
    /// Rejection rules.
    pub policy: ReplayPolicy,
    /// Maximum copies per second, or `None` for no limit.
    pub rate_per_second: Option<f64>,
    /// Checkpoint file; without one an interrupted replay cannot resume.
    pub checkpoint: Option<PathBuf>,
    /// Plan only: read and count, write nothing.
    pub dry_run: bool,
    /// Records shown as a sample in the plan.
    pub sample_size: usize,
    /// Maximum wait for the broker while reading.
    pub read_timeout: Duration,
    /// Maximum wait for the acknowledgement of one copy.
    pub produce_timeout: Duration,
}

/// Plan of a replay, from the planning read.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    /// Replay id.
    pub replay_id: String,
    /// Whether an interrupted replay is being resumed.
    pub resumed: bool,
    /// Counts of the records still to read; on resume, the counts so far are in
    /// [`ReplayPlan::done`].
    pub remaining: ReplayCounts,
    /// Counts saved by earlier runs of this replay.
    pub done: ReplayCounts,
    /// Records to copy still, before skipping those an interrupted run copied already.
    pub to_replay: u64,
    /// Target topics of the remaining copies.
    pub targets: BTreeSet<String>,
    /// The first records to copy, with their target topic.
    pub sample: Vec<(DeadLetter, String)>,
    /// The first rejected records, with the reason.
    pub rejected: Vec<(DeadLetter, Rejection)>,
}

/// Outcome of a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplayStatus {
    /// Dry run: nothing was written.
    DryRun,
    /// Every planned record was read.
    Completed,
    /// Stopped by a shutdown request; the checkpoint allows resuming.
    Interrupted,
    /// The observer did not confirm; nothing was written.
    Cancelled,
    /// The checkpoint shows the replay completed before; nothing was written.
    AlreadyCompleted,
}

/// Result of a replay.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// Replay id.
    pub replay_id: String,
    /// Outcome.
    pub status: ReplayStatus,
    /// Whether it resumed an interrupted replay.
    pub resumed: bool,
    /// Counts over every run of this replay.
    pub counts: ReplayCounts,
    /// Copies per target topic, in this run.
    pub per_target: BTreeMap<String, u64>,
    /// Start of the first run, in epoch milliseconds.
    pub started_at_ms: i64,
    /// End of this run, in epoch milliseconds.
    pub finished_at_ms: i64,
}

/// Callbacks of a running replay, for confirmation, progress and reporting.
pub trait ReplayObserver {
    /// Called with the plan before anything is written; returns whether to go on.
    /// A dry run ignores the return value.
    fn confirm(&mut self, plan: &ReplayPlan) -> bool;
    /// Called after each copy is acknowledged.
    fn replayed(&mut self, record: &DeadLetter, topic: &str);
    /// Called for each rejected record while copying.
    fn rejected(&mut self, record: &DeadLetter, rejection: &Rejection);
}

/// Error that stops a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Reading the dead-letter or a target topic failed.
    #[error(transparent)]
    Read(Box<ReadError>),
    /// The checkpoint could not be used.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The rate is invalid.
    #[error(transparent)]
    Rate(#[from] InvalidRate),
    /// The producer could not be created.
    #[error("failed to create the replay producer: {0}")]
    Producer(Box<rdkafka::error::KafkaError>),
    /// The broker did not acknowledge a copy.
    #[error("failed to copy dead letter {source_position} to {topic}: {error}; rerun with the same --checkpoint to resume")]
    Produce {
        /// Dead-letter position.
        source_position: String,
        /// Target topic.
        topic: String,
        /// Client error.
        error: Box<rdkafka::error::KafkaError>,
    },
}

impl From<ReadError> for ReplayError {
    fn from(error: ReadError) -> Self {
        ReplayError::Read(Box::new(error))
    }
}

/// Runs a replay; see the module documentation for the steps. A `true` on `shutdown`
/// stops it between two copies, with the checkpoint saved.
pub async fn run(
    request: &ReplayRequest,
    observer: &mut dyn ReplayObserver,
    mut shutdown: watch::Receiver<bool>,
) -> Result<ReplayReport, ReplayError> {
    let target_text = request.target.describe();
    let mut limiter = RateLimiter::new(request.rate_per_second)?;

    // 1. Checkpoint.
    let saved = match &request.checkpoint {
        Some(path) => Checkpoint::load(path)?,
        None => None,
    };
    if let (Some(saved), Some(path)) = (&saved, &request.checkpoint) {
        saved.check_matches(path, &request.dlq_topic, &request.filter_text, &target_text)?;
    }
    let reader =
        block(|| TopicReader::open(&request.kafka, &request.dlq_topic, request.read_timeout))?;
    let resumed = saved.is_some();
    let mut state = match saved {
        Some(saved) => saved,
        None => {
            let ranges = block(|| reader.plan(request.filter.since_ms))?;
            Checkpoint::new(
                uuid::Uuid::new_v4().to_string(),
                request.dlq_topic.clone(),
                request.filter.clone(),
                request.filter_text.clone(),
                target_text,
                ranges,
                now_ms(),
            )
        }
    };
    let report = |state: &Checkpoint, status, per_target| ReplayReport {
        replay_id: state.replay_id.clone(),
        status,
        resumed,
        counts: state.counts,
        per_target,
        started_at_ms: state.started_at_ms,
        finished_at_ms: now_ms(),
    };
    if state.completed {
        return Ok(report(
            &state,
            ReplayStatus::AlreadyCompleted,
            BTreeMap::new(),
        ));
    }

    // 2. Plan.
    let latest = block(|| latest_replays(&reader, &state.remaining()))?;
    let plan = plan(request, &reader, &state, resumed, &latest)?;
    if request.dry_run {
        observer.confirm(&plan);
        let mut counts = state.counts;
        add_counts(&mut counts, &plan.remaining);
        return Ok(ReplayReport {
            counts,
            ..report(&state, ReplayStatus::DryRun, BTreeMap::new())
        });
    }

    // 3. Confirmation.
    if !observer.confirm(&plan) {
        return Ok(report(&state, ReplayStatus::Cancelled, BTreeMap::new()));
    }

    // 4. Target watermarks, and copies an interrupted run made.
    for topic in &plan.targets {
        if !state.target_starts.contains_key(topic) {
            let starts = block(|| high_watermarks(request, topic))?;
            state.target_starts.insert(topic.clone(), starts);
        }
    }
    save(request, &state)?;
    let copied = if resumed {
        block(|| copied_by(request, &state))?
    } else {
        HashSet::new()
    };

    // 5. Copy.
    let producer = producer(&request.kafka, request.produce_timeout)?;
    let mut per_target: BTreeMap<String, u64> = BTreeMap::new();
    let mut since_save = 0u64;
    let remaining = state.remaining();
    let filter = state.filter.clone();
    let policy = request.policy;
    let target = request.target.clone();
    let mut scan = block(|| reader.scan(&remaining))?;
    let mut interrupted = false;
    loop {
        if *shutdown.borrow_and_update() {
            interrupted = true;
            break;
        }
        let Some(record) = block(|| scan.next()).transpose()? else {
            break;
        };
        let next_offset = record.offset + 1;
        if filter.matches(&record) {
            state.counts.matched += 1;
            match decide(&record, &target, &policy, &latest) {
                Err(rejection) => {
                    count_rejection(&mut state.counts, &rejection);
                    observer.rejected(&record, &rejection);
                }
                Ok(topic) if copied.contains(&source_position(&record)) => {
                    state.counts.replayed += 1;
                    state.counts.found_replayed += 1;
                    observer.replayed(&record, &topic);
                }
                Ok(topic) => {
                    tokio::select! {
                        () = limiter.acquire() => {}
                        Ok(()) = shutdown.changed() => {
                            interrupted = true;
                            break;
                        }
                    }
                    copy(
                        &producer,
                        &record,
                        &topic,
                        &state.replay_id,
                        request.produce_timeout,
                    )
                    .await?;
                    state.counts.replayed += 1;
                    *per_target.entry(topic.clone()).or_default() += 1;
                    observer.replayed(&record, &topic);
                }
            }
        }
        state.next.insert(record.partition, next_offset);
        since_save += 1;
        if since_save >= SAVE_INTERVAL_RECORDS {
            save(request, &state)?;
            since_save = 0;
        }
    }

    state.completed = !interrupted;
    save(request, &state)?;
    let status = if interrupted {
        ReplayStatus::Interrupted
    } else {
        ReplayStatus::Completed
    };
    Ok(report(&state, status, per_target))
}

/// Runs blocking client calls without stalling the runtime's other tasks.
fn block<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

fn plan(
    request: &ReplayRequest,
    reader: &TopicReader,
    state: &Checkpoint,
    resumed: bool,
    latest: &LatestReplays,
) -> Result<ReplayPlan, ReplayError> {
    let mut plan = ReplayPlan {
        replay_id: state.replay_id.clone(),
        resumed,
        remaining: ReplayCounts::default(),
        done: state.counts,
        to_replay: 0,
        targets: BTreeSet::new(),
        sample: Vec::new(),
        rejected: Vec::new(),
    };
    let remaining = state.remaining();
    block(|| -> Result<(), ReplayError> {
        for record in reader.scan(&remaining)? {
            let record = record?;
            if !state.filter.matches(&record) {
                continue;
            }
            plan.remaining.matched += 1;
            match decide(&record, &request.target, &request.policy, latest) {
                Ok(topic) => {
                    plan.to_replay += 1;
                    plan.targets.insert(topic.clone());
                    if plan.sample.len() < request.sample_size {
                        plan.sample.push((record, topic));
                    }
                }
                Err(rejection) => {
                    count_rejection(&mut plan.remaining, &rejection);
                    if plan.rejected.len() < request.sample_size {
                        plan.rejected.push((record, rejection));
                    }
                }
            }
        }
        Ok(())
    })?;
    plan.remaining.replayed = plan.to_replay;
    Ok(plan)
}

/// Reads `ranges` and returns the highest replay count of each event.
fn latest_replays(
    reader: &TopicReader,
    ranges: &[PartitionRange],
) -> Result<LatestReplays, ReadError> {
    let mut latest = LatestReplays::new();
    for record in reader.scan(ranges)? {
        let record = record?;
        if let Some(id) = record.event_id() {
            let entry = latest.entry(id).or_default();
            *entry = (*entry).max(record.info.replay_count);
        }
    }
    Ok(latest)
}

fn count_rejection(counts: &mut ReplayCounts, rejection: &Rejection) {
    match rejection {
        Rejection::ReplayCap { .. } => counts.rejected_cap += 1,
        Rejection::Invalid => counts.rejected_invalid += 1,
        Rejection::NoOrigin => counts.rejected_no_origin += 1,
        Rejection::Superseded { .. } => counts.superseded += 1,
    }
}

fn add_counts(total: &mut ReplayCounts, more: &ReplayCounts) {
    total.matched += more.matched;
    total.replayed += more.replayed;
    total.found_replayed += more.found_replayed;
    total.rejected_cap += more.rejected_cap;
    total.rejected_invalid += more.rejected_invalid;
    total.rejected_no_origin += more.rejected_no_origin;
    total.superseded += more.superseded;
}

fn save(request: &ReplayRequest, state: &Checkpoint) -> Result<(), CheckpointError> {
    match &request.checkpoint {
        Some(path) => state.save(path),
        None => Ok(()),
    }
}

/// Returns the high watermark of every partition of `topic`; a missing topic is an error.
fn high_watermarks(request: &ReplayRequest, topic: &str) -> Result<BTreeMap<i32, i64>, ReadError> {
    let reader = TopicReader::open(&request.kafka, topic, request.read_timeout)?;
    (0..reader.partitions())
        .map(|partition| Ok((partition, reader.watermarks(partition)?.1)))
        .collect()
}

/// Returns the dead-letter positions that copies of this replay in the target topics name.
fn copied_by(request: &ReplayRequest, state: &Checkpoint) -> Result<HashSet<String>, ReadError> {
    let mut copied = HashSet::new();
    for (topic, starts) in &state.target_starts {
        let reader = TopicReader::open(&request.kafka, topic, request.read_timeout)?;
        let mut ranges = Vec::new();
        for (&partition, &start) in starts {
            let (_, end) = reader.watermarks(partition)?;
            ranges.push(PartitionRange {
                partition,
                start,
                end,
            });
        }
        for record in reader.scan(&ranges)? {
            let record = record?;
            let ours = compat::header(&record.headers, txnotify_schemas::headers::REPLAY_ID)
                == Some(state.replay_id.as_bytes());
            let source = compat::header(&record.headers, txnotify_schemas::headers::REPLAY_SOURCE);
            if let (true, Some(source)) = (ours, source) {
                copied.insert(String::from_utf8_lossy(source).into_owned());
            }
        }
    }
    Ok(copied)
}

fn producer(kafka: &KafkaConfig, timeout: Duration) -> Result<FutureProducer, ReplayError> {
    let mut config = kafka.client_config();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("allow.auto.create.topics", "false")
        .set("message.timeout.ms", timeout.as_millis().to_string());
    config
        .create()
        .map_err(|error| ReplayError::Producer(Box::new(error)))
}

async fn copy(
    producer: &FutureProducer,
    record: &DeadLetter,
    topic: &str,
    replay_id: &str,
    timeout: Duration,
) -> Result<(), ReplayError> {
    let mut copy: FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(topic).headers(replay_headers(record, replay_id));
    if let Some(key) = &record.key {
        copy = copy.key(key.as_slice());
    }
    if let Some(value) = &record.value {
        copy = copy.payload(value.as_slice());
    }
    producer
        .send(copy, timeout)
        .await
        .map(|_| ())
        .map_err(|(error, message)| ReplayError::Produce {
            source_position: source_position(record),
            topic: message.topic().to_owned(),
            error: Box::new(error),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::compat::{DeadLetterInfo, HeaderList};

    fn dead_letter(entries: &[(&str, &str)]) -> DeadLetter {
        let headers: HeaderList = entries
            .iter()
            .map(|(name, value)| ((*name).to_owned(), Some(value.as_bytes().to_vec())))
            .collect();
        DeadLetter {
            topic: "g.dlq".into(),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: None,
            value: None,
            info: DeadLetterInfo::from_headers(&headers),
            headers,
        }
    }

    #[test]
    fn decisions_follow_the_rules() {
        let policy = ReplayPolicy {
            max_replay_count: 2,
            include_invalid: false,
        };
        let lenient = ReplayPolicy {
            include_invalid: true,
            ..policy
        };
        let origin = ReplayTarget::Origin;
        let named = ReplayTarget::Topic("elsewhere".into());
        let exhausted = dead_letter(&[
            ("txnotify-origin-topic", "src"),
            ("txnotify-error-class", "exhausted"),
            ("txnotify-replay-count", "1"),
        ]);
        let capped = dead_letter(&[
            ("txnotify-origin-topic", "src"),
            ("txnotify-replay-count", "2"),
        ]);
        let invalid = dead_letter(&[
            ("txnotify-origin-topic", "src"),
            ("txnotify-error-class", "invalid"),
        ]);
        let orphan = dead_letter(&[]);
        let cases = [
            (
                "exhausted to origin",
                &exhausted,
                &origin,
                policy,
                Ok("src"),
            ),
            (
                "exhausted to topic",
                &exhausted,
                &named,
                policy,
                Ok("elsewhere"),
            ),
            (
                "cap reached",
                &capped,
                &origin,
                lenient,
                Err(Rejection::ReplayCap {
                    replay_count: 2,
                    max: 2,
                }),
            ),
            (
                "invalid rejected",
                &invalid,
                &origin,
                policy,
                Err(Rejection::Invalid),
            ),
            ("invalid included", &invalid, &origin, lenient, Ok("src")),
            (
                "no origin",
                &orphan,
                &origin,
                policy,
                Err(Rejection::NoOrigin),
            ),
            (
                "no origin to topic",
                &orphan,
                &named,
                policy,
                Ok("elsewhere"),
            ),
        ];
        for (name, record, target, policy, expected) in cases {
            let decided = decide(record, target, &policy, &LatestReplays::new());
            assert_eq!(
                decided.as_deref().map_err(|rejection| *rejection),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn older_dead_letter_of_event_is_superseded() {
        let policy = ReplayPolicy {
            max_replay_count: 3,
            include_invalid: false,
        };
        let id = uuid::Uuid::new_v4().to_string();
        let original = dead_letter(&[("event-id", &id), ("txnotify-origin-topic", "src")]);
        let copy = dead_letter(&[
            ("event-id", &id),
            ("txnotify-origin-topic", "src"),
            ("txnotify-replay-count", "1"),
        ]);
        let latest = LatestReplays::from([(original.event_id().unwrap(), 1)]);
        assert_eq!(
            decide(&original, &ReplayTarget::Origin, &policy, &latest),
            Err(Rejection::Superseded {
                replay_count: 0,
                latest: 1
            })
        );
        assert_eq!(
            decide(&copy, &ReplayTarget::Origin, &policy, &latest).as_deref(),
            Ok("src")
        );
    }

    #[test]
    fn rejections_explain_the_fix() {
        let cap = Rejection::ReplayCap {
            replay_count: 3,
            max: 3,
        }
        .to_string();
        assert!(cap.contains("dlq.max_replay_count"), "{cap}");
        assert!(Rejection::Invalid.to_string().contains("--include-invalid"));
        assert!(Rejection::NoOrigin.to_string().contains("--to-topic"));
    }

    #[test]
    fn targets_describe_themselves() {
        assert_eq!(ReplayTarget::Origin.describe(), "origin");
        assert_eq!(ReplayTarget::Topic("t".into()).describe(), "topic:t");
        assert_eq!(
            ReplayTarget::FirstRetryTier("g.retry.1".into()).describe(),
            "retry-tier:g.retry.1"
        );
    }
}
