//! `[[source]]` as `Config::parse` reads it: the tests of `source.rs` that need a whole file.

use super::source::*;
use super::Config;
use std::path::{Path, PathBuf};

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(Path::new("/etc/sw.toml"), text, &|_| None).map_err(|e| e.to_string())
}

#[test]
fn presets_fill_the_layout() {
    let c = parse("[[source]]\nname = \"lab\"\nkind = \"queue_table\"\npreset = \"lab-jobs\"\nurl = \"sqlite:///app/jobs.db\"\n").unwrap();
    let s = &c.sources[0];
    assert_eq!(s.location, Location::Sqlite(PathBuf::from("/app/jobs.db")));
    let SourceDetail::QueueTable(layout) = &s.detail else {
        panic!()
    };
    assert_eq!(**layout, preset_lab_jobs());
}

#[test]
fn a_key_of_another_kind_is_named() {
    let e = parse("[[source]]\nname = \"d\"\nkind = \"dbos\"\nurl = \"x.db\"\nlease = \"10s\"\n")
        .unwrap_err();
    assert!(
        e.contains("source[0].lease does not apply to a source of kind \"dbos\""),
        "{e}"
    );
}

#[test]
fn names_are_unique_and_urls_sqlite() {
    let two = "[[source]]\nname = \"a\"\nkind = \"dbos\"\nurl = \"x.db\"\n[[source]]\nname = \"a\"\nkind = \"dbos\"\nurl = \"y.db\"\n";
    assert!(parse(two).unwrap_err().contains(": source[1].name "));
    let pg = "[[source]]\nname = \"a\"\nkind = \"dbos\"\nurl = \"postgres://u:secret@h/db?sslmode=require\"\n";
    let c = parse(pg).unwrap();
    assert!(matches!(c.sources[0].location, Location::Postgres(_)));
    assert!(!format!("{:?}", c.sources[0]).contains("secret"));
    let on_jsonl =
        "[[source]]\nname = \"a\"\nkind = \"jsonl\"\nurl = \"postgres://u:secret@h/db\"\n";
    let e = parse(on_jsonl).unwrap_err();
    assert!(e.contains("Postgres") && !e.contains("secret"), "{e}");
    let bad_mode = "[[source]]\nname = \"a\"\nkind = \"dbos\"\nurl = \"postgres://u:secret@h/db?sslmode=sometimes\"\n";
    let e = parse(bad_mode).unwrap_err();
    assert!(e.contains("sslmode") && !e.contains("secret"), "{e}");
}

#[test]
fn relative_and_absolute_sqlite_urls() {
    assert_eq!(
        url_to_path("sqlite:///abs/db.sqlite").unwrap(),
        PathBuf::from("/abs/db.sqlite")
    );
    assert_eq!(
        url_to_path("sqlite://rel/db.sqlite").unwrap(),
        PathBuf::from("rel/db.sqlite")
    );
    assert_eq!(
        url_to_path("data/db.sqlite").unwrap(),
        PathBuf::from("data/db.sqlite")
    );
}

#[test]
fn sql_columns_must_be_metric_names_and_consistent() {
    let base =
        "[[source]]\nname = \"a\"\nkind = \"sql\"\nurl = \"x.db\"\nquery = \"SELECT 1 AS n\"\n";
    assert!(parse(&format!("{base}values = [\"n\"]\n")).is_ok());
    assert!(parse(&format!("{base}values = [\"n-1\"]\n"))
        .unwrap_err()
        .contains(": source[0].values "));
    assert!(
        parse(&format!("{base}values = [\"n\"]\nlabels = [\"source\"]\n"))
            .unwrap_err()
            .contains(": source[0].labels ")
    );
    let clash = format!("{base}values = [\"n\"]\n[[source]]\nname = \"b\"\nkind = \"sql\"\nurl = \"x.db\"\nquery = \"SELECT 1 AS n, 'x' AS q\"\nvalues = [\"n\"]\nlabels = [\"q\"]\n");
    assert!(
        parse(&clash)
            .unwrap_err()
            .contains("source[1].labels must equal"),
        "{}",
        parse(&clash).unwrap_err()
    );
}

#[test]
fn sql_query_is_one_statement() {
    let base = "[[source]]\nname = \"a\"\nkind = \"sql\"\nurl = \"x.db\"\nvalues = [\"n\"]\n";
    let c = parse(&format!("{base}query = \"SELECT 1 AS n; \"\n")).unwrap();
    let SourceDetail::Sql { query, .. } = &c.sources[0].detail else {
        panic!()
    };
    assert_eq!(query, "SELECT 1 AS n");
    let stacked = format!("{base}query = \"SELECT 1 AS n) AS x; BEGIN READ WRITE; DELETE FROM t; SELECT * FROM (SELECT 1 AS n\"\n");
    assert!(parse(&stacked).unwrap_err().contains("single statement"));
}

#[test]
fn lease_needs_a_running_status_and_claim_column() {
    let e = parse("[[source]]\nname = \"q\"\nkind = \"queue_table\"\nurl = \"x.db\"\ntable = \"t\"\nopen_statuses = [\"new\"]\nlease = \"1m\"\n").unwrap_err();
    assert!(e.contains(": source[0].lease "), "{e}");
}
