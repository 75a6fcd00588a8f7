//! W3C Trace Context values for the `traceparent` and `tracestate` headers.

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
