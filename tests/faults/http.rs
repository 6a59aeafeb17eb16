//! Fault cases: http.

#[allow(unused_imports)]
use crate::common;
