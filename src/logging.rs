//! Log output: JSON lines for machines, text for people, level from `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

/// Log line format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Default filter. lettre logs message bodies at debug level, so it stays at warn.
const DEFAULT_FILTER: &str = "info,lettre=warn,rdkafka=warn";

/// Returns the log layer, writing to stderr and filtered by `RUST_LOG`.
pub fn layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // A user's RUST_LOG may raise everything to debug; lettre's debug lines still stay off.
    let filter = filter.add_directive("lettre=warn".parse().expect("static directive"));
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Json => true,
        LogFormat::Text => false,
    };
    let builder = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_filter(filter)
            .boxed()
    } else {
        builder.with_filter(filter).boxed()
    }
}
