//! A second network namespace for the hosts a sandbox may reach, so that
//! a test's traffic never leaves the machine's loopback or the namespaces
//! the test made itself.
//!
//! [`isolate`] moves the calling thread (and so every `stockade` it
//! starts) into a fresh network namespace with only `lo`, and puts the
//! test hosts in a second fresh namespace joined to it by a veth pair.
//! Servers are started there with [`in_hosts`].

use super::stderr;
use super::stdout;

/// The test hosts' namespace (a thread stays parked in it): a descriptor
/// of it, which threads join to bind sockets there.
struct HostsNs {
    fd: std::os::fd::OwnedFd,
}

static HOSTS: std::sync::OnceLock<HostsNs> = std::sync::OnceLock::new();

/// Moves the calling thread into a new network namespace with only `lo`
/// up, and puts `hosts` in a second one joined to it by a veth pair
/// (192.0.2.1 here, 192.0.2.2 there), with a route to each. Servers are
/// bound there with [`in_hosts`]; `stockade` started from this thread
/// runs here.
pub fn isolate(hosts: &[&str]) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces)"
    );
    // SAFETY: unshare affects only the calling thread's namespaces.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
    sh("ip link set lo up");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread's namespaces.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let fd: std::os::fd::OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")
            .unwrap()
            .into();
        tx.send((tid, fd)).unwrap();
        loop {
            std::thread::park();
        }
    });
    let (tid, fd) = rx.recv().unwrap();
    let inside = |cmd: &str| sh(&format!("nsenter --net=/proc/{tid}/ns/net {cmd}"));
    sh("ip link add stk-a type veth peer name stk-b");
    sh(&format!("ip link set stk-b netns {tid}"));
    sh("ip addr add 192.0.2.1/30 dev stk-a && ip link set stk-a up");
    inside("ip link set lo up");
    inside("ip addr add 192.0.2.2/30 dev stk-b");
    inside("ip link set stk-b up");
    for h in hosts {
        inside(&format!("ip addr add {h}/32 dev lo"));
        sh(&format!("ip route add {h}/32 via 192.0.2.2 dev stk-a"));
    }
    assert!(HOSTS.set(HostsNs { fd }).is_ok(), "isolate() twice");
}

/// Runs `f` on a thread in the test hosts' namespace.
pub fn in_hosts<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = HOSTS.get().expect("isolate() first");
    let raw = std::os::fd::AsRawFd::as_raw_fd(&ns.fd);
    std::thread::spawn(move || {
        // SAFETY: setns on a namespace descriptor that lives as long as
        // the process; it changes only this new thread's namespace.
        let rc = unsafe { libc::setns(raw, libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// Runs `sh -c CMD` here; panics, with its stderr, unless it succeeds.
pub fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .unwrap();
    assert!(out.status.success(), "{cmd}: {}", stderr(&out));
    stdout(&out)
}

/// A minimal HTTP/1.0 server on `listener` (made in the hosts' namespace,
/// see [`in_hosts`]) answering every request with `body`; returns the
/// `Host` header of each request, in order. Lives until the test process
/// ends.
pub fn serve_http(
    listener: std::net::TcpListener,
    body: &'static str,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::{BufRead, BufReader, Write};
    let hosts: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let seen = hosts.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut host = String::new();
            let mut got = 0;
            loop {
                let mut line = String::new();
                let n = reader.read_line(&mut line).unwrap_or(0);
                got += n;
                if n == 0 || line == "\r\n" {
                    break;
                }
                if let Some(h) = line.to_ascii_lowercase().strip_prefix("host:") {
                    host = h.trim().to_string();
                }
            }
            if got == 0 {
                continue;
            }
            seen.lock().unwrap().push(host);
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    hosts
}
