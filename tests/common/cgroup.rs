//! Cgroups made for one test: a freezer to freeze the sidecar, a CPU controller to starve
//! it. Needs root. Each cgroup is removed when dropped, even when the test failed: its
//! freezer is thawed, its CPU quota lifted and its remaining processes moved back to the
//! hierarchy's root first.
//!
//! Which hierarchies exist is read from `/proc/self/mounts`: the v1 controllers
//! (`/sys/fs/cgroup/freezer`, `/sys/fs/cgroup/cpu,cpuacct`, …) and the unified v2 one
//! (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid machine).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a drop retries removing a cgroup whose processes are still leaving it.
const REMOVE_ATTEMPTS: usize = 50;
const REMOVE_RETRY: Duration = Duration::from_millis(100);

/// Which interface a cgroup is driven through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// A v1 controller's own hierarchy: `freezer.state`, `cpu.cfs_quota_us`.
    V1,
    /// The unified hierarchy: `cgroup.freeze` / `cgroup.events`, `cpu.max`.
    V2,
}

/// The mount point of the v1 hierarchy carrying `controller`.
pub fn v1_mount(controller: &str) -> Option<PathBuf> {
    mounts()
        .into_iter()
        .find(|(fs_type, _, options)| {
            fs_type == "cgroup" && options.split(',').any(|o| o == controller)
        })
        .map(|(_, mount_point, _)| PathBuf::from(mount_point))
}

/// The mount point of the unified (v2) hierarchy.
pub fn v2_mount() -> Option<PathBuf> {
    mounts()
        .into_iter()
        .find(|(fs_type, _, _)| fs_type == "cgroup2")
        .map(|(_, mount_point, _)| PathBuf::from(mount_point))
}

/// (fs type, mount point, options) of every mount.
fn mounts() -> Vec<(String, String, String)> {
    let text = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, mount_point, fs_type, options, ..] = fields[..] else {
                return None;
            };
            Some((fs_type.into(), mount_point.into(), options.into()))
        })
        .collect()
}

/// A cgroup made for one test.
pub struct TestCgroup {
    pub version: Version,
    root: PathBuf,
    pub dir: PathBuf,
}

impl TestCgroup {
    /// Makes an empty cgroup under the hierarchy mounted at `root`.
    pub fn create(version: Version, root: &Path, tag: &str) -> Result<TestCgroup, String> {
        static SEQUENCE: AtomicUsize = AtomicUsize::new(0);
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let dir = root.join(format!("stallwatch-test-{tag}-{}-{n}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(TestCgroup {
            version,
            root: root.to_path_buf(),
            dir,
        })
    }

    /// A freezable cgroup: the v1 freezer when mounted, else v2;
    /// `STALLWATCH_TEST_CGROUP=v1|v2` forces one (to exercise both on a hybrid machine).
    pub fn freezer(tag: &str) -> Result<TestCgroup, String> {
        let forced = std::env::var("STALLWATCH_TEST_CGROUP").ok();
        match (forced.as_deref(), v1_mount("freezer"), v2_mount()) {
            (Some("v2"), _, Some(root)) | (None, None, Some(root)) => {
                TestCgroup::create(Version::V2, &root, tag)
            }
            (Some("v1") | None, Some(root), _) => TestCgroup::create(Version::V1, &root, tag),
            (forced, v1, v2) => Err(format!(
                "no usable cgroup hierarchy (forced: {forced:?}, v1 freezer mount: {v1:?}, \
                 v2 mount: {v2:?})"
            )),
        }
    }

    /// A freezable cgroup ([`TestCgroup::freezer`]) holding `pids`, each checked in.
    pub fn freezer_holding(tag: &str, pids: &[i32]) -> Result<TestCgroup, String> {
        let cgroup = TestCgroup::freezer(tag)?;
        for &pid in pids {
            cgroup.add(pid)?;
        }
        Ok(cgroup)
    }

    /// Its `cgroup.procs`: writing a pid (or `0`, the writer itself) moves that process in.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Moves `pid` in and checks it arrived.
    pub fn add(&self, pid: i32) -> Result<(), String> {
        self.write("cgroup.procs", &pid.to_string())
            .map_err(|e| format!("cannot move pid {pid} into {}: {e}", self.dir.display()))?;
        if !self.members().contains(&pid) {
            return Err(format!(
                "pid {pid} is not in {} after moving it",
                self.dir.display()
            ));
        }
        Ok(())
    }

    /// The processes in it now.
    pub fn members(&self) -> Vec<i32> {
        fs::read_to_string(self.procs())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    pub fn write(&self, file: &str, value: &str) -> io::Result<()> {
        fs::write(self.dir.join(file), value)
    }

    pub fn read(&self, file: &str) -> String {
        fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    pub fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        match (self.version, frozen) {
            (Version::V1, true) => self.write("freezer.state", "FROZEN"),
            (Version::V1, false) => self.write("freezer.state", "THAWED"),
            (Version::V2, true) => self.write("cgroup.freeze", "1"),
            (Version::V2, false) => self.write("cgroup.freeze", "0"),
        }
    }

    pub fn is_frozen(&self) -> bool {
        match self.version {
            Version::V1 => self.read("freezer.state").trim() == "FROZEN",
            Version::V2 => self
                .read("cgroup.events")
                .lines()
                .any(|l| l.trim() == "frozen 1"),
        }
    }

    /// Waits until the cgroup reports frozen, after [`TestCgroup::set_frozen`].
    pub fn wait_frozen(&self) {
        super::poll_until(
            "the cgroup to report frozen",
            super::STOPPED_TIMEOUT,
            || {
                if self.is_frozen() {
                    Ok(())
                } else {
                    Err(format!("{} is not frozen yet", self.dir.display()))
                }
            },
        );
    }

    /// Freezes the cgroup and thaws it `how_long` after, once it has reported frozen;
    /// returns how long it was frozen.
    pub fn freeze_for(&self, how_long: Duration) -> Duration {
        self.set_frozen(true).expect("freezing the cgroup");
        let t0 = Instant::now();
        self.wait_frozen();
        std::thread::sleep(how_long.saturating_sub(t0.elapsed()));
        self.set_frozen(false).expect("thawing the cgroup");
        t0.elapsed()
    }

    /// Limits the cgroup to `quota` of CPU time per `period` (v1 `cpu.cfs_*_us`, v2
    /// `cpu.max`); `None` lifts the limit.
    pub fn set_cpu_quota(&self, limit: Option<(Duration, Duration)>) -> io::Result<()> {
        let us = |d: Duration| d.as_micros().to_string();
        match (self.version, limit) {
            (Version::V1, Some((quota, period))) => {
                self.write("cpu.cfs_period_us", &us(period))?;
                self.write("cpu.cfs_quota_us", &us(quota))
            }
            (Version::V1, None) => self.write("cpu.cfs_quota_us", "-1"),
            (Version::V2, Some((quota, period))) => {
                self.write("cpu.max", &format!("{} {}", us(quota), us(period)))
            }
            (Version::V2, None) => self.write("cpu.max", "max"),
        }
    }

    /// A guard that thaws this cgroup when dropped. Declare it after the sidecar it
    /// froze: a frozen process cannot be killed and reaped, so the thaw must come first.
    pub fn thaw_on_drop(&self) -> ThawOnDrop<'_> {
        ThawOnDrop(self)
    }

    fn move_members_to_root(&self) {
        for pid in self.members() {
            let _ = fs::write(self.root.join("cgroup.procs"), pid.to_string());
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if self.dir.join("freezer.state").exists() || self.dir.join("cgroup.freeze").exists() {
            let _ = self.set_frozen(false);
        }
        if self.dir.join("cpu.cfs_quota_us").exists() || self.dir.join("cpu.max").exists() {
            let _ = self.set_cpu_quota(None);
        }
        // Removal fails while processes remain; they may take a moment to thaw or exit.
        for _ in 0..REMOVE_ATTEMPTS {
            self.move_members_to_root();
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(REMOVE_RETRY);
        }
        eprintln!(
            "warning: could not remove test cgroup {}",
            self.dir.display()
        );
    }
}

/// Thaws its cgroup when dropped (see [`TestCgroup::thaw_on_drop`]).
pub struct ThawOnDrop<'a>(&'a TestCgroup);

impl Drop for ThawOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.set_frozen(false);
    }
}
