//! Child processes that the harness starts, with their output in log files.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Number of log lines printed when a test panics while it owns the process.
const LOG_TAIL_LINES: usize = 60;

/// Interval at which exit and readiness checks poll.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Child process that is killed and reaped when dropped.
///
/// When the owning test thread is panicking, `Drop` also prints the end of
/// the process's log files to stderr, so the failure report includes the
/// process's output.
pub struct ManagedProcess {
    name: String,
    pid: u32,
    /// `None` once the process has been reaped, which makes signalling a
    /// stale pid impossible: the kernel keeps an unreaped pid reserved.
    child: Option<Child>,
    exit_status: Option<ExitStatus>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl ManagedProcess {
    /// Spawns `command` with stdin closed and stdout and stderr appended to
    /// the given files, which may be the same file. Panics if it cannot start.
    pub fn spawn(
        name: &str,
        mut command: Command,
        stdout_path: &Path,
        stderr_path: &Path,
    ) -> ManagedProcess {
        let stdout = open_log(stdout_path);
        let stderr = if stderr_path == stdout_path {
            stdout
                .try_clone()
                .unwrap_or_else(|error| panic!("failed to duplicate the log file handle: {error}"))
        } else {
            open_log(stderr_path)
        };
        command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start {name} with {command:?}: {error}"));
        ManagedProcess {
            name: name.to_string(),
            pid: child.id(),
            child: Some(child),
            exit_status: None,
            stdout_path: stdout_path.to_path_buf(),
            stderr_path: stderr_path.to_path_buf(),
        }
    }

    /// Returns the process id; it stays readable after the process exited.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Returns the exit status if the process has exited, reaping it.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if let Some(child) = self.child.as_mut() {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.exit_status = Some(status);
                    self.child = None;
                }
                Ok(None) => {}
                Err(error) => panic!(
                    "failed to check whether {} (pid {}) exited: {error}",
                    self.name, self.pid
                ),
            }
        }
        self.exit_status
    }

    /// Returns true while the process has not exited. A stopped process counts as running.
    pub fn is_running(&mut self) -> bool {
        self.try_exit_status().is_none()
    }

    /// Sends a signal by name (`TERM`, `STOP`, `CONT`, ...) with the `kill`
    /// command. Does nothing once the process has been reaped.
    pub fn signal(&mut self, signal: &str) {
        if !self.is_running() {
            return;
        }
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid.to_string()])
            .status()
            .unwrap_or_else(|error| {
                panic!("failed to run `kill -s {signal} {}`: {error}; it comes from the procps package", self.pid)
            });
        // The process may exit between the check above and the signal.
        if !status.success() && self.is_running() {
            panic!(
                "`kill -s {signal} {}` for {} failed with {status}",
                self.pid, self.name
            );
        }
    }

    /// Waits up to `timeout` for the process to exit and returns its status,
    /// or `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Sends SIGKILL and reaps the process. Returns its exit status.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(mut child) = self.child.take() {
            // kill() fails only if the process was already reaped, and
            // wait() below reports the real outcome either way.
            let _ = child.kill();
            let status = child.wait().unwrap_or_else(|error| {
                panic!("failed to reap {} (pid {}): {error}", self.name, self.pid)
            });
            self.exit_status = Some(status);
        }
        self.exit_status
            .expect("a reaped process has an exit status")
    }

    /// Sends SIGTERM (and SIGCONT, in case the process is paused), waits up
    /// to `grace` for it to exit, then sends SIGKILL. Returns the exit status.
    pub fn terminate(&mut self, grace: Duration) -> ExitStatus {
        self.signal("TERM");
        self.signal("CONT");
        if let Some(status) = self.wait_timeout(grace) {
            return status;
        }
        eprintln!(
            "{} (pid {}) did not exit within {grace:?} of SIGTERM, so it gets SIGKILL",
            self.name, self.pid
        );
        self.kill()
    }

    /// Returns everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Returns everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Returns the last lines of the log files, headed by their paths.
    pub fn log_tail(&self) -> String {
        let mut text = format!("--- last lines of {} ---\n", self.stdout_path.display());
        text.push_str(&tail(&self.stdout(), LOG_TAIL_LINES));
        if self.stderr_path != self.stdout_path {
            text.push_str(&format!(
                "--- last lines of {} ---\n",
                self.stderr_path.display()
            ));
            text.push_str(&tail(&self.stderr(), LOG_TAIL_LINES));
        }
        text
    }

    /// Appends a marker line to the stdout log, e.g. before a restart.
    pub fn append_log_marker(path: &Path, marker: &str) {
        let mut file = open_log(path);
        writeln!(file, "===== {marker} =====")
            .unwrap_or_else(|error| panic!("failed to write to {}: {error}", path.display()));
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
        if thread::panicking() {
            eprintln!(
                "{} (pid {}) output:\n{}",
                self.name,
                self.pid,
                self.log_tail()
            );
        }
    }
}

fn open_log(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|error| panic!("failed to open the log file {}: {error}", path.display()))
}

fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(error) => format!("(could not read {}: {error})\n", path.display()),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = all[start..].join("\n");
    out.push('\n');
    out
}
