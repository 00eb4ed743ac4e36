//! Cleanup a workload cannot defeat: a tree 30,000 levels deep (paths far
//! beyond PATH_MAX) left in the scratch workspace is removed after the
//! run, by the run's own teardown and by `stockade gc` after a killed
//! supervisor. Needs root.

mod common;

use common::*;

const DEEP: &str = r#"python3 - <<'PY'
import os, sys
os.chdir("/workspace")
for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 30000):
    os.mkdir("d" * 20)
    os.chdir("d" * 20)
open("f", "w").write("x")
print("made", flush=True)
PY"#;

fn left_in(env: &Env) -> Vec<String> {
    std::fs::read_dir(env.sandboxes_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn a_tree_deeper_than_path_max_goes_with_the_sandbox() {
    // Both ways the scratch space can live: a btrfs subvolume (deleted in
    // one call) and the state directory (removed level by level).
    // (Fewer levels on btrfs: deleting a subvolume does not care.)
    for (scratch, levels) in [("on", 3000), ("off", 30000)] {
        let env = Env::new().with_env("STOCKADE_SCRATCH", scratch);
        let out = env.sh(&DEEP.replace("- <<'PY'", &format!("- {levels} <<'PY'")));
        assert!(stdout(&out).contains("made"), "{}", stderr(&out));
        assert!(
            eventually_for(120, || left_in(&env).is_empty()),
            "left behind with STOCKADE_SCRATCH={scratch}: {:?}",
            left_in(&env)
        );
    }
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups"]
fn gc_removes_a_deep_tree_left_by_a_killed_supervisor() {
    let env = Env::new().with_env("STOCKADE_SCRATCH", "off");
    let (mut child, line) = env.start_sh(&format!("{DEEP}\nsleep 60"));
    assert_eq!(line.trim(), "made");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(eventually_for(120, || {
        let out = env.cmd().arg("gc").output().unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        left_in(&env).is_empty()
    }));
}
