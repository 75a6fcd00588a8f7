//! `txnotify notify`: run one notifier worker until SIGTERM or SIGINT.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use txnotify_consumer::email::{Renderer, SmtpSender};
use txnotify_consumer::ledger::Ledger;
use txnotify_consumer::stats::Stats;
use txnotify_consumer::telemetry::{health, metrics, server};
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
    config
        .telemetry
        .validate()
        .map_err(|error| anyhow::anyhow!("invalid configuration: {error}"))?;
    if let Some(interval) = config.kafka.properties.get("statistics.interval.ms") {
        if interval.trim().parse::<u64>().map_or(true, |ms| ms == 0) {
            anyhow::bail!(
                "invalid configuration: kafka.properties sets statistics.interval.ms to {interval:?}, \
                 but /readyz and the lag metric need librdkafka statistics; remove it or set it to \
                 a number of milliseconds such as 5000"
            );
        }
    }
    health::set_stall_timeout(Duration::from_millis(config.telemetry.stall_timeout_ms));
    let listener = server::bind(&config.telemetry.listen_address).await?;
    let bound = listener
        .local_addr()
        .map(|address| address.to_string())
        .unwrap_or_else(|_| config.telemetry.listen_address.clone());
    let (stop_telemetry, telemetry_stopped) = tokio::sync::oneshot::channel::<()>();
    let telemetry_server = tokio::spawn(server::serve(listener, async {
        let _ = telemetry_stopped.await;
    }));
    tracing::info!(
        listen_address = %bound,
        "Telemetry endpoint serves /metrics, /healthz and /readyz."
    );

    let ledger = Ledger::open(&config.notifier.ledger)?;
    let ledger_gauge = tokio::spawn(update_ledger_gauge(
        ledger.clone(),
        Duration::from_millis(config.telemetry.ledger_gauge_interval_ms),
    ));
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
                health::set_draining();
            })
            .await;
        match result {
            Ok(()) => break,
            Err(WorkerError::Stalled { seconds }) => {
                tracing::error!(seconds, "Restarting the stalled consumer.");
            }
            Err(error) => {
                ledger_gauge.abort();
                let _ = stop_telemetry.send(());
                let _ = telemetry_server.await;
                return Err(error.into());
            }
        }
        if *stop_rx.borrow() {
            break;
        }
    }
    ledger_gauge.abort();
    let _ = stop_telemetry.send(());
    let _ = telemetry_server.await;
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

/// Sets the ledger entry gauge every `interval`.
async fn update_ledger_gauge(ledger: Ledger, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let counter = ledger.clone();
        match tokio::task::spawn_blocking(move || counter.len()).await {
            Ok(entries) => metrics::set_ledger_entries(entries),
            Err(error) => {
                tracing::warn!(error = %error, "Failed to count ledger entries.");
            }
        }
    }
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
