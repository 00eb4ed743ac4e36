//! Command-line flags, and how they override a policy file.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use stockade_core::RunOptions;
use stockade_policy::{
    Bandwidth, BindMount, ByteSize, CidrRule, Cpus, HostMapping, HostPattern, NetMode, Policy, Span,
};

#[derive(Debug, Parser)]
#[command(
    name = "stockade",
    version,
    about = "Disposable, resource-capped Linux sandboxes for coding agents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a new sandbox and exit with its status.
    Run(Box<RunArgs>),
    /// Clone a repository into a sandbox, run an agent on it, and collect its changes.
    Task(Box<TaskArgs>),
    /// Remove what dead supervisors left behind (also done after every run).
    Gc(GcArgs),
    /// Check what this host supports and what stockade does without it.
    Doctor,
    /// Run the daemon: many long-lived sandboxes behind an HTTP API.
    Serve(Box<crate::daemon::ServeArgs>),
    /// Create a sandbox in the daemon; prints its id.
    Create(Box<crate::daemon::CreateArgs>),
    /// Run a command in a daemon sandbox, streaming its output.
    Exec(crate::daemon::ExecArgs),
    /// List the daemon's sandboxes with what they use now (CPU, memory,
    /// processes, disk).
    ///
    /// CPU % is CPU time over the time the sandbox has run (as `ps`'s
    /// %CPU); MEM USAGE what its cgroup holds now, against its memory
    /// limit; PIDS its processes and threads now; DISK what it wrote.
    Ps(crate::listing::PsArgs),
    /// Destroy daemon sandboxes (`stop` and `kill` too: a sandbox has no
    /// stopped state).
    #[command(visible_aliases = ["stop", "kill"])]
    Rm(crate::daemon::RmArgs),
    /// List the processes running in a daemon sandbox (pids inside and on
    /// the host, user, CPU, memory, command), as `docker top` does.
    Top(crate::listing::TopArgs),
    /// Print what processes started through the API printed (kept: the
    /// most recent 1 MiB of each stream).
    Logs(crate::daemon::LogsArgs),
    /// Print a daemon sandbox as JSON: policy, state, usage, processes, report.
    Inspect(crate::daemon::InspectArgs),
    /// Print the resources daemon sandboxes used so far (all running ones,
    /// or those named).
    Stats(crate::daemon::StatsArgs),
    /// List the daemon's tasks, or show one (with its report) as JSON.
    Tasks(crate::daemon::TasksArgs),
    /// Print stockade's version (and the daemon's, if one answers).
    Version(crate::daemon::VersionArgs),
    /// Follow events (all, or one sandbox's) as JSON lines.
    Events(crate::daemon::EventsArgs),
    /// Copy a file or a directory tree between the host and a daemon sandbox (ID:/path), as `docker cp` does.
    Cp(crate::daemon::CpArgs),
    /// Pull an image into the store (a registry, or oci:/oci-archive:/docker-archive:).
    Pull(Box<crate::images::PullArgs>),
    /// List the images in the store.
    Images(crate::images::ImagesArgs),
    /// Remove images from the store.
    Rmi(crate::images::RmiArgs),
    /// Manage images: pull, ls, rm, prune, inspect.
    #[command(subcommand)]
    Image(crate::images::ImageCommand),
    /// The OCI runtime: runc's command line (what `stockade-runc` runs),
    /// for podman, Docker and containerd.
    #[command(disable_help_flag = true)]
    Oci {
        /// runc's global flags and subcommand (`stockade oci --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Internal: the per-sandbox supervisor the daemon starts.
    #[command(hide = true)]
    Shim {
        /// The sandbox's id, for `ps` (the start request on stdin carries it too).
        #[arg(long)]
        id: Option<String>,
        /// Fork idle shims on the daemon's request instead of serving one.
        #[arg(long)]
        zygote: bool,
    },
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Stockade's state directory.
    #[arg(long, env = "STOCKADE_STATE_DIR", default_value_os_t = crate::paths::state_dir())]
    pub state_dir: PathBuf,
    /// Also empty the pool of ready user and network namespaces
    /// (`STOCKADE_NS_POOL_DIR`, default /run/stockade/nspool); for an
    /// ordinary user, stop the holder of their base user namespace.
    #[arg(long)]
    pub drain_pool: bool,
    /// Also unmount the scratch filesystem and remove its image (it is
    /// made afresh on the next run); refused while sandboxes use it.
    #[arg(long)]
    pub reset_scratch: bool,
    /// Also delete the workspaces `stockade task --keep` kept.
    #[arg(long)]
    pub drop_kept: bool,
}

/// Flags that set the sandbox's policy; shared by `run` and `task`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Policy file (TOML); flags override its settings.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Host directory to bind read-write at /workspace (default: empty scratch dir).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Writable copy-on-write root, thrown away at the end (apt-get/pip install work).
    #[arg(long)]
    pub overlay_root: bool,
    /// Image whose layers are the sandbox's root instead of the host's /usr
    /// (e.g. python:3.11, localhost:5000/app@sha256:…, oci:DIR[:TAG]);
    /// its root is copy-on-write, and its user, environment, working
    /// directory and entrypoint apply.
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// When to pull --image: missing (default), always, never.
    #[arg(long, value_name = "WHEN")]
    pub pull: Option<stockade_policy::Pull>,
    /// Size cap of /tmp (e.g. 512M) [default: 1G].
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub tmp_size: Option<ByteSize>,
    /// Extra read-only bind mount.
    #[arg(long = "ro-bind", value_name = "SRC:DST")]
    pub ro_bind: Vec<BindMount>,
    /// Extra read-write bind mount; what the sandbox writes there belongs
    /// to SRC's owner, as in --workspace (SRC must not be owned by root).
    /// DST cannot be /workspace or a system directory (/usr, /bin, /lib*).
    #[arg(long = "bind", value_name = "SRC:DST")]
    pub bind: Vec<BindMount>,
    /// Docker's spelling of the two above: `-v SRC:DST` is --bind,
    /// `-v SRC:DST:ro` is --ro-bind.
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    pub volume: Vec<Volume>,
    /// CPU allowance in cores, fractional allowed (e.g. 0.5) [default: 4].
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub cpus: Option<Cpus>,
    /// Memory limit (e.g. 512M, 2G) [default: 16G].
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory: Option<ByteSize>,
    /// Maximum number of processes and threads [default: 4096].
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub pids: Option<u64>,
    /// Bytes the sandbox may write to its scratch workspace, home and overlay
    /// [default: 50G].
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub disk: Option<ByteSize>,
    /// Wall-clock limit (e.g. 30s, 10m, 4h) [default: 4h].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub timeout: Option<Span>,
    /// Run as root inside the sandbox (still unprivileged on the host).
    #[arg(long, conflicts_with = "user")]
    pub root: bool,
    /// Run as this user inside: NAME, UID, NAME:GROUP or UID:GID (names from
    /// the image's /etc/passwd and /etc/group) [default: agent, or the
    /// image's user]
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Set an environment variable inside the sandbox.
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    pub env: Vec<String>,
    /// Working directory inside the sandbox.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Host name inside the sandbox.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Network: none (loopback only), allowlist (only allowed names and
    /// addresses) or open (any public address); both filtered in userspace
    /// [default: none].
    #[arg(long, value_name = "MODE", value_parser = parse_net)]
    pub net: Option<NetMode>,
    /// Name the sandbox may resolve and connect to ("*.x" = any name below x);
    /// without --net, turns a network of "none" into "allowlist".
    #[arg(long = "allow-host", value_name = "PATTERN")]
    pub allow_host: Vec<HostPattern>,
    /// Address block the sandbox may connect to by IP, optionally on some ports.
    #[arg(long = "allow-cidr", value_name = "CIDR[:PORT[-PORT]]")]
    pub allow_cidr: Vec<CidrRule>,
    /// Fixed DNS answer inside the sandbox; the name becomes allowed.
    #[arg(long = "map-host", value_name = "NAME=IP")]
    pub map_host: Vec<HostMapping>,
    /// New connections per minute (e.g. 100/min).
    #[arg(long = "net-rate", value_name = "N/min", value_parser = parse_rate)]
    pub net_rate: Option<u32>,
    /// Bandwidth per direction (e.g. 50mbit, 6MB).
    #[arg(long = "net-bandwidth", value_name = "RATE", value_parser = parse_bandwidth, allow_hyphen_values = true)]
    pub net_bandwidth: Option<Bandwidth>,
    /// Write every network decision to FILE as JSON lines (`run` only).
    #[arg(long = "net-log", value_name = "FILE")]
    pub net_log: Option<PathBuf>,
    /// Stockade's state directory.
    #[arg(long, env = "STOCKADE_STATE_DIR", default_value_os_t = crate::paths::state_dir())]
    pub state_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub registry: crate::registry_flags::RegistryFlags,
    /// Allocate a terminal for interactive use.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Wait for the sandbox's teardown before exiting, instead of leaving
    /// it to a detached cleaner (benchmarks use it to show what the
    /// detached cleaner buys).
    #[arg(long, hide = true)]
    pub wait_for_teardown: bool,
    /// On cgroup v1, move the sandbox's init into its cgroup from the
    /// supervisor instead of letting it join by itself (benchmarks compare
    /// the two).
    #[arg(long, hide = true)]
    pub v1_attach_by_move: bool,
    /// Write a JSON report of the run to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Detach: hand the sandbox to the daemon (`stockade serve`), start
    /// COMMAND in it in the background, print its id and return. The
    /// sandbox stays until `stockade stop` or its time limit; follow it
    /// with `logs`, `top`, `exec`, `ps`.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// With -d: a name for the sandbox, usable wherever an id is (unique
    /// among running sandboxes; letters, digits, '.', '_', '-').
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// With -d: the daemon's socket.
    #[command(flatten)]
    pub socket: crate::daemon::SocketArg,
    /// The command and its arguments (with --image: after its entrypoint;
    /// its default command when none is given; with -d, run as given).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TaskArgs {
    /// The repository: a local path (remote URLs need network egress).
    #[arg(long, value_name = "URL_OR_PATH")]
    pub repo: String,
    /// Branch, tag or commit to check out.
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,
    /// The task text, given to the agent as $STOCKADE_TASK and in the file $STOCKADE_TASK_FILE.
    #[arg(long, conflicts_with = "task_file")]
    pub task: Option<String>,
    /// Read the task text from a file.
    #[arg(long, value_name = "FILE")]
    pub task_file: Option<PathBuf>,
    /// Also copy out files matching GLOB (relative to the repository).
    #[arg(long, value_name = "GLOB")]
    pub collect: Vec<String>,
    /// Keep the agent's working tree on the host for inspection (path in report.json).
    #[arg(long)]
    pub keep: bool,
    /// Where to put changes.patch, stdout.log, stderr.log, report.json (default ./stockade-task-<id>/).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Bytes kept of each of the agent's stdout and stderr logs (the rest is counted, not kept).
    #[arg(long, value_name = "SIZE", default_value = "64M")]
    pub log_limit: ByteSize,
    /// Largest changes.patch; a larger diff is cut and the report says so.
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub patch_limit: ByteSize,
    /// Largest single artifact copied out (larger ones are skipped, and listed in the report).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub artifact_limit: ByteSize,
    /// All artifacts together.
    #[arg(long, value_name = "SIZE", default_value = "1G")]
    pub artifacts_total: ByteSize,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub registry: crate::registry_flags::RegistryFlags,
    /// The agent command and its arguments.
    #[arg(last = true, required = true, value_name = "AGENT_CMD")]
    pub agent: Vec<String>,
}

impl TaskArgs {
    pub fn into_options(self) -> anyhow::Result<stockade_core::task::TaskOptions> {
        let task = match (&self.task, &self.task_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read the task file {}", f.display()))?,
            ),
            (None, None) => None,
        };
        self.policy.refuse_net_log("task")?;
        if let Some(ws) = &self.policy.workspace {
            anyhow::bail!(
                "--workspace {} is not for `stockade task`: a task clones --repo into a fresh \
                 workspace of its own (keep it with --keep); give the directory as --repo instead",
                ws.display()
            );
        }
        let state_dir = self.policy.state_dir.clone();
        let pull = self.registry.pull_options()?;
        let policy = self.policy.into_policy_unvalidated()?;
        let out = match self.out {
            Some(o) => o,
            None => PathBuf::from(format!(
                "stockade-task-{}",
                stockade_core::prepare::new_id()
            )),
        };
        Ok(stockade_core::task::TaskOptions {
            repo: self.repo,
            git_ref: self.git_ref,
            policy,
            agent: self.agent,
            task,
            collect: self.collect,
            out,
            state_dir,
            live: true,
            keep: self.keep,
            limits: stockade_core::task::OutputLimits {
                log: self.log_limit.bytes(),
                patch: self.patch_limit.bytes(),
                artifact: self.artifact_limit.bytes(),
                artifacts_total: self.artifacts_total.bytes(),
            },
            pull,
        })
    }
}

/// A bandwidth flag must carry its unit: a bare `5` (bytes per second in
/// a policy file) is almost always a mistake on the command line.
fn parse_bandwidth(s: &str) -> Result<Bandwidth, String> {
    if !s.chars().any(|c| c.is_ascii_alphabetic()) {
        return Err(format!(
            "{s:?} has no unit; write it like \"{s}mbit\" (megabits per second) or \"{s}MB\" (megabytes per second)"
        ));
    }
    s.parse()
        .map_err(|e: stockade_policy::NetworkValidationError| e.to_string())
}

fn parse_net(s: &str) -> Result<NetMode, String> {
    match s {
        "none" => Ok(NetMode::None),
        "allowlist" => Ok(NetMode::Allowlist),
        "open" => Ok(NetMode::Open),
        _ => Err(format!(
            "expected \"none\", \"allowlist\" or \"open\", got {s:?}"
        )),
    }
}

/// `--net-rate`: "100/min", "100/m" or a bare "100" (per minute).
fn parse_rate(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let n = ["/min", "/minute", "/m"]
        .iter()
        .find_map(|suffix| t.strip_suffix(suffix))
        .unwrap_or(t);
    match n.trim().parse::<u32>() {
        Ok(0) => Err(
            "must be at least 1 new connection per minute (use --net none to forbid connections)"
                .into(),
        ),
        Ok(v) => Ok(v),
        Err(_) => Err(format!(
            "expected new connections per minute like \"100/min\" or \"100\", got {s:?}"
        )),
    }
}

/// `-v SRC:DST[:ro|:rw]`, as docker spells a bind mount.
#[derive(Debug, Clone)]
pub struct Volume {
    pub mount: BindMount,
    pub read_only: bool,
}

impl std::str::FromStr for Volume {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (spec, read_only) = match s.rsplit_once(':') {
            Some((head, "ro")) if head.contains(':') => (head, true),
            Some((head, "rw")) if head.contains(':') => (head, false),
            _ => (s, false),
        };
        let mount = spec.parse::<BindMount>().map_err(|e| e.to_string())?;
        Ok(Volume { mount, read_only })
    }
}

impl RunArgs {
    /// Run options; plus where to write the report.
    pub fn into_options(self) -> anyhow::Result<(RunOptions, Option<PathBuf>)> {
        let state_dir = self.policy.state_dir.clone();
        let net_log = self.policy.net_log.clone();
        let pull = self.registry.pull_options()?;
        let policy = self.policy.into_policy()?;
        let mut opts = RunOptions::new(policy, self.command, state_dir);
        opts.pull = pull;
        opts.tty = self.tty;
        if self.tty {
            if let Some(term) = std::env::var_os("TERM").and_then(|t| t.into_string().ok()) {
                opts.term = term;
            }
        }
        opts.net_log = net_log;
        // `stockade run` exits right after: the sandbox's teardown need
        // not hold up whoever waits for it (the hidden
        // `--wait-for-teardown` waits anyway, so benchmarks can show what
        // this buys).
        opts.defer_teardown = !self.wait_for_teardown;
        // On cgroup v1 init joins its group itself; the hidden
        // `--v1-attach-by-move` has the supervisor move it, the old way
        // (benches/cgroup-v1-attach.sh shows what joining buys).
        if self.v1_attach_by_move {
            opts.v1_attach = stockade_core::sandbox::V1Attach::Move;
        }
        Ok((opts, self.report))
    }
}

impl PolicyArgs {
    /// The policy file (or the defaults) with every given flag applied,
    /// validated.
    pub fn into_policy(self) -> anyhow::Result<Policy> {
        let p = self.into_policy_unvalidated()?;
        p.validate()?;
        Ok(p)
    }

    /// `--net-log` only means something to `stockade run`; elsewhere it is
    /// refused rather than silently ignored.
    pub fn refuse_net_log(&self, command: &str) -> anyhow::Result<()> {
        if let Some(f) = &self.net_log {
            anyhow::bail!(
                "--net-log {} is only for `stockade run`; `stockade {command}` keeps its network summary in its report",
                f.display()
            );
        }
        Ok(())
    }

    /// The policy before validation, for callers that complete it first
    /// (`task` allows the repository's host, then validates).
    pub fn into_policy_unvalidated(self) -> anyhow::Result<Policy> {
        let mut p = match &self.policy {
            Some(path) => Policy::load(path)?,
            None => Policy::default(),
        };
        let fs = &mut p.filesystem;
        if let Some(ws) = self.workspace {
            let abs = std::path::absolute(&ws)
                .with_context(|| format!("cannot resolve workspace {}", ws.display()))?;
            fs.workspace = Some(abs);
        }
        fs.overlay_root |= self.overlay_root;
        if let Some(v) = self.image {
            fs.image = Some(v);
        }
        if let Some(v) = self.pull {
            fs.pull = v;
        }
        if let Some(v) = self.tmp_size {
            fs.tmp_size = v;
        }
        let (mut ro_bind, mut bind) = (self.ro_bind, self.bind);
        for v in self.volume {
            if v.read_only {
                ro_bind.push(v.mount);
            } else {
                bind.push(v.mount);
            }
        }
        // A flag's mount replaces the file's at the same destination.
        for dst in ro_bind.iter().chain(&bind).map(|b| &b.dst) {
            fs.ro_bind.retain(|b| &b.dst != dst);
            fs.bind.retain(|b| &b.dst != dst);
        }
        fs.ro_bind.extend(ro_bind);
        fs.bind.extend(bind);
        let l = &mut p.limits;
        if let Some(v) = self.cpus {
            let host = std::thread::available_parallelism().map_or(0, |n| n.get());
            if host > 0 && v.0 > host as f64 {
                eprintln!(
                    "stockade: warning: --cpus {} is more than this host's {host} CPUs; the sandbox can use at most {host}",
                    v.0
                );
            }
            l.cpus = v;
        }
        if let Some(v) = self.memory {
            l.memory = v;
        }
        if let Some(v) = self.pids {
            l.pids = v;
        }
        if let Some(v) = self.disk {
            l.disk = v;
        }
        if let Some(v) = self.timeout {
            l.timeout = v;
        }
        let pr = &mut p.process;
        // A flag's user replaces the file's choice, whichever it was.
        if self.root {
            pr.root = true;
            pr.user = None;
        }
        if let Some(v) = self.user {
            pr.root = false;
            pr.user = Some(v);
        }
        if let Some(v) = self.cwd {
            pr.cwd = Some(v);
        }
        if let Some(v) = self.hostname {
            pr.hostname = v;
        }
        for kv in self.env {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("-e expects KEY=VALUE, got {kv:?}"))?;
            pr.env.insert(k.to_string(), v.to_string());
        }
        let n = &mut p.network;
        let allows =
            !(self.allow_host.is_empty() && self.allow_cidr.is_empty() && self.map_host.is_empty());
        match self.net {
            // `--net none` wins over the file: its allowlist is dropped.
            Some(NetMode::None) => {
                if allows {
                    anyhow::bail!(
                        "--allow-host, --allow-cidr and --map-host have no effect with --net \
                         none; drop them or use --net allowlist"
                    );
                }
                n.allow_hosts.clear();
                n.allow_cidrs.clear();
                n.map_hosts.clear();
                n.mode = NetMode::None;
            }
            Some(v) => n.mode = v,
            // An allowing flag on a file (or default) without network
            // asks for the allowlist.
            None if allows && n.mode == NetMode::None => n.mode = NetMode::Allowlist,
            None => {}
        }
        n.allow_hosts.extend(self.allow_host);
        n.allow_cidrs.extend(self.allow_cidr);
        n.map_hosts.extend(self.map_host);
        if let Some(v) = self.net_rate {
            n.rate_per_minute = Some(v);
        }
        if let Some(v) = self.net_bandwidth {
            n.bandwidth = Some(v);
        }
        Ok(p)
    }
}

#[cfg(test)]
#[path = "flags_tests.rs"]
mod tests;
