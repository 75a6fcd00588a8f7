//! `txnotify probe`: check the notifier's health endpoint, for container health checks
//! in images that have no HTTP client.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Arguments of `txnotify probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// `IP:port` of the telemetry endpoint.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub address: String,
    /// Path to request: `/healthz` (alive) or `/readyz` (ready).
    #[arg(long, default_value = "/healthz")]
    pub path: String,
    /// Maximum wait for the response, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    pub timeout_ms: u64,
}

/// Runs the command. The exit status is 0 on a 200 response and 1 otherwise.
pub async fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    if !args.path.starts_with('/') || args.path.contains(char::is_whitespace) {
        anyhow::bail!(
            "--path {:?} is not an absolute path; use /healthz or /readyz",
            args.path
        );
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    let response = tokio::time::timeout(timeout, request(&args.address, &args.path))
        .await
        .with_context(|| {
            format!(
                "probe of {}{} timed out after {} ms",
                args.address, args.path, args.timeout_ms
            )
        })??;
    let status_line = response.lines().next().unwrap_or_default();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_default();
    print!("{body}");
    if status_line.split_whitespace().nth(1) == Some("200") {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "probe: {}{} returned {status_line:?}",
            args.address, args.path
        );
        Ok(ExitCode::FAILURE)
    }
}

async fn request(address: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("failed to connect to the telemetry endpoint {address}; is txnotify notify running with telemetry.listen_address set to it?"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .await
        .context("failed to read the probe response")?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}
