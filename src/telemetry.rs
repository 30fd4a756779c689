//! Logging: `tracing` with an `EnvFilter` from `RUST_LOG` (default `info`),
//! written to stderr as JSON or human-readable text.
//!
//! Logs never carry row values. Our own events hold ids, counts and
//! statuses only; the PostgreSQL driver logs statement parameters (row
//! values) at `debug` and the server's NOTICE messages (which an HMIS
//! trigger may fill with values) at `info`, so `tokio_postgres` is held at
//! `warn` whatever `RUST_LOG` says, unless `RUST_LOG` names it itself.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (the default when stderr is not a terminal).
    Json,
    /// Human-readable lines (the default on a terminal).
    Pretty,
}

impl LogFormat {
    /// JSON unless a person is watching.
    pub fn auto() -> LogFormat {
        if std::io::stderr().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        }
    }
}

/// Targets that log values below `warn`, held there unless `RUST_LOG`
/// names them.
const QUIET: &[&str] = &["tokio_postgres"];

/// The filter directives for a `RUST_LOG` value (`info` when unset).
pub fn directives(rust_log: Option<&str>) -> String {
    let mut d = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info")
        .to_string();
    for target in QUIET {
        if !d.contains(target) {
            d.push_str(&format!(",{target}=warn"));
        }
    }
    d
}

/// Installs the global subscriber; a second call is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::new(directives(std::env::var("RUST_LOG").ok().as_deref()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_stays_quiet_unless_named() {
        assert_eq!(directives(None), "info,tokio_postgres=warn");
        assert_eq!(directives(Some("debug")), "debug,tokio_postgres=warn");
        assert_eq!(
            directives(Some("debug,tokio_postgres=trace")),
            "debug,tokio_postgres=trace"
        );
    }
}
