//! The `txnotify` binary under test.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use tempfile::TempDir;

use super::process::ManagedProcess;
use super::wait_until;

/// Wait after SIGTERM before SIGKILL in [`TxnotifyProcess::stop`].
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Returns the path of the `txnotify` binary that cargo built for these tests.
pub fn txnotify_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_txnotify"))
}

/// Returns the path of the example `payment-service` binary that cargo built.
pub fn payment_service_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_payment-service"))
}

/// Exit status and output of a finished `txnotify` command.
#[derive(Debug)]
pub struct TxnotifyOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Running `txnotify` process, killed when dropped.
///
/// Its stdout and stderr go to separate files in a temporary directory, so a
/// test can parse command output apart from the logs.
pub struct TxnotifyProcess {
    process: ManagedProcess,
    temp: TempDir,
}

impl TxnotifyProcess {
    /// Spawns `txnotify` with `args` and the environment variables `envs`.
    ///
    /// `TXNOTIFY_*` variables of the test process are removed first, because
    /// txnotify reads its configuration from such variables and the harness
    /// sets some for itself. Only the ones in `envs` reach the binary.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> TxnotifyProcess {
        TxnotifyProcess::spawn_program(&txnotify_bin(), args, envs)
    }

    /// Spawns another binary of this package, such as [`payment_service_bin`], the same
    /// way as [`TxnotifyProcess::spawn`].
    pub fn spawn_program(program: &Path, args: &[&str], envs: &[(&str, &str)]) -> TxnotifyProcess {
        let temp = tempfile::Builder::new()
            .prefix("txnotify-process-")
            .tempdir()
            .unwrap_or_else(|error| {
                panic!("failed to create a temporary directory for txnotify: {error}")
            });

        let mut command = Command::new(program);
        command.args(args).current_dir(temp.path());
        for (name, _) in env::vars_os() {
            if name.to_string_lossy().starts_with("TXNOTIFY_") {
                command.env_remove(name);
            }
        }
        // Port 0 lets each notifier's telemetry endpoint take a free port, so tests that
        // run notifiers at the same time do not collide on the default 9464. A test
        // that scrapes the endpoint passes its own address in `envs`.
        command.env("TXNOTIFY_TELEMETRY__LISTEN_ADDRESS", "127.0.0.1:0");
        command.envs(envs.iter().copied());

        let process = ManagedProcess::spawn(
            &format!("{} {}", program.display(), args.join(" ")),
            command,
            &temp.path().join("stdout.log"),
            &temp.path().join("stderr.log"),
        );
        TxnotifyProcess { process, temp }
    }

    /// Returns the process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Returns the working directory of the process, a temporary directory
    /// owned by this handle.
    pub fn work_dir(&self) -> PathBuf {
        self.temp.path().to_path_buf()
    }

    /// Returns everything written to stdout so far.
    pub fn stdout(&self) -> String {
        self.process.stdout()
    }

    /// Returns everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// Waits until stdout or stderr contains `needle`. Returns whether it did
    /// within `timeout`.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, Duration::from_millis(50), || {
            self.process.stdout().contains(needle) || self.process.stderr().contains(needle)
        })
    }

    /// Returns true while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_timeout(timeout)
    }

    /// Sends SIGTERM, waits up to `grace` for a clean exit, then SIGKILL.
    pub fn stop_within(&mut self, grace: Duration) -> ExitStatus {
        self.process.terminate(grace)
    }

    /// Sends SIGTERM, waits up to 30 seconds for a clean exit, then SIGKILL.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_within(STOP_GRACE)
    }

    /// Kills the process with SIGKILL, like a crash.
    pub fn kill(&mut self) -> ExitStatus {
        self.process.kill()
    }

    /// Freezes the process with SIGSTOP.
    pub fn pause(&mut self) {
        self.process.signal("STOP");
    }

    /// Resumes a process frozen by [`TxnotifyProcess::pause`].
    pub fn resume(&mut self) {
        self.process.signal("CONT");
    }
}

/// Runs `txnotify` to completion, as [`TxnotifyProcess::spawn`] starts it,
/// and returns its status and output. Panics if it runs longer than `timeout`.
pub fn run_txnotify(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> TxnotifyOutput {
    let mut process = TxnotifyProcess::spawn(args, envs);
    let Some(status) = process.wait_exit(timeout) else {
        let stdout = process.stdout();
        let stderr = process.stderr();
        process.kill();
        panic!(
            "`txnotify {}` did not exit within {timeout:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            args.join(" ")
        );
    };
    TxnotifyOutput {
        status,
        stdout: process.stdout(),
        stderr: process.stderr(),
    }
}
