//! Fault cases: sources.

#[allow(unused_imports)]
use crate::common;
