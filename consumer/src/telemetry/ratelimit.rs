//! Suppression of log lines that repeat, for example a broker that stays unreachable.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Lets one log line through per window and counts the ones it holds back.
#[derive(Debug)]
pub struct RepeatLimiter {
    window: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    last_admitted: Option<Instant>,
    suppressed: u64,
}

impl RepeatLimiter {
    /// Creates a limiter that admits at most one line per `window`.
    pub const fn new(window: Duration) -> Self {
        Self {
            window,
            state: Mutex::new(LimiterState {
                last_admitted: None,
                suppressed: 0,
            }),
        }
    }

    /// Decides whether to log now. Returns the number of lines suppressed since the last
    /// admitted one, or `None` when this line is suppressed too.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        // A panic while holding the lock cannot leave two integers inconsistent.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = match state.last_admitted {
            None => true,
            Some(last) => now.saturating_duration_since(last) >= self.window,
        };
        if due {
            state.last_admitted = Some(now);
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_admits_once_per_window() {
        let limiter = RepeatLimiter::new(Duration::from_secs(10));
        let start = Instant::now();
        // (seconds after start, expected result)
        let cases = [
            (0, Some(0)),
            (1, None),
            (9, None),
            (10, Some(2)),
            (11, None),
            (25, Some(1)),
            (40, Some(0)),
        ];
        for (seconds, expected) in cases {
            let got = limiter.admit_at(start + Duration::from_secs(seconds));
            assert_eq!(got, expected, "at {seconds} s");
        }
    }
}
