//! The cgroup v2 driver on a real kernel: `tests/cgroup-v2/run.sh` boots a
//! Debian kernel under QEMU (TCG, no KVM) with cgroup2 mounted at
//! /sys/fs/cgroup, runs this build of `stockade` in the guest and prints one
//! `V2CHECK <name> PASS|FAIL <detail>` line per check: `stockade run` as
//! root and as a user with a delegated subtree, and `stockade-runc` driven
//! as an engine drives it (cgroupfs and systemd `cgroupsPath`, limits,
//! update, pause, a fork bomb, an OOM kill, a limit without its controller).
//! Needs root, qemu-system-x86, busybox-static and apt access for the kernel
//! package (cached in `STOCKADE_QEMU_CACHE`, default /var/cache/stockade-qemu).

use std::path::Path;
use std::process::{Command, Stdio};

/// Every check the guest scenario must report, in order.
const CHECKS: [&str; 23] = [
    "doctor",
    "hello",
    "memory",
    "pids",
    "cpu",
    "timeout",
    "cleanup",
    "version",
    "rootless-hello",
    "rootless-auto-delegation",
    "rootless-memory",
    "rootless-pids",
    "rootless-cpu",
    "rootless-cleanup",
    // stockade-runc on a bundle made in the guest (tests/cgroup-v2/run.sh).
    "oci-cgroup",
    "oci-limits",
    "oci-update-pause",
    "oci-run-delete",
    "oci-pids",
    "oci-memory",
    "oci-systemd",
    "oci-missing-controller",
    "oci-cleanup",
];

#[test]
#[ignore = "needs root and qemu-system-x86: boots a kernel with cgroup v2"]
fn cgroup_v2_limits_and_cleanup_in_a_qemu_guest() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/cgroup-v2/run.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_stockade"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let console = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");

    let lines: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("V2CHECK "))
        .collect();
    let mut problems = Vec::new();
    for name in CHECKS {
        let prefix = format!("V2CHECK {name} ");
        match lines.iter().find(|l| l.starts_with(&prefix)) {
            None => problems.push(format!("check {name} missing")),
            Some(l) if !l[prefix.len()..].starts_with("PASS") => problems.push(l.to_string()),
            Some(_) => {}
        }
    }
    // Any other line that did not pass (a repeated or unexpected check).
    for l in &lines {
        let passed = l.split_whitespace().nth(2) == Some("PASS");
        if !passed && !problems.iter().any(|p| p == l) {
            problems.push(l.to_string());
        }
    }
    assert!(
        problems.is_empty(),
        "cgroup v2 checks failed:\n  {}\n{console}",
        problems.join("\n  ")
    );
    assert!(
        out.status.success(),
        "run.sh exited with {}\n{console}",
        out.status
    );
}
