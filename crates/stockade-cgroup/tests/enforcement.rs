//! The kernel enforces the limits and the driver reports it: OOM kills and
//! refused forks show up in the stats, and the OOM notifier fires. Needs
//! root and a cgroup v1 or v2 file system; see `common/mod.rs`.

mod common;

use std::os::fd::AsFd;
use std::time::Duration;

use common::{driver, eventually, readable_within, Gated, Guard};
use stockade_cgroup::{Cgroup, Limits};

#[test]
#[ignore = "needs root and cgroups"]
fn memory_limit_oom_kills_an_allocator_and_the_notifier_fires() {
    let driver = driver();
    let limit = 32u64 << 20;
    let limits = Limits {
        memory_bytes: Some(limit),
        ..Limits::default()
    };
    let cg = Guard::create(&driver, "oom", &limits);
    let notifier = cg.oom_notifier().unwrap();
    assert!(
        !readable_within(notifier.as_fd(), Duration::ZERO),
        "fired before any OOM"
    );
    // tail keeps a newline-free stream in memory until EOF: 200 MiB here.
    let mut sh = Gated::spawn("head -c 200M /dev/zero | tail");
    cg.add_pid(sh.pid()).unwrap();
    sh.release();
    let status = sh
        .wait(Duration::from_secs(30))
        .expect("the allocation ended");
    assert!(
        !status.success(),
        "200 MiB fit in a 32 MiB limit: {status:?}"
    );
    assert!(
        readable_within(notifier.as_fd(), Duration::from_secs(5)),
        "the OOM notifier did not fire"
    );
    let stats = cg.stats();
    assert!(stats.oom_kills >= 1, "{stats:?}");
    assert!(
        stats.memory_peak > 0 && stats.memory_peak <= limit,
        "{stats:?}"
    );
    Cgroup::drain_notifier(notifier.as_fd());
    assert!(
        !readable_within(notifier.as_fd(), Duration::ZERO),
        "drain left events"
    );
}

#[test]
#[ignore = "needs root and cgroups"]
fn pids_limit_refuses_forks_and_counts_the_refusals() {
    let driver = driver();
    let limits = Limits {
        pids: Some(8),
        ..Limits::default()
    };
    let cg = Guard::create(&driver, "pids", &limits);
    let mut sh = Gated::spawn("i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done; wait");
    cg.add_pid(sh.pid()).unwrap();
    sh.release();
    assert!(
        eventually(Duration::from_secs(10), || cg.stats().pids_limit_hits >= 1),
        "{:?}",
        cg.stats()
    );
    let stats = cg.stats();
    assert!(stats.pids_current <= 8, "{stats:?}");
    if let Some(peak) = stats.pids_peak {
        assert!((2..=8).contains(&peak), "{stats:?}");
    }
    assert!(cg.pids().len() <= 8);
    cg.kill_all();
    assert!(cg.pids().is_empty());
}

#[test]
#[ignore = "needs root and cgroups"]
fn a_process_within_its_limits_is_left_alone() {
    let driver = driver();
    let limits = Limits {
        cpus: Some(1.0),
        memory_bytes: Some(64 << 20),
        pids: Some(8),
    };
    let cg = Guard::create(&driver, "calm", &limits);
    let mut sh = Gated::spawn("head -c 8M /dev/zero | tail >/dev/null; exit 0");
    cg.add_pid(sh.pid()).unwrap();
    sh.release();
    let status = sh
        .wait(Duration::from_secs(30))
        .expect("the shell finished");
    assert!(status.success(), "{status:?}");
    let stats = cg.stats();
    assert_eq!(stats.oom_kills, 0, "{stats:?}");
    assert_eq!(stats.pids_limit_hits, 0, "{stats:?}");
    assert!(stats.cpu_seconds > 0.0, "{stats:?}");
}
