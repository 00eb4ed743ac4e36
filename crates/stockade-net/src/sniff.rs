//! The name a connection's first bytes claim: the SNI of a TLS ClientHello
//! or the `Host` of an HTTP/1 request. Checking it stops a sandbox from
//! using an allowed address (a CDN edge, say) to reach another site served
//! from the same address. Every length is checked: the bytes come from the
//! sandbox and may be anything.

/// Most bytes read before deciding. A ClientHello with post-quantum key
/// shares is about 2 KiB; TLS allows 16 KiB per record.
pub const SNIFF_LIMIT: usize = 16 * 1024 + 5 + 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// Not enough bytes yet to tell.
    NeedMore,
    /// The connection names this host (lower case, no trailing dot).
    Name(String),
    /// TLS without SNI, HTTP without `Host`, or another protocol.
    NoName,
    /// Looks like TLS or HTTP but does not parse: refused, since a server
    /// may read it differently from us.
    Malformed,
}

/// Looks at the bytes a client sent first.
pub fn sniff(buf: &[u8]) -> Sniffed {
    if buf.is_empty() {
        return Sniffed::NeedMore;
    }
    if buf[0] == 0x16 {
        return sniff_tls(buf);
    }
    if looks_like_http(buf) {
        return sniff_http(buf);
    }
    Sniffed::NoName
}

/// A cursor that never reads past its slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

fn sniff_tls(buf: &[u8]) -> Sniffed {
    // Gather the handshake bytes from consecutive handshake records: a large
    // ClientHello may be split across records.
    let mut handshake = Vec::new();
    let mut records = Reader(buf);
    loop {
        let Some(header) = records.take(5) else {
            return Sniffed::NeedMore;
        };
        if header[0] != 0x16 || header[1] != 0x03 {
            return Sniffed::Malformed;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16384 + 2048 {
            return Sniffed::Malformed;
        }
        let Some(payload) = records.take(len) else {
            return Sniffed::NeedMore;
        };
        handshake.extend_from_slice(payload);
        if handshake.len() >= 4 {
            let want = 4
                + ((usize::from(handshake[1]) << 16)
                    | (usize::from(handshake[2]) << 8)
                    | usize::from(handshake[3]));
            if handshake.len() >= want {
                return parse_client_hello(&handshake[..want]).unwrap_or(Sniffed::Malformed);
            }
        }
    }
}

fn parse_client_hello(msg: &[u8]) -> Option<Sniffed> {
    let mut r = Reader(msg);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let len = r.u24()?;
    let mut body = Reader(r.take(len)?);
    body.take(2 + 32)?; // legacy_version, random
    body.vec8()?; // session id
    body.vec16()?; // cipher suites
    body.vec8()?; // compression methods
    if body.0.is_empty() {
        return Some(Sniffed::NoName); // no extensions at all
    }
    let mut exts = Reader(body.vec16()?);
    let mut found = None;
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind != 0 {
            continue;
        }
        if found.is_some() {
            return None; // two server_name extensions
        }
        let mut list = Reader(data);
        let mut names = Reader(list.vec16()?);
        let mut host = None;
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name = names.vec16()?;
            if name_type == 0 {
                if host.is_some() {
                    return None; // RFC 6066: at most one host_name
                }
                host = Some(host_name(name)?);
            }
        }
        found = Some(host);
    }
    Some(match found.flatten() {
        Some(name) => Sniffed::Name(name),
        None => Sniffed::NoName,
    })
}

/// A DNS name as ASCII, lower case, without a trailing dot.
fn host_name(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?;
    let s = s.strip_suffix('.').unwrap_or(s);
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    ok.then(|| s.to_ascii_lowercase())
}

const METHODS: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];

fn looks_like_http(buf: &[u8]) -> bool {
    METHODS.iter().any(|m| {
        let n = m.len().min(buf.len());
        buf[..n] == m[..n]
    })
}

fn sniff_http(buf: &[u8]) -> Sniffed {
    if !METHODS.iter().any(|m| buf.starts_with(m)) {
        return Sniffed::NeedMore; // a prefix of a method so far
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Sniffed::NeedMore;
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Sniffed::Malformed;
    };
    let mut host = None;
    for line in head.split("\r\n").skip(1) {
        let Some((key, value)) = line.split_once(':') else {
            return Sniffed::Malformed;
        };
        if !key.eq_ignore_ascii_case("host") {
            continue;
        }
        if host.is_some() {
            return Sniffed::Malformed; // two Host headers: servers disagree on which wins
        }
        host = Some(value.trim());
    }
    let Some(host) = host else {
        return Sniffed::NoName;
    };
    // Drop the port: "name:8080", "[::1]:8080".
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(n, _)| n)
    };
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Sniffed::Name(ip.to_string());
    }
    match host_name(name.as_bytes()) {
        Some(n) => Sniffed::Name(n),
        None => Sniffed::Malformed,
    }
}

#[cfg(test)]
#[path = "sniff_tests.rs"]
mod tests;
