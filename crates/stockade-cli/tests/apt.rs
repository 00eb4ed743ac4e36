//! Root installs packages in a copy-on-write root (issue 19, item 3):
//! `apt-get update` and `apt-get install` from an allowed mirror in
//! `--overlay-root --root`, and what root's capabilities there cannot reach.
//!
//! Network safety: the mirror is a `python3 -m http.server` on a test host
//! in a network namespace the test made ([`common::hostns`]); the
//! supervisor runs in a second fresh namespace joined to it by veth. apt
//! reads only the sources list the test writes inside the sandbox.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use common::hostns::{in_hosts, isolate};
use common::*;

const MIRROR: &str = "203.0.113.10";
const PORT: u16 = 8080;

/// Kills the mirror's server when the test ends, panics included.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `python3 -m http.server` serving `dir` on the test host, once it
/// accepts connections.
fn serve(dir: &Path) -> Serving {
    let dir = dir.to_path_buf();
    let child = in_hosts(move || {
        // Started from a thread in the hosts' namespace: the server lives
        // there, and only there.
        Command::new("/usr/bin/python3")
            .args(["-m", "http.server", "--bind", MIRROR, "--directory"])
            .arg(&dir)
            .arg(PORT.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs the test mirror (CI installs it)")
    });
    let serving = Serving(child);
    assert!(
        eventually_for(30, || std::net::TcpStream::connect((MIRROR, PORT)).is_ok()),
        "the test mirror did not start"
    );
    serving
}

/// A package with a program, a manual page (man-db's trigger runs, and
/// `chown`s its cache directory to `man`) and a directory owned by
/// `daemon` (dpkg `chown`s it), in a flat repository (`Packages` beside
/// the `.deb`) under `repo`.
fn build_repo(repo: &Path, name: &str) {
    let pkg = repo.join("build");
    let man = pkg.join("usr/share/man/man1");
    let data = pkg.join("var/lib").join(name);
    for d in [
        pkg.join("DEBIAN"),
        pkg.join("usr/bin"),
        man.clone(),
        data.clone(),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(
        pkg.join("DEBIAN/control"),
        format!("Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.invalid>\nDescription: probe\n"),
    )
    .unwrap();
    let bin = pkg.join("usr/bin").join(name);
    std::fs::write(&bin, "#!/bin/sh\necho probe-installed\n").unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let page = man.join(format!("{name}.1"));
    std::fs::write(&page, format!(".TH PROBE 1\n.SH NAME\n{name} \\- probe\n")).unwrap();
    assert!(Command::new("gzip")
        .args(["-9n"])
        .arg(&page)
        .status()
        .unwrap()
        .success());
    std::fs::write(data.join("state"), "x").unwrap();
    // `daemon` is uid and gid 1 on Debian; dpkg stores the names too.
    for p in [&data, &data.join("state")] {
        std::os::unix::fs::chown(p, Some(1), Some(1)).unwrap();
    }
    let deb = repo.join(format!("{name}_1.0_all.deb"));
    let built = Command::new("dpkg-deb")
        .arg("--build")
        .arg(&pkg)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", stderr(&built));
    std::fs::remove_dir_all(&pkg).unwrap();
    let control = Command::new("dpkg-deb")
        .args(["--field"])
        .arg(&deb)
        .output()
        .unwrap();
    let sum = Command::new("sha256sum").arg(&deb).output().unwrap();
    let sha = stdout(&sum).split_whitespace().next().unwrap().to_string();
    let size = std::fs::metadata(&deb).unwrap().len();
    std::fs::write(
        repo.join("Packages"),
        format!(
            "{}Filename: ./{}\nSize: {size}\nSHA256: {sha}\n\n",
            stdout(&control),
            deb.file_name().unwrap().to_string_lossy()
        ),
    )
    .unwrap();
}

/// What a change to a file would alter: size, mode, owners, modification
/// and change times.
type Stamp = (u64, u32, u32, u32, i64, i64, i64, i64);

/// Every entry under `dir` with its [`Stamp`]. A missing `dir` is empty.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Stamp> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            // apt on the host rebuilds these whenever they are stale (the
            // v2 test's `apt-get download` may run meanwhile); a sandbox's
            // copies are in its own upper layer.
            if ["pkgcache.bin", "srcpkgcache.bin"].contains(&&*e.file_name().to_string_lossy()) {
                continue;
            }
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                todo.push(e.path());
            }
            out.insert(
                e.path(),
                (
                    m.len(),
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                ),
            );
        }
    }
    out
}

#[test]
#[ignore = "needs root: network namespaces, namespaces and cgroups; uses dpkg-deb and python3"]
fn apt_get_installs_from_an_allowed_mirror_in_an_overlay_root() {
    isolate(&[MIRROR]);
    let repo = tempfile::tempdir().unwrap();
    std::fs::set_permissions(repo.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let name = format!("stockade-apt-probe-{}", rand_suffix());
    build_repo(repo.path(), &name);
    let _mirror = serve(repo.path());
    let watched = [
        Path::new("/var/cache/apt"),
        Path::new("/var/lib/dpkg"),
        Path::new("/var/lib/apt"),
        Path::new("/var/cache/man"),
    ];
    let before: Vec<_> = watched.iter().map(|d| snapshot(d)).collect();
    let env = Env::new();
    // apt reads only this sources list: no host list names a real mirror
    // to it (and the allowlist would refuse one, with a violation).
    let script = format!(
        r#"set -e
mkdir /tmp/parts
echo "deb [trusted=yes] http://mirror.test:{PORT}/ ./" > /tmp/mirror.list
o="-o Dir::Etc::SourceList=/tmp/mirror.list -o Dir::Etc::SourceParts=/tmp/parts -o Acquire::Retries=0"
apt-get $o update
apt-get $o install -y {name}
echo "ran: $({name})"
echo "owner: $(stat -c %U:%G /var/lib/{name} /var/lib/{name}/state | tr '\n' ' ')"
if [ -e /var/lib/dpkg/info/man-db.list ]; then echo "man cache: $(stat -c %U /var/cache/man)"; fi
dpkg -s {name} | grep '^Status'
"#
    );
    let (out, report) = env.run_report(&[
        "--overlay-root",
        "--root",
        "--net",
        "allowlist",
        "--allow-host",
        "mirror.test",
        "--map-host",
        &format!("mirror.test={MIRROR}"),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let text = stdout(&out);
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{text}\n{err}");
    assert!(text.contains("ran: probe-installed"), "{text}");
    assert!(
        text.contains("owner: daemon:daemon daemon:daemon"),
        "{text}"
    );
    assert!(text.contains("Status: install ok installed"), "{text}");
    let host_has_man_db = Path::new("/var/lib/dpkg/info/man-db.list").exists();
    if host_has_man_db {
        // The trigger's `install -d -o man /var/cache/man` ran.
        assert!(text.contains("man cache: man"), "{text}\n{err}");
    }
    // No denial at all: apt's SRV lookup of `_http._tcp.mirror.test`
    // is not one.
    let violations = report["violations"].as_array().unwrap();
    assert!(
        violations.iter().all(|v| v["kind"] != "network-denied"),
        "{violations:?}"
    );
    assert!(!err.contains("network-denied"), "{err}");
    // The host's package state is as it was.
    let after: Vec<_> = watched.iter().map(|d| snapshot(d)).collect();
    for ((dir, b), a) in watched.iter().zip(&before).zip(&after) {
        assert!(b == a, "{} changed on the host", dir.display());
    }
    assert!(!Path::new("/usr/bin").join(&name).exists());
    assert!(!Path::new("/var/lib").join(&name).exists());
}

/// `CapEff` of `grep CapEff /proc/self/status` output lines, in order.
fn cap_eff(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .collect()
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn root_capabilities_in_an_overlay_root_reach_only_the_sandbox_s_own_ids() {
    const BASE: u32 = 2_000_000_000;
    let env = Env::new();
    // A host directory only host root may read, bound read-only.
    let secret = tempfile::tempdir().unwrap();
    std::fs::set_permissions(secret.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = secret.path().join("secret");
    std::fs::write(&file, "host-secret").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ws = user_dir(1000);
    let script = r#"
grep CapEff /proc/self/status
cat /hostsecret/secret && echo READ-SECRET
ls /hostsecret >/dev/null 2>&1 && echo LISTED
touch /hostsecret/new 2>/dev/null && echo WROTE-RO-BIND
echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo WROTE-SYSCTL
echo x > /workspace/daemon; chown 1:1 /workspace/daemon && echo chowned
echo x > /workspace/nobody; chown 65534:65534 /workspace/nobody
echo x > /workspace/mine
chown 65536 /workspace/mine 2>/dev/null && echo CHOWNED-UNMAPPED
echo x > /workspace/root; chown 0:0 /workspace/root
echo x > /usr/bin/stockade-cap-probe && echo wrote-overlay
setpriv --reuid 1 --regid 1 --clear-groups -- grep CapEff /proc/self/status
"#;
    let ro = format!("{}:/hostsecret", secret.path().display());
    let out = env.run(&[
        "--overlay-root",
        "--root",
        "--ro-bind",
        &ro,
        "--workspace",
        ws.path().to_str().unwrap(),
        "--",
        "sh",
        "-c",
        script,
    ]);
    let text = stdout(&out);
    let err = stderr(&out);
    // Root has its capabilities; the process that became uid 1 has none.
    assert_eq!(cap_eff(&text), vec![0xfb, 0], "{text}\n{err}");
    for attack in [
        "host-secret",
        "READ-SECRET",
        "LISTED",
        "WROTE-RO-BIND",
        "WROTE-SYSCTL",
        "CHOWNED-UNMAPPED",
    ] {
        assert!(!text.contains(attack), "{attack}:\n{text}\n{err}");
    }
    assert!(
        text.contains("chowned") && text.contains("wrote-overlay"),
        "{text}\n{err}"
    );
    assert!(!Path::new("/usr/bin/stockade-cap-probe").exists());
    assert!(!secret.path().join("new").exists());
    // On the host, what root gave away belongs to stockade's disk block,
    // and what it kept to the workspace's owner: never to host root.
    let owner = |f: &str| {
        let m = std::fs::metadata(ws.path().join(f)).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    assert_eq!(owner("daemon"), (BASE + 1, BASE + 1, 0o644));
    assert_eq!(owner("nobody"), (BASE + 65534, BASE + 65534, 0o644));
    assert_eq!(owner("mine"), (1000, 1000, 0o644));
    assert_eq!(owner("root"), (1000, 1000, 0o644));
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn only_root_in_a_copy_on_write_root_keeps_capabilities() {
    let env = Env::new();
    for args in [&["--overlay-root"][..], &["--root"][..], &[][..]] {
        let mut full = args.to_vec();
        full.extend([
            "--",
            "sh",
            "-c",
            "grep CapEff /proc/self/status; cat /proc/self/status | grep -E '^Cap(Prm|Bnd|Amb)'",
        ]);
        let out = env.run(&full);
        let text = stdout(&out);
        assert_eq!(cap_eff(&text), vec![0], "{args:?}: {text}{}", stderr(&out));
        assert_eq!(
            text.matches("0000000000000000").count(),
            4,
            "{args:?}: {text}"
        );
    }
}

/// Puts the host file back as it was, whatever the test did.
struct Restore {
    path: PathBuf,
    before: Option<(Vec<u8>, std::fs::Permissions)>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        match &self.before {
            Some((bytes, perm)) => {
                let _ = std::fs::write(&self.path, bytes);
                let _ = std::fs::set_permissions(&self.path, perm.clone());
            }
            None => {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups, writes the host's debconf password store"]
fn root_in_an_overlay_root_cannot_read_the_host_s_debconf_passwords() {
    let dir = Path::new("/var/cache/debconf");
    if !dir.is_dir() {
        eprintln!("skipped: the host has no {}", dir.display());
        return;
    }
    let path = dir.join("passwords.dat");
    let before = std::fs::read(&path)
        .ok()
        .map(|b| (b, std::fs::metadata(&path).unwrap().permissions()));
    let _restore = Restore {
        path: path.clone(),
        before,
    };
    // A secret as debconf keeps it: host root's, mode 0600.
    std::fs::write(&path, "Name: test/password\nValue: debconf-canary-secret\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let env = Env::new();
    let out = env.run(&[
        "--overlay-root",
        "--root",
        "--",
        "sh",
        "-c",
        "cat /var/cache/debconf/passwords.dat; echo size=$(wc -c < /var/cache/debconf/passwords.dat); \
         echo new > /var/cache/debconf/passwords.dat && cat /var/cache/debconf/passwords.dat",
    ]);
    let text = stdout(&out);
    assert!(!text.contains("debconf-canary-secret"), "{text}");
    // The sandbox sees an empty store it may rewrite; the host's is untouched.
    assert!(text.contains("size=0\nnew"), "{text}\n{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "Name: test/password\nValue: debconf-canary-secret\n"
    );
}
