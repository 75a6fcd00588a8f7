//! `txnotify demo` runs the whole pipeline on librdkafka's mock cluster and an
//! embedded SMTP sink, so this test needs no broker or SMTP server process.

#[allow(unused_macros, unused_imports)]
mod common;

use std::time::Duration;

use common::run_txnotify;

/// Returns the expected and observed numbers of the report row starting with `label`.
fn row(report: &str, label: &str) -> (u64, u64) {
    let line = report
        .lines()
        .find(|line| line.starts_with(label))
        .unwrap_or_else(|| panic!("report has no row {label:?}:\n{report}"));
    let numbers: Vec<u64> = line[label.len()..]
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 2, "row {label:?} is {line:?}");
    (numbers[0], numbers[1])
}

#[test]
fn demo_accounts_for_every_record() {
    let output = run_txnotify(
        &["demo", "--events", "120", "--duplicates", "15"],
        &[],
        Duration::from_secs(180),
    );
    assert!(
        output.status.success(),
        "demo failed:\n{}\n{}",
        output.stdout,
        output.stderr
    );
    let report = output.stdout;
    assert!(
        report.contains("result: every record is accounted for"),
        "{report}"
    );

    // 120 events, 15 duplicates and one record that is not JSON.
    assert_eq!(row(&report, "records published"), (136, 136));
    // One recipient's server answers 550, so 119 events are sent.
    assert_eq!(row(&report, "sent"), (119, 119));
    assert_eq!(row(&report, "distinct Message-IDs at the sink"), (119, 119));
    assert_eq!(row(&report, "duplicates skipped"), (15, 15));
    // The flaky recipient's server answers 451 twice.
    assert_eq!(row(&report, "retried"), (2, 2));
    assert_eq!(row(&report, "dead letters on the topic: permanent"), (1, 1));
    assert_eq!(row(&report, "dead letters on the topic: invalid"), (1, 1));
    assert!(!report.contains("differs"), "{report}");
}
