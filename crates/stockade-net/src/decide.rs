//! The verdict for a new TCP connection, from its destination alone, and
//! for the name its first bytes carry. Pure: the stack supplies the pins
//! and the clock.

use std::net::IpAddr;

use stockade_policy::{NetMode, NetworkPolicy};

use crate::classify::special;
use crate::dns::Pins;
use crate::event::Reason;
use crate::sniff::Sniffed;

/// Why a connection is allowed; it decides what is checked next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// The address was answered for these allowed names; the SNI / Host
    /// the client sends must name an allowed host too.
    ByName(Vec<String>),
    /// A `map_hosts` entry pins the address to this name: allowed even if
    /// private, because the policy names it; like `ByName`, the first
    /// bytes must name an allowed host.
    Mapped(String),
    /// An `allow_cidrs` rule admits it; no name is involved.
    Cidr,
    /// `open` mode, public address.
    Open,
}

impl Allowed {
    pub fn reason(&self) -> Reason {
        match self {
            Allowed::ByName(_) => Reason::Allowlisted,
            Allowed::Mapped(_) => Reason::Mapped,
            Allowed::Cidr => Reason::Cidr,
            Allowed::Open => Reason::Open,
        }
    }

    /// Whether a name made it allowed (an allowed DNS answer, or a
    /// `map_hosts` entry): its first bytes must then prove that name.
    pub fn by_name(&self) -> bool {
        matches!(self, Allowed::ByName(_) | Allowed::Mapped(_))
    }

    pub fn name(&self) -> Option<String> {
        match self {
            Allowed::ByName(names) => names.first().cloned(),
            Allowed::Mapped(name) => Some(name.clone()),
            Allowed::Cidr | Allowed::Open => None,
        }
    }
}

/// A refused destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub reason: Reason,
    /// The names the address was answered for, if any (rebinding).
    pub name: Option<String>,
}

/// Decides a connection to `addr:port` before any byte is exchanged.
/// `own` holds the supervisor's own addresses (every interface of its
/// network namespace): a service the host binds to them (or to 0.0.0.0)
/// is the host's, and is refused in every mode unless a CIDR rule names
/// the address.
pub fn destination(
    policy: &NetworkPolicy,
    pins: &Pins,
    own: &std::collections::HashSet<IpAddr>,
    addr: IpAddr,
    port: u16,
) -> Result<Allowed, Denied> {
    if policy.mode == NetMode::None {
        return Err(Denied {
            reason: Reason::NotAllowlisted,
            name: None,
        });
    }
    if policy.cidr_allows(addr, port) {
        return Ok(Allowed::Cidr);
    }
    let names: Vec<String> = pins
        .names(addr)
        .map(|n| n.iter().cloned().collect())
        .unwrap_or_default();
    if own.contains(&addr) || addr.is_unspecified() {
        return Err(Denied {
            reason: Reason::OwnAddress,
            name: names.first().cloned(),
        });
    }
    if let Some(name) = names.iter().find(|n| policy.mapped(n).contains(&addr)) {
        return Ok(Allowed::Mapped(name.clone()));
    }
    // After resolution: an internal address is refused however it was
    // reached, unless a rule above named it. This is what stops DNS
    // rebinding and the cloud metadata address.
    if special(addr).is_some() {
        return Err(Denied {
            reason: Reason::PrivateAddress,
            name: names.first().cloned(),
        });
    }
    if !names.is_empty() {
        return Ok(Allowed::ByName(names));
    }
    if policy.mode == NetMode::Open {
        return Ok(Allowed::Open);
    }
    Err(Denied {
        reason: Reason::NotAllowlisted,
        name: None,
    })
}

/// Checks the name a connection's first bytes carry. `Ok(())` lets the
/// bytes through; `Err(name)` refuses the connection (sni-mismatch).
pub fn first_bytes(
    policy: &NetworkPolicy,
    allowed: &Allowed,
    dst: IpAddr,
    sniffed: &Sniffed,
) -> Result<(), Option<String>> {
    if !allowed.by_name() {
        // CIDR and open connections are allowed by address: the name they
        // carry changes nothing.
        return Ok(());
    }
    match sniffed {
        Sniffed::Name(n) if policy.allows_name(n) => Ok(()),
        // "Host: 203.0.113.10" to 203.0.113.10 names no other site.
        Sniffed::Name(n) if n.parse::<IpAddr>().is_ok_and(|ip| ip == dst) => Ok(()),
        Sniffed::Name(n) => Err(Some(n.clone())),
        // Nothing names the site (TLS without SNI, HTTP without Host, any
        // other protocol), or the bytes do not parse: the address was
        // allowed for a name, and only a name can prove what it is for.
        Sniffed::NoName | Sniffed::Malformed | Sniffed::NeedMore => Err(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> std::collections::HashSet<IpAddr> {
        std::collections::HashSet::from([ip("198.51.100.1")])
    }

    #[test]
    fn the_supervisors_own_addresses_are_refused_unless_a_cidr_names_them() {
        let (p, pins) = setup();
        let e = destination(&p, &pins, &own(), ip("198.51.100.1"), 8080).unwrap_err();
        assert_eq!(e.reason, "own-address");
        let mut open = p.clone();
        open.mode = NetMode::Open;
        let e = destination(&open, &pins, &own(), ip("198.51.100.1"), 8080).unwrap_err();
        assert_eq!(e.reason, "own-address");
        let e = destination(&open, &pins, &own(), ip("0.0.0.0"), 8080).unwrap_err();
        assert_eq!(e.reason, "own-address");
        let mut named = open.clone();
        named.allow_cidrs = vec!["198.51.100.1/32:8080".parse().unwrap()];
        assert_eq!(
            destination(&named, &pins, &own(), ip("198.51.100.1"), 8080),
            Ok(Allowed::Cidr)
        );
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn setup() -> (NetworkPolicy, Pins) {
        let policy = NetworkPolicy {
            mode: NetMode::Allowlist,
            allow_hosts: vec!["good.test".parse().unwrap(), "rebind.test".parse().unwrap()],
            allow_cidrs: vec!["198.51.100.0/24:443".parse().unwrap()],
            map_hosts: vec!["db.test=10.99.0.2".parse().unwrap()],
            ..Default::default()
        };
        let mut pins = Pins::default();
        pins.record("good.test", &[ip("203.0.113.10")]);
        pins.record("rebind.test", &[ip("10.99.0.1")]);
        pins.record("db.test", &[ip("10.99.0.2")]);
        (policy, pins)
    }

    #[test]
    fn addresses_answered_for_allowed_names_are_allowed() {
        let (p, pins) = setup();
        let v = destination(&p, &pins, &own(), ip("203.0.113.10"), 80).unwrap();
        assert_eq!(v, Allowed::ByName(vec!["good.test".into()]));
    }

    #[test]
    fn raw_addresses_need_a_cidr_rule_with_the_port() {
        let (p, pins) = setup();
        let e = destination(&p, &pins, &own(), ip("203.0.113.20"), 80).unwrap_err();
        assert_eq!(e.reason, "not-allowlisted");
        assert_eq!(
            destination(&p, &pins, &own(), ip("198.51.100.7"), 443),
            Ok(Allowed::Cidr)
        );
        assert!(destination(&p, &pins, &own(), ip("198.51.100.7"), 80).is_err());
    }

    #[test]
    fn rebinding_to_a_private_address_is_refused_but_a_mapping_is_not() {
        let (p, pins) = setup();
        let e = destination(&p, &pins, &own(), ip("10.99.0.1"), 80).unwrap_err();
        assert_eq!(e.reason, "private-address");
        assert_eq!(e.name.as_deref(), Some("rebind.test"));
        assert_eq!(
            destination(&p, &pins, &own(), ip("10.99.0.2"), 5432),
            Ok(Allowed::Mapped("db.test".into()))
        );
        for raw in ["169.254.169.254", "127.0.0.1", "198.18.0.1", "100.64.1.1"] {
            assert_eq!(
                destination(&p, &pins, &own(), ip(raw), 80)
                    .unwrap_err()
                    .reason,
                "private-address"
            );
        }
    }

    #[test]
    fn open_mode_allows_public_addresses_only() {
        let (mut p, pins) = setup();
        p.mode = NetMode::Open;
        assert_eq!(
            destination(&p, &pins, &own(), ip("203.0.113.99"), 22),
            Ok(Allowed::Open)
        );
        assert!(destination(&p, &pins, &own(), ip("192.168.1.1"), 22).is_err());
        p.mode = NetMode::None;
        assert!(destination(&p, &pins, &own(), ip("203.0.113.10"), 80).is_err());
    }

    #[test]
    fn first_bytes_must_name_an_allowed_host() {
        let (p, _) = setup();
        let by_name = Allowed::ByName(vec!["good.test".into()]);
        let dst = ip("203.0.113.10");
        let ok = |s: Sniffed| first_bytes(&p, &by_name, dst, &s);
        assert_eq!(ok(Sniffed::Name("good.test".into())), Ok(()));
        assert_eq!(ok(Sniffed::Name("db.test".into())), Ok(()));
        // Fail-closed: a connection allowed by name must prove the name.
        assert_eq!(ok(Sniffed::NoName), Err(None));
        assert_eq!(ok(Sniffed::Name("203.0.113.10".into())), Ok(()));
        assert_eq!(
            ok(Sniffed::Name("evil.test".into())),
            Err(Some("evil.test".into()))
        );
        assert_eq!(
            ok(Sniffed::Name("203.0.113.11".into())),
            Err(Some("203.0.113.11".into()))
        );
        assert_eq!(ok(Sniffed::Malformed), Err(None));
        assert_eq!(
            first_bytes(&p, &Allowed::Cidr, dst, &Sniffed::Name("evil.test".into())),
            Ok(())
        );
    }
}
