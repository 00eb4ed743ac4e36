//! OCI bundles of the test images (`tests/images/build.sh`), for the
//! tests that drive `stockade-runc` as an engine would.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

/// Unpacks test image `name` into `bundle` (rootfs + config.json) with
/// umoci, and sets the process to `args` without a terminal and the
/// cgroup to `/cgroup_rel`.
pub fn unpack(name: &str, bundle: &Path, args: &[&str], cgroup_rel: &str) {
    let image = super::registry::image(name);
    let out = Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:latest", image.display()))
        .arg(bundle)
        .output()
        .expect("run umoci (apt-get install umoci)");
    assert!(
        out.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    edit(bundle, |c| {
        c["process"]["terminal"] = json!(false);
        c["process"]["args"] = json!(args);
        c["linux"]["cgroupsPath"] = json!(format!("/{cgroup_rel}"));
    });
}

/// Changes the bundle's config.json with `f`.
pub fn edit(bundle: &Path, f: impl FnOnce(&mut Value)) {
    let path = bundle.join("config.json");
    let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut c);
    std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
}
