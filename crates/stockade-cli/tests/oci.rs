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
        assert!(nix::unistd::geteuid().is_root(), "{ROOT_NEEDED}");
        let dir = tempfile::Builder::new()
            .prefix("stockade-oci-test")
            .tempdir()
            .unwrap();
        let image = common::registry::image("busybox");
        let out = Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:latest", image.display()))
            .arg(dir.path().join("bundle"))
            .output()
            .expect("run umoci (apt-get install umoci)");
        assert!(
            out.status.success(),
            "umoci: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = format!("{tag}-{}", std::process::id());
        let oci = Oci {
            cgroup_rel: format!("stockade-oci-test/{id}"),
            dir,
            id,
        };
        oci.edit(|c| {
            c["process"]["terminal"] = json!(false);
            c["process"]["args"] = json!(args);
            c["linux"]["cgroupsPath"] = json!(format!("/{}", oci.cgroup_rel));
        });
        oci
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn edit(&self, f: impl FnOnce(&mut Value)) {
        let path = self.bundle().join("config.json");
        let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f(&mut c);
        std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
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
         cat {} 2>&1 || echo host-file-unreachable; id -u; echo > /proc/sys/kernel/hostname 2>&1 || echo sysctl-refused",
        marker.path().display()
    );
    let c = Oci::new("iso", &["sh", "-c", &probe]);
    c.edit(|cfg| {
        cfg["process"]["user"] = json!({"uid": 0, "gid": 0});
        cfg["process"]["capabilities"] = json!({});
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
