//! The last steps of a container process (init's program and every
//! `exec`): program lookup, then ids, capabilities, `no_new_privs`,
//! seccomp and `execve`. stockade's floor: the bounding set is never more
//! than the config's, `no_new_privs` is always set, and stockade's seccomp
//! filters are always installed.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

use crate::config::Process;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program is not in the container.
    #[error("{0:?}: executable file not found in the container's $PATH or not executable; check process.args[0]")]
    NotFound(String),
    /// A capability name the runtime does not know.
    #[error(
        "unknown capability {0:?} in process.capabilities; names look like CAP_NET_BIND_SERVICE"
    )]
    UnknownCap(String),
    #[error("process: a string holds a NUL byte")]
    Nul,
    #[error("cannot {what}")]
    Sys {
        what: &'static str,
        #[source]
        source: Errno,
    },
    #[error("cannot build stockade's seccomp filters")]
    Seccomp(#[source] stockade_isolate::seccomp::SeccompError),
    #[error(transparent)]
    Profile(#[from] crate::seccomp::SeccompProfileError),
    #[error("cannot install stockade's seccomp filters")]
    SeccompInstall(#[source] stockade_isolate::seccomp::SeccompError),
    #[error("cannot build the container's Landlock rules")]
    Landlock(#[source] stockade_isolate::landlock_rules::LandlockError),
}

const CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capability names every runtime-spec `features` lists.
pub fn cap_names() -> Vec<String> {
    CAPS.iter().map(|c| format!("CAP_{c}")).collect()
}

fn mask(names: &[String]) -> Result<u64, ProcessError> {
    let mut m = 0u64;
    for n in names {
        let short = n.strip_prefix("CAP_").unwrap_or(n);
        let i = CAPS
            .iter()
            .position(|c| c.eq_ignore_ascii_case(short))
            .ok_or_else(|| ProcessError::UnknownCap(n.clone()))?;
        m |= 1 << i;
    }
    Ok(m)
}

/// Everything `execve` needs, built before the last steps so that those
/// fail on nothing but system calls.
#[derive(Debug)]
pub struct Prepared {
    program: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    umask: Option<u32>,
    bounding: u64,
    effective: u64,
    permitted: u64,
    inheritable: u64,
    ambient: u64,
    filters: stockade_isolate::seccomp::SeccompFilters,
    /// The config's own profile, compiled.
    profile: Vec<seccompiler::BpfProgram>,
    /// The container's Landlock ruleset (`landlock.rs`), built, not yet
    /// enforced; `None` without Landlock in the kernel (or the plan).
    landlock: Option<std::os::fd::OwnedFd>,
}

impl Prepared {
    /// stockade's own seccomp filters (hooks inside the container get
    /// them too).
    pub fn filters(&self) -> &stockade_isolate::seccomp::SeccompFilters {
        &self.filters
    }

    /// The Landlock ruleset's descriptor, if there is one.
    pub fn landlock(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.landlock.as_ref().map(|f| f.as_raw_fd())
    }
}

fn c(s: &str) -> Result<CString, ProcessError> {
    CString::new(s).map_err(|_| ProcessError::Nul)
}

/// Finds the program as the container sees it (the caller is already in
/// the container's root): `args[0]` itself if it has a slash, else the
/// first executable file of that name in the config's `PATH`.
fn lookup(arg0: &str, env: &[String]) -> Result<CString, ProcessError> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file())
            && nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
    };
    if arg0.contains('/') {
        return if executable(Path::new(arg0)) {
            c(arg0)
        } else {
            Err(ProcessError::NotFound(arg0.into()))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(arg0);
        if executable(&p) {
            return CString::new(p.as_os_str().as_bytes()).map_err(|_| ProcessError::Nul);
        }
    }
    Err(ProcessError::NotFound(arg0.into()))
}

/// Everything `execve` needs; `seccomp` is the config's `linux.seccomp`,
/// `landlock` the container's plan (its paths are resolved here, so the
/// caller is already in the container's root).
pub fn prepare(
    p: &Process,
    seccomp: Option<&serde_json::Value>,
    landlock: Option<&crate::landlock::Plan>,
) -> Result<Prepared, ProcessError> {
    let caps = p.capabilities.clone().unwrap_or_default();
    let bounding = mask(&caps.bounding)?;
    // Nothing beyond the bounding set, whatever else the config says.
    let permitted = mask(&caps.permitted)? & bounding;
    let inheritable = mask(&caps.inheritable)? & bounding;
    let effective = mask(&caps.effective)? & permitted;
    let ambient = mask(&caps.ambient)? & permitted & inheritable;
    let arg0 = p
        .args
        .first()
        .ok_or(ProcessError::NotFound(String::new()))?;
    Ok(Prepared {
        program: lookup(arg0, &p.env)?,
        argv: p.args.iter().map(|a| c(a)).collect::<Result<_, _>>()?,
        env: p.env.iter().map(|a| c(a)).collect::<Result<_, _>>()?,
        cwd: c(&p.cwd)?,
        uid: p.user.uid,
        gid: p.user.gid,
        groups: p.user.additional_gids.clone(),
        umask: p.user.umask,
        bounding,
        effective,
        permitted,
        inheritable,
        ambient,
        filters: stockade_isolate::seccomp::build().map_err(ProcessError::Seccomp)?,
        profile: match seccomp {
            Some(v) if !v.is_null() => crate::seccomp::compile(v)?,
            _ => Vec::new(),
        },
        landlock: match landlock {
            Some(plan) => plan.build().map_err(ProcessError::Landlock)?,
            None => None,
        },
    })
}

fn prctl(op: libc::c_int, arg: libc::c_ulong) -> Result<(), Errno> {
    // SAFETY: the prctl options used here take integers only.
    Errno::result(unsafe {
        libc::prctl(
            op,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
    .map(drop)
}

fn sys(what: &'static str) -> impl FnOnce(Errno) -> ProcessError {
    move |source| ProcessError::Sys { what, source }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capset(e: u64, p: u64, i: u64) -> Result<(), Errno> {
    let hdr = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    let data = [
        CapData {
            effective: e as u32,
            permitted: p as u32,
            inheritable: i as u32,
        },
        CapData {
            effective: (e >> 32) as u32,
            permitted: (p >> 32) as u32,
            inheritable: (i >> 32) as u32,
        },
    ];
    // SAFETY: header and two data structs of the v3 layout, live for the call.
    Errno::result(unsafe {
        libc::syscall(libc::SYS_capset, &hdr as *const CapHeader, data.as_ptr())
    })
    .map(drop)
}

/// The last steps and `execve`. Returns only on failure.
pub fn exec(p: &Prepared) -> ProcessError {
    match finish(p) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn finish(p: &Prepared) -> Result<std::convert::Infallible, ProcessError> {
    if let Some(m) = p.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m));
    }
    for cap in 0..64u64 {
        if p.bounding & (1 << cap) != 0 {
            continue;
        }
        match prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) {
            Ok(()) => {}
            Err(Errno::EINVAL) => break,
            Err(e) => return Err(sys("drop a bounding capability")(e)),
        }
    }
    prctl(libc::PR_SET_KEEPCAPS, 1).map_err(sys("keep capabilities across the uid change"))?;
    // SAFETY: `groups` is a live slice of gid_t whose length we pass.
    Errno::result(unsafe { libc::setgroups(p.groups.len(), p.groups.as_ptr()) })
        .map_err(sys("set the additional groups"))?;
    // SAFETY: plain integer arguments.
    Errno::result(unsafe { libc::setresgid(p.gid, p.gid, p.gid) }).map_err(sys("set the gid"))?;
    // SAFETY: plain integer arguments.
    Errno::result(unsafe { libc::setresuid(p.uid, p.uid, p.uid) }).map_err(sys("set the uid"))?;
    prctl(libc::PR_SET_KEEPCAPS, 0).map_err(sys("reset keep-capabilities"))?;
    capset(p.effective, p.permitted, p.inheritable).map_err(sys("set the capabilities"))?;
    for cap in 0..64u64 {
        if p.ambient & (1 << cap) != 0 {
            // SAFETY: integer arguments only.
            Errno::result(unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            })
            .map_err(sys("raise an ambient capability"))?;
        }
    }
    nix::unistd::chdir(p.cwd.as_c_str()).map_err(sys("change to process.cwd"))?;
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(sys("set no_new_privs"))?;
    if let Some(ruleset) = p.landlock() {
        stockade_isolate::landlock_rules::restrict_self_with(ruleset)
            .map_err(sys("enforce the Landlock rules"))?;
    }
    stockade_isolate::seccomp::install(&p.filters).map_err(ProcessError::SeccompInstall)?;
    crate::seccomp::install(&p.profile)?;
    let err = nix::unistd::execve(&p.program, &p.argv, &p.env).unwrap_err();
    Err(ProcessError::Sys {
        what: "execute process.args[0]",
        source: err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_map_to_their_numbers() {
        assert_eq!(mask(&["CAP_CHOWN".into()]).unwrap(), 1);
        assert_eq!(mask(&["CAP_NET_BIND_SERVICE".into()]).unwrap(), 1 << 10);
        assert_eq!(mask(&["CAP_SYS_ADMIN".into()]).unwrap(), 1 << 21);
        assert_eq!(mask(&["CAP_CHECKPOINT_RESTORE".into()]).unwrap(), 1 << 40);
        assert!(mask(&["CAP_BOGUS".into()]).is_err());
    }
}
