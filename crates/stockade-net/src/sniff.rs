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
    /// TLS without SNI, HTTP without `Host`, or another protocol. A
    /// connection allowed by name is refused then: nothing proves which
    /// site it is for.
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
    if looks_like_git(buf) {
        return sniff_git(buf);
    }
    if looks_like_http(buf) {
        if buf.len() <= MAX_METHOD && !buf.contains(&b' ') {
            return Sniffed::NeedMore; // a method so far
        }
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

/// The git protocol's first packet (`git://`): four lower-case hex
/// digits of length, then a service name.
fn looks_like_git(buf: &[u8]) -> bool {
    let n = buf.len().min(8);
    buf[..n.min(4)]
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        && (n <= 4 || b"git-".starts_with(&buf[4..n]))
}

/// `pkt-len git-<service> <path>\0host=<host>[:port]\0[extra\0...]`, the
/// request a git daemon reads first; the host it names is what counts.
fn sniff_git(buf: &[u8]) -> Sniffed {
    if buf.len() < 8 {
        return Sniffed::NeedMore;
    }
    let Some(len) = std::str::from_utf8(&buf[..4])
        .ok()
        .and_then(|h| usize::from_str_radix(h, 16).ok())
    else {
        return Sniffed::Malformed;
    };
    if !(8..=1000).contains(&len) {
        return Sniffed::Malformed;
    }
    if buf.len() < len {
        return Sniffed::NeedMore;
    }
    let pkt = &buf[4..len];
    let mut fields = pkt.split(|&b| b == 0);
    let Some(request) = fields.next() else {
        return Sniffed::Malformed;
    };
    let service_ok = [
        &b"git-upload-pack /"[..],
        b"git-receive-pack /",
        b"git-upload-archive /",
    ]
    .iter()
    .any(|s| request.starts_with(s));
    if !service_ok || request.iter().any(|&b| b < 0x20) {
        return Sniffed::Malformed;
    }
    let mut host = None;
    for f in fields {
        if let Some(h) = f.strip_prefix(b"host=") {
            if host.is_some() {
                return Sniffed::Malformed;
            }
            match authority_host(h) {
                Some(h) => host = Some(h),
                None => return Sniffed::Malformed,
            }
        }
    }
    match host {
        Some(h) => Sniffed::Name(h),
        None => Sniffed::NoName,
    }
}

/// Longest method token accepted.
const MAX_METHOD: usize = 24;

/// Whether `buf` can be the start of an HTTP/1 request: an upper-case
/// method token so far. (Methods are case-sensitive; a lower-case `get`
/// is not one, and is refused like any other unknown protocol.)
fn looks_like_http(buf: &[u8]) -> bool {
    let method_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    method_len > 0
        && method_len <= MAX_METHOD
        && (method_len == buf.len() || buf[method_len] == b' ')
}

/// One HTTP/1 request head, parsed strictly: anything a server might read
/// differently from us is `Malformed`, and the caller refuses it.
fn sniff_http(buf: &[u8]) -> Sniffed {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        // A bare line feed anywhere means servers split lines differently.
        if has_bare_line_end(buf) {
            return Sniffed::Malformed;
        }
        return Sniffed::NeedMore;
    };
    let head = &buf[..end + 2];
    if has_bare_line_end(head) {
        return Sniffed::Malformed;
    }
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty());
    let Some(request_line) = lines.next() else {
        return Sniffed::Malformed;
    };
    let Some(target_host) = request_target(request_line) else {
        return Sniffed::Malformed;
    };
    let mut host: Option<String> = None;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Sniffed::Malformed;
        };
        let (key, value) = (&line[..colon], &line[colon + 1..]);
        // A token, nothing before the colon: no obs-fold, no "Host :".
        if key.is_empty() || !key.iter().all(|&b| is_tchar(b)) {
            return Sniffed::Malformed;
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Sniffed::Malformed;
        }
        if !key.eq_ignore_ascii_case(b"host") {
            continue;
        }
        if host.is_some() {
            return Sniffed::Malformed; // two Host headers: servers disagree on which wins
        }
        let value = value.trim_ascii();
        match authority_host(value) {
            Some(h) => host = Some(h),
            None => return Sniffed::Malformed,
        }
    }
    match (host, target_host) {
        // An absolute-form target or CONNECT's authority names a host
        // itself: it must be the one Host names (servers may use either).
        (Some(h), Some(t)) if h != t => Sniffed::Malformed,
        (Some(h), _) => Sniffed::Name(h),
        // HTTP/1.0 may omit Host; then only an absolute target names one.
        (None, Some(t)) => Sniffed::Name(t),
        (None, None) => Sniffed::NoName,
    }
}

/// A CR or LF that is not part of a CRLF pair.
fn has_bare_line_end(buf: &[u8]) -> bool {
    buf.iter().enumerate().any(|(i, &b)| match b {
        b'\n' => i == 0 || buf[i - 1] != b'\r',
        b'\r' => buf.get(i + 1).is_some_and(|&n| n != b'\n'),
        _ => false,
    })
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks `METHOD SP target SP HTTP/1.x`; returns the host the target
/// itself names (absolute form, or CONNECT's authority), `Some(None)` for
/// an origin-form target, `None` if the line is malformed.
fn request_target(line: &[u8]) -> Option<Option<String>> {
    let mut parts = line.split(|&b| b == b' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || method.is_empty()
        || method.len() > MAX_METHOD
        || !method.iter().all(u8::is_ascii_uppercase)
        || target.is_empty()
        || target.iter().any(|&b| b <= 0x20 || b == 0x7f)
        || (version != b"HTTP/1.1" && version != b"HTTP/1.0")
    {
        return None;
    }
    if method == b"CONNECT" {
        return authority_host(target).map(Some);
    }
    if target == b"*" {
        return (method == b"OPTIONS").then_some(None);
    }
    if target.starts_with(b"/") {
        return Some(None);
    }
    // Absolute form: scheme "://" authority [path].
    let text = std::str::from_utf8(target).ok()?;
    let (scheme, rest) = text.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority_host(authority.as_bytes()).map(Some)
}

/// The host of `host[:port]` or `[v6]:port`, lower-cased; `None` if it
/// is anything else (user info, bad characters, a bad port).
fn authority_host(a: &[u8]) -> Option<String> {
    let a = std::str::from_utf8(a).ok()?;
    if a.contains('@') {
        return None;
    }
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        // An IP literal: `[v6]` or `[v6]:port`, nothing else.
        let (h, after) = rest.split_once(']')?;
        let ip: std::net::Ipv6Addr = h.parse().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        if let Some(p) = port {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
        }
        return Some(ip.to_string());
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Some(ip.to_string());
    }
    host_name(host.as_bytes())
}

#[cfg(test)]
#[path = "sniff_tests.rs"]
mod tests;
