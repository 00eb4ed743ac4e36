//! HTTP/1.1 on the client side, by hand: one request per connection
//! (`Connection: close`), answers with `Content-Length`, chunked transfer
//! encoding or read-to-close bodies.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use super::ClientError;

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The daemon's unix socket (the default for the CLI).
    Unix(PathBuf),
    /// A TCP listener (`host:port`) with its bearer token.
    Tcp { addr: String, token: String },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp { addr, .. } => write!(f, "{addr}"),
        }
    }
}

trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// An open connection after the request was sent: status, headers, body.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    body: Body,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

enum Body {
    Length(io::Take<BufReader<Box<dyn Conn>>>),
    Chunked {
        r: BufReader<Box<dyn Conn>>,
        left: u64,
        done: bool,
    },
    Close(BufReader<Box<dyn Conn>>),
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Reads the whole body (at most `limit` bytes).
    pub fn bytes(mut self, limit: u64) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        (&mut self).take(limit + 1).read_to_end(&mut out)?;
        if out.len() as u64 > limit {
            return Err(ClientError::Protocol(format!(
                "the answer is larger than {limit} bytes"
            )));
        }
        Ok(out)
    }
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.body {
            Body::Length(r) => r.read(buf),
            Body::Close(r) => r.read(buf),
            Body::Chunked { r, left, done } => {
                if *done || buf.is_empty() {
                    return Ok(0);
                }
                if *left == 0 {
                    let line = read_line(r)?;
                    let size = line.split(';').next().unwrap_or("").trim();
                    *left = u64::from_str_radix(size, 16).map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bad chunk size {size:?}"),
                        )
                    })?;
                    if *left == 0 {
                        // Trailers, then the final empty line.
                        while !read_line(r)?.is_empty() {}
                        *done = true;
                        return Ok(0);
                    }
                }
                let want = buf.len().min(*left as usize);
                let n = r.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                *left -= n as u64;
                if *left == 0 {
                    let crlf = read_line(r)?;
                    if !crlf.is_empty() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "chunk not followed by CRLF",
                        ));
                    }
                }
                Ok(n)
            }
        }
    }
}

/// One line without its CRLF; at most 16 KiB.
fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    r.take(16 * 1024).read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the connection closed mid-line",
        ));
    }
    line.pop();
    if line.ends_with(b"\r") {
        line.pop();
    }
    String::from_utf8(line)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "header is not UTF-8"))
}

/// Sends one request and reads the status line and headers.
pub fn send(
    ep: &Endpoint,
    timeout: Option<Duration>,
    method: &str,
    target: &str,
    extra_headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> Result<Response, ClientError> {
    match body {
        Some((ctype, mut b)) => {
            let len = b.len() as u64;
            send_from(
                ep,
                timeout,
                method,
                target,
                extra_headers,
                Some((ctype, &mut b, len)),
            )
        }
        None => send_from(ep, timeout, method, target, extra_headers, None),
    }
}

/// [`send`] with a body read from `reader` as it goes out (`len` bytes,
/// its `Content-Length`): a large upload is never held in memory.
pub fn send_from(
    ep: &Endpoint,
    timeout: Option<Duration>,
    method: &str,
    target: &str,
    extra_headers: &[(&str, &str)],
    body: Option<(&str, &mut dyn Read, u64)>,
) -> Result<Response, ClientError> {
    let connect_err = |source| ClientError::Connect {
        endpoint: ep.to_string(),
        source,
    };
    let mut conn: Box<dyn Conn> = match ep {
        Endpoint::Unix(p) => {
            let s = UnixStream::connect(p).map_err(connect_err)?;
            s.set_read_timeout(timeout)?;
            Box::new(s)
        }
        Endpoint::Tcp { addr, .. } => {
            let s = TcpStream::connect(addr.as_str()).map_err(connect_err)?;
            s.set_read_timeout(timeout)?;
            Box::new(s)
        }
    };
    let host = match ep {
        Endpoint::Unix(_) => "localhost",
        Endpoint::Tcp { addr, .. } => addr.as_str(),
    };
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: stockade-client\r\n");
    if let Endpoint::Tcp { token, .. } = ep {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (k, v) in extra_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match &body {
        Some((ctype, _, len)) => head.push_str(&format!(
            "Content-Type: {ctype}\r\nContent-Length: {len}\r\n\r\n"
        )),
        None => head.push_str("Content-Length: 0\r\n\r\n"),
    }
    conn.write_all(head.as_bytes())?;
    if let Some((_, reader, len)) = body {
        // The daemon may answer (413, 507) and close before reading it
        // all; its answer is still there to read.
        let mut limited = reader.take(len);
        match io::copy(&mut limited, &mut conn) {
            Ok(n) if n < len => {
                return Err(ClientError::Protocol(format!(
                    "the request body ended after {n} of {len} bytes"
                )))
            }
            Ok(_) => {}
            Err(e)
                if e.kind() == io::ErrorKind::BrokenPipe
                    || e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.flush()?;
    let mut r = BufReader::new(conn);
    let status_line = read_line(&mut r)?;
    let mut parts = status_line.splitn(3, ' ');
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code.parse::<u16>().ok(),
        _ => None,
    }
    .ok_or_else(|| ClientError::Protocol(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(&mut r)?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| ClientError::Protocol(format!("bad header line {line:?}")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
        if headers.len() > 100 {
            return Err(ClientError::Protocol("more than 100 headers".into()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body =
        if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            Body::Chunked {
                r,
                left: 0,
                done: false,
            }
        } else if let Some(len) = find("content-length") {
            let len = len
                .parse::<u64>()
                .map_err(|_| ClientError::Protocol(format!("bad Content-Length {len:?}")))?;
            Body::Length(r.take(len))
        } else {
            Body::Close(r)
        };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Percent-encodes a query value (keeps unreserved characters and `/`).
pub fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
