//! An episode: a gap between steps or a stall of a workflow, with its cause.

use super::attribution::Cause;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpisodeKind {
    /// Time between two steps that no intended wait explains.
    StepGap,
    /// A workflow still open with no progress for longer than `stall_after`.
    Stall,
    /// An intended wait (`DBOS.recv`) that ended past its deadline.
    WaitOverrun,
}

impl EpisodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EpisodeKind::StepGap => "step_gap",
            EpisodeKind::Stall => "stall",
            EpisodeKind::WaitOverrun => "wait_overrun",
        }
    }

    pub fn parse(s: &str) -> Option<EpisodeKind> {
        [
            EpisodeKind::StepGap,
            EpisodeKind::Stall,
            EpisodeKind::WaitOverrun,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    pub source: String,
    pub kind: EpisodeKind,
    pub workflow_id: String,
    pub workflow_name: String,
    pub from_step: String,
    pub to_step: String,
    pub started_at_ns: i64,
    pub duration_ns: i64,
    pub cause: Cause,
}
