//! Test rig for the egress stack. Network-safety: every test first moves its
//! own thread into a fresh network namespace with only `lo` ([`isolate`]);
//! test hosts live in a second fresh namespace joined to it by a veth pair
//! ([`add_hosts`]), never on the stack's own interfaces (which it refuses);
//! the "sandbox" is a third fresh namespace whose only way out is the TUN
//! device served by the stack under test. Nothing can reach the machine's
//! own network from any of them.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use stockade_isolate::tun::{configure_tun_inside, TunConfig, TunError};
use stockade_net::{NetEvent, Resolve};

/// `tun0` in the calling thread's network namespace, set up with
/// stockade-net's addresses.
fn make_tun() -> Result<OwnedFd, TunError> {
    let cfg = TunConfig {
        address: stockade_net::SANDBOX_ADDR,
        prefix_len: stockade_net::PREFIX_LEN,
        gateway: stockade_net::GATEWAY_ADDR,
        dns: stockade_net::DNS_ADDR,
        mtu: stockade_net::MTU,
    };
    configure_tun_inside("tun0", &cfg)
}

/// Moves the calling thread into a new, empty network namespace and brings
/// up its loopback. Threads and processes it starts afterwards inherit it.
pub fn isolate() {
    HOSTS.with(|h| *h.borrow_mut() = None);
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "these tests need root (network namespaces and TUN)"
    );
    // SAFETY: unshare affects only the calling thread's namespaces.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        io::Error::last_os_error()
    );
    sh("ip link set lo up");
}

/// Runs a shell command in the calling thread's namespaces; panics on failure.
pub fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}: {st}");
}

/// The test hosts' own network namespace (see [`add_hosts`]): a thread
/// parked in it (commands enter it through that thread's id) and a
/// descriptor of it (threads join it to bind their sockets).
struct HostsNs {
    tid: i32,
    fd: OwnedFd,
}

thread_local! {
    static HOSTS: std::cell::RefCell<Option<Arc<HostsNs>>> = const { std::cell::RefCell::new(None) };
}

/// Puts test hosts at `addrs` in a second network namespace, joined to
/// the calling thread's (made by [`isolate`]) by a veth pair, with routes
/// to them: the egress stack reaches them as it reaches any remote host,
/// never through its own interfaces (which it refuses). Sockets for them
/// are made with [`in_hosts`].
pub fn add_hosts(addrs: &[&str]) {
    let ns = HOSTS.with(|h| h.borrow().clone()).unwrap_or_else(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: unshare affects only this thread's namespaces.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let fd: OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")
                .unwrap()
                .into();
            tx.send((tid, fd)).unwrap();
            loop {
                std::thread::park();
            }
        });
        let (tid, fd) = rx.recv().unwrap();
        let ns = Arc::new(HostsNs { tid, fd });
        let inside = |cmd: &str| sh(&format!("nsenter --net=/proc/{tid}/ns/net {cmd}"));
        sh("ip link add stk-a type veth peer name stk-b");
        sh(&format!("ip link set stk-b netns {tid}"));
        sh("ip addr add 192.0.2.1/30 dev stk-a && ip link set stk-a up");
        inside("ip link set lo up");
        inside("ip addr add 192.0.2.2/30 dev stk-b");
        inside("ip link set stk-b up");
        HOSTS.with(|h| *h.borrow_mut() = Some(ns.clone()));
        ns
    });
    for a in addrs {
        sh(&format!(
            "nsenter --net=/proc/{}/ns/net ip addr add {a}/32 dev lo",
            ns.tid
        ));
        sh(&format!("ip route add {a}/32 via 192.0.2.2 dev stk-a"));
    }
}

/// Runs `f` on a thread in the test hosts' namespace (for binding their
/// sockets, which stay there).
pub fn in_hosts<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = HOSTS.with(|h| h.borrow().clone()).expect("add_hosts first");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a namespace descriptor we hold; it changes only
        // this (new) thread's network namespace.
        let rc = unsafe { libc::setns(ns.fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread living in the sandbox's namespace, with its TUN device.
pub struct Sandbox {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    pub resolv_conf: tempfile::NamedTempFile,
}

impl Sandbox {
    /// A fresh namespace (made from the caller's) with `tun0` configured by
    /// stockade-isolate, with this crate's addresses (as core's launch
    /// does). Returns the sandbox and the device's fd.
    pub fn new() -> (Sandbox, OwnedFd) {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (fd_tx, fd_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            // SAFETY: unshare affects only this thread.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            sh("ip link set lo up");
            fd_tx.send(make_tun()).unwrap();
            for job in rx {
                job();
            }
        });
        let fd = fd_rx.recv().unwrap().expect("configure_tun_inside");
        let mut resolv_conf = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            resolv_conf,
            "nameserver {}\noptions timeout:2 attempts:1",
            stockade_net::DNS_ADDR
        )
        .unwrap();
        let sb = Sandbox {
            jobs: Some(jobs),
            thread: Some(thread),
            resolv_conf,
        };
        (sb, fd)
    }

    /// Another TUN device in the same sandbox namespace (the previous one
    /// must be closed).
    pub fn new_tun(&self) -> OwnedFd {
        self.run(make_tun).expect("configure_tun_inside")
    }

    /// Runs `f` on the sandbox thread: sockets it makes live in the sandbox.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .unwrap()
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .unwrap();
        rx.recv().unwrap()
    }

    pub fn connect(&self, to: SocketAddr) -> io::Result<TcpStream> {
        self.run(move || {
            let s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            Ok(s)
        })
    }

    /// One UDP datagram from the sandbox.
    pub fn send_udp(&self, to: SocketAddr, data: &'static [u8]) {
        self.run(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            let _ = s.send_to(data, to);
        })
    }

    /// A DNS query over UDP; `None` if no answer came within two seconds.
    pub fn dns(&self, query: Vec<u8>) -> Option<Vec<u8>> {
        self.run(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.send_to(&query, (stockade_net::DNS_ADDR, 53)).unwrap();
            let mut buf = [0u8; 1500];
            s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
        })
    }

    /// Runs a program in the sandbox's network namespace, with a private
    /// mount namespace whose /etc/resolv.conf names our DNS server.
    pub fn command(&self, argv: &[&str]) -> Output {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let resolv = std::ffi::CString::new(self.resolv_conf.path().to_str().unwrap()).unwrap();
        self.run(move || {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            let target = c"/etc/resolv.conf";
            let root = c"/";
            // SAFETY: the closure only makes system calls (async-signal-safe)
            // with pointers to CStrings that outlive the spawn.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(
                            std::ptr::null(),
                            root.as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ) != 0
                        || libc::mount(
                            resolv.as_ptr(),
                            target.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND,
                            std::ptr::null(),
                        ) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            cmd.output().unwrap()
        })
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A tiny HTTP server on a test host: answers every request with `body_len`
/// bytes and counts connections and request bytes received.
pub struct Server {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub bytes_received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(addr: &str, body_len: usize) -> Server {
        let a = addr.to_string();
        let listener = in_hosts(move || TcpListener::bind(a).unwrap());
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let bytes_received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, b, s) = (connections.clone(), bytes_received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        c.fetch_add(1, Ordering::SeqCst);
                        let b = b.clone();
                        std::thread::spawn(move || serve_http(conn, body_len, &b));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            addr,
            connections,
            bytes_received,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_http(mut conn: TcpStream, body_len: usize, received: &AtomicUsize) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                received.fetch_add(n, Ordering::SeqCst);
                head.extend_from_slice(&buf[..n]);
            }
        }
    }
    let reply =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n");
    let _ = conn.write_all(reply.as_bytes());
    let chunk = vec![b'x'; 64 * 1024];
    let mut left = body_len;
    while left > 0 {
        let n = left.min(chunk.len());
        if conn.write_all(&chunk[..n]).is_err() {
            return;
        }
        left -= n;
    }
}

/// A resolver the test controls; records every name it was asked.
#[derive(Default)]
pub struct StubResolver {
    pub answers: HashMap<String, Vec<IpAddr>>,
    pub asked: Mutex<Vec<String>>,
}

impl Resolve for StubResolver {
    fn resolve(&self, name: &str) -> io::Result<Vec<IpAddr>> {
        self.asked.lock().unwrap().push(name.to_string());
        Ok(self.answers.get(name).cloned().unwrap_or_default())
    }
}

/// Collects events for assertions.
#[derive(Clone, Default)]
pub struct Events(pub Arc<Mutex<Vec<NetEvent>>>);

impl Events {
    pub fn sink(&self) -> impl Fn(NetEvent) + Send + Sync + 'static {
        let inner = self.0.clone();
        move |e| inner.lock().unwrap().push(e)
    }
    pub fn all(&self) -> Vec<NetEvent> {
        self.0.lock().unwrap().clone()
    }
    /// Waits up to two seconds for an event matching `f`.
    pub fn wait_for(&self, f: impl Fn(&NetEvent) -> bool) -> NetEvent {
        for _ in 0..200 {
            if let Some(e) = self.all().into_iter().find(|e| f(e)) {
                return e;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no matching event; got {:#?}", self.all());
    }
}

/// An HTTP/1.1 GET over an open connection; the body length, or the error.
pub fn http_get(mut s: TcpStream, host: &str) -> io::Result<usize> {
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let text = String::from_utf8_lossy(&all);
    if !text.starts_with("HTTP/1.1 200") {
        return Err(io::Error::other(format!("unexpected reply: {:.80}", text)));
    }
    let head = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    Ok(all.len() - head)
}

/// A minimal TLS 1.2 ClientHello naming `sni`.
pub fn client_hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let mut sni_ext = Vec::new();
    sni_ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni_ext.push(0);
    sni_ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni_ext.extend_from_slice(name);
    let mut exts = vec![0, 0];
    exts.extend_from_slice(&(sni_ext.len() as u16).to_be_bytes());
    exts.extend_from_slice(&sni_ext);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01]);
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Builds a DNS query for `name` (A record).
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The response code and A records of a DNS reply.
pub fn dns_answer(reply: &[u8]) -> (u8, Vec<IpAddr>) {
    let rcode = reply[3] & 0x0f;
    let ancount = u16::from_be_bytes([reply[6], reply[7]]);
    let mut addrs = Vec::new();
    // Our replies: the question, then answers with compressed names.
    let mut i = 12;
    while reply[i] != 0 {
        i += 1 + reply[i] as usize;
    }
    i += 5;
    for _ in 0..ancount {
        i += 2; // name pointer
        let rtype = u16::from_be_bytes([reply[i], reply[i + 1]]);
        let rdlen = u16::from_be_bytes([reply[i + 8], reply[i + 9]]) as usize;
        i += 10;
        if rtype == 1 && rdlen == 4 {
            addrs.push(IpAddr::from([
                reply[i],
                reply[i + 1],
                reply[i + 2],
                reply[i + 3],
            ]));
        }
        i += rdlen;
    }
    (rcode, addrs)
}

/// Threads and open descriptors of this process.
pub fn thread_and_fd_counts() -> (usize, usize) {
    let count = |p: &str| std::fs::read_dir(p).unwrap().count();
    (count("/proc/self/task"), count("/proc/self/fd"))
}
