//! Which freezes this machine can see, and what would make the blind ones visible.
//!
//! Pure: what is configured and up in, one line per freeze kind out. Used by the tick
//! thread (the `vm_pause_visible` gauge, the status banner) and by `stallwatch doctor`.

use serde::Serialize;

use crate::config::ForwardSteps;
use crate::freeze::FreezeKind;

/// The config that gives a machine without a host-backed clock a reference (shown as is).
pub const REFERENCE_FIX: &str =
    "add references = [\"sntp:HOST:123\"] (or \"http_date:https://HOST/\") \
     under [freeze], or watch a Postgres source, whose server clock is a reference";

/// What the detector has to see with.
#[derive(Debug, Clone, Default)]
pub struct Sight {
    /// Reference clocks up now (they run while this machine is stopped).
    pub references_up: Vec<String>,
    /// References configured but down now.
    pub references_down: Vec<String>,
    pub forward_steps: ForwardSteps,
    /// The state DB is writable (restarts and reboots are found from its heartbeat).
    pub state_db: bool,
}

/// Whether one freeze kind can be detected here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KindSight {
    pub kind: &'static str,
    /// `yes`, `after_resync` (only once the wall clock is stepped right), or `no`.
    pub visible: &'static str,
    /// The channels that would see it.
    pub channels: Vec<String>,
    /// What is missing, and the config line that adds it (when not fully visible).
    pub missing: Option<String>,
}

impl KindSight {
    pub fn covered(&self) -> bool {
        self.visible == "yes"
    }
}

/// One line per freeze kind, in [`FreezeKind::ALL`] order.
pub fn assess(sight: &Sight) -> Vec<KindSight> {
    FreezeKind::ALL
        .into_iter()
        .map(|kind| assess_kind(kind, sight))
        .collect()
}

fn assess_kind(kind: FreezeKind, sight: &Sight) -> KindSight {
    let line = |visible, channels: &[&str], missing: Option<String>| KindSight {
        kind: kind.as_str(),
        visible,
        channels: channels.iter().map(|c| c.to_string()).collect(),
        missing,
    };
    match kind {
        FreezeKind::ProcessStall => line("yes", &["tick"], None),
        FreezeKind::Suspend => line("yes", &["suspend"], None),
        FreezeKind::WallClockStep => line("yes", &["wall_step"], None),
        FreezeKind::Restart | FreezeKind::Reboot if sight.state_db => {
            line("yes", &["downtime"], None)
        }
        FreezeKind::Restart | FreezeKind::Reboot => line(
            "no",
            &[],
            Some("the data dir is not writable: set data_dir (or --data-dir) to a writable, persistent directory".into()),
        ),
        FreezeKind::VmPause => vm_pause(sight),
    }
}

fn vm_pause(sight: &Sight) -> KindSight {
    let mut channels = sight.references_up.clone();
    let resync = sight.forward_steps != ForwardSteps::ClockCorrection;
    if resync {
        channels.push("wall_step".into());
    }
    if !sight.references_up.is_empty() {
        return KindSight {
            kind: "vm_pause",
            visible: "yes",
            channels,
            missing: None,
        };
    }
    let down = if sight.references_down.is_empty() {
        "no reference clock runs through a full VM pause here (no RTC, no host PTP clock, no Postgres source)".to_string()
    } else {
        format!(
            "no reference clock is up ({} down)",
            sight.references_down.join(", ")
        )
    };
    let missing = if resync {
        format!("{down}: a pause is seen only if the wall clock is later stepped to the right time; {REFERENCE_FIX}")
    } else {
        format!("{down}, and forward_steps = \"clock_correction\" ignores resyncs: {REFERENCE_FIX}")
    };
    KindSight {
        kind: "vm_pause",
        visible: if resync { "after_resync" } else { "no" },
        channels,
        missing: Some(missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_with_a_reference_up_sees_every_kind() {
        let sight = Sight {
            references_up: vec!["rtc".into()],
            state_db: true,
            ..Default::default()
        };
        assert!(assess(&sight).iter().all(KindSight::covered));
    }

    #[test]
    fn firecracker_without_references_sees_a_pause_only_after_a_resync() {
        let sight = Sight {
            state_db: true,
            ..Default::default()
        };
        let lines = assess(&sight);
        let pause = lines.iter().find(|l| l.kind == "vm_pause").unwrap();
        assert_eq!(pause.visible, "after_resync");
        assert_eq!(pause.channels, vec!["wall_step"]);
        assert!(
            pause.missing.as_ref().unwrap().contains("sntp:"),
            "{pause:?}"
        );
        assert_eq!(lines.iter().filter(|l| !l.covered()).count(), 1);
    }

    #[test]
    fn a_reference_that_is_down_is_named() {
        let sight = Sight {
            references_down: vec!["postgres:app".into()],
            forward_steps: ForwardSteps::ClockCorrection,
            state_db: true,
            ..Default::default()
        };
        let pause = assess(&sight)
            .into_iter()
            .find(|l| l.kind == "vm_pause")
            .unwrap();
        assert_eq!(pause.visible, "no");
        assert!(pause.missing.unwrap().contains("postgres:app down"));
    }
}
