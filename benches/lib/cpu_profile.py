"""CPU profile of `stockade run` from `perf script` output of sampled
stacks (perf record -e cpu-clock --call-graph dwarf).

Each sample is put in one kernel activity (the first matching rule in
KERNEL_RULES) and, separately, charged to the innermost stockade function
on its stack, so the tables answer "what is the CPU doing" and "which of
our functions asked for it".
"""

import collections
import re

# Kernel activity of a CPU sample: the first rule whose function appears on
# the stack wins, so the order goes from specific to general.
KERNEL_RULES = [
    ("network namespace creation", ("copy_net_ns",)),
    ("network namespace teardown", ("cleanup_net", "free_nsproxy")),
    ("other namespaces (user, mount, pid, ipc, uts, cgroup)",
     ("create_new_namespaces", "copy_mnt_ns", "create_user_ns",
      "ksys_unshare")),
    ("cgroup attach (cgroup.procs)",
     ("__cgroup1_procs_write", "cgroup1_procs_write", "cgroup_attach_task",
      "__cgroup_procs_write", "cgroup_procs_write")),
    ("cgroup mkdir", ("cgroup_mkdir",)),
    ("cgroup rmdir", ("cgroup_rmdir", "cgroup_destroy_locked")),
    ("cgroup files (limits, stats)",
     ("cgroup_file_write", "cgroup_seqfile_show", "cgroup_file_open")),
    ("seccomp install", ("do_seccomp",)),
    ("Landlock", ("__do_sys_landlock_create_ruleset",
                  "__x64_sys_landlock_add_rule",
                  "__do_sys_landlock_restrict_self")),
    ("mounts, pivot_root, umount",
     ("path_mount", "__x64_sys_mount", "__x64_sys_mount_setattr",
      "__do_sys_pivot_root", "__x64_sys_umount", "do_umount",
      "__x64_sys_open_tree")),
    ("process exit (memory, files, namespaces)", ("do_exit",)),
    # glibc's start-up CPU detection (cpuid) shows up by itself because
    # cpuid traps to the hypervisor on a virtual machine.
    ("exec + libc start-up (incl. glibc cpuid probing, relocation)",
     ("do_execveat_common", "load_elf_binary", "_dl_start",
      "_dl_relocate_static_pie", "__libc_setup_tls", "__tunables_init",
      "_dl_non_dynamic_init", "_dl_aux_init", "__libc_init_secure",
      "_dl_sysdep_start", "_dl_relocate_object", "_dl_map_object",
      "do_lookup_x", "_dl_lookup_symbol_x", "_dl_new_hash", "handle_amd",
      "handle_intel", "get_common_indices", "get_extended_indices",
      "__cpu_indicator_init", "init_cpu_features", "dl_init_cacheinfo",
      "update_active")),
    ("fork (no new namespaces)", ("kernel_clone", "copy_process")),
    ("loopback up (ioctl)", ("devinet_ioctl",)),
    ("page faults", ("asm_exc_page_fault",)),
    # Labels ending in ":" get the system call's name appended.
    ("files and directories:",
     ("__x64_sys_statx", "__x64_sys_getdents64", "do_sys_openat2",
      "__x64_sys_mkdir", "__x64_sys_unlinkat", "__x64_sys_rmdir",
      "__x64_sys_chmod", "__x64_sys_chown", "__x64_sys_symlink",
      "__x64_sys_newfstatat", "__x64_sys_close", "__x64_sys_readlink",
      "__x64_sys_read", "__x64_sys_write", "__x64_sys_statfs",
      "__x64_sys_openat", "__x64_sys_mkdirat", "ksys_read", "ksys_write",
      "__do_sys_newfstatat", "__do_sys_statfs", "__do_sys_flock",
      "__x64_sys_chdir", "__x64_sys_fchdir")),
    ("waiting: poll, signals, wait4 (scheduler work)",
     ("__x64_sys_poll", "__x64_sys_ppoll", "__x64_sys_rt_sigtimedwait",
      "__x64_sys_wait4", "do_wait")),
    ("privileges: prctl, capabilities, ids",
     ("__do_sys_prctl", "__do_sys_capset", "__x64_sys_setresuid",
      "__x64_sys_setresgid", "__do_sys_setgroups")),
    ("sockets, pipes, signalfd, pidfd",
     ("__x64_sys_socket", "__x64_sys_socketpair", "__x64_sys_pipe2",
      "__x64_sys_signalfd4", "__x64_sys_pidfd_send_signal",
      "__x64_sys_sendmsg", "__x64_sys_recvmsg", "__x64_sys_eventfd2")),
    ("memory mapping (mmap, munmap, brk)",
     ("__x64_sys_munmap", "__x64_sys_mmap", "__do_sys_brk",
      "__x64_sys_mprotect")),
    ("other system call:", ("do_syscall_64",)),
]
# A stockade path anywhere in a frame's name: inlined generic frames such
# as `call_once<stockade_cgroup::fsio::...>` still say where the work is.
STOCKADE_FN = re.compile(r"\b(stockade(?:_[a-z]+)?(?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def stockade_function(frames):
    """Innermost stockade function on a stack (leaf first), or a label for
    the stacks that have none."""
    for f in frames:
        m = STOCKADE_FN.search(f)
        if m:
            return m.group(1)
    root = frames[-1] if frames else ""
    if root == "syscall":
        return "(init or workload after clone: stack ends at clone)"
    if root in ("_start", "_dl_start_user") or root.startswith("_dl_"):
        return "(process start-up: loader or libc init)"
    return "(stack not unwound past libc or kernel)"


def parse_perf_script(path):
    """Yields each sample's frames (symbol names), leaf first."""
    frames = []
    for raw in open(path, errors="replace"):
        line = raw.rstrip("\n")
        if not line.strip():
            if frames:
                yield frames
            frames = []
            continue
        if not line.startswith((" ", "\t")):
            continue  # the sample's header line
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            sym = re.sub(r"\s+\([^()]*\)$", "", parts[1])  # drop "(dso)"
            frames.append(sym)
    if frames:
        yield frames


SYSCALL_ENTRY = re.compile(r"^(?:__x64_sys_|__do_sys_|__se_sys_|ksys_|do_sys_)"
                           r"([a-z0-9_]+)$")


def syscall_name(frames):
    """The system call a kernel stack is in: its outermost entry frame."""
    for f in reversed(frames):
        m = SYSCALL_ENTRY.match(f)
        if m:
            return {"openat2": "openat"}.get(m.group(1), m.group(1))
    return "?"


def cpu_section(path, freq, runs):
    by_kernel = collections.Counter()
    by_fn = collections.Counter()
    n = 0
    for frames in parse_perf_script(path):
        n += 1
        names = set(f.split("+")[0] for f in frames)
        kind = None
        for label, fns in KERNEL_RULES:
            if any(f in names for f in fns):
                kind = label
                if label.endswith(":"):
                    kind = f"{label} {syscall_name(frames)}"
                break
        if kind is None:
            kind = ("user space" if not any(f.startswith(("__x64", "do_", "asm_"))
                                             for f in names)
                    else "other kernel (interrupts, scheduler)")
        by_kernel[kind] += 1
        by_fn[stockade_function(frames)] += 1
    if not n:
        return "No samples were recorded.", []
    ms_per_sample = 1000.0 / freq
    head = (f"{n} samples at {freq} Hz over {runs} starts: about "
            f"**{n * ms_per_sample / runs:.1f} ms of CPU per start** "
            "(supervisor, init and the workload before its exec; "
            "the `true` process after exec is not included).")
    rows = ["| kernel activity on the stack | share of CPU | ms per start |",
            "|---|---|---|"]
    ranked = []
    for i, (label, c) in enumerate(by_kernel.most_common()):
        ranked.append((c * ms_per_sample / runs, label))
        if i < 20:
            rows.append(f"| {label} | {c / n:.1%} "
                        f"| {c * ms_per_sample / runs:.2f} |")
    rest = sum(c for _, c in by_kernel.most_common()[20:])
    if rest:
        rows.append(f"| everything else | {rest / n:.1%} "
                    f"| {rest * ms_per_sample / runs:.2f} |")
    rows2 = ["| innermost stockade function (incl. kernel time below it) "
             "| share of CPU | ms per start |", "|---|---|---|"]
    for fn, c in by_fn.most_common(15):
        rows2.append(f"| `{fn}` | {c / n:.1%} | {c * ms_per_sample / runs:.2f} |")
    return head + "\n\n" + "\n".join(rows) + "\n\n" + "\n".join(rows2), ranked
