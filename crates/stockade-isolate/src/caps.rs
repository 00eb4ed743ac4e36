//! Dropping every capability before the workload is executed.
//!
//! Required order in the workload child (also in `docs/seccomp.md`):
//!
//! 1. `landlock_rules::apply` (it sets `no_new_privs` itself);
//! 2. [`drop_all`], while still uid 0 in the user namespace;
//! 3. `setresuid` to the workload uid: in non-root mode this uses the
//!    CAP_SETUID/CAP_SETGID that `drop_all(false)` kept, and the kernel
//!    clears both at the uid change (in root mode it stays 0, a no-op);
//! 4. [`ensure_no_capabilities`], a fail-closed check;
//! 5. [`set_no_new_privs`], then `seccomp::install`;
//! 6. `execve`.
//!
//! Root in a sandbox whose root filesystem is copy-on-write keeps a small
//! set, [`ROOT_CAPS`] (see [`drop_all_but`]): package managers need them
//! there, and they act only on what the sandbox's user namespace maps.
//!
//! `drop_all` also works after the uid change if the caller kept its
//! permitted set across it (`PR_SET_KEEPCAPS`); after a plain `setresuid` away
//! from 0 the process no longer holds CAP_SETPCAP, and `drop_all` fails with
//! [`CapsError::BoundingDrop`] rather than leaving the bounding set full.

use std::io;

/// Dropping capabilities failed. The workload must not be started.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// `capget(2)` failed.
    #[error("cannot read the capability sets with capget(2)")]
    CapGet(#[source] io::Error),
    /// `capset(2)` failed.
    #[error("cannot change the capability sets with capset(2)")]
    CapSet(#[source] io::Error),
    /// `PR_CAP_AMBIENT_CLEAR_ALL` failed.
    #[error("cannot clear the ambient capability set")]
    AmbientClear(#[source] io::Error),
    /// `PR_CAPBSET_DROP` failed.
    #[error("cannot drop capability {cap} from the bounding set (call caps::drop_all while the process is still uid 0, or has kept its capabilities with PR_SET_KEEPCAPS)")]
    BoundingDrop {
        cap: u32,
        #[source]
        source: io::Error,
    },
    /// `PR_CAP_AMBIENT_RAISE` failed.
    #[error("cannot raise capability {cap} in the ambient set (it must be permitted and inheritable, and securebits must still allow it)")]
    AmbientRaise {
        cap: u32,
        #[source]
        source: io::Error,
    },
    /// Capabilities other than the ones to keep are held, or some of those
    /// are missing.
    #[error("the capability sets are not what root should keep ({kept:#x}): {extra:#x} held besides, {missing:#x} missing; call caps::drop_all_but as uid 0 with those capabilities held")]
    NotAsKept { kept: u64, extra: u64, missing: u64 },
    /// `PR_SET_SECUREBITS` failed.
    #[error("cannot set securebits {bits:#x} (call caps::drop_all once, while the process still holds CAP_SETPCAP)")]
    Securebits {
        bits: u32,
        #[source]
        source: io::Error,
    },
    /// `PR_SET_NO_NEW_PRIVS` failed.
    #[error(
        "cannot set no_new_privs with prctl(PR_SET_NO_NEW_PRIVS) (Linux 3.5 or later is needed)"
    )]
    NoNewPrivs(#[source] io::Error),
    /// Capabilities are still present where none should be.
    #[error("capabilities are still held (effective {effective:#x}, permitted {permitted:#x}, inheritable {inheritable:#x}); after caps::drop_all(false) switch to a non-zero uid with setresuid, or use caps::drop_all(true) to keep uid 0")]
    StillHeld {
        effective: u64,
        permitted: u64,
        inheritable: u64,
    },
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets as two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_CHOWN: u32 = 0;
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_FOWNER: u32 = 3;
const CAP_FSETID: u32 = 4;
const CAP_KILL: u32 = 5;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SETPCAP: u32 = 8;

/// What root keeps in a sandbox whose root filesystem is copy-on-write
/// (`--overlay-root`, an image): what `dpkg`, `apt` and maintainer scripts
/// use as root — give files to their package's owners (`chown`), enter
/// and write directories of other ids (`_apt`'s 0700 `partial`), change
/// modes of files they do not own, keep setgid bits, drop to a service
/// user (`setuid`, `setgid`) and signal it. Docker gives container root
/// these too. They are capabilities *in the sandbox's user namespace*:
/// the kernel honours them only over files and processes whose ids that
/// namespace maps (the sandbox's own block of host ids), never over host
/// root's or another sandbox's. No `CAP_SYS_ADMIN`, `CAP_NET_ADMIN`,
/// `CAP_DAC_READ_SEARCH`, `CAP_MKNOD` or `CAP_SETFCAP`.
pub const ROOT_CAPS: u64 = (1 << CAP_CHOWN)
    | (1 << CAP_DAC_OVERRIDE)
    | (1 << CAP_FOWNER)
    | (1 << CAP_FSETID)
    | (1 << CAP_KILL)
    | (1 << CAP_SETGID)
    | (1 << CAP_SETUID);

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's (effective, permitted, inheritable) sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CapSets {
    effective: u64,
    permitted: u64,
    inheritable: u64,
}

fn capget() -> Result<CapSets, CapsError> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: both pointers are valid for the duration of the call; a v3 header
    // tells the kernel `data` holds two elements, which it does.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(CapsError::CapGet(io::Error::last_os_error()));
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok(CapSets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

fn capset(sets: CapSets) -> Result<(), CapsError> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let half = |set: u64, high: bool| if high { (set >> 32) as u32 } else { set as u32 };
    let data = [false, true].map(|high| CapData {
        effective: half(sets.effective, high),
        permitted: half(sets.permitted, high),
        inheritable: half(sets.inheritable, high),
    });
    // SAFETY: as in `capget`; the kernel only reads `data` (two elements).
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(CapsError::CapSet(io::Error::last_os_error()));
    }
    Ok(())
}

/// `prctl` with integer arguments only, as a `Result`.
fn prctl(option: libc::c_int, arg2: libc::c_ulong) -> io::Result<libc::c_int> {
    // prctl is variadic: pass full-width zeros, as the kernel checks them.
    let zero: libc::c_ulong = 0;
    // SAFETY: every option used in this module takes plain integers, and the
    // unused arguments must be zero.
    let rc = unsafe { libc::prctl(option, arg2, zero, zero, zero) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `prctl` with two integer arguments, as a `Result`.
fn prctl3(
    option: libc::c_int,
    arg2: libc::c_ulong,
    arg3: libc::c_ulong,
) -> io::Result<libc::c_int> {
    let zero: libc::c_ulong = 0;
    // SAFETY: as in `prctl`: integer arguments only, the unused ones zero.
    let rc = unsafe { libc::prctl(option, arg2, arg3, zero, zero) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Empties the bounding, ambient, inheritable, permitted and effective sets and
/// locks securebits so that uid 0 cannot regain capabilities through `execve`.
///
/// `keep_root_uid` says whether the workload keeps running as uid 0 (root
/// mode). If it does not, and the process is still uid 0, CAP_SETUID and
/// CAP_SETGID stay in the permitted and effective sets so that the caller can
/// switch uid afterwards; the uid change clears them (the kernel's setuid
/// fixup, which this function leaves on and locks), and `execve` would too,
/// since the bounding and ambient sets are empty.
///
/// Securebits: SECBIT_NOROOT stops uid 0 from getting a full permitted set on
/// `execve`; that only matters while the process is uid 0, i.e. in root mode
/// or if the caller forgets to switch uid. SECBIT_NO_SETUID_FIXUP is set only
/// in root mode. KEEP_CAPS stays off; all of them are locked.
pub fn drop_all(keep_root_uid: bool) -> Result<(), CapsError> {
    drop_all_but(keep_root_uid, 0)
}

/// [`drop_all`], except that in root mode the capabilities in `root_keeps`
/// (a mask by capability number, normally [`ROOT_CAPS`]; those the process
/// does not hold are not kept) stay in the bounding, permitted, effective,
/// inheritable and ambient sets. The ambient set carries them over `execve`
/// of any file without file capabilities, and SECBIT_NOROOT still gives uid
/// 0 nothing more. When something is kept, SECBIT_NO_SETUID_FIXUP stays
/// off (and locked off): a process that switches to another uid — apt to
/// `_apt`, man-db to `man` — loses them all, as it would on any system;
/// and KEEP_CAPS stays unlocked (see below). Outside root mode
/// `root_keeps` is ignored.
pub fn drop_all_but(keep_root_uid: bool, root_keeps: u64) -> Result<(), CapsError> {
    let mut sets = capget()?;
    // After a uid change with PR_SET_KEEPCAPS the caps are permitted but not
    // effective; raise them so that the prctl calls below may use CAP_SETPCAP.
    if sets.permitted & !sets.effective & (1 << CAP_SETPCAP) != 0 {
        sets.effective = sets.permitted;
        capset(sets)?;
    }
    let keep = if keep_root_uid {
        root_keeps & sets.permitted
    } else {
        0
    };

    match prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    ) {
        Ok(_) => {}
        // A kernel before 4.3 has no ambient set, so there is nothing to clear.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && keep == 0 => {}
        Err(e) => return Err(CapsError::AmbientClear(e)),
    }

    // Every capability number the kernel may know (at most 64 fit in its
    // sets), until it says EINVAL: past its last one. Asking that way saves
    // reading /proc/sys/kernel/cap_last_cap (five system calls).
    for cap in 0..64u32 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        match prctl(libc::PR_CAPBSET_DROP, cap.into()) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(source) => return Err(CapsError::BoundingDrop { cap, source }),
        }
    }

    if keep != 0 {
        // An ambient capability must be permitted and inheritable, and the
        // securebits below forbid raising one: raise them first.
        sets.inheritable = keep;
        capset(sets)?;
        for cap in (0..64u32).filter(|c| keep & (1 << c) != 0) {
            prctl3(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap.into(),
            )
            .map_err(|source| CapsError::AmbientRaise { cap, source })?;
        }
    }

    let mut bits = libc::SECBIT_NOROOT
        | libc::SECBIT_NOROOT_LOCKED
        | libc::SECBIT_NO_SETUID_FIXUP_LOCKED
        | libc::SECBIT_NO_CAP_AMBIENT_RAISE
        | libc::SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    if keep == 0 {
        bits |= libc::SECBIT_KEEP_CAPS_LOCKED;
        if keep_root_uid {
            bits |= libc::SECBIT_NO_SETUID_FIXUP;
        }
    }
    // With capabilities kept, KEEP_CAPS stays unlocked: tools that drop to
    // another uid (`setpriv --reuid man`, as man-db's trigger does) set it
    // to carry what they hold over the switch. That is never more than
    // root held, and the next `execve` as that uid drops it (the ambient
    // set is cleared by the switch, and nothing else grants any).
    let bits = bits as u32;
    // Setting the same locked bits twice is fine, but the kernel refuses any
    // change to a locked bit, so skip the call when nothing would change.
    if prctl(libc::PR_GET_SECUREBITS, 0).ok() != Some(bits as libc::c_int) {
        prctl(libc::PR_SET_SECUREBITS, bits.into())
            .map_err(|source| CapsError::Securebits { bits, source })?;
    }

    // SAFETY: geteuid cannot fail and has no side effects.
    let still_root = unsafe { libc::geteuid() } == 0;
    let kept = if keep_root_uid {
        keep
    } else if !still_root {
        0
    } else {
        ((1 << CAP_SETUID) | (1 << CAP_SETGID)) & sets.permitted
    };
    capset(CapSets {
        effective: kept,
        permitted: kept,
        inheritable: keep,
    })
}

/// Makes the capabilities in `keep` (a mask by number; they must be
/// permitted) inheritable and ambient, so that they survive `execve` of a
/// file without file capabilities by a process that is not root: for a
/// helper program that must run with a few capabilities and nothing else
/// (the bounding set is the caller's to narrow).
pub fn set_inheritable_ambient(keep: u64) -> Result<(), CapsError> {
    let mut sets = capget()?;
    sets.inheritable = keep;
    sets.effective = sets.permitted;
    capset(sets)?;
    for cap in (0..64u32).filter(|c| keep & (1 << c) != 0) {
        prctl3(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
            cap.into(),
        )
        .map_err(|source| CapsError::AmbientRaise { cap, source })?;
    }
    Ok(())
}

/// Sets `no_new_privs`: `execve` can no longer grant privileges (setuid bits,
/// file capabilities), and unprivileged seccomp filters become possible. It is
/// inherited by every child and cannot be unset.
pub fn set_no_new_privs() -> Result<(), CapsError> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(CapsError::NoNewPrivs)?;
    Ok(())
}

/// Fails unless the effective, permitted and inheritable sets are all empty.
/// Meant as the last check before `execve`, after the uid switch.
pub fn ensure_no_capabilities() -> Result<(), CapsError> {
    ensure_only(0)
}

/// Fails unless the effective, permitted, inheritable and ambient sets are
/// exactly `kept` and the bounding set holds nothing else: the check after
/// [`drop_all_but`].
pub fn ensure_only(kept: u64) -> Result<(), CapsError> {
    let sets = capget()?;
    let mut extra = (sets.effective | sets.permitted | sets.inheritable) & !kept;
    let mut missing = !(sets.effective & sets.permitted & sets.inheritable) & kept;
    if kept != 0 {
        // Only when something is kept: an empty permitted set cannot be
        // widened by the bounding or ambient sets (SECBIT_NOROOT is locked).
        for cap in 0..64u32 {
            let bit = 1u64 << cap;
            let bounding = match prctl(libc::PR_CAPBSET_READ, cap.into()) {
                Ok(v) => v == 1,
                Err(_) => break,
            };
            let ambient = prctl3(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_IS_SET as libc::c_ulong,
                cap.into(),
            )
            .is_ok_and(|v| v == 1);
            if (bounding || ambient) && kept & bit == 0 {
                extra |= bit;
            }
            if !ambient && kept & bit != 0 {
                missing |= bit;
            }
        }
    }
    if extra == 0 && missing == 0 {
        return Ok(());
    }
    if kept == 0 {
        return Err(CapsError::StillHeld {
            effective: sets.effective,
            permitted: sets.permitted,
            inheritable: sets.inheritable,
        });
    }
    Err(CapsError::NotAsKept {
        kept,
        extra,
        missing,
    })
}

/// Re-running this test binary as a child process, shared by the tests of
/// `caps`, `landlock_rules` and `seccomp`. Those layers restrict the calling
/// thread for good, so each attack runs in a fresh process: the parent test
/// spawns the binary again with only a `child_entry` test selected and a
/// scenario name in the environment, and fails if that child test fails.
/// Re-executing (rather than forking the multi-threaded test harness) keeps
/// the child free to allocate; `pre_exec` hooks, where used, make only
/// async-signal-safe calls.
#[cfg(test)]
pub(crate) mod test_child {
    use std::process::Command;

    const SCENARIO_ENV: &str = "STOCKADE_ISOLATE_TEST_SCENARIO";

    /// The scenario this process was started for. `child_entry` tests return
    /// at once when there is none, so in a normal run they are no-ops.
    pub(crate) fn scenario() -> Option<String> {
        std::env::var(SCENARIO_ENV).ok()
    }

    /// Runs test `entry` (full path, e.g. `caps::tests::child_entry`) in a new
    /// copy of this binary with `scenario` set; `configure` may add variables
    /// or hooks. Panics, with the child's output, unless exactly that test ran
    /// and passed.
    pub(crate) fn run(entry: &str, scenario: &str, configure: impl FnOnce(&mut Command)) {
        let exe = std::env::current_exe().expect("the test binary should know its own path");
        let mut cmd = Command::new(exe);
        cmd.args(["--exact", entry, "--nocapture", "--test-threads=1"])
            .env(SCENARIO_ENV, scenario);
        configure(&mut cmd);
        let out = cmd
            .output()
            .expect("re-executing the test binary should work");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child scenario {scenario:?} failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const ENTRY: &str = "caps::tests::child_entry";
    const NEEDS_ROOT: &str =
        "this scenario needs root (with capabilities) to have anything to drop";

    /// A line of /proc/thread-self/status: capabilities are per thread, and
    /// the test runs on a harness thread, not the thread-group leader.
    fn status(field: &str) -> String {
        let text = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let line = text.lines().find(|l| l.starts_with(&format!("{field}:")));
        line.unwrap_or_else(|| panic!("{field} missing from status"))
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    }

    fn cap_mask(field: &str) -> u64 {
        u64::from_str_radix(&status(field), 16).unwrap()
    }

    fn assert_all_sets_empty() {
        for field in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(cap_mask(field), 0, "{field} should be empty");
        }
    }

    /// Raw per-thread id syscalls: glibc's wrappers would change every thread.
    fn raw(nr: libc::c_long, a: u32, b: u32, c: u32) -> Result<(), i32> {
        // SAFETY: the id syscalls used here take integers only.
        let rc = unsafe { libc::syscall(nr, a, b, c) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error().raw_os_error().unwrap())
        }
    }

    /// A freshly executed shell must not get capabilities back.
    fn assert_exec_gets_no_caps() {
        let out = Command::new("/bin/sh")
            .args([
                "-c",
                "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.lines().count(), 5, "{text}");
        for line in text.lines() {
            assert!(line.ends_with("0000000000000000"), "after execve: {line}");
        }
    }

    /// As [`assert_exec_gets_no_caps`] with `bounding` left in the bounding set.
    fn assert_exec_gets_no_caps_but_bounding(bounding: u64) {
        let out = Command::new("/bin/sh")
            .args(["-c", "grep -E '^Cap(Inh|Prm|Eff|Amb)' /proc/self/status"])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        for line in text.lines() {
            let inh = line.starts_with("CapInh") && line.ends_with(&format!("{bounding:016x}"));
            assert!(
                inh || line.ends_with("0000000000000000"),
                "after execve: {line}"
            );
        }
    }

    #[test]
    fn child_entry() {
        let Some(scenario) = test_child::scenario() else {
            return;
        };
        assert_ne!(cap_mask("CapEff"), 0, "{NEEDS_ROOT}");
        match scenario.as_str() {
            "root-mode" => {
                drop_all(true).unwrap();
                set_no_new_privs().unwrap();
                assert_all_sets_empty();
                assert_eq!(status("NoNewPrivs"), "1");
                ensure_no_capabilities().unwrap();
                let bits = prctl(libc::PR_GET_SECUREBITS, 0).unwrap();
                assert_ne!(bits & libc::SECBIT_NOROOT_LOCKED, 0, "securebits {bits:#x}");
                // Attacks that need a capability uid 0 would normally have.
                let file = tempfile::NamedTempFile::new().unwrap();
                let err = std::os::unix::fs::chown(file.path(), Some(1234), None).unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::EPERM));
                assert_eq!(raw(libc::SYS_setresuid, 1234, 1234, 1234), Err(libc::EPERM));
                assert_exec_gets_no_caps();
            }
            "root-keeps" => {
                drop_all_but(true, ROOT_CAPS).unwrap();
                set_no_new_privs().unwrap();
                ensure_only(ROOT_CAPS).unwrap();
                for field in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
                    assert_eq!(cap_mask(field), ROOT_CAPS, "{field}");
                }
                assert!(ensure_no_capabilities().is_err());
                // What it keeps works; what it dropped does not.
                let file = tempfile::NamedTempFile::new().unwrap();
                std::os::unix::fs::chown(file.path(), Some(1234), None).unwrap();
                let dir = tempfile::tempdir().unwrap();
                let node = std::ffi::CString::new(
                    dir.path()
                        .join("null")
                        .into_os_string()
                        .into_encoded_bytes(),
                )
                .unwrap();
                // SAFETY: a NUL-terminated path; a harmless node (1, 3)
                // in a private directory even if the call succeeded.
                let rc = unsafe {
                    libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3))
                };
                assert_eq!(rc, -1, "mknod needs CAP_MKNOD, which is gone");
                // A program started from here has them too, and no more.
                let out = Command::new("/bin/sh")
                    .args(["-c", "grep -E '^Cap(Prm|Eff|Bnd|Amb)' /proc/self/status"])
                    .output()
                    .unwrap();
                let text = String::from_utf8(out.stdout).unwrap();
                assert_eq!(text.lines().count(), 4, "{text}");
                for line in text.lines() {
                    assert!(
                        line.ends_with(&format!("{ROOT_CAPS:016x}")),
                        "after execve: {line}"
                    );
                }
                // Switching to another uid loses them all (the setuid fixup
                // is on), and so does every program started after.
                raw(libc::SYS_setresuid, 1234, 1234, 1234).unwrap();
                for field in ["CapPrm", "CapEff", "CapAmb"] {
                    assert_eq!(cap_mask(field), 0, "{field} after the uid switch");
                }
                assert_eq!(raw(libc::SYS_setresuid, 0, 0, 0), Err(libc::EPERM));
                assert_exec_gets_no_caps_but_bounding(ROOT_CAPS);
            }
            "root-keeps-keepcaps" => {
                drop_all_but(true, ROOT_CAPS).unwrap();
                set_no_new_privs().unwrap();
                // As `setpriv --reuid` does: keep the permitted set over
                // the switch; an execve as the new uid still gets nothing.
                prctl(libc::PR_SET_KEEPCAPS, 1).unwrap();
                raw(libc::SYS_setresuid, 1234, 1234, 1234).unwrap();
                assert_eq!(cap_mask("CapPrm"), ROOT_CAPS);
                assert_eq!((cap_mask("CapEff"), cap_mask("CapAmb")), (0, 0));
                let bits = prctl(libc::PR_GET_SECUREBITS, 0).unwrap();
                assert_eq!(
                    prctl(
                        libc::PR_SET_SECUREBITS,
                        (bits & !libc::SECBIT_NOROOT) as libc::c_ulong
                    )
                    .map_err(|e| e.raw_os_error()),
                    Err(Some(libc::EPERM)),
                    "securebits {bits:#x}"
                );
                assert_exec_gets_no_caps_but_bounding(ROOT_CAPS);
            }
            "user-mode" => {
                drop_all(false).unwrap();
                let kept = (1 << CAP_SETUID) | (1 << CAP_SETGID);
                assert_eq!((cap_mask("CapEff"), cap_mask("CapPrm")), (kept, kept));
                assert_eq!((cap_mask("CapBnd"), cap_mask("CapAmb")), (0, 0));
                raw(libc::SYS_setgroups, 0, 0, 0).unwrap();
                raw(libc::SYS_setresgid, 1000, 1000, 1000).unwrap();
                raw(libc::SYS_setresuid, 1000, 1000, 1000).unwrap();
                assert_all_sets_empty();
                ensure_no_capabilities().unwrap();
                assert_eq!(raw(libc::SYS_setresuid, 0, 0, 0), Err(libc::EPERM));
                assert_exec_gets_no_caps();
            }
            "switch-uid-first" => {
                raw(libc::SYS_setresuid, 1000, 1000, 1000).unwrap();
                let err = drop_all(false).unwrap_err();
                assert!(
                    matches!(err, CapsError::BoundingDrop { cap: 0, .. }),
                    "{err}"
                );
            }
            "switch-uid-first-keepcaps" => {
                prctl(libc::PR_SET_KEEPCAPS, 1).unwrap();
                raw(libc::SYS_setresuid, 1000, 1000, 1000).unwrap();
                drop_all(false).unwrap();
                assert_all_sets_empty();
            }
            other => panic!("unknown scenario {other}"),
        }
    }

    #[test]
    #[ignore = "needs root: drops real capabilities in a child process"]
    fn root_mode_drops_every_capability_and_exec_regains_none_needs_root() {
        test_child::run(ENTRY, "root-mode", |_| {});
    }

    #[test]
    #[ignore = "needs root: drops real capabilities in a child process"]
    fn root_keeps_only_root_caps_across_exec_and_loses_them_with_its_uid_needs_root() {
        test_child::run(ENTRY, "root-keeps", |_| {});
    }

    #[test]
    #[ignore = "needs root: drops real capabilities and switches uid in a child process"]
    fn root_keeping_caps_may_carry_them_over_a_uid_switch_but_not_an_exec_needs_root() {
        test_child::run(ENTRY, "root-keeps-keepcaps", |_| {});
    }

    #[test]
    #[ignore = "needs root: drops real capabilities and switches uid in a child process"]
    fn user_mode_keeps_only_setuid_setgid_until_the_uid_switch_needs_root() {
        test_child::run(ENTRY, "user-mode", |_| {});
    }

    #[test]
    #[ignore = "needs root: switches uid in a child process"]
    fn refuses_to_run_after_the_uid_switch_dropped_setpcap_needs_root() {
        test_child::run(ENTRY, "switch-uid-first", |_| {});
    }

    #[test]
    #[ignore = "needs root: switches uid in a child process"]
    fn works_after_the_uid_switch_with_keepcaps_needs_root() {
        test_child::run(ENTRY, "switch-uid-first-keepcaps", |_| {});
    }

    #[test]
    fn the_kernel_knows_the_capabilities_we_name() {
        // drop_all walks numbers until EINVAL; the ones it relies on by
        // name must lie below the kernel's last.
        let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!((CAP_SETPCAP..64).contains(&last), "{last}");
    }
}
