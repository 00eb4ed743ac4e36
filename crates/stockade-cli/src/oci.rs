//! `stockade-runc` (argv[0]) and `stockade oci …`: runc's command line over
//! `stockade-oci`, as containerd's shim, dockerd and conmon call it.
//! Errors go to stderr and, with `--log`, to that file (one JSON line
//! `{"level":"error","msg":…,"time":…}` with `--log-format json`, which is
//! what the shim and podman read).

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stockade_oci as oci;

#[derive(Debug, Parser)]
#[command(
    name = "stockade-runc",
    version = concat!(env!("CARGO_PKG_VERSION"), "\nspec: 1.0.2\nstockade OCI runtime (runc command line)"),
    about = "stockade as an OCI runtime, with runc's command line"
)]
struct Args {
    /// Where container state lives.
    #[arg(long, global = true, default_value = oci::state::DEFAULT_ROOT)]
    root: PathBuf,
    /// Also write errors to this file.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Format of --log: json or text.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Read linux.cgroupsPath as systemd's slice:prefix:name.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility.
    #[arg(long, global = true)]
    debug: bool,
    /// The only directory whose policy files `org.stockade.policy` may name.
    #[arg(
        long = "policy-dir",
        global = true,
        env = "STOCKADE_OCI_POLICY_DIR",
        default_value = oci::annotations::DEFAULT_POLICY_DIR
    )]
    policy_dir: PathBuf,
    /// Accepted for runc compatibility.
    #[arg(long = "log-level", global = true)]
    log_level: Option<String>,
    /// Accepted for runc compatibility (stockade always uses a user
    /// namespace); `spec --rootless` is this flag too.
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true")]
    rootless: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a container (its init waits for `start`).
    Create(CreateArgs),
    /// Create and start a container, wait for it and delete it.
    Run(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal to a container's init (or all its processes).
    Kill {
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container.
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Run a process in a container.
    Exec(Box<ExecArgs>),
    /// List a container's processes.
    Ps {
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
        /// Accepted for runc compatibility (ps options), ignored.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// List containers.
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Freeze a container's processes.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change a container's resource limits.
    Update {
        /// A runtime-spec resources JSON file, or - for stdin.
        #[arg(short, long)]
        resources: Option<String>,
        id: String,
    },
    /// Print what this runtime supports (runtime-spec features JSON).
    Features,
    /// Write a default config.json.
    Spec {
        #[arg(short, long)]
        bundle: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for runc compatibility.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// `run` only: return once started.
    #[arg(short, long)]
    detach: bool,
    id: String,
}

#[derive(Debug, clap::Args)]
struct ExecArgs {
    #[arg(short, long)]
    process: Option<PathBuf>,
    #[arg(short, long)]
    detach: bool,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(short, long)]
    tty: bool,
    #[arg(long)]
    cwd: Option<String>,
    #[arg(short, long)]
    env: Vec<String>,
    /// uid[:gid]
    #[arg(short, long)]
    user: Option<String>,
    #[arg(short = 'g', long = "additional-gids")]
    additional_gids: Vec<u32>,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for runc compatibility.
    #[arg(long = "no-new-privs")]
    no_new_privs: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "process-label")]
    process_label: Option<String>,
    /// Accepted for runc compatibility.
    #[arg(long = "apparmor")]
    apparmor: Option<String>,
    /// Accepted for runc compatibility.
    #[arg(long = "ignore-paused")]
    ignore_paused: bool,
    id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Entry for argv[0] `stockade-runc` and for `stockade oci ARGS…`.
pub fn main(args: Vec<OsString>) -> ExitCode {
    ExitCode::from(main_code(args))
}

/// [`main`]'s exit status as a number.
pub fn main_code(args: Vec<OsString>) -> u8 {
    let a = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            return if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                0
            } else {
                1
            };
        }
    };
    let (log, format) = (a.log.clone(), a.log_format.clone());
    match run(a) {
        Ok(code) => code,
        Err(e) => {
            let msg = chain(&*e);
            eprintln!("stockade-runc: {msg}");
            if let Some(path) = log {
                log_error(&path, &format, &msg);
            }
            1
        }
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn log_error(path: &Path, format: &str, msg: &str) {
    let time = oci::state::now_rfc3339();
    let line = if format == "json" {
        serde_json::json!({"level": "error", "msg": msg, "time": time}).to_string()
    } else {
        format!("time={time:?} level=error msg={msg:?}")
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// `create` with stockade's policy from the bundle's annotations and the
/// egress filter its keeper runs (`oci_policy.rs`).
fn create(a: &Args, c: &CreateArgs) -> Result<i32> {
    let mut o = create_options(a, c);
    if c.bundle.is_dir() {
        o.policy = crate::oci_policy::container_policy(&c.bundle, &a.policy_dir)?;
    }
    Ok(oci::create::create_with(
        &o,
        Some(Box::new(crate::oci_policy::Filter::default())),
    )?)
}

fn create_options(a: &Args, c: &CreateArgs) -> oci::CreateOptions {
    oci::CreateOptions {
        root: a.root.clone(),
        id: c.id.clone(),
        bundle: c.bundle.clone(),
        pid_file: c.pid_file.clone(),
        console_socket: c.console_socket.clone(),
        preserve_fds: c.preserve_fds,
        systemd_cgroup: a.systemd_cgroup,
        policy: Default::default(),
    }
}

fn run(a: Args) -> Result<u8> {
    let root = a.root.clone();
    match &a.command {
        Cmd::Create(c) => {
            create(&a, c)?;
        }
        Cmd::Run(c) => {
            let pid = create(&a, c)?;
            oci::start(&root, &c.id)?;
            if c.detach {
                return Ok(0);
            }
            let code = loop {
                use nix::sys::wait::{waitpid, WaitStatus};
                match waitpid(nix::unistd::Pid::from_raw(pid), None) {
                    Ok(WaitStatus::Exited(_, c)) => break c as u8,
                    Ok(WaitStatus::Signaled(_, s, _)) => break 128 + s as u8,
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            oci::delete(&root, &c.id, true)?;
            return Ok(code);
        }
        Cmd::Start { id } => oci::start(&root, id)?,
        Cmd::State { id } => print_json(&oci::state(&root, id)?)?,
        Cmd::Kill { all, id, signal } => oci::kill(&root, id, signal, *all)?,
        Cmd::Delete { force, id } => match oci::delete(&root, id, *force) {
            Ok(()) => {}
            // runc's `delete --force` of a container that is gone succeeds.
            Err(oci::OpError::State(oci::state::StateError::NotFound { .. })) if *force => {}
            Err(e) => return Err(e.into()),
        },
        Cmd::Exec(e) => return exec(&root, e),
        Cmd::Ps { format, id, .. } => {
            let pids = oci::ps(&root, id)?;
            if format == "json" {
                print_json(&pids)?;
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(out, "PID")?;
                for p in pids {
                    writeln!(out, "{p}")?;
                }
            }
        }
        Cmd::List { format, quiet } => {
            let all = oci::list(&root);
            if format == "json" {
                print_json(&all)?;
            } else {
                let mut out = std::io::stdout().lock();
                if *quiet {
                    for s in all {
                        writeln!(out, "{}", s.id)?;
                    }
                } else {
                    writeln!(out, "ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER")?;
                    for s in all {
                        writeln!(
                            out,
                            "{}\t{}\t{}\t{}\t{}\troot",
                            s.id,
                            s.pid,
                            s.status,
                            s.bundle.display(),
                            s.created
                        )?;
                    }
                }
            }
        }
        Cmd::Pause { id } => oci::pause(&root, id, true)?,
        Cmd::Resume { id } => oci::pause(&root, id, false)?,
        Cmd::Update { resources, id } => {
            let Some(r) = resources else {
                return Err(
                    "update: give the new limits with --resources FILE (or - for stdin)".into(),
                );
            };
            let text = if r == "-" {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)?;
                v
            } else {
                std::fs::read(r).map_err(|e| format!("cannot read --resources {r}: {e}"))?
            };
            oci::update(&root, id, &text)?;
        }
        Cmd::Features => print_json(&oci::features())?,
        Cmd::Spec { bundle, .. } => {
            let dir = bundle.clone().unwrap_or_else(|| PathBuf::from("."));
            let path = dir.join("config.json");
            if path.exists() {
                return Err(format!(
                    "{} exists already; remove it or give another --bundle",
                    path.display()
                )
                .into());
            }
            let text = serde_json::to_string_pretty(&oci::default_spec())?;
            std::fs::write(&path, text + "\n")
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
    }
    Ok(0)
}

fn exec(root: &Path, e: &ExecArgs) -> Result<u8> {
    let process = match &e.process {
        Some(path) => {
            let text = std::fs::read(path)
                .map_err(|err| format!("cannot read --process {}: {err}", path.display()))?;
            serde_json::from_slice::<oci::config::Process>(&text).map_err(|err| {
                format!(
                    "--process {} is not a runtime-spec process: {err}",
                    path.display()
                )
            })?
        }
        None => {
            if e.command.is_empty() {
                return Err("exec: give --process FILE or a command after the container id".into());
            }
            let mut p = oci::base_process(root, &e.id)?;
            p.args = e.command.clone();
            p.terminal = e.tty;
            p.env.extend(e.env.iter().cloned());
            if let Some(cwd) = &e.cwd {
                p.cwd = cwd.clone();
            }
            if let Some(u) = &e.user {
                let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
                p.user.uid = uid
                    .parse()
                    .map_err(|_| format!("--user {u:?}: give uid[:gid] as numbers"))?;
                p.user.gid = gid
                    .parse()
                    .map_err(|_| format!("--user {u:?}: give uid[:gid] as numbers"))?;
            }
            if !e.additional_gids.is_empty() {
                p.user.additional_gids = e.additional_gids.clone();
            }
            p
        }
    };
    let code = oci::exec(&oci::ExecOptions {
        root: root.to_path_buf(),
        id: e.id.clone(),
        process,
        pid_file: e.pid_file.clone(),
        console_socket: e.console_socket.clone(),
        detach: e.detach,
        preserve_fds: e.preserve_fds,
    })?;
    Ok(code.clamp(0, 255) as u8)
}
