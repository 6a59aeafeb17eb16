//! Pure derivations from what sources read: step gaps minus intended waits, stalled
//! workflows, attribution of a gap or stall to a freeze, the cost day, bounded label
//! sets. No I/O; every function takes its readings and `now`.

pub mod attribution;
pub mod cost;
pub mod episode;
pub mod labels;
pub mod steps;
