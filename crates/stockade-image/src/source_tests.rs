//! Local sources built by the tests: OCI layouts (directory and tar) and
//! `docker save`-style archives.

use std::io::Write as _;

use super::*;
use crate::manifest::{OCI_INDEX, OCI_LAYER_GZIP};
use crate::platform::Platform;
use crate::pull::resolve;

fn put(dir: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(d.hex()), bytes).unwrap();
    d
}

fn desc(media: &str, d: &Digest, size: usize) -> serde_json::Value {
    serde_json::json!({"mediaType": media, "digest": d.to_string(), "size": size})
}

/// An image (config + one layer) in `dir`'s blobs; returns the manifest
/// bytes and digest.
fn image(dir: &Path, arch: &str, layer: &[u8]) -> (Vec<u8>, Digest) {
    let l = put(dir, layer);
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [l.to_string()]},
    })
    .to_string();
    let c = put(dir, config.as_bytes());
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG, &c, config.len()),
        "layers": [desc(OCI_LAYER, &l, layer.len())],
    })
    .to_string()
    .into_bytes();
    let d = put(dir, &m);
    (m, d)
}

fn write_index(dir: &Path, entries: Vec<serde_json::Value>) {
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let idx = serde_json::json!({"schemaVersion": 2, "manifests": entries});
    std::fs::write(dir.join("index.json"), idx.to_string()).unwrap();
}

fn tagged(mut v: serde_json::Value, tag: &str) -> serde_json::Value {
    v["annotations"] = serde_json::json!({ REF_NAME: tag });
    v
}

fn amd64() -> Platform {
    Platform::parse("linux/amd64").unwrap()
}

fn read_blob(src: &mut dyn Fetch, d: &Digest) -> Vec<u8> {
    let mut b = src.blob(d).unwrap();
    let mut out = Vec::new();
    b.reader.read_to_end(&mut out).unwrap();
    assert_eq!(b.size, Some(out.len() as u64));
    out
}

/// A layout with two tagged images, `v1` and `v2`.
fn two_tags(dir: &Path) -> (Digest, Digest) {
    let (m1, d1) = image(dir, "amd64", b"layer one");
    let (m2, d2) = image(dir, "amd64", b"layer two");
    write_index(
        dir,
        vec![
            tagged(desc(OCI_MANIFEST, &d1, m1.len()), "v1"),
            tagged(desc(OCI_MANIFEST, &d2, m2.len()), "v2"),
        ],
    );
    (d1, d2)
}

#[test]
fn oci_dir_picks_by_tag() {
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2) = two_tags(dir.path());
    let mut src = OciLayout::dir(dir.path(), Some("v2".into())).unwrap();
    let (top, m) = resolve(&mut src, &amd64()).unwrap();
    assert_eq!(top.digest, d2);
    assert_ne!(top.digest, d1);
    assert_eq!(read_blob(&mut src, &m.layers[0].digest), b"layer two");
    let config = read_blob(&mut src, &m.config.digest);
    assert_eq!(Digest::of(&config), m.config.digest);

    let mut src = OciLayout::dir(dir.path(), Some("v3".into())).unwrap();
    let e = resolve(&mut src, &amd64()).unwrap_err();
    assert!(matches!(e, PullError::NoTag { .. }), "{e}");
    assert!(e.to_string().contains("v1, v2"), "{e}");
    // Two images and no tag: which one is meant?
    let mut src = OciLayout::dir(dir.path(), None).unwrap();
    let e = resolve(&mut src, &amd64()).unwrap_err();
    assert!(e.to_string().contains("name one as :TAG"), "{e}");
}

#[test]
fn oci_dir_with_one_untagged_image() {
    let dir = tempfile::tempdir().unwrap();
    let (m, d) = image(dir.path(), "amd64", b"only");
    write_index(dir.path(), vec![desc(OCI_MANIFEST, &d, m.len())]);
    let mut src = OciLayout::dir(dir.path(), None).unwrap();
    assert_eq!(resolve(&mut src, &amd64()).unwrap().0.digest, d);
}

#[test]
fn oci_dir_index_resolves_to_the_platform() {
    let dir = tempfile::tempdir().unwrap();
    let (ma, da) = image(dir.path(), "amd64", b"amd64 layer");
    let (mb, db) = image(dir.path(), "arm64", b"arm64 layer");
    let mut ea = desc(OCI_MANIFEST, &da, ma.len());
    ea["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
    let mut eb = desc(OCI_MANIFEST, &db, mb.len());
    eb["platform"] = serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
    let nested =
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [eb, ea]})
            .to_string();
    let di = put(dir.path(), nested.as_bytes());
    write_index(
        dir.path(),
        vec![tagged(desc(OCI_INDEX, &di, nested.len()), "multi")],
    );

    let mut src = OciLayout::dir(dir.path(), Some("multi".into())).unwrap();
    assert_eq!(resolve(&mut src, &amd64()).unwrap().0.digest, da);
    let arm = Platform::parse("linux/arm64").unwrap();
    assert_eq!(resolve(&mut src, &arm).unwrap().0.digest, db);
    let e = resolve(&mut src, &Platform::parse("linux/s390x").unwrap()).unwrap_err();
    assert!(matches!(e, PullError::NoPlatform { .. }), "{e}");
    assert!(e.to_string().contains("linux/arm64/v8, linux/amd64"), "{e}");
}

#[test]
fn oci_layout_blob_that_does_not_match_its_digest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (m, d) = image(dir.path(), "amd64", b"x");
    write_index(dir.path(), vec![desc(OCI_MANIFEST, &d, m.len())]);
    // Tamper with the manifest after the fact.
    let path = dir.path().join("blobs/sha256").join(d.hex());
    let mut tampered = m.clone();
    tampered.push(b'\n');
    std::fs::write(path, tampered).unwrap();
    let mut src = OciLayout::dir(dir.path(), None).unwrap();
    let e = resolve(&mut src, &amd64()).unwrap_err();
    assert!(matches!(e, PullError::DigestMismatch { .. }), "{e}");
}

#[test]
fn not_a_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = OciLayout::dir(dir.path(), None).unwrap_err();
    assert!(e.to_string().contains("oci-layout"), "{e}");
}

fn tar_dir(dir: &Path, out: &Path) {
    let f = File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

#[test]
fn oci_archive_is_read_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    let (_, d2) = two_tags(&layout);
    let archive = dir.path().join("img.tar");
    tar_dir(&layout, &archive);
    let mut src = OciLayout::archive(&archive, Some("v2".into())).unwrap();
    let (top, m) = resolve(&mut src, &amd64()).unwrap();
    assert_eq!(top.digest, d2);
    assert_eq!(read_blob(&mut src, &m.layers[0].digest), b"layer two");
    // Nothing was extracted next to it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);

    let gz = dir.path().join("img.tar.gz");
    let mut enc =
        flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
    enc.write_all(&std::fs::read(&archive).unwrap()).unwrap();
    enc.finish().unwrap();
    let e = OciLayout::archive(&gz, None).unwrap_err();
    assert!(e.to_string().contains("compressed"), "{e}");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A `docker save` archive: layer 2 is a symlink to layer 1 (as docker
/// writes a repeated layer), layer 3 is gzip-compressed.
fn docker_archive(path: &Path) -> (Vec<u8>, Vec<u8>) {
    let l1 = b"plain layer tar".to_vec();
    let l3 = b"compressed layer tar".to_vec();
    let l3gz = gzip(&l3);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [
            Digest::of(&l1).to_string(), Digest::of(&l1).to_string(), Digest::of(&l3).to_string()]},
    })
    .to_string();
    let manifest = serde_json::json!([{
        "Config": "cfg.json",
        "RepoTags": ["busybox:1.36"],
        "Layers": ["a/layer.tar", "b/layer.tar", "c/layer.tar"],
    }])
    .to_string();
    let mut b = tar::Builder::new(File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add("manifest.json", manifest.as_bytes());
    add("cfg.json", config.as_bytes());
    add("a/layer.tar", &l1);
    add("c/layer.tar", &l3gz);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "b/layer.tar", "../a/layer.tar")
        .unwrap();
    b.finish().unwrap();
    (config.into_bytes(), l3gz)
}

#[test]
fn docker_archive_gets_a_synthetic_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.tar");
    let (config, l3gz) = docker_archive(&path);
    let mut src = DockerArchive::open(&path, None).unwrap();
    let (top, m) = resolve(&mut src, &amd64()).unwrap();
    assert_eq!(top.digest, Digest::of(&top.bytes));
    assert_eq!(m.config.digest, Digest::of(&config));
    assert_eq!(read_blob(&mut src, &m.config.digest), config);
    assert_eq!(m.layers.len(), 3);
    assert_eq!(m.layers[0].media_type, OCI_LAYER);
    assert_eq!(m.layers[0].digest, Digest::of(b"plain layer tar"));
    assert_eq!(m.layers[1], m.layers[0]);
    assert_eq!(m.layers[2].media_type, OCI_LAYER_GZIP);
    assert_eq!(m.layers[2].digest, Digest::of(&l3gz));
    for l in &m.layers {
        let bytes = read_blob(&mut src, &l.digest);
        assert_eq!(Digest::of(&bytes), l.digest);
        assert_eq!(bytes.len() as u64, l.size);
    }
    // The same archive gives the same image digest every time.
    let mut again =
        DockerArchive::open(&path, Some("docker.io/library/busybox:1.36".into())).unwrap();
    assert_eq!(resolve(&mut again, &amd64()).unwrap().0.digest, top.digest);
    let mut other = DockerArchive::open(&path, Some("busybox:1.37".into())).unwrap();
    let e = resolve(&mut other, &amd64()).unwrap_err();
    assert!(e.to_string().contains("busybox:1.36"), "{e}");
}

#[test]
fn docker_archive_with_mismatched_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.tar");
    let mut b = tar::Builder::new(File::create(&path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add(
        "manifest.json",
        br#"[{"Config":"c.json","RepoTags":null,"Layers":["l.tar"]}]"#,
    );
    add("c.json", br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#);
    add("l.tar", b"x");
    b.finish().unwrap();
    let mut src = DockerArchive::open(&path, None).unwrap();
    let e = resolve(&mut src, &amd64()).unwrap_err();
    assert!(e.to_string().contains("names 0 layers"), "{e}");
    // An OCI layout handed to docker-archive: says what to use instead.
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    two_tags(&layout);
    let t = dir.path().join("oci.tar");
    tar_dir(&layout, &t);
    let e = DockerArchive::open(&t, None).unwrap_err();
    assert!(e.to_string().contains("oci-archive:"), "{e}");
}
