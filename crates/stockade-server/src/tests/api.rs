//! Sandboxes CRUD, request validation and the daemon-wide routes.

use std::collections::BTreeMap;

use serde_json::Value;

use super::harness::{raw_request, shared, TestDaemon};
use stockade_client::{Client, ClientError};

fn api_err(r: Result<impl std::fmt::Debug, ClientError>) -> (u16, String, String) {
    match r {
        Err(ClientError::Api {
            status,
            code,
            message,
        }) => (status, code, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn creates_lists_shows_and_destroys_sandboxes() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let labels = BTreeMap::from([("team".to_string(), "infra".to_string())]);
    let a = c.create(None, Some("alpha"), &labels, Some("30m")).unwrap();
    assert_eq!(a.id.len(), 12);
    assert_eq!(a.state, "running");
    assert_eq!(a.name.as_deref(), Some("alpha"));
    let life = a.expires_at.unwrap() - a.created_at;
    assert!((1799.0..=1801.0).contains(&life), "ttl 30m gives {life}");
    assert_eq!(
        a.policy["limits"]["pids"], 4096,
        "the default policy is stored"
    );
    let b = c.create(None, None, &BTreeMap::new(), None).unwrap();
    // Without ttl the policy's timeout (4h by default) bounds the life.
    assert!((b.expires_at.unwrap() - b.created_at - 4.0 * 3600.0).abs() < 1.0);

    let all = c.list(&[], None).unwrap();
    assert_eq!(all.len(), 2);
    let infra = c.list(&[("team", "infra")], Some("running")).unwrap();
    assert_eq!(
        infra.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        vec![a.id.as_str()]
    );
    assert!(c.list(&[("team", "other")], None).unwrap().is_empty());

    let shown = c.get("alpha").unwrap();
    assert_eq!(shown.id, a.id);
    assert!(shown.usage.is_some() && shown.processes.is_some() && shown.violations.is_some());

    let gone = c.destroy(&a.id).unwrap();
    assert_eq!(gone.state, "destroyed");
    assert!(gone
        .report
        .as_ref()
        .is_some_and(|r| r["id"] == a.id.as_str()));
    // Idempotent; the report stays.
    let again = c.destroy(&a.id).unwrap();
    assert_eq!(again.report, gone.report);
    let shown = c.get(&a.id).unwrap();
    assert_eq!(shown.state, "destroyed");
    assert!(shown.report.is_some() && shown.usage.is_none());
    assert_eq!(c.list(&[], Some("destroyed")).unwrap().len(), 1);
    // The name is free again once its sandbox is gone.
    c.create(None, Some("alpha"), &BTreeMap::new(), None)
        .unwrap();
}

#[test]
fn rejects_a_name_already_used_by_a_running_sandbox() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    c.create(None, Some("dup"), &BTreeMap::new(), None).unwrap();
    let (status, code, msg) = api_err(c.create(None, Some("dup"), &BTreeMap::new(), None));
    assert_eq!((status, code.as_str()), (409, "conflict"));
    assert!(
        msg.contains("\"dup\"") && msg.contains("choose another name"),
        "{msg}"
    );
}

#[test]
fn rejects_bad_create_requests_with_clear_messages() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let post = |body: &str| {
        let r = c
            .raw(
                "POST",
                "/v1/sandboxes",
                &[],
                Some(("application/json", body.as_bytes())),
            )
            .unwrap();
        let status = r.status;
        let v: Value = serde_json::from_slice(&r.bytes(1 << 20).unwrap()).unwrap();
        (
            status,
            v["error"]["code"].as_str().unwrap().to_string(),
            v["error"]["message"].as_str().unwrap().to_string(),
        )
    };
    let (s, code, m) = post(r#"{"nmae": "x"}"#);
    assert_eq!((s, code.as_str()), (400, "invalid_request"));
    assert!(m.contains("unknown field `nmae`"), "{m}");
    let (s, _, m) = post(r#"{"policy": {"limits": {"memroy": "1G"}}}"#);
    assert!(s == 400 && m.contains("memroy"), "{m}");
    let (s, _, m) = post(r#"{"policy": {"limits": {"memory": "1k"}}}"#);
    assert!(s == 400 && m.contains("limits.memory"), "{m}");
    let (s, _, m) = post(r#"{"ttl": "soon"}"#);
    assert!(s == 400 && m.contains("soon"), "{m}");
    let (s, _, m) = post(r#"{"name": "../x"}"#);
    assert!(s == 400 && m.contains("name must be"), "{m}");
    let (s, _, m) = post(r#"{"labels": {"": "x"}}"#);
    assert!(s == 400 && m.contains("label key"), "{m}");
    let (s, _, m) = post("{not json");
    assert!(s == 400 && m.contains("not valid"), "{m}");
    let (s, _, _) = post(r#"[1, 2]"#);
    assert_eq!(s, 400);
    assert!(c.list(&[], None).unwrap().is_empty(), "nothing was created");
}

#[test]
fn answers_unknown_ids_routes_methods_and_params_with_4xx() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let (s, code, m) = api_err(c.get("0123456789ab"));
    assert_eq!((s, code.as_str()), (404, "not_found"));
    assert!(m.contains("GET /v1/sandboxes"), "{m}");
    assert_eq!(api_err(c.destroy("nope")).0, 404);
    assert_eq!(
        api_err(c.exec("nope", &Default::default())).0,
        400,
        "empty cmd is checked first"
    );
    let opts = stockade_client::ExecOptions {
        cmd: vec!["true".into()],
        ..Default::default()
    };
    assert_eq!(api_err(c.exec("nope", &opts)).0, 404);
    assert_eq!(api_err(c.read_file("nope", "/x")).0, 404);
    assert_eq!(api_err(c.events(Some("nope"))).0, 404);
    let r = c.raw("GET", "/v2/whatever", &[], None).unwrap();
    assert_eq!(r.status, 404);
    assert!(String::from_utf8(r.bytes(1 << 20).unwrap())
        .unwrap()
        .contains("route_not_found"));
    let r = c.raw("PATCH", "/v1/sandboxes", &[], None).unwrap();
    assert_eq!(r.status, 405);
    let r = c.raw("GET", "/v1/sandboxes?colour=red", &[], None).unwrap();
    assert_eq!(r.status, 400);
    let r = c
        .raw("GET", "/v1/sandboxes?state=zombie", &[], None)
        .unwrap();
    assert_eq!(r.status, 400);
    let r = c.raw("GET", "/v1/sandboxes?label=%zz", &[], None).unwrap();
    assert_eq!(r.status, 400);
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    let r = c
        .raw(
            "POST",
            &format!("/v1/sandboxes/{}/processes/abc/signal", sb.id),
            &[],
            Some(("application/json", b"{\"signal\": 9}")),
        )
        .unwrap();
    assert_eq!(r.status, 400);
    let r = c
        .raw(
            "POST",
            &format!("/v1/sandboxes/{}/processes/4242/signal", sb.id),
            &[],
            Some(("application/json", b"{\"signal\": 9}")),
        )
        .unwrap();
    assert_eq!(r.status, 404);
    // Garbage on the wire gets an HTTP error, not a crash.
    let (status, _) = raw_request(&d.socket, b"HELLO\r\n\r\n");
    assert!(status == 400 || status == 0, "{status}");
    assert_eq!(c.health().unwrap()["status"], "ok");
}

#[test]
fn refuses_json_bodies_over_the_limit_with_413_but_streams_uploads() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start_with(
        tmp.path(),
        crate::testing::FakeBackend::new(tmp.path().join("roots")),
        |c| {
            c.max_body_bytes = 64 * 1024;
        },
    );
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    let big = vec![b'x'; 1024 * 1024];
    // File uploads stream to the sandbox in pieces: the daemon holds none
    // of it, so only the sandbox's disk limit bounds them.
    c.write_file(&sb.id, "/workspace/big", &big).unwrap();
    assert_eq!(c.read_file(&sb.id, "/workspace/big").unwrap(), big);
    // A JSON request body is read whole, so it is bounded.
    let mut req = format!("POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", big.len()).into_bytes();
    req.extend_from_slice(&big);
    let (status, body) = raw_request(&d.socket, &req);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("smaller body"), "{body}");
    assert_eq!(c.health().unwrap()["status"], "ok");
}

#[test]
fn openapi_document_parses_and_describes_every_route() {
    let _g = shared();
    let doc: Value =
        serde_json::from_str(crate::routes::OPENAPI).expect("docs/openapi.json is JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for (method, path) in crate::ROUTES {
        let op = &doc["paths"][*path][*method];
        assert!(op.is_object(), "docs/openapi.json lacks {method} {path}");
        assert!(
            op["responses"].is_object(),
            "{method} {path} has no responses"
        );
    }
    let n_ops: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| {
            p.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "put", "post", "delete", "patch"].contains(&k.as_str()))
                .count()
        })
        .sum();
    assert_eq!(
        n_ops,
        crate::ROUTES.len(),
        "the document lists routes the router does not serve"
    );

    // And the router really serves every listed route.
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    for (method, path) in crate::ROUTES {
        let target = path
            .replace("{id}", "0123456789ab")
            .replace("{pid}", "1")
            .replace("{ref}", "docker.io/library/busybox:latest");
        let target = if target.ends_with("/files") {
            format!("{target}?path=/x")
        } else {
            target
        };
        if target.contains("events") {
            continue; // streams; covered by the event tests
        }
        let r = c
            .raw(
                &method.to_uppercase(),
                &target,
                &[],
                Some(("application/json", b"{}")),
            )
            .unwrap();
        let status = r.status;
        let body = String::from_utf8_lossy(&r.bytes(1 << 24).unwrap()).into_owned();
        let code = serde_json::from_str::<Value>(&body)
            .ok()
            .map(|v| v["error"]["code"].clone());
        assert!(
            status != 405 && code != Some(Value::from("route_not_found")),
            "{method} {path}: {status} {body}"
        );
    }
    let r = c.raw("GET", "/v1/openapi.json", &[], None).unwrap();
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[test]
fn metrics_are_prometheus_text() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    let opts = stockade_client::ExecOptions {
        cmd: vec!["true".into()],
        ..Default::default()
    };
    c.exec(&sb.id, &opts).unwrap();
    let r = c.raw("GET", "/metrics", &[], None).unwrap();
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = String::from_utf8(r.bytes(1 << 20).unwrap()).unwrap();
    for want in [
        "stockade_sandboxes{state=\"running\"} 1",
        "stockade_sandbox_creates_total 1",
        "stockade_exec_duration_seconds_count 1",
        "stockade_network_bytes_total{direction=\"in\"}",
        "stockade_network_denied_total 0",
        "# TYPE stockade_violations_total counter",
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }
}

#[test]
fn tcp_listener_requires_the_bearer_token() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").unwrap();
    let d = TestDaemon::start_with(
        tmp.path(),
        crate::testing::FakeBackend::new(tmp.path().join("roots")),
        |c| {
            c.listen = Some("127.0.0.1:0".parse().unwrap());
            c.token_file = Some(token_file.clone());
        },
    );
    let addr = d.tcp.expect("tcp bound").to_string();
    let good = Client::tcp(&addr, "s3cret-token-0123456789");
    let sb = good.create(None, None, &BTreeMap::new(), None).unwrap();
    assert_eq!(good.get(&sb.id).unwrap().id, sb.id);
    let bad = Client::tcp(&addr, "wrong-token-0123456789");
    let (s, code, m) = api_err(bad.list(&[], None));
    assert_eq!((s, code.as_str()), (401, "unauthorized"));
    assert!(m.contains("token"), "{m}");
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(out
        .to_ascii_lowercase()
        .contains("www-authenticate: bearer"));
    // The unix socket needs no token.
    assert_eq!(d.client().list(&[], None).unwrap().len(), 1);
}

#[test]
fn refuses_tcp_without_a_token_file() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = crate::ServeConfig {
        socket: tmp.path().join("s.sock"),
        state_dir: tmp.path().join("state"),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fake = std::sync::Arc::new(crate::testing::FakeBackend::new(tmp.path()));
    let err = rt
        .block_on(crate::Server::bind(cfg, fake))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--token-file"), "{err}");
}

#[test]
fn socket_has_mode_0660_and_a_second_daemon_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let cfg = crate::ServeConfig {
        socket: d.socket.clone(),
        state_dir: tmp.path().join("state2"),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fake = std::sync::Arc::new(crate::testing::FakeBackend::new(tmp.path()));
    let err = rt
        .block_on(crate::Server::bind(cfg, fake))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already listens"), "{err}");
    let sock = d.socket.clone();
    d.stop();
    assert!(!sock.exists(), "the socket is removed on shutdown");
}

#[test]
fn destroy_answers_before_the_teardown_and_shutdown_waits_for_it() {
    let _g = shared();
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path());
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    d.fake.hold_teardowns();
    // Answered while the teardown is held: destroy does not wait for it.
    let gone = c.destroy(&sb.id).unwrap();
    assert_eq!(gone.state, "destroyed");
    assert_eq!(d.fake.teardowns_done(), 0);
    assert!(d.fake.alive().is_empty());
    let fake = d.fake.clone();
    let releaser = {
        let fake = fake.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            fake.release_teardowns();
        })
    };
    // Shutdown waits for the teardown under way, then releases the
    // backend's spare resources.
    d.stop();
    assert_eq!(fake.teardowns_done(), 1);
    assert_eq!(fake.shutdowns(), 1);
    releaser.join().unwrap();
}
