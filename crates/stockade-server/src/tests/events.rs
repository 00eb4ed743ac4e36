//! Events over SSE and the webhook, expiry, and sandboxes that die.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use stockade_core::backend::SandboxEvent;
use stockade_core::{Violation, ViolationKind};

use super::harness::{eventually, shared, TestDaemon};
use stockade_client::{ExecOptions, SseEvent, SseStream};

/// Reads events until one of type `kind` arrives.
fn until(stream: &mut SseStream, kind: &str) -> Vec<SseEvent> {
    let mut seen = Vec::new();
    for ev in stream.by_ref() {
        let ev = ev.unwrap();
        let done = ev.event == kind;
        seen.push(ev);
        if done {
            return seen;
        }
    }
    panic!("the stream ended before a {kind} event: {seen:?}");
}

#[test]
fn events_are_streamed_per_sandbox_and_for_all() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let mut all = c.events(None).unwrap();
    let sb = c.create(None, Some("ev"), &BTreeMap::new(), None).unwrap();
    let other = c.create(None, None, &BTreeMap::new(), None).unwrap();
    let mut mine = c.events(Some("ev")).unwrap();
    let created = until(&mut all, "created");
    let ev = created.last().unwrap().json();
    assert_eq!(
        (
            ev["sandbox_id"].as_str(),
            ev["type"].as_str(),
            ev["name"].as_str()
        ),
        (Some(sb.id.as_str()), Some("created"), Some("ev"))
    );
    assert!(ev["time"].as_f64().unwrap() > 1_600_000_000.0);

    c.exec(
        &other.id,
        &ExecOptions {
            cmd: vec!["true".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let r = c
        .exec(
            &sb.id,
            &ExecOptions {
                cmd: vec!["true".into()],
                ..Default::default()
            },
        )
        .unwrap();
    d.fake.inject(
        &sb.id,
        SandboxEvent::Violation(Violation {
            kind: ViolationKind::PidsLimit,
            limit: "10".into(),
            observed: "10 processes".into(),
            at: 1.0,
        }),
    );
    c.destroy(&sb.id).unwrap();
    let seen = until(&mut mine, "destroyed");
    let kinds: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        vec!["exec-started", "exec-exited", "violation", "destroyed"]
    );
    assert!(
        seen.iter()
            .all(|e| e.json()["sandbox_id"] == sb.id.as_str()),
        "only this sandbox's events"
    );
    assert_eq!(seen[0].json()["pid"], r.pid);
    assert_eq!(seen[1].json()["exit_code"], 0);
    assert_eq!(seen[2].json()["kind"], "pids-limit");
    assert_eq!(
        seen[3].json()["id"],
        sb.id.as_str(),
        "destroyed carries the report"
    );
    let everything = until(&mut all, "destroyed");
    assert!(everything
        .iter()
        .any(|e| e.json()["sandbox_id"] == other.id.as_str()));
    let metrics = String::from_utf8(
        c.raw("GET", "/metrics", &[], None)
            .unwrap()
            .bytes(1 << 20)
            .unwrap(),
    )
    .unwrap();
    assert!(
        metrics.contains("stockade_violations_total{kind=\"pids-limit\"} 1"),
        "{metrics}"
    );
    // The stream of a destroyed sandbox can still be opened (it is quiet).
    assert!(c.events(Some(&sb.id)).is_ok());
}

#[test]
fn ttl_expires_the_sandbox_with_an_event() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let mut all = c.events(None).unwrap();
    let sb = c.create(None, None, &BTreeMap::new(), Some("1s")).unwrap();
    let seen = until(&mut all, "destroyed");
    let kinds: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, vec!["created", "expired", "destroyed"]);
    let row = eventually(5, || {
        Some(c.get(&sb.id).unwrap()).filter(|r| r.state != "running")
    });
    assert_eq!(row.state, "expired");
    assert!(row.report.is_some());
    assert!(row.ended_at.unwrap() - row.created_at >= 1.0);
}

#[test]
fn a_supervisor_that_dies_marks_its_sandbox_dead() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    d.fake.kill_supervisor(&sb.id);
    let row = eventually(5, || {
        Some(c.get(&sb.id).unwrap()).filter(|r| r.state != "running")
    });
    assert_eq!(row.state, "dead");
    assert_eq!(
        row.reason.as_deref(),
        Some(crate::lifecycle::DIED_UNEXPECTEDLY)
    );
    assert!(row.report.is_some(), "the leftover report is kept");
}

#[test]
fn events_are_posted_to_the_webhook() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<(String, serde_json::Value)>();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(3) {
            let mut s = conn.unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut request_line = String::new();
            r.read_line(&mut request_line).unwrap();
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .unwrap();
            let _ = tx.send((request_line, serde_json::from_slice(&body).unwrap()));
        }
    });
    let d = TestDaemon::start_with(
        tmp.path(),
        crate::testing::FakeBackend::new(tmp.path().join("roots")),
        |c| {
            c.webhook = Some(url.clone());
        },
    );
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    c.destroy(&sb.id).unwrap();
    let got: Vec<(String, serde_json::Value)> = (0..2)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    assert!(got[0].0.starts_with("POST /hook HTTP/1.1"));
    assert_eq!(got[0].1["type"], "created");
    assert_eq!(got[1].1["type"], "destroyed");
    assert!(got.iter().all(|(_, v)| v["sandbox_id"] == sb.id.as_str()));
}
