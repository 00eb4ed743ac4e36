//! Without `--tty`, the caller's terminal never enters the sandbox: the
//! command's stdio that is a terminal is relayed through pipes, so the
//! workload cannot change the terminal's settings or act on it. Uses
//! script(1) for a terminal; needs root.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

/// Runs `inner` (a shell command line) on a fresh terminal made by
/// script(1), writing `input` to that terminal; returns what appeared.
fn on_a_terminal(env: &Env, inner: &str, input: &str) -> (i32, String) {
    let inner = format!("STOCKADE_STATE_DIR={} {inner}", env.state.path().display());
    let mut child = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).replace('\r', ""),
    )
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups; uses script(1) for a terminal"]
fn the_callers_terminal_never_enters_the_sandbox() {
    let env = Env::new();
    // The workload tries to change the terminal it was started from; the
    // terminal's own settings are read after the run.
    let inner = format!(
        "{BIN} run -- sh -c 'for n in 0 1 2; do test -t $n && echo fd$n-is-a-terminal; done; \
         stty -echo -icanon 2>/dev/null && echo changed; echo out; echo err >&2; exit 3'; \
         echo status=$?; stty -a"
    );
    let (code, text) = on_a_terminal(&env, &inner, "");
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("is-a-terminal"), "{text}");
    assert!(
        !text.contains("changed"),
        "the workload changed the terminal: {text}"
    );
    // Output still reaches the terminal, in order, and the status too.
    assert!(text.contains("out\n"), "{text}");
    assert!(text.contains("err\n"), "{text}");
    assert!(text.contains("status=3"), "{text}");
    let settings = text.split("status=3").nth(1).unwrap_or_default();
    for flag in [" echo ", " icanon "] {
        assert!(
            settings.contains(flag),
            "the terminal lost {flag:?} after the run: {settings}"
        );
    }
}

#[test]
#[ignore = "needs root: creates namespaces and cgroups; uses script(1) for a terminal"]
fn what_is_typed_reaches_the_command_through_the_relay() {
    let env = Env::new();
    let inner = format!("{BIN} run -- sh -c 'read line; echo got:$line | tr a-z A-Z'");
    let (code, text) = on_a_terminal(&env, &inner, "typed words\n");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("GOT:TYPED WORDS"), "{text}");
}
