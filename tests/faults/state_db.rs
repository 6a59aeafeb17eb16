//! Fault cases: state_db.

#[allow(unused_imports)]
use crate::common;
