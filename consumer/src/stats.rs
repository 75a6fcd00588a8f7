//! Counters of what the notifier did, shared by the worker, the demo report and the
//! metrics endpoint.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;
use txnotify_schemas::ErrorClass;

/// Live counters; every field only grows.
#[derive(Debug, Default)]
pub struct Stats {
    consumed: AtomicU64,
    sent: AtomicU64,
    duplicates: AtomicU64,
    unknown_outcomes: AtomicU64,
    resent_after_unknown: AtomicU64,
    retries: Mutex<BTreeMap<usize, u64>>,
    dead_letters: Mutex<BTreeMap<&'static str, u64>>,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Records taken from the source topic and the retry tiers.
    pub consumed: u64,
    /// Messages the SMTP server accepted.
    pub sent: u64,
    /// Records skipped because the ledger showed the event as already sent.
    pub duplicates: u64,
    /// Sends that ended with an unknown outcome.
    pub unknown_outcomes: u64,
    /// Unknown outcomes that the policy resent.
    pub resent_after_unknown: u64,
    /// Records published to each retry tier, by tier number.
    pub retries: BTreeMap<usize, u64>,
    /// Records dead-lettered, by error class.
    pub dead_letters: BTreeMap<&'static str, u64>,
}

impl StatsSnapshot {
    /// Returns the total number of records published to any retry tier.
    pub fn retried(&self) -> u64 {
        self.retries.values().sum()
    }

    /// Returns the total number of dead letters.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_letters.values().sum()
    }
}

impl Stats {
    /// Counts one consumed record.
    pub fn record_consumed(&self) {
        self.consumed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one accepted message.
    pub fn record_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one skipped duplicate.
    pub fn record_duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one send with an unknown outcome.
    pub fn record_unknown_outcome(&self) {
        self.unknown_outcomes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one resend of an unknown outcome.
    pub fn record_resent_after_unknown(&self) {
        self.resent_after_unknown.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one record published to retry tier `tier`.
    pub fn record_retry(&self, tier: usize) {
        *self
            .retries
            .lock()
            .expect("stats lock")
            .entry(tier)
            .or_default() += 1;
    }

    /// Counts one dead letter of class `class`.
    pub fn record_dead_letter(&self, class: ErrorClass) {
        *self
            .dead_letters
            .lock()
            .expect("stats lock")
            .entry(class.as_str())
            .or_default() += 1;
    }

    /// Returns a copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            consumed: self.consumed.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            unknown_outcomes: self.unknown_outcomes.load(Ordering::Relaxed),
            resent_after_unknown: self.resent_after_unknown.load(Ordering::Relaxed),
            retries: self.retries.lock().expect("stats lock").clone(),
            dead_letters: self.dead_letters.lock().expect("stats lock").clone(),
        }
    }
}
