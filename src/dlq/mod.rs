//! `txnotify dlq`: list, show, summarise and replay dead letters.
//!
//! `list`, `show` and `stats` only read: they assign partitions without a consumer group
//! and commit nothing. `replay` copies selected dead letters back to their origin topic,
//! a named topic or the first retry tier, and writes an audit record.

mod output;
mod replay;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use txnotify_consumer::dlq::filter::{Filter, HeaderMatch, TimeBound};
use txnotify_consumer::dlq::reader::TopicReader;
use txnotify_consumer::dlq::DeadLetter;
use txnotify_consumer::pipeline::now_ms;
use txnotify_schemas::ErrorClass;
use uuid::Uuid;

use crate::config::AppConfig;

/// Arguments of `txnotify dlq`.
#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    /// Dead-letter topic to read; defaults to `<notifier.group_id>.dlq`.
    #[arg(long, global = true)]
    topic: Option<String>,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DlqCommand {
    /// Print the dead letters that match the filters, oldest offset first per partition.
    List(ListArgs),
    /// Print one dead letter with decoded headers and its payload.
    Show(ShowArgs),
    /// Count dead letters by class, reason, origin topic and age.
    Stats(StatsArgs),
    /// Copy dead letters back to be processed again.
    Replay(replay::ReplayArgs),
}

/// Filter options shared by `list`, `stats` and `replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// Error class to select: transient, permanent, exhausted, invalid or
    /// unknown-outcome. Repeat the option or separate classes with commas.
    #[arg(long = "class", value_delimiter = ',')]
    classes: Vec<ErrorClass>,
    /// Earliest record time: RFC 3339 (2026-12-01T08:00:00Z), a date (2026-12-01, UTC
    /// midnight) or a duration before now (90m, 6h, 7d).
    #[arg(long)]
    since: Option<TimeArg>,
    /// Latest record time, exclusive, in the same forms as --since.
    #[arg(long)]
    until: Option<TimeArg>,
    /// Exact record key, such as an account id.
    #[arg(long)]
    key: Option<String>,
    /// Event id, from the `event-id` header or the payload.
    #[arg(long)]
    event_id: Option<Uuid>,
    /// Topic the record failed on first.
    #[arg(long)]
    origin_topic: Option<String>,
    /// Header match NAME=VALUE, or NAME to require the header; repeatable, all must match.
    #[arg(long = "header")]
    headers: Vec<HeaderMatch>,
}

/// A time option as given, with its parsed bound.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TimeArg {
    text: String,
    bound: TimeBound,
}

impl std::str::FromStr for TimeArg {
    type Err = txnotify_consumer::dlq::filter::FilterError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(TimeArg {
            text: value.to_owned(),
            bound: value.parse()?,
        })
    }
}

impl FilterArgs {
    /// Resolves relative times against `now_ms` and checks the range.
    fn to_filter(&self, now_ms: i64) -> anyhow::Result<Filter> {
        let filter = Filter {
            classes: self.classes.clone(),
            since_ms: self.since.as_ref().map(|arg| arg.bound.resolve(now_ms)),
            until_ms: self.until.as_ref().map(|arg| arg.bound.resolve(now_ms)),
            key: self.key.clone(),
            event_id: self.event_id,
            origin_topic: self.origin_topic.clone(),
            headers: self.headers.clone(),
        };
        filter.validate()?;
        Ok(filter)
    }

    /// Returns the options in a fixed order, as a replay checkpoint stores them.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.classes.is_empty() {
            let classes: Vec<&str> = self.classes.iter().map(ErrorClass::as_str).collect();
            parts.push(format!("--class {}", classes.join(",")));
        }
        if let Some(since) = &self.since {
            parts.push(format!("--since {}", since.text));
        }
        if let Some(until) = &self.until {
            parts.push(format!("--until {}", until.text));
        }
        if let Some(key) = &self.key {
            parts.push(format!("--key {key}"));
        }
        if let Some(event_id) = self.event_id {
            parts.push(format!("--event-id {event_id}"));
        }
        if let Some(topic) = &self.origin_topic {
            parts.push(format!("--origin-topic {topic}"));
        }
        for header in &self.headers {
            parts.push(format!("--header {header}"));
        }
        parts.join(" ")
    }
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Print JSON Lines, one object per dead letter, instead of a table.
    #[arg(long)]
    json: bool,
    /// Maximum number of dead letters to print; 0 prints all.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

#[derive(Debug, clap::Args)]
struct ShowArgs {
    /// Position as PARTITION:OFFSET, as `dlq list` prints it.
    #[arg(required_unless_present = "event_id", conflicts_with = "event_id")]
    position: Option<Position>,
    /// Show every dead letter of this event id instead.
    #[arg(long)]
    event_id: Option<Uuid>,
    /// Print personal fields such as addresses and names unmasked.
    #[arg(long)]
    reveal: bool,
}

#[derive(Debug, clap::Args)]
struct StatsArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

/// A `PARTITION:OFFSET` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    partition: i32,
    offset: i64,
}

impl std::str::FromStr for Position {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            format!("invalid position {value:?}: write PARTITION:OFFSET with two non-negative integers, such as 2:1042")
        };
        let (partition, offset) = value.split_once(':').ok_or_else(invalid)?;
        let partition: i32 = partition.trim().parse().map_err(|_| invalid())?;
        let offset: i64 = offset.trim().parse().map_err(|_| invalid())?;
        if partition < 0 || offset < 0 {
            return Err(invalid());
        }
        Ok(Position { partition, offset })
    }
}

/// Runs the command.
pub async fn run(config: AppConfig, args: DlqArgs) -> anyhow::Result<ExitCode> {
    config.validate_common()?;
    config
        .dlq
        .validate()
        .map_err(|message| anyhow::anyhow!("invalid configuration: {message}"))?;
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| config.notifier.topic_names().dlq());
    match args.command {
        DlqCommand::List(list) => {
            let filter = list.filter.to_filter(now_ms())?;
            block(|| run_list(&config, &topic, &filter, &list))
        }
        DlqCommand::Show(show) => block(|| run_show(&config, &topic, &show)),
        DlqCommand::Stats(stats) => {
            let now = now_ms();
            let filter = stats.filter.to_filter(now)?;
            block(|| run_stats(&config, &topic, &filter, stats.json, now))
        }
        DlqCommand::Replay(replay) => replay::run(&config, &topic, replay).await,
    }
}

fn block<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

fn open(config: &AppConfig, topic: &str) -> anyhow::Result<TopicReader> {
    let timeout = Duration::from_millis(config.dlq.read_timeout_ms);
    Ok(TopicReader::open(&config.kafka, topic, timeout)?)
}

/// Reads every dead letter of `topic` that matches `filter`, passing each to `visit`
/// until it returns false.
fn scan_matching(
    reader: &TopicReader,
    filter: &Filter,
    mut visit: impl FnMut(DeadLetter) -> bool,
) -> anyhow::Result<()> {
    let ranges = reader.plan(filter.since_ms)?;
    for record in reader.scan(&ranges)? {
        let record = record?;
        if filter.matches(&record) && !visit(record) {
            break;
        }
    }
    Ok(())
}

fn run_list(
    config: &AppConfig,
    topic: &str,
    filter: &Filter,
    args: &ListArgs,
) -> anyhow::Result<ExitCode> {
    let reader = open(config, topic)?;
    let mut records = Vec::new();
    let mut truncated = false;
    scan_matching(&reader, filter, |record| {
        if args.limit > 0 && records.len() == args.limit {
            truncated = true;
            return false;
        }
        records.push(record);
        true
    })?;

    if args.json {
        for record in &records {
            println!("{}", output::list_json(record));
        }
    } else {
        print!("{}", output::list_table(&records));
        if truncated {
            eprintln!(
                "note: showing the first {} matches; pass --limit 0 to print all",
                args.limit
            );
        } else if records.is_empty() && std::io::stdout().is_terminal() {
            eprintln!("no dead letters in {topic} match the filters");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_show(config: &AppConfig, topic: &str, args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let reader = open(config, topic)?;
    let records = match (args.position, args.event_id) {
        (Some(position), _) => vec![reader.fetch(position.partition, position.offset)?],
        (None, Some(event_id)) => {
            let filter = Filter {
                event_id: Some(event_id),
                ..Filter::default()
            };
            let mut found = Vec::new();
            scan_matching(&reader, &filter, |record| {
                found.push(record);
                true
            })?;
            if found.is_empty() {
                anyhow::bail!("event {event_id} not found in {topic}; check the id, or the dead-letter topic with --topic");
            }
            found
        }
        (None, None) => unreachable!("clap requires a position or --event-id"),
    };
    for (index, record) in records.iter().enumerate() {
        if index > 0 {
            println!();
        }
        print!("{}", output::show(record, args.reveal));
    }
    Ok(ExitCode::SUCCESS)
}

fn run_stats(
    config: &AppConfig,
    topic: &str,
    filter: &Filter,
    json: bool,
    now_ms: i64,
) -> anyhow::Result<ExitCode> {
    let reader = open(config, topic)?;
    let mut stats = output::Stats::default();
    scan_matching(&reader, filter, |record| {
        stats.add(&record, now_ms);
        true
    })
    .context("failed to read the dead letters")?;
    if json {
        println!("{}", serde_json::to_string(&stats)?);
    } else {
        print!("{}", stats.render(topic));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse() {
        assert_eq!(
            "2:1042".parse::<Position>(),
            Ok(Position {
                partition: 2,
                offset: 1042
            })
        );
        for bad in ["2", "a:1", "1:b", "-1:3", "1:-3", ""] {
            let error = bad.parse::<Position>().unwrap_err();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[test]
    fn filter_description_is_stable() {
        let args = FilterArgs {
            classes: vec![ErrorClass::Exhausted, ErrorClass::Permanent],
            since: Some("1h".parse().unwrap()),
            until: None,
            key: Some("acct-1".into()),
            event_id: None,
            origin_topic: Some("transactions.v1".into()),
            headers: vec!["tenant=acme".parse().unwrap()],
        };
        assert_eq!(
            args.describe(),
            "--class exhausted,permanent --since 1h --key acct-1 --origin-topic transactions.v1 --header tenant=acme"
        );
    }
}
