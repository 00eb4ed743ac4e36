//! Create, populate, kill and remove real cgroups. Needs root and a cgroup
//! v1 or v2 file system; see `common/mod.rs`.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{control_file, driver, eventually, is_dead, unique, Gated, Guard};
use stockade_cgroup::{Limits, Version};

#[test]
#[ignore = "needs root and cgroups"]
fn create_writes_every_limit_to_the_control_files() {
    let driver = driver();
    let limits = Limits {
        cpus: Some(1.5),
        memory_bytes: Some(64 << 20),
        pids: Some(16),
    };
    let cg = Guard::create(&driver, "limits", &limits);
    let bytes = (64u64 << 20).to_string();
    let file = |name: &str| control_file(&cg, name);
    assert_eq!(file("pids.max").as_deref(), Some("16"));
    match driver.version() {
        Version::V1 => {
            assert_eq!(file("memory.limit_in_bytes"), Some(bytes.clone()));
            if let Some(memsw) = file("memory.memsw.limit_in_bytes") {
                assert_eq!(memsw, bytes);
            }
            assert_eq!(file("cpu.cfs_period_us").as_deref(), Some("100000"));
            assert_eq!(file("cpu.cfs_quota_us").as_deref(), Some("150000"));
            assert!(file("memory.oom_control")
                .unwrap()
                .contains("oom_kill_disable 0"));
            assert!(cg.dir_fd_v2().is_none());
        }
        Version::V2 => {
            assert_eq!(file("memory.max"), Some(bytes));
            if let Some(swap) = file("memory.swap.max") {
                assert_eq!(swap, "0");
            }
            assert_eq!(file("cpu.max").as_deref(), Some("150000 100000"));
            assert_eq!(file("memory.oom.group").as_deref(), Some("1"));
            assert!(cg.dir_fd_v2().is_some());
        }
        Version::Polled => panic!("root got the polled driver, which is for ordinary users"),
    }
}

#[test]
#[ignore = "needs root and cgroups"]
fn an_added_process_is_listed_counted_and_killed_by_destroy() {
    let driver = driver();
    let cg = Guard::create(&driver, "sleep", &Limits::default());
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id() as i32;
    cg.add_pid(pid).unwrap();
    assert_eq!(cg.pids(), vec![pid]);
    let stats = cg.stats();
    assert!(stats.pids_current >= 1, "{stats:?}");
    assert!(
        stats.memory_current > 0 || driver.version() == Version::V1,
        "{stats:?}"
    );
    cg.take().destroy().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
}

#[test]
#[ignore = "needs root and cgroups"]
fn add_pid_of_a_process_that_does_not_exist_fails_with_the_pid_in_the_message() {
    let driver = driver();
    let cg = Guard::create(&driver, "nopid", &Limits::default());
    // Pid numbers never reach i32::MAX (pid_max is at most 2^22).
    let err = cg.add_pid(i32::MAX).unwrap_err();
    assert!(err.to_string().contains(&i32::MAX.to_string()), "{err}");
}

#[test]
#[ignore = "needs root and cgroups"]
fn kill_all_kills_a_whole_process_tree() {
    let driver = driver();
    let cg = Guard::create(&driver, "tree", &Limits::default());
    let mut sh = Gated::spawn("sleep 60 & sleep 60 & (sh -c 'sleep 60 & sleep 60' &); wait");
    cg.add_pid(sh.pid()).unwrap();
    sh.release();
    assert!(
        eventually(Duration::from_secs(5), || cg.pids().len() >= 5),
        "{:?}",
        cg.pids()
    );
    let tree = cg.pids();
    cg.kill_all();
    assert!(cg.pids().is_empty(), "{:?}", cg.pids());
    let status = sh
        .wait(Duration::from_secs(5))
        .expect("the shell was killed");
    assert_eq!(status.signal(), Some(9));
    for pid in tree {
        assert!(
            eventually(Duration::from_secs(2), || is_dead(pid)),
            "pid {pid} survived"
        );
    }
}

#[test]
#[ignore = "needs root and cgroups"]
fn kill_all_stops_a_process_that_keeps_forking() {
    let driver = driver();
    let limits = Limits {
        pids: Some(64),
        ..Limits::default()
    };
    let cg = Guard::create(&driver, "forker", &limits);
    let mut sh = Gated::spawn("while :; do (sleep 60 &) ; done");
    cg.add_pid(sh.pid()).unwrap();
    sh.release();
    assert!(eventually(Duration::from_secs(5), || cg.pids().len() >= 10));
    cg.kill_all();
    assert!(cg.pids().is_empty(), "{:?}", cg.pids());
    assert!(sh.wait(Duration::from_secs(5)).is_some());
}

#[test]
#[ignore = "needs root and cgroups"]
fn destroy_removes_every_directory_and_is_idempotent() {
    let driver = driver();
    let cg = Guard::create(&driver, "destroy", &Limits::default()).take();
    let name = cg.name().to_owned();
    let paths = cg.paths();
    assert!(paths.iter().all(|p| p.is_dir()), "{paths:?}");
    assert!(driver.list().contains(&name));
    let second_handle = driver.open_existing(&name).unwrap();
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    cg.add_pid(child.id() as i32).unwrap();
    cg.destroy().unwrap();
    for path in &paths {
        assert!(!path.exists(), "{} is still there", path.display());
    }
    assert!(!driver.list().contains(&name));
    assert!(driver.open_existing(&name).is_none());
    second_handle.destroy().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(9));
}

#[test]
#[ignore = "needs root and cgroups"]
fn a_hundred_creates_and_destroys_leave_nothing_behind() {
    let driver = driver();
    let limits = Limits {
        cpus: Some(1.0),
        memory_bytes: Some(256 << 20),
        pids: Some(128),
    };
    let prefix = unique("many");
    let (mut create_time, mut destroy_time) = (Duration::ZERO, Duration::ZERO);
    let mut parents = Vec::new();
    for i in 0..100 {
        let started = Instant::now();
        let cg = driver.create(&format!("{prefix}-{i}"), &limits).unwrap();
        create_time += started.elapsed();
        if i == 0 {
            parents = cg
                .paths()
                .iter()
                .map(|p| p.parent().unwrap().to_owned())
                .collect();
        }
        let started = Instant::now();
        cg.destroy().unwrap();
        destroy_time += started.elapsed();
    }
    eprintln!(
        "{}: create {:?} and destroy {:?} on average",
        driver.describe(),
        create_time / 100,
        destroy_time / 100
    );
    let left: Vec<String> = driver
        .list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    for parent in parents {
        let stray: Vec<_> = std::fs::read_dir(&parent)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .collect();
        assert!(stray.is_empty(), "{}: {stray:?}", parent.display());
    }
    // Creation is on every sandbox's start path; a sleep or a retry loop
    // creeping into it shows up here long before users notice.
    assert!(
        create_time / 100 < Duration::from_millis(20),
        "create is too slow"
    );
}

#[test]
#[ignore = "needs root and cgroups"]
fn cpu_limit_throttles_a_busy_loop_and_cpu_time_is_accounted() {
    let driver = driver();
    let limits = Limits {
        cpus: Some(0.2),
        ..Limits::default()
    };
    let cg = Guard::create(&driver, "cpu", &limits);
    let mut sh = Gated::spawn("while :; do :; done");
    cg.add_pid(sh.pid()).unwrap();
    sh.release();
    std::thread::sleep(Duration::from_secs(1));
    let used = cg.stats().cpu_seconds;
    // Unthrottled the loop would use a whole CPU second.
    // A group that vanished means another stockade's garbage collection
    // removed it: these tests share the host's `stockade` parent.
    let present = cg.paths().iter().all(|p| p.exists());
    assert!(
        (0.05..0.45).contains(&used),
        "used {used} s of CPU in 1 s at 0.2 CPUs (group present: {present}, pids {:?})",
        cg.pids()
    );
    drop(sh);
}

#[test]
#[ignore = "needs root and cgroups"]
fn remove_if_empty_spares_a_group_with_a_process_in_it() {
    let driver = driver();
    let cg = Guard::create(&driver, "spare", &Limits::default());
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    cg.add_pid(child.id() as i32).unwrap();
    let other = driver.open_existing(cg.name()).unwrap();
    assert!(!other.remove_if_empty().unwrap());
    assert!(cg.paths().iter().all(|p| p.is_dir()));
    assert!(
        child.try_wait().unwrap().is_none(),
        "remove_if_empty killed the process"
    );
    cg.kill_all();
    child.wait().unwrap();
    let again = driver.open_existing(cg.name()).unwrap();
    assert!(again.remove_if_empty().unwrap());
    assert!(cg.paths().iter().all(|p| !p.exists()));
}
