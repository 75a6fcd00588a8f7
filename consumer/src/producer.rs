//! The worker's producer for retry, dead-letter and changelog records, replaced when it
//! stops working.
//!
//! An idempotent producer can reach a state it never leaves: a fatal idempotence error,
//! or a broker that rejects every request of the old producer id after it
//! was stalled (seen with Tansu 0.6.0 after SIGSTOP and SIGCONT). Every write of the
//! worker is tried again until it is acknowledged, so a producer that fails many times
//! in a row is replaced by a new one with a new producer id.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::RwLock;

use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

/// Consecutive failed writes after which the producer is replaced.
const FAILURES_BEFORE_REPLACE: u32 = 5;

/// A producer that callers clone per write, and that replaces itself after repeated failures.
pub struct WorkerProducer {
    config: ClientConfig,
    current: RwLock<FutureProducer>,
    failures: AtomicU32,
}

impl WorkerProducer {
    /// Creates the first producer from `config`.
    pub fn new(config: ClientConfig) -> Result<Self, rdkafka::error::KafkaError> {
        let producer = config.create()?;
        Ok(Self {
            config,
            current: RwLock::new(producer),
            failures: AtomicU32::new(0),
        })
    }

    /// Returns the producer to use for the next write.
    pub fn get(&self) -> FutureProducer {
        self.current.read().expect("producer lock").clone()
    }

    /// Records an acknowledged write.
    pub fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// Records a failed write, and replaces the producer after repeated failures.
    pub fn failed(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < FAILURES_BEFORE_REPLACE {
            return;
        }
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                *self.current.write().expect("producer lock") = fresh;
                self.failures.store(0, Ordering::Relaxed);
                tracing::warn!(
                    failures,
                    "Replaced the worker's Kafka producer after repeated failed writes."
                );
            }
            Err(error) => {
                tracing::error!(error = %error, "Failed to create a new Kafka producer; keeping the old one.");
            }
        }
    }
}
