//! W3C trace context in Kafka record headers, and the span of one record.
//!
//! The notifier continues the trace that the producer started: each record gets a
//! `txnotify.process` span whose parent comes from the record's `traceparent` and
//! `tracestate` headers. A record forwarded to a retry tier or the dead-letter topic
//! carries the context of that span, so one trace shows every attempt.
//!
//! Extraction and injection use the global OpenTelemetry propagator. The binary installs
//! the W3C one when export is configured. Otherwise the global propagator is a no-op and
//! no span has an OpenTelemetry context, so forwarded records keep the headers they came
//! with.

use std::future::Future;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use rdkafka::message::{Headers, Message, OwnedMessage};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use txnotify_schemas::headers;

use super::health;

/// Reads trace context from Kafka headers.
pub struct HeaderExtractor<'a, H>(pub Option<&'a H>);

impl<H: Headers> Extractor for HeaderExtractor<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        crate::record::header_bytes(self.0, key).and_then(|bytes| std::str::from_utf8(bytes).ok())
    }

    fn keys(&self) -> Vec<&str> {
        match self.0 {
            Some(headers) => headers.iter().map(|header| header.key).collect(),
            None => Vec::new(),
        }
    }
}

/// Trace context headers taken from a span.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    /// `traceparent` value.
    pub traceparent: Option<String>,
    /// `tracestate` value.
    pub tracestate: Option<String>,
}

impl Injector for TraceHeaders {
    fn set(&mut self, key: &str, value: String) {
        match key {
            headers::TRACEPARENT => self.traceparent = Some(value),
            headers::TRACESTATE if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

/// Returns the trace context of the current span, or empty headers when the span has no
/// OpenTelemetry context (export off, or the span is disabled by the filter).
pub fn current_trace_headers() -> TraceHeaders {
    let context = tracing::Span::current().context();
    let mut out = TraceHeaders::default();
    if context.span().span_context().is_valid() {
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut out);
        });
    }
    out
}

/// Creates the span of one consumed record, child of the context in its headers.
pub fn record_span(message: &OwnedMessage) -> tracing::Span {
    let span = tracing::info_span!(
        "txnotify.process",
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.destination.name = message.topic(),
        messaging.destination.partition.id = message.partition(),
        messaging.kafka.offset = message.offset(),
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(message.headers()))
    });
    if parent.span().span_context().is_valid() {
        // Fails only when the span is disabled, and then there is nothing to link.
        let _ = span.set_parent(parent);
    }
    span
}

/// Runs `process` for one record inside its span, and keeps the in-flight gauge and the
/// stall clock of `/readyz` up to date. `process` returns whether the record reached a
/// durable outcome.
pub async fn instrument_record<F, T, E>(message: &OwnedMessage, process: F) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
{
    health::record_started();
    let result = process.instrument(record_span(message)).await;
    health::record_finished(result.is_ok());
    result
}
