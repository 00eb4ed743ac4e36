//! The client against a fake registry on 127.0.0.1 (plain HTTP: every
//! test also exercises the loopback HTTPS → HTTP fallback).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use base64::Engine as _;

use super::*;
use crate::testreg::{FakeRegistry, Req, Resp};

const MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;

fn reference(host: &str, rest: &str) -> Reference {
    Reference::parse(&format!("{host}/{rest}")).unwrap()
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// A registry whose repository `app` needs a bearer token from its own
/// `/token`; the token server wants `creds` when given, and counts its
/// calls.
fn bearer_registry(
    creds: Option<(&'static str, &'static str)>,
    tokens: Arc<AtomicU32>,
) -> FakeRegistry {
    FakeRegistry::start(move |req: &Req| {
        let host = req.header("host").unwrap_or("").to_string();
        if req.path.starts_with("/token") {
            tokens.fetch_add(1, Ordering::SeqCst);
            if let Some((u, p)) = creds {
                if req.header("authorization") != Some(basic(u, p).as_str()) {
                    return Resp::new(401);
                }
            }
            return Resp::new(200).body(r#"{"token":"T1","expires_in":300}"#);
        }
        if req.header("authorization") != Some("Bearer T1") {
            return Resp::new(401).header(
                "WWW-Authenticate",
                &format!(
                    r#"Bearer realm="http://{host}/token",service="fake",scope="repository:app:pull""#
                ),
            );
        }
        match req.path.as_str() {
            "/v2/app/manifests/v1" => Resp::new(200)
                .header("Content-Type", manifest::OCI_MANIFEST)
                .header("Docker-Content-Digest", &Digest::of(MANIFEST).to_string())
                .body(MANIFEST),
            p if p.starts_with("/v2/app/blobs/") => Resp::new(200).body("blob-bytes"),
            _ => Resp::new(404),
        }
    })
}

#[test]
fn anonymous_bearer_token_flow_caches_the_token() {
    let tokens = Arc::new(AtomicU32::new(0));
    let reg = bearer_registry(None, tokens.clone());
    let mut c = Client::new(&PullOptions::default()).unwrap();
    let r = reference(&reg.host(), "app:v1");
    let m = c.manifest(&r, "v1").unwrap();
    assert_eq!(m.bytes, MANIFEST);
    assert_eq!(m.digest, Digest::of(MANIFEST));
    assert_eq!(m.media_type.as_deref(), Some(manifest::OCI_MANIFEST));
    let mut blob = c.blob(&r, &Digest::of(b"blob-bytes")).unwrap();
    let mut got = Vec::new();
    blob.reader.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"blob-bytes");
    assert_eq!(blob.size, Some(10));
    // One token for both requests of the scope.
    assert_eq!(tokens.load(Ordering::SeqCst), 1);
    let reqs = reg.requests.lock().unwrap().clone();
    let token_req = reqs.iter().find(|r| r.path.starts_with("/token")).unwrap();
    assert!(
        token_req.path.contains("scope=repository%3Aapp%3Apull"),
        "{}",
        token_req.path
    );
    assert!(
        token_req.path.contains("service=fake"),
        "{}",
        token_req.path
    );
    assert_eq!(token_req.header("authorization"), None);
    let manifest_req = reqs
        .iter()
        .rfind(|r| r.path.contains("/manifests/"))
        .unwrap();
    assert!(manifest_req
        .header("accept")
        .unwrap()
        .contains(manifest::OCI_INDEX));
    // HTTPS was tried once, then the host is known to speak plain HTTP.
    assert_eq!(*reg.not_http.lock().unwrap(), 1);
}

#[test]
fn bearer_token_with_credentials_and_wrong_ones() {
    let tokens = Arc::new(AtomicU32::new(0));
    let reg = bearer_registry(Some(("alice", "s3cret")), tokens);
    let r = reference(&reg.host(), "app:v1");

    let good = PullOptions {
        creds: Some(("alice".into(), "s3cret".into())),
        ..PullOptions::default()
    };
    Client::new(&good).unwrap().manifest(&r, "v1").unwrap();
    let token_req = reg
        .requests
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.path.starts_with("/token"))
        .cloned()
        .unwrap();
    assert_eq!(
        token_req.header("authorization"),
        Some(basic("alice", "s3cret").as_str())
    );

    let bad = PullOptions {
        creds: Some(("alice".into(), "wrong".into())),
        ..PullOptions::default()
    };
    let e = Client::new(&bad).unwrap().manifest(&r, "v1").unwrap_err();
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e}");
    assert!(e.to_string().contains("check --creds"), "{e}");

    let e = Client::new(&PullOptions::default())
        .unwrap()
        .manifest(&r, "v1")
        .unwrap_err();
    assert!(
        matches!(e, PullError::NeedsCredentials { .. }) && e.to_string().contains("give --creds"),
        "{e}"
    );
}

fn basic_registry() -> FakeRegistry {
    FakeRegistry::start(|req: &Req| {
        if req.header("authorization") != Some(basic("bob", "pw").as_str()) {
            return Resp::new(401).header("WWW-Authenticate", r#"Basic realm="fake""#);
        }
        if req.path == "/v2/team/app/manifests/v1" {
            Resp::new(200).body(MANIFEST)
        } else {
            Resp::new(404)
        }
    })
}

#[test]
fn basic_auth_from_flag_and_auth_file() {
    let reg = basic_registry();
    let r = reference(&reg.host(), "team/app:v1");
    let e = Client::new(&PullOptions::default())
        .unwrap()
        .manifest(&r, "v1")
        .unwrap_err();
    assert!(
        matches!(e, PullError::NeedsCredentials { .. }) && e.to_string().contains("give --creds"),
        "{e}"
    );

    let flag = PullOptions {
        creds: Some(("bob".into(), "pw".into())),
        ..PullOptions::default()
    };
    assert_eq!(
        Client::new(&flag)
            .unwrap()
            .manifest(&r, "v1")
            .unwrap()
            .bytes,
        MANIFEST
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.json");
    let write = |user: &str, pass: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        std::fs::write(
            &file,
            format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host()),
        )
        .unwrap();
    };
    let from_file = PullOptions {
        auth_files: vec![dir.path().join("missing.json"), file.clone()],
        ..PullOptions::default()
    };
    write("bob", "pw");
    assert_eq!(
        Client::new(&from_file)
            .unwrap()
            .manifest(&r, "v1")
            .unwrap()
            .bytes,
        MANIFEST
    );
    write("bob", "nope");
    let e = Client::new(&from_file)
        .unwrap()
        .manifest(&r, "v1")
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, PullError::Unauthorized { .. }), "{msg}");
    assert!(
        msg.contains("auth.json") && msg.contains(&reg.host()),
        "{msg}"
    );
}

#[test]
fn missing_manifest_is_not_found() {
    let tokens = Arc::new(AtomicU32::new(0));
    let reg = bearer_registry(None, tokens);
    let r = reference(&reg.host(), "app:nope");
    let e = Client::new(&PullOptions::default())
        .unwrap()
        .manifest(&r, "nope")
        .unwrap_err();
    assert!(
        matches!(&e, PullError::NotFound(n) if n == &r.canonical()),
        "{e}"
    );
}

#[test]
fn blob_redirect_is_followed_without_the_registry_token() {
    let reg = FakeRegistry::start(|req: &Req| {
        let host = req.header("host").unwrap_or("").to_string();
        if let Some(rest) = req.path.strip_prefix("/storage/") {
            return Resp::new(200).body(format!("stored:{rest}"));
        }
        if req.header("authorization") != Some("Bearer T1") {
            if req.path.starts_with("/token") {
                return Resp::new(200).body(r#"{"access_token":"T1"}"#);
            }
            return Resp::new(401).header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="http://{host}/token",service="fake""#),
            );
        }
        match req.path.strip_prefix("/v2/app/blobs/") {
            Some(d) => Resp::new(307).header("Location", &format!("http://{host}/storage/{d}")),
            None => Resp::new(404),
        }
    });
    let r = reference(&reg.host(), "app:v1");
    let d = Digest::of(b"x");
    let mut blob = Client::new(&PullOptions::default())
        .unwrap()
        .blob(&r, &d)
        .unwrap();
    let mut got = String::new();
    blob.reader.read_to_string(&mut got).unwrap();
    assert_eq!(got, format!("stored:{d}"));
    let reqs = reg.requests.lock().unwrap().clone();
    let storage = reqs
        .iter()
        .find(|r| r.path.starts_with("/storage/"))
        .unwrap();
    assert_eq!(storage.header("authorization"), None);
    // The registry's own request carried the token.
    assert!(reqs
        .iter()
        .any(|r| r.path.starts_with("/v2/app/blobs/")
            && r.header("authorization") == Some("Bearer T1")));
}

#[test]
fn truncated_blob_is_an_error() {
    let reg = FakeRegistry::start(|_req: &Req| Resp {
        status: 200,
        body: vec![7u8; 500],
        lie_length: Some(1000),
        ..Resp::default()
    });
    let r = reference(&reg.host(), "app:v1");
    let mut blob = Client::new(&PullOptions::default())
        .unwrap()
        .blob(&r, &Digest::of(b"x"))
        .unwrap();
    assert_eq!(blob.size, Some(1000));
    let mut got = Vec::new();
    let res = blob.reader.read_to_end(&mut got);
    assert!(
        res.is_err(),
        "a short body read as complete: {} bytes",
        got.len()
    );
}

#[test]
fn manifest_digest_mismatches_are_rejected() {
    let other = Digest::of(b"something else");
    let reg = FakeRegistry::start(move |req: &Req| match req.path.as_str() {
        "/v2/app/manifests/lying" => Resp::new(200)
            .header("Docker-Content-Digest", &other.to_string())
            .body(MANIFEST),
        _ => Resp::new(200).body(MANIFEST),
    });
    let mut c = Client::new(&PullOptions::default()).unwrap();
    let r = reference(&reg.host(), "app:lying");
    let e = c.manifest(&r, "lying").unwrap_err();
    assert!(matches!(e, PullError::DigestMismatch { .. }), "{e}");
    // By digest: the bytes must hash to it.
    let want = Digest::of(b"the manifest I asked for");
    let r = reference(&reg.host(), &format!("app@{want}"));
    let e = c.manifest(&r, &want.to_string()).unwrap_err();
    assert!(
        matches!(&e, PullError::DigestMismatch { expected, .. } if expected == &want),
        "{e}"
    );
    // And the honest answer passes.
    let good = Digest::of(MANIFEST);
    let r = reference(&reg.host(), &format!("app@{good}"));
    assert_eq!(c.manifest(&r, &good.to_string()).unwrap().digest, good);
}

#[test]
fn mirrors_are_tried_first_then_the_registry() {
    let upstream = FakeRegistry::start(|req: &Req| match req.path.as_str() {
        "/v2/app/manifests/v1" | "/v2/app/manifests/v2" => Resp::new(200).body(MANIFEST),
        _ => Resp::new(404),
    });
    let mirror = FakeRegistry::start(|req: &Req| match req.path.as_str() {
        "/v2/cache/app/manifests/v1" => Resp::new(200).body(MANIFEST),
        _ => Resp::new(404),
    });
    let opts = PullOptions {
        mirrors: BTreeMap::from([(
            upstream.host(),
            vec![format!("http://{}/cache", mirror.host())],
        )]),
        ..PullOptions::default()
    };
    let mut c = Client::new(&opts).unwrap();
    let r = reference(&upstream.host(), "app:v1");
    c.manifest(&r, "v1").unwrap();
    assert_eq!(mirror.paths(), vec!["/v2/cache/app/manifests/v1"]);
    assert!(upstream.paths().is_empty(), "{:?}", upstream.paths());
    // Not on the mirror: the registry answers.
    c.manifest(&r, "v2").unwrap();
    assert_eq!(mirror.paths().len(), 2);
    assert_eq!(upstream.paths(), vec!["/v2/app/manifests/v2"]);
    // Nowhere: the registry's own answer is the error.
    let e = c.manifest(&r, "v3").unwrap_err();
    assert!(matches!(e, PullError::NotFound(_)), "{e}");
}

#[test]
fn unreachable_registry_is_named() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let host = format!("127.0.0.1:{port}");
    let r = reference(&host, "app:v1");
    let e = Client::new(&PullOptions::default())
        .unwrap()
        .manifest(&r, "v1")
        .unwrap_err();
    assert!(matches!(e, PullError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains(&host), "{e}");
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn docker_hub_goes_to_its_api_host_and_auth_key() {
    let c = Client::new(&PullOptions::default()).unwrap();
    let eps = c.endpoints(&Reference::parse("python").unwrap());
    assert_eq!(
        eps,
        vec![Endpoint {
            host: "registry-1.docker.io".into(),
            prefix: String::new(),
            creds_key: "docker.io".into(),
        }]
    );
}
