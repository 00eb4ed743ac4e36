//! `stockade-runc`, driven as an engine drives it (containerd's shim,
//! conmon): the test process is the subreaper that reaps the container's
//! init from the pid file, bundles are unpacked from the busybox test
//! image with umoci, and every step goes through the binary invoked as
//! `stockade-runc` (argv[0]). Needs root; CI runs these as root.

mod common;

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

const ROOT_NEEDED: &str =
    "this test needs root (namespaces, cgroups, id-mapped mounts); CI runs it as root";

/// One test's state root, bundle and container id.
struct Oci {
    dir: tempfile::TempDir,
    id: String,
    cgroup_rel: String,
}

impl Oci {
    /// A bundle of the busybox image whose process runs `args`.
    fn new(tag: &str, args: &[&str]) -> Oci {
        Oci::of_image("busybox", tag, args)
    }

    /// A bundle of one of the test images (`tests/images/build.sh`).
    fn of_image(name: &str, tag: &str, args: &[&str]) -> Oci {
        assert!(nix::unistd::geteuid().is_root(), "{ROOT_NEEDED}");
        let dir = tempfile::Builder::new()
            .prefix("stockade-oci-test")
            .tempdir()
            .unwrap();
        let id = format!("{tag}-{}", std::process::id());
        let cgroup_rel = format!("stockade-oci-test-{id}");
        common::bundle::unpack(name, &dir.path().join("bundle"), args, &cgroup_rel);
        Oci {
            cgroup_rel,
            dir,
            id,
        }
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn edit(&self, f: impl FnOnce(&mut Value)) {
        common::bundle::edit(&self.bundle(), f)
    }

    /// `stockade-runc --root <state> ARGS…`.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(common::BIN);
        c.arg0("stockade-runc")
            .arg("--root")
            .arg(self.root())
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    /// `create` with the container's stdio on files; returns init's pid.
    fn create(&self) -> i32 {
        let out = self.create_output(&[]);
        assert!(out.status.success(), "create: {}", text(&out.stderr));
        std::fs::read_to_string(self.dir.path().join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn create_output(&self, extra: &[&str]) -> Output {
        let pid_file = self.dir.path().join("pid");
        let bundle = self.bundle();
        let mut args = vec![
            "create",
            "--bundle",
            bundle.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.push(&self.id);
        // The container's stdio is the caller's: files here, so that
        // nothing waits for a pipe init holds open.
        let stdout = std::fs::File::create(self.dir.path().join("stdout")).unwrap();
        let stderr_path = self.dir.path().join("stderr");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let status = self
            .cmd(&args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .status()
            .unwrap();
        Output {
            status,
            stdout: Vec::new(),
            stderr: std::fs::read(&stderr_path).unwrap(),
        }
    }

    fn container_stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    fn state(&self) -> Value {
        let out = self.run(&["state", &self.id]);
        assert!(out.status.success(), "state: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("state prints JSON only")
    }

    /// Whether the container's cgroup directory exists in any hierarchy.
    fn cgroup_exists(&self) -> bool {
        cgroup_mounts()
            .iter()
            .any(|m| m.join(&self.cgroup_rel).exists())
    }

    fn assert_nothing_left(&self) {
        assert!(
            !self.root().join(&self.id).exists(),
            "the state directory of {} was left behind",
            self.id
        );
        assert!(
            !self.cgroup_exists(),
            "the cgroup {} was left behind",
            self.cgroup_rel
        );
    }
}

impl Drop for Oci {
    fn drop(&mut self) {
        let _ = self.run(&["delete", "--force", &self.id]);
    }
}

fn cgroup_mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fs = right.split(' ').next()?;
            let mount = left.split(' ').nth(4)?;
            (fs == "cgroup" || fs == "cgroup2").then(|| PathBuf::from(mount))
        })
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Makes the test process a subreaper, as containerd's shim and conmon
/// are: an orphaned init becomes our child.
fn become_subreaper() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0);
}

/// Reaps `pid` (our child through the subreaper) and returns how it ended.
fn reap(pid: i32) -> nix::sys::wait::WaitStatus {
    nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).expect("init is our child")
}

fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
    for _ in 0..500 {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn lifecycle_as_an_engine_drives_it() {
    become_subreaper();
    let c = Oci::new(
        "life",
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 7' TERM; echo started; while :; do sleep 0.05; done",
        ],
    );
    let pid = c.create();
    let st = c.state();
    assert_eq!(st["status"], "created", "{st}");
    assert_eq!(st["pid"], pid);
    assert_eq!(st["id"], c.id.as_str());
    assert_eq!(
        st["bundle"],
        c.bundle().canonicalize().unwrap().to_str().unwrap()
    );
    // init is the container's process in its own namespaces, and already
    // the caller's (subreaper's) child.
    let ns = |p: &str, n: &str| std::fs::read_link(format!("/proc/{p}/ns/{n}")).unwrap();
    for n in ["user", "pid", "mnt", "net"] {
        assert_ne!(
            ns(&pid.to_string(), n),
            ns("self", n),
            "{n} namespace shared with the host"
        );
    }
    let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: i32 = ppid[ppid.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        ppid,
        std::process::id() as i32,
        "init must be reparented to the subreaper"
    );
    assert_eq!(c.container_stdout(), "", "the process ran before start");

    let out = c.run(&["start", &c.id]);
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    wait_for(
        || c.container_stdout().contains("started"),
        "the process's output",
    );
    assert_eq!(c.state()["status"], "running");

    let out = c.run(&[
        "exec",
        &c.id,
        "sh",
        "-c",
        "echo exec-out; echo exec-err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "exec-out\n");
    assert_eq!(text(&out.stderr), "exec-err\n");

    let out = c.run(&["ps", "--format", "json", &c.id]);
    assert!(out.status.success(), "ps: {}", text(&out.stderr));
    let pids: Vec<i32> = serde_json::from_slice(&out.stdout).expect("ps prints a JSON array only");
    assert!(pids.contains(&pid), "{pids:?} lacks init {pid}");

    let out = c.run(&["kill", &c.id, "TERM"]);
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    match reap(pid) {
        nix::sys::wait::WaitStatus::Exited(_, 7) => {}
        other => panic!("init ended as {other:?}, not with the trap's status 7"),
    }
    assert!(c.container_stdout().contains("got-term"));
    assert_eq!(c.state()["status"], "stopped");

    let out = c.run(&["delete", &c.id]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    c.assert_nothing_left();
    let out = c.run(&["state", &c.id]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn isolation_holds_inside_a_container() {
    let marker = tempfile::Builder::new()
        .prefix("stockade-oci-host-secret")
        .tempfile()
        .unwrap();
    std::fs::write(marker.path(), "TOP-SECRET-CONTENT").unwrap();
    let probe = format!(
        "grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/self/status; head -1 /proc/self/uid_map; \
         cat {} 2>&1 || echo host-file-unreachable; id -u; echo > /proc/sys/kernel/hostname 2>&1 || echo sysctl-refused; \
         echo ping=$(cat /proc/sys/net/ipv4/ping_group_range)",
        marker.path().display()
    );
    let c = Oci::new("iso", &["sh", "-c", &probe]);
    c.edit(|cfg| {
        cfg["process"]["user"] = json!({"uid": 0, "gid": 0});
        cfg["process"]["capabilities"] = json!({});
        cfg["linux"]["sysctl"] = json!({"net.ipv4.ping_group_range": "0 2147483647"});
    });
    let bundle = c.bundle();
    let out = c.run(&["run", "--bundle", bundle.to_str().unwrap(), &c.id]);
    let o = text(&out.stdout);
    assert!(out.status.success(), "run: {} {o}", text(&out.stderr));
    assert!(o.contains("CapEff:\t0000000000000000"), "{o}");
    assert!(o.contains("Seccomp:\t2"), "{o}");
    assert!(o.contains("NoNewPrivs:\t1"), "{o}");
    let map: Vec<u64> = o
        .lines()
        .find(|l| l.trim_start().starts_with("0 "))
        .expect("uid_map line")
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_ne!(map[1], 0, "container root is host root: {o}");
    assert!(
        o.contains("host-file-unreachable") && !o.contains("TOP-SECRET-CONTENT"),
        "{o}"
    );
    assert!(o.lines().any(|l| l == "0"), "not root inside: {o}");
    assert!(o.contains("sysctl-refused"), "{o}");
    assert!(
        o.contains("ping=0 65535"),
        "ping_group_range not clamped: {o}"
    );
    c.assert_nothing_left();
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn a_terminal_goes_over_the_console_socket() {
    become_subreaper();
    let c = Oci::new("tty", &["sh", "-c", "tty; echo tty-ok; sleep 0.2"]);
    c.edit(|cfg| cfg["process"]["terminal"] = json!(true));
    let sock_path = c.dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let out = c.create_output(&["--console-socket", sock_path.to_str().unwrap()]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 64];
    let mut space = nix::cmsg_space!([i32; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = nix::sys::socket::recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    let mut master = None;
    for m in msg.cmsgs().unwrap() {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = m {
            // SAFETY: the descriptor was just received and is ours.
            master = Some(unsafe { OwnedFd::from_raw_fd(fds[0]) });
        }
    }
    let master = master.expect("the pty master over the console socket");
    let pid: i32 = std::fs::read_to_string(c.dir.path().join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(c.run(&["start", &c.id]).status.success());
    let mut f = std::fs::File::from(master);
    let mut got = String::new();
    let mut chunk = [0u8; 256];
    while !got.contains("tty-ok") {
        match f.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.push_str(&String::from_utf8_lossy(&chunk[..n])),
        }
    }
    assert!(got.contains("/dev/pts/"), "{got}");
    assert!(got.contains("tty-ok"), "{got}");
    reap(pid);
    assert!(c.run(&["delete", &c.id]).status.success());
    c.assert_nothing_left();
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn a_container_over_its_memory_limit_is_killed() {
    let c = Oci::new(
        "mem",
        &["sh", "-c", "echo start; dd if=/dev/zero of=/dev/null bs=96M count=1 2>/dev/null; echo dd-status=$?"],
    );
    c.edit(|cfg| {
        cfg["linux"]["resources"] = json!({"memory": {"limit": 32 << 20, "swap": 32 << 20}});
    });
    let bundle = c.bundle();
    let out = c.run(&["run", "--bundle", bundle.to_str().unwrap(), &c.id]);
    let o = text(&out.stdout);
    assert!(o.contains("start"), "{o} {}", text(&out.stderr));
    assert!(
        o.contains("dd-status=137"),
        "dd was not killed for memory: {o}"
    );
    c.assert_nothing_left();
}

/// Runs `create` expecting failure; returns its stderr.
fn create_fails(c: &Oci) -> String {
    let out = c.create_output(&[]);
    assert!(!out.status.success(), "create succeeded");
    let err = text(&out.stderr);
    c.assert_nothing_left();
    assert_eq!(
        text(&c.run(&["list", "--quiet"]).stdout),
        "",
        "a container is listed"
    );
    err
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn bad_configs_are_refused_with_nothing_left() {
    let c = Oci::new("badcfg", &["true"]);
    std::fs::write(c.bundle().join("config.json"), b"{ not json").unwrap();
    let e = create_fails(&c);
    assert!(e.contains("not a valid OCI runtime configuration"), "{e}");

    let c = Oci::new("badns", &["true"]);
    c.edit(|cfg| {
        cfg["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "mount"}, {"type": "bogus"}])
    });
    let e = create_fails(&c);
    assert!(e.contains("bogus"), "{e}");

    let c = Oci::new("nobundle", &["true"]);
    let out = c.run(&["create", "--bundle", "/nonexistent/stockade-bundle", &c.id]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/nonexistent/stockade-bundle"),
        "{}",
        text(&out.stderr)
    );
    c.assert_nothing_left();
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn an_id_in_use_and_an_unknown_id_are_errors() {
    become_subreaper();
    let c = Oci::new("dup", &["sleep", "30"]);
    let pid = c.create();
    let out = c.create_output(&[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("already in use"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        c.state()["status"],
        "created",
        "the first container was disturbed"
    );

    let out = c.run(&["kill", "no-such-container", "KILL"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );

    // A log file in JSON, as the shim reads it.
    let log = c.dir.path().join("log.json");
    let out = c
        .cmd(&[
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "kill",
            "no-such-container",
            "9",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let line: Value = serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
    assert_eq!(line["level"], "error");
    assert!(
        line["msg"].as_str().unwrap().contains("does not exist"),
        "{line}"
    );

    assert!(
        c.run(&["delete", &c.id]).status.success(),
        "a created container can be deleted"
    );
    reap(pid);
    c.assert_nothing_left();
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn hostile_rootfs_symlinks_are_refused() {
    // A mount destination through a symlink that climbs out of the root.
    let target = tempfile::Builder::new()
        .prefix("stockade-oci-escape-target")
        .tempdir()
        .unwrap();
    let c = Oci::new("escape", &["true"]);
    let up = "../".repeat(12);
    std::os::unix::fs::symlink(
        format!(
            "{up}{}",
            target.path().display().to_string().trim_start_matches('/')
        ),
        c.bundle().join("rootfs/escape"),
    )
    .unwrap();
    c.edit(|cfg| {
        let mounts = cfg["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": "/escape/x", "type": "tmpfs", "source": "tmpfs"}));
    });
    let e = create_fails(&c);
    assert!(e.contains("points outside the container's root"), "{e}");
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&target.path().display().to_string()),
        "something was mounted on the host target"
    );
    assert!(!target.path().join("x").exists());

    // /proc replaced by a symlink to somewhere else in the image.
    let c = Oci::new("procsym", &["true"]);
    let proc_dir = c.bundle().join("rootfs/proc");
    let _ = std::fs::remove_dir(&proc_dir);
    std::os::unix::fs::symlink("/tmp", &proc_dir).unwrap();
    let e = create_fails(&c);
    assert!(e.contains("is a symlink"), "{e}");
}

#[test]
fn the_oci_subcommand_is_the_same_grammar() {
    let out = Command::new(common::BIN)
        .args(["oci", "features"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let f: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(f["ociVersionMin"], "1.0.0");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::BIN)
        .args(["oci", "spec", "--bundle"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let spec: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["root"]["path"], "rootfs");
}

/// A network namespace the test makes (as CNI would), with a dummy link
/// to recognise it; removed on drop. No traffic is sent.
struct TestNetns(String);

impl TestNetns {
    fn new(tag: &str) -> TestNetns {
        let name = format!("stockade-oci-{tag}-{}", std::process::id());
        let ok = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("run ip (iproute2)");
            assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
        };
        ok(&["netns", "add", &name]);
        let ns = TestNetns(name);
        ok(&[
            "-n", &ns.0, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1",
        ]);
        ns
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn the_paths_a_shim_takes() {
    become_subreaper();
    let netns = TestNetns::new("shim");
    let c = Oci::new("shim", &["sh", "-c", "while :; do sleep 0.05; done"]);
    let hook_out = c.dir.path().join("hook-state.json");
    let hook = c.dir.path().join("hook.sh");
    std::fs::write(&hook, format!("#!/bin/sh\ncat > {}\n", hook_out.display())).unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&hook)
        .status()
        .unwrap();
    c.edit(|cfg| {
        let nss = cfg["linux"]["namespaces"].as_array_mut().unwrap();
        nss.retain(|n| n["type"] != "network");
        nss.push(json!({"type": "network", "path": netns.path()}));
        // What Docker and podman ask for: more groups than the container has.
        cfg["linux"]["sysctl"] = json!({"net.ipv4.ping_group_range": "0 2147483647"});
        cfg["hooks"] = json!({"prestart": [{"path": hook.to_str().unwrap(), "args": ["hook"]}]});
    });
    let pid = c.create();
    // The prestart hook ran with the state on stdin, the network
    // namespace is the one given, and its sysctl was set.
    let st: Value =
        serde_json::from_slice(&std::fs::read(&hook_out).expect("the prestart hook ran")).unwrap();
    assert_eq!(st["pid"], pid);
    {
        use std::os::unix::fs::MetadataExt;
        let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
        let given = std::fs::metadata(netns.path()).unwrap();
        assert_eq!(
            theirs.ino(),
            given.ino(),
            "init is not in the given network namespace"
        );
    }
    assert!(c.run(&["start", &c.id]).status.success());

    // exec as containerd's shim does it: --process FILE --detach --pid-file.
    let proc_file = c.dir.path().join("process.json");
    let out_file = c.dir.path().join("exec-out");
    std::fs::write(
        &proc_file,
        serde_json::to_vec(&json!({
            "args": ["sh", "-c", "cat /proc/net/dev; cat /proc/sys/net/ipv4/ping_group_range; exit 5"],
            "env": ["PATH=/bin:/usr/bin"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0}
        }))
        .unwrap(),
    )
    .unwrap();
    let exec_pid_file = c.dir.path().join("exec.pid");
    let status = c
        .cmd(&[
            "exec",
            "--process",
            proc_file.to_str().unwrap(),
            "--detach",
            "--pid-file",
            exec_pid_file.to_str().unwrap(),
            &c.id,
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(status.success());
    let exec_pid: i32 = std::fs::read_to_string(&exec_pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    match reap(exec_pid) {
        nix::sys::wait::WaitStatus::Exited(_, 5) => {}
        other => panic!("the detached process ended as {other:?}, not with status 5"),
    }
    let o = std::fs::read_to_string(&out_file).unwrap();
    assert!(
        o.contains("probe0"),
        "not in the given network namespace: {o}"
    );
    assert!(
        o.lines().any(|l| l == "0\t65535"),
        "ping_group_range not set in the container's terms: {o}"
    );

    // pause / resume / update.
    assert!(c.run(&["pause", &c.id]).status.success());
    assert_eq!(c.state()["status"], "paused");
    assert!(c.run(&["resume", &c.id]).status.success());
    assert_eq!(c.state()["status"], "running");
    let mut up = c.cmd(&["update", "--resources", "-", &c.id]);
    let mut child = up.stdin(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), br#"{"pids": {"limit": 77}}"#)
        .unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let limited = cgroup_mounts()
        .iter()
        .map(|m| m.join(&c.cgroup_rel).join("pids.max"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .any(|v| v.trim() == "77");
    assert!(limited, "update did not reach pids.max");

    assert!(c.run(&["kill", "--all", &c.id, "KILL"]).status.success());
    reap(pid);
    assert!(c.run(&["delete", &c.id]).status.success());
    c.assert_nothing_left();
}

/// An overlay mounted by the test (as engines mount image layers),
/// unmounted on drop.
struct TestOverlay(PathBuf);

impl Drop for TestOverlay {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn an_engines_overlay_root_shows_its_owners_and_takes_writes() {
    let c = Oci::new(
        "ovl",
        &[
            "sh",
            "-c",
            "ls -ln /bin/busybox; echo new > /written-inside; ls -ln /written-inside",
        ],
    );
    let d = c.dir.path();
    for sub in ["upper", "work", "merged"] {
        std::fs::create_dir(d.join(sub)).unwrap();
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        c.bundle().join("rootfs").display(),
        d.join("upper").display(),
        d.join("work").display()
    );
    nix::mount::mount(
        Some("overlay"),
        &d.join("merged"),
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .unwrap();
    let _overlay = TestOverlay(d.join("merged"));
    c.edit(|cfg| {
        cfg["root"] = json!({"path": d.join("merged").to_str().unwrap(), "readonly": false});
        cfg["process"]["user"] = json!({"uid": 0, "gid": 0});
    });
    let bundle = c.bundle();
    let out = c.run(&["run", "--bundle", bundle.to_str().unwrap(), &c.id]);
    let o = text(&out.stdout);
    assert!(out.status.success(), "run: {} {o}", text(&out.stderr));
    // Host root's files are root's inside; what container root writes is
    // host root's on disk, in the engine's upper directory.
    assert!(
        o.lines().next().unwrap_or("").contains(" 0        0 "),
        "{o}"
    );
    assert!(o.contains("/written-inside"), "{o}");
    use std::os::unix::fs::MetadataExt;
    let written = std::fs::metadata(d.join("upper/written-inside"))
        .expect("the write reached the upper layer");
    assert_eq!((written.uid(), written.gid()), (0, 0));
    c.assert_nothing_left();
    let leftover: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("stockade-work"))
        .collect();
    assert!(leftover.is_empty(), "work directory left: {leftover:?}");

    // A create that fails after the overlay was rebuilt leaves nothing.
    c.edit(|cfg| cfg["process"]["args"] = json!(["no-such-program"]));
    let e = create_fails(&c);
    assert!(e.contains("executable file not found"), "{e}");
    assert!(!std::fs::read_dir(d).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("stockade-work")));
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn the_configs_seccomp_profile_holds_for_init_and_exec() {
    become_subreaper();
    let c = Oci::new(
        "seccomp",
        &[
            "sh",
            "-c",
            "mkdir /tmp/a 2>&1; grep Seccomp_filters /proc/self/status; sleep 5",
        ],
    );
    c.edit(|cfg| {
        cfg["root"]["readonly"] = json!(false);
        cfg["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
        });
    });
    let pid = c.create();
    assert!(c.run(&["start", &c.id]).status.success());
    wait_for(
        || c.container_stdout().contains("Seccomp_filters"),
        "init's output",
    );
    let o = c.container_stdout();
    assert!(
        o.contains("Function not implemented"),
        "the profile's ENOSYS did not hold: {o}"
    );
    // stockade's own filters are there as well as the profile's.
    let n: u32 = o
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp_filters:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(n > 4, "only {n} filters: {o}");
    let out = c.run(&["exec", &c.id, "sh", "-c", "mkdir /tmp/b 2>&1; true"]);
    assert!(
        text(&out.stdout).contains("Function not implemented"),
        "{}",
        text(&out.stdout)
    );
    assert!(c.run(&["kill", &c.id, "KILL"]).status.success());
    reap(pid);
    assert!(c.run(&["delete", &c.id]).status.success());
    c.assert_nothing_left();
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn stockade_annotations_timeout_kills_and_unknown_ones_are_refused() {
    let c = Oci::new(
        "timeout",
        &["sh", "-c", "echo up; sleep 30; echo not-killed"],
    );
    c.edit(|cfg| cfg["annotations"]["org.stockade.timeout"] = json!("1s"));
    let bundle = c.bundle();
    let out = c.run(&["run", "--bundle", bundle.to_str().unwrap(), &c.id]);
    assert_eq!(out.status.code(), Some(128 + 9), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("not-killed"));
    c.assert_nothing_left();

    let c = Oci::new("unknownkey", &["true"]);
    c.edit(|cfg| cfg["annotations"]["org.stockade.net.allow-all"] = json!("yes"));
    let e = create_fails(&c);
    assert!(
        e.contains("org.stockade.net.allow-all") && e.contains("not one stockade-runc knows"),
        "{e}"
    );
}

// ---- stockade's floor: Landlock, hooks inside, preserved fds, devices,
// capabilities, host namespaces ---------------------------------------

/// `run` of a bundle; the container's stdout.
fn run_bundle(c: &Oci) -> String {
    let bundle = c.bundle();
    let out = c.run(&["run", "--bundle", bundle.to_str().unwrap(), &c.id]);
    let o = text(&out.stdout);
    assert!(out.status.success(), "run: {} {o}", text(&out.stderr));
    o
}

/// Writes a probe that says, for each path, whether DAC would let the
/// container's root write it (owner 0 and a writable mount) and whether
/// the write worked.
const WRITE_PROBE: &str = r#"
try() { if (echo 1 > "$1") 2>/dev/null; then echo "$2=written"; else echo "$2=refused"; fi; }
echo owner-comm=$(stat -c %u /proc/self/comm)
echo owner-root=$(stat -c %u /)
grep -q ' /proc proc rw' /proc/mounts && echo proc-mount-rw
try /proc/self/comm procself
try /new-top-level top
try /etc/new-file etc
try /tmp/new-file tmp
try /dev/null devnull
try /dev/shm/new-file shm
grep ' /sys sysfs' /proc/mounts | cut -d' ' -f4 | cut -d, -f1 | sed 's/^/sys-mount=/'
"#;

/// A config with nothing read-only or masked by the engine (no
/// `readonlyPaths`/`maskedPaths`), /proc mounted writable: DAC and the
/// mount table let a process write its own `/proc/self/comm` (owner,
/// mode 0644, no capability needed).
fn bare_proc(cfg: &mut Value) {
    cfg["process"]["user"] = json!({"uid": 0, "gid": 0});
    cfg["linux"]["readonlyPaths"] = json!([]);
    cfg["linux"]["maskedPaths"] = json!([]);
}

#[test]
#[ignore = "needs root and Landlock (ABI >= 6): creates namespaces, cgroups and id-mapped mounts"]
fn a_writable_root_takes_writes_everywhere_and_sysfs_stays_read_only() {
    become_subreaper();
    let c = Oci::new("landlock", &["sh", "-c", "sleep 30"]);
    c.edit(|cfg| {
        bare_proc(cfg);
        // A sysfs asked for writable (as --privileged does).
        for m in cfg["mounts"].as_array_mut().unwrap() {
            if m["type"] == "sysfs" {
                m["options"] = json!(["nosuid", "noexec", "nodev"]);
            }
        }
        cfg["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}));
    });
    c.create();
    assert!(c.run(&["start", &c.id]).status.success());
    let out = c.run(&["exec", &c.id, "sh", "-c", WRITE_PROBE]);
    let o = text(&out.stdout);
    assert!(out.status.success(), "exec: {} {o}", text(&out.stderr));
    for ok in [
        "top=written",
        "etc=written",
        "tmp=written",
        "devnull=written",
        "shm=written",
    ] {
        assert!(o.contains(ok), "{ok} missing: {o}");
    }
    // The control for the read-only root below: here nothing but
    // Landlock's plan differs, and DAC and the mount let this through.
    assert!(o.contains("owner-comm=0"), "{o}");
    assert!(o.contains("proc-mount-rw"), "{o}");
    assert!(o.contains("procself=written"), "{o}");
    // sysfs is read-only whatever the config asked for.
    assert!(o.contains("sys-mount=ro"), "{o}");
    let _ = c.run(&["delete", "--force", &c.id]);
    c.assert_nothing_left();
}

#[test]
#[ignore = "needs root and Landlock (ABI >= 6): creates namespaces, cgroups and id-mapped mounts"]
fn landlock_keeps_a_read_only_root_to_its_writable_mounts_where_dac_would_allow_more() {
    become_subreaper();
    let vol = tempfile::tempdir().unwrap();
    let v = vol.path().to_str().unwrap().to_string();
    let c = Oci::new("roroot", &["sh", "-c", WRITE_PROBE]);
    c.edit(|cfg| {
        bare_proc(cfg);
        cfg["root"]["readonly"] = json!(true);
        cfg["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/tmp", "type": "bind", "source": v, "options": ["rbind", "rw"]}),
        );
    });
    let check = |o: &str| {
        // The case: DAC and the mount table would allow this write.
        assert!(o.contains("owner-comm=0"), "{o}");
        assert!(o.contains("proc-mount-rw"), "{o}");
        assert!(o.contains("procself=refused"), "{o}");
        assert!(o.contains("etc=refused"), "{o}");
        assert!(o.contains("top=refused"), "{o}");
        for ok in ["tmp=written", "devnull=written", "shm=written"] {
            assert!(o.contains(ok), "{ok} missing: {o}");
        }
    };
    // init's process and an exec'd one.
    c.edit(|cfg| cfg["process"]["args"] = json!(["sh", "-c", format!("{WRITE_PROBE}\nsleep 30")]));
    let pid = c.create();
    assert!(c.run(&["start", &c.id]).status.success());
    wait_for(
        || c.container_stdout().contains("sys-mount="),
        "init's probe",
    );
    check(&c.container_stdout());
    let out = c.run(&["exec", &c.id, "sh", "-c", WRITE_PROBE]);
    assert!(out.status.success(), "exec: {}", text(&out.stderr));
    check(&text(&out.stdout));
    assert!(vol.path().join("new-file").exists());
    let _ = c.run(&["kill", &c.id, "KILL"]);
    reap(pid);
    let _ = c.run(&["delete", "--force", &c.id]);
    c.assert_nothing_left();
}

/// A directory outside the host's /tmp (which the container's root covers
/// while createContainer hooks run) for the hook scripts; removed on drop.
struct HookDir(PathBuf);

impl HookDir {
    fn new(tag: &str) -> HookDir {
        let exe = std::env::current_exe().unwrap();
        let d = exe
            .parent()
            .unwrap()
            .join(format!("stockade-hooks-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        HookDir(d)
    }

    fn script(&self, name: &str, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let p = self.0.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.to_str().unwrap().to_string()
    }
}

impl Drop for HookDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
#[ignore = "needs root and Landlock: creates namespaces, cgroups and id-mapped mounts"]
fn create_and_start_container_hooks_run_inside_the_container() {
    let hooks = HookDir::new("in");
    // Host /dev/shm is world-writable: DAC would let the hook write there.
    let escape = PathBuf::from(format!(
        "/dev/shm/stockade-hook-escape-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&escape);
    let create_hook = hooks.script(
        "create.sh",
        &format!(
            "cat > /tmp/create-state.json\n\
             cat /proc/self/uid_map > /tmp/create-uid-map\n\
             touch {} 2>/dev/null && echo escaped > /tmp/create-escape\n\
             true",
            escape.display()
        ),
    );
    let c = Oci::new(
        "hooks",
        &[
            "sh",
            "-c",
            "cat /create-state.json; echo; cat /create-uid-map; cat /create-escape 2>/dev/null; \
             cat /run/start-mark; cat /run/start-state.json",
        ],
    );
    c.edit(|cfg| {
        cfg["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs"}));
        cfg["hooks"] = json!({
            "createContainer": [{"path": create_hook}],
            // The path is the container's: busybox's sh.
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c",
                "cat > /run/start-state.json; echo; echo start-hook-ran > /run/start-mark"]}],
        });
    });
    let o = run_bundle(&c);
    assert!(
        !escape.exists(),
        "a createContainer hook wrote on the host: {o}"
    );
    assert!(!o.contains("escaped"), "{o}");
    let mut lines = o.lines();
    let created: Value =
        serde_json::from_str(lines.next().unwrap()).expect("createContainer's state");
    assert_eq!(created["id"], c.id.as_str());
    assert_eq!(created["status"], "creating");
    let map: Vec<u64> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(map[0], 0);
    assert_ne!(map[1], 0, "the createContainer hook ran as host root: {o}");
    assert!(
        o.contains("start-hook-ran"),
        "startContainer did not run before the process: {o}"
    );
    let started: Value = serde_json::from_str(
        o.lines()
            .find(|l| l.contains("\"ociVersion\"") && l.contains("running"))
            .expect("startContainer's state"),
    )
    .unwrap();
    assert_eq!(started["id"], c.id.as_str());

    // A failing createContainer hook fails create, leaving nothing.
    let c = Oci::new("hookfail", &["true"]);
    let bad = hooks.script("fail.sh", "echo hook-said-no >&2; exit 3");
    c.edit(|cfg| cfg["hooks"] = json!({"createContainer": [{"path": bad}]}));
    let e = create_fails(&c);
    assert!(e.contains("hook-said-no"), "{e}");
}

/// Gives the command `files` as its fds 3, 4, …
fn with_fds(cmd: &mut Command, files: &[&std::fs::File]) {
    let raw: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: fcntl and dup2 only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first, so that no source is overwritten.
            for (i, &f) in raw.iter().enumerate() {
                let high = libc::fcntl(f, libc::F_DUPFD, 100 + i as i32);
                if high < 0 || libc::dup2(high, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn preserve_fds_passes_exactly_n_descriptors_to_create_and_exec() {
    become_subreaper();
    let c = Oci::new(
        "fds",
        &[
            "sh",
            "-c",
            "echo via-3 >&3; (echo via-4 >&4) 2>/dev/null || echo fd4-closed; sleep 30",
        ],
    );
    let file = |n: &str| std::fs::File::create(c.dir.path().join(n)).unwrap();
    let read = |n: &str| std::fs::read_to_string(c.dir.path().join(n)).unwrap();
    let (a, b) = (file("a"), file("b"));
    let pid_file = c.dir.path().join("pid");
    let bundle = c.bundle();
    let mut cmd = c.cmd(&[
        "create",
        "--bundle",
        bundle.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--preserve-fds",
        "1",
        &c.id,
    ]);
    with_fds(&mut cmd, &[&a, &b]);
    // The container's stdio are files: nothing waits on a pipe init holds.
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file("stdout"))
        .stderr(file("stderr"))
        .status()
        .unwrap();
    assert!(status.success(), "create: {}", read("stderr"));
    let pid: i32 = read("pid").trim().parse().unwrap();
    assert!(c.run(&["start", &c.id]).status.success());
    wait_for(
        || c.container_stdout().contains("fd4-closed"),
        "the container's output",
    );
    assert_eq!(read("a"), "via-3\n");
    assert_eq!(read("b"), "");

    let (e3, e4) = (file("e3"), file("e4"));
    let mut cmd = c.cmd(&[
        "exec",
        "--preserve-fds",
        "2",
        &c.id,
        "sh",
        "-c",
        "echo exec-3 >&3; echo exec-4 >&4",
    ]);
    with_fds(&mut cmd, &[&e3, &e4]);
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "exec: {}", text(&out.stderr));
    assert_eq!(read("e3"), "exec-3\n");
    assert_eq!(read("e4"), "exec-4\n");
    // Without the flag nothing beyond stdio gets through.
    let mut cmd = c.cmd(&["exec", &c.id, "sh", "-c", "echo leak >&3"]);
    with_fds(&mut cmd, &[&e3]);
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        !out.status.success(),
        "fd 3 reached the process without --preserve-fds"
    );
    assert_eq!(read("e3"), "exec-3\n");
    let _ = c.run(&["kill", &c.id, "KILL"]);
    reap(pid);
    let _ = c.run(&["delete", "--force", &c.id]);
    c.assert_nothing_left();
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn devices_are_bound_when_harmless_and_refused_otherwise() {
    let c = Oci::new(
        "dev",
        &[
            "sh",
            "-c",
            "echo x > /dev/mynull && echo write-ok; stat -c '%t:%T' /dev/mynull",
        ],
    );
    c.edit(|cfg| {
        cfg["linux"]["devices"] =
            json!([{"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3}]);
    });
    let o = run_bundle(&c);
    assert!(o.contains("write-ok"), "{o}");
    assert!(o.contains("1:3"), "not the null device: {o}");

    let c = Oci::new("devkvm", &["true"]);
    c.edit(|cfg| {
        cfg["linux"]["devices"] =
            json!([{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}]);
    });
    let e = create_fails(&c);
    assert!(e.contains("/dev/sda") && e.contains("not allowed"), "{e}");
}

const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Docker's, containerd's and Kubernetes' default set.
const ENGINE_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

fn caps_json(names: &[&str]) -> Value {
    json!({"bounding": names, "effective": names, "permitted": names})
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn privileged_requests_are_refused_and_the_engines_defaults_are_exact() {
    // --privileged's capabilities.
    let c = Oci::new("allcaps", &["true"]);
    c.edit(|cfg| cfg["process"]["capabilities"] = caps_json(ALL_CAPS));
    let e = create_fails(&c);
    assert!(
        e.contains("CAP_SYS_ADMIN") && e.contains("does not grant"),
        "{e}"
    );

    // The engines' default set is granted as asked, no more.
    let c = Oci::new("engcaps", &["grep", "CapEff", "/proc/self/status"]);
    c.edit(|cfg| {
        cfg["process"]["user"] = json!({"uid": 0, "gid": 0});
        cfg["process"]["capabilities"] = caps_json(ENGINE_CAPS);
    });
    let o = run_bundle(&c);
    // CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, KILL 5, SETGID 6,
    // SETUID 7, SETPCAP 8, NET_BIND_SERVICE 10, NET_RAW 13, SYS_CHROOT 18,
    // MKNOD 27, AUDIT_WRITE 29, SETFCAP 31.
    assert!(o.contains("CapEff:\t00000000a80425fb"), "{o}");

    // An exec asking for more is refused too.
    become_subreaper();
    let c = Oci::new("execcaps", &["sleep", "30"]);
    c.create();
    assert!(c.run(&["start", &c.id]).status.success());
    let proc_file = c.dir.path().join("process.json");
    std::fs::write(
        &proc_file,
        serde_json::to_vec(&json!({
            "args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0},
            "capabilities": caps_json(&["CAP_SYS_ADMIN"]),
        }))
        .unwrap(),
    )
    .unwrap();
    let out = c.run(&["exec", "--process", proc_file.to_str().unwrap(), &c.id]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("CAP_SYS_ADMIN"),
        "{}",
        text(&out.stderr)
    );
    let _ = c.run(&["delete", "--force", &c.id]);

    // The host's pid namespace (`--pid host`: no pid entry) is refused.
    let c = Oci::new("hostpid", &["true"]);
    c.edit(|cfg| {
        cfg["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "pid")
    });
    let e = create_fails(&c);
    assert!(e.contains("host's pid namespace"), "{e}");

    // No user namespace asked for (`--userns host`): one is added anyway.
    let c = Oci::new("nouserns", &["head", "-1", "/proc/self/uid_map"]);
    c.edit(|cfg| {
        cfg["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "user");
        cfg["linux"]["uidMappings"] = json!([]);
        cfg["linux"]["gidMappings"] = json!([]);
    });
    let o = run_bundle(&c);
    let map: Vec<u64> = o.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_ne!(map[1], 0, "container root is host root: {o}");
}

#[test]
#[ignore = "needs root and Landlock (ABI >= 6): creates namespaces, cgroups and id-mapped mounts"]
fn in_the_hosts_network_namespace_the_hosts_abstract_sockets_are_out_of_reach() {
    use std::os::linux::net::SocketAddrExt;
    // A host abstract socket, as a shim's is.
    let name = format!("stockade-oci-abstract-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let probe = format!(
        r#"
import errno, socket
def attempt(n):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect("\0" + n)
        return "connected"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
own = socket.socket(socket.AF_UNIX)
own.bind("\0container-own")
own.listen(1)
print("host=" + attempt("{name}"))
print("own=" + attempt("container-own"))
"#
    );
    let c = Oci::of_image(
        "debian-python",
        "abstract",
        &["/usr/bin/python3", "-c", &probe],
    );
    // `--network host`: no network entry.
    c.edit(|cfg| {
        cfg["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "network")
    });
    let o = run_bundle(&c);
    assert!(
        o.contains("host=EPERM"),
        "the host's abstract socket was reachable: {o}"
    );
    assert!(o.contains("own=connected"), "{o}");
}
