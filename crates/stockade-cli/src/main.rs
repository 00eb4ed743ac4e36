//! `stockade`: run untrusted programs in disposable Linux sandboxes.
//!
//! The binary is thin: it parses flags into a policy and calls the
//! libraries. Exit status of `stockade run` is the command's own, 128+N if
//! it died of signal N, 124 on timeout, 137 when killed for memory or
//! disk, 126/127 when the command cannot be executed / is not found, and
//! 125 when stockade itself fails — always with one line on stderr.

mod cp;
mod daemon;
mod detach;
mod doctor;
mod flags;
mod images;
mod listing;
mod oci;
mod oci_events;
mod oci_policy;
mod paths;
mod registry_flags;
mod rootless;

use std::process::ExitCode;

use clap::Parser;

use flags::{Cli, Command};

fn main() -> ExitCode {
    // Installed (linked or copied) as `stockade-runc`, the binary speaks
    // runc's command line; `stockade oci …` is the same grammar.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    if invoked_as.as_deref() == Some("stockade-runc") {
        return oci::main(args);
    }
    if args.get(1).is_some_and(|a| a == "oci") {
        args.remove(1);
        args[0] = "stockade-runc".into();
        return oci::main(args);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            eprintln!("stockade: {} (see `stockade --help`)", usage_error(&e));
            return ExitCode::from(125);
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("stockade: {}", daemon::for_people(&format!("{e:#}")));
            match e.downcast_ref::<daemon::SpawnFailed>() {
                Some(f) => ExitCode::from(f.status),
                None => ExitCode::from(125),
            }
        }
    }
}

/// Settings the libraries take from their caller, read here from the
/// environment once, before anything else runs. The shim, the zygote and
/// the detached cleaner are this binary again (or a fork of it) and pass
/// through here too.
fn configure_from_env() -> anyhow::Result<()> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let mut pool = stockade_isolate::nspool::Settings::default();
    if let Some(v) = var("STOCKADE_NS_POOL") {
        // Checked here: the pool is refilled by every run's cleaner, where
        // a mistake would go unseen.
        let text = v.to_str().unwrap_or("\u{fffd}");
        pool.per_key = stockade_isolate::nspool::parse_per_key(text).map_err(anyhow::Error::msg)?;
    }
    if let Some(v) = var("STOCKADE_NS_POOL_DIR") {
        pool.dir = v.into();
    }
    if !nix::unistd::geteuid().is_root() {
        // The pool's namespaces are made for host id slots, which only
        // root may map: an ordinary user's sandboxes make their own, under
        // the user's base namespace (mapped once; `STOCKADE_NS_POOL=0`
        // turns it off too).
        stockade_isolate::basens::configure(Some(paths::runtime_dir()), pool.per_key > 0);
        pool.per_key = 0;
    }
    stockade_isolate::nspool::configure(pool);
    // An ordinary user's delegated cgroup v2 subtree: the one named, or
    // the one systemd gave the session this runs in.
    let cgroup_root = var(stockade_cgroup::ROOT_ENV).map(Into::into).or_else(|| {
        (!nix::unistd::geteuid().is_root())
            .then(rootless::host_delegated_cgroup)
            .flatten()
    });
    stockade_cgroup::set_root(cgroup_root);
    stockade_core::scratch::set_disabled(
        var("STOCKADE_SCRATCH").is_some_and(|v| v == "off" || v == "0"),
    );
    Ok(())
}

/// The first line of a flag error. When our parser's own message already
/// quotes the bad value (`expected a size like "512M" …, got "-5M"`), clap's
/// `invalid value '-5M' for '--memory <SIZE>'` would say it a second time:
/// then only the flag is named.
fn usage_error(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() == ErrorKind::ValueValidation {
        if let (Some(ContextValue::String(arg)), Some(ContextValue::String(value)), Some(why)) = (
            e.get(ContextKind::InvalidArg),
            e.get(ContextKind::InvalidValue),
            std::error::Error::source(e),
        ) {
            let why = why.to_string();
            if why.contains(&format!("{value:?}")) {
                return format!("invalid value for '{arg}': {why}");
            }
        }
    }
    if e.kind() == ErrorKind::MissingRequiredArgument {
        if let Some(ContextValue::Strings(args)) = e.get(ContextKind::InvalidArg) {
            let args = args.join(", ");
            let hint = if args.contains("CMD") || args.contains("COMMAND") {
                ": give it after `--`, e.g. `-- sh -c 'echo hi'`"
            } else {
                ""
            };
            return format!("missing {args}{hint}");
        }
    }
    let text = e.to_string();
    text.lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string()
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    configure_from_env()?;
    match cli.command {
        Command::Run(args) if args.detach => detach::run(*args),
        Command::Run(args) => {
            if let Some(name) = &args.name {
                // A foreground sandbox lives and dies with this process:
                // nothing could reach it by name.
                anyhow::bail!(
                    "--name {name} names a sandbox the daemon keeps; add -d to hand it to the daemon (a foreground `run` cannot be reached by name)"
                );
            }
            let opts = args.into_options()?;
            // The report's file is opened before the command runs: a path
            // that cannot be written stops here, not after the command's
            // status was lost.
            let report_file = match &opts.1 {
                Some(path) => match std::fs::File::create(path) {
                    Ok(f) => Some((path.clone(), f)),
                    Err(e) => {
                        eprintln!(
                            "stockade: cannot write the report to {}: {e}",
                            path.display()
                        );
                        return Ok(125);
                    }
                },
                None => None,
            };
            if !nix::unistd::geteuid().is_root() && opts.0.print_violations {
                // An ordinary user's sandbox has fewer walls: say which
                // limits hold and how, once, before anything runs.
                eprintln!("{}", rootless::start_line());
            }
            let (report, pending) = stockade_core::run_deferred(&opts.0);
            if let Some(err) = &report.error {
                if report.outcome == stockade_core::Outcome::Error {
                    eprintln!("stockade: {err}");
                }
            }
            if let Some((path, mut file)) = report_file {
                use std::io::Write;
                let json = serde_json::to_string_pretty(&report)?;
                if let Err(e) = file.write_all((json + "\n").as_bytes()) {
                    eprintln!(
                        "stockade: cannot write the report to {}: {e}",
                        path.display()
                    );
                    return Ok(125);
                }
            }
            let code = report.exit_status().clamp(0, 255) as u8;
            if let Some(pending) = pending {
                // Everything is said: exit now and leave the rest of the
                // teardown to a detached cleaner.
                pending.exit(code.into());
            }
            Ok(code)
        }
        Command::Task(args) => {
            let opts = args.into_options()?;
            let report = stockade_core::task::run_task(&opts)?;
            if report.run.outcome == stockade_core::Outcome::Error {
                if let Some(err) = &report.run.error {
                    eprintln!("stockade: {err}");
                }
            }
            Ok(report.run.exit_status().clamp(0, 255) as u8)
        }
        Command::Gc(args) => {
            let state = stockade_core::state::StateDir::open(&args.state_dir)?;
            let driver = stockade_cgroup::Driver::detect().ok();
            let opts = stockade_core::gc::GcOptions {
                drop_kept: args.drop_kept,
                reset_scratch: args.reset_scratch,
                drain_pool: args.drain_pool,
                ..stockade_core::gc::GcOptions::default()
            };
            let report = stockade_core::gc::gc(&state, driver.as_ref(), &opts);
            print_gc(report)?;
            Ok(0)
        }
        Command::Doctor => Ok(doctor::run()),
        Command::Serve(a) => daemon::serve(*a),
        Command::Create(a) => daemon::create(*a),
        Command::Exec(a) => daemon::exec(a),
        Command::Ps(a) => listing::ps(a),
        Command::Top(a) => listing::top(a),
        Command::Rm(a) => daemon::rm(a),
        Command::Events(a) => daemon::events(a),
        Command::Cp(a) => daemon::cp(a),
        Command::Pull(a) => images::pull(*a),
        Command::Images(a) => images::images(a),
        Command::Rmi(a) => images::rmi(a),
        Command::Image(c) => images::image(c),
        Command::Logs(a) => daemon::logs(a),
        Command::Inspect(a) => daemon::inspect(a),
        Command::Version(a) => daemon::version(a),
        Command::Stats(a) => daemon::stats(a),
        Command::Tasks(a) => daemon::tasks(a),
        Command::Oci { mut args } => {
            args.insert(0, "stockade-runc".into());
            Ok(oci::main_code(args))
        }
        Command::Shim { zygote: true, .. } => Ok(stockade_core::shim::zygote().clamp(0, 255) as u8),
        Command::Shim { .. } => Ok(stockade_core::shim::entry().clamp(0, 255) as u8),
    }
}

/// What `stockade gc` did, one line a step; a failed scratch reset is the
/// command's error (after what was done before it).
fn print_gc(report: stockade_core::gc::GcReport) -> anyhow::Result<()> {
    let collected = &report.collected;
    println!(
        "removed {} sandbox(es) and {} cgroup(s) left by dead supervisors",
        collected.sandboxes.len(),
        collected.cgroups.len()
    );
    if !collected.scratch.is_empty() {
        println!(
            "deleted {} scratch subvolume(s) of sandboxes that are gone",
            collected.scratch.len()
        );
    }
    if report.orphan_pairs > 0 {
        println!(
            "released {} namespace pair(s) left claimed by dead supervisors",
            report.orphan_pairs
        );
    }
    if let Some(gone) = report.kept_dropped {
        println!("deleted {} kept task workspace(s)", gone.len());
    }
    match report.scratch_reset {
        Some(Ok(())) => {
            println!("unmounted the scratch filesystem; it is made afresh on the next run")
        }
        Some(Err(e)) => return Err(e.into()),
        None => {}
    }
    if let Some(n) = report.drained {
        println!("released {n} pooled namespace pair(s)");
    }
    if let Some(pid) = report.base_stopped {
        println!("stopped the base user namespace's holder (pid {pid})");
    }
    Ok(())
}
