//! `txnotify outbox-relay`: relay a Postgres outbox table to Kafka, create the table,
//! and prune published rows.

use std::process::ExitCode;
use std::time::Duration;

use txnotify_producer::outbox::{self, OutboxRelay};

use crate::config::AppConfig;

/// Arguments of `txnotify outbox-relay`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct OutboxArgs {
    #[command(subcommand)]
    command: Option<OutboxCommand>,
}

/// Subcommands of `txnotify outbox-relay`; without one, the relay runs.
#[derive(Debug, clap::Subcommand)]
enum OutboxCommand {
    /// Relay waiting rows to Kafka until SIGTERM or SIGINT (the default).
    Run,
    /// Create the outbox table and its indexes if they are missing.
    Migrate,
    /// Delete published rows older than a retention period. Unpublished and quarantined
    /// rows stay.
    Prune {
        /// Retention period: a number with the unit s, m, h or d, for example 7d.
        #[arg(long, value_parser = parse_retention)]
        older_than: Duration,
    },
}

/// Runs the command.
pub async fn run(config: AppConfig, args: OutboxArgs) -> anyhow::Result<ExitCode> {
    config
        .outbox
        .validate()
        .map_err(|message| anyhow::anyhow!("invalid configuration: {message}"))?;
    let database_url = &config.outbox.database_url;
    match args.command.unwrap_or(OutboxCommand::Run) {
        OutboxCommand::Migrate => {
            outbox::migrate(database_url).await?;
            println!("outbox table txnotify_outbox is ready");
        }
        OutboxCommand::Prune { older_than } => {
            let deleted = outbox::prune(database_url, older_than).await?;
            println!("deleted {deleted} published rows older than {older_than:?}");
        }
        OutboxCommand::Run => {
            let publisher = config.publisher();
            publisher
                .validate()
                .map_err(|message| anyhow::anyhow!("invalid configuration: {message}"))?;
            let relay = OutboxRelay::new(&config.outbox, &publisher)?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                crate::notify::shutdown_signal().await;
                tracing::info!(
                    "Shutdown signal received; the outbox relay finishes its batch and stops."
                );
                let _ = stop.send(true);
            });
            tracing::info!(topic = publisher.topic, "Outbox relay started.");
            let totals = relay.run(stopped).await;
            println!(
                "published: {}, quarantined: {}",
                totals.published, totals.quarantined
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses a retention period such as `45s`, `90m`, `12h` or `7d`.
fn parse_retention(text: &str) -> Result<Duration, String> {
    let hint = "use a whole number followed by s, m, h or d, for example 7d";
    let split = text.len().saturating_sub(1);
    let (number, unit) = text.split_at(split);
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("invalid retention period {text:?}; {hint}")),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid retention period {text:?}; {hint}"))?;
    number
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("retention period {text:?} is too long; {hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_periods_parse() {
        let cases = [
            ("45s", Some(45)),
            ("90m", Some(5_400)),
            ("12h", Some(43_200)),
            ("7d", Some(604_800)),
            ("0s", Some(0)),
            ("7", None),
            ("d", None),
            ("-1d", None),
            ("1.5h", None),
            ("7w", None),
            ("", None),
            ("99999999999999999999d", None),
        ];
        for (text, expected) in cases {
            let parsed = parse_retention(text)
                .ok()
                .map(|duration| duration.as_secs());
            assert_eq!(parsed, expected, "{text:?}");
        }
    }
}
