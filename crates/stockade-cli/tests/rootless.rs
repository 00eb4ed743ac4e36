//! Rootless stockade end to end: the real binary run by ordinary users.
//!
//! The tests are root (CI is): they make two users idempotently,
//! `stockade-rl1` with subordinate ids (sandboxes get 65536 ids through
//! newuidmap/newgidmap) and `stockade-rl2` without (a single id), copy
//! the binary where those users may run it, and run it as them with
//! `setpriv`. Every claim is checked by trying to break it: walls inside
//! the sandbox, files the user cannot reach, each limit the start line
//! claims, egress, `task`, and the daemon with the CLI and the Python SDK
//! finding its socket under the user's runtime directory.
//!
//! Network safety: the egress test runs the supervisor in a network
//! namespace it made, joined by a veth pair to a second one holding the
//! test host (203.0.113.10); nothing leaves for the machine's network.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{code, eventually_for, stderr, stdout};

/// Has subordinate ids.
const SUB: &str = "stockade-rl1";
/// Has none: sandboxes get a single id.
const SINGLE: &str = "stockade-rl2";

/// Makes both users if they are missing, gives the first one subordinate
/// ids and takes the second one's away (Debian's useradd adds some), under
/// a lock: tests run in parallel.
fn ensure_users() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (it creates users); CI runs it as root"
    );
    let script = r#"
set -e
for u in stockade-rl1 stockade-rl2; do
  id "$u" >/dev/null 2>&1 || useradd -m -s /bin/bash "$u"
  chmod 0700 "/home/$u"
done
grep -q '^stockade-rl1:' /etc/subuid || usermod --add-subuids 400000-465535 stockade-rl1
grep -q '^stockade-rl1:' /etc/subgid || usermod --add-subgids 400000-465535 stockade-rl1
for f in uid gid; do
  grep "^stockade-rl2:" /etc/sub$f | while IFS=: read -r n s c; do
    usermod --del-sub${f}s "$s-$((s + c - 1))" stockade-rl2
  done
done
"#;
    let out = Command::new("flock")
        .args(["/tmp/stockade-rootless-users.lock", "sh", "-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "user setup: {}", stderr(&out));
}

fn uid_of(user: &str) -> u32 {
    nix::unistd::User::from_name(user)
        .unwrap()
        .expect("user exists")
        .uid
        .as_raw()
}

/// The binary, copied where the test users may run it (the target
/// directory may be closed to them), and a state directory of the user's.
struct UserEnv {
    user: &'static str,
    uid: u32,
    bin_dir: tempfile::TempDir,
    state: tempfile::TempDir,
    vars: Vec<(String, String)>,
    runtime: Option<tempfile::TempDir>,
}

impl UserEnv {
    fn new(user: &'static str) -> UserEnv {
        ensure_users();
        let uid = uid_of(user);
        let bin_dir = open_dir("stockade-rl-bin");
        std::fs::copy(common::BIN, bin_dir.path().join("stockade")).unwrap();
        std::fs::set_permissions(
            bin_dir.path().join("stockade"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let state = owned_dir(uid, "stockade-rl-state");
        UserEnv {
            user,
            uid,
            bin_dir,
            state,
            vars: Vec::new(),
            runtime: None,
        }
    }

    /// Gives the user's commands a runtime directory of their own
    /// (`XDG_RUNTIME_DIR`, removed with `self`) and returns stockade's
    /// directory in it.
    fn private_runtime(&mut self) -> PathBuf {
        let dir = owned_dir(self.uid, "stockade-rl-run");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        self.vars
            .push(("XDG_RUNTIME_DIR".into(), dir.path().display().to_string()));
        let rt = dir.path().join("stockade");
        self.runtime = Some(dir);
        rt
    }

    fn bin(&self) -> PathBuf {
        self.bin_dir.path().join("stockade")
    }

    /// `stockade ARGS` as the user, with a fresh environment (`setpriv
    /// --reset-env`) plus the state directory and `vars`.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", self.user, "--regid", self.user, "--init-groups"])
            .args(["--reset-env", "env"])
            .arg(format!(
                "STOCKADE_STATE_DIR={}",
                self.state.path().display()
            ));
        for (k, v) in &self.vars {
            c.arg(format!("{k}={v}"));
        }
        c.arg(self.bin()).args(args);
        c.current_dir("/tmp").stdin(Stdio::null());
        c
    }

    fn stockade(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn sh(&self, flags: &[&str], script: &str) -> Output {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend(["--", "sh", "-c", script]);
        self.stockade(&args)
    }

    /// `run --report` and the report.
    fn sh_report(&self, flags: &[&str], script: &str) -> (Output, serde_json::Value) {
        let report = self
            .state
            .path()
            .join(format!("report-{}.json", common::rand_suffix()));
        let mut f = vec!["--report", report.to_str().unwrap()];
        f.extend_from_slice(flags);
        let out = self.sh(&f, script);
        let text = std::fs::read_to_string(&report)
            .unwrap_or_else(|e| panic!("no report ({e}); stderr: {}", stderr(&out)));
        (out, serde_json::from_str(&text).unwrap())
    }

    /// Nothing of the user's sandboxes is left in the state directory.
    fn assert_clean(&self) {
        let dir = self.state.path().join("sandboxes");
        assert!(
            eventually_for(10, || std::fs::read_dir(&dir)
                .map(|d| d.count() == 0)
                .unwrap_or(true)),
            "sandbox directories left in {}",
            dir.display()
        );
    }
}

/// A temporary directory everybody may enter.
fn open_dir(prefix: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// A temporary 0700 directory of `uid`'s.
fn owned_dir(uid: u32, prefix: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::os::unix::fs::chown(d.path(), Some(uid), Some(uid)).unwrap();
    d
}

fn kinds(report: &serde_json::Value) -> Vec<String> {
    report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["kind"].as_str().unwrap().to_string())
        .collect()
}

/// The first subordinate range of `user` in `/etc/FILE` (`subuid` or
/// `subgid`).
fn subids_of(user: &str, file: &str) -> Option<std::ops::Range<u32>> {
    std::fs::read_to_string(format!("/etc/{file}"))
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() == 3 && f[0] == user).then(|| {
                let start: u32 = f[1].parse().unwrap();
                start..start + f[2].parse::<u32>().unwrap()
            })
        })
}

/// The map of `user`'s base user namespace, as the host reads it: 0 the
/// user, 1.. the first 65535 subordinate ids.
fn base_map_of(user: &str, file: &str) -> Vec<(u32, u32, u32)> {
    let start = subids_of(user, file).expect("subordinate ids").start;
    vec![(0, uid_of(user), 1), (1, start, 65_535)]
}

/// `/proc/PID/FILE` (an id map) as the host reads it: host ids.
fn proc_map(pid: i32, file: &str) -> Vec<(u32, u32, u32)> {
    parse_map(&std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap())
}

fn parse_map(text: &str) -> Vec<(u32, u32, u32)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<u32> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (f.len() == 3).then(|| (f[0], f[1], f[2]))
        })
        .collect()
}

/// The map printed after the line `section` (up to the next marker).
fn map_section(text: &str, section: &str) -> Vec<(u32, u32, u32)> {
    let after = text.split(&format!("{section}\n")).nth(1).unwrap_or("");
    let body: String = after
        .lines()
        .take_while(|l| !matches!(*l, "UIDS" | "GIDS" | "END"))
        .map(|l| format!("{l}\n"))
        .collect();
    parse_map(&body)
}

fn to_host(map: &[(u32, u32, u32)], id: u32) -> Option<u32> {
    map.iter()
        .find_map(|&(i, o, c)| (id >= i && id - i < c).then(|| o + (id - i)))
}

/// Where a user's base user namespace's holder is named, under the
/// stockade runtime directory `rt`.
fn holder_file(rt: &Path) -> PathBuf {
    rt.join("userns.pid")
}

/// The live holder of `uid`'s base user namespace, if any.
fn holder_of(rt: &Path, uid: u32) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(holder_file(rt))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let alive = !status.lines().any(|l| l.starts_with("State:\tZ"));
    let owner = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:\t"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse::<u32>().ok());
    (alive && comm.trim() == "stockade-userns" && owner == Some(uid)).then_some(pid)
}

/// The inode of the user namespace `pid` is in, and of its parent.
fn userns_and_parent(pid: i32) -> (u64, u64) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/user")).unwrap();
    // NS_GET_PARENT (_IO(0xb7, 0x2)): a new descriptor of the parent.
    // SAFETY: the ioctl takes no argument and returns a new descriptor.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), 0xb702) };
    assert!(fd >= 0, "NS_GET_PARENT of {pid}");
    // SAFETY: the descriptor was just made for us; nothing else owns it.
    let parent = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    (
        ns.metadata().unwrap().ino(),
        parent.metadata().unwrap().ino(),
    )
}

#[test]
#[ignore = "needs root: creates users and runs stockade as them"]
fn rootless_sandboxes_keep_every_wall_and_map_no_host_id_but_the_callers() {
    for user in [SUB, SINGLE] {
        let env = UserEnv::new(user);
        let out = env.sh(
            &[],
            "grep -E '^(CapEff|CapPrm|CapBnd|Seccomp|NoNewPrivs):' /proc/self/status; \
             echo ids $(id -u) $(id -g); echo UIDS; cat /proc/self/uid_map; \
             echo GIDS; cat /proc/self/gid_map; echo END; \
             unshare -U true && echo NESTED-USERNS; \
             mount -t tmpfs x /tmp 2>/dev/null && echo MOUNTED; \
             cat /proc/1/environ >/dev/null 2>&1 && echo READ-INIT; true",
        );
        let text = stdout(&out);
        assert_eq!(code(&out), 0, "{user}: {}", stderr(&out));
        for cap in ["CapEff", "CapPrm", "CapBnd"] {
            assert!(
                text.contains(&format!("{cap}:\t0000000000000000")),
                "{user}: {cap} not empty: {text}"
            );
        }
        assert!(
            text.contains("Seccomp:\t2") && text.contains("NoNewPrivs:\t1"),
            "{text}"
        );
        assert!(
            text.contains("ids 1000 1000"),
            "{user}: not the agent: {text}"
        );
        assert!(
            !text.contains("NESTED-USERNS") && !text.contains("MOUNTED"),
            "{text}"
        );
        assert!(
            !text.contains("READ-INIT"),
            "{user}: read init's environment"
        );
        // Host ids: the agent is the caller; root (0) is never mapped. What
        // the sandbox reads is relative to its parent user namespace: the
        // host's for a single id, and with subordinate ids the user's base
        // namespace (0 the caller, 1.. the subordinate ids), which a start
        // must use.
        let mut maps = Vec::new();
        for (section, file) in [("UIDS", "subuid"), ("GIDS", "subgid")] {
            let inner = map_section(&text, section);
            let outer = (user == SUB).then(|| base_map_of(user, file));
            let host = |inside: u32| {
                let mid = to_host(&inner, inside)?;
                match &outer {
                    Some(o) => to_host(o, mid),
                    None => Some(mid),
                }
            };
            assert_eq!(host(1000), Some(env.uid), "{user} {section}: {text}");
            let sub = subids_of(user, file);
            for (inside, _, count) in &inner {
                for id in *inside..inside + count {
                    let h = host(id).unwrap_or_else(|| panic!("{id} unmapped: {text}"));
                    assert!(h != 0, "{user}: host root mapped: {text}");
                    assert!(
                        h == env.uid || sub.as_ref().is_some_and(|r| r.contains(&h)),
                        "{user}: {id} is host {h}, not the user's: {text}"
                    );
                }
            }
            maps.extend(inner);
        }
        if user == SINGLE {
            assert_eq!(maps.len(), 2, "a single id each: {maps:?}");
            assert!(
                stderr(&out).contains("rootless (a single id"),
                "{}",
                stderr(&out)
            );
        } else {
            assert!(maps.iter().any(|m| m.2 > 60000), "{maps:?}");
            assert!(
                stderr(&out).contains("rootless (subordinate ids"),
                "{}",
                stderr(&out)
            );
        }
        env.assert_clean();
    }
}

#[test]
#[ignore = "needs root: creates users and runs stockade as them"]
fn rootless_sandboxes_reach_no_file_their_user_cannot() {
    let env = UserEnv::new(SUB);
    // Binding what the user may not read is refused, not done with
    // anyone else's rights.
    for src in ["/root", "/home/stockade-rl2"] {
        let out = env.sh(&["--ro-bind", &format!("{src}:/x")], "ls /x && echo LISTED");
        assert!(
            !stdout(&out).contains("LISTED"),
            "{src} listed: {}",
            stdout(&out)
        );
        assert_ne!(code(&out), 0, "{src}");
    }
    // What the agent, or root inside, writes in a bound workspace is the
    // caller's on the host, and root inside cannot give it to anyone the
    // caller could not.
    let ws = owned_dir(env.uid, "stockade-rl-ws");
    let ws_arg = ws.path().to_str().unwrap();
    for flags in [vec![], vec!["--root"]] {
        let mut f = vec!["--workspace", ws_arg];
        f.extend(flags.iter().copied());
        let out = env.sh(
            &f,
            "echo data > /workspace/made; chown 5:5 /workspace/made 2>/dev/null && echo CHOWNED; \
             mkdir /workspace/d; chown 5 /workspace/d 2>/dev/null && echo CHOWNED; \
             setpriv --reuid 5 true 2>/dev/null && echo SETUID; rmdir /workspace/d; true",
        );
        assert_eq!(code(&out), 0, "{flags:?}: {}", stderr(&out));
        // Nothing can leave a file the caller could not remove.
        assert!(
            !stdout(&out).contains("CHOWNED"),
            "{flags:?}: {}",
            stdout(&out)
        );
        assert!(
            !stdout(&out).contains("SETUID"),
            "{flags:?}: {}",
            stdout(&out)
        );
        let meta = std::fs::metadata(ws.path().join("made")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (env.uid, env.uid), "{flags:?}");
        std::fs::remove_file(ws.path().join("made")).unwrap();
    }
    env.assert_clean();
}

#[test]
#[ignore = "needs root: creates users and runs stockade as them"]
fn rootless_limits_that_the_start_line_claims_hold() {
    for user in [SUB, SINGLE] {
        let env = UserEnv::new(user);

        // Time.
        let (out, report) = env.sh_report(&["--timeout", "1s"], "sleep 30");
        assert_eq!(code(&out), 124, "{user}: {}", stderr(&out));
        assert_eq!(kinds(&report), ["timeout"]);

        // Processes: a fork bomb stops at the limit, and the limit cannot
        // be raised from inside.
        let bomb = "import os, time, resource\n\
            try:\n    resource.setrlimit(resource.RLIMIT_NPROC, (100000, 100000)); print('RAISED')\n\
            except (ValueError, OSError): pass\n\
            n = 0\n\
            for _ in range(200):\n\
            \x20   try:\n\
            \x20       pid = os.fork()\n\
            \x20   except OSError:\n\
            \x20       break\n\
            \x20   if pid == 0:\n\
            \x20       time.sleep(30); os._exit(0)\n\
            \x20   n += 1\n\
            print('forked', n, flush=True)\n\
            os.killpg(0, 9)\n";
        let out = env.stockade(&["run", "--pids", "20", "--", "python3", "-c", bomb]);
        let text = stdout(&out);
        assert!(!text.contains("RAISED"), "{user}: raised RLIMIT_NPROC");
        let forked: u32 = text
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{user}: {text} {}", stderr(&out)));
        assert!(
            (1..20).contains(&forked),
            "{user}: forked {forked} with --pids 20"
        );

        // Memory: killed once a sample is over the limit. How far over it
        // got is printed (the polling can overshoot; docs/rootless.md).
        let (out, report) = env.sh_report(
            &["--memory", "128M"],
            "python3 -c 'b = []\nwhile True: b.append(b\"a\" * (16 << 20))'",
        );
        assert_ne!(code(&out), 0, "{user}: {}", stderr(&out));
        assert_eq!(kinds(&report), ["memory-limit"], "{user}: {report}");
        let peak = report["usage"]["peak_memory_bytes"].as_u64().unwrap();
        eprintln!(
            "{user}: memory limit 128 MiB, last sample {} MiB",
            peak >> 20
        );
        assert!(peak > 128 << 20);

        // Disk: killed once over.
        let (out, report) = env.sh_report(
            &["--disk", "16M"],
            "dd if=/dev/zero of=/workspace/big bs=1M count=200 2>/dev/null; sleep 10",
        );
        assert_ne!(code(&out), 0, "{user}: {}", stderr(&out));
        assert_eq!(kinds(&report), ["disk-limit"], "{user}: {report}");
        env.assert_clean();
    }
}

#[test]
#[ignore = "needs root: creates users, network namespaces and a tun node"]
fn rootless_egress_allows_the_allowlist_and_nothing_else() {
    for user in [SUB, SINGLE] {
        let env = UserEnv::new(user);
        let web = open_dir("stockade-rl-web");
        std::fs::write(web.path().join("index.html"), "hello-from-test-host\n").unwrap();
        std::fs::set_permissions(
            web.path().join("index.html"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        // The supervisor's namespaces, made here: a network namespace with
        // a veth to the test host's, and a private /dev/net whose tun node
        // the user may open (the host's stays as it is).
        let script = r#"
set -e
ip link set lo up
mount -t tmpfs -o mode=0755 tmpfs /dev/net
mknod -m 0666 /dev/net/tun c 10 200
fifo=$(mktemp -u); mkfifo "$fifo"
unshare --net -- sh -c "ip link set lo up; ip addr add 203.0.113.10/32 dev lo; echo ready > $fifo; exec python3 -m http.server --bind 203.0.113.10 8080 --directory $WEB >/dev/null 2>&1" &
hp=$!
read _ < "$fifo"; rm -f "$fifo"
trap 'kill $hp' EXIT
ip link add stk-a type veth peer name stk-b
ip link set stk-b netns $hp
ip addr add 192.0.2.1/30 dev stk-a; ip link set stk-a up
nsenter --net=/proc/$hp/ns/net ip addr add 192.0.2.2/30 dev stk-b
nsenter --net=/proc/$hp/ns/net ip link set stk-b up
ip route add 203.0.113.10/32 via 192.0.2.2 dev stk-a
i=0; until (exec 3<>/dev/tcp/203.0.113.10/8080) 2>/dev/null; do i=$((i+1)); [ $i -lt 100 ] || exit 9; sleep 0.1; done
cd /tmp
setpriv --reuid "$U" --regid "$U" --init-groups --reset-env env STOCKADE_STATE_DIR="$STATE" "$BIN" run \
  --net allowlist --allow-cidr 203.0.113.10/32:8080 -- sh -c \
  'curl -sS --max-time 10 http://203.0.113.10:8080/index.html; echo allowed=$?; curl -sS --max-time 10 http://203.0.113.11:8080/; echo denied=$?'
"#;
        let out = Command::new("unshare")
            .args([
                "--net",
                "--mount",
                "--propagation",
                "private",
                "--",
                "bash",
                "-c",
                script,
            ])
            .env("U", user)
            .env("BIN", env.bin())
            .env("WEB", web.path())
            .env("STATE", env.state.path())
            .output()
            .unwrap();
        let text = stdout(&out);
        assert!(
            text.contains("hello-from-test-host") && text.contains("allowed=0"),
            "{user}: {text} {}",
            stderr(&out)
        );
        assert!(
            text.contains("denied=") && !text.contains("denied=0"),
            "{user}: {text}"
        );
        assert!(stderr(&out).contains("not-allowlisted"), "{}", stderr(&out));
        env.assert_clean();
    }
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
}

#[test]
#[ignore = "needs root: creates users and runs stockade as them"]
fn rootless_task_returns_the_agents_patch() {
    for user in [SUB, SINGLE] {
        let env = UserEnv::new(user);
        let repo = open_dir("stockade-rl-repo");
        git(repo.path(), &["init", "-q", "-b", "main"]);
        std::fs::write(repo.path().join("a.txt"), "hello\n").unwrap();
        git(repo.path(), &["add", "."]);
        git(repo.path(), &["commit", "-qm", "init"]);
        let chown = Command::new("chown")
            .args(["-R", user])
            .arg(repo.path())
            .status()
            .unwrap();
        assert!(chown.success());
        let out_dir = owned_dir(env.uid, "stockade-rl-out");
        let out = env.stockade(&[
            "task",
            "--repo",
            repo.path().to_str().unwrap(),
            "--out",
            out_dir.path().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo agent >> a.txt",
        ]);
        assert_eq!(code(&out), 0, "{user}: {}", stderr(&out));
        let patch = std::fs::read_to_string(out_dir.path().join("changes.patch")).unwrap();
        assert!(patch.contains("+agent"), "{user}: {patch}");
        let meta = std::fs::metadata(out_dir.path().join("changes.patch")).unwrap();
        assert_eq!(meta.uid(), env.uid);
        assert!(
            std::fs::read_dir(env.state.path().join("tasks"))
                .map(|d| d.count() == 0)
                .unwrap_or(true),
            "task directories left"
        );
    }
}

#[test]
#[ignore = "needs root: creates users and runs stockade as them"]
fn rootless_daemon_serves_the_cli_and_the_sdk_on_the_users_socket() {
    for user in [SUB, SINGLE] {
        let mut env = UserEnv::new(user);
        let runtime = owned_dir(env.uid, "stockade-rl-run");
        env.vars.push((
            "XDG_RUNTIME_DIR".into(),
            runtime.path().display().to_string(),
        ));
        let socket = runtime.path().join("stockade/stockade.sock");
        let mut daemon = env.cmd(&["serve"]).stderr(Stdio::null()).spawn().unwrap();
        assert!(
            eventually_for(20, || socket.exists()),
            "{user}: no socket at {}",
            socket.display()
        );
        let meta = std::fs::metadata(runtime.path().join("stockade")).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (env.uid, 0o700));

        // The CLI finds it without being told.
        let created = env.stockade(&["create"]);
        assert_eq!(code(&created), 0, "{user}: {}", stderr(&created));
        let id = stdout(&created).trim().to_string();
        let out = env.stockade(&[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "id -u; grep CapEff /proc/self/status",
        ]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(
            stdout(&out).starts_with("1000\nCapEff:\t0000000000000000"),
            "{}",
            stdout(&out)
        );
        assert_eq!(code(&env.stockade(&["rm", &id])), 0);

        // So does the SDK (its source copied where the user may read it).
        let sdk = open_dir("stockade-rl-sdk");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/python/src");
        let cp = Command::new("cp")
            .arg("-r")
            .arg(&src)
            .arg(sdk.path().join("src"))
            .status()
            .unwrap();
        assert!(cp.success());
        Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(sdk.path())
            .status()
            .unwrap();
        let py = "import sys; sys.path.insert(0, sys.argv[1])\n\
                  from stockade import Client\n\
                  c = Client()\n\
                  print('socket', c.socket)\n\
                  s = c.create()\n\
                  r = c.exec(s.id, ['id', '-u'])\n\
                  print('sdk-out', r.stdout.strip())\n\
                  c.destroy(s.id)\n";
        let out = Command::new("setpriv")
            .args([
                "--reuid",
                user,
                "--regid",
                user,
                "--init-groups",
                "--reset-env",
                "env",
            ])
            .arg(format!("XDG_RUNTIME_DIR={}", runtime.path().display()))
            .args(["python3", "-c", py])
            .arg(sdk.path().join("src"))
            .current_dir("/tmp")
            .output()
            .unwrap();
        assert!(
            stdout(&out).contains("sdk-out 1000"),
            "{user}: {} {}",
            stdout(&out),
            stderr(&out)
        );
        assert!(
            stdout(&out).contains(&format!("socket {}", socket.display())),
            "{}",
            stdout(&out)
        );

        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(daemon.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = daemon.wait();
    }
}

#[test]
#[ignore = "needs root: creates users and runs stockade as them"]
fn rootless_refuses_what_it_cannot_give_in_one_line_and_leaves_nothing() {
    let env = UserEnv::new(SUB);
    let single = UserEnv::new(SINGLE);
    // (--overlay-root's refusals: see
    // rootless_overlay_root_without_fuse_is_refused_with_the_fix_and_leaves_nothing.)
    let out = single.sh(&["--image", "oci:/nonexistent:1"], "true");
    let err = stderr(&out);
    assert_eq!(code(&out), 125, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("images need subordinate ids"), "{err}");
    // A tun node the user may not open (a private one, made here): the
    // error says so and points at doctor.
    let script = r#"
set -e
mount -t tmpfs -o mode=0755 tmpfs /dev/net
mknod -m 0600 /dev/net/tun c 10 200
cd /tmp
setpriv --reuid "$U" --regid "$U" --init-groups --reset-env env STOCKADE_STATE_DIR="$STATE" "$BIN" run --net allowlist -- true
"#;
    let out = Command::new("unshare")
        .args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "--",
            "bash",
            "-c",
            script,
        ])
        .env("U", SUB)
        .env("BIN", env.bin())
        .env("STATE", env.state.path())
        .output()
        .unwrap();
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/dev/net/tun") && stderr(&out).contains("stockade doctor"),
        "{}",
        stderr(&out)
    );
    env.assert_clean();
}

/// Every file under `dir` with its owner, as `uid path` lines.
fn owners(dir: &Path) -> String {
    let out = Command::new("find")
        .arg(dir)
        .args(["-printf", "%U %G %y %m %s %p\\n"])
        .output()
        .unwrap();
    let mut lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    lines.sort_unstable();
    lines.join("\n")
}

#[test]
#[ignore = "needs root: creates users and runs stockade as them"]
fn rootless_image_sandboxes_show_the_images_owners_and_keep_the_store_unchanged() {
    let env = UserEnv::new(SUB);
    let image = format!(
        "oci:{}:latest",
        common::registry::image("busybox").display()
    );
    // The test image's /home/app and /data/owned belong to 1234 (see
    // tests/images/build.sh), /gone is whited out by a later layer, /opq
    // is made opaque by one.
    let out = env.sh(
        &["--user", "0", "--image", &image],
        "id -u; cat /proc/self/uid_map; stat -c '%u:%g' /bin/sh /data/owned /home/app; \
         test -e /gone || echo GONE-HIDDEN; ls /opq; \
         echo changed > /usr/written && cat /usr/written; \
         chown 77:77 /data/owned && echo CHOWNED",
    );
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "0", "{text}");
    let map: Vec<Vec<&str>> = lines[1..3]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    // Read inside, relative to the user's base namespace, where the
    // caller is 0 (see the base namespace test).
    assert_eq!(map[0], ["0", "0", "1"], "{text}");
    assert_eq!(map[1][1], "1", "{text}");
    assert_eq!(map[1][0], "1", "{text}");
    assert_eq!(map[1][2], "65535", "{text}");
    assert_eq!(&lines[3..6], ["0:0", "1234:1234", "1234:1234"], "{text}");
    assert!(text.contains("GONE-HIDDEN"), "{text}");
    // Layer 2 makes /opq opaque over layer 1's a and b, adding c.
    assert!(
        lines.contains(&"c") && !lines.contains(&"a") && !lines.contains(&"b"),
        "{text}"
    );
    assert!(
        text.contains("changed") && text.contains("CHOWNED"),
        "{text}"
    );

    // On the host the store holds the image's ids as the user's map
    // gives them: root's files are the user's, 1234's a subordinate id.
    let store = env.state.path().join("images");
    let sub_start = subids_of(SUB, "subuid").expect("subordinate ids").start;
    let tree = owners(&store.join("layers"));
    let owned: Vec<&str> = tree
        .lines()
        .filter(|l| l.ends_with("/data/owned"))
        .collect();
    assert!(!owned.is_empty(), "{tree}");
    for l in &owned {
        let uid = sub_start + 1233;
        assert!(l.starts_with(&format!("{uid} {uid} ")), "{l}");
    }
    assert!(
        tree.lines()
            .filter(|l| l.ends_with("/bin/sh"))
            .all(|l| l.starts_with(&format!("{} ", env.uid))),
        "{tree}"
    );
    // The whiteout is overlayfs's 0/0 character device.
    assert!(
        tree.lines()
            .any(|l| l.contains(" c ") && l.ends_with("/gone")),
        "{tree}"
    );
    assert_eq!(
        std::fs::read_to_string(store.join("format"))
            .unwrap()
            .split_whitespace()
            .next(),
        Some("user")
    );

    // The write and the chown went to the sandbox's upper layer: a second
    // sandbox sees the image unchanged, and the store did not change.
    let before = owners(&store.join("layers"));
    let out = env.sh(
        &["--user", "0", "--image", &image],
        "test -e /usr/written && echo LEAKED; stat -c '%u' /data/owned",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "1234", "{}", stdout(&out));
    assert_eq!(owners(&store.join("layers")), before);

    // The run left nothing behind, and the user can remove the whole
    // store with `stockade rmi` (layers owned by subordinate ids
    // included).
    env.assert_clean();
    let out = env.stockade(&["rmi", &image]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let left = owners(&store.join("layers"));
    assert_eq!(left.lines().count(), 1, "{left}");

    // A workload that is not root inside is refused (its home would
    // belong to a subordinate id), clearly and before anything runs.
    let out = env.sh(&["--image", &image], "true");
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(stderr(&out).contains("--user 0"), "{}", stderr(&out));
    env.assert_clean();
}

/// Runs `sleep SECS` in a sandbox of `env`'s user, finds it from the
/// host by its command line, and returns the inodes of its user
/// namespace and of that namespace's parent; then interrupts the run and
/// waits for it (its teardown included).
fn sandbox_userns(env: &UserEnv, secs: &str) -> (u64, u64) {
    let mut run = env.cmd(&["run", "--", "sleep", secs]).spawn().unwrap();
    let want = format!("sleep\0{secs}\0").into_bytes();
    let mut sleeper = None;
    let seen = eventually_for(20, || {
        sleeper = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            (cmd == want).then_some(pid)
        });
        sleeper.is_some()
    });
    let ns = sleeper.map(userns_and_parent);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = run.wait();
    assert!(seen, "the sandbox's sleep never showed");
    ns.unwrap()
}

/// Kills `uid`'s holder, if any, and forgets it.
/// `Some(pid)` while `pid` runs (not a zombie).
fn running(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    (!status.lines().any(|l| l.starts_with("State:\tZ"))).then_some(pid)
}

fn pool_entries(rt: &Path) -> Vec<PathBuf> {
    let Ok(keys) = std::fs::read_dir(rt.join("nspool")) else {
        return Vec::new();
    };
    keys.flatten()
        .filter(|k| k.file_name() != "claimed")
        .flat_map(|k| std::fs::read_dir(k.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .collect()
}

fn stop_holder(rt: &Path, uid: u32) {
    if let Some(pid) = holder_of(rt, uid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = std::fs::remove_file(holder_file(rt));
}

/// A process that looks like a holder from outside (its name is
/// `stockade-userns`) in a user namespace of a single id, run by `user`
/// (or by root, with `None`).
fn fake_holder(user: Option<&str>, dir: &Path) -> std::process::Child {
    let exe = dir.join("stockade-userns");
    if !exe.exists() {
        std::fs::copy("/bin/sleep", &exe).unwrap();
    }
    let mut c = match user {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", u, "--regid", u, "--init-groups", "unshare"]);
            c
        }
        None => Command::new("unshare"),
    };
    let child = c
        .args(["-U", "--map-current-user"])
        .arg(&exe)
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(
        eventually_for(10, || std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "stockade-userns")),
        "the fake holder did not start"
    );
    child
}

#[test]
#[ignore = "needs root: creates users and runs stockade as them"]
fn rootless_starts_share_one_mapped_base_namespace_that_only_the_users_own_holder_gives() {
    let mut env = UserEnv::new(SUB);
    let uid = env.uid;
    // A runtime directory of this test's own: its holder and pool are
    // nobody else's (other tests run as the same user meanwhile).
    let rt = env.private_runtime();
    let fakes = open_dir("stockade-rl-fake");
    std::fs::set_permissions(fakes.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Tests of this user run in parallel and make holders too: serialise
    // with each other through a lock of this test's own, and never assume
    // the holder is the one this test saw a moment ago except where only
    // this test changes it.
    // No holder and no pooled pair (made under an earlier holder) left.
    let out = env.stockade(&["gc", "--drain-pool"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    stop_holder(&rt, uid);
    assert!(pool_entries(&rt).is_empty(), "gc left pooled pairs");

    // The first start makes the holder: the user's whole allowance mapped
    // (0 the caller, then the subordinate ids), no descriptor held (a
    // caller capturing the output would wait for ever otherwise), a
    // session of its own, and invisible from inside.
    let out = env.sh(
        &[],
        "for c in /proc/[0-9]*/comm; do cat $c; done 2>/dev/null; echo listed",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("listed"), "{}", stdout(&out));
    assert!(
        !stdout(&out).contains("stockade-userns"),
        "the holder is visible inside: {}",
        stdout(&out)
    );
    let holder = holder_of(&rt, uid).expect("the first start made a holder");
    assert_eq!(proc_map(holder, "uid_map"), base_map_of(SUB, "subuid"));
    assert_eq!(proc_map(holder, "gid_map"), base_map_of(SUB, "subgid"));
    assert_eq!(
        std::fs::read_dir(format!("/proc/{holder}/fd"))
            .unwrap()
            .count(),
        0,
        "the holder keeps descriptors"
    );
    let stat = std::fs::read_to_string(format!("/proc/{holder}/stat")).unwrap();
    let sid: i32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(sid, holder, "the holder is not in a session of its own");

    // The first run's cleaner left two ready pairs for the next starts:
    // keepers in user namespaces under the holder's, with the sandbox's
    // maps (read from the host), each owning a network namespace.
    assert!(
        eventually_for(20, || pool_entries(&rt).len() == 2),
        "the pool was not filled: {:?}",
        pool_entries(&rt)
    );
    let (holder_ns, _) = userns_and_parent(holder);
    let mut keepers = Vec::new();
    for entry in pool_entries(&rt) {
        let pid: i32 = entry
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(comm.trim(), "stockade-nspool");
        let (ns, parent) = userns_and_parent(pid);
        assert_eq!(
            parent, holder_ns,
            "a keeper's namespace is not under the holder's"
        );
        let uids = proc_map(pid, "uid_map");
        assert_eq!(to_host(&uids, 1000), Some(uid), "{uids:?}");
        assert!(uids.iter().all(|e| e.1 != 0), "{uids:?}");
        keepers.push((pid, ns));
    }

    // A sandbox takes one of them: its user namespace is a keeper's, a
    // child of the holder's; the keeper goes with the sandbox.
    let (sandbox_ns, parent) = sandbox_userns(&env, "31.5");
    assert_eq!(
        parent, holder_ns,
        "the sandbox's namespace is not the holder's child"
    );
    assert_ne!(sandbox_ns, holder_ns);
    let used = keepers
        .iter()
        .find(|k| k.1 == sandbox_ns)
        .expect("the sandbox did not take a pooled pair");
    assert!(
        eventually_for(20, || running(used.0).is_none()),
        "the used pair's keeper outlived the sandbox"
    );
    assert_eq!(
        holder_of(&rt, uid),
        Some(holder),
        "a second start made another holder"
    );

    // What the pid file names is checked, not trusted: a process of the
    // user's that looks like a holder but maps one id, one of root's, and
    // garbage. Each time the start still maps the user's ids (through a
    // genuine holder, made anew) and root's process is left alone.
    let mut mine = fake_holder(Some(SUB), fakes.path());
    let mut roots = fake_holder(None, fakes.path());
    for named in [
        mine.id().to_string(),
        roots.id().to_string(),
        "1".to_string(),
        "not a pid".to_string(),
    ] {
        // Without pooled pairs, which would spare the start the holder.
        let drained = env.stockade(&["gc", "--drain-pool"]);
        assert_eq!(code(&drained), 0, "{}", stderr(&drained));
        std::fs::write(holder_file(&rt), format!("{named}\n")).unwrap();
        let out = env.sh(&[], "cat /proc/self/uid_map");
        assert_eq!(code(&out), 0, "{named}: {}", stderr(&out));
        let made = holder_of(&rt, uid).expect("a genuine holder was made");
        assert!(
            ![mine.id(), roots.id()].contains(&(made as u32)),
            "{named} was taken for a holder"
        );
        assert_eq!(proc_map(made, "uid_map"), base_map_of(SUB, "subuid"));
        assert_eq!(
            to_host(
                &proc_map(made, "uid_map"),
                to_host(&parse_map(&stdout(&out)), 1000).unwrap()
            ),
            Some(uid),
            "{}",
            stdout(&out)
        );
    }
    assert!(
        roots.try_wait().unwrap().is_none(),
        "the user's start ended root's process"
    );
    let _ = roots.kill();
    let _ = roots.wait();
    let _ = mine.kill();
    let _ = mine.wait();

    // Turned off, the helpers map a namespace whose parent is the host's.
    let mut off = UserEnv::new(SUB);
    off.vars = env.vars.clone();
    off.vars.push(("STOCKADE_NS_POOL".into(), "0".into()));
    let out = off.sh(&[], "cat /proc/self/uid_map");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        parse_map(&stdout(&out)).contains(&(1000, uid, 1)),
        "{}",
        stdout(&out)
    );

    // `gc --drain-pool` stops it; the next start makes another.
    let before = holder_of(&rt, uid).unwrap();
    let out = env.stockade(&["gc", "--drain-pool"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("holder (pid {before})")),
        "{}",
        stdout(&out)
    );
    assert!(
        eventually_for(10, || holder_of(&rt, uid).is_none()),
        "the holder outlived gc"
    );
    assert!(!holder_file(&rt).exists());
    assert!(pool_entries(&rt).is_empty(), "gc left pooled pairs");
    let out = env.sh(&[], "true");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(holder_of(&rt, uid).is_some_and(|p| p != before));
    env.assert_clean();
}

/// How [`with_fuse`] leaves the host's fuse-overlayfs.
#[derive(Debug, Clone, Copy)]
enum Program {
    Host,
    /// Not runnable (`/dev/null` bound over it).
    Hidden,
    /// This shell script bound over it.
    Fake(&'static str),
}

/// `cmd` run in a private mount namespace whose `/dev/fuse` is a node of
/// mode `mode` made for it (the host's may be 0600 without udev; Debian's
/// udev makes it 0666), with fuse-overlayfs as `program` says.
fn with_fuse(cmd: &Command, mode: &str, program: Program) -> (Command, tempfile::TempDir) {
    let dir = open_dir("stockade-rl-fuse");
    let script = r#"
set -e
if [ -n "$HIDE" ]; then
  for p in /usr/bin/fuse-overlayfs /bin/fuse-overlayfs /usr/local/bin/fuse-overlayfs; do
    if [ -e "$p" ]; then mount --bind "$HIDE" "$p"; fi
  done
fi
mount -t tmpfs -o mode=0755 tmpfs "$D"
mknod -m "$MODE" "$D/fuse" c 10 229
mount --bind "$D/fuse" /dev/fuse
exec "$@"
"#;
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(cmd.get_program())
    .args(cmd.get_args())
    .env("D", dir.path())
    .env("MODE", mode)
    .env(
        "HIDE",
        match program {
            Program::Host => PathBuf::new(),
            Program::Hidden => PathBuf::from("/dev/null"),
            Program::Fake(script) => {
                let p = dir.path().join("fake");
                std::fs::write(&p, script).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
                p
            }
        },
    )
    .current_dir("/tmp")
    .stdin(Stdio::null());
    (c, dir)
}

/// Host pids of the running (not zombie) fuse-overlayfs daemons of
/// `env`'s sandboxes (their upper directories are under its state).
fn fuse_daemons(env: &UserEnv) -> Vec<i32> {
    let uid = env.uid;
    let state = env.state.path().to_string_lossy().into_owned();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
        };
        if field("Name:").as_deref() == Some("fuse-overlayfs")
            && field("State:").as_deref() != Some("Z")
            && field("Uid:").as_deref() == Some(&uid.to_string())
            && std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&state))
        {
            v.push(pid);
        }
    }
    v
}

/// Host files the fuse test makes under the overlaid directories (one
/// to change inside, one root's secret), removed when it ends.
struct HostFiles(Vec<PathBuf>);

impl Drop for HostFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[test]
#[ignore = "needs root: creates users, host files under /usr/local and /var/lib/dpkg, a private /dev/fuse"]
fn rootless_overlay_root_is_copy_on_write_through_fuse_overlayfs() {
    let tag = common::rand_suffix();
    let plain = PathBuf::from(format!("/usr/local/share/stockade-fuse-{tag}"));
    let secret = PathBuf::from(format!("/var/lib/dpkg/stockade-fuse-secret-{tag}"));
    let _files = HostFiles(vec![plain.clone(), secret.clone()]);
    std::fs::write(&plain, "host\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&secret, "").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&secret, "canary-7c1f\n").unwrap();
    for user in [SUB, SINGLE] {
        let env = UserEnv::new(user);
        // Root inside changes system directories; the changes are seen
        // inside and stay there.
        let script = format!(
            "set -e; ls -lnd /usr/local | awk '{{print \"OWNER\", $3}}'; \
             echo new > /usr/local/made && cat /usr/local/made; \
             echo inside >> {plain} && grep -c inside {plain}; \
             echo 'x:1' >> /etc/group && tail -1 /etc/group; \
             mkdir /var/lib/dpkg/made.d && ls -d /var/lib/dpkg/made.d; \
             chown 5:5 /var/lib/dpkg/made.d 2>/dev/null || true; \
             cat {secret} 2>&1 || echo SECRET-DENIED; \
             for p in /proc/[0-9]*; do cat $p/comm; done | grep -c fuse-overlayfs || true",
            plain = plain.display(),
            secret = secret.display()
        );
        let mut cmd = env.cmd(&["run", "--overlay-root", "--root", "--", "sh", "-c", &script]);
        cmd.current_dir("/tmp");
        let out = {
            let (mut c, _dir) = with_fuse(&cmd, "0666", Program::Host);
            c.output().unwrap()
        };
        let o = stdout(&out);
        assert_eq!(code(&out), 0, "{user}: {o}\n{}", stderr(&out));
        assert!(
            o.contains("OWNER 0\n"),
            "{user}: host root's files are root's inside: {o}"
        );
        assert!(
            o.contains("new\n") && o.contains("x:1\n") && o.contains("made.d"),
            "{user}: {o}"
        );
        assert!(
            o.lines().any(|l| l == "1"),
            "{user}: the host file changed inside: {o}"
        );
        // A file the caller may not read is not read through the daemon,
        // root inside or not.
        assert!(
            o.contains("SECRET-DENIED") && !o.contains("canary-7c1f"),
            "{user}: {o}"
        );
        // No daemon shows in the sandbox's /proc.
        assert_eq!(o.lines().last(), Some("0"), "{user}: {o}");
        assert_eq!(std::fs::read_to_string(&plain).unwrap(), "host\n", "{user}");
        assert!(!Path::new("/usr/local/made").exists());
        assert!(!Path::new("/var/lib/dpkg/made.d").exists());
        // The agent cannot change system directories.
        let mut cmd = env.cmd(&[
            "run",
            "--overlay-root",
            "--",
            "sh",
            "-c",
            &format!(
                "touch /usr/x 2>/dev/null && echo WROTE; echo a >> {} 2>/dev/null && echo WROTE; \
                 echo a >> /etc/passwd 2>/dev/null && echo WROTE; \
                 mkdir /var/lib/dpkg/x 2>/dev/null && echo WROTE; ls /usr/bin/sh && echo READS",
                plain.display()
            ),
        ]);
        cmd.current_dir("/tmp");
        let out = {
            let (mut c, _dir) = with_fuse(&cmd, "0666", Program::Host);
            c.output().unwrap()
        };
        assert_eq!(code(&out), 0, "{user}: {}", stderr(&out));
        assert!(!stdout(&out).contains("WROTE"), "{user}: {}", stdout(&out));
        assert!(stdout(&out).contains("READS"), "{user}: {}", stdout(&out));
        assert!(
            eventually_for(10, || fuse_daemons(&env).is_empty()),
            "{user}: daemons outlived their sandboxes: {:?}",
            fuse_daemons(&env)
        );
        env.assert_clean();
    }
}

#[test]
#[ignore = "needs root: creates users and a private /dev/fuse, kills a supervisor"]
fn rootless_fuse_daemons_are_out_of_the_sandboxes_reach_and_end_with_it() {
    let env = UserEnv::new(SUB);
    let ws = owned_dir(env.uid, "stockade-rl-ws");
    let ws_arg = ws.path().to_str().unwrap();
    // The workload waits for the daemons' host pids, tries to kill them
    // and then uses its root.
    let script = "touch /workspace/ready; while [ ! -e /workspace/pids ]; do sleep 0.1; done; \
                  for p in $(cat /workspace/pids); do kill -9 $p 2>>/workspace/tried && echo $p >> /workspace/killed; done; \
                  ls /usr/bin/sh > /dev/null && echo ALIVE > /workspace/alive; sleep 300";
    let cmd = env.cmd(&[
        "run",
        "--overlay-root",
        "--root",
        "--workspace",
        ws_arg,
        "--",
        "sh",
        "-c",
        script,
    ]);
    let (mut wrapped, _dir) = with_fuse(&cmd, "0666", Program::Host);
    let child = wrapped
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The supervisor (setpriv and unshare exec it) dies with a failed
    // assertion too, and its sandbox and daemons with it.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killed(child);
    // Every daemon is up before the workload starts.
    assert!(
        eventually_for(60, || ws.path().join("ready").exists()),
        "the sandbox did not start"
    );
    let daemons = fuse_daemons(&env);
    assert!(daemons.len() >= 2, "{daemons:?}");
    let pids: Vec<String> = daemons.iter().map(|p| p.to_string()).collect();
    std::fs::write(ws.path().join("pids"), pids.join(" ")).unwrap();
    assert!(
        eventually_for(30, || ws.path().join("alive").exists()),
        "the workload did not get through its attempt"
    );
    assert_eq!(
        fuse_daemons(&env),
        daemons,
        "a daemon was killed from inside"
    );
    // Killing the supervisor ends the sandbox, and with it its daemons.
    let sup = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.windows(ws_arg.len()).any(|w| w == ws_arg.as_bytes()))
                .unwrap_or(false)
                && std::fs::metadata(format!("/proc/{pid}"))
                    .map(|m| m.uid() == env.uid)
                    .unwrap_or(false)
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim() == "stockade")
                    .unwrap_or(false)
        })
        .expect("the supervisor");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.0.wait();
    // Each attempt failed: no such process in the sandbox's pid namespace.
    assert!(!ws.path().join("killed").exists());
    let tried = std::fs::read_to_string(ws.path().join("tried")).unwrap();
    assert_eq!(
        tried.matches("No such process").count(),
        daemons.len(),
        "{tried}"
    );
    assert!(
        eventually_for(20, || fuse_daemons(&env).is_empty()),
        "daemons outlived a killed supervisor: {:?}",
        fuse_daemons(&env)
    );
    // What the dead supervisor left, gc removes.
    let out = env.stockade(&["gc"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    env.assert_clean();
}

#[test]
#[ignore = "needs root: creates users and a private /dev/fuse"]
fn rootless_overlay_root_without_fuse_is_refused_with_the_fix_and_leaves_nothing() {
    let env = UserEnv::new(SUB);
    for (mode, program, says) in [
        (
            "0600",
            Program::Host,
            "--overlay-root as an ordinary user: /dev/fuse",
        ),
        ("0600", Program::Host, "chmod 0666 /dev/fuse"),
        ("0666", Program::Hidden, "apt-get install fuse-overlayfs"),
        // A daemon that fails: its last word is the error, and the
        // launch leaves nothing.
        (
            "0666",
            Program::Fake("#!/bin/sh\necho 'bad lower 7d2e' >&2\nexit 3\n"),
            "fuse-overlayfs failed to serve /usr (exit status 3): bad lower 7d2e",
        ),
    ] {
        let cmd = env.cmd(&["run", "--overlay-root", "--", "true"]);
        let (mut c, _dir) = with_fuse(&cmd, mode, program);
        let out = c.output().unwrap();
        let err = stderr(&out);
        assert_eq!(code(&out), 125, "{mode} {program:?}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(last.contains(says), "{last}");
        assert!(fuse_daemons(&env).is_empty());
        env.assert_clean();
    }
    env.assert_clean();
}

#[test]
#[ignore = "needs root: creates users and runs stockade as them"]
fn rootless_holder_and_keepers_end_once_nothing_names_them() {
    // What the user's last logout does to XDG_RUNTIME_DIR: the pid file
    // and the pool's directory go. The processes must not outlive them
    // (they check every 30 s).
    let mut env = UserEnv::new(SUB);
    let uid = env.uid;
    let rt = env.private_runtime();
    let out = env.sh(&[], "true");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        eventually_for(20, || pool_entries(&rt).len() == 2),
        "the pool was not filled"
    );
    let holder = holder_of(&rt, uid).expect("a holder");
    let keepers: Vec<i32> = pool_entries(&rt)
        .iter()
        .map(|e| e.file_name().unwrap().to_str().unwrap().parse().unwrap())
        .collect();
    std::fs::remove_file(holder_file(&rt)).unwrap();
    std::fs::remove_dir_all(rt.join("nspool")).unwrap();
    let all = || std::iter::once(holder).chain(keepers.iter().copied());
    assert!(
        eventually_for(75, || all().all(|p| running(p).is_none())),
        "still running: {:?}",
        all().filter_map(running).collect::<Vec<_>>()
    );
}

#[test]
#[ignore = "needs root: creates users and runs stockade as them"]
fn rootless_single_id_starts_take_pooled_pairs_of_their_own_maps() {
    let mut env = UserEnv::new(SINGLE);
    let uid = env.uid;
    let rt = env.private_runtime();
    let out = env.sh(&[], "true");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        eventually_for(20, || pool_entries(&rt).len() == 2),
        "the pool was not filled: {:?}",
        pool_entries(&rt)
    );
    // No base namespace without subordinate ids: the keepers map the one
    // id themselves, with setgroups denied as for any single-id sandbox.
    assert!(holder_of(&rt, uid).is_none());
    let mut keepers = Vec::new();
    for entry in pool_entries(&rt) {
        let pid: i32 = entry
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(proc_map(pid, "uid_map"), vec![(1000, uid, 1)]);
        let setgroups = std::fs::read_to_string(format!("/proc/{pid}/setgroups")).unwrap();
        assert_eq!(setgroups.trim(), "deny");
        keepers.push((pid, userns_and_parent(pid).0));
    }
    let (ns, _) = sandbox_userns(&env, "31.6");
    let used = keepers
        .iter()
        .find(|k| k.1 == ns)
        .expect("the sandbox did not take a pooled pair");
    assert!(
        eventually_for(20, || running(used.0).is_none()),
        "the used pair's keeper outlived the sandbox"
    );
    env.assert_clean();
}
