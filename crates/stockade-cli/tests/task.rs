//! `stockade task` end to end, on repositories the tests create.
//! Needs root; CI runs these as root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "safe.directory=*",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// A repository with two text files and a binary one, on branch `main`
/// plus a second branch `other`.
fn make_repo() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    git(d.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(d.path().join("a.txt"), "hello\n").unwrap();
    std::fs::write(d.path().join("b.txt"), "bye\n").unwrap();
    std::fs::write(d.path().join("blob.bin"), [0u8, 1, 2, 255, 254]).unwrap();
    git(d.path(), &["add", "."]);
    git(d.path(), &["commit", "-qm", "init"]);
    git(d.path(), &["branch", "other"]);
    d
}

fn task(
    env: &Env,
    repo: &Path,
    out: &Path,
    extra: &[&str],
    agent: &str,
) -> (std::process::Output, serde_json::Value) {
    let mut args = vec![
        "task",
        "--repo",
        repo.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.extend(["--", "sh", "-c", agent]);
    let o = env.cmd().args(&args).output().unwrap();
    let report = std::fs::read_to_string(out.join("report.json"))
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(serde_json::Value::Null);
    (o, report)
}

/// Applies `patch` to a fresh clone of `repo` at `base`; returns the clone.
fn apply(repo: &Path, base: &str, patch: &Path) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    git(d.path(), &["clone", "-q", repo.to_str().unwrap(), "."]);
    git(d.path(), &["checkout", "-q", base]);
    git(d.path(), &["apply", "--binary", patch.to_str().unwrap()]);
    d
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn patch_reproduces_the_agents_tree_including_its_commits() {
    let env = Env::new();
    let repo = make_repo();
    let out = tempfile::tempdir().unwrap();
    let agent = "echo \"task: $STOCKADE_TASK\"; cat \"$STOCKADE_TASK_FILE\" >/dev/null; \
                 echo changed >> a.txt; git rm -q b.txt; printf 'new\\n' > c.txt; git add c.txt; \
                 git commit -qm 'agent commit'; mkdir -p sub; printf 'deep\\n' > sub/d.txt; \
                 printf '\\001\\002\\003' > blob.bin; echo to-stderr >&2";
    let (o, report) = task(&env, repo.path(), out.path(), &["--task", "fix it"], agent);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("stockade: task: clone"),
        "{}",
        stderr(&o)
    );
    assert_eq!(report["outcome"], "exited");
    assert_eq!(report["files_changed"], 5, "{report}");
    let base = report["base_commit"].as_str().unwrap();
    assert_eq!(base, git(repo.path(), &["rev-parse", "main"]).trim());
    assert_eq!(
        std::fs::read_to_string(out.path().join("stdout.log")).unwrap(),
        "task: fix it\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("stderr.log")).unwrap(),
        "to-stderr\n"
    );
    let names: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["clone", "run", "collect"]);

    let tree = apply(repo.path(), base, &out.path().join("changes.patch"));
    let t = tree.path();
    assert_eq!(
        std::fs::read_to_string(t.join("a.txt")).unwrap(),
        "hello\nchanged\n"
    );
    assert!(!t.join("b.txt").exists());
    assert_eq!(std::fs::read_to_string(t.join("c.txt")).unwrap(), "new\n");
    assert_eq!(
        std::fs::read_to_string(t.join("sub/d.txt")).unwrap(),
        "deep\n"
    );
    assert_eq!(std::fs::read(t.join("blob.bin")).unwrap(), [1u8, 2, 3]);
    // Nothing of the task is left in the state directory (its scratch
    // lives there only where the host has no scratch filesystem).
    assert_eq!(
        std::fs::read_dir(env.state.path().join("tasks"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn ref_is_checked_out_and_a_missing_ref_is_a_clear_error() {
    let env = Env::new();
    let repo = make_repo();
    let main_head = git(repo.path(), &["rev-parse", "main"]);
    std::fs::write(repo.path().join("a.txt"), "on main later\n").unwrap();
    git(repo.path(), &["commit", "-qam", "later"]);
    let out = tempfile::tempdir().unwrap();
    let (o, report) = task(
        &env,
        repo.path(),
        out.path(),
        &["--ref", "other"],
        "cat a.txt",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(report["base_commit"].as_str().unwrap(), main_head.trim());
    assert_eq!(
        std::fs::read_to_string(out.path().join("stdout.log")).unwrap(),
        "hello\n"
    );

    let out = tempfile::tempdir().unwrap();
    let (o, report) = task(
        &env,
        repo.path(),
        out.path(),
        &["--ref", "no-such-ref"],
        "true",
    );
    assert_eq!(code(&o), 125);
    assert_eq!(report["outcome"], "error");
    assert!(
        report["error"].as_str().unwrap().contains("no-such-ref"),
        "{report}"
    );
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn missing_repository_is_refused_with_one_line() {
    let env = Env::new();
    let out = tempfile::tempdir().unwrap();
    let (o, _) = task(&env, Path::new("/no/such/repo"), out.path(), &[], "true");
    assert_eq!(code(&o), 125);
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    let (o, _) = task(&env, Path::new("/usr"), out.path(), &[], "true");
    assert_eq!(code(&o), 125);
    assert!(
        stderr(&o).contains("not a git repository"),
        "{}",
        stderr(&o)
    );
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn timed_out_agent_still_yields_its_partial_patch() {
    let env = Env::new();
    let repo = make_repo();
    let out = tempfile::tempdir().unwrap();
    let (o, report) = task(
        &env,
        repo.path(),
        out.path(),
        &["--timeout", "1s"],
        "echo partial >> a.txt; sleep 30",
    );
    assert_eq!(code(&o), 124, "{}", stderr(&o));
    assert_eq!(report["outcome"], "timeout");
    let patch = std::fs::read_to_string(out.path().join("changes.patch")).unwrap();
    assert!(patch.contains("+partial"), "{patch}");
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn agent_killed_for_memory_or_failing_still_yields_its_patch() {
    let env = Env::new();
    let repo = make_repo();
    let out = tempfile::tempdir().unwrap();
    let agent = "echo before-oom >> a.txt; /usr/bin/python3 -c 'x = [bytearray(1 << 20) for _ in range(1024)]'";
    let (o, report) = task(&env, repo.path(), out.path(), &["--memory", "64M"], agent);
    assert_eq!(code(&o), 137, "{}", stderr(&o));
    assert_eq!(report["outcome"], "memory-limit");
    assert!(std::fs::read_to_string(out.path().join("changes.patch"))
        .unwrap()
        .contains("+before-oom"));

    let out = tempfile::tempdir().unwrap();
    let (o, report) = task(
        &env,
        repo.path(),
        out.path(),
        &[],
        "echo x > new.txt; exit 3",
    );
    assert_eq!(code(&o), 3);
    assert_eq!(report["exit_code"], 3);
    assert_eq!(report["files_changed"], 1);
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn hostile_repository_and_agent_cannot_touch_the_host() {
    let env = Env::new();
    let repo = make_repo();
    let pwned: PathBuf = format!("/tmp/stockade-pwned-{}", rand_suffix()).into();
    // A hook in the source repository, and one the repository tries to
    // install through tracked files and config.
    let hook = format!("#!/bin/sh\ntouch {}\n", pwned.display());
    for h in [".git/hooks/post-checkout", "hooks/post-checkout"] {
        let p = repo.path().join(h);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &hook).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    git(repo.path(), &["add", "hooks"]);
    git(repo.path(), &["commit", "-qm", "hooks"]);
    git(repo.path(), &["config", "core.hooksPath", "hooks"]);
    let out = tempfile::tempdir().unwrap();
    // The agent, too, tries: hooks in its clone (run by its own git, in
    // the sandbox) and a direct write to the host path.
    let agent = format!(
        "git config core.hooksPath hooks; git checkout -q -b x; touch {p}; ls {p} && echo INSIDE-ONLY",
        p = pwned.display()
    );
    let (o, report) = task(
        &env,
        repo.path(),
        out.path(),
        &["--collect", "hooks/*"],
        &agent,
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!pwned.exists(), "the host was touched");
    // The collector ran git on the agent's .git, with its hooksPath set,
    // inside a sandbox: still nothing on the host.
    assert_eq!(report["artifacts"][0], "hooks/post-checkout");
    assert!(out.path().join("artifacts/hooks/post-checkout").exists());
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups; runs git daemon in a network namespace it makes"]
fn remote_repository_is_cloned_through_the_egress_policy() {
    // Network safety: everything below runs in a fresh network namespace
    // (unshare --net); the git server listens on a documentation address
    // in a second one (joined by a veth pair), not on the supervisor's own
    // interfaces, which the egress filter refuses.
    let env = Env::new();
    let base = tempfile::tempdir().unwrap();
    let src = make_repo();
    let bare = base.path().join("repo.git");
    git(
        base.path(),
        &[
            "clone",
            "-q",
            "--bare",
            src.path().to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    let out = tempfile::tempdir().unwrap();
    let script = format!(
        r#"set -e
ip link set lo up
unshare --net sleep 600 &
hosts=$!
sleep 0.2
ip link add stk-a type veth peer name stk-b
ip link set stk-b netns $hosts
ip addr add 192.0.2.1/30 dev stk-a && ip link set stk-a up
nsenter --net=/proc/$hosts/ns/net sh -c 'ip link set lo up; ip addr add 192.0.2.2/30 dev stk-b; ip link set stk-b up; ip addr add 203.0.113.20/32 dev lo'
ip route add 203.0.113.20/32 via 192.0.2.2 dev stk-a
nsenter --net=/proc/$hosts/ns/net git daemon --reuseaddr --export-all --base-path={base} --listen=203.0.113.20 --port=9418 --detach --pid-file={base}/pid
for i in $(seq 100); do (exec 3<>/dev/tcp/203.0.113.20/9418) 2>/dev/null && break; sleep 0.05; done
set +e
{bin} task --repo git://gitserver.test/repo.git --map-host gitserver.test=203.0.113.20 --out {out} \
  -- sh -c 'echo remote >> a.txt; getent hosts elsewhere.test && echo LEAK; true'
rc=$?
kill "$(cat {base}/pid)" $hosts
exit $rc"#,
        base = base.path().display(),
        bin = BIN,
        out = out.path().display(),
    );
    let o = std::process::Command::new("unshare")
        .args(["--net", "--", "bash", "-c", &script])
        .env("STOCKADE_STATE_DIR", env.state.path())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["outcome"], "exited", "{report}");
    assert_eq!(
        report["base_commit"].as_str().unwrap(),
        git(src.path(), &["rev-parse", "HEAD"]).trim()
    );
    assert!(!std::fs::read_to_string(out.path().join("stdout.log"))
        .unwrap()
        .contains("LEAK"));
    let patch = std::fs::read_to_string(out.path().join("changes.patch")).unwrap();
    assert!(patch.contains("+remote"), "{patch}");
    // The agent ran with the repository's host allowed and nothing else.
    let denied = report["network"]["denied_names"].as_array().unwrap();
    assert!(denied.iter().any(|n| n == "elsewhere.test"), "{report}");
}

/// Runs a task to its end, sampling the task process's peak memory
/// (VmHWM) as it goes; returns the report and that peak.
fn task_peak(
    env: &Env,
    repo: &Path,
    out: &Path,
    extra: &[&str],
    agent: &str,
) -> (serde_json::Value, u64) {
    let mut args = vec![
        "task",
        "--repo",
        repo.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.extend(["--", "sh", "-c", agent]);
    let mut child = env
        .cmd()
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0u64;
    while child.try_wait().unwrap().is_none() {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kb) = s
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                peak = peak.max(kb * 1024);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let report = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    (report, peak)
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn an_agent_printing_gigabytes_leaves_capped_logs_and_constant_memory() {
    let env = Env::new();
    let repo = make_repo();
    let out = tempfile::tempdir().unwrap();
    let (report, peak) = task_peak(
        &env,
        repo.path(),
        out.path(),
        &["--log-limit", "1M", "--memory", "128M"],
        "head -c 1000000000 /dev/zero; head -c 3000000 /dev/zero >&2; echo done > a.txt",
    );
    assert_eq!(report["stdout_bytes"], 1_000_000_000u64, "{report}");
    assert_eq!(report["stdout_truncated"], true);
    assert_eq!(report["stderr_bytes"], 3_000_000u64);
    assert_eq!(report["stderr_truncated"], true);
    for log in ["stdout.log", "stderr.log"] {
        let len = std::fs::metadata(out.path().join(log)).unwrap().len();
        assert_eq!(len, 1 << 20, "{log}");
    }
    assert!(peak < 64 << 20, "the task process peaked at {peak} bytes");
    // The task itself still completes: the patch is there.
    assert_eq!(report["files_changed"], 1, "{report}");
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn large_and_sparse_artifacts_are_bounded_and_a_large_patch_is_cut() {
    let env = Env::new();
    let repo = make_repo();
    let out = tempfile::tempdir().unwrap();
    // (The binary files stay out of the patch: git would spend long on a
    // 4 GiB file.)
    let agent = "printf 'huge.sparse\\nsmall.sparse\\nbig.bin\\n' >> .git/info/exclude; \
                 truncate -s 4G huge.sparse; truncate -s 32M small.sparse; \
                 printf x | dd of=small.sparse bs=1 seek=1000000 conv=notrunc 2>/dev/null; \
                 head -c 20000000 /dev/urandom > big.bin; echo ok > fine.txt; \
                 head -c 3000000 /dev/urandom | base64 > big.txt";
    let (report, peak) = task_peak(
        &env,
        repo.path(),
        out.path(),
        &[
            "--artifact-limit",
            "64M",
            "--artifacts-total",
            "40M",
            "--patch-limit",
            "1M",
            "--collect",
            "*.sparse",
            "--collect",
            "big.bin",
            "--collect",
            "fine.txt",
        ],
        agent,
    );
    let skipped: Vec<String> = report["artifacts_skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    // Too large by its size, holes included; then the total is used up.
    assert!(skipped.contains(&"huge.sparse".to_string()), "{report}");
    assert!(skipped.contains(&"big.bin".to_string()), "{report}");
    let artifacts = out.path().join("artifacts");
    assert!(!artifacts.join("huge.sparse").exists());
    // A sparse artifact within the limits stays sparse on the host.
    use std::os::unix::fs::MetadataExt;
    let small = std::fs::metadata(artifacts.join("small.sparse")).unwrap();
    assert_eq!(small.len(), 32 << 20);
    assert!(
        small.blocks() * 512 < 1 << 20,
        "{} bytes allocated",
        small.blocks() * 512
    );
    assert_eq!(
        std::fs::read_to_string(artifacts.join("fine.txt")).unwrap(),
        "ok\n"
    );
    // The patch (4 MB of text and more) is cut at its limit.
    assert_eq!(report["patch_truncated"], true, "{report}");
    let patch = std::fs::metadata(out.path().join("changes.patch"))
        .unwrap()
        .len();
    assert!(patch <= 1 << 20, "{patch}");
    assert!(
        report["error"]
            .as_str()
            .unwrap_or("")
            .contains("--patch-limit"),
        "{report}"
    );
    assert!(peak < 64 << 20, "the task process peaked at {peak} bytes");
}
