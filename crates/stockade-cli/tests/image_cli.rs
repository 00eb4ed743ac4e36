//! The image commands end to end: `stockade pull` from a local OCI layout
//! (tests/images/build.sh makes it; no registry, no network), `images`
//! as a table and as JSON, `image inspect`, `rmi`, `image prune`, and the
//! errors a user can cause. The store unpacks layers with the image id
//! block's owners, which needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{code, stderr, stdout, Env};

/// The busybox OCI layout of tests/images/build.sh (built if missing).
fn busybox() -> PathBuf {
    let root = PathBuf::from(
        std::env::var("STOCKADE_IMAGES").unwrap_or_else(|_| "/var/cache/stockade-images".into()),
    );
    let layout = root.join("busybox");
    if !layout.join("index.json").is_file() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/images/build.sh");
        let st = std::process::Command::new(&script).status().unwrap();
        assert!(st.success(), "{} failed", script.display());
    }
    layout
}

fn source() -> String {
    format!("oci:{}:latest", busybox().display())
}

fn image_cmd(env: &Env, args: &[&str]) -> Output {
    env.cmd().args(args).output().unwrap()
}

/// Pulls busybox; returns its digest (stdout's last line).
fn pull(env: &Env) -> String {
    let o = image_cmd(env, &["pull", &source()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let digest = out.lines().last().unwrap_or("").to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "stdout's last line is not a digest: {out:?}"
    );
    digest
}

/// `o` failed as stockade itself with one line naming `what`.
fn fails_with(o: &Output, what: &str) -> String {
    let err = stderr(o);
    assert_eq!(code(o), 125, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("stockade: "), "{err}");
    assert!(err.contains(what), "{what:?} not in: {err}");
    err
}

#[test]
#[ignore = "needs root: the store gives unpacked files the image id block's owners"]
fn pull_without_a_terminal_writes_one_line_per_event_and_the_digest_last() {
    let env = Env::new();
    let o = image_cmd(&env, &["pull", &source()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
    assert!(
        err.lines().next().unwrap().starts_with("resolved sha256:"),
        "{err}"
    );
    let done = err.lines().filter(|l| l.ends_with(": done")).count();
    assert_eq!(
        done, 5,
        "one `done` line per layer of the 5-layer image: {err}"
    );
    let digest = stdout(&o).lines().last().unwrap().to_string();
    // Again: every layer already exists, and the digest is the same.
    let o = image_cmd(&env, &["image", "pull", &source()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.matches("already exists").count(), 5, "{err}");
    assert_eq!(stdout(&o).lines().last().unwrap(), digest);
    // --quiet: the digest alone.
    let o = image_cmd(&env, &["pull", "--quiet", &source()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    assert_eq!(stdout(&o), format!("{digest}\n"));
}

#[test]
#[ignore = "needs root: the store gives unpacked files the image id block's owners"]
fn images_lists_as_a_table_and_as_json() {
    let env = Env::new();
    let empty = image_cmd(&env, &["images"]);
    assert_eq!(code(&empty), 0, "{}", stderr(&empty));
    assert_eq!(stdout(&empty).lines().count(), 1, "header only");
    let digest = pull(&env);
    let hex = digest.strip_prefix("sha256:").unwrap();

    let o = image_cmd(&env, &["images"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["REPOSITORY", "TAG", "DIGEST", "SIZE", "CREATED"],
        "{out}"
    );
    let row = lines
        .iter()
        .find(|l| l.contains(&hex[..12]))
        .unwrap_or_else(|| panic!("no row with {}: {out}", &hex[..12]));
    assert!(
        !row.contains(hex),
        "the table shows 12 digits, not all: {out}"
    );
    assert_eq!(
        row.find(&hex[..12]),
        lines[0].find("DIGEST"),
        "columns align: {out}"
    );
    assert!(
        row.contains("iB") || row.contains(" B "),
        "a human size: {row}"
    );

    let o = image_cmd(&env, &["images", "--digests"]);
    assert!(stdout(&o).contains(&digest), "{}", stdout(&o));

    let o = image_cmd(&env, &["image", "ls", "--format", "json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let all = v.as_array().expect("a JSON array");
    let me = all.iter().find(|s| s["digest"] == digest).expect("listed");
    for key in ["repository", "tag", "digest", "size", "created"] {
        assert!(me.get(key).is_some(), "{key} missing: {me}");
    }
    assert!(me["size"].as_u64().unwrap() > 0, "{me}");
}

#[test]
#[ignore = "needs root: the store gives unpacked files the image id block's owners"]
fn inspect_rmi_and_prune_say_what_they_did() {
    let env = Env::new();
    let digest = pull(&env);
    let hex = &digest["sha256:".len()..];

    for key in [digest.as_str(), &hex[..12]] {
        let o = image_cmd(&env, &["image", "inspect", key]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["rootfs"]["type"], "layers", "{v}");
        assert_eq!(v["rootfs"]["diff_ids"].as_array().unwrap().len(), 5, "{v}");
    }

    // While a sandbox holds it (its lease, as a supervisor takes one),
    // rmi refuses and names the sandbox.
    let store = stockade_image::Store::open(
        &stockade_image::Store::under_state_dir(env.state.path()),
        stockade_image::StoreLimits::default(),
    )
    .unwrap();
    let image = store.resolve(&digest).unwrap().unwrap();
    let lease = store.lease(&image, "feedfacecafe").unwrap();
    let o = image_cmd(&env, &["rmi", &digest]);
    let err = fails_with(&o, "feedfacecafe");
    assert!(err.contains("--force"), "{err}");
    drop(lease);

    let o = image_cmd(&env, &["rmi", &digest]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.lines().any(|l| l.starts_with("Untagged: ")), "{out}");
    assert!(
        out.lines().any(|l| l == format!("Deleted: {digest}")),
        "{out}"
    );
    assert_eq!(stdout(&image_cmd(&env, &["images"])).lines().count(), 1);

    let o = image_cmd(&env, &["rmi", &digest]);
    fails_with(&o, "no image");
    let o = image_cmd(&env, &["image", "inspect", &digest]);
    fails_with(&o, "no image");

    let o = image_cmd(&env, &["image", "prune"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o)
            .lines()
            .last()
            .unwrap()
            .starts_with("Total reclaimed space: "),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_bad_reference_is_refused_in_one_line() {
    let state = tempfile::tempdir().unwrap();
    for args in [
        &["pull", "Not A Reference"][..],
        &["image", "inspect", "Not A Reference"][..],
        &["rmi", "Not A Reference"][..],
    ] {
        let o = std::process::Command::new(common::BIN)
            .env("STOCKADE_STATE_DIR", state.path())
            .args(args)
            .output()
            .unwrap();
        let err = fails_with(&o, "\"Not A Reference\" is not an image reference");
        assert_eq!(err.matches("Not A Reference").count(), 1, "{err}");
    }
}

#[test]
#[ignore = "needs root: sandboxes"]
fn run_with_pull_never_and_a_missing_image_says_to_pull_it() {
    let env = Env::new();
    let o = env.run(&[
        "--image",
        "localhost/absent:1",
        "--pull",
        "never",
        "--",
        "true",
    ]);
    let err = fails_with(&o, "localhost/absent:1");
    assert!(err.contains("stockade pull"), "{err}");
}
