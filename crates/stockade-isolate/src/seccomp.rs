//! The workload's seccomp filter: a deny list over a default of ALLOW.
//!
//! The rules are data (the tables below), compiled to BPF in [`build`], long
//! before the workload child exists. [`install`] only hands the finished
//! programs to the kernel, so it allocates nothing and is safe to call between
//! `fork` and `execve`. See `docs/seccomp.md` for what this stops and what it
//! does not.
//!
//! Four filters are stacked, in this install order:
//!
//! 1. the *architecture guard* (hand-written, [`guard_program`]): kills a
//!    foreign ABI, EPERM for every x32 number;
//! 2. the *deny list* (hand-written, `deny_list_program`): every syscall that
//!    is refused whatever its arguments, i.e. [`DENIED_SYSCALLS`] (EPERM) and
//!    `clone3` (ENOSYS);
//! 3. the *argument rules* (`seccompiler`, EPERM): `clone` with a namespace
//!    flag, raw `socket` types, the `TIOCSTI`/`TIOCLINUX` ioctls;
//! 4. the *socket family* filter (`seccompiler`, EAFNOSUPPORT).
//!
//! The deny list is written by hand because `seccompiler` compiles a rule map
//! to a linear chain of `nr == X` tests, hundreds of instructions for ~50
//! syscalls, and the kernel pays for that chain on install: it emulates every
//! new filter once per syscall number of the architecture to find the calls it
//! always allows (its per-filter action cache), and a call outside the cache
//! walks the chain again. The hand-written program is a binary search over the
//! sorted numbers instead, a dozen instructions or so on any path. The argument
//! rules stay with `seccompiler`: their chain tests only three syscall numbers
//! before it reads arguments, which the cache cannot evaluate anyway.
//!
//! The kernel runs every stacked filter and keeps the most severe verdict, and
//! the filters match disjoint calls (bar x32 numbers, which only the guard
//! denies), so their order does not change any result.
use std::collections::BTreeMap;
use std::io;

use seccompiler::SeccompCmpOp as Op;
use seccompiler::{
    sock_filter, BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Building or installing the seccomp filter failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A rule in stockade's table is malformed.
    #[error("cannot build the seccomp rule for {syscall} (a bug in stockade's rule table, please report it)")]
    Rule {
        syscall: &'static str,
        #[source]
        source: BackendError,
    },
    /// A filter could not be compiled to BPF.
    #[error("cannot compile the seccomp {filter} filter to BPF (a bug in stockade's rule table, please report it)")]
    Compile {
        filter: &'static str,
        #[source]
        source: BackendError,
    },
    /// A hand-written filter would need a jump longer than classic BPF's
    /// 8-bit offsets allow.
    #[error("the seccomp {filter} filter needs a jump over {offset} instructions, more than the 255 classic BPF allows; this is a bug in stockade's rule table, please report it")]
    JumpTooFar { filter: &'static str, offset: usize },
    /// The CPU architecture has no filter table.
    #[error("stockade has no seccomp filter for the {0} architecture; only x86_64 and aarch64 are supported")]
    UnsupportedArch(&'static str),
    /// `prctl(PR_GET_NO_NEW_PRIVS)` failed.
    #[error("cannot read the no_new_privs flag with prctl(PR_GET_NO_NEW_PRIVS) (Linux 3.5 or later is needed)")]
    ReadNoNewPrivs(#[source] io::Error),
    /// `install` was called before `no_new_privs` was set.
    #[error("no_new_privs is not set, so the seccomp filter would not be inherited safely; call caps::set_no_new_privs() before seccomp::install()")]
    NoNewPrivsNotSet,
    /// The kernel rejected one of the filters.
    #[error("the kernel refused the seccomp {filter} filter (check that the kernel has CONFIG_SECCOMP_FILTER, and do not start the workload)")]
    Install {
        filter: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Compiled BPF programs, ready for [`install`]. Built once by [`build`].
#[derive(Debug, Clone)]
pub struct SeccompFilters {
    /// `(name, program)`, installed in this order. Names appear in errors.
    programs: Vec<(&'static str, BpfProgram)>,
}

impl SeccompFilters {
    /// Total number of BPF instructions over all filters (for `doctor`).
    pub fn instruction_count(&self) -> usize {
        self.programs.iter().map(|(_, p)| p.len()).sum()
    }

    /// Names of the stacked filters, in install order.
    pub fn filter_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.programs.iter().map(|(name, _)| *name)
    }
}

/// Generates [`DENIED_SYSCALLS`] and the matching number table from one list,
/// so the documented names and the compiled numbers cannot drift apart.
/// A `#[cfg]` on an entry drops it on architectures without that syscall.
macro_rules! deny_table {
    ($( $(#[$attr:meta])* $name:ident = $nr:expr ),* $(,)?) => {
        /// Syscalls that always fail with EPERM inside the sandbox, on this
        /// architecture. For documentation, `doctor` and tests; `clone3`
        /// (ENOSYS) and the argument-filtered calls in [`ARGUMENT_FILTERED`]
        /// are not in this list.
        pub const DENIED_SYSCALLS: &[&str] = &[$( $(#[$attr])* stringify!($name) ),*];
        const DENIED_NUMBERS: &[libc::c_long] = &[$( $(#[$attr])* $nr ),*];
    };
}

/// `open_tree_attr(2)` (Linux 6.15) is `open_tree` plus mount attributes; it is
/// numbered in the shared table on every architecture but libc 0.2 lacks it.
const SYS_OPEN_TREE_ATTR: libc::c_long = 467;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
deny_table! {
    // Mount table and root changes: the rootfs is built by init and final.
    mount = libc::SYS_mount,
    umount2 = libc::SYS_umount2,
    pivot_root = libc::SYS_pivot_root,
    move_mount = libc::SYS_move_mount,
    open_tree = libc::SYS_open_tree,
    open_tree_attr = SYS_OPEN_TREE_ATTR,
    fsopen = libc::SYS_fsopen,
    fsconfig = libc::SYS_fsconfig,
    fsmount = libc::SYS_fsmount,
    fspick = libc::SYS_fspick,
    mount_setattr = libc::SYS_mount_setattr,
    chroot = libc::SYS_chroot,
    // New namespaces would hand the workload a full capability set again.
    unshare = libc::SYS_unshare,
    setns = libc::SYS_setns,
    // Reading or steering other processes.
    ptrace = libc::SYS_ptrace,
    process_vm_readv = libc::SYS_process_vm_readv,
    process_vm_writev = libc::SYS_process_vm_writev,
    pidfd_getfd = libc::SYS_pidfd_getfd,
    // Kernel code and large kernel attack surface.
    kexec_load = libc::SYS_kexec_load,
    kexec_file_load = libc::SYS_kexec_file_load,
    init_module = libc::SYS_init_module,
    finit_module = libc::SYS_finit_module,
    delete_module = libc::SYS_delete_module,
    bpf = libc::SYS_bpf,
    perf_event_open = libc::SYS_perf_event_open,
    userfaultfd = libc::SYS_userfaultfd,
    io_uring_setup = libc::SYS_io_uring_setup,
    io_uring_enter = libc::SYS_io_uring_enter,
    io_uring_register = libc::SYS_io_uring_register,
    // Keyrings are not namespaced.
    keyctl = libc::SYS_keyctl,
    add_key = libc::SYS_add_key,
    request_key = libc::SYS_request_key,
    // File handles bypass path-based checks.
    open_by_handle_at = libc::SYS_open_by_handle_at,
    name_to_handle_at = libc::SYS_name_to_handle_at,
    // Host-wide state: swap, power, accounting, quotas, clocks, logs, ttys.
    swapon = libc::SYS_swapon,
    swapoff = libc::SYS_swapoff,
    reboot = libc::SYS_reboot,
    acct = libc::SYS_acct,
    quotactl = libc::SYS_quotactl,
    quotactl_fd = libc::SYS_quotactl_fd,
    settimeofday = libc::SYS_settimeofday,
    clock_settime = libc::SYS_clock_settime,
    clock_adjtime = libc::SYS_clock_adjtime,
    adjtimex = libc::SYS_adjtimex,
    syslog = libc::SYS_syslog,
    vhangup = libc::SYS_vhangup,
    fanotify_init = libc::SYS_fanotify_init,
    lookup_dcookie = libc::SYS_lookup_dcookie,
    // x86-only: port I/O and a.out libraries.
    #[cfg(target_arch = "x86_64")]
    iopl = libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    ioperm = libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    uselib = libc::SYS_uselib,
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
deny_table! {}

/// Syscalls allowed only for some arguments (see `build`), plus `clone3`, which
/// always fails with ENOSYS so that libc falls back to `clone`, whose flags a
/// filter can read (`clone3` passes them behind a pointer).
pub const ARGUMENT_FILTERED: &[&str] = &[
    "clone",
    "clone3",
    "socket",
    "socketpair",
    "ioctl",
    "chmod",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "mknod",
    "mknodat",
    "creat",
    "open",
    "openat",
    "openat2",
];

/// Namespace flags that `clone` may not carry. `CLONE_NEWTIME` (0x80) shares
/// bits with the exit signal in `clone`'s flags; no valid signal sets it, so
/// denying it there costs nothing.
const CLONE_NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWTIME,
];

/// Socket families the workload may create. Everything else (packet, vsock,
/// bluetooth, crypto, ...) fails with EAFNOSUPPORT, as on a kernel without it.
const ALLOWED_FAMILIES: &[libc::c_int] = &[
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];

/// Socket types that bypass the TCP/UDP stack on AF_INET/AF_INET6. libc
/// deprecates its `SOCK_PACKET` constant, but the kernel still accepts the type.
const SOCK_PACKET: libc::c_int = 10;
const RAW_SOCKET_TYPES: &[libc::c_int] = &[libc::SOCK_RAW, SOCK_PACKET];

/// The kernel masks a socket type with this to strip SOCK_NONBLOCK/SOCK_CLOEXEC.
const SOCK_TYPE_MASK: u64 = 0xf;

/// ioctls that inject input into, or reconfigure, the controlling terminal.
/// Values are the same on x86_64 and aarch64; a test checks them against libc.
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;

#[cfg(target_arch = "x86_64")]
mod arch {
    pub(super) const TARGET: Option<seccompiler::TargetArch> =
        Some(seccompiler::TargetArch::x86_64);
    /// AUDIT_ARCH_X86_64 = EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
    pub(super) const AUDIT_ARCH: u32 = 0xC000_003E;
    /// x32 syscalls are numbered `nr | __X32_SYSCALL_BIT`.
    pub(super) const X32_SYSCALL_BIT: Option<u32> = Some(0x4000_0000);
}

#[cfg(target_arch = "aarch64")]
mod arch {
    pub(super) const TARGET: Option<seccompiler::TargetArch> =
        Some(seccompiler::TargetArch::aarch64);
    /// AUDIT_ARCH_AARCH64 = EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
    pub(super) const AUDIT_ARCH: u32 = 0xC000_00B7;
    pub(super) const X32_SYSCALL_BIT: Option<u32> = None;
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod arch {
    pub(super) const TARGET: Option<seccompiler::TargetArch> = None;
    pub(super) const AUDIT_ARCH: u32 = 0;
    pub(super) const X32_SYSCALL_BIT: Option<u32> = None;
}

type RuleMap = BTreeMap<i64, Vec<SeccompRule>>;

/// Builds one 32-bit argument comparison. Every argument we inspect (flags,
/// family, type, ioctl command) is an `int` or `unsigned int` to the kernel,
/// which ignores the upper half, so comparing the low half is what counts.
fn cond(
    syscall: &'static str,
    arg: u8,
    op: Op,
    value: u64,
) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .map_err(|source| SeccompError::Rule { syscall, source })
}

fn rule(
    syscall: &'static str,
    conditions: Vec<SeccompCondition>,
) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conditions).map_err(|source| SeccompError::Rule { syscall, source })
}

/// Argument rules whose match returns EPERM. The syscalls refused whatever
/// their arguments are in [`deny_list_program`] instead.
fn argument_rules() -> Result<RuleMap, SeccompError> {
    let mut rules = RuleMap::new();

    // One rule per flag: rules for one syscall are OR'ed.
    let clone = CLONE_NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let flag = u64::from(flag as u32);
            rule("clone", vec![cond("clone", 0, Op::MaskedEq(flag), flag)?])
        })
        .collect::<Result<_, _>>()?;
    rules.insert(libc::SYS_clone, clone);

    let raw_type = |family: libc::c_int, ty: libc::c_int| {
        let family = cond("socket", 0, Op::Eq, family as u64)?;
        let ty = cond("socket", 1, Op::MaskedEq(SOCK_TYPE_MASK), ty as u64)?;
        rule("socket", vec![family, ty])
    };
    let raw = [libc::AF_INET, libc::AF_INET6]
        .iter()
        .flat_map(|&family| RAW_SOCKET_TYPES.iter().map(move |&ty| raw_type(family, ty)))
        .collect::<Result<_, _>>()?;
    rules.insert(libc::SYS_socket, raw);

    let mut ioctl: Vec<SeccompRule> = [TIOCSTI, TIOCLINUX]
        .iter()
        .map(|&cmd| rule("ioctl", vec![cond("ioctl", 1, Op::Eq, cmd)?]))
        .collect::<Result<_, _>>()?;
    // btrfs's own ioctls (type 0x94): a new subvolume or snapshot is not
    // counted in the qgroup that caps the sandbox's disk, so creating one
    // would escape the cap. The generic clone/dedupe calls sharing the
    // type stay allowed (`cp --reflink`).
    let mut btrfs = vec![cond("ioctl", 1, Op::MaskedEq(0xff00), 0x9400)?];
    for allowed in BTRFS_GENERIC_IOCTLS {
        btrfs.push(cond("ioctl", 1, Op::Ne, allowed)?);
    }
    ioctl.push(rule("ioctl", btrfs)?);
    rules.insert(libc::SYS_ioctl, ioctl);

    // Setuid and setgid bits: a file a sandbox makes in a bound host
    // directory would keep them on the host, runnable there by anyone as
    // the directory's owner. Every call that sets a mode is refused when
    // the mode has either bit (openat2, whose mode is behind a pointer,
    // is ENOSYS: see `deny_list_entries`).
    for &(nr, name, arg) in MODE_SETTERS {
        let rules_for = SETID_BITS
            .iter()
            .map(|&bit| rule(name, vec![cond(name, arg, Op::MaskedEq(bit), bit)?]))
            .collect::<Result<_, _>>()?;
        rules.insert(nr, rules_for);
    }
    for &(nr, name, flags, mode) in CREATING_OPENS {
        let mut r = Vec::new();
        for creating in [libc::O_CREAT as u64, O_TMPFILE_BIT] {
            for &bit in SETID_BITS {
                r.push(rule(
                    name,
                    vec![
                        cond(name, flags, Op::MaskedEq(creating), creating)?,
                        cond(name, mode, Op::MaskedEq(bit), bit)?,
                    ],
                )?);
            }
        }
        rules.insert(nr, r);
    }
    Ok(rules)
}

/// The generic ioctls of type 0x94: FICLONE, FICLONERANGE, FIDEDUPERANGE.
const BTRFS_GENERIC_IOCTLS: [u64; 3] = [0x4004_9409, 0x4020_940d, 0xc018_9436];

/// `S_ISUID` and `S_ISGID`.
const SETID_BITS: &[u64] = &[0o4000, 0o2000];

/// `__O_TMPFILE` (O_TMPFILE without O_DIRECTORY), the same on x86_64 and
/// aarch64.
const O_TMPFILE_BIT: u64 = 0o2000_0000;

/// `fchmodat2`, new in Linux 6.6 (the same number everywhere).
const SYS_FCHMODAT2: libc::c_long = 452;

/// Calls that set a file's mode, and which argument holds it.
const MODE_SETTERS: &[(libc::c_long, &str, u8)] = &[
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_chmod, "chmod", 1),
    (libc::SYS_fchmod, "fchmod", 1),
    (libc::SYS_fchmodat, "fchmodat", 2),
    (SYS_FCHMODAT2, "fchmodat2", 2),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_mknod, "mknod", 1),
    (libc::SYS_mknodat, "mknodat", 2),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_creat, "creat", 1),
];

/// Opens that may create a file: the flags' and the mode's argument.
const CREATING_OPENS: &[(libc::c_long, &str, u8, u8)] = &[
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_open, "open", 1, 2),
    (libc::SYS_openat, "openat", 2, 3),
];

/// Rules whose match returns EAFNOSUPPORT: a family outside the allow list.
fn family_rules() -> Result<RuleMap, SeccompError> {
    // Conditions inside one rule are AND'ed: "not unix and not inet and ...".
    let not_allowed = ALLOWED_FAMILIES
        .iter()
        .map(|&family| cond("socket", 0, Op::Ne, family as u64))
        .collect::<Result<_, _>>()?;
    let not_unix = cond("socketpair", 0, Op::Ne, libc::AF_UNIX as u64)?;
    Ok(BTreeMap::from([
        (libc::SYS_socket, vec![rule("socket", not_allowed)?]),
        (
            libc::SYS_socketpair,
            vec![rule("socketpair", vec![not_unix])?],
        ),
    ]))
}

fn compile(
    name: &'static str,
    rules: RuleMap,
    errno: i32,
    target: TargetArch,
) -> Result<(&'static str, BpfProgram), SeccompError> {
    let err = |source| SeccompError::Compile {
        filter: name,
        source,
    };
    let on_match = SeccompAction::Errno(errno as u32);
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, on_match, target).map_err(err)?;
    Ok((name, BpfProgram::try_from(filter).map_err(err)?))
}

/// One classic-BPF instruction (`code` fits in 16 bits for every opcode).
const fn insn(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    let code = code as u16;
    sock_filter { code, jt, jf, k }
}

/// The opcodes of the hand-written programs. All are ones the kernel's
/// action-cache emulator understands, so on install it can mark every native
/// syscall number these programs allow as "always allowed".
const LD_ABS: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
const JEQ: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
const JGE: u32 = libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K;
const RET: u32 = libc::BPF_RET | libc::BPF_K;
/// `offsetof(struct seccomp_data, nr)` and `offsetof(struct seccomp_data, arch)`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

const RET_EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

/// Hand-written guard, installed before the other filters.
///
/// Why: a seccomp filter sees `(arch, nr)`, and the same arch can carry more
/// than one syscall table. On x86_64 the x32 ABI reports AUDIT_ARCH_X86_64 too,
/// with `nr | 0x40000000`; the other filters compare `nr` exactly, so `mount`
/// made through x32 would match no deny rule and be allowed. This guard returns
/// EPERM for every x32 number instead. It also kills the process if the arch is
/// not the native one (i386 via `int 0x80`, AArch32 compat), whose numbers mean
/// different syscalls; the other filters check the arch too, but the guard
/// does not rely on that.
fn guard_program(audit_arch: u32, x32_bit: Option<u32>) -> BpfProgram {
    let mut prog = vec![
        insn(LD_ABS, ARCH_OFFSET, 0, 0),
        insn(JEQ, audit_arch, 1, 0),
        insn(RET, libc::SECCOMP_RET_KILL_PROCESS, 0, 0),
    ];
    if let Some(bit) = x32_bit {
        prog.extend([
            insn(LD_ABS, NR_OFFSET, 0, 0),
            insn(JGE, bit, 0, 1),
            insn(RET, RET_EPERM, 0, 0),
        ]);
    }
    prog.push(insn(RET, libc::SECCOMP_RET_ALLOW, 0, 0));
    prog
}

/// Name of the hand-written deny list, in errors.
const DENY_LIST: &str = "deny list";

/// A search-tree leaf compares at most this many numbers one by one.
const LEAF_SIZE: usize = 4;

/// The syscalls refused whatever their arguments: `(nr, seccomp return value)`,
/// sorted by number, each number once.
fn deny_list_entries() -> Vec<(u32, u32)> {
    // Syscall numbers are small and positive, so `as u32` is exact.
    let mut entries = vec![
        (libc::SYS_clone3 as u32, RET_ENOSYS),
        (libc::SYS_openat2 as u32, RET_ENOSYS),
    ];
    entries.extend(DENIED_NUMBERS.iter().map(|&nr| (nr as u32, RET_EPERM)));
    // A stable sort keeps `clone3` first among equal numbers, should the table
    // ever list it too, so it keeps its ENOSYS as when it had its own filter.
    entries.sort_by_key(|&(nr, _)| nr);
    entries.dedup_by_key(|&mut (nr, _)| nr);
    entries
}

/// Hand-written deny list: checks the arch like [`guard_program`], then looks
/// the syscall number up in `entries` (sorted, no repeats) by binary search and
/// returns its action, or ALLOW if it is not there.
///
/// Any path through it is short: 3 instructions to check the arch and load
/// `nr`, one `>=` per halving of the list down to [`LEAF_SIZE`] entries, at
/// most that many `==` tests and a return; 12 for today's ~50 entries, where
/// `seccompiler`'s linear chain tested every listed number in turn. That
/// matters because the kernel runs each new filter once per syscall number
/// when it is installed (see the module documentation).
fn deny_list_program(audit_arch: u32, entries: &[(u32, u32)]) -> Result<BpfProgram, SeccompError> {
    let mut prog = vec![
        insn(LD_ABS, ARCH_OFFSET, 0, 0),
        insn(JEQ, audit_arch, 1, 0),
        insn(RET, libc::SECCOMP_RET_KILL_PROCESS, 0, 0),
        insn(LD_ABS, NR_OFFSET, 0, 0),
    ];
    emit_search(entries, &mut prog)?;
    if prog.len() >= libc::BPF_MAXINSNS as usize {
        return Err(SeccompError::Compile {
            filter: DENY_LIST,
            source: BackendError::FilterTooLarge(prog.len()),
        });
    }
    Ok(prog)
}

/// Appends code that, with the syscall number in the accumulator, returns the
/// action of the entry with that number, or ALLOW. `entries` is sorted.
///
/// A node tests `nr >= first number of the upper half`: if so it jumps over the
/// lower half's code to the upper half's, else it falls through to the lower
/// half's. Jumps only go forward, as classic BPF requires.
fn emit_search(entries: &[(u32, u32)], prog: &mut BpfProgram) -> Result<(), SeccompError> {
    if entries.len() <= LEAF_SIZE {
        return emit_leaf(entries, prog);
    }
    let (lower, upper) = entries.split_at(entries.len() / 2);
    let node = prog.len();
    prog.push(insn(JGE, upper[0].0, 0, 0));
    emit_search(lower, prog)?;
    prog[node].jt = jump_offset(node, prog.len())?;
    emit_search(upper, prog)
}

/// A leaf: one `nr == X` test per entry, each jumping to the return of its
/// action; no match falls through to `return ALLOW`. The returns follow, one
/// per distinct action.
fn emit_leaf(entries: &[(u32, u32)], prog: &mut BpfProgram) -> Result<(), SeccompError> {
    let mut actions: Vec<u32> = Vec::new();
    for &(_, action) in entries {
        if !actions.contains(&action) {
            actions.push(action);
        }
    }
    let first_test = prog.len();
    let first_return = first_test + entries.len() + 1;
    for (i, &(nr, action)) in entries.iter().enumerate() {
        let slot = actions.iter().position(|&a| a == action).unwrap_or(0);
        let jt = jump_offset(first_test + i, first_return + slot)?;
        prog.push(insn(JEQ, nr, jt, 0));
    }
    prog.push(insn(RET, libc::SECCOMP_RET_ALLOW, 0, 0));
    prog.extend(actions.iter().map(|&action| insn(RET, action, 0, 0)));
    Ok(())
}

/// The `jt`/`jf` value that takes the jump at index `from` to index `to`
/// (`to > from`). Refuses, rather than truncates, what does not fit in a u8.
fn jump_offset(from: usize, to: usize) -> Result<u8, SeccompError> {
    let offset = to - from - 1;
    u8::try_from(offset).map_err(|_| SeccompError::JumpTooFar {
        filter: DENY_LIST,
        offset,
    })
}

/// Compiles the workload's filters for the running architecture.
pub fn build() -> Result<SeccompFilters, SeccompError> {
    let target = arch::TARGET.ok_or(SeccompError::UnsupportedArch(std::env::consts::ARCH))?;
    Ok(SeccompFilters {
        programs: vec![
            (
                "architecture guard",
                guard_program(arch::AUDIT_ARCH, arch::X32_SYSCALL_BIT),
            ),
            (
                DENY_LIST,
                deny_list_program(arch::AUDIT_ARCH, &deny_list_entries())?,
            ),
            compile("argument rules", argument_rules()?, libc::EPERM, target)?,
            compile("socket family", family_rules()?, libc::EAFNOSUPPORT, target)?,
        ],
    })
}

/// `struct sock_fprog` pointing at `seccompiler`'s `sock_filter`, which has
/// the kernel's layout (`repr(C)`, u16/u8/u8/u32).
#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const sock_filter,
}

/// Installs the filters on the calling thread (and so on everything it
/// `execve`s or forks). Allocates nothing: safe between `fork` and `execve`.
///
/// Requires `no_new_privs` (see `caps::set_no_new_privs`): without it the
/// kernel only accepts a filter from a holder of CAP_SYS_ADMIN, and we want one
/// rule for every mode. On error some filters may already be installed; the
/// caller must not start the workload.
pub fn install(f: &SeccompFilters) -> Result<(), SeccompError> {
    // prctl is variadic: pass full-width zeros, which this option requires.
    let zero: libc::c_ulong = 0;
    // SAFETY: PR_GET_NO_NEW_PRIVS takes no pointers and only returns a flag.
    let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, zero, zero, zero, zero) };
    if nnp < 0 {
        return Err(SeccompError::ReadNoNewPrivs(io::Error::last_os_error()));
    }
    if nnp != 1 {
        return Err(SeccompError::NoNewPrivsNotSet);
    }
    for (filter, program) in &f.programs {
        let prog = SockFprog {
            // `seccompiler` and `deny_list_program` reject programs of
            // BPF_MAXINSNS (4096) or more and the guard is tiny, so this never
            // truncates.
            len: program.len() as libc::c_ushort,
            filter: program.as_ptr(),
        };
        // SAFETY: `prog` points at `program`, which outlives the call and holds
        // `len` instructions; the kernel copies the program and keeps no pointer.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0 as libc::c_ulong,
                &prog as *const SockFprog,
            )
        };
        if rc != 0 {
            return Err(SeccompError::Install {
                filter,
                source: io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::test_child;
    use libc::{AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_UNIX, AF_VSOCK, SOCK_RAW};
    use std::ffi::CStr;
    use std::os::unix::process::CommandExt;

    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const EAFNOSUPPORT: u32 = libc::SECCOMP_RET_ERRNO | libc::EAFNOSUPPORT as u32;
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;

    /// Runs one program as the kernel would, on a hand-made `seccomp_data`.
    /// Covers the instructions `seccompiler` and the hand-written filters emit.
    fn run_bpf(prog: &[sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        run_bpf_counted(prog, nr, arch, args).0
    }

    /// [`run_bpf`], also returning how many instructions ran.
    fn run_bpf_counted(prog: &[sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> (u32, usize) {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, arg) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_ne_bytes());
        }
        let (mut acc, mut pc, mut steps) = (0u32, 0usize, 0usize);
        let (jmp, k_) = (libc::BPF_JMP, libc::BPF_K);
        loop {
            let ins = &prog[pc];
            pc += 1;
            steps += 1;
            let k = ins.k as usize;
            let branch = |taken: bool| usize::from(if taken { ins.jt } else { ins.jf });
            match u32::from(ins.code) {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap())
                }
                c if c == libc::BPF_ALU | libc::BPF_AND | k_ => acc &= ins.k,
                c if c == jmp | libc::BPF_JA => pc += k,
                c if c == jmp | libc::BPF_JEQ | k_ => pc += branch(acc == ins.k),
                c if c == jmp | libc::BPF_JGE | k_ => pc += branch(acc >= ins.k),
                c if c == jmp | libc::BPF_JGT | k_ => pc += branch(acc > ins.k),
                c if c == libc::BPF_RET | k_ => return (ins.k, steps),
                c => panic!("unexpected BPF opcode {c:#x}"),
            }
        }
    }

    /// The kernel's verdict over stacked filters: the most severe action wins
    /// (compared as signed), ties going to the most recently installed one.
    fn verdict_arch(nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        stack_verdict(&build().unwrap().programs, nr, arch, args)
    }

    /// [`verdict_arch`] over any stack of programs, in install order.
    fn stack_verdict(programs: &[(&str, BpfProgram)], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let mut results = programs.iter().rev();
        let results = results.by_ref().map(|(_, p)| run_bpf(p, nr, arch, args));
        results
            .min_by_key(|r| (r & libc::SECCOMP_RET_ACTION_FULL) as i32)
            .unwrap()
    }

    fn verdict(nr: libc::c_long, a0: i64, a1: i64) -> u32 {
        verdict_arch(
            nr as u32,
            arch::AUDIT_ARCH,
            [a0 as u64, a1 as u64, 0, 0, 0, 0],
        )
    }

    const ENOSYS: u32 = RET_ENOSYS;
    const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;
    const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
    /// The exhaustive tests cover every syscall number below this; the highest
    /// number on x86_64 and aarch64 is under 500.
    const NR_LIMIT: u32 = 1024;

    fn deny_list(filters: &SeccompFilters) -> &[sock_filter] {
        let found = filters.programs.iter().find(|(name, _)| *name == DENY_LIST);
        &found.expect("the deny list is one of the filters").1
    }

    /// Arguments for the exhaustive tests: all zeros, all ones, and a match and
    /// a near miss of every argument rule, also with junk in the upper halves.
    fn argument_sets() -> Vec<[u64; 6]> {
        let (sigchld, high) = (i64::from(libc::SIGCHLD), 1i64 << 32);
        let clone = |flag: i32| i64::from(flag) | sigchld;
        let pairs: Vec<(i64, i64)> = vec![
            (0, 0),
            (-1, -1),
            (sigchld, 0),
            (clone(libc::CLONE_NEWUSER), 0),
            (clone(libc::CLONE_NEWTIME), 0),
            (clone(libc::CLONE_NEWNS) | high, 0),
            (clone(libc::CLONE_VM | libc::CLONE_THREAD), 0),
            (AF_INET.into(), SOCK_RAW.into()),
            (AF_INET6.into(), (SOCK_PACKET | libc::SOCK_CLOEXEC).into()),
            (i64::from(AF_INET) | high, i64::from(SOCK_RAW) | high),
            (AF_INET.into(), libc::SOCK_DGRAM.into()),
            (AF_NETLINK.into(), SOCK_RAW.into()),
            (AF_UNIX.into(), libc::SOCK_STREAM.into()),
            (AF_PACKET.into(), SOCK_RAW.into()),
            (AF_VSOCK.into(), libc::SOCK_STREAM.into()),
            (0, TIOCSTI as i64),
            (1, TIOCLINUX as i64 | high),
            (2, 0x5413),      // TIOCGWINSZ
            (3, 0x5000_940e), // BTRFS_IOC_SUBVOL_CREATE
            (3, 0x4004_9409), // FICLONE
            (3, 0xc018_9436), // FIDEDUPERANGE
            (3, 0x9400),
            (0, 0o4755),
            (0, 0o2755),
            (0, 0o755 | high),
        ];
        let mut sets: Vec<[u64; 6]> = pairs
            .into_iter()
            .map(|(a0, a1)| [a0 as u64, a1 as u64, 7, u64::MAX, 0, 1])
            .collect();
        // Modes and open flags in the third and fourth arguments.
        let creat = libc::O_CREAT as u64;
        let tmpfile = libc::O_TMPFILE as u64;
        for (a1, a2, a3) in [
            (0, 0o4755, 0),
            (0, 0o755, 0o6755),
            (creat, 0o4755, 0),
            (creat | libc::O_WRONLY as u64, 0o2644, 0o644),
            (tmpfile, 0o6000, 0),
            (0, creat, 0o4755),
            (0, creat | 1, 0o2000),
            (0, creat, 0o755),
            (0, tmpfile, 0o4700),
            (0, libc::O_RDONLY as u64, 0o4755),
        ] {
            sets.push([u64::MAX, a1, a2, a3, 0, 0]);
        }
        sets
    }

    /// What the filters must answer on the native arch, written from the
    /// design (`docs/seccomp.md`) rather than from the filter-building code.
    fn reference_verdict(nr: u32, args: [u64; 6]) -> u32 {
        // The kernel reads every inspected argument as 32 bits.
        let (a0, a1) = (args[0] as u32, args[1] as u32);
        let namespaces = libc::CLONE_NEWNS
            | libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP
            | libc::CLONE_NEWTIME;
        let family = a0 as i32;
        let allowed_family = [AF_UNIX, AF_INET, AF_INET6, AF_NETLINK].contains(&family);
        let raw = [AF_INET, AF_INET6].contains(&family) && [3, 10].contains(&(a1 & 0xf));
        let nr = libc::c_long::from(nr);
        let (a2, a3) = (args[2] as u32, args[3] as u32);
        let setid = |mode: u32| mode & 0o6000 != 0;
        let creating = |flags: u32| flags & 0o100 != 0 || flags & 0o2000_0000 != 0;
        let btrfs = a1 & 0xff00 == 0x9400 && ![0x4004_9409, 0x4020_940d, 0xc018_9436].contains(&a1);
        #[cfg(target_arch = "x86_64")]
        match nr {
            libc::SYS_chmod | libc::SYS_mknod | libc::SYS_creat if setid(a1) => return EPERM,
            libc::SYS_open if creating(a1) && setid(a2) => return EPERM,
            _ => {}
        }
        match nr {
            _ if DENIED_NUMBERS.contains(&nr) => EPERM,
            libc::SYS_clone3 | libc::SYS_openat2 => ENOSYS,
            libc::SYS_fchmod if setid(a1) => EPERM,
            libc::SYS_fchmodat | libc::SYS_mknodat | 452 if setid(a2) => EPERM,
            libc::SYS_openat if creating(a2) && setid(a3) => EPERM,
            libc::SYS_ioctl if btrfs => EPERM,
            libc::SYS_clone if a0 & namespaces as u32 != 0 => EPERM,
            libc::SYS_socket if !allowed_family => EAFNOSUPPORT,
            libc::SYS_socket if raw => EPERM,
            libc::SYS_socketpair if family != AF_UNIX => EAFNOSUPPORT,
            libc::SYS_ioctl if a1 == 0x5412 || a1 == 0x541C => EPERM,
            _ => ALLOW,
        }
    }

    /// The filters as they were before the deny list was written by hand:
    /// every rule compiled by `seccompiler`, whose linear chains are easy to
    /// trust. A second reference for the exhaustive test and a foil for the
    /// step bound.
    fn seccompiler_only_filters() -> Vec<(&'static str, BpfProgram)> {
        let target = arch::TARGET.unwrap();
        let mut eperm = argument_rules().unwrap();
        eperm.extend(DENIED_NUMBERS.iter().map(|&nr| (nr, Vec::new())));
        let clone3 = BTreeMap::from([
            (libc::SYS_clone3, Vec::new()),
            (libc::SYS_openat2, Vec::new()),
        ]);
        vec![
            (
                "architecture guard",
                guard_program(arch::AUDIT_ARCH, arch::X32_SYSCALL_BIT),
            ),
            compile("EPERM deny list", eperm, libc::EPERM, target).unwrap(),
            compile(
                "socket family",
                family_rules().unwrap(),
                libc::EAFNOSUPPORT,
                target,
            )
            .unwrap(),
            compile("clone3", clone3, libc::ENOSYS, target).unwrap(),
        ]
    }

    #[test]
    fn every_number_and_argument_set_gets_the_reference_verdict() {
        let filters = build().unwrap();
        let args = argument_sets();
        for nr in 0..NR_LIMIT {
            for &a in &args {
                let got = stack_verdict(&filters.programs, nr, arch::AUDIT_ARCH, a);
                assert_eq!(got, reference_verdict(nr, a), "nr {nr}, args {a:#x?}");
            }
        }
        for foreign in [AUDIT_ARCH_I386, AUDIT_ARCH_ARM] {
            for nr in 0..NR_LIMIT {
                assert_eq!(stack_verdict(&filters.programs, nr, foreign, [0; 6]), KILL);
            }
        }
        if let Some(bit) = arch::X32_SYSCALL_BIT {
            for nr in 0..NR_LIMIT {
                let got = stack_verdict(&filters.programs, bit | nr, arch::AUDIT_ARCH, [0; 6]);
                assert_eq!(got, EPERM, "x32 nr {nr}");
            }
        }
    }

    #[test]
    fn verdicts_are_those_of_the_seccompiler_only_filters() {
        let (new, old) = (build().unwrap(), seccompiler_only_filters());
        let x32 = arch::X32_SYSCALL_BIT.unwrap_or(0);
        let numbers = (0..NR_LIMIT).chain((0..NR_LIMIT).map(|nr| x32 | nr));
        let numbers: Vec<u32> = numbers
            .chain([0x3fff_ffff, 0x7fff_ffff, u32::MAX])
            .collect();
        let arches = [
            arch::AUDIT_ARCH,
            AUDIT_ARCH_I386,
            AUDIT_ARCH_ARM,
            0,
            u32::MAX,
        ];
        for &nr in &numbers {
            for arch in arches {
                for a in argument_sets() {
                    assert_eq!(
                        stack_verdict(&new.programs, nr, arch, a),
                        stack_verdict(&old, nr, arch, a),
                        "nr {nr:#x}, arch {arch:#x}, args {a:#x?}"
                    );
                }
            }
        }
    }

    /// The kernel runs each new filter once per syscall number of the arch
    /// when it is installed, so the longest path is what install costs.
    #[test]
    fn deny_list_looks_a_number_up_in_a_few_steps() {
        const MAX_STEPS: usize = 16;
        let longest = |prog: &[sock_filter]| {
            let x32 = arch::X32_SYSCALL_BIT.unwrap_or(0);
            (0..NR_LIMIT)
                .chain([x32, u32::MAX])
                .map(|nr| run_bpf_counted(prog, nr, arch::AUDIT_ARCH, [0; 6]).1)
                .max()
                .unwrap()
        };
        let filters = build().unwrap();
        let steps = longest(deny_list(&filters));
        assert!(steps <= MAX_STEPS, "{steps} steps");
        // The bound is one a linear chain cannot meet: the `seccompiler`
        // program for the same list takes far longer.
        let rules = DENIED_NUMBERS.iter().map(|&nr| (nr, Vec::new())).collect();
        let target = arch::TARGET.unwrap();
        let (_, chain) = compile("linear", rules, libc::EPERM, target).unwrap();
        assert!(longest(&chain) > 4 * MAX_STEPS, "{} steps", longest(&chain));
    }

    #[test]
    fn search_tree_finds_every_entry_for_every_list_size() {
        for len in 0..=100u32 {
            let action = |i: u32| {
                if i.is_multiple_of(3) {
                    RET_ENOSYS
                } else {
                    RET_EPERM
                }
            };
            // Gaps and a contiguous run, so the tree splits inside both.
            let nr = |i: u32| if i < len / 2 { 5 * i + 2 } else { 5 * len + i };
            let entries: Vec<(u32, u32)> = (0..len).map(|i| (nr(i), action(i))).collect();
            let prog = deny_list_program(arch::AUDIT_ARCH, &entries).unwrap();
            let last = entries.last().map_or(0, |&(nr, _)| nr);
            for nr in 0..last + 3 {
                let want = entries.iter().find(|e| e.0 == nr).map_or(ALLOW, |e| e.1);
                let (got, steps) = run_bpf_counted(&prog, nr, arch::AUDIT_ARCH, [0; 6]);
                assert_eq!(got, want, "{len} entries, nr {nr}");
                // 3 to check the arch and load nr, one split per halving,
                // then a leaf of at most LEAF_SIZE tests and a return.
                let depth = (len as usize)
                    .div_ceil(LEAF_SIZE)
                    .next_power_of_two()
                    .ilog2();
                assert!(
                    steps <= 3 + depth as usize + LEAF_SIZE + 1,
                    "{len}: {steps}"
                );
            }
            let foreign = run_bpf(&prog, 0, AUDIT_ARCH_I386, [0; 6]);
            assert_eq!(foreign, KILL);
        }
    }

    #[test]
    fn search_tree_refuses_jumps_beyond_255() {
        let entries: Vec<(u32, u32)> = (0..1000).map(|nr| (nr, RET_EPERM)).collect();
        let err = deny_list_program(arch::AUDIT_ARCH, &entries).unwrap_err();
        assert!(
            matches!(err, SeccompError::JumpTooFar { offset, .. } if offset > 255),
            "{err}"
        );
        // The real table is nowhere near that.
        assert!(deny_list_program(arch::AUDIT_ARCH, &deny_list_entries()).is_ok());
    }

    #[test]
    fn deny_list_numbers_are_distinct_and_argument_free() {
        let mut sorted = DENIED_NUMBERS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            DENIED_NUMBERS.len(),
            "a number is listed twice"
        );
        let filtered = [
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_socket,
            libc::SYS_socketpair,
            libc::SYS_ioctl,
            libc::SYS_openat,
            libc::SYS_openat2,
            libc::SYS_fchmod,
            libc::SYS_fchmodat,
            libc::SYS_mknodat,
        ];
        for nr in filtered {
            assert!(!DENIED_NUMBERS.contains(&nr), "{nr} has argument rules");
        }
        // clone3 and openat2 are ENOSYS in the same table.
        assert_eq!(deny_list_entries().len(), DENIED_NUMBERS.len() + 2);
    }

    #[test]
    fn denies_every_syscall_the_design_requires() {
        let required = "mount umount2 pivot_root move_mount open_tree fsopen fsconfig fsmount \
            fspick mount_setattr chroot unshare setns ptrace process_vm_readv process_vm_writev \
            kexec_load kexec_file_load init_module finit_module delete_module bpf perf_event_open \
            keyctl add_key request_key userfaultfd io_uring_setup io_uring_enter io_uring_register \
            open_by_handle_at name_to_handle_at swapon swapoff reboot acct quotactl quotactl_fd \
            settimeofday clock_settime clock_adjtime adjtimex syslog vhangup lookup_dcookie \
            fanotify_init pidfd_getfd";
        let x86 = if cfg!(target_arch = "x86_64") {
            "iopl ioperm uselib"
        } else {
            ""
        };
        for name in required.split_whitespace().chain(x86.split_whitespace()) {
            assert!(DENIED_SYSCALLS.contains(&name), "{name} is not denied");
        }
        assert_eq!(DENIED_SYSCALLS.len(), DENIED_NUMBERS.len());
    }

    // libc's `Ioctl` is u64 here but c_int on musl, so these casts are needed.
    #[allow(clippy::unnecessary_cast)]
    #[test]
    fn local_constants_match_libc() {
        assert_eq!(
            (TIOCSTI, TIOCLINUX),
            (libc::TIOCSTI as u64, libc::TIOCLINUX as u64)
        );
        #[allow(deprecated)]
        let packet = libc::SOCK_PACKET;
        assert_eq!(SOCK_PACKET, packet);
    }

    #[test]
    fn every_program_fits_the_kernel_limit() {
        let filters = build().unwrap();
        assert_eq!(filters.filter_names().count(), 4);
        assert!(filters
            .programs
            .iter()
            .all(|(_, p)| (1..4096).contains(&p.len())));
    }

    #[test]
    fn bpf_denies_listed_syscalls_whatever_the_arguments() {
        for (name, &nr) in DENIED_SYSCALLS.iter().zip(DENIED_NUMBERS) {
            assert_eq!(verdict(nr, -1, -1), EPERM, "{name}");
            assert_eq!(verdict(nr, 0, 0), EPERM, "{name}");
        }
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        assert_eq!(verdict(libc::SYS_clone3, 0, 0), enosys);
        assert_eq!(verdict(libc::SYS_getpid, 0, 0), ALLOW);
        assert_eq!(verdict(libc::SYS_openat, 0, 0), ALLOW);
    }

    #[test]
    fn bpf_denies_clone_with_any_namespace_flag_only() {
        let sigchld = i64::from(libc::SIGCHLD);
        for &flag in CLONE_NAMESPACE_FLAGS {
            let flags = i64::from(flag) | sigchld;
            assert_eq!(verdict(libc::SYS_clone, flags, 0), EPERM, "{flag:#x}");
            // The kernel ignores the upper half of clone's flags; so do we.
            assert_eq!(verdict(libc::SYS_clone, flags | 1 << 40, 0), EPERM);
        }
        let thread = libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_FILES | libc::CLONE_SIGHAND;
        let thread = thread | libc::CLONE_THREAD | libc::CLONE_SYSVSEM | libc::CLONE_SETTLS;
        let thread = thread | libc::CLONE_PARENT_SETTID | libc::CLONE_CHILD_CLEARTID;
        assert_eq!(verdict(libc::SYS_clone, thread.into(), 0), ALLOW);
        assert_eq!(verdict(libc::SYS_clone, sigchld, 0), ALLOW);
    }

    #[test]
    fn bpf_filters_socket_families_and_raw_types() {
        let socket = |family: i32, ty: i32| verdict(libc::SYS_socket, family.into(), ty.into());
        for family in [AF_PACKET, AF_VSOCK, libc::AF_ALG, libc::AF_BLUETOOTH, 0] {
            assert_eq!(socket(family, libc::SOCK_STREAM), EAFNOSUPPORT, "{family}");
        }
        for &family in ALLOWED_FAMILIES {
            assert_eq!(
                socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC),
                ALLOW
            );
        }
        for family in [AF_INET, AF_INET6] {
            assert_eq!(socket(family, SOCK_RAW), EPERM);
            assert_eq!(socket(family, SOCK_RAW | libc::SOCK_NONBLOCK), EPERM);
            assert_eq!(socket(family, SOCK_PACKET), EPERM);
            assert_eq!(socket(family, libc::SOCK_DGRAM), ALLOW);
        }
        assert_eq!(socket(AF_NETLINK, SOCK_RAW), ALLOW);
        assert_eq!(verdict(libc::SYS_socketpair, AF_UNIX.into(), 1), ALLOW);
        assert_eq!(
            verdict(libc::SYS_socketpair, AF_INET.into(), 1),
            EAFNOSUPPORT
        );
    }

    #[allow(clippy::unnecessary_cast)] // as in `local_constants_match_libc`
    #[test]
    fn bpf_denies_terminal_injection_ioctls() {
        let ioctl = |cmd: u64| verdict(libc::SYS_ioctl, 0, cmd as i64);
        assert_eq!((ioctl(TIOCSTI), ioctl(TIOCLINUX)), (EPERM, EPERM));
        assert_eq!(
            ioctl(TIOCSTI | 1 << 32),
            EPERM,
            "the kernel truncates cmd to 32 bits"
        );
        assert_eq!(ioctl(libc::FIONREAD as u64), ALLOW);
    }

    #[test]
    fn bpf_guard_kills_foreign_arches_and_denies_x32() {
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
        let kill = libc::SECCOMP_RET_KILL_PROCESS;
        for foreign in [AUDIT_ARCH_I386, AUDIT_ARCH_ARM] {
            assert_eq!(verdict_arch(20, foreign, [0; 6]), kill);
        }
        if let Some(bit) = arch::X32_SYSCALL_BIT {
            for nr in [libc::SYS_mount, libc::SYS_getpid] {
                assert_eq!(
                    verdict_arch(bit | nr as u32, arch::AUDIT_ARCH, [0; 6]),
                    EPERM
                );
            }
        }
    }

    #[test]
    fn install_refuses_without_no_new_privs() {
        // no_new_privs is per thread, and harness threads lack it unless the
        // whole test process started with it (some CI sandboxes do that); then
        // install would really filter this thread, so skip.
        let zero: libc::c_ulong = 0;
        // SAFETY: PR_GET_NO_NEW_PRIVS takes no pointers.
        if unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, zero, zero, zero, zero) } == 1 {
            eprintln!("skipped: the test process already runs with no_new_privs");
            return;
        }
        let err = install(&build().unwrap()).unwrap_err();
        assert!(matches!(err, SeccompError::NoNewPrivsNotSet), "{err}");
    }

    /// `syscall(nr, args...)` as `Ok(return value)` or `Err(errno)`.
    fn sys(nr: libc::c_long, a: [u64; 6]) -> Result<libc::c_long, i32> {
        // SAFETY: every pointer argument the callers pass is either valid for
        // what the syscall does with it or an address the kernel rejects with
        // EFAULT (all-ones); no call writes to memory we did not offer.
        let rc = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
        let errno = || io::Error::last_os_error().raw_os_error().unwrap();
        if rc < 0 {
            Err(errno())
        } else {
            Ok(rc)
        }
    }

    /// Raw `clone` without CLONE_VM, i.e. fork. A child that got through the
    /// filter exits at once so the assertions never run twice.
    fn raw_clone(flags: i32) -> Result<(), i32> {
        let pid = sys(
            libc::SYS_clone,
            [(flags | libc::SIGCHLD) as u64, 0, 0, 0, 0, 0],
        )?;
        if pid == 0 {
            // SAFETY: we are the clone child; _exit is async-signal-safe.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: pid is our child; a null status pointer is allowed.
        unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::__WALL) };
        Ok(())
    }

    fn socket(family: i32, ty: i32, proto: i32) -> Result<libc::c_long, i32> {
        let fd = sys(
            libc::SYS_socket,
            [family, ty, proto, 0, 0, 0].map(|a| a as u64),
        )?;
        // SAFETY: fd was just returned to us and is closed once.
        unsafe { libc::close(fd as i32) };
        Ok(fd)
    }

    fn mount_tmpfs(nr: libc::c_long) -> Result<libc::c_long, i32> {
        let dir = std::env::var("STOCKADE_TEST_MOUNT_DIR").unwrap();
        let dir = std::ffi::CString::new(dir).unwrap();
        let ptrs = [c"none", &dir, c"tmpfs"].map(|s| s.as_ptr() as u64);
        sys(nr, [ptrs[0], ptrs[1], ptrs[2], 0, 0, 0])
    }

    /// The attacks. "filtered" runs under the filters, "control" in the same
    /// namespaces without them, to show each attack would otherwise work.
    #[allow(clippy::unnecessary_cast)] // as in `local_constants_match_libc`
    #[test]
    fn child_entry() {
        let Some(scenario) = test_child::scenario() else {
            return;
        };
        let x32_mount = arch::X32_SYSCALL_BIT.map(|bit| libc::c_long::from(bit) | libc::SYS_mount);
        let ioctl_stdin = |cmd: u64| sys(libc::SYS_ioctl, [0, cmd, c"x".as_ptr() as u64, 0, 0, 0]);
        let eperm = Err(libc::EPERM);
        if scenario == "control" {
            assert_eq!(mount_tmpfs(libc::SYS_mount), Ok(0));
            assert_eq!(raw_clone(libc::CLONE_NEWNET), Ok(()));
            assert_eq!(sys(libc::SYS_clone3, [0; 6]), Err(libc::EINVAL));
            assert!(socket(AF_PACKET, SOCK_RAW, 0).is_ok());
            assert!(socket(AF_INET, SOCK_RAW, libc::IPPROTO_ICMP).is_ok());
            assert_eq!(ioctl_stdin(TIOCSTI), Err(libc::ENOTTY));
            if let Some(nr) = x32_mount {
                assert_ne!(mount_tmpfs(nr), eperm, "x32 mount");
            }
            return;
        }
        for (name, &nr) in DENIED_SYSCALLS.iter().zip(DENIED_NUMBERS) {
            // All-ones arguments: harmless even if a call got through.
            assert_eq!(sys(nr, [u64::MAX; 6]), eperm, "{name}");
        }
        assert_eq!(mount_tmpfs(libc::SYS_mount), eperm);
        let unshare_user = [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0];
        assert_eq!(sys(libc::SYS_unshare, unshare_user), eperm);
        for &flag in CLONE_NAMESPACE_FLAGS {
            assert_eq!(raw_clone(flag), Err(libc::EPERM), "clone {flag:#x}");
        }
        assert_eq!(sys(libc::SYS_clone3, [0; 6]), Err(libc::ENOSYS));
        assert_eq!(socket(AF_PACKET, SOCK_RAW, 0), Err(libc::EAFNOSUPPORT));
        assert_eq!(
            socket(AF_VSOCK, libc::SOCK_STREAM, 0),
            Err(libc::EAFNOSUPPORT)
        );
        assert_eq!(socket(AF_INET, SOCK_RAW, libc::IPPROTO_ICMP), eperm);
        let raw6 = SOCK_RAW | libc::SOCK_CLOEXEC;
        assert_eq!(socket(AF_INET6, raw6, libc::IPPROTO_ICMPV6), eperm);
        assert_eq!(socket(AF_INET, SOCK_PACKET, 0), eperm);
        let mut fds = [0i32; 2];
        let pair = [
            AF_INET as u64,
            libc::SOCK_STREAM as u64,
            0,
            fds.as_mut_ptr() as u64,
            0,
            0,
        ];
        assert_eq!(sys(libc::SYS_socketpair, pair), Err(libc::EAFNOSUPPORT));
        for cmd in [TIOCSTI, TIOCLINUX, TIOCSTI | 1 << 32] {
            assert_eq!(ioctl_stdin(cmd), eperm, "ioctl {cmd:#x}");
        }
        if let Some(nr) = x32_mount {
            assert_eq!(mount_tmpfs(nr), eperm, "x32 mount");
        }
        // What a normal workload needs still works.
        assert!(sys(libc::SYS_getpid, [0; 6]).unwrap() > 0);
        // Calls spread over the number range, between the deny list's
        // numbers, get the kernel's own answer (all-ones arguments make each
        // fail harmlessly with EBADF or EFAULT, or succeed without effect).
        let harmless = [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_close,
            libc::SYS_lseek,
            libc::SYS_dup,
            libc::SYS_getppid,
            libc::SYS_getuid,
            libc::SYS_getgid,
            libc::SYS_geteuid,
            libc::SYS_getegid,
            libc::SYS_uname,
            libc::SYS_getcwd,
            libc::SYS_fsync,
            libc::SYS_getrusage,
            libc::SYS_sysinfo,
            libc::SYS_sched_yield,
            libc::SYS_gettid,
        ];
        for nr in harmless {
            assert_ne!(sys(nr, [u64::MAX; 6]), eperm, "syscall {nr}");
        }
        socket(AF_INET, libc::SOCK_STREAM, 0).unwrap();
        socket(AF_INET6, libc::SOCK_DGRAM, 0).unwrap();
        socket(AF_UNIX, libc::SOCK_STREAM, 0).unwrap();
        socket(AF_NETLINK, SOCK_RAW, libc::NETLINK_ROUTE).unwrap();
        raw_clone(0).unwrap();
        let true_status = std::process::Command::new("/bin/true").status().unwrap();
        assert!(true_status.success(), "posix_spawn falls back from clone3");
        std::thread::spawn(|| ()).join().unwrap();
        assert_eq!(
            ioctl_stdin(libc::TCGETS as u64),
            Err(libc::ENOTTY),
            "other ioctls"
        );
    }

    /// Writes `text` to `path` with async-signal-safe calls only.
    fn write_file(path: &CStr, text: &[u8]) -> io::Result<()> {
        // SAFETY: `path` is NUL-terminated; the fd is ours and closed once;
        // `text` is valid for `text.len()` bytes.
        let written = unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = libc::write(fd, text.as_ptr().cast(), text.len());
            libc::close(fd);
            n
        };
        if written == text.len() as isize {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Spawns the attack child in new user, mount and network namespaces,
    /// mapped to uid 0 there, so every attack holds the capabilities it needs
    /// and only the filter stands in the way; nothing touches the host.
    fn run_attacks(scenario: &str, filters: Option<SeccompFilters>) {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: geteuid/getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let (uid_map, gid_map) = (format!("0 {uid} 1"), format!("0 {gid} 1"));
        let hook = move || -> io::Result<()> {
            let ns = libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWNET;
            // SAFETY: unshare takes only flags; the child is single-threaded.
            if unsafe { libc::unshare(ns) } != 0 {
                return Err(io::Error::last_os_error());
            }
            write_file(c"/proc/self/setgroups", b"deny")?;
            write_file(c"/proc/self/uid_map", uid_map.as_bytes())?;
            write_file(c"/proc/self/gid_map", gid_map.as_bytes())?;
            if let Some(filters) = &filters {
                let (one, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
                // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
                if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, one, zero, zero, zero) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                install(filters).map_err(|_| io::Error::last_os_error())?;
            }
            Ok(())
        };
        test_child::run("seccomp::tests::child_entry", scenario, |cmd| {
            cmd.env("STOCKADE_TEST_MOUNT_DIR", dir.path());
            // SAFETY: the hook makes only async-signal-safe calls (unshare,
            // open, write, close, prctl, seccomp) and does not allocate.
            unsafe { cmd.pre_exec(hook) };
        });
    }

    #[test]
    #[ignore = "needs user namespaces (root, or unprivileged userns enabled)"]
    fn attacks_fail_under_the_filter() {
        run_attacks("filtered", Some(build().unwrap()));
    }

    #[test]
    #[ignore = "needs user namespaces (root, or unprivileged userns enabled)"]
    fn attacks_succeed_without_the_filter_so_the_test_can_fail() {
        run_attacks("control", None);
    }
}
