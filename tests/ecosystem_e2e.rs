//! Issue 7, end to end with the real tools: Debian's `prometheus` scrapes a running
//! `stallwatch demo` (a synthetic app with every source kind) and a `stallwatch run`
//! watching the same app with a live reference clock, evaluates `alerts/stallwatch.rules.yml`
//! every second and alerts to a real `prometheus-alertmanager` configured with
//! `deploy/alertmanager.yml`'s routing tree, whose receivers point at a webhook server in
//! this test. The test SIGSTOPs the demo for 3 s: the freeze is recorded, the freeze alert
//! fires in Prometheus, and Alertmanager delivers it to the phone (urgent) receiver.
//! Then every PromQL expression of every dashboard panel, annotation and variable and of
//! every rule runs through Prometheus's HTTP API and must return data without error; the
//! ones that do not are listed by dashboard and panel title.

mod common;
mod ecosystem_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::servers::ClockServer;
use common::{Launch, Sidecar};
use ecosystem_support::*;
use serde_json::{json, Value};

/// Start-up of Prometheus or Alertmanager on a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Scrapes of the demo before the freeze, so increase() has a sample from before it.
const SAMPLES_BEFORE_FREEZE: u32 = 10;
/// How long the demo is stopped: above freeze.min (2 s).
const FREEZE: Duration = Duration::from_secs(3);
/// From SIGCONT to the webhook: the freeze waits reference_interval (10 s) before it is
/// recorded, then a scrape, a rule evaluation, Alertmanager's group_wait (1 s here).
/// About 15 s normally; generous for a busy machine.
const ALERT_TIMEOUT: Duration = Duration::from_secs(150);
/// Data Prometheus should hold before the dashboards are queried: the dashboards'
/// $__rate_interval is 1m here, so a full minute of 1 s scrapes.
const DATA_BEFORE_QUERIES: Duration = Duration::from_secs(75);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A real server process (Prometheus, Alertmanager), killed when dropped; its log is
/// printed if the test fails.
struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Server {
    fn start(name: &'static str, dir: &Path, cmd: &mut Command) -> Server {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Server { name, child, log }
    }

    fn wait_ready(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited with {status}:\n{}", self.name, self.log_text());
            }
            if matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready after {START_TIMEOUT:?}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!(
                "---- {} log (last 40 lines) ----\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// A webhook receiver: answers every POST with 200 and keeps (path, JSON body).
struct Webhook {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<(String, Value)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Webhook {
    fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the webhook");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                if let Some((path, body)) = read_request(&mut stream) {
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    if let Ok(json) = serde_json::from_slice(&body) {
                        r.lock().unwrap().push((path, json));
                    }
                }
            }
        });
        Webhook {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    fn received(&self) -> Vec<(String, Value)> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one HTTP request: its path and its body (by Content-Length).
fn read_request(stream: &mut std::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let path = head.split_whitespace().nth(1)?.to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while raw.len() < head_end + length {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    Some((path, raw[head_end..].to_vec()))
}

/// The result of one instant query.
enum Answer {
    Data,
    Empty,
    Error(String),
}

fn query(prom: SocketAddr, expr: &str) -> Answer {
    let path = format!("/api/v1/query?query={}", url_encode(expr));
    match http_get(prom, &path) {
        Err(e) => Answer::Error(format!("HTTP: {e}")),
        Ok((status, body)) => {
            let v: Value = match serde_json::from_str(&body) {
                Ok(v) => v,
                Err(_) => return Answer::Error(format!("HTTP {status}: {body}")),
            };
            if v["status"] != "success" {
                return Answer::Error(format!(
                    "{}: {}",
                    v["errorType"].as_str().unwrap_or("?"),
                    v["error"].as_str().unwrap_or(&body)
                ));
            }
            let empty = match &v["data"]["result"] {
                Value::Array(a) => a.is_empty(),
                Value::Null => true,
                _ => false, // a scalar or string
            };
            if empty {
                Answer::Empty
            } else {
                Answer::Data
            }
        }
    }
}

fn query_value(prom: SocketAddr, expr: &str) -> Option<f64> {
    let (_, body) = http_get(prom, &format!("/api/v1/query?query={}", url_encode(expr))).ok()?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// True if every metric the expression names is one that appears only after its first
/// event (FIRST_EVENT_ONLY): such a query may rightly be empty on a young sidecar.
fn only_first_event_metrics(expr: &str) -> bool {
    let names = metric_names(expr);
    !names.is_empty()
        && names
            .iter()
            .all(|n| FIRST_EVENT_ONLY.iter().any(|(m, _, _)| m == n))
}

/// True if the expression looks further back (`offset 10m`) than the minute or two of data
/// this test's Prometheus holds: the first-sample branch of StallwatchDroppedItems and
/// StallwatchNotificationsFailing (`… unless … offset …`) is rightly empty here.
fn looks_back_beyond_the_data(expr: &str) -> bool {
    !metric_names(expr).is_empty() && expr.contains(" offset ")
}

#[test]
fn prometheus_and_alertmanager_page_on_a_real_freeze_and_every_query_returns_data() {
    let tmp = tempfile::tempdir().unwrap();
    let prometheus = tool("prometheus", "prometheus");
    let alertmanager = tool("prometheus-alertmanager", "prometheus-alertmanager");

    // ---- stallwatch: the demo, and a `run` watching the same app with a reference clock.
    let demo = Demo::start();
    let clock = ClockServer::http_date();
    let run_dir = tmp.path().join("run-state");
    std::fs::create_dir_all(&run_dir).unwrap();
    let run = Sidecar::start_with(
        &run_dir,
        &Launch {
            config: Some(demo.watching_config(&[format!("http_date:http://{}/", clock.addr)])),
            ..Launch::default()
        },
    );

    // ---- Alertmanager with deploy/alertmanager.yml's routes, receivers pointed here.
    let webhook = Webhook::start();
    let mut am_config = yaml(&repo_file("deploy/alertmanager.yml"));
    am_config["route"]["group_wait"] = json!("1s");
    am_config["route"]["group_interval"] = json!("1s");
    for r in am_config["route"]["routes"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        r["group_wait"] = json!("1s");
        r["group_interval"] = json!("1s");
    }
    for r in am_config["receivers"].as_array_mut().unwrap() {
        let name = r["name"].as_str().unwrap().to_string();
        for w in r["webhook_configs"].as_array_mut().into_iter().flatten() {
            w["url"] = json!(format!("http://{}/{name}", webhook.addr));
        }
    }
    let am_file = tmp.path().join("alertmanager.yml");
    std::fs::write(&am_file, serde_json::to_string_pretty(&am_config).unwrap()).unwrap();
    let am_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut am = Server::start(
        "alertmanager",
        tmp.path(),
        Command::new(alertmanager)
            .arg(format!("--config.file={}", am_file.display()))
            .arg(format!(
                "--storage.path={}",
                tmp.path().join("am-data").display()
            ))
            .arg(format!("--web.listen-address={am_addr}"))
            // No HA cluster: it would bind 0.0.0.0:9094.
            .arg("--cluster.listen-address="),
    );
    am.wait_ready(am_addr);

    // ---- Prometheus with deploy/prometheus.yml's stallwatch job, 1 s scrapes and rules.
    let mut prom_config = yaml(&repo_file("deploy/prometheus.yml"));
    prom_config["global"]["scrape_interval"] = json!("1s");
    prom_config["global"]["evaluation_interval"] = json!("1s");
    prom_config["rule_files"] = json!([repo_file("alerts/stallwatch.rules.yml")]);
    prom_config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] =
        json!([am_addr.to_string()]);
    let mut job = prom_config["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "stallwatch")
        .expect("deploy/prometheus.yml has a stallwatch job")
        .clone();
    job["scrape_timeout"] = json!("1s");
    job["static_configs"][0]["targets"] = json!([demo.addr.to_string(), run.addr.to_string()]);
    prom_config["scrape_configs"] = json!([job]);
    let prom_file = tmp.path().join("prometheus.yml");
    std::fs::write(
        &prom_file,
        serde_json::to_string_pretty(&prom_config).unwrap(),
    )
    .unwrap();
    let prom_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut prom = Server::start(
        "prometheus",
        tmp.path(),
        Command::new(prometheus)
            .arg(format!("--config.file={}", prom_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("prom-data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}")),
    );
    prom.wait_ready(prom_addr);
    wait_for("both sidecars scraped and up", START_TIMEOUT, || {
        (query_value(prom_addr, "sum(up{job=\"stallwatch\"})")? == 2.0).then_some(())
    });
    let scraping_since = Instant::now();

    // ---- the freeze.
    let demo_instance = demo.addr.to_string();
    let before = format!(
        "count_over_time(stallwatch_freezes_total{{instance=\"{demo_instance}\",kind=\"process_stall\"}}[1m])"
    );
    wait_for(
        "samples of the demo before the freeze",
        START_TIMEOUT,
        || (query_value(prom_addr, &before)? >= f64::from(SAMPLES_BEFORE_FREEZE)).then_some(()),
    );
    signal(demo.pid(), libc::SIGSTOP);
    std::thread::sleep(FREEZE);
    signal(demo.pid(), libc::SIGCONT);
    let resumed = Instant::now();

    let (path, notification) = wait_for(
        "Alertmanager to deliver StallwatchFreezeRecorded to the webhook",
        ALERT_TIMEOUT,
        || {
            webhook.received().into_iter().find(|(_, n)| {
                n["status"] == "firing"
                    && n["alerts"].as_array().into_iter().flatten().any(|a| {
                        a["labels"]["alertname"] == "StallwatchFreezeRecorded"
                            && a["status"] == "firing"
                    })
            })
        },
    );
    eprintln!(
        "freeze alert delivered {:.1} s after SIGCONT",
        resumed.elapsed().as_secs_f64()
    );
    assert_eq!(
        path, "/phone-urgent",
        "a page must reach the urgent receiver"
    );
    assert_eq!(notification["receiver"], "phone-urgent");
    let alert = notification["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == "StallwatchFreezeRecorded")
        .unwrap();
    assert_eq!(alert["labels"]["kind"], "process_stall", "{alert}");
    assert_eq!(alert["labels"]["severity"], "page", "{alert}");
    assert_eq!(alert["labels"]["job"], "stallwatch", "{alert}");
    assert_eq!(
        alert["labels"]["instance"],
        demo_instance.as_str(),
        "{alert}"
    );
    assert_eq!(
        alert["annotations"]["runbook_url"],
        "alerts/RUNBOOK.md#stallwatchfreezerecorded"
    );
    assert!(alert["annotations"]["summary"]
        .as_str()
        .unwrap()
        .contains(&demo_instance));
    // And the demo's API has the event the alert is about.
    let (_, freezes) = http_get(demo.addr, "/api/v1/freezes").unwrap();
    let freezes: Value = serde_json::from_str(&freezes).unwrap();
    let event = freezes
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "process_stall")
        .unwrap_or_else(|| panic!("no process_stall in /api/v1/freezes: {freezes}"));
    let secs = event["duration_seconds"].as_f64().unwrap();
    assert!(
        (2.0..6.0).contains(&secs),
        "freeze of {secs} s for a 3 s SIGSTOP"
    );

    // ---- every query, once Prometheus holds a minute of data.
    std::thread::sleep(DATA_BEFORE_QUERIES.saturating_sub(scraping_since.elapsed()));
    let mut failures: Vec<String> = Vec::new();
    let mut allowed: Vec<String> = Vec::new();
    let mut ran = 0;

    // Rules: every evaluation healthy in Prometheus itself.
    let (_, rules_body) = http_get(prom_addr, "/api/v1/rules").unwrap();
    let loaded: Value = serde_json::from_str(&rules_body).unwrap();
    let mut loaded_names = Vec::new();
    for g in loaded["data"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            loaded_names.push(r["name"].as_str().unwrap().to_string());
            if r["health"] != "ok" {
                failures.push(format!(
                    "rule {}: health {} {}",
                    r["name"], r["health"], r["lastError"]
                ));
            }
        }
    }
    for r in rules() {
        assert!(
            loaded_names.contains(&r.name),
            "Prometheus did not load {}",
            r.name
        );
        ran += 1;
        match query(prom_addr, &r.expr) {
            Answer::Error(e) => {
                failures.push(format!("rule {}: error {e}\n    {}", r.name, r.expr))
            }
            Answer::Empty if !r.alert || r.name == "StallwatchFreezeRecorded" => {
                failures.push(format!("rule {}: empty result\n    {}", r.name, r.expr))
            }
            _ => {}
        }
        if !r.alert {
            if let Answer::Empty | Answer::Error(_) = query(prom_addr, &r.name) {
                failures.push(format!("recording rule {}: no recorded series", r.name));
            }
            continue;
        }
        for operand in value_operands(&r.expr) {
            ran += 1;
            match query(prom_addr, &operand) {
                Answer::Data => {}
                Answer::Empty
                    if only_first_event_metrics(&operand)
                        || looks_back_beyond_the_data(&operand) =>
                {
                    allowed.push(format!("rule {}: {operand}", r.name))
                }
                Answer::Empty => failures.push(format!(
                    "rule {}: the value part has no data\n    {operand}",
                    r.name
                )),
                Answer::Error(e) => {
                    failures.push(format!("rule {}: error {e}\n    {operand}", r.name))
                }
            }
        }
    }
    // The freeze alert is firing in Prometheus too.
    match query(
        prom_addr,
        "ALERTS{alertname=\"StallwatchFreezeRecorded\",alertstate=\"firing\"}",
    ) {
        Answer::Data => {}
        _ => failures.push("ALERTS has no firing StallwatchFreezeRecorded".into()),
    }

    // Dashboards: panels, annotations and variables, with Grafana's variables filled in.
    for q in dashboard_queries() {
        let expr = substitute_grafana_variables(&q.expr);
        assert!(
            !expr.contains('$'),
            "{} {}: unsubstituted variable in {expr}",
            q.dashboard,
            q.place
        );
        ran += 1;
        let whole = query(prom_addr, &expr);
        let where_ = format!("{} {}", q.dashboard, q.place);
        match whole {
            Answer::Error(e) => failures.push(format!("{where_}: error {e}\n    {expr}")),
            Answer::Data => {}
            Answer::Empty if only_first_event_metrics(&expr) => {
                allowed.push(format!("{where_}: {expr}"))
            }
            Answer::Empty if q.filter => {
                for operand in value_operands(&expr) {
                    ran += 1;
                    if !matches!(query(prom_addr, &operand), Answer::Data) {
                        failures.push(format!(
                            "{where_}: the value part has no data\n    {operand}"
                        ));
                    }
                }
            }
            Answer::Empty => failures.push(format!("{where_}: empty result\n    {expr}")),
        }
    }

    eprintln!("{ran} queries run against Prometheus");
    for a in &allowed {
        eprintln!(
            "allowed empty (metric appears on its first event, or offset before the data): {a}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    drop(run);
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; the result is checked.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}
