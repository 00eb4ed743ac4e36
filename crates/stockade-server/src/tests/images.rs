//! `/v1/images`: pulls from a local OCI layout the test writes (no
//! registry, no network beyond loopback), listing, inspecting, removing,
//! pruning, and the errors a client can cause.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use stockade_client::{Client, ClientError, SseEvent};
use stockade_image::{Digest, Store, StoreLimits};

use super::harness::{eventually, shared, TestDaemon};
use crate::testing::FakeBackend;

fn api_err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String, String) {
    match r {
        Err(ClientError::Api {
            status,
            code,
            message,
        }) => (status, code, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn platform_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A one-layer OCI image layout at `dir` (tag `latest`); returns the
/// manifest's digest.
fn write_layout(dir: &Path, marker: &str) -> Digest {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> (Digest, usize) {
        let d = Digest::of(bytes);
        std::fs::write(blobs.join(d.hex()), bytes).unwrap();
        (d, bytes.len())
    };
    let mut layer = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        layer.append_data(&mut h, path, data).unwrap();
    };
    add("etc/marker", marker.as_bytes(), 0o644);
    add("bin/tool", b"#!/bin/sh\necho tool\n", 0o755);
    let layer = layer.into_inner().unwrap();
    let (layer_digest, layer_size) = put(&layer);
    let config = json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": platform_arch(),
        "os": "linux",
        "config": {"Cmd": ["/bin/tool"], "Env": ["MARKER=".to_string() + marker]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest.to_string()]},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest.to_string(),
            "size": layer_size,
        }],
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest.to_string(),
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    manifest_digest
}

/// A daemon whose clients may name sources under `dir`, and a layout
/// `dir/app` in it.
fn daemon_with_layout(dir: &Path) -> (TestDaemon, PathBuf, Digest) {
    let layout = dir.join("app");
    let digest = write_layout(&layout, "one");
    let allowed = dir.to_path_buf();
    let d = TestDaemon::start_with(dir, FakeBackend::new(dir.join("roots")), |cfg| {
        cfg.bind_roots = vec![allowed];
    });
    (d, layout, digest)
}

fn pull(
    c: &Client,
    source: &str,
) -> (
    Result<stockade_client::PulledImage, ClientError>,
    Vec<SseEvent>,
) {
    let mut events = Vec::new();
    let r = c.pull_image(source, &mut |e| events.push(e.clone()));
    (r, events)
}

#[test]
#[ignore = "needs root: the store gives unpacked files the image id block's owners"]
fn a_pull_streams_its_progress_and_the_image_is_listed_and_inspected() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let (d, layout, digest) = daemon_with_layout(tmp.path());
    let c = d.client();
    let source = format!("oci:{}:latest", layout.display());
    let (image, events) = pull(&c, &source);
    let image = image.unwrap();
    assert_eq!(image.digest, digest.to_string());
    assert!(image.size > 0, "{image:?}");
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"resolved"), "{names:?}");
    assert!(names.contains(&"layer-done"), "{names:?}");
    let resolved = events[0].json();
    assert_eq!(resolved["digest"], digest.to_string());
    assert_eq!(resolved["layers"][0]["present"], false);

    let listed = c.images().unwrap();
    assert!(
        listed.iter().any(|s| s.digest == digest.to_string()),
        "{listed:?}"
    );
    // By digest, by a 12-digit prefix, and by the name the pull recorded
    // (its `/` as is in the path).
    for key in [
        digest.to_string(),
        digest.hex()[..12].to_string(),
        image.names[0].clone(),
    ] {
        let shown = c.inspect_image(&key).unwrap();
        assert_eq!(shown["digest"], digest.to_string(), "{key}");
        assert_eq!(
            shown["config"]["config"]["Cmd"],
            json!(["/bin/tool"]),
            "{key}"
        );
        assert_eq!(shown["created"], "2024-01-01T00:00:00Z");
    }
    let r = c
        .raw("GET", &format!("/v1/images/{}", image.names[0]), &[], None)
        .unwrap();
    assert_eq!(r.status, 200, "a raw / in the path works too");

    // Pulled again, without a stream: every layer is already there.
    let r = c
        .raw(
            "POST",
            "/v1/images/pull?stream=false",
            &[],
            Some((
                "application/json",
                json!({"image": source}).to_string().as_bytes(),
            )),
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let again: Value = serde_json::from_slice(&r.bytes(1 << 20).unwrap()).unwrap();
    assert_eq!(again["digest"], digest.to_string());
    let (_, events) = pull(&c, &source);
    assert_eq!(events[0].json()["layers"][0]["present"], true, "{events:?}");
}

#[test]
#[ignore = "needs root: the store gives unpacked files the image id block's owners"]
fn remove_and_prune_say_what_went_and_refuse_an_image_in_use() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let (d, layout, digest) = daemon_with_layout(tmp.path());
    let c = d.client();
    let image = pull(&c, &format!("oci:{}:latest", layout.display()))
        .0
        .unwrap();
    let name = image.names[0].clone();

    // A live sandbox's lease (as its supervisor would hold it).
    let store = Store::open(
        &Store::under_state_dir(&tmp.path().join("state")),
        StoreLimits::default(),
    )
    .unwrap();
    let held = store.resolve(&digest.to_string()).unwrap().unwrap();
    let lease = store.lease(&held, "0123456789ab").unwrap();
    let (status, code, message) = api_err(c.remove_image(&name, false));
    assert_eq!((status, code.as_str()), (409, "conflict"), "{message}");
    assert!(message.contains("0123456789ab"), "{message}");
    assert!(message.contains("force"), "{message}");
    drop(lease);

    let removed = c.remove_image(&name, false).unwrap();
    assert_eq!(removed.untagged, std::slice::from_ref(&name));
    assert_eq!(removed.images, [digest.to_string()]);
    let (status, code, message) = api_err(c.remove_image(&name, false));
    assert_eq!((status, code.as_str()), (404, "not_found"), "{message}");
    assert!(c.images().unwrap().is_empty());
    let pruned = c.prune_images().unwrap();
    assert!(pruned.images.is_empty(), "{pruned:?}");
}

#[test]
#[ignore = "needs root: the store gives unpacked files the image id block's owners"]
fn a_client_that_goes_away_does_not_stop_the_pull() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let (d, layout, digest) = daemon_with_layout(tmp.path());
    let c = d.client();
    let body = json!({ "image": format!("oci:{}:latest", layout.display()) }).to_string();
    let resp = c
        .raw(
            "POST",
            "/v1/images/pull",
            &[("Accept", "text/event-stream")],
            Some(("application/json", body.as_bytes())),
        )
        .unwrap();
    assert_eq!(resp.status, 200);
    drop(resp);
    eventually(30, || {
        c.images()
            .unwrap()
            .iter()
            .any(|s| s.digest == digest.to_string())
            .then_some(())
    });
    assert!(c.inspect_image(&digest.to_string()).is_ok());
}

#[test]
fn bad_requests_are_refused_with_what_to_do() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    // Not a reference at all.
    let (status, code, message) = api_err(pull(&c, "Not A Reference").0);
    assert_eq!(
        (status, code.as_str()),
        (400, "invalid_request"),
        "{message}"
    );
    assert!(message.contains("Not A Reference"), "{message}");
    // A path on the daemon's host it does not allow.
    let (status, code, message) = api_err(pull(&c, "oci:/etc:latest").0);
    assert_eq!(
        (status, code.as_str()),
        (403, "host_path_not_allowed"),
        "{message}"
    );
    assert!(message.contains("--allow-bind-root"), "{message}");
    // The same path as a sandbox's image, in the body or in its policy:
    // the shim would read it as host root. (Tasks go through the same
    // `prepare_image`; this test daemon has no binary to run tasks with.)
    for (path, body) in [
        ("/v1/sandboxes", r#"{"image": "oci:/etc:latest"}"#),
        (
            "/v1/sandboxes",
            r#"{"policy": {"filesystem": {"image": "oci-archive:/etc/shadow"}}}"#,
        ),
    ] {
        let r = c
            .raw(
                "POST",
                path,
                &[],
                Some(("application/json", body.as_bytes())),
            )
            .unwrap();
        let status = r.status;
        let text = String::from_utf8_lossy(&r.bytes(1 << 20).unwrap()).to_string();
        assert!(
            status == 403 && text.contains("host_path_not_allowed"),
            "{path} {body}: {status} {text}"
        );
    }
    // Unknown fields and parameters.
    let r = c
        .raw(
            "POST",
            "/v1/images/pull",
            &[],
            Some(("application/json", br#"{"image": "busybox", "tag": "x"}"#)),
        )
        .unwrap();
    assert_eq!(r.status, 400);
    let r = c.raw("GET", "/v1/images?all=1", &[], None).unwrap();
    assert_eq!(r.status, 400);
    let r = c
        .raw("DELETE", "/v1/images/busybox?force=maybe", &[], None)
        .unwrap();
    assert_eq!(r.status, 400);
}

#[test]
fn unknown_images_are_404_and_an_unreachable_registry_502() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let (status, code, _) = api_err(c.inspect_image("docker.io/library/never-pulled:1"));
    assert_eq!((status, code.as_str()), (404, "not_found"));
    let (status, _, message) = api_err(c.remove_image("never-pulled:1", false));
    assert_eq!(status, 404, "{message}");
    assert!(message.contains("never-pulled"), "{message}");
    // Nothing listens on port 1 of loopback.
    let (status, code, message) = api_err(pull(&c, "127.0.0.1:1/nothing:1").0);
    assert_eq!(
        (status, code.as_str()),
        (502, "registry_unreachable"),
        "{message}"
    );
    assert!(message.contains("127.0.0.1:1"), "{message}");
}
