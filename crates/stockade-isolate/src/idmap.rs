//! User and group id maps: of a sandbox's user namespace, and of the host
//! directories bound writable into it.
//!
//! Root inside a sandbox is never root outside: ids 0..65536 inside map to
//! the block of host ids of the sandbox's slot (see [`crate::slots`]), a
//! block no other live sandbox has. Host directories the sandbox writes
//! into (`--workspace DIR`, writable binds) are mounted *idmapped* with a
//! [`disk_map`]: on disk, the agent's files belong to the directory's owner
//! and everything else the sandbox creates to the fixed block starting at
//! [`HOST_ID_BASE`] (slot 0, never a live sandbox), whatever slot the
//! sandbox ran in. So a workspace used by many sandboxes in turn keeps
//! stable owners, and nothing on disk is ever owned by host root.

use std::fmt::Write as _;

/// First host id of stockade's ids: the disk identity block (slot 0), and
/// the base the slots count from.
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
    /// Ids 0..[`MAPPED_IDS`] inside mapped to the block starting at `base`.
    pub fn block(base: u32) -> IdMap {
        IdMap {
            extents: vec![Extent {
                inside: 0,
                outside: base,
                count: MAPPED_IDS,
            }],
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

/// The map of an idmapped mount of a host directory the sandbox of slot
/// base `live_base` writes into. Read the extents as `disk-id live-id
/// count`: the agent (inside id [`AGENT_ID`]) stores its files as `owner`,
/// every other id `i` inside as `HOST_ID_BASE + i`. With no owner (a
/// directory owned by host root, which a sandbox must never write as) the
/// agent keeps `HOST_ID_BASE + AGENT_ID` too. Host ids outside the map
/// (host root's files, other users') appear as the overflow id inside and
/// cannot be chowned to.
///
/// An owner that is itself in the disk block (a task workspace owned by
/// `HOST_ID_BASE + AGENT_ID`, say) changes places with the agent's id, so
/// the map stays one-to-one.
pub fn disk_map(live_base: u32, owner: Option<u32>) -> IdMap {
    disk_map_as(live_base, owner, AGENT_ID)
}

/// [`disk_map`] for a workload that runs as `writer` inside rather than as
/// the agent (an image's user, root): `writer` stores its files as `owner`.
pub fn disk_map_as(live_base: u32, owner: Option<u32>, writer: u32) -> IdMap {
    let disk = |inside: u32| HOST_ID_BASE + inside;
    // Inside ids whose disk id is not the block's own, in order.
    let mut special: Vec<(u32, u32)> = Vec::new();
    if let Some(o) = owner.filter(|&o| o != 0 && o != disk(writer)) {
        special.push((writer, o));
        if (HOST_ID_BASE..HOST_ID_BASE + MAPPED_IDS).contains(&o) {
            special.push((o - HOST_ID_BASE, disk(writer)));
        }
    }
    special.sort_unstable();
    let mut extents = Vec::new();
    let mut next = 0;
    let run = |from: u32, to: u32, extents: &mut Vec<Extent>| {
        if to > from {
            extents.push(Extent {
                inside: disk(from),
                outside: live_base + from,
                count: to - from,
            });
        }
    };
    for (inside, on_disk) in special {
        run(next, inside, &mut extents);
        extents.push(Extent {
            inside: on_disk,
            outside: live_base + inside,
            count: 1,
        });
        next = inside + 1;
    }
    run(next, MAPPED_IDS, &mut extents);
    IdMap { extents }
}

/// A live id outside every slot's block, so no process of any sandbox
/// ever has it: [`disk_group_map`] maps host group root to it.
pub const UNREACHABLE_LIVE_ID: u32 = HOST_ID_BASE - 1;

/// The group map of an idmapped mount of a host directory in group
/// `group` (see [`disk_map`]). A directory in group root (`chown 1000
/// DIR` leaves it there) must still be writable: the kernel refuses
/// writes to an inode whose group has no mapping in the mount. So disk
/// group 0 is mapped, but to [`UNREACHABLE_LIVE_ID`], an id no sandbox
/// process can hold: the directory shows its group as `nogroup` inside,
/// the agent writes its files with group `HOST_ID_BASE + AGENT_ID`, and
/// nothing in the sandbox can create a file in group root or make one
/// setgid root (the kernel strips setgid for a group the caller is not
/// in and holds no capability over).
pub fn disk_group_map(live_base: u32, group: u32) -> IdMap {
    disk_group_map_as(live_base, group, AGENT_ID)
}

/// [`disk_group_map`] for a workload whose group inside is `writer`.
pub fn disk_group_map_as(live_base: u32, group: u32, writer: u32) -> IdMap {
    let mut m = disk_map_as(live_base, Some(group), writer);
    if group == 0 {
        m.extents.insert(
            0,
            Extent {
                inside: 0,
                outside: UNREACHABLE_LIVE_ID,
                count: 1,
            },
        );
    }
    m
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

/// A new user namespace with these maps, for an idmapped mount (see
/// [`disk_map`]): a helper process is cloned into it, held until its maps
/// are written and the namespace opened, then let go.
///
/// The helper only makes system calls (`read`, `_exit`), so this is sound
/// in a multi-threaded process too.
pub fn new_userns(uids: &IdMap, gids: &IdMap) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    let (hold_r, hold_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the child runs only raw system calls on its own copy of the
    // descriptor table and leaves with _exit, so a copy of one thread is
    // enough (see `clone_fork`).
    let cloned = unsafe { crate::sys::clone_fork(libc::CLONE_NEWUSER) }?;
    let pid = match cloned {
        None => {
            // SAFETY: raw calls on this child's own descriptors; `_exit`
            // runs none of the parent's handlers or destructors.
            unsafe {
                libc::close(hold_w.as_raw_fd());
                let mut b = 0u8;
                libc::read(hold_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
                libc::_exit(0)
            }
        }
        Some((pid, _pidfd)) => pid,
    };
    drop(hold_r);
    let opened = write_maps(pid, uids, gids, true).and_then(|_| {
        Ok(nix::fcntl::open(
            format!("/proc/{pid}/ns/user").as_str(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?)
    });
    drop(hold_w);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    opened
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: u32 = HOST_ID_BASE + 7 * MAPPED_IDS;

    /// (disk id, live id) pairs of a map, checked one-to-one both ways.
    fn pairs(m: &IdMap) -> Vec<(u32, u32)> {
        let mut v: Vec<(u32, u32)> = m
            .extents
            .iter()
            .flat_map(|e| (0..e.count).map(move |i| (e.inside + i, e.outside + i)))
            .collect();
        let mut disk: Vec<u32> = v.iter().map(|p| p.0).collect();
        let mut live: Vec<u32> = v.iter().map(|p| p.1).collect();
        disk.sort_unstable();
        disk.dedup();
        live.sort_unstable();
        live.dedup();
        assert_eq!(disk.len(), v.len(), "two live ids share a disk id: {m:?}");
        assert_eq!(live.len(), v.len(), "two disk ids share a live id: {m:?}");
        v.sort_unstable();
        v
    }

    fn disk_of(m: &IdMap, live: u32) -> Option<u32> {
        pairs(m).into_iter().find(|p| p.1 == live).map(|p| p.0)
    }

    #[test]
    fn a_slot_block_never_maps_host_root() {
        let m = IdMap::block(LIVE);
        assert_eq!(m.to_host(0), Some(LIVE));
        assert_eq!(m.to_host(AGENT_ID), Some(LIVE + AGENT_ID));
        assert_eq!(m.to_host(MAPPED_IDS), None);
        assert_eq!(m.to_proc_format(), format!("0 {LIVE} 65536\n"));
    }

    #[test]
    fn the_agent_writes_as_the_directory_owner_and_root_as_the_disk_block() {
        let m = disk_map(LIVE, Some(4242));
        assert_eq!(disk_of(&m, LIVE + AGENT_ID), Some(4242));
        assert_eq!(disk_of(&m, LIVE), Some(HOST_ID_BASE));
        assert_eq!(disk_of(&m, LIVE + 999), Some(HOST_ID_BASE + 999));
        assert_eq!(disk_of(&m, LIVE + 1001), Some(HOST_ID_BASE + 1001));
        assert_eq!(pairs(&m).len(), MAPPED_IDS as usize);
        assert!(pairs(&m).iter().all(|p| p.0 != 0), "host root is mapped");
    }

    #[test]
    fn a_root_owned_directory_never_gets_files_as_host_root() {
        for owner in [None, Some(0)] {
            let m = disk_map(LIVE, owner);
            assert_eq!(disk_of(&m, LIVE + AGENT_ID), Some(HOST_ID_BASE + AGENT_ID));
            assert!(pairs(&m).iter().all(|p| p.0 != 0), "{owner:?}");
            assert_eq!(m.extents.len(), 1);
        }
    }

    #[test]
    fn an_owner_inside_the_disk_block_swaps_with_the_agent() {
        let task = disk_map(LIVE, Some(HOST_ID_BASE + AGENT_ID));
        assert_eq!(task.extents.len(), 1);
        assert_eq!(
            disk_of(&task, LIVE + AGENT_ID),
            Some(HOST_ID_BASE + AGENT_ID)
        );
        let odd = disk_map(LIVE, Some(HOST_ID_BASE + 5));
        assert_eq!(disk_of(&odd, LIVE + AGENT_ID), Some(HOST_ID_BASE + 5));
        assert_eq!(disk_of(&odd, LIVE + 5), Some(HOST_ID_BASE + AGENT_ID));
        assert_eq!(pairs(&odd).len(), MAPPED_IDS as usize);
    }

    #[test]
    fn a_directory_in_group_root_is_mapped_to_an_id_no_sandbox_holds() {
        let m = disk_group_map(LIVE, 0);
        assert_eq!(disk_of(&m, UNREACHABLE_LIVE_ID), Some(0));
        assert_eq!(disk_of(&m, LIVE + AGENT_ID), Some(HOST_ID_BASE + AGENT_ID));
        // No live id of any slot (slots 1..32768 above HOST_ID_BASE) is
        // stored as group root.
        for (disk, live) in pairs(&m) {
            if disk == 0 {
                assert!(live < HOST_ID_BASE, "a slot's id writes group root");
            }
        }
        assert_eq!(pairs(&m).len(), MAPPED_IDS as usize + 1);
        assert_eq!(disk_group_map(LIVE, 4242), disk_map(LIVE, Some(4242)));
    }

    #[test]
    fn a_workload_that_is_not_the_agent_writes_as_the_owner() {
        // An image's user 1234 writing a directory owned by 1000.
        let m = disk_map_as(LIVE, Some(1000), 1234);
        assert_eq!(disk_of(&m, LIVE + 1234), Some(1000));
        assert_eq!(disk_of(&m, LIVE + AGENT_ID), Some(HOST_ID_BASE + AGENT_ID));
        assert_eq!(pairs(&m).len(), MAPPED_IDS as usize);
        // Root inside (an image's default user) likewise, never host root.
        let r = disk_map_as(LIVE, Some(1000), 0);
        assert_eq!(disk_of(&r, LIVE), Some(1000));
        assert!(pairs(&r).iter().all(|&(disk, _)| disk != 0));
        // A task workspace in the disk block trades places with the writer.
        let t = disk_map_as(LIVE, Some(HOST_ID_BASE + AGENT_ID), 1234);
        assert_eq!(disk_of(&t, LIVE + 1234), Some(HOST_ID_BASE + AGENT_ID));
        assert_eq!(disk_of(&t, LIVE + AGENT_ID), Some(HOST_ID_BASE + 1234));
        assert_eq!(pairs(&t).len(), MAPPED_IDS as usize);
        assert_eq!(
            disk_map_as(LIVE, Some(7), AGENT_ID),
            disk_map(LIVE, Some(7))
        );
    }
}
