//! Fault cases: the HTTP server (issue 14 item 12, the `Date` header and the API's query
//! errors from items 7 and 14): idle and slow clients under a small fd limit, a clock
//! stepped back, a huge query value.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::common::faketime::FakeClock;
use crate::common::{self, http_get, poll_until, Metrics, Sidecar};

/// The fd limit of the case the red team ran (`ulimit -n 256`).
const NOFILE: u64 = 256;
/// Idle connections opened against it: more than it has descriptors.
const IDLE_CLIENTS: usize = 300;
/// The server's header timeout (`http::HEADER_READ_TIMEOUT`), which is also its
/// keep-alive idle timeout.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Slack on that timeout for a busy 2-core machine.
const TIMEOUT_SLACK: Duration = Duration::from_secs(3);

/// `stallwatch run` with `RLIMIT_NOFILE` set to [`NOFILE`] before exec, killed on drop.
struct Limited {
    child: Child,
    addr: SocketAddr,
    log: tempfile::NamedTempFile,
    _config: tempfile::NamedTempFile,
}

impl Limited {
    fn start(data_dir: &Path, config: &str) -> Limited {
        let addr: SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
        let log = tempfile::NamedTempFile::new().expect("temp file");
        let mut file = tempfile::NamedTempFile::new().expect("temp config");
        file.write_all(config.as_bytes())
            .expect("writing the config");
        let mut cmd = Command::new(common::bin());
        cmd.args(["run", "--listen", &addr.to_string(), "--data-dir"])
            .arg(data_dir)
            .arg("--config")
            .arg(file.path())
            .env("NO_COLOR", "1")
            .env("STALLWATCH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("reopen"));
        // SAFETY: setrlimit is async-signal-safe and touches only this (forked) process.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: NOFILE,
                    rlim_max: NOFILE,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawning stallwatch");
        let limited = Limited {
            child,
            addr,
            log,
            _config: file,
        };
        poll_until("/readyz 200", common::READY_TIMEOUT, || {
            match http_get(addr, "/readyz") {
                Ok(r) if r.status == 200 => Ok(()),
                other => Err(format!("{other:?}\n{}", limited.log())),
            }
        });
        limited
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- stallwatch stderr ----\n{}", self.log());
        }
    }
}

/// Whether the server closed `stream` within `within`: a read returns EOF (or a reset).
fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    stream.set_read_timeout(Some(within)).expect("read timeout");
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// Item 12: under a 256-fd limit, 300 idle connections made `/healthz` and the API time
/// out and a source fail with EMFILE. Now the connections are capped at a share of the
/// limit, the longest-idle one is closed to make room, and `/healthz` answers in 1 s.
#[test]
fn healthz_answers_while_300_idle_connections_hold_a_256_fd_sidecar() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("app.sqlite");
    rusqlite::Connection::open(&db)
        .and_then(|c| c.execute_batch("CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (1);"))
        .expect("creating the app DB");
    let config = format!(
        "[[source]]\nname = \"app\"\nkind = \"sql\"\npoll = \"300ms\"\nurl = \"{}\"\n\
         query = \"SELECT n FROM t\"\nvalues = [\"n\"]\n",
        db.display()
    );
    let sidecar = Limited::start(&dir.path().join("state"), &config);
    let mut idle = Vec::with_capacity(IDLE_CLIENTS);
    for _ in 0..IDLE_CLIENTS {
        idle.push(TcpStream::connect(sidecar.addr).expect("connecting an idle client"));
    }
    std::thread::sleep(Duration::from_millis(300));
    for path in ["/healthz", "/api/v1/status", "/healthz"] {
        let asked = Instant::now();
        let r = http_get(sidecar.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let took = asked.elapsed();
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(took < Duration::from_secs(1), "{path} took {took:?}");
    }
    let status = http_get(sidecar.addr, "/api/v1/status")
        .expect("status")
        .json();
    let http = &status["http"];
    let limit = http["connection_limit"].as_u64().expect("connection_limit");
    assert!(limit > 0 && limit < NOFILE / 2, "{http}");
    assert!(http["connections"].as_u64().unwrap() <= limit, "{http}");
    assert!(
        http["rejected"]["idle_evicted"].as_u64().unwrap_or(0) >= (IDLE_CLIENTS as u64) - limit,
        "{http}"
    );
    let metrics = Metrics(http_get(sidecar.addr, "/metrics").expect("metrics").body);
    assert_eq!(
        metrics.expect("stallwatch_http_connection_limit"),
        limit as f64
    );
    assert!(metrics.expect("stallwatch_http_connections") <= limit as f64);
    assert!(
        metrics.expect("stallwatch_http_connections_rejected_total{reason=\"idle_evicted\"}")
            >= (IDLE_CLIENTS as u64 - limit) as f64
    );
    // The source kept its descriptors: still up, polling, no error.
    std::thread::sleep(Duration::from_secs(1));
    let status = http_get(sidecar.addr, "/api/v1/status")
        .expect("status")
        .json();
    let source = &status["sources"][0];
    assert_eq!(source["up"], true, "{source}");
    assert!(source["last_error"].is_null(), "{source}");
    assert!(
        !sidecar.log().contains("Too many open files"),
        "{}",
        sidecar.log()
    );
    drop(idle);
}

/// Item 12: an idle keep-alive connection, and one that never sends anything, are closed
/// after the idle timeout (they held a descriptor forever).
#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(dir.path());
    let mut silent = TcpStream::connect(sidecar.addr).expect("connect");
    let mut kept = TcpStream::connect(sidecar.addr).expect("connect");
    write!(
        kept,
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive\r\n\r\n",
        sidecar.addr
    )
    .expect("request");
    let mut first = [0u8; 512];
    kept.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let n = kept.read(&mut first).expect("the response");
    assert!(
        String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );
    for (what, stream) in [("kept-alive", &mut kept), ("silent", &mut silent)] {
        let closed = closed_within(stream, HEADER_TIMEOUT + TIMEOUT_SLACK);
        assert!(
            closed.is_some(),
            "the {what} connection is still open after {:?}",
            HEADER_TIMEOUT + TIMEOUT_SLACK
        );
    }
}

/// Item 12: a slowloris (header bytes trickling in, one every 300 ms) is cut after the
/// header timeout, however steadily it sends.
#[test]
fn a_slowloris_is_cut_after_the_header_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(dir.path());
    let mut slow = TcpStream::connect(sidecar.addr).expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .expect("the first bytes");
    slow.set_nonblocking(true).expect("nonblocking");
    let start = Instant::now();
    let deadline = start + HEADER_TIMEOUT + TIMEOUT_SLACK;
    let mut buf = [0u8; 512];
    let cut = loop {
        if Instant::now() >= deadline {
            break None;
        }
        match slow.read(&mut buf) {
            Ok(0) => break Some(start.elapsed()),
            Ok(_) => break Some(start.elapsed()), // an error response, then the close
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break Some(start.elapsed()),
        }
        if slow.write_all(b"a").is_err() {
            break Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let cut = cut.unwrap_or_else(|| {
        panic!(
            "a slowloris is still connected after {:?}",
            deadline - start
        )
    });
    assert!(
        cut >= HEADER_TIMEOUT - Duration::from_millis(500),
        "cut after {cut:?}, before the header timeout"
    );
    let metrics = poll_until("the timeout counted", Duration::from_secs(5), || {
        let m = sidecar.metrics();
        match m.value("stallwatch_http_connections_rejected_total{reason=\"header_timeout\"}") {
            Some(n) if n >= 1.0 => Ok(n),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(metrics >= 1.0);
}

/// Item 14: the HTTP `Date` header kept a stale time after the clock stepped back: hyper
/// caches it until its next one-second update, which after a step back lies as far in
/// the future as the step. Now every response carries the wall clock of the moment.
#[test]
fn the_date_header_follows_a_clock_stepped_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = FakeClock::new(dir.path());
    let sidecar = Sidecar::start_with(&dir.path().join("state"), &clock.launch());
    let date = |sidecar: &Sidecar| {
        let r = sidecar.get("/healthz");
        let text = r.header("date").expect("a Date header").to_string();
        httpdate::parse_http_date(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    };
    let unix = |t: SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64()
    };
    // Seconds the shown Date is from this test's (real) clock moved by `offset_s`.
    let skew =
        |shown: SystemTime, offset_s: f64| unix(shown) - (unix(SystemTime::now()) + offset_s);
    assert!(skew(date(&sidecar), 0.0).abs() < 3.0);
    clock.set("-3600");
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let shown = date(&sidecar);
        let off = skew(shown, -3600.0);
        assert!(
            off.abs() < 3.0,
            "after the clock stepped back an hour the Date says {} ({off:+.0} s from the clock)",
            httpdate::fmt_http_date(shown)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Item 7: the API's `since` error echoed a 64 KB value whole; now at most ~80 characters.
#[test]
fn a_huge_since_is_quoted_short() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(dir.path());
    let huge = "9".repeat(60 * 1024); // hyper refuses a URI of 64 KiB with 414
    for endpoint in ["/api/v1/freezes", "/api/v1/episodes"] {
        let r = sidecar.get(&format!("{endpoint}?since={huge}"));
        assert_eq!(r.status, 400, "{endpoint}: {}", r.status);
        assert!(r.body.len() < 400, "{endpoint}: {} bytes", r.body.len());
        assert!(r.body.contains("characters)"), "{}", r.body);
    }
}
