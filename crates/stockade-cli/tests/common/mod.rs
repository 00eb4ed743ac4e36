//! Helpers for the privileged end-to-end tests: they run the real
//! `stockade` binary as root, exactly as a user would.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub mod bundle;
pub mod daemon;
pub mod engines;
pub mod hostns;
pub mod registry;

pub const BIN: &str = env!("CARGO_BIN_EXE_stockade");

/// A state directory private to one test, removed at the end.
pub struct Env {
    pub state: tempfile::TempDir,
    /// Extra environment every command of this test gets.
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Env {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (namespaces, cgroups); CI runs it as root"
        );
        Env {
            state: tempfile::Builder::new()
                .prefix("stockade-test-state")
                .tempdir()
                .unwrap(),
            vars: Vec::new(),
        }
    }

    /// The same, with `key=value` in every command's environment.
    pub fn with_env(mut self, key: &str, value: &str) -> Env {
        self.vars.push((key.into(), value.into()));
        self
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("STOCKADE_STATE_DIR", self.state.path());
        c.envs(self.vars.iter().map(|(k, v)| (k, v)));
        c.stdin(Stdio::null());
        c
    }

    /// `stockade run ARGS...` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().arg("run").args(args).output().unwrap()
    }

    /// Runs `sh -c SCRIPT` in a default sandbox.
    pub fn sh(&self, script: &str) -> Output {
        self.run(&["--", "sh", "-c", script])
    }

    /// Runs with `--report` and returns the output and the parsed report.
    pub fn run_report(&self, args: &[&str]) -> (Output, serde_json::Value) {
        let report = self
            .state
            .path()
            .join(format!("report-{}.json", rand_suffix()));
        let mut full = vec!["--report", report.to_str().unwrap()];
        full.extend_from_slice(args);
        let out = self.run(&full);
        let text = std::fs::read_to_string(&report)
            .unwrap_or_else(|e| panic!("no report written ({e}); stderr: {}", stderr(&out)));
        (out, serde_json::from_str(&text).unwrap())
    }

    /// Starts `stockade run -- sh -c SCRIPT` and returns it with the
    /// first line it printed (the script says it is ready that way).
    pub fn start_sh(&self, script: &str) -> (std::process::Child, String) {
        let mut child = self
            .cmd()
            .args(["run", "--", "sh", "-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        (child, line)
    }

    pub fn sandboxes_dir(&self) -> PathBuf {
        self.state.path().join("sandboxes")
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn rand_suffix() -> String {
    let mut b = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A directory owned by an unprivileged host user, usable as a workspace.
pub fn user_dir(uid: u32) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("stockade-ws")
        .tempdir()
        .unwrap();
    std::os::unix::fs::chown(d.path(), Some(uid), Some(uid)).unwrap();
    d
}

/// Paths of stockade cgroups (any hierarchy) whose name is `id`.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for base in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if let Ok(entries) = std::fs::read_dir(base) {
            for e in entries.flatten() {
                let p = e.path().join("stockade").join(id);
                if p.exists() {
                    found.push(p);
                }
            }
            let p = Path::new(base).join("stockade").join(id);
            if p.exists() {
                found.push(p);
            }
        }
    }
    found
}

/// Pids of host processes whose argv[0] is `marker`.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            // argv[0] is the marker itself (`exec -a MARKER`); the
            // supervisor and shells merely mention it in later arguments.
            let argv0 = cmd.split(|&b| b == 0).next().unwrap_or_default();
            if String::from_utf8_lossy(argv0) == marker {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Waits (bounded) until `f` holds; returns whether it did.
/// [`eventually`], waiting up to `secs` seconds (for slow work such as
/// removing a tree of tens of thousands of levels on a loaded machine).
pub fn eventually_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    f()
}

pub fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

/// Host mounts whose source or mount point lies under `dir`: a sandbox
/// that leaked a mount into the host's namespace would show up here
/// (other tests' mounts, elsewhere, do not disturb the count).
pub fn mounts_under(dir: &Path) -> usize {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir))
        .count()
}

/// A running `stockade shim` process.
pub struct ShimProcess {
    pub pid: i32,
    /// `None` once it is a zombie.
    pub ppid: Option<i32>,
    pub args: Vec<Vec<u8>>,
    /// Started with `--zygote` (blanked in the idle shims it forks).
    pub zygote: bool,
}

impl ShimProcess {
    /// The `--id` value on its command line.
    pub fn id_arg(&self) -> Option<&[u8]> {
        match self.args.get(2) {
            Some(flag) if flag == b"--id" => self.args.get(3).map(Vec::as_slice),
            _ => None,
        }
    }
}

/// Every `stockade shim` process that is not a zombie.
pub fn shim_processes() -> Vec<ShimProcess> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<Vec<u8>> = cmd.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
        if args.len() < 2 || args[1] != b"shim" {
            continue;
        }
        let zygote = args
            .iter()
            .any(|a| a == stockade_core::shim::ZYGOTE_FLAG.as_bytes());
        out.push(ShimProcess {
            pid,
            ppid: parent_of(pid),
            args,
            zygote,
        });
    }
    out
}

/// The parent of `pid`, while it exists and is not a zombie.
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    if rest.next()? == "Z" {
        return None;
    }
    rest.next()?.parse().ok()
}
