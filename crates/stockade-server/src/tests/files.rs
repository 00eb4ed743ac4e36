//! Files as the sandbox sees them, and attempts to get out of it.

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;

use super::harness::{shared, TestDaemon};
use stockade_client::ClientError;

fn status_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Api { status, code, .. }) => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn writes_reads_lists_and_deletes_files() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    let root = d.fake.root_of(&sb.id);

    c.write_file(&sb.id, "/workspace/a.txt", b"hello").unwrap();
    assert_eq!(
        std::fs::read(root.join("workspace/a.txt")).unwrap(),
        b"hello"
    );
    assert_eq!(c.read_file(&sb.id, "/workspace/a.txt").unwrap(), b"hello");
    c.write_file(&sb.id, "/workspace/a.txt", b"hi").unwrap();
    assert_eq!(
        c.read_file(&sb.id, "/workspace/a.txt").unwrap(),
        b"hi",
        "overwrite truncates"
    );

    c.write_file(&sb.id, "/workspace/deep/er/b.bin", &[0, 159, 146, 150])
        .unwrap();
    assert_eq!(
        c.read_file(&sb.id, "/workspace/deep/er/b.bin").unwrap(),
        vec![0, 159, 146, 150]
    );
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    c.write_file(&sb.id, "/workspace/big.bin", &big).unwrap();
    assert_eq!(c.read_file(&sb.id, "/workspace/big.bin").unwrap(), big);

    let entries = c.list_dir(&sb.id, "/workspace").unwrap();
    let names: Vec<&str> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["a.txt", "big.bin", "deep"]);
    assert_eq!(entries[0]["type"], "file");
    assert_eq!(entries[0]["size"], 2);
    assert_eq!(entries[0]["mode"], "0644");
    assert_eq!(entries[2]["type"], "dir");
    assert!(entries[0]["mtime"].as_i64().unwrap() > 1_600_000_000);

    assert_eq!(
        status_of(c.read_file(&sb.id, "/workspace/deep")),
        (400, "is_a_directory".into())
    );
    assert_eq!(
        status_of(c.remove_file(&sb.id, "/workspace/deep")),
        (409, "conflict".into())
    );
    c.remove_file(&sb.id, "/workspace/deep/er/b.bin").unwrap();
    c.remove_file(&sb.id, "/workspace/deep/er").unwrap();
    assert!(!root.join("workspace/deep/er").exists());
    assert_eq!(
        status_of(c.read_file(&sb.id, "/workspace/nope")),
        (404, "not_found".into())
    );
    assert_eq!(status_of(c.read_file(&sb.id, "workspace/a.txt")).0, 400);
    assert_eq!(
        status_of(c.write_file(&sb.id, "/workspace/..", b"x")).0,
        400
    );
    assert_eq!(
        status_of(c.write_file(&sb.id, "/workspace/a.txt/sub", b"x")).0,
        400
    );
    let r = c
        .raw("GET", &format!("/v1/sandboxes/{}/files", sb.id), &[], None)
        .unwrap();
    assert_eq!(r.status, 400, "path is required");

    c.destroy(&sb.id).unwrap();
    assert_eq!(status_of(c.read_file(&sb.id, "/workspace/a.txt")).0, 409);
}

#[test]
fn paths_and_symlinks_cannot_leave_the_sandbox_root() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    let root = d.fake.root_of(&sb.id);
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/passwd"), "the sandbox's passwd\n").unwrap();
    let host_passwd = std::fs::read("/etc/passwd").unwrap();

    for p in [
        "/../../etc/passwd",
        "/workspace/../../../../etc/passwd",
        "/workspace/./../../etc/passwd",
    ] {
        assert_eq!(
            c.read_file(&sb.id, p).unwrap(),
            b"the sandbox's passwd\n",
            "{p}"
        );
    }
    assert_eq!(
        status_of(c.read_file(&sb.id, "/../../etc/shadow")),
        (404, "not_found".into())
    );

    let ws = root.join("workspace");
    symlink("/etc/passwd", ws.join("abs")).unwrap();
    symlink("../../../../../../../etc/passwd", ws.join("rel")).unwrap();
    symlink("/", ws.join("toroot")).unwrap();
    symlink("loop", ws.join("loop")).unwrap();
    symlink("/etc/shadow", ws.join("shadow")).unwrap();
    for p in [
        "/workspace/abs",
        "/workspace/rel",
        "/workspace/toroot/etc/passwd",
    ] {
        let got = c.read_file(&sb.id, p).unwrap();
        assert_eq!(got, b"the sandbox's passwd\n", "{p}");
        assert_ne!(got, host_passwd);
    }
    assert_eq!(status_of(c.read_file(&sb.id, "/workspace/shadow")).0, 404);
    assert_eq!(
        status_of(c.read_file(&sb.id, "/workspace/loop")),
        (400, "invalid_path".into())
    );
    assert_eq!(
        status_of(c.write_file(&sb.id, "/workspace/loop/x", b"x")),
        (400, "invalid_path".into())
    );

    // Writing through a symlink lands inside the root, never on the host.
    let unique = format!("stockade-escape-{}", sb.id);
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    symlink(format!("/tmp/{unique}"), ws.join("out")).unwrap();
    c.write_file(&sb.id, "/workspace/out", b"confined").unwrap();
    assert!(
        !std::path::Path::new("/tmp").join(&unique).exists(),
        "wrote on the host"
    );
    assert_eq!(
        std::fs::read(root.join("tmp").join(&unique)).unwrap(),
        b"confined"
    );
    // Parent creation through a symlinked directory stays inside too.
    c.write_file(&sb.id, "/workspace/toroot/made/by/put.txt", b"p")
        .unwrap();
    assert!(root.join("made/by/put.txt").exists());
    assert!(!std::path::Path::new("/made").exists());

    // Deleting a symlink removes the link, not its target.
    c.remove_file(&sb.id, "/workspace/abs").unwrap();
    assert!(root.join("etc/passwd").exists());
    assert!(std::fs::symlink_metadata(ws.join("abs")).is_err());

    let listing = c.list_dir(&sb.id, "/workspace").unwrap();
    let rel = listing.iter().find(|e| e["name"] == "rel").unwrap();
    assert_eq!(rel["type"], "symlink", "listing does not follow links");

    // Special files are refused rather than read forever.
    nix::unistd::mkfifo(
        &ws.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    assert_eq!(status_of(c.read_file(&sb.id, "/workspace/fifo")).0, 400);
}

#[test]
fn read_only_and_permission_errors_are_clear_4xx() {
    let _g = shared();
    let failed = |errno: nix::errno::Errno| stockade_core::backend::FileError::Failed {
        errno: errno as i32,
        message: "write x".into(),
    };
    let e = crate::routes::files::file_error("/usr/x", failed(nix::errno::Errno::EROFS));
    assert_eq!((e.status.as_u16(), e.code), (403, "read_only"));
    assert!(e.message.contains("/workspace"), "{}", e.message);
    let e = crate::routes::files::file_error("/root/x", failed(nix::errno::Errno::EACCES));
    assert_eq!(e.status.as_u16(), 403);
    let e = crate::routes::files::file_error("/w/x", failed(nix::errno::Errno::ENOSPC));
    assert_eq!(e.status.as_u16(), 507);
    let e = crate::routes::files::file_error("/w/x", failed(nix::errno::Errno::EDQUOT));
    assert_eq!(e.status.as_u16(), 507);
}

#[test]
fn stat_makes_directories_and_sets_the_mode_of_new_files() {
    use std::os::unix::fs::PermissionsExt;
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    let root = d.fake.root_of(&sb.id);

    assert!(c.make_dir(&sb.id, "/workspace/a/b").unwrap());
    assert!(
        !c.make_dir(&sb.id, "/workspace/a/b").unwrap(),
        "existing is fine"
    );
    assert!(root.join("workspace/a/b").is_dir());
    assert_eq!(c.stat(&sb.id, "/workspace/a").unwrap()["type"], "dir");

    let data = b"#!/bin/sh\n";
    c.write_file_with_mode(&sb.id, "/workspace/a/run", &mut &data[..], 10, Some(0o750))
        .unwrap();
    let mode = std::fs::metadata(root.join("workspace/a/run"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o750);
    let e = c.stat(&sb.id, "/workspace/a/run").unwrap();
    assert_eq!(
        (e["type"].as_str(), e["mode"].as_str(), e["size"].as_u64()),
        (Some("file"), Some("0750"), Some(10))
    );

    // A symlink is described, not followed.
    symlink("/etc/passwd", root.join("workspace/l")).unwrap();
    let e = c.stat(&sb.id, "/workspace/l").unwrap();
    assert_eq!(
        (e["type"].as_str(), e["target"].as_str()),
        (Some("symlink"), Some("/etc/passwd"))
    );
    assert_eq!(status_of(c.stat(&sb.id, "/workspace/none")).0, 404);
    // A file where a directory should go is a conflict; a bad mode is refused.
    assert_eq!(status_of(c.make_dir(&sb.id, "/workspace/a/run")).0, 409);
    let r = c
        .raw(
            "PUT",
            &format!("/v1/sandboxes/{}/files?path=/workspace/m&mode=999", sb.id),
            &[],
            Some(("application/octet-stream", b"x")),
        )
        .unwrap();
    assert_eq!(r.status, 400);
}
