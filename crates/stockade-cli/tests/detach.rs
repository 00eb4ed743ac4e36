//! Docker habits over the daemon: `run -d --name`, `ps` with what the
//! sandboxes use now, `top`, `logs` and `stop` by name. The privileged
//! tests run real sandboxes; traffic only on unix sockets.

mod common;

use std::process::{Command, Output, Stdio};

use common::daemon::Daemon;
use common::*;

/// `stockade VERB --socket SOCKET ARGS...`.
fn cli(socket: &std::path::Path, verb: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg(verb)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `12.5M` → bytes.
fn bytes_of(s: &str) -> f64 {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.parse().unwrap_or_else(|_| panic!("not a size: {s:?}"));
    let mult = match unit {
        "B" => 1.0,
        "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        _ => panic!("unknown unit in {s:?}"),
    };
    n * mult
}

/// The `ps` row of the sandbox named `name`, split on whitespace (the
/// `/` between memory usage and limit is a cell of its own).
fn ps_row(socket: &std::path::Path, name: &str) -> Option<Vec<String>> {
    let out = cli(socket, "ps", &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cells| cells.get(1).map(String::as_str) == Some(name))
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn run_d_hands_a_named_sandbox_to_the_daemon_that_ps_top_logs_and_stop_reach() {
    let env = Env::new();
    let d = Daemon::start_cleaning(&env, &[]);
    let sock = d.socket.clone();
    // The shell notes its pid inside, prints, starts a process holding
    // 60 MiB, and becomes `sleep 100`.
    let script = "echo $$ > /tmp/sleep.pid; echo hello-from-web; \
        python3 -c 'import time; b = b\"x\" * (60 << 20); time.sleep(300)' & exec sleep 100";
    let out = cli(
        &sock,
        "run",
        &[
            "-d", "--name", "web", "--memory", "512M", "--", "sh", "-c", script,
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    assert_eq!(id.len(), 12, "{id:?}");

    // The name is taken while it runs.
    let dup = cli(&sock, "run", &["-d", "--name", "web", "--", "sleep", "100"]);
    assert_eq!(code(&dup), 125);
    assert!(
        stderr(&dup).contains("already named \"web\""),
        "{}",
        stderr(&dup)
    );

    // ps: its name, and what it holds now: the 60 MiB, against its limit.
    let mut row = None;
    let holds = eventually_for(30, || {
        row = ps_row(&sock, "web");
        row.as_ref()
            .is_some_and(|r| bytes_of(&r[4]) >= 50.0 * 1024.0 * 1024.0)
    });
    let row = row.expect("web is not in ps");
    assert!(holds, "{row:?}");
    assert_eq!((row[0].as_str(), row[2].as_str()), (id.as_str(), "running"));
    assert_eq!(
        (row[5].as_str(), row[6].as_str()),
        ("/", "512.0M"),
        "{row:?}"
    );
    let pids: u64 = row[7].parse().unwrap();
    assert!(pids >= 3, "init, sleep and python: {row:?}");
    // The same figures as JSON, and the ids alone with -q.
    let out = cli(&sock, "ps", &["--format", "json"]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let web = all
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "web")
        .unwrap();
    assert!(
        web["current"]["memory_bytes"].as_u64().unwrap() >= 50 << 20,
        "{web}"
    );
    assert!(web["policy"]["limits"]["memory"].is_string(), "{web}");
    let out = cli(&sock, "ps", &["-q"]);
    assert_eq!(stdout(&out).lines().collect::<Vec<_>>(), [id.as_str()]);

    // top: the sleep, with its pid inside (as the shell saw it) and on
    // the host, and its user inside.
    let pid_inside = stdout(&cli(&sock, "exec", &["web", "--", "cat", "/tmp/sleep.pid"]))
        .trim()
        .to_string();
    let user_inside = stdout(&cli(&sock, "exec", &["web", "--", "id", "-un"]))
        .trim()
        .to_string();
    assert_eq!(user_inside, "agent");
    let out = cli(&sock, "top", &["web"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        table
            .lines()
            .next()
            .unwrap()
            .starts_with("PID  HOST PID  USER"),
        "{table}"
    );
    let sleep: Vec<&str> = table
        .lines()
        .find(|l| l.ends_with(" sleep 100"))
        .unwrap_or_else(|| panic!("no sleep in\n{table}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        (sleep[0], sleep[2]),
        (pid_inside.as_str(), "agent"),
        "{table}"
    );
    let host_pid = sleep[1];
    assert_ne!(host_pid, pid_inside);
    let host_cmdline = std::fs::read(format!("/proc/{host_pid}/cmdline")).unwrap();
    assert_eq!(host_cmdline, b"sleep\x00100\x00");
    let python = table.lines().find(|l| l.contains("python3 -c")).unwrap();
    let rss = python.split_whitespace().nth(4).unwrap();
    assert!(bytes_of(rss) >= 50.0 * 1024.0 * 1024.0, "{table}");

    // logs: what it printed, first of all the sandbox's processes (the
    // two execs above follow), and alone when asked by its pid.
    let out = cli(&sock, "logs", &["web"]);
    assert_eq!(
        stdout(&out),
        format!("hello-from-web\n{pid_inside}\nagent\n")
    );
    let out = cli(&sock, "logs", &["web", &pid_inside]);
    assert_eq!(stdout(&out), "hello-from-web\n", "{}", stderr(&out));

    // stop by name: gone from ps, and the name is free again.
    let out = cli(&sock, "stop", &["web"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(ps_row(&sock, "web").is_none());
    // Its stdin is empty, as docker's: `cat` ends, the shell goes on.
    let out = cli(
        &sock,
        "run",
        &[
            "-d",
            "--name",
            "web",
            "--",
            "sh",
            "-c",
            "cat; echo stdin-closed",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_ne!(stdout(&out).trim(), id);
    let mut logs = String::new();
    let closed = eventually_for(30, || {
        logs = stdout(&cli(&sock, "logs", &["web"]));
        logs == "stdin-closed\n"
    });
    assert!(closed, "{logs:?}");
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn run_d_of_a_missing_command_exits_127_and_leaves_no_running_sandbox() {
    let env = Env::new();
    let d = Daemon::start_cleaning(&env, &[]);
    let out = cli(&d.socket, "run", &["-d", "--", "no-such-command-here"]);
    assert_eq!(code(&out), 127, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no-such-command-here"),
        "{}",
        stderr(&out)
    );
    let running = d.client().list(&[], Some("running")).unwrap();
    assert!(running.is_empty(), "{running:?}");
}

#[test]
fn run_d_without_a_daemon_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let out = cli(&sock, "run", &["-d", "--name", "web", "--", "sleep", "100"]);
    assert_eq!(code(&out), 125);
    let err = stderr(&out);
    assert!(
        err.contains("no stockade daemon answers at") && err.contains(sock.to_str().unwrap()),
        "{err}"
    );
    assert!(err.contains("`stockade serve`"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn name_without_d_and_foreground_only_flags_with_d_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let cases: [(&[&str], &str); 4] = [
        (&["--name", "web", "--", "true"], "add -d"),
        (&["-d", "-t", "--", "sh"], "stockade exec -it"),
        (
            &["-d", "--report", "/tmp/r.json", "--", "true"],
            "stockade inspect",
        ),
        (&["-d"], "missing COMMAND"),
    ];
    for (args, says) in cases {
        let out = cli(&sock, "run", args);
        assert_eq!(code(&out), 125, "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
}
