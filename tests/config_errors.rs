//! Issue 3: every start-up problem an operator can cause ends the process with exit
//! code 2 and ONE line on stderr that names the thing and the problem (docs/design.md,
//! exit codes) — and touches nothing on the way out. `check-config` agrees with `run`.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use common::{free_port, run_to_exit, Finished};

/// `stallwatch run` with a config file (if any) and data dir, on a free port.
fn run(config: Option<&Path>, data_dir: &Path) -> Finished {
    run_on(config, data_dir, free_port())
}

fn run_on(config: Option<&Path>, data_dir: &Path, port: u16) -> Finished {
    let mut args = vec![
        "run".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ];
    if let Some(c) = config {
        args.push("--config".into());
        args.push(c.display().to_string());
    }
    run_to_exit(args)
}

/// Asserts exit 2 and exactly one stderr line containing every one of `needles`;
/// returns the line.
#[track_caller]
fn assert_refused(out: &Finished, needles: &[&str]) -> String {
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit 2, got {}\nstderr:\n{}",
        out.status,
        out.stderr
    );
    let lines = out.stderr_lines();
    assert_eq!(
        lines.len(),
        1,
        "expected ONE line on stderr, got {}:\n{}",
        lines.len(),
        out.stderr
    );
    let line = lines[0];
    for needle in needles {
        assert!(
            line.contains(needle),
            "{line:?} does not mention {needle:?}"
        );
    }
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    line.to_string()
}

/// A scratch dir with `config.toml` holding `text`.
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Runs `check-config` and `run` on the same bad config: both refuse with one line that
/// names the file and all of `needles`, and `run` creates no data dir.
#[track_caller]
fn assert_bad_config(text: &str, needles: &[&str]) {
    let (dir, path) = config_file(text);
    let file = path.display().to_string();
    let mut with_file = needles.to_vec();
    with_file.push(&file);

    let checked = run_to_exit(["check-config".as_ref(), path.as_os_str()]);
    let line = assert_refused(&checked, &with_file);
    let data = dir.path().join("data");
    let ran = run(Some(&path), &data);
    assert_eq!(
        assert_refused(&ran, &with_file),
        line,
        "run and check-config disagree"
    );
    assert!(!data.exists(), "a bad config must not create the data dir");
}

#[test]
fn unknown_key_names_the_key_and_the_file() {
    assert_bad_config(
        "[freeze]\ntik = \"250ms\"\n",
        &["freeze.tik", "not a known setting"],
    );
    assert_bad_config("colour = \"red\"\n", &["colour", "not a known setting"]);
}

#[test]
fn bad_duration_names_the_key_and_the_value() {
    assert_bad_config("[freeze]\ntick = \"fast\"\n", &["freeze.tick", "\"fast\""]);
    assert_bad_config(
        "[freeze]\nmin = \"2 parsecs\"\n",
        &["freeze.min", "2 parsecs"],
    );
}

#[test]
fn unreadable_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("does-not-exist.toml");
    let needles = [
        "cannot read config file",
        missing.to_str().unwrap(),
        "no such file",
    ];
    assert_refused(
        &run_to_exit(["check-config".as_ref(), missing.as_os_str()]),
        &needles,
    );
    assert_refused(&run(Some(&missing), &dir.path().join("data")), &needles);
    // A directory where a file should be.
    let d = dir.path().display().to_string();
    assert_refused(
        &run(Some(dir.path()), &dir.path().join("data")),
        &["cannot read config file", &d],
    );
}

#[test]
fn data_dir_under_a_regular_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "not a directory").unwrap();
    let data = file.join("data");
    assert_refused(
        &run(None, &data),
        &["data directory", data.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}

#[test]
fn data_dir_under_proc_is_refused() {
    // Tests run as root, so chmod 0555 would not stop the sidecar; /proc refuses root too.
    let data = PathBuf::from(format!("/proc/stallwatch-test-{}/data", std::process::id()));
    assert_refused(
        &run(None, &data),
        &["data directory", data.to_str().unwrap()],
    );
}

#[test]
fn corrupt_state_db_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let db = data.join("stallwatch.sqlite");
    // Not SQLite: 16 KiB of a repeating non-header pattern.
    let garbage: Vec<u8> = (0..16 * 1024u32).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(&db, &garbage).unwrap();
    let before = std::fs::metadata(&db).unwrap().modified().unwrap();

    let line = assert_refused(&run(None, &data), &[db.to_str().unwrap(), "corrupt"]);
    assert!(
        std::fs::read(&db).unwrap() == garbage,
        "the corrupt state DB was modified ({line})"
    );
    assert_eq!(std::fs::metadata(&db).unwrap().modified().unwrap(), before);
    let mut names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["stallwatch.sqlite"],
        "nothing may be added next to a corrupt state DB"
    );
}

#[test]
fn port_already_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    assert_refused(
        &run_on(None, &dir.path().join("data"), port),
        &["cannot listen", &addr, "in use"],
    );
}

#[test]
fn check_config_accepts_a_valid_file_and_the_shipped_example() {
    let (_dir, path) = config_file(
        r#"
listen = "127.0.0.1:9847"
data_dir = "/var/lib/stallwatch"
log_format = "json"

[freeze]
tick = "100ms"
min = "3s"
wall_step = "500ms"
reference_interval = "5s"
references = ["rtc", "sntp:127.0.0.1:123", "http_date:http://127.0.0.1:8080/"]
"#,
    );
    let mut files = vec![path];
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/stallwatch.toml");
    if example.exists() {
        files.push(example);
    }
    for file in files {
        let out = run_to_exit(["check-config".as_ref(), file.as_os_str()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "check-config {} failed:\n{}",
            file.display(),
            out.stderr
        );
        assert!(out.stdout.contains("valid"), "stdout: {:?}", out.stdout);
        assert!(out.stderr.is_empty(), "stderr: {:?}", out.stderr);
    }
}

// ---- alerts: `[[channel]]` and `[[rule]]` (docs/alerts.md, Configuration) ---------------

#[test]
fn unknown_channel_kind_names_the_key_and_the_kind() {
    assert_bad_config(
        "[[channel]]\nname = \"phone\"\nkind = \"sms\"\nurl = \"https://sms.example/send\"\n",
        &["channel[0].kind", "sms"],
    );
}

#[test]
fn webhook_channel_without_url_names_the_key() {
    assert_bad_config(
        "[[channel]]\nname = \"hook\"\nkind = \"webhook\"\n",
        &["channel[0].url"],
    );
}

#[test]
fn rule_naming_an_unknown_channel_names_the_key_and_the_channel() {
    assert_bad_config(
        "[[channel]]\nname = \"phone\"\nkind = \"ntfy\"\nurl = \"https://ntfy.example/t\"\n\n\
         [[rule]]\nrule = \"stuck_jobs\"\nchannels = [\"phone\", \"pager\"]\n",
        &["rule[0].channels[1]", "pager"],
    );
}

#[test]
fn unknown_rule_names_the_key_and_the_rule() {
    assert_bad_config(
        "[[rule]]\nrule = \"disk_full\"\n",
        &["rule[0].rule", "disk_full"],
    );
}

#[test]
fn bad_severity_names_the_key_and_the_value() {
    assert_bad_config(
        "[[rule]]\nrule = \"freeze\"\nseverity = \"page-me\"\n",
        &["rule[0].severity", "page-me"],
    );
}

// ---- every kind of mistake, in the user's words (issue 16, item 4) ---------------------

/// `text` refused by `check-config` and `run` alike with exit 2 and exactly this one line
/// on stderr: `stallwatch: config file PATH: SENTENCE`, the key (the sentence's first word)
/// named once.
#[track_caller]
fn assert_config_sentence(text: &str, sentence: &str) {
    let (dir, path) = config_file(text);
    let want = format!("stallwatch: config file {}: {sentence}\n", path.display());
    let checked = run_to_exit(["check-config".as_ref(), path.as_os_str()]);
    let ran = run(Some(&path), &dir.path().join("data"));
    for (what, out) in [("check-config", &checked), ("run", &ran)] {
        assert_eq!(
            (out.status.code(), out.stderr.as_str()),
            (Some(2), want.as_str()),
            "{what} on {text:?}"
        );
        assert!(out.stdout.is_empty(), "{what} stdout: {:?}", out.stdout);
    }
    let key = sentence
        .split([' ', ':'])
        .next()
        .expect("a sentence starts with its key");
    assert_eq!(
        sentence.matches(key).count(),
        1,
        "{sentence:?} names {key:?} more than once"
    );
}

#[test]
fn config_errors_say_what_was_expected_in_the_users_terms() {
    let jsonl = "[[source]]\nname = \"log\"\nkind = \"jsonl\"\nurl = \"/tmp/x.jsonl\"\n";
    let queue = "[[source]]\nname = \"q\"\nkind = \"queue_table\"\nurl = \"/tmp/q.db\"\n";
    let long = "y".repeat(500);
    let cases: Vec<(String, &str)> = vec![
        // Durations: a number, a boolean, a word, a pasted 500-character value (clipped).
        ("[freeze]\ntick = 5\n".into(), "freeze.tick must be a duration like \"5s\", not the number 5"),
        ("[freeze]\ntick = true\n".into(), "freeze.tick must be a duration like \"5s\", not true"),
        ("[freeze]\nmin = \"fast\"\n".into(), "freeze.min must be a duration like \"5s\", not \"fast\""),
        (format!("{jsonl}poll = 5\n"), "source[0].poll must be a duration like \"5s\", not the number 5"),
        ("[alerts]\nheartbeat_interval = [1]\n".into(), "alerts.heartbeat_interval must be a duration like \"5s\", not a list"),
        (
            format!("[freeze]\ntick = \"{long}\"\n"),
            "freeze.tick must be a duration like \"5s\", not \"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\"… (500 characters)",
        ),
        // Numbers.
        (format!("{jsonl}cost_cap_usd = \"lots\"\n"), "source[0].cost_cap_usd must be a number, not \"lots\""),
        ("[alerts]\noutbox_max = -1\n".into(), "alerts.outbox_max must be a whole number, 0 or more, not the number -1"),
        (format!("{queue}max_attempts = 1.5\n"), "source[0].max_attempts must be a whole number, 0 or more, not the number 1.5"),
        // Booleans.
        (format!("{queue}attempts_count_claims = \"yes\"\n"), "source[0].attempts_count_claims must be true or false, not \"yes\""),
        // Strings and paths.
        ("listen = 5\n".into(), "listen must be a string, not the number 5"),
        ("[[source]]\nname = 5\nkind = \"jsonl\"\nurl = \"/tmp/x\"\n".into(), "source[0].name must be a string, not the number 5"),
        ("data_dir = 5\n".into(), "data_dir must be a path (a string), not the number 5"),
        // A secret's value is not repeated, only its type.
        (
            "[[channel]]\nname = \"t\"\nkind = \"telegram\"\ntoken = 123456789\nchat_id = 1\n".into(),
            "channel[0].token must be a string, not a number",
        ),
        // Names from a fixed set.
        ("log_format = \"xml\"\n".into(), "log_format must be one of text, json, not \"xml\""),
        ("log_format = 5\n".into(), "log_format must be one of text, json, not the number 5"),
        ("[freeze]\nforward_steps = 3\n".into(), "freeze.forward_steps must be one of auto, lost_time, clock_correction, not the number 3"),
        ("[[rule]]\nrule = \"freeze\"\nseverity = \"page-me\"\n".into(), "rule[0].severity must be one of info, warning, critical, not \"page-me\""),
        // Kinds, rules.
        ("[[source]]\nname = \"m\"\nkind = \"rabbitmq\"\n".into(), "source[0].kind: unknown source kind \"rabbitmq\"; expected one of dbos, queue_table, jsonl, sql"),
        ("[[source]]\nname = \"m\"\nkind = 5\n".into(), "source[0].kind must be one of dbos, queue_table, jsonl, sql, not the number 5"),
        (
            "[[channel]]\nname = \"phone\"\nkind = \"sms\"\n".into(),
            "channel[0].kind: unknown channel kind \"sms\"; expected one of webhook, ntfy, slack, discord, telegram, pushover, pagerduty, alertmanager",
        ),
        (
            "[[rule]]\nrule = \"disk_full\"\n".into(),
            "rule[0].rule: unknown rule \"disk_full\"; expected one of freeze, wall_clock_step, workflow_stalled, stuck_jobs, queue_age, dead_letters, cost_cap, source_down, recovery_loop, queue_blocked, outbox_backlog, state_db",
        ),
        // Lists.
        ("[freeze]\nreferences = \"rtc\"\n".into(), "freeze.references must be a list, not \"rtc\""),
        ("[freeze]\nreferences = [5]\n".into(), "freeze.references[0] must be a string, not the number 5"),
        ("[[rule]]\nrule = \"freeze\"\nchannels = \"phone\"\n".into(), "rule[0].channels must be a list, not \"phone\""),
        ("source = 5\n".into(), "source must be a list, not the number 5"),
        // Tables.
        ("freeze = 5\n".into(), "freeze must be a table, not the number 5"),
        ("otlp = \"on\"\n".into(), "otlp must be a table, not \"on\""),
        // Unknown keys.
        ("[freeze]\ntik = \"250ms\"\n".into(), "freeze.tik is not a known setting; expected one of tick, min, wall_step, reference_interval, references, forward_steps"),
        (
            "colour = \"red\"\n".into(),
            "colour is not a known setting; expected one of listen, data_dir, log_format, freeze, source, alerts, channel, rule, otlp",
        ),
    ];
    for (text, sentence) in &cases {
        assert_config_sentence(text, sentence);
    }
}

/// Every flag that takes a value, given a wrong one (and the usage mistakes around
/// them): exit 2, exactly this one line on stderr, nothing on stdout.
#[test]
fn cli_errors_say_what_was_expected_in_the_users_terms() {
    let long = "z".repeat(300);
    let help = "(stallwatch --help lists the commands and options)";
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["analyze", "--source", "x.db", "--gap-min", "fast"],
            "--gap-min must be a duration like \"30s\", not \"fast\"".into(),
        ),
        (
            vec!["analyze", "--source", "x.db", "--top", "many"],
            "--top must be a whole number, 0 or more, not \"many\"".into(),
        ),
        (
            vec!["analyze", "--source", "x.db", "--top", "-3"],
            "--top must be a whole number, 0 or more, not \"-3\"".into(),
        ),
        (
            vec!["analyze", "--source", "x.db", "--format", "xml"],
            "--format must be one of text, json, not \"xml\"".into(),
        ),
        (vec!["analyze", "--source"], "--source needs a value".into()),
        (
            vec!["analyze", "--gap-min", "5m"],
            format!("--source is required {help}"),
        ),
        (
            vec!["run", "--listen", "nowhere"],
            "--listen must be an address like \"127.0.0.1:9847\", not \"nowhere\"".into(),
        ),
        (
            vec!["run", "--listen", &long],
            format!(
                "--listen must be an address like \"127.0.0.1:9847\", not \"{}\"… (300 characters)",
                "z".repeat(80)
            ),
        ),
        (vec!["run", "--config"], "--config needs a value".into()),
        (vec!["run", "--data-dir"], "--data-dir needs a value".into()),
        (
            vec!["run", "--stop-grace", "soon", "--", "true"],
            "--stop-grace must be a duration like \"10s\", not \"soon\"".into(),
        ),
        (
            vec!["run", "--colour"],
            format!("unexpected argument '--colour' found {help}"),
        ),
        (
            vec!["demo", "--listen", "1.2.3.4"],
            "--listen must be an address like \"127.0.0.1:9847\", not \"1.2.3.4\"".into(),
        ),
        (
            vec!["doctor", "--format", "yaml"],
            "--format must be one of text, json, not \"yaml\"".into(),
        ),
        (vec!["doctor", "--config"], "--config needs a value".into()),
        (
            vec!["report", "--format", "pdf"],
            "--format must be one of text, json, markdown, html, not \"pdf\"".into(),
        ),
        (
            vec!["report", "--format"],
            "--format needs a value: one of text, json, markdown, html".into(),
        ),
        (vec!["report", "--since"], "--since needs a value".into()),
        (
            vec!["verify", "--format", "xml", "--migrated-at", "1d"],
            "--format must be one of text, json, not \"xml\"".into(),
        ),
        (
            vec!["verify"],
            format!("--before or --migrated-at is required {help}"),
        ),
        (
            vec!["verify", "--before", "7d..1d"],
            format!("--after is required {help}"),
        ),
        (vec!["check-config"], format!("FILE is required {help}")),
        (
            vec!["frobnicate"],
            format!("unrecognized subcommand 'frobnicate' {help}"),
        ),
    ];
    for (args, sentence) in &cases {
        let out = run_to_exit(args);
        assert_eq!(
            (out.status.code(), out.stderr.as_str()),
            (Some(2), format!("stallwatch: {sentence}\n").as_str()),
            "stallwatch {args:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?} stdout: {:?}", out.stdout);
    }
}
