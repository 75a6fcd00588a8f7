//! Tansu broker processes for system tests.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::ManagedProcess;
use super::{free_port, tool_from_env};

/// Maximum wait for a started broker to accept TCP connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Wait after SIGTERM before SIGKILL. Tansu 0.6.0 gives its connection tasks
/// up to 5 s to finish after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Number of fresh ports tried when the first one turns out to be taken.
const PORT_ATTEMPTS: usize = 3;

/// Cluster id of every test broker; a restarted SQLite broker must keep it.
const CLUSTER_ID: &str = "txnotify-system-tests";

/// SQLite file name, relative to the broker's working directory.
const SQLITE_FILE: &str = "tansu.db";

/// Where a broker keeps its data.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Storage {
    /// Tansu's `memory://` engine: nothing survives a restart.
    Memory,
    /// A SQLite file in this directory, which survives restarts.
    Sqlite(PathBuf),
}

/// Tansu broker process listening on a free port on 127.0.0.1.
///
/// The broker is killed when the handle is dropped. Its stdout and stderr go
/// to `broker.log` in a temporary directory, see [`Broker::log_path`].
pub struct Broker {
    process: ManagedProcess,
    port: u16,
    storage: Storage,
    /// Directory with the log file, and the SQLite file of a broker from [`Broker::start`].
    temp: TempDir,
}

impl Broker {
    /// Starts a broker whose data does not need to outlive the test.
    ///
    /// It uses Tansu's `memory://` engine when the binary has it (the
    /// `dynostore` cargo feature), and otherwise a SQLite file in a temporary
    /// directory that is removed with the handle.
    /// NOTE: scripts/install-tansu.sh builds Tansu with only the `libsql`
    /// feature, so at present this broker is SQLite-backed.
    pub fn start() -> Broker {
        let temp = new_temp_dir();
        let storage = if tansu_has_memory_engine() {
            Storage::Memory
        } else {
            Storage::Sqlite(temp.path().to_path_buf())
        };
        Broker::start_in(storage, temp)
    }

    /// Starts a broker that keeps its data in `dir/tansu.db`, so the data
    /// survives [`Broker::restart`], also after [`Broker::kill`], and a new
    /// broker started on the same `dir` serves the same topics and records.
    pub fn start_sqlite(dir: &Path) -> Broker {
        let dir = dir.canonicalize().unwrap_or_else(|error| {
            panic!(
                "broker data directory {} is not usable: {error}",
                dir.display()
            )
        });
        Broker::start_in(Storage::Sqlite(dir), new_temp_dir())
    }

    fn start_in(storage: Storage, temp: TempDir) -> Broker {
        let log_path = temp.path().join("broker.log");
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port();
            let log_start = log_length(&log_path);
            let mut process = spawn_tansu(&storage, port, &log_path);
            match wait_until_accepting(&mut process, port, log_start) {
                Ok(()) => {
                    return Broker {
                        process,
                        port,
                        storage,
                        temp,
                    }
                }
                Err(StartFailure::PortTaken) if attempt < PORT_ATTEMPTS => {
                    ManagedProcess::append_log_marker(
                        &log_path,
                        &format!("port {port} was taken, trying another"),
                    );
                }
                Err(failure) => panic!("{}\n{}", failure.describe(port), process.log_tail()),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// Returns the Kafka bootstrap address, `127.0.0.1:<port>`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Returns the Kafka port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the pid of the current broker process.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Returns the log file that collects the output of every run of this broker.
    pub fn log_path(&self) -> PathBuf {
        self.temp.path().join("broker.log")
    }

    /// Returns true while the broker process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Kills the broker with SIGKILL, like a crash. Data that the storage
    /// engine had not written to disk is lost.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Stops the broker with SIGTERM, and SIGKILL if it has not exited
    /// within 10 seconds.
    pub fn stop(&mut self) {
        self.process.terminate(STOP_GRACE);
    }

    /// Stops the broker if it is running, then starts it again on the same
    /// port with the same storage. A memory-backed broker comes back empty.
    /// Panics if the broker does not accept connections within 60 seconds.
    pub fn restart(&mut self) {
        if self.process.is_running() {
            self.stop();
        }
        let log_path = self.log_path();
        ManagedProcess::append_log_marker(&log_path, &format!("restarting on port {}", self.port));
        let log_start = log_length(&log_path);
        // The old process is reaped, so dropping it here only closes handles.
        self.process = spawn_tansu(&self.storage, self.port, &log_path);
        if let Err(failure) = wait_until_accepting(&mut self.process, self.port, log_start) {
            panic!(
                "{}\n{}",
                failure.describe(self.port),
                self.process.log_tail()
            );
        }
    }

    /// Freezes the broker with SIGSTOP. The kernel still completes TCP
    /// handshakes on its port, but no request gets a response.
    pub fn pause(&mut self) {
        self.process.signal("STOP");
    }

    /// Resumes a broker frozen by [`Broker::pause`] with SIGCONT.
    pub fn resume(&mut self) {
        self.process.signal("CONT");
    }
}

/// Reasons why a broker did not come up.
enum StartFailure {
    PortTaken,
    Exited(String),
    TimedOut,
}

impl StartFailure {
    fn describe(&self, port: u16) -> String {
        match self {
            StartFailure::PortTaken => {
                format!("Tansu failed to start: port {port} was already in use")
            }
            StartFailure::Exited(status) => {
                format!("Tansu exited during startup on port {port} with {status}")
            }
            StartFailure::TimedOut => {
                format!(
                    "Tansu did not accept connections on 127.0.0.1:{port} within {START_TIMEOUT:?}"
                )
            }
        }
    }
}

fn new_temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("txnotify-broker-")
        .tempdir()
        .unwrap_or_else(|error| {
            panic!("failed to create a temporary directory for the broker: {error}")
        })
}

fn tansu_bin() -> PathBuf {
    tool_from_env("TXNOTIFY_TANSU_BIN", "the Tansu 0.6.0 broker binary")
}

/// Returns whether the Tansu binary lists the `dynostore` storage engine,
/// which provides `memory://`, in the "Storage engines:" line of its help.
fn tansu_has_memory_engine() -> bool {
    static HAS_MEMORY: OnceLock<bool> = OnceLock::new();
    *HAS_MEMORY.get_or_init(|| {
        let bin = tansu_bin();
        let output = Command::new(&bin)
            .arg("--help")
            .output()
            .unwrap_or_else(|error| panic!("failed to run `{} --help`: {error}", bin.display()));
        let help = String::from_utf8_lossy(&output.stdout);
        help.lines()
            .find_map(|line| line.strip_prefix("Storage engines:"))
            .is_some_and(|engines| {
                engines
                    .split(',')
                    .any(|engine| engine.trim() == "dynostore")
            })
    })
}

fn spawn_tansu(storage: &Storage, port: u16, log_path: &Path) -> ManagedProcess {
    let listener = format!("tcp://127.0.0.1:{port}");
    let (engine, work_dir) = match storage {
        Storage::Memory => (
            "memory://tansu/".to_string(),
            log_path.parent().expect("log file has a parent"),
        ),
        // Tansu resolves the SQLite path against its working directory.
        Storage::Sqlite(dir) => (format!("sqlite://{SQLITE_FILE}"), dir.as_path()),
    };

    let mut command = Command::new(tansu_bin());
    command
        .arg("broker")
        .args(["--listener-url", &listener])
        .args(["--advertised-listener-url", &listener])
        .args(["--storage-engine", &engine])
        .args(["--cluster-id", CLUSTER_ID])
        // --silent turns off the progress spinners, which fill the log.
        .arg("--silent")
        .current_dir(work_dir)
        // Tansu also reads its settings from these variables; the flags above
        // win, and the rest must not point the broker at anything else.
        .env_remove("SCHEMA_REGISTRY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env(
            "RUST_LOG",
            std::env::var("TXNOTIFY_TANSU_LOG").unwrap_or_else(|_| "warn".to_string()),
        );
    ManagedProcess::spawn("tansu", command, log_path, log_path)
}

fn log_length(path: &Path) -> usize {
    std::fs::metadata(path).map_or(0, |metadata| metadata.len() as usize)
}

/// Polls until the broker accepts TCP connections on its port. `log_start`
/// is the log length before this run, so earlier runs' output is ignored.
fn wait_until_accepting(
    process: &mut ManagedProcess,
    port: u16,
    log_start: usize,
) -> Result<(), StartFailure> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = process.try_exit_status() {
            let log = process.stdout();
            let log = log.get(log_start..).unwrap_or(&log);
            if log.contains("Address already in use") || log.contains("AddrInUse") {
                return Err(StartFailure::PortTaken);
            }
            return Err(StartFailure::Exited(status.to_string()));
        }
        if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(StartFailure::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
