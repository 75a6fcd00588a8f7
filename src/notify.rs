//! `txnotify notify`: run one notifier worker until SIGTERM or SIGINT.

use std::process::ExitCode;
use std::sync::Arc;

use txnotify_consumer::email::{Renderer, SmtpSender};
use txnotify_consumer::ledger::Ledger;
use txnotify_consumer::stats::Stats;
use txnotify_consumer::worker::{Notifier, WorkerError};

use crate::config::AppConfig;

/// Arguments of `txnotify notify`.
#[derive(Debug, clap::Args)]
pub struct NotifyArgs {
    /// Consumer group; overrides `notifier.group_id`.
    #[arg(long)]
    pub group: Option<String>,
    /// Ledger directory; overrides `notifier.ledger.path`.
    #[arg(long)]
    pub ledger_path: Option<String>,
}

/// Runs the command.
pub async fn run(mut config: AppConfig, args: NotifyArgs) -> anyhow::Result<ExitCode> {
    if let Some(group) = args.group {
        config.notifier.group_id = group;
    }
    if let Some(path) = args.ledger_path {
        config.notifier.ledger.path = path;
    }
    config.validate_common()?;
    config
        .smtp
        .validate()
        .map_err(|error| anyhow::anyhow!("invalid configuration: {error}"))?;

    let ledger = Ledger::open(&config.notifier.ledger)?;
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });

    // A stalled consumer is replaced by a new one; every other error ends the process.
    loop {
        let notifier = Notifier::new(
            config.notifier.clone(),
            config.kafka.clone(),
            SmtpSender::new(config.smtp.clone())?,
            Renderer::new(&config.render)?,
            ledger.clone(),
            stats.clone(),
        )?;
        let mut stop = stop_rx.clone();
        let result = notifier
            .run(async move {
                let _ = stop.wait_for(|stopping| *stopping).await;
            })
            .await;
        match result {
            Ok(()) => break,
            Err(WorkerError::Stalled { seconds }) => {
                tracing::error!(seconds, "Restarting the stalled consumer.");
            }
            Err(error) => return Err(error.into()),
        }
        if *stop_rx.borrow() {
            break;
        }
    }
    let snapshot = stats.snapshot();
    tracing::info!(
        sent = snapshot.sent,
        duplicates = snapshot.duplicates,
        retried = snapshot.retried(),
        dead_lettered = snapshot.dead_lettered(),
        "Notifier exited."
    );
    Ok(ExitCode::SUCCESS)
}

/// Completes on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut terminate = match tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::terminate(),
    ) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::error!(error = %error, "Failed to listen for SIGTERM; only SIGINT stops the worker.");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("Received SIGTERM."),
        _ = tokio::signal::ctrl_c() => tracing::info!("Received SIGINT."),
    }
}
