//! `linux.devices`: device nodes the config lists. A user namespace cannot
//! `mknod`, so a node is bound from the host's `/dev` — and only the
//! harmless ones every container gets anyway (`null`, `zero`, `full`,
//! `random`, `urandom`, `tty`), at whatever path the config names. Any
//! other device (a disk, `/dev/kvm`, `/dev/fuse`, `/dev/mem`, what
//! `--privileged` or `--device` adds) is refused with an error: binding
//! it would hand the container the host's hardware, and silently leaving
//! it out would break the program that asked for it later and less
//! clearly.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// One `linux.devices` entry.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub major: i64,
    #[serde(default)]
    pub minor: i64,
    #[serde(default)]
    pub file_mode: Option<u32>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
}

/// The devices a container may have: (major, minor, the host's node).
const HARMLESS: &[(i64, i64, &str)] = &[
    (1, 3, "/dev/null"),
    (1, 5, "/dev/zero"),
    (1, 7, "/dev/full"),
    (1, 8, "/dev/random"),
    (1, 9, "/dev/urandom"),
    (5, 0, "/dev/tty"),
];

/// The host node to bind for a device, if it is one stockade allows.
pub fn host_node(d: &Device) -> Option<&'static str> {
    if d.kind != "c" && d.kind != "u" {
        return None;
    }
    HARMLESS
        .iter()
        .find(|(ma, mi, _)| *ma == d.major && *mi == d.minor)
        .map(|(_, _, p)| *p)
}

/// Refuses every device that is not one of the harmless ones.
pub fn validate(devices: &[Device]) -> Result<(), ConfigError> {
    for d in devices {
        if !d.path.starts_with('/') {
            return Err(ConfigError::Invalid(format!(
                "linux.devices: path {:?} must be an absolute path",
                d.path
            )));
        }
        if host_node(d).is_none() {
            return Err(ConfigError::Invalid(format!(
                "linux.devices: {} ({} {}:{}) is not allowed: stockade runs containers in a \
                 user namespace, which cannot make device nodes, and binds in only /dev/null, \
                 /dev/zero, /dev/full, /dev/random, /dev/urandom and /dev/tty; remove the device \
                 (docker/podman --device, --privileged)",
                d.path, d.kind, d.major, d.minor
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(path: &str, kind: &str, major: i64, minor: i64) -> Device {
        Device {
            path: path.into(),
            kind: kind.into(),
            major,
            minor,
            ..Default::default()
        }
    }

    #[test]
    fn harmless_devices_pass_and_map_to_the_hosts_nodes() {
        let d = dev("/dev/mynull", "c", 1, 3);
        assert!(validate(std::slice::from_ref(&d)).is_ok());
        assert_eq!(host_node(&d), Some("/dev/null"));
    }

    #[test]
    fn other_devices_are_refused_naming_them() {
        for d in [
            dev("/dev/kvm", "c", 10, 232),
            dev("/dev/sda", "b", 8, 0),
            dev("/dev/null", "b", 1, 3),
            dev("/dev/fuse", "c", 10, 229),
        ] {
            let e = validate(std::slice::from_ref(&d)).unwrap_err().to_string();
            assert!(e.contains(&d.path) && e.contains("not allowed"), "{e}");
        }
    }
}
