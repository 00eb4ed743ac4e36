//! The event loop: packets from the TUN device pass a filter, then a
//! smoltcp interface that terminates TCP; replies go back to the device.
//!
//! The filter runs before smoltcp sees a packet, so policy decides what the
//! stack accepts: a SYN to a refused destination reaches smoltcp with no
//! socket listening for it, and smoltcp answers RST, at once. Packets are
//! fed one at a time, so each SYN meets the socket made for it.
//!
//! Everything runs on one thread (a current-thread tokio runtime with a
//! `LocalSet`), so the stack lives in a `RefCell`; no borrow is held across
//! an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint, IpProtocol, Ipv4Packet,
    TcpPacket, UdpPacket,
};
use stockade_policy::NetworkPolicy;
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, Notify};

use crate::audit::{Audit, NetEvent};
use crate::decide;
use crate::dns::{self, Pins};
use crate::event::{Protocol, Reason, Verdict};
use crate::limits::TokenBucket;
use crate::resolve::Resolve;
use crate::tun::{read_packet, write_packet};
use crate::{
    DNS_ADDR, GATEWAY_ADDR, MAX_CONNECTIONS, MTU, PREFIX_LEN, SANDBOX_ADDR, SOCKET_BUFFER,
};

/// Host lookups in flight at once; more get SERVFAIL (the client retries).
const MAX_RESOLVING: usize = 16;
/// Distinct refused UDP/ICMP flows reported; after that they are only dropped.
const MAX_REPORTED_FLOWS: usize = 4096;

/// One connection: the sandbox's endpoint and the destination it asked for.
pub(crate) type FlowKey = (IpEndpoint, IpEndpoint);

/// Packets between the TUN device and smoltcp.
#[derive(Default)]
pub(crate) struct Queue {
    rx: Option<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

pub(crate) struct RxPacket(Vec<u8>);
pub(crate) struct TxSlot<'a>(&'a mut Vec<Vec<u8>>);

impl RxToken for RxPacket {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for TxSlot<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push(buf);
        r
    }
}

impl Device for Queue {
    type RxToken<'a> = RxPacket;
    type TxToken<'a> = TxSlot<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(RxPacket, TxSlot<'_>)> {
        let p = self.rx.take()?;
        Some((RxPacket(p), TxSlot(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<TxSlot<'_>> {
        // Bounded: the loop flushes after every poll.
        (self.tx.len() < 1024).then_some(TxSlot(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = usize::from(MTU);
        caps
    }
}

/// The smoltcp side.
pub(crate) struct Stack {
    iface: Interface,
    pub sockets: SocketSet<'static>,
    dev: Queue,
    dns: SocketHandle,
    flows: HashMap<FlowKey, SocketHandle>,
    closing: Vec<SocketHandle>,
}

/// Everything the loop and the connection tasks share.
pub(crate) struct Shared {
    pub stack: RefCell<Stack>,
    pub poke: Notify,
    pub policy: NetworkPolicy,
    pub pins: RefCell<Pins>,
    pub audit: Audit,
    pub resolver: Arc<dyn Resolve>,
    connect_bucket: Option<RefCell<TokenBucket>>,
    pub up_bucket: Option<RefCell<TokenBucket>>,
    pub down_bucket: Option<RefCell<TokenBucket>>,
    resolving: Cell<usize>,
    reported: RefCell<HashSet<(u8, IpAddr, u16)>>,
    epoch: Instant,
    /// The supervisor's own addresses, and when they were last read.
    own: RefCell<(HashSet<IpAddr>, Option<Instant>)>,
}

impl Shared {
    /// Reads the supervisor's own addresses again if the last reading is
    /// more than a second old (interfaces come and go).
    fn refresh_own_addresses(&self) {
        let mut own = self.own.borrow_mut();
        if own
            .1
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1))
        {
            return;
        }
        own.0 = crate::classify::local_addresses();
        own.1 = Some(Instant::now());
    }

    pub fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// A connection task is done with its socket: it is removed once closed.
    pub fn release(&self, h: SocketHandle) {
        self.stack.borrow_mut().closing.push(h);
        self.poke.notify_one();
    }
}

pub(crate) fn build(policy: NetworkPolicy, audit: Audit, resolver: Arc<dyn Resolve>) -> Shared {
    let epoch = Instant::now();
    let mut dev = Queue::default();
    let mut cfg = Config::new(HardwareAddress::Ip);
    cfg.random_seed = u64::from(std::process::id()) ^ epoch.elapsed().as_nanos() as u64;
    let mut iface = Interface::new(cfg, &mut dev, smoltcp::time::Instant::from_micros(0));
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(GATEWAY_ADDR), PREFIX_LEN));
    });
    // Accept packets for every destination: the filter has already decided.
    iface.set_any_ip(true);
    let mut sockets = SocketSet::new(Vec::new());
    let dns_socket = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 64 * 1024]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 64 * 1024]),
    );
    let dns = sockets.add(dns_socket);
    let _ = sockets
        .get_mut::<udp::Socket>(dns)
        .bind(IpListenEndpoint::from((IpAddress::Ipv4(DNS_ADDR), 53)));
    let bucket = |rate: u64| Some(RefCell::new(TokenBucket::bytes_per_second(rate, epoch)));
    Shared {
        stack: RefCell::new(Stack {
            iface,
            sockets,
            dev,
            dns,
            flows: HashMap::new(),
            closing: Vec::new(),
        }),
        poke: Notify::new(),
        connect_bucket: policy
            .rate_per_minute
            .map(|n| RefCell::new(TokenBucket::per_minute(n, epoch))),
        up_bucket: policy.bandwidth.and_then(|b| bucket(b.bytes_per_second())),
        down_bucket: policy.bandwidth.and_then(|b| bucket(b.bytes_per_second())),
        policy,
        pins: RefCell::new(Pins::default()),
        audit,
        resolver,
        resolving: Cell::new(0),
        reported: RefCell::new(HashSet::new()),
        own: RefCell::new((HashSet::new(), None)),
        epoch,
    }
}

/// Serves the TUN device until `stop` fires or the device is gone.
pub(crate) async fn run(sh: Rc<Shared>, tun: OwnedFd, mut stop: oneshot::Receiver<()>) {
    // Only readability is waited for: writes to a TUN device do not block
    // (a full queue drops the packet).
    // SAFETY: `tun` is an OwnedFd moved into the AsyncFd, so its descriptor
    // stays open and the same for the AsyncFd's whole life.
    let Ok(tun) = (unsafe { AsyncFd::register_with_interest(tun, tokio::io::Interest::READABLE) })
    else {
        return;
    };
    let fd = tun.as_raw_fd();
    let mut buf = vec![0u8; 65536];
    loop {
        loop {
            match read_packet(fd, &mut buf) {
                Ok(0) => break,
                Ok(n) => on_packet(&sh, &buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return, // the device is gone
            }
        }
        let delay = poll(&sh, fd);
        tokio::select! {
            _ = &mut stop => return,
            ready = tun.readable() => match ready {
                // Cleared before draining, so a packet arriving during the
                // drain raises readiness again.
                Ok(mut guard) => guard.clear_ready(),
                Err(_) => return,
            },
            _ = sh.poke.notified() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Runs smoltcp, answers DNS, removes finished sockets and writes what the
/// stack sent. Returns how long until smoltcp next needs a poll.
fn poll(sh: &Rc<Shared>, fd: i32) -> Duration {
    let now = sh.now();
    let mut st = sh.stack.borrow_mut();
    let st = &mut *st;
    st.iface.poll(now, &mut st.dev, &mut st.sockets);
    if serve_dns(sh, st) {
        st.iface.poll(now, &mut st.dev, &mut st.sockets);
    }
    let (sockets, flows) = (&mut st.sockets, &mut st.flows);
    st.closing.retain(|&h| {
        let state = sockets.get::<tcp::Socket>(h).state();
        let done = matches!(state, tcp::State::Closed | tcp::State::TimeWait);
        if done {
            sockets.remove(h);
            flows.retain(|_, v| *v != h);
        }
        !done
    });
    for p in st.dev.tx.drain(..) {
        write_packet(fd, &p);
    }
    st.iface
        .poll_delay(now, &st.sockets)
        .map_or(Duration::from_secs(1), |d| {
            Duration::from_micros(d.total_micros())
        })
        .min(Duration::from_secs(1))
}

/// Feeds one packet from the sandbox through the filter into smoltcp.
fn on_packet(sh: &Rc<Shared>, pkt: &[u8]) {
    // IPv4 only: the sandbox has no IPv6 address, so anything else is noise.
    let Ok(ip) = Ipv4Packet::new_checked(pkt) else {
        return;
    };
    // Fragments could hide a transport header from the filter: dropped.
    if ip.more_frags() || ip.frag_offset() != 0 || ip.src_addr() != SANDBOX_ADDR {
        return;
    }
    let dst = IpAddr::V4(ip.dst_addr());
    match ip.next_header() {
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
                return;
            };
            if tcp.syn() && !tcp.ack() {
                let src = IpEndpoint::new(IpAddress::Ipv4(ip.src_addr()), tcp.src_port());
                let to = IpEndpoint::new(IpAddress::Ipv4(ip.dst_addr()), tcp.dst_port());
                on_syn(sh, (src, to));
            }
        }
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
                return;
            };
            if dst != IpAddr::V4(DNS_ADDR) || udp.dst_port() != 53 {
                refuse_flow(
                    sh,
                    17,
                    dst,
                    udp.dst_port(),
                    Protocol::Udp,
                    Reason::UdpNotAllowed,
                );
                return;
            }
        }
        IpProtocol::Icmp => {
            refuse_flow(sh, 1, dst, 0, Protocol::Icmp, Reason::IcmpNotAllowed);
            return;
        }
        _ => return,
    }
    let now = sh.now();
    let mut st = sh.stack.borrow_mut();
    let st = &mut *st;
    st.dev.rx = Some(pkt.to_vec());
    st.iface.poll(now, &mut st.dev, &mut st.sockets);
    st.dev.rx = None;
}

/// Reports a refused UDP or ICMP flow once, then drops its packets silently.
fn refuse_flow(sh: &Shared, proto: u8, dst: IpAddr, port: u16, kind: Protocol, reason: Reason) {
    let mut seen = sh.reported.borrow_mut();
    if seen.len() >= MAX_REPORTED_FLOWS || !seen.insert((proto, dst, port)) {
        return;
    }
    drop(seen);
    let mut ev = NetEvent::new(kind, Verdict::Deny, reason);
    ev.address = Some(dst);
    ev.port = (proto == 17).then_some(port);
    sh.audit.emit(ev);
}

/// A new connection: decide, and if allowed make the socket that accepts it.
fn on_syn(sh: &Rc<Shared>, key: FlowKey) {
    if sh.stack.borrow().flows.contains_key(&key) {
        return; // a retransmitted SYN
    }
    let (dst, port) = (IpAddr::from(key.1.addr), key.1.port);
    let deny = |reason: Reason, name: Option<String>| {
        let mut ev = NetEvent::new(Protocol::Tcp, Verdict::Deny, reason);
        ev.name = name;
        ev.address = Some(dst);
        ev.port = Some(port);
        sh.audit.emit(ev);
    };
    sh.refresh_own_addresses();
    let verdict = decide::destination(&sh.policy, &sh.pins.borrow(), &sh.own.borrow().0, dst, port);
    let allowed = match verdict {
        Ok(a) => a,
        Err(d) => return deny(d.reason, d.name),
    };
    if sh.stack.borrow().flows.len() >= MAX_CONNECTIONS {
        return deny(Reason::TooManyConnections, allowed.name());
    }
    if let Some(b) = &sh.connect_bucket {
        if !b.borrow_mut().try_take_one(Instant::now()) {
            return deny(Reason::RateLimit, allowed.name());
        }
    }
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
    );
    // Give up on a sandbox that stops acknowledging (it was killed).
    socket.set_timeout(Some(smoltcp::time::Duration::from_secs(60)));
    if socket.listen(IpListenEndpoint::from(key.1)).is_err() {
        return deny(Reason::NotAllowlisted, allowed.name());
    }
    let h = {
        let mut st = sh.stack.borrow_mut();
        let h = st.sockets.add(socket);
        st.flows.insert(key, h);
        h
    };
    tokio::task::spawn_local(crate::conn::serve(sh.clone(), h, key, allowed));
}

/// Answers every waiting DNS query. Returns whether replies were queued.
fn serve_dns(sh: &Rc<Shared>, st: &mut Stack) -> bool {
    let mut sent = false;
    let mut query = [0u8; 1500];
    loop {
        let socket = st.sockets.get_mut::<udp::Socket>(st.dns);
        let Ok((n, meta)) = socket.recv_slice(&mut query) else {
            break;
        };
        let to = meta.endpoint;
        match dns::plan(&sh.policy, &query[..n]) {
            dns::Plan::Ignore => {}
            dns::Plan::Reply {
                bytes,
                name,
                denied,
            } => {
                sent |= socket.send_slice(&bytes, to).is_ok();
                dns_event(sh, name, denied, &bytes);
            }
            dns::Plan::Resolve { name, query } => {
                if sh.resolving.get() >= MAX_RESOLVING {
                    let bytes = dns::answer(&query, Err(std::io::Error::other("busy")));
                    sent |= socket.send_slice(&bytes, to).is_ok();
                } else {
                    sh.resolving.set(sh.resolving.get() + 1);
                    tokio::task::spawn_local(resolve(sh.clone(), name, query, to));
                }
            }
        }
    }
    sent
}

/// Pins what was answered and reports the decision.
fn dns_event(sh: &Shared, name: Option<String>, denied: bool, reply: &[u8]) {
    let addrs = Pins::addrs_in(reply);
    if !denied {
        if let Some(n) = &name {
            sh.pins.borrow_mut().record(n, &addrs);
        }
        if addrs.is_empty() {
            return; // NODATA for AAAA and friends: nothing was decided
        }
    }
    let (verdict, reason) = if denied {
        (Verdict::Deny, Reason::DnsNxdomain)
    } else {
        (Verdict::Allow, Reason::Allowlisted)
    };
    let mut ev = NetEvent::new(Protocol::Dns, verdict, reason);
    ev.name = name;
    ev.address = addrs.first().copied();
    sh.audit.emit(ev);
}

/// Looks an allowed name up on the host (on a blocking thread) and answers.
async fn resolve(
    sh: Rc<Shared>,
    name: String,
    query: Box<hickory_proto::op::Message>,
    to: IpEndpoint,
) {
    let resolver = sh.resolver.clone();
    let lookup = name.clone();
    let result = tokio::task::spawn_blocking(move || resolver.resolve(&lookup))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    sh.resolving.set(sh.resolving.get().saturating_sub(1));
    let bytes = dns::answer(&query, result);
    dns_event(&sh, Some(name), false, &bytes);
    let mut st = sh.stack.borrow_mut();
    let dns = st.dns;
    let _ = st
        .sockets
        .get_mut::<udp::Socket>(dns)
        .send_slice(&bytes, to);
    drop(st);
    sh.poke.notify_one();
}
