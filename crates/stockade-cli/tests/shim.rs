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
