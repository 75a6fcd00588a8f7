//! The notifier worker: one member of the consumer group.
//!
//! The worker reads the source topic and every retry tier with one consumer. It hands
//! each record to a lane chosen by the record key, so records with the same key run in
//! order while different keys run concurrently. A committer task flushes the ledger once
//! per batch of finished records, and only then stores each partition's contiguous
//! watermark for the background commit.
//!
//! Partitions are paused in four cases, and each case resumes only its own:
//!
//! - a newly assigned partition, until its ledger is restored from the changelog;
//! - a retry tier partition whose next record is not due yet (the record is held in
//!   memory and a timer releases it, so no task sleeps);
//! - every partition while the SMTP circuit breaker is open;
//! - a revoked partition, which is drained and committed before it is released.
//!
//! A watchdog restarts the consumer when partitions with waiting records make no
//! progress for `stall_timeout_ms`.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use txnotify_schemas::headers;

use crate::breaker::{Breaker, BreakerState};
use crate::changelog::{self, Changelog};
use crate::config::{KafkaConfig, NotifierConfig};
use crate::email::{Renderer, SmtpSender};
use crate::events::{ConsumerFailed, RecordConsumed};
use crate::ledger::Ledger;
use crate::offsets::{OffsetTracker, TopicPartition};
use crate::pipeline::{now_ms, Pipeline, PipelineError};
use crate::producer::WorkerProducer;
use crate::record::header_bytes;
use crate::stats::Stats;
use crate::telemetry::health;
use crate::telemetry::trace::instrument_record;
use crate::topics::TopicNames;

/// Failure that stops the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The configuration failed validation.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A Kafka client could not be created or subscribed.
    #[error("kafka client failed: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A record failed with an infrastructure error.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Assigned partitions with waiting records made no progress for too long.
    #[error("consumer stalled: no progress for {seconds} s while records were waiting")]
    Stalled {
        /// Seconds without progress.
        seconds: u64,
    },
}

/// Partition changes reported by the rebalance callbacks.
#[derive(Debug)]
enum RebalanceEvent {
    Assigned(Vec<TopicPartition>),
    Revoked(Vec<TopicPartition>),
}

/// State shared by the main loop, the committer and the rebalance callbacks.
struct Shared {
    tracker: Mutex<OffsetTracker>,
    held: Mutex<HashMap<TopicPartition, VecDeque<OwnedMessage>>>,
    drain_timeout: Duration,
    /// Assignment generation of each partition. A revoke bumps it, so records queued for
    /// the old assignment are skipped instead of sent after the partition moved on.
    generations: Mutex<HashMap<TopicPartition, u64>>,
    /// Set at shutdown: lanes finish the record they are sending and skip the rest.
    stopping: std::sync::atomic::AtomicBool,
    /// Time of the last finished record or consumed message, in epoch milliseconds.
    last_progress_ms: std::sync::atomic::AtomicI64,
}

impl Shared {
    fn tracker(&self) -> MutexGuard<'_, OffsetTracker> {
        self.tracker.lock().expect("offset tracker lock")
    }

    fn held(&self) -> MutexGuard<'_, HashMap<TopicPartition, VecDeque<OwnedMessage>>> {
        self.held.lock().expect("held records lock")
    }

    fn generation(&self, key: &TopicPartition) -> u64 {
        self.generations
            .lock()
            .expect("generations lock")
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    fn fence(&self, keys: &[TopicPartition]) {
        let mut generations = self.generations.lock().expect("generations lock");
        for key in keys {
            *generations.entry(key.clone()).or_default() += 1;
        }
    }

    /// Returns true while a record dispatched at `generation` may still be sent.
    fn is_current(&self, key: &TopicPartition, generation: u64) -> bool {
        !self.stopping.load(std::sync::atomic::Ordering::SeqCst)
            && self.generation(key) == generation
    }

    fn progressed(&self) {
        self.last_progress_ms
            .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
    }
}

struct WorkerContext {
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<RebalanceEvent>,
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::telemetry::metrics::observe_consumer_statistics(&statistics);
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let revoked = list(partitions);
            self.drain(consumer, &revoked);
            let _ = self.events.send(RebalanceEvent::Revoked(revoked));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                // Nothing may be processed before the ledger of its partition is restored.
                if let Err(error) = consumer.pause(partitions) {
                    tracing::error!(error = %error, "Failed to pause newly assigned partitions.");
                }
                let _ = self.events.send(RebalanceEvent::Assigned(list(partitions)));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => tracing::error!(error = %error, "Rebalance failed."),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::warn!(error = %error, "Offset commit failed; the next commit retries it.");
        }
    }
}

impl WorkerContext {
    /// Drains revoked partitions: drops held records, waits for in-flight records to
    /// become durable within the drain deadline, commits synchronously, then forgets them.
    fn drain(&self, consumer: &BaseConsumer<Self>, revoked: &[TopicPartition]) {
        // Queued records of these partitions are skipped from now on, so only the sends
        // already under way are waited for.
        self.shared.fence(revoked);
        {
            let mut held = self.shared.held();
            let mut tracker = self.shared.tracker();
            for key in revoked {
                if let Some(queue) = held.remove(key) {
                    for message in queue {
                        tracker.abandon(&key.0, key.1, message.offset());
                    }
                }
            }
        }

        let deadline =
            now_ms() + i64::try_from(self.shared.drain_timeout.as_millis()).unwrap_or(i64::MAX);
        let wait = || loop {
            let in_flight: usize = {
                let tracker = self.shared.tracker();
                revoked
                    .iter()
                    .map(|(topic, partition)| tracker.in_flight_on(topic, *partition))
                    .sum()
            };
            if in_flight == 0 {
                return 0;
            }
            if now_ms() >= deadline {
                return in_flight;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The callback runs inside the main loop's poll; the lanes and the committer keep
        // running on the other runtime threads while this one waits.
        let unfinished = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(wait),
            Err(_) => wait(),
        };
        if unfinished > 0 {
            tracing::warn!(
                unfinished,
                "Drain deadline passed during revoke; unfinished records will be redelivered to the next owner."
            );
        }

        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {
                tracing::info!(partitions = ?revoked, "Committed drained partitions before revoke.")
            }
            Err(error) => tracing::debug!(error = %error, "No offsets to commit before revoke."),
        }
        let mut tracker = self.shared.tracker();
        for (topic, partition) in revoked {
            tracker.forget(topic, *partition);
        }
    }
}

fn list(partitions: &TopicPartitionList) -> Vec<TopicPartition> {
    partitions
        .elements()
        .iter()
        .map(|element| (element.topic().to_owned(), element.partition()))
        .collect()
}

fn partition_list<'a>(
    partitions: impl IntoIterator<Item = &'a TopicPartition>,
) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (topic, partition) in partitions {
        list.add_partition(topic, *partition);
    }
    list
}

/// A record handed to a lane.
struct Job {
    message: OwnedMessage,
    /// Assignment generation of the record's partition when it was dispatched.
    generation: u64,
}

/// A record whose outcome is known, on its way to becoming durable.
#[derive(Debug, Clone)]
struct Finished {
    topic: String,
    partition: i32,
    offset: i64,
}

/// Messages to the main loop from its helper tasks.
enum Signal {
    /// A held retry partition may have a due record.
    Release(TopicPartition),
    /// The ledger of source partition `p` is restored.
    Restored(i32),
}

/// A notifier worker, built from validated settings.
pub struct Notifier {
    config: NotifierConfig,
    kafka: KafkaConfig,
    sender: SmtpSender,
    renderer: Renderer,
    ledger: Ledger,
    stats: Arc<Stats>,
}

impl Notifier {
    /// Creates a worker. Call [`NotifierConfig::validate`] first; this checks again.
    pub fn new(
        config: NotifierConfig,
        kafka: KafkaConfig,
        sender: SmtpSender,
        renderer: Renderer,
        ledger: Ledger,
        stats: Arc<Stats>,
    ) -> Result<Self, WorkerError> {
        config.validate().map_err(WorkerError::Config)?;
        kafka.validate().map_err(WorkerError::Config)?;
        Ok(Self {
            config,
            kafka,
            sender,
            renderer,
            ledger,
            stats,
        })
    }

    /// Runs until `shutdown` completes, then drains in-flight records, commits and returns.
    ///
    /// 1. Create the consumer, the producer, the lanes, the committer and the breaker.
    /// 2. Restore each assigned partition's ledger, then resume it.
    /// 3. Dispatch each record to its lane, holding retry records until they are due.
    /// 4. Pause everything while the breaker is open.
    /// 5. On shutdown, stop reading, drain within `drain_timeout_ms`, commit synchronously.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), WorkerError> {
        let names = self.config.topic_names();
        let shared = Arc::new(Shared {
            tracker: Mutex::new(OffsetTracker::new()),
            held: Mutex::new(HashMap::new()),
            drain_timeout: Duration::from_millis(self.config.drain_timeout_ms),
            generations: Mutex::new(HashMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            last_progress_ms: std::sync::atomic::AtomicI64::new(now_ms()),
        });
        let (rebalance_tx, mut rebalance_rx) = mpsc::unbounded_channel();
        let context = WorkerContext {
            shared: shared.clone(),
            events: rebalance_tx,
        };

        let mut consumer_config = self.kafka.client_config();
        consumer_config
            .set("group.id", &self.config.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                self.config.commit_interval_ms.to_string(),
            )
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            // The range assignor gives one member the same partition number of every
            // subscribed topic with equal partition counts, which keeps each retry tier
            // partition with the source partition whose ledger it needs.
            .set("partition.assignment.strategy", "range")
            .set(
                "session.timeout.ms",
                self.config.session_timeout_ms.to_string(),
            )
            .set(
                "max.poll.interval.ms",
                self.config.max_poll_interval_ms.to_string(),
            )
            // Lag and connection state for /metrics and /readyz come from these reports.
            .set("statistics.interval.ms", "5000");
        for (key, value) in &self.kafka.properties {
            consumer_config.set(key, value);
        }
        let consumer: Arc<StreamConsumer<WorkerContext>> =
            Arc::new(consumer_config.create_with_context(context)?);
        let topics = names.subscriptions();
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topic_refs)?;

        let mut producer_config = self.kafka.client_config();
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set(
                "message.timeout.ms",
                self.config.produce_timeout_ms.to_string(),
            );
        for (key, value) in &self.kafka.properties {
            producer_config.set(key, value);
        }
        let producer = Arc::new(WorkerProducer::new(producer_config)?);

        let breaker = Arc::new(Breaker::new(
            self.sender.endpoint(),
            self.config.breaker.clone(),
        ));
        let (stop_tx, stop_rx) = watch::channel(false);
        let pipeline = Arc::new(Pipeline {
            topics: names.clone(),
            retry: self.config.retry.clone(),
            unknown_outcome: self.config.unknown_outcome,
            limits: txnotify_schemas::Limits {
                max_payload_bytes: self.config.max_payload_bytes,
            },
            ledger: self.ledger.clone(),
            owner: rand_owner(),
            renderer: self.renderer,
            sender: self.sender,
            producer,
            produce_timeout: Duration::from_millis(self.config.produce_timeout_ms),
            changelog: Changelog::new(
                names.ledger(),
                Duration::from_millis(self.config.produce_timeout_ms),
            ),
            breaker: breaker.clone(),
            stats: self.stats.clone(),
            shutdown: stop_rx,
        });
        let supervisor = {
            let breaker = breaker.clone();
            let pipeline = pipeline.clone();
            tokio::spawn(async move {
                breaker
                    .supervise(|| {
                        let pipeline = pipeline.clone();
                        async move {
                            match pipeline.sender.probe().await {
                                Ok(()) => true,
                                Err(error) => {
                                    tracing::warn!(error = %error, "Circuit breaker probe failed.");
                                    false
                                }
                            }
                        }
                    })
                    .await;
            })
        };
        let mut breaker_state = breaker.subscribe();

        let (finished_tx, finished_rx) = mpsc::unbounded_channel::<Finished>();
        let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<PipelineError>();
        let mut lanes = Vec::with_capacity(self.config.max_in_flight);
        let mut lane_tasks = JoinSet::new();
        for _ in 0..self.config.max_in_flight {
            let (lane_tx, lane_rx) = mpsc::unbounded_channel::<Job>();
            lanes.push(lane_tx);
            lane_tasks.spawn(run_lane(
                pipeline.clone(),
                shared.clone(),
                lane_rx,
                finished_tx.clone(),
                fatal_tx.clone(),
            ));
        }
        drop(finished_tx);
        let committer = tokio::spawn(run_committer(
            self.ledger.clone(),
            finished_rx,
            shared.clone(),
            consumer.clone(),
        ));
        let purger = tokio::spawn(run_purger(self.ledger.clone()));

        let (signal_tx, mut signal_rx) = mpsc::unbounded_channel::<Signal>();
        let mut assigned: HashSet<TopicPartition> = HashSet::new();
        let mut restoring: HashSet<i32> = HashSet::new();
        let mut fatal: Option<WorkerError> = None;
        let mut watchdog = tokio::time::interval(Duration::from_millis(
            (self.config.stall_timeout_ms / 4).max(100),
        ));
        let mut stall_warned = false;
        let mut idle_lag: Option<(i64, i64)> = None;
        let buffer_limit = self.config.max_in_flight * BUFFER_PER_LANE;
        let mut backpressure = false;
        let mut backpressure_tick = tokio::time::interval(Duration::from_millis(50));
        tokio::pin!(shutdown);

        tracing::info!(group = %self.config.group_id, topics = ?topics, "Notifier started.");
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    tracing::info!("Shutdown requested; draining in-flight records.");
                    break;
                }
                Some(error) = fatal_rx.recv() => {
                    tracing::error!(error = %error, "Record processing failed; stopping the worker.");
                    fatal = Some(error.into());
                    break;
                }
                Some(event) = rebalance_rx.recv() => match event {
                    RebalanceEvent::Assigned(partitions) => {
                        tracing::info!(partitions = ?partitions, "Partitions assigned.");
                        health::partitions_assigned(&partitions);
                        shared.progressed();
                        let mut fresh = HashSet::new();
                        for key in partitions {
                            shared.tracker().forget(&key.0, key.1);
                            if key.0 == names.source {
                                fresh.insert(key.1);
                            }
                            assigned.insert(key);
                        }
                        for partition in fresh {
                            if restoring.insert(partition) {
                                spawn_restore(&self.kafka, &names, partition, &self.ledger, self.config.restore_timeout_ms, &signal_tx);
                            }
                        }
                        // Partitions without a source partition of the same number need no restore.
                        let ready: Vec<TopicPartition> = assigned
                            .iter()
                            .filter(|key| !restoring.contains(&key.1) || !assigned.contains(&(names.source.clone(), key.1)))
                            .cloned()
                            .collect();
                        resume(&consumer, &shared, &breaker, &ready);
                    }
                    RebalanceEvent::Revoked(partitions) => {
                        tracing::info!(partitions = ?partitions, "Partitions revoked.");
                        health::partitions_revoked(&partitions);
                        for key in &partitions {
                            assigned.remove(key);
                        }
                    }
                },
                Some(signal) = signal_rx.recv() => match signal {
                    Signal::Release(key) => {
                        release_due(&consumer, &shared, &breaker, &key, &lanes, &signal_tx).await;
                    }
                    Signal::Restored(partition) => {
                        restoring.remove(&partition);
                        let ready: Vec<TopicPartition> = assigned.iter().filter(|key| key.1 == partition).cloned().collect();
                        resume(&consumer, &shared, &breaker, &ready);
                    }
                },
                changed = breaker_state.changed() => {
                    if changed.is_ok() {
                        let state = *breaker_state.borrow_and_update();
                        let all: Vec<TopicPartition> = assigned.iter().cloned().collect();
                        match state {
                            BreakerState::Open => {
                                if let Err(error) = consumer.pause(&partition_list(&all)) {
                                    tracing::warn!(error = %error, "Failed to pause partitions for the open circuit breaker.");
                                }
                            }
                            BreakerState::Closed => {
                                let ready: Vec<TopicPartition> = all.into_iter().filter(|key| !restoring.contains(&key.1)).collect();
                                resume(&consumer, &shared, &breaker, &ready);
                            }
                            BreakerState::HalfOpen => {}
                        }
                    }
                }
                _ = backpressure_tick.tick() => {
                    let buffered = shared.tracker().in_flight();
                    // Pausing again is harmless, and it catches partitions another path resumed.
                    if buffered >= buffer_limit {
                        backpressure = true;
                        let all: Vec<TopicPartition> = assigned.iter().cloned().collect();
                        if let Err(error) = consumer.pause(&partition_list(&all)) {
                            tracing::warn!(error = %error, "Failed to pause partitions for backpressure.");
                        }
                    } else if backpressure && buffered <= buffer_limit / 2 {
                        backpressure = false;
                        let ready: Vec<TopicPartition> = assigned.iter().filter(|key| !restoring.contains(&key.1)).cloned().collect();
                        resume(&consumer, &shared, &breaker, &ready);
                    }
                }
                _ = watchdog.tick() => {
                    let stalled = if assigned.is_empty() {
                        check_idle_member(&consumer, &names.source, self.config.stall_timeout_ms, &mut idle_lag).await
                    } else {
                        idle_lag = None;
                        check_stall(
                            &consumer,
                            &shared,
                            &assigned,
                            &restoring,
                            &breaker,
                            self.config.stall_timeout_ms,
                            &mut stall_warned,
                        )
                        .await
                    };
                    if let Some(error) = stalled {
                        fatal = Some(error);
                        break;
                    }
                }
                received = consumer.recv() => match received {
                    Ok(borrowed) => {
                        let message = borrowed.detach();
                        RecordConsumed { message: &message }.emit(&self.stats);
                        shared.progressed();
                        if !shared.tracker().start(message.topic(), message.partition(), message.offset()) {
                            tracing::debug!(
                                topic = message.topic(),
                                partition = message.partition(),
                                offset = message.offset(),
                                "Dropped a record delivered twice."
                            );
                            continue;
                        }
                        let key = (message.topic().to_owned(), message.partition());
                        {
                            let mut held = shared.held();
                            if let Some(queue) = held.get_mut(&key) {
                                queue.push_back(message);
                                continue;
                            }
                            if names.tier_of(message.topic()).is_some() {
                                if let Some(wait) = not_due(&message) {
                                    if let Err(error) = consumer.pause(&partition_list([&key])) {
                                        tracing::warn!(topic = %key.0, partition = key.1, error = %error, "Failed to pause a retry partition.");
                                    }
                                    held.entry(key.clone()).or_default().push_back(message);
                                    schedule_release(key, wait, &signal_tx);
                                    continue;
                                }
                            }
                        }
                        dispatch(&shared, &lanes, message);
                    }
                    Err(error) => {
                        ConsumerFailed { error: &error }.emit();
                    }
                },
            }
        }

        // Drain: lanes finish the sends under way and skip their queued records.
        shared
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        {
            let mut held = shared.held();
            let mut tracker = shared.tracker();
            for (key, queue) in held.drain() {
                for message in queue {
                    tracker.abandon(&key.0, key.1, message.offset());
                }
            }
        }
        drop(lanes);
        let drain = Duration::from_millis(self.config.drain_timeout_ms);
        let drained = tokio::time::timeout(drain, async {
            while lane_tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                in_flight = shared.tracker().in_flight(),
                "Drain deadline passed; unfinished records will be redelivered."
            );
            let _ = stop_tx.send(true);
            lane_tasks.abort_all();
            while lane_tasks.join_next().await.is_some() {}
        }
        supervisor.abort();
        purger.abort();
        drop(pipeline);
        let _ = committer.await;
        if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::warn!(error = %error, "Final offset commit failed.");
        }
        // Records the lanes did not finish are redelivered; the revoke that closing the
        // consumer triggers must not wait for them again.
        *shared.tracker() = OffsetTracker::new();
        tracing::info!("Notifier stopped.");
        match fatal {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Records the worker holds in memory per lane before it pauses every partition. The main
/// loop never blocks on a full lane, because a loop that stops polling for longer than
/// `max.poll.interval.ms` is removed from the group.
const BUFFER_PER_LANE: usize = 8;

fn rand_owner() -> u64 {
    let mut hasher = DefaultHasher::new();
    uuid::Uuid::new_v4().hash(&mut hasher);
    hasher.finish()
}

fn lane_of(message: &OwnedMessage, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    match message.key() {
        Some(key) => key.hash(&mut hasher),
        // A record without a key has no order to keep: spread it by position.
        None => (message.partition(), message.offset()).hash(&mut hasher),
    }
    usize::try_from(hasher.finish() % lanes as u64).unwrap_or(0)
}

fn dispatch(shared: &Shared, lanes: &[mpsc::UnboundedSender<Job>], message: OwnedMessage) {
    let lane = lane_of(&message, lanes.len());
    let generation = shared.generation(&(message.topic().to_owned(), message.partition()));
    if lanes[lane]
        .send(Job {
            message,
            generation,
        })
        .is_err()
    {
        tracing::error!(lane, "A lane stopped; the record will be redelivered.");
    }
}

/// Returns how long to wait before a retry record is due, or None if it is due now.
fn not_due(message: &OwnedMessage) -> Option<Duration> {
    let not_before = header_bytes(message.headers(), headers::NOT_BEFORE_MS)
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(|text| text.parse::<i64>().ok())?;
    let wait_ms = not_before.saturating_sub(now_ms());
    (wait_ms > 0).then(|| Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)))
}

fn schedule_release(
    key: TopicPartition,
    wait: Duration,
    signal_tx: &mpsc::UnboundedSender<Signal>,
) {
    let signal_tx = signal_tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        let _ = signal_tx.send(Signal::Release(key));
    });
}

/// Resumes `partitions` except those holding a record that is not due yet and, while the
/// breaker is open, all of them.
fn resume(
    consumer: &StreamConsumer<WorkerContext>,
    shared: &Shared,
    breaker: &Breaker,
    partitions: &[TopicPartition],
) {
    if breaker.state() != BreakerState::Closed {
        return;
    }
    let held = shared.held();
    let ready: Vec<&TopicPartition> = partitions
        .iter()
        .filter(|key| !held.contains_key(*key))
        .collect();
    if ready.is_empty() {
        return;
    }
    if let Err(error) = consumer.resume(&partition_list(ready)) {
        tracing::warn!(error = %error, "Failed to resume partitions.");
    }
}

/// Dispatches the held records of a partition that are due, and resumes the partition
/// when none is left waiting.
async fn release_due(
    consumer: &StreamConsumer<WorkerContext>,
    shared: &Shared,
    breaker: &Breaker,
    key: &TopicPartition,
    lanes: &[mpsc::UnboundedSender<Job>],
    signal_tx: &mpsc::UnboundedSender<Signal>,
) {
    let Some(mut queue) = shared.held().remove(key) else {
        return;
    };
    while let Some(message) = queue.pop_front() {
        if let Some(wait) = not_due(&message) {
            queue.push_front(message);
            shared.held().insert(key.clone(), queue);
            schedule_release(key.clone(), wait, signal_tx);
            return;
        }
        dispatch(shared, lanes, message);
    }
    resume(consumer, shared, breaker, std::slice::from_ref(key));
}

fn spawn_restore(
    kafka: &KafkaConfig,
    names: &TopicNames,
    partition: i32,
    ledger: &Ledger,
    timeout_ms: u64,
    signal_tx: &mpsc::UnboundedSender<Signal>,
) {
    let kafka = kafka.clone();
    let topic = names.ledger();
    let ledger = ledger.clone();
    let signal_tx = signal_tx.clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            let started = tokio::time::Instant::now();
            let result = {
                let (kafka, topic, ledger) = (kafka.clone(), topic.clone(), ledger.clone());
                tokio::task::spawn_blocking(move || {
                    changelog::restore(
                        &kafka,
                        &topic,
                        partition,
                        &ledger,
                        Duration::from_millis(timeout_ms),
                    )
                })
                .await
            };
            match result {
                Ok(Ok(restored)) => {
                    crate::telemetry::metrics::observe_ledger_restore(started.elapsed());
                    tracing::info!(
                        topic = %topic,
                        partition,
                        from = restored.from,
                        to = restored.to,
                        applied = restored.applied,
                        seconds = started.elapsed().as_secs_f64(),
                        "Ledger restored from the changelog."
                    );
                    let _ = signal_tx.send(Signal::Restored(partition));
                    return;
                }
                Ok(Err(error)) => {
                    tracing::error!(topic = %topic, partition, error = %error, "Ledger restore failed; the partition stays paused and the restore is tried again.");
                }
                Err(error) => {
                    tracing::error!(topic = %topic, partition, error = %error, "Ledger restore task failed; trying again.");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    });
}

/// Returns an error when assigned, resumed partitions have had records waiting without
/// progress for `stall_timeout_ms`; warns loudly at half that time.
/// Returns an error when this member has no partitions while the group's lag on the
/// source topic stays unchanged for `stall_timeout_ms`. No member consumes then, so the group is
/// stuck and a rejoin is needed. `state` keeps the last lag and when it was first seen.
async fn check_idle_member(
    consumer: &Arc<StreamConsumer<WorkerContext>>,
    source: &str,
    stall_timeout_ms: u64,
    state: &mut Option<(i64, i64)>,
) -> Option<WorkerError> {
    let lag = {
        let consumer = consumer.clone();
        let source = source.to_owned();
        tokio::task::spawn_blocking(move || group_lag(&consumer, &source))
            .await
            .ok()
            .flatten()?
    };
    let now = now_ms();
    match *state {
        _ if lag == 0 => {
            *state = None;
            None
        }
        Some((previous, since)) if previous == lag => {
            let idle_ms = now - since;
            if idle_ms >= i64::try_from(stall_timeout_ms).unwrap_or(i64::MAX) {
                let seconds = u64::try_from(idle_ms / 1000).unwrap_or(0);
                tracing::error!(seconds, lag, "No partitions assigned while the group's lag stays unchanged; rejoining the group.");
                return Some(WorkerError::Stalled { seconds });
            }
            None
        }
        _ => {
            *state = Some((lag, now));
            None
        }
    }
}

/// Returns the group's total lag on `topic`, from committed and end offsets.
fn group_lag(consumer: &StreamConsumer<WorkerContext>, topic: &str) -> Option<i64> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let partitions = metadata.topics().first()?.partitions().len();
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, i32::try_from(partition).ok()?);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(5))
        .ok()?;
    let mut lag = 0;
    for element in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(topic, element.partition(), Duration::from_secs(5))
            .ok()?;
        let done = element
            .offset()
            .to_raw()
            .filter(|offset| *offset >= 0)
            .unwrap_or(low);
        lag += (high - done).max(0);
    }
    Some(lag)
}

async fn check_stall(
    consumer: &Arc<StreamConsumer<WorkerContext>>,
    shared: &Shared,
    assigned: &HashSet<TopicPartition>,
    restoring: &HashSet<i32>,
    breaker: &Breaker,
    stall_timeout_ms: u64,
    warned: &mut bool,
) -> Option<WorkerError> {
    let idle_ms = now_ms()
        - shared
            .last_progress_ms
            .load(std::sync::atomic::Ordering::Relaxed);
    let limit = i64::try_from(stall_timeout_ms).unwrap_or(i64::MAX);
    if idle_ms < limit / 2 || breaker.state() != BreakerState::Closed || !restoring.is_empty() {
        *warned = false;
        return None;
    }
    let in_flight = shared.tracker().in_flight();
    let candidates: Vec<TopicPartition> = {
        let held = shared.held();
        assigned
            .iter()
            .filter(|key| !held.contains_key(*key))
            .cloned()
            .collect()
    };
    let lag = {
        let consumer = consumer.clone();
        tokio::task::spawn_blocking(move || waiting_records(&consumer, &candidates))
            .await
            .unwrap_or(0)
    };
    if lag == 0 && in_flight == 0 {
        *warned = false;
        return None;
    }
    let seconds = u64::try_from(idle_ms / 1000).unwrap_or(0);
    if idle_ms >= limit {
        tracing::error!(
            seconds,
            lag,
            in_flight,
            "Consumer stalled: no progress while records are waiting; restarting the consumer."
        );
        return Some(WorkerError::Stalled { seconds });
    }
    if !*warned {
        tracing::error!(
            seconds,
            lag,
            in_flight,
            "No progress while records are waiting; the consumer restarts if this continues."
        );
        *warned = true;
    }
    None
}

/// Returns how many records wait beyond the consumer's position on `partitions`.
fn waiting_records(consumer: &StreamConsumer<WorkerContext>, partitions: &[TopicPartition]) -> i64 {
    let Ok(positions) = consumer.position() else {
        return 0;
    };
    let mut waiting = 0;
    for (topic, partition) in partitions {
        let Ok((_, high)) = consumer.fetch_watermarks(topic, *partition, Duration::from_secs(5))
        else {
            continue;
        };
        let position = positions
            .find_partition(topic, *partition)
            .and_then(|element| element.offset().to_raw())
            .filter(|offset| *offset >= 0);
        let committed_or_start = match position {
            Some(offset) => offset,
            None => continue,
        };
        waiting += (high - committed_or_start).max(0);
    }
    waiting
}

async fn run_lane(
    pipeline: Arc<Pipeline>,
    shared: Arc<Shared>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    finished: mpsc::UnboundedSender<Finished>,
    fatal: mpsc::UnboundedSender<PipelineError>,
) {
    while let Some(job) = jobs.recv().await {
        let key = (job.message.topic().to_owned(), job.message.partition());
        let generation = job.generation;
        let current = || shared.is_current(&key, generation);
        let result = if current() {
            instrument_record(&job.message, pipeline.process(&job.message, &current)).await
        } else {
            Err(PipelineError::Fenced)
        };
        match result {
            Ok(_) => {
                let _ = finished.send(Finished {
                    topic: key.0,
                    partition: key.1,
                    offset: job.message.offset(),
                });
            }
            Err(PipelineError::Fenced) => {
                // The record is read again by the partition's next owner.
                shared
                    .tracker()
                    .abandon(&key.0, key.1, job.message.offset());
            }
            Err(PipelineError::ShuttingDown) => return,
            Err(error) => {
                let _ = fatal.send(error);
                return;
            }
        }
    }
}

/// Flushes the ledger once for every batch of finished records, then advances and stores
/// each partition's watermark.
async fn run_committer(
    ledger: Ledger,
    mut finished: mpsc::UnboundedReceiver<Finished>,
    shared: Arc<Shared>,
    consumer: Arc<StreamConsumer<WorkerContext>>,
) {
    while let Some(first) = finished.recv().await {
        let mut batch = vec![first];
        while let Ok(next) = finished.try_recv() {
            batch.push(next);
        }
        if let Err(error) = ledger.sync().await {
            tracing::error!(error = %error, "Ledger flush failed; offsets stay unstored.");
            continue;
        }
        shared.progressed();

        let mut advanced: HashMap<TopicPartition, i64> = HashMap::new();
        {
            let mut tracker = shared.tracker();
            for done in batch {
                if let Some(watermark) = tracker.finish(&done.topic, done.partition, done.offset) {
                    advanced.insert((done.topic, done.partition), watermark);
                }
            }
        }
        for ((topic, partition), watermark) in advanced {
            // librdkafka commits the stored offset plus one: the next record to read.
            if let Err(error) = consumer.store_offset(&topic, partition, watermark) {
                tracing::warn!(
                    topic = %topic,
                    partition,
                    offset = watermark,
                    error = %error,
                    "Ignored an offset store for a partition that is no longer assigned."
                );
            }
        }
    }
}

/// Deletes expired ledger entries every ten minutes, so the store stays bounded.
async fn run_purger(ledger: Ledger) {
    let mut interval = tokio::time::interval(Duration::from_secs(600));
    loop {
        interval.tick().await;
        let ledger = ledger.clone();
        match tokio::task::spawn_blocking(move || ledger.purge_expired(now_ms())).await {
            Ok(Ok(removed)) if removed > 0 => {
                tracing::info!(removed, "Expired ledger entries purged.")
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "Ledger purge failed; it runs again later.")
            }
            Err(error) => tracing::warn!(error = %error, "Ledger purge task failed."),
        }
    }
}
