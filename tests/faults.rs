//! The fault suite: every defect the red-team pass found (issue "Nothing blinds it,
//! nothing is lost"), run against the real binary with real files, real Postgres and
//! real sockets. Each case fails on the code before its fix.
//!
//! One module per area, so the cases read beside the part of the sidecar they attack.

mod common;

mod faults {
    pub mod config;
    pub mod http;
    pub mod jsonl;
    pub mod labels;
    pub mod sources;
    pub mod state_db;
}
