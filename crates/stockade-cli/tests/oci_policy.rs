//! `stockade-runc` with stockade's own policy through annotations
//! (`org.stockade.policy`, `org.stockade.net.allow-hosts`,
//! `org.stockade.timeout`, `org.stockade.disk`), the egress filter inside
//! the container's network namespace, and the report the keeper writes.
//! Needs root; CI runs these as root.
//!
//! Network safety: the network test first moves its thread into a fresh
//! network namespace with only `lo` ([`isolate`]), where `stockade-runc`
//! (and so the keeper's egress stack) runs; the test host lives in a
//! second fresh namespace joined to it by a veth pair, and the
//! container's namespace is a third one the test makes (as CNI would).
//! Nothing leaves for the machine's own network.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::hostns::{in_hosts, isolate, sh};
use serde_json::{json, Value};

const ROOT_NEEDED: &str =
    "this test needs root (namespaces, cgroups, id-mapped mounts); CI runs it as root";
const TEST_HOST: &str = "203.0.113.10";
const OTHER_HOST: &str = "203.0.113.11";

/// One test's state root, bundle, policy directory and container id.
struct Oci {
    dir: tempfile::TempDir,
    id: String,
    cgroup_rel: String,
}

impl Oci {
    /// A bundle of the busybox image whose process runs `args`.
    fn new(tag: &str, args: &[&str]) -> Oci {
        assert!(nix::unistd::geteuid().is_root(), "{ROOT_NEEDED}");
        let dir = tempfile::Builder::new()
            .prefix("stockade-ocipol-test")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        let id = format!("{tag}-{}", std::process::id());
        let cgroup_rel = format!("stockade-ocipol-test-{id}");
        common::bundle::unpack("busybox", &dir.path().join("bundle"), args, &cgroup_rel);
        Oci {
            cgroup_rel,
            dir,
            id,
        }
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn policies(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    fn edit(&self, f: impl FnOnce(&mut Value)) {
        common::bundle::edit(&self.bundle(), f)
    }

    fn annotate(&self, key: &str, value: &str) {
        self.edit(|c| c["annotations"][key] = json!(value));
    }

    /// `stockade-runc --root <state> --policy-dir <policies> ARGS…`,
    /// through `wrap` (a command that execs its arguments) when given.
    fn cmd(&self, wrap: &[&str], args: &[&str]) -> Command {
        let mut c = match wrap.split_first() {
            None => {
                let mut c = Command::new(common::BIN);
                c.arg0("stockade-runc");
                c
            }
            Some((first, rest)) => {
                let link = self.dir.path().join("stockade-runc");
                if !link.exists() {
                    std::os::unix::fs::symlink(common::BIN, &link).unwrap();
                }
                let mut c = Command::new(first);
                c.args(rest).arg(link);
                c
            }
        };
        c.arg("--root")
            .arg(self.root())
            .arg("--policy-dir")
            .arg(self.policies())
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// `run` (create, start, wait, delete) to completion.
    fn run_with(&self, wrap: &[&str]) -> Output {
        let bundle = self.bundle();
        self.cmd(
            wrap,
            &["run", "--bundle", bundle.to_str().unwrap(), &self.id],
        )
        .output()
        .unwrap()
    }

    fn run(&self) -> Output {
        self.run_with(&[])
    }

    /// `create` expected to fail: its stderr, after checking that nothing
    /// was left.
    fn create_fails(&self) -> String {
        let bundle = self.bundle();
        let out = self
            .cmd(
                &[],
                &["create", "--bundle", bundle.to_str().unwrap(), &self.id],
            )
            .output()
            .unwrap();
        assert!(!out.status.success(), "create succeeded");
        assert!(
            !self.root().join(&self.id).exists(),
            "the state directory was left behind"
        );
        assert!(!self.cgroup_exists(), "the cgroup was left behind");
        text(&out.stderr)
    }

    fn cgroup_exists(&self) -> bool {
        cgroup_mounts()
            .iter()
            .any(|m| m.join(&self.cgroup_rel).exists())
    }

    /// The report the keeper writes when init has ended.
    fn report(&self) -> Value {
        let path = self
            .root()
            .join(".reports")
            .join(format!("{}.json", self.id));
        for _ in 0..500 {
            if let Ok(b) = std::fs::read(&path) {
                return serde_json::from_slice(&b).expect("the report is JSON");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no report at {}", path.display());
    }
}

impl Drop for Oci {
    fn drop(&mut self) {
        let _ = self.cmd(&[], &["delete", "--force", &self.id]).output();
    }
}

fn cgroup_mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fs = right.split(' ').next()?;
            let mount = left.split(' ').nth(4)?;
            (fs == "cgroup" || fs == "cgroup2").then(|| PathBuf::from(mount))
        })
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn violations(report: &Value, kind: &str) -> Vec<Value> {
    report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["kind"] == kind)
        .cloned()
        .collect()
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn unknown_stockade_annotations_are_refused() {
    let c = Oci::new("unknown", &["true"]);
    c.annotate("org.stockade.net.allow-cidrs", "0.0.0.0/0");
    let e = c.create_fails();
    assert!(
        e.contains("org.stockade.net.allow-cidrs") && e.contains("not one stockade-runc knows"),
        "{e}"
    );
    let c = Oci::new("badhost", &["true"]);
    c.annotate("org.stockade.net.allow-hosts", "good.test,not a host");
    let e = c.create_fails();
    assert!(e.contains("org.stockade.net.allow-hosts"), "{e}");
    let c = Oci::new("baddisk", &["true"]);
    c.annotate("org.stockade.disk", "plenty");
    let e = c.create_fails();
    assert!(e.contains("org.stockade.disk"), "{e}");
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn a_policy_outside_the_allowed_dir_is_refused_and_one_inside_applied() {
    let policy = "[limits]\ntimeout = \"1s\"\npids = 77\n";
    let c = Oci::new("policy", &["sh", "-c", "sleep 30"]);
    // Outside the directory, directly and through a symlink inside it.
    let outside = c.dir.path().join("outside.toml");
    std::fs::write(&outside, policy).unwrap();
    c.annotate("org.stockade.policy", outside.to_str().unwrap());
    let e = c.create_fails();
    assert!(e.contains("not inside the allowed policy directory"), "{e}");
    let link = c.policies().join("link.toml");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    c.annotate("org.stockade.policy", link.to_str().unwrap());
    let e = c.create_fails();
    assert!(e.contains("not inside the allowed policy directory"), "{e}");
    let dotdot = c.policies().join("../outside.toml");
    c.annotate("org.stockade.policy", dotdot.to_str().unwrap());
    let e = c.create_fails();
    assert!(e.contains("not inside the allowed policy directory"), "{e}");
    // A file that is not a policy.
    std::fs::write(
        c.policies().join("bad.toml"),
        "[limits]\nmemory = \"lots\"\n",
    )
    .unwrap();
    c.annotate(
        "org.stockade.policy",
        c.policies().join("bad.toml").to_str().unwrap(),
    );
    let e = c.create_fails();
    assert!(e.contains("memory"), "{e}");

    // Inside: its timeout kills the container, its pids limit applies
    // where the config sets none.
    let inside = c.policies().join("p.toml");
    std::fs::write(&inside, policy).unwrap();
    c.annotate("org.stockade.policy", inside.to_str().unwrap());
    let bundle = c.bundle();
    // The container's stdio is create's: a file, which nobody waits on.
    let err = c.dir.path().join("create.err");
    let status = c
        .cmd(
            &[],
            &["create", "--bundle", bundle.to_str().unwrap(), &c.id],
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "create: {}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    let pids_max: Vec<String> = cgroup_mounts()
        .iter()
        .filter_map(|m| std::fs::read_to_string(m.join(&c.cgroup_rel).join("pids.max")).ok())
        .map(|s| s.trim().to_string())
        .collect();
    assert_eq!(pids_max, vec!["77".to_string()], "the policy's pids limit");
    let out = c.cmd(&[], &["start", &c.id]).output().unwrap();
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    let r = c.report();
    assert_eq!(r["outcome"], "timeout", "{r}");
    assert_eq!(violations(&r, "timeout").len(), 1, "{r}");
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn timeout_and_memory_kills_show_in_the_report() {
    let c = Oci::new(
        "timeout",
        &["sh", "-c", "echo up; sleep 30; echo not-killed"],
    );
    c.annotate("org.stockade.timeout", "1s");
    // `stockade events --oci` follows the runtime's reports as they come.
    let root = c.root();
    let mut follower = Command::new(common::BIN)
        .args(["events", "--oci-root", root.to_str().unwrap(), &c.id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(lines).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let out = c.run();
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    let r = c.report();
    assert_eq!(r["outcome"], "timeout", "{r}");
    assert_eq!(r["signal"], 9, "{r}");
    assert_eq!(violations(&r, "timeout").len(), 1, "{r}");
    assert_eq!(r["command"][0], "sh", "{r}");
    let line = rx.recv_timeout(Duration::from_secs(20));
    let _ = follower.kill();
    let _ = follower.wait();
    let ev: Value = serde_json::from_str(&line.expect("events --oci printed the report")).unwrap();
    assert_eq!(ev["type"], "oci-report", "{ev}");
    assert_eq!(ev["id"], c.id.as_str(), "{ev}");
    assert_eq!(ev["report"], r, "{ev}");
    // --once prints what is there and stops; another id's reports are not.
    let once = |id: &str| {
        let out = Command::new(common::BIN)
            .args(["events", "--oci-root", root.to_str().unwrap(), "--once", id])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(once(&c.id).lines().count(), 1);
    assert_eq!(once("another"), "");

    let c = Oci::new(
        "mem",
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=96M count=1 2>/dev/null; exit 3",
        ],
    );
    c.edit(|cfg| {
        cfg["linux"]["resources"] = json!({"memory": {"limit": 32 << 20, "swap": 32 << 20}});
    });
    let out = c.run();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let r = c.report();
    assert_eq!(r["outcome"], "exited", "{r}");
    assert_eq!(r["exit_code"], 3, "{r}");
    assert_eq!(violations(&r, "memory-limit").len(), 1, "{r}");
    assert!(
        r["usage"]["peak_memory_bytes"].as_u64().unwrap() > 16 << 20,
        "{r}"
    );

    // A container that ends by itself has a report without violations.
    let c = Oci::new("clean", &["true"]);
    let out = c.run();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let r = c.report();
    assert_eq!(r["outcome"], "exited", "{r}");
    assert_eq!(r["violations"], json!([]), "{r}");
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn a_fork_refused_at_the_pids_limit_shows_in_the_report() {
    let c = Oci::new(
        "pids",
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 2 & done; wait; exit 0",
        ],
    );
    c.edit(|cfg| cfg["linux"]["resources"] = json!({"pids": {"limit": 6}}));
    let out = c.run();
    assert!(
        text(&out.stderr).contains("fork") || text(&out.stderr).contains("Resource"),
        "the forks were not refused: {}",
        text(&out.stderr)
    );
    let r = c.report();
    let v = violations(&r, "pids-limit");
    assert_eq!(v.len(), 1, "{r}");
    assert_eq!(v[0]["limit"], "6", "{r}");
    assert!(r["usage"]["pids_peak"].as_u64().unwrap() <= 6, "{r}");
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn a_disk_annotation_kills_a_container_that_writes_past_it() {
    let c = Oci::new(
        "disk",
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/big bs=1M count=64 2>/dev/null; sleep 30; echo not-killed",
        ],
    );
    c.annotate("org.stockade.disk", "8m");
    c.edit(|cfg| cfg["process"]["user"] = json!({"uid": 0, "gid": 0}));
    let out = c.run();
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("not-killed"));
    let r = c.report();
    assert_eq!(r["outcome"], "disk-limit", "{r}");
    assert_eq!(violations(&r, "disk-limit").len(), 1, "{r}");
}

/// A tiny HTTP server on the test host that answers every request with
/// `body` and remembers each request's `Host` header.
fn serve(addr: &str, port: u16, body: &'static str) -> Arc<Mutex<Vec<String>>> {
    let a = addr.to_string();
    let listener = in_hosts(move || TcpListener::bind((a.as_str(), port)).unwrap());
    serve_on(listener, body)
}

fn serve_on(listener: TcpListener, body: &'static str) -> Arc<Mutex<Vec<String>>> {
    common::hostns::serve_http(listener, body)
}

/// The container's network namespace, made by the test as CNI would: a
/// veth to the test's namespace with an address and a default route, and
/// a server on the test's end of it. Removed on drop.
struct CniNetns(String);

impl CniNetns {
    fn new(tag: &str) -> CniNetns {
        let name = format!("stockade-ocipol-{tag}-{}", std::process::id());
        sh(&format!("ip netns add {name}"));
        let ns = CniNetns(name);
        sh(&format!(
            "ip link add stkp-a type veth peer name stkp-b netns {}",
            ns.0
        ));
        sh("ip addr add 192.0.2.9/30 dev stkp-a && ip link set stkp-a up");
        sh(&format!(
            "ip -n {0} addr add 192.0.2.10/30 dev stkp-b && ip -n {0} link set stkp-b up \
             && ip -n {0} link set lo up && ip -n {0} route add default via 192.0.2.9",
            ns.0
        ));
        ns
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for CniNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// `unshare -m` with the test's `/etc/hosts` bound over the machine's:
/// the keeper's resolver (the host's, as for `stockade run`) finds the
/// test names there. The machine's own file is untouched.
fn with_hosts(dir: &Path, hosts: &str) -> Vec<String> {
    let file = dir.join("hosts");
    std::fs::write(&file, hosts).unwrap();
    [
        "unshare",
        "-m",
        "sh",
        "-c",
        r#"mount --bind "$0" /etc/hosts && exec "$@""#,
        file.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups, id-mapped mounts and veth pairs"]
fn allow_hosts_puts_the_containers_network_behind_the_egress_filter() {
    isolate(&[TEST_HOST, OTHER_HOST]);
    let requests = serve(TEST_HOST, 80, "hello-from-good");
    let others = serve(OTHER_HOST, 80, "hello-from-other");
    let ns = CniNetns::new("egress");
    // A server on the engine's end of the container's own veth: reachable
    // from the container's namespace unless the filter holds.
    let bypass = serve_on(TcpListener::bind(("192.0.2.9", 8080)).unwrap(), "bypassed");
    let script = r#"req() { printf 'GET / HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" | nc -w 5 "$1" "$2"; echo " $3=$?"; }
                    req good.test 80 good; req bad.test 80 bad; req 192.0.2.9 8080 bypass; req 203.0.113.11 80 raw
                    ip link set stkp-b up 2>/dev/null; echo " linkup=$?"
                    ip route add default via 192.0.2.9 dev stkp-b 2>/dev/null; echo " routeadd=$?"
                    req 192.0.2.9 8080 bypass2"#;
    let c = Oci::new("egress", &["sh", "-c", script]);
    // The engine's resolv.conf names its own server, as CNI's does.
    let resolv = c.dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 192.0.2.9\n").unwrap();
    let netns = ns.path();
    c.edit(|cfg| {
        let nss = cfg["linux"]["namespaces"].as_array_mut().unwrap();
        nss.retain(|n| n["type"] != "network");
        nss.push(json!({"type": "network", "path": netns}));
        cfg["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/etc/resolv.conf",
            "type": "bind",
            "source": resolv,
            "options": ["rbind", "ro"]
        }));
    });
    c.annotate("org.stockade.net.allow-hosts", "good.test");
    let wrap = with_hosts(
        c.dir.path(),
        &format!("{TEST_HOST} good.test\n{OTHER_HOST} bad.test\n"),
    );
    let wrap: Vec<&str> = wrap.iter().map(String::as_str).collect();
    let out = c.run_with(&wrap);
    let o = text(&out.stdout);
    assert!(out.status.success(), "{o} {}", text(&out.stderr));
    assert!(o.contains("hello-from-good good=0"), "{o}");
    assert_eq!(o.matches("hello-from-good").count(), 1, "{o}");
    assert!(
        !o.contains("bypassed") && !o.contains("hello-from-other") && !o.contains("bad=0"),
        "{o}"
    );
    assert!(o.contains(" bypass=") && o.contains(" raw="), "{o}");
    // The container cannot bring the engine's link back (no
    // CAP_NET_ADMIN over a namespace its user namespace does not own).
    assert!(!o.contains("linkup=0") && !o.contains("routeadd=0"), "{o}");
    assert!(o.contains(" bypass2="), "{o}");
    assert_eq!(*requests.lock().unwrap(), vec!["good.test".to_string()]);
    assert!(bypass.lock().unwrap().is_empty(), "the filter was bypassed");
    assert!(
        others.lock().unwrap().is_empty(),
        "a name not allowed was reached"
    );
    let r = c.report();
    let denied = violations(&r, "network-denied");
    assert!(
        denied
            .iter()
            .any(|v| v["observed"].as_str().unwrap().contains("bad.test")),
        "{r}"
    );
    assert!(r["network"].is_object(), "{r}");

    // A namespace the runtime makes itself (Docker's case: its
    // resolv.conf bound in as well) gets the same.
    let c = Oci::new("ownns", &["sh", "-c", script]);
    c.annotate("org.stockade.net.allow-hosts", "good.test");
    c.edit(|cfg| {
        cfg["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/etc/resolv.conf",
            "type": "bind",
            "source": resolv,
            "options": ["rbind", "ro"]
        }));
    });
    let wrap = with_hosts(
        c.dir.path(),
        &format!("{TEST_HOST} good.test\n{OTHER_HOST} bad.test\n"),
    );
    let wrap: Vec<&str> = wrap.iter().map(String::as_str).collect();
    let out = c.run_with(&wrap);
    let o = text(&out.stdout);
    assert!(out.status.success(), "{o} {}", text(&out.stderr));
    assert!(o.contains("hello-from-good good=0"), "{o}");
    assert!(
        !o.contains("hello-from-other") && !o.contains("bad=0"),
        "{o}"
    );
    assert!(
        others.lock().unwrap().is_empty(),
        "a name not allowed was reached"
    );
}

#[test]
#[ignore = "needs root: creates namespaces, cgroups and id-mapped mounts"]
fn a_filter_with_cap_net_admin_or_the_hosts_network_is_refused() {
    let c = Oci::new("netadmin", &["true"]);
    c.annotate("org.stockade.net.allow-hosts", "good.test");
    c.edit(|cfg| {
        cfg["process"]["capabilities"] = json!({
            "bounding": ["CAP_NET_ADMIN"], "effective": ["CAP_NET_ADMIN"],
            "permitted": ["CAP_NET_ADMIN"]
        })
    });
    let e = c.create_fails();
    assert!(e.contains("CAP_NET_ADMIN"), "{e}");

    // No network namespace: the lock-down would be the host's.
    let c = Oci::new("hostnet", &["true"]);
    c.annotate("org.stockade.net.allow-hosts", "good.test");
    c.edit(|cfg| {
        let nss = cfg["linux"]["namespaces"].as_array_mut().unwrap();
        nss.retain(|n| n["type"] != "network");
    });
    let e = c.create_fails();
    assert!(e.contains("host's network namespace"), "{e}");
}
