//! End-to-end tests of container images (issue 15): real registries
//! (Debian's docker-registry on 127.0.0.1: plain, basic auth, TLS), images
//! built by tests/images/build.sh, and the `stockade` binary.

mod common;

use common::registry::{self, Registry};

// ---- the infrastructure itself -------------------------------------------

#[test]
#[ignore = "needs root: builds images under /var/cache and runs registries"]
fn test_images_are_built() {
    for name in [
        "busybox",
        "busybox-zstd",
        "busybox-plain",
        "debian-python",
        "hostile/dotdot",
        "hostile/bomb",
        "hostile/arm64-only",
    ] {
        let index = registry::image(name).join("index.json");
        assert!(index.is_file(), "{} missing", index.display());
    }
    for file in ["busybox.docker.tar", "busybox.oci.tar"] {
        assert!(registry::image(file).is_file(), "{file} missing");
    }
    let wheel = registry::image("wheels/stockade_hello-1.0-py3-none-any.whl");
    assert!(wheel.is_file(), "{} missing", wheel.display());
}

#[test]
#[ignore = "needs root: builds images under /var/cache and runs registries"]
fn registries_serve_pushed_images() {
    for reg in [Registry::plain(), Registry::auth(), Registry::tls()] {
        let r = reg.push("busybox", "infra/busybox:latest");
        assert_eq!(r, format!("{}/infra/busybox:latest", reg.addr()));
        assert!(
            reg.catalog().contains(&"infra/busybox".to_owned()),
            "{:?}",
            reg.kind
        );
        let m = reg.manifest("infra/busybox:latest");
        assert_eq!(m["layers"].as_array().unwrap().len(), 5, "{m}");
        // The blob is where blob_path says (the corruption tests rely on it).
        let layer = m["layers"][0]["digest"].as_str().unwrap();
        assert!(reg.blob_path(layer).is_file());
        reg.push_raw("hostile/arm64-only", "infra/arm64:latest");
        let idx = reg.manifest("infra/arm64:latest");
        assert_eq!(idx["manifests"][0]["platform"]["architecture"], "arm64");
    }
    // Without credentials the auth registry says 401.
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/v2/", Registry::auth().base_url()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
}

// ---- helpers ---------------------------------------------------------------

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::registry::{Kind, PASSWORD, USER};
use common::{code, stderr, stdout, Env};

fn pull(env: &Env, args: &[&str]) -> Output {
    env.cmd().arg("pull").args(args).output().unwrap()
}

/// `stockade pull ARGS` must succeed; returns the digest (stdout's last line).
fn pulled(env: &Env, args: &[&str]) -> String {
    let out = pull(env, args);
    assert_eq!(code(&out), 0, "pull {args:?} failed: {}", stderr(&out));
    let text = stdout(&out);
    let last = text.lines().last().unwrap_or("").to_owned();
    assert!(
        last.starts_with("sha256:") && last.len() == 71,
        "stdout's last line is not a digest: {text:?}"
    );
    last
}

/// `stockade pull ARGS` must fail with 125 and one `stockade: …` line
/// saying something that contains every NEEDLE (case-insensitive).
fn pull_fails(env: &Env, args: &[&str], needles: &[&str]) -> String {
    let out = pull(env, args);
    let err = stderr(&out);
    assert_eq!(code(&out), 125, "pull {args:?} should fail: {err}");
    let last = err.lines().last().unwrap_or("").to_owned();
    assert!(last.starts_with("stockade: "), "no error line: {err:?}");
    let lower = last.to_lowercase();
    for n in needles {
        assert!(
            lower.contains(&n.to_lowercase()),
            "error {last:?} does not mention {n:?}"
        );
    }
    last
}

fn images_json(env: &Env) -> Vec<serde_json::Value> {
    let out = env
        .cmd()
        .args(["images", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    serde_json::from_str::<serde_json::Value>(&stdout(&out))
        .unwrap_or_else(|e| panic!("images --format json: {e}: {}", stdout(&out)))
        .as_array()
        .unwrap()
        .clone()
}

fn store_root(env: &Env) -> PathBuf {
    env.state.path().join("images")
}

/// Complete unpacked layers in the store (`layers/<hex>.json`).
fn layer_count(env: &Env) -> usize {
    match std::fs::read_dir(store_root(env).join("layers")) {
        Ok(rd) => rd
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count(),
        Err(_) => 0,
    }
}

/// Nothing half-written is left behind.
fn assert_tmp_empty(env: &Env) {
    let tmp = store_root(env).join("tmp");
    if let Ok(rd) = std::fs::read_dir(&tmp) {
        let left: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{} holds {left:?}", tmp.display());
    }
}

fn run_image(env: &Env, image: &str, extra: &[&str], script: &str) -> Output {
    let mut args = vec!["--image", image];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    env.run(&args)
}

fn run_ok(env: &Env, image: &str, extra: &[&str], script: &str) -> String {
    let out = run_image(env, image, extra, script);
    assert_eq!(
        code(&out),
        0,
        "run --image {image} {script:?}: {}",
        stderr(&out)
    );
    stdout(&out)
}

fn busybox_ref() -> String {
    Registry::plain().push("busybox", "t/busybox:latest")
}

// ---- pulling from registries -------------------------------------------------

#[test]
#[ignore = "needs root: registries, image store, namespaces"]
fn pull_anonymous_lists_and_inspects() {
    let env = Env::new();
    let r = busybox_ref();
    let digest = pulled(&env, &[&r]);
    assert_eq!(
        digest,
        Registry::plain().manifest_digest("t/busybox:latest")
    );
    let list = images_json(&env);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["digest"], digest.as_str());
    assert_eq!(list[0]["tag"], "latest");
    assert!(
        list[0]["repository"]
            .as_str()
            .unwrap()
            .ends_with("t/busybox"),
        "{list:?}"
    );
    assert!(list[0]["size"].as_u64().unwrap() > 1_000_000, "{list:?}");
    assert_eq!(layer_count(&env), 5);
    // The table has the same image.
    let out = env.cmd().arg("images").output().unwrap();
    let table = stdout(&out);
    assert!(table.starts_with("REPOSITORY"), "{table}");
    assert!(table.contains(&digest[7..19]), "{table}");
    // inspect prints the config blob.
    let out = env.cmd().args(["image", "inspect", &r]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let cfg: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(cfg["config"]["WorkingDir"], "/srv");
    assert_eq!(cfg["config"]["User"], "app");
    assert!(cfg["config"]["Env"]
        .as_array()
        .unwrap()
        .contains(&"FOO=bar".into()));
    assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 5);
    assert_tmp_empty(&env);
}

#[test]
#[ignore = "needs root: registries, image store, namespaces"]
fn pull_with_basic_auth() {
    let reg = Registry::auth();
    let r = reg.push("busybox", "auth/busybox:latest");
    // No credentials, wrong ones: refused, clearly.
    let env = Env::new();
    pull_fails(&env, &[&r], &[reg.addr()]);
    pull_fails(
        &env,
        &["--creds", &format!("{USER}:wrong"), &r],
        &["credentials"],
    );
    assert!(images_json(&env).is_empty());
    // --creds
    let digest = pulled(&env, &["--creds", &format!("{USER}:{PASSWORD}"), &r]);
    assert_eq!(digest, reg.manifest_digest("auth/busybox:latest"));
    // An auth file.
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let file = reg.auth_file(dir.path(), USER, PASSWORD);
    assert_eq!(
        pulled(&env, &["--authfile", file.to_str().unwrap(), &r]),
        digest
    );
    let bad = tempfile::tempdir().unwrap();
    let file = reg.auth_file(bad.path(), USER, "nope");
    let env = Env::new();
    pull_fails(
        &env,
        &["--authfile", file.to_str().unwrap(), &r],
        &["credentials"],
    );
    assert_tmp_empty(&env);
}

#[test]
#[ignore = "needs root: registries, image store, namespaces"]
fn pull_over_tls_needs_the_ca() {
    let reg = Registry::tls();
    let r = reg.push("busybox", "tls/busybox:latest");
    let env = Env::new();
    // Without the CA the certificate is not trusted.
    pull_fails(&env, &[&r], &[reg.addr()]);
    assert!(images_json(&env).is_empty());
    let digest = pulled(&env, &["--registry-ca", reg.ca().to_str().unwrap(), &r]);
    assert_eq!(digest, reg.manifest_digest("tls/busybox:latest"));
}

#[test]
#[ignore = "needs root: registries, image store, namespaces"]
fn unknown_images_and_unreachable_registries_are_clear_errors() {
    let env = Env::new();
    let reg = Registry::plain();
    busybox_ref();
    pull_fails(
        &env,
        &[&reg.reference("t/busybox:no-such-tag")],
        &["not found"],
    );
    pull_fails(
        &env,
        &[&reg.reference("no/such-repo:latest")],
        &["not found"],
    );
    let closed = format!("127.0.0.1:{}", registry::closed_port());
    pull_fails(&env, &[&format!("{closed}/x/y:latest")], &[&closed]);
    assert!(images_json(&env).is_empty());
    assert_tmp_empty(&env);
}

/// A layer blob whose bytes were changed in the registry (same size) and
/// one that was cut short: both refused, nothing recorded.
#[test]
#[ignore = "needs root: registries, image store, namespaces"]
fn corrupt_and_truncated_blobs_are_refused() {
    for truncate in [false, true] {
        let reg = Registry::new(Kind::Plain);
        let r = reg.push("busybox", "c/busybox:latest");
        let m = reg.manifest("c/busybox:latest");
        let layer = m["layers"][0]["digest"].as_str().unwrap().to_owned();
        let path = reg.blob_path(&layer);
        let mut data = std::fs::read(&path).unwrap();
        if truncate {
            data.truncate(data.len() / 2);
        } else {
            let mid = data.len() / 2;
            data[mid] ^= 0xff;
        }
        std::fs::write(&path, &data).unwrap();
        let env = Env::new();
        let err = pull_fails(&env, &[&r], &[]);
        assert!(
            err.contains(&layer[7..19]) || err.contains(&layer),
            "error does not name the blob {layer}: {err}"
        );
        assert!(images_json(&env).is_empty());
        assert_tmp_empty(&env);
        assert!(
            !store_root(&env)
                .join("blobs/sha256")
                .join(&layer[7..])
                .exists(),
            "the bad blob was kept"
        );
    }
}

#[test]
#[ignore = "needs root: registries, image store, namespaces"]
fn platform_and_media_type_errors() {
    let env = Env::new();
    let reg = Registry::plain();
    let arm = reg.push_raw("hostile/arm64-only", "h/arm64:latest");
    pull_fails(&env, &[&arm], &["platform", "arm64"]);
    // Asked for, that platform is pulled.
    pulled(&env, &["--platform", "linux/arm64", &arm]);
    let unk = reg.push_raw("hostile/unknown-mediatype", "h/unknown:latest");
    let env = Env::new();
    pull_fails(
        &env,
        &[&unk],
        &["application/vnd.example.unknown.layer.v1+weird"],
    );
    let bad = reg.push_raw("hostile/bad-diffid", "h/bad-diffid:latest");
    pull_fails(&env, &[&bad], &[]);
    assert!(images_json(&env).is_empty());
    assert_tmp_empty(&env);
}

/// Paths the hostile layers try to write outside the store. None may
/// exist after any pull.
const CANARIES: &[&str] = &[
    "/tmp/stockade-hostile-dotdot",
    "/tmp/stockade-hostile-dotdot2",
    "/etc/stockade-hostile-symlink",
    "/tmp/stockade-hostile-symlink-rel",
    "/etc/stockade-hostile-abs",
];
const HARDLINK_TARGET: &str = "/tmp/stockade-hostile-hardlink-target";

#[test]
#[ignore = "needs root: registries, image store, namespaces"]
fn hostile_layers_are_refused_and_touch_nothing_outside() {
    let reg = Registry::plain();
    std::fs::write(HARDLINK_TARGET, "canary\n").unwrap();
    let passwd = std::fs::read("/etc/passwd").unwrap();
    let passwd_links = std::fs::metadata("/etc/passwd").unwrap().nlink();
    for c in CANARIES {
        let _ = std::fs::remove_file(c);
    }
    let env = Env::new();
    // Something good in the store first: it must survive every failure.
    let good = pulled(&env, &[&busybox_ref()]);
    let before = images_json(&env);
    let layers_before = layer_count(&env);
    for name in ["dotdot", "symlink-escape", "hardlink-escape"] {
        let r = reg.push_raw(&format!("hostile/{name}"), &format!("h/{name}:latest"));
        pull_fails(&env, &[&r], &["layer"]);
        assert_eq!(images_json(&env), before, "after {name}");
        assert_eq!(layer_count(&env), layers_before, "after {name}");
        assert_tmp_empty(&env);
        for c in CANARIES {
            assert!(!Path::new(c).exists(), "{name} created {c}");
        }
        let parent = env.state.path().parent().unwrap();
        assert!(!parent.join("stockade-hostile-dotdot").exists());
        assert_eq!(
            std::fs::read_to_string(HARDLINK_TARGET).unwrap(),
            "canary\n"
        );
        assert_eq!(std::fs::metadata(HARDLINK_TARGET).unwrap().nlink(), 1);
        assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd);
        assert_eq!(
            std::fs::metadata("/etc/passwd").unwrap().nlink(),
            passwd_links
        );
    }
    // A device node (here /dev/mem) is left out, as an unprivileged
    // engine does: the layer unpacks without it and nothing is made on
    // the host.
    let r = reg.push_raw("hostile/device", "h/device:latest");
    pulled(&env, &[&r]);
    assert_tmp_empty(&env);
    let layers = store_root(&env).join("layers");
    for e in std::fs::read_dir(&layers).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            assert!(
                !p.join("dev/mem").exists()
                    && std::fs::symlink_metadata(p.join("dev/mem")).is_err(),
                "{} holds a device node",
                p.display()
            );
        }
    }
    let info: Vec<serde_json::Value> = std::fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .collect();
    assert!(
        info.iter().any(|i| i["skipped_devices"] == 1),
        "no layer says it left a device out: {info:?}"
    );
    let out = env.cmd().args(["rmi", &r]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // The good image is still whole and runs.
    assert_eq!(images_json(&env)[0]["digest"], good.as_str());
    assert_eq!(
        run_ok(&env, &busybox_ref(), &[], "cat /l5file"),
        "from layer 5\n"
    );
    let _ = std::fs::remove_file(HARDLINK_TARGET);
}

/// An absolute path in a layer is taken as relative to the image's root
/// (as tar and Docker do): inside the image, never on the host.
#[test]
#[ignore = "needs root: registries, image store, namespaces"]
fn absolute_paths_land_inside_the_image() {
    let env = Env::new();
    let r = Registry::plain().push_raw("hostile/abspath", "h/abspath:latest");
    pulled(&env, &[&r]);
    assert!(!Path::new("/etc/stockade-hostile-abs").exists());
    // The image has no shell: look at its unpacked layer.
    let layers = store_root(&env).join("layers");
    let inside: Vec<_> = std::fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("etc/stockade-hostile-abs"))
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(inside.len(), 1, "not unpacked under the layer's root");
    assert_eq!(
        std::fs::read_to_string(&inside[0]).unwrap(),
        "inside the image\n"
    );
}

// ---- local sources, compression, sharing -----------------------------------

#[test]
#[ignore = "needs root: registries, image store, namespaces"]
fn local_sources_and_compressions_share_layers() {
    let env = Env::new();
    let dir = |n: &str| registry::image(n).to_str().unwrap().to_owned();
    let sources = [
        format!("oci:{}:latest", dir("busybox")),
        format!("oci-archive:{}", dir("busybox.oci.tar")),
        format!("docker-archive:{}", dir("busybox.docker.tar")),
        format!("oci:{}:latest", dir("busybox-zstd")),
        format!("oci:{}:latest", dir("busybox-plain")),
    ];
    for s in &sources {
        pulled(&env, &[s]);
        // Same diff_ids whatever the compression: unpacked once.
        assert_eq!(layer_count(&env), 5, "after {s}");
        let out = run_ok(
            &env,
            s,
            &["--pull", "never"],
            "cat /opq/c /l5file /data/modified",
        );
        assert_eq!(out, "c\nfrom layer 5\nlayer2\n", "{s}");
    }
    assert_tmp_empty(&env);
}

/// A second pull of the same image fetches no layer: the registry's layer
/// blobs are deleted between the two pulls and the second still works.
#[test]
#[ignore = "needs root: registries, image store, namespaces"]
fn second_pull_downloads_nothing() {
    let reg = Registry::new(Kind::Plain);
    let r = reg.push("busybox", "twice/busybox:latest");
    let env = Env::new();
    let first = pulled(&env, &[&r]);
    let m = reg.manifest("twice/busybox:latest");
    for l in m["layers"].as_array().unwrap() {
        std::fs::remove_file(reg.blob_path(l["digest"].as_str().unwrap())).unwrap();
    }
    assert_eq!(pulled(&env, &[&r]), first);
    // And a fresh store cannot: the blobs really are gone.
    pull_fails(&Env::new(), &[&r], &[]);
}

#[test]
#[ignore = "needs root: registries, image store, namespaces"]
fn concurrent_pulls_unpack_once() {
    let env = Env::new();
    let r = Registry::plain().push("debian-python", "t/debian-python:latest");
    let children: Vec<_> = (0..2)
        .map(|_| {
            env.cmd()
                .args(["pull", "--quiet", &r])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outs {
        assert_eq!(code(o), 0, "{}", stderr(o));
    }
    assert_eq!(
        stdout(&outs[0]).lines().last(),
        stdout(&outs[1]).lines().last()
    );
    assert_eq!(layer_count(&env), 1);
    assert_eq!(images_json(&env).len(), 1);
    assert_tmp_empty(&env);
}

// ---- rmi and prune ------------------------------------------------------------

#[test]
#[ignore = "needs root: registries, image store, namespaces"]
fn rmi_is_refused_while_a_sandbox_uses_the_image() {
    let env = Env::new();
    let r = busybox_ref();
    pulled(&env, &[&r]);
    let sync = tempfile::tempdir().unwrap();
    let mut child = env
        .cmd()
        .args(["run", "--image", &r, "--ro-bind"])
        .arg(format!("{}:/sync", sync.path().display()))
        .args([
            "--",
            "sh",
            "-c",
            "echo ready; while [ ! -e /sync/go ]; do sleep 0.05; done; cat /l5file",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "ready\n");
    let out = env.cmd().args(["rmi", &r]).output().unwrap();
    assert_ne!(code(&out), 0, "rmi of an image in use succeeded");
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));
    let out = env.cmd().args(["image", "prune"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(layer_count(&env), 5, "prune removed layers in use");
    std::fs::write(sync.path().join("go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "from layer 5\n");
    // `run` returns before its detached cleaner has finished the teardown,
    // which releases the lease last: the image is free moments later.
    let mut out = env.cmd().args(["rmi", &r]).output().unwrap();
    for _ in 0..200 {
        if code(&out) == 0 || !stderr(&out).contains("in use") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        out = env.cmd().args(["rmi", &r]).output().unwrap();
    }
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(images_json(&env).is_empty());
    let out = env.cmd().args(["image", "prune"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(layer_count(&env), 0, "prune left unreferenced layers");
    assert_tmp_empty(&env);
}

#[test]
#[ignore = "needs root: registries, image store, namespaces"]
fn prune_keeps_layers_of_remaining_images() {
    let env = Env::new();
    let reg = Registry::plain();
    let bb = busybox_ref();
    let deb = reg.push("debian-python", "t/debian-python:latest");
    pulled(&env, &[&bb]);
    pulled(&env, &[&deb]);
    assert_eq!(layer_count(&env), 6);
    let out = env.cmd().args(["rmi", &deb]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = env.cmd().args(["image", "prune"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(layer_count(&env), 5);
    assert_eq!(run_ok(&env, &bb, &[], "cat /l2file"), "from layer 2\n");
}

// ---- running on images ----------------------------------------------------------

#[test]
#[ignore = "needs root: registries, image store, namespaces"]
fn busybox_image_files_and_config() {
    let env = Env::new();
    let r = busybox_ref();
    pulled(&env, &[&r]);
    let script = "stat -c '%u %g' /bin/busybox /etc/passwd /data/owned; \
                  ls /opq; test -e /gone && echo GONE-STILL-THERE; cat /data/modified; \
                  stat -c %a /usr/bin/suidfile; \
                  [ $(stat -c %i /data/hl1) = $(stat -c %i /data/hl2) ] && echo hardlinked; \
                  readlink /data/link; id -u; pwd; echo $FOO; \
                  grep NoNewPrivs /proc/self/status; /usr/bin/suidfile";
    let out = run_ok(&env, &r, &[], script);
    assert_eq!(
        out,
        "0 0\n0 0\n1234 1234\nc\nlayer2\n4755\nhardlinked\nhl1\n1234\n/srv\nbar\n\
         NoNewPrivs:\t1\n1234\n"
    );
    // Flags override the config.
    let out = run_ok(
        &env,
        &r,
        &["--user", "0", "--cwd", "/tmp", "-e", "FOO=baz"],
        "id -u; pwd; echo $FOO",
    );
    assert_eq!(out, "0\n/tmp\nbaz\n");
    // Cmd, and Entrypoint + arguments, as Docker does.
    let out = env.run(&["--image", &r]);
    assert_eq!(stdout(&out), "from-cmd\n", "{}", stderr(&out));
    let ep = Registry::plain().push_tag("busybox", "entrypoint", "t/busybox:entrypoint");
    let out = env.run(&["--image", &ep]);
    assert_eq!(stdout(&out), "ep: default-arg\n", "{}", stderr(&out));
    let out = env.run(&["--image", &ep, "--", "given"]);
    assert_eq!(stdout(&out), "ep: given\n", "{}", stderr(&out));
}

#[test]
#[ignore = "needs root: registries, image store, namespaces"]
fn writes_go_to_a_private_upper_thrown_away() {
    let env = Env::new();
    let r = busybox_ref();
    pulled(&env, &[&r]);
    let out = run_ok(
        &env,
        &r,
        &["--user", "0"],
        "echo changed > /l5file; rm /l2file; touch /srv/new; cat /l5file; ls /srv",
    );
    assert_eq!(out, "changed\nnew\n");
    let out = run_ok(&env, &r, &[], "cat /l5file /l2file; ls /srv");
    assert_eq!(out, "from layer 5\nfrom layer 2\n");
    // The store's layers were not written either.
    let layers = store_root(&env).join("layers");
    let found = std::fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .any(|e| e.path().join("l5file").is_file());
    assert!(found, "no layer holds l5file");
    for e in std::fs::read_dir(&layers).unwrap().flatten() {
        let f = e.path().join("l5file");
        if f.is_file() {
            assert_eq!(std::fs::read_to_string(f).unwrap(), "from layer 5\n");
        }
        assert!(!e.path().join("srv/new").exists());
    }
}

#[test]
#[ignore = "needs root: registries, image store, namespaces"]
fn debian_image_runs_python_and_pip_installs_into_the_overlay() {
    let env = Env::new();
    let r = Registry::plain().push("debian-python", "t/debian-python:latest");
    pulled(&env, &[&r]);
    assert_eq!(run_ok(&env, &r, &[], "python3 -c 'print(6*7)'"), "42\n");
    // The image's /usr, not the host's.
    let out = run_ok(
        &env,
        &r,
        &[],
        "stat -c '%u %g' /usr/bin/python3; . /etc/os-release; echo $VERSION_CODENAME",
    );
    assert_eq!(out, "0 0\nbookworm\n");
    let wheels = registry::image("wheels");
    let bind = format!("{}:/wheels", wheels.display());
    let out = run_ok(
        &env,
        &r,
        &["--root", "--ro-bind", &bind],
        "python3 -m pip install -q --no-index --break-system-packages \
           /wheels/stockade_hello-1.0-py3-none-any.whl >/dev/null 2>&1; \
         python3 -c 'import stockade_hello; print(stockade_hello.hello())'",
    );
    assert_eq!(out, "hello from the wheel\n");
    // A venv works too.
    let out = run_ok(
        &env,
        &r,
        &["--ro-bind", &bind, "--cwd", "/tmp"],
        "python3 -m venv /tmp/v && /tmp/v/bin/pip install -q --no-index \
           /wheels/stockade_hello-1.0-py3-none-any.whl >/dev/null 2>&1; \
         /tmp/v/bin/python -c 'import stockade_hello; print(stockade_hello.hello())'",
    );
    assert_eq!(out, "hello from the wheel\n");
    // The next sandbox starts from the image again.
    let out = run_image(&env, &r, &[], "python3 -c 'import stockade_hello'");
    assert_ne!(code(&out), 0, "the install leaked into the image");
}

#[test]
#[ignore = "needs root: registries, image store, namespaces"]
fn debian_image_dpkg_and_apt_queries_as_root() {
    let env = Env::new();
    let r = Registry::plain().push("debian-python", "t/debian-python:latest");
    pulled(&env, &[&r]);
    let out = run_ok(
        &env,
        &r,
        &["--root"],
        "id -u; dpkg -l python3 | grep -c '^ii'; apt-cache policy python3 | grep -c 'Installed: 3'",
    );
    assert_eq!(out, "0\n1\n1\n");
}

// ---- limits (at the library level: the CLI has no flag for them) -----------

fn lib_pull(
    layout: &str,
    limits: stockade_image::StoreLimits,
) -> (
    tempfile::TempDir,
    Result<stockade_image::Image, stockade_image::PullError>,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = stockade_image::Store::open(&dir.path().join("images"), limits).unwrap();
    let src =
        stockade_image::Source::parse(&format!("oci:{}:latest", registry::image(layout).display()))
            .unwrap();
    let res = stockade_image::pull(&store, &src, &Default::default(), &mut |_| {});
    (dir, res)
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    n
}

/// A gzip layer of 2 MB that unpacks to 2 GiB stops at the layer limit,
/// leaves nothing behind and uses no more disk than the limit.
#[test]
#[ignore = "needs root: builds images under /var/cache"]
fn decompression_bomb_is_bounded() {
    registry::images();
    let limits = stockade_image::StoreLimits {
        max_layer_bytes: 64 << 20,
        ..Default::default()
    };
    let (dir, res) = lib_pull("hostile/bomb", limits);
    let err = res.expect_err("the bomb was unpacked");
    let msg = stockade_isolate::error_chain(&err);
    assert!(msg.contains("limit"), "{msg}");
    let root = dir.path().join("images");
    let left: Vec<_> = std::fs::read_dir(root.join("tmp"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "tmp holds {left:?}");
    assert!(
        dir_bytes(&root) < 80 << 20,
        "the store holds {} bytes",
        dir_bytes(&root)
    );
}

#[test]
#[ignore = "needs root: builds images under /var/cache"]
fn too_many_files_is_bounded() {
    registry::images();
    let limits = stockade_image::StoreLimits {
        max_layer_entries: 10_000,
        ..Default::default()
    };
    let (_dir, res) = lib_pull("hostile/many-files", limits);
    let err = res.expect_err("300k entries were unpacked past a 10k limit");
    let msg = stockade_isolate::error_chain(&err);
    assert!(msg.contains("10000") || msg.contains("entries"), "{msg}");
}
