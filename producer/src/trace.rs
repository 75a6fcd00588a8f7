//! W3C Trace Context values for the `traceparent` and `tracestate` headers.
//!
//! With an OpenTelemetry layer installed, the headers come from the publish span through
//! the global propagator. Without one, a caller's context is written unchanged, or a new
//! random root, so the notifier can still group the attempts of one event.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

/// A trace context to write on a published record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// `traceparent` header value: `00-<trace id>-<parent id>-<flags>`.
    pub traceparent: String,
    /// `tracestate` header value, if any.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Starts a new sampled trace with random trace and span ids.
    pub fn new_root() -> Self {
        let trace_id = Uuid::new_v4().simple().to_string();
        let span_id = &Uuid::new_v4().simple().to_string()[..16];
        Self {
            traceparent: format!("00-{trace_id}-{span_id}-01"),
            tracestate: None,
        }
    }

    /// Checks a caller's `traceparent` against the W3C format and returns it if valid.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let parts: Vec<&str> = traceparent.split('-').collect();
        let hex = |text: &str, len: usize| {
            text.len() == len
                && text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let valid = parts.len() == 4
            && hex(parts[0], 2)
            && parts[0] != "ff"
            && hex(parts[1], 32)
            && parts[1] != "0".repeat(32)
            && hex(parts[2], 16)
            && parts[2] != "0".repeat(16)
            && hex(parts[3], 2);
        valid.then(|| Self {
            traceparent: traceparent.to_owned(),
            tracestate: tracestate
                .filter(|state| state.len() <= 512 && state.is_ascii())
                .map(str::to_owned),
        })
    }

    /// Returns the 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// Returns the context of `span`, or `None` when the span has no OpenTelemetry
    /// context because export is off or the span is disabled.
    pub fn from_span(span: &tracing::Span) -> Option<Self> {
        let context = span.context();
        if !context.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = Carrier::default();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut carrier);
        });
        let traceparent = carrier.0.remove("traceparent")?;
        let tracestate = carrier
            .0
            .remove("tracestate")
            .filter(|state| !state.is_empty());
        Self::parse(&traceparent, tracestate.as_deref())
    }

    /// Makes this context the parent of `span`. Does nothing when export is off.
    pub fn set_as_parent_of(&self, span: &tracing::Span) {
        let mut carrier = Carrier::default();
        carrier
            .0
            .insert("traceparent".into(), self.traceparent.clone());
        if let Some(state) = &self.tracestate {
            carrier.0.insert("tracestate".into(), state.clone());
        }
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&carrier)
        });
        if parent.span().span_context().is_valid() {
            // Fails only for a disabled span, which has nothing to link.
            let _ = span.set_parent(parent);
        }
    }
}

/// Header map for the propagator.
#[derive(Default)]
struct Carrier(HashMap<String, String>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_root_is_valid() {
        let context = TraceContext::new_root();
        assert!(TraceContext::parse(&context.traceparent, None).is_some());
        assert_eq!(context.trace_id().len(), 32);
    }

    #[test]
    fn span_without_exporter_has_no_context() {
        let span = tracing::info_span!("test");
        assert_eq!(TraceContext::from_span(&span), None);
    }

    #[test]
    fn malformed_traceparents_are_rejected() {
        let cases = [
            "",
            "00-abc-def-01",
            "00-00000000000000000000000000000000-0000000000000001-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        ];
        for case in cases {
            assert!(TraceContext::parse(case, None).is_none(), "{case:?}");
        }
        assert!(TraceContext::parse(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            Some("vendor=1")
        )
        .is_some());
    }
}
