//! Checks of `deploy/` and the metric and runbook docs, run by `scripts/check-deploy.py`:
//! promtool on the alert rules and their unit tests, the compose file, the kustomize
//! output, and the dashboard's and rules' metric names against `docs/metrics.md`.
//!
//! Runs with the system tests, because it needs promtool and the test virtualenv's
//! PyYAML, which `scripts/test-env.sh` installs.

mod common;

use std::path::Path;
use std::process::Command;

use common::{require_system_tests, tool_from_env};

#[test]
fn deploy_files_pass_their_checks() {
    require_system_tests!();
    let python = tool_from_env("TXNOTIFY_PYTHON", "the test virtualenv's python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check-deploy.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg("--require-tools")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|error| panic!("failed to run {}: {error}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "scripts/check-deploy.py failed:\n{stdout}{stderr}"
    );
    for check in [
        "ok: promtool",
        "ok: compose.yaml",
        "ok: kustomize base",
        "documented metrics match the code",
        "link to a runbook section",
    ] {
        assert!(stdout.contains(check), "missing {check:?} in:\n{stdout}");
    }
}
