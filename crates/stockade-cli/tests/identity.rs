//! Each live sandbox runs under host ids of its own, and owns its user
//! namespace through them: the kernel's per-user counters (inotify
//! instances, epoll watches, …) are bounded per sandbox, so one sandbox
//! exhausting its share cannot make a call fail in another sandbox or in
//! the host's own users.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};

use common::*;

/// A sandbox kept running by the test: it prints one line when its work
/// is done, then holds what it made until its stdin closes.
struct Holder {
    child: Child,
    lines: BufReader<ChildStdout>,
}

impl Holder {
    fn start(env: &Env, script: &str) -> Holder {
        let mut child = env
            .cmd()
            .args(["run", "--", "python3", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap());
        Holder { child, lines }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.lines.read_line(&mut l).unwrap();
        l.trim().to_string()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // Closing stdin lets it end; whatever happens, it is waited for.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Makes inotify instances until the kernel refuses one; prints how many,
/// then holds them until stdin closes.
const INOTIFY_HOG: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fds = []
while len(fds) < 100000:
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        break
    fds.append(fd)
print(len(fds), flush=True)
sys.stdin.read()
"#;

/// Adds epoll watches (on pipe ends) until the kernel refuses one.
const EPOLL_HOG: &str = r#"
import select, os, sys
ep = select.epoll()
n = 0
fds = []
try:
    while n < 200000:
        if not fds or len(fds) > 400:
            r, w = os.pipe()
            fds = [r, w]
            base = fds
        d = os.dup(base[0])
        fds.append(d)
        ep.register(d, select.EPOLLIN)
        n += 1
except OSError as e:
    pass
print(n, flush=True)
sys.stdin.read()
"#;

fn inotify_init_here() -> Result<(), std::io::Error> {
    // SAFETY: inotify_init1 takes a flags integer and returns a new
    // descriptor or -1.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is ours to close.
    unsafe { libc::close(fd) };
    Ok(())
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn live_sandboxes_get_distinct_host_ids_and_namespace_owners() {
    let env = Env::new();
    let probe = r#"
import sys
print(open('/proc/self/uid_map').read().split()[1], flush=True)
sys.stdin.read()
"#;
    let mut a = Holder::start(&env, probe);
    let mut b = Holder::start(&env, probe);
    let (base_a, base_b) = (a.line(), b.line());
    assert_ne!(base_a, base_b, "two live sandboxes share host ids");
    for base in [&base_a, &base_b] {
        let base: u64 = base.parse().unwrap();
        assert!(
            base > 2_000_000_000 && (base - 2_000_000_000).is_multiple_of(65536),
            "{base}"
        );
    }
    // The workloads' processes run under those ids on the host, and their
    // user namespaces are owned by them (not by host root).
    for (h, base) in [(&a, &base_a), (&b, &base_b)] {
        let sandbox_pid = descendant_running(h.child.id(), "python3").expect("the workload");
        let status = std::fs::read_to_string(format!("/proc/{sandbox_pid}/status")).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        let agent: u64 = base.parse::<u64>().unwrap() + 1000;
        assert!(uid_line.contains(&agent.to_string()), "{uid_line}");
        let owner = ns_owner(sandbox_pid);
        assert_eq!(owner.to_string(), *base);
    }
}

/// The first descendant of `pid` whose command name is `name`.
fn descendant_running(pid: u32, name: &str) -> Option<u32> {
    for _ in 0..100 {
        let out = Command::new("pgrep")
            .args(["-x", name])
            .output()
            .unwrap()
            .stdout;
        for cand in String::from_utf8_lossy(&out).split_whitespace() {
            let cand: u32 = cand.parse().unwrap();
            let mut p = cand;
            while p > 1 {
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().nth(1))
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0);
                if ppid == pid {
                    return Some(cand);
                }
                p = ppid;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

fn ns_owner(pid: u32) -> u32 {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/proc/{pid}/ns/user")).unwrap();
    let mut owner: libc::uid_t = 0;
    // NS_GET_OWNER_UID
    // SAFETY: the ioctl writes one uid_t to a live local.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), 0xb704, &mut owner) };
    assert_eq!(r, 0);
    owner
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn one_sandbox_using_up_inotify_instances_leaves_others_and_host_root_theirs() {
    let env = Env::new();
    let mut a = Holder::start(&env, INOTIFY_HOG);
    let got_a: usize = a.line().parse().unwrap();
    assert!(
        got_a >= 64,
        "the sandbox got only {got_a} inotify instances"
    );
    // While A holds all it could get, host root and another sandbox can
    // still make theirs.
    inotify_init_here().expect("host root's inotify_init1 fails while a sandbox holds its share");
    let mut b = Holder::start(&env, INOTIFY_HOG);
    let got_b: usize = b.line().parse().unwrap();
    assert!(
        got_b >= got_a.min(100),
        "a second sandbox got {got_b} inotify instances while the first held {got_a}"
    );
    inotify_init_here().expect("host root's inotify_init1 fails while two sandboxes hold theirs");
    drop((a, b));
}

/// Lowers the host's `fs.epoll.max_user_watches` for the test (a real
/// attack would need millions of watches); restored on drop.
struct EpollLimit(String);

impl EpollLimit {
    const PATH: &'static str = "/proc/sys/fs/epoll/max_user_watches";
    fn set(n: u64) -> EpollLimit {
        let old = std::fs::read_to_string(Self::PATH).unwrap();
        std::fs::write(Self::PATH, n.to_string()).unwrap();
        EpollLimit(old.trim().to_string())
    }
}

impl Drop for EpollLimit {
    fn drop(&mut self) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(Self::PATH)
            .unwrap();
        let _ = f.write_all(self.0.as_bytes());
    }
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups, lowers a host sysctl for a moment"]
fn one_sandbox_using_up_epoll_watches_leaves_others_theirs() {
    let env = Env::new();
    let limit = 5000;
    let guard = EpollLimit::set(limit);
    let mut a = Holder::start(&env, EPOLL_HOG);
    let got_a: u64 = a.line().parse().unwrap();
    let mut b = Holder::start(&env, EPOLL_HOG);
    let got_b: u64 = b.line().parse().unwrap();
    drop(guard);
    drop((a, b));
    assert!(
        got_a >= limit - 10,
        "the first sandbox got {got_a} of {limit}"
    );
    assert!(
        got_b >= limit - 10,
        "a second sandbox got {got_b} epoll watches while the first held {got_a}"
    );
}
