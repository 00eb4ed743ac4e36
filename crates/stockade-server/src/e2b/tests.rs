//! In-process tests of the E2B listener on the fake backend (no root):
//! the wire contract as the SDK sees it, spoken by hand over HTTP/1.1.
//! The official SDK itself is exercised against a real daemon by
//! `sdk/e2b-compat/tests`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::testing::FakeBackend;
use crate::{ServeConfig, Server};

struct Listener {
    addr: SocketAddr,
    key: String,
    socket: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(dir: &std::path::Path) -> Listener {
    std::fs::write(dir.join("token"), "0123456789abcdef0123456789abcdef\n").unwrap();
    let cfg = ServeConfig {
        socket: dir.join("s.sock"),
        state_dir: dir.join("state"),
        token_file: Some(dir.join("token")),
        e2b: Some(super::E2bConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            templates: None,
        }),
        ..ServeConfig::default()
    };
    let socket = cfg.socket.clone();
    let backend: Arc<dyn stockade_core::backend::Backend> =
        Arc::new(FakeBackend::new(dir.join("roots")));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = Server::bind(cfg, backend).await.expect("bind");
            let _ = ready_tx.send(server.e2b_addr().expect("e2b listener"));
            let _ = server
                .run(async move {
                    let _ = stop_rx.await;
                })
                .await;
        })
    });
    let addr = ready_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let key = std::fs::read_to_string(dir.join("state").join(super::keys::KEY_FILE))
        .unwrap()
        .trim()
        .to_string();
    Listener {
        addr,
        key,
        socket,
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

/// One HTTP/1.1 request; returns status, headers (lowercased) and body.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let hs: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = out[split + 4..].to_vec();
    if hs
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    {
        body = dechunk(&body);
    }
    (status, hs, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[line_end + 2..line_end + 2 + n]);
        b = &b[line_end + 2 + n + 2..];
    }
}

fn api(l: &Listener, method: &str, path: &str, body: Value) -> (u16, Vec<(String, String)>, Value) {
    let b = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let (s, h, out) = request(
        l.addr,
        method,
        path,
        &[("X-API-KEY", &l.key), ("Content-Type", "application/json")],
        &b,
    );
    let v = serde_json::from_slice(&out).unwrap_or(Value::Null);
    (s, h, v)
}

fn frames(mut b: &[u8]) -> Vec<(u8, Value)> {
    let mut out = Vec::new();
    while b.len() >= 5 {
        let n = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        out.push((b[0], serde_json::from_slice(&b[5..5 + n]).unwrap()));
        b = &b[5 + n..];
    }
    out
}

fn envelope(v: &Value) -> Vec<u8> {
    let data = v.to_string().into_bytes();
    let mut out = vec![0];
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&data);
    out
}

#[test]
fn control_api_needs_its_key_and_manages_daemon_sandboxes() {
    let _g = crate::tests::harness::shared();
    let tmp = tempfile::tempdir().unwrap();
    let l = start(tmp.path());
    assert!(l.key.starts_with("e2b_"));

    let (s, _, body) = request(l.addr, "GET", "/v2/sandboxes", &[], b"");
    assert_eq!(s, 401);
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["code"], 401);
    let (s, _, _) = request(
        l.addr,
        "GET",
        "/v2/sandboxes",
        &[("X-API-KEY", "e2b_0000")],
        b"",
    );
    assert_eq!(s, 401);

    let mut ids = Vec::new();
    for i in 0..3 {
        let (s, _, v) = api(
            &l,
            "POST",
            "/v2/sandboxes",
            json!({"templateID": "base", "timeout": 300, "metadata": {"n": i.to_string(), "team": "t"}}),
        );
        assert_eq!(s, 201, "{v}");
        for f in [
            "templateID",
            "sandboxID",
            "clientID",
            "envdVersion",
            "envdAccessToken",
        ] {
            assert!(v.get(f).is_some(), "{f} missing in {v}");
        }
        let id = v["sandboxID"].as_str().unwrap().to_string();
        assert!(id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        ids.push(id);
    }
    // They are the daemon's own sandboxes.
    let listed = stockade_client::Client::unix(&l.socket)
        .list(&[], None)
        .unwrap();
    for id in &ids {
        assert!(
            listed.iter().any(|s| &s.id == id),
            "{id} not in the daemon's list"
        );
    }

    let (s, _, v) = api(&l, "GET", &format!("/sandboxes/{}", ids[1]), Value::Null);
    assert_eq!(s, 200);
    assert_eq!(v["metadata"]["n"], "1");
    assert_eq!(v["state"], "running");

    // Filters and pages.
    let (_, _, v) = api(&l, "GET", "/v2/sandboxes?metadata=n%3D2", Value::Null);
    let got: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["sandboxID"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2].as_str()]);
    let (_, h, v) = api(
        &l,
        "GET",
        "/v2/sandboxes?limit=2&metadata=team%3Dt",
        Value::Null,
    );
    assert_eq!(v.as_array().unwrap().len(), 2);
    let next = h
        .iter()
        .find(|(k, _)| k == "x-next-token")
        .map(|x| x.1.clone())
        .unwrap();
    let (_, h, v) = api(
        &l,
        "GET",
        &format!("/v2/sandboxes?limit=2&metadata=team%3Dt&nextToken={next}"),
        Value::Null,
    );
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert!(!h.iter().any(|(k, _)| k == "x-next-token"));

    // Timeouts: within the template's limit only.
    let (s, _, _) = api(
        &l,
        "POST",
        &format!("/sandboxes/{}/timeout", ids[0]),
        json!({"timeout": 600}),
    );
    assert_eq!(s, 204);
    let (s, _, v) = api(
        &l,
        "POST",
        &format!("/sandboxes/{}/timeout", ids[0]),
        json!({"timeout": 999_999_999u64}),
    );
    assert_eq!(s, 400, "{v}");

    // Pause, then connect resumes.
    let id0 = ids[0].as_str();
    let (s, _, _) = api(&l, "POST", &format!("/sandboxes/{id0}/pause"), Value::Null);
    assert_eq!(s, 204);
    let (s, _, _) = api(&l, "POST", &format!("/sandboxes/{id0}/pause"), Value::Null);
    assert_eq!(s, 409);
    let (_, _, v) = api(&l, "GET", &format!("/sandboxes/{id0}"), Value::Null);
    assert_eq!(v["state"], "paused");
    let (_, _, v) = api(&l, "GET", "/v2/sandboxes?state=paused", Value::Null);
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (s, _, _) = request(l.addr, "GET", "/health", &[("E2b-Sandbox-Id", id0)], b"");
    assert_eq!(s, 502, "a paused sandbox's envd is not reachable");
    let (s, _, v) = api(
        &l,
        "POST",
        &format!("/sandboxes/{id0}/connect"),
        json!({"timeout": 60}),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["sandboxID"], id0);
    let (s, _, _) = api(
        &l,
        "POST",
        &format!("/sandboxes/{id0}/connect"),
        json!({"timeout": 60}),
    );
    assert_eq!(s, 200, "connecting to a running sandbox");
    let (s, _, _) = request(l.addr, "GET", "/health", &[("E2b-Sandbox-Id", id0)], b"");
    assert_eq!(s, 204);

    // Unknown template, unknown sandbox.
    let (s, _, _) = api(&l, "POST", "/sandboxes", json!({"templateID": "nope"}));
    assert_eq!(s, 404);
    let (s, _, _) = api(&l, "GET", "/sandboxes/nosuch", Value::Null);
    assert_eq!(s, 404);

    for id in &ids {
        let (s, _, _) = api(&l, "DELETE", &format!("/sandboxes/{id}"), Value::Null);
        assert_eq!(s, 204);
        let (s, _, _) = api(&l, "DELETE", &format!("/sandboxes/{id}"), Value::Null);
        assert_eq!(s, 404);
    }
}

#[test]
fn envd_runs_a_command_over_connect_and_checks_the_token() {
    let _g = crate::tests::harness::shared();
    let tmp = tempfile::tempdir().unwrap();
    let l = start(tmp.path());
    let (_, _, v) = api(&l, "POST", "/sandboxes", json!({"templateID": "base"}));
    let id = v["sandboxID"].as_str().unwrap().to_string();
    let token = v["envdAccessToken"].as_str().unwrap().to_string();
    let start = envelope(
        &json!({"process": {"cmd": "/bin/sh", "args": ["-c", "echo hi; echo oops >&2; exit 3"]}}),
    );
    let hdrs = |tok: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("E2b-Sandbox-Id", id.clone()),
            ("X-Access-Token", tok.to_string()),
            ("Content-Type", "application/connect+json".into()),
        ]
    };
    let hr = [
        ("E2b-Sandbox-Id", id.as_str()),
        ("X-Access-Token", token.as_str()),
        ("Content-Type", "application/connect+json"),
    ];
    let (s, _, body) = request(l.addr, "POST", "/process.Process/Start", &hr, &start);
    assert_eq!(s, 200);
    let fr = frames(&body);
    assert!(fr[0].1["event"]["start"]["pid"].as_i64().unwrap() > 0);
    let mut out = String::new();
    let mut err = String::new();
    for (_, f) in &fr {
        if let Some(d) = f["event"]["data"]["stdout"].as_str() {
            out.push_str(&String::from_utf8(super::connect::b64_decode(d).unwrap()).unwrap());
        }
        if let Some(d) = f["event"]["data"]["stderr"].as_str() {
            err.push_str(&String::from_utf8(super::connect::b64_decode(d).unwrap()).unwrap());
        }
    }
    assert_eq!((out.as_str(), err.as_str()), ("hi\n", "oops\n"));
    let end = &fr[fr.len() - 2].1["event"]["end"];
    assert_eq!(end["exitCode"], 3);
    assert_eq!(fr.last().unwrap(), &(2u8, json!({})));

    // A wrong token is refused before anything runs.
    let h = hdrs("0000");
    let hr: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (s, _, _) = request(l.addr, "POST", "/process.Process/Start", &hr, &start);
    assert_eq!(s, 401);
    // So is an unknown sandbox, the way E2B's proxy says it.
    let (s, _, body) = request(
        l.addr,
        "POST",
        "/process.Process/Start",
        &[
            ("E2b-Sandbox-Id", "nosuch"),
            ("X-Access-Token", token.as_str()),
            ("Content-Type", "application/connect+json"),
        ],
        &start,
    );
    assert_eq!(s, 502);
    assert!(String::from_utf8_lossy(&body).contains("was not found"));
}
