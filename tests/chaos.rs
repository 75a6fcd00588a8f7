//! Chaos suite: the delivery guarantee under crashes, rebalances and outages.
//!
//! Every scenario runs the real `txnotify` binaries against a real Tansu broker and the
//! SMTP test server, counts at the SMTP server by `event_id`, and prints one summary line:
//! events, sent, duplicates, lost, dead-lettered and unknown-outcome. Every scenario must
//! show lost = 0 and duplicates = 0; a send the ledger marked unknown-outcome is counted
//! apart and is not a duplicate. Loops are bounded in count and time, and random choices
//! come from a fixed seed printed with the summary.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::time::{Duration, Instant};

use common::{
    committed, end_offsets, event, read_all, require_system_tests, try_end_offsets, wait_until,
    Stack, TxnotifyProcess,
};
use serde_json::{json, Value};

const SEED: u64 = 0x7a6e_6f74_6966_7921;

/// Scenarios run one at a time: each one loads both cores, and timing bounds such as the
/// drain deadline only mean something on a machine that is not running another scenario.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Settings that make group membership react within seconds. Tansu waits up to the
/// rebalance timeout, which librdkafka sets to `max.poll.interval.ms`, for members to
/// rejoin, so that interval is short here too.
const FAST_GROUP: [(&str, &str); 4] = [
    ("TXNOTIFY_NOTIFIER__SESSION_TIMEOUT_MS", "6000"),
    ("TXNOTIFY_NOTIFIER__MAX_POLL_INTERVAL_MS", "10000"),
    ("TXNOTIFY_NOTIFIER__DRAIN_TIMEOUT_MS", "4000"),
    ("TXNOTIFY_NOTIFIER__STALL_TIMEOUT_MS", "60000"),
];

const BREAKER: &str = "
[notifier.breaker]
failure_threshold = 3
open_ms = 500
max_open_ms = 3000
";

/// A small deterministic generator (xorshift64*), so runs repeat.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// Counts of one scenario, all by `event_id`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    events: usize,
    sent: usize,
    duplicates: usize,
    lost: usize,
    dead_lettered: usize,
    unknown_outcome: usize,
}

fn event_id_of(message_id: &str) -> Option<String> {
    let inner = message_id.trim_start_matches('<');
    inner.split('@').next().map(str::to_owned)
}

fn summarize(stack: &Stack, events: &[Value]) -> Summary {
    let mut accepted: BTreeMap<String, usize> = BTreeMap::new();
    for message in stack.smtp.messages() {
        if let Some(id) = message.message_id.as_deref().and_then(event_id_of) {
            *accepted.entry(id).or_default() += 1;
        }
    }
    let dead = read_all(&stack.broker.bootstrap(), &stack.dlq());
    let mut dead_ids = BTreeSet::new();
    let mut unknown_ids = BTreeSet::new();
    for record in &dead {
        if let Some(id) = record.headers.get("event-id") {
            dead_ids.insert(id.clone());
            if record
                .headers
                .get("txnotify-error-class")
                .map(String::as_str)
                == Some("unknown-outcome")
            {
                unknown_ids.insert(id.clone());
            }
        }
    }
    let ids: Vec<String> = events
        .iter()
        .map(|event| event["event_id"].as_str().unwrap().to_owned())
        .collect();
    let duplicates = ids
        .iter()
        .filter(|id| !unknown_ids.contains(*id))
        .map(|id| accepted.get(id).copied().unwrap_or(0).saturating_sub(1))
        .sum();
    Summary {
        events: ids.len(),
        sent: ids.iter().filter(|id| accepted.contains_key(*id)).count(),
        duplicates,
        lost: ids
            .iter()
            .filter(|id| !accepted.contains_key(*id) && !dead_ids.contains(*id))
            .count(),
        dead_lettered: dead_ids.len(),
        unknown_outcome: unknown_ids.len(),
    }
}

fn report(name: &str, summary: &Summary, extra: &str) {
    // Written to the stderr handle, because the test harness captures eprintln!.
    let _ = writeln!(
        std::io::stderr(),
        "chaos {name}: events={} sent={} duplicates={} lost={} dead_lettered={} unknown_outcome={} seed={SEED:#x}{extra}",
        summary.events, summary.sent, summary.duplicates, summary.lost, summary.dead_lettered, summary.unknown_outcome
    );
}

fn events(count: usize, prefix: &str) -> Vec<Value> {
    (0..count)
        .map(|index| {
            event(
                index,
                &format!("{prefix}{index}@example.com"),
                &format!("acct-{}", index % 97),
            )
        })
        .collect()
}

/// Waits until every event is sent or dead-lettered, or `timeout` passes.
fn wait_accounted(stack: &Stack, events: &[Value], timeout: Duration) -> bool {
    wait_until(timeout, Duration::from_millis(500), || {
        let delivered: BTreeSet<String> = stack
            .smtp
            .messages()
            .iter()
            .filter_map(|message| message.message_id.as_deref().and_then(event_id_of))
            .collect();
        // The broker may be restarting; try again on the next poll.
        let Ok(ends) = try_end_offsets(&stack.broker.bootstrap(), &stack.dlq()) else {
            return false;
        };
        let dead: i64 = ends.iter().sum();
        let missing = events
            .iter()
            .filter(|event| !delivered.contains(event["event_id"].as_str().unwrap()))
            .count();
        missing as i64 <= dead
    })
}

fn borrowed(envs: &[(String, String)]) -> Vec<(&str, &str)> {
    envs.iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect()
}

fn publish_all(stack: &Stack, events: &[Value]) {
    let lines: Vec<String> = events.iter().map(Value::to_string).collect();
    let output = stack.publish(&lines);
    assert!(
        output.status.success(),
        "publish failed:\n{}\n{}",
        output.stdout,
        output.stderr
    );
}

fn assert_guarantee(name: &str, summary: &Summary) {
    assert_eq!(summary.lost, 0, "{name}: lost events");
    assert_eq!(summary.duplicates, 0, "{name}: duplicate emails");
}

fn stop(name: &str, notifier: &mut TxnotifyProcess) {
    let status = notifier.stop();
    assert!(
        status.success(),
        "{name}: notify exited with {status}:\n{}",
        notifier.stderr()
    );
}

#[test]
fn chaos_a_kill_nine_and_restart() {
    require_system_tests!();
    let _serial = serial();
    let stack = Stack::start_with(json!([]), BREAKER);
    let events = events(5_000, "a");
    publish_all(&stack, &events);

    let mut rng = Rng(SEED);
    let mut notifier = stack.notify_with(&FAST_GROUP);
    let mut kills = 0;
    let started = Instant::now();
    while kills < 6 && started.elapsed() < Duration::from_secs(150) {
        std::thread::sleep(Duration::from_millis(rng.between(6_000, 9_000)));
        notifier.kill();
        kills += 1;
        notifier = stack.notify_with(&FAST_GROUP);
    }
    assert!(
        wait_accounted(&stack, &events, Duration::from_secs(240)),
        "a: not every event was accounted for"
    );
    stop("a", &mut notifier);

    let summary = summarize(&stack, &events);
    report("a-kill-9", &summary, &format!(" kills={kills}"));
    assert_guarantee("a", &summary);
    assert!(kills >= 3, "a: only {kills} kills happened");
}

#[test]
fn chaos_b_scale_one_three_one() {
    require_system_tests!();
    let _serial = serial();
    let stack = Stack::start_with(json!([]), BREAKER);
    let events = events(3_000, "b");
    publish_all(&stack, &events);

    let mut first = stack.notify_with(&FAST_GROUP);
    assert!(first.wait_for_output("Notification sent", Duration::from_secs(60)));
    let second_dir = stack.dir.path().join("ledger-second");
    let fresh_dir = stack.dir.path().join("ledger-fresh-empty");
    let second_path = second_dir.display().to_string();
    let fresh_path = fresh_dir.display().to_string();
    let with_ledger = |path: &str| -> Vec<(String, String)> {
        let mut envs: Vec<(String, String)> = FAST_GROUP
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        envs.push((
            "TXNOTIFY_NOTIFIER__LEDGER__PATH".to_owned(),
            path.to_owned(),
        ));
        envs
    };
    let second_envs = with_ledger(&second_path);
    let third_envs = with_ledger(&fresh_path);
    let mut second = stack.notify_with(&borrowed(&second_envs));
    let mut third = stack.notify_with(&borrowed(&third_envs));
    assert!(
        third.wait_for_output(
            "Ledger restored from the changelog",
            Duration::from_secs(60)
        ),
        "{}",
        third.stderr()
    );
    std::thread::sleep(Duration::from_secs(4));
    stop("b", &mut second);
    stop("b", &mut third);

    assert!(
        wait_accounted(&stack, &events, Duration::from_secs(180)),
        "b: not every event was accounted for"
    );
    stop("b", &mut first);
    let summary = summarize(&stack, &events);
    report("b-scale-1-3-1", &summary, "");
    assert_guarantee("b", &summary);
    assert_eq!(
        summary.dead_lettered, 0,
        "b: a rebalance must not dead-letter anything"
    );
}

#[test]
fn chaos_c_smtp_outage() {
    require_system_tests!();
    let _serial = serial();
    let mut stack = Stack::start_with(json!([]), BREAKER);
    let events = events(2_000, "c");
    publish_all(&stack, &events);
    let bootstrap = stack.broker.bootstrap();

    let mut notifier = stack.notify_with(&FAST_GROUP);
    stack.smtp.wait_for_messages(200, Duration::from_secs(60));
    stack.smtp.stop();
    std::thread::sleep(Duration::from_secs(10));
    let lag = |stack: &Stack| -> i64 {
        let ends = end_offsets(&bootstrap, &stack.source);
        let done = committed(&bootstrap, &stack.group, &stack.source);
        ends.iter()
            .zip(&done)
            .map(|(end, done)| end - (*done).max(0))
            .sum()
    };
    let lag_during = lag(&stack);
    std::thread::sleep(Duration::from_secs(20));
    stack.smtp.start_again();

    assert!(
        wait_accounted(&stack, &events, Duration::from_secs(180)),
        "c: not every event was accounted for"
    );
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(500), || lag(
            &stack
        )
            == 0),
        "c: lag did not drain"
    );
    stop("c", &mut notifier);

    let summary = summarize(&stack, &events);
    report(
        "c-smtp-outage-30s",
        &summary,
        &format!(" lag_during_outage={lag_during}"),
    );
    assert_guarantee("c", &summary);
    // A message whose content was on the wire when the server died has an unknown
    // outcome, and it is reported as such. Nothing else may be dead-lettered.
    assert_eq!(
        summary.dead_lettered, summary.unknown_outcome,
        "c: the outage dead-lettered records other than unknown outcomes"
    );
    assert!(summary.sent + summary.unknown_outcome >= events.len());
    assert!(lag_during > 0, "c: lag did not grow during the outage");
}

#[test]
fn chaos_d_stall_after_data_for_some_recipients() {
    require_system_tests!();
    let _serial = serial();
    let stack = Stack::start_with(
        json!([{"recipient": "stall-*@example.com", "action": "stall-after-data"}]),
        BREAKER,
    );
    let mut events = events(400, "d");
    for (index, event) in events
        .iter_mut()
        .enumerate()
        .filter(|(index, _)| index % 25 == 0)
    {
        event["recipient"]["email"] = json!(format!("stall-{index}@example.com"));
    }
    let stalled = events
        .iter()
        .filter(|event| {
            event["recipient"]["email"]
                .as_str()
                .unwrap()
                .starts_with("stall-")
        })
        .count();
    publish_all(&stack, &events);

    let mut notifier = stack.notify_with(&FAST_GROUP);
    assert!(
        wait_accounted(&stack, &events, Duration::from_secs(120)),
        "d: not every event was accounted for"
    );
    stop("d", &mut notifier);

    let summary = summarize(&stack, &events);
    report("d-stall-after-data", &summary, "");
    assert_guarantee("d", &summary);
    assert_eq!(
        summary.unknown_outcome, stalled,
        "d: each stalled send is an unknown outcome"
    );
    assert_eq!(summary.sent, events.len() - stalled);
    let stalled_records = stack
        .smtp
        .records()
        .iter()
        .filter(|record| record.status == "stalled")
        .count();
    assert_eq!(
        stalled_records, stalled,
        "d: each stalled recipient got one attempt"
    );
}

#[test]
fn chaos_e_broker_paused_then_restarted() {
    require_system_tests!();
    let _serial = serial();
    let mut stack = Stack::start_with(json!([]), BREAKER);
    let events = events(3_000, "e");
    publish_all(&stack, &events);

    let mut notifier = stack.notify_with(&FAST_GROUP);
    stack.smtp.wait_for_messages(300, Duration::from_secs(60));
    stack.broker.pause();
    std::thread::sleep(Duration::from_secs(20));
    stack.broker.resume();
    stack
        .smtp
        .wait_for_messages(1_500, Duration::from_secs(120));
    // The SQLite-backed broker keeps topics, records and committed offsets.
    stack.broker.restart();

    assert!(
        wait_accounted(&stack, &events, Duration::from_secs(180)),
        "e: not every event was accounted for"
    );
    stop("e", &mut notifier);
    let summary = summarize(&stack, &events);
    report("e-broker-sigstop-20s-and-restart", &summary, "");
    assert_guarantee("e", &summary);
}

#[test]
fn chaos_f_sigterm_during_load() {
    require_system_tests!();
    let _serial = serial();
    let stack = Stack::start_with(json!([]), BREAKER);
    let events = events(3_000, "f");
    publish_all(&stack, &events);

    let mut notifier = stack.notify_with(&FAST_GROUP);
    stack.smtp.wait_for_messages(300, Duration::from_secs(60));
    let stop_requested = Instant::now();
    let status = notifier.stop_within(Duration::from_secs(15));
    let exit_seconds = stop_requested.elapsed().as_secs_f64();
    assert!(
        status.success(),
        "f: notify exited with {status}:\n{}",
        notifier.stderr()
    );
    // The drain deadline is 4 s; the rest is the final commit and leaving the group.
    assert!(exit_seconds < 8.0, "f: exit took {exit_seconds:.1} s");
    let sent_before_restart = stack.smtp.messages().len();

    let mut restarted = stack.notify_with(&FAST_GROUP);
    assert!(
        wait_accounted(&stack, &events, Duration::from_secs(180)),
        "f: not every event was accounted for"
    );
    stop("f", &mut restarted);
    let summary = summarize(&stack, &events);
    report(
        "f-sigterm",
        &summary,
        &format!(" exit_seconds={exit_seconds:.1} sent_before_restart={sent_before_restart}"),
    );
    assert_guarantee("f", &summary);
    assert_eq!(summary.dead_lettered, 0);
}
