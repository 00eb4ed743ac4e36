//! The driver without cgroups ([`Driver::polled`]) listing a pid
//! namespace's processes from that namespace's own procfs. Needs root (to
//! make the pid namespace with `unshare` and open its `/proc` from
//! outside), not cgroups.

use std::os::fd::OwnedFd;
use std::process::{Child, Command};
use std::time::Duration;

use stockade_cgroup::{Driver, Limits};

/// A pid namespace made by `unshare`; dropping it kills its init (and with
/// it every process inside) and reaps unshare, so a failed assertion
/// leaks nothing.
struct Ns {
    unshare: Child,
    init: i32,
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.init),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.unshare.wait();
    }
}

/// `unshare --pid --fork --mount-proc sh -c SCRIPT`, and the host pid of
/// the namespace's init (the `sh`, unshare's only child).
/// An `unshare` that exits before its child appears is started again, a
/// few times.
fn pid_namespace(script: &str) -> Ns {
    for _ in 0..5 {
        let mut unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "sh", "-c", script])
            .spawn()
            .expect("unshare (util-linux) runs");
        let me = unshare.id();
        for _ in 0..500 {
            let children = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
                .unwrap_or_default();
            if let Some(init) = children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
            {
                return Ns { unshare, init };
            }
            if unshare.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = unshare.kill();
        let _ = unshare.wait();
    }
    panic!("unshare did not start the namespace's init");
}

/// The namespace's `/proc`, as init's `/proc` would be sent: a directory
/// of the procfs mounted in that namespace. Waits until unshare has
/// mounted it (before that, the path is the host's procfs).
fn proc_dir(init: i32) -> OwnedFd {
    use std::os::unix::fs::MetadataExt;
    let host = std::fs::metadata("/proc").unwrap().dev();
    for _ in 0..500 {
        // The namespace's procfs is a superblock of its own: a device
        // other than the host's /proc once unshare has mounted it (the
        // pid 1 of either says NSpid: 1, so that does not tell them apart).
        let ours =
            std::fs::metadata(format!("/proc/{init}/root/proc")).is_ok_and(|m| m.dev() != host);
        if ours {
            return std::fs::File::open(format!("/proc/{init}/root/proc"))
                .unwrap()
                .into();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the namespace's /proc was never mounted");
}

fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
#[ignore = "needs root: makes a pid namespace and opens its /proc from outside"]
fn the_sandbox_proc_lists_its_namespace_only() {
    // Init (sh) waits for its one child, then is alone.
    let ns = pid_namespace("sleep 300 & wait; exec sleep 300");
    let init = ns.init;
    let fd = proc_dir(init);
    let g = Driver::polled()
        .create(
            "polled-test",
            &Limits {
                cpus: None,
                memory_bytes: None,
                pids: None,
            },
        )
        .unwrap();
    g.add_pid(init).unwrap();
    g.set_proc_dir(fd);
    // Another process lives in the namespace: not only init. (The host's
    // namespace has many more; they must not count.)
    assert!(eventually(|| g.stats().pids_current == 2));
    assert!(!g.holds_only(init));
    // The child gone (killed from the host, reaped by init), init is
    // alone, which the namespace's /proc shows at once.
    let child = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse::<i32>()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(eventually(|| g.holds_only(init)));
    assert_eq!(g.stats().pids_current, 1);
    assert!(g.stats().memory_current > 0, "init's memory is counted");
    // Init killed: nothing is left, and nothing listed.
    g.kill_all();
    drop(ns);
    assert!(eventually(|| g.stats().pids_current == 0));
    assert!(g.holds_only(init));
}

#[test]
#[ignore = "needs root: makes a pid namespace"]
fn a_directory_that_is_no_procfs_is_ignored() {
    let ns = pid_namespace("sleep 300 & wait; exec sleep 300");
    let init = ns.init;
    let g = Driver::polled()
        .create(
            "polled-test",
            &Limits {
                cpus: None,
                memory_bytes: None,
                pids: None,
            },
        )
        .unwrap();
    g.add_pid(init).unwrap();
    // An empty directory would list no process at all: were it taken,
    // init would seem alone (and the run would end before its children).
    let empty = tempfile::tempdir().unwrap();
    g.set_proc_dir(std::fs::File::open(empty.path()).unwrap().into());
    assert!(eventually(|| g.stats().pids_current >= 2));
    assert!(!g.holds_only(init));
}

#[test]
#[ignore = "needs root: makes two pid namespaces"]
fn processes_are_listed_from_the_procfs_given() {
    // Init of `a` has one child, init of `b` two. The group follows `a`'s
    // init but is given `b`'s /proc: what it counts is `b`'s, so the
    // listing comes from the procfs and not from a scan of the host's.
    let a = pid_namespace("sleep 300 & wait; exec sleep 300");
    let b = pid_namespace("sleep 300 & sleep 300 & wait; exec sleep 300");
    let (init_a, init_b) = (a.init, b.init);
    let g = Driver::polled()
        .create(
            "polled-test",
            &Limits {
                cpus: None,
                memory_bytes: None,
                pids: None,
            },
        )
        .unwrap();
    g.add_pid(init_a).unwrap();
    g.set_proc_dir(proc_dir(init_b));
    assert!(eventually(|| g.stats().pids_current == 3));
}
