//! End to end: a REAL full-VM pause (QEMU `stop`/`cont` through QMP) is detected
//! by stallwatch running inside the guest, through its RTC reference.
//!
//! Inside a VM that the hypervisor stops, every guest clock stops with it
//! (MONOTONIC, BOOTTIME, REALTIME), so only a host-backed reference such as the
//! CMOS RTC can see the pause. This test boots a busybox initramfs with a static
//! stallwatch under QEMU (TCG, no KVM needed), pauses it for 10 s of host time
//! and asserts the reported `vm_pause` event. The work is done by
//! `scripts/vm-pause-test.sh`; this test builds the static binary and runs it.
//!
//! It needs root (or passwordless sudo) for `apt-get install qemu-system-x86
//! busybox-static` and `apt-get download` of a Debian kernel, done by
//! `scripts/vm-kernel.sh`. If any of that fails, the test FAILS: it never skips.
//! Takes about a minute once the kernel is cached and the static build is warm.

use std::path::Path;
use std::process::{Command, Output};

fn show(o: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn vm_pause_is_detected_by_the_rtc_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));

    // 1. QEMU, busybox-static and a kernel. Fail (never skip) when they can't be had.
    let kernel = Command::new("bash")
        .arg(root.join("scripts/vm-kernel.sh"))
        .current_dir(root)
        .output()
        .expect("cannot run scripts/vm-kernel.sh");
    assert!(
        kernel.status.success(),
        "scripts/vm-kernel.sh could not install qemu-system-x86/busybox-static or obtain a \
         Debian kernel; this test needs them and does not skip.\n{}",
        show(&kernel)
    );
    let vmlinuz = String::from_utf8_lossy(&kernel.stdout).trim().to_string();
    assert!(
        Path::new(&vmlinuz).is_file(),
        "scripts/vm-kernel.sh printed {vmlinuz:?}, which is not a file\n{}",
        show(&kernel)
    );

    // 2. A static stallwatch for the initramfs (only static binaries run there).
    // Its own target dir: the cargo running this test holds the lock on target/.
    let build = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--bin",
            "stallwatch",
            "--target-dir",
            "target/static",
        ])
        .current_dir(root)
        // CARGO_ENCODED_RUSTFLAGS would take precedence over RUSTFLAGS.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .output()
        .expect("cannot run cargo build");
    assert!(
        build.status.success(),
        "static build of stallwatch failed\n{}",
        show(&build)
    );
    let bin = root.join("target/static/x86_64-unknown-linux-gnu/release/stallwatch");
    assert!(bin.is_file(), "static build produced no {}", bin.display());

    // 3. Boot, pause 10 s, resume, read /api/v1/freezes from the guest console.
    let run = Command::new("bash")
        .arg(root.join("scripts/vm-pause-test.sh"))
        .arg(&bin)
        .current_dir(root)
        .output()
        .expect("cannot run scripts/vm-pause-test.sh");
    let stdout = String::from_utf8_lossy(&run.stdout);
    // Shown with --nocapture, and kept in the test log either way.
    println!("{}", stdout.trim());
    assert!(
        run.status.success() && stdout.lines().any(|l| l.starts_with("PASS vm-pause:")),
        "stallwatch did not report the VM pause correctly\n{}",
        show(&run)
    );
}
