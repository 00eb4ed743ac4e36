//! User and group id maps of a sandbox's user namespace.
//!
//! Root inside the sandbox is never root outside: ids 0..65536 inside map
//! to a block of otherwise unused host ids starting at [`HOST_ID_BASE`].
//! The one exception is the `agent` user (uid 1000 inside), which maps to
//! the owner of the bound workspace so the files the agent creates there
//! belong to that person on the host — unless the owner is host root, in
//! which case the agent keeps its id from the block, since nothing in a
//! sandbox may ever own files as host root.

use std::fmt::Write as _;

/// First host id of stockade's block. High enough to stay clear of system
/// users, regular users and the usual /etc/subuid ranges.
pub const HOST_ID_BASE: u32 = 2_000_000_000;
/// Number of ids mapped into each sandbox.
pub const MAPPED_IDS: u32 = 65536;
/// The agent's id inside the sandbox.
pub const AGENT_ID: u32 = 1000;

/// One line of `/proc/PID/uid_map`: `inside outside count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// A complete id map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap {
    pub extents: Vec<Extent>,
}

impl IdMap {
    /// The standard map: the block, with the agent's id pointed at
    /// `agent_host_id` when that is a real, non-root host id.
    pub fn for_sandbox(agent_host_id: Option<u32>) -> IdMap {
        let base = HOST_ID_BASE;
        match agent_host_id {
            Some(id) if id != 0 && !(base..base + MAPPED_IDS).contains(&id) => IdMap {
                extents: vec![
                    Extent {
                        inside: 0,
                        outside: base,
                        count: AGENT_ID,
                    },
                    Extent {
                        inside: AGENT_ID,
                        outside: id,
                        count: 1,
                    },
                    Extent {
                        inside: AGENT_ID + 1,
                        outside: base + AGENT_ID + 1,
                        count: MAPPED_IDS - AGENT_ID - 1,
                    },
                ],
            },
            _ => IdMap {
                extents: vec![Extent {
                    inside: 0,
                    outside: base,
                    count: MAPPED_IDS,
                }],
            },
        }
    }

    /// A map of a single id, for an unprivileged caller who may only map
    /// itself.
    pub fn single(inside: u32, outside: u32) -> IdMap {
        IdMap {
            extents: vec![Extent {
                inside,
                outside,
                count: 1,
            }],
        }
    }

    /// The host id that `inside` maps to.
    pub fn to_host(&self, inside: u32) -> Option<u32> {
        self.extents.iter().find_map(|e| {
            (inside >= e.inside && inside - e.inside < e.count)
                .then(|| e.outside + (inside - e.inside))
        })
    }

    /// The text the kernel expects in `uid_map`/`gid_map`.
    pub fn to_proc_format(&self) -> String {
        let mut s = String::new();
        for e in &self.extents {
            let _ = writeln!(s, "{} {} {}", e.inside, e.outside, e.count);
        }
        s
    }
}

/// Writes both maps for `pid`. `setgroups` is left allowed: the writer is
/// privileged over the parent namespace, so the kernel does not require it
/// to be denied, and the workload needs `setgroups(0)` to shed host groups.
pub fn write_maps(
    pid: i32,
    uids: &IdMap,
    gids: &IdMap,
    deny_setgroups: bool,
) -> std::io::Result<()> {
    let dir = format!("/proc/{pid}");
    std::fs::write(format!("{dir}/uid_map"), uids.to_proc_format())?;
    if deny_setgroups {
        std::fs::write(format!("{dir}/setgroups"), "deny")?;
    }
    std::fs::write(format!("{dir}/gid_map"), gids.to_proc_format())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_root_is_never_host_root() {
        for agent in [None, Some(0), Some(1000), Some(4242)] {
            let m = IdMap::for_sandbox(agent);
            assert_eq!(m.to_host(0), Some(HOST_ID_BASE), "{agent:?}");
            assert!(m.extents.iter().all(|e| e.outside != 0), "{agent:?}");
        }
    }

    #[test]
    fn agent_maps_to_workspace_owner_unless_root() {
        assert_eq!(IdMap::for_sandbox(Some(4242)).to_host(AGENT_ID), Some(4242));
        assert_eq!(
            IdMap::for_sandbox(Some(0)).to_host(AGENT_ID),
            Some(HOST_ID_BASE + AGENT_ID)
        );
        assert_eq!(
            IdMap::for_sandbox(None).to_host(AGENT_ID),
            Some(HOST_ID_BASE + AGENT_ID)
        );
    }

    #[test]
    fn split_map_covers_the_whole_block_without_overlap() {
        let m = IdMap::for_sandbox(Some(4242));
        let total: u32 = m.extents.iter().map(|e| e.count).sum();
        assert_eq!(total, MAPPED_IDS);
        assert_eq!(m.to_host(999), Some(HOST_ID_BASE + 999));
        assert_eq!(m.to_host(1001), Some(HOST_ID_BASE + 1001));
        assert_eq!(m.to_host(MAPPED_IDS), None);
        assert_eq!(
            m.to_proc_format(),
            format!(
                "0 {b} 1000\n1000 4242 1\n1001 {c} 64535\n",
                b = HOST_ID_BASE,
                c = HOST_ID_BASE + 1001
            )
        );
    }
}
