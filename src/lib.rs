//! stallwatch: a sidecar that tells an operator whether the machine froze or the job
//! stalled. See ARCHITECTURE.md for the map; the binary's entry is `main.rs`.

pub mod alerts;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod coverage;
pub mod demo;
pub mod doctor;
pub mod freeze;
pub mod http;
pub mod metrics;
pub mod otlp;
pub mod page;
pub mod persist;
pub mod report;
pub mod sidecar;
pub mod signals;
pub mod silence;
pub mod sources;
pub mod state;
pub mod status;
pub mod supervise;
pub mod time;
pub mod timestamp;
