//! Settings of the durable spool.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Settings of a [`Spool`](super::Spool).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory of the spool's sled database, on local disk. One process at a time may
    /// open it.
    pub path: PathBuf,
    /// Maximum total size of the spooled entries, in bytes. A publish that would pass it
    /// fails with `SpoolFull`.
    ///
    /// NOTE: this bounds the entries' encoded size. sled's files on disk are larger, by a
    /// factor that depends on its log compaction, so leave headroom on the volume.
    pub max_bytes: u64,
    /// Maximum time the forwarder lets librdkafka try to deliver one record, in
    /// milliseconds. It should outlast the broker outages the spool has to bridge.
    pub delivery_timeout_ms: u64,
    /// Maximum time shutdown keeps forwarding before it leaves the rest for the next
    /// start, in milliseconds.
    pub drain_timeout_ms: u64,
    /// Wait after a failed delivery before the forwarder tries again, in milliseconds.
    pub retry_backoff_ms: u64,
    /// Maximum number of records the forwarder has in flight at once.
    pub forward_window: usize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            max_bytes: 256 * 1024 * 1024,
            delivery_timeout_ms: 300_000,
            drain_timeout_ms: 10_000,
            retry_backoff_ms: 1_000,
            forward_window: 5_000,
        }
    }
}

impl SpoolConfig {
    /// Checks the settings and returns a message naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err(
                "spool.path is empty; set it to a directory on local disk, for example /var/lib/payments/spool"
                    .into(),
            );
        }
        if self.max_bytes < 1024 * 1024 {
            return Err(format!(
                "spool.max_bytes is {}; set it to 1048576 (1 MiB) or more",
                self.max_bytes
            ));
        }
        if self.delivery_timeout_ms < 1_000 {
            return Err(format!(
                "spool.delivery_timeout_ms is {}; set it to 1000 or more",
                self.delivery_timeout_ms
            ));
        }
        if self.retry_backoff_ms == 0 {
            return Err("spool.retry_backoff_ms is 0; set it to 100 or more".into());
        }
        if !(1..=100_000).contains(&self.forward_window) {
            return Err(format!(
                "spool.forward_window is {}; set it between 1 and 100000",
                self.forward_window
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_settings_name_the_field() {
        let valid = SpoolConfig {
            path: "/tmp/spool".into(),
            ..SpoolConfig::default()
        };
        assert_eq!(valid.validate(), Ok(()));
        let cases = [
            (
                SpoolConfig {
                    path: PathBuf::new(),
                    ..valid.clone()
                },
                "spool.path",
            ),
            (
                SpoolConfig {
                    max_bytes: 10,
                    ..valid.clone()
                },
                "spool.max_bytes is 10",
            ),
            (
                SpoolConfig {
                    delivery_timeout_ms: 5,
                    ..valid.clone()
                },
                "spool.delivery_timeout_ms is 5",
            ),
            (
                SpoolConfig {
                    retry_backoff_ms: 0,
                    ..valid.clone()
                },
                "spool.retry_backoff_ms",
            ),
            (
                SpoolConfig {
                    forward_window: 0,
                    ..valid.clone()
                },
                "spool.forward_window is 0",
            ),
        ];
        for (config, expected) in cases {
            let message = config.validate().unwrap_err();
            assert!(message.contains(expected), "{message}");
        }
    }
}
