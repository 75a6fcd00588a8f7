//! The replay rate limit.

use std::time::Duration;

use tokio::time::Instant;

/// Spaces calls evenly at a fixed rate, so `n` calls take at least `(n - 1) / rate`
/// seconds.
///
/// A caller that falls behind by less than one interval catches up on the next call, so
/// short delays do not lower the average rate. A longer delay restarts the schedule
/// instead of releasing a burst.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Option<Duration>,
    next_due: Option<Instant>,
}

/// Error for a rate that is not a positive finite number.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid rate {0}: give records per second as a number above 0, such as 50 or 0.5")]
pub struct InvalidRate(pub f64);

impl RateLimiter {
    /// Creates a limiter of `per_second` calls per second, or an unlimited one for `None`.
    pub fn new(per_second: Option<f64>) -> Result<Self, InvalidRate> {
        let interval = match per_second {
            None => None,
            Some(rate) if rate.is_finite() && rate > 0.0 => {
                Some(Duration::from_secs_f64(1.0 / rate))
            }
            Some(rate) => return Err(InvalidRate(rate)),
        };
        Ok(Self {
            interval,
            next_due: None,
        })
    }

    /// Waits until the next call is due.
    pub async fn acquire(&mut self) {
        let Some(interval) = self.interval else {
            return;
        };
        let now = Instant::now();
        let mut due = self.next_due.unwrap_or(now);
        if due + interval < now {
            due = now;
        }
        self.next_due = Some(due + interval);
        tokio::time::sleep_until(due).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn calls_are_spaced_at_the_rate() {
        let mut limiter = RateLimiter::new(Some(4.0)).unwrap();
        let start = Instant::now();
        for _ in 0..9 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn short_delay_is_made_up() {
        let mut limiter = RateLimiter::new(Some(10.0)).unwrap();
        let start = Instant::now();
        limiter.acquire().await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        for _ in 0..9 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(900));
    }

    #[tokio::test(start_paused = true)]
    async fn long_delay_restarts_without_burst() {
        let mut limiter = RateLimiter::new(Some(10.0)).unwrap();
        let start = Instant::now();
        limiter.acquire().await;
        tokio::time::sleep(Duration::from_millis(350)).await;
        for _ in 0..9 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(1150));
    }

    #[tokio::test(start_paused = true)]
    async fn no_rate_never_waits() {
        let mut limiter = RateLimiter::new(None).unwrap();
        let start = Instant::now();
        for _ in 0..1000 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[test]
    fn invalid_rates_are_rejected() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(RateLimiter::new(Some(rate)).is_err(), "{rate}");
        }
    }
}
