//! Telemetry of the notifier: Prometheus metrics, health state, the HTTP endpoint that
//! serves both, trace context carried in record headers, and log rate limiting.
//!
//! - [`metrics`]: the metric registry and the small functions that update it.
//! - [`health`]: liveness and readiness state, and the rules that evaluate it.
//! - [`server`]: `/metrics`, `/healthz` and `/readyz` over HTTP/1.1.
//! - [`trace`]: W3C trace context in Kafka headers, and the per-record span.
//! - [`ratelimit`]: suppression of repeating log lines, with a count of what was dropped.
//!
//! Metrics and health state are process-wide, because a process runs one worker and
//! the HTTP endpoint must see what every lane and callback reports.

pub mod health;
pub mod metrics;
pub mod ratelimit;
pub mod server;
pub mod trace;
