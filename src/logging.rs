//! Log output: text (coloured only on a terminal and never with `NO_COLOR`)
//! or JSON lines, always on stderr so a command's own output on stdout (the
//! demo's steps, `triggers print`) stays clean. Both variables are
//! validated: a typo is a start-up error that names the variable.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

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

/// Installs the global subscriber from the process environment.
pub fn init() -> anyhow::Result<()> {
    let s = settings(&|k| std::env::var(k).ok(), std::io::stderr().is_terminal())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(s.filter)
        .with_writer(std::io::stderr)
        .with_ansi(s.ansi);
    match s.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

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
