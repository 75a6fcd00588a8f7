//! `txnotify`: turns payment transaction events on Kafka into customer emails.
//!
//! Commands:
//!
//! - `publish`: validate JSON Lines events and publish them ([`publish`]).
//! - `topics ensure`: create the group's topics and report drift ([`topics`]).
//! - `notify`: run a notifier worker ([`notify`]).
//! - `dlq`: list, show, summarise and replay dead letters ([`dlq`]).
//! - `outbox-relay`: relay a Postgres outbox table to Kafka, create it, prune it
//!   ([`outbox`]).
//! - `demo`: the whole pipeline in one process on an embedded broker ([`demo`]).
//! - `probe`: check a notifier's `/healthz` or `/readyz` ([`probe`]).
//!
//! Logs and trace export are set up in [`telemetry`].

mod config;
mod demo;
mod dlq;
mod logging;
mod mail_sink;
mod notify;
mod outbox;
mod probe;
mod publish;
mod telemetry;
mod topics;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Turns payment transaction events on Kafka into customer email notifications.
#[derive(Debug, Parser)]
#[command(name = "txnotify", version, about)]
struct Cli {
    /// TOML configuration file; `TXNOTIFY_SECTION__KEY` variables override it.
    #[arg(long, short, global = true, env = "TXNOTIFY_CONFIG")]
    config: Option<PathBuf>,
    /// Bootstrap brokers as host:port[,host:port]; overrides the configuration.
    #[arg(long, global = true)]
    bootstrap_servers: Option<String>,
    /// Log format: `json`, `text`, or `auto` (text on a terminal, JSON otherwise).
    #[arg(long, global = true, default_value = "auto")]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate and publish events, one JSON object per line, from a file or stdin.
    Publish(publish::PublishArgs),
    /// Manage the source, retry, dead-letter and ledger topics.
    Topics {
        #[command(subcommand)]
        command: topics::TopicsCommand,
    },
    /// Run a notifier worker until SIGTERM or SIGINT.
    Notify(notify::NotifyArgs),
    /// List, show, summarise and replay dead letters.
    Dlq(Box<dlq::DlqArgs>),
    /// Relay rows of a Postgres outbox table to Kafka; `migrate` and `prune` manage the table.
    OutboxRelay(outbox::OutboxArgs),
    /// Run the whole pipeline in one process, with no infrastructure, and print a report.
    Demo(demo::DemoArgs),
    /// Check a running notifier's /healthz or /readyz. Exits 0 on a 200 response, else 1.
    Probe(probe::ProbeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match telemetry::init(cli.log_format) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    };
    drop(runtime);
    telemetry.shutdown();
    code
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => return demo::run(args).await,
        Command::Probe(args) => return probe::run(args).await,
        _ => {}
    }
    let mut config = config::AppConfig::load(cli.config.as_deref())?;
    if let Some(servers) = cli.bootstrap_servers {
        config.kafka.bootstrap_servers = servers;
    }
    match cli.command {
        Command::Publish(args) => publish::run(config, args).await,
        Command::Topics { command } => topics::run(config, command).await,
        Command::Notify(args) => notify::run(config, args).await,
        Command::Dlq(args) => dlq::run(config, *args).await,
        Command::OutboxRelay(args) => outbox::run(config, args).await,
        Command::Demo(_) | Command::Probe(_) => unreachable!("handled above"),
    }
}
