//! The pool of ready user + network namespace pairs: a start takes one
//! that the cleaner of an earlier run made, never one that any other
//! sandbox used, and refuses anything in the pool that is not a pair it
//! could have made itself.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// A pool directory private to one test; emptied (every bind mount
/// released) at the end, whatever happened.
struct Pool {
    env: Env,
    dir: tempfile::TempDir,
}

impl Pool {
    fn new() -> Pool {
        let env = Env::new();
        let dir = tempfile::Builder::new()
            .prefix("stockade-test-nspool")
            .tempdir()
            .unwrap();
        Pool { env, dir }
    }

    fn cmd(&self, per_key: &str) -> Command {
        let mut c = self.env.cmd();
        c.env("STOCKADE_NS_POOL_DIR", self.dir.path())
            .env("STOCKADE_NS_POOL", per_key);
        c
    }

    fn sh(&self, script: &str) -> Output {
        let out = self
            .cmd("2")
            .args(["run", "--", "sh", "-c", script])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
        out
    }

    /// The ready entries, as (path, network namespace inode).
    fn ready(&self) -> Vec<(PathBuf, u64)> {
        let mut v = Vec::new();
        for key in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if key.file_name() == "claimed" {
                continue;
            }
            for e in std::fs::read_dir(key.path()).unwrap().flatten() {
                if e.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let ino = std::fs::metadata(e.path().join("net")).unwrap().ino();
                v.push((e.path(), ino));
            }
        }
        v
    }

    /// Waits for the cleaner of the last run to bring the pool to `n`.
    fn wait_ready(&self, n: usize) -> Vec<(PathBuf, u64)> {
        assert!(
            eventually(|| self.ready().len() == n),
            "the pool never held {n} entries: {:?}",
            self.ready()
        );
        self.ready()
    }

    fn key_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| !p.ends_with("claimed"))
            .collect()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // A test that failed half-way may leave a run's cleaner refilling
        // the pool right now: drain until it stays empty.
        for _ in 0..10 {
            let _ = self.cmd("2").args(["gc", "--drain-pool"]).output();
            std::thread::sleep(std::time::Duration::from_millis(100));
            if mounts_under(self.dir.path()) == 0 {
                break;
            }
        }
        assert_eq!(
            mounts_under(self.dir.path()),
            0,
            "gc --drain-pool left mounts in the pool"
        );
    }
}

fn ns_inode(text: &str, kind: &str) -> u64 {
    let prefix = format!("{kind}:[");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {kind} namespace in {text:?}"));
    line[prefix.len()..line.len() - 1].parse().unwrap()
}

fn host_ns(kind: &str) -> u64 {
    std::fs::metadata(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .ino()
}

#[test]
fn each_start_takes_a_ready_pair_that_no_other_sandbox_used() {
    let pool = Pool::new();
    // The first run finds the pool empty; its cleaner fills it.
    pool.sh("true");
    let mut ready = pool.wait_ready(2);
    let mut seen: HashSet<u64> = HashSet::new();
    // Every namespace that was ever ready stays open here until the end:
    // the kernel reuses a freed namespace's inode number, so only a live
    // namespace's number names it alone.
    let mut held = Vec::new();
    for round in 0..4 {
        for (entry, _) in &ready {
            held.push(std::fs::File::open(entry.join("net")).unwrap());
        }
        let before: HashSet<u64> = ready.iter().map(|(_, i)| *i).collect();
        let out = pool.sh(
            "readlink /proc/self/ns/net /proc/self/ns/user; cat /proc/self/uid_map /proc/self/gid_map; \
             cat /sys/class/net/lo/flags; ls /sys/class/net; grep -c nsfs /proc/self/mountinfo || true",
        );
        let text = stdout(&out);
        let net = ns_inode(&text, "net");
        assert!(
            before.contains(&net),
            "round {round}: the sandbox's network namespace {net} was not one of the ready {before:?}"
        );
        assert!(
            seen.insert(net),
            "round {round}: namespace {net} served twice"
        );
        assert_ne!(net, host_ns("net"));
        assert_ne!(ns_inode(&text, "user"), host_ns("user"));
        // The pair is what a fresh start would have made: the id maps of
        // a slot of its own, loopback up and alone, no namespace files
        // visible.
        let maps: Vec<&str> = text
            .lines()
            .filter(|l| l.trim().starts_with("0 "))
            .collect();
        assert_eq!(maps.len(), 2, "{text}");
        for m in maps {
            let f: Vec<&str> = m.split_whitespace().collect();
            let base: u64 = f[1].parse().unwrap();
            assert_eq!((f[0], f[2]), ("0", "65536"), "{text}");
            assert!(
                base > 2_000_000_000 && (base - 2_000_000_000).is_multiple_of(65536),
                "not a slot's block: {text}"
            );
        }
        let flags = text.lines().find(|l| l.starts_with("0x")).unwrap();
        let flags = u32::from_str_radix(&flags[2..], 16).unwrap();
        assert_eq!(flags & 1, 1, "loopback is down: {text}");
        assert!(text.lines().any(|l| l == "lo"), "{text}");
        assert_eq!(text.lines().filter(|l| *l == "lo").count(), 1);
        assert_eq!(
            text.lines().last(),
            Some("0"),
            "a namespace file is visible: {text}"
        );
        // Taken out of the pool for good, and the pool is topped up with
        // pairs nobody has used.
        ready = pool.wait_ready(2);
        for (_, ino) in &ready {
            assert!(
                !seen.contains(ino),
                "round {round}: a used namespace is back in the pool"
            );
        }
    }
    // Nothing of the claims is left mounted.
    let claimed = pool.dir.path().join("claimed");
    assert_eq!(std::fs::read_dir(&claimed).unwrap().count(), 0);
    assert_eq!(mounts_under(&claimed), 0);
    // Only the ready entries (two files each) are mounted.
    assert_eq!(mounts_under(pool.dir.path()), 4);
}

#[test]
fn a_workspace_run_takes_a_pooled_pair_and_still_writes_as_the_owner() {
    let pool = Pool::new();
    let ws = user_dir(4242);
    let run = |ws: Option<&Path>| {
        let mut c = pool.cmd("2");
        c.arg("run");
        if let Some(ws) = ws {
            c.args(["--workspace", ws.to_str().unwrap()]);
        }
        let out = c
            .args([
                "--",
                "sh",
                "-c",
                "readlink /proc/self/ns/net; touch /workspace/mine",
            ])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out)
    };
    run(None);
    pool.wait_ready(2);
    // One kind of entry serves every sandbox: the workspace's owner is
    // mapped by its mount, not by the sandbox's user namespace.
    assert_eq!(pool.key_dirs().len(), 1);
    // Held open: a live namespace's inode number is its own (see above).
    let held: Vec<(u64, std::fs::File)> = pool
        .ready()
        .into_iter()
        .map(|(e, i)| (i, std::fs::File::open(e.join("net")).unwrap()))
        .collect();
    let text = run(Some(ws.path()));
    let net = ns_inode(&text, "net");
    assert!(
        held.iter().any(|(i, _)| *i == net),
        "not from the pool: {text}"
    );
    let meta = std::fs::metadata(ws.path().join("mine")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4242, 4242));
    assert!(eventually(|| pool.ready().len() == 2));
    assert!(pool.ready().iter().all(|(_, i)| *i != net));
}

#[test]
fn pool_entries_that_are_not_our_pairs_are_refused() {
    let pool = Pool::new();
    pool.sh("true");
    pool.wait_ready(2);
    let key = pool.key_dirs().pop().unwrap();
    // Take the real entries out, so that only the planted ones are left.
    for (p, _) in pool.ready() {
        let _ = Command::new("umount").arg(p.join("user")).status();
        let _ = Command::new("umount").arg(p.join("net")).status();
        std::fs::remove_dir_all(&p).unwrap();
    }
    // 1. Plain files where the namespaces should be (a pool from before a
    //    reboot on a disk that kept it).
    let stale = key.join("125-stale");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("user"), b"").unwrap();
    std::fs::write(stale.join("net"), b"").unwrap();
    // 2. The host's own network namespace, with a user namespace of a
    //    process that is not ours to have made (it does not own the
    //    network namespace). Taken, it would put the sandbox on the
    //    host's network.
    // 3. A real pair, but made by another user: it could enter the
    //    network namespace later and watch the sandbox's traffic.
    let mut host_user = Command::new("unshare")
        .args(["--user", "sleep", "30"])
        .spawn()
        .unwrap();
    let mut foreign = Command::new("setpriv")
        .args(["--reuid", "4242", "--regid", "4242", "--clear-groups"])
        .args(["unshare", "--user", "--net", "sleep", "30"])
        .spawn()
        .unwrap();
    let ns_of = |pid: u32, kind: &str| format!("/proc/{pid}/ns/{kind}");
    assert!(eventually(|| {
        std::fs::metadata(ns_of(host_user.id(), "user")).is_ok_and(|m| m.ino() != host_ns("user"))
            && std::fs::metadata(ns_of(foreign.id(), "net"))
                .is_ok_and(|m| m.ino() != host_ns("net"))
    }));
    let foreign_net = std::fs::metadata(ns_of(foreign.id(), "net")).unwrap().ino();
    // Kept alive, so its inode number cannot go to another namespace.
    let _foreign_held = std::fs::File::open(ns_of(foreign.id(), "net")).unwrap();
    let plant = |name: &str, user: &str, net: &str| {
        let dir = key.join(name);
        std::fs::create_dir(&dir).unwrap();
        for (file, src) in [("user", user), ("net", net)] {
            std::fs::write(dir.join(file), b"").unwrap();
            let st = Command::new("mount")
                .args(["--bind", src, dir.join(file).to_str().unwrap()])
                .status()
                .unwrap();
            assert!(st.success());
        }
        dir
    };
    // Named like real entries (slot, then a tag), so that only the checks
    // of what they hold can refuse them.
    let host = plant(
        "123-host",
        &ns_of(host_user.id(), "user"),
        "/proc/self/ns/net",
    );
    let theirs = plant(
        "124-theirs",
        &ns_of(foreign.id(), "user"),
        &ns_of(foreign.id(), "net"),
    );
    for p in [&mut host_user, &mut foreign] {
        let _ = p.kill();
        let _ = p.wait();
    }
    let out = pool.sh("readlink /proc/self/ns/net; cat /sys/class/net/lo/flags");
    let net = ns_inode(&stdout(&out), "net");
    assert_ne!(net, host_ns("net"), "the sandbox got the host's network");
    assert_ne!(
        net, foreign_net,
        "the sandbox got another user's network namespace"
    );
    // All were taken out of the pool and released, the sandbox started
    // in namespaces of its own, and the pool was refilled with real pairs.
    assert!(!stale.exists() && !host.exists() && !theirs.exists());
    let ready = pool.wait_ready(2);
    assert!(ready
        .iter()
        .all(|(_, i)| *i != host_ns("net") && *i != foreign_net));
    assert_eq!(mounts_under(&pool.dir.path().join("claimed")), 0);
}

#[test]
fn orphaned_claims_are_released_and_the_pool_can_be_turned_off_and_drained() {
    let pool = Pool::new();
    // A setting that is not a number of pairs is refused before anything
    // starts, rather than read as the default by an unseen cleaner.
    for bad in ["two", "-1", "9"] {
        let out = pool.cmd(bad).args(["run", "--", "true"]).output().unwrap();
        assert_eq!(code(&out), 125, "STOCKADE_NS_POOL={bad}");
        assert!(
            stderr(&out).contains("STOCKADE_NS_POOL must be a number of namespace pairs"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(
        std::fs::read_dir(pool.env.sandboxes_dir())
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    // Turned off: nothing is made.
    let out = pool.cmd("0").args(["run", "--", "true"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(std::fs::read_dir(pool.dir.path()).unwrap().count(), 0);
    pool.sh("true");
    let ready = pool.wait_ready(2);
    // A supervisor killed before its teardown leaves its claim mounted,
    // named after its pid. The next refill releases it; a claim whose
    // claimer lives stays until it is a minute old, then `gc` takes it.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let claimed = pool.dir.path().join("claimed");
    let dead = claimed.join(format!("{dead_pid}-dead"));
    let alive = claimed.join(format!("{}-alive", std::process::id()));
    std::fs::rename(&ready[0].0, &dead).unwrap();
    std::fs::rename(&ready[1].0, &alive).unwrap();
    pool.sh("true");
    assert!(
        eventually(|| !dead.exists()),
        "the dead supervisor's claim is still there"
    );
    pool.wait_ready(2);
    assert!(alive.exists(), "a live claimer's claim was released");
    assert_eq!(mounts_under(&claimed), 2);
    let out = pool.cmd("2").arg("gc").output().unwrap();
    assert!(!stdout(&out).contains("left claimed"), "{}", stdout(&out));
    assert!(alive.exists());
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
    std::fs::File::open(&alive)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let out = pool.cmd("2").arg("gc").output().unwrap();
    assert!(
        stdout(&out).contains("released 1 namespace pair(s) left claimed"),
        "{}",
        stdout(&out)
    );
    assert!(!alive.exists());
    assert_eq!(mounts_under(&claimed), 0);
    // Drained: no entry and no mount is left.
    let out = pool.cmd("2").args(["gc", "--drain-pool"]).output().unwrap();
    assert!(
        stdout(&out).contains("released 2 pooled"),
        "{}",
        stdout(&out)
    );
    assert_eq!(mounts_under(pool.dir.path()), 0);
    assert!(pool.ready().is_empty());
}
