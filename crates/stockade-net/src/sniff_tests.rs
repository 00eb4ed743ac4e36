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
