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
