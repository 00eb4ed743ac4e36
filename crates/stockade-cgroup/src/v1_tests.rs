//! v1 driver against the fake v1 mounts of `fake.rs`.

use std::fs;
use std::os::fd::AsRawFd;

use crate::fake::{self, read};
use crate::{CgroupError, Limits, Stats, Version};

const SEPARATE: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "freezer"];

fn limits() -> Limits {
    Limits {
        cpus: Some(0.5),
        memory_bytes: Some(64 << 20),
        pids: Some(16),
    }
}

#[test]
fn create_makes_one_directory_per_hierarchy_and_writes_limits() {
    let (tmp, driver) = fake::v1_mounts(&SEPARATE);
    assert_eq!(driver.version(), Version::V1);
    assert_eq!(
        driver.describe(),
        "v1 (memory, pids, cpu, cpuacct, freezer)"
    );
    let cg = driver.create("sbx-1", &limits()).unwrap();
    let at = |mount: &str| tmp.path().join(mount).join("stockade/sbx-1");
    let expected: Vec<_> = SEPARATE.iter().map(|m| at(m)).collect();
    assert_eq!(cg.paths(), expected);
    let bytes = (64u64 << 20).to_string();
    assert_eq!(read(at("memory").join("memory.limit_in_bytes")), bytes);
    assert_eq!(
        read(at("memory").join("memory.memsw.limit_in_bytes")),
        bytes
    );
    // TCP buffers: charged apart on v1, capped at a quarter of the limit.
    assert_eq!(
        read(at("memory").join("memory.kmem.tcp.limit_in_bytes")),
        (16u64 << 20).to_string()
    );
    assert_eq!(read(at("pids").join("pids.max")), "16");
    assert_eq!(read(at("cpu").join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(at("cpu").join("cpu.cfs_quota_us")), "50000");
    assert!(cg.dir_fd_v2().is_none());
}

#[test]
fn co_mounted_cpu_and_cpuacct_share_one_directory() {
    let (tmp, driver) = fake::v1_mounts(&["cpu,cpuacct", "memory", "pids"]);
    assert_eq!(
        driver.describe(),
        "v1 (memory, pids, cpu, cpuacct; missing: freezer)"
    );
    let cg = driver.create("co", &limits()).unwrap();
    assert_eq!(cg.paths().len(), 3);
    let cpu = tmp.path().join("cpu,cpuacct/stockade/co");
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "50000");
    fs::write(cpu.join("cpuacct.usage"), "1500000000\n").unwrap();
    assert_eq!(cg.stats().cpu_seconds, 1.5);
    // Without a freezer, kill_all still works (kills without freezing).
    cg.destroy().unwrap();
    assert!(!cpu.exists());
}

#[test]
fn skips_memsw_when_swap_accounting_is_off() {
    let (tmp, driver) = fake::v1_mounts(&SEPARATE);
    fs::write(tmp.path().join("fake.noswap"), "").unwrap();
    driver.create("noswap", &limits()).unwrap();
    let dir = tmp.path().join("memory/stockade/noswap");
    assert!(!dir.join("memory.memsw.limit_in_bytes").exists());
    assert_eq!(
        read(dir.join("memory.limit_in_bytes")),
        (64u64 << 20).to_string()
    );
}

#[test]
fn refuses_a_limit_whose_hierarchy_is_not_mounted() {
    let (tmp, driver) = fake::v1_mounts(&["memory", "cpu"]);
    let err = driver.create("nopids", &limits()).unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::ControllerMissing {
                controller: "pids",
                ..
            }
        ),
        "{err}"
    );
    assert!(!tmp.path().join("memory/stockade/nopids").exists());
}

#[test]
fn a_failed_create_removes_the_directories_it_made() {
    let (tmp, driver) = fake::v1_mounts(&["memory", "pids"]);
    // A leftover in the second hierarchy only.
    fs::create_dir_all(tmp.path().join("pids/stockade/left")).unwrap();
    fs::write(tmp.path().join("pids/stockade/left/cgroup.procs"), "").unwrap();
    let err = driver.create("left", &Limits::default()).unwrap_err();
    assert!(matches!(err, CgroupError::AlreadyExists { .. }), "{err}");
    assert!(!tmp.path().join("memory/stockade/left").exists());
}

#[test]
fn add_pid_writes_every_hierarchy() {
    let (_tmp, driver) = fake::v1_mounts(&SEPARATE);
    let cg = driver.create("pid", &Limits::default()).unwrap();
    cg.add_pid(999).unwrap();
    for dir in cg.paths() {
        assert_eq!(read(dir.join("cgroup.procs")), "999", "{}", dir.display());
    }
    assert_eq!(cg.pids(), vec![999]);
}

#[test]
fn stats_read_every_counter() {
    let (tmp, driver) = fake::v1_mounts(&SEPARATE);
    let cg = driver.create("stats", &limits()).unwrap();
    let at = |mount: &str| tmp.path().join(mount).join("stockade/stats");
    fs::write(at("cpuacct").join("cpuacct.usage"), "2500000000\n").unwrap();
    fs::write(at("memory").join("memory.usage_in_bytes"), "1048576\n").unwrap();
    fs::write(at("memory").join("memory.max_usage_in_bytes"), "33554432\n").unwrap();
    fs::write(
        at("memory").join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    )
    .unwrap();
    fs::write(
        at("memory").join("memory.kmem.tcp.max_usage_in_bytes"),
        "4194304\n",
    )
    .unwrap();
    fs::write(at("pids").join("pids.current"), "2\n").unwrap();
    fs::write(at("pids").join("pids.peak"), "9\n").unwrap();
    fs::write(at("pids").join("pids.events"), "max 4\n").unwrap();
    let expected = Stats {
        cpu_seconds: 2.5,
        memory_current: 1 << 20,
        memory_peak: 32 << 20,
        pids_current: 2,
        pids_peak: Some(9),
        oom_kills: 3,
        pids_limit_hits: 4,
        socket_memory: 4 << 20,
    };
    assert_eq!(cg.stats(), expected);
}

#[test]
fn oom_notifier_registers_its_eventfd_with_event_control() {
    let (tmp, driver) = fake::v1_mounts(&SEPARATE);
    let cg = driver.create("oom", &limits()).unwrap();
    let fd = cg.oom_notifier().unwrap();
    let line = read(tmp.path().join("memory/stockade/oom/cgroup.event_control"));
    let numbers: Vec<i32> = line.split(' ').map(|n| n.parse().unwrap()).collect();
    assert_eq!(numbers.len(), 2, "{line}");
    assert_eq!(numbers[0], fd.as_raw_fd());
}

#[test]
fn kill_all_leaves_the_freezer_thawed_and_destroy_removes_every_directory() {
    let (tmp, driver) = fake::v1_mounts(&SEPARATE);
    let cg = driver.create("gone", &limits()).unwrap();
    cg.kill_all();
    assert_eq!(
        read(tmp.path().join("freezer/stockade/gone/freezer.state")),
        "THAWED"
    );
    let again = driver.open_existing("gone").unwrap();
    assert_eq!(driver.list(), vec!["gone"]);
    cg.destroy().unwrap();
    for mount in SEPARATE {
        assert!(
            !tmp.path().join(mount).join("stockade/gone").exists(),
            "{mount}"
        );
    }
    again.destroy().unwrap();
    assert!(driver.list().is_empty());
    assert!(driver.open_existing("gone").is_none());
}
