use super::*;

#[test]
fn empty_policy_gets_the_documented_defaults() {
    let p = Policy::from_toml_str("").unwrap();
    assert_eq!(p, Policy::default());
    assert_eq!(p.limits.cpus, Cpus(4.0));
    assert_eq!(p.limits.memory, ByteSize::gib(16));
    assert_eq!(p.limits.pids, 4096);
    assert_eq!(p.limits.disk, ByteSize::gib(50));
    assert_eq!(p.limits.timeout, Span::secs(4 * 3600));
    assert_eq!(p.filesystem.tmp_size, ByteSize::gib(1));
    assert_eq!(p.process.cwd, None);
    assert_eq!(p.process.cwd_or(None), "/workspace");
    assert_eq!(p.filesystem.image, None);
    assert_eq!(p.filesystem.pull, Pull::Missing);
    assert!(!p.process.root);
    p.validate().unwrap();
}

#[test]
fn parses_every_setting() {
    let p = Policy::from_toml_str(
        r#"
        [filesystem]
        workspace = "/srv/repo"
        overlay_root = true
        tmp_size = "256M"
        ro_bind = ["/opt/data:/data"]
        bind = ["/var/cache/pip:/home/agent/.cache/pip"]

        [limits]
        cpus = 0.5
        memory = "2G"
        pids = 128
        disk = 1073741824
        timeout = "1h30m"

        [process]
        root = true
        cwd = "/workspace/src"
        env = { RUST_LOG = "debug" }
        hostname = "box-1"

        [network]
        mode = "none"
        "#,
    )
    .unwrap();
    p.validate().unwrap();
    assert_eq!(
        p.filesystem.workspace.as_deref(),
        Some(Path::new("/srv/repo"))
    );
    assert!(p.filesystem.overlay_root);
    assert_eq!(p.filesystem.tmp_size, ByteSize::mib(256));
    assert_eq!(p.filesystem.ro_bind[0].dst, Path::new("/data"));
    assert_eq!(p.limits.cpus, Cpus(0.5));
    assert_eq!(p.limits.memory, ByteSize::gib(2));
    assert_eq!(p.limits.disk, ByteSize::gib(1));
    assert_eq!(p.limits.timeout, Span::secs(5400));
    assert_eq!(p.process.env["RUST_LOG"], "debug");
    assert_eq!(p.process.hostname, "box-1");
}

#[test]
fn rejects_unknown_keys_naming_them() {
    let err = Policy::from_toml_str("[limits]\nmemroy = \"1G\"\n").unwrap_err();
    assert!(err.to_string().contains("memroy"), "{err}");
    let err = Policy::from_toml_str("colour = 1\n").unwrap_err();
    assert!(err.to_string().contains("colour"), "{err}");
}

#[test]
fn rejects_bad_values_with_the_expected_form() {
    let err = Policy::from_toml_str("[limits]\nmemory = \"lots\"\n").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("memory") && msg.contains("512M"), "{msg}");
    let err = Policy::from_toml_str("[limits]\ntimeout = \"soon\"\n").unwrap_err();
    assert!(err.to_string().contains("30s"), "{err}");
    let err = Policy::from_toml_str("[network]\nmode = \"everything\"\n").unwrap_err();
    assert!(err.to_string().contains("none"), "{err}");
    let err = Policy::from_toml_str("[filesystem]\nbind = [\"relative:/x\"]\n").unwrap_err();
    assert!(err.to_string().contains("absolute"), "{err}");
}

fn invalid(edit: impl FnOnce(&mut Policy)) -> String {
    let mut p = Policy::default();
    edit(&mut p);
    p.validate().unwrap_err().to_string()
}

#[test]
fn validation_names_the_key_and_the_range() {
    assert!(invalid(|p| p.limits.memory = ByteSize(1024))
        .contains("limits.memory must be at least 4M, got 1K"));
    assert!(invalid(|p| p.limits.cpus = Cpus(0.0)).contains("limits.cpus"));
    assert!(invalid(|p| p.limits.cpus = Cpus(-2.0)).contains("limits.cpus"));
    assert!(invalid(|p| p.limits.pids = 1).contains("limits.pids"));
    assert!(invalid(|p| p.limits.disk = ByteSize(10)).contains("limits.disk"));
    assert!(invalid(|p| p.limits.timeout = Span::secs(0)).contains("limits.timeout"));
    assert!(invalid(|p| p.filesystem.tmp_size = ByteSize(1)).contains("filesystem.tmp_size"));
    assert!(
        invalid(|p| p.filesystem.workspace = Some("rel".into())).contains("filesystem.workspace")
    );
    assert!(invalid(|p| p.process.cwd = Some("work".into())).contains("process.cwd"));
    assert!(invalid(|p| p.process.user = Some("a b".into())).contains("process.user"));
    assert!(invalid(|p| p.process.user = Some("1:".into())).contains("process.user"));
    assert!(invalid(|p| {
        p.process.root = true;
        p.process.user = Some("app".into());
    })
    .contains("process.root"));
    assert!(invalid(|p| p.filesystem.image = Some("".into())).contains("filesystem.image"));
    assert!(invalid(|p| p.filesystem.image = Some("a b".into())).contains("filesystem.image"));
    assert!(invalid(|p| {
        p.process.env.insert("1BAD".into(), "x".into());
    })
    .contains("process.env"));
    assert!(invalid(|p| {
        p.process.env.insert("A=B".into(), "x".into());
    })
    .contains("process.env"));
    assert!(invalid(|p| p.process.hostname = "a/b".into()).contains("process.hostname"));
}

#[test]
fn bind_mounts_must_be_clean_and_stay_off_reserved_paths() {
    assert!("/a:/b".parse::<BindMount>().is_ok());
    for bad in [
        "/a",
        ":/b",
        "/a:",
        "/a:b",
        "/a/../etc:/b",
        "/a:/x/../../etc",
        "/a:/",
    ] {
        assert!(bad.parse::<BindMount>().is_err(), "{bad:?} accepted");
    }
    for reserved in [
        "/proc",
        "/proc/1",
        "/dev/sda",
        "/etc/shadow",
        "/sys",
        "/tmp/x",
    ] {
        let err = format!("/srv:{reserved}").parse::<BindMount>().unwrap_err();
        assert!(
            matches!(err, MountError::Reserved { .. }),
            "{reserved}: {err}"
        );
    }
    for system in [
        "/usr",
        "/usr/bin",
        "/bin",
        "/sbin",
        "/lib",
        "/lib64",
        "/lib/x86_64",
    ] {
        let err = format!("/tmp:{system}").parse::<BindMount>().unwrap_err();
        assert!(matches!(err, MountError::System { .. }), "{system}: {err}");
        assert!(err.to_string().contains("mount somewhere else"), "{err}");
    }
    let err = "/srv:/workspace".parse::<BindMount>().unwrap_err();
    assert!(err.to_string().contains("--workspace DIR"), "{err}");
    // Look-alikes and places under the workspace stay allowed.
    for fine in ["/library", "/usrdata", "/workspace/data", "/opt/x", "/mnt"] {
        assert!(
            format!("/srv:{fine}").parse::<BindMount>().is_ok(),
            "{fine}"
        );
    }
}

#[test]
fn policy_round_trips_through_toml_and_json() {
    let mut p = Policy::default();
    p.limits.memory = ByteSize::mib(768);
    p.limits.timeout = Span::secs(90);
    p.filesystem.bind.push("/a:/b".parse().unwrap());
    p.process.env.insert("K".into(), "v".into());
    let back = Policy::from_toml_str(&p.to_toml_string()).unwrap();
    assert_eq!(back, p);
    let json = serde_json::to_string(&p).unwrap();
    let back: Policy = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
}

#[test]
fn load_reports_the_file_and_the_problem() {
    let dir = std::env::temp_dir().join(format!("stockade-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("p.toml");
    std::fs::write(&f, "[limits]\npids = 1\n").unwrap();
    let err = Policy::load(&f).unwrap_err().to_string();
    assert!(
        err.contains("p.toml") && err.contains("limits.pids"),
        "{err}"
    );
    std::fs::write(&f, "[limits\n").unwrap();
    let err = Policy::load(&f).unwrap_err().to_string();
    assert!(err.contains("p.toml") && err.contains("not valid"), "{err}");
    let err = Policy::load(&dir.join("missing.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The message and its causes as the CLI prints them (`a: b: c`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s = format!("{s}: {c}");
        cur = c.source();
    }
    s
}

#[test]
fn load_errors_print_each_cause_once() {
    let dir = std::env::temp_dir().join(format!("stockade-policy-once-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = Policy::load(&dir.join("missing.toml")).unwrap_err();
    let text = chain(&missing);
    assert!(text.contains("missing.toml"), "{text}");
    assert_eq!(text.matches("No such file").count(), 1, "{text}");

    let f = dir.join("p.toml");
    std::fs::write(&f, "[filesystem]\nbind = [\"relative:/x\"]\n").unwrap();
    let text = chain(&Policy::load(&f).unwrap_err());
    assert!(text.contains("p.toml") && text.contains("line 2"), "{text}");
    assert_eq!(
        text.matches("must be an absolute path").count(),
        1,
        "{text}"
    );

    let err = ValidationError::Mount {
        key: "bind",
        error: "relative:/x".parse::<BindMount>().unwrap_err(),
    };
    let text = chain(&err);
    assert!(text.starts_with("filesystem.bind: "), "{text}");
    assert_eq!(
        text.matches("must be an absolute path").count(),
        1,
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn image_pull_and_user_parse_and_the_cwd_falls_back_to_the_images() {
    let p = Policy::from_toml_str(
        r#"
        [filesystem]
        image = "python:3.11"
        pull = "never"

        [process]
        user = "app:staff"
        "#,
    )
    .unwrap();
    p.validate().unwrap();
    assert_eq!(p.filesystem.image.as_deref(), Some("python:3.11"));
    assert_eq!(p.filesystem.pull, Pull::Never);
    assert_eq!(p.process.user.as_deref(), Some("app:staff"));
    assert_eq!(p.process.cwd_or(Some("/app")), "/app");
    assert_eq!(p.process.cwd_or(Some("")), "/workspace");
    let mut q = p.clone();
    q.process.cwd = Some("/srv".into());
    assert_eq!(q.process.cwd_or(Some("/app")), "/srv");
    let err = Policy::from_toml_str("[filesystem]\npull = \"sometimes\"\n").unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    assert_eq!("always".parse::<Pull>(), Ok(Pull::Always));
    assert!("x"
        .parse::<Pull>()
        .unwrap_err()
        .contains("missing, always or never"));
    for ok in ["0", "1234:1234", "app", "www-data", "nobody:nogroup"] {
        assert!(valid_user(ok), "{ok}");
    }
    for bad in ["", ":", "a:", ":b", "a:b:c", "-x", "a/b"] {
        assert!(!valid_user(bad), "{bad}");
    }
}
