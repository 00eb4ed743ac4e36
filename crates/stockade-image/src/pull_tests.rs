//! `pull` and `ensure` end to end into a real store (these need the store
//! and root: the store shifts owners as it unpacks), from an OCI layout
//! and from the fake loopback registry; and the parts that need neither.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};

use super::*;
use crate::manifest::{OCI_CONFIG, OCI_LAYER, OCI_LAYER_GZIP, OCI_MANIFEST};
use crate::store::StoreLimits;
use crate::testreg::{FakeRegistry, Req, Resp};

#[test]
fn ids_and_digests_are_told_from_names() {
    assert!(looks_like_id("0123456789ab"));
    assert!(looks_like_id(&format!("sha256:{}", "a".repeat(64))));
    assert!(!looks_like_id("0123456789a"));
    assert!(!looks_like_id("python"));
    assert!(!looks_like_id("0123456789abXY"));
    assert!(!looks_like_id(&"a".repeat(65)));
}

#[test]
fn pull_policy_parses() {
    assert_eq!("never".parse::<PullPolicy>().unwrap(), PullPolicy::Never);
    assert!("sometimes"
        .parse::<PullPolicy>()
        .unwrap_err()
        .contains("missing, always or never"));
}

/// A layer tar holding `name` with `content`.
fn layer_tar(name: &str, content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    b.append_data(&mut h, name, content).unwrap();
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A two-layer image (one gzip, one plain): blobs by digest, the
/// manifest's bytes and digest.
fn test_image() -> (HashMap<Digest, Vec<u8>>, Vec<u8>, Digest) {
    let l1 = layer_tar("hello", b"hello from layer one\n");
    let l2 = layer_tar("second", b"two\n");
    let l1gz = gzip(&l1);
    let config = serde_json::json!({
        "architecture": crate::platform::Platform::host().arch, "os": "linux",
        "config": {"Cmd": ["/hello"], "Env": ["A=1"]},
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&l1).to_string(), Digest::of(&l2).to_string()]},
    })
    .to_string()
    .into_bytes();
    let desc = |m: &str, b: &[u8]| serde_json::json!({"mediaType": m, "digest": Digest::of(b).to_string(), "size": b.len()});
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG, &config),
        "layers": [desc(OCI_LAYER_GZIP, &l1gz), desc(OCI_LAYER, &l2)],
    })
    .to_string()
    .into_bytes();
    let d = Digest::of(&manifest);
    let mut blobs = HashMap::new();
    for b in [config, l1gz, l2, manifest.clone()] {
        blobs.insert(Digest::of(&b), b);
    }
    (blobs, manifest, d)
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("images"), StoreLimits::default()).unwrap();
    (dir, s)
}

fn record(events: &Arc<Mutex<Vec<Progress>>>) -> impl FnMut(&Progress) + '_ {
    move |p: &Progress| events.lock().unwrap().push(p.clone())
}

#[test]
#[ignore = "needs root: the store chowns unpacked files into the disk id block"]
fn pull_from_a_loopback_registry_then_again_without_downloading() {
    let (blobs, manifest, digest) = test_image();
    let reg = FakeRegistry::start(move |req: &Req| {
        if req.path == "/v2/t/app/manifests/v1" {
            return Resp::new(200)
                .header("Content-Type", OCI_MANIFEST)
                .body(manifest.clone());
        }
        match req
            .path
            .strip_prefix("/v2/t/app/blobs/")
            .and_then(|d| d.parse::<Digest>().ok())
            .and_then(|d| blobs.get(&d))
        {
            Some(b) => Resp::new(200).body(b.clone()),
            None => Resp::new(404),
        }
    });
    let (_dir, store) = store();
    let name = format!("{}/t/app:v1", reg.host());
    let events = Arc::new(Mutex::new(Vec::new()));
    let img = ensure(
        &store,
        &name,
        PullPolicy::Missing,
        &PullOptions::default(),
        &mut record(&events),
    )
    .unwrap();
    assert_eq!(img.digest, digest);
    assert_eq!(img.names, vec![name.clone()]);
    assert_eq!(img.layers.len(), 2);
    assert_eq!(img.config.cmd, Some(vec!["/hello".to_string()]));
    let dirs = store.layer_dirs(&img);
    assert_eq!(
        std::fs::read(dirs[0].join("hello")).unwrap(),
        b"hello from layer one\n"
    );
    let ev = events.lock().unwrap().clone();
    assert!(matches!(&ev[0], Progress::Resolved { layers, .. } if layers.iter().all(|l| !l.2)));
    assert!(ev.iter().any(|e| matches!(e, Progress::Downloading { .. })));
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Progress::LayerDone { .. }))
            .count(),
        2
    );

    // Present: `missing` does not ask the registry again.
    let asked = reg.requests.lock().unwrap().len();
    ensure(
        &store,
        &name,
        PullPolicy::Missing,
        &PullOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(reg.requests.lock().unwrap().len(), asked);
    // `always` asks for the manifest, but downloads no layer.
    events.lock().unwrap().clear();
    ensure(
        &store,
        &name,
        PullPolicy::Always,
        &PullOptions::default(),
        &mut record(&events),
    )
    .unwrap();
    let ev = events.lock().unwrap().clone();
    assert!(matches!(&ev[0], Progress::Resolved { layers, .. } if layers.iter().all(|l| l.2)));
    assert!(!ev
        .iter()
        .any(|e| matches!(e, Progress::Downloading { .. } | Progress::Unpacking { .. })));
    assert!(!reg.paths()[asked..].iter().any(|p| p.contains("/blobs/")));
    // By id.
    let by_id = ensure(
        &store,
        &digest.hex()[..12],
        PullPolicy::Never,
        &PullOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(by_id.digest, digest);
}

#[test]
#[ignore = "needs root: the store chowns unpacked files into the disk id block"]
fn never_policy_refuses_an_absent_image() {
    let (_dir, store) = store();
    let e = ensure(
        &store,
        "localhost:1/none:v1",
        PullPolicy::Never,
        &PullOptions::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(e, PullError::Store(StoreError::NotFound(_))),
        "{e}"
    );
}

#[test]
#[ignore = "needs root: the store chowns unpacked files into the disk id block"]
fn truncated_layer_leaves_no_image() {
    let (blobs, manifest, _) = test_image();
    let reg = FakeRegistry::start(move |req: &Req| {
        if req.path.ends_with("/manifests/v1") {
            return Resp::new(200).body(manifest.clone());
        }
        let d: Option<Digest> = req.path.rsplit('/').next().and_then(|d| d.parse().ok());
        match d.and_then(|d| blobs.get(&d)) {
            // Layers arrive cut in half, the length claiming the whole.
            Some(b) if b.len() > 300 => Resp {
                status: 200,
                body: b[..b.len() / 2].to_vec(),
                lie_length: Some(b.len()),
                ..Resp::default()
            },
            Some(b) => Resp::new(200).body(b.clone()),
            None => Resp::new(404),
        }
    });
    let (_dir, store) = store();
    let name = format!("{}/t/app:v1", reg.host());
    assert!(ensure(
        &store,
        &name,
        PullPolicy::Missing,
        &PullOptions::default(),
        &mut |_| {}
    )
    .is_err());
    assert!(store.resolve(&name).unwrap().is_none());
}

#[test]
#[ignore = "needs root: the store chowns unpacked files into the disk id block"]
fn pull_from_an_oci_layout() {
    let (blobs, manifest, digest) = test_image();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("lay");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    for (d, b) in &blobs {
        std::fs::write(layout.join("blobs/sha256").join(d.hex()), b).unwrap();
    }
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": digest.to_string(), "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    let (_sdir, store) = store();
    let name = format!("oci:{}:v1", layout.display());
    let img = ensure(
        &store,
        &name,
        PullPolicy::Missing,
        &PullOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(img.digest, digest);
    assert_eq!(img.names, vec!["localhost/lay:v1".to_string()]);
}
