//! Process telemetry: the log subscriber and, when configured, OpenTelemetry trace
//! export over OTLP.
//!
//! Export follows the standard `OTEL_*` variables and is off unless an OTLP endpoint is
//! set, with no error or warning:
//!
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` turns export on.
//! - `OTEL_EXPORTER_OTLP_PROTOCOL` or `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` picks
//!   `http/protobuf` (the default) or `http/json`. This build has no gRPC exporter, so
//!   `grpc` is rejected with a message naming the variable.
//! - `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turns export off.
//! - `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
//!   `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_EXPORTER_OTLP_TIMEOUT` are read by the
//!   OpenTelemetry SDK 0.31 and its OTLP exporter.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Level;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

use crate::logging::{self, LogFormat};

/// Service name used when `OTEL_SERVICE_NAME` is not set.
const DEFAULT_SERVICE_NAME: &str = "txnotify";

/// Span export settings, read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// OTLP/HTTP wire encoding.
    pub protocol: OtlpProtocol,
}

/// OTLP/HTTP body encodings this build supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf`.
    HttpProtobuf,
    /// `http/json`.
    HttpJson,
}

impl OtlpSettings {
    /// Reads the settings through `lookup`, which returns a variable's value. Returns
    /// `None` when export is off.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Self>> {
        let set = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match set("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => anyhow::bail!(
                "OTEL_TRACES_EXPORTER={other:?} is not supported; set it to otlp or none, or unset it"
            ),
        }
        if set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
            && set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
        {
            return Ok(None);
        }
        let (name, value) = match set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
            Some(value) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Some(value)),
            None => (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                set("OTEL_EXPORTER_OTLP_PROTOCOL"),
            ),
        };
        let protocol = match value.as_deref().map(str::trim) {
            None | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some("http/json") => OtlpProtocol::HttpJson,
            Some(other) => anyhow::bail!(
                "{name}={other:?} is not supported; set it to http/protobuf or http/json \
                 (this build has no gRPC exporter; the collector's OTLP/HTTP port is usually 4318)"
            ),
        };
        Ok(Some(Self { protocol }))
    }
}

/// Installed telemetry; call [`Telemetry::shutdown`] before the process exits so that
/// buffered spans are exported.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the span exporter, if any. Call it outside the async runtime,
    /// because the exporter's HTTP client blocks.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(error) = provider.shutdown() {
                eprintln!("warning: failed to export the last spans: {error}");
            }
        }
    }
}

/// Installs the global log subscriber, with an OpenTelemetry layer when export is on.
pub fn init(format: LogFormat) -> anyhow::Result<Telemetry> {
    let settings = OtlpSettings::from_env(|name| std::env::var(name).ok())?;
    let provider = settings
        .map(|settings| build_provider(&settings))
        .transpose()?;

    let otel_layer = provider.as_ref().map(|provider| {
        // Spans come from txnotify's own crates only, so library internals and log
        // levels from RUST_LOG never change what a trace contains.
        let own_crates = filter_fn(|metadata| {
            metadata.level() <= &Level::INFO && metadata.target().starts_with("txnotify")
        });
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("txnotify"))
            .with_filter(own_crates)
    });
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    }

    tracing_subscriber::registry()
        .with(logging::layer(format))
        .with(otel_layer)
        .try_init()
        .context("failed to install the log subscriber")?;
    Ok(Telemetry { provider })
}

fn build_provider(settings: &OtlpSettings) -> anyhow::Result<SdkTracerProvider> {
    let protocol = match settings.protocol {
        OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
        OtlpProtocol::HttpJson => Protocol::HttpJson,
    };
    // The builder reads the endpoint, headers and timeout variables itself.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .context("invalid OTLP exporter settings in the OTEL_EXPORTER_OTLP_* variables")?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    Ok(SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> anyhow::Result<Option<OtlpSettings>> {
        OtlpSettings::from_env(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn export_settings_from_variables() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        let protobuf = Some(OtlpSettings {
            protocol: OtlpProtocol::HttpProtobuf,
        });
        let json = Some(OtlpSettings {
            protocol: OtlpProtocol::HttpJson,
        });
        // (case, variables, expected settings)
        let cases = [
            ("nothing set", vec![], None),
            (
                "empty endpoint",
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", " ")],
                None,
            ),
            ("endpoint only", vec![endpoint], protobuf.clone()),
            (
                "traces endpoint only",
                vec![(
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://127.0.0.1:4318/v1/traces",
                )],
                protobuf.clone(),
            ),
            (
                "json",
                vec![endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
                json.clone(),
            ),
            (
                "traces protocol wins",
                vec![
                    endpoint,
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
                ],
                json,
            ),
            (
                "sdk disabled",
                vec![endpoint, ("OTEL_SDK_DISABLED", "TRUE")],
                None,
            ),
            (
                "exporter none",
                vec![endpoint, ("OTEL_TRACES_EXPORTER", "none")],
                None,
            ),
            (
                "exporter otlp",
                vec![endpoint, ("OTEL_TRACES_EXPORTER", "otlp")],
                protobuf,
            ),
        ];
        for (case, vars, expected) in cases {
            assert_eq!(settings(&vars).unwrap(), expected, "{case}");
        }
    }

    #[test]
    fn unsupported_values_are_named() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        // (variables, text the error must contain)
        let cases = [
            (
                vec![endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
                "OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\"",
            ),
            (
                vec![endpoint, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift")],
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=\"thrift\"",
            ),
            (
                vec![endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")],
                "OTEL_TRACES_EXPORTER=\"zipkin\"",
            ),
        ];
        for (vars, expected) in cases {
            let error = settings(&vars).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
