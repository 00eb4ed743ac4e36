//! One allowed TCP connection: wait for the sandbox's handshake; for a
//! connection allowed by name, check the name its first bytes carry before
//! anything reaches upstream (fail-closed: they must parse strictly as one
//! HTTP/1 request with a single allowed Host, or a TLS ClientHello with one
//! allowed SNI); connect upstream from the supervisor's namespace, then
//! copy both ways under the bandwidth limit, counting bytes.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::audit::NetEvent;
use crate::decide::{self, Allowed};
use crate::event::{Protocol, Reason, Verdict};
use crate::limits::TokenBucket;
use crate::sniff::{sniff, Sniffed, SNIFF_LIMIT};
use crate::stack::{FlowKey, Shared};

/// How long the sandbox has to finish its handshake, and we to reach upstream.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CHUNK: usize = 64 * 1024;

/// Why a connection ended before or instead of being proxied.
enum End {
    /// The first bytes did not prove an allowed name: why, and the name
    /// they carried, if any.
    Refused(Reason, Option<String>),
    /// Upstream could not be reached.
    Unreachable,
    /// The sandbox went away (no handshake, reset).
    Gone,
}

impl From<io::Error> for End {
    fn from(_: io::Error) -> Self {
        End::Gone
    }
}

/// Serves the connection on socket `h`, then reports it.
pub(crate) async fn serve(sh: Rc<Shared>, h: SocketHandle, key: FlowKey, allowed: Allowed) {
    let started = Instant::now();
    let dst = SocketAddr::new(key.1.addr.into(), key.1.port);
    let mut bytes = (0u64, 0u64);
    let result = proxy(&sh, h, dst, &allowed, &mut bytes).await;
    let mut ev = match &result {
        Ok(()) | Err(End::Gone) => NetEvent::new(Protocol::Tcp, Verdict::Allow, allowed.reason()),
        Err(End::Unreachable) => {
            NetEvent::new(Protocol::Tcp, Verdict::Allow, Reason::UpstreamUnreachable)
        }
        Err(End::Refused(reason, _)) => NetEvent::new(Protocol::Tcp, Verdict::Deny, *reason),
    };
    {
        let mut st = sh.stack.borrow_mut();
        let socket = st.sockets.get_mut::<tcp::Socket>(h);
        match result {
            // Both directions ended: FIN after whatever is still queued.
            Ok(()) => socket.close(),
            // Refused, unreachable or broken: reset, so the client fails at
            // once and no socket lingers half-open.
            Err(_) => socket.abort(),
        }
    }
    ev.name = match result {
        Err(End::Refused(_, name)) => name.or_else(|| allowed.name()),
        _ => allowed.name(),
    };
    ev.address = Some(dst.ip());
    ev.port = Some(dst.port());
    ev.bytes_up = bytes.0;
    ev.bytes_down = bytes.1;
    ev.duration_seconds = started.elapsed().as_secs_f64();
    sh.audit.emit(ev);
    sh.release(h);
}

async fn proxy(
    sh: &Rc<Shared>,
    h: SocketHandle,
    dst: SocketAddr,
    allowed: &Allowed,
    bytes: &mut (u64, u64),
) -> Result<(), End> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, established(sh, h)).await {
        Ok(true) => {}
        _ => return Err(End::Gone),
    }
    // Allowed by name: the first bytes must prove the name before the
    // server sees so much as a connection.
    let first = if allowed.by_name() {
        first_bytes(sh, h, dst, allowed).await?
    } else {
        Vec::new()
    };
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => s,
        _ => return Err(End::Unreachable),
    };
    let _ = upstream.set_nodelay(true);
    let (mut from_up, mut to_up) = upstream.into_split();
    let (mut up, mut down) = (0u64, 0u64);
    let client_to_upstream = async {
        let mut buf = vec![0u8; CHUNK];
        let mut pending = first;
        loop {
            if pending.is_empty() {
                let n = recv(sh, h, &mut buf).await?;
                if n == 0 {
                    let _ = to_up.shutdown().await;
                    return Ok::<(), End>(());
                }
                pending.extend_from_slice(&buf[..n]);
            }
            let grant = pace(sh.up_bucket.as_ref(), pending.len()).await;
            to_up.write_all(&pending[..grant]).await?;
            pending.drain(..grant);
            up += grant as u64;
            sh.audit.add_bytes(grant as u64, 0);
        }
    };
    let upstream_to_client = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = from_up.read(&mut buf).await?;
            if n == 0 {
                // Half-close: the sandbox may still be sending.
                sh.stack
                    .borrow_mut()
                    .sockets
                    .get_mut::<tcp::Socket>(h)
                    .close();
                sh.poke.notify_one();
                return Ok::<(), End>(());
            }
            let mut off = 0;
            while off < n {
                let grant = pace(sh.down_bucket.as_ref(), n - off).await;
                send_all(sh, h, &buf[off..off + grant]).await?;
                off += grant;
                down += grant as u64;
                sh.audit.add_bytes(0, grant as u64);
            }
        }
    };
    let result = tokio::try_join!(client_to_upstream, upstream_to_client).map(|_| ());
    *bytes = (up, down);
    result
}

/// Reads the sandbox's first bytes until they tell (at most
/// [`SNIFF_LIMIT`]) and checks the name they carry; returns them.
async fn first_bytes(
    sh: &Shared,
    h: SocketHandle,
    dst: SocketAddr,
    allowed: &Allowed,
) -> Result<Vec<u8>, End> {
    let mut buf = vec![0u8; CHUNK];
    let mut first = Vec::new();
    loop {
        let n = match tokio::time::timeout(HANDSHAKE_TIMEOUT, recv(sh, h, &mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Err(End::Refused(Reason::NoName, None)),
        };
        first.extend_from_slice(&buf[..n]);
        let seen = match sniff(&first) {
            Sniffed::NeedMore if n > 0 && first.len() < SNIFF_LIMIT => continue,
            Sniffed::NeedMore if first.is_empty() => return Err(End::Gone),
            Sniffed::NeedMore => Sniffed::Malformed,
            s => s,
        };
        return match decide::first_bytes(&sh.policy, allowed, dst.ip(), &seen) {
            Ok(()) => Ok(first),
            Err(name) => Err(End::Refused(
                match seen {
                    Sniffed::Name(_) => Reason::SniMismatch,
                    Sniffed::NoName => Reason::NoName,
                    _ => Reason::Malformed,
                },
                name,
            )),
        };
    }
}

/// Waits for a whole number of tokens from `bucket`; `want` when unlimited.
async fn pace(bucket: Option<&std::cell::RefCell<TokenBucket>>, want: usize) -> usize {
    let Some(bucket) = bucket else { return want };
    loop {
        let (granted, wait) = bucket.borrow_mut().take_up_to(want, Instant::now());
        if granted > 0 {
            return granted;
        }
        tokio::time::sleep(wait).await;
    }
}

/// Resolves to whether the sandbox completed its handshake.
async fn established(sh: &Shared, h: SocketHandle) -> bool {
    poll_fn(|cx| {
        let mut st = sh.stack.borrow_mut();
        let s = st.sockets.get_mut::<tcp::Socket>(h);
        match s.state() {
            tcp::State::Listen | tcp::State::SynReceived => {
                s.register_recv_waker(cx.waker());
                Poll::Pending
            }
            tcp::State::Established | tcp::State::CloseWait => Poll::Ready(true),
            _ => Poll::Ready(false),
        }
    })
    .await
}

/// Reads what the sandbox sent; `Ok(0)` at its end of stream.
async fn recv(sh: &Shared, h: SocketHandle, buf: &mut [u8]) -> io::Result<usize> {
    let n = poll_fn(|cx| {
        let mut st = sh.stack.borrow_mut();
        let s = st.sockets.get_mut::<tcp::Socket>(h);
        if s.can_recv() {
            let n = s.recv_slice(buf);
            return Poll::Ready(n.map_err(|_| io::Error::from(io::ErrorKind::ConnectionReset)));
        }
        if !s.may_recv() {
            return Poll::Ready(Ok(0));
        }
        s.register_recv_waker(cx.waker());
        Poll::Pending
    })
    .await?;
    // The window opened: let the stack tell the sandbox.
    sh.poke.notify_one();
    Ok(n)
}

/// Queues all of `data` for the sandbox.
async fn send_all(sh: &Shared, h: SocketHandle, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = poll_fn(|cx| {
            let mut st = sh.stack.borrow_mut();
            let s = st.sockets.get_mut::<tcp::Socket>(h);
            if !s.may_send() {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::BrokenPipe)));
            }
            if s.can_send() {
                let n = s.send_slice(data);
                return Poll::Ready(n.map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe)));
            }
            s.register_send_waker(cx.waker());
            Poll::Pending
        })
        .await?;
        data = &data[n..];
        sh.poke.notify_one();
    }
    Ok(())
}
