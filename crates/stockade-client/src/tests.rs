//! The client against a scripted HTTP peer on a unix socket (or loopback
//! TCP): what it sends, and how it reads the answers the daemon gives.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::thread::JoinHandle;

use super::*;

/// One request as the peer read it.
#[derive(Debug)]
struct Seen {
    head: Vec<String>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one request from `conn`, answers `answer` verbatim, closes.
fn serve_one(conn: impl Read + Write, answer: &[u8]) -> Seen {
    let mut r = BufReader::new(conn);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let mut seen = Seen {
        head,
        body: Vec::new(),
    };
    let len: usize = seen
        .header("content-length")
        .map(|v| v.parse().unwrap())
        .unwrap_or(0);
    seen.body.resize(len, 0);
    r.read_exact(&mut seen.body).unwrap();
    r.get_mut().write_all(answer).unwrap();
    seen
}

/// A peer on a fresh unix socket that answers one request with `answer`.
fn unix_peer(answer: &'static [u8]) -> (tempfile::TempDir, PathBuf, JoinHandle<Seen>) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let t = std::thread::spawn(move || serve_one(l.accept().unwrap().0, answer));
    (dir, sock, t)
}

fn json_answer(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn leak(v: Vec<u8>) -> &'static [u8] {
    Box::leak(v.into_boxed_slice())
}

#[test]
fn get_sends_one_closing_request_and_reads_the_sandbox() {
    let body = r#"{"id":"s1","name":"box","state":"running","labels":{"a":"b"},"created_at":12.5}"#;
    let (_d, sock, peer) = unix_peer(leak(json_answer("200 OK", body)));
    let sb = Client::unix(&sock).get("box one").unwrap();
    assert_eq!(sb.id, "s1");
    assert_eq!(sb.name.as_deref(), Some("box"));
    assert_eq!(sb.labels.get("a").map(String::as_str), Some("b"));
    assert_eq!(sb.report, None);
    let seen = peer.join().unwrap();
    assert_eq!(seen.head[0], "GET /v1/sandboxes/box%20one HTTP/1.1");
    assert_eq!(seen.header("connection"), Some("close"));
    assert_eq!(seen.header("host"), Some("localhost"));
    assert_eq!(seen.header("authorization"), None);
}

#[test]
fn an_error_status_becomes_an_api_error_with_the_daemons_message() {
    let body = r#"{"error":{"code":"not_found","message":"no sandbox named x"}}"#;
    let (_d, sock, peer) = unix_peer(leak(json_answer("404 Not Found", body)));
    match Client::unix(&sock).get("x") {
        Err(ClientError::Api {
            status,
            code,
            message,
        }) => {
            assert_eq!(status, 404);
            assert_eq!(code, "not_found");
            assert_eq!(message, "no sandbox named x");
        }
        other => panic!("{other:?}"),
    }
    peer.join().unwrap();
}

#[test]
fn an_error_without_json_keeps_the_status_and_text() {
    let (_d, sock, peer) = unix_peer(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 4\r\n\r\nnope");
    let err = Client::unix(&sock).health().unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 502, code, .. } if code == "unknown"),
        "{err:?}"
    );
    assert!(err.to_string().contains("HTTP 502: nope"), "{err}");
    peer.join().unwrap();
}

#[test]
fn exec_posts_the_options_as_json() {
    let answer = r#"{"pid":7,"exit_code":0,"signal":null,"outcome":"exited","stdout":"hi\n","stderr":"","truncated":false}"#;
    let (_d, sock, peer) = unix_peer(leak(json_answer("200 OK", answer)));
    let opts = ExecOptions {
        cmd: vec!["echo".into(), "hi".into()],
        timeout: Some("5s".into()),
        ..Default::default()
    };
    let r = Client::unix(&sock).exec("s1", &opts).unwrap();
    assert_eq!(
        (r.pid, r.exit_code, r.outcome.as_str()),
        (7, Some(0), "exited")
    );
    assert_eq!(r.stdout, "hi\n");
    let seen = peer.join().unwrap();
    assert_eq!(seen.head[0], "POST /v1/sandboxes/s1/exec HTTP/1.1");
    assert_eq!(seen.header("content-type"), Some("application/json"));
    let sent: Value = serde_json::from_slice(&seen.body).unwrap();
    // Empty and unset options are left out; `background` is always sent.
    assert_eq!(
        sent,
        json!({"cmd": ["echo", "hi"], "timeout": "5s", "background": false})
    );
}

#[test]
fn chunked_answers_are_decoded() {
    let (_d, sock, peer) = unix_peer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\n",
    );
    let r = Client::unix(&sock).raw("GET", "/v1/x", &[], None).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.bytes(100).unwrap(), b"hello, world");
    peer.join().unwrap();
}

#[test]
fn a_bad_chunk_size_is_an_error_not_data() {
    let (_d, sock, peer) =
        unix_peer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n");
    let r = Client::unix(&sock).raw("GET", "/", &[], None).unwrap();
    assert!(r.bytes(100).is_err());
    peer.join().unwrap();
}

#[test]
fn an_answer_over_the_limit_is_refused() {
    let (_d, sock, peer) = unix_peer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789");
    let r = Client::unix(&sock).raw("GET", "/", &[], None).unwrap();
    assert!(matches!(r.bytes(9), Err(ClientError::Protocol(_))));
    peer.join().unwrap();
}

#[test]
fn a_garbage_status_line_is_a_protocol_error() {
    let (_d, sock, peer) = unix_peer(b"SMTP ready\r\n\r\n");
    let err = Client::unix(&sock).health().unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    peer.join().unwrap();
}

#[test]
fn server_sent_events_are_split_named_and_joined() {
    let (_d, sock, peer) = unix_peer(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n\
          : keep-alive\n\n\
          event: start\ndata: {\"pid\":3}\n\n\
          data: one\ndata: two\n\n\
          event: exit\r\ndata:{\"exit_code\":0}\r\n\r\n",
    );
    let events: Vec<SseEvent> = Client::unix(&sock)
        .events(Some("s1"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0].event, "start");
    assert_eq!(events[0].json()["pid"], 3);
    assert_eq!(events[1].event, "message");
    assert_eq!(events[1].data, "one\ntwo");
    assert_eq!(events[1].json(), Value::Null);
    assert_eq!(events[2].event, "exit");
    assert_eq!(events[2].json()["exit_code"], 0);
    assert_eq!(
        peer.join().unwrap().head[0],
        "GET /v1/sandboxes/s1/events HTTP/1.1"
    );
}

#[test]
fn tcp_requests_carry_the_bearer_token() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let peer = std::thread::spawn(move || {
        serve_one(
            l.accept().unwrap().0,
            &json_answer("200 OK", "{\"ok\":true}"),
        )
    });
    let v = Client::tcp(addr.clone(), "s3cret").health().unwrap();
    assert_eq!(v["ok"], true);
    let seen = peer.join().unwrap();
    assert_eq!(seen.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(seen.header("host"), Some(addr.as_str()));
}

#[test]
fn nobody_listening_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("absent.sock");
    let err = Client::unix(&sock).health().unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("absent.sock"), "{err}");
}

#[test]
fn query_values_are_percent_encoded() {
    assert_eq!(wire::encode("a-b_c.d~e/f"), "a-b_c.d~e/f");
    assert_eq!(wire::encode("k=v w&x"), "k%3Dv%20w%26x");
    assert_eq!(wire::encode("é"), "%C3%A9");
}
