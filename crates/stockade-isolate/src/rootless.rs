//! Sandboxes started by an ordinary user (no host root).
//!
//! Root's supervisor maps each sandbox to a block of host ids of its own
//! (see [`crate::slots`]). An ordinary user may only map ids it owns: its
//! own uid and gid, plus the subordinate ranges `/etc/subuid` and
//! `/etc/subgid` give it, written through the setuid helpers
//! `newuidmap`/`newgidmap` (Debian's `uidmap`). So a rootless sandbox
//! gets:
//!
//! - [`RootlessIds::Subordinate`]: ids 0..65536 inside, the workload's
//!   own id (the agent, 1000, or root with `--root`) mapped to the caller
//!   and every other id to the subordinate range. Files the workload
//!   writes in a bound `/workspace` belong to the caller.
//! - [`RootlessIds::Single`]: without subordinate ranges, only the
//!   workload's id exists inside, as the caller. Every other id (root's
//!   files in `/usr`, say) shows as `nobody`; `setgroups` is denied, so
//!   the caller's supplementary groups stay on every process (as
//!   unmapped `nogroup` inside).
//!
//! Nothing here needs root; the parsing is pure and takes the file texts.

use std::path::Path;

use crate::idmap::{Extent, IdMap, MAPPED_IDS};

/// Subordinate ids needed besides the caller's own: every id inside but
/// the workload's.
pub const MIN_SUBIDS: u32 = MAPPED_IDS - 1;

/// A range of `/etc/subuid` or `/etc/subgid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubRange {
    pub start: u32,
    pub count: u32,
}

/// How a rootless sandbox's ids are mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootlessIds {
    /// Through `newuidmap`/`newgidmap` with these subordinate ranges
    /// (uids, gids).
    Subordinate { uids: SubRange, gids: SubRange },
    /// One id: the workload's, as the caller.
    Single,
}

/// Why a rootless sandbox's maps could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RootlessError {
    #[error(
        "cannot run {helper} (install Debian's `uidmap` package, or remove your \
         /etc/subuid and /etc/subgid entries to run with a single id)"
    )]
    Helper {
        helper: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{helper} refused the sandbox's id map: {stderr}")]
    Refused {
        helper: &'static str,
        stderr: String,
    },
    #[error("cannot write the sandbox's single-id map")]
    Write(#[source] std::io::Error),
}

/// The first range of `user` (a name or a numeric uid) in the text of a
/// subordinate id file that holds at least [`MIN_SUBIDS`] ids. Malformed
/// lines and comments are skipped, as shadow-utils does.
pub fn parse_subid(text: &str, name: Option<&str>, id: u32) -> Option<SubRange> {
    let id_text = id.to_string();
    text.lines().find_map(|line| {
        let line = line.trim();
        if line.starts_with('#') {
            return None;
        }
        let mut fields = line.split(':');
        let who = fields.next()?;
        let start: u32 = fields.next()?.trim().parse().ok()?;
        let count: u32 = fields.next()?.trim().parse().ok()?;
        let ours = who == id_text || name.is_some_and(|n| n == who);
        (ours && count >= MIN_SUBIDS && start.checked_add(count).is_some())
            .then_some(SubRange { start, count })
    })
}

/// The caller's subordinate ranges, read from `root/etc/subuid` and
/// `root/etc/subgid` (`root` is `/` except in tests), or `None` when
/// either is missing or too small.
pub fn subordinate_ranges(
    root: &Path,
    name: Option<&str>,
    uid: u32,
) -> Option<(SubRange, SubRange)> {
    let read = |f: &str| std::fs::read_to_string(root.join("etc").join(f)).unwrap_or_default();
    let uids = parse_subid(&read("subuid"), name, uid)?;
    // shadow-utils keys /etc/subgid by the user too (name or uid), not by
    // a group.
    let gids = parse_subid(&read("subgid"), name, uid)?;
    Some((uids, gids))
}

/// How the calling (non-root) user's sandboxes get their ids: with
/// subordinate ranges (and the helpers to write them) if the user has
/// them, else one id.
pub fn detect() -> RootlessIds {
    // Asked more than once per start (the start line, the launch): read
    // the files and the user database once.
    static IDS: std::sync::OnceLock<RootlessIds> = std::sync::OnceLock::new();
    *IDS.get_or_init(detect_now)
}

fn detect_now() -> RootlessIds {
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name);
    match subordinate_ranges(Path::new("/"), name.as_deref(), uid.as_raw()) {
        Some((uids, gids)) => RootlessIds::Subordinate { uids, gids },
        None => RootlessIds::Single,
    }
}

/// A map where inside id `writer` is `caller` and, with `sub`, every
/// other id 0..[`MAPPED_IDS`] comes from the subordinate range in order.
pub fn map_for(writer: u32, caller: u32, sub: Option<SubRange>) -> IdMap {
    let Some(sub) = sub else {
        return IdMap::single(writer, caller);
    };
    let writer = writer.min(MAPPED_IDS - 1);
    let mut extents = Vec::new();
    if writer > 0 {
        extents.push(Extent {
            inside: 0,
            outside: sub.start,
            count: writer,
        });
    }
    extents.push(Extent {
        inside: writer,
        outside: caller,
        count: 1,
    });
    if writer + 1 < MAPPED_IDS {
        extents.push(Extent {
            inside: writer + 1,
            outside: sub.start + writer,
            count: MAPPED_IDS - 1 - writer,
        });
    }
    IdMap { extents }
}

/// Both maps of a rootless sandbox whose workloads run as `writer`
/// (uid, gid) inside.
pub fn maps(ids: RootlessIds, writer: (u32, u32)) -> (IdMap, IdMap) {
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    match ids {
        RootlessIds::Subordinate { uids, gids } => (
            map_for(writer.0, uid, Some(uids)),
            map_for(writer.1, gid, Some(gids)),
        ),
        RootlessIds::Single => (map_for(writer.0, uid, None), map_for(writer.1, gid, None)),
    }
}

/// The arguments of `newuidmap PID ARGS…`: the map's extents in order.
pub fn helper_args(map: &IdMap) -> Vec<String> {
    map.extents
        .iter()
        .flat_map(|e| [e.inside, e.outside, e.count])
        .map(|n| n.to_string())
        .collect()
}

/// Writes the maps of `pid`'s user namespace as an ordinary user: with
/// `newuidmap`/`newgidmap` for subordinate ranges, directly (with
/// `setgroups` denied, as the kernel requires) for a single id.
pub fn write_maps(
    ids: RootlessIds,
    pid: i32,
    uids: &IdMap,
    gids: &IdMap,
) -> Result<(), RootlessError> {
    match ids {
        RootlessIds::Single => {
            crate::idmap::write_maps(pid, uids, gids, true).map_err(RootlessError::Write)
        }
        RootlessIds::Subordinate { .. } => {
            // Both helpers at once: each is an exec of a setuid program
            // (a millisecond or two), and they write different files.
            let u = spawn_helper("newuidmap", pid, uids)?;
            let g = spawn_helper("newgidmap", pid, gids);
            let u = finish_helper("newuidmap", u);
            let g = g.and_then(|g| finish_helper("newgidmap", g));
            u.and(g)
        }
    }
}

fn spawn_helper(
    helper: &'static str,
    pid: i32,
    map: &IdMap,
) -> Result<std::process::Child, RootlessError> {
    std::process::Command::new(helper)
        .arg(pid.to_string())
        .args(helper_args(map))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| RootlessError::Helper { helper, source })
}

fn finish_helper(helper: &'static str, child: std::process::Child) -> Result<(), RootlessError> {
    let out = child
        .wait_with_output()
        .map_err(|source| RootlessError::Helper { helper, source })?;
    if out.status.success() {
        return Ok(());
    }
    Err(RootlessError::Refused {
        helper,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subid_entry_is_found_by_name_or_uid_and_must_be_large_enough() {
        let text = "# comment\nbob:100000:65536\nalice:200000:1000\n1001:300000:65536\nbad\n";
        assert_eq!(
            parse_subid(text, Some("bob"), 1000),
            Some(SubRange {
                start: 100000,
                count: 65536
            })
        );
        // Too few ids for a sandbox: not usable.
        assert_eq!(parse_subid(text, Some("alice"), 1002), None);
        assert_eq!(
            parse_subid(text, Some("carol"), 1001).map(|r| r.start),
            Some(300000)
        );
        assert_eq!(parse_subid(text, None, 4242), None);
        assert_eq!(parse_subid("x:4294967295:65536\n", Some("x"), 1), None);
    }

    #[test]
    fn subordinate_ranges_need_both_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/subuid"), "rl:100000:65536\n").unwrap();
        assert_eq!(subordinate_ranges(dir.path(), Some("rl"), 1500), None);
        std::fs::write(dir.path().join("etc/subgid"), "rl:300000:65536\n").unwrap();
        let (u, g) = subordinate_ranges(dir.path(), Some("rl"), 1500).unwrap();
        assert_eq!((u.start, g.start), (100000, 300000));
    }

    #[test]
    fn the_writer_is_the_caller_and_no_other_id_is() {
        let sub = SubRange {
            start: 100000,
            count: 65536,
        };
        for writer in [0, 1000, 65535] {
            let m = map_for(writer, 1500, Some(sub));
            assert_eq!(m.to_host(writer), Some(1500));
            let mut seen = std::collections::HashSet::new();
            for inside in 0..MAPPED_IDS {
                let host = m.to_host(inside).expect("every id inside is mapped");
                assert!(seen.insert(host), "{host} mapped twice");
                if inside != writer {
                    assert!((sub.start..sub.start + sub.count).contains(&host));
                }
                assert_ne!(host, 0, "host root is mapped");
            }
        }
        let single = map_for(1000, 1500, None);
        assert_eq!(single.to_proc_format(), "1000 1500 1\n");
        assert_eq!(single.to_host(0), None);
    }

    #[test]
    fn helper_arguments_list_the_extents() {
        let m = map_for(
            1000,
            1500,
            Some(SubRange {
                start: 100000,
                count: 65536,
            }),
        );
        assert_eq!(
            helper_args(&m).join(" "),
            "0 100000 1000 1000 1500 1 1001 101000 64535"
        );
    }
}
