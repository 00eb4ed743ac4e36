//! v2 driver against the fake cgroup2 tree of `fake.rs`.

use std::fs;
use std::os::fd::AsFd;

use crate::fake::{self, read};
use crate::fsio::readable;
use crate::{Cgroup, CgroupError, Limits, Stats, Version};

const ALL: &str = "cpuset cpu io memory hugetlb pids rdma misc";

fn limits() -> Limits {
    Limits {
        cpus: Some(1.5),
        memory_bytes: Some(64 << 20),
        pids: Some(16),
    }
}

#[test]
fn create_enables_controllers_and_writes_every_limit() {
    let (tmp, driver) = fake::v2_root(ALL);
    assert_eq!(driver.version(), Version::V2);
    let cg = driver.create("sbx-1", &limits()).unwrap();
    let root = tmp.path();
    let dir = root.join("stockade/sbx-1");
    assert_eq!(
        read(root.join("cgroup.subtree_control")),
        "+memory +pids +cpu"
    );
    assert_eq!(
        read(root.join("stockade/cgroup.subtree_control")),
        "+memory +pids +cpu"
    );
    assert_eq!(read(dir.join("memory.max")), (64u64 << 20).to_string());
    assert_eq!(read(dir.join("memory.swap.max")), "0");
    assert_eq!(read(dir.join("memory.oom.group")), "1");
    assert_eq!(read(dir.join("pids.max")), "16");
    assert_eq!(read(dir.join("cpu.max")), "150000 100000");
    assert_eq!(cg.paths(), vec![dir]);
    assert!(cg.dir_fd_v2().is_some());
    // The parent distributes controllers, so it must never get a process.
    assert_eq!(read(root.join("stockade/cgroup.procs")), "");
}

#[test]
fn create_without_limits_leaves_resources_unlimited() {
    let (tmp, driver) = fake::v2_root(ALL);
    driver.create("free", &Limits::default()).unwrap();
    let dir = tmp.path().join("stockade/free");
    assert_eq!(read(dir.join("memory.max")), "max");
    assert_eq!(read(dir.join("pids.max")), "max");
    assert_eq!(read(dir.join("cpu.max")), "max 100000");
    assert_eq!(read(dir.join("memory.oom.group")), "1");
}

#[test]
fn does_not_rewrite_subtree_control_that_already_lists_the_controllers() {
    let (tmp, driver) = fake::v2_root(ALL);
    fs::write(
        tmp.path().join("cgroup.subtree_control"),
        "cpu io memory pids\n",
    )
    .unwrap();
    driver.create("a", &limits()).unwrap();
    assert_eq!(
        read(tmp.path().join("cgroup.subtree_control")),
        "cpu io memory pids"
    );
}

#[test]
fn skips_the_swap_limit_when_the_kernel_has_no_swap_file() {
    let (tmp, driver) = fake::v2_root(ALL);
    fs::write(tmp.path().join("fake.noswap"), "").unwrap();
    driver.create("noswap", &limits()).unwrap();
    let dir = tmp.path().join("stockade/noswap");
    assert!(!dir.join("memory.swap.max").exists());
    assert_eq!(read(dir.join("memory.max")), (64u64 << 20).to_string());
}

#[test]
fn refuses_a_limit_whose_controller_is_missing_and_leaves_nothing() {
    let (tmp, driver) = fake::v2_root("memory pids");
    assert!(
        driver.describe().ends_with("(memory, pids; missing: cpu)"),
        "{}",
        driver.describe()
    );
    let err = driver.create("nocpu", &limits()).unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::ControllerMissing {
                controller: "cpu",
                ..
            }
        ),
        "{err}"
    );
    assert!(!tmp.path().join("stockade/nocpu").exists());
    let only_memory = Limits {
        memory_bytes: Some(32 << 20),
        ..Limits::default()
    };
    driver.create("nocpu", &only_memory).unwrap();
}

#[test]
fn refuses_a_name_that_already_exists() {
    let (_tmp, driver) = fake::v2_root(ALL);
    driver.create("twice", &Limits::default()).unwrap();
    let err = driver.create("twice", &Limits::default()).unwrap_err();
    assert!(matches!(err, CgroupError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("stockade gc"), "{err}");
}

#[test]
fn refuses_invalid_names_and_limits_before_touching_the_tree() {
    let (tmp, driver) = fake::v2_root(ALL);
    assert!(matches!(
        driver.create("../escape", &Limits::default()),
        Err(CgroupError::InvalidName { .. })
    ));
    let bad = Limits {
        pids: Some(0),
        ..Limits::default()
    };
    assert!(driver.create("ok", &bad).is_err());
    assert!(!tmp.path().join("stockade").exists());
}

#[test]
fn stats_read_every_counter() {
    let (_tmp, driver) = fake::v2_root(ALL);
    let cg = driver.create("stats", &limits()).unwrap();
    let dir = &cg.paths()[0];
    fs::write(
        dir.join("cpu.stat"),
        "usage_usec 2500000\nuser_usec 2000000\n",
    )
    .unwrap();
    fs::write(dir.join("memory.current"), "1048576\n").unwrap();
    fs::write(dir.join("memory.peak"), "33554432\n").unwrap();
    fs::write(dir.join("pids.current"), "3\n").unwrap();
    fs::write(dir.join("pids.peak"), "8\n").unwrap();
    fs::write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\n",
    )
    .unwrap();
    fs::write(dir.join("pids.events"), "max 5\n").unwrap();
    fs::write(dir.join("memory.stat"), "anon 4096\nsock 8192\nfile 0\n").unwrap();
    let expected = Stats {
        cpu_seconds: 2.5,
        memory_current: 1 << 20,
        memory_peak: 32 << 20,
        pids_current: 3,
        pids_peak: Some(8),
        oom_kills: 1,
        pids_limit_hits: 5,
        socket_memory: 8192,
    };
    assert_eq!(cg.stats(), expected);
}

#[test]
fn stats_of_an_old_kernel_without_peak_files_are_zero_or_none() {
    let (_tmp, driver) = fake::v2_root(ALL);
    let cg = driver.create("old", &Limits::default()).unwrap();
    let dir = &cg.paths()[0];
    fs::remove_file(dir.join("memory.peak")).unwrap();
    fs::remove_file(dir.join("pids.peak")).unwrap();
    let stats = cg.stats();
    assert_eq!(stats.memory_peak, 0);
    assert_eq!(stats.pids_peak, None);
}

#[test]
fn oom_notifier_becomes_readable_when_memory_events_changes() {
    let (_tmp, driver) = fake::v2_root(ALL);
    let cg = driver.create("oom", &limits()).unwrap();
    let fd = cg.oom_notifier().unwrap();
    assert!(!readable(fd.as_fd()));
    let events = cg.paths()[0].join("memory.events");
    fs::write(&events, "low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\n").unwrap();
    assert!(readable(fd.as_fd()));
    assert_eq!(cg.stats().oom_kills, 1);
    Cgroup::drain_notifier(fd.as_fd());
    assert!(!readable(fd.as_fd()));
}

#[test]
fn oom_notifier_without_the_memory_controller_says_so() {
    let (_tmp, driver) = fake::v2_root("pids");
    let cg = driver.create("nomem", &Limits::default()).unwrap();
    let err = cg.oom_notifier().unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::ControllerMissing {
                controller: "memory",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn add_pid_writes_cgroup_procs() {
    let (_tmp, driver) = fake::v2_root(ALL);
    let cg = driver.create("pid", &Limits::default()).unwrap();
    cg.add_pid(4321).unwrap();
    assert_eq!(read(cg.paths()[0].join("cgroup.procs")), "4321");
    assert_eq!(cg.pids(), vec![4321]);
}

#[test]
fn list_open_existing_and_destroy_work_together() {
    let (tmp, driver) = fake::v2_root(ALL);
    let a = driver.create("a", &Limits::default()).unwrap();
    driver.create("b", &Limits::default()).unwrap();
    // Directories stockade could not have made are not its business.
    fs::create_dir(tmp.path().join("stockade/Not_Ours")).unwrap();
    assert_eq!(driver.list(), vec!["a", "b"]);
    let again = driver.open_existing("a").unwrap();
    assert!(driver.open_existing("../a").is_none());
    assert!(driver.open_existing("zzz").is_none());
    a.destroy().unwrap();
    assert!(!tmp.path().join("stockade/a").exists());
    again.destroy().unwrap();
    assert_eq!(driver.list(), vec!["b"]);
}

#[test]
fn recreates_the_parent_if_it_was_removed_after_the_first_create() {
    let (tmp, driver) = fake::v2_root(ALL);
    driver
        .create("first", &Limits::default())
        .unwrap()
        .destroy()
        .unwrap();
    fs::remove_dir_all(tmp.path().join("stockade")).unwrap();
    let cg = driver.create("second", &limits()).unwrap();
    assert_eq!(read(cg.paths()[0].join("pids.max")), "16");
}

#[test]
fn describe_names_the_root_and_controllers() {
    let (tmp, driver) = fake::v2_root(ALL);
    let expected = format!("v2 at {} (memory, pids, cpu)", tmp.path().display());
    assert_eq!(driver.describe(), expected);
}

#[test]
fn remove_if_empty_keeps_a_populated_group_and_kills_nothing() {
    let (_tmp, driver) = fake::v2_root(ALL);
    let cg = driver.create("busy", &Limits::default()).unwrap();
    let dir = cg.paths()[0].clone();
    cg.add_pid(4321).unwrap();
    assert!(!driver
        .open_existing("busy")
        .unwrap()
        .remove_if_empty()
        .unwrap());
    assert!(dir.exists());
    fs::write(dir.join("cgroup.procs"), "").unwrap();
    assert!(cg.remove_if_empty().unwrap());
    assert!(!dir.exists());
}
