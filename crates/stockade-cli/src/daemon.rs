//! `stockade serve` and the commands that talk to it: `create`, `exec`,
//! `rm`, `events`, `cp` (`ps` and `top` are in `listing.rs`, `run -d`
//! in `detach.rs`).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use stockade_client::{Client, Encoding, ExecOptions};
use stockade_core::shim::ShimBackend;
use stockade_server::config::LogFormat;
use stockade_server::ServeConfig;

use crate::flags::PolicyArgs;

fn default_socket() -> PathBuf {
    std::env::var_os("STOCKADE_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(crate::paths::socket)
}

#[derive(Debug, Args)]
pub struct SocketArg {
    /// The daemon's unix socket.
    #[arg(
        long,
        env = "STOCKADE_SOCKET",
        default_value_os_t = crate::paths::socket()
    )]
    pub socket: PathBuf,
}

impl SocketArg {
    pub fn client(&self) -> Client {
        Client::unix(&self.socket)
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Unix socket to serve the API on (mode 0660).
    #[arg(
        long,
        env = "STOCKADE_SOCKET",
        default_value_os_t = crate::paths::socket()
    )]
    pub socket: PathBuf,
    /// Also serve on TCP HOST:PORT; requests then need `Authorization: Bearer <token>`.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token for --listen.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Stockade's state directory (sandboxes, registry).
    #[arg(long, env = "STOCKADE_STATE_DIR", default_value_os_t = crate::paths::state_dir())]
    pub state_dir: PathBuf,
    /// POST every event as JSON to this http:// URL.
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// A host directory whose contents API clients may bind into
    /// sandboxes or name as a task's repository (repeatable; by default
    /// no host path is allowed).
    #[arg(long = "allow-bind-root", value_name = "DIR")]
    pub allow_bind_root: Vec<PathBuf>,
    /// How the image API (`/v1/images`, `image` in sandboxes and tasks)
    /// reaches registries.
    #[command(flatten)]
    pub registry: crate::registry_flags::RegistryFlags,
    /// Also serve an E2B-compatible API (control API and envd) on
    /// HOST:PORT, for E2B's SDKs; needs --token-file (the API key is
    /// written to <state-dir>/e2b-api-key). See docs/e2b.md.
    #[arg(long, value_name = "HOST:PORT")]
    pub e2b_listen: Option<SocketAddr>,
    /// TOML file of named E2B templates (name → policy fields); `base`
    /// exists without one.
    #[arg(long, value_name = "FILE", requires = "e2b_listen")]
    pub e2b_templates: Option<PathBuf>,
    /// How to log on stderr where the daemon listens, each request and
    /// each sandbox event: `text` (one line each), `json` (one object per
    /// line) or `none`.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json", "none"])]
    pub log_format: String,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<u8> {
    let exe = std::env::current_exe().context("cannot find the stockade binary to start shims")?;
    let backend = ShimBackend::new(args.state_dir.clone(), exe.clone());
    let _ = default_socket();
    let euid = nix::unistd::geteuid();
    if !euid.is_root() && args.socket.parent() == Some(crate::paths::runtime_dir().as_path()) {
        // An ordinary user's default socket directory: made private
        // here, and refused if someone else made it first.
        crate::paths::ensure_private_dir(&crate::paths::runtime_dir(), euid.as_raw())?;
    }
    let cfg = ServeConfig {
        socket: args.socket,
        listen: args.listen,
        token_file: args.token_file,
        state_dir: args.state_dir,
        webhook: args.webhook,
        task_exe: Some(exe),
        bind_roots: args.allow_bind_root,
        pull: args.registry.pull_options()?,
        e2b: args
            .e2b_listen
            .map(|listen| stockade_server::e2b::E2bConfig {
                listen,
                templates: args.e2b_templates,
            }),
        log: match args.log_format.as_str() {
            "json" => LogFormat::Json,
            "none" => LogFormat::Off,
            _ => LogFormat::Text,
        },
        ..ServeConfig::default()
    };
    stockade_server::serve_blocking(cfg, Arc::new(backend))?;
    Ok(0)
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// A name, unique among live sandboxes.
    #[arg(long)]
    pub name: Option<String>,
    /// A label KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Destroy the sandbox after this long (e.g. 30m); the policy's timeout caps it too.
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

pub fn create(args: CreateArgs) -> anyhow::Result<u8> {
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--label expects KEY=VALUE, got {l:?}"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let client = args.socket.client();
    args.policy.refuse_net_log("create")?;
    let policy = args.policy.into_policy()?;
    let sb = client.create(
        Some(&policy),
        args.name.as_deref(),
        &labels,
        args.ttl.as_deref(),
    )?;
    println!("{}", sb.id);
    Ok(0)
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Set an environment variable for the command.
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    pub env: Vec<String>,
    /// Working directory inside the sandbox.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Kill the command after this long (e.g. 30s).
    #[arg(long)]
    pub timeout: Option<String>,
    /// Stream this terminal's stdin to the command (e.g. `echo x |
    /// stockade exec -i ID -- cat`); without it the command's stdin is empty.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the command a terminal of its own, as `docker exec -it`: this
    /// terminal's keys go to it (raw mode), its size follows this one's,
    /// and stdout and stderr arrive as one stream.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The sandbox's id or name.
    pub id: String,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Our terminal in raw mode while a `-t` command runs; restored on drop.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            termios::cfmakeraw(&mut raw);
            let _ = termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw);
        }
        RawMode(saved)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                &t,
            );
        }
    }
}

/// Our terminal's size (rows, cols), when stdin is one.
fn window_size() -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data that TIOCGWINSZ fills from descriptor 0.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_row > 0)
            .then_some((ws.ws_row, ws.ws_col))
    }
}

/// Passes our terminal's size to process `pid` now and after each
/// SIGWINCH (on a thread of its own; the signal is blocked elsewhere).
fn follow_window_size(client: &Client, id: &str, pid: i32) {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    if let Some((r, c)) = window_size() {
        let _ = client.resize(id, pid, r, c);
    }
    let mut set = SigSet::empty();
    set.add(Signal::SIGWINCH);
    if nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).is_err() {
        return;
    }
    let (client, id) = (client.clone(), id.to_string());
    std::thread::spawn(move || {
        while set.wait().is_ok() {
            if let Some((r, c)) = window_size() {
                if client.resize(&id, pid, r, c).is_err() {
                    return;
                }
            }
        }
    });
}

/// Streams the command's output; exits with its status (128+N for a
/// signal, 124 on timeout).
pub fn exec(args: ExecArgs) -> anyhow::Result<u8> {
    let mut env = BTreeMap::new();
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("-e expects KEY=VALUE, got {kv:?}"))?;
        env.insert(k.to_string(), v.to_string());
    }
    let opts = ExecOptions {
        cmd: args.command,
        env,
        cwd: args.cwd,
        timeout: args.timeout,
        stdin: None,
        background: false,
        // Output is written as printed, binary or not.
        encoding: Some(Encoding::Base64),
        tty: args.tty,
        tty_size: window_size()
            .filter(|_| args.tty)
            .map(|(rows, cols)| stockade_client::TtySize { rows, cols }),
    };
    let mut opts = opts;
    if args.tty && !opts.env.contains_key("TERM") {
        if let Ok(term) = std::env::var("TERM") {
            opts.env.insert("TERM".into(), term);
        }
    }
    let client = args.socket.client();
    let _raw = (args.tty && window_size().is_some()).then(RawMode::enter);
    let stream = if args.interactive || args.tty {
        // A background process takes its stdin in requests of its own;
        // its output is followed from its start.
        let pid = client
            .exec_background(&args.id, &opts)
            .map_err(spawn_error)?;
        if args.tty {
            follow_window_size(&client, &args.id, pid);
        }
        let stream = client.output_as(&args.id, pid, Encoding::Base64, true)?;
        let (feeder, id) = (client.clone(), args.id.clone());
        std::thread::spawn(move || feed_stdin(&feeder, &id, pid));
        stream
    } else {
        client.exec_stream(&args.id, &opts).map_err(spawn_error)?
    };
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    for ev in stream {
        let ev = ev?;
        let data = ev.json();
        match ev.event.as_str() {
            "stdout" => {
                let _ = out.write_all(&chunk_bytes(&data)?);
                let _ = out.flush();
            }
            "stderr" => {
                let _ = err.write_all(&chunk_bytes(&data)?);
            }
            "exit" => {
                if data["outcome"] == "timeout" {
                    eprintln!("stockade: timeout: the command was killed after its time limit");
                    return Ok(124);
                }
                // The sandbox hit a hard limit and was killed, and the
                // command with it: say so as `stockade run` does.
                if let Some(kind @ ("memory-limit" | "disk-limit")) = data["outcome"].as_str() {
                    eprintln!("stockade: {kind}: {}", breach_line(&client, &args.id, kind));
                    return Ok(137);
                }
                if let Some(c) = data["exit_code"].as_i64() {
                    return Ok(c.clamp(0, 255) as u8);
                }
                if let Some(s) = data["signal"].as_i64() {
                    return Ok((128 + s).clamp(0, 255) as u8);
                }
                if let Some(e) = data["error"].as_str() {
                    bail!("{e}");
                }
                return Ok(125);
            }
            _ => {}
        }
    }
    bail!("the daemon closed the stream before the command ended")
}

/// What `stockade run` says of a breach: the limit from the sandbox's
/// policy when the daemon still answers.
fn breach_line(client: &Client, id: &str, kind: &str) -> String {
    let (what, key) = match kind {
        "memory-limit" => ("memory", "memory"),
        _ => ("disk", "disk"),
    };
    let limit = client
        .get(id)
        .ok()
        .and_then(|sb| sb.policy["limits"][key].as_str().map(str::to_string));
    match limit {
        Some(l) => {
            format!("killed after exceeding the {what} limit of {l} (the sandbox ended with it)")
        }
        None => format!("killed after exceeding the {what} limit (the sandbox ended with it)"),
    }
}

/// The bytes of a base64 output chunk.
fn chunk_bytes(data: &serde_json::Value) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(data["data"].as_str().unwrap_or(""))
        .context("the daemon sent output that is not valid base64; is it an older stockade?")
}

/// A command that could not be started: 127 when it does not exist, 126
/// when it cannot be executed, as `stockade run` exits.
#[derive(Debug)]
pub struct SpawnFailed {
    pub message: String,
    pub status: u8,
}

impl std::fmt::Display for SpawnFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SpawnFailed {}

pub fn spawn_error(e: stockade_client::ClientError) -> anyhow::Error {
    match e {
        stockade_client::ClientError::Api { code, message, .. } if code == "spawn_failed" => {
            let status = if message.ends_with("No such file or directory") {
                127
            } else {
                126
            };
            SpawnFailed { message, status }.into()
        }
        e => e.into(),
    }
}

/// Copies this process's stdin to the stdin of process `pid`, then closes
/// it. Stops quietly once the process no longer takes input.
fn feed_stdin(client: &Client, id: &str, pid: i32) {
    use std::io::Read;
    let mut buf = vec![0u8; 64 * 1024];
    let mut stdin = std::io::stdin().lock();
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        if client.send_stdin(id, pid, &buf[..n], n == 0).is_err() || n == 0 {
            return;
        }
    }
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Ids or names of the sandboxes to destroy.
    #[arg(required = true)]
    pub ids: Vec<String>,
}

pub fn rm(args: RmArgs) -> anyhow::Result<u8> {
    let client = args.socket.client();
    let mut failed = false;
    for id in &args.ids {
        match client.destroy(id) {
            Ok(sb) => println!("{}", sb.id),
            Err(e) => {
                eprintln!("stockade: {id}: {:#}", anyhow::Error::new(e));
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Keep following the output until the processes end.
    #[arg(short, long)]
    pub follow: bool,
    /// The sandbox's id or name.
    pub id: String,
    /// Only this process (a pid from `exec` or the processes list);
    /// by default every process started through the API, oldest first.
    pub pid: Option<i32>,
}

/// Writes what the processes printed: stdout to stdout, stderr to stderr,
/// byte for byte.
pub fn logs(args: LogsArgs) -> anyhow::Result<u8> {
    let client = args.socket.client();
    let pids: Vec<i32> = match args.pid {
        Some(p) => vec![p],
        None => {
            let mut v: Vec<i32> = client
                .processes(&args.id)?
                .iter()
                .filter(|p| p["via_api"] == true)
                .filter_map(|p| p["pid"].as_i64().map(|n| n as i32))
                .collect();
            v.sort_unstable();
            v
        }
    };
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    for pid in pids {
        for ev in client.output_as(&args.id, pid, Encoding::Base64, args.follow)? {
            let ev = ev?;
            match ev.event.as_str() {
                "stdout" => {
                    let _ = out.write_all(&chunk_bytes(&ev.json())?);
                    let _ = out.flush();
                }
                "stderr" => {
                    let _ = err.write_all(&chunk_bytes(&ev.json())?);
                }
                _ => {}
            }
        }
    }
    Ok(0)
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// The sandbox's id or name.
    pub id: String,
}

/// The daemon's view of a sandbox, as indented JSON.
pub fn inspect(args: InspectArgs) -> anyhow::Result<u8> {
    let v = args.socket.client().get_raw(&args.id)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(0)
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Ids or names; every running sandbox by default.
    pub ids: Vec<String>,
}

/// `12.3M`: a byte count for a table.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let (mut v, mut u) = (bytes as f64, 0);
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// One line per sandbox: CPU time, peak memory and processes, disk, age,
/// and the limits it broke.
pub fn stats(args: StatsArgs) -> anyhow::Result<u8> {
    let client = args.socket.client();
    let ids: Vec<String> = if args.ids.is_empty() {
        client
            .list(&[], Some("running"))?
            .into_iter()
            .map(|s| s.id)
            .collect()
    } else {
        args.ids
    };
    println!(
        "{:<14} {:<16} {:>9} {:>9} {:>6} {:>9} {:>8}  VIOLATIONS",
        "ID", "NAME", "CPU", "MEM PEAK", "PIDS", "DISK", "WALL"
    );
    let mut failed = false;
    for id in &ids {
        let v = match client.get_raw(id) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("stockade: {id}: {:#}", anyhow::Error::new(e));
                failed = true;
                continue;
            }
        };
        // A running sandbox's live usage, or an ended one's final report.
        let usage = if v["usage"].is_object() {
            &v["usage"]
        } else {
            &v["report"]["usage"]
        };
        let violations = if v["violations"].is_array() {
            &v["violations"]
        } else {
            &v["report"]["violations"]
        };
        let kinds: Vec<&str> = violations
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["kind"].as_str()).collect())
            .unwrap_or_default();
        let n = |k: &str| usage[k].as_u64().unwrap_or(0);
        println!(
            "{:<14} {:<16} {:>8.2}s {:>9} {:>6} {:>9} {:>7.0}s  {}",
            v["id"].as_str().unwrap_or(id),
            v["name"].as_str().unwrap_or("-"),
            usage["cpu_seconds"].as_f64().unwrap_or(0.0),
            human(n("peak_memory_bytes")),
            n("pids_peak"),
            human(n("disk_bytes")),
            usage["wall_seconds"].as_f64().unwrap_or(0.0),
            if kinds.is_empty() {
                "-".to_string()
            } else {
                kinds.join(",")
            }
        );
    }
    Ok(if failed { 1 } else { 0 })
}

#[derive(Debug, Args)]
pub struct TasksArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Show this task (state, phase, report) as JSON instead of the list.
    pub id: Option<String>,
}

/// The tasks as a table, or one as JSON.
pub fn tasks(args: TasksArgs) -> anyhow::Result<u8> {
    let client = args.socket.client();
    if let Some(id) = &args.id {
        println!("{}", serde_json::to_string_pretty(&client.task(id)?)?);
        return Ok(0);
    }
    println!(
        "{:<14} {:<8} {:<9} {:<14} REPO",
        "ID", "STATE", "PHASE", "OUTCOME"
    );
    for t in client.tasks()? {
        let s = |k: &str| t[k].as_str().unwrap_or("-").to_string();
        println!(
            "{:<14} {:<8} {:<9} {:<14} {}",
            s("id"),
            s("state"),
            s("phase"),
            t["report"]["outcome"].as_str().unwrap_or("-"),
            t["request"]["repo"].as_str().unwrap_or("-")
        );
    }
    Ok(0)
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    #[command(flatten)]
    pub socket: SocketArg,
}

/// This binary's version, then the daemon's when one answers on the socket.
pub fn version(args: VersionArgs) -> anyhow::Result<u8> {
    println!("stockade {}", env!("CARGO_PKG_VERSION"));
    if let Ok(h) = args.socket.client().health() {
        if let Some(v) = h["version"].as_str() {
            println!("daemon   {v} ({})", args.socket.socket.display());
        }
    }
    Ok(0)
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Only this sandbox's (or, with --oci, container's) events.
    pub id: Option<String>,
    /// Instead of the daemon's events: the reports stockade-runc writes
    /// when a container ends, one JSON line each (`"type":"oci-report"`),
    /// from the engines' default state roots or those --oci-root names.
    #[arg(long)]
    pub oci: bool,
    /// A runtime state root to watch (`--root` of stockade-runc; a
    /// trailing `/*` watches each subdirectory). Repeatable. Implies --oci.
    #[arg(long, value_name = "DIR")]
    pub oci_root: Vec<PathBuf>,
    /// With --oci: print the reports already there first.
    #[arg(long)]
    pub all: bool,
    /// With --oci: print the reports already there, then stop.
    #[arg(long)]
    pub once: bool,
}

/// One JSON line per event until interrupted.
pub fn events(args: EventsArgs) -> anyhow::Result<u8> {
    if args.oci || !args.oci_root.is_empty() {
        return crate::oci_events::follow(crate::oci_events::Follow {
            roots: args.oci_root,
            id: args.id,
            all: args.all,
            once: args.once,
        });
    }
    if args.all || args.once {
        anyhow::bail!("--all and --once go with --oci (the daemon's stream has no history)");
    }
    for ev in args.socket.client().events(args.id.as_deref())? {
        let ev = ev?;
        println!("{}", ev.data);
    }
    Ok(0)
}

#[derive(Debug, Args)]
pub struct CpArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Source: a host path, or ID:/path in a sandbox.
    pub src: String,
    /// Destination: a host path, or ID:/path in a sandbox.
    pub dst: String,
}

fn sandbox_path(s: &str) -> Option<(&str, &str)> {
    s.split_once(':')
        .filter(|(id, p)| !id.is_empty() && !id.contains('/') && p.starts_with('/'))
}

/// Copies a file or a directory tree between the host and a sandbox, as
/// `docker cp` does (see `cp.rs`).
pub fn cp(args: CpArgs) -> anyhow::Result<u8> {
    let client = args.socket.client();
    match (sandbox_path(&args.src), sandbox_path(&args.dst)) {
        (Some((id, path)), None) => crate::cp::out_of(&client, id, path, Path::new(&args.dst))?,
        (None, Some((id, path))) => crate::cp::into(&client, id, &args.src, path)?,
        _ => bail!("exactly one of SRC and DST must be ID:/path in a sandbox"),
    }
    Ok(0)
}

/// The daemon's API errors speak HTTP (`list them with GET
/// /v1/sandboxes`); a person at the CLI gets the command instead.
pub fn for_people(text: &str) -> String {
    // (what the API says, up to the end of its word; what the CLI says)
    const WORDING: &[(&str, &str)] = &[
        ("; list them with GET /v1/sandboxes/", ""),
        (
            "list them with GET /v1/sandboxes",
            "list them with `stockade ps -a`",
        ),
        (
            "create a new one with POST /v1/sandboxes",
            "create a new one with `stockade create`",
        ),
        ("; list them with GET /v1/tasks", ""),
        (
            "; fix it and retry (GET /v1/openapi.json describes every request)",
            " (is this CLI the same version as the daemon?)",
        ),
        (" (list a directory with list=true)", ""),
        ("; add list=true to list it", ""),
    ];
    let mut s = text.to_string();
    for (api, cli) in WORDING {
        if let Some(at) = s.find(api) {
            let mut end = at + api.len();
            if api.ends_with('/') {
                end += s[end..].find(char::is_whitespace).unwrap_or(s.len() - end);
            }
            s.replace_range(at..end, cli);
        }
    }
    s
}
