//! `stockade run -d [--name NAME] [policy flags] -- CMD`: the sandbox is
//! handed to the daemon instead of living in this process. It is created
//! through the API with the policy `run` would use, CMD starts in it as a
//! background process, and the id is printed. The sandbox then stays
//! until `stockade stop` (or its ttl or time limit), CMD ended or not, so
//! that `logs`, `top`, `exec` and `inspect` still reach it.

use std::collections::BTreeMap;

use anyhow::bail;
use stockade_client::{ClientError, ExecOptions};

use crate::flags::RunArgs;

/// Runs `args.command` detached in a daemon sandbox; prints its id.
pub fn run(args: RunArgs) -> anyhow::Result<u8> {
    refuse_foreground_flags(&args)?;
    if args.command.is_empty() {
        bail!(
            "missing COMMAND: `stockade run -d` starts a command in the daemon's sandbox; give it after `--`, e.g. `-- sleep 100`"
        );
    }
    let client = args.socket.client();
    // Before anything else is done: without a daemon there is nothing
    // to hand the sandbox to.
    if let Err(ClientError::Connect { endpoint, source }) = client.health() {
        return Err(anyhow::Error::new(source).context(format!(
            "no stockade daemon answers at {endpoint}, and `run -d` hands the sandbox to one: \
             start it with `stockade serve` (as root; give --socket or STOCKADE_SOCKET if it \
             listens elsewhere), or run in the foreground without -d"
        )));
    }
    let policy = args.policy.into_policy()?;
    let sb = client.create(Some(&policy), args.name.as_deref(), &BTreeMap::new(), None)?;
    let opts = ExecOptions {
        cmd: args.command,
        background: true,
        ..ExecOptions::default()
    };
    match client.exec_background(&sb.id, &opts) {
        Ok(pid) => {
            // Its stdin is empty, as `docker run -d` gives it: a command
            // that reads it sees its end rather than waiting forever. (It
            // may have ended already; then there is nothing to close.)
            let _ = client.send_stdin(&sb.id, pid, b"", true);
            println!("{}", sb.id);
            Ok(0)
        }
        Err(e) => {
            // A command that cannot start leaves no sandbox behind.
            let _ = client.destroy(&sb.id);
            Err(crate::daemon::spawn_error(e))
        }
    }
}

/// Flags that only mean something to a run this terminal waits for.
fn refuse_foreground_flags(args: &RunArgs) -> anyhow::Result<()> {
    if args.tty {
        bail!(
            "-t gives a terminal to a command this terminal waits for, and -d does not wait; \
             start it with -d, then use `stockade exec -it ID -- sh`"
        );
    }
    if let Some(r) = &args.report {
        bail!(
            "--report {} writes the report of a run this terminal waits for; a detached \
             sandbox's report is kept by the daemon (`stockade inspect ID` after `stockade stop ID`)",
            r.display()
        );
    }
    args.policy.refuse_net_log("run -d")?;
    let r = &args.registry;
    if r.creds.is_some()
        || r.authfile.is_some()
        || r.platform.is_some()
        || !r.registry_ca.is_empty()
        || !r.insecure_registry.is_empty()
        || !r.registry_mirror.is_empty()
    {
        bail!(
            "with -d the daemon pulls --image, with its own registry settings: give --creds, \
             --authfile, --registry-ca, --insecure-registry, --registry-mirror and --platform \
             to `stockade serve`, or `stockade pull` the image first"
        );
    }
    Ok(())
}
