//! The disk limit is a cap the kernel enforces: whatever the workload
//! writes (one large file, `fallocate`, many small files, paths deeper
//! than PATH_MAX), writes past `--disk` fail inside the sandbox, the host
//! holds at most the limit (plus 1 MiB), the breach is reported, and
//! nothing is left afterwards. Needs root and the scratch filesystem
//! (btrfs; CI installs btrfs-progs).

mod common;

use std::path::PathBuf;

use common::*;

const LIMIT: u64 = 50 << 20;
const SLACK: u64 = 1 << 20;

/// The scratch subvolume of the slot whose host id base a sandbox printed.
fn subvol_of(base: &str) -> PathBuf {
    let base: u64 = base.trim().parse().unwrap();
    let slot = (base - 2_000_000_000) / 65536;
    PathBuf::from(format!("/run/stockade-scratch/s{slot}"))
}

/// Runs `script` under `--disk 50M`; it prints the sandbox's host id base
/// first. Returns the report and stdout, after checking the cap held.
fn fill(env: &Env, script: &str) -> (serde_json::Value, String) {
    let full = format!("awk '{{print $2}}' /proc/self/uid_map; {script}");
    let (out, report) = env.run_report(&[
        "--disk",
        "50M",
        "--timeout",
        "120s",
        "--",
        "sh",
        "-c",
        &full,
    ]);
    let text = stdout(&out);
    assert_eq!(report["usage"]["disk_enforced"], "kernel", "{report}");
    let used = report["usage"]["disk_bytes"].as_u64().unwrap();
    assert!(
        used <= LIMIT + SLACK,
        "{used} bytes held against a 50M limit: {report}"
    );
    // The workload was not killed for it: the kernel refused the writes.
    assert_eq!(report["outcome"], "exited", "{report} {}", stderr(&out));
    let base = text.lines().next().unwrap_or_default().to_string();
    // Nothing of the sandbox's scratch space is left.
    let sv = subvol_of(&base);
    assert!(
        eventually(|| !sv.exists()),
        "{} is still there after the run",
        sv.display()
    );
    (report, text)
}

fn disk_violation(report: &serde_json::Value) -> bool {
    report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["kind"] == "disk-limit")
}

#[test]
#[ignore = "needs root and btrfs: creates namespaces, cgroups and scratch subvolumes"]
fn a_large_write_stops_at_the_limit_and_is_reported() {
    let env = Env::new();
    let (report, text) = fill(
        &env,
        "dd if=/dev/zero of=/workspace/big bs=1M count=300 2>/dev/null; echo dd=$?; \
         echo more > /home/agent/x 2>/dev/null; echo home=$?; sleep 0.5; echo SURVIVED",
    );
    assert!(text.contains("dd=1"), "{text}");
    assert!(text.contains("SURVIVED"), "{text}");
    assert!(disk_violation(&report), "{report}");
}

#[test]
#[ignore = "needs root and btrfs: creates namespaces, cgroups and scratch subvolumes"]
fn fallocate_cannot_reserve_past_the_limit() {
    let env = Env::new();
    let (_, text) = fill(
        &env,
        "fallocate -l 20G /workspace/huge; echo fallocate=$?; \
         fallocate -l 40M /workspace/fits; echo fits=$?",
    );
    assert!(text.contains("fallocate=1"), "{text}");
    assert!(text.contains("fits=0"), "{text}");
}

#[test]
#[ignore = "needs root and btrfs: creates namespaces, cgroups and scratch subvolumes"]
fn many_small_files_stop_at_the_limit() {
    let env = Env::new();
    let script = r#"python3 - <<'PY'
import os
n = 0
try:
    while n < 2000000:
        with open("/workspace/f%d" % n, "w") as f:
            f.write("x" * 3000)
        n += 1
except OSError as e:
    print("stopped", n, e.errno)
PY"#;
    let (report, text) = fill(&env, script);
    assert!(
        text.contains(" 122") || text.contains(" 28"),
        "the files did not stop at the limit: {text}"
    );
    assert!(disk_violation(&report), "{report}");
}

#[test]
#[ignore = "needs root and btrfs: creates namespaces, cgroups and scratch subvolumes"]
fn paths_deeper_than_path_max_count_too() {
    let env = Env::new();
    // 2000 levels of 30-byte names, 100 KB per level: 200 MB wanted,
    // paths of 60,000 bytes (relative steps: the shell's `cd` would give
    // up at PATH_MAX, the kernel does not).
    let script = r#"python3 - <<'PY'
import os
os.chdir("/workspace")
i = 0
try:
    while i < 2000:
        os.mkdir("d" * 30)
        os.chdir("d" * 30)
        with open("f", "wb") as f:
            f.write(b"\0" * 100000)
        i += 1
except OSError as e:
    print("stopped", e.errno)
print("levels=%d" % i)
PY"#;
    let (report, text) = fill(&env, script);
    let levels: u32 = text
        .split("levels=")
        .nth(1)
        .and_then(|t| t.trim().parse().ok())
        .unwrap();
    // Far deeper than PATH_MAX (4096 bytes is 132 levels) before the cap.
    assert!(levels > 300 && levels < 2000, "{text}");
    assert!(disk_violation(&report), "{report}");
}

#[test]
#[ignore = "needs root and btrfs: creates namespaces, cgroups and scratch subvolumes"]
fn a_nested_subvolume_cannot_escape_the_cap() {
    let env = Env::new();
    let script = r#"python3 - <<'PY'
import fcntl, os, struct
fd = os.open("/workspace", os.O_RDONLY)
arg = bytearray(struct.pack("q", 0) + b"escape".ljust(4088, b"\0"))
try:
    fcntl.ioctl(fd, 0x5000940e, arg)
    print("subvolume created")
except OSError as e:
    print("refused", e.errno)
PY
dd if=/dev/zero of=/workspace/escape/big bs=1M count=200 2>/dev/null
dd if=/dev/zero of=/workspace/big bs=1M count=200 2>/dev/null; true"#;
    let (_, text) = fill(&env, script);
    assert!(text.contains("refused 1"), "{text}");
    // `cp --reflink` (FICLONE, the same ioctl type) still works.
    let out = env.sh(
        "head -c 100000 /dev/urandom > /workspace/a && cp --reflink=always /workspace/a /workspace/b && cmp /workspace/a /workspace/b && echo cloned",
    );
    assert!(
        stdout(&out).contains("cloned"),
        "{} {}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn without_the_scratch_filesystem_a_run_ending_over_the_limit_is_still_reported() {
    // The polling fallback: a run that writes past the limit and ends
    // before the next sample used to exit 0 with no violation.
    let env = Env::new().with_env("STOCKADE_SCRATCH", "off");
    let (out, report) = env.run_report(&[
        "--disk",
        "10M",
        "--",
        "sh",
        "-c",
        "head -c 30000000 /dev/zero > /workspace/f",
    ]);
    assert_eq!(code(&out), 0);
    assert_eq!(report["usage"]["disk_enforced"], "polling");
    assert!(disk_violation(&report), "{report}");
}

#[test]
#[ignore = "needs root and btrfs: creates namespaces, cgroups and scratch subvolumes"]
fn gc_deletes_the_scratch_of_a_killed_supervisor() {
    let env = Env::new();
    let (mut child, line) = env.start_sh(
        "awk '{print $2}' /proc/self/uid_map; head -c 1000000 /dev/zero > /workspace/f; sleep 60",
    );
    let sv = subvol_of(&line);
    assert!(sv.exists());
    // SIGKILL of the supervisor: no teardown runs; its sandbox dies with it.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(eventually(|| {
        let out = env.cmd().arg("gc").output().unwrap();
        assert_eq!(code(&out), 0);
        !sv.exists()
    }));
}
