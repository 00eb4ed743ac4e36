//! Container engines started by the OCI runtime tests (issue 16): podman,
//! dockerd and containerd, each run by the test itself with all of its
//! state in a temporary directory and **inside a network namespace the
//! test made** (loopback only, plus the bridges the engine creates there).
//! Nothing an engine or its containers send can leave that namespace.
//!
//! - [`Lab`] is that namespace, a temporary directory, and a
//!   `docker-registry` listening on 127.0.0.1:5000 *inside* the namespace
//!   with `busybox` and `python:3.11` (tests/images/build.sh's `busybox`
//!   and `debian-python`) pushed as `docker.io/library/…`, so the engines
//!   resolve those names to it (a registry mirror for dockerd,
//!   `registries.conf` for podman, `--plain-http` refs for containerd).
//! - [`Podman`], [`Docker`] and [`Containerd`] start one engine in a lab,
//!   configured to call [`runtime()`] (the runtime under test) for
//!   containers.
//! - Dropping an engine tears it down: containers removed through the
//!   engine, then the daemon stopped, then every process left in the lab's
//!   namespace or rooted in its directory killed, every mount under its
//!   directory unmounted, the directory removed.
//!
//! Every child is spawned with `setns(CLONE_NEWNET)` in `pre_exec`, so the
//! engines, registry, `skopeo`, `ctr` and `curl` all live in the lab's
//! namespace while sharing the host's mount namespace (the test sees the
//! engines' mounts and can clean them up).
//!
//! The runtime under test: `$STOCKADE_RUNC` if set (`runc` = the machine's
//! runc, the baseline that proves this harness), otherwise `stockade-runc`,
//! a symlink to the stockade binary (argv[0] dispatch).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::registry;

/// Which runtime the engines call for containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runtime {
    /// The machine's `runc` (baseline).
    Runc(PathBuf),
    /// `stockade-runc` (a symlink to the stockade binary).
    Stockade(PathBuf),
}

impl Runtime {
    pub fn path(&self) -> &Path {
        match self {
            Runtime::Runc(p) | Runtime::Stockade(p) => p,
        }
    }

    pub fn is_stockade(&self) -> bool {
        matches!(self, Runtime::Stockade(_))
    }
}

/// The runtime under test; panics (the test fails) when the stockade
/// binary does not answer as `stockade-runc`. Always `Some`: callers keep
/// their early return for the type's sake.
pub fn runtime() -> Option<Runtime> {
    static RT: OnceLock<Result<Runtime, String>> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        match std::env::var("STOCKADE_RUNC").ok().as_deref() {
            Some("runc") => return Ok(Runtime::Runc(which("runc"))),
            Some(p) if !p.is_empty() => return Ok(Runtime::Stockade(PathBuf::from(p))),
            _ => {}
        }
        // Beside the binary, as a release installs it; made once, by
        // rename so concurrent test processes never see half a link.
        let link = Path::new(super::BIN).with_file_name("stockade-runc");
        if std::fs::read_link(&link).ok().as_deref() != Some(Path::new(super::BIN)) {
            let tmp = link.with_file_name(format!(".stockade-runc.{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(super::BIN, &tmp).unwrap();
            std::fs::rename(&tmp, &link).unwrap();
        }
        // runc's `--version` prints "runc version …"; a binary without
        // the OCI front rejects the flag or prints its own usage.
        let out = Command::new(&link)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        if out.status.success() && text.contains("spec") {
            Ok(Runtime::Stockade(link))
        } else {
            Err(format!(
                "stockade-runc is not built into {} (`stockade-runc --version` gave {}: {}{}); \
                 set STOCKADE_RUNC=runc to run these tests against runc",
                super::BIN,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    match rt {
        Ok(r) => Some(r.clone()),
        // The runtime is part of this binary now: not finding it is a
        // failure, never a skip.
        Err(why) => panic!("{why}"),
    }
}

fn which(name: &str) -> PathBuf {
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed (.ci/run installs it)");
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Path of a file under the repository's `tests/engines/`.
pub fn script(name: &str) -> PathBuf {
    repo_root().join("tests/engines").join(name)
}

/// A network namespace and a temporary directory for one engine, with a
/// registry serving the test images inside the namespace.
pub struct Lab {
    pub dir: tempfile::TempDir,
    /// Unique among live labs: names host-wide things an engine makes
    /// (cgroup parents, containerd's namespace), removed at teardown.
    pub name: String,
    cgroup_parents: std::sync::Mutex<Vec<String>>,
    netns: File,
    netns_ino: u64,
    registry_pid: i32,
}

/// The registry's address inside every lab's namespace.
pub const REGISTRY: &str = "127.0.0.1:5000";

impl Lab {
    pub fn new(name: &str) -> Lab {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the engine tests need root (they start dockerd, containerd, podman); CI runs them as root"
        );
        let images = registry::images();
        let dir = tempfile::Builder::new()
            .prefix(&format!("stockade-engine-{name}-"))
            .tempdir()
            .unwrap();
        // A namespace held by a short-lived `unshare`: we keep a file
        // descriptor on it, so it lives exactly as long as we (or the
        // processes we put in it) do.
        let mut holder = Command::new("unshare")
            .args(["--net", "--", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("run unshare (util-linux)");
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let path = format!("/proc/{}/ns/net", holder.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        let netns = loop {
            if let Ok(m) = std::fs::metadata(&path) {
                if m.ino() != own {
                    break File::open(&path).unwrap();
                }
            }
            assert!(Instant::now() < deadline, "unshare --net did not start");
            std::thread::sleep(Duration::from_millis(5));
        };
        let _ = holder.kill();
        let _ = holder.wait();
        let netns_ino = netns.metadata().unwrap().ino();
        let unique = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .rsplit('-')
            .next()
            .unwrap()
            .to_lowercase();
        let mut lab = Lab {
            name: format!("stockade-test-{name}-{unique}"),
            cgroup_parents: std::sync::Mutex::new(Vec::new()),
            dir,
            netns,
            netns_ino,
            registry_pid: 0,
        };
        lab.ok(Command::new("ip").args(["link", "set", "lo", "up"]));
        lab.start_registry();
        lab.push(&images.join("busybox"), "latest", "library/busybox:latest");
        lab.push(
            &images.join("debian-python"),
            "latest",
            "library/python:3.11",
        );
        lab
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A command that runs inside the lab's network namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        self.enter(&mut c);
        c
    }

    fn enter(&self, c: &mut Command) {
        let fd = self.netns.as_raw_fd();
        // SAFETY: setns(2) is async-signal-safe and `fd` stays open in the
        // parent (and so in the forked child) for the whole spawn.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c.stdin(Stdio::null());
    }

    /// Runs CMD (already built with [`Lab::cmd`] or not) in the namespace
    /// and insists it succeeds; returns stdout.
    pub fn ok(&self, cmd: &mut Command) -> String {
        self.enter(cmd);
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn start_registry(&mut self) {
        let reg = self.path().join("registry");
        std::fs::create_dir_all(reg.join("storage")).unwrap();
        let cfg = reg.join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {REGISTRY}\n",
                reg.join("storage").display()
            ),
        )
        .unwrap();
        let log = File::create(reg.join("log")).unwrap();
        let mut c = self.cmd("docker-registry");
        c.arg("serve")
            .arg(&cfg)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.registry_pid = spawn_daemon(c, "docker-registry");
        self.wait_http(&format!("http://{REGISTRY}/v2/"), || {
            std::fs::read_to_string(reg.join("log")).unwrap_or_default()
        });
    }

    /// Waits until `curl URL` (from inside the namespace) gets any answer.
    pub fn wait_http(&self, url: &str, log: impl Fn() -> String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self
                .cmd("curl")
                .args(["-s", "-o", "/dev/null", "--max-time", "2", url])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "{url} did not answer: {}", log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Copies tag TAG of the OCI layout at LAYOUT into the lab's registry
    /// as REPO_TAG, in Docker's manifest format (dockerd 20.10 pulls it
    /// through a mirror as well as OCI).
    pub fn push(&self, layout: &Path, tag: &str, repo_tag: &str) {
        self.ok(self
            .cmd("skopeo")
            .args(["copy", "-q", "--format", "v2s2", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{REGISTRY}/{repo_tag}")));
    }

    /// Kills every process in the lab's namespace or rooted (chroot or
    /// pivot_root) under its directory, then unmounts everything under
    /// the directory. Called by the engines' Drop after their own
    /// orderly teardown; what remains here is what that missed.
    fn sweep(&self) {
        let me = std::process::id() as i32;
        let base = self.path().to_path_buf();
        for _round in 0..20 {
            let mut left = 0;
            for pid in all_pids() {
                if pid == me {
                    continue;
                }
                let in_ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
                    .is_ok_and(|m| m.ino() == self.netns_ino);
                let rooted = std::fs::read_link(format!("/proc/{pid}/root"))
                    .is_ok_and(|r| r.starts_with(&base));
                if in_ns || rooted {
                    left += 1;
                    // SAFETY: kill(2) has no memory effects.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            if left == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for m in mounts_under(&base) {
            let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: umount2 on a path string we own; MNT_DETACH so a
            // busy mount goes away once its last user is gone.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }

    /// Names a top-level cgroup an engine will create (in every
    /// hierarchy), to be removed at teardown once empty.
    pub fn own_cgroup(&self, name: &str) {
        self.cgroup_parents.lock().unwrap().push(name.to_owned());
    }

    fn remove_cgroups(&self) {
        for name in self.cgroup_parents.lock().unwrap().iter() {
            let mut dirs = Vec::new();
            if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
                for e in entries.flatten() {
                    dirs.push(e.path().join(name));
                }
            }
            for d in dirs.iter().filter(|d| d.is_dir()) {
                // Deepest first; rmdir only succeeds on empty cgroups.
                let mut all: Vec<PathBuf> = walk_dirs(d);
                all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
                for sub in all {
                    let _ = std::fs::remove_dir(sub);
                }
            }
        }
    }

    /// Processes in the lab's namespace or rooted under its directory,
    /// but the lab's own registry.
    pub fn processes(&self) -> Vec<i32> {
        let base = self.path().to_path_buf();
        all_pids()
            .into_iter()
            .filter(|&pid| pid != self.registry_pid)
            .filter(|pid| {
                std::fs::metadata(format!("/proc/{pid}/ns/net"))
                    .is_ok_and(|m| m.ino() == self.netns_ino)
                    || std::fs::read_link(format!("/proc/{pid}/root"))
                        .is_ok_and(|r| r.starts_with(&base))
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.registry_pid > 0 {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(self.registry_pid, libc::SIGKILL) };
        }
        self.sweep();
        self.remove_cgroups();
    }
}

/// D and every directory under it (cgroup trees: no symlinks to follow).
fn walk_dirs(d: &Path) -> Vec<PathBuf> {
    let mut out = vec![d.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Mount points under BASE (deepest first), from /proc/self/mountinfo.
pub fn mounts_under(base: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount)
        .filter(|p| p.starts_with(base))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

fn unescape_mount(s: &str) -> PathBuf {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

/// Starts a long-lived daemon with PR_SET_PDEATHSIG from a thread that
/// never ends (PDEATHSIG follows the forking thread), so it dies with the
/// test process even if the test is killed. Returns its pid.
fn spawn_daemon(mut cmd: Command, what: &str) -> i32 {
    // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("{what}-parent"))
        .spawn(move || {
            let child = cmd.spawn();
            tx.send(
                child
                    .as_ref()
                    .map(|c| c.id() as i32)
                    .map_err(|e| e.to_string()),
            )
            .unwrap();
            if let Ok(mut c) = child {
                // Reap it when it ends, then keep the thread (and the
                // PDEATHSIG of nothing) parked.
                let _ = c.wait();
            }
            loop {
                std::thread::park();
            }
        })
        .unwrap();
    rx.recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"))
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn stop_daemon(pid: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

pub fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---- podman ---------------------------------------------------------------

/// podman (no daemon) with its own root, runroot, containers.conf,
/// storage.conf and registries.conf in the lab, calling the runtime
/// under test. conmon is podman's.
pub struct Podman {
    pub lab: Lab,
    pub runtime: Runtime,
}

impl Podman {
    pub fn new(runtime: &Runtime) -> Podman {
        let lab = Lab::new("podman");
        let d = lab.path().join("podman");
        for sub in ["root", "runroot", "tmp", "networks"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let p = |s: &str| d.join(s).display().to_string();
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                p("root"),
                p("runroot")
            ),
        )
        .unwrap();
        // Ulimits: the machine's own limits (very high nofile) are more
        // than podman 4.3 may hand a container, so name usual ones.
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[containers]\n\
                 default_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
                 log_driver = \"k8s-file\"\n\
                 [engine]\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 events_logfile_path = \"{}\"\n\
                 tmp_dir = \"{}\"\n\
                 static_dir = \"{}\"\n\
                 volume_path = \"{}\"\n\
                 [network]\n\
                 network_backend = \"netavark\"\n\
                 network_config_dir = \"{}\"\n",
                p("events.log"),
                p("tmp"),
                p("root/libpod"),
                p("root/volumes"),
                p("networks"),
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("registries.conf"),
            format!(
                "unqualified-search-registries = [\"docker.io\"]\nshort-name-mode = \"permissive\"\n\
                 [[registry]]\nprefix = \"docker.io\"\nlocation = \"{REGISTRY}\"\ninsecure = true\n"
            ),
        )
        .unwrap();
        let podman = Podman {
            lab,
            runtime: runtime.clone(),
        };
        let out = podman.run(&["pull", "-q", "busybox"]);
        assert!(out.status.success(), "podman pull busybox: {}", text(&out));
        podman
    }

    /// `podman --runtime RUNTIME ARGS…` (not yet run), in the lab.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let d = self.lab.path().join("podman");
        let mut c = self.lab.cmd("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("TMPDIR", d.join("tmp"))
            .arg("--runtime")
            .arg(self.runtime.path())
            .args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "podman {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.run(&["network", "prune", "--force"]);
        // Layers are overlay mounts podman keeps while it thinks they are
        // in use; the sweep below unmounts whatever stays.
        let _ = self.run(&["system", "reset", "--force"]);
    }
}

// ---- dockerd ----------------------------------------------------------------

/// dockerd (with the containerd it starts itself) in a lab, with a
/// runtime `stockade` = the runtime under test (`--add-runtime`), and
/// optionally as the default runtime.
pub struct Docker {
    pub lab: Lab,
    pub runtime: Runtime,
    pid: i32,
}

impl Docker {
    pub fn new(runtime: &Runtime, default_runtime: bool) -> Docker {
        let lab = Lab::new("docker");
        let d = lab.path().join("docker");
        std::fs::create_dir_all(&d).unwrap();
        let log = File::create(d.join("dockerd.log")).unwrap();
        let mut c = lab.cmd("dockerd");
        c.arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .args(["--registry-mirror", &format!("http://{REGISTRY}")])
            .args(["--insecure-registry", REGISTRY])
            .args(["--containerd-namespace", "stockade-test"])
            .args(["--containerd-plugins-namespace", "stockade-test-plugins"])
            // Containers' cgroups under a parent of this lab's, not the
            // host-wide /docker.
            .args(["--cgroup-parent", &format!("/{}", lab.name)])
            .arg("--add-runtime")
            .arg(format!("stockade={}", runtime.path().display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if default_runtime {
            c.args(["--default-runtime", "stockade"]);
        }
        std::fs::write(d.join("daemon.json"), "{}\n").unwrap();
        lab.own_cgroup(&lab.name);
        let pid = spawn_daemon(c, "dockerd");
        let docker = Docker {
            lab,
            runtime: runtime.clone(),
            pid,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !docker.run(&["version"]).status.success() {
            assert!(
                alive(pid) && Instant::now() < deadline,
                "dockerd did not start: {}",
                std::fs::read_to_string(d.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        docker
    }

    pub fn host(&self) -> String {
        format!(
            "unix://{}",
            self.lab.path().join("docker/docker.sock").display()
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.lab.path().join("docker/dockerd.log")).unwrap_or_default()
    }

    /// `docker -H SOCK ARGS…` (not yet run).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.lab.cmd("docker");
        c.arg("-H").arg(self.host()).args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "docker {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `python3 tests/engines/SCRIPT ARGS…` with DOCKER_HOST set: Debian's
    /// Python, whose docker-py is python3-docker (.ci/run installs it),
    /// whatever other python3 comes first on PATH.
    pub fn python(&self, script_name: &str, args: &[&str]) -> Output {
        self.lab
            .cmd("/usr/bin/python3")
            .arg(script(script_name))
            .args(args)
            .env("DOCKER_HOST", self.host())
            .output()
            .unwrap()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if let Ok(out) = self.cmd(&["ps", "-aq"]).output() {
            let ids = String::from_utf8_lossy(&out.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.run(&args);
            }
        }
        stop_daemon(self.pid);
    }
}

// ---- containerd -------------------------------------------------------------

/// containerd with a generated config.toml (own root, state, sockets)
/// declaring the CRI runtime handler `stockade` (`io.containerd.runc.v2`
/// with `BinaryName` = the runtime under test) — the handler a Kubernetes
/// RuntimeClass names. `ctr` talks to it in a namespace named after the
/// lab ([`Lab::name`]).
pub struct Containerd {
    pub lab: Lab,
    pub runtime: Runtime,
    pid: i32,
}

/// The containerd config the tests start from: the daemon's own paths and
/// a CRI section with runc as default (as a node's config has it).
pub fn containerd_base_config(dir: &Path) -> String {
    format!(
        "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\n\
         [grpc]\n  address = \"{sock}\"\n\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\n\
         [plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    sandbox_image = \"{REGISTRY}/library/busybox:latest\"\n\
         \x20   [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n      default_runtime_name = \"runc\"\n\
         \x20     [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n        runtime_type = \"io.containerd.runc.v2\"\n",
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        sock = dir.join("containerd.sock").display(),
    )
}

impl Containerd {
    /// containerd on `config` (a path to config.toml; see
    /// [`containerd_base_config`] and deploy/kubernetes/install.sh).
    pub fn with_config(lab: Lab, runtime: &Runtime, config: &Path) -> Containerd {
        let d = lab.path().join("containerd");
        std::fs::create_dir_all(&d).unwrap();
        let log = File::create(d.join("containerd.log")).unwrap();
        let mut c = lab.cmd("containerd");
        c.arg("--config")
            .arg(config)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let pid = spawn_daemon(c, "containerd");
        // ctr's containers get cgroupsPath /NAMESPACE/ID and the shim
        // keeps the runtime's state in /run/containerd/runc/NAMESPACE:
        // the lab's name keeps both apart from other tests' and the host's.
        lab.own_cgroup(&lab.name);
        let ctd = Containerd {
            lab,
            runtime: runtime.clone(),
            pid,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ctd.ctr(&["version"]).status.success() {
            assert!(
                alive(pid) && Instant::now() < deadline,
                "containerd did not start: {}",
                ctd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = ctd.ctr(&[
            "image",
            "pull",
            "--plain-http",
            &format!("{REGISTRY}/library/busybox:latest"),
        ]);
        assert!(out.status.success(), "ctr image pull: {}", text(&out));
        ctd
    }

    /// containerd with the base config plus the `stockade` handler written
    /// by this harness (the installer test writes its own).
    pub fn new(runtime: &Runtime) -> Containerd {
        let lab = Lab::new("containerd");
        let d = lab.path().join("containerd");
        std::fs::create_dir_all(&d).unwrap();
        let config = format!(
            "{}      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.stockade]\n\
             \x20       runtime_type = \"io.containerd.runc.v2\"\n\
             \x20       [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.stockade.options]\n\
             \x20         BinaryName = \"{}\"\n",
            containerd_base_config(&d),
            runtime.path().display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let path = d.join("config.toml");
        Containerd::with_config(lab, runtime, &path)
    }

    pub fn socket(&self) -> PathBuf {
        self.lab.path().join("containerd/containerd.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.lab.path().join("containerd/containerd.log"))
            .unwrap_or_default()
    }

    /// `ctr -a SOCK -n LAB_NAME ARGS…`.
    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut c = self.lab.cmd("ctr");
        c.arg("-a")
            .arg(self.socket())
            .arg("-n")
            .arg(&self.lab.name)
            .args(args);
        c
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(out.status.success(), "ctr {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Ok(out) = self.ctr_cmd(&["task", "ls", "-q"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
                let _ = self.ctr(&["task", "delete", "--force", id]);
            }
        }
        if let Ok(out) = self.ctr_cmd(&["container", "ls", "-q"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.ctr(&["container", "delete", id]);
            }
        }
        stop_daemon(self.pid);
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.lab.name));
    }
}
