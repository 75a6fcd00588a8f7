//! Retry policy: how a failed record continues, decided as a value.
//!
//! A transient failure goes to the next retry tier, a topic whose consumer holds each
//! record until its not-before time. The number of attempts and one overall deadline,
//! set at the first failure and carried in a header, bound the retries. Past either
//! bound the record is dead-lettered with class `exhausted`.

use serde::{Deserialize, Serialize};
use txnotify_schemas::ErrorClass;

/// Settings of the retry tiers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Delay of each tier in milliseconds; tier `n` is the topic `<group>.retry.<n>`.
    /// The last tier serves every attempt beyond the number of tiers.
    pub tiers_ms: Vec<u64>,
    /// Attempts in all, the first one included, before a record is exhausted.
    pub max_attempts: u32,
    /// Time from the first failure after which no further retry is scheduled, in milliseconds.
    pub deadline_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            tiers_ms: vec![10_000, 60_000, 600_000],
            max_attempts: 5,
            deadline_ms: 60 * 60 * 1000,
        }
    }
}

impl RetryPolicy {
    /// Checks the settings and returns a message naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.tiers_ms.is_empty() {
            return Err("notifier.retry.tiers_ms is empty; give at least one delay in milliseconds, for example [10000, 60000, 600000]".into());
        }
        if let Some(position) = self.tiers_ms.iter().position(|&delay| delay == 0) {
            return Err(format!(
                "notifier.retry.tiers_ms[{position}] is 0; every tier needs a delay above 0 ms"
            ));
        }
        if self.max_attempts == 0 {
            return Err(
                "notifier.retry.max_attempts is 0; set it to 1 or more (1 means no retries)".into(),
            );
        }
        if self.deadline_ms < self.tiers_ms[0] {
            return Err(format!(
                "notifier.retry.deadline_ms ({}) is shorter than the first tier delay ({}); raise the deadline or shorten the tier",
                self.deadline_ms, self.tiers_ms[0]
            ));
        }
        Ok(())
    }

    /// Returns the number of tiers, which is also the number of retry topics.
    pub fn tier_count(&self) -> usize {
        self.tiers_ms.len()
    }

    /// Decides what follows a transient failure of attempt number `attempt` (1-based).
    pub fn after_transient(&self, attempt: u32, budget: &RetryBudget, now_ms: i64) -> Decision {
        if attempt >= self.max_attempts {
            return Decision::DeadLetter {
                class: ErrorClass::Exhausted,
                reason: format!("gave up after {attempt} attempts"),
            };
        }
        let index = usize::try_from(attempt)
            .unwrap_or(usize::MAX)
            .min(self.tiers_ms.len())
            - 1;
        let delay_ms = i64::try_from(self.tiers_ms[index]).unwrap_or(i64::MAX);
        let first_failure_ms = budget.first_failure_ms.unwrap_or(now_ms);
        let deadline_ms = budget.deadline_ms.unwrap_or_else(|| {
            first_failure_ms.saturating_add(i64::try_from(self.deadline_ms).unwrap_or(i64::MAX))
        });
        let not_before_ms = now_ms.saturating_add(delay_ms);
        if not_before_ms > deadline_ms {
            return Decision::DeadLetter {
                class: ErrorClass::Exhausted,
                reason: format!("retry deadline passed after {attempt} attempts"),
            };
        }
        Decision::Retry {
            tier: index + 1,
            not_before_ms,
            first_failure_ms,
            deadline_ms,
        }
    }
}

/// The retry budget a record already carries in its headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryBudget {
    /// Time of the first failure, in milliseconds since the Unix epoch.
    pub first_failure_ms: Option<i64>,
    /// Overall retry deadline, in milliseconds since the Unix epoch.
    pub deadline_ms: Option<i64>,
}

/// Next step for a record whose attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Publish to retry tier `tier` (1-based), to be attempted at `not_before_ms`.
    Retry {
        /// Tier number, 1-based.
        tier: usize,
        /// Earliest time of the next attempt, in milliseconds since the Unix epoch.
        not_before_ms: i64,
        /// Time of the first failure, kept unchanged across tiers.
        first_failure_ms: i64,
        /// Overall deadline, kept unchanged across tiers.
        deadline_ms: i64,
    },
    /// Publish to the dead-letter topic.
    DeadLetter {
        /// Class written to the error-class header.
        class: ErrorClass,
        /// Short reason with no personal data.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            tiers_ms: vec![100, 1_000],
            max_attempts: 4,
            deadline_ms: 10_000,
        }
    }

    #[test]
    fn tiers_follow_attempts_then_repeat_last() {
        let policy = policy();
        let budget = RetryBudget::default();
        let cases = [(1, 1, 100), (2, 2, 1_000), (3, 2, 1_000)];
        for (attempt, tier, delay) in cases {
            match policy.after_transient(attempt, &budget, 0) {
                Decision::Retry {
                    tier: got_tier,
                    not_before_ms,
                    ..
                } => {
                    assert_eq!(got_tier, tier, "attempt {attempt}");
                    assert_eq!(not_before_ms, delay, "attempt {attempt}");
                }
                other => panic!("attempt {attempt}: expected retry, got {other:?}"),
            }
        }
    }

    #[test]
    fn last_attempt_is_exhausted() {
        let decision = policy().after_transient(4, &RetryBudget::default(), 0);
        assert!(matches!(
            decision,
            Decision::DeadLetter {
                class: ErrorClass::Exhausted,
                ..
            }
        ));
    }

    #[test]
    fn carried_deadline_is_honoured() {
        let budget = RetryBudget {
            first_failure_ms: Some(0),
            deadline_ms: Some(500),
        };
        let decision = policy().after_transient(2, &budget, 0);
        assert!(
            matches!(decision, Decision::DeadLetter { .. }),
            "{decision:?}"
        );
    }

    #[test]
    fn first_failure_sets_deadline() {
        match policy().after_transient(1, &RetryBudget::default(), 5_000) {
            Decision::Retry {
                first_failure_ms,
                deadline_ms,
                ..
            } => {
                assert_eq!(first_failure_ms, 5_000);
                assert_eq!(deadline_ms, 15_000);
            }
            other => panic!("expected retry, got {other:?}"),
        }
    }

    #[test]
    fn invalid_policies_name_the_field() {
        let cases = [
            (
                RetryPolicy {
                    tiers_ms: vec![],
                    ..policy()
                },
                "retry.tiers_ms",
            ),
            (
                RetryPolicy {
                    tiers_ms: vec![10, 0],
                    ..policy()
                },
                "retry.tiers_ms[1]",
            ),
            (
                RetryPolicy {
                    max_attempts: 0,
                    ..policy()
                },
                "retry.max_attempts",
            ),
            (
                RetryPolicy {
                    deadline_ms: 1,
                    ..policy()
                },
                "retry.deadline_ms",
            ),
        ];
        for (policy, field) in cases {
            let message = policy.validate().unwrap_err();
            assert!(message.contains(field), "{message}");
        }
        assert!(policy().validate().is_ok());
    }
}
