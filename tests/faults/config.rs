//! Fault cases: config.

#[allow(unused_imports)]
use crate::common;
