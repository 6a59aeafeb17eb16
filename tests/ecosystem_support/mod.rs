//! Shared helpers of the `ecosystem_*` tests (issue 7): the files under `alerts/`,
//! `dashboards/` and `deploy/`, read as data; the real tools that check them (promtool,
//! amtool, Prometheus, Alertmanager, systemd-analyze, docker-compose, node) found on the
//! machine or named with the Debian/npm package that provides them; and the PromQL the
//! dashboards and rules contain, taken apart enough to name every metric and to run
//! every query.
//!
//! Nothing skips: a missing tool fails the test with the package to install, since a test
//! that cannot fail is a defect.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `rel` under the repository root.
pub fn repo_file(rel: &str) -> PathBuf {
    repo().join(rel)
}

/// The dashboards under `dashboards/`, sorted, with their parsed JSON.
pub fn dashboards() -> Vec<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_file("dashboards"))
        .expect("reading dashboards/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "dashboards/ has no *.json");
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("reading a dashboard");
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            (p, json)
        })
        .collect()
}

/// Every panel of a dashboard, rows' nested panels included (rows themselves too).
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("a panels list") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner.iter());
        }
    }
    out
}

// ---- tools ------------------------------------------------------------------------------

/// A program from `$PATH` or `/usr/bin`, or a panic naming the package that provides it.
pub fn tool(name: &str, package: &str) -> PathBuf {
    let from_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    from_path
        .or_else(|| Some(PathBuf::from("/usr/bin").join(name)).filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "{name} not found; install it with `apt-get install -y {package}` \
                 (scripts/install-test-deps.sh). This test does not skip."
            )
        })
}

pub fn promtool() -> PathBuf {
    tool("promtool", "prometheus")
}

pub fn amtool() -> PathBuf {
    tool("amtool", "prometheus-alertmanager")
}

/// How long a checking tool (promtool, amtool, systemd-analyze, tsc) may run: seconds
/// normally; minutes only on a machine that is very busy.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(180);

/// A finished command with its output as text.
pub struct Ran {
    pub shown: String,
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Panics with everything the command printed unless it exited 0.
    #[track_caller]
    pub fn expect_success(&self) -> &Ran {
        assert!(
            self.status.success(),
            "{} failed with {}\nstdout:\n{}\nstderr:\n{}",
            self.shown,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `cmd` to completion (stdin closed, output to files so nothing blocks), killing it
/// after [`TOOL_TIMEOUT`].
pub fn run(cmd: &mut Command) -> Ran {
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let err = tempfile::NamedTempFile::new().expect("temp file");
    cmd.stdin(Stdio::null())
        .stdout(out.reopen().expect("reopen"))
        .stderr(err.reopen().expect("reopen"));
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} still running after {TOOL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |f: &tempfile::NamedTempFile| {
        let mut s = String::new();
        let _ = std::fs::File::open(f.path()).and_then(|mut h| h.read_to_string(&mut s));
        s
    };
    Ran {
        shown,
        status,
        stdout: read(&out),
        stderr: read(&err),
    }
}

/// Output of a command that must succeed, as text.
pub fn output_of(cmd: &mut Command) -> Output {
    let ran = run(cmd);
    ran.expect_success();
    Output {
        status: ran.status,
        stdout: ran.stdout.into_bytes(),
        stderr: ran.stderr.into_bytes(),
    }
}

/// Parses a YAML file (every document in it) into JSON values with Debian's PyYAML:
/// there is no YAML crate among the dependencies, and the tools under test parse their
/// own files themselves; this is for reading fields the tools do not check.
pub fn yaml_documents(path: &Path) -> Vec<Value> {
    let python = tool("python3", "python3-yaml");
    // Debian's python3 (where python3-yaml lives), not a pyenv shim that may lack it.
    let python = if Path::new("/usr/bin/python3").is_file() {
        PathBuf::from("/usr/bin/python3")
    } else {
        python
    };
    let ran = run(Command::new(python)
        .arg("-c")
        .arg(
            "import json, sys\n\
         try:\n    import yaml\n\
         except ImportError:\n    sys.exit('PyYAML missing: apt-get install -y python3-yaml')\n\
         print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1], encoding='utf-8')))))",
        )
        .arg(path));
    ran.expect_success();
    match serde_json::from_str(&ran.stdout).expect("python printed JSON") {
        Value::Array(docs) => docs,
        other => panic!("expected a list of documents, got {other}"),
    }
}

/// The one YAML document in `path`.
pub fn yaml(path: &Path) -> Value {
    let mut docs = yaml_documents(path);
    assert_eq!(
        docs.len(),
        1,
        "{} should hold one YAML document",
        path.display()
    );
    docs.remove(0)
}

// ---- rules ------------------------------------------------------------------------------

/// One rule of `alerts/stallwatch.rules.yml`.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The alert name, or the recorded series' name.
    pub name: String,
    pub alert: bool,
    pub expr: String,
    pub json: Value,
}

pub fn rules() -> Vec<Rule> {
    let doc = yaml(&repo_file("alerts/stallwatch.rules.yml"));
    let mut out = Vec::new();
    for group in doc["groups"].as_array().expect("groups") {
        for r in group["rules"].as_array().expect("rules") {
            let (name, alert) = match (r["alert"].as_str(), r["record"].as_str()) {
                (Some(a), None) => (a.to_string(), true),
                (None, Some(rec)) => (rec.to_string(), false),
                _ => panic!("a rule is neither alert nor record: {r}"),
            };
            out.push(Rule {
                name,
                alert,
                expr: r["expr"].as_str().expect("expr").trim().to_string(),
                json: r.clone(),
            });
        }
    }
    out
}

// ---- PromQL -----------------------------------------------------------------------------

/// Words that look like identifiers in PromQL but are not metric names.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "Inf",
    "NaN",
    "atan2",
    // Aggregation operators, which may be followed by `by (…)` instead of `(`.
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects (identifiers that are neither functions,
/// keywords, label names, label values nor durations), in order of first use.
pub fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_until(&chars, i, '}'),
            '[' => i = skip_until(&chars, i, ']'),
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                // A number or a duration: digits, dots, exponents, unit letters.
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric()
                        || chars[i] == '.'
                        || chars[i] == '_'
                        || ((chars[i] == '-' || chars[i] == '+')
                            && matches!(chars[i - 1], 'e' | 'E')))
                {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let called = chars.get(j) == Some(&'(');
                if LABEL_LIST_KEYWORDS.contains(&word.as_str()) {
                    if called {
                        i = skip_until(&chars, j, ')');
                    }
                } else if called || KEYWORDS.contains(&word.as_str()) {
                    // A function or aggregation, or an operator word.
                } else if !names.contains(&word) {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Index just past the string literal starting at `i`.
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        if chars[j] == '\\' && quote != '`' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

/// Index just past the `close` matching the opener at `i` (strings inside skipped).
fn skip_until(chars: &[char], i: usize, close: char) -> usize {
    let open = chars[i];
    let mut depth = 0;
    let mut j = i;
    while j < chars.len() {
        match chars[j] {
            '"' | '\'' | '`' => {
                j = skip_string(chars, j);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    chars.len()
}

/// The value operands of a filtering expression: it is split at every top-level
/// comparison (`> 0`, `== 0`, `>= 0.8 < 1`) and set operator (`and`, `or`, `unless`),
/// recursively through parentheses; number literals are dropped and `absent(x)` stands
/// for `x`. Each operand is a query that should return data on a live system even when
/// the whole expression (an alert's condition) rightly returns nothing.
pub fn value_operands(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    collect_operands(expr, &mut out);
    out
}

fn collect_operands(expr: &str, out: &mut Vec<String>) {
    let mut e = strip_modifiers(expr.trim());
    loop {
        let chars: Vec<char> = e.chars().collect();
        if chars.first() == Some(&'(') && skip_until(&chars, 0, ')') == chars.len() {
            e = strip_modifiers(chars[1..chars.len() - 1].iter().collect::<String>().trim());
        } else {
            break;
        }
    }
    if let Some(inner) = e
        .strip_prefix("absent(")
        .and_then(|rest| rest.strip_suffix(')'))
    {
        collect_operands(inner, out);
        return;
    }
    let parts = split_top_level(&e);
    if parts.len() == 1 {
        if e.parse::<f64>().is_err() && !e.is_empty() {
            out.push(e);
        }
        return;
    }
    for p in parts {
        collect_operands(&p, out);
    }
}

/// Drops leading `bool`, `on(…)`, `ignoring(…)`, `group_left(…)`, `group_right(…)`.
fn strip_modifiers(expr: &str) -> String {
    let mut e = expr.trim().to_string();
    loop {
        let before = e.clone();
        for kw in ["bool", "group_left", "group_right", "on", "ignoring"] {
            if let Some(rest) = e.strip_prefix(kw) {
                let rest_trim = rest.trim_start();
                if kw == "bool" {
                    if rest.starts_with(char::is_whitespace) {
                        e = rest_trim.to_string();
                    }
                } else if rest_trim.starts_with('(') {
                    let chars: Vec<char> = rest_trim.chars().collect();
                    let end = skip_until(&chars, 0, ')');
                    e = chars[end..].iter().collect::<String>().trim().to_string();
                }
            }
        }
        if e == before {
            return e;
        }
    }
}

/// Splits at top-level binary comparison and set operators.
fn split_top_level(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(&chars, i);
                continue;
            }
            '(' => {
                i = skip_until(&chars, i, ')');
                continue;
            }
            '{' => {
                i = skip_until(&chars, i, '}');
                continue;
            }
            '[' => {
                i = skip_until(&chars, i, ']');
                continue;
            }
            '=' | '!' | '>' | '<' => {
                let two = chars.get(i + 1) == Some(&'=');
                if chars[i] == '!' && !two {
                    i += 1;
                    continue;
                }
                if chars[i] == '=' && !two {
                    i += 1;
                    continue;
                }
                parts.push(chars[start..i].iter().collect::<String>());
                i += if two { 2 } else { 1 };
                start = i;
                continue;
            }
            c if c.is_ascii_alphabetic() => {
                let s = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[s..i].iter().collect();
                let boundary_before = s == 0
                    || !(chars[s - 1].is_ascii_alphanumeric()
                        || chars[s - 1] == '_'
                        || chars[s - 1] == ':');
                let boundary_after = i >= chars.len() || !(chars[i] == ':' || chars[i] == '(');
                if boundary_before
                    && boundary_after
                    && matches!(word.as_str(), "and" | "or" | "unless")
                {
                    parts.push(chars[start..s].iter().collect::<String>());
                    start = i;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(chars[start..].iter().collect::<String>());
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Grafana's template variables replaced as a user with "All" selected would see them,
/// for running a dashboard query against Prometheus directly.
pub fn substitute_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("${__rate_interval}", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("${job}", "stallwatch")
        .replace("$job", "stallwatch")
        .replace("${instance}", ".*")
        .replace("$instance", ".*")
        .replace("${source}", ".*")
        .replace("$source", ".*")
}

/// Every PromQL expression of a dashboard, labelled by where it is: panel targets,
/// annotation queries and the metric selectors of `label_values(...)` variables.
#[derive(Debug, Clone)]
pub struct DashboardQuery {
    pub dashboard: String,
    pub place: String,
    pub expr: String,
    /// Annotations and variable selectors only need their value operands to have data.
    pub filter: bool,
}

pub fn dashboard_queries() -> Vec<DashboardQuery> {
    let mut out = Vec::new();
    for (path, d) in dashboards() {
        let dash = path.file_name().unwrap().to_string_lossy().to_string();
        for p in panels(&d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push(DashboardQuery {
                        dashboard: dash.clone(),
                        place: format!(
                            "panel {:?} target {}",
                            p["title"].as_str().unwrap_or("?"),
                            t["refId"].as_str().unwrap_or("?")
                        ),
                        expr: expr.to_string(),
                        filter: false,
                    });
                }
            }
        }
        for a in d["annotations"]["list"].as_array().into_iter().flatten() {
            if let Some(expr) = a["target"]["expr"].as_str() {
                out.push(DashboardQuery {
                    dashboard: dash.clone(),
                    place: format!("annotation {:?}", a["name"].as_str().unwrap_or("?")),
                    expr: expr.to_string(),
                    filter: true,
                });
            }
        }
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            if let (Some("query"), Some(q)) = (v["type"].as_str(), q) {
                let selector = q
                    .strip_prefix("label_values(")
                    .and_then(|r| r.rsplit_once(','))
                    .map(|(sel, _)| sel.trim().to_string())
                    .unwrap_or_else(|| {
                        panic!("{dash}: variable query {q:?} is not label_values(selector, label)")
                    });
                out.push(DashboardQuery {
                    dashboard: dash.clone(),
                    place: format!("variable ${}", v["name"].as_str().unwrap_or("?")),
                    expr: selector,
                    filter: false,
                });
            }
        }
    }
    out
}

/// Series Prometheus makes itself for every target; never in an exporter's `/metrics`.
pub const PROMETHEUS_SYNTHETIC: &[&str] = &[
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// Metric families that are exported only after their first event, with why; each must
/// still be declared in src/metrics.rs (checked), so a typo cannot hide here.
pub const FIRST_EVENT_ONLY: &[(&str, &str, &str)] = &[
    (
        "stallwatch_wait_overrun_seconds_bucket",
        "\"wait_overrun_seconds\"",
        "a histogram with a source label appears with its first observation (an intended wait overrunning by gap_min)",
    ),
    (
        "stallwatch_label_overflow_total",
        "\"label_overflow_total\"",
        "its labels are created when a source first reaches a label cap",
    ),
];

/// Sample names and family names in a Prometheus text exposition.
pub fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                names.insert(name.to_string());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// Percent-encodes a query-string value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The GitHub-style anchor of a Markdown heading's text.
pub fn heading_anchor(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

// ---- a running `stallwatch demo` ----------------------------------------------------------

/// `GET path` over HTTP/1.1 with `Connection: close`; status and body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::Write;
    let timeout = Duration::from_secs(10);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: stallwatch-tests\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.take(64 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut data: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = data.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        data = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// Polls `probe` every 200 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How long a cold start of the demo may take to answer /readyz on a busy machine.
pub const DEMO_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `stallwatch demo` (synthetic app, worker and sidecar) in its own temp dir,
/// killed when dropped.
pub struct Demo {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    /// The demo app's files: `app.sqlite` and `events.jsonl`.
    pub app_dir: PathBuf,
    pub log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Demo {
    pub fn start() -> Demo {
        let tmp = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let log = tmp.path().join("demo.log");
        let child = Command::new(env!("CARGO_BIN_EXE_stallwatch"))
            .args(["demo", "--listen", &addr.to_string()])
            // The demo keeps its app in $TMPDIR/stallwatch-demo-PID.
            .env("TMPDIR", tmp.path())
            .env("NO_COLOR", "1")
            .env("STALLWATCH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("demo log"))
            .spawn()
            .expect("starting stallwatch demo");
        let app_dir = tmp.path().join(format!("stallwatch-demo-{}", child.id()));
        let mut demo = Demo {
            child,
            addr,
            app_dir,
            log,
            _tmp: tmp,
        };
        let deadline = Instant::now() + DEMO_READY_TIMEOUT;
        loop {
            if let Some(status) = demo.child.try_wait().expect("waiting") {
                panic!("stallwatch demo exited with {status}:\n{}", demo.log_text());
            }
            if matches!(http_get(addr, "/readyz"), Ok((200, _))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "demo not ready:\n{}",
                demo.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            demo.app_dir.join("app.sqlite").is_file(),
            "no demo app at {}",
            demo.app_dir.display()
        );
        demo
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        let (status, body) = http_get(self.addr, "/metrics").expect("GET /metrics of the demo");
        assert_eq!(status, 200);
        body
    }

    /// A `stallwatch run` config watching this demo's app (the same data the demo's own
    /// sidecar sees, under other source names) with the given references, and one webhook
    /// channel: `stallwatch_notifications_total{channel,outcome}` is exported per
    /// configured channel only. Its port is closed, so whatever the demo's alerts send is
    /// retried and nothing leaves the machine.
    pub fn watching_config(&self, references: &[String]) -> String {
        let db = self.app_dir.join("app.sqlite");
        let log = self.app_dir.join("events.jsonl");
        let refs: Vec<String> = references.iter().map(|r| format!("{r:?}")).collect();
        let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        format!(
            r#"[freeze]
reference_interval = "1s"
references = [{refs}]

[[source]]
name = "dbos"
kind = "dbos"
url = "sqlite://{db}"
poll = "1s"
stall_after = "6s"
gap_min = "3s"

[[source]]
name = "jobs"
kind = "queue_table"
preset = "lab-jobs"
url = "sqlite://{db}"
poll = "1s"

[[source]]
name = "tasks"
kind = "queue_table"
preset = "digest-tasks"
lease = "10s"
url = "sqlite://{db}"
poll = "1s"

[[source]]
name = "costs"
kind = "jsonl"
url = "{log}"
poll = "1s"
cost_cap_usd = 5.0

[[channel]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:{closed_port}/"
"#,
            refs = refs.join(", "),
            db = db.display(),
            log = log.display(),
        )
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // SIGCONT first, in case a test stopped it and then failed.
        // SAFETY: kill has no memory-safety preconditions; a failure here is harmless.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGCONT);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- stallwatch demo log ----\n{}", self.log_text());
        }
    }
}
