//! The protocol and the helper's operations, against a directory standing
//! in for a sandbox's root (no root privileges needed).

use super::*;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

/// A helper serving `dir` as its root on a thread, and a client to it.
fn helper(dir: &Path) -> (FileClient, std::thread::JoinHandle<()>) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let root = Root::Dir(OwnedFd::from(std::fs::File::open(dir).unwrap()));
    let t = std::thread::spawn(move || serve(OwnedFd::from(b), &root));
    (FileClient::new(OwnedFd::from(a)).unwrap(), t)
}

fn errno(r: Result<impl std::fmt::Debug, FileError>) -> i32 {
    match r {
        Err(FileError::Failed { errno, .. }) => errno,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn writes_and_reads_back_large_files_in_pieces() {
    let d = tempfile::tempdir().unwrap();
    let (mut c, _t) = helper(d.path());
    let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i * 7 % 251) as u8).collect();
    let (created, size) = c.write_all("/a/b/c.bin", &mut &data[..]).unwrap();
    assert!(created);
    assert_eq!(size, data.len() as u64);
    assert_eq!(std::fs::read(d.path().join("a/b/c.bin")).unwrap(), data);
    let (size, mut r) = c.read("/a/b/c.bin").unwrap();
    assert_eq!(size, data.len() as u64);
    let mut back = Vec::new();
    r.read_to_end(&mut back).unwrap();
    assert_eq!(back, data);
    // Rewritten: not created, truncated to the new contents.
    let (created, _) = c.write_all("/a/b/c.bin", &mut &b"short"[..]).unwrap();
    assert!(!created);
    assert_eq!(std::fs::read(d.path().join("a/b/c.bin")).unwrap(), b"short");
    // The connection stays usable after each.
    assert_eq!(c.stat("/a/b/c.bin", false).unwrap().size, 5);
}

#[test]
fn symlinks_and_dotdot_stay_inside_the_root() {
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/etc", d.path().join("hostetc")).unwrap();
    std::os::unix::fs::symlink("../../../../etc/passwd", d.path().join("up")).unwrap();
    let (mut c, _t) = helper(d.path());
    // /etc/passwd exists on the host, not in this root.
    assert_eq!(
        errno(c.read("/hostetc/passwd").map(|(s, _)| s)),
        libc::ENOENT
    );
    assert_eq!(errno(c.read("/up").map(|(s, _)| s)), libc::ENOENT);
    assert_eq!(
        errno(c.read("/../../etc/passwd").map(|(s, _)| s)),
        libc::ENOENT
    );
    // A write through the planted link lands inside the root.
    std::fs::create_dir(d.path().join("etc")).unwrap();
    c.write_all("/hostetc/planted", &mut &b"x"[..]).unwrap();
    assert!(d.path().join("etc/planted").exists());
    assert!(!Path::new("/etc/planted").exists());
    // `stat` without follow shows the link itself.
    let e = c.stat("/hostetc", false).unwrap();
    assert_eq!(e.kind, EntryKind::Symlink);
    assert_eq!(e.target.as_deref(), Some("/etc"));
}

#[test]
fn lists_to_a_depth_and_refuses_too_many_entries() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..1200 {
        std::fs::write(d.path().join(format!("f{i}")), b"").unwrap();
    }
    std::fs::create_dir_all(d.path().join("sub/deeper")).unwrap();
    std::fs::write(d.path().join("sub/deeper/x"), b"12").unwrap();
    let (mut c, _t) = helper(d.path());
    let one = c.list("/", 1, 10_000).unwrap();
    assert_eq!(one.len(), 1201);
    let three = c.list("/", 3, 10_000).unwrap();
    assert_eq!(three.len(), 1203);
    let x = three.iter().find(|e| e.path == "/sub/deeper/x").unwrap();
    assert_eq!((x.kind, x.size, x.name.as_str()), (EntryKind::File, 2, "x"));
    assert_eq!(errno(c.list("/", 1, 100)), libc::E2BIG);
    // Still in step after a refused listing.
    assert_eq!(c.list("/sub", 1, 10).unwrap().len(), 1);
    assert_eq!(errno(c.list("/f1", 1, 10)), libc::ENOTDIR);
}

#[test]
fn removes_trees_deeper_than_path_max_without_recursion() {
    let d = tempfile::tempdir().unwrap();
    // 3000 levels of 8-byte names: paths far beyond PATH_MAX.
    std::fs::create_dir(d.path().join("top")).unwrap();
    let mut cur = std::fs::File::open(d.path().join("top")).unwrap();
    for _ in 0..3000 {
        use std::os::fd::AsFd;
        nix::sys::stat::mkdirat(
            cur.as_fd(),
            "level_xx",
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        )
        .unwrap();
        nix::fcntl::openat(
            cur.as_fd(),
            "f",
            nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let next = nix::fcntl::openat(
            cur.as_fd(),
            "level_xx",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        cur = std::fs::File::from(next);
    }
    drop(cur);
    let (mut c, _t) = helper(d.path());
    assert_eq!(errno(c.remove("/top", false)), libc::ENOTEMPTY);
    c.remove("/top", true).unwrap();
    assert!(!d.path().join("top").exists());
}

#[test]
fn directories_renames_and_non_regular_files() {
    let d = tempfile::tempdir().unwrap();
    let (mut c, _t) = helper(d.path());
    assert!(c.make_dir("/x/y/z", true).unwrap());
    assert!(!c.make_dir("/x/y/z", true).unwrap());
    assert_eq!(errno(c.make_dir("/x/y/z", false)), libc::EEXIST);
    assert_eq!(errno(c.make_dir("/none/a", false)), libc::ENOENT);
    c.write_all("/x/f", &mut &b"1"[..]).unwrap();
    c.rename("/x/f", "/x/y/g").unwrap();
    assert_eq!(std::fs::read(d.path().join("x/y/g")).unwrap(), b"1");
    assert_eq!(errno(c.remove("/", true)), libc::EBUSY);
    // A FIFO is refused at once, not waited on.
    nix::unistd::mkfifo(
        &d.path().join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    assert_eq!(errno(c.read("/fifo").map(|(s, _)| s)), libc::EINVAL);
    // (Opening it for writing without a reader fails at once too.)
    let e = errno(c.write("/fifo", None, false).map(|_| ()));
    assert!(e == libc::ENXIO || e == libc::EINVAL, "{e}");
    assert_eq!(errno(c.read("/x").map(|(s, _)| s)), libc::EISDIR);
    // Paths must be absolute, and name a file.
    assert_eq!(errno(c.stat("relative", false)), libc::EINVAL);
    assert_eq!(
        errno(c.write("/x/..", None, false).map(|_| ())),
        libc::EINVAL
    );
    // New files take the given permission bits, never setuid ones.
    let mut w = c.write("/m", Some(0o4755), false).unwrap();
    w.chunk(b"#!/bin/sh\n").unwrap();
    w.finish().unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.path().join("m"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7000, 0, "{mode:o}");
}

#[test]
fn garbage_from_either_side_is_an_error_not_a_panic() {
    let d = tempfile::tempdir().unwrap();
    // A client speaking nonsense: the helper answers a malformed request
    // and hangs up on a broken frame.
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let root = Root::Dir(OwnedFd::from(std::fs::File::open(d.path()).unwrap()));
    let t = std::thread::spawn(move || serve(OwnedFd::from(b), &root));
    let mut a2 = a.try_clone().unwrap();
    let mut r = std::io::BufReader::new(a);
    assert!(matches!(read_frame(&mut r).unwrap(), Some(Frame::Json(_))));
    write_frame(&mut a2, b'J', b"{\"op\":\"format_disk\"}").unwrap();
    match read_frame(&mut r).unwrap() {
        Some(Frame::Json(j)) => {
            let reply: FileReply = serde_json::from_slice(&j).unwrap();
            assert!(matches!(reply, FileReply::Failed { errno, .. } if errno == libc::EINVAL));
        }
        other => panic!("{other:?}"),
    }
    a2.write_all(&[b'Z', 0, 0, 0, 1, 0]).unwrap();
    t.join().unwrap();
    // A helper speaking nonsense (the workload may have taken it over):
    // the client reports it.
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    write_json(&mut b, &FileReply::Hello).unwrap();
    let mut c = FileClient::new(OwnedFd::from(a)).unwrap();
    b.write_all(&[b'J', 0xff, 0xff, 0xff, 0xff]).unwrap();
    assert!(matches!(c.stat("/x", false), Err(FileError::Io(_))));
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    write_json(&mut b, &FileReply::Ready).unwrap();
    assert!(matches!(
        FileClient::new(OwnedFd::from(a)),
        Err(FileError::Protocol(_))
    ));
}

#[test]
fn zero_pieces_become_holes_so_sparse_files_stay_sparse() {
    use std::os::unix::fs::MetadataExt;
    let d = tempfile::tempdir().unwrap();
    let (mut c, _t) = helper(d.path());
    let mut w = c.write("/sparse", None, false).unwrap();
    w.chunk(b"head").unwrap();
    let zeros = vec![0u8; CHUNK];
    for _ in 0..256 {
        w.chunk(&zeros).unwrap();
    }
    let (_, size) = w.finish().unwrap();
    let expect = 4 + 256 * CHUNK as u64;
    assert_eq!(size, expect);
    let meta = std::fs::metadata(d.path().join("sparse")).unwrap();
    assert_eq!(meta.len(), expect);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "{} bytes allocated",
        meta.blocks() * 512
    );
    let (_, mut r) = c.read("/sparse").unwrap();
    let mut head = [0u8; 8];
    r.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"head\0\0\0\0");
    assert_eq!(
        std::io::copy(&mut r, &mut std::io::sink()).unwrap(),
        expect - 8
    );
}
