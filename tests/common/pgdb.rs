//! A Postgres database of a test's own on the machine's server (127.0.0.1:5432, trust
//! auth as `postgres`), created with a unique name and dropped — with its connections —
//! when the handle is dropped.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use postgres::{Client, NoTls};

pub const PG_HOST: &str = "127.0.0.1";
pub const PG_PORT: u16 = 5432;

/// libpq parameters for `dbname` as the `postgres` role.
pub fn admin_params(dbname: &str) -> String {
    format!("host={PG_HOST} port={PG_PORT} user=postgres dbname={dbname} connect_timeout=10")
}

/// A connection to the `postgres` database, with a sentence saying what the test needs
/// when the server is not there.
pub fn admin() -> Client {
    Client::connect(&admin_params("postgres"), NoTls).unwrap_or_else(|e| {
        panic!("cannot reach Postgres at {PG_HOST}:{PG_PORT} as postgres ({e}); this test needs PostgreSQL running there with trust auth")
    })
}

pub struct TestDb {
    pub name: String,
}

impl TestDb {
    /// `sw_<tag>_<pid>_<n>_<nanos>`: unique across test binaries run side by side.
    pub fn create(tag: &str) -> TestDb {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "sw_{tag}_{}_{}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst),
            nanos % 1_000_000
        );
        admin()
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        TestDb { name }
    }

    /// The URL a source config takes.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@{PG_HOST}:{PG_PORT}/{}", self.name)
    }

    pub fn client(&self) -> Client {
        Client::connect(&admin_params(&self.name), NoTls)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.name))
    }

    #[track_caller]
    pub fn execute(&self, sql: &str) {
        self.client()
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Never panic here: this runs while a failed test unwinds.
        let dropped = Client::connect(&admin_params("postgres"), NoTls).and_then(|mut c| {
            c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
        });
        if let Err(e) = dropped {
            eprintln!("could not drop database {}: {e}", self.name);
        }
    }
}
