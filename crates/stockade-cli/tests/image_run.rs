//! Sandboxes whose root is an image (`--image`): a small two-layer image
//! the test builds from the host's busybox-static as an OCI layout
//! (`oci:DIR:TAG`), pulled into the test's own store. Needs root and
//! `/bin/busybox` (busybox-static).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Commands the image's busybox provides.
const APPLETS: &[&str] = &[
    "sh", "ls", "id", "cat", "stat", "echo", "mkdir", "touch", "rm", "pwd", "env", "dd", "test",
    "mount", "unshare", "head", "wc", "true", "false",
];

fn sh(script: &str) {
    let st = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(st.success(), "{script}");
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Writes `data` as a blob of the layout; returns (digest, size).
fn blob(layout: &Path, data: &[u8]) -> (String, usize) {
    let tmp = layout.join("blob.tmp");
    std::fs::write(&tmp, data).unwrap();
    let hex = sha256(&tmp);
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&hex)).unwrap();
    (format!("sha256:{hex}"), data.len())
}

/// The tar of `dir` as a layer blob, owners as they are on disk.
fn layer_blob(layout: &Path, dir: &Path) -> (String, usize) {
    let tar = layout.join("layer.tar");
    sh(&format!(
        "tar -C {} --numeric-owner -cf {} .",
        dir.display(),
        tar.display()
    ));
    let data = std::fs::read(&tar).unwrap();
    std::fs::remove_file(&tar).unwrap();
    blob(layout, &data)
}

/// An OCI layout with two images over the same two layers:
/// - layer 1: busybox and its applets in /bin, /etc/passwd and group
///   (root, and `app` 1234), /app owned by app, /usr/share/doc/old.txt,
///   /opaque/a.txt;
/// - layer 2: a whiteout of old.txt, /opaque made opaque with b.txt.
///
/// `plain`: user app, WorkingDir /app, Env, Cmd. `entry`: the same with an
/// Entrypoint.
fn build_image() -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    let l1 = work.path().join("l1");
    let l2 = work.path().join("l2");
    let layout = work.path().join("layout");
    for d in [
        l1.join("bin"),
        l1.join("etc"),
        l1.join("app"),
        l1.join("usr/share/doc"),
        l1.join("opaque"),
        l1.join("tmp"),
        l2.join("usr/share/doc"),
        l2.join("opaque"),
        layout.join("blobs/sha256"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::copy("/bin/busybox", l1.join("bin/busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", l1.join("bin").join(a)).unwrap();
    }
    std::fs::write(
        l1.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234:app:/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        l1.join("etc/group"),
        "root:x:0:\napp:x:1234:\nstaff:x:50:\n",
    )
    .unwrap();
    std::fs::write(l1.join("usr/share/doc/old.txt"), "old\n").unwrap();
    std::fs::write(l1.join("opaque/a.txt"), "a\n").unwrap();
    std::fs::set_permissions(l1.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    sh(&format!("chown -R 0:0 {}", l1.display()));
    sh(&format!("chown 1234:1234 {}", l1.join("app").display()));
    // OCI whiteouts, which the store turns into overlayfs's.
    std::fs::write(l2.join("usr/share/doc/.wh.old.txt"), "").unwrap();
    std::fs::write(l2.join("opaque/.wh..wh..opq"), "").unwrap();
    std::fs::write(l2.join("opaque/b.txt"), "b\n").unwrap();
    sh(&format!("chown -R 0:0 {}", l2.display()));

    let layers: Vec<(String, usize)> = [&l1, &l2].iter().map(|d| layer_blob(&layout, d)).collect();
    let diff_ids: Vec<&str> = layers.iter().map(|(d, _)| d.as_str()).collect();
    let mut manifests = Vec::new();
    for (tag, entrypoint) in [
        ("plain", serde_json::Value::Null),
        ("entry", serde_json::json!(["/bin/echo", "entry"])),
    ] {
        let mut config = serde_json::json!({
            "User": "app",
            "Env": ["PATH=/bin:/usr/bin", "IMG_VAR=from-image", "OVERRIDE=image"],
            "WorkingDir": "/app",
            "Cmd": ["/bin/sh", "-c", "echo from-cmd $IMG_VAR"],
        });
        if !entrypoint.is_null() {
            config["Entrypoint"] = entrypoint;
            config["Cmd"] = serde_json::json!(["default"]);
        }
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let (cd, cs) = blob(&layout, &serde_json::to_vec(&config).unwrap());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": layers.iter().map(|(d, s)| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s
            })).collect::<Vec<_>>(),
        });
        let (md, ms) = blob(&layout, &serde_json::to_vec(&manifest).unwrap());
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md,
            "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    }
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .unwrap(),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    work
}

struct ImageEnv {
    env: Env,
    work: tempfile::TempDir,
}

impl ImageEnv {
    fn new() -> ImageEnv {
        ImageEnv {
            env: Env::new(),
            work: build_image(),
        }
    }

    fn image(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.work.path().join("layout").display())
    }

    /// `stockade run --image oci:…:TAG ARGS`.
    fn run(&self, tag: &str, args: &[&str]) -> std::process::Output {
        let image = self.image(tag);
        let mut all = vec!["--image", image.as_str()];
        all.extend_from_slice(args);
        self.env.run(&all)
    }

    fn sh(&self, args: &[&str], script: &str) -> std::process::Output {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--", "/bin/sh", "-c", script]);
        self.run("plain", &all)
    }

    fn store(&self) -> PathBuf {
        self.env.state.path().join("images")
    }

    /// Every lease file left in the store.
    fn leases(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.store().join("leases"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

fn ok(out: &std::process::Output) -> String {
    assert_eq!(code(out), 0, "stderr: {}", stderr(out));
    stdout(out)
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and idmapped mounts; /bin/busybox"]
fn image_files_have_the_images_owners_inside_and_the_disk_block_outside() {
    let e = ImageEnv::new();
    let out = e.sh(
        &[],
        "stat -c '%u %g' /bin/busybox /app /etc/passwd; id -u; id -g",
    );
    assert_eq!(ok(&out), "0 0\n1234 1234\n0 0\n1234\n1234\n");
    // On the host the same file belongs to the disk block, not host root.
    let layers: Vec<PathBuf> = std::fs::read_dir(e.store().join("layers"))
        .unwrap()
        .flatten()
        .map(|d| d.path())
        .filter(|p| p.join("bin/busybox").exists())
        .collect();
    assert_eq!(layers.len(), 1, "{layers:?}");
    let meta = std::fs::symlink_metadata(layers[0].join("bin/busybox")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (2_000_000_000, 2_000_000_000));
    let app = std::fs::symlink_metadata(layers[0].join("app")).unwrap();
    assert_eq!(app.uid(), 2_000_001_234);
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and idmapped mounts; /bin/busybox"]
fn whiteouts_and_opaque_directories_hide_the_lower_layers_and_the_host_is_absent() {
    let e = ImageEnv::new();
    let out = e.sh(
        &[],
        "ls -A /usr/share/doc && echo doc-dir; echo ---; ls -A /opaque; echo ---; ls /; echo ---; \
         test -e /usr/bin/apt-get && echo host-usr; test -e /lib/x86_64-linux-gnu && echo host-lib; \
         cat /etc/hostname; grep -c sandbox /etc/hosts; test -s /etc/resolv.conf && echo resolv",
    );
    let text = ok(&out);
    let parts: Vec<&str> = text.split("---\n").collect();
    assert_eq!(parts[0], "doc-dir\n", "old.txt was whited out");
    assert_eq!(parts[1], "b.txt\n", "the opaque dir hides a.txt");
    // Only the image's top-level entries and stockade's mount points.
    assert!(
        parts[2].contains("bin\n") && parts[2].contains("opaque\n"),
        "{text}"
    );
    for name in parts[2].lines() {
        assert!(
            [
                "app",
                "bin",
                "dev",
                "etc",
                "home",
                "opaque",
                "proc",
                "root",
                "sys",
                "tmp",
                "usr",
                "workspace"
            ]
            .contains(&name),
            "unexpected /{name}: {text}"
        );
    }
    assert!(
        !text.contains("host-usr") && !text.contains("host-lib"),
        "{text}"
    );
    assert!(parts[3].starts_with("sandbox\n1\nresolv"), "{text}");
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and idmapped mounts; /bin/busybox"]
fn writes_to_the_image_go_to_the_upper_and_vanish_with_the_sandbox() {
    let e = ImageEnv::new();
    let out = e.sh(
        &["--user", "0"],
        "echo new > /usr/new && cat /usr/new && rm /bin/cat && test ! -e /bin/cat && echo gone",
    );
    assert_eq!(ok(&out), "new\ngone\n");
    let out = e.sh(
        &["--user", "0"],
        "test -e /usr/new && echo kept; test -e /bin/cat && echo back",
    );
    assert_eq!(ok(&out), "back\n");
    // The image's user cannot write where the image says it may not.
    let out = e.sh(&[], "echo x > /usr/x 2>/dev/null || echo refused");
    assert_eq!(ok(&out), "refused\n");
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and idmapped mounts; /bin/busybox"]
fn writes_to_the_image_count_against_the_disk_limit() {
    let e = ImageEnv::new();
    let image = e.image("plain");
    let (out, report) = e.env.run_report(&[
        "--image",
        &image,
        "--user",
        "0",
        "--disk",
        "8M",
        "--",
        "/bin/sh",
        "-c",
        "dd if=/dev/zero of=/usr/big bs=1M count=32 2>/dev/null; echo rc=$?",
    ]);
    let kinds: Vec<&str> = report["violations"]
        .as_array()
        .map(|v| v.iter().filter_map(|x| x["kind"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        !stdout(&out).contains("rc=0") || kinds.contains(&"disk-limit"),
        "32M written under an 8M limit: {} {report}",
        stdout(&out)
    );
    assert!(kinds.contains(&"disk-limit"), "{report}");
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and idmapped mounts; /bin/busybox"]
fn the_images_user_env_and_workdir_apply_and_flags_override_them() {
    let e = ImageEnv::new();
    let out = e.sh(
        &[],
        "id -u; pwd; echo $IMG_VAR $OVERRIDE; echo $PATH; echo $HOME",
    );
    assert_eq!(
        ok(&out),
        "1234\n/app\nfrom-image image\n/bin:/usr/bin\n/app\n"
    );
    let out = e.sh(
        &["--user", "0:50", "--cwd", "/tmp", "-e", "OVERRIDE=flag"],
        "id -u; id -g; pwd; echo $IMG_VAR $OVERRIDE",
    );
    assert_eq!(ok(&out), "0\n50\n/tmp\nfrom-image flag\n");
    let out = e.sh(&["--user", "app:staff"], "id -u; id -g");
    assert_eq!(ok(&out), "1234\n50\n");
    let out = e.sh(&["--root"], "id -u; echo $HOME");
    assert_eq!(ok(&out), "0\n/root\n");
    // A name the image does not have is refused before anything starts.
    let out = e.sh(&["--user", "nosuchuser"], "true");
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("/etc/passwd"), "{}", stderr(&out));
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and idmapped mounts; /bin/busybox"]
fn entrypoint_and_cmd_run_when_no_command_is_given() {
    let e = ImageEnv::new();
    assert_eq!(ok(&e.run("plain", &[])), "from-cmd from-image\n");
    assert_eq!(ok(&e.run("entry", &[])), "entry default\n");
    assert_eq!(
        ok(&e.run("entry", &["--", "given", "args"])),
        "entry given args\n"
    );
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and idmapped mounts; /bin/busybox"]
fn seccomp_still_refuses_mounts_and_new_user_namespaces_on_an_image() {
    let e = ImageEnv::new();
    let out = e.sh(
        &["--user", "0"],
        "mount -t tmpfs none /tmp 2>/dev/null && echo mounted; \
         unshare -U true 2>/dev/null && echo unshared; \
         echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo wrote-proc; echo done",
    );
    assert_eq!(ok(&out), "done\n");
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and idmapped mounts; /bin/busybox"]
fn nothing_is_left_after_image_runs_not_even_the_lease() {
    let e = ImageEnv::new();
    let (out, report) = e.env.run_report(&[
        "--image",
        &e.image("plain"),
        "--",
        "/bin/sh",
        "-c",
        "touch /usr/x",
    ]);
    let _ = out;
    let id = report["id"].as_str().unwrap().to_string();
    assert!(
        eventually(|| e.leases().is_empty()),
        "lease left: {:?}",
        e.leases()
    );
    assert!(eventually(|| cgroup_dirs(&id).is_empty()));
    assert!(eventually(|| mounts_under(e.env.state.path()) == 0));
    assert!(eventually(|| std::fs::read_dir(e.env.sandboxes_dir())
        .map(|rd| rd.count() == 0)
        .unwrap_or(true)));
    // No mount anywhere names a layer of the store.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(e.store().to_str().unwrap()),
        "{mountinfo}"
    );
    // The store still has the image and a pull-less run finds it.
    let out = e.sh(&["--pull", "never"], "echo again");
    assert_eq!(ok(&out), "again\n");
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and idmapped mounts; /bin/busybox"]
fn a_missing_image_is_a_clear_error() {
    let e = ImageEnv::new();
    let out = e.env.run(&[
        "--image",
        "localhost/never-pulled:1",
        "--pull",
        "never",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 125);
    let err = stderr(&out);
    assert!(
        err.contains("never-pulled") && err.contains("pull"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and idmapped mounts; /bin/busybox"]
fn the_daemon_creates_a_sandbox_on_an_image_named_in_the_body() {
    let e = ImageEnv::new();
    // A local source through the API only under a root the daemon allows.
    let root = e.work.path().to_str().unwrap().to_string();
    let d = common::daemon::Daemon::start_cleaning(&e.env, &["--allow-bind-root", &root]);
    let c = d.client();
    // Named through a symlink: the daemon pulls, and the shim reads, the
    // path it checked, never one that could be swapped afterwards.
    let link = e.work.path().join("link");
    std::os::unix::fs::symlink(e.work.path().join("layout"), &link).unwrap();
    let body = serde_json::json!({ "image": format!("oci:{}:plain", link.display()) }).to_string();
    let resp = c
        .raw(
            "POST",
            "/v1/sandboxes",
            &[],
            Some(("application/json", body.as_bytes())),
        )
        .unwrap();
    let status = resp.status;
    let created: serde_json::Value = serde_json::from_slice(&resp.bytes(1 << 20).unwrap()).unwrap();
    assert!(status < 300, "{status} {created}");
    let resolved = e.work.path().canonicalize().unwrap().join("layout");
    assert_eq!(
        created["policy"]["filesystem"]["image"],
        format!("oci:{}:plain", resolved.display()),
        "{created}"
    );
    let id = created["id"].as_str().unwrap().to_string();
    let r = c
        .exec(
            &id,
            &stockade_client::ExecOptions {
                cmd: ["/bin/sh", "-c", "id -u; pwd; stat -c '%u' /bin/busybox"]
                    .map(String::from)
                    .to_vec(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(r.stdout, "1234\n/app\n0\n", "{}", r.stderr);
    let leases = e.env.state.path().join("state/images/leases");
    let held = || std::fs::read_dir(&leases).map(|d| d.count()).unwrap_or(0);
    assert_eq!(held(), 1, "a live sandbox holds its image");
    c.destroy(&id).unwrap();
    assert!(eventually(|| held() == 0), "the lease outlived the sandbox");
    // An image the store does not have, never pulled: the caller's error.
    let body = serde_json::json!({ "image": "localhost/absent:1", "pull": "never" }).to_string();
    let resp = c
        .raw(
            "POST",
            "/v1/sandboxes",
            &[],
            Some(("application/json", body.as_bytes())),
        )
        .unwrap();
    assert!((400..500).contains(&resp.status), "{}", resp.status);
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and idmapped mounts; /bin/busybox; git"]
fn a_task_runs_its_agent_on_an_image_whose_user_writes_the_workspace() {
    let e = ImageEnv::new();
    let repo = e.work.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(repo.join("a.txt"), "hi\n").unwrap();
    for args in [
        &["init", "-q"][..],
        &["add", "a.txt"][..],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "commit",
            "-qm",
            "init",
        ][..],
    ] {
        assert!(Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .status()
            .unwrap()
            .success());
    }
    let out = e.work.path().join("out");
    let image = e.image("plain");
    let o = e
        .env
        .cmd()
        .args([
            "task",
            "--repo",
            repo.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--image", &image, "--"])
        .args([
            "/bin/sh",
            "-c",
            "id -u > who.txt; echo $IMG_VAR >> who.txt; stat -c %u /bin/busybox >> who.txt",
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The agent ran as the image's user (1234), with its environment and
    // its root-owned files, and could write the task's workspace; the
    // patch the collect sandbox made (on the host's /usr) has its file.
    let patch = std::fs::read_to_string(out.join("changes.patch")).unwrap();
    assert!(
        patch.contains("+1234\n+from-image\n+0\n") || patch.contains("+1234\n+from-image\n+0"),
        "{patch}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["exit_code"], 0, "{report}");
    assert_eq!(report["files_changed"], 1, "{report}");
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and idmapped mounts; /bin/busybox"]
fn a_bound_workspace_is_written_as_its_owner_by_the_images_user() {
    let e = ImageEnv::new();
    let ws = e.work.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::os::unix::fs::chown(&ws, Some(1000), Some(1000)).unwrap();
    let o = e.sh(
        &["--workspace", ws.to_str().unwrap()],
        "id -u; touch /workspace/z && stat -c '%u %g' /workspace/z",
    );
    assert_eq!(stdout(&o), "1234\n1234 1234\n", "{}", stderr(&o));
    let meta = std::fs::metadata(ws.join("z")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
}
