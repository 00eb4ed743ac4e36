use super::*;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                      # a comment\n\
                      app:x:1234:1300:App:/srv/app:/bin/sh\n\
                      big:x:70000:70000::/:/bin/sh\n";
const GROUP: &str = "root:x:0:\napp:x:1300:\nstaff:x:50:app\n";

fn user(spec: &str) -> Result<User, RunError> {
    resolve_user(spec, Some(PASSWD), Some(GROUP), "image x's ")
}

#[test]
fn users_resolve_by_name_or_id_as_docker_does() {
    let app = user("app").unwrap();
    assert_eq!((app.uid, app.gid), (1234, 1300));
    assert_eq!(app.name.as_deref(), Some("app"));
    assert_eq!(app.home.as_deref(), Some("/srv/app"));
    assert_eq!(app.shell.as_deref(), Some("/bin/sh"));
    // A uid in the file takes its group; one that is not gets group 0.
    assert_eq!(
        (user("1234").unwrap().uid, user("1234").unwrap().gid),
        (1234, 1300)
    );
    let stray = user("4321").unwrap();
    assert_eq!((stray.uid, stray.gid, stray.name), (4321, 0, None));
    assert_eq!(user("app:staff").unwrap().gid, 50);
    assert_eq!(user("0:77").unwrap().gid, 77);
    assert_eq!(user("root").unwrap().uid, 0);
}

#[test]
fn unknown_names_and_unmapped_ids_are_refused_naming_the_file() {
    let e = user("nobody").unwrap_err().to_string();
    assert!(
        e.contains("\"nobody\"") && e.contains("image x's /etc/passwd"),
        "{e}"
    );
    let e = user("app:wheel").unwrap_err().to_string();
    assert!(e.contains("image x's /etc/group"), "{e}");
    let e = user("big").unwrap_err().to_string();
    assert!(e.contains("65535"), "{e}");
    let e = user("1:70000").unwrap_err().to_string();
    assert!(e.contains("65535"), "{e}");
    // No passwd at all: only ids work.
    assert!(resolve_user("app", None, None, "").is_err());
    assert_eq!(resolve_user("5", None, None, "").unwrap().uid, 5);
}

#[test]
fn the_command_is_the_entrypoint_then_the_given_command_or_cmd() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let ep = s(&["/bin/echo", "entry"]);
    let cmd = s(&["default"]);
    assert_eq!(
        command_with(&ep, &cmd, &[]),
        s(&["/bin/echo", "entry", "default"])
    );
    assert_eq!(
        command_with(&ep, &cmd, &s(&["x"])),
        s(&["/bin/echo", "entry", "x"])
    );
    assert_eq!(command_with(&[], &cmd, &[]), s(&["default"]));
    assert_eq!(command_with(&[], &cmd, &s(&["y"])), s(&["y"]));
    assert!(command_with(&[], &[], &[]).is_empty());
}

fn layer(root: &Path, files: &[(&str, &str)]) -> PathBuf {
    for (rel, data) in files {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    root.to_path_buf()
}

#[test]
fn the_topmost_layer_with_the_file_wins_and_symlinks_are_not_followed() {
    let t = tempfile::tempdir().unwrap();
    let low = layer(
        &t.path().join("0"),
        &[("etc/passwd", "low"), ("etc/group", "g")],
    );
    let high = layer(&t.path().join("1"), &[("etc/passwd", "high")]);
    let layers = vec![low.clone(), high.clone()];
    assert_eq!(read_image_file(&layers, "etc/passwd").unwrap(), b"high");
    assert_eq!(read_image_file(&layers, "etc/group").unwrap(), b"g");
    assert_eq!(read_image_file(&layers, "etc/shadow"), None);
    // A symlink in a layer, to a host file or through a symlinked
    // directory, is never followed out of the layer.
    let host = t.path().join("host-secret");
    std::fs::write(&host, "secret").unwrap();
    let top = t.path().join("2");
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::os::unix::fs::symlink(&host, top.join("etc/passwd")).unwrap();
    let layers = vec![low.clone(), top];
    assert_eq!(read_image_file(&layers, "etc/passwd"), None);
    let top = t.path().join("3");
    std::fs::create_dir_all(&top).unwrap();
    std::os::unix::fs::symlink(t.path().join("0/etc"), top.join("etc")).unwrap();
    assert_eq!(read_image_file(&[top], "etc/passwd"), None);
}

#[test]
#[ignore = "needs root: makes a whiteout (a 0/0 character device) and a user xattr"]
fn whiteouts_and_opaque_directories_hide_lower_files() {
    let t = tempfile::tempdir().unwrap();
    let low = layer(
        &t.path().join("0"),
        &[("etc/passwd", "low"), ("etc/group", "g")],
    );
    let high = t.path().join("1");
    std::fs::create_dir_all(high.join("etc")).unwrap();
    nix::sys::stat::mknod(
        &high.join("etc/passwd"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o000),
        0,
    )
    .unwrap();
    let layers = vec![low.clone(), high];
    assert_eq!(read_image_file(&layers, "etc/passwd"), None);
    assert_eq!(read_image_file(&layers, "etc/group").unwrap(), b"g");
    let opaque = t.path().join("2");
    std::fs::create_dir_all(opaque.join("etc")).unwrap();
    let dir = std::ffi::CString::new(opaque.join("etc").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: NUL-terminated strings and a buffer of the length passed.
    let r = unsafe {
        libc::setxattr(
            dir.as_ptr(),
            c"user.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    let layers = vec![low, opaque];
    assert_eq!(read_image_file(&layers, "etc/group"), None);
}
