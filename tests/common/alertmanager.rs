//! A real `prometheus-alertmanager` for the tests of the alertmanager channel: on a free
//! 127.0.0.1 port with the routing config the test gives, ready once `/-/ready` answers,
//! killed when dropped, its log shown when the test fails. Finding the binary is the
//! test's (each says how to install it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, http_get};

/// Start-up of a real Alertmanager on a loaded 2-core machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Alertmanager {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Alertmanager {
    /// Starts `binary` in `dir` with `config` (its YAML, or JSON, which YAML reads) and
    /// waits until it is ready; panics with its log if it exits or is not ready in time.
    pub fn start(binary: &Path, dir: &Path, config: &str) -> Alertmanager {
        let config_file = dir.join("alertmanager.yml");
        std::fs::write(&config_file, config).unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = dir.join("alertmanager.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address={addr}"))
            // No HA cluster: it would bind 0.0.0.0:9094.
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting Alertmanager");
        let mut am = Alertmanager { child, addr, log };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = am.child.try_wait().unwrap() {
                panic!("Alertmanager exited with {status}:\n{}", am.log_text());
            }
            if http_get(addr, "/-/ready").is_ok_and(|r| r.status == 200) {
                return am;
            }
            assert!(
                Instant::now() < deadline,
                "Alertmanager not ready after {START_TIMEOUT:?}:\n{}",
                am.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- alertmanager log ----\n{}", self.log_text());
        }
    }
}
