//! Fault cases: labels.

#[allow(unused_imports)]
use crate::common;
