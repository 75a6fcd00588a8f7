//! Harness for the system tests: real broker, SMTP server and txnotify processes.
//!
//! Each system test file declares `mod common;` and starts with
//! `common::require_system_tests!();`, which returns early unless
//! `TXNOTIFY_SYSTEM_TESTS=1`, so a plain `cargo test` stays fast.
//! `scripts/test.sh` installs the tools and sets that variable.
//!
//! - [`Broker`]: a Tansu broker process on a free 127.0.0.1 port.
//! - [`SmtpServer`]: `tests/support/smtp_server.py`, which records received
//!   mail and injects faults per recipient.
//! - [`TxnotifyProcess`] and [`run_txnotify`]: the `txnotify` binary.
//! - [`TestDatabase`]: a Postgres database with a random name, dropped afterwards.
//! - [`post_json`]: a minimal HTTP client for the example payment service.
//!
//! Every process is killed when its handle is dropped, also when a test
//! panics, and in that case the end of its log is printed to stderr.

// Each test file compiles this module and uses only part of it.
#![allow(dead_code)]

mod broker;
mod http;
mod kafka;
mod postgres;
mod process;
mod smtp;
mod stack;
mod txnotify;

// Each test file uses only some of these, so unused ones are not reported.
#[allow(unused_imports)]
pub use {
    broker::Broker,
    http::{get as http_get, post_json, HttpResponse},
    kafka::{create_topic, read_topic, TopicRecord},
    postgres::{postgres_server, TestDatabase},
    process::ManagedProcess,
    smtp::{support_script, ReceivedMessage, SmtpOptions, SmtpServer, SmtpTls},
    stack::{
        accepted_for, amount_text, committed, end_offsets, event, produce_raw, read_all,
        try_end_offsets, Read, Stack, MAX_ATTEMPTS, PARTITIONS,
    },
    txnotify::{payment_service_bin, run_txnotify, txnotify_bin, TxnotifyOutput, TxnotifyProcess},
};

use std::collections::hash_map::RandomState;
use std::env;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Hint printed by skipped tests and by missing-tool panics.
pub const RUN_HINT: &str = "set TXNOTIFY_SYSTEM_TESTS=1 or run scripts/test.sh";

/// Returns true when `TXNOTIFY_SYSTEM_TESTS` is `1`.
pub fn system_tests_enabled() -> bool {
    env::var("TXNOTIFY_SYSTEM_TESTS").is_ok_and(|value| value == "1")
}

/// Returns from the calling test, after printing a skip notice, unless
/// system tests are enabled.
macro_rules! require_system_tests {
    () => {
        if !$crate::common::system_tests_enabled() {
            $crate::common::report_skipped();
            return;
        }
    };
}
pub(crate) use require_system_tests;

/// Prints the skip notice for the current test to stderr.
///
/// It writes to the stderr handle instead of using `eprintln!`, because the
/// test harness captures `eprintln!` output of passing tests.
pub fn report_skipped() {
    use std::io::Write;

    let current = thread::current();
    let test = current.name().unwrap_or("system test");
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {RUN_HINT}");
}

/// Returns the path in the environment variable `name`, which must name an
/// existing file. Panics with instructions when it is unset or wrong.
pub fn tool_from_env(name: &str, what: &str) -> PathBuf {
    let value = env::var_os(name).unwrap_or_else(|| {
        panic!("{name} is not set; it must point to {what}. To set it, {RUN_HINT}")
    });
    let path = PathBuf::from(value);
    if !path.is_file() {
        panic!(
            "{name}={} is not a file; it must point to {what}. To set it, {RUN_HINT}",
            path.display()
        );
    }
    path
}

/// Returns a TCP port on 127.0.0.1 that was free when this function ran.
///
/// NOTE: another process can take the port before the caller binds it.
/// [`Broker`] retries with a new port when that happens, the others do not.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|error| panic!("failed to bind a free port on 127.0.0.1: {error}"));
    listener
        .local_addr()
        .unwrap_or_else(|error| panic!("failed to read the address of a bound socket: {error}"))
        .port()
}

/// Returns `prefix` followed by a random suffix, for topic and group names
/// that no other test or earlier run uses. The result contains only
/// characters that Kafka allows in topic names, if the prefix does.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    format!("{prefix}-{:016x}", hasher.finish())
}

/// Calls `condition` every `poll` until it returns true or `timeout` has
/// passed. Returns whether it became true; the condition runs at least once.
pub fn wait_until(timeout: Duration, poll: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(poll.min(deadline - now));
    }
}
