//! The sandbox's filesystem: workspace, home, binds, overlay, policy
//! files, and cleanup across many runs. Needs root; CI runs these as root.

mod common;

use common::*;

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn workspace_files_belong_to_the_directory_owner() {
    let env = Env::new();
    let ws = user_dir(4242);
    let out = env.run(&[
        "--workspace",
        ws.path().to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "id -u; pwd; echo data > /workspace/made-inside; mkdir /workspace/sub",
    ]);
    assert_eq!(stdout(&out), "1000\n/workspace\n", "{}", stderr(&out));
    use std::os::unix::fs::MetadataExt;
    for name in ["made-inside", "sub"] {
        let meta = std::fs::metadata(ws.path().join(name)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (4242, 4242), "{name}");
    }
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn root_owned_workspace_is_refused_clearly() {
    let env = Env::new();
    let ws = tempfile::tempdir().unwrap();
    let out = env.run(&["--workspace", ws.path().to_str().unwrap(), "--", "true"]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("owned by root"), "{}", stderr(&out));
    let out = env.run(&["--workspace", "/no/such/dir", "--", "true"]);
    assert_eq!(code(&out), 125);
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn scratch_workspace_and_home_are_private_and_thrown_away() {
    let env = Env::new();
    let out = env.sh(
        "touch /workspace/a /home/agent/b /tmp/c && ls /workspace /home/agent /tmp && echo $HOME",
    );
    assert_eq!(
        stdout(&out),
        "/home/agent:\nb\n\n/tmp:\nc\n\n/workspace:\na\n/home/agent\n",
        "{}",
        stderr(&out)
    );
    let out = env.sh("ls -A /workspace /home/agent /tmp");
    assert_eq!(stdout(&out), "/home/agent:\n\n/tmp:\n\n/workspace:\n");
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn extra_binds_env_and_cwd() {
    let env = Env::new();
    let ro = tempfile::tempdir().unwrap();
    std::fs::write(ro.path().join("input"), "readonly-data").unwrap();
    // A writable bind follows the workspace's rule: the agent writes as
    // the source's owner (an unprivileged user; host root is refused).
    let rw = user_dir(4242);
    let out = env.run(&[
        "--ro-bind",
        &format!("{}:/data", ro.path().display()),
        "--bind",
        &format!("{}:/out", rw.path().display()),
        "-e",
        "GREETING=hello",
        "--cwd",
        "/data",
        "--",
        "sh",
        "-c",
        "cat input; echo $GREETING > /out/result; touch /data/x 2>/dev/null && echo WROTE; pwd",
    ]);
    assert_eq!(stdout(&out), "readonly-data/data\n", "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(rw.path().join("result")).unwrap(),
        "hello\n"
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(rw.path().join("result")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4242, 4242));
    let bad = env.run(&["--bind", "/etc:/proc/x", "--", "true"]);
    assert_eq!(code(&bad), 125);
    // A root-owned writable bind would have the sandbox write as root.
    let root_owned = tempfile::tempdir().unwrap();
    let bad = env.run(&[
        "--bind",
        &format!("{}:/out", root_owned.path().display()),
        "--",
        "true",
    ]);
    assert_eq!(code(&bad), 125);
    assert!(
        stderr(&bad).contains("is owned by root"),
        "{}",
        stderr(&bad)
    );
}

/// The repro: `chown 1000 DIR` leaves DIR in group root, and the
/// bind must still be writable, with the files the user's on the host and
/// never in group root.
#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn writable_bind_in_group_root_is_writable_and_never_writes_as_root() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let env = Env::new();
    let rw = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(rw.path(), Some(1000), None).unwrap();
    std::fs::set_permissions(rw.path(), std::fs::Permissions::from_mode(0o2755)).unwrap();
    let bind = format!("{}:/out", rw.path().display());
    let out = env.run(&["--bind", &bind, "--", "touch", "/out/z"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let meta = std::fs::metadata(rw.path().join("z")).unwrap();
    assert_eq!(meta.uid(), 1000);
    // The directory is setgid, so the new file inherits its group root;
    // the attack is to make it setgid root, or to put a file in group
    // root by hand.
    assert_eq!(meta.gid(), 0);
    let out = env.run(&[
        "--bind",
        &bind,
        "--",
        "sh",
        "-c",
        "cp /bin/true /out/t; chmod 2755 /out/t; touch /out/u; chgrp 0 /out/u; true",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let t = std::fs::metadata(rw.path().join("t")).unwrap();
    assert_eq!(t.uid(), 1000);
    assert!(
        t.mode() & 0o2000 == 0 || t.gid() != 0,
        "a setgid-root file was made: {:o}",
        t.mode()
    );
    let u = std::fs::metadata(rw.path().join("u")).unwrap();
    assert_eq!(u.uid(), 1000);
    // Without setgid on the directory, the agent's files get the disk
    // block's group, never root.
    std::fs::set_permissions(rw.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = env.run(&[
        "--bind",
        &bind,
        "--",
        "sh",
        "-c",
        "touch /out/v; chgrp 0 /out/v; true",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = std::fs::metadata(rw.path().join("v")).unwrap();
    assert_eq!((v.uid(), v.gid()), (1000, 2_000_001_000));
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn binds_over_system_directories_are_refused() {
    let env = Env::new();
    for dst in ["/usr", "/bin", "/lib", "/usr/lib", "/workspace"] {
        let out = env.run(&["--bind", &format!("/tmp:{dst}"), "--", "true"]);
        assert_eq!(code(&out), 125, "{dst}");
        assert!(
            stderr(&out).contains("cannot mount over"),
            "{}",
            stderr(&out)
        );
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    }
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn overlay_root_lets_pip_install_into_the_system_python() {
    // The wheel tests/images/build.sh makes (scripts/test runs it first).
    let wheels = "/var/cache/stockade-images/wheels";
    let wheel = "stockade_hello-1.0-py3-none-any.whl";
    assert!(
        std::path::Path::new(wheels).join(wheel).is_file(),
        "run tests/images/build.sh first: it makes {wheels}/{wheel}"
    );
    let env = Env::new();
    let bind = format!("{wheels}:/wheels");
    // PEP 668 would refuse this without PIP_BREAK_SYSTEM_PACKAGES, which
    // the overlay root sets: what pip installs is thrown away with it.
    let script = format!(
        "python3 -m pip install -q --no-index --no-deps /wheels/{wheel} 2>/dev/null && \
         python3 -c 'import stockade_hello, os; print(os.path.dirname(stockade_hello.__file__))'"
    );
    let out = env.run(&[
        "--overlay-root",
        "--root",
        "--ro-bind",
        &bind,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(
        stdout(&out),
        "/usr/local/lib/python3.11/dist-packages/stockade_hello\n",
        "{}",
        stderr(&out)
    );
    assert!(
        !std::path::Path::new("/usr/local/lib/python3.11/dist-packages/stockade_hello").exists()
    );
    // Only there: without the overlay the system stays protected.
    let probe = "echo ${PIP_BREAK_SYSTEM_PACKAGES:-unset}";
    let out = env.run(&["--", "sh", "-c", probe]);
    assert_eq!(stdout(&out), "unset\n", "{}", stderr(&out));
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn overlay_root_is_writable_and_discarded() {
    let env = Env::new();
    let probe = format!("stockade-overlay-{}", rand_suffix());
    let script =
        format!("mkdir /{probe} && echo kept > /{probe}/f && touch /etc/{probe} && cat /{probe}/f");
    let out = env.run(&["--overlay-root", "--root", "--", "sh", "-c", &script]);
    assert_eq!(stdout(&out), "kept\n", "{}", stderr(&out));
    assert!(!std::path::Path::new("/").join(&probe).exists());
    assert!(!std::path::Path::new("/etc").join(&probe).exists());
    let out = env.run(&[
        "--overlay-root",
        "--",
        "sh",
        "-c",
        &format!("ls /{probe} /etc/{probe}"),
    ]);
    assert_ne!(code(&out), 0, "a second sandbox saw the first one's writes");
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn generated_etc_knows_agent_and_hides_secrets() {
    let env = Env::new();
    let out = env.sh("getent passwd agent; whoami; hostname; ls /etc | grep -cE '^(shadow|gshadow|sudoers|ssh)$'");
    assert_eq!(
        stdout(&out),
        "agent:x:1000:1000:agent:/home/agent:/bin/bash\nagent\nsandbox\n0\n",
        "{}",
        stderr(&out)
    );
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn policy_file_sets_everything_and_flags_override() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        "[limits]\nmemory = \"256M\"\ntimeout = \"3s\"\n[process]\nhostname = \"from-file\"\nenv = { A = \"1\" }\n",
    )
    .unwrap();
    let p = policy.to_str().unwrap();
    let (out, report) = env.run_report(&[
        "--policy",
        p,
        "--",
        "sh",
        "-c",
        "hostname; echo $A; sleep 60",
    ]);
    assert_eq!(stdout(&out), "from-file\n1\n");
    assert_eq!(report["outcome"], "timeout");
    let out = env.run(&[
        "--policy",
        p,
        "--hostname",
        "from-flag",
        "--timeout",
        "10s",
        "--",
        "hostname",
    ]);
    assert_eq!(stdout(&out), "from-flag\n");
    std::fs::write(&policy, "[limits]\nmemroy = \"1G\"\n").unwrap();
    let out = env.run(&["--policy", p, "--", "true"]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("memroy"), "{}", stderr(&out));
    // One error: its first line says so, the rest is the parser's picture
    // of the line with a caret under the key (errors.rs checks the caret).
    let err = stderr(&out);
    assert_eq!(err.matches("stockade:").count(), 1, "{err}");
    assert!(err.starts_with("stockade: policy file"), "{err}");
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn many_runs_leave_nothing_behind() {
    let env = Env::new();
    let mounts_before = mounts_under(env.state.path());
    let marker = format!("sbx-leak-{}", rand_suffix());
    let mut ids = Vec::new();
    for i in 0..200 {
        // Each run leaves a background process behind, which must die with
        // the sandbox.
        let script = format!(
            "(exec -a {marker} sleep 600) & until pgrep -xf '{marker} 600' >/dev/null; do sleep 0.01; done; echo {i}"
        );
        let (out, report) = env.run_report(&["--timeout", "20s", "--", "bash", "-c", &script]);
        assert_eq!(stdout(&out), format!("{i}\n"), "{}", stderr(&out));
        ids.push(report["id"].as_str().unwrap().to_string());
    }
    // And runs whose command leaves nothing running, where the supervisor
    // returns first and a detached cleaner finishes the teardown.
    for i in 0..100 {
        let (out, report) = env.run_report(&["--", "sh", "-c", &format!("echo {i}")]);
        assert_eq!(stdout(&out), format!("{i}\n"), "{}", stderr(&out));
        ids.push(report["id"].as_str().unwrap().to_string());
    }
    assert!(
        eventually(|| processes_with(&marker).is_empty()),
        "orphans survived"
    );
    for id in &ids {
        assert!(
            eventually(|| cgroup_dirs(id).is_empty()),
            "cgroup of {id} left behind"
        );
    }
    let dirs_left = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(env.sandboxes_dir())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect()
    };
    assert!(
        eventually(|| dirs_left().is_empty()),
        "sandbox dirs left: {:?}",
        dirs_left()
    );
    assert_eq!(
        mounts_under(env.state.path()),
        mounts_before,
        "mounts leaked to the host"
    );
    assert_eq!(mounts_before, 0);
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups; uses dpkg-deb"]
fn overlay_root_lets_package_managers_install_and_forgets_it() {
    let env = Env::new();
    let ws = user_dir(1000);
    let pkg = ws.path().join("pkg");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/local/bin")).unwrap();
    let name = format!("stockade-probe-{}", rand_suffix());
    std::fs::write(
        pkg.join("DEBIAN/control"),
        format!("Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.invalid>\nDescription: probe\n"),
    )
    .unwrap();
    let bin = pkg.join("usr/local/bin").join(&name);
    std::fs::write(&bin, "#!/bin/sh\necho probe-installed\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let deb = ws.path().join("probe.deb");
    let built = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&pkg)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", stderr(&built));
    std::os::unix::fs::chown(&deb, Some(1000), Some(1000)).unwrap();
    let script = format!(
        "ls -ld /usr/bin | cut -d' ' -f3; apt-get install -y /workspace/probe.deb >/dev/null 2>&1; {name}; dpkg -s {name} | grep -c 'install ok installed'"
    );
    let ws_arg = ws.path().to_str().unwrap();
    let out = env.run(&[
        "--overlay-root",
        "--root",
        "--workspace",
        ws_arg,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(
        stdout(&out),
        "root\nprobe-installed\n1\n",
        "{}",
        stderr(&out)
    );
    assert!(
        !std::path::Path::new("/usr/local/bin").join(&name).exists(),
        "install leaked to the host"
    );
    let out = env.run(&[
        "--overlay-root",
        "--root",
        "--",
        "sh",
        "-c",
        &format!("dpkg -s {name}"),
    ]);
    assert_ne!(code(&out), 0, "the next sandbox saw the package");
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn binds_and_workspace_under_a_private_directory_work() {
    // A 0700 directory only host root may enter, as temporary directories
    // are: the sources are opened by the supervisor, not by the sandbox.
    let env = Env::new();
    let private = tempfile::tempdir().unwrap();
    std::fs::create_dir(private.path().join("data")).unwrap();
    std::fs::write(private.path().join("data/f"), "inside").unwrap();
    std::fs::write(private.path().join("single"), "file").unwrap();
    let ws = private.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::os::unix::fs::chown(&ws, Some(4242), Some(4242)).unwrap();
    let p = private.path().display();
    let out = env.run(&[
        "--ro-bind",
        &format!("{p}/data:/data"),
        "--ro-bind",
        &format!("{p}/single:/etc-like/single"),
        "--workspace",
        ws.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "cat /data/f /etc-like/single; touch /workspace/made && echo ok",
    ]);
    assert_eq!(stdout(&out), "insidefileok\n", "{}", stderr(&out));
    assert!(ws.join("made").exists());
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn run_returns_before_the_teardown_and_holds_nothing_of_the_caller() {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::process::CommandExt;
    // Many files in the scratch workspace make removing the sandbox
    // directory take a good while after the command has ended (with the
    // scratch in the state directory: deleting a btrfs subvolume is fast).
    let env = Env::new().with_env("STOCKADE_SCRATCH", "off");
    let script = "cd /workspace && seq 1 30000 | xargs touch && echo made";
    let (extra_r, extra_w) = nix::unistd::pipe().unwrap();
    let extra_w_raw = extra_w.as_raw_fd();
    let mut cmd = env.cmd();
    cmd.args(["run", "--", "sh", "-c", script]);
    // SAFETY: dup2 in the child between fork and exec, onto fd 3, which
    // is then inherited (dup2 clears close-on-exec).
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(extra_w_raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // `output` returns once stdout and stderr reach their end and the
    // process has exited: a cleaner holding them would delay it.
    let out = cmd.output().unwrap();
    drop(extra_w);
    let dirs = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(env.sandboxes_dir())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let right_after = dirs();
    // The inherited descriptor must be at its end too.
    // SAFETY: `extra_r` is ours; the File takes it over.
    let mut f = unsafe { std::fs::File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(extra_r)) };
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    let after_fd3 = dirs();
    assert_eq!(stdout(&out), "made\n", "{}", stderr(&out));
    assert_eq!(code(&out), 0);
    assert_eq!(
        right_after.len(),
        1,
        "the run waited for its teardown (or the cleaner held its stdio)"
    );
    assert_eq!(
        after_fd3.len(),
        1,
        "the cleaner kept a descriptor the caller passed in"
    );
    assert!(
        eventually(|| dirs().is_empty()),
        "the cleaner never removed {:?}",
        dirs()
    );
    let id = right_after[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        eventually(|| cgroup_dirs(&id).is_empty()),
        "cgroup of {id} left"
    );
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn when_run_returns_no_process_of_the_sandbox_is_left() {
    let env = Env::new();
    let marker = format!("sbx-bg-{}", rand_suffix());
    // The command ends at once, leaving a background process: the run
    // must not return before that process is dead too.
    let script = format!(
        "(exec -a {marker} sleep 600) & until pgrep -xf '{marker} 600' >/dev/null; do sleep 0.01; done; echo started"
    );
    let out = env.run(&["--", "bash", "-c", &script]);
    assert_eq!(stdout(&out), "started\n", "{}", stderr(&out));
    assert!(
        processes_with(&marker).is_empty(),
        "a process of the sandbox outlived `stockade run`"
    );
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn a_pending_teardown_that_is_dropped_tears_down_in_place() {
    use stockade_core::{Outcome, RunOptions};
    let env = Env::new();
    let mut opts = RunOptions::new(
        stockade_policy::Policy::default(),
        vec!["true".into()],
        env.state.path().to_path_buf(),
    );
    opts.defer_teardown = true;
    let null = std::fs::File::open("/dev/null").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&null);
    opts.stdio = Some([fd, fd, fd]);
    let gone = |id: &str| !env.sandboxes_dir().join(id).exists() && cgroup_dirs(id).is_empty();

    // A normal end leaves the teardown pending: the sandbox is still there.
    let (report, pending) = stockade_core::run_deferred(&opts);
    assert_eq!(report.outcome, Outcome::Exited, "{:?}", report.error);
    let pending = pending.expect("a normal end defers the teardown");
    assert!(env.sandboxes_dir().join(&report.id).exists());
    // Dropping it (a caller that does not exit through it) tears down here.
    drop(pending);
    assert!(
        gone(&report.id),
        "dropping the pending teardown left {}",
        report.id
    );

    // `run` does the same before it returns.
    let report = stockade_core::run(&opts);
    assert_eq!(report.outcome, Outcome::Exited, "{:?}", report.error);
    assert!(
        gone(&report.id),
        "`run` returned with {} still there",
        report.id
    );

    // Whatever is deferred, nothing of the sandbox runs any more when
    // `run_deferred` returns: a process left behind is dead by then.
    let marker = format!("sbx-pending-{}", rand_suffix());
    opts.command = vec![
        "bash".into(),
        "-c".into(),
        format!("(exec -a {marker} sleep 600) & until pgrep -xf '{marker} 600' >/dev/null; do sleep 0.01; done"),
    ];
    let (report, pending) = stockade_core::run_deferred(&opts);
    assert_eq!(report.outcome, Outcome::Exited, "{:?}", report.error);
    assert!(
        processes_with(&marker).is_empty(),
        "a process outlived the run"
    );
    drop(pending);
    assert!(gone(&report.id));
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn programs_built_in_the_workspace_and_home_run() {
    let env = Env::new();
    for extra in [&[][..], &["--overlay-root"][..]] {
        let mut args = extra.to_vec();
        args.extend([
            "--",
            "sh",
            "-c",
            "cp /bin/echo /workspace/e && cp /bin/echo ~/e && /workspace/e ws && ~/e home",
        ]);
        let out = env.run(&args);
        assert_eq!(stdout(&out), "ws\nhome\n", "{extra:?}: {}", stderr(&out));
    }
}
