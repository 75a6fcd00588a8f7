//! Liveness and readiness of the notifier process.
//!
//! - Alive (`/healthz`): the process runs and its async runtime serves requests. A
//!   process that cannot respond is restarted by its supervisor.
//! - Ready (`/readyz`): all of the following hold.
//!   - The Kafka client is connected: its last statistics report showed at least one
//!     broker in state `UP`.
//!   - The consumer has joined the group: a rebalance gave it its share, which may be
//!     empty when there are more workers than partitions.
//!   - It is not stuck: when records are in flight, one reached an outcome within the
//!     stall timeout.
//!   - It is not draining for shutdown.
//!
//! The state is process-wide; the worker, its rebalance callbacks and the lanes update
//! it, and the HTTP endpoint reads it.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::metrics;

/// Default stall timeout: longer than one SMTP send with all its phase timeouts.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct HealthState {
    connected: Option<bool>,
    joined: bool,
    draining: bool,
    assigned: HashSet<(String, i32)>,
    in_flight: i64,
    last_progress: Instant,
    stall_timeout: Duration,
}

static STATE: LazyLock<Mutex<HealthState>> = LazyLock::new(|| {
    Mutex::new(HealthState {
        connected: None,
        joined: false,
        draining: false,
        assigned: HashSet::new(),
        in_flight: 0,
        last_progress: Instant::now(),
        stall_timeout: DEFAULT_STALL_TIMEOUT,
    })
});

fn state() -> std::sync::MutexGuard<'static, HealthState> {
    // Every update is a single assignment, so a poisoned lock holds consistent values.
    STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Readiness as `/readyz` reports it, with the result of each check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// True when every check passed.
    pub ready: bool,
    /// True when records are in flight and none reached an outcome within the timeout.
    pub stalled: bool,
    /// One line per check, for example `kafka: connected`.
    pub checks: Vec<String>,
}

/// Inputs of the readiness rules, copied out of the shared state.
#[derive(Debug, Clone, Copy)]
struct Inputs {
    connected: Option<bool>,
    joined: bool,
    draining: bool,
    in_flight: i64,
    since_progress: Duration,
    stall_timeout: Duration,
}

fn evaluate(inputs: Inputs) -> Readiness {
    let stalled = inputs.in_flight > 0 && inputs.since_progress > inputs.stall_timeout;
    let kafka = match inputs.connected {
        None => "kafka: no statistics report yet",
        Some(false) => "kafka: no broker connection is up",
        Some(true) => "kafka: connected",
    };
    let group = if inputs.joined {
        "group: joined"
    } else {
        "group: waiting for the first partition assignment"
    };
    let progress = if stalled {
        format!(
            "progress: stalled, {} records in flight and none finished for {} s",
            inputs.in_flight,
            inputs.since_progress.as_secs()
        )
    } else {
        "progress: ok".to_owned()
    };
    let shutdown = if inputs.draining {
        "shutdown: draining"
    } else {
        "shutdown: no"
    };
    Readiness {
        ready: inputs.connected == Some(true) && inputs.joined && !stalled && !inputs.draining,
        stalled,
        checks: vec![
            kafka.to_owned(),
            group.to_owned(),
            progress,
            shutdown.to_owned(),
        ],
    }
}

/// Returns the current readiness.
pub fn readiness() -> Readiness {
    let state = state();
    evaluate(Inputs {
        connected: state.connected,
        joined: state.joined,
        draining: state.draining,
        in_flight: state.in_flight,
        since_progress: state.last_progress.elapsed(),
        stall_timeout: state.stall_timeout,
    })
}

/// Sets how long in-flight records may go without an outcome before the worker counts
/// as stuck.
pub fn set_stall_timeout(timeout: Duration) {
    state().stall_timeout = timeout;
}

/// Records whether the Kafka client has a broker connection up.
pub fn set_connected(connected: bool) {
    state().connected = Some(connected);
}

/// Records partitions given to this consumer by a rebalance; an empty list still counts
/// as joining the group.
pub fn partitions_assigned<'a>(partitions: impl IntoIterator<Item = &'a (String, i32)>) {
    let mut state = state();
    state.joined = true;
    state.assigned.extend(partitions.into_iter().cloned());
    metrics::set_assigned_partitions(state.assigned.len());
}

/// Records partitions taken away from this consumer by a rebalance.
pub fn partitions_revoked<'a>(partitions: impl IntoIterator<Item = &'a (String, i32)>) {
    let mut state = state();
    for partition in partitions {
        state.assigned.remove(partition);
    }
    metrics::set_assigned_partitions(state.assigned.len());
}

/// Marks the process as shutting down, so `/readyz` fails while in-flight records drain.
pub fn set_draining() {
    state().draining = true;
}

/// Records that a lane took a record.
pub(crate) fn record_started() {
    let mut state = state();
    if state.in_flight == 0 {
        // The stall clock starts when work arrives, not at the last outcome before an
        // idle period.
        state.last_progress = Instant::now();
    }
    state.in_flight += 1;
    metrics::add_in_flight(1);
}

/// Records that a lane finished a record, with or without a durable outcome.
pub(crate) fn record_finished(reached_outcome: bool) {
    let mut state = state();
    state.in_flight -= 1;
    metrics::add_in_flight(-1);
    if reached_outcome {
        state.last_progress = Instant::now();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        metrics::set_last_progress(unix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Inputs {
        Inputs {
            connected: Some(true),
            joined: true,
            draining: false,
            in_flight: 0,
            since_progress: Duration::from_secs(1_000),
            stall_timeout: Duration::from_secs(300),
        }
    }

    #[test]
    fn readiness_rules() {
        // (case, inputs, expected ready, expected stalled)
        let cases = [
            ("healthy and idle", healthy(), true, false),
            (
                "no statistics yet",
                Inputs {
                    connected: None,
                    ..healthy()
                },
                false,
                false,
            ),
            (
                "brokers down",
                Inputs {
                    connected: Some(false),
                    ..healthy()
                },
                false,
                false,
            ),
            (
                "not joined",
                Inputs {
                    joined: false,
                    ..healthy()
                },
                false,
                false,
            ),
            (
                "draining",
                Inputs {
                    draining: true,
                    ..healthy()
                },
                false,
                false,
            ),
            (
                "in flight, recent progress",
                Inputs {
                    in_flight: 3,
                    since_progress: Duration::from_secs(10),
                    ..healthy()
                },
                true,
                false,
            ),
            (
                "in flight, no progress past the timeout",
                Inputs {
                    in_flight: 3,
                    since_progress: Duration::from_secs(301),
                    ..healthy()
                },
                false,
                true,
            ),
        ];
        for (case, inputs, ready, stalled) in cases {
            let readiness = evaluate(inputs);
            assert_eq!(readiness.ready, ready, "ready: {case}");
            assert_eq!(readiness.stalled, stalled, "stalled: {case}");
            assert_eq!(readiness.checks.len(), 4, "checks: {case}");
        }
    }
}
