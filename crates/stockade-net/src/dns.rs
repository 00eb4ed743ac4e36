//! The sandbox's DNS server. Allowed names are answered (from `map_hosts`,
//! or from the host's resolver); every other name gets NXDOMAIN at once and
//! is never looked up, so DNS cannot carry data out of the sandbox.
//!
//! This module only plans and builds messages; the stack does the I/O.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{rdata, RData, Record, RecordType};
use stockade_policy::NetworkPolicy;

/// TTL of our answers. Short, so a sandbox re-asks and we re-pin.
pub const ANSWER_TTL: u32 = 60;
/// Most addresses remembered per sandbox; a sandbox resolving ever more
/// names cannot grow the supervisor without bound.
pub const MAX_PINS: usize = 65_536;

/// What to do with one DNS datagram from the sandbox.
#[derive(Debug)]
pub enum Plan {
    /// Send these bytes back. `name` is the name asked for (when it is a
    /// plain host name or refused); `denied` says the name was refused.
    Reply {
        bytes: Vec<u8>,
        name: Option<String>,
        denied: bool,
    },
    /// An allowed name with no fixed answer: resolve it on the host, then
    /// call [`answer`].
    Resolve { name: String, query: Box<Message> },
    /// Not a DNS query we can answer at all (not even with an error).
    Ignore,
}

/// Decides how to answer `packet`.
pub fn plan(policy: &NetworkPolicy, packet: &[u8]) -> Plan {
    let Ok(msg) = Message::from_vec(packet) else {
        return reply_to_garbage(packet);
    };
    if msg.metadata.message_type != MessageType::Query {
        return Plan::Ignore; // never answer answers: no reflection loops
    }
    if msg.metadata.op_code != OpCode::Query || msg.queries.len() != 1 {
        return reply(&msg, ResponseCode::FormErr, &[], None, false);
    }
    let q = &msg.queries[0];
    let Some(name) = plain_name(q) else {
        // Names with bytes no host name has (dots inside labels, binary)
        // could be read differently by the host's resolver: refuse.
        return reply(
            &msg,
            ResponseCode::NXDomain,
            &[],
            Some(q.name().to_ascii()),
            true,
        );
    };
    if !policy.allows_name(&name) {
        // A service lookup under an allowed name (`_http._tcp.deb.debian.org`,
        // which apt makes before it connects): there are no such records
        // here. NXDOMAIN, never looked up, like a refused name, but not a
        // denial: it names nothing the sandbox may not reach.
        if service_base(&name).is_some_and(|base| policy.allows_name(base)) {
            return reply(&msg, ResponseCode::NXDomain, &[], None, false);
        }
        return reply(&msg, ResponseCode::NXDomain, &[], Some(name), true);
    }
    match q.query_type() {
        RecordType::A => {
            let mapped = policy.mapped(&name);
            if mapped.is_empty() {
                Plan::Resolve {
                    name,
                    query: Box::new(msg),
                }
            } else {
                reply(&msg, ResponseCode::NoError, &mapped, Some(name), false)
            }
        }
        // The data plane is IPv4 only: an allowed name has no other records
        // here (NOERROR, no answers), so clients use its A records.
        _ => reply(&msg, ResponseCode::NoError, &[], Some(name), false),
    }
}

/// The reply for a planned resolution. A failed lookup is SERVFAIL, so the
/// client may retry; an empty one is NXDOMAIN.
pub fn answer(query: &Message, resolved: std::io::Result<Vec<IpAddr>>) -> Vec<u8> {
    let plan = match resolved {
        Ok(addrs) if addrs.iter().any(IpAddr::is_ipv4) => {
            reply(query, ResponseCode::NoError, &addrs, None, false)
        }
        Ok(_) => reply(query, ResponseCode::NXDomain, &[], None, false),
        Err(_) => reply(query, ResponseCode::ServFail, &[], None, false),
    };
    match plan {
        Plan::Reply { bytes, .. } => bytes,
        _ => Vec::new(),
    }
}

/// The host name under a service name's leading underscore labels
/// (`_http._tcp.example.org` → `example.org`, RFC 2782 and RFC 6763), or
/// `None` when `name` does not start with one or has nothing after them.
fn service_base(name: &str) -> Option<&str> {
    let mut rest = name;
    while let Some(label) = rest.strip_prefix('_') {
        rest = label.split_once('.')?.1;
    }
    (rest.len() < name.len() && !rest.is_empty()).then_some(rest)
}

/// The query name as lower-case ASCII labels of letters, digits, '-' and
/// '_', or `None` if any label has other bytes.
fn plain_name(q: &Query) -> Option<String> {
    let mut out = String::new();
    for label in q.name().iter() {
        if label.is_empty()
            || !label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
    }
    (!out.is_empty()).then_some(out)
}

fn reply(
    query: &Message,
    code: ResponseCode,
    addrs: &[IpAddr],
    name: Option<String>,
    denied: bool,
) -> Plan {
    let mut msg = Message::response(query.metadata.id, query.metadata.op_code);
    msg.metadata.response_code = code;
    msg.metadata.recursion_desired = query.metadata.recursion_desired;
    msg.metadata.recursion_available = true;
    if let Some(q) = query.queries.first() {
        msg.add_query(q.clone());
        for addr in addrs {
            if let (IpAddr::V4(v4), RecordType::A) = (addr, q.query_type()) {
                let rdata = RData::A(rdata::A(*v4));
                msg.add_answer(Record::from_rdata(q.name().clone(), ANSWER_TTL, rdata));
            }
        }
    }
    match msg.to_vec() {
        Ok(bytes) => Plan::Reply {
            bytes,
            name,
            denied,
        },
        Err(_) => Plan::Ignore,
    }
}

/// A datagram that is not a DNS message: answer FORMERR if it has at least
/// a header whose QR bit says "query", so a confused client fails fast.
fn reply_to_garbage(packet: &[u8]) -> Plan {
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return Plan::Ignore;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let mut msg = Message::response(id, OpCode::Query);
    msg.metadata.response_code = ResponseCode::FormErr;
    match msg.to_vec() {
        Ok(bytes) => Plan::Reply {
            bytes,
            name: None,
            denied: false,
        },
        Err(_) => Plan::Ignore,
    }
}

/// Which names each address was answered for, for this sandbox's lifetime.
/// A connection to an address is "by name" only if it is in here.
#[derive(Debug, Default)]
pub struct Pins {
    by_addr: HashMap<IpAddr, BTreeSet<String>>,
}

impl Pins {
    pub fn record(&mut self, name: &str, addrs: &[IpAddr]) {
        for addr in addrs {
            if self.by_addr.len() >= MAX_PINS && !self.by_addr.contains_key(addr) {
                return;
            }
            self.by_addr
                .entry(*addr)
                .or_default()
                .insert(name.to_string());
        }
    }

    /// Names `addr` was answered for, if any.
    pub fn names(&self, addr: IpAddr) -> Option<&BTreeSet<String>> {
        self.by_addr.get(&addr)
    }

    /// The A records in a reply we built, to pin them.
    pub fn addrs_in(reply: &[u8]) -> Vec<IpAddr> {
        Message::from_vec(reply)
            .map(|m| {
                m.answers
                    .iter()
                    .filter_map(|r| match r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
