//! Long-lived sandboxes run by shim processes (the daemon's backend).
//! Needs root; CI runs these as root.

mod common;

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use stockade_core::backend::{Backend, ExecRequest, SandboxEvent};
use stockade_core::shim::ShimBackend;
use stockade_core::Outcome;
use stockade_policy::Policy;

fn backend(env: &Env) -> ShimBackend {
    ShimBackend::new(env.state.path().to_path_buf(), PathBuf::from(BIN))
}

/// stdin from /dev/null, stdout and stderr into pipes we read.
fn pipes() -> ([OwnedFd; 3], std::fs::File, std::fs::File) {
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    ([null, out_w, err_w], out_r.into(), err_r.into())
}

fn exec(h: &dyn stockade_core::backend::SandboxHandle, cmd: &[&str]) -> (String, Option<i32>) {
    let (stdio, mut out, _err) = pipes();
    let req = ExecRequest {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let pid = h.exec(&req, stdio).unwrap();
    let (code, _) = h.wait(pid, Some(Duration::from_secs(30))).unwrap();
    let mut s = String::new();
    out.read_to_string(&mut s).unwrap();
    (s, code)
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn a_sandbox_serves_many_execs_and_keeps_state_between_them() {
    let env = Env::new();
    let b = backend(&env);
    let h = b.create("shim-test-a1", &Policy::default(), None).unwrap();
    assert_eq!(
        exec(h.as_ref(), &["sh", "-c", "echo one > /workspace/f; id -u"]),
        ("1000\n".into(), Some(0))
    );
    assert_eq!(
        exec(h.as_ref(), &["cat", "/workspace/f"]),
        ("one\n".into(), Some(0))
    );
    assert_eq!(exec(h.as_ref(), &["sh", "-c", "exit 4"]).1, Some(4));
    let err = h
        .exec(
            &ExecRequest {
                cmd: vec!["no-such-cmd".into()],
                ..Default::default()
            },
            pipes().0,
        )
        .unwrap_err();
    assert!(err.to_string().contains("run no-such-cmd"), "{err}");
    let status = h.status().unwrap();
    assert!(status.processes.len() >= 3);
    assert!(status.usage.cpu_seconds > 0.0);
    let report = h.destroy().unwrap();
    assert_eq!(report.outcome, Outcome::Destroyed);
    assert!(cgroup_dirs("shim-test-a1").is_empty());
    assert!(!env.sandboxes_dir().join("shim-test-a1").exists());
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn sandboxes_outlive_their_client_and_can_be_reattached() {
    let env = Env::new();
    let h = backend(&env)
        .create("shim-test-b1", &Policy::default(), None)
        .unwrap();
    assert_eq!(
        exec(h.as_ref(), &["sh", "-c", "echo kept > /home/agent/x"]).1,
        Some(0)
    );
    drop(h);
    // A new backend, as after a daemon restart.
    let again = backend(&env).attach("shim-test-b1").unwrap();
    assert_eq!(
        exec(again.as_ref(), &["cat", "/home/agent/x"]),
        ("kept\n".into(), Some(0))
    );
    again.destroy().unwrap();
    assert!(backend(&env).attach("shim-test-b1").is_err());
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn a_killed_shim_takes_its_sandbox_and_is_reaped() {
    let env = Env::new();
    let b = backend(&env);
    let h = b.create("shim-test-c1", &Policy::default(), None).unwrap();
    let marker = format!("sbx-shim-{}", rand_suffix());
    let (stdio, _o, _e) = pipes();
    h.exec(
        &ExecRequest {
            cmd: vec![
                "bash".into(),
                "-c".into(),
                format!("exec -a {marker} sleep 300"),
            ],
            ..Default::default()
        },
        stdio,
    )
    .unwrap();
    assert!(eventually(|| !processes_with(&marker).is_empty()));
    let init_pid = h.status().unwrap().init_pid;
    let shim_pid: i32 = std::fs::read_to_string(format!("/proc/{init_pid}/stat"))
        .unwrap()
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        eventually(|| processes_with(&marker).is_empty()),
        "sandbox outlived its shim"
    );
    assert!(b.attach("shim-test-c1").is_err());
    b.reap("shim-test-c1");
    assert!(cgroup_dirs("shim-test-c1").is_empty());
    assert!(!env.sandboxes_dir().join("shim-test-c1").exists());
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn ttl_expires_the_sandbox_with_events() {
    let env = Env::new();
    let h = backend(&env)
        .create(
            "shim-test-d1",
            &Policy::default(),
            Some(Duration::from_millis(600)),
        )
        .unwrap();
    let mut kinds = Vec::new();
    while let Some(ev) = h.next_event() {
        let done = matches!(ev, SandboxEvent::Destroyed(_));
        kinds.push(ev);
        if done {
            break;
        }
    }
    assert!(
        kinds.iter().any(|e| matches!(e, SandboxEvent::Expired)),
        "{kinds:?}"
    );
    match kinds.last() {
        Some(SandboxEvent::Destroyed(r)) => assert_eq!(r.outcome, Outcome::Timeout),
        other => panic!("{other:?}"),
    }
    assert!(eventually(|| cgroup_dirs("shim-test-d1").is_empty()));
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn bad_policies_fail_creation_clearly() {
    let env = Env::new();
    let mut p = Policy::default();
    p.filesystem.workspace = Some("/no/such/dir".into());
    let Err(err) = backend(&env).create("shim-test-e1", &p, None) else {
        panic!("a missing workspace was accepted");
    };
    assert!(err.to_string().contains("/no/such/dir"), "{err}");
    // The caller's mistake, not the host's (the daemon answers 400, not 500).
    assert!(
        matches!(err, stockade_core::backend::BackendError::Invalid(_)),
        "{err}"
    );
    assert!(!env.sandboxes_dir().join("shim-test-e1").exists());
    assert!(cgroup_dirs("shim-test-e1").is_empty());
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn exec_waiting_follows_the_process_on_the_connection_that_started_it() {
    let env = Env::new();
    let b = backend(&env);
    let h: std::sync::Arc<dyn stockade_core::backend::SandboxHandle> = b
        .create("shim-test-f1", &Policy::default(), None)
        .unwrap()
        .into();
    for code in [0, 3] {
        let (stdio, mut out, _err) = pipes();
        let req = ExecRequest {
            cmd: vec!["sh".into(), "-c".into(), format!("echo out; exit {code}")],
            ..Default::default()
        };
        let (pid, waiter) = h.clone().exec_waiting(&req, stdio).unwrap();
        assert!(pid > 1);
        let end = waiter().unwrap();
        assert_eq!(
            (end.exit_code, end.signal, end.killed_for),
            (Some(code), None, None)
        );
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        assert_eq!(s, "out\n");
    }
    // A waiter whose sandbox is destroyed hears that its process died.
    let (stdio, _o, _e) = pipes();
    let req = ExecRequest {
        cmd: vec!["sleep".into(), "300".into()],
        ..Default::default()
    };
    let (_, waiter) = h.clone().exec_waiting(&req, stdio).unwrap();
    let waiting = std::thread::spawn(waiter);
    // Deferred destroy: the report comes once the sandbox is dead, the
    // teardown call once its cgroup and directory are gone.
    let (report, teardown) = h.destroy_deferred().unwrap();
    assert_eq!(report.outcome, Outcome::Destroyed);
    let end = waiting.join().unwrap().unwrap();
    assert_eq!(
        (end.exit_code, end.signal, end.killed_for),
        (None, Some(libc::SIGKILL), None)
    );
    teardown();
    assert!(cgroup_dirs("shim-test-f1").is_empty());
    assert!(!env.sandboxes_dir().join("shim-test-f1").exists());
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn pooled_shims_serve_one_sandbox_each_and_stop_with_the_backend() {
    let env = Env::new();
    let b = ShimBackend::with_pool(env.state.path().to_path_buf(), PathBuf::from(BIN), 1);
    assert!(eventually(|| b.pooled_pids().len() == 1));
    let first_pooled = b.pooled_pids();
    let a = b.create("shim-test-g1", &Policy::default(), None).unwrap();
    assert_eq!(
        exec(
            a.as_ref(),
            &[
                "sh",
                "-c",
                "echo private > /workspace/p; echo private > /tmp/p"
            ]
        )
        .1,
        Some(0)
    );
    a.destroy().unwrap();
    assert!(eventually(|| {
        let now = b.pooled_pids();
        now.len() == 1 && now != first_pooled
    }));
    let c = b.create("shim-test-g2", &Policy::default(), None).unwrap();
    let (out, code) = exec(
        c.as_ref(),
        &[
            "sh",
            "-c",
            "cat /workspace/p /tmp/p 2>/dev/null; ls -A /workspace /tmp",
        ],
    );
    assert_eq!(code, Some(0));
    assert!(!out.contains("private"), "{out}");
    assert!(!out.lines().any(|l| l == "p"), "{out}");
    c.destroy().unwrap();
    assert!(eventually(|| b.pooled_pids().len() == 1));
    let idle = b.pooled_pids();
    // The idle shims were forked by the backend's zygote, our child.
    let zygote = our_zygote().expect("the backend runs a zygote");
    for pid in &idle {
        assert_eq!(parent_of(*pid as i32), Some(zygote), "pooled shim {pid}");
    }
    b.shutdown();
    assert!(
        eventually(|| our_zygote().is_none() && parent_of(zygote).is_none()),
        "the zygote outlived the backend"
    );
    assert!(b.pooled_pids().is_empty());
    for pid in idle {
        // Killed and waited for through its pidfd; the zygote (the
        // parent of most) lets the kernel reap it a moment later.
        assert!(
            eventually(|| !std::path::Path::new(&format!("/proc/{pid}")).exists()),
            "pooled shim {pid} outlived the backend"
        );
    }
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn waiters_hanging_up_while_processes_end_do_not_confuse_the_shim() {
    // A plain `exec` hangs up on its connection while the process may be
    // ending and a separate `wait` arrives: the shim drops the first and
    // answers the second in the same round, often. Many short processes
    // make that round come.
    let env = Env::new();
    let b = backend(&env);
    let h = b.create("shim-test-h1", &Policy::default(), None).unwrap();
    for i in 0..150 {
        let (out, code) = exec(h.as_ref(), &["echo", &i.to_string()]);
        assert_eq!((out, code), (format!("{i}\n"), Some(0)));
    }
    h.destroy().unwrap();
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn a_subscriber_that_comes_after_the_end_hears_the_recorded_end() {
    let env = Env::new();
    let b = backend(&env);
    let h = b
        .create(
            "shim-test-i1",
            &Policy::default(),
            Some(Duration::from_millis(50)),
        )
        .unwrap();
    assert!(eventually(|| b.attach("shim-test-i1").is_err()));
    assert!(matches!(h.next_event(), Some(SandboxEvent::Expired)));
    match h.next_event() {
        Some(SandboxEvent::Destroyed(r)) => assert_eq!(r.outcome, Outcome::Timeout),
        other => panic!("{other:?}"),
    }
    assert!(h.next_event().is_none());
}

/// The zygote (`stockade shim ... --zygote`) that this test process started.
fn our_zygote() -> Option<i32> {
    let me = std::process::id() as i32;
    shim_processes()
        .iter()
        .find(|p| p.zygote && p.ppid == Some(me))
        .map(|p| p.pid)
}
