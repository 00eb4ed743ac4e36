//! Resource limits, exit statuses, reports and supervision, end to end.
//! Needs root (namespaces and cgroups); CI runs these as root.

mod common;

use common::*;

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn exit_statuses_follow_the_documented_mapping() {
    let env = Env::new();
    assert_eq!(code(&env.sh("exit 3")), 3);
    assert_eq!(code(&env.sh("kill -TERM $$")), 128 + 15);
    let nf = env.run(&["--", "no-such-command-here"]);
    assert_eq!(code(&nf), 127);
    // The child composes its error report without allocating; the
    // command's name must come through it.
    assert!(
        stderr(&nf).contains("no-such-command-here: command not found"),
        "{}",
        stderr(&nf)
    );
    let na = env.run(&["--", "/etc/passwd"]);
    assert_eq!(code(&na), 126);
    assert!(
        stderr(&na).contains("/etc/passwd: cannot execute"),
        "{}",
        stderr(&na)
    );
    let cwd = env.run(&["--cwd", "/no/such/dir", "--", "true"]);
    assert_eq!(code(&cwd), 125);
    assert!(
        stderr(&cwd).contains("cannot enter the working directory /no/such/dir"),
        "{}",
        stderr(&cwd)
    );
    let bad = env.run(&["--memory", "lots", "--", "true"]);
    assert_eq!(code(&bad), 125);
    assert_eq!(stderr(&bad).lines().count(), 1, "{}", stderr(&bad));
    let bad = env.run(&["--frobnicate", "--", "true"]);
    assert_eq!(code(&bad), 125);
    assert_eq!(stderr(&bad).lines().count(), 1, "{}", stderr(&bad));
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn timeout_kills_and_reports() {
    let env = Env::new();
    let (out, report) = env.run_report(&["--timeout", "1s", "--", "sleep", "30"]);
    assert_eq!(code(&out), 124);
    assert_eq!(report["outcome"], "timeout");
    assert_eq!(report["violations"][0]["kind"], "timeout");
    assert!(
        stderr(&out).contains("stockade: timeout:"),
        "{}",
        stderr(&out)
    );
    assert!(report["usage"]["wall_seconds"].as_f64().unwrap() < 20.0);
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn memory_bomb_is_killed_with_137() {
    let env = Env::new();
    let (out, report) = env.run_report(&[
        "--memory",
        "64M",
        "--",
        "/usr/bin/python3",
        "-c",
        "x = [bytearray(1 << 20) for _ in range(1024)]; print('SURVIVED')",
    ]);
    assert_eq!(code(&out), 137, "{}", stderr(&out));
    assert!(!stdout(&out).contains("SURVIVED"));
    assert_eq!(report["outcome"], "memory-limit");
    assert_eq!(report["violations"][0]["kind"], "memory-limit");
    assert!(
        stderr(&out).contains("stockade: memory-limit:"),
        "{}",
        stderr(&out)
    );
    assert!(report["usage"]["peak_memory_bytes"].as_u64().unwrap() <= 64 << 20);
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn fork_bomb_hits_the_pids_limit() {
    let env = Env::new();
    let (out, report) = env.run_report(&[
        "--pids",
        "64",
        "--timeout",
        "3s",
        "--",
        "bash",
        "-c",
        "bomb() { bomb | bomb & }; bomb; sleep 10",
    ]);
    let kinds: Vec<&str> = report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"pids-limit"), "{kinds:?} {}", stderr(&out));
    assert!(report["usage"]["pids_peak"].as_u64().unwrap() <= 64);
    assert!(stderr(&out).contains("stockade: pids-limit:"));
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn without_the_scratch_filesystem_filling_the_disk_is_measured_and_killed() {
    // The fallback where the host has no scratch filesystem: the limit is
    // measured by polling and a breach kills (tests/disk.rs covers the
    // kernel-enforced cap).
    let env = Env::new().with_env("STOCKADE_SCRATCH", "off");
    let (out, report) = env.run_report(&[
        "--disk",
        "20M",
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/workspace/fill bs=1M count=400 2>/dev/null; sleep 5; echo SURVIVED",
    ]);
    assert_eq!(code(&out), 137, "{}", stderr(&out));
    assert!(!stdout(&out).contains("SURVIVED"));
    assert_eq!(report["outcome"], "disk-limit");
    assert_eq!(report["usage"]["disk_enforced"], "polling");
    assert!(stderr(&out).contains("stockade: disk-limit:"));
    // Home counts too.
    let (_, report) = env.run_report(&[
        "--disk",
        "20M",
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/home/agent/fill bs=1M count=100 2>/dev/null; sleep 5",
    ]);
    assert_eq!(report["outcome"], "disk-limit");
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn tmp_is_capped_by_tmp_size() {
    let env = Env::new();
    let out = env.run(&[
        "--tmp-size",
        "8M",
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1 | grep -c 'No space'; du -k /tmp/fill | cut -f1",
    ]);
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("1"), "{text}");
    let kib: u64 = lines.next().unwrap().trim().parse().unwrap();
    assert!(kib <= 8 * 1024, "{kib} KiB in /tmp");
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn cpu_limit_throttles() {
    let env = Env::new();
    // Two busy loops for 1.5 s of wall time under a quarter of a CPU:
    // the cgroup must not let them use more than a fraction of that.
    let (_, report) = env.run_report(&[
        "--cpus",
        "0.25",
        "--timeout",
        "1500ms",
        "--",
        "sh",
        "-c",
        "while :; do :; done & while :; do :; done",
    ]);
    let cpu = report["usage"]["cpu_seconds"].as_f64().unwrap();
    let wall = report["usage"]["wall_seconds"].as_f64().unwrap();
    assert!(
        cpu < wall * 0.6,
        "cpu {cpu}s in {wall}s wall under 0.25 CPUs"
    );
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn zombies_are_reaped_by_init() {
    let env = Env::new();
    // The inner shell exits at once, orphaning its sleeps to init; once
    // they end, init must reap them.
    let script = "sh -c 'for i in 1 2 3 4 5; do sleep 0.1 & done'; sleep 1; \
                  grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l";
    let out = env.sh(script);
    assert_eq!(stdout(&out).trim(), "0", "{}", stderr(&out));
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn signals_are_forwarded_to_the_workload() {
    use std::io::BufRead;
    let env = Env::new();
    let mut child = env
        .cmd()
        .args([
            "run",
            "--",
            "sh",
            "-c",
            "trap 'echo got-term; exit 7' TERM; echo ready; sleep 30 & wait",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Signal only once the workload has its trap in place.
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "got-term");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(7));
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn killed_supervisor_takes_the_sandbox_with_it_and_gc_cleans() {
    let env = Env::new();
    let marker = format!("sbx-orphan-{}", rand_suffix());
    let script = format!("exec -a {marker} sleep 300");
    let mut child = env
        .cmd()
        .args(["run", "--", "bash", "-c", &script])
        .spawn()
        .unwrap();
    assert!(
        eventually(|| !processes_with(&marker).is_empty()),
        "workload never started"
    );
    let ids: Vec<String> = std::fs::read_dir(env.sandboxes_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids.len(), 1);
    child.kill().unwrap(); // SIGKILL: no cleanup code runs
    child.wait().unwrap();
    assert!(
        eventually(|| processes_with(&marker).is_empty()),
        "workload survived its supervisor"
    );
    assert!(
        !cgroup_dirs(&ids[0]).is_empty(),
        "expected leftovers before gc"
    );
    let gc = env.cmd().arg("gc").output().unwrap();
    assert_eq!(code(&gc), 0, "{}", stderr(&gc));
    assert!(cgroup_dirs(&ids[0]).is_empty(), "gc left cgroups");
    assert!(
        !env.sandboxes_dir().join(&ids[0]).exists(),
        "gc left the sandbox dir"
    );
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn report_has_usage_and_outcome() {
    let env = Env::new();
    let (out, report) = env.run_report(&["--", "sh", "-c", "echo hi; exit 5"]);
    assert_eq!(code(&out), 5);
    assert_eq!(stdout(&out), "hi\n");
    assert_eq!(report["outcome"], "exited");
    assert_eq!(report["exit_code"], 5);
    assert!(report["signal"].is_null());
    assert!(report["usage"]["cpu_seconds"].as_f64().unwrap() > 0.0);
    assert!(report["usage"]["peak_memory_bytes"].as_u64().unwrap() > 0);
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups; uses script(1) for a terminal"]
fn tty_gives_the_workload_its_own_terminal() {
    let env = Env::new();
    let report = env.state.path().join("tty-report.json");
    let inner = format!(
        "STOCKADE_STATE_DIR={} {BIN} run -t --report {} -- sh -c 'tty; test -t 0 && test -t 1 && echo interactive; stty size'",
        env.state.path().display(),
        report.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .env("COLUMNS", "101")
        .env("LINES", "33")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = stdout(&out);
    // The terminal comes from the sandbox's own devpts instance.
    assert!(text.contains("/dev/pts/0"), "{text:?}");
    assert!(text.contains("interactive"), "{text:?}");
    assert_eq!(code(&out), 0, "{text:?} {}", stderr(&out));
    // The terminal is gone when `script` ends, hanging up its session; the
    // detached cleaner must survive that and remove everything.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let id = report["id"].as_str().unwrap().to_string();
    let dir = env.state.path().join("sandboxes").join(&id);
    assert!(
        eventually(|| cgroup_dirs(&id).is_empty() && !dir.exists()),
        "left behind: {:?}, directory there: {}",
        cgroup_dirs(&id),
        dir.exists()
    );
}

#[test]
#[ignore = "needs root: probes namespaces and cgroups"]
fn doctor_reports_every_feature() {
    let env = Env::new();
    let out = env.cmd().arg("doctor").output().unwrap();
    let text = stdout(&out);
    for name in [
        "user namespaces",
        "cgroups",
        "landlock",
        "seccomp",
        "overlayfs",
        "tun",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    assert!(text.contains("[ok  ] cgroups"), "{text}");
    assert_eq!(code(&out), 0, "{text}");
}
