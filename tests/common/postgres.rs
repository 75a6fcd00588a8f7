//! Throwaway Postgres databases for system tests.

use std::env;

/// Connection string of the Postgres server the tests use, without a database name.
/// `TXNOTIFY_TEST_POSTGRES` replaces the default, the project's machines' server.
pub fn postgres_server() -> String {
    env::var("TXNOTIFY_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".to_string())
}

/// A database with a random name, created on the test server and dropped, with any
/// connections still open to it, when the handle is dropped.
pub struct TestDatabase {
    name: String,
}

impl TestDatabase {
    /// Creates the database. Panics with the server address if Postgres is unreachable.
    pub fn create() -> TestDatabase {
        let name = super::unique_name("txnotify_test").replace('-', "_");
        run_admin(format!("CREATE DATABASE {name}"));
        TestDatabase { name }
    }

    /// Returns the connection string of this database.
    pub fn url(&self) -> String {
        format!("{} dbname={}", postgres_server(), self.name)
    }

    /// Returns a connected client; its connection task runs on the current Tokio runtime.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|error| panic!("failed to connect to {}: {error}", self.url()));
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // A panic in drop would hide the test's own failure; report instead.
        if let Err(error) = std::panic::catch_unwind(|| run_admin(statement)) {
            eprintln!("failed to drop test database {}: {error:?}", self.name);
        }
    }
}

/// Runs one statement on the `postgres` database, on a thread with its own runtime, so
/// it works inside and outside async code.
fn run_admin(statement: String) {
    let url = format!("{} dbname=postgres", postgres_server());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|error| {
                    panic!("failed to connect to Postgres at {url}: {error}; start it or set TXNOTIFY_TEST_POSTGRES")
                });
            tokio::spawn(connection);
            client
                .batch_execute(&statement)
                .await
                .unwrap_or_else(|error| panic!("`{statement}` failed: {error}"));
        });
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}
