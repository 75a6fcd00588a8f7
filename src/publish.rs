//! `txnotify publish`: validate JSON Lines events and publish the valid ones.
//!
//! Each line is checked on its own. A rejected line is reported with its number and the
//! reason, and the other lines are still published. The command exits non-zero if any
//! line was rejected or not acknowledged.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use futures::stream::{FuturesUnordered, StreamExt};
use txnotify_producer::publisher::Pending;
use txnotify_producer::{PublishError, Publisher};

use crate::config::AppConfig;

/// Arguments of `txnotify publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// File with one JSON event per line; `-` reads standard input.
    #[arg(long, short, default_value = "-")]
    pub input: PathBuf,
    /// Records awaiting acknowledgement at once.
    #[arg(long, default_value_t = 10_000)]
    pub max_pending: usize,
}

/// One line read from the input.
enum Line {
    /// The line's bytes, without the newline.
    Text(Vec<u8>),
    /// The line was longer than the limit; its length in bytes.
    TooLong(usize),
}

/// Reads one line of at most `limit` bytes without buffering more than that.
fn read_line(reader: &mut impl BufRead, limit: usize) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    let mut length = 0usize;
    let mut any = false;
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            break;
        }
        any = true;
        let (chunk, done) = match buffer.iter().position(|&b| b == b'\n') {
            Some(end) => (&buffer[..end], Some(end + 1)),
            None => (buffer, None),
        };
        length += chunk.len();
        if length <= limit {
            line.extend_from_slice(chunk);
        }
        let consumed = done.unwrap_or(chunk.len());
        reader.consume(consumed);
        if done.is_some() {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if length > limit {
        return Ok(Some(Line::TooLong(length)));
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(Line::Text(line)))
}

/// Runs the command.
pub async fn run(config: AppConfig, args: PublishArgs) -> anyhow::Result<ExitCode> {
    // The Kafka and notifier sections name the brokers, the topic and the payload limit.
    config.validate_common()?;
    let publisher_config = config.publisher();
    publisher_config
        .validate()
        .map_err(|message| anyhow::anyhow!("invalid configuration: {message}"))?;
    let limit = publisher_config.max_payload_bytes;

    let input: Box<dyn Read> = if args.input.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        let file = std::fs::File::open(&args.input).map_err(|error| {
            anyhow::anyhow!(
                "failed to open input file {}: {error}",
                args.input.display()
            )
        })?;
        Box::new(file)
    };
    let mut reader = BufReader::new(input);
    let publisher = Publisher::new(&publisher_config)?;

    let mut published = 0u64;
    let mut rejected = 0u64;
    let mut failed = 0u64;
    let mut pending = FuturesUnordered::new();
    let mut number = 0u64;
    while let Some(line) = read_line(&mut reader, limit)? {
        number += 1;
        let bytes = match line {
            Line::TooLong(length) => {
                rejected += 1;
                eprintln!(
                    "line {number}: rejected: payload is {length} bytes, over the limit of {limit}; shorten the description or metadata"
                );
                continue;
            }
            Line::Text(bytes) => bytes,
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match publisher.enqueue_json(&bytes, None) {
            Ok(record) => pending.push(acknowledge(number, record)),
            Err(error @ (PublishError::Invalid(_) | PublishError::Rejected(_))) => {
                rejected += 1;
                eprintln!("line {number}: rejected: {}", rejection_reason(&error));
            }
            Err(error) => {
                failed += 1;
                eprintln!("line {number}: not published: {error}");
            }
        }
        while pending.len() >= args.max_pending.max(1) {
            match pending.next().await {
                Some(Ok(())) => published += 1,
                Some(Err(())) => failed += 1,
                None => break,
            }
        }
    }
    while let Some(result) = pending.next().await {
        match result {
            Ok(()) => published += 1,
            Err(()) => failed += 1,
        }
    }

    println!("published: {published}, rejected: {rejected}, failed: {failed}");
    if rejected > 0 || failed > 0 {
        Ok(ExitCode::FAILURE)
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

fn rejection_reason(error: &PublishError) -> String {
    match error {
        PublishError::Invalid(errors) => errors.to_string(),
        PublishError::Rejected(error) => error.to_string(),
        other => other.to_string(),
    }
}

async fn acknowledge(number: u64, record: Pending) -> Result<(), ()> {
    record.acknowledged().await.map(|_| ()).map_err(|error| {
        eprintln!("line {number}: not acknowledged: {error}");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &str, limit: usize) -> Vec<String> {
        let mut reader = BufReader::with_capacity(4, input.as_bytes());
        let mut out = Vec::new();
        while let Some(line) = read_line(&mut reader, limit).unwrap() {
            out.push(match line {
                Line::Text(bytes) => String::from_utf8(bytes).unwrap(),
                Line::TooLong(length) => format!("too long: {length}"),
            });
        }
        out
    }

    #[test]
    fn splits_lines_and_strips_carriage_returns() {
        assert_eq!(lines("ab\r\ncd\n\nef", 10), ["ab", "cd", "", "ef"]);
    }

    #[test]
    fn long_line_is_reported_not_buffered() {
        assert_eq!(lines("0123456789abc\nok\n", 5), ["too long: 13", "ok"]);
    }
}
