//! Process logging for both binaries: the `[log]` section (`log.level`, `log.format`), its
//! validation, and the `tracing` subscriber built from it (text or JSON lines; `RUST_LOG`, when
//! set and valid, overrides `log.level`).
//!
//! Owns nothing after start: [`init`] installs one global subscriber. [`subscriber`] takes the
//! writer and the `RUST_LOG` value as arguments, so tests read what it prints without touching
//! the environment or the global default.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{ConfigError, invalid};

/// `[log]`: what the process logs and how (the gate's and the router's file alike).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written (to standard output; journald collects it under systemd).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, event fields at the top level (for log shippers).
    Json,
}

/// The `[log]` keys, in the `(key, default, meaning)` form of the key tables.
pub const KEYS: &[(&str, &str, &str)] = &[
    (
        "log.level",
        "\"info\"",
        "error | warn | info | debug | trace | off, or tracing directives (\"info,router::server=debug\"); RUST_LOG, when set, overrides it",
    ),
    (
        "log.format",
        "\"text\"",
        "\"text\" (human-readable lines) | \"json\" (one JSON object per line)",
    ),
];

/// Validated `[log]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// A filter `EnvFilter` accepts.
    pub filter: String,
    pub format: LogFormat,
}

const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

impl LogConfig {
    /// Refuses a level that is neither a level name nor a directive list. A bare word must be a
    /// level name: `EnvFilter` would read a typo like `"inf"` as a target name and log nothing.
    pub fn validate(&self) -> Result<LogSettings, ConfigError> {
        let level = self.level.trim();
        let is_directive_list = level.contains('=') || level.contains(',');
        if level.is_empty()
            || (!is_directive_list && !LEVELS.contains(&level.to_ascii_lowercase().as_str()))
        {
            return Err(invalid(
                "log.level",
                format!(
                    "{level:?} is not one of {} nor a directive list like \"info,gate=debug\"",
                    LEVELS.join(", ")
                ),
            ));
        }
        if let Err(err) = EnvFilter::builder().parse(level) {
            return Err(invalid("log.level", format!("{level:?}: {err}")));
        }
        Ok(LogSettings {
            filter: level.to_string(),
            format: self.format,
        })
    }
}

/// The filter in force: `rust_log` when it is set and parses, else the configured one. The
/// returned note says when an unusable `RUST_LOG` was ignored.
fn filter(settings: &LogSettings, rust_log: Option<&str>) -> (EnvFilter, Option<String>) {
    if let Some(directives) = rust_log.filter(|s| !s.trim().is_empty()) {
        match EnvFilter::builder().parse(directives) {
            Ok(filter) => return (filter, None),
            Err(err) => {
                let note = format!("RUST_LOG={directives:?} ignored ({err}); using log.level");
                let configured = EnvFilter::builder().parse_lossy(&settings.filter);
                return (configured, Some(note));
            }
        }
    }
    // `validate` parsed this filter already; lossy parsing only guards hand-built settings.
    (EnvFilter::builder().parse_lossy(&settings.filter), None)
}

/// The subscriber `settings` describe, writing to `writer`, with `rust_log` (the value of
/// `RUST_LOG`, if any) overriding the level. Also returns a note to log once it is installed.
pub fn subscriber<W>(
    settings: &LogSettings,
    rust_log: Option<&str>,
    writer: W,
) -> (Box<dyn tracing::Subscriber + Send + Sync>, Option<String>)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (filter, note) = filter(settings, rust_log);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let subscriber: Box<dyn tracing::Subscriber + Send + Sync> = match settings.format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish(),
        ),
    };
    (subscriber, note)
}

/// Installs the process's subscriber (standard output, `RUST_LOG` from the environment). A
/// second call keeps the first subscriber.
pub fn init(settings: &LogSettings) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (subscriber, note) = subscriber(settings, rust_log.as_deref(), std::io::stdout);
    if tracing::subscriber::set_global_default(subscriber).is_ok()
        && let Some(note) = note
    {
        tracing::warn!("{note}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer tests read back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("not poisoned").clone()).expect("UTF-8")
        }
    }

    fn settings(level: &str, format: LogFormat) -> LogSettings {
        LogConfig {
            level: level.into(),
            format,
        }
        .validate()
        .expect("valid")
    }

    fn emit(settings: &LogSettings, rust_log: Option<&str>) -> String {
        let out = Buffer::default();
        let (subscriber, _) = subscriber(settings, rust_log, out.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(n = 1, "debug line");
            tracing::info!(uid = 42, "info line");
        });
        out.text()
    }

    #[test]
    fn json_format_writes_one_object_per_line_with_flat_fields() {
        let text = emit(&settings("info", LogFormat::Json), None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON line");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "info line");
        assert_eq!(line["uid"], 42);
    }

    #[test]
    fn level_filters_and_rust_log_overrides_it() {
        let info = settings("info", LogFormat::Text);
        let text = emit(&info, None);
        assert!(
            text.contains("info line") && !text.contains("debug line"),
            "{text}"
        );
        let text = emit(&info, Some("debug"));
        assert!(text.contains("debug line"), "{text}");
        let text = emit(&settings("warn", LogFormat::Text), None);
        assert!(text.is_empty(), "{text}");
    }

    #[test]
    fn an_unusable_rust_log_falls_back_to_the_configured_level() {
        let (_, note) = subscriber(
            &settings("info", LogFormat::Text),
            Some("gate=loud"),
            Buffer::default(),
        );
        assert!(note.expect("a note").contains("RUST_LOG"));
    }

    #[test]
    fn bad_levels_are_refused_with_the_key() {
        for level in ["", "inf", "verbose", "gate=loud"] {
            let err = LogConfig {
                level: level.into(),
                format: LogFormat::Text,
            }
            .validate()
            .expect_err(level);
            assert!(err.to_string().starts_with("log.level:"), "{level}: {err}");
        }
        for level in ["INFO", "off", "trace", "info,router::server=debug"] {
            assert!(
                LogConfig {
                    level: level.into(),
                    format: LogFormat::Json
                }
                .validate()
                .is_ok(),
                "{level}"
            );
        }
    }
}
