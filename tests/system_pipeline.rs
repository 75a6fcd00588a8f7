//! System tests of the first complete path: `publish` through a real broker to a real
//! SMTP server, with duplicates, invalid records, SMTP faults and restarts.
//!
//! Each test starts its own Tansu broker and SMTP server process on 127.0.0.1 and runs
//! the real `txnotify` binary with random topic and group names.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    accepted_for, amount_text, committed, end_offsets, event, produce_raw, read_all,
    require_system_tests, run_txnotify, wait_until, ReceivedMessage, Stack, MAX_ATTEMPTS,
};
use serde_json::{json, Value};

#[test]
fn duplicates_are_sent_once_and_restart_sends_nothing() {
    require_system_tests!();
    let stack = Stack::start(json!([]));

    let unique: Vec<Value> = (0..950)
        .map(|index| {
            event(
                index,
                &format!("customer{index}@example.com"),
                &format!("acct-{}", index % 37),
            )
        })
        .collect();
    let mut lines: Vec<String> = unique.iter().map(Value::to_string).collect();
    for index in (0..950).step_by(19) {
        lines.push(unique[index].to_string());
    }
    assert_eq!(lines.len(), 1000);

    let published = stack.publish(&lines);
    assert!(
        published.status.success(),
        "publish failed:\n{}\n{}",
        published.stdout,
        published.stderr
    );
    assert!(
        published
            .stdout
            .contains("published: 1000, rejected: 0, failed: 0"),
        "{}",
        published.stdout
    );

    let mut notifier = stack.notify();
    let received = stack.smtp.wait_for_messages(950, Duration::from_secs(180));
    // Give a wrongly resent duplicate time to arrive before counting.
    assert!(notifier.wait_for_output("Duplicate skipped", Duration::from_secs(60)));
    std::thread::sleep(Duration::from_secs(3));
    let received = {
        let again = stack.smtp.messages();
        assert!(again.len() >= received.len());
        again
    };
    assert_eq!(received.len(), 950, "emails received");

    let mut by_id: BTreeMap<String, &ReceivedMessage> = BTreeMap::new();
    for message in &received {
        let id = message
            .message_id
            .clone()
            .expect("every email has a Message-ID");
        assert!(
            by_id.insert(id.clone(), message).is_none(),
            "Message-ID {id} received twice"
        );
    }
    for event in &unique {
        let event_id = event["event_id"].as_str().unwrap();
        let (_, message) = by_id
            .iter()
            .find(|(id, _)| id.starts_with(&format!("<{event_id}@")))
            .unwrap_or_else(|| panic!("no email for event {event_id}"));
        let email = event["recipient"]["email"].as_str().unwrap();
        assert_eq!(message.rcpt_tos, [email.to_owned()]);
        let expected_subject = format!(
            "Payment of {} to {} completed",
            amount_text(event),
            event["merchant"].as_str().unwrap()
        );
        assert_eq!(message.subject.as_deref(), Some(expected_subject.as_str()));
        assert!(
            message.raw.contains(&amount_text(event)),
            "body of {event_id} lacks the amount"
        );
    }

    let status = notifier.stop();
    assert!(
        status.success(),
        "notify exited with {status}:\n{}",
        notifier.stderr()
    );
    let bootstrap = stack.broker.bootstrap();
    assert_eq!(
        committed(&bootstrap, &stack.group, &stack.source),
        end_offsets(&bootstrap, &stack.source)
    );

    let mut restarted = stack.notify();
    assert!(
        restarted.wait_for_output("Partitions assigned", Duration::from_secs(60)),
        "{}",
        restarted.stderr()
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        stack.smtp.messages().len(),
        950,
        "a restart sent emails again"
    );
    assert!(restarted.stop().success());
}

#[test]
fn invalid_records_are_dead_lettered_and_partition_moves_on() {
    require_system_tests!();
    let stack = Stack::start(json!([]));
    let bootstrap = stack.broker.bootstrap();

    let mut float_amount = event(1, "float@example.com", "acct-bad");
    float_amount["amount"]["minor_units"] = json!(12.5);
    let mut oversized = event(2, "big@example.com", "acct-bad");
    oversized["description"] = json!("x".repeat(70 * 1024));
    let after: Vec<Value> = (3..6)
        .map(|index| event(index, &format!("after{index}@example.com"), "acct-bad"))
        .collect();
    let mut records = vec![
        ("acct-bad", float_amount.to_string().into_bytes()),
        ("acct-bad", oversized.to_string().into_bytes()),
        ("acct-bad", b"this is not json".to_vec()),
    ];
    records.extend(
        after
            .iter()
            .map(|event| ("acct-bad", event.to_string().into_bytes())),
    );
    produce_raw(&bootstrap, &stack.source, &records);

    let mut notifier = stack.notify();
    let received = stack
        .smtp
        .wait_for_messages(after.len(), Duration::from_secs(120));
    assert_eq!(received.len(), after.len());
    for event in &after {
        let email = event["recipient"]["email"].as_str().unwrap();
        assert_eq!(accepted_for(&received, email).len(), 1, "{email}");
    }

    assert!(wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || { end_offsets(&bootstrap, &stack.dlq()).iter().sum::<i64>() >= 3 }
    ));
    let dead = read_all(&bootstrap, &stack.dlq());
    assert_eq!(dead.len(), 3);
    let mut messages = Vec::new();
    for (record, original) in dead.iter().zip(&records) {
        assert_eq!(
            record
                .headers
                .get("txnotify-error-class")
                .map(String::as_str),
            Some("invalid")
        );
        assert_eq!(
            record.key.as_deref(),
            Some(original.0.as_bytes()),
            "key kept"
        );
        assert_eq!(
            record.value.as_deref(),
            Some(original.1.as_slice()),
            "value bytes kept"
        );
        assert_eq!(
            record.headers.get("txnotify-origin-topic"),
            Some(&stack.source)
        );
        assert_eq!(record.headers.get("txnotify-group"), Some(&stack.group));
        messages.push(record.headers["txnotify-error-message"].clone());
    }
    assert!(
        messages[0].contains("amount.minor_units"),
        "{}",
        messages[0]
    );
    assert!(messages[1].contains("bytes"), "{}", messages[1]);
    assert!(messages[2].contains("JSON"), "{}", messages[2]);
    assert!(notifier.stop().success());
}

#[test]
fn smtp_faults_are_retried_or_dead_lettered() {
    require_system_tests!();
    let stack = Stack::start(json!([
        {"recipient": "flaky@example.com", "action": "451", "times": 2},
        {"recipient": "always-busy@example.com", "action": "451"},
        {"recipient": "unknown-user@example.com", "action": "550"},
    ]));
    let bootstrap = stack.broker.bootstrap();
    let flaky = event(1, "flaky@example.com", "acct-1");
    let busy = event(2, "always-busy@example.com", "acct-2");
    let rejected = event(3, "unknown-user@example.com", "acct-3");
    let published = stack.publish(&[flaky.to_string(), busy.to_string(), rejected.to_string()]);
    assert!(published.status.success(), "{}", published.stderr);

    let mut notifier = stack.notify();
    let received = stack.smtp.wait_for_messages(1, Duration::from_secs(60));
    assert_eq!(accepted_for(&received, "flaky@example.com").len(), 1);

    assert!(wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || { end_offsets(&bootstrap, &stack.dlq()).iter().sum::<i64>() >= 2 }
    ));
    let dead = read_all(&bootstrap, &stack.dlq());
    let class_of = |event: &Value| -> (String, String) {
        let id = event["event_id"].as_str().unwrap();
        let record = dead
            .iter()
            .find(|record| record.headers.get("event-id").map(String::as_str) == Some(id))
            .unwrap_or_else(|| panic!("event {id} is not in the dead-letter topic"));
        (
            record.headers["txnotify-error-class"].clone(),
            record.headers["txnotify-attempt"].clone(),
        )
    };
    assert_eq!(
        class_of(&busy),
        ("exhausted".to_owned(), MAX_ATTEMPTS.to_string())
    );
    assert_eq!(
        class_of(&rejected),
        ("permanent".to_owned(), "1".to_owned())
    );
    assert_eq!(dead.len(), 2);

    let flaky_id = flaky["event_id"].as_str().unwrap();
    let retries: usize = (1..=2)
        .map(|tier| {
            read_all(&bootstrap, &format!("{}.retry.{tier}", stack.group))
                .iter()
                .filter(|record| {
                    record.headers.get("event-id").map(String::as_str) == Some(flaky_id)
                })
                .count()
        })
        .sum();
    assert_eq!(retries, 2, "the flaky recipient needs exactly two retries");

    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        accepted_for(&stack.smtp.messages(), "flaky@example.com").len(),
        1
    );
    assert!(notifier.stop().success());
}

#[test]
fn stall_after_data_times_out_and_worker_continues() {
    require_system_tests!();
    let stack = Stack::start(json!([
        {"recipient": "stall@example.com", "action": "stall-after-data"},
    ]));
    let bootstrap = stack.broker.bootstrap();
    let stalled = event(0, "stall@example.com", "acct-0");
    let mut lines = vec![stalled.to_string()];
    let others: Vec<Value> = (1..6)
        .map(|index| event(index, &format!("ok{index}@example.com"), "acct-0"))
        .collect();
    lines.extend(others.iter().map(Value::to_string));
    assert!(stack.publish(&lines).status.success());

    let mut notifier = stack.notify();
    let received = stack
        .smtp
        .wait_for_messages(others.len(), Duration::from_secs(60));
    for event in &others {
        let email = event["recipient"]["email"].as_str().unwrap();
        assert_eq!(accepted_for(&received, email).len(), 1, "{email}");
    }
    let stalled_records: Vec<_> = stack
        .smtp
        .records()
        .into_iter()
        .filter(|record| record.status == "stalled")
        .collect();
    assert_eq!(stalled_records.len(), 1, "the stalled message is sent once");

    assert!(wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || { end_offsets(&bootstrap, &stack.dlq()).iter().sum::<i64>() >= 1 }
    ));
    let dead = read_all(&bootstrap, &stack.dlq());
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].headers["txnotify-error-class"], "unknown-outcome");
    assert_eq!(
        dead[0].headers["event-id"],
        stalled["event_id"].as_str().unwrap()
    );
    assert!(notifier.stop().success());
}

#[test]
fn publish_reports_rejected_lines_and_exits_nonzero() {
    require_system_tests!();
    let stack = Stack::start(json!([]));
    let good = event(1, "good@example.com", "acct-1");
    let mut bad_currency = event(2, "x@example.com", "acct-1");
    bad_currency["amount"]["currency"] = json!("XYZ");
    let lines = [
        good.to_string(),
        "{broken".to_owned(),
        bad_currency.to_string(),
    ];
    let output = stack.publish(&lines);
    assert!(!output.status.success());
    assert!(
        output
            .stdout
            .contains("published: 1, rejected: 2, failed: 0"),
        "{}",
        output.stdout
    );
    assert!(
        output.stderr.contains("line 2: rejected"),
        "{}",
        output.stderr
    );
    assert!(
        output.stderr.contains("line 3: rejected"),
        "{}",
        output.stderr
    );
    assert!(output.stderr.contains("XYZ"), "{}", output.stderr);
    assert_eq!(
        end_offsets(&stack.broker.bootstrap(), &stack.source)
            .iter()
            .sum::<i64>(),
        1
    );
}

#[test]
fn topics_ensure_twice_reports_no_drift() {
    require_system_tests!();
    let stack = Stack::start(json!([]));
    let output = run_txnotify(
        &[
            "--config",
            stack.config_arg(),
            "topics",
            "ensure",
            "--fail-on-drift",
        ],
        &[],
        Duration::from_secs(60),
    );
    assert!(
        output.status.success(),
        "{}\n{}",
        output.stdout,
        output.stderr
    );
    assert!(!output.stdout.contains("drift:"), "{}", output.stdout);
    // Source, two retry tiers, dead-letter topic and ledger changelog.
    assert_eq!(
        output.stdout.matches("exists: ").count(),
        5,
        "{}",
        output.stdout
    );
    assert!(output
        .stdout
        .contains(&format!("exists: {}.ledger", stack.group)));
    assert!(
        output
            .stdout
            .contains("topics: all 5 topics match the plan"),
        "{}",
        output.stdout
    );
}
