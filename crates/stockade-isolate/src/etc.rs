//! The sandbox's generated `/etc`.
//!
//! It holds the public configuration programs need (CA bundle, ld.so cache,
//! alternatives, locale and shell defaults, package manager config) copied
//! from an allowlist of host entries, plus files written for the sandbox
//! (passwd and group with `agent`, hosts, hostname, resolv.conf,
//! nsswitch.conf, gitconfig). Nothing secret is on the allowlist: no shadow,
//! no ssh host keys, no sudoers, no host users.
//!
//! Building it takes a few milliseconds, so it is built once per distinct
//! content into `<state>/etc/<key>` and shared read-only by every sandbox.
//! The key covers the stockade version, the hostname, whether the sandbox
//! has network egress (which changes `resolv.conf`), and the modification
//! times of the allowlisted host entries, so installing a package on the
//! host (which touches `/etc/alternatives` or `/etc/ld.so.cache`) yields a
//! fresh copy on the next start.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

/// Host `/etc` entries copied into the sandbox. Directories are copied
/// whole; symlinks stay symlinks.
pub const ALLOWLIST: &[&str] = &[
    "alternatives",
    "apt",
    "bash.bashrc",
    "ca-certificates.conf",
    "debian_version",
    "dpkg",
    "environment",
    "gai.conf",
    "host.conf",
    "inputrc",
    "issue",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "locale.alias",
    "localtime",
    "login.defs",
    "lsb-release",
    "mime.types",
    "os-release",
    "perl",
    "profile",
    "profile.d",
    "protocols",
    "python3",
    "python3.11",
    "rpc",
    "services",
    "shells",
    "ssl/certs",
    "ssl/openssl.cnf",
    "timezone",
    "vim",
    "xattr.conf",
];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
agent:x:1000:1000:agent:/home/agent:/bin/bash\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:\ntty:x:5:\nagent:x:1000:\nnogroup:x:65534:\n";

/// The sandbox's passwd or group file: ours, plus the host's *system*
/// accounts (ids 1–999: `daemon`, `_apt`, `www-data`, …), which are
/// distribution data that package scripts expect. Regular users (ids
/// 1000 and up) never appear; password fields are always `x`.
fn accounts(ours: &str, host: Option<String>) -> String {
    let mut out = ours.to_string();
    let taken: Vec<&str> = ours.lines().filter_map(|l| l.split(':').next()).collect();
    for line in host.unwrap_or_default().lines() {
        let fields: Vec<&str> = line.split(':').collect();
        let Some(id) = fields.get(2).and_then(|i| i.parse::<u32>().ok()) else {
            continue;
        };
        if !(1..1000).contains(&id) || taken.contains(&fields[0]) || fields.len() < 3 {
            continue;
        }
        let mut f = fields.clone();
        f[1] = "x";
        if f.len() == 4 {
            // group: keep only system members, never regular users' names
            f[3] = "";
        }
        out.push_str(&f.join(":"));
        out.push('\n');
    }
    out
}
const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n";
/// Git refuses repositories owned by another user; files from a root-owned
/// host workspace show up as `nobody`, so trust every directory here.
const GITCONFIG: &str = "[safe]\n\tdirectory = *\n";

/// The sandbox's `resolv.conf`. With network egress (`dns`: the name
/// server the caller's egress filter answers on) it names that server.
fn resolv_conf(dns: Option<Ipv4Addr>) -> String {
    match dns {
        Some(addr) => format!(
            "# stockade: names are answered by the sandbox's egress filter\n\
             nameserver {addr}\n"
        ),
        None => "# stockade: this sandbox has no network beyond loopback\n".to_string(),
    }
}

/// Returns the directory holding the generated `/etc` for `hostname`
/// (with `dns`: for a sandbox with network egress whose name server is at
/// that address), building it if this content has not been built before.
pub fn prepare(state_dir: &Path, hostname: &str, dns: Option<Ipv4Addr>) -> io::Result<PathBuf> {
    let host_etc = Path::new("/etc");
    let key = content_key(host_etc, hostname, dns);
    let root = state_dir.join("etc");
    let dir = root.join(format!("{key:016x}"));
    if dir.is_dir() {
        return Ok(dir);
    }
    fs::create_dir_all(&root)?;
    let tmp = root.join(format!(".build-{key:016x}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    build(host_etc, &tmp, hostname, dns)?;
    match fs::rename(&tmp, &dir) {
        Ok(()) => {}
        // Another stockade built the same content concurrently; theirs is
        // as good as ours.
        Err(_) if dir.is_dir() => {
            let _ = fs::remove_dir_all(&tmp);
        }
        Err(e) => return Err(e),
    }
    Ok(dir)
}

fn content_key(host_etc: &Path, hostname: &str, dns: Option<Ipv4Addr>) -> u64 {
    let mut h = DefaultHasher::new();
    env!("CARGO_PKG_VERSION").hash(&mut h);
    PASSWD.hash(&mut h);
    hostname.hash(&mut h);
    resolv_conf(dns).hash(&mut h);
    // Looked up relative to an open /etc: every run checks all of these,
    // and a full path walk from / for each cost twice as much.
    // (No /etc at all: nothing of the host goes into the key.)
    if let Ok(dir) = fs::File::open(host_etc) {
        let nofollow = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
        for name in ALLOWLIST.iter().chain(&["passwd", "group"]) {
            if let Ok(st) = nix::sys::stat::fstatat(&dir, *name, nofollow) {
                (name, st.st_mtime, st.st_mtime_nsec, st.st_size, st.st_ino).hash(&mut h);
            }
        }
    }
    h.finish()
}

fn build(host_etc: &Path, out: &Path, hostname: &str, dns: Option<Ipv4Addr>) -> io::Result<()> {
    fs::create_dir_all(out)?;
    for name in ALLOWLIST {
        let src = host_etc.join(name);
        if fs::symlink_metadata(&src).is_err() {
            continue;
        }
        let dst = out.join(name);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)?;
        }
        copy_tree(&src, &dst)?;
    }
    let files: [(&str, String); 7] = [
        (
            "passwd",
            accounts(PASSWD, fs::read_to_string(host_etc.join("passwd")).ok()),
        ),
        (
            "group",
            accounts(GROUP, fs::read_to_string(host_etc.join("group")).ok()),
        ),
        ("nsswitch.conf", NSSWITCH.to_string()),
        ("gitconfig", GITCONFIG.to_string()),
        ("hostname", format!("{hostname}\n")),
        (
            "hosts",
            format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
        ),
        ("resolv.conf", resolv_conf(dns)),
    ];
    for (name, content) in files {
        fs::write(out.join(name), content)?;
    }
    // The workload's root has no capabilities, so apt cannot switch to its
    // `_apt` user for downloads; let it stay root instead.
    if out.join("apt").is_dir() {
        let conf = out.join("apt/apt.conf.d");
        fs::create_dir_all(&conf)?;
        fs::write(conf.join("99stockade"), "APT::Sandbox::User \"root\";\n")?;
    }
    fs::write(out.join("machine-id"), "5f0c6e2a8d3b4c1e9a7f00d1ce0ab5e1\n")?;
    let mut perms = fs::metadata(out)?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(out, perms)
}

/// Copies a file, a symlink or a directory tree. Special files are skipped.
/// Unreadable entries (mode 0600 and the like) are skipped too: what the
/// host keeps private stays out of the sandbox.
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        symlink(fs::read_link(src)?, dst)
    } else if ft.is_dir() {
        fs::create_dir_all(dst)?;
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
        Ok(())
    } else if ft.is_file() {
        if meta.mode() & 0o004 == 0 {
            return Ok(());
        }
        fs::copy(src, dst).map(drop)
    } else {
        Ok(())
    }
}

/// Removes every generated `/etc` but the current ones for `hostname`:
/// without network, and with network egress whose name server is `dns`.
/// Only safe when no sandbox is running, since running sandboxes see these
/// directories through bind mounts; `stockade gc` calls it then.
pub fn remove_stale(state_dir: &Path, hostname: &str, dns: Ipv4Addr) {
    let root = state_dir.join("etc");
    let keep: Vec<PathBuf> = [None, Some(dns)]
        .into_iter()
        .map(|dns| {
            root.join(format!(
                "{:016x}",
                content_key(Path::new("/etc"), hostname, dns)
            ))
        })
        .collect();
    let Ok(entries) = fs::read_dir(&root) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        let is_build = name.to_string_lossy().starts_with(".build-");
        // Leave other processes' in-flight builds alone unless old.
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().map(|d| d.as_secs() > 600).unwrap_or(false))
            .unwrap_or(false);
        if !keep.contains(&p) && (!is_build || old) {
            let _ = fs::remove_dir_all(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DNS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    #[test]
    fn generated_etc_has_agent_and_no_secrets() {
        let state = tempfile::tempdir().unwrap();
        let dir = prepare(state.path(), "box", None).unwrap();
        let passwd = fs::read_to_string(dir.join("passwd")).unwrap();
        assert!(
            passwd.contains("agent:x:1000:1000::/home/agent")
                || passwd.contains("agent:x:1000:1000:agent:/home/agent")
        );
        assert_eq!(fs::read_to_string(dir.join("hostname")).unwrap(), "box\n");
        for secret in [
            "shadow",
            "gshadow",
            "sudoers",
            "ssh",
            "ssl/private",
            "subuid",
        ] {
            assert!(!dir.join(secret).exists(), "{secret} leaked");
        }
        if Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
            assert!(dir.join("ssl/certs/ca-certificates.crt").exists());
        }
    }

    #[test]
    fn host_system_accounts_are_kept_and_users_dropped() {
        let host = "root:x:0:0::/root:/bin/sh\n_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n\
                    alice:x:1001:1001:Alice:/home/alice:/bin/bash\nweird\n";
        let p = accounts(PASSWD, Some(host.into()));
        assert!(p.contains("_apt:x:42:"));
        assert!(!p.contains("alice"));
        assert_eq!(p.lines().filter(|l| l.starts_with("root:")).count(), 1);
        let g = accounts(
            GROUP,
            Some("ssl-cert:x:108:alice\nusers:x:100:bob\n".into()),
        );
        assert!(g.contains("ssl-cert:x:108:\n") && g.contains("users:x:100:\n"));
        assert!(!g.contains("alice") && !g.contains("bob"));
    }

    #[test]
    fn the_cache_key_follows_every_listed_host_file() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("issue"), "one\n").unwrap();
        let first = content_key(host.path(), "sandbox", None);
        assert_eq!(content_key(host.path(), "sandbox", None), first);
        // Rewritten in place, same size: the modification time tells.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(host.path().join("issue"), "two\n").unwrap();
        let rewritten = content_key(host.path(), "sandbox", None);
        assert_ne!(rewritten, first);
        // A listed entry that appears, and one inside a listed directory
        // tree's top (a symlink, not followed).
        std::os::unix::fs::symlink("nowhere", host.path().join("localtime")).unwrap();
        let linked = content_key(host.path(), "sandbox", None);
        assert_ne!(linked, rewritten);
        // Entries outside the list do not matter.
        std::fs::write(host.path().join("shadow"), "secret\n").unwrap();
        assert_eq!(content_key(host.path(), "sandbox", None), linked);
        // No such directory: still a key (nothing of the host in it).
        let missing = host.path().join("absent");
        assert_eq!(
            content_key(&missing, "sandbox", None),
            content_key(&missing, "sandbox", None)
        );
    }

    #[test]
    fn prepare_reuses_the_cache_and_rebuilds_per_hostname() {
        let state = tempfile::tempdir().unwrap();
        let a = prepare(state.path(), "one", None).unwrap();
        let again = prepare(state.path(), "one", None).unwrap();
        assert_eq!(a, again);
        let b = prepare(state.path(), "two", None).unwrap();
        assert_ne!(a, b);
        // Both stay until gc, which keeps only the one asked for.
        assert!(a.exists() && b.exists());
        remove_stale(state.path(), "two", DNS);
        assert!(!a.exists());
        assert!(b.exists());
    }

    #[test]
    fn resolv_conf_names_the_egress_dns_only_with_network() {
        let state = tempfile::tempdir().unwrap();
        let none = prepare(state.path(), "box", None).unwrap();
        let net = prepare(state.path(), "box", Some(DNS)).unwrap();
        assert_ne!(none, net, "the two variants must not share a cache entry");
        let r = fs::read_to_string(none.join("resolv.conf")).unwrap();
        assert!(r.starts_with('#') && !r.contains("nameserver"), "{r}");
        let r = fs::read_to_string(net.join("resolv.conf")).unwrap();
        assert!(r.contains("\nnameserver 198.18.0.1\n"), "{r}");
        assert_eq!(prepare(state.path(), "box", Some(DNS)).unwrap(), net);
        // Another name server is another variant.
        let other = prepare(state.path(), "box", Some(Ipv4Addr::new(10, 0, 0, 53))).unwrap();
        assert_ne!(other, net);
        let r = fs::read_to_string(other.join("resolv.conf")).unwrap();
        assert!(r.contains("\nnameserver 10.0.0.53\n"), "{r}");
        // gc keeps both current variants of the current hostname.
        remove_stale(state.path(), "box", DNS);
        assert!(none.exists() && net.exists());
        assert!(!other.exists());
    }
}
