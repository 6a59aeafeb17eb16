//! This process's cgroup as evidence: where it is (resolved once, from `/proc/self/cgroup`
//! and `/proc/self/mountinfo`), how long its CPU quota throttled it (`cpu.stat`), and
//! whether its freezer changed state (an inotify watch).
//!
//! Owns the paths and the reads; decides nothing. The parsing is pure and unit-tested;
//! [`CgroupDirs::discover`], [`Throttle`] and [`FreezerWatch`] are the thin I/O around it.
//!
//! **The freezer has no history.** A frozen process cannot read anything, and after the
//! thaw the state reads "thawed" again. What survives is a notification: inotify events
//! queued while the process was frozen are there to read after the thaw.
//! - v2: the kernel notifies `cgroup.events` (`IN_MODIFY`) whenever the cgroup's `frozen`
//!   state changes, including when an ancestor froze it.
//! - v1: the kernel itself notifies nothing, but a freeze is a write of `FROZEN` to a
//!   `freezer.state` file, and a write is an `IN_MODIFY` on that file. Watching the
//!   process's own freezer cgroup and each of its ancestors sees every write that can
//!   freeze it (also writes that change nothing, like `THAWED` to a thawed cgroup).
//!   Measured on Linux 6.18 (cgroup v1 freezer, hybrid): the write of `FROZEN` and the
//!   write of `THAWED` each queue one `IN_MODIFY`, readable after the thaw.
//!   A process in the root freezer cgroup has no `freezer.state` to watch: nothing can
//!   freeze it there through v1.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where the process's cgroup membership is listed.
pub const PROC_SELF_CGROUP: &str = "/proc/self/cgroup";
/// Where the process's mounts are listed (to find the cgroup hierarchies).
pub const PROC_SELF_MOUNTINFO: &str = "/proc/self/mountinfo";
/// Largest `cpu.stat` read: it is a dozen short lines.
const CPU_STAT_MAX_BYTES: usize = 4096;
/// Room for inotify events read at once; each event on a watched file is 16 bytes.
const INOTIFY_BUFFER_BYTES: usize = 4096;

/// One line of `/proc/self/cgroup`: `id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The controllers of a v1 hierarchy (`cpu,cpuacct`), empty for the unified one.
    pub controllers: String,
    pub path: String,
}

/// One cgroup hierarchy mounted in this mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// `None` for cgroup v2, else the v1 controllers it carries (`cpu`, `freezer`, …).
    pub controllers: Option<Vec<String>>,
    /// The cgroup the mount shows as its root (`/` unless a container mounted a subtree).
    pub root: String,
    pub mount_point: PathBuf,
}

/// Parses `/proc/self/cgroup`.
pub fn parse_memberships(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?.to_string();
            let path = parts.next()?.to_string();
            Some(Membership { controllers, path })
        })
        .collect()
}

/// Parses the cgroup mounts out of `/proc/self/mountinfo`
/// (`id parent dev root mount_point options [optional…] - fstype source super_options`).
pub fn parse_mounts(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let (root, mount_point) = (fields.get(3)?, fields.get(4)?);
            let fs_type = fields.get(dash + 1)?;
            let controllers = match *fs_type {
                "cgroup2" => None,
                "cgroup" => Some(
                    fields
                        .get(dash + 3)?
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                        .map(str::to_string)
                        .collect(),
                ),
                _ => return None,
            };
            Some(CgroupMount {
                controllers,
                root: unescape(root),
                mount_point: PathBuf::from(unescape(mount_point)),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of cgroup `path` inside `mount`, if the mount shows it.
fn dir_in(mount: &CgroupMount, path: &str) -> Option<PathBuf> {
    let below = if mount.root == "/" {
        path
    } else {
        path.strip_prefix(mount.root.as_str())
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))?
    };
    Some(mount.mount_point.join(below.trim_start_matches('/')))
}

/// Where this process sits in each hierarchy that matters here.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupDirs {
    /// The unified (v2) cgroup's directory.
    pub v2: Option<PathBuf>,
    /// The v1 `cpu` controller's directory (its `cpu.stat` counts throttling).
    pub cpu_v1: Option<PathBuf>,
    /// The v1 freezer's directory and its hierarchy's mount point.
    pub freezer_v1: Option<(PathBuf, PathBuf)>,
}

impl CgroupDirs {
    /// Pure: the directories from the two files' contents.
    pub fn resolve(memberships: &[Membership], mounts: &[CgroupMount]) -> CgroupDirs {
        let v1 = |controller: &str| {
            let member = memberships
                .iter()
                .find(|m| m.controllers.split(',').any(|c| c == controller))?;
            let mount = mounts.iter().find(|m| {
                m.controllers
                    .as_ref()
                    .is_some_and(|c| c.iter().any(|c| c == controller))
            })?;
            Some((dir_in(mount, &member.path)?, mount.mount_point.clone()))
        };
        let v2 = memberships
            .iter()
            .find(|m| m.controllers.is_empty())
            .and_then(|member| {
                let mount = mounts.iter().find(|m| m.controllers.is_none())?;
                dir_in(mount, &member.path)
            });
        CgroupDirs {
            v2,
            cpu_v1: v1("cpu").map(|(dir, _)| dir),
            freezer_v1: v1("freezer"),
        }
    }

    /// Reads `/proc/self/cgroup` and `/proc/self/mountinfo` (once, at start).
    pub fn discover() -> io::Result<CgroupDirs> {
        let memberships = parse_memberships(&std::fs::read_to_string(PROC_SELF_CGROUP)?);
        let mounts = parse_mounts(&std::fs::read_to_string(PROC_SELF_MOUNTINFO)?);
        Ok(CgroupDirs::resolve(&memberships, &mounts))
    }

    /// The `cpu.stat` files that may count throttling, best first: v2's (`throttled_usec`
    /// once the cpu controller is enabled for the cgroup), then v1's (`throttled_time`).
    pub fn cpu_stat_candidates(&self) -> Vec<PathBuf> {
        self.v2
            .iter()
            .chain(&self.cpu_v1)
            .map(|d| d.join("cpu.stat"))
            .collect()
    }

    /// The files whose modification means a freezer acted on this process: v2's
    /// `cgroup.events`, and v1's `freezer.state` of its cgroup and every ancestor (the
    /// hierarchy's root has none).
    pub fn freezer_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.v2.iter().map(|d| d.join("cgroup.events")).collect();
        if let Some((dir, root)) = &self.freezer_v1 {
            files.extend(
                dir.ancestors()
                    .take_while(|d| d.starts_with(root) && *d != root.as_path())
                    .map(|d| d.join("freezer.state")),
            );
        }
        files
    }

    /// Whether the process sits in a v1 freezer cgroup other than the root.
    pub fn in_v1_freezer_cgroup(&self) -> bool {
        self.freezer_v1
            .as_ref()
            .is_some_and(|(dir, root)| dir != root)
    }
}

/// The cumulative throttled time of a `cpu.stat`, in nanoseconds: v2 `throttled_usec`,
/// v1 `throttled_time` (already ns). Summed over CPUs by the kernel: on a machine with
/// several CPUs it can grow faster than the clock.
pub fn parse_throttled_ns(cpu_stat: &str) -> Option<i64> {
    cpu_stat.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        let value: i64 = value.trim().parse().ok()?;
        match key {
            "throttled_usec" => Some(value.saturating_mul(1_000)),
            "throttled_time" => Some(value),
            _ => None,
        }
    })
}

/// The `frozen` line of a v2 `cgroup.events`.
pub fn parse_frozen(cgroup_events: &str) -> Option<bool> {
    cgroup_events
        .lines()
        .find_map(|l| l.strip_prefix("frozen "))
        .map(|v| v.trim() == "1")
}

/// Reads the cgroup's throttled time from a `cpu.stat` held open.
pub struct Throttle {
    file: File,
    path: PathBuf,
}

impl Throttle {
    /// The first candidate that exists and counts throttling.
    pub fn open(candidates: &[PathBuf]) -> Option<Throttle> {
        candidates.iter().find_map(|path| {
            let throttle = Throttle {
                file: File::open(path).ok()?,
                path: path.clone(),
            };
            throttle.read_ns().ok().map(|_| throttle)
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Cumulative throttled time, ns.
    pub fn read_ns(&self) -> io::Result<i64> {
        let mut buf = [0u8; CPU_STAT_MAX_BYTES];
        let n = self.file.read_at(&mut buf, 0)?;
        parse_throttled_ns(&String::from_utf8_lossy(&buf[..n])).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no throttled time in {}", self.path.display()),
            )
        })
    }
}

/// A non-blocking inotify descriptor watching the freezer's files for `IN_MODIFY`.
pub struct FreezerWatch {
    fd: OwnedFd,
    watched: Vec<PathBuf>,
    /// Modifications seen since start (an overflowed queue counts as one).
    events_total: i64,
}

impl FreezerWatch {
    /// Watches every file of `files` that can be watched; `None` if none can.
    pub fn open(files: &[PathBuf]) -> Option<FreezerWatch> {
        // SAFETY: inotify_init1 has no memory preconditions; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let watched: Vec<PathBuf> = files
            .iter()
            .filter(|path| {
                let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
                    return false;
                };
                // SAFETY: `c` is a valid NUL-terminated path; the fd is an inotify fd.
                unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_MODIFY) >= 0 }
            })
            .cloned()
            .collect();
        (!watched.is_empty()).then_some(FreezerWatch {
            fd,
            watched,
            events_total: 0,
        })
    }

    pub fn watched(&self) -> &[PathBuf] {
        &self.watched
    }

    /// Drains the queued events (never blocks); returns the running total and how many
    /// were new.
    pub fn poll(&mut self) -> (i64, i64) {
        let mut new = 0;
        let mut buf = [0u8; INOTIFY_BUFFER_BYTES];
        loop {
            // SAFETY: `buf` is writable for its length; the fd is non-blocking.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    INOTIFY_BUFFER_BYTES,
                )
            };
            if n <= 0 {
                break; // EAGAIN: drained (or an error, which reads as no news)
            }
            new += count_inotify_events(&buf[..n as usize]);
        }
        self.events_total += new;
        (self.events_total, new)
    }
}

/// How many `struct inotify_event`s a read returned (each is 16 bytes plus its name).
fn count_inotify_events(buf: &[u8]) -> i64 {
    const HEADER: usize = 16;
    let mut count = 0;
    let mut at = 0;
    while at + HEADER <= buf.len() {
        let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().expect("4 bytes"));
        at += HEADER + len as usize;
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup rw,relatime shared:9 - tmpfs tmpfs rw,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
33 31 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
34 31 0:29 / /sys/fs/cgroup/freezer rw,relatime shared:12 - cgroup cgroup rw,freezer
35 31 0:30 / /sys/fs/cgroup/systemd rw,relatime shared:13 - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn a_hybrid_machine_has_all_three_directories() {
        let members = parse_memberships(
            "12:freezer:/jobs/a\n4:cpu,cpuacct:/sw\n1:name=systemd:/x\n0::/sw.service\n",
        );
        let dirs = CgroupDirs::resolve(&members, &parse_mounts(HYBRID_MOUNTINFO));
        assert_eq!(
            dirs.v2,
            Some(PathBuf::from("/sys/fs/cgroup/unified/sw.service"))
        );
        assert_eq!(
            dirs.cpu_v1,
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/sw"))
        );
        assert!(dirs.in_v1_freezer_cgroup());
        assert_eq!(
            dirs.cpu_stat_candidates(),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified/sw.service/cpu.stat"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/sw/cpu.stat"),
            ]
        );
        assert_eq!(
            dirs.freezer_files(),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified/sw.service/cgroup.events"),
                PathBuf::from("/sys/fs/cgroup/freezer/jobs/a/freezer.state"),
                PathBuf::from("/sys/fs/cgroup/freezer/jobs/freezer.state"),
            ],
            "the cgroup and every ancestor below the root"
        );
    }

    #[test]
    fn separately_mounted_cpu_and_the_root_freezer_cgroup() {
        let mounts = parse_mounts(
            "33 31 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
             34 31 0:29 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n",
        );
        let dirs = CgroupDirs::resolve(&parse_memberships("6:freezer:/\n1:cpu:/\n"), &mounts);
        assert_eq!(dirs.cpu_v1, Some(PathBuf::from("/sys/fs/cgroup/cpu")));
        assert!(!dirs.in_v1_freezer_cgroup());
        assert!(
            dirs.freezer_files().is_empty(),
            "{:?}",
            dirs.freezer_files()
        );
        assert_eq!(dirs.v2, None);
    }

    #[test]
    fn pure_v2_and_a_container_s_subtree_mount() {
        let mounts = parse_mounts(
            "40 39 0:30 /kubepods/pod1/c1 /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        let dirs = CgroupDirs::resolve(&parse_memberships("0::/kubepods/pod1/c1\n"), &mounts);
        assert_eq!(dirs.v2, Some(PathBuf::from("/sys/fs/cgroup")));
        let elsewhere = CgroupDirs::resolve(&parse_memberships("0::/other\n"), &mounts);
        assert_eq!(elsewhere.v2, None, "a cgroup the mount does not show");
    }

    #[test]
    fn mount_points_are_unescaped() {
        let mounts = parse_mounts("1 0 0:1 / /mnt/my\\040cgroups rw - cgroup2 none rw\n");
        assert_eq!(mounts[0].mount_point, PathBuf::from("/mnt/my cgroups"));
    }

    #[test]
    fn throttled_time_in_both_versions() {
        let v1 = "nr_periods 14\nnr_throttled 11\nthrottled_time 8912288479\nnr_bursts 0\n";
        assert_eq!(parse_throttled_ns(v1), Some(8_912_288_479));
        let v2 = "usage_usec 100\nnr_throttled 3\nthrottled_usec 2500\n";
        assert_eq!(parse_throttled_ns(v2), Some(2_500_000));
        assert_eq!(
            parse_throttled_ns("usage_usec 100\nuser_usec 50\n"),
            None,
            "v2 without the cpu controller"
        );
    }

    #[test]
    fn the_frozen_line() {
        assert_eq!(parse_frozen("populated 1\nfrozen 1\n"), Some(true));
        assert_eq!(parse_frozen("populated 1\nfrozen 0\n"), Some(false));
        assert_eq!(parse_frozen("populated 1\n"), None);
    }

    #[test]
    fn inotify_events_are_counted_with_their_names() {
        let mut buf = vec![0u8; 16];
        buf.extend([0u8; 12]);
        buf.extend(16u32.to_ne_bytes());
        buf.extend([0u8; 16]);
        assert_eq!(count_inotify_events(&buf), 2);
    }

    #[test]
    fn a_write_to_a_watched_file_is_one_event_read_later() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("freezer.state");
        std::fs::write(&file, "THAWED\n").unwrap();
        let mut watch = FreezerWatch::open(&[file.clone(), dir.path().join("missing")]).unwrap();
        assert_eq!(watch.watched(), std::slice::from_ref(&file));
        assert_eq!(watch.poll(), (0, 0));
        std::fs::write(&file, "FROZEN\n").unwrap();
        assert_eq!(watch.poll(), (1, 1));
        assert_eq!(watch.poll(), (1, 0));
    }
}
