//! The notifier worker: one member of the consumer group.
//!
//! The worker reads the source topic and every retry tier with one consumer. It hands
//! each record to a lane chosen by the record key, so records with the same key run in
//! order while different keys run concurrently. A committer task flushes the ledger once
//! per batch of finished records, and only then does the main loop store each
//! partition's contiguous watermark for the background commit.
//!
//! A retry-tier record that is not due yet pauses its partition. The worker holds the
//! record in memory and a timer releases it at its not-before time, so no task sleeps.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use txnotify_schemas::headers;

use crate::config::{KafkaConfig, NotifierConfig};
use crate::email::{Renderer, SmtpSender};
use crate::events::{ConsumerFailed, RecordConsumed};
use crate::ledger::Ledger;
use crate::offsets::{OffsetTracker, TopicPartition};
use crate::pipeline::{now_ms, Pipeline, PipelineError};
use crate::record::header_bytes;
use crate::stats::Stats;
use crate::telemetry::health;
use crate::telemetry::trace::instrument_record;

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
}

/// Partition changes reported by the rebalance callbacks.
#[derive(Debug)]
enum RebalanceEvent {
    Assigned(Vec<TopicPartition>),
    Revoked(Vec<TopicPartition>),
}

struct WorkerContext {
    events: Mutex<Option<mpsc::UnboundedSender<RebalanceEvent>>>,
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::telemetry::metrics::observe_consumer_statistics(&statistics);
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            // Commit what is already durable before the partitions move to another member.
            if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %error, "No offsets committed before revoke.");
            }
            self.send(RebalanceEvent::Revoked(list(partitions)));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => self.send(RebalanceEvent::Assigned(list(partitions))),
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
    fn send(&self, event: RebalanceEvent) {
        if let Some(sender) = self.events.lock().expect("rebalance sender lock").as_ref() {
            let _ = sender.send(event);
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

fn single(topic: &str, partition: i32) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    list
}

/// A record handed to a lane.
struct Job {
    message: OwnedMessage,
}

/// A record whose outcome is known, on its way to becoming durable.
#[derive(Debug, Clone)]
struct Finished {
    topic: String,
    partition: i32,
    offset: i64,
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
    /// 1. Create the consumer, the producer, the lanes and the committer.
    /// 2. Dispatch each record to its lane, holding retry records until they are due.
    /// 3. Store each partition's watermark once the ledger flush covers its records.
    /// 4. On shutdown, stop reading, drain within `drain_timeout_ms`, commit synchronously.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), WorkerError> {
        let names = self.config.topic_names();
        let (rebalance_tx, mut rebalance_rx) = mpsc::unbounded_channel();
        let context = WorkerContext {
            events: Mutex::new(Some(rebalance_tx)),
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
        let consumer: StreamConsumer<WorkerContext> =
            consumer_config.create_with_context(context)?;
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
        let producer: FutureProducer = producer_config.create()?;

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
            producer: producer.clone(),
            produce_timeout: Duration::from_millis(self.config.produce_timeout_ms),
            stats: self.stats.clone(),
            shutdown: stop_rx,
        });

        let (finished_tx, finished_rx) = mpsc::unbounded_channel::<Finished>();
        let (durable_tx, mut durable_rx) = mpsc::unbounded_channel::<Vec<Finished>>();
        let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<PipelineError>();
        let mut lanes = Vec::with_capacity(self.config.max_in_flight);
        let mut lane_tasks = JoinSet::new();
        for _ in 0..self.config.max_in_flight {
            let (lane_tx, lane_rx) = mpsc::channel::<Job>(64);
            lanes.push(lane_tx);
            lane_tasks.spawn(run_lane(
                pipeline.clone(),
                lane_rx,
                finished_tx.clone(),
                fatal_tx.clone(),
            ));
        }
        drop(finished_tx);
        let committer = tokio::spawn(run_committer(self.ledger.clone(), finished_rx, durable_tx));

        let mut tracker = OffsetTracker::new();
        let mut held: HashMap<TopicPartition, VecDeque<OwnedMessage>> = HashMap::new();
        let (release_tx, mut release_rx) = mpsc::unbounded_channel::<TopicPartition>();
        let mut fatal: Option<PipelineError> = None;
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
                    fatal = Some(error);
                    break;
                }
                Some(batch) = durable_rx.recv() => {
                    store_watermarks(&consumer, &mut tracker, batch);
                }
                Some(event) = rebalance_rx.recv() => match event {
                    RebalanceEvent::Assigned(partitions) => {
                        tracing::info!(partitions = ?partitions, "Partitions assigned.");
                        health::partitions_assigned(&partitions);
                        for (topic, partition) in partitions {
                            tracker.forget(&topic, partition);
                        }
                    }
                    RebalanceEvent::Revoked(partitions) => {
                        tracing::info!(partitions = ?partitions, "Partitions revoked.");
                        health::partitions_revoked(&partitions);
                        for (topic, partition) in partitions {
                            tracker.forget(&topic, partition);
                            held.remove(&(topic, partition));
                        }
                    }
                },
                Some(key) = release_rx.recv() => {
                    release_due(&consumer, &mut held, &key, &lanes, &release_tx).await;
                }
                received = consumer.recv() => match received {
                    Ok(borrowed) => {
                        let message = borrowed.detach();
                        RecordConsumed { message: &message }.emit(&self.stats);
                        if !tracker.start(message.topic(), message.partition(), message.offset()) {
                            tracing::debug!(
                                topic = message.topic(),
                                partition = message.partition(),
                                offset = message.offset(),
                                "Dropped a record delivered twice."
                            );
                            continue;
                        }
                        let key = (message.topic().to_owned(), message.partition());
                        if let Some(queue) = held.get_mut(&key) {
                            queue.push_back(message);
                            continue;
                        }
                        if names.tier_of(message.topic()).is_some() {
                            if let Some(wait) = not_due(&message) {
                                hold(&consumer, &mut held, key, message, wait, &release_tx);
                                continue;
                            }
                        }
                        dispatch(&lanes, message).await;
                    }
                    Err(error) => {
                        ConsumerFailed { error: &error }.emit();
                    }
                },
            }
        }

        // Drain: stop the lanes from taking more work and let the in-flight records finish.
        held.clear();
        drop(lanes);
        let drain = Duration::from_millis(self.config.drain_timeout_ms);
        let drained = tokio::time::timeout(drain, async {
            while lane_tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                in_flight = tracker.in_flight(),
                "Drain deadline passed; unfinished records will be redelivered."
            );
            let _ = stop_tx.send(true);
            lane_tasks.abort_all();
            while lane_tasks.join_next().await.is_some() {}
        }
        drop(pipeline);
        let _ = committer.await;
        while let Ok(batch) = durable_rx.try_recv() {
            store_watermarks(&consumer, &mut tracker, batch);
        }
        if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::warn!(error = %error, "Final offset commit failed.");
        }
        tracing::info!("Notifier stopped.");
        match fatal {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }
}

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

async fn dispatch(lanes: &[mpsc::Sender<Job>], message: OwnedMessage) {
    let lane = lane_of(&message, lanes.len());
    if lanes[lane].send(Job { message }).await.is_err() {
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

fn hold(
    consumer: &StreamConsumer<WorkerContext>,
    held: &mut HashMap<TopicPartition, VecDeque<OwnedMessage>>,
    key: TopicPartition,
    message: OwnedMessage,
    wait: Duration,
    release_tx: &mpsc::UnboundedSender<TopicPartition>,
) {
    if let Err(error) = consumer.pause(&single(&key.0, key.1)) {
        tracing::warn!(topic = %key.0, partition = key.1, error = %error, "Failed to pause a retry partition.");
    }
    held.entry(key.clone()).or_default().push_back(message);
    let release_tx = release_tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        let _ = release_tx.send(key);
    });
}

/// Dispatches the held records of a partition that are due, and resumes the partition
/// when none is left waiting.
async fn release_due(
    consumer: &StreamConsumer<WorkerContext>,
    held: &mut HashMap<TopicPartition, VecDeque<OwnedMessage>>,
    key: &TopicPartition,
    lanes: &[mpsc::Sender<Job>],
    release_tx: &mpsc::UnboundedSender<TopicPartition>,
) {
    let Some(mut queue) = held.remove(key) else {
        return;
    };
    while let Some(message) = queue.pop_front() {
        if let Some(wait) = not_due(&message) {
            queue.push_front(message);
            held.insert(key.clone(), queue);
            let release_tx = release_tx.clone();
            let key = key.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = release_tx.send(key);
            });
            return;
        }
        dispatch(lanes, message).await;
    }
    if let Err(error) = consumer.resume(&single(&key.0, key.1)) {
        tracing::warn!(topic = %key.0, partition = key.1, error = %error, "Failed to resume a retry partition.");
    }
}

fn store_watermarks(
    consumer: &StreamConsumer<WorkerContext>,
    tracker: &mut OffsetTracker,
    batch: Vec<Finished>,
) {
    let mut advanced: HashMap<TopicPartition, i64> = HashMap::new();
    for finished in batch {
        if let Some(watermark) =
            tracker.finish(&finished.topic, finished.partition, finished.offset)
        {
            advanced.insert((finished.topic, finished.partition), watermark);
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

async fn run_lane(
    pipeline: Arc<Pipeline>,
    mut jobs: mpsc::Receiver<Job>,
    finished: mpsc::UnboundedSender<Finished>,
    fatal: mpsc::UnboundedSender<PipelineError>,
) {
    while let Some(job) = jobs.recv().await {
        match instrument_record(&job.message, pipeline.process(&job.message)).await {
            Ok(_) => {
                let _ = finished.send(Finished {
                    topic: job.message.topic().to_owned(),
                    partition: job.message.partition(),
                    offset: job.message.offset(),
                });
            }
            Err(PipelineError::ShuttingDown) => return,
            Err(error) => {
                let _ = fatal.send(error);
                return;
            }
        }
    }
}

/// Flushes the ledger once for every batch of finished records, then passes the batch on.
async fn run_committer(
    ledger: Ledger,
    mut finished: mpsc::UnboundedReceiver<Finished>,
    durable: mpsc::UnboundedSender<Vec<Finished>>,
) {
    while let Some(first) = finished.recv().await {
        let mut batch = vec![first];
        while let Ok(next) = finished.try_recv() {
            batch.push(next);
        }
        if let Err(error) = ledger.flush().await {
            tracing::error!(error = %error, "Ledger flush failed; offsets stay unstored.");
            continue;
        }
        if durable.send(batch).is_err() {
            return;
        }
    }
}
