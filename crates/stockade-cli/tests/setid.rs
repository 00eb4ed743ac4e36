//! No file a sandbox creates or changes in a bound host directory is
//! setuid or setgid on the host: every call that sets a mode with those
//! bits is refused. Needs root.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

/// Every file under `dir` with S_ISUID or S_ISGID.
fn setid_files(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = e.path().symlink_metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.permissions().mode() & 0o6000 != 0 {
                found.push(e.path().display().to_string());
            }
        }
    }
    found
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn no_route_makes_a_setuid_or_setgid_file_in_the_workspace() {
    let env = Env::new();
    let ws = user_dir(4242);
    // A tar archive holding a setuid file, made on the host.
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("su"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        src.path().join("su"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    let st = std::process::Command::new("tar")
        .args(["-cf", ws.path().join("s.tar").to_str().unwrap(), "-C"])
        .arg(src.path())
        .arg("su")
        .status()
        .unwrap();
    assert!(st.success());
    let script = r#"
cd /workspace
touch a b c; chmod u+s a; chmod g+s b; chmod 6755 c
install -m 4755 /bin/true inst 2>/dev/null
python3 - <<'PY'
import os, stat
for f in (lambda: os.close(os.open("o", os.O_CREAT | os.O_WRONLY, 0o4755)),
          lambda: os.mknod("n", 0o4755 | stat.S_IFREG),
          lambda: os.chmod("a", 0o6755),
          lambda: os.close(os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o2755))):
    try:
        f()
    except OSError as e:
        print("refused", e.errno)
PY
tar -xpf s.tar 2>/dev/null
cp -p "$(command -v su || command -v passwd || echo /bin/true)" copied 2>/dev/null
chmod 755 a; chmod 600 b; echo plain-modes-work=$?
"#;
    let out = env.run(&[
        "--workspace",
        ws.path().to_str().unwrap(),
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.matches("refused 1").count(), 4, "{text}");
    assert!(text.contains("plain-modes-work=0"), "{text}");
    let found = setid_files(ws.path());
    assert!(
        found.is_empty(),
        "setuid/setgid files on the host: {found:?}"
    );
    // Normal permission bits still apply.
    let a = std::fs::metadata(ws.path().join("a"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(a & 0o7777, 0o755);
}
