//! Which reference clocks this machine has, for a config that names none.
//!
//! A reference is only worth using by default when it keeps running while the whole VM
//! is stopped: the RTC (QEMU's `-rtc clock=host`, x86 CMOS or aarch64 PL031, both under
//! `/sys/class/rtc`) and a PTP clock that reads the host's time (`ptp_kvm`, `vmclock`).
//! A NIC's PTP hardware clock is left out: it is the NIC's own oscillator, stepped and
//! slewed by whatever PTP daemon runs (or by none), so its jumps say nothing certain
//! about the host; name it in `references` by hand where it is known to be good.
//!
//! [`is_host_clock`] is the pure decision; [`discover`] is a thin reader of sysfs whose
//! root is an argument, so a test can fake `/sys/class/ptp` and `/sys/class/rtc`. Owns
//! nothing the detector decides; the readers themselves are [`super::rtc`] and [`super::ptp`].

use std::path::{Path, PathBuf};

use crate::config::{FreezeConfig, ReferenceSpec};

/// The real sysfs root.
pub const SYSFS_ROOT: &str = "/sys";
/// Where `/dev/ptpN` devices are (the sysfs entry `ptpN` names the device).
pub const DEV_ROOT: &str = "/dev";
/// The name `ptp_kvm` gives its clock (x86 and aarch64): the host's `CLOCK_REALTIME`.
pub const KVM_PTP_CLOCK_NAME: &str = "KVM virtual PTP";
/// The prefix of the names the `vmclock` driver gives its clocks (`vmclock0`, …).
pub const VMCLOCK_NAME: &str = "vmclock";
/// Most PTP clocks looked at: a machine has a handful; a bound keeps a strange sysfs cheap.
pub const MAX_PTP_CLOCKS: usize = 64;

/// Whether a PTP clock with this `clock_name` reads the host's clock (so it runs through
/// a VM pause), as opposed to a NIC's hardware clock.
pub fn is_host_clock(clock_name: &str) -> bool {
    let name = clock_name.trim();
    name == KVM_PTP_CLOCK_NAME || name.to_ascii_lowercase().contains(VMCLOCK_NAME)
}

/// The references this machine offers, RTC first, then host PTP clocks in device order.
/// `sysfs` is normally [`SYSFS_ROOT`]; a missing or unreadable entry is no reference.
pub fn discover(sysfs: &Path) -> Vec<ReferenceSpec> {
    let mut found = Vec::new();
    if sysfs.join("class/rtc/rtc0/since_epoch").exists() {
        found.push(ReferenceSpec::Rtc);
    }
    let mut ptp: Vec<(u32, String)> = std::fs::read_dir(sysfs.join("class/ptp"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_string();
            let index: u32 = name.strip_prefix("ptp")?.parse().ok()?;
            Some((index, name))
        })
        .take(MAX_PTP_CLOCKS)
        .collect();
    ptp.sort();
    for (_, device) in ptp {
        let clock_name = sysfs.join("class/ptp").join(&device).join("clock_name");
        if std::fs::read_to_string(clock_name).is_ok_and(|n| is_host_clock(&n)) {
            found.push(ReferenceSpec::Ptp(PathBuf::from(DEV_ROOT).join(device)));
        }
    }
    found
}

/// With default references (the file names none), uses what [`discover`] finds under
/// `sysfs` instead. Returns the references found, or `None` when the config names its own.
pub fn use_discovered(freeze: &mut FreezeConfig, sysfs: &Path) -> Option<Vec<ReferenceSpec>> {
    if !freeze.references_defaulted {
        return None;
    }
    freeze.references = discover(sysfs);
    Some(freeze.references.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn kvm_and_vmclock_are_host_clocks_nic_clocks_are_not() {
        assert!(is_host_clock("KVM virtual PTP\n"));
        assert!(is_host_clock("vmclock0"));
        assert!(is_host_clock("VMCLOCK"));
        for nic in [
            "igb",
            "e1000e",
            "mlx5_ptp",
            "ice-0000:17:00.0-clk",
            "",
            "KVM",
        ] {
            assert!(!is_host_clock(nic), "{nic:?}");
        }
    }

    fn fake_ptp(sysfs: &Path, device: &str, clock_name: &str) {
        let dir = sysfs.join("class/ptp").join(device);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("clock_name"), format!("{clock_name}\n")).unwrap();
    }

    #[test]
    fn finds_the_rtc_and_host_ptp_clocks_and_leaves_nic_clocks_out() {
        let sysfs = tempfile::tempdir().unwrap();
        let rtc = sysfs.path().join("class/rtc/rtc0");
        std::fs::create_dir_all(&rtc).unwrap();
        std::fs::write(rtc.join("since_epoch"), "1763900000\n").unwrap();
        fake_ptp(sysfs.path(), "ptp10", "vmclock0");
        fake_ptp(sysfs.path(), "ptp0", "igb");
        fake_ptp(sysfs.path(), "ptp2", KVM_PTP_CLOCK_NAME);
        fake_ptp(sysfs.path(), "pps0", KVM_PTP_CLOCK_NAME);
        assert_eq!(
            discover(sysfs.path()),
            vec![
                ReferenceSpec::Rtc,
                ReferenceSpec::Ptp("/dev/ptp2".into()),
                ReferenceSpec::Ptp("/dev/ptp10".into()),
            ]
        );
    }

    #[test]
    fn a_machine_without_rtc_or_ptp_has_no_reference() {
        let sysfs = tempfile::tempdir().unwrap();
        assert!(discover(sysfs.path()).is_empty());
        std::fs::create_dir_all(sysfs.path().join("class/ptp")).unwrap();
        fake_ptp(sysfs.path(), "ptp0", "mlx5_ptp");
        assert!(discover(sysfs.path()).is_empty());
    }

    #[test]
    fn configured_references_are_kept_and_defaults_are_replaced() {
        let sysfs = tempfile::tempdir().unwrap();
        fake_ptp(sysfs.path(), "ptp0", KVM_PTP_CLOCK_NAME);
        let mut config = Config::default_with("/tmp/x".into());
        assert_eq!(
            use_discovered(&mut config.freeze, sysfs.path()),
            Some(vec![ReferenceSpec::Ptp("/dev/ptp0".into())])
        );
        assert_eq!(
            config.freeze.references,
            vec![ReferenceSpec::Ptp("/dev/ptp0".into())]
        );

        let mut config = Config::default_with("/tmp/x".into());
        config.freeze.references_defaulted = false;
        config.freeze.references = vec![ReferenceSpec::Sntp("127.0.0.1:123".into())];
        assert_eq!(use_discovered(&mut config.freeze, sysfs.path()), None);
        assert_eq!(
            config.freeze.references,
            vec![ReferenceSpec::Sntp("127.0.0.1:123".into())]
        );
    }
}
