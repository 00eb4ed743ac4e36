//! exec: JSON answers, SSE streaming, timeouts, background processes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::harness::{eventually, shared, TestDaemon};
use stockade_client::{ClientError, ExecOptions, SseEvent};

fn sh(script: &str) -> ExecOptions {
    ExecOptions {
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

#[test]
fn exec_returns_exit_code_and_output() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    let mut opts = sh("echo out; echo err >&2; echo \"$GREETING\"; pwd; exit 3");
    opts.env.insert("GREETING".into(), "héllo".into());
    let r = c.exec(&sb.id, &opts).unwrap();
    assert_eq!(
        (r.exit_code, r.signal, r.outcome.as_str()),
        (Some(3), None, "exited")
    );
    assert_eq!(
        r.stdout,
        format!(
            "out\nhéllo\n{}\n",
            d.fake.root_of(&sb.id).join("workspace").display()
        )
    );
    assert_eq!(r.stderr, "err\n");
    assert!(!r.truncated);

    let mut opts = ExecOptions {
        cmd: vec!["cat".into()],
        ..Default::default()
    };
    opts.stdin = Some("fed through stdin".into());
    assert_eq!(c.exec(&sb.id, &opts).unwrap().stdout, "fed through stdin");
    // Without stdin text, stdin is closed at once: cat ends.
    let r = c
        .exec(
            &sb.id,
            &ExecOptions {
                cmd: vec!["cat".into()],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((r.exit_code, r.stdout.as_str()), (Some(0), ""));

    let r = c.exec(&sb.id, &sh("kill -TERM $$")).unwrap();
    assert_eq!((r.signal, r.outcome.as_str()), (Some(15), "signaled"));

    match c.exec(
        &sb.id,
        &ExecOptions {
            cmd: vec!["/no/such/program".into()],
            ..Default::default()
        },
    ) {
        Err(ClientError::Api {
            status: 400,
            code,
            message,
        }) => {
            assert_eq!(code, "spawn_failed");
            assert!(message.contains("/no/such/program"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn exec_timeout_kills_the_process() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    let mut opts = sh("echo started; exec sleep 30");
    opts.timeout = Some("300ms".into());
    let t = Instant::now();
    let r = c.exec(&sb.id, &opts).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!((r.outcome.as_str(), r.signal), ("timeout", Some(9)));
    assert_eq!(r.stdout, "started\n");
}

#[test]
fn exec_output_is_capped_at_one_mebibyte_per_stream() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    let r = c
        .exec(
            &sb.id,
            &sh("head -c 3000000 /dev/zero | tr '\\0' a; echo END"),
        )
        .unwrap();
    assert!(r.truncated);
    assert!(
        r.stdout.len() <= crate::OUTPUT_CAP_BYTES && r.stdout.len() > crate::OUTPUT_CAP_BYTES / 2
    );
    assert!(
        r.stdout.ends_with("aEND\n"),
        "the most recent output is kept"
    );
}

#[test]
fn exec_streams_server_sent_events() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    let t = Instant::now();
    let mut events = c
        .exec_stream(&sb.id, &sh("echo one; sleep 2; echo two >&2; exit 4"))
        .unwrap();
    let first = events.next().unwrap().unwrap();
    assert_eq!(first.event, "start");
    assert!(first.json()["pid"].as_i64().unwrap() > 0);
    let second = events.next().unwrap().unwrap();
    assert_eq!(
        (second.event.as_str(), second.json()["data"].as_str()),
        ("stdout", Some("one\n"))
    );
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "stdout arrives before the process ends"
    );
    let rest: Vec<SseEvent> = events.map(Result::unwrap).collect();
    let names: Vec<&str> = rest.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, vec!["stderr", "exit"]);
    assert_eq!(rest[0].json()["data"], "two\n");
    assert_eq!(rest[1].json()["exit_code"], 4);
    assert_eq!(rest[1].json()["outcome"], "exited");
}

#[test]
fn background_process_takes_stdin_signals_and_replays_output() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();

    // stdin, then eof.
    let pid = c
        .exec_background(
            &sb.id,
            &sh("echo ready; while read l; do echo got:$l; done; echo bye"),
        )
        .unwrap();
    c.send_stdin(&sb.id, pid, b"a\nb\n", false).unwrap();
    c.send_stdin(&sb.id, pid, b"c\n", true).unwrap();
    let out: Vec<SseEvent> = c.output(&sb.id, pid).unwrap().map(Result::unwrap).collect();
    let text: String = out
        .iter()
        .filter(|e| e.event == "stdout")
        .map(|e| e.json()["data"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "ready\ngot:a\ngot:b\ngot:c\nbye\n");
    assert_eq!(out.first().unwrap().event, "start");
    assert_eq!(out.last().unwrap().json()["exit_code"], 0);
    match c.send_stdin(&sb.id, pid, b"late\n", false) {
        Err(ClientError::Api { status: 409, .. }) => {}
        other => panic!("{other:?}"),
    }

    // A long-running one: listed, followed live, then signalled by name.
    let pid = c
        .exec_background(&sb.id, &sh("echo up; exec sleep 60"))
        .unwrap();
    let listed = c.processes(&sb.id).unwrap();
    let me = listed.iter().find(|p| p["pid"] == pid).expect("listed");
    assert_eq!(
        (me["running"].as_bool(), me["background"].as_bool()),
        (Some(true), Some(true))
    );
    let mut live = c.output(&sb.id, pid).unwrap();
    assert_eq!(live.next().unwrap().unwrap().event, "start");
    assert_eq!(live.next().unwrap().unwrap().json()["data"], "up\n");
    c.signal(&sb.id, pid, "TERM").unwrap();
    let exit = live.next().unwrap().unwrap();
    assert_eq!(
        (exit.event.as_str(), exit.json()["signal"].as_i64()),
        ("exit", Some(15))
    );
    assert!(live.next().is_none());
    eventually(5, || {
        let l = c.processes(&sb.id).unwrap();
        l.iter()
            .any(|p| p["pid"] == pid && p["running"] == false)
            .then_some(())
    });
    match c.signal(&sb.id, pid, "KILL") {
        Err(ClientError::Api { status: 409, .. }) => {}
        other => panic!("{other:?}"),
    }
    match c.signal(&sb.id, pid, "NOPE") {
        Err(ClientError::Api {
            status: 400,
            message,
            ..
        }) => assert!(message.contains("TERM")),
        other => panic!("{other:?}"),
    }
    // Numeric signals and a background process killed by destroy.
    let pid = c.exec_background(&sb.id, &sh("exec sleep 60")).unwrap();
    c.signal(&sb.id, pid, "9").unwrap();
    let last = c
        .output(&sb.id, pid)
        .unwrap()
        .map(Result::unwrap)
        .last()
        .unwrap();
    assert_eq!(last.json()["signal"], 9);
    let pid = c.exec_background(&sb.id, &sh("exec sleep 60")).unwrap();
    let stream = c.output(&sb.id, pid).unwrap();
    c.destroy(&sb.id).unwrap();
    let last = stream.map(Result::unwrap).last().unwrap();
    assert_eq!(last.event, "exit");
}

#[test]
fn exec_rejects_bad_requests() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    let target = format!("/v1/sandboxes/{}/exec", sb.id);
    for (body, needle) in [
        (r#"{"cmd": []}"#, "cmd must name a program"),
        (
            r#"{"cmd": ["ls"], "cwd": "relative"}"#,
            "cwd must be an absolute path",
        ),
        (
            r#"{"cmd": ["ls"], "env": {"1X": "y"}}"#,
            "not a valid variable",
        ),
        (r#"{"cmd": ["ls"], "timeout": "forever"}"#, "forever"),
        (r#"{"cmd": ["ls"], "shell": true}"#, "unknown field `shell`"),
        (r#"{"cmd": "ls"}"#, "invalid type"),
    ] {
        let r = c
            .raw(
                "POST",
                &target,
                &[],
                Some(("application/json", body.as_bytes())),
            )
            .unwrap();
        assert_eq!(r.status, 400, "{body}");
        let text = String::from_utf8(r.bytes(1 << 20).unwrap()).unwrap();
        assert!(text.contains(needle), "{body}: {text}");
    }
    c.destroy(&sb.id).unwrap();
    match c.exec(&sb.id, &sh("true")) {
        Err(ClientError::Api {
            status: 409,
            message,
            ..
        }) => assert!(message.contains("destroyed"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_stream_reader_that_falls_behind_is_told_it_lost_output() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    // Start in the background, let it print 3 MiB and end, then read the
    // stream from the start: only the last 1 MiB is kept.
    let mut opts = sh("head -c 3145728 /dev/zero | tr '\\0' x");
    opts.background = true;
    let pid = c.exec_background(&sb.id, &opts).unwrap();
    eventually(10, || {
        c.processes(&sb.id)
            .unwrap()
            .iter()
            .any(|p| p["pid"] == pid && p["running"] == false)
            .then_some(())
    });
    let events: Vec<SseEvent> = c.output(&sb.id, pid).unwrap().map(|e| e.unwrap()).collect();
    assert!(
        events.iter().any(|e| e.event == "lagged"),
        "no lagged event"
    );
    let exit = events.iter().find(|e| e.event == "exit").unwrap().json();
    assert_eq!(exit["truncated"], true, "{exit}");
    // A reader that keeps up hears of no loss.
    let events: Vec<SseEvent> = c
        .exec_stream(&sb.id, &sh("echo small"))
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert!(!events.iter().any(|e| e.event == "lagged"));
    assert_eq!(events.last().unwrap().json()["truncated"], false);
}

#[test]
fn base64_encoding_carries_every_byte_value_both_ways() {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    use stockade_client::Encoding;

    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    let all: Vec<u8> = (0..=255u8).collect();
    let cat = ExecOptions {
        cmd: vec!["sh".into(), "-c".into(), "cat; cat /dev/null >&2".into()],
        stdin: Some(B64.encode(&all)),
        encoding: Some(Encoding::Base64),
        ..Default::default()
    };

    // JSON answer.
    let r = c.exec(&sb.id, &cat).unwrap();
    assert_eq!(B64.decode(&r.stdout).unwrap(), all);
    assert_eq!(r.stderr, "");

    // SSE: the chunks put together.
    let got: Vec<u8> = c
        .exec_stream(&sb.id, &cat)
        .unwrap()
        .map(Result::unwrap)
        .filter(|e| e.event == "stdout")
        .flat_map(|e| B64.decode(e.json()["data"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(got, all);

    // A background process's output, replayed.
    let pid = c
        .exec_background(&sb.id, &sh("printf '\\377\\376\\000ok'"))
        .unwrap();
    let got: Vec<u8> = c
        .output_as(&sb.id, pid, Encoding::Base64, true)
        .unwrap()
        .map(Result::unwrap)
        .filter(|e| e.event == "stdout")
        .flat_map(|e| B64.decode(e.json()["data"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(got, b"\xff\xfe\x00ok");

    // Text stays the default: invalid bytes become U+FFFD.
    let r = c.exec(&sb.id, &sh("printf 'a\\377b'")).unwrap();
    assert_eq!(r.stdout, "a\u{fffd}b");

    // Bad base64 stdin and an unknown encoding are refused.
    let mut bad = cat.clone();
    bad.stdin = Some("not base64!".into());
    match c.exec(&sb.id, &bad) {
        Err(ClientError::Api {
            status: 400,
            message,
            ..
        }) => assert!(message.contains("stdin is not valid base64"), "{message}"),
        other => panic!("{other:?}"),
    }
    let r = c
        .raw(
            "GET",
            &format!(
                "/v1/sandboxes/{}/processes/{pid}/output?encoding=hex",
                sb.id
            ),
            &[],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.bytes(1 << 20).unwrap()).contains("encoding must be"));
}

#[test]
fn top_refuses_a_sandbox_without_a_pid_namespace_of_its_own() {
    // The fake backend's "init" is the daemon itself, in the host's pid
    // namespace: listing that namespace would list the host's processes.
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let sb = c
        .create(None, Some("tiny"), &BTreeMap::new(), None)
        .unwrap();
    c.exec_background(&sb.id, &sh("exec sleep 30")).unwrap();
    match c.top("tiny") {
        Err(ClientError::Api {
            status, message, ..
        }) => {
            assert_eq!(status, 500);
            assert!(message.contains("no pid namespace of its own"), "{message}");
        }
        other => panic!("listed: {other:?}"),
    }
    match c.top("nosuchname") {
        Err(ClientError::Api { status, .. }) => assert_eq!(status, 404),
        other => panic!("{other:?}"),
    }
    c.destroy(&sb.id).unwrap();
}
