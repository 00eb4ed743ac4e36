//! How flags combine with a policy file: the flag wins.

use clap::Parser;
use stockade_policy::{NetMode, Policy};

use super::PolicyArgs;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    policy: PolicyArgs,
}

/// The policy `args` give on top of a file holding `file`.
fn policy(file: &str, args: &[&str]) -> anyhow::Result<Policy> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, file).unwrap();
    let mut argv = vec!["t", "--policy", path.to_str().unwrap()];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv)?.policy.into_policy()
}

const ALLOWLIST: &str = "[network]\nmode = \"allowlist\"\nallow_hosts = [\"pypi.org\"]\n\
                         allow_cidrs = [\"203.0.113.0/24\"]\nmap_hosts = [\"db.test=127.0.0.1\"]\n";

#[test]
fn net_none_drops_the_files_allowlist() {
    let p = policy(ALLOWLIST, &["--net", "none"]).unwrap();
    assert_eq!(p.network.mode, NetMode::None);
    assert!(p.network.allow_hosts.is_empty());
    assert!(p.network.allow_cidrs.is_empty());
    assert!(p.network.map_hosts.is_empty());
    // Without the flag the file's allowlist stands.
    let p = policy(ALLOWLIST, &[]).unwrap();
    assert_eq!(p.network.allow_hosts.len(), 1);
}

#[test]
fn net_none_with_an_allowing_flag_names_the_flags() {
    let err = policy("", &["--net", "none", "--allow-host", "x.org"]).unwrap_err();
    assert!(format!("{err:#}").contains("--allow-host"), "{err:#}");
}

#[test]
fn an_allowing_flag_turns_a_file_without_network_into_an_allowlist() {
    let p = policy("[network]\nmode = \"none\"\n", &["--allow-host", "x.org"]).unwrap();
    assert_eq!(p.network.mode, NetMode::Allowlist);
    assert!(p.network.allows_name("x.org"));
    let p = policy("", &["--map-host", "db.test=127.0.0.1"]).unwrap();
    assert_eq!(p.network.mode, NetMode::Allowlist);
    // An explicit `open` stays open.
    let p = policy("[network]\nmode = \"open\"\n", &["--allow-host", "x.org"]).unwrap();
    assert_eq!(p.network.mode, NetMode::Open);
}

#[test]
fn a_flag_bind_replaces_the_files_at_the_same_destination() {
    let file = "[filesystem]\nro_bind = [\"/srv/a:/data\", \"/srv/keep:/keep\"]\n";
    let p = policy(file, &["--bind", "/srv/b:/data"]).unwrap();
    let fs = &p.filesystem;
    assert_eq!(fs.ro_bind.len(), 1, "{:?}", fs.ro_bind);
    assert_eq!(fs.ro_bind[0].dst, std::path::Path::new("/keep"));
    assert_eq!(fs.bind.len(), 1);
    assert_eq!(fs.bind[0].src, std::path::Path::new("/srv/b"));
}

#[test]
fn dash_v_is_bind_or_ro_bind_as_docker_spells_them() {
    let file = "[filesystem]\nro_bind = [\"/srv/a:/data\"]\n";
    let p = policy(
        file,
        &[
            "-v",
            "/srv/b:/data",
            "--volume",
            "/srv/c:/c:ro",
            "-v",
            "/srv/d:/d:rw",
        ],
    )
    .unwrap();
    let fs = &p.filesystem;
    let pairs = |v: &[stockade_policy::BindMount]| -> Vec<String> {
        v.iter().map(|b| b.to_string()).collect()
    };
    assert_eq!(pairs(&fs.bind), ["/srv/b:/data", "/srv/d:/d"]);
    assert_eq!(pairs(&fs.ro_bind), ["/srv/c:/c"]);
    assert!(policy("", &["-v", "/srv/only"]).is_err());
}

#[test]
fn flag_limits_and_env_override_the_file() {
    let file = "[limits]\nmemory = \"1G\"\n[process]\nenv = { A = \"file\" }\n";
    let p = policy(file, &["--memory", "512M", "-e", "A=flag"]).unwrap();
    assert_eq!(p.limits.memory.to_string(), "512M");
    assert_eq!(p.process.env["A"], "flag");
}

#[test]
fn daemon_errors_name_cli_commands_not_http() {
    use crate::daemon::for_people;
    let cases = [
        "no sandbox has the id or name \"x\"; list them with GET /v1/sandboxes",
        "sandbox a is dead, not running; create a new one with POST /v1/sandboxes",
        "sandbox a has no process 7 started through the API (or it ended long ago); list them with GET /v1/sandboxes/a/processes",
        "the request body is not valid: bad key at line 1 column 395; fix it and retry (GET /v1/openapi.json describes every request)",
        "/x is a directory; add list=true to list it",
        "/x does not exist in the sandbox; check the path (list a directory with list=true)",
    ];
    for c in cases {
        let s = for_people(c);
        assert!(!s.contains("/v1/") && !s.contains("list=true"), "{s}");
    }
    assert!(for_people(cases[0]).ends_with("list them with `stockade ps -a`"));
    assert!(for_people(cases[2]).ends_with("(or it ended long ago)"));
    assert_eq!(for_people("unrelated: a/b"), "unrelated: a/b");
}

#[test]
fn help_shows_the_policy_defaults() {
    use clap::CommandFactory;
    let help = Cli::command().render_long_help().to_string();
    let d = Policy::default();
    for (flag, value) in [
        ("--cpus", format!("{}", d.limits.cpus.0)),
        ("--memory", d.limits.memory.to_string()),
        ("--pids", d.limits.pids.to_string()),
        ("--disk", d.limits.disk.to_string()),
        ("--timeout", d.limits.timeout.to_string()),
        ("--tmp-size", d.filesystem.tmp_size.to_string()),
        ("--net", "none".to_string()),
    ] {
        let at = help
            .find(&format!("{flag} "))
            .unwrap_or_else(|| panic!("{flag}"));
        let entry = &help[at..];
        let entry = &entry[..entry[1..].find("\n      -").unwrap_or(entry.len() - 1)];
        assert!(
            entry.contains(&format!("[default: {value}]")),
            "{flag} does not show its default {value}: {entry}"
        );
    }
}
