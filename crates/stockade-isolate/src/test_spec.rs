//! A sandbox spec for unit tests: the paths stockade would choose, a
//! slot's id block, the real seccomp program.

use crate::idmap::IdMap;
use crate::spec::SandboxSpec;

/// A TUN set-up as a caller would pass it (stockade-net's addresses).
pub(crate) const TUN: crate::tun::TunConfig = crate::tun::TunConfig {
    address: std::net::Ipv4Addr::new(198, 18, 0, 2),
    prefix_len: 15,
    gateway: std::net::Ipv4Addr::new(198, 18, 0, 1),
    dns: std::net::Ipv4Addr::new(198, 18, 0, 1),
    mtu: 65535,
};

/// A default sandbox (no overlay, no binds, no network) staged at `staging`.
pub(crate) fn spec(staging: &str) -> SandboxSpec {
    SandboxSpec {
        id: "abc".into(),
        staging: staging.into(),
        etc_dir: "/run/stockade-scratch/etc/e1".into(),
        workspace: "/run/stockade-scratch/s1/workspace".into(),
        home: "/run/stockade-scratch/s1/home".into(),
        overlay: None,
        image: None,
        tmp_size: 1 << 20,
        ro_binds: Vec::new(),
        binds: Vec::new(),
        hostname: "sandbox".into(),
        as_root: false,
        user: None,
        net: None,
        uid_map: IdMap::block(100_000),
        gid_map: IdMap::block(100_000),
        userns_owner: None,
        workspace_idmap: None,
        bind_idmaps: Vec::new(),
        seccomp: crate::seccomp::build().unwrap(),
        rootless: None,
        nproc_limit: None,
    }
}
