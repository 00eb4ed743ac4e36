//! `stockade task`: clone a repository into a sandbox, run an agent on it,
//! and hand back what it changed, what it printed and what it cost.
//!
//! Every step that touches the repository runs inside a sandbox — the
//! clone, the agent, and the collection of the patch — because a hostile
//! repository or agent controls `.git` (hooks, `core.fsmonitor`, filters),
//! and running the host's git on it would run its commands on the host.
//! The three sandboxes share one host directory as `/workspace`, so the
//! patch can be collected even when the agent's sandbox was killed (time,
//! memory, disk).

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use stockade_isolate::idmap::{AGENT_ID, HOST_ID_BASE};
use stockade_policy::{BindMount, CidrRule, HostPattern, NetMode, Policy, Span};

use crate::report::{Outcome, Report};
use crate::run::{run, RunOptions};

/// What to do.
#[derive(Debug, Clone)]
pub struct TaskOptions {
    /// A local path to a git repository (remote URLs need network egress).
    pub repo: String,
    pub git_ref: Option<String>,
    /// The agent's sandbox policy (limits, timeout, environment).
    pub policy: Policy,
    pub agent: Vec<String>,
    pub task: Option<String>,
    /// Globs (relative to the repository) of files to copy out.
    pub collect: Vec<String>,
    pub out: PathBuf,
    pub state_dir: PathBuf,
    /// Print a progress line per phase and stream the agent's output.
    pub live: bool,
    /// Keep the workspace (the clone with the agent's changes) on the host
    /// after the task, for inspection; its path is in the report.
    pub keep: bool,
    /// How much of the agent's output, patch and artifacts lands on the
    /// host.
    pub limits: OutputLimits,
    /// How to reach registries when the policy's image must be pulled.
    pub pull: stockade_image::PullOptions,
}

/// Bounds on what a task writes on the host: the agent's sandbox is
/// capped, but its output is copied out, and must be too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// Bytes kept of each of the agent's stdout and stderr (the first
    /// ones; the rest is counted and dropped).
    pub log: u64,
    /// Largest `changes.patch`; a larger diff is cut there and the task
    /// says so.
    pub patch: u64,
    /// Largest single artifact (by size, holes included); larger ones
    /// are not copied, and the report says why.
    pub artifact: u64,
    /// All artifacts together.
    pub artifacts_total: u64,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            log: 64 << 20,
            patch: 256 << 20,
            artifact: 256 << 20,
            artifacts_total: 1 << 30,
        }
    }
}

/// An artifact that was not copied out.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// A phase and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub seconds: f64,
    pub outcome: Outcome,
}

/// `report.json`: the agent's run report plus what the task adds.
#[derive(Debug, Clone, Serialize)]
pub struct TaskReport {
    #[serde(flatten)]
    pub run: Report,
    pub repo: String,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub base_commit: Option<String>,
    pub files_changed: usize,
    pub lines_added: usize,
    pub lines_removed: usize,
    pub phases: Vec<Phase>,
    pub artifacts: Vec<String>,
    /// Artifacts matched but not copied (too large for the limits).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub artifacts_skipped: Vec<Skipped>,
    /// Bytes the agent wrote to stdout and stderr; the logs keep at most
    /// `OutputLimits::log` of each (`*_truncated` then).
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// `changes.patch` was cut at `OutputLimits::patch`.
    pub patch_truncated: bool,
    /// With `keep`: the host directory holding the agent's working tree
    /// (owned by the sandbox block's agent id; bind it as a workspace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_workspace: Option<PathBuf>,
}

/// The task could not be set up at all (bad input on the host side).
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TaskError {
    let what = what.into();
    move |source| TaskError::Io { what, source }
}

const SOURCE: &str = "/mnt/source";
const TASK_FILE: &str = "/mnt/task/TASK.md";
/// Collection gets a generous but bounded time of its own.
const COLLECT_TIMEOUT: u64 = 300;

/// Runs the whole task; writes `changes.patch`, `stdout.log`,
/// `stderr.log`, `report.json` and `artifacts/` into `opts.out`.
pub fn run_task(opts: &TaskOptions) -> Result<TaskReport, TaskError> {
    if opts.agent.is_empty() {
        return Err(TaskError::Invalid(
            "no agent command given; put it after `--`".into(),
        ));
    }
    let source = source_of(&opts.repo)?;
    let mut opts = opts.clone();
    opts.policy = with_repo_access(opts.policy, &source)?;
    opts.policy
        .validate()
        .map_err(|e| TaskError::Invalid(e.to_string()))?;
    let opts = &opts;
    fs::create_dir_all(&opts.out).map_err(io(format!(
        "create the output directory {}",
        opts.out.display()
    )))?;
    let id = crate::prepare::new_id();
    // The task's workspace and its sandboxes' scratch directories share one
    // capped subvolume where the host has the scratch filesystem: the
    // agent's writes, wherever they go, count against one `--disk`.
    let task_scratch = match crate::scratch::ScratchFs::get() {
        Ok(fs) => {
            let t = fs
                .create_task(&id, opts.policy.limits.disk.bytes())
                .map_err(|e| TaskError::Invalid(stockade_isolate::error_chain(&e)))?;
            Some((fs, t))
        }
        Err(_) => None,
    };
    let within = task_scratch.as_ref().map(|(_, t)| t.subvol.clone());
    let scratch = match &within {
        Some(s) => s.path.clone(),
        None => opts.state_dir.join("tasks").join(&id),
    };
    let mut result = run_phases(opts, &source, &scratch, within.as_ref());
    if opts.keep {
        if let Ok(report) = result.as_mut() {
            let ws = scratch.join("workspace");
            report.kept_workspace = Some(ws.clone());
            // report.json was written before we knew; write it again.
            if let Ok(json) = serde_json::to_vec_pretty(report) {
                let _ = fs::write(opts.out.join("report.json"), json);
            }
            if opts.live {
                eprintln!(
                    "stockade: task: kept the workspace at {}; inspect it with `stockade run --workspace {} -- bash`",
                    ws.display(),
                    ws.display()
                );
            }
            let _ = crate::state::remove_tree(&scratch.join("task"));
            if let Some((fs, _)) = &task_scratch {
                fs.keep_task(&id);
            }
        }
    } else if let Some((fs, t)) = &task_scratch {
        let _ = fs.delete(&t.subvol.name);
        let _ = fs::remove_file(fs.root().join(format!("{}.lock", t.subvol.name)));
    } else {
        let _ = crate::state::remove_tree(&scratch);
    }
    result
}

/// Where the repository comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// A local repository, bound read-only into the clone sandbox.
    Local(PathBuf),
    /// A remote URL, cloned over the network from inside the sandbox; the
    /// host is what the task's egress policy must allow.
    Remote { url: String, host: String },
}

/// The host part of a clone URL (`scheme://[user@]host[:port]/…`).
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

fn source_of(repo: &str) -> Result<Source, TaskError> {
    if repo.contains("://") {
        let scheme = repo.split("://").next().unwrap_or("");
        if !matches!(scheme, "http" | "https" | "git") {
            return Err(TaskError::Invalid(format!(
                "{repo}: only http://, https:// and git:// repositories can be cloned in a sandbox \
                 (there are no ssh keys inside); clone it on the host and pass the path"
            )));
        }
        let host =
            url_host(repo).ok_or_else(|| TaskError::Invalid(format!("{repo} has no host")))?;
        return Ok(Source::Remote {
            url: repo.to_string(),
            host,
        });
    }
    if repo.contains('@') && repo.contains(':') && !Path::new(repo).exists() {
        return Err(TaskError::Invalid(format!(
            "{repo} is an ssh address; sandboxes have no ssh keys — use an https:// URL \
             or clone it on the host and pass the path"
        )));
    }
    local_repo(repo).map(Source::Local)
}

/// The task's network: a remote repository's host is allowed (and the
/// mode becomes allowlist if the policy said none); a local one changes
/// nothing.
fn with_repo_access(mut policy: Policy, source: &Source) -> Result<Policy, TaskError> {
    let Source::Remote { host, .. } = source else {
        return Ok(policy);
    };
    let net = &mut policy.network;
    if net.mode == NetMode::None {
        net.mode = NetMode::Allowlist;
    }
    if net.mode == NetMode::Allowlist {
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                let rule = if ip.is_ipv6() {
                    format!("[{ip}/128]")
                } else {
                    format!("{ip}/32")
                };
                let rule: CidrRule = rule
                    .parse()
                    .map_err(|e| TaskError::Invalid(format!("repository host {host}: {e}")))?;
                net.allow_cidrs.push(rule);
            }
            Err(_) => {
                let pattern: HostPattern = host
                    .parse()
                    .map_err(|e| TaskError::Invalid(format!("repository host {host}: {e}")))?;
                if !net.allow_hosts.contains(&pattern) {
                    net.allow_hosts.push(pattern);
                }
            }
        }
    }
    Ok(policy)
}

fn local_repo(repo: &str) -> Result<PathBuf, TaskError> {
    let path = Path::new(repo);
    let canonical = path
        .canonicalize()
        .map_err(|e| TaskError::Invalid(format!("repository {repo} cannot be used: {e}")))?;
    if !canonical.join(".git").exists() && !canonical.join("HEAD").exists() {
        return Err(TaskError::Invalid(format!(
            "{repo} is not a git repository"
        )));
    }
    Ok(canonical)
}

fn run_phases(
    opts: &TaskOptions,
    source: &Source,
    scratch: &Path,
    within: Option<&crate::scratch::Subvol>,
) -> Result<TaskReport, TaskError> {
    // The shared workspace belongs to the sandbox block's agent id, so
    // every phase's agent can write it and no host user owns it.
    let workspace = scratch.join("workspace");
    fs::create_dir_all(&workspace).map_err(io("create the task workspace"))?;
    // Rootless, the agent is the caller (see `stockade_isolate::rootless`),
    // who owns the directory already.
    if nix::unistd::geteuid().is_root() {
        let agent_host = HOST_ID_BASE + AGENT_ID;
        std::os::unix::fs::chown(&workspace, Some(agent_host), Some(agent_host))
            .map_err(io("chown the task workspace"))?;
    }
    let task_dir = scratch.join("task");
    fs::create_dir_all(&task_dir).map_err(io("create the task directory"))?;
    fs::write(task_dir.join("TASK.md"), opts.task.as_deref().unwrap_or(""))
        .map_err(io("write the task file"))?;

    let mut phases = Vec::new();
    let progress = |msg: &str| {
        if opts.live {
            eprintln!("stockade: task: {msg}");
        }
    };

    // 1. Clone inside a sandbox, from a read-only view of the source.
    progress(&format!(
        "clone {}{}",
        opts.repo,
        opts.git_ref
            .as_ref()
            .map(|r| format!(" at {r}"))
            .unwrap_or_default()
    ));
    let mut clone_policy = helper_policy(&workspace, &opts.policy);
    let from = match source {
        Source::Local(path) => {
            clone_policy.filesystem.ro_bind.push(BindMount {
                src: path.clone(),
                dst: SOURCE.into(),
            });
            SOURCE.to_string()
        }
        // Cloned over the task's egress policy (the repo host allowed).
        Source::Remote { url, .. } => {
            clone_policy.network = opts.policy.network.clone();
            url.clone()
        }
    };
    let env = &mut clone_policy.process.env;
    env.insert("REF".into(), opts.git_ref.clone().unwrap_or_default());
    env.insert("FROM".into(), from);
    let script = "set -e; git clone -q --no-local \"$FROM\" /workspace; cd /workspace; \
         if [ -n \"$REF\" ]; then git checkout -q \"$REF\" --; fi; git rev-parse HEAD";
    let t = Instant::now();
    let (clone, out, err) = capture_small(opts, within, clone_policy, &["sh", "-c", script])?;
    phases.push(Phase {
        name: "clone",
        seconds: t.elapsed().as_secs_f64(),
        outcome: clone.outcome,
    });
    let base = String::from_utf8_lossy(&out)
        .trim()
        .lines()
        .last()
        .map(str::to_string);
    let mut report = TaskReport {
        run: clone.clone(),
        repo: opts.repo.clone(),
        git_ref: opts.git_ref.clone(),
        base_commit: None,
        files_changed: 0,
        lines_added: 0,
        lines_removed: 0,
        phases: Vec::new(),
        artifacts: Vec::new(),
        artifacts_skipped: Vec::new(),
        stdout_bytes: 0,
        stderr_bytes: 0,
        stdout_truncated: false,
        stderr_truncated: false,
        patch_truncated: false,
        kept_workspace: None,
    };
    if clone.outcome != Outcome::Exited || clone.exit_code != Some(0) || base.is_none() {
        // The clone's own stderr, or stockade's error if the sandbox
        // could not even start.
        let mut why = String::from_utf8_lossy(&err).trim().to_string();
        if why.is_empty() {
            why = clone.error.clone().unwrap_or_default();
        }
        report.run.outcome = Outcome::Error;
        report.run.exit_code = Some(125);
        report.run.error = Some(match &opts.git_ref {
            Some(r)
                if why.contains("pathspec")
                    || why.contains("reference")
                    || why.contains("did not match") =>
            {
                format!("ref {r} does not exist in {}: {why}", opts.repo)
            }
            _ => format!("cannot clone {}: {why}", opts.repo),
        });
        report.phases = phases;
        for name in ["changes.patch", "stdout.log", "stderr.log"] {
            fs::write(opts.out.join(name), b"").map_err(io(format!("write {name}")))?;
        }
        write_report(opts, &report)?;
        return Ok(report);
    }
    report.base_commit = base.clone();

    // 2. The agent, with its own policy, streaming to our terminal.
    progress(&format!("run {}", opts.agent.join(" ")));
    let mut agent_policy = opts.policy.clone();
    agent_policy.filesystem.workspace = Some(workspace.clone());
    agent_policy.process.cwd = Some("/workspace".into());
    agent_policy.filesystem.ro_bind.push(BindMount {
        src: task_dir.clone(),
        dst: "/mnt/task".into(),
    });
    let env = &mut agent_policy.process.env;
    env.insert(
        "STOCKADE_TASK".into(),
        opts.task.clone().unwrap_or_default(),
    );
    env.insert("STOCKADE_TASK_FILE".into(), TASK_FILE.into());
    git_identity(env);
    let t = Instant::now();
    let to = |name: &str| -> Result<Sink, TaskError> {
        Ok(Sink {
            file: fs::File::create(opts.out.join(name)).map_err(io(format!("create {name}")))?,
            cap: opts.limits.log,
            echo: None,
            stop_at_cap: false,
            sparse: false,
        })
    };
    let (mut out, mut err) = (to("stdout.log")?, to("stderr.log")?);
    if opts.live {
        out.echo = Some(1);
        err.echo = Some(2);
    }
    let (agent, out_total, err_total) = capture(
        opts,
        within,
        agent_policy,
        &opts.agent.iter().map(String::as_str).collect::<Vec<_>>(),
        vec![workspace.clone()],
        out,
        err,
    )?;
    phases.push(Phase {
        name: "run",
        seconds: t.elapsed().as_secs_f64(),
        outcome: agent.outcome,
    });
    report.run = agent;
    report.stdout_bytes = out_total;
    report.stderr_bytes = err_total;
    report.stdout_truncated = out_total > opts.limits.log;
    report.stderr_truncated = err_total > opts.limits.log;

    // 3. Collect the patch (and artifacts) in a fresh sandbox: the agent's
    //    may be dead, and its .git is not to be trusted on the host.
    progress("collect");
    let t = Instant::now();
    let mut collect_policy = helper_policy(&workspace, &opts.policy);
    collect_policy
        .process
        .env
        .insert("BASE".into(), base.unwrap_or_default());
    let script = "set -e; cd /workspace; export GIT_INDEX_FILE=/tmp/stockade-index; \
                  git read-tree \"$BASE\"; git add -A; git diff --cached --binary --no-color \"$BASE\"";
    let patch_path = opts.out.join("changes.patch");
    let patch_sink = Sink {
        file: fs::File::create(&patch_path).map_err(io("create changes.patch"))?,
        cap: opts.limits.patch,
        echo: None,
        stop_at_cap: true,
        sparse: false,
    };
    let perr_file = tmpfile()?;
    let perr_sink = Sink {
        file: perr_file.try_clone().map_err(io("dup a log"))?,
        cap: SMALL,
        echo: None,
        stop_at_cap: false,
        sparse: false,
    };
    let (collect, patch_total, _) = capture(
        opts,
        within,
        collect_policy.clone(),
        &["sh", "-c", script],
        vec![],
        patch_sink,
        perr_sink,
    )?;
    let perr = read_back(&perr_file)?;
    report.patch_truncated = patch_total > opts.limits.patch;
    phases.push(Phase {
        name: "collect",
        seconds: t.elapsed().as_secs_f64(),
        outcome: collect.outcome,
    });
    if report.patch_truncated {
        let msg = format!(
            "the agent's changes make a patch of more than {} bytes (the patch limit); \
             changes.patch holds its beginning only: raise --patch-limit to get it whole",
            opts.limits.patch
        );
        report.run.error = Some(match report.run.error.take() {
            Some(e) => format!("{e}; {msg}"),
            None => msg,
        });
    } else if collect.exit_code != Some(0) {
        let why = String::from_utf8_lossy(&perr).trim().to_string();
        let msg = format!("cannot collect the changes (did the agent break .git?): {why}");
        report.run.error = Some(match report.run.error.take() {
            Some(e) => format!("{e}; {msg}"),
            None => msg,
        });
    }
    let (files, added, removed) = diff_stats_of(&patch_path)?;
    report.files_changed = files;
    report.lines_added = added;
    report.lines_removed = removed;
    let (artifacts, skipped) = collect_artifacts(opts, within, &collect_policy)?;
    report.artifacts = artifacts;
    report.artifacts_skipped = skipped;
    report.phases = phases;
    write_report(opts, &report)?;
    progress(&format!(
        "done: {} ({} files changed, +{} -{}), results in {}",
        outcome_word(&report.run),
        files,
        added,
        removed,
        opts.out.display()
    ));
    Ok(report)
}

fn outcome_word(r: &Report) -> String {
    match r.outcome {
        Outcome::Exited => format!("agent exited with {}", r.exit_code.unwrap_or(0)),
        o => serde_json::to_value(o)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
    }
}

/// Policy of the clone and collect sandboxes: the workspace, no network,
/// the agent's limits but a short clock of their own.
fn helper_policy(workspace: &Path, agent: &Policy) -> Policy {
    let mut p = Policy {
        limits: agent.limits.clone(),
        ..Policy::default()
    };
    p.limits.timeout = Span::secs(COLLECT_TIMEOUT);
    p.filesystem.workspace = Some(workspace.to_path_buf());
    git_identity(&mut p.process.env);
    p
}

fn git_identity(env: &mut std::collections::BTreeMap<String, String>) {
    for (k, v) in [
        ("GIT_AUTHOR_NAME", "stockade agent"),
        ("GIT_AUTHOR_EMAIL", "agent@stockade.invalid"),
        ("GIT_COMMITTER_NAME", "stockade agent"),
        ("GIT_COMMITTER_EMAIL", "agent@stockade.invalid"),
    ] {
        env.entry(k.into()).or_insert_with(|| v.into());
    }
}

/// Most bytes kept of a helper phase's own output (a commit id, a list
/// of names, an error message).
const SMALL: u64 = 1 << 20;

/// Where a phase's stdout or stderr goes: up to `cap` bytes into `file`
/// (the rest counted and dropped, or with `stop_at_cap` the stream closed
/// there), each piece also copied to our descriptor `echo`.
struct Sink {
    file: fs::File,
    cap: u64,
    echo: Option<RawFd>,
    stop_at_cap: bool,
    /// Runs of zeros become holes (a sparse artifact stays sparse).
    sparse: bool,
}

/// Runs one phase, its stdout and stderr copied into `out` and `err` by
/// copier processes (constant memory, whatever the phase prints). Returns
/// its report and the bytes it wrote to each stream.
fn capture(
    opts: &TaskOptions,
    within: Option<&crate::scratch::Subvol>,
    policy: Policy,
    cmd: &[&str],
    extra_metered: Vec<PathBuf>,
    out: Sink,
    err: Sink,
) -> Result<(Report, u64, u64), TaskError> {
    let null: OwnedFd = fs::File::open("/dev/null")
        .map_err(io("open /dev/null"))?
        .into();
    let mut ro = RunOptions::new(
        policy,
        cmd.iter().map(|s| s.to_string()).collect(),
        opts.state_dir.clone(),
    );
    ro.print_violations = opts.live;
    ro.pull = opts.pull.clone();
    ro.extra_metered = extra_metered;
    ro.scratch_within = within.cloned();
    // Copiers are processes, not threads: `run` clones the sandbox's init
    // and must be the only thread when it does.
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let out_copier = copier(out_r, out)?;
    let err_copier = copier(err_r, err)?;
    ro.stdio = Some([null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()]);
    let report = run(&ro);
    drop((out_w, err_w));
    Ok((report, out_copier.wait(), err_copier.wait()))
}

/// [`capture`] for a helper phase whose small output the task reads.
fn capture_small(
    opts: &TaskOptions,
    within: Option<&crate::scratch::Subvol>,
    policy: Policy,
    cmd: &[&str],
) -> Result<(Report, Vec<u8>, Vec<u8>), TaskError> {
    let (out, err) = (tmpfile()?, tmpfile()?);
    let sink = |f: &fs::File| -> Result<Sink, TaskError> {
        Ok(Sink {
            file: f.try_clone().map_err(io("dup a log"))?,
            cap: SMALL,
            echo: None,
            stop_at_cap: false,
            sparse: false,
        })
    };
    let (report, _, _) = capture(opts, within, policy, cmd, vec![], sink(&out)?, sink(&err)?)?;
    Ok((report, read_back(&out)?, read_back(&err)?))
}

fn read_back(mut f: &fs::File) -> Result<Vec<u8>, TaskError> {
    use std::io::Seek;
    let mut v = Vec::new();
    f.seek(std::io::SeekFrom::Start(0))
        .map_err(io("rewind a log"))?;
    f.take(SMALL)
        .read_to_end(&mut v)
        .map_err(io("read a log"))?;
    Ok(v)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), TaskError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| TaskError::Io {
        what: "create a pipe".into(),
        source: e.into(),
    })
}

/// An anonymous file (already unlinked) for a phase's small output.
fn tmpfile() -> Result<fs::File, TaskError> {
    let f = nix::fcntl::open(
        "/tmp",
        nix::fcntl::OFlag::O_TMPFILE | nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| TaskError::Io {
        what: "create a log file".into(),
        source: e.into(),
    })?;
    Ok(fs::File::from(f))
}

/// A copier process and the pipe on which it reports its total.
struct Copier {
    pid: nix::unistd::Pid,
    total: OwnedFd,
}

impl Copier {
    /// Waits for the copier; returns how many bytes it saw.
    fn wait(self) -> u64 {
        let _ = nix::sys::wait::waitpid(self.pid, None);
        let mut b = [0u8; 8];
        match nix::unistd::read(&self.total, &mut b) {
            Ok(8) => u64::from_le_bytes(b),
            _ => 0,
        }
    }
}

/// Starts a child process copying `from` into `sink`.
fn copier(from: OwnedFd, sink: Sink) -> Result<Copier, TaskError> {
    let (total_r, total_w) = pipe()?;
    // SAFETY: the caller is single-threaded (the task runs its phases one
    // after another on one thread), and the child only reads, writes and
    // exits.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(TaskError::Io {
            what: "fork an output copier".into(),
            source: e.into(),
        }),
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Copier {
            pid: child,
            total: total_r,
        }),
        Ok(nix::unistd::ForkResult::Child) => {
            // Hold nothing but our pipe, file and report pipe: a copy of
            // another pipe's write end would keep that pipe from ever
            // reaching its end.
            let keep = [
                from.as_raw_fd(),
                sink.file.as_raw_fd(),
                total_w.as_raw_fd(),
                sink.echo.unwrap_or(-1),
            ];
            stockade_isolate::sys::close_fds_from(3, &keep);
            let total = copy_capped(fs::File::from(from), sink);
            let _ = nix::unistd::write(&total_w, &total.to_le_bytes());
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
    }
}

/// The copier's work; returns the bytes read from `from`.
fn copy_capped(mut from: fs::File, mut sink: Sink) -> u64 {
    use std::io::Seek;
    let mut buf = vec![0u8; 64 << 10];
    let (mut total, mut kept) = (0u64, 0u64);
    let mut hole_at_end = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        total += n as u64;
        if let Some(fd) = sink.echo {
            // SAFETY: plain write to a descriptor the process has.
            let _ = unsafe { libc::write(fd, buf.as_ptr().cast(), n) };
        }
        let room = sink.cap.saturating_sub(kept) as usize;
        let piece = &buf[..n.min(room)];
        if !piece.is_empty() {
            let zeros = sink.sparse && piece.iter().all(|&b| b == 0);
            let done = if zeros {
                sink.file
                    .seek(std::io::SeekFrom::Current(piece.len() as i64))
                    .map(drop)
            } else {
                sink.file.write_all(piece)
            };
            if done.is_err() {
                break;
            }
            hole_at_end = zeros;
            kept += piece.len() as u64;
        }
        if n > room && sink.stop_at_cap {
            // Past the cap: closing the pipe stops the writer (SIGPIPE).
            total += 1;
            break;
        }
    }
    if hole_at_end {
        let _ = sink.file.set_len(kept);
    }
    total
}

/// [`diff_stats`] of a patch file, read a line at a time.
fn diff_stats_of(path: &Path) -> Result<(usize, usize, usize), TaskError> {
    use std::io::BufRead;
    let f = fs::File::open(path).map_err(io("read changes.patch"))?;
    let mut r = std::io::BufReader::new(f);
    let mut stats = DiffStats::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => stats.line(line.strip_suffix(b"\n").unwrap_or(&line)),
            Err(e) => return Err(io("read changes.patch")(e)),
        }
    }
    Ok((stats.files, stats.added, stats.removed))
}

#[derive(Default)]
struct DiffStats {
    files: usize,
    added: usize,
    removed: usize,
    in_binary: bool,
}

impl DiffStats {
    fn line(&mut self, line: &[u8]) {
        if line.starts_with(b"diff --git ") {
            self.files += 1;
            self.in_binary = false;
        } else if line.starts_with(b"GIT binary patch") {
            self.in_binary = true;
        } else if self.in_binary || line.starts_with(b"+++") || line.starts_with(b"---") {
        } else if line.starts_with(b"+") {
            self.added += 1;
        } else if line.starts_with(b"-") {
            self.removed += 1;
        }
    }
}

/// Files changed and lines added/removed, read from the patch text.
pub fn diff_stats(patch: &[u8]) -> (usize, usize, usize) {
    let mut stats = DiffStats::default();
    for line in patch.split(|&b| b == b'\n') {
        stats.line(line);
    }
    (stats.files, stats.added, stats.removed)
}

/// Copies files matching the `--collect` globs out of the workspace, one
/// sandboxed `cat` each, streamed into place within the output limits
/// (holes kept); names are checked to stay inside `artifacts/`. Returns
/// the names copied and those skipped, with why.
fn collect_artifacts(
    opts: &TaskOptions,
    within: Option<&crate::scratch::Subvol>,
    policy: &Policy,
) -> Result<(Vec<String>, Vec<Skipped>), TaskError> {
    if opts.collect.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let globs = opts
        .collect
        .iter()
        .map(|g| shell_quote_glob(g))
        .collect::<Vec<_>>()
        .join(" ");
    // Each match as NAME, NUL, its size, NUL.
    let list = format!(
        "cd /workspace; for p in {globs}; do [ -f \"$p\" ] && printf '%s\\0%s\\0' \"$p\" \"$(stat -c %s -- \"$p\")\"; done; true"
    );
    let (_, listed, _) = capture_small(opts, within, policy.clone(), &["sh", "-c", &list])?;
    let dir = opts.out.join("artifacts");
    let mut got = Vec::new();
    let mut skipped = Vec::new();
    let mut total = 0u64;
    let mut fields = listed.split(|&b| b == 0);
    let mut seen = 0;
    while let (Some(name), Some(size)) = (fields.next(), fields.next()) {
        if name.is_empty() || seen == 1000 {
            break;
        }
        seen += 1;
        let name = String::from_utf8_lossy(name).into_owned();
        let size: u64 = String::from_utf8_lossy(size)
            .trim()
            .parse()
            .unwrap_or(u64::MAX);
        let rel = Path::new(&name);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            continue;
        }
        let mut skip = |reason: String| {
            skipped.push(Skipped {
                name: name.clone(),
                reason,
            })
        };
        if size > opts.limits.artifact {
            skip(format!(
                "{size} bytes, more than the artifact limit of {} (--artifact-limit)",
                opts.limits.artifact
            ));
            continue;
        }
        if total + size > opts.limits.artifacts_total {
            skip(format!(
                "the artifacts would pass their total limit of {} (--artifacts-total)",
                opts.limits.artifacts_total
            ));
            continue;
        }
        let dst = dir.join(rel);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).map_err(io("create the artifacts directory"))?;
        }
        let sink = Sink {
            file: fs::File::create(&dst).map_err(io(format!("write {}", dst.display())))?,
            // Not more than it said it was: a file that grows is cut off.
            cap: size,
            echo: None,
            stop_at_cap: true,
            sparse: true,
        };
        let err = Sink {
            file: tmpfile()?,
            cap: SMALL,
            echo: None,
            stop_at_cap: false,
            sparse: false,
        };
        let (r, copied, _) = capture(
            opts,
            within,
            policy.clone(),
            &["cat", "--", &format!("/workspace/{name}")],
            vec![],
            sink,
            err,
        )?;
        if r.exit_code != Some(0) || copied > size {
            let _ = fs::remove_file(&dst);
            skip(if copied > size {
                "it grew while it was being copied".into()
            } else {
                "it could not be read in the sandbox".into()
            });
            continue;
        }
        total += size;
        got.push(name);
    }
    Ok((got, skipped))
}

/// Quotes a glob for `sh` so only `*`, `?` and `[...]` stay special.
fn shell_quote_glob(g: &str) -> String {
    let mut out = String::new();
    for c in g.chars() {
        match c {
            '*' | '?' | '[' | ']' | '/' | '.' | '-' | '_' => out.push(c),
            c if c.is_ascii_alphanumeric() => out.push(c),
            c => {
                out.push('\\');
                out.push(c);
            }
        }
    }
    out
}

fn write_report(opts: &TaskOptions, report: &TaskReport) -> Result<(), TaskError> {
    let json = serde_json::to_vec_pretty(report).map_err(|e| TaskError::Invalid(e.to_string()))?;
    fs::write(opts.out.join("report.json"), json).map_err(io("write report.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_stats_count_text_lines_and_files() {
        let patch = b"diff --git a/a b/a\n--- a/a\n+++ b/a\n@@ -1 +1,2 @@\n-old\n+new\n+more\n\
                      diff --git a/bin b/bin\nGIT binary patch\nliteral 3\nKcmZ?wbN~PV0RaF2\n";
        assert_eq!(diff_stats(patch), (2, 2, 1));
        assert_eq!(diff_stats(b""), (0, 0, 0));
    }

    #[test]
    fn remote_urls_are_refused_until_egress_exists() {
        for url in [
            "https://example.invalid/r.git",
            "git@example.invalid:r.git",
            "git://127.0.0.1/r",
        ] {
            assert!(
                matches!(local_repo(url), Err(TaskError::Invalid(_))),
                "{url}"
            );
        }
        assert!(local_repo("/no/such/repo").is_err());
        assert!(local_repo("/usr").is_err());
    }

    #[test]
    fn globs_keep_wildcards_and_quote_the_rest() {
        assert_eq!(shell_quote_glob("out/*.txt"), "out/*.txt");
        assert_eq!(shell_quote_glob("a b;rm -rf"), "a\\ b\\;rm\\ -rf");
    }
}
