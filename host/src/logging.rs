//! Log output on stderr: text for people (the default), JSON lines for log pipelines.
//!
//! `RUST_LOG` filters both (default `info`). A JSON line is tracing-subscriber's layout:
//! `{"timestamp":…,"level":"INFO","fields":{"message":…,<event fields>},"target":"shmsnap::…"}`,
//! one object per line, no colour escapes, so `jq`, Vector, Loki or journald's JSON parsing take
//! it as is.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// Without `RUST_LOG`: `info`, but `object_store`'s own retry notes only as warnings (the
/// replica uploader logs a failing replica itself, rate-limited).
const DEFAULT_FILTER: &str = "info,object_store=warn";

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, fields (with the message), target.
    Json,
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            // No colour escapes in logs that go to a file, a pipe or the journal.
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            // Spans are not used for context here; without them a line is one event.
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}
