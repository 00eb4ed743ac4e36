//! `stockade serve` with real sandboxes (shim backend), end to end.
//! Needs root; CI runs these as root. Traffic only on unix sockets and
//! loopback.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;
use stockade_client::{Client, ExecOptions};
use stockade_policy::{ByteSize, Policy};

fn run(c: &Client, id: &str, cmd: &[&str]) -> (Option<i32>, String) {
    let r = c
        .exec(
            id,
            &ExecOptions {
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        )
        .unwrap();
    (r.exit_code, r.stdout)
}

/// Waits (bounded) until nothing of the sandboxes `ids` is left: destroy
/// answers once a sandbox is dead, its teardown follows just after.
fn assert_torn_down(state: &Path, ids: &[String]) {
    assert!(
        eventually(|| leftovers(state, ids).is_empty()),
        "{:?}",
        leftovers(state, ids)
    );
}

fn leftovers(state: &Path, ids: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    for id in ids {
        if !cgroup_dirs(id).is_empty() {
            left.push(format!("cgroup {id}"));
        }
        if state.join("sandboxes").join(id).exists() {
            left.push(format!("dir {id}"));
        }
    }
    left
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn api_runs_real_sandboxes_end_to_end() {
    let env = Env::new();
    let d = Daemon::start(&env, &[]);
    let c = d.client();
    let mut policy = Policy::default();
    policy.limits.memory = ByteSize::mib(256);
    let sb = c
        .create(Some(&policy), Some("e2e"), &BTreeMap::new(), Some("10m"))
        .unwrap();
    assert_eq!(sb.state, "running");
    assert_eq!(
        run(&c, &sb.id, &["sh", "-c", "echo hi; id -u"]),
        (Some(0), "hi\n1000\n".into())
    );
    // Files as the sandbox sees them; writes belong to the agent.
    c.write_file(&sb.id, "/workspace/dir/a.txt", b"payload")
        .unwrap();
    assert_eq!(
        run(
            &c,
            "e2e",
            &[
                "sh",
                "-c",
                "cat /workspace/dir/a.txt; stat -c %u /workspace/dir/a.txt"
            ]
        )
        .1,
        "payload1000\n"
    );
    assert_eq!(
        c.read_file(&sb.id, "/workspace/dir/a.txt").unwrap(),
        b"payload"
    );
    for bad in [
        "/../../etc/shadow",
        "/etc/shadow",
        "/workspace/../../../root",
    ] {
        assert!(c.read_file(&sb.id, bad).is_err(), "{bad} readable");
    }
    run(&c, &sb.id, &["ln", "-s", "/etc/shadow", "/workspace/link"]);
    assert!(c.read_file(&sb.id, "/workspace/link").is_err());
    assert!(
        c.write_file(&sb.id, "/usr/bin/evil", b"x").is_err(),
        "wrote into /usr"
    );
    // Streaming exec.
    let events: Vec<String> = c
        .exec_stream(
            &sb.id,
            &ExecOptions {
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo a; echo b >&2; exit 2".into(),
                ],
                ..Default::default()
            },
        )
        .unwrap()
        .map(|e| e.unwrap().event)
        .collect();
    assert_eq!(events.first().map(String::as_str), Some("start"));
    assert_eq!(events.last().map(String::as_str), Some("exit"));
    let got = c.get(&sb.id).unwrap();
    assert!(got.usage.is_some() && got.processes.is_some());
    let gone = c.destroy(&sb.id).unwrap();
    assert_eq!(gone.state, "destroyed");
    assert_eq!(gone.report.unwrap()["outcome"], "destroyed");
    // The teardown finishes just after the answer.
    let ids = [sb.id];
    assert_torn_down(&env.state.path().join("state"), &ids);
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn sandboxes_survive_kill_9_of_the_daemon() {
    let env = Env::new();
    let d = Daemon::start(&env, &[]);
    let c = d.client();
    let mut ids = Vec::new();
    for i in 0..10 {
        let sb = c
            .create(None, Some(&format!("s{i}")), &BTreeMap::new(), None)
            .unwrap();
        run(
            &c,
            &sb.id,
            &["sh", "-c", &format!("echo {i} > /home/agent/n")],
        );
        ids.push(sb.id);
    }
    d.kill9();
    let d = Daemon::start(&env, &[]);
    let c = d.client();
    let listed = c.list(&[], Some("running")).unwrap();
    assert_eq!(listed.len(), 10, "{listed:?}");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            run(&c, id, &["cat", "/home/agent/n"]),
            (Some(0), format!("{i}\n"))
        );
    }
    // A sandbox whose shim died while no daemon ran is marked dead.
    let shim = shim_of(&ids[0]).expect("the shim of the first sandbox");
    d.kill9();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let d = Daemon::start(&env, &[]);
    let c = d.client();
    let all = c.list(&[], None).unwrap();
    assert_eq!(
        all.iter().filter(|s| s.state == "dead").count(),
        1,
        "{all:?}"
    );
    assert_eq!(all.iter().filter(|s| s.state == "running").count(), 9);
    for sb in all.iter().filter(|s| s.state == "running") {
        c.destroy(&sb.id).unwrap();
    }
    assert_torn_down(&env.state.path().join("state"), &ids);
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn destroy_answers_once_the_sandbox_is_dead_and_leaves_nothing_shortly_after() {
    let env = Env::new();
    let d = Daemon::start(&env, &[]);
    let c = d.client();
    let state = env.state.path().join("state");
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    let marker = format!("destroy-marker-{}", rand_suffix());
    c.exec_background(
        &sb.id,
        &ExecOptions {
            cmd: vec![
                "bash".into(),
                "-c".into(),
                format!("exec -a {marker} sleep 1000"),
            ],
            ..Default::default()
        },
    )
    .unwrap();
    assert!(eventually(|| !processes_with(&marker).is_empty()));
    let shim = shim_of(&sb.id).expect("the sandbox's shim");
    c.destroy(&sb.id).unwrap();
    // Dead at the answer: no process of the sandbox runs, and whatever
    // is left of its cgroups holds no task.
    assert!(processes_with(&marker).is_empty());
    for cg in cgroup_dirs(&sb.id) {
        if let Ok(procs) = std::fs::read_to_string(cg.join("cgroup.procs")) {
            assert!(procs.trim().is_empty(), "{} holds {procs}", cg.display());
        }
    }
    // The rest follows without anyone asking.
    let ids = [sb.id.clone()];
    assert_torn_down(&state, &ids);
    assert!(eventually(
        || !Path::new(&format!("/proc/{shim}")).exists() || shim_of(&sb.id).is_none()
    ));
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn destroy_of_an_idle_sandbox_answers_with_at_most_its_killed_init_left() {
    // Nothing but init runs when the destroy comes, so the shim answers
    // without waiting for init's namespaces to be torn down: whatever the
    // group still holds at the answer must be init, already killed.
    let env = Env::new();
    let d = Daemon::start(&env, &[]);
    let c = d.client();
    let state = env.state.path().join("state");
    for _ in 0..20 {
        let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
        assert_eq!(run(&c, &sb.id, &["true"]).0, Some(0));
        c.destroy(&sb.id).unwrap();
        for cg in cgroup_dirs(&sb.id) {
            let Ok(procs) = std::fs::read_to_string(cg.join("cgroup.procs")) else {
                continue;
            };
            for pid in procs.split_whitespace() {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let sigkill_pending = status.lines().any(|l| {
                    (l.starts_with("ShdPnd:") || l.starts_with("SigPnd:"))
                        && l.split_whitespace()
                            .nth(1)
                            .and_then(|m| u64::from_str_radix(m, 16).ok())
                            .is_some_and(|m| m & (1 << (libc::SIGKILL - 1)) != 0)
                });
                let dying = status.is_empty()
                    || sigkill_pending
                    || status.contains("State:\tZ")
                    || status.contains("State:\tX");
                assert!(dying, "{} holds a live {pid}: {status}", cg.display());
            }
        }
        let ids = [sb.id.clone()];
        assert_torn_down(&state, &ids);
    }
}

/// Idle pooled shims of the daemon `daemon` (`stockade shim --id
/// pool-waiting`, forked by that daemon's zygote, which is the daemon's
/// child and says `--zygote` on its command line).
fn pooled_shims_of(daemon: u32) -> Vec<i32> {
    let Some(zygote) = zygote_of(daemon) else {
        return Vec::new();
    };
    shim_processes()
        .iter()
        .filter(|p| {
            !p.zygote
                && p.id_arg() == Some(stockade_core::shim::POOLED_ID.as_bytes())
                && p.ppid == Some(zygote)
        })
        .map(|p| p.pid)
        .collect()
}

/// The zygote of the daemon `daemon`, if it runs.
fn zygote_of(daemon: u32) -> Option<i32> {
    shim_processes()
        .iter()
        .find(|p| p.zygote && p.ppid == Some(daemon as i32))
        .map(|p| p.pid)
}

/// The nice value of `pid` (field 19 of its stat).
fn nice_of(pid: i32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19 - 3)?.parse().ok()
}

fn alive(pid: i32) -> bool {
    // A zombie is dead; /proc shows it until it is reaped.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn pooled_shims_carry_nothing_between_sandboxes_and_die_with_the_daemon() {
    let env = Env::new();
    let d = Daemon::start(&env, &[]);
    let c = d.client();
    let pool = stockade_core::shim::DEFAULT_POOL_SIZE;
    assert!(eventually(|| pooled_shims_of(d.child.id()).len() == pool));
    let first = c.create(None, None, &BTreeMap::new(), None).unwrap();
    let secret = format!("secret-{}", rand_suffix());
    let (code, _) = run(
        &c,
        &first.id,
        &[
            "sh",
            "-c",
            &format!("echo {secret} > /workspace/s; echo {secret} > /tmp/s; echo {secret} > /home/agent/s; echo {secret} > /dev/shm/s"),
        ],
    );
    assert_eq!(code, Some(0));
    c.destroy(&first.id).unwrap();
    // More sandboxes than the pool holds, so that every one of them was
    // served by a shim started ahead of time, and the refills too.
    let mut seen_pooled = std::collections::BTreeSet::new();
    for _ in 0..pool + 2 {
        assert!(eventually(|| pooled_shims_of(d.child.id()).len() == pool));
        let before = pooled_shims_of(d.child.id());
        seen_pooled.extend(before.iter().copied());
        let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
        let now = pooled_shims_of(d.child.id());
        assert!(
            before.iter().any(|p| !now.contains(p)),
            "no pooled shim was used: {before:?} -> {now:?}"
        );
        let (code, out) = run(
            &c,
            &sb.id,
            &[
                "sh",
                "-c",
                &format!("cat /workspace/s /tmp/s /home/agent/s /dev/shm/s 2>/dev/null; grep -rl {secret} /workspace /tmp /home /dev/shm 2>/dev/null; ls -A /workspace /tmp /dev/shm"),
            ],
        );
        assert!(!out.contains(&secret), "{out}");
        assert_eq!(code, Some(0), "{out}");
        // The shim took its sandbox's id on its command line.
        let shim = shim_of(&sb.id).expect("the sandbox's shim is found by its id");
        // Pooled shims wait at low priority; the sandbox runs at the normal one.
        assert_eq!(nice_of(shim), Some(0));
        for p in &now {
            assert_eq!(nice_of(*p), Some(10), "an idle pooled shim");
        }
        c.destroy(&sb.id).unwrap();
    }
    assert!(
        seen_pooled.len() > pool,
        "the pool was not refilled: {seen_pooled:?}"
    );
    // A zygote that dies (killed here) is replaced; creates go on.
    let zygote = zygote_of(d.child.id()).expect("the daemon runs a zygote");
    // SAFETY: kill only sends a signal.
    unsafe { libc::kill(zygote, libc::SIGKILL) };
    for _ in 0..pool + 1 {
        let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
        let (code, out) = run(&c, &sb.id, &["echo", "ok"]);
        assert_eq!((code, out.as_str()), (Some(0), "ok\n"));
        c.destroy(&sb.id).unwrap();
    }
    assert!(eventually(|| {
        zygote_of(d.child.id()).is_some_and(|z| z != zygote)
            && pooled_shims_of(d.child.id()).len() == pool
    }));
    // A stopped daemon leaves no idle shim behind.
    assert!(eventually(|| pooled_shims_of(d.child.id()).len() == pool));
    let mut idle = pooled_shims_of(d.child.id());
    idle.extend(zygote_of(d.child.id()));
    drop(c);
    drop(d);
    assert!(eventually(|| idle.iter().all(|p| !alive(*p))), "{idle:?}");
    // Nor does one killed with SIGKILL: idle shims read end-of-file.
    let d = Daemon::start(&env, &[]);
    assert!(eventually(|| pooled_shims_of(d.child.id()).len() == pool));
    let mut idle = pooled_shims_of(d.child.id());
    let zygote = zygote_of(d.child.id()).expect("the daemon runs a zygote");
    idle.push(zygote);
    d.kill9();
    assert!(eventually(|| idle.iter().all(|p| !alive(*p))), "{idle:?}");
}

/// The pid of the shim serving sandbox `id` (its command line is
/// `stockade shim --id ID`).
fn shim_of(id: &str) -> Option<i32> {
    shim_processes()
        .iter()
        .find(|p| p.id_arg() == Some(id.as_bytes()))
        .map(|p| p.pid)
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn violations_kill_the_sandbox_and_reach_the_webhook() {
    let env = Env::new();
    let hook = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", hook.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for conn in hook.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        let mut body = vec![0; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
                        let mut w = conn.try_clone().unwrap();
                        let _ =
                            w.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n");
                        len = 0;
                    }
                }
            });
        }
    });
    let d = Daemon::start(&env, &["--webhook", &url]);
    let c = d.client();
    let mut policy = Policy::default();
    policy.limits.memory = ByteSize::mib(64);
    let sb = c
        .create(Some(&policy), None, &BTreeMap::new(), None)
        .unwrap();
    let _ = c.exec(
        &sb.id,
        &ExecOptions {
            cmd: vec![
                "/usr/bin/python3".into(),
                "-c".into(),
                "x = [bytearray(1 << 20) for _ in range(1024)]".into(),
            ],
            ..Default::default()
        },
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < deadline && !seen.iter().any(|e: &String| e.contains("destroyed")) {
        if let Ok(e) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(e);
        }
    }
    assert!(
        seen.iter()
            .any(|e| e.contains("violation") && e.contains("memory-limit")),
        "{seen:?}"
    );
    assert!(seen.iter().any(|e| e.contains("destroyed")), "{seen:?}");
    assert!(eventually(|| c
        .get(&sb.id)
        .map(|s| s.state != "running")
        .unwrap_or(false)));
    let report = c.get(&sb.id).unwrap().report.unwrap();
    assert_eq!(report["outcome"], "memory-limit");
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups; runs for a minute"]
fn fifty_concurrent_clients_for_a_minute_leave_nothing_behind() {
    let env = Env::new();
    let d = Daemon::start(&env, &[]);
    let socket = d.socket.clone();
    // One cycle first, so lazily opened descriptors count in the baseline.
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    run(&c, &sb.id, &["true"]);
    c.destroy(&sb.id).unwrap();
    let fds_before = fd_count(d.child.id());
    let mounts_before = mounts_under(env.state.path());
    let stop = Instant::now() + Duration::from_secs(60);
    let workers: Vec<_> = (0..50)
        .map(|w| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let c = Client::unix(&socket);
                let mut ids = Vec::new();
                let mut n = 0;
                while Instant::now() < stop {
                    let sb = c.create(None, None, &BTreeMap::new(), Some("5m")).unwrap();
                    let (code, out) = run(&c, &sb.id, &["sh", "-c", &format!("echo {w}-{n}")]);
                    assert_eq!((code, out), (Some(0), format!("{w}-{n}\n")));
                    c.destroy(&sb.id).unwrap();
                    ids.push(sb.id);
                    n += 1;
                }
                ids
            })
        })
        .collect();
    let ids: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(ids.len() >= 50, "only {} cycles", ids.len());
    let state = env.state.path().join("state");
    // Destroy answers once a sandbox is dead; its teardown follows at once.
    assert_torn_down(&state, &ids);
    assert!(
        eventually(|| std::fs::read_dir(state.join("sandboxes")).unwrap().count() == 0),
        "sandbox dirs (and so shims) left"
    );
    assert!(d.client().list(&[], Some("running")).unwrap().is_empty());
    assert_eq!(
        d.client().list(&[], Some("destroyed")).unwrap().len(),
        ids.len() + 1,
        "rows lost"
    );
    assert!(
        fd_count(d.child.id()) <= fds_before + 4,
        "daemon fds {} -> {}",
        fds_before,
        fd_count(d.child.id())
    );
    assert_eq!(
        mounts_under(env.state.path()),
        mounts_before,
        "mounts leaked to the host"
    );
    assert_eq!(mounts_before, 0);
}

fn raw_json(
    c: &Client,
    method: &str,
    target: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let text = body.map(|b| b.to_string());
    let resp = c
        .raw(
            method,
            target,
            &[],
            text.as_deref().map(|t| ("application/json", t.as_bytes())),
        )
        .unwrap();
    let status = resp.status;
    let bytes = resp.bytes(1 << 20).unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn tasks_run_through_the_daemon_with_phase_events() {
    let env = Env::new();
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(repo.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    git(&["init", "-q"]);
    std::fs::write(repo.path().join("a.txt"), "one\n").unwrap();
    git(&["add", "."]);
    git(&["commit", "-qm", "init"]);
    // A local repository is a host path: refused unless the daemon allows
    // its directory.
    let d = Daemon::start(&env, &[]);
    let (status, refused) = raw_json(
        &d.client(),
        "POST",
        "/v1/tasks",
        Some(serde_json::json!({ "repo": repo.path(), "cmd": ["true"] })),
    );
    assert_eq!(status, 403, "{refused}");
    assert!(
        refused.to_string().contains("--allow-bind-root"),
        "{refused}"
    );
    drop(d);
    let d = Daemon::start(&env, &["--allow-bind-root", repo.path().to_str().unwrap()]);
    let c = d.client();
    let events = c.events(None).unwrap();
    let (status, task) = raw_json(
        &c,
        "POST",
        "/v1/tasks",
        Some(serde_json::json!({
            "repo": repo.path(),
            "cmd": ["sh", "-c", "echo \"$STOCKADE_TASK\" >> a.txt"],
            "task": "two",
        })),
    );
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    let mut done = serde_json::Value::Null;
    assert!(eventually(|| {
        done = raw_json(&c, "GET", &format!("/v1/tasks/{id}"), None).1;
        done["state"] != "running"
    }));
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["report"]["outcome"], "exited");
    assert_eq!(done["report"]["files_changed"], 1);
    let patch = c
        .raw("GET", &format!("/v1/tasks/{id}/patch"), &[], None)
        .unwrap();
    assert_eq!(patch.status, 200);
    let patch = String::from_utf8(patch.bytes(1 << 20).unwrap()).unwrap();
    assert!(patch.contains("+two"), "{patch}");
    let mut phases = Vec::new();
    for ev in events {
        let ev = ev.unwrap().json();
        if ev["type"] == "task-phase" && ev["task_id"] == id.as_str() {
            phases.push(ev["phase"].as_str().unwrap().to_string());
        }
        if ev["type"] == "task-finished" {
            break;
        }
    }
    for p in ["clone", "run", "collect", "done"] {
        assert!(phases.iter().any(|x| x == p), "{phases:?}");
    }
    // keep: a sandbox on the agent's working tree stays for inspection.
    let (status, kept) = raw_json(
        &c,
        "POST",
        "/v1/tasks",
        Some(serde_json::json!({
            "repo": repo.path(),
            "cmd": ["sh", "-c", "echo kept >> a.txt"],
            "keep": true,
        })),
    );
    assert_eq!(status, 201, "{kept}");
    let kid = kept["id"].as_str().unwrap().to_string();
    let mut view = serde_json::Value::Null;
    assert!(
        eventually(|| {
            view = raw_json(&c, "GET", &format!("/v1/tasks/{kid}"), None).1;
            view["sandbox_id"].is_string()
        }),
        "{view}"
    );
    let sid = view["sandbox_id"].as_str().unwrap().to_string();
    assert_eq!(
        run(&c, &sid, &["cat", "/workspace/a.txt"]),
        (Some(0), "one\nkept\n".into())
    );
    c.destroy(&sid).unwrap();
    // Kept workspaces stay until dropped.
    let out = Command::new(BIN)
        .args(["gc", "--drop-kept"])
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("kept task workspace"),
        "{}",
        stdout(&out)
    );
    let (status, err) = raw_json(
        &c,
        "POST",
        "/v1/tasks",
        Some(serde_json::json!({"repo": "/x", "cmd": ["true"], "bogus": 1})),
    );
    assert_eq!(status, 400, "{err}");
    assert_eq!(raw_json(&c, "GET", "/v1/tasks/000000000000", None).0, 404);
    // The list is an object, like the sandboxes' list.
    let (status, list) = raw_json(&c, "GET", "/v1/tasks", None);
    assert_eq!(status, 200);
    assert!(!list["tasks"].as_array().unwrap().is_empty(), "{list}");
    // The CLI lists them and shows one.
    let socket = d.socket.to_str().unwrap();
    let out = env
        .cmd()
        .args(["tasks", "--socket", socket])
        .output()
        .unwrap();
    let table = stdout(&out);
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("done") && row.contains("exited"), "{row}");
    let out = env
        .cmd()
        .args(["tasks", "--socket", socket, &id])
        .output()
        .unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["report"]["files_changed"], 1, "{shown}");
}

/// Anonymous memory of a process, in KiB.
fn rss_anon_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn thousands_of_execs_do_not_grow_init() {
    // Init starts every process in its own memory (`CLONE_VM|CLONE_VFORK`,
    // see workload::spawn): whatever the child allocated and left live at
    // execve, or freed of init's, would show here once per exec. Long
    // argument lists and failing commands make any such leak large.
    let env = Env::new();
    let d = Daemon::start(&env, &[]);
    let c = d.client();
    let sb = c
        .create(None, Some("leak"), &BTreeMap::new(), Some("10m"))
        .unwrap();
    let shim = shim_of(&sb.id).expect("the sandbox's shim");
    let children = std::fs::read_to_string(format!("/proc/{shim}/task/{shim}/children")).unwrap();
    let init: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let long: Vec<String> = (0..200).map(|i| format!("argument-{i:0>90}")).collect();
    let mut argv: Vec<&str> = vec!["true"];
    argv.extend(long.iter().map(String::as_str));
    let round = |n: usize| {
        for _ in 0..n {
            assert_eq!(run(&c, &sb.id, &argv).0, Some(0));
            let missing = ExecOptions {
                cmd: vec!["no-such-command".into()],
                ..Default::default()
            };
            let e = c.exec(&sb.id, &missing).unwrap_err().to_string();
            assert!(e.contains("no-such-command: No such file"), "{e}");
        }
    };
    round(50);
    let before = rss_anon_kib(init);
    round(500);
    let after = rss_anon_kib(init);
    // 1000 execs: a leak of even the argument pointers (1.6 KiB each)
    // would add over 1.5 MiB.
    assert!(
        after < before + 512,
        "init grew from {before} to {after} KiB over 1000 execs"
    );
    // Sandboxes outlive their daemon: end it here.
    c.destroy(&sb.id).unwrap();
    assert_torn_down(&env.state.path().join("state"), &[sb.id]);
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn every_exec_is_confined_by_landlock_not_only_the_first() {
    // Init builds the Landlock ruleset once and reuses it for every
    // process it starts. Root inside the sandbox has the same uid as init,
    // so only Landlock's signal scope keeps it from signalling init: each
    // exec must be in a domain of its own.
    let env = Env::new();
    let d = Daemon::start(&env, &[]);
    let c = d.client();
    let mut policy = Policy::default();
    policy.process.root = true;
    let sb = c
        .create(
            Some(&policy),
            Some("confined"),
            &BTreeMap::new(),
            Some("10m"),
        )
        .unwrap();
    for i in 0..3 {
        let (code, out) = run(
            &c,
            &sb.id,
            &[
                "sh",
                "-c",
                "id -u; kill -0 1 2>/dev/null && echo SIGNALLED; echo end",
            ],
        );
        assert_eq!(code, Some(0), "exec {i}: {out}");
        assert_eq!(out, "0\nend\n", "exec {i} could signal init");
    }
    c.destroy(&sb.id).unwrap();
    assert_torn_down(&env.state.path().join("state"), &[sb.id]);
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn a_deep_tree_left_by_a_dead_shim_does_not_crash_the_daemon() {
    // Scratch in the state directory (no btrfs subvolume to delete): the
    // daemon removes the tree itself when it reaps the dead sandbox.
    let env = Env::new().with_env("STOCKADE_SCRATCH", "off");
    let d = Daemon::start(&env, &[]);
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    let script = "python3 -c \"import os\nos.chdir('/workspace')\nfor i in range(30000):\n os.mkdir('d'*20); os.chdir('d'*20)\nprint('made')\"";
    assert_eq!(
        run(&c, &sb.id, &["sh", "-c", script]),
        (Some(0), "made\n".into())
    );
    let shim = shim_of(&sb.id).expect("the sandbox's shim");
    d.kill9();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Twice: a daemon that crashed on the tree would not come up again.
    for _ in 0..2 {
        let d = Daemon::start(&env, &[]);
        let all = d.client().list(&[], None).unwrap();
        assert_eq!(
            all.iter().filter(|s| s.state == "dead").count(),
            1,
            "{all:?}"
        );
        assert!(d.client().health().is_ok());
        drop(d);
    }
    // The daemon removes the tree in the background; `gc` finishes it
    // whatever the daemon got to.
    let out = Command::new(BIN)
        .args(["gc"])
        .env("STOCKADE_STATE_DIR", env.state.path().join("state"))
        .env("STOCKADE_SCRATCH", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_torn_down(
        &env.state.path().join("state"),
        std::slice::from_ref(&sb.id),
    );
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn exec_streams_stdin_with_i_and_exits_like_run_when_the_command_cannot_start() {
    let env = Env::new();
    let d = Daemon::start_cleaning(&env, &[]);
    let sb = d
        .client()
        .create(None, None, &BTreeMap::new(), Some("10m"))
        .unwrap();
    let socket = d.socket.to_str().unwrap();
    let exec = |flags: &[&str], cmd: &[&str], input: &[u8]| {
        let mut child = env
            .cmd()
            .args(["exec", "--socket", socket])
            .args(flags)
            .arg(&sb.id)
            .arg("--")
            .args(cmd)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    };
    // Enough input to take several requests, all of it in order.
    let input: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let out = exec(&["-i"], &["sh", "-c", "cat; echo end"], &input);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut want = input.clone();
    want.extend_from_slice(b"end\n");
    assert!(out.stdout == want, "stdin came back changed");
    // Binary data passes unchanged both ways, with and without -i.
    let every: Vec<u8> = (0..=255u8).collect();
    let out = exec(&["-i"], &["cat"], &every);
    assert!(
        out.stdout == every,
        "binary stdin/stdout changed: {:?}",
        out.stdout
    );
    let out = exec(&[], &["sh", "-c", "printf '\\377\\000\\200'"], b"");
    assert_eq!(out.stdout, b"\xff\x00\x80");
    // Without -i the command's stdin is empty.
    let out = exec(&[], &["cat"], b"x\n");
    assert_eq!((code(&out), stdout(&out)), (0, String::new()));
    for flags in [&[][..], &["-i"][..]] {
        let out = exec(flags, &["no-such-command"], b"");
        assert_eq!(code(&out), 127, "{flags:?}: {}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
        let out = exec(flags, &["/etc/hostname"], b"");
        assert_eq!(code(&out), 126, "{flags:?}: {}", stderr(&out));
    }
}

/// Lines from `rx` until `done` holds for all gathered (bounded wait).
fn log_lines_until(
    rx: &std::sync::mpsc::Receiver<String>,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let mut lines = Vec::new();
    let until = Instant::now() + Duration::from_secs(30);
    while !done(&lines) {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    lines
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn the_daemon_logs_where_it_listens_each_request_and_each_event_as_text_or_json() {
    for format in ["text", "json"] {
        let env = Env::new();
        let (d, rx) = Daemon::start_logged(&env, &["--log-format", format]);
        let socket = d.socket.display().to_string();
        let c = d.client();
        let sb = c.create(None, None, &BTreeMap::new(), Some("10m")).unwrap();
        run(&c, &sb.id, &["true"]);
        c.destroy(&sb.id).unwrap();
        let _ = c.get("nope-nope");
        let id = sb.id.clone();
        let has = |lines: &[String], what: &dyn Fn(&str) -> bool| lines.iter().any(|l| what(l));
        let text_done = |lines: &[String]| {
            has(lines, &|l| {
                l.contains(&format!("listening on unix socket {socket}"))
            }) && has(lines, &|l| l.contains("POST /v1/sandboxes 201 "))
                && has(lines, &|l| l.contains(&format!("sandbox {id} created")))
                && has(lines, &|l| {
                    l.contains(&format!("sandbox {id} exec-exited exit_code=0"))
                })
                && has(lines, &|l| {
                    l.contains(&format!("sandbox {id} destroyed outcome="))
                })
                && has(lines, &|l| l.contains("GET /v1/sandboxes/nope-nope 404 "))
        };
        let json_done = |lines: &[String]| {
            let docs: Vec<serde_json::Value> = lines
                .iter()
                .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
                .collect();
            let any = |f: &dyn Fn(&serde_json::Value) -> bool| docs.iter().any(f);
            docs.iter().all(|v| v["time"].is_string())
                && any(&|v| v["type"] == "listening" && v["address"] == socket.as_str())
                && any(&|v| {
                    v["type"] == "request"
                        && v["method"] == "POST"
                        && v["path"] == "/v1/sandboxes"
                        && v["status"] == 201
                        && v["duration_ms"].is_number()
                })
                && any(&|v| {
                    v["type"] == "event"
                        && v["event"]["type"] == "created"
                        && v["event"]["sandbox_id"] == id.as_str()
                })
                && any(&|v| v["event"]["type"] == "exec-exited" && v["event"]["exit_code"] == 0)
                && any(&|v| {
                    v["event"]["type"] == "destroyed" && v["event"]["sandbox_id"] == id.as_str()
                })
                && any(&|v| v["path"] == "/v1/sandboxes/nope-nope" && v["status"] == 404)
        };
        let lines = if format == "text" {
            let l = log_lines_until(&rx, text_done);
            assert!(text_done(&l), "{l:#?}");
            l
        } else {
            let l = log_lines_until(&rx, json_done);
            assert!(json_done(&l), "{l:#?}");
            l
        };
        // One line per request: the create was logged once.
        let creates = lines
            .iter()
            .filter(|l| {
                l.contains("POST /v1/sandboxes 201") || l.contains("\"path\":\"/v1/sandboxes\"")
            })
            .count();
        assert_eq!(creates, 1, "{lines:#?}");
    }
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn a_memory_kill_during_exec_is_the_execs_outcome_and_the_sandboxs_reason() {
    let env = Env::new();
    let d = Daemon::start_cleaning(&env, &[]);
    let c = d.client();
    let mut policy = Policy::default();
    policy.limits.memory = ByteSize::mib(64);
    let bomb = "x = [bytearray(1 << 20) for _ in range(1024)]";
    // Through the CLI: the line `stockade run` prints, and 137.
    let sb = c
        .create(Some(&policy), None, &BTreeMap::new(), Some("10m"))
        .unwrap();
    let out = env
        .cmd()
        .args(["exec", "--socket", d.socket.to_str().unwrap(), &sb.id, "--"])
        .args(["/usr/bin/python3", "-c", bomb])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), 137, "{err}");
    assert_eq!(err.matches("stockade: memory-limit: ").count(), 1, "{err}");
    assert!(err.contains("64M"), "{err}");
    // The registry says why it ended, not that its supervisor crashed.
    assert!(eventually(|| c
        .get(&sb.id)
        .is_ok_and(|s| s.state != "running")));
    let row = c.get(&sb.id).unwrap();
    let reason = row.reason.unwrap_or_default();
    assert!(reason.contains("memory limit"), "{reason}");
    assert_eq!(row.report.unwrap()["outcome"], "memory-limit");
    // Through the API: the outcome names the breach.
    let sb = c
        .create(Some(&policy), None, &BTreeMap::new(), Some("10m"))
        .unwrap();
    let r = c
        .exec(
            &sb.id,
            &ExecOptions {
                cmd: vec!["/usr/bin/python3".into(), "-c".into(), bomb.into()],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        (r.outcome.as_str(), r.signal),
        ("memory-limit", Some(libc::SIGKILL))
    );
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn docker_habits_logs_inspect_stop_kill_and_version() {
    let env = Env::new();
    let d = Daemon::start_cleaning(&env, &[]);
    let c = d.client();
    let socket = d.socket.to_str().unwrap().to_string();
    let cli = |args: &[&str]| {
        env.cmd()
            .arg(args[0])
            .args(["--socket", &socket])
            .args(&args[1..])
            .output()
            .unwrap()
    };
    let sb = c.create(None, None, &BTreeMap::new(), Some("10m")).unwrap();
    let sh = |script: &str| ExecOptions {
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    };
    // A background process that keeps running, and one that has ended.
    let first = c
        .exec_background(
            &sb.id,
            &sh("printf 'one\\377\\n'; echo warn >&2; exec sleep 300"),
        )
        .unwrap();
    c.exec(&sb.id, &sh("echo two")).unwrap();
    // `logs` prints what was kept and returns, though a process still runs.
    let mut out = cli(&["logs", &sb.id]);
    assert!(
        eventually(|| {
            out = cli(&["logs", &sb.id]);
            out.stdout == b"one\xff\ntwo\n"
        }),
        "{:?} {}",
        out.stdout,
        stderr(&out)
    );
    assert_eq!(code(&out), 0);
    assert_eq!(stderr(&out), "warn\n");
    let out = cli(&["logs", &sb.id, &first.to_string()]);
    assert_eq!(out.stdout, b"one\xff\n");

    let out = cli(&["inspect", &sb.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["id"].as_str(), v["state"].as_str()),
        (Some(sb.id.as_str()), Some("running"))
    );
    assert!(v["policy"]["limits"]["memory"].is_string(), "{v}");

    // stats: one line for the sandbox, with its usage so far.
    let out = cli(&["stats", &sb.id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let table = stdout(&out);
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(row.starts_with(&sb.id) && row.contains('s'), "{table}");
    assert!(
        table.lines().next().unwrap().contains("MEM PEAK"),
        "{table}"
    );

    let out = cli(&["version"]);
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("stockade {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("daemon"), "{text}");

    // stop and kill destroy, as rm does.
    let other = c.create(None, None, &BTreeMap::new(), Some("10m")).unwrap();
    for (verb, id) in [("stop", &sb.id), ("kill", &other.id)] {
        let out = cli(&[verb, id]);
        assert_eq!(code(&out), 0, "{verb}: {}", stderr(&out));
        assert_eq!(c.get(id).unwrap().state, "destroyed", "{verb}");
    }
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn exec_t_gives_the_command_a_terminal_that_follows_our_size() {
    let env = Env::new();
    let d = Daemon::start_cleaning(&env, &[]);
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), Some("10m")).unwrap();
    // Through the CLI, on a terminal `script` makes for it: the command
    // has a terminal of its size, keys reach it, its status comes back.
    let inner = format!(
        "stty rows 33 cols 99; {BIN} exec -t --socket {} {} -- sh -c 'test -t 0 && test -t 1 && stty size && tty && read x && echo got:$x; exit 3'",
        d.socket.display(),
        sb.id
    );
    let mut child = Command::new("script")
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .args(["-qec", &inner, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(b"typed\n").unwrap();
    let out = child.wait_with_output().unwrap();
    drop(input);
    let text = stdout(&out);
    assert_eq!(code(&out), 3, "{text} {}", stderr(&out));
    assert!(text.contains("33 99"), "{text}");
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("got:typed"), "{text}");

    // Through the API: resize, then the command reads its new size.
    let opts = ExecOptions {
        cmd: vec!["sh".into(), "-c".into(), "read x; stty size".into()],
        tty: true,
        ..Default::default()
    };
    let pid = c.exec_background(&sb.id, &opts).unwrap();
    c.resize(&sb.id, pid, 40, 120).unwrap();
    c.send_stdin(&sb.id, pid, b"go\n", false).unwrap();
    let text: String = c
        .output(&sb.id, pid)
        .unwrap()
        .map(Result::unwrap)
        .filter(|e| e.event == "stdout")
        .map(|e| e.json()["data"].as_str().unwrap().to_string())
        .collect();
    assert!(text.contains("40 120"), "{text:?}");
    // A process without a terminal cannot be resized.
    let plain = c
        .exec_background(
            &sb.id,
            &ExecOptions {
                cmd: vec!["sleep".into(), "30".into()],
                ..Default::default()
            },
        )
        .unwrap();
    match c.resize(&sb.id, plain, 40, 120) {
        Err(stockade_client::ClientError::Api { status: 409, .. }) => {}
        other => panic!("{other:?}"),
    }
}
