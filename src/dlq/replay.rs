//! `txnotify dlq replay`: confirmation, progress and the audit record around the replay
//! engine in `txnotify_consumer::dlq::replay`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;
use txnotify_consumer::dlq::audit::{self, AuditRecord};
use txnotify_consumer::dlq::replay::{
    self, Rejection, ReplayObserver, ReplayPlan, ReplayPolicy, ReplayRequest, ReplayStatus,
    ReplayTarget,
};
use txnotify_consumer::dlq::DeadLetter;
use txnotify_consumer::pipeline::now_ms;

use super::FilterArgs;
use crate::config::AppConfig;

/// Arguments of `dlq replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Print the count and a sample of what would be replayed, and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replay to this topic instead of each record's origin topic.
    #[arg(long, conflicts_with = "to_retry_tier")]
    to_topic: Option<String>,
    /// Replay to the group's first retry tier instead of each record's origin topic.
    #[arg(long)]
    to_retry_tier: bool,
    /// Maximum records replayed per second; no limit when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// JSON checkpoint file. When it exists the replay it records resumes, and nothing it
    /// copied is copied again. Without it an interrupted replay cannot resume.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Replay records of class `invalid` too.
    #[arg(long)]
    include_invalid: bool,
    /// Replay without asking, even above `dlq.confirm_above` records.
    #[arg(long, short = 'y')]
    yes: bool,
    /// Records shown in the plan's sample.
    #[arg(long, default_value_t = 5)]
    sample: usize,
}

/// Prints the plan, prompts for confirmation, shows progress and reports rejections.
struct CliObserver {
    dry_run: bool,
    yes: bool,
    confirm_above: u64,
    target: String,
    progress: ProgressBar,
    /// Reason the replay did not start, when confirmation was missing.
    refusal: Option<String>,
}

fn describe(record: &DeadLetter) -> String {
    let event = record
        .event_id()
        .map_or_else(|| "-".to_owned(), |id| id.to_string());
    format!(
        "{} event {event} class {} ({})",
        record.position(),
        record.info.class_label(),
        record.info.reason()
    )
}

impl ReplayObserver for CliObserver {
    fn confirm(&mut self, plan: &ReplayPlan) -> bool {
        if plan.resumed {
            println!(
                "resuming replay {}: {} replayed and {} rejected before",
                plan.replay_id,
                plan.done.replayed,
                plan.done.rejected()
            );
        }
        let verb = if self.dry_run {
            "would replay"
        } else {
            "will replay"
        };
        println!(
            "replay {}: {} matching, {verb} {} to {}, {} rejected, {} superseded",
            plan.replay_id,
            plan.remaining.matched,
            plan.to_replay,
            self.target,
            plan.remaining.rejected(),
            plan.remaining.superseded
        );
        for (record, topic) in &plan.sample {
            println!("  replay {} -> {topic}", describe(record));
        }
        for (record, rejection) in &plan.rejected {
            println!("  reject {}: {rejection}", describe(record));
        }
        if self.dry_run {
            return false;
        }
        if plan.to_replay <= self.confirm_above || self.yes {
            self.progress.set_length(plan.to_replay);
            return true;
        }

        let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        if !interactive {
            self.refusal = Some(format!(
                "replaying {} records needs confirmation above dlq.confirm_above ({}); pass --yes",
                plan.to_replay, self.confirm_above
            ));
            return false;
        }
        eprint!(
            "Replay {} records to {}? Type yes to continue: ",
            plan.to_replay, self.target
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let confirmed = std::io::stdin().lock().read_line(&mut answer).is_ok()
            && answer.trim().eq_ignore_ascii_case("yes");
        if confirmed {
            self.progress.set_length(plan.to_replay);
        } else {
            self.refusal = Some("replay cancelled at the confirmation prompt".to_owned());
        }
        confirmed
    }

    fn replayed(&mut self, _record: &DeadLetter, _topic: &str) {
        self.progress.inc(1);
    }

    fn rejected(&mut self, record: &DeadLetter, rejection: &Rejection) {
        let line = format!("rejected {}: {rejection}", describe(record));
        self.progress.suspend(|| eprintln!("{line}"));
    }
}

/// Runs `dlq replay` on `dlq_topic`.
pub async fn run(
    config: &AppConfig,
    dlq_topic: &str,
    args: ReplayArgs,
) -> anyhow::Result<ExitCode> {
    let names = config.notifier.topic_names();
    let target = match (&args.to_topic, args.to_retry_tier) {
        (Some(topic), _) => ReplayTarget::Topic(topic.clone()),
        (None, true) => ReplayTarget::FirstRetryTier(names.retry(1)),
        (None, false) => ReplayTarget::Origin,
    };
    let filter = args.filter.to_filter(now_ms())?;
    let filter_text = args.filter.describe();
    if args.checkpoint.is_none() && !args.dry_run {
        eprintln!("note: no --checkpoint given, so an interrupted replay cannot resume");
    }
    let request = ReplayRequest {
        kafka: config.kafka.clone(),
        dlq_topic: dlq_topic.to_owned(),
        filter,
        filter_text,
        target,
        policy: ReplayPolicy {
            max_replay_count: config.dlq.max_replay_count,
            include_invalid: args.include_invalid,
        },
        rate_per_second: args.rate,
        checkpoint: args.checkpoint.clone(),
        dry_run: args.dry_run,
        sample_size: args.sample,
        read_timeout: Duration::from_millis(config.dlq.read_timeout_ms),
        produce_timeout: Duration::from_millis(config.notifier.produce_timeout_ms),
    };

    let progress = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} replayed, {per_sec}, eta {eta}")
            .expect("static progress template"),
    );
    let mut observer = CliObserver {
        dry_run: args.dry_run,
        yes: args.yes,
        confirm_above: config.dlq.confirm_above,
        target: request.target.describe(),
        progress,
        refusal: None,
    };

    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        crate::notify::shutdown_signal().await;
        let _ = stop.send(true);
    });
    let report = replay::run(&request, &mut observer, shutdown).await?;
    observer.progress.finish_and_clear();

    match report.status {
        ReplayStatus::DryRun => {
            println!("dry run: nothing was written");
            return Ok(ExitCode::SUCCESS);
        }
        ReplayStatus::Cancelled => {
            let reason = observer
                .refusal
                .unwrap_or_else(|| "replay cancelled".to_owned());
            anyhow::bail!(reason);
        }
        ReplayStatus::AlreadyCompleted => {
            println!(
                "replay {} already completed ({} replayed); remove {} to start a new replay",
                report.replay_id,
                report.counts.replayed,
                args.checkpoint
                    .as_deref()
                    .map_or_else(String::new, |path| path.display().to_string())
            );
            return Ok(ExitCode::SUCCESS);
        }
        ReplayStatus::Completed | ReplayStatus::Interrupted => {}
    }

    let record = AuditRecord::new(
        &report,
        dlq_topic,
        &request.target.describe(),
        &request.filter_text,
        &request.filter,
    );
    let counts = report.counts;
    println!(
        "replay {}: {} replayed ({} found already copied), {} rejected at the replay cap, {} rejected as invalid, {} rejected without origin, {} superseded",
        report.replay_id,
        counts.replayed,
        counts.found_replayed,
        counts.rejected_cap,
        counts.rejected_invalid,
        counts.rejected_no_origin,
        counts.superseded
    );
    println!("audit: {}", record.to_json());
    let audit_topic = names.dlq_audit();
    audit::publish(
        &config.kafka,
        &audit_topic,
        config.topics.replication_factor,
        &record,
        Duration::from_millis(config.notifier.produce_timeout_ms),
    )
    .await?;
    println!("audit record written to {audit_topic}");

    if report.status == ReplayStatus::Interrupted {
        eprintln!("replay interrupted; run the same command with the same --checkpoint to resume");
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}
