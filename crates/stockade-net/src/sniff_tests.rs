use super::*;

/// A ClientHello captured from `curl https://sni.example.test/` (OpenSSL 3).
const CURL_HELLO: &[u8] = include_bytes!("testdata/clienthello-curl-sni.example.test.bin");

#[test]
fn finds_sni_in_a_captured_client_hello() {
    assert_eq!(sniff(CURL_HELLO), Sniffed::Name("sni.example.test".into()));
}

#[test]
fn waits_for_the_whole_client_hello() {
    for cut in [1, 4, 5, 100, CURL_HELLO.len() - 1] {
        assert_eq!(sniff(&CURL_HELLO[..cut]), Sniffed::NeedMore, "cut at {cut}");
    }
}

#[test]
fn reassembles_a_client_hello_split_across_records() {
    let body = &CURL_HELLO[5..];
    let (a, b) = body.split_at(40);
    let mut split = Vec::new();
    for part in [a, b] {
        split.extend_from_slice(&[0x16, 0x03, 0x01]);
        split.extend_from_slice(&(part.len() as u16).to_be_bytes());
        split.extend_from_slice(part);
    }
    assert_eq!(sniff(&split), Sniffed::Name("sni.example.test".into()));
}

#[test]
fn refuses_a_client_hello_whose_lengths_lie() {
    let mut bad = CURL_HELLO.to_vec();
    // Make the handshake length shorter than its contents: the extension
    // block then runs past the end of the message.
    bad[8] = bad[8].wrapping_sub(20);
    assert_eq!(sniff(&bad), Sniffed::Malformed);
    assert_eq!(sniff(&[0x16, 0x03, 0x01, 0, 0]), Sniffed::Malformed);
    assert_eq!(
        sniff(&[0x16, 0x09, 0x01, 0, 4, 1, 0, 0, 0]),
        Sniffed::Malformed
    );
}

#[test]
fn never_panics_on_truncated_or_mutated_hellos() {
    for i in 0..CURL_HELLO.len() {
        for v in [0x00, 0xff, 0x7f] {
            let mut m = CURL_HELLO.to_vec();
            m[i] = v;
            let _ = sniff(&m);
            let _ = sniff(&m[..i]);
        }
    }
}

#[test]
fn finds_the_http_host_without_its_port() {
    let req = b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHOST: Good.Test:8080\r\n\r\n";
    assert_eq!(sniff(req), Sniffed::Name("good.test".into()));
    let req = b"POST /x HTTP/1.1\r\nHost: [::1]:80\r\n\r\nbody";
    assert_eq!(sniff(req), Sniffed::Name("::1".into()));
    let req = b"GET / HTTP/1.1\r\nHost: 203.0.113.10\r\n\r\n";
    assert_eq!(sniff(req), Sniffed::Name("203.0.113.10".into()));
}

#[test]
fn http_waits_for_the_header_block_and_refuses_ambiguity() {
    assert_eq!(sniff(b"GE"), Sniffed::NeedMore);
    assert_eq!(
        sniff(b"GET / HTTP/1.1\r\nHost: a.test\r\n"),
        Sniffed::NeedMore
    );
    let two = b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n";
    assert_eq!(sniff(two), Sniffed::Malformed);
    let bad = b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n";
    assert_eq!(sniff(bad), Sniffed::Malformed);
    assert_eq!(sniff(b"GET / HTTP/1.0\r\n\r\n"), Sniffed::NoName);
}

#[test]
fn other_protocols_carry_no_name() {
    assert_eq!(sniff(b"SSH-2.0-OpenSSH_9.2\r\n"), Sniffed::NoName);
    assert_eq!(sniff(&[0, 1, 2, 3]), Sniffed::NoName);
    assert_eq!(sniff(b""), Sniffed::NeedMore);
}

#[test]
fn requests_built_to_fool_the_host_check_are_refused() {
    // Each of these reached an allowed address with another site's name.
    let bare_lf = b"GET / HTTP/1.1\r\nX: a\nHost: other.test\r\nHost2: x\r\n\r\n";
    assert_eq!(sniff(bare_lf), Sniffed::Malformed);
    let bare_cr = b"GET / HTTP/1.1\r\nHost: good.test\rHost: other.test\r\n\r\n";
    assert_eq!(sniff(bare_cr), Sniffed::Malformed);
    // Any upper-case method is parsed (and its Host checked)...
    let propfind = b"PROPFIND / HTTP/1.1\r\nHost: other.test\r\n\r\n";
    assert_eq!(sniff(propfind), Sniffed::Name("other.test".into()));
    // ...a lower-case one is not HTTP at all, so it names nothing.
    assert_eq!(
        sniff(b"get / HTTP/1.1\r\nHost: other.test\r\n\r\n"),
        Sniffed::NoName
    );
    // An absolute URI must name the Host's host.
    let absolute = b"GET http://other.test/ HTTP/1.1\r\nHost: good.test\r\n\r\n";
    assert_eq!(sniff(absolute), Sniffed::Malformed);
    let agreeing = b"GET http://Good.Test:80/x HTTP/1.1\r\nHost: good.test\r\n\r\n";
    assert_eq!(sniff(agreeing), Sniffed::Name("good.test".into()));
    assert_eq!(
        sniff(b"GET http://other.test/ HTTP/1.0\r\n\r\n"),
        Sniffed::Name("other.test".into())
    );
    let connect = b"CONNECT other.test:443 HTTP/1.1\r\nHost: good.test:443\r\n\r\n";
    assert_eq!(sniff(connect), Sniffed::Malformed);
    // No Host at all: no name (refused for a connection allowed by name).
    assert_eq!(sniff(b"GET / HTTP/1.1\r\nX: y\r\n\r\n"), Sniffed::NoName);
    // Folded or spaced header names, user info, odd versions and targets.
    for bad in [
        &b"GET / HTTP/1.1\r\nHost : other.test\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nX: a\r\n Host: other.test\r\n\r\n",
        b"GET http://good.test@other.test/ HTTP/1.1\r\nHost: good.test\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: good.test\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: good.test\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: good.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: good.test:80x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: good.test\x00\r\n\r\n",
        b"GET ftp://good.test/ HTTP/1.1\r\nHost: good.test\r\n\r\n",
        // Found by the random test below: a bracketed name with no colon.
        b"GET / HTTP/1.1\r\nHost: [good.test]8080\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n",
    ] {
        assert_eq!(
            sniff(bad),
            Sniffed::Malformed,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // HTTP/2 with prior knowledge carries no Host header to check.
    assert_eq!(
        sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        Sniffed::Malformed
    );
}

/// A second, plain statement of what a request naming `host` must look
/// like, to check the sniffer against on random inputs: the request
/// line `METHOD /path HTTP/1.1`, CRLF line ends only, token header names,
/// exactly one Host header whose value is `host` (with an optional port).
fn plainly_names(buf: &[u8], host: &str) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return false;
    };
    if head.contains('\n')
        && head
            .split("\r\n")
            .any(|l| l.contains('\n') || l.contains('\r'))
    {
        return false;
    }
    let mut lines = head.split("\r\n");
    let first: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    if first.len() != 3
        || first[0].is_empty()
        || !first[0].bytes().all(|b| b.is_ascii_uppercase())
        || !matches!(first[2], "HTTP/1.1" | "HTTP/1.0")
    {
        return false;
    }
    let mut hosts = Vec::new();
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            return false;
        };
        if k.is_empty()
            || k.bytes()
                .any(|b| !(b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)))
        {
            return false;
        }
        if v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return false;
        }
        if k.eq_ignore_ascii_case("host") {
            hosts.push(v.trim().to_ascii_lowercase());
        }
    }
    let target_ok = first[1].starts_with('/') && !first[1].bytes().any(|b| b <= 0x20 || b == 0x7f);
    if hosts.len() != 1 || !target_ok {
        return false;
    }
    // `name[.][:port]`: a fully qualified name's dot is the same name.
    let (name, port) = match hosts[0].rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (hosts[0].as_str(), None),
    };
    let port_ok =
        port.is_none_or(|d| !d.is_empty() && d.len() <= 5 && d.bytes().all(|b| b.is_ascii_digit()));
    port_ok && name.strip_suffix('.').unwrap_or(name) == host
}

#[test]
fn random_mutations_never_sneak_a_name_past_the_plain_rules() {
    // A small xorshift generator: repeatable, no dependency.
    // STOCKADE_FUZZ_ITERATIONS and STOCKADE_FUZZ_SEED run it longer or
    // elsewhere (the suite runs 200,000 from a fixed seed).
    let iterations: usize = std::env::var("STOCKADE_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let mut state: u64 = std::env::var("STOCKADE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15)
        | 1;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let seeds: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: good.test\r\nAccept: */*\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nContent-Length: 3\r\nhost: Good.test:8080\r\n\r\nabc",
        b"PROPFIND /x HTTP/1.0\r\nHost: good.test\r\n\r\n",
    ];
    let alphabet = b"\r\n :Host.goodtestHTTP/1.\t\x00@[]GET*";
    let mut names = 0;
    for i in 0..iterations {
        let mut m = seeds[i % seeds.len()].to_vec();
        for _ in 0..1 + rnd() % 4 {
            let at = (rnd() as usize) % (m.len() + 1);
            match rnd() % 3 {
                0 if at < m.len() => {
                    m.remove(at);
                }
                1 => m.insert(at, alphabet[(rnd() as usize) % alphabet.len()]),
                _ if at < m.len() => m[at] = alphabet[(rnd() as usize) % alphabet.len()],
                _ => {}
            }
        }
        if let Sniffed::Name(n) = sniff(&m) {
            names += 1;
            // Absolute-form and CONNECT targets are not in the plain rules:
            // only origin-form requests are compared.
            if m.split(|&b| b == b' ')
                .nth(1)
                .is_some_and(|t| t.starts_with(b"/"))
            {
                assert!(
                    plainly_names(&m, &n),
                    "named {n:?} for {:?}",
                    String::from_utf8_lossy(&m)
                );
            }
        }
    }
    // The mutations leave many requests valid: the test looks at names.
    assert!(names > iterations / 20, "{names}");
}

/// A git pkt-line: four hex digits of length (itself included), then
/// the payload.
fn pkt(payload: &[u8]) -> Vec<u8> {
    let mut v = format!("{:04x}", payload.len() + 4).into_bytes();
    v.extend_from_slice(payload);
    v
}

#[test]
fn the_git_protocol_names_its_host() {
    let req = pkt(b"git-upload-pack /repo.git\0host=gitserver.test\0");
    assert_eq!(sniff(&req), Sniffed::Name("gitserver.test".into()));
    assert_eq!(sniff(&req[..10]), Sniffed::NeedMore);
    let v2 = pkt(b"git-upload-pack /repo.git\0host=Git.test:9418\0\0version=2\0");
    assert_eq!(sniff(&v2), Sniffed::Name("git.test".into()));
    assert_eq!(sniff(&pkt(b"git-upload-pack /repo.git\0")), Sniffed::NoName);
    assert_eq!(
        sniff(&pkt(b"git-evil-pack /repo.git\0host=gitserver.test\0")),
        Sniffed::Malformed
    );
    let two = pkt(b"git-upload-pack /r\0host=a.test\0host=b.test\0");
    assert_eq!(sniff(&two), Sniffed::Malformed);
    assert_eq!(sniff(b"ffffgit-upload-pack /r\0"), Sniffed::Malformed);
}
