//! Attacks from inside the sandbox, each of which must fail.
//! Needs root (namespaces and cgroups); CI runs these as root.

mod common;

use common::*;

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn cannot_read_host_secrets() {
    let env = Env::new();
    let secret = format!("/root/stockade-secret-{}", rand_suffix());
    std::fs::write(&secret, "TOPSECRET").unwrap();
    for extra in [&[][..], &["--root"][..]] {
        let mut args = extra.to_vec();
        let script = format!(
            "cat /etc/shadow; cat {secret}; ls -A /root; cat /etc/ssh/ssh_host_*_key; echo end"
        );
        args.extend(["--", "sh", "-c", &script]);
        let out = env.run(&args);
        let text = stdout(&out);
        assert!(!text.contains("TOPSECRET"), "{text}");
        assert!(!text.contains("root:"), "shadow readable: {text}");
        assert!(text.trim_end().ends_with("end"), "{text}");
        assert!(
            stderr(&out).contains("/etc/shadow: No such file"),
            "{}",
            stderr(&out)
        );
    }
    std::fs::remove_file(&secret).unwrap();
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn cannot_see_or_read_host_processes() {
    let env = Env::new();
    let mut host = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = host.id();
    let script = format!(
        "ls /proc | grep -c '^[0-9]'; cat /proc/{pid}/environ && echo LEAK; cat /proc/1/environ && echo LEAK1; kill -9 {pid} && echo KILLED; echo end"
    );
    let out = env.sh(&script);
    let text = stdout(&out);
    let visible: u32 = text.lines().next().unwrap().trim().parse().unwrap();
    // init, sh, ls and grep at most.
    assert!(visible <= 5, "sees {visible} processes");
    assert!(!text.contains("LEAK") && !text.contains("KILLED"), "{text}");
    assert!(
        host.try_wait().unwrap().is_none(),
        "host process was killed"
    );
    host.kill().unwrap();
    host.wait().unwrap();
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn system_directories_are_read_only_even_for_root_inside() {
    let env = Env::new();
    let probe = format!("stockade-probe-{}", rand_suffix());
    for extra in [&[][..], &["--root"][..]] {
        let mut args = extra.to_vec();
        let script = format!(
            "for d in /usr /usr/bin /etc /bin /lib /; do touch $d/{probe} 2>/dev/null && echo WROTE $d; done; echo end"
        );
        args.extend(["--", "sh", "-c", &script]);
        let out = env.run(&args);
        assert_eq!(stdout(&out).trim(), "end", "{}", stdout(&out));
    }
    for d in ["/usr", "/usr/bin", "/etc", "/"] {
        assert!(!std::path::Path::new(d).join(&probe).exists());
    }
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn symlinks_and_dotdot_do_not_leave_the_workspace() {
    let env = Env::new();
    let host_secret = format!("/tmp/stockade-host-secret-{}", rand_suffix());
    std::fs::write(&host_secret, "HOSTDATA").unwrap();
    let ws = user_dir(4242);
    let script = format!(
        "cd /workspace; ln -s {host_secret} link; ln -s / rootlink; \
         cat link; cat /workspace/../../../../{host_secret}; cat rootlink{host_secret}; \
         ls rootlink/var/lib 2>/dev/null | grep -c stockade; echo end"
    );
    let out = env.run(&[
        "--workspace",
        ws.path().to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let text = stdout(&out);
    assert!(!text.contains("HOSTDATA"), "{text}");
    assert!(text.contains("end"), "{text}");
    // The symlinks exist on the host but the sandbox wrote nothing else.
    assert!(ws.path().join("link").symlink_metadata().is_ok());
    std::fs::remove_file(&host_secret).unwrap();
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn mount_unshare_and_ptrace_are_denied() {
    let env = Env::new();
    let py = r#"
import ctypes, os, errno
libc = ctypes.CDLL(None, use_errno=True)
def check(name, rc):
    print(name, "denied" if rc == -1 else "ALLOWED", errno.errorcode.get(ctypes.get_errno(), "?"))
check("mount", libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
check("unshare-user", libc.unshare(0x10000000))
check("unshare-net", libc.unshare(0x40000000))
pid = os.fork()
if pid == 0:
    import time; time.sleep(5); os._exit(0)
check("ptrace", libc.ptrace(16, pid, None, None))
os.kill(pid, 9)
check("bpf", libc.syscall(321, 0, None, 0))
check("keyctl", libc.syscall(250, 0, 0, 0, 0, 0))
check("io_uring", libc.syscall(425, 1, None))
"#;
    for extra in [&[][..], &["--root"][..]] {
        let mut args = extra.to_vec();
        args.extend(["--", "/usr/bin/python3", "-c", py]);
        let out = env.run(&args);
        let text = stdout(&out);
        assert_eq!(
            text.matches("denied").count(),
            7,
            "{text}\n{}",
            stderr(&out)
        );
        assert!(!text.contains("ALLOWED"), "{text}");
    }
    let out = env.sh("unshare -r true && echo ESCAPED; unshare -n true && echo ESCAPED; echo end");
    assert_eq!(stdout(&out).trim(), "end", "{}", stderr(&out));
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn raw_and_packet_sockets_are_refused() {
    let env = Env::new();
    let py = r#"
import socket
for fam, typ, proto in [(socket.AF_INET, socket.SOCK_RAW, 1), (socket.AF_PACKET, socket.SOCK_RAW, 0), (40, socket.SOCK_STREAM, 0)]:
    try:
        socket.socket(fam, typ, proto); print("OPENED", fam)
    except OSError as e:
        print("refused", e.errno)
socket.socket(socket.AF_INET, socket.SOCK_STREAM).close(); print("tcp ok")
"#;
    for extra in [&[][..], &["--root"][..]] {
        let mut args = extra.to_vec();
        args.extend(["--", "/usr/bin/python3", "-c", py]);
        let out = env.run(&args);
        let text = stdout(&out);
        assert_eq!(text.matches("refused").count(), 3, "{text}{}", stderr(&out));
        assert!(text.contains("tcp ok"), "{text}");
    }
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn workload_has_no_privileges() {
    let env = Env::new();
    for extra in [&[][..], &["--root"][..]] {
        let mut args = extra.to_vec();
        args.extend(["--", "cat", "/proc/self/status"]);
        let out = env.run(&args);
        let text = stdout(&out);
        for want in [
            "NoNewPrivs:\t1",
            "CapEff:\t0000000000000000",
            "CapPrm:\t0000000000000000",
            "CapBnd:\t0000000000000000",
            "Seccomp:\t2",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
    // The agent's host ids are unprivileged ones, never root.
    let out = env.sh("cat /proc/self/uid_map");
    let map = stdout(&out);
    for line in map.lines() {
        let host: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_ne!(host, 0, "{map}");
    }
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn only_loopback_without_network() {
    let env = Env::new();
    // A listener on the host's loopback: the sandbox's 127.0.0.1 is its
    // own, so it must not reach this one.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let py = format!(
        r#"
import socket, os
print(sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else open("/proc/net/dev").read())
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2); print("REACHED HOST")
except OSError as e:
    print("refused", e.errno)
"#
    );
    let out = env.run(&["--", "/usr/bin/python3", "-c", &py]);
    let text = stdout(&out);
    assert!(text.contains("['lo']"), "{text}{}", stderr(&out));
    assert!(text.contains("refused"), "{text}");
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn host_environment_does_not_leak() {
    let env = Env::new();
    let out = env
        .cmd()
        .env("AWS_SECRET_ACCESS_KEY", "hunter2")
        .args(["run", "-e", "VISIBLE=yes", "--", "env"])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("VISIBLE=yes") && text.contains("HOME=/home/agent"),
        "{text}"
    );
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn every_namespace_is_the_sandboxs_own_and_the_host_name_stays() {
    // Init is cloned into new user and pid namespaces and unshares the
    // others itself: if it ever failed to, the workload would share the
    // host's network, mounts, host name or IPC objects.
    let kinds = ["user", "pid", "mnt", "net", "uts", "ipc", "cgroup"];
    let host: Vec<String> = kinds
        .iter()
        .map(|k| {
            std::fs::read_link(format!("/proc/self/ns/{k}"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let env = Env::new();
    let script = format!(
        "for k in {}; do readlink /proc/self/ns/$k; done; hostname renamed-inside 2>/dev/null; hostname",
        kinds.join(" ")
    );
    let out = env.run(&["--root", "--", "sh", "-c", &script]);
    let text = stdout(&out);
    let inside: Vec<&str> = text.lines().collect();
    assert_eq!(inside.len(), kinds.len() + 1, "{text}{}", stderr(&out));
    for ((kind, host), inside) in kinds.iter().zip(&host).zip(&inside) {
        assert!(inside.starts_with(&format!("{kind}:[")), "{inside}");
        assert_ne!(
            host, inside,
            "the sandbox shares the host's {kind} namespace"
        );
    }
    // Without capabilities even root inside cannot rename its own UTS
    // namespace; whatever it managed, the host's name stays.
    assert!(
        ["sandbox", "renamed-inside"].contains(&inside[kinds.len()]),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name
    );
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn every_mount_carries_its_restrictions() {
    // Per-mount flags as the kernel reports them (mountinfo's sixth
    // field): read-only system directories, no set-uid anywhere, device
    // nodes only where they belong, nothing executable from /dev or /proc.
    let env = Env::new();
    let out = env.run(&["--", "cat", "/proc/self/mountinfo"]);
    let text = stdout(&out);
    let flags: std::collections::HashMap<&str, Vec<&str>> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((*f.get(4)?, f.get(5)?.split(',').collect()))
        })
        .collect();
    let want: &[(&str, &[&str])] = &[
        ("/", &["ro", "nosuid", "nodev"]),
        ("/usr", &["ro", "nosuid", "nodev"]),
        ("/etc", &["ro", "nosuid", "nodev"]),
        ("/workspace", &["rw", "nosuid", "nodev"]),
        ("/home/agent", &["rw", "nosuid", "nodev"]),
        ("/tmp", &["rw", "nosuid", "nodev"]),
        ("/proc", &["nosuid", "nodev", "noexec"]),
        ("/sys", &["ro", "nosuid", "nodev", "noexec"]),
        ("/dev", &["ro", "nosuid", "noexec"]),
        ("/dev/null", &["nosuid", "noexec"]),
        ("/dev/zero", &["nosuid", "noexec"]),
        ("/dev/full", &["nosuid", "noexec"]),
        ("/dev/random", &["nosuid", "noexec"]),
        ("/dev/urandom", &["nosuid", "noexec"]),
        ("/dev/tty", &["nosuid", "noexec"]),
        ("/dev/pts", &["nosuid", "noexec"]),
        ("/dev/shm", &["nosuid", "nodev"]),
    ];
    for (mount, need) in want {
        let Some(have) = flags.get(mount) else {
            panic!("{mount} is not mounted:\n{text}{}", stderr(&out));
        };
        for flag in *need {
            assert!(have.contains(flag), "{mount} lacks {flag}: {have:?}");
        }
    }
}
