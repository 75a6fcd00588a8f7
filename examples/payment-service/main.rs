//! `payment-service`: an example producing service that completes payments and
//! publishes a `TransactionEvent` for each, without waiting on the notification side.
//!
//! `POST /transactions` completes a transaction and publishes its event in one of two
//! ways, chosen with `--mode`:
//!
//! - `spool`: the event goes to the durable local spool. The response is sent once the
//!   event is on local disk; a background forwarder sends it to Kafka later.
//! - `outbox`: the transaction row and the outbox row are inserted in one Postgres
//!   transaction, and `txnotify outbox-relay` publishes the outbox row later.
//!
//! Neither path talks to Kafka, an SMTP server or a notifier before it responds, so the
//! status and latency stay the same while those are down. The only failures a client
//! sees are its own invalid input (422) and a full spool or an unreachable database
//! (503); in both cases the transaction is not completed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::json;
use txnotify_producer::outbox::{self, INSERT_STATEMENT};
use txnotify_producer::spool::{Spool, SpoolConfig, SpoolError};
use txnotify_producer::PublisherConfig;
use txnotify_schemas::{Money, Recipient, TransactionEvent, TransactionStatus};
use uuid::Uuid;

/// Example payment service that publishes through the txnotify spool or outbox.
#[derive(Debug, Parser)]
#[command(name = "payment-service", about)]
struct Args {
    /// Address to listen on; port 0 picks a free port, printed on stdout.
    #[arg(long, env = "PAYMENT_SERVICE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Publishing mode.
    #[arg(long, env = "PAYMENT_SERVICE_MODE", value_enum)]
    mode: Mode,
    /// Kafka bootstrap servers, host:port[,host:port] (spool mode).
    #[arg(
        long,
        env = "PAYMENT_SERVICE_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap_servers: String,
    /// Source topic (spool mode).
    #[arg(long, env = "PAYMENT_SERVICE_TOPIC", default_value = "transactions.v1")]
    topic: String,
    /// Spool directory on local disk (spool mode).
    #[arg(long, env = "PAYMENT_SERVICE_SPOOL_DIR")]
    spool_dir: Option<PathBuf>,
    /// Maximum size of the spool, in bytes (spool mode).
    #[arg(long, env = "PAYMENT_SERVICE_SPOOL_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    spool_max_bytes: u64,
    /// Maximum time a publish may take, in milliseconds (spool mode).
    #[arg(
        long,
        env = "PAYMENT_SERVICE_ENQUEUE_TIMEOUT_MS",
        default_value_t = 100
    )]
    enqueue_timeout_ms: u64,
    /// Postgres connection string with the outbox table (outbox mode).
    #[arg(long, env = "PAYMENT_SERVICE_DATABASE_URL")]
    database_url: Option<String>,
    /// Number of Postgres connections (outbox mode).
    #[arg(long, default_value_t = 4)]
    database_connections: usize,
}

/// Publishing mode of the service.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// Durable local spool, forwarded to Kafka in the background.
    Spool,
    /// Postgres outbox row in the payment's own transaction.
    Outbox,
}

/// Request body of `POST /transactions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransactionRequest {
    account_id: String,
    amount_minor_units: i64,
    currency: String,
    recipient_email: String,
    recipient_name: Option<String>,
    locale: Option<String>,
    merchant: Option<String>,
}

/// Response body of a completed transaction.
#[derive(Debug, Serialize)]
struct TransactionResponse {
    transaction_id: String,
    event_id: Uuid,
    status: &'static str,
    /// Place where the event waits for Kafka: `spool` or `outbox`.
    notification: &'static str,
}

/// Destination of published events.
enum Sink {
    Spool {
        spool: Spool,
        /// Completed transactions, by id. A real service keeps them in its database.
        completed: Mutex<HashMap<String, TransactionEvent>>,
    },
    Outbox {
        clients: Vec<tokio::sync::Mutex<tokio_postgres::Client>>,
        next: AtomicUsize,
    },
}

type ApiError = (StatusCode, Json<serde_json::Value>);

fn error(status: StatusCode, message: impl std::fmt::Display) -> ApiError {
    (status, Json(json!({ "error": message.to_string() })))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match serve(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let sink = Arc::new(open_sink(&args).await?);
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/transactions", post(complete_transaction))
        .route("/metrics", get(metrics))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| anyhow::anyhow!("failed to listen on {}: {error}", args.listen))?;
    let address = listener.local_addr()?;
    println!("listening on {address}");
    tracing::info!(address = %address, mode = ?args.mode, "Payment service started.");

    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;

    if let Sink::Spool { spool, .. } = sink.as_ref() {
        let report = spool.shutdown().await?;
        tracing::info!(
            remaining_entries = report.remaining_entries,
            "Payment service stopped."
        );
    }
    Ok(())
}

/// Serves the Prometheus metrics, with the spool backlog read at scrape time.
async fn metrics(State(sink): State<Arc<Sink>>) -> String {
    if let Sink::Spool { spool, .. } = sink.as_ref() {
        txnotify_consumer::telemetry::metrics::set_spool_backlog(spool.stats().backlog_entries);
    }
    txnotify_consumer::telemetry::metrics::encode()
}

async fn open_sink(args: &Args) -> anyhow::Result<Sink> {
    match args.mode {
        Mode::Spool => {
            let Some(path) = args.spool_dir.clone() else {
                anyhow::bail!("--spool-dir is missing; spool mode needs a directory on local disk");
            };
            let spool_config = SpoolConfig {
                path,
                max_bytes: args.spool_max_bytes,
                ..SpoolConfig::default()
            };
            let publisher = PublisherConfig {
                bootstrap_servers: args.bootstrap_servers.clone(),
                topic: args.topic.clone(),
                enqueue_timeout_ms: args.enqueue_timeout_ms,
                ..PublisherConfig::default()
            };
            Ok(Sink::Spool {
                spool: Spool::open(&spool_config, &publisher)?,
                completed: Mutex::new(HashMap::new()),
            })
        }
        Mode::Outbox => {
            let Some(url) = args.database_url.as_deref() else {
                anyhow::bail!("--database-url is missing; outbox mode needs the database with the txnotify_outbox table");
            };
            let mut clients = Vec::new();
            for _ in 0..args.database_connections.max(1) {
                let client = outbox::connect(url).await?;
                clients.push(tokio::sync::Mutex::new(client));
            }
            clients[0]
                .lock()
                .await
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS payment_service_transactions ( \
                       transaction_id text PRIMARY KEY, \
                       account_id text NOT NULL, \
                       amount_minor_units bigint NOT NULL, \
                       currency text NOT NULL, \
                       completed_at timestamptz NOT NULL DEFAULT now())",
                )
                .await?;
            Ok(Sink::Outbox {
                clients,
                next: AtomicUsize::new(0),
            })
        }
    }
}

/// Completes a transaction and publishes its event; see the module docs.
async fn complete_transaction(
    State(sink): State<Arc<Sink>>,
    Json(request): Json<TransactionRequest>,
) -> Result<(StatusCode, Json<TransactionResponse>), ApiError> {
    let event = TransactionEvent {
        event_id: Uuid::new_v4(),
        schema_version: txnotify_schemas::SCHEMA_VERSION,
        transaction_id: format!("tx-{}", Uuid::new_v4()),
        account_id: request.account_id,
        status: TransactionStatus::Completed,
        amount: Money::new(request.amount_minor_units, request.currency),
        occurred_at: time::OffsetDateTime::now_utc(),
        recipient: Recipient {
            email: request.recipient_email,
            display_name: request.recipient_name,
            locale: request.locale,
        },
        merchant: request.merchant,
        description: None,
        metadata: Default::default(),
    };
    event
        .validate()
        .map_err(|errors| error(StatusCode::UNPROCESSABLE_ENTITY, errors))?;

    let notification = match sink.as_ref() {
        Sink::Spool { spool, completed } => {
            spool.publish(&event, None).await.map_err(|failure| match failure {
                SpoolError::Invalid(_) | SpoolError::Rejected(_) => {
                    error(StatusCode::UNPROCESSABLE_ENTITY, failure)
                }
                other => {
                    tracing::warn!(error = %other, event_id = %event.event_id, "Transaction not completed because the spool rejected its event.");
                    error(StatusCode::SERVICE_UNAVAILABLE, other)
                }
            })?;
            completed
                .lock()
                .expect("completed lock")
                .insert(event.transaction_id.clone(), event.clone());
            "spool"
        }
        Sink::Outbox { clients, next } => {
            let index = next.fetch_add(1, Ordering::Relaxed) % clients.len();
            let mut client = clients[index].lock().await;
            insert_with_outbox(&mut client, &event).await.map_err(|failure| {
                tracing::warn!(error = %failure, event_id = %event.event_id, "Transaction not completed because the database call failed.");
                error(StatusCode::SERVICE_UNAVAILABLE, "database unavailable, transaction not completed")
            })?;
            "outbox"
        }
    };

    Ok((
        StatusCode::CREATED,
        Json(TransactionResponse {
            transaction_id: event.transaction_id,
            event_id: event.event_id,
            status: "completed",
            notification,
        }),
    ))
}

/// Inserts the transaction and its outbox row in one database transaction.
async fn insert_with_outbox(
    client: &mut tokio_postgres::Client,
    event: &TransactionEvent,
) -> Result<(), tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    transaction
        .execute(
            "INSERT INTO payment_service_transactions \
             (transaction_id, account_id, amount_minor_units, currency) VALUES ($1, $2, $3, $4)",
            &[
                &event.transaction_id,
                &event.account_id,
                &event.amount.minor_units,
                &event.amount.currency,
            ],
        )
        .await?;
    let payload = String::from_utf8(event.to_json_bytes()).expect("serde_json writes UTF-8");
    let no_trace: Option<&str> = None;
    transaction
        .execute(INSERT_STATEMENT, &[&payload, &no_trace, &no_trace])
        .await?;
    transaction.commit().await
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("Shutdown signal received; the payment service stops.");
}
