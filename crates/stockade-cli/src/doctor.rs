//! `stockade doctor`: what this host supports, and what stockade does
//! without each piece.

use std::path::Path;

struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
    without: &'static str,
}

/// Prints one line per feature; returns 0 when everything stockade needs
/// for `run` is present, 1 otherwise.
pub fn run() -> u8 {
    let checks = vec![
        userns(),
        cgroups(),
        landlock(),
        seccomp(),
        overlayfs(),
        tun(),
        disk_cap(),
    ];
    let mut essential_missing = false;
    for c in &checks {
        let mark = if c.ok { "ok  " } else { "MISS" };
        println!("[{mark}] {:<16} {}", c.name, c.detail);
        if !c.ok {
            println!("       without it: {}", c.without);
            essential_missing |= matches!(c.name, "user namespaces" | "cgroups" | "seccomp");
        }
    }
    if !nix::unistd::geteuid().is_root() {
        essential_missing |= rootless_section();
    }
    u8::from(essential_missing)
}

/// For an ordinary user: how the limits of their sandboxes hold, then
/// each reason the host refuses (part of) them with its fix. Returns
/// whether one of them stops `run` altogether.
fn rootless_section() -> bool {
    let version = stockade_cgroup::Driver::detect()
        .map(|d| d.version())
        .unwrap_or(stockade_cgroup::Version::Polled);
    let summary = crate::rootless::limits_summary(version);
    println!("rootless limits:");
    println!(
        "       enforced by the kernel: {}",
        summary.kernel.join(", ")
    );
    println!(
        "       by the supervisor (polled, killed when over): {}",
        summary.supervisor.join(", ")
    );
    let none = if summary.none.is_empty() {
        "-".to_string()
    } else {
        summary.none.join(", ")
    };
    println!("       not enforced: {none}");
    let findings =
        crate::rootless::findings(&crate::rootless::host_root(), &crate::rootless::caller());
    for f in &findings {
        let mark = if f.fatal { "MISS" } else { "warn" };
        println!("[{mark}] rootless         {}", f.problem);
        println!("       fix: {}", f.fix);
    }
    findings.iter().any(|f| f.fatal)
}

fn read(p: &str) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn userns() -> Check {
    let max = read("/proc/sys/user/max_user_namespaces").and_then(|s| s.parse::<u64>().ok());
    let unpriv = read("/proc/sys/kernel/unprivileged_userns_clone");
    let ok = max.unwrap_or(0) > 0;
    Check {
        name: "user namespaces",
        ok,
        detail: format!(
            "max_user_namespaces={}{}",
            max.map_or("unknown".into(), |m| m.to_string()),
            unpriv.map_or(String::new(), |u| format!(", unprivileged_userns_clone={u}"))
        ),
        without: "stockade cannot run: every sandbox needs its own user namespace so that root inside is never root outside",
    }
}

fn cgroups() -> Check {
    match stockade_cgroup::Driver::detect() {
        Ok(d) => Check {
            name: "cgroups",
            ok: true,
            detail: d.describe(),
            without: "",
        },
        Err(e) => Check {
            name: "cgroups",
            ok: false,
            detail: stockade_isolate::error_chain(&e),
            without: "no CPU, memory or process limits can be enforced, so `stockade run` refuses to start",
        },
    }
}

fn landlock() -> Check {
    match stockade_isolate::landlock_rules::abi_version() {
        Some(abi) => Check {
            name: "landlock",
            ok: true,
            detail: format!("ABI {abi}"),
            without: "",
        },
        None => Check {
            name: "landlock",
            ok: false,
            detail: "not available (kernel older than 5.13 or `lsm=` without landlock)".into(),
            without: "the read-only mounts still hold; the second wall against writes outside the workspace is missing",
        },
    }
}

fn seccomp() -> Check {
    let status = read("/proc/self/status").unwrap_or_default();
    let ok = status.lines().any(|l| l.starts_with("Seccomp:"))
        && stockade_isolate::seccomp::build().is_ok();
    Check {
        name: "seccomp",
        ok,
        detail: if ok {
            format!(
                "filter mode available; {} system calls denied",
                stockade_isolate::seccomp::DENIED_SYSCALLS.len()
            )
        } else {
            "not available".into()
        },
        without: "stockade cannot run: the syscall filter is part of every sandbox",
    }
}

fn overlayfs() -> Check {
    let ok = read("/proc/filesystems").is_some_and(|f| f.lines().any(|l| l.ends_with("overlay")))
        || Path::new("/sys/module/overlay").exists();
    Check {
        name: "overlayfs",
        ok,
        detail: if ok {
            "available".into()
        } else {
            "not loaded (modprobe overlay)".into()
        },
        without: "--overlay-root is refused; everything else works",
    }
}

fn disk_cap() -> Check {
    let (ok, detail) = match stockade_core::scratch::status() {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Check {
        name: "disk cap",
        ok,
        detail,
        without: "--disk is measured every 200 ms or more and the sandbox killed once over it: \
                  a workload can write past it between two measurements",
    }
}

fn tun() -> Check {
    let ok = Path::new("/dev/net/tun").exists();
    Check {
        name: "tun",
        ok,
        detail: if ok {
            "/dev/net/tun present".into()
        } else {
            "/dev/net/tun missing".into()
        },
        without:
            "network modes other than `none` cannot be offered (egress goes through a TUN device)",
    }
}
