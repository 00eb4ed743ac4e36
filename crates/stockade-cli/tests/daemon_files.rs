//! The daemon's file operations happen inside the sandbox, with the
//! sandbox's own identity: an API client (or a workload planting paths
//! for one) gets exactly what the workload itself could do, never host
//! root's reach. Each test attempts an attack that worked when the daemon
//! walked `/proc/<init>/root` as host root. Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::daemon::Daemon;
use common::*;
use stockade_client::{Client, ClientError, ExecOptions};
use stockade_policy::{BindMount, Policy};

/// A host file's contents, restored when the test ends however it ends
/// (an attack that works must not leave the host changed).
struct Restore(PathBuf, Vec<u8>);

impl Restore {
    fn save(p: &str) -> Restore {
        Restore(PathBuf::from(p), std::fs::read(p).unwrap())
    }
    fn unchanged(&self) -> bool {
        std::fs::read(&self.0).unwrap() == self.1
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if !self.unchanged() {
            let _ = std::fs::write(&self.0, &self.1);
        }
    }
}

fn api_status(r: Result<impl std::fmt::Debug, ClientError>) -> u16 {
    match r {
        Err(ClientError::Api { status, .. }) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn sh(c: &Client, id: &str, script: &str) -> (Option<i32>, String) {
    let r = c
        .exec(
            id,
            &ExecOptions {
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                ..ExecOptions::default()
            },
        )
        .unwrap();
    (r.exit_code, r.stdout)
}

fn policy(root: bool) -> Policy {
    let mut p = Policy::default();
    p.process.root = root;
    p
}

#[test]
#[ignore = "needs root: runs the daemon with real sandboxes"]
fn api_writes_to_proc_sys_never_reach_the_host() {
    let env = Env::new();
    let core = Restore::save("/proc/sys/kernel/core_pattern");
    let d = Daemon::start_cleaning(&env, &[]);
    let c = d.client();
    for root in [false, true] {
        let sb = c
            .create(Some(&policy(root)), None, &Default::default(), None)
            .unwrap();
        let evil = b"|/workspace/x %p";
        let status = api_status(c.write_file(&sb.id, "/proc/sys/kernel/core_pattern", evil));
        assert_eq!(status, 403, "root={root}");
        assert!(
            core.unchanged(),
            "the host's core_pattern changed (root={root})"
        );
        // Not through `..` or a path built to leave the sandbox either.
        let _ = c.write_file(&sb.id, "/workspace/../proc/sys/kernel/core_pattern", evil);
        assert!(core.unchanged(), "root={root}");
        c.destroy(&sb.id).unwrap();
    }
}

#[test]
#[ignore = "needs root: runs the daemon with real sandboxes"]
fn a_planted_symlink_does_not_lead_api_writes_to_the_host() {
    let env = Env::new();
    let domain = Restore::save("/proc/sys/kernel/domainname");
    let d = Daemon::start_cleaning(&env, &[]);
    let c = d.client();
    for root in [false, true] {
        let sb = c
            .create(Some(&policy(root)), None, &Default::default(), None)
            .unwrap();
        let (code, _) = sh(
            &c,
            &sb.id,
            "ln -s /proc/sys/kernel/domainname /workspace/dn",
        );
        assert_eq!(code, Some(0));
        // An orchestrator writing a result file after its agent ran.
        let status = api_status(c.write_file(&sb.id, "/workspace/dn", b"pwned"));
        assert_eq!(status, 403, "root={root}");
        assert!(
            domain.unchanged(),
            "the host's domain name changed (root={root})"
        );
        // The same through `stockade cp`.
        let src = env.state.path().join("payload");
        std::fs::write(&src, b"pwned").unwrap();
        let out = Command::new(BIN)
            .args(["cp", "--socket", d.socket.to_str().unwrap()])
            .arg(&src)
            .arg(format!("{}:/workspace/dn", sb.id))
            .output()
            .unwrap();
        assert_ne!(code_of(&out), 0, "cp through the planted link succeeded");
        assert!(domain.unchanged(), "root={root}");
        c.destroy(&sb.id).unwrap();
    }
}

fn code_of(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[test]
#[ignore = "needs root: runs the daemon with real sandboxes"]
fn host_paths_need_an_allowed_root_and_files_behind_binds_keep_their_rights() {
    let env = Env::new();
    // Nothing is allowed by default: not /etc, not anything.
    let d = Daemon::start_cleaning(&env, &[]);
    let mut p = Policy::default();
    p.filesystem.ro_bind.push(BindMount {
        src: "/etc".into(),
        dst: "/mnt/hostetc".into(),
    });
    let e = d.client().create(Some(&p), None, &Default::default(), None);
    assert_eq!(api_status(e), 403);
    let ws = user_dir(4242);
    let mut p = Policy::default();
    p.filesystem.workspace = Some(ws.path().to_path_buf());
    let e = d.client().create(Some(&p), None, &Default::default(), None);
    assert_eq!(api_status(e), 403);
    drop(d);

    // An allowed directory holding a root-only file and a public one.
    let allowed = user_dir(4242);
    let secret = allowed.path().join("secret");
    std::fs::write(&secret, b"root only").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(allowed.path().join("public"), b"for all").unwrap();
    let d = Daemon::start_cleaning(
        &env,
        &["--allow-bind-root", allowed.path().to_str().unwrap()],
    );
    let c = d.client();
    // Still nothing outside it, however the path is spelled.
    let mut p = Policy::default();
    p.filesystem.ro_bind.push(BindMount {
        src: allowed.path().join("../../etc"),
        dst: "/mnt/hostetc".into(),
    });
    let status = api_status(c.create(Some(&p), None, &Default::default(), None));
    assert!(status == 400 || status == 403, "{status}");
    let mut p = Policy::default();
    p.filesystem.ro_bind.push(BindMount {
        src: allowed.path().to_path_buf(),
        dst: "/mnt/ro".into(),
    });
    p.filesystem.bind.push(BindMount {
        src: allowed.path().to_path_buf(),
        dst: "/mnt/rw".into(),
    });
    let sb = c.create(Some(&p), None, &Default::default(), None).unwrap();
    // The workload cannot read the root-only file, and neither can the API.
    let (code, _) = sh(&c, &sb.id, "cat /mnt/ro/secret");
    assert_ne!(code, Some(0));
    assert_eq!(api_status(c.read_file(&sb.id, "/mnt/ro/secret")), 403);
    assert_eq!(c.read_file(&sb.id, "/mnt/ro/public").unwrap(), b"for all");
    // Nor overwrite it through the writable bind.
    assert_eq!(
        api_status(c.write_file(&sb.id, "/mnt/rw/secret", b"x")),
        403
    );
    assert_eq!(std::fs::read(&secret).unwrap(), b"root only");
    // What the API writes there belongs to the directory's owner.
    c.write_file(&sb.id, "/mnt/rw/new", b"n").unwrap();
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(allowed.path().join("new")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4242, 4242));
}

#[test]
#[ignore = "needs root: runs the daemon with real sandboxes"]
fn api_file_access_matches_what_the_workload_itself_can_do() {
    let env = Env::new();
    let d = Daemon::start_cleaning(&env, &[]);
    let c = d.client();
    let sb = c
        .create(Some(&policy(false)), None, &Default::default(), None)
        .unwrap();
    let (code, _) = sh(
        &c,
        &sb.id,
        "echo mine > /workspace/mine; echo t > /tmp/t; mkdir -p /home/agent/d",
    );
    assert_eq!(code, Some(0));
    let reads = [
        "/workspace/mine",
        "/tmp/t",
        "/etc/passwd",
        "/etc/shadow",
        "/proc/1/environ",
        "/proc/self/status",
        "/root/.bashrc",
        "/proc/sys/kernel/core_pattern",
    ];
    for p in reads {
        let (code, _) = sh(&c, &sb.id, &format!("cat {p} > /dev/null 2>&1"));
        let workload = code == Some(0);
        let api = c.read_file(&sb.id, p).is_ok();
        assert_eq!(api, workload, "read {p}: api {api}, workload {workload}");
    }
    let writes = [
        "/workspace/new",
        "/home/agent/d/x",
        "/tmp/y",
        "/usr/bin/evil",
        "/etc/evil",
        "/root/evil",
        "/proc/sys/kernel/hostname",
    ];
    for p in writes {
        let api = c.write_file(&sb.id, p, b"x").is_ok();
        let (code, _) = sh(&c, &sb.id, &format!("echo x > {p}.w 2>/dev/null"));
        let workload = code == Some(0);
        assert_eq!(api, workload, "write {p}: api {api}, workload {workload}");
    }
}

#[test]
#[ignore = "needs root: runs the daemon with real sandboxes"]
fn copying_a_large_sparse_file_uses_constant_memory_both_ways() {
    let env = Env::new();
    let d = Daemon::start_cleaning(&env, &[]);
    let c = d.client();
    let sb = c
        .create(Some(&policy(false)), None, &Default::default(), None)
        .unwrap();
    let big = env.state.path().join("sparse.bin");
    let size: u64 = 512 << 20;
    {
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(size).unwrap();
        use std::io::{Seek, Write};
        let mut f = f;
        f.seek(std::io::SeekFrom::Start(size / 2)).unwrap();
        f.write_all(b"middle").unwrap();
    }
    let rss = |pid: u32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    let daemon_before = rss(d.child.id());
    // In: `stockade cp` streams it; the peak memory of the copy is read
    // from the kernel's accounting of the finished child.
    let cp = |src: &str, dst: &str| {
        let mut child = Command::new(BIN)
            .args(["cp", "--socket", d.socket.to_str().unwrap(), src, dst])
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut peak = 0;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                assert!(st.success(), "cp {src} {dst} failed");
                break;
            }
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(v) = s
                    .lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    peak = peak.max(v * 1024);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        peak
    };
    let into = format!("{}:/workspace/sparse.bin", sb.id);
    let peak_in = cp(big.to_str().unwrap(), &into);
    // It arrived whole, and sparse: the sandbox's copy uses little disk.
    let (code, out) = sh(
        &c,
        &sb.id,
        "stat -c '%s %b %B' /workspace/sparse.bin; dd if=/workspace/sparse.bin bs=1 skip=268435456 count=6 2>/dev/null",
    );
    assert_eq!(code, Some(0));
    let f: Vec<u64> = out
        .split_whitespace()
        .take(3)
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(f[0], size, "{out}");
    assert!(
        f[1] * f[2] < 16 << 20,
        "the copy in the sandbox is not sparse: {out}"
    );
    assert!(out.ends_with("middle"), "{out}");
    // Out again.
    let back = env.state.path().join("back.bin");
    let peak_out = cp(&into, back.to_str().unwrap());
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&back).unwrap();
    assert_eq!(meta.len(), size);
    assert!(
        meta.blocks() * 512 < 16 << 20,
        "the copy on the host is not sparse"
    );
    let daemon_after = rss(d.child.id());
    for (what, peak) in [("cp in", peak_in), ("cp out", peak_out)] {
        assert!(peak < 64 << 20, "{what} peaked at {peak} bytes");
    }
    assert!(
        daemon_after < daemon_before + (64 << 20),
        "the daemon grew from {daemon_before} to {daemon_after} bytes"
    );
    let _ = std::fs::remove_file(&big);
    let _ = std::fs::remove_file(&back);
    let _: &Path = env.state.path();
}

#[test]
#[ignore = "needs root and btrfs: runs the daemon with real sandboxes"]
fn an_upload_past_the_disk_limit_is_507_and_the_daemon_sandbox_is_capped() {
    let env = Env::new();
    let d = Daemon::start_cleaning(&env, &[]);
    let c = d.client();
    let mut p = Policy::default();
    p.limits.disk = "20M".parse().unwrap();
    let sb = c.create(Some(&p), None, &Default::default(), None).unwrap();
    let big = vec![7u8; 40 << 20];
    assert_eq!(
        api_status(c.write_file(&sb.id, "/workspace/big", &big)),
        507
    );
    let (code, out) = sh(
        &c,
        &sb.id,
        "dd if=/dev/zero of=/workspace/more bs=1M count=100 2>&1; echo dd=$?",
    );
    assert_eq!(code, Some(0));
    assert!(
        out.contains("dd=1") && out.contains("quota exceeded"),
        "{out}"
    );
    c.destroy(&sb.id).unwrap();
}

#[test]
#[ignore = "needs root: runs the daemon with real sandboxes"]
fn cp_copies_directory_trees_both_ways_and_never_writes_through_the_sandboxs_symlinks() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let d = Daemon::start_cleaning(&env, &[]);
    let c = d.client();
    let sb = c
        .create(Some(&policy(false)), None, &Default::default(), None)
        .unwrap();
    let socket = d.socket.to_str().unwrap().to_string();
    let cp = |src: &str, dst: &str| {
        Command::new(BIN)
            .args(["cp", "--socket", &socket, src, dst])
            .output()
            .unwrap()
    };
    let at = |p: &str| format!("{}:{p}", sb.id);
    let tmp = env.state.path();

    // Into the sandbox: a tree with an executable, an empty and a deep
    // directory; a host symlink is skipped, not followed.
    let src = tmp.join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::create_dir_all(src.join("empty")).unwrap();
    std::fs::create_dir_all(src.join("deep/x/y")).unwrap();
    std::fs::write(src.join("a.txt"), b"alpha").unwrap();
    std::fs::write(src.join("bin/run.sh"), b"#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(
        src.join("bin/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(src.join("deep/x/y/z.txt"), b"zed").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", src.join("link")).unwrap();
    let out = cp(src.to_str().unwrap(), &at("/workspace"));
    assert_eq!(code_of(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("link"));
    let (code, text) = sh(
        &c,
        &sb.id,
        "cd /workspace/src && cat a.txt deep/x/y/z.txt && ./bin/run.sh && test -d empty && test ! -e link && echo ok",
    );
    assert_eq!((code, text.as_str()), (Some(0), "alphazedran\nok\n"));
    // `SRC/.` copies the contents into a new directory.
    let out = cp(&format!("{}/.", src.display()), &at("/workspace/flat"));
    assert_eq!(code_of(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sh(&c, &sb.id, "cat /workspace/flat/a.txt").1, "alpha");

    // Out of the sandbox: files, modes and a symlink made as a symlink.
    let victim = tmp.join("victim");
    std::fs::write(&victim, b"host data").unwrap();
    let script = format!(
        "mkdir -p /workspace/out/sub && echo f > /workspace/out/f && echo g > /workspace/out/sub/g && chmod 700 /workspace/out/sub && ln -s {} /workspace/out/esc",
        victim.display()
    );
    assert_eq!(sh(&c, &sb.id, &script).0, Some(0));
    let fresh = tmp.join("fresh");
    let out = cp(&at("/workspace/out"), fresh.to_str().unwrap());
    assert_eq!(code_of(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(fresh.join("f")).unwrap(), b"f\n");
    assert_eq!(std::fs::read(fresh.join("sub/g")).unwrap(), b"g\n");
    let sub_mode = std::fs::metadata(fresh.join("sub"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(sub_mode & 0o777, 0o700);
    assert_eq!(std::fs::read_link(fresh.join("esc")).unwrap(), victim);
    // Into an existing directory: as its subdirectory.
    let existing = tmp.join("existing");
    std::fs::create_dir(&existing).unwrap();
    let out = cp(&at("/workspace/out"), existing.to_str().unwrap());
    assert_eq!(code_of(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(existing.join("out/sub/g")).unwrap(), b"g\n");

    // The attack: the sandbox turns the symlink it had copied out into a
    // file, and the copy is repeated over the first one. The host file
    // behind the symlink must not be written.
    let script = "rm /workspace/out/esc && echo pwned > /workspace/out/esc";
    assert_eq!(sh(&c, &sb.id, script).0, Some(0));
    let out = cp(&at("/workspace/out"), existing.to_str().unwrap());
    assert_ne!(code_of(&out), 0, "the copy wrote through a symlink");
    assert_eq!(std::fs::read(&victim).unwrap(), b"host data");
    c.destroy(&sb.id).unwrap();
}
