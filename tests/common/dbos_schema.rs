//! The DBOS system tables with the columns stallwatch reads, for tests that write a DBOS
//! history by hand (the tests that run real DBOS get the real schema from DBOS itself).

/// `workflow_status` and `operation_outputs` as DBOS has them on SQLite.
pub const SQLITE: &str = "
CREATE TABLE workflow_status (
    workflow_uuid TEXT PRIMARY KEY, status TEXT, name TEXT, queue_name TEXT,
    recovery_attempts INTEGER DEFAULT 0, created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL, started_at_epoch_ms INTEGER);
CREATE TABLE operation_outputs (
    workflow_uuid TEXT NOT NULL, function_id INTEGER NOT NULL,
    function_name TEXT NOT NULL DEFAULT '', output TEXT, error TEXT,
    started_at_epoch_ms INTEGER, completed_at_epoch_ms INTEGER,
    PRIMARY KEY (workflow_uuid, function_id));
CREATE INDEX operation_outputs_completed ON operation_outputs (completed_at_epoch_ms);
";

/// The same tables in schema `dbos` on Postgres (bigint epoch columns, as DBOS has them).
pub const POSTGRES: &str = "
CREATE SCHEMA dbos;
CREATE TABLE dbos.workflow_status (
    workflow_uuid TEXT PRIMARY KEY, status TEXT, name TEXT, queue_name TEXT,
    recovery_attempts BIGINT DEFAULT 0, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,
    started_at_epoch_ms BIGINT);
CREATE TABLE dbos.operation_outputs (
    workflow_uuid TEXT NOT NULL, function_id INTEGER NOT NULL, function_name TEXT NOT NULL DEFAULT '',
    output TEXT, error TEXT, child_workflow_id TEXT,
    started_at_epoch_ms BIGINT, completed_at_epoch_ms BIGINT,
    PRIMARY KEY (workflow_uuid, function_id));
CREATE INDEX operation_outputs_completed ON dbos.operation_outputs (completed_at_epoch_ms);
";
