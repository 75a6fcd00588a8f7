//! Circuit breaker per SMTP endpoint.
//!
//! An outage of the SMTP server is not a bad message. Consecutive connection-level failures
//! open the breaker, and while it is open the worker pauses every partition and the
//! lanes hold their records instead of spending retries, so an outage turns into
//! consumer lag rather than retries and dead letters. After the open interval the
//! breaker is half-open: one probe session decides whether it closes or opens again,
//! with the interval doubled up to a maximum.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Settings of the circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive connection-level failures that open the breaker.
    pub failure_threshold: u32,
    /// First wait before a probe, in milliseconds.
    pub open_ms: u64,
    /// Maximum wait between probes, in milliseconds.
    pub max_open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_ms: 2_000,
            max_open_ms: 60_000,
        }
    }
}

impl BreakerConfig {
    /// Checks the settings and returns a message naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.failure_threshold == 0 {
            return Err(
                "notifier.breaker.failure_threshold is 0; set it to 1 or more, for example 5"
                    .into(),
            );
        }
        if self.open_ms == 0 || self.max_open_ms < self.open_ms {
            return Err(format!(
                "notifier.breaker.open_ms ({}) must be above 0 and at most notifier.breaker.max_open_ms ({})",
                self.open_ms, self.max_open_ms
            ));
        }
        Ok(())
    }
}

/// Breaker state, as published to the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Sends flow.
    Closed,
    /// Sends wait; partitions are paused.
    Open,
    /// One probe is deciding.
    HalfOpen,
}

impl BreakerState {
    /// Returns the state as a lowercase word for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug)]
struct Counters {
    consecutive_failures: u32,
    open_for: Duration,
}

/// A circuit breaker shared by every lane of a worker.
#[derive(Debug)]
pub struct Breaker {
    endpoint: String,
    config: BreakerConfig,
    counters: Mutex<Counters>,
    state: watch::Sender<BreakerState>,
}

impl Breaker {
    /// Creates a closed breaker for `endpoint`.
    pub fn new(endpoint: String, config: BreakerConfig) -> Self {
        let (state, _) = watch::channel(BreakerState::Closed);
        crate::telemetry::metrics::set_breaker_state(
            &endpoint,
            crate::telemetry::metrics::BreakerState::Closed,
        );
        let open_for = Duration::from_millis(config.open_ms);
        Self {
            endpoint,
            config,
            counters: Mutex::new(Counters {
                consecutive_failures: 0,
                open_for,
            }),
            state,
        }
    }

    /// Returns the current state.
    pub fn state(&self) -> BreakerState {
        *self.state.borrow()
    }

    /// Returns a receiver of every state change.
    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.state.subscribe()
    }

    /// Records a send that reached the server, whatever its reply.
    pub fn record_success(&self) {
        let mut counters = self.counters.lock().expect("breaker lock");
        counters.consecutive_failures = 0;
    }

    /// Records a connection-level failure and returns true when the breaker is open afterwards.
    pub fn record_failure(&self) -> bool {
        let mut counters = self.counters.lock().expect("breaker lock");
        counters.consecutive_failures = counters.consecutive_failures.saturating_add(1);
        if self.state() == BreakerState::Closed
            && counters.consecutive_failures >= self.config.failure_threshold
        {
            self.transition(BreakerState::Open, counters.consecutive_failures);
        }
        self.state() != BreakerState::Closed
    }

    /// Waits until the breaker is closed.
    pub async fn closed(&self) {
        let mut receiver = self.state.subscribe();
        let _ = receiver
            .wait_for(|state| *state == BreakerState::Closed)
            .await;
    }

    /// Runs the open, probe, close cycle for as long as the breaker exists. `probe` opens a
    /// session with the server and returns whether it succeeded.
    pub async fn supervise<F, Fut>(&self, mut probe: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut receiver = self.state.subscribe();
        loop {
            if receiver
                .wait_for(|state| *state == BreakerState::Open)
                .await
                .is_err()
            {
                return;
            }
            let wait = self.counters.lock().expect("breaker lock").open_for;
            tokio::time::sleep(wait).await;

            self.transition(BreakerState::HalfOpen, 0);
            if probe().await {
                let mut counters = self.counters.lock().expect("breaker lock");
                counters.consecutive_failures = 0;
                counters.open_for = Duration::from_millis(self.config.open_ms);
                drop(counters);
                self.transition(BreakerState::Closed, 0);
            } else {
                let mut counters = self.counters.lock().expect("breaker lock");
                counters.open_for =
                    (counters.open_for * 2).min(Duration::from_millis(self.config.max_open_ms));
                drop(counters);
                self.transition(BreakerState::Open, 0);
            }
        }
    }

    fn transition(&self, next: BreakerState, failures: u32) {
        let exported = match next {
            BreakerState::Closed => crate::telemetry::metrics::BreakerState::Closed,
            BreakerState::HalfOpen => crate::telemetry::metrics::BreakerState::HalfOpen,
            BreakerState::Open => crate::telemetry::metrics::BreakerState::Open,
        };
        crate::telemetry::metrics::set_breaker_state(&self.endpoint, exported);
        let previous = self.state.send_replace(next);
        if previous != next {
            tracing::warn!(
                endpoint = %self.endpoint,
                from = previous.as_str(),
                to = next.as_str(),
                consecutive_failures = failures,
                "Circuit breaker changed state."
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    fn breaker() -> Arc<Breaker> {
        Arc::new(Breaker::new(
            "127.0.0.1:25".into(),
            BreakerConfig {
                failure_threshold: 3,
                open_ms: 100,
                max_open_ms: 400,
            },
        ))
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let breaker = breaker();
        assert!(!breaker.record_failure());
        assert!(!breaker.record_failure());
        assert!(breaker.record_failure());
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn success_resets_the_count() {
        let breaker = breaker();
        breaker.record_failure();
        breaker.record_failure();
        breaker.record_success();
        assert!(!breaker.record_failure());
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn probe_failure_reopens_then_success_closes() {
        let breaker = breaker();
        let probes = Arc::new(AtomicU32::new(0));
        let supervisor = {
            let breaker = breaker.clone();
            let probes = probes.clone();
            tokio::spawn(async move {
                breaker
                    .supervise(|| {
                        let probes = probes.clone();
                        async move { probes.fetch_add(1, Ordering::SeqCst) >= 1 }
                    })
                    .await;
            })
        };
        for _ in 0..3 {
            breaker.record_failure();
        }
        tokio::time::timeout(Duration::from_secs(5), breaker.closed())
            .await
            .expect("breaker closes after the second probe");
        assert_eq!(probes.load(Ordering::SeqCst), 2);
        assert_eq!(breaker.state(), BreakerState::Closed);
        supervisor.abort();
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let zero = BreakerConfig {
            failure_threshold: 0,
            ..BreakerConfig::default()
        };
        assert!(zero.validate().unwrap_err().contains("failure_threshold"));
        let inverted = BreakerConfig {
            open_ms: 10,
            max_open_ms: 5,
            ..BreakerConfig::default()
        };
        assert!(inverted.validate().unwrap_err().contains("open_ms"));
    }
}
