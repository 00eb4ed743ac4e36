//! `stockade run --net allowlist|open`, end to end: the real binary, a real
//! sandbox, its TUN device and the egress stack in the supervisor.
//!
//! Network safety: every test first moves its own thread into a fresh
//! network namespace that has only `lo` ([`isolate`]); the supervisor runs
//! there (it is a child of this thread). Test hosts (203.0.113.x, a
//! documentation range, stands for public servers; 10.99.0.x for private
//! ones) live in a second fresh namespace joined to it by a veth pair, not
//! on the supervisor's own interfaces, which the egress filter refuses.
//! Everything the sandbox is allowed to reach is a test host; nothing
//! leaves for the machine's own network. The sandbox's 127.0.0.1 is its
//! own loopback, which is why test hosts are not on 127/8.

mod common;

use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::hostns::{in_hosts, isolate, sh};
use common::*;
use serde_json::Value;

const PUBLIC: &str = "203.0.113.10";
const OTHER_PUBLIC: &str = "203.0.113.11";
const PRIVATE: &str = "10.99.0.1";
/// `curl --max-time`: a refusal must come well before it.
const MAX_TIME: u64 = 10;

/// A tiny HTTP server on a test host: answers every request with `body`
/// and remembers each request's `Host` header. A connection that sends
/// nothing is not a request (the egress stack connects upstream before it
/// has checked the client's first bytes, and sends none if it refuses).
struct Server {
    hosts: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(addr: &str, port: u16, body: &'static str) -> Server {
        let a = addr.to_string();
        let listener = in_hosts(move || TcpListener::bind((a.as_str(), port)).unwrap());
        let hosts = common::hostns::serve_http(listener, body);
        Server { hosts }
    }

    fn requests(&self) -> Vec<String> {
        self.hosts.lock().unwrap().clone()
    }
}

/// `stockade run ARGS -- sh -c SCRIPT`, timed.
fn run_sh(env: &Env, args: &[&str], script: &str) -> (Output, Duration) {
    let mut full: Vec<&str> = args.to_vec();
    full.extend_from_slice(&["--", "sh", "-c", script]);
    let t = Instant::now();
    let out = env.run(&full);
    (out, t.elapsed())
}

fn curl(url: &str) -> String {
    format!("curl -sS --max-time {MAX_TIME} {url}")
}

/// The sandbox: allowlist with `good.test` mapped to the public test host.
const GOOD: &[&str] = &[
    "--net",
    "allowlist",
    "--allow-host",
    "good.test",
    "--map-host",
    "good.test=203.0.113.10",
];

fn read_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn has_event(log: &[Value], f: impl Fn(&Value) -> bool) -> bool {
    log.iter().any(f)
}

#[test]
#[ignore = "needs root: network namespaces"]
fn allowed_name_reaches_its_server() {
    isolate(&[PUBLIC]);
    let server = Server::start(PUBLIC, 8080, "hello from the test host");
    let env = Env::new();
    let (out, _) = run_sh(
        &env,
        GOOD,
        &format!("cat /etc/resolv.conf; {}", curl("http://good.test:8080/")),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("nameserver 198.18.0.1"), "{text}");
    assert!(text.contains("hello from the test host"), "{text}");
    assert_eq!(server.requests(), vec!["good.test:8080".to_string()]);
}

#[test]
#[ignore = "needs root: network namespaces"]
fn raw_addresses_and_other_names_fail_fast() {
    isolate(&[PUBLIC]);
    let server = Server::start(PUBLIC, 8080, "secret");
    let env = Env::new();
    // A fresh sandbox for each, so no earlier DNS answer has pinned the
    // address. curl: 7 = connection refused (our RST), 6 = no such name.
    for (url, want) in [
        ("http://203.0.113.10:8080/", 7),
        ("http://other.test:8080/", 6),
    ] {
        let (out, took) = run_sh(&env, GOOD, &curl(url));
        assert_eq!(code(&out), want, "{url}: {}", stderr(&out));
        assert!(
            took < Duration::from_secs(MAX_TIME),
            "{url} failed only after {took:?}"
        );
        assert!(!stdout(&out).contains("secret"));
    }
    assert!(
        server.requests().is_empty(),
        "the server was reached: {:?}",
        server.requests()
    );
}

/// `stockade run ARGS -- sh -c SCRIPT` with the supervisor in a private
/// mount namespace whose `/etc/hosts` is `hosts`: the host resolver the
/// egress stack uses for allowed names then answers from it (and from
/// nothing else: the test's network namespace has no route to a DNS
/// server). The machine's own `/etc/hosts` is untouched.
fn run_with_hosts(env: &Env, hosts: &str, args: &[&str], script: &str) -> Output {
    let file = env.state.path().join("hosts");
    std::fs::write(&file, hosts).unwrap();
    let mut c = std::process::Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
        .arg(&file)
        .arg(BIN)
        .arg("run")
        .args(args)
        .args(["--", "sh", "-c", script])
        .env("STOCKADE_STATE_DIR", env.state.path())
        .stdin(std::process::Stdio::null());
    c.output().unwrap()
}

#[test]
#[ignore = "needs root: network namespaces"]
fn resolved_names_are_checked_against_host_headers_and_rebinding() {
    isolate(&[PUBLIC, PRIVATE]);
    let server = Server::start(PUBLIC, 8080, "public page");
    let private = Server::start(PRIVATE, 8080, "internal page");
    let env = Env::new();
    let hosts = "203.0.113.10 good.test\n10.99.0.1 rebind.test\n";
    let args = [
        "--net",
        "allowlist",
        "--allow-host",
        "good.test",
        "--allow-host",
        "rebind.test",
    ];
    let script = format!(
        "{0}; r=$?; echo; echo rc=$r; {1}; r=$?; echo; echo rc=$r; {2}; r=$?; echo; echo rc=$r",
        curl("http://good.test:8080/"),
        // Right address, allowed name, but the request names another
        // host: reset before a byte reaches the server.
        curl("-H 'Host: evil.test' http://good.test:8080/"),
        // An allowed name that resolves to a private address (DNS
        // rebinding): refused at the SYN.
        curl("http://rebind.test:8080/"),
    );
    let t = Instant::now();
    let out = run_with_hosts(&env, hosts, &args, &script);
    let took = t.elapsed();
    let text = stdout(&out);
    let rcs: Vec<&str> = text.lines().filter(|l| l.starts_with("rc=")).collect();
    assert_eq!(rcs.len(), 3, "{text}{}", stderr(&out));
    assert_eq!(rcs[0], "rc=0", "{text}{}", stderr(&out));
    assert!(text.contains("public page"), "{text}");
    assert_ne!(rcs[1], "rc=0", "{text}");
    assert_eq!(rcs[2], "rc=7", "{text}");
    assert!(took < Duration::from_secs(MAX_TIME), "{took:?}");
    assert_eq!(server.requests(), vec!["good.test:8080".to_string()]);
    assert!(private.requests().is_empty());
    let err = stderr(&out);
    assert!(
        err.contains("evil.test") && err.contains("sni-mismatch"),
        "{err}"
    );
    assert!(
        err.contains("rebind.test") && err.contains("private-address"),
        "{err}"
    );
}

#[test]
#[ignore = "needs root: network namespaces"]
fn dns_answers_allowed_names_only() {
    isolate(&[PUBLIC]);
    let env = Env::new();
    let (out, _) = run_sh(
        &env,
        GOOD,
        "getent hosts bad.test; echo bad=$?; getent hosts good.test; echo good=$?",
    );
    let text = stdout(&out);
    assert!(text.contains("bad=2"), "{text}{}", stderr(&out));
    assert!(
        text.contains("203.0.113.10") && text.contains("good.test"),
        "{text}"
    );
    assert!(text.contains("good=0"), "{text}");
}

#[test]
#[ignore = "needs root: network namespaces"]
fn raw_private_address_needs_an_allow_cidr() {
    isolate(&[PRIVATE]);
    let server = Server::start(PRIVATE, 8081, "private service");
    let env = Env::new();
    let url = curl("http://10.99.0.1:8081/");
    let (out, took) = run_sh(&env, &["--net", "allowlist"], &url);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(took < Duration::from_secs(MAX_TIME), "{took:?}");
    // A rule for another port does not help.
    let (out, _) = run_sh(
        &env,
        &["--net", "allowlist", "--allow-cidr", "10.99.0.1/32:9999"],
        &url,
    );
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    // Even open mode refuses private addresses without a rule.
    let (out, _) = run_sh(&env, &["--net", "open"], &url);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(server.requests().is_empty());
    let (out, _) = run_sh(
        &env,
        &["--net", "allowlist", "--allow-cidr", "10.99.0.1/32:8081"],
        &url,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("private service"));
    assert_eq!(server.requests().len(), 1);
}

#[test]
#[ignore = "needs root: network namespaces"]
fn open_mode_reaches_public_addresses_by_ip() {
    isolate(&[PUBLIC]);
    let server = Server::start(PUBLIC, 8080, "public");
    let env = Env::new();
    let (out, _) = run_sh(&env, &["--net", "open"], &curl("http://203.0.113.10:8080/"));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("public"));
    assert_eq!(server.requests().len(), 1);
}

#[test]
#[ignore = "needs root: network namespaces"]
fn udp_to_a_test_host_is_dropped() {
    isolate(&[PUBLIC]);
    let sock = in_hosts(|| UdpSocket::bind((PUBLIC, 5353)).unwrap());
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let env = Env::new();
    let log = env.state.path().join("net.jsonl");
    let mut args = GOOD.to_vec();
    args.extend_from_slice(&["--net-log", log.to_str().unwrap()]);
    let py = "import socket\n\
              s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
              for _ in range(5): s.sendto(b'exfil', ('203.0.113.10', 5353))\n\
              print('sent')";
    let (out, _) = run_sh(&env, &args, &format!("/usr/bin/python3 -c \"{py}\""));
    assert!(stdout(&out).contains("sent"), "{}", stderr(&out));
    let mut buf = [0u8; 64];
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "a datagram reached the test host"
    );
    let events = read_log(&log);
    assert!(
        has_event(&events, |e| e["protocol"] == "udp"
            && e["verdict"] == "deny"
            && e["reason"] == "udp-not-allowed"
            && e["address"] == PUBLIC
            && e["port"] == 5353),
        "{events:?}"
    );
}

#[test]
#[ignore = "needs root: network namespaces"]
fn net_log_lists_every_decision() {
    isolate(&[PUBLIC, OTHER_PUBLIC]);
    let _server = Server::start(PUBLIC, 8080, "ok");
    let _other = Server::start(OTHER_PUBLIC, 8080, "no");
    let env = Env::new();
    let log = env.state.path().join("net.jsonl");
    let mut args = GOOD.to_vec();
    args.extend_from_slice(&["--net-log", log.to_str().unwrap()]);
    let (out, report) = {
        let report = env.state.path().join("report.json");
        let mut a = vec!["--report", report.to_str().unwrap()];
        a.extend_from_slice(&args);
        let script = format!(
            "{}; {}; {}; true",
            curl("http://good.test:8080/"),
            curl("http://bad.test:8080/"),
            curl("http://203.0.113.11:8080/")
        );
        let (out, _) = run_sh(&env, &a, &script);
        let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        (out, r)
    };
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let events = read_log(&log);
    let id = report["id"].as_str().unwrap();
    assert!(events.iter().all(|e| e["sandbox"] == id), "{events:?}");
    for (what, f) in [
        (
            "dns allow good.test",
            (|e: &Value| {
                e["protocol"] == "dns" && e["verdict"] == "allow" && e["name"] == "good.test"
            }) as fn(&Value) -> bool,
        ),
        ("tcp allow good.test", |e: &Value| {
            e["protocol"] == "tcp"
                && e["verdict"] == "allow"
                && e["name"] == "good.test"
                && e["port"] == 8080
                && e["bytes_down"].as_u64().unwrap_or(0) > 0
        }),
        ("dns deny bad.test", |e: &Value| {
            e["protocol"] == "dns" && e["verdict"] == "deny" && e["name"] == "bad.test"
        }),
        ("tcp deny 203.0.113.11", |e: &Value| {
            e["protocol"] == "tcp"
                && e["verdict"] == "deny"
                && e["address"] == OTHER_PUBLIC
                && e["reason"] == "not-allowlisted"
        }),
    ] {
        assert!(has_event(&events, f), "no {what} in {events:#?}");
    }
    // Every TCP decision in the log is counted in the report.
    let net = &report["network"];
    let tcp = |v: &str| {
        events
            .iter()
            .filter(|e| e["protocol"] == "tcp" && e["verdict"] == v)
            .count() as u64
    };
    assert_eq!(net["connections_allowed"], tcp("allow"), "{net}");
    assert_eq!(net["connections_denied"], tcp("deny"), "{net}");
}

#[test]
#[ignore = "needs root: network namespaces"]
fn report_has_the_network_section_and_denials() {
    isolate(&[PUBLIC]);
    let _server = Server::start(PUBLIC, 8080, "0123456789");
    let env = Env::new();
    let mut args = GOOD.to_vec();
    args.extend_from_slice(&["--", "sh", "-c"]);
    let script = format!(
        "{}; getent hosts bad.test; {}; true",
        curl("http://good.test:8080/"),
        curl("http://203.0.113.11:8080/")
    );
    args.push(&script);
    let (out, report) = env.run_report(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let net = &report["network"];
    assert_eq!(net["connections_allowed"], 1, "{report:#}");
    // 203.0.113.11 was never answered for a name: refused by address.
    assert!(net["connections_denied"].as_u64().unwrap() >= 1, "{net}");
    assert!(net["bytes_down"].as_u64().unwrap() > 10, "{net}");
    assert!(net["bytes_up"].as_u64().unwrap() > 0, "{net}");
    assert_eq!(
        net["denied_names"],
        serde_json::json!(["bad.test"]),
        "{net}"
    );
    assert_eq!(net["rate_limit_hits"], 0);
    let denied: Vec<&Value> = report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["kind"] == "network-denied")
        .collect();
    assert!(
        denied
            .iter()
            .any(|v| v["observed"].as_str().unwrap().contains("bad.test")),
        "{denied:?}"
    );
    let err = stderr(&out);
    assert!(
        err.contains("stockade: network-denied: name bad.test refused"),
        "{err}"
    );
    // Mode none: no section at all.
    let (_, report) = env.run_report(&["--", "true"]);
    assert!(report.get("network").is_none(), "{report:#}");
}

#[test]
#[ignore = "needs root: network namespaces"]
fn connection_rate_limit_is_a_violation() {
    isolate(&[PUBLIC]);
    let server = Server::start(PUBLIC, 8080, "x");
    let env = Env::new();
    let mut args = GOOD.to_vec();
    args.extend_from_slice(&["--net-rate", "2/min", "--", "sh", "-c"]);
    let script = format!(
        "for i in 1 2 3 4; do {} >/dev/null; echo rc=$?; done",
        curl("http://good.test:8080/")
    );
    args.push(&script);
    let (out, report) = env.run_report(&args);
    let text = stdout(&out);
    // The burst is one minute's allowance: two pass, two are refused.
    assert_eq!(text.matches("rc=0").count(), 2, "{text}");
    assert_eq!(text.matches("rc=7").count(), 2, "{text}");
    assert_eq!(server.requests().len(), 2);
    assert_eq!(report["network"]["rate_limit_hits"], 2, "{report:#}");
    let v: Vec<&Value> = report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["kind"] == "network-rate-limit")
        .collect();
    assert_eq!(v.len(), 1, "{report:#}");
    assert_eq!(v[0]["limit"], "2/min");
    assert!(stderr(&out).contains("stockade: network-rate-limit:"));
}

#[test]
#[ignore = "needs root: network namespaces"]
fn many_runs_leave_nothing_behind() {
    isolate(&[]);
    // Orphans of a leaked sandbox would be reparented to us.
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0);
    let env = Env::new();
    let links_before = sh("ip -o link show");
    let t = Instant::now();
    let mut ids = Vec::new();
    for i in 0..500 {
        let report = env.state.path().join("r.json");
        let out = env.run(&[
            "--report",
            report.to_str().unwrap(),
            "--net",
            "allowlist",
            "--",
            "true",
        ]);
        assert_eq!(code(&out), 0, "run {i}: {}", stderr(&out));
        let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert!(r.get("network").is_some(), "run {i}: {r}");
        ids.push(r["id"].as_str().unwrap().to_string());
        assert!(
            t.elapsed() < Duration::from_secs(240),
            "500 runs took too long ({i} done)"
        );
    }
    assert_eq!(sh("ip -o link show"), links_before, "a device was left");
    // The last runs' detached cleaners may still be at work.
    let left = || -> Vec<std::ffi::OsString> {
        std::fs::read_dir(env.sandboxes_dir())
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    };
    assert!(
        eventually(|| left().is_empty()),
        "sandbox directories left: {:?}",
        left()
    );
    for id in &ids {
        assert!(
            eventually(|| cgroup_dirs(id).is_empty()),
            "cgroup of {id} left"
        );
    }
    let me = std::process::id().to_string();
    // Each run's detached cleaner, and the init it killed, end up here
    // once their parent has exited: reaped, they are gone; anything still
    // running after a while is a leak.
    let children = || -> Vec<String> {
        while let Ok(status) = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(-1),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                let after = stat.rsplit_once(')')?.1;
                let ppid = after.split_whitespace().nth(1)?;
                (ppid == me).then_some(stat)
            })
            .collect()
    };
    assert!(
        eventually(|| children().is_empty()),
        "processes left: {:?}",
        children()
    );
}

#[test]
#[ignore = "needs root: network namespaces"]
fn daemon_sandboxes_get_egress_too() {
    use stockade_core::backend::{Backend, ExecRequest};
    use stockade_policy::{NetMode, Policy};
    isolate(&[PUBLIC]);
    let server = Server::start(PUBLIC, 8080, "via the shim");
    let env = Env::new();
    let mut policy = Policy::default();
    policy.network.mode = NetMode::Allowlist;
    policy.network.allow_hosts = vec!["good.test".parse().unwrap()];
    policy.network.map_hosts = vec!["good.test=203.0.113.10".parse().unwrap()];
    // The shim is started from this thread, so it lives in our namespace.
    let backend = stockade_core::shim::ShimBackend::new(
        env.state.path().to_path_buf(),
        std::path::PathBuf::from(BIN),
    );
    let h = backend.create("egress-shim-1", &policy, None).unwrap();
    let exec = |cmd: &str| {
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (_err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let null: std::os::fd::OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let req = ExecRequest {
            cmd: vec!["sh".into(), "-c".into(), cmd.into()],
            ..Default::default()
        };
        let pid = h.exec(&req, [null, out_w, err_w]).unwrap();
        let (code, _) = h.wait(pid, Some(Duration::from_secs(30))).unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(out_r), &mut s).unwrap();
        (s, code)
    };
    let (text, code) = exec(&curl("http://good.test:8080/"));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("via the shim"), "{text}");
    assert_eq!(exec("getent hosts bad.test").1, Some(2));
    let report = h.destroy().unwrap();
    let net = report.network.expect("a network section");
    assert_eq!(net.connections_allowed, 1, "{net:?}");
    assert_eq!(net.denied_names, vec!["bad.test".to_string()]);
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.kind == stockade_core::ViolationKind::NetworkDenied),
        "{:?}",
        report.violations
    );
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn network_flags_are_checked_before_anything_runs() {
    let state = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .env("STOCKADE_STATE_DIR", state.path())
            .arg("run")
            .args(args)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert_ne!(code(&out), 0, "{args:?} was accepted");
        stderr(&out)
    };
    assert!(run(&["--net", "bogus"]).contains("\"allowlist\""));
    // An allowing flag without --net asks for the allowlist (flags win over
    // the defaults and the file); with --net none it is a contradiction.
    assert!(run(&["--net", "none", "--allow-host", "good.test"]).contains("--net none"));
    assert!(run(&["--net", "allowlist", "--allow-host", "bad host"]).contains("allow_hosts"));
    assert!(run(&["--net", "allowlist", "--allow-cidr", "10.0.0.0/99"]).contains("allow_cidrs"));
    assert!(run(&["--net", "allowlist", "--map-host", "x.test"]).contains("NAME=IP"));
    assert!(run(&["--net", "allowlist", "--net-rate", "0/min"]).contains("at least 1"));
    assert!(run(&["--net", "allowlist", "--net-rate", "fast"]).contains("100/min"));
    assert!(run(&["--net", "allowlist", "--net-bandwidth", "lots"]).contains("50mbit"));
    let log = state.path().join("log");
    assert!(run(&["--net-log", log.to_str().unwrap()]).contains("nothing to log"));
    // Where --net-log would be ignored, it is refused instead.
    for cmd in [&["task", "--repo", "/nonexistent"][..], &["create"][..]] {
        let out = std::process::Command::new(BIN)
            .env("STOCKADE_STATE_DIR", state.path())
            .args(cmd)
            .args(["--net", "allowlist", "--net-log", log.to_str().unwrap()])
            .args(if cmd[0] == "task" {
                &["--", "true"][..]
            } else {
                &[][..]
            })
            .output()
            .unwrap();
        assert_eq!(code(&out), 125, "{cmd:?}");
        assert!(
            stderr(&out).contains("only for `stockade run`"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
#[ignore = "needs root: network namespaces"]
fn first_bytes_that_do_not_prove_an_allowed_name_reach_nothing() {
    isolate(&[PUBLIC]);
    let server = Server::start(PUBLIC, 8080, "secret");
    let env = Env::new();
    // Raw requests from inside a real sandbox, each built to pass an
    // allowed address off as another site (or as no site at all).
    let py = r#"
import socket
attacks = [
    b"GET / HTTP/1.1\r\nX: a\nHost: other.test\r\n\r\n",
    b"PROPFIND / HTTP/1.1\r\nHost: other.test\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: other.test\r\n\r\n",
    b"GET http://other.test/ HTTP/1.1\r\nHost: good.test\r\n\r\n",
    b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",
]
for a in attacks:
    s = socket.create_connection(("good.test", 8080), timeout=5)
    try:
        s.sendall(a)
        got = s.recv(64)
    except OSError:
        got = b""
    print(("answered " + repr(got[:60])) if got else "refused", flush=True)
"#;
    let log = env.state.path().join("net.jsonl");
    let mut args = GOOD.to_vec();
    args.extend_from_slice(&["--net-log", log.to_str().unwrap()]);
    let (out, _) = run_sh(&env, &args, &format!("/usr/bin/python3 -c '{py}'"));
    let text = stdout(&out);
    assert_eq!(text.matches("refused").count(), 7, "{text}{}", stderr(&out));
    assert!(
        server.requests().is_empty(),
        "the server was reached: {:?}",
        server.requests()
    );
    let events = read_log(&log);
    for reason in ["malformed", "no-name", "sni-mismatch"] {
        assert!(
            has_event(&events, |e| e["verdict"] == "deny" && e["reason"] == reason),
            "no {reason} denial: {events:?}"
        );
    }
    // A proper request still works.
    let (out, _) = run_sh(&env, GOOD, &curl("http://good.test:8080/"));
    assert!(stdout(&out).contains("secret"), "{}", stderr(&out));
}

#[test]
#[ignore = "needs root: network namespaces"]
fn no_mode_reaches_the_supervisors_own_addresses() {
    isolate(&[PUBLIC]);
    // A host service bound to every address of the supervisor's namespace
    // (its end of the veth pair is 192.0.2.1).
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let reached = Arc::new(Mutex::new(0));
    let r = reached.clone();
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            *r.lock().unwrap() += 1;
            drop(c);
        }
    });
    let env = Env::new();
    let url = curl(&format!("http://192.0.2.1:{port}/"));
    for mode in [&["--net", "open"][..], &["--net", "allowlist"][..]] {
        let (out, _) = run_sh(&env, mode, &url);
        assert_eq!(code(&out), 7, "{mode:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("own-address") || mode[1] == "allowlist",
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(*reached.lock().unwrap(), 0, "a host service was reached");
    // Named by a CIDR rule, it is reachable.
    let rule = format!("192.0.2.1/32:{port}");
    let (out, _) = run_sh(&env, &["--net", "allowlist", "--allow-cidr", &rule], &url);
    assert_ne!(code(&out), 7, "{}", stderr(&out));
    assert!(eventually(|| *reached.lock().unwrap() == 1));
}
