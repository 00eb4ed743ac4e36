//! Which addresses a sandbox must never reach unless a rule names them.
//!
//! The check runs on the address a connection actually goes to, after DNS,
//! so an allowed name that resolves (or is re-bound) to an internal address
//! is still refused. The table follows the IANA special-purpose registries,
//! minus the documentation ranges (TEST-NET-1/2/3, 2001:db8::/32): nothing
//! internal lives there, and tests use them as stand-ins for public hosts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    Unspecified,
    Loopback,
    /// RFC 1918, and fc00::/7 for IPv6.
    Private,
    /// 169.254/16 (including the cloud metadata address) and fe80::/10.
    LinkLocal,
    /// 100.64/10, carrier-grade NAT.
    SharedCgnat,
    Multicast,
    Broadcast,
    /// Everything else the registries say is not globally reachable:
    /// 0/8, 192.0.0/24, 198.18/15 (our own virtual network), 240/4, and
    /// IPv6 equivalents.
    Reserved,
}

impl Special {
    pub fn as_str(self) -> &'static str {
        match self {
            Special::Unspecified => "unspecified",
            Special::Loopback => "loopback",
            Special::Private => "private",
            Special::LinkLocal => "link-local",
            Special::SharedCgnat => "cgnat",
            Special::Multicast => "multicast",
            Special::Broadcast => "broadcast",
            Special::Reserved => "reserved",
        }
    }
}

/// `Some(kind)` when `addr` is not a public unicast address.
pub fn special(addr: IpAddr) -> Option<Special> {
    match addr {
        IpAddr::V4(a) => special_v4(a),
        IpAddr::V6(a) => special_v6(a),
    }
}

fn in_v4(a: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(a) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn special_v4(a: Ipv4Addr) -> Option<Special> {
    use Special::*;
    let table: &[([u8; 4], u32, Special)] = &[
        ([0, 0, 0, 0], 32, Unspecified),
        ([255, 255, 255, 255], 32, Broadcast),
        ([0, 0, 0, 0], 8, Reserved),
        ([127, 0, 0, 0], 8, Loopback),
        ([10, 0, 0, 0], 8, Private),
        ([172, 16, 0, 0], 12, Private),
        ([192, 168, 0, 0], 16, Private),
        ([169, 254, 0, 0], 16, LinkLocal),
        ([100, 64, 0, 0], 10, SharedCgnat),
        ([192, 0, 0, 0], 24, Reserved),
        ([198, 18, 0, 0], 15, Reserved),
        ([224, 0, 0, 0], 4, Multicast),
        ([240, 0, 0, 0], 4, Reserved),
    ];
    table
        .iter()
        .find(|(net, prefix, _)| in_v4(a, *net, *prefix))
        .map(|(_, _, kind)| *kind)
}

fn special_v6(a: Ipv6Addr) -> Option<Special> {
    use Special::*;
    // Embedded IPv4 forms reach the IPv4 address they carry, so they are
    // judged as that address: ::ffff:10.0.0.1 is private.
    if let Some(v4) = a.to_ipv4_mapped() {
        return special_v4(v4);
    }
    let seg = a.segments();
    if a.is_unspecified() {
        return Some(Unspecified);
    }
    if a.is_loopback() {
        return Some(Loopback);
    }
    let bits = u128::from(a);
    let within = |net: u128, prefix: u32| {
        let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
        bits & mask == net & mask
    };
    if within(0xfc00 << 112, 7) {
        return Some(Private);
    }
    if within(0xfe80 << 112, 10) {
        return Some(LinkLocal);
    }
    if within(0xff00 << 112, 8) {
        return Some(Multicast);
    }
    // ::/96 (IPv4-compatible, deprecated), 64:ff9b::/96 (NAT64, which
    // reaches whatever IPv4 address it embeds), 100::/64 (discard),
    // 2001::/23 (IETF protocol assignments), 2002::/16 (6to4), fec0::/10.
    if seg[..6] == [0; 6]
        || within(0x0064_ff9b << 96, 96)
        || within(0x0100 << 112, 64)
        || within(0x2001 << 112, 23)
        || within(0x2002 << 112, 16)
        || within(0xfec0 << 112, 10)
    {
        return Some(Reserved);
    }
    None
}

/// Every address on an interface of the calling thread's network
/// namespace (the supervisor's own addresses). Empty if they cannot be
/// read, which leaves the other checks in place.
pub fn local_addresses() -> std::collections::HashSet<IpAddr> {
    let mut out = std::collections::HashSet::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive
        // until freeifaddrs; `ifa_addr` is null or a sockaddr of the family
        // it says, as the sockaddr_in/sockaddr_in6 read here.
        unsafe {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.insert(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.insert(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(list) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_address_table() {
        let cases: &[(&str, Option<Special>)] = &[
            ("0.0.0.0", Some(Special::Unspecified)),
            ("0.1.2.3", Some(Special::Reserved)),
            ("127.0.0.1", Some(Special::Loopback)),
            ("127.255.0.2", Some(Special::Loopback)),
            ("10.0.0.1", Some(Special::Private)),
            ("10.99.0.1", Some(Special::Private)),
            ("172.16.0.1", Some(Special::Private)),
            ("172.31.255.255", Some(Special::Private)),
            ("172.32.0.1", None),
            ("192.168.1.1", Some(Special::Private)),
            ("169.254.169.254", Some(Special::LinkLocal)),
            ("100.64.0.1", Some(Special::SharedCgnat)),
            ("100.127.255.255", Some(Special::SharedCgnat)),
            ("100.128.0.1", None),
            ("198.18.0.1", Some(Special::Reserved)),
            ("198.19.255.255", Some(Special::Reserved)),
            ("198.20.0.1", None),
            ("224.0.0.1", Some(Special::Multicast)),
            ("239.255.255.250", Some(Special::Multicast)),
            ("240.0.0.1", Some(Special::Reserved)),
            ("255.255.255.255", Some(Special::Broadcast)),
            ("192.0.0.8", Some(Special::Reserved)),
            ("8.8.8.8", None),
            ("203.0.113.10", None),
            ("::", Some(Special::Unspecified)),
            ("::1", Some(Special::Loopback)),
            ("fc00::1", Some(Special::Private)),
            ("fd12:3456::1", Some(Special::Private)),
            ("fe80::1", Some(Special::LinkLocal)),
            ("ff02::1", Some(Special::Multicast)),
            ("::ffff:10.0.0.1", Some(Special::Private)),
            ("::ffff:169.254.169.254", Some(Special::LinkLocal)),
            ("::ffff:127.0.0.1", Some(Special::Loopback)),
            ("::ffff:8.8.8.8", None),
            ("::10.0.0.1", Some(Special::Reserved)),
            ("64:ff9b::a00:1", Some(Special::Reserved)),
            ("2002:a00:1::", Some(Special::Reserved)),
            ("2606:4700::1111", None),
            ("2001:db8::1", None),
        ];
        for (addr, want) in cases {
            let got = special(addr.parse().unwrap());
            assert_eq!(got, *want, "{addr}");
        }
    }
}
