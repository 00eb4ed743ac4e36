//! What a sandbox can learn about its host from inside: nothing of the
//! supervisor's command line or environment, no host paths of
//! stockade's own mounts. Needs root.

mod common;

use common::*;

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn init_shows_nothing_of_the_supervisors_command_line_or_environment() {
    let env = Env::new();
    let marker = format!("marker{}", rand_suffix());
    let out = env
        .cmd()
        .env("STOCKADE_LEAK_PROBE", &marker)
        .args(["run", "--hostname", &marker, "-e", "X=1", "--"])
        .args([
            "sh",
            "-c",
            "tr '\\0' ' ' < /proc/1/cmdline; echo; cat /proc/1/comm; cat /proc/1/environ 2>/dev/null | tr '\\0' ' '",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let first = text.lines().next().unwrap_or_default();
    assert_eq!(first.trim(), "stockade-init", "{text}");
    assert!(!text.contains("--hostname"), "{text}");
    // The hostname itself is the sandbox's; the flag's text and the
    // caller's environment must not show.
    assert!(!text.contains("STOCKADE_LEAK_PROBE"), "{text}");
    assert!(!text.contains(BIN), "{text}");
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn mountinfo_names_no_host_path_of_stockades_own_mounts() {
    let env = Env::new();
    let state = env.state.path().to_str().unwrap().to_string();
    for extra in [&[][..], &["--overlay-root"][..]] {
        let mut args = extra.to_vec();
        args.extend(["--", "cat", "/proc/self/mountinfo"]);
        let out = env.run(&args);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let text = stdout(&out);
        // The scratch filesystem is in use (CI installs btrfs-progs): its
        // paths are relative to its own root.
        assert!(
            text.lines()
                .any(|l| l.contains(" /workspace ") && l.contains(" - btrfs ")),
            "the workspace is not on the scratch filesystem:\n{text}"
        );
        for host in [state.as_str(), "/var/lib/stockade", "/run/stockade"] {
            assert!(
                !text.contains(host),
                "{extra:?}: mountinfo names the host path {host}:\n{text}"
            );
        }
    }
}
