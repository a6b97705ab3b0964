//! Log output: text (coloured only on a terminal and never with `NO_COLOR`)
//! or JSON lines, always on stderr so a command's own output on stdout (the
//! demo's steps, `triggers print`) stays clean. Both variables are
//! validated: a typo is a start-up error that names the variable.
//!
//! Traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, every span (apply batches,
//! mission runs and their phases) also goes out over OTLP/HTTP in protobuf,
//! batched on the SDK's own thread; the standard `OTEL_*` variables
//! (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, ...) apply. Spans carry ids as attributes,
//! never content. Without the variable no exporter runs.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The default filter when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info,tokio_postgres=warn";

/// `MANA_AI_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// What [`init`] sets up, decided from the environment alone.
#[derive(Debug)]
pub struct LogSettings {
    pub format: LogFormat,
    pub ansi: bool,
    pub filter: EnvFilter,
}

/// Reads the settings; `terminal` says whether stderr is a terminal.
pub fn settings(
    env: &dyn Fn(&str) -> Option<String>,
    terminal: bool,
) -> anyhow::Result<LogSettings> {
    let format = match env("MANA_AI_LOG_FORMAT").as_deref().map(str::trim) {
        None | Some("") | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => anyhow::bail!("MANA_AI_LOG_FORMAT: {other:?} is not one of text, json"),
    };
    let filter = match env("RUST_LOG").filter(|v| !v.trim().is_empty()) {
        None => EnvFilter::new(DEFAULT_FILTER),
        Some(directives) => EnvFilter::builder()
            .parse(&directives)
            .map_err(|e| anyhow::anyhow!("RUST_LOG: {directives:?} is not a log filter ({e}); e.g. RUST_LOG=info,mana_ai=debug"))?,
    };
    let no_color = env("NO_COLOR").is_some_and(|v| !v.is_empty());
    Ok(LogSettings {
        format,
        ansi: terminal && !no_color,
        filter,
    })
}

/// Keeps the trace exporter alive; dropping it sends the spans still queued.
#[must_use = "dropping the guard stops the trace exporter"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("mana-ai: flushing traces at exit failed: {e}");
            }
        }
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the global subscriber from the process environment.
pub fn init() -> anyhow::Result<TelemetryGuard> {
    let env = |k: &str| std::env::var(k).ok();
    let s = settings(&env, std::io::stderr().is_terminal())?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(s.ansi);
    let mut layers: Vec<BoxedLayer> = vec![match s.format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    }];
    let provider = otlp_provider(&env)?;
    if let Some(provider) = &provider {
        let tracer = provider.tracer("mana-ai");
        layers.push(tracing_opentelemetry::layer().with_tracer(tracer).boxed());
    }
    tracing_subscriber::registry()
        .with(layers.with_filter(s.filter))
        .init();
    if provider.is_some() {
        tracing::info!("exporting traces over OTLP/HTTP");
    }
    Ok(TelemetryGuard { provider })
}

/// The OTLP/HTTP trace pipeline, when an endpoint is configured.
fn otlp_provider(
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<SdkTracerProvider>> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| env(k).is_some_and(|v| !v.trim().is_empty()));
    if !configured {
        return Ok(None);
    }
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|e| anyhow::anyhow!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?;
    let service = env("OTEL_SERVICE_NAME")
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "mana-ai".into());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use testkit::env;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(settings(&env(&[]), true).unwrap().ansi);
        assert!(!settings(&env(&[]), false).unwrap().ansi);
        assert!(!settings(&env(&[("NO_COLOR", "1")]), true).unwrap().ansi);
        assert!(settings(&env(&[("NO_COLOR", "")]), true).unwrap().ansi);
    }

    #[test]
    fn formats_are_text_or_json_and_a_typo_names_the_variable() {
        assert_eq!(settings(&env(&[]), false).unwrap().format, LogFormat::Text);
        let json = settings(&env(&[("MANA_AI_LOG_FORMAT", "json")]), false).unwrap();
        assert_eq!(json.format, LogFormat::Json);
        let e = settings(&env(&[("MANA_AI_LOG_FORMAT", "yaml")]), false).unwrap_err();
        assert!(
            e.to_string().starts_with("MANA_AI_LOG_FORMAT: \"yaml\""),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_rust_log_names_the_variable() {
        assert!(settings(&env(&[("RUST_LOG", "info,mana_ai=debug")]), false).is_ok());
        let e = settings(&env(&[("RUST_LOG", "mana_ai=loud")]), false).unwrap_err();
        assert!(
            e.to_string().starts_with("RUST_LOG: \"mana_ai=loud\""),
            "{e}"
        );
    }
}
