//! On-disk form of one spooled event.
//!
//! An entry is stored under its 8-byte big-endian sequence number, so sled's key order is
//! the order of `publish` calls. The value is a version byte followed by three
//! length-prefixed fields (record key, `traceparent`, `tracestate`) and the payload bytes.

use crate::trace::TraceContext;

/// Format version written as the first byte of every value.
const VERSION: u8 = 1;

/// One event waiting in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Kafka record key, the event's `account_id`.
    pub key: Vec<u8>,
    /// Trace context to write on the record.
    pub trace: Option<TraceContext>,
    /// The event's JSON bytes, exactly as the caller published them.
    pub payload: Vec<u8>,
}

/// Reason why stored bytes are not a valid entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The first byte names a format this version cannot read.
    #[error("unknown spool entry version {0}")]
    UnknownVersion(u8),
    /// The value ends inside a field.
    #[error("spool entry is truncated")]
    Truncated,
    /// A text field is not UTF-8.
    #[error("spool entry field {0} is not UTF-8")]
    NotUtf8(&'static str),
}

impl Entry {
    /// Encodes the entry as a sled value.
    pub fn encode(&self) -> Vec<u8> {
        let (traceparent, tracestate) = match &self.trace {
            Some(trace) => (
                trace.traceparent.as_bytes(),
                trace.tracestate.as_deref().unwrap_or("").as_bytes(),
            ),
            None => (&[][..], &[][..]),
        };
        let mut value = Vec::with_capacity(
            1 + 12 + self.key.len() + traceparent.len() + tracestate.len() + self.payload.len(),
        );
        value.push(VERSION);
        for field in [&self.key[..], traceparent, tracestate] {
            let length = u32::try_from(field.len()).expect("spool fields are far below 4 GiB");
            value.extend_from_slice(&length.to_be_bytes());
            value.extend_from_slice(field);
        }
        value.extend_from_slice(&self.payload);
        value
    }

    /// Decodes a sled value written by [`Entry::encode`].
    pub fn decode(value: &[u8]) -> Result<Entry, EntryError> {
        let (&version, mut rest) = value.split_first().ok_or(EntryError::Truncated)?;
        if version != VERSION {
            return Err(EntryError::UnknownVersion(version));
        }
        let mut fields: [&[u8]; 3] = [&[]; 3];
        for field in &mut fields {
            let (length, tail) = rest.split_first_chunk::<4>().ok_or(EntryError::Truncated)?;
            let length = u32::from_be_bytes(*length) as usize;
            if tail.len() < length {
                return Err(EntryError::Truncated);
            }
            (*field, rest) = tail.split_at(length);
        }
        let [key, traceparent, tracestate] = fields;
        let text = |bytes: &[u8], name| {
            std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|_| EntryError::NotUtf8(name))
        };
        let trace = if traceparent.is_empty() {
            None
        } else {
            let tracestate = text(tracestate, "tracestate")?;
            Some(TraceContext {
                traceparent: text(traceparent, "traceparent")?,
                tracestate: (!tracestate.is_empty()).then_some(tracestate),
            })
        };
        Ok(Entry {
            key: key.to_vec(),
            trace,
            payload: rest.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(state: Option<&str>) -> Option<TraceContext> {
        Some(TraceContext {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: state.map(str::to_owned),
        })
    }

    #[test]
    fn entries_round_trip() {
        let cases = [
            Entry {
                key: b"acct-1".to_vec(),
                trace: None,
                payload: br#"{"a":1}"#.to_vec(),
            },
            Entry {
                key: b"acct-2".to_vec(),
                trace: trace(None),
                payload: Vec::new(),
            },
            Entry {
                key: Vec::new(),
                trace: trace(Some("vendor=1")),
                payload: vec![0xff; 300],
            },
        ];
        for entry in cases {
            assert_eq!(
                Entry::decode(&entry.encode()),
                Ok(entry.clone()),
                "{entry:?}"
            );
        }
    }

    #[test]
    fn damaged_values_are_rejected() {
        let good = Entry {
            key: b"acct-1".to_vec(),
            trace: trace(None),
            payload: b"{}".to_vec(),
        }
        .encode();
        let mut wrong_version = good.clone();
        wrong_version[0] = 9;
        let cases: [(&[u8], EntryError); 4] = [
            (&[], EntryError::Truncated),
            (&wrong_version, EntryError::UnknownVersion(9)),
            (&good[..3], EntryError::Truncated),
            (&good[..12], EntryError::Truncated),
        ];
        for (value, expected) in cases {
            assert_eq!(Entry::decode(value), Err(expected.clone()), "{value:?}");
        }
    }
}
