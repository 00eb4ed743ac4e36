//! Memory a sandbox holds outside its processes counts against its limit:
//! TCP socket buffers filled over its own loopback and never read. Needs
//! root.

mod common;

use common::*;

/// The host's TCP buffer memory in bytes: the kernel's count for the whole
/// protocol (`mem` of the TCP line of /proc/net/sockstat, in pages), which
/// includes every network namespace's sockets. Unlike MemAvailable it does
/// not move with other tenants' compilers and caches.
fn tcp_memory() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap();
    let line = text.lines().find(|l| l.starts_with("TCP:")).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    let pages: u64 = words
        .windows(2)
        .find(|w| w[0] == "mem")
        .and_then(|w| w[1].parse().ok())
        .unwrap();
    pages * 4096
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn unread_socket_buffers_stay_within_the_memory_limit() {
    let env = Env::new();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let before = tcp_memory();
    // The attack aims at 1 GiB in unread loopback sockets (it stops there,
    // so a broken build cannot take the machine down) and holds it 3 s.
    let mut child = env
        .cmd()
        .args(["run", "--memory", "64M", "--timeout", "60s"])
        .args(["--ro-bind", &format!("{data}:/data")])
        .args([
            "--report",
            env.state.path().join("r.json").to_str().unwrap(),
        ])
        .args(["--", "python3", "/data/socket_hog.py", "1073741824", "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The most TCP memory seen while the attack holds its buffers.
    let mut highest = before;
    while child.try_wait().unwrap().is_none() {
        highest = highest.max(tcp_memory());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let sent: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let grew = highest.saturating_sub(before);
    // The limit (on cgroup v1 the buffers have a cap of their own, a
    // quarter of it) and a margin for other tests' connections; without
    // a cap the attack holds 1 GiB.
    let bound = (64u64 << 20) + (64 << 20);
    assert!(
        grew < bound,
        "host TCP memory grew by {grew} bytes (sandbox sent {sent} bytes into unread sockets)"
    );
    assert!(sent < 256 << 20, "{sent} bytes were buffered");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.state.path().join("r.json")).unwrap()).unwrap();
    let sock = report["usage"]["socket_memory_peak_bytes"]
        .as_u64()
        .unwrap();
    assert!(
        sock > 1 << 20,
        "the report does not count the socket memory: {report}"
    );
}
