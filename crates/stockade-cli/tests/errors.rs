//! The wording of errors a user can cause, end to end: each names what
//! was wrong, on one line, and says its cause once (the CLI prints an
//! error's chain of causes, so a message that also repeats its cause
//! would say it twice).
//!
//! Most of these fail before any sandbox exists and need no privileges;
//! the one that talks to a running daemon needs root, like the daemon's
//! own tests.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{code, stderr};

/// `stockade ARGS...` with a state directory of its own, to completion.
fn stockade(state: &Path, args: &[&str]) -> Output {
    Command::new(common::BIN)
        .env("STOCKADE_STATE_DIR", state)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `stockade run --policy FILE -- true` with `text` as the policy file;
/// returns the run and the file's path.
fn run_with_policy(dir: &Path, name: &str, text: &str) -> (Output, String) {
    let policy = dir.join(name);
    std::fs::write(&policy, text).unwrap();
    let policy = policy.to_str().unwrap().to_string();
    (
        stockade(dir, &["run", "--policy", &policy, "--", "true"]),
        policy,
    )
}

/// Asserts that `o` failed as stockade itself (125) with one line on
/// stderr that holds `once` exactly once, and returns that line.
fn fails_saying_once(o: &Output, once: &str) -> String {
    let err = stderr(o);
    assert_eq!(code(o), 125, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("stockade: "), "{err}");
    assert_eq!(err.matches(once).count(), 1, "{once:?} not once in: {err}");
    err
}

#[test]
fn a_missing_policy_file_is_named_with_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("absent.toml");
    let o = stockade(
        dir.path(),
        &["run", "--policy", policy.to_str().unwrap(), "--", "true"],
    );
    let err = fails_saying_once(&o, "No such file or directory");
    assert!(err.contains("cannot read policy file"), "{err}");
    assert_eq!(err.matches(policy.to_str().unwrap()).count(), 1, "{err}");
}

#[test]
fn a_malformed_policy_names_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (o, policy) = run_with_policy(
        dir.path(),
        "typo.toml",
        "[limits]\ncpus = 2\n  memroy = \"1G\"\n",
    );
    let err = stderr(&o);
    assert_eq!(code(&o), 125, "{err}");
    assert!(err.starts_with("stockade: "), "{err}");
    assert_eq!(err.matches("unknown field `memroy`").count(), 1, "{err}");
    assert_eq!(err.matches(&policy).count(), 1, "{err}");
    assert!(err.contains("line 3"), "{err}");
    // The parser's picture is printed whole: the faulty line, then a
    // caret under the key, at the same column.
    let lines: Vec<&str> = err.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.ends_with("memroy = \"1G\""))
        .unwrap_or_else(|| panic!("the faulty line is not on a line of its own: {err}"));
    let key_col = lines[at].find("memroy").unwrap();
    let caret_col = lines[at + 1].find('^').expect("a caret line follows");
    assert_eq!(key_col, caret_col, "{err}");
}

#[test]
fn an_impossible_policy_value_names_the_file_and_the_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let (o, policy) = run_with_policy(dir.path(), "pids.toml", "[limits]\npids = 1\n");
    let err = fails_saying_once(&o, "limits.pids must be at least 2");
    assert_eq!(err.matches(&policy).count(), 1, "{err}");
    assert!(err.contains("got 1"), "{err}");
}

#[test]
fn a_too_small_memory_flag_names_the_key_and_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let o = stockade(dir.path(), &["run", "--memory", "1k", "--", "true"]);
    let err = fails_saying_once(&o, "limits.memory must be at least 4M");
    assert!(err.contains("got 1K"), "{err}");
}

#[test]
fn a_malformed_size_flag_names_the_flag_and_quotes_the_value_once() {
    let dir = tempfile::tempdir().unwrap();
    let o = stockade(dir.path(), &["run", "--memory=-5M", "--", "true"]);
    let err = fails_saying_once(&o, "-5M");
    assert!(err.contains("--memory"), "{err}");
    assert!(err.contains("expected a size like"), "{err}");
    let o = stockade(dir.path(), &["run", "--timeout", "5x", "--", "true"]);
    let err = fails_saying_once(&o, "5x");
    assert!(err.contains("--timeout"), "{err}");
    // A parser whose message does not quote the value keeps clap's wording,
    // which does.
    let o = stockade(dir.path(), &["run", "--pids", "abc", "--", "true"]);
    let err = fails_saying_once(&o, "abc");
    assert!(err.contains("--pids"), "{err}");
}

#[test]
fn client_commands_without_a_daemon_say_why_once() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let socket = socket.to_str().unwrap();
    for args in [
        vec!["ps", "--socket", socket],
        vec!["top", "--socket", socket, "sb-none"],
        vec!["exec", "--socket", socket, "sb-none", "--", "true"],
        vec![
            "cp",
            "--socket",
            socket,
            "sb-none:/workspace/a",
            "/dev/null",
        ],
        vec!["rm", "--socket", socket, "sb-none"],
    ] {
        let o = stockade(dir.path(), &args);
        let err = stderr(&o);
        assert_ne!(code(&o), 0, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert_eq!(
            err.matches("cannot reach the stockade daemon").count(),
            1,
            "{args:?}: {err}"
        );
        assert_eq!(err.matches(socket).count(), 1, "{args:?}: {err}");
        assert_eq!(
            err.matches("No such file or directory").count(),
            1,
            "{args:?}: {err}"
        );
    }
}

#[test]
fn serve_names_an_unusable_state_directory_with_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let state = file.join("state");
    let socket = dir.path().join("api.sock");
    let o = Command::new(common::BIN)
        .args(["serve", "--state-dir", state.to_str().unwrap(), "--socket"])
        .arg(&socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = fails_saying_once(&o, "Not a directory");
    assert!(err.contains("cannot create the state directory"), "{err}");
    assert_eq!(err.matches(state.to_str().unwrap()).count(), 1, "{err}");
}

#[test]
#[ignore = "needs root: starts a daemon that makes namespaces and cgroups"]
fn the_daemon_names_an_unknown_sandbox_once() {
    let env = common::Env::new();
    let d = common::daemon::Daemon::start(&env, &[]);
    let socket = d.socket.to_str().unwrap();
    for args in [
        vec!["exec", "--socket", socket, "sb-nonesuch", "--", "true"],
        vec![
            "cp",
            "--socket",
            socket,
            "sb-nonesuch:/workspace/a",
            "/dev/null",
        ],
    ] {
        let o = env.cmd().args(&args).output().unwrap();
        let err = stderr(&o);
        assert_ne!(code(&o), 0, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert_eq!(err.matches("sb-nonesuch").count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("no sandbox has the id or name"),
            "{args:?}: {err}"
        );
        // Words for the CLI, not for HTTP.
        assert!(!err.contains("/v1/"), "{args:?}: {err}");
        assert!(err.contains("`stockade ps -a`"), "{args:?}: {err}");
    }
}

#[test]
#[ignore = "needs root: would create namespaces and cgroups if it ran"]
fn an_unwritable_report_path_stops_before_the_command_runs() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("no-such-dir/r.json");
    let o = stockade(
        dir.path(),
        &[
            "run",
            "--report",
            report.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo the command ran",
        ],
    );
    let err = fails_saying_once(&o, "No such file or directory");
    assert!(err.contains("cannot write the report to"), "{err}");
    assert!(
        String::from_utf8_lossy(&o.stdout).is_empty(),
        "the command ran first: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    // A writable one gets the report of the run.
    let report = dir.path().join("r.json");
    let o = stockade(
        dir.path(),
        &[
            "run",
            "--report",
            report.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "exit 3",
        ],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(doc["exit_code"], 3, "{doc}");
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn a_net_none_flag_wins_over_the_files_allowlist() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        "[network]\nmode = \"allowlist\"\nallow_hosts = [\"pypi.org\"]\n",
    )
    .unwrap();
    let o = stockade(
        dir.path(),
        &[
            "run",
            "--policy",
            policy.to_str().unwrap(),
            "--net",
            "none",
            "--",
            "sh",
            "-c",
            "ls /sys/class/net",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Only loopback: the file's allowlist did not bring the TUN device.
    assert_eq!(String::from_utf8_lossy(&o.stdout), "lo\n");
}

#[test]
fn task_refuses_a_workspace_instead_of_ignoring_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = stockade(
        dir.path(),
        &[
            "task",
            "--repo",
            "/nonexistent",
            "--workspace",
            "/srv",
            "--",
            "true",
        ],
    );
    let err = fails_saying_once(&o, "--workspace /srv");
    assert!(err.contains("--repo"), "{err}");
}

#[test]
fn a_missing_command_a_negative_size_and_a_bare_bandwidth_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // The command may come from an image's entrypoint, so the flag parser
    // lets it be absent; without an image, stockade names what is missing.
    let o = stockade(dir.path(), &["run", "--"]);
    let err = fails_saying_once(&o, "no command given");
    assert!(err.contains("after `--`"), "{err}");
    let o = stockade(dir.path(), &["run", "--memory", "-5M", "--", "true"]);
    let err = fails_saying_once(&o, "\"-5M\"");
    assert!(err.contains("--memory"), "{err}");
    let o = stockade(
        dir.path(),
        &[
            "run",
            "--net",
            "allowlist",
            "--net-bandwidth",
            "5",
            "--",
            "true",
        ],
    );
    let err = fails_saying_once(&o, "no unit");
    assert!(err.contains("5mbit"), "{err}");
}
