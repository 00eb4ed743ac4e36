//! Tests of the store and the unpacker. Layers are built here with the
//! `tar` crate (raw headers for the hostile entries the crate's builder
//! would refuse to write). Unpacking chowns into the disk id block and
//! makes device nodes, so those tests need root.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tar::EntryType as T;

use super::*;
use crate::unpack::OPAQUE_XATTR;
use crate::DISK_ID_BASE;

/// Roots of the stores whose layers were unpacked (one entry per unpack).
pub(crate) static UNPACKS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn unpacks(root: &Path) -> usize {
    UNPACKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|r| *r == root)
        .count()
}

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const PLAIN: &str = "application/vnd.oci.image.layer.v1.tar";
const DOCKER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const MTIME: u64 = 1_600_000_000;

struct Tar(tar::Builder<Vec<u8>>);

fn header(kind: T, path: &[u8], size: u64, mode: u32, uid: u64, gid: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(MTIME);
    // Written raw: the builder refuses `..` and absolute names.
    h.as_old_mut().name[..path.len()].copy_from_slice(path);
    h.set_cksum();
    h
}

fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut n = rest + 1;
    loop {
        let len = n.to_string().len() + rest;
        if len == n {
            break;
        }
        n = len;
    }
    let mut out = format!("{n} ").into_bytes();
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }
    fn entry(&mut self, kind: T, path: &[u8], data: &[u8], mode: u32, uid: u64) -> &mut Self {
        let h = header(kind, path, data.len() as u64, mode, uid, uid);
        self.0.append(&h, data).unwrap();
        self
    }
    fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.entry(T::Regular, path.as_bytes(), data, 0o644, 0)
    }
    fn dir(&mut self, path: &str) -> &mut Self {
        self.entry(T::Directory, path.as_bytes(), b"", 0o755, 0)
    }
    fn link(&mut self, kind: T, path: &[u8], target: &[u8]) -> &mut Self {
        let mut h = header(kind, path, 0, 0o777, 0, 0);
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target);
        h.set_cksum();
        self.0.append(&h, &b""[..]).unwrap();
        self
    }
    fn device(&mut self, kind: T, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = header(kind, path.as_bytes(), 0, 0o666, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.0.append(&h, &b""[..]).unwrap();
        self
    }
    /// PAX records for the next entry.
    fn pax(&mut self, records: &[(&[u8], &[u8])]) -> &mut Self {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        self.entry(T::XHeader, b"PaxHeaders/x", &data, 0o644, 0)
    }
    fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

struct Env {
    _dir: tempfile::TempDir,
    top: PathBuf,
    outside: PathBuf,
    store: Store,
}

fn env(limits: StoreLimits) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().to_path_buf();
    let outside = top.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"host file").unwrap();
    let store = Store::open(&top.join("store"), limits).unwrap();
    Env {
        _dir: dir,
        top,
        outside,
        store,
    }
}

fn small_limits() -> StoreLimits {
    StoreLimits {
        max_store_bytes: 1 << 30,
        max_layer_bytes: 16 << 20,
        max_layer_entries: 1000,
    }
}

fn put(store: &Store, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    store
        .put_blob(&d, Some(bytes.len() as u64), &mut &bytes[..], &mut |_| {})
        .unwrap();
    d
}

/// Stores `tar` gzipped and unpacks it: (layer dir, its record).
fn layer(store: &Store, tar: &[u8]) -> Result<(PathBuf, LayerRecord), StoreError> {
    let gz = gzip(tar);
    let blob = put(store, &gz);
    let diff_id = Digest::of(tar);
    let dir = store.unpack_layer(&blob, GZIP, &diff_id)?;
    Ok((
        dir,
        LayerRecord {
            blob,
            media_type: GZIP.into(),
            diff_id,
            size: gz.len() as u64,
        },
    ))
}

fn config(store: &Store, layers: &[&LayerRecord], created: &str) -> Digest {
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
    let cfg = serde_json::json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["sh"], "User": "1000"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    put(store, &serde_json::to_vec(&cfg).unwrap())
}

fn list_dir(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every path under `top` (not following symlinks) whose name holds
/// `marker`.
fn find_marker(top: &Path, marker: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().contains(marker) {
                found.push(e.path());
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    found
}

fn assert_clean(env: &Env) {
    let root = env.store.root();
    assert_eq!(
        list_dir(&root.join("layers")),
        Vec::<String>::new(),
        "layers/ holds leftovers"
    );
    assert_eq!(
        list_dir(&root.join("tmp")),
        Vec::<String>::new(),
        "tmp/ holds leftovers"
    );
    assert_eq!(find_marker(&env.top, "pwned"), Vec::<PathBuf>::new());
    assert_eq!(list_dir(&env.outside), vec!["victim".to_string()]);
    assert_eq!(
        std::fs::read(env.outside.join("victim")).unwrap(),
        b"host file"
    );
}

// ---------------------------------------------------------------- blobs

#[test]
fn put_blob_stores_verified_content_and_refuses_bad_blobs() {
    let env = env(small_limits());
    let s = &env.store;
    let good = b"a manifest".to_vec();
    let d = Digest::of(&good);
    let mut seen = 0;
    s.put_blob(&d, Some(good.len() as u64), &mut &good[..], &mut |n| {
        seen = n
    })
    .unwrap();
    assert_eq!(seen, good.len() as u64);
    assert!(s.has_blob(&d));
    assert_eq!(s.read_blob(&d).unwrap(), good);
    let mode = std::fs::metadata(s.blob_path(&d)).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o644);

    // Content that is not what its digest says.
    let want = Digest::of(b"expected");
    let e = s
        .put_blob(&want, None, &mut &b"something else"[..], &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(e, StoreError::DigestMismatch { ref actual, .. } if *actual == Digest::of(b"something else")),
        "{e}"
    );
    assert!(!s.has_blob(&want));

    // Shorter than announced.
    let full = b"0123456789".to_vec();
    let d = Digest::of(&full);
    let e = s
        .put_blob(&d, Some(10), &mut &full[..4], &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Truncated {
                got: 4,
                want: 10,
                ..
            }
        ),
        "{e}"
    );
    assert!(!s.has_blob(&d));

    // Longer than announced.
    let e = s
        .put_blob(&d, Some(4), &mut &full[..], &mut |_| {})
        .unwrap_err();
    assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
    assert!(!s.has_blob(&d));

    // A blob corrupted on disk is caught when read.
    let d = put(s, b"config");
    std::fs::write(s.blob_path(&d), b"c0nfig").unwrap();
    assert!(matches!(
        s.read_blob(&d),
        Err(StoreError::DigestMismatch { .. })
    ));

    assert_eq!(list_dir(&s.root().join("tmp")), Vec::<String>::new());
}

#[test]
fn put_blob_stops_at_the_store_limit() {
    let env = env(StoreLimits {
        max_store_bytes: 1000,
        ..small_limits()
    });
    let s = &env.store;
    let big = vec![7u8; 4000];
    let d = Digest::of(&big);
    // Announced too big: refused before reading.
    let e = s
        .put_blob(&d, Some(4000), &mut &big[..], &mut |_| {})
        .unwrap_err();
    assert!(matches!(e, StoreError::StoreFull { limit: 1000 }), "{e}");
    // Size not announced: refused while streaming, nothing kept.
    let mut r = std::io::repeat(1).take(1 << 40);
    let e = s.put_blob(&d, None, &mut r, &mut |_| {}).unwrap_err();
    assert!(matches!(e, StoreError::StoreFull { .. }), "{e}");
    assert!(!s.has_blob(&d));
    assert_eq!(list_dir(&s.root().join("tmp")), Vec::<String>::new());
    assert_eq!(s.usage().unwrap(), 0);
}

/// Waits until `n` processes or threads wait for the flock on `path`
/// (as /proc/locks shows them, `->`), or gives up after a while.
fn wait_for_waiters(path: &Path, n: usize) -> usize {
    let ino = std::fs::metadata(path).unwrap().ino();
    let suffix = format!(":{ino} ");
    let mut seen = 0;
    for _ in 0..2000 {
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        seen = locks
            .lines()
            .filter(|l| l.contains("->") && l.contains(&suffix))
            .count();
        if seen >= n {
            return seen;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    seen
}

struct Counting<'a>(&'a [u8], &'a std::sync::atomic::AtomicU64);
impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        self.1.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

#[test]
fn concurrent_writers_of_one_blob_write_it_once() {
    let env = env(small_limits());
    let s = &env.store;
    let data = vec![42u8; 300_000];
    let d = Digest::of(&data);
    let read = std::sync::atomic::AtomicU64::new(0);
    // Hold the blob's lock so both writers queue on it.
    let held = s.item_lock("blob", d.hex()).unwrap();
    std::thread::scope(|sc| {
        let mut hs = Vec::new();
        for _ in 0..2 {
            hs.push(sc.spawn(|| {
                s.put_blob(
                    &d,
                    Some(data.len() as u64),
                    &mut Counting(&data, &read),
                    &mut |_| {},
                )
            }));
        }
        let waiting =
            wait_for_waiters(&s.root().join("locks").join(format!("blob-{}", d.hex())), 2);
        assert_eq!(waiting, 2, "both writers should wait on the blob's lock");
        drop(held);
        for h in hs {
            h.join().unwrap().unwrap();
        }
    });
    assert_eq!(
        read.load(Ordering::SeqCst),
        data.len() as u64,
        "the blob was read more than once"
    );
    assert_eq!(s.read_blob(&d).unwrap(), data);
}

// --------------------------------------------------- records and names

#[test]
fn names_resolve_list_and_move_between_images() {
    let env = env(small_limits());
    let s = &env.store;
    let cfg = config(s, &[], "2024-01-02T03:04:05Z");
    let a: Digest = format!("sha256:{}01", "ab".repeat(31)).parse().unwrap();
    let b: Digest = format!("sha256:{}02", "ab".repeat(31)).parse().unwrap();
    let img = s
        .record_image(Some("docker.io/library/python:3.11"), &a, &cfg, vec![])
        .unwrap();
    assert_eq!(img.names, vec!["docker.io/library/python:3.11"]);
    assert_eq!(img.created.as_deref(), Some("2024-01-02T03:04:05Z"));
    assert_eq!(img.config.cmd, Some(vec!["sh".to_string()]));
    s.record_image(Some("localhost:5000/tools/x:v1"), &b, &cfg, vec![])
        .unwrap();

    let by = |q: &str| s.resolve(q).unwrap().map(|i| i.digest);
    assert_eq!(by("docker.io/library/python:3.11"), Some(a.clone()));
    assert_eq!(by(&a.to_string()), Some(a.clone()));
    assert_eq!(
        by(&format!("docker.io/library/python@{b}")),
        Some(b.clone())
    );
    assert_eq!(by(b.hex()), Some(b.clone()));
    let c = put(s, b"manifest c");
    s.record_image(None, &c, &cfg, vec![]).unwrap();
    assert_eq!(by(&c.hex()[..12]), Some(c.clone()));
    assert_eq!(by(&format!("sha256:{}", &c.hex()[..20])), Some(c.clone()));
    assert_eq!(by("docker.io/library/python:3.12"), None);
    assert_eq!(
        by(&b.hex()[..11]),
        None,
        "prefixes shorter than 12 are not digests"
    );
    assert!(matches!(
        s.resolve(&a.hex()[..12]),
        Err(StoreError::Ambiguous(_))
    ));

    let l = s.list().unwrap();
    let lines: Vec<(&str, &str)> = l
        .iter()
        .map(|x| (x.repository.as_str(), x.tag.as_str()))
        .collect();
    assert_eq!(
        lines,
        vec![
            ("<none>", "<none>"),
            ("docker.io/library/python", "3.11"),
            ("localhost:5000/tools/x", "v1")
        ]
    );

    // The name moves to b; a stays, untagged.
    s.record_image(Some("docker.io/library/python:3.11"), &b, &cfg, vec![])
        .unwrap();
    assert_eq!(by("docker.io/library/python:3.11"), Some(b.clone()));
    assert_eq!(
        s.resolve(&a.to_string()).unwrap().unwrap().names,
        Vec::<String>::new()
    );
    let l = s.list().unwrap();
    assert_eq!(l.len(), 4);
    assert!(l
        .iter()
        .any(|x| x.digest == a && x.repository == "<none>" && x.tag == "<none>"));
    assert_eq!(s.config_json(&img).unwrap()["os"], "linux");

    // Untagged a goes with prune; b keeps both names.
    let r = s.prune().unwrap();
    let mut want = vec![a.clone(), c.clone()];
    want.sort();
    assert_eq!(r.images, want);
    assert_eq!(by(&a.to_string()), None);
    assert_eq!(s.resolve(&b.to_string()).unwrap().unwrap().names.len(), 2);

    // rmi of one name untags; of the last, removes the image.
    let r = s.remove("localhost:5000/tools/x:v1", false).unwrap();
    assert_eq!(r.untagged, vec!["localhost:5000/tools/x:v1"]);
    assert!(r.images.is_empty());
    let r = s.remove("docker.io/library/python:3.11", false).unwrap();
    assert_eq!(r.images, vec![b.clone()]);
    assert!(
        r.blobs.contains(&cfg),
        "the config blob goes with its last image"
    );
    assert!(!s.has_blob(&cfg));
    assert!(matches!(
        s.remove("docker.io/library/python:3.11", false),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn leases_block_rmi_until_dropped_and_stale_leases_are_ignored() {
    let env = env(small_limits());
    let s = &env.store;
    let cfg = config(s, &[], "2024-01-01T00:00:00Z");
    let a = put(s, b"manifest a");
    let img = s
        .record_image(Some("docker.io/library/a:1"), &a, &cfg, vec![])
        .unwrap();

    assert!(matches!(
        s.lease(&img, "../x"),
        Err(StoreError::BadHolder(_))
    ));
    assert!(matches!(s.lease(&img, ".."), Err(StoreError::BadHolder(_))));
    let lease = s.lease(&img, "sb-1").unwrap();
    assert_eq!(
        std::fs::read_to_string(lease.path()).unwrap().trim(),
        a.to_string()
    );
    assert!(matches!(
        s.lease(&img, "sb-1"),
        Err(StoreError::LeaseTaken(_))
    ));

    let e = s.remove("docker.io/library/a:1", false).unwrap_err();
    assert!(
        matches!(e, StoreError::InUse { ref holder, .. } if holder == "sb-1"),
        "{e}"
    );
    // Forced: only the name goes; the image stays while leased.
    let r = s.remove("docker.io/library/a:1", true).unwrap();
    assert!(r.images.is_empty());
    assert!(s.prune().unwrap().images.is_empty());
    assert!(s.resolve(&a.to_string()).unwrap().is_some());
    assert!(s.has_blob(&a));

    drop(lease);
    assert!(!s.root().join("leases/sb-1").exists());
    // A lease file whose holder died (nobody holds its lock): ignored.
    std::fs::write(s.root().join("leases/dead"), format!("{a}\n")).unwrap();
    let r = s.prune().unwrap();
    assert_eq!(r.images, vec![a.clone()]);
    assert!(r.blobs.contains(&a) && r.blobs.contains(&cfg));
    assert!(!s.root().join("leases/dead").exists());
    // A lease on an image removed meanwhile.
    assert!(matches!(
        s.lease(&img, "sb-2"),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn unknown_media_types_are_refused() {
    let env = env(small_limits());
    let d = put(&env.store, b"x");
    let e = env
        .store
        .unpack_layer(&d, "application/vnd.oci.image.layer.v1.tar+bzip2", &d)
        .unwrap_err();
    assert!(matches!(e, StoreError::MediaType(_)), "{e}");
}

// ---------------------------------------------------------------- layers

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings and a buffer whose length is passed.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

fn sample_layer() -> Vec<u8> {
    let mut t = Tar::new();
    t.dir("./")
        .dir("usr/")
        .dir("usr/bin/")
        .entry(T::Regular, b"usr/bin/su", b"#!setuid", 0o4755, 0)
        .entry(T::Regular, b"home/dev/notes", b"mine", 0o600, 1000)
        .entry(T::Regular, b"/var/big-id", b"x", 0o644, 70000)
        .link(T::Symlink, b"usr/bin/sh", b"/bin/busybox")
        .link(T::Link, b"usr/bin/su2", b"usr/bin/su")
        .device(T::Char, "dev/null", 1, 3)
        .device(T::Block, "dev/sda", 8, 0)
        .entry(T::Fifo, b"run/fifo", b"", 0o620, 0)
        .file(".wh.gone", b"")
        .dir("etc/")
        .file("etc/.wh..wh..opq", b"")
        .file("etc/.wh..wh.plnk", b"")
        .entry(T::Directory, b"tmp/", b"", 0o1777, 0)
        .pax(&[
            (b"SCHILY.xattr.user.note", b"kept"),
            (b"SCHILY.xattr.trusted.secret", b"dropped"),
            // v2 capability: cap_net_raw (bit 13) permitted + effective.
            (
                b"SCHILY.xattr.security.capability",
                &[
                    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
        ])
        .file("usr/bin/ping", b"ping")
        // Replaced later in the same layer.
        .file("etc/motd", b"old")
        .file("etc/motd", b"new")
        .dir("etc/d/")
        .file("etc/d/inner", b"kept")
        .dir("etc/d/");
    t.finish()
}

#[test]
#[ignore = "needs root: chown into the disk id block, mknod"]
fn unpacks_into_overlay_format_with_shifted_owners() {
    let env = env(small_limits());
    let s = &env.store;
    let tar = sample_layer();
    let (dir, rec) = layer(s, &tar).unwrap();
    assert_eq!(dir, s.layer_dir(&rec.diff_id));
    let md = |p: &str| std::fs::symlink_metadata(dir.join(p)).unwrap();

    // The layer's root and implied parents belong to the image's root.
    assert_eq!((md("").uid(), md("").gid()), (DISK_ID_BASE, DISK_ID_BASE));
    assert_eq!(md("").mode() & 0o7777, 0o755);
    assert_eq!(md("home").uid(), DISK_ID_BASE);
    // Owners shifted; ids past the mapped block become nobody.
    assert_eq!(
        (md("usr/bin/su").uid(), md("usr/bin/su").gid()),
        (DISK_ID_BASE, DISK_ID_BASE)
    );
    assert_eq!(md("home/dev/notes").uid(), DISK_ID_BASE + 1000);
    assert_eq!(md("var/big-id").uid(), DISK_ID_BASE + crate::OVERFLOW_ID);
    // Modes with setuid and sticky bits; mtimes.
    assert_eq!(md("usr/bin/su").mode() & 0o7777, 0o4755);
    assert_eq!(md("home/dev/notes").mode() & 0o7777, 0o600);
    assert_eq!(md("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(md("usr/bin/su").mtime(), MTIME as i64);
    assert_eq!(
        md("usr/bin").mtime(),
        MTIME as i64,
        "directory times are set after their contents"
    );
    // Links.
    assert_eq!(
        std::fs::read_link(dir.join("usr/bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(md("usr/bin/sh").uid(), DISK_ID_BASE);
    assert_eq!(md("usr/bin/su2").ino(), md("usr/bin/su").ino());
    // Devices skipped, fifo made, whiteouts in overlay's format.
    assert!(!dir.join("dev/null").exists() && !dir.join("dev/sda").exists());
    assert!(md("run/fifo").file_type().is_fifo());
    assert_eq!(md("run/fifo").mode() & 0o7777, 0o620);
    let wh = md("gone");
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!dir.join(".wh.gone").exists());
    assert_eq!(
        xattr(&dir.join("etc"), OPAQUE_XATTR).as_deref(),
        Some(&b"y"[..])
    );
    assert!(!dir.join("etc/.wh..wh..opq").exists() && !dir.join("etc/.wh..wh.plnk").exists());
    // xattrs: user kept, trusted dropped, capability rewritten to v3
    // rooted at the image's root.
    let ping = dir.join("usr/bin/ping");
    assert_eq!(xattr(&ping, "user.note").as_deref(), Some(&b"kept"[..]));
    assert_eq!(xattr(&ping, "trusted.secret"), None);
    let cap = xattr(&ping, "security.capability").expect("capability kept");
    assert_eq!(cap.len(), 24);
    assert_eq!(
        u32::from_le_bytes(cap[0..4].try_into().unwrap()),
        0x0300_0001
    );
    assert_eq!(u32::from_le_bytes(cap[4..8].try_into().unwrap()), 1 << 13);
    assert_eq!(
        u32::from_le_bytes(cap[20..24].try_into().unwrap()),
        DISK_ID_BASE
    );
    // Replacements.
    assert_eq!(std::fs::read(dir.join("etc/motd")).unwrap(), b"new");
    assert_eq!(std::fs::read(dir.join("etc/d/inner")).unwrap(), b"kept");
    // Nothing of the layer belongs to host root.
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            assert!(
                m.uid() >= DISK_ID_BASE && m.gid() >= DISK_ID_BASE,
                "{} is host-owned",
                e.path().display()
            );
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }

    let info = s.layer_info(&rec.diff_id).unwrap().unwrap();
    assert_eq!(info.skipped_devices, 2);
    assert_eq!(info.size, (8 + 4 + 1 + 4 + 3 + 3 + 4) as u64);
    let layers_mode = std::fs::metadata(s.root().join("layers")).unwrap().mode() & 0o7777;
    assert_eq!(layers_mode, 0o700);
    assert_eq!(std::fs::metadata(s.root()).unwrap().mode() & 0o7777, 0o700);
    // Unpacking again finds it there.
    let before = unpacks(s.root());
    assert_eq!(s.unpack_layer(&rec.blob, GZIP, &rec.diff_id).unwrap(), dir);
    assert_eq!(unpacks(s.root()), before);
}

#[test]
#[ignore = "needs root: chown into the disk id block"]
fn every_layer_media_type_unpacks_to_the_same_tree() {
    let tar = Tar::new().file("a/b", b"content").finish();
    let diff_id = Digest::of(&tar);
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    for (mt, blob) in [
        (GZIP, gzip(&tar)),
        (DOCKER, gzip(&tar)),
        (ZSTD, zst),
        (PLAIN, tar.clone()),
    ] {
        let env = env(small_limits());
        let d = put(&env.store, &blob);
        let dir = env.store.unpack_layer(&d, mt, &diff_id).unwrap();
        assert_eq!(std::fs::read(dir.join("a/b")).unwrap(), b"content", "{mt}");
    }
}

fn refused(tar: &[u8], check: impl Fn(&StoreError) -> bool) {
    let env = env(small_limits());
    let e = layer(&env.store, tar).expect_err("hostile layer accepted");
    assert!(check(&e), "unexpected error: {e}");
    assert_clean(&env);
}

fn is_hostile(e: &StoreError, words: &str) -> bool {
    matches!(e, StoreError::HostileLayer { reason, .. } if reason.contains(words))
}

#[test]
#[ignore = "needs root: chown into the disk id block"]
fn hostile_paths_are_refused_and_touch_nothing() {
    refused(
        &Tar::new().file("ok", b"").file("../pwned", b"x").finish(),
        |e| is_hostile(e, "'..'"),
    );
    refused(&Tar::new().file("a/../../pwned", b"x").finish(), |e| {
        is_hostile(e, "'..'")
    });
    refused(
        &Tar::new().entry(T::Regular, b"", b"x", 0o644, 0).finish(),
        |e| is_hostile(e, "empty"),
    );
    refused(
        &Tar::new()
            .pax(&[(b"path", b"a\0pwned")])
            .file("placeholder", b"x")
            .finish(),
        |e| is_hostile(e, "NUL"),
    );
    // A symlink out of the layer, then a file through it ("" stands for
    // the absolute path of the test's outside directory).
    for target in ["", "../../../outside", "/etc", "."] {
        let env = env(small_limits());
        let target = match target {
            "" => env.outside.to_string_lossy().into_owned(),
            t => t.to_string(),
        };
        let tar = Tar::new()
            .link(T::Symlink, b"a", target.as_bytes())
            .file("a/pwned", b"x")
            .finish();
        let e = layer(&env.store, &tar).unwrap_err();
        assert!(is_hostile(&e, "goes through a symlink"), "{e}");
        assert_clean(&env);
        assert!(!Path::new("/etc/pwned").exists());
    }
    // A symlinked directory deeper down.
    refused(
        &Tar::new()
            .dir("d")
            .link(T::Symlink, b"d/up", b"../..")
            .file("d/up/x/pwned", b"x")
            .finish(),
        |e| is_hostile(e, "symlink"),
    );
    // Through a file.
    refused(
        &Tar::new().file("f", b"").file("f/pwned", b"x").finish(),
        |e| is_hostile(e, "not a directory"),
    );
    // Overlay metadata forged from the tar.
    refused(
        &Tar::new()
            .pax(&[(b"SCHILY.xattr.user.overlay.redirect", b"/etc")])
            .dir("pwned")
            .finish(),
        |e| is_hostile(e, "overlay"),
    );
}

#[test]
#[ignore = "needs root: chown into the disk id block"]
fn hard_links_must_stay_in_the_layer() {
    let passwd_links = std::fs::metadata("/etc/passwd").unwrap().nlink();
    refused(
        &Tar::new().link(T::Link, b"pwned", b"/etc/passwd").finish(),
        |e| is_hostile(e, "hard link"),
    );
    refused(
        &Tar::new()
            .link(T::Link, b"pwned", b"../outside/victim")
            .finish(),
        |e| is_hostile(e, "'..'"),
    );
    refused(
        &Tar::new()
            .link(T::Symlink, b"s", b"/etc/passwd")
            .link(T::Link, b"pwned", b"s")
            .finish(),
        |e| is_hostile(e, "not a regular file"),
    );
    refused(
        &Tar::new()
            .link(T::Symlink, b"s", b"/etc")
            .link(T::Link, b"pwned", b"s/passwd")
            .finish(),
        |e| is_hostile(e, "hard link"),
    );
    refused(
        &Tar::new().dir("d").link(T::Link, b"pwned", b"d").finish(),
        |e| is_hostile(e, "not a regular file"),
    );
    assert_eq!(
        std::fs::metadata("/etc/passwd").unwrap().nlink(),
        passwd_links
    );
}

#[test]
#[ignore = "needs root: chown into the disk id block"]
fn absolute_paths_land_inside_the_layer() {
    let env = env(small_limits());
    let tar = Tar::new()
        .file("/etc/pwned-abs", b"x")
        .file("./etc/ok", b"y")
        .finish();
    let (dir, _) = layer(&env.store, &tar).unwrap();
    assert_eq!(std::fs::read(dir.join("etc/pwned-abs")).unwrap(), b"x");
    assert!(!Path::new("/etc/pwned-abs").exists());
}

#[test]
#[ignore = "needs root: chown into the disk id block"]
fn a_wrong_diff_id_or_a_corrupt_stream_keeps_nothing() {
    let env = env(small_limits());
    let s = &env.store;
    let tar = Tar::new().file("pwned", b"x").finish();
    let gz = gzip(&tar);
    let blob = put(s, &gz);
    let e = s
        .unpack_layer(&blob, GZIP, &Digest::of(b"other"))
        .unwrap_err();
    assert!(
        matches!(e, StoreError::DiffIdMismatch { ref actual, .. } if *actual == Digest::of(&tar)),
        "{e}"
    );
    assert_clean(&env);
    // A gzip stream cut in the middle.
    let cut = put(s, &gz[..gz.len() / 2]);
    let e = s.unpack_layer(&cut, GZIP, &Digest::of(&tar)).unwrap_err();
    assert!(matches!(e, StoreError::CorruptLayer { .. }), "{e}");
    assert_clean(&env);
}

/// A gzip of `total` zero bytes after a tar header announcing one file of
/// that size, made of 1 MiB gzip members (so the test compresses 1 MiB,
/// not `total`).
fn zero_bomb(total: u64) -> Vec<u8> {
    const MIB: usize = 1 << 20;
    let h = header(T::Regular, b"pwned-bomb", total, 0o644, 0, 0);
    let mut first = h.as_bytes().to_vec();
    first.resize(MIB, 0);
    let mut out = gzip(&first);
    let member = gzip(&vec![0u8; MIB]);
    let mut left = total + 512 + 1024 - MIB as u64;
    while left > 0 {
        out.extend_from_slice(&member);
        left = left.saturating_sub(MIB as u64);
    }
    out
}

#[test]
#[ignore = "needs root: chown into the disk id block"]
fn a_decompression_bomb_stops_at_the_layer_limit() {
    let env = env(small_limits());
    let s = &env.store;
    let bomb = zero_bomb(200 << 20);
    assert!(bomb.len() < 1 << 20);
    let blob = put(s, &bomb);
    let e = s
        .unpack_layer(&blob, GZIP, &Digest::of(b"unknowable"))
        .unwrap_err();
    assert!(
        matches!(e, StoreError::LayerTooLarge { limit, .. } if limit == 16 << 20),
        "{e}"
    );
    let root = s.root();
    assert_eq!(list_dir(&root.join("layers")), Vec::<String>::new());
    assert_eq!(list_dir(&root.join("tmp")), Vec::<String>::new());
}

/// A tar stream of `n` empty files, generated as it is read.
struct ManyFiles {
    next: u64,
    n: u64,
    block: Vec<u8>,
    pos: usize,
}

impl Read for ManyFiles {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.block.len() {
            if self.next == self.n {
                return Ok(0);
            }
            self.block = if self.next + 1 == self.n {
                vec![0; 1024]
            } else {
                header(
                    T::Regular,
                    format!("d{}/f{}", self.next % 100, self.next).as_bytes(),
                    0,
                    0o644,
                    0,
                    0,
                )
                .as_bytes()
                .to_vec()
            };
            self.next += 1;
            self.pos = 0;
        }
        let n = buf.len().min(self.block.len() - self.pos);
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
#[ignore = "needs root: chown into the disk id block"]
fn millions_of_tiny_files_stop_at_the_entry_limit() {
    // The unpacker on a generated stream of 200,000 entries.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("layer");
    std::fs::create_dir(&dest).unwrap();
    let mut stream = ManyFiles {
        next: 0,
        n: 200_001,
        block: Vec::new(),
        pos: 0,
    };
    let limits = UnpackLimits {
        max_bytes: 1 << 30,
        max_entries: 5000,
        store_room: u64::MAX,
    };
    let e = unpack::unpack(&mut stream, &dest, limits).unwrap_err();
    assert!(
        matches!(e, UnpackError::TooManyEntries { limit: 5000 }),
        "{e}"
    );
    assert!(stream.next < 6000, "the stream was read past the limit");

    // Through the store: the same error and nothing kept.
    let env = env(small_limits());
    let mut tar = Vec::new();
    ManyFiles {
        next: 0,
        n: 2001,
        block: Vec::new(),
        pos: 0,
    }
    .read_to_end(&mut tar)
    .unwrap();
    let e = layer(&env.store, &tar).unwrap_err();
    assert!(
        matches!(e, StoreError::TooManyEntries { limit: 1000, .. }),
        "{e}"
    );
    assert_clean(&env);
}

#[test]
#[ignore = "needs root: chown into the disk id block"]
fn huge_headers_are_refused() {
    let big = vec![b'a'; 2 << 20];
    refused(
        &Tar::new()
            .pax(&[(b"comment", &big)])
            .file("pwned", b"x")
            .finish(),
        |e| is_hostile(e, "headers"),
    );
}

#[test]
#[ignore = "needs root: chown into the disk id block"]
fn concurrent_unpacks_of_one_layer_do_the_work_once() {
    let env = env(small_limits());
    let s = &env.store;
    let mut t = Tar::new();
    for i in 0..50 {
        t.file(&format!("dir/f{i}"), b"data");
    }
    let tar = t.finish();
    let gz = gzip(&tar);
    let blob = put(s, &gz);
    let diff_id = Digest::of(&tar);
    let held = s.item_lock("layer", diff_id.hex()).unwrap();
    let results = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..2)
            .map(|_| sc.spawn(|| s.unpack_layer(&blob, GZIP, &diff_id)))
            .collect();
        let lock = s
            .root()
            .join("locks")
            .join(format!("layer-{}", diff_id.hex()));
        assert_eq!(
            wait_for_waiters(&lock, 2),
            2,
            "both unpackers should wait on the layer's lock"
        );
        drop(held);
        hs.into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(results[0], results[1]);
    assert_eq!(unpacks(s.root()), 1);
    assert_eq!(list_dir(&results[0].join("dir")).len(), 50);
}

#[test]
#[ignore = "needs root: chown into the disk id block"]
fn rmi_and_prune_keep_what_a_live_lease_uses() {
    let env = env(small_limits());
    let s = &env.store;
    let (_, base) = layer(s, &Tar::new().file("base", b"shared").finish()).unwrap();
    let (_, top) = layer(s, &Tar::new().file("top", b"only a").finish()).unwrap();
    let cfg_a = config(s, &[&base, &top], "2024-01-01T00:00:00Z");
    let cfg_b = config(s, &[&base], "2024-01-02T00:00:00Z");
    let ma = put(s, b"manifest a");
    let mb = put(s, b"manifest b");
    let a = s
        .record_image(
            Some("docker.io/library/a:1"),
            &ma,
            &cfg_a,
            vec![base.clone(), top.clone()],
        )
        .unwrap();
    s.record_image(
        Some("docker.io/library/b:1"),
        &mb,
        &cfg_b,
        vec![base.clone()],
    )
    .unwrap();
    assert_eq!(a.size, 6 + 6);
    assert_eq!(
        s.layer_dirs(&a),
        vec![s.layer_dir(&base.diff_id), s.layer_dir(&top.diff_id)]
    );
    let usage = s.usage().unwrap();
    assert!(usage >= 12);

    let lease = s.lease(&a, "sandbox-7").unwrap();
    assert!(matches!(
        s.remove("docker.io/library/a:1", false),
        Err(StoreError::InUse { .. })
    ));
    s.remove(&ma.to_string(), true).unwrap();
    let r = s.prune().unwrap();
    assert!(r.layers.is_empty() && r.images.is_empty(), "{r:?}");
    assert!(s.has_layer(&top.diff_id) && s.layer_dir(&top.diff_id).join("top").exists());

    // The holder is gone (its lock with it): prune takes a's own parts.
    drop(lease);
    let r = s.prune().unwrap();
    assert_eq!(r.images, vec![ma.clone()]);
    assert_eq!(r.layers, vec![top.diff_id.clone()]);
    let mut blobs = r.blobs.clone();
    blobs.sort();
    let mut want = vec![ma.clone(), cfg_a.clone(), top.blob.clone()];
    want.sort();
    assert_eq!(blobs, want);
    assert!(!s.layer_dir(&top.diff_id).exists());
    assert!(s.has_layer(&base.diff_id), "b still uses the base layer");
    assert!(s.usage().unwrap() < usage);

    // rmi of b removes the rest.
    let r = s.remove("docker.io/library/b:1", false).unwrap();
    assert_eq!(r.layers, vec![base.diff_id.clone()]);
    assert_eq!(list_dir(&s.root().join("layers")), Vec::<String>::new());
    assert_eq!(
        list_dir(&s.root().join("blobs/sha256")),
        Vec::<String>::new()
    );
    assert_eq!(s.usage().unwrap(), 0);
}

#[test]
#[ignore = "needs root: chown into the disk id block"]
fn a_crashed_unpack_is_redone_and_pruned() {
    let env = env(small_limits());
    let s = &env.store;
    let tar = Tar::new().file("f", b"1").finish();
    let diff_id = Digest::of(&tar);
    // What a crash between the directory's rename and its json leaves.
    std::fs::create_dir_all(s.layer_dir(&diff_id).join("half")).unwrap();
    std::fs::create_dir_all(s.root().join("tmp/layer-dead/x")).unwrap();
    assert!(!s.has_layer(&diff_id));
    let (dir, _) = layer(s, &tar).unwrap();
    assert!(dir.join("f").exists() && !dir.join("half").exists());
    std::fs::create_dir_all(s.root().join("tmp/layer-dead2")).unwrap();
    s.prune().unwrap();
    assert_eq!(list_dir(&s.root().join("tmp")), Vec::<String>::new());
    assert!(!s.has_layer(&diff_id), "no image uses it");
}

#[test]
fn a_root_store_and_a_users_store_never_open_as_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let ids = UserIds {
        uid: 1001,
        gid: 1001,
        sub_uid: 100_000,
        sub_gid: 200_000,
    };
    let user = dir.path().join("user");
    Store::open_user(&user, StoreLimits::default(), ids).unwrap();
    assert_eq!(
        std::fs::read_to_string(user.join("format")).unwrap(),
        "user 1001 100000 200000\n"
    );
    // Reopened as it was made: fine.
    Store::open_user(&user, StoreLimits::default(), ids).unwrap();
    let e = Store::open(&user, StoreLimits::default()).unwrap_err();
    assert!(matches!(e, StoreError::WrongFormat { .. }), "{e}");
    assert!(e.to_string().contains("rm -rf"), "{e}");
    // Another subordinate range would read the owners wrong: refused too.
    let moved = UserIds {
        sub_uid: 300_000,
        ..ids
    };
    let e = Store::open_user(&user, StoreLimits::default(), moved).unwrap_err();
    assert!(matches!(e, StoreError::WrongFormat { .. }), "{e}");

    let root = dir.path().join("root");
    Store::open(&root, StoreLimits::default()).unwrap();
    let e = Store::open_user(&root, StoreLimits::default(), ids).unwrap_err();
    assert!(matches!(e, StoreError::WrongFormat { .. }), "{e}");
    // A store from before the mark with layers in it is root's.
    let old = dir.path().join("old");
    Store::open(&old, StoreLimits::default()).unwrap();
    std::fs::remove_file(old.join("format")).unwrap();
    std::fs::create_dir(old.join("layers/abc")).unwrap();
    let e = Store::open_user(&old, StoreLimits::default(), ids).unwrap_err();
    assert!(matches!(e, StoreError::WrongFormat { .. }), "{e}");
    Store::open(&old, StoreLimits::default()).unwrap();
}

#[test]
fn a_users_map_is_the_caller_at_zero_then_its_subordinate_ids() {
    let ids = UserIds {
        uid: 1001,
        gid: 1002,
        sub_uid: 100_000,
        sub_gid: 200_000,
    };
    assert_eq!(
        ids.map_args(true),
        ["0", "1001", "1", "1", "100000", "65535"]
    );
    assert_eq!(
        ids.map_args(false),
        ["0", "1002", "1", "1", "200000", "65535"]
    );
}
