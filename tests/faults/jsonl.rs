//! Fault cases: JSONL sources (cost day, non-regular files, oversized lines, shutdown).

#[allow(unused_imports)]
use crate::common;
