//! Network policy: which names and addresses a sandbox may reach, and how
//! fast. Every rule type parses from the string a person writes in a policy
//! file (`"*.example.com"`, `"203.0.113.0/24:443"`, `"db.test=127.0.0.1"`,
//! `"50mbit"`) and prints back in a form that parses again. Matching is
//! pure: the egress layer (`stockade-net`) asks these types, so what a rule
//! means is decided in one place.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// New connections per minute when a policy asks for a rate limit without a number.
pub const DEFAULT_RATE_PER_MINUTE: u32 = 100;
/// Bandwidth per direction when a policy asks for a limit without a number: 50 Mbit/s.
pub const DEFAULT_BANDWIDTH: Bandwidth = Bandwidth(50_000_000 / 8);

/// Network access of one sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkPolicy {
    pub mode: NetMode,
    /// Names the sandbox may resolve and connect to.
    pub allow_hosts: Vec<HostPattern>,
    /// Addresses the sandbox may connect to by IP, optionally only on some ports.
    pub allow_cidrs: Vec<CidrRule>,
    /// Fixed answers for names; a mapped name is allowed, even to a private address.
    pub map_hosts: Vec<HostMapping>,
    /// New connections per minute; `None` is unlimited.
    pub rate_per_minute: Option<u32>,
    /// Bytes per second in each direction; `None` is unlimited.
    pub bandwidth: Option<Bandwidth>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// A private network namespace with only loopback.
    #[default]
    None,
    /// Only allowed names and addresses, through the egress filter.
    Allowlist,
    /// Any public address, through the egress filter (private ranges still refused).
    Open,
}

/// A network rule that did not parse, or a network policy that contradicts
/// itself. Each message names the key and the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkValidationError {
    #[error("network.allow_hosts: expected a host name like \"example.com\" or \"*.example.com\" (letters, digits, '-' and '.'), got {0:?}")]
    Host(String),
    #[error("network.allow_cidrs: expected an address block like \"203.0.113.0/24\", \"203.0.113.0/24:443\", \"203.0.113.7:8000-8080\" or \"[2001:db8::/32]:443\", got {value:?} ({why})")]
    Cidr { value: String, why: &'static str },
    #[error("network.map_hosts: expected \"NAME=IP\" like \"db.test=127.0.0.1\", got {0:?}")]
    Mapping(String),
    #[error("network.bandwidth: expected a rate like \"50mbit\", \"800kbit\" or \"6MB\" (bytes per second), got {0:?}")]
    Bandwidth(String),
    #[error("network.rate_per_minute must be at least 1 (use network.mode = \"none\" to forbid connections), got 0")]
    RatePerMinute,
    #[error("network.{0} has no effect when network.mode is \"none\"; set mode to \"allowlist\" or remove it")]
    UnusedWithModeNone(&'static str),
}

type E = NetworkValidationError;

impl NetworkPolicy {
    /// Cross-field checks; each rule was already checked when it parsed.
    pub fn validate(&self) -> Result<(), NetworkValidationError> {
        if self.mode == NetMode::None {
            if !self.allow_hosts.is_empty() {
                return Err(E::UnusedWithModeNone("allow_hosts"));
            }
            if !self.allow_cidrs.is_empty() {
                return Err(E::UnusedWithModeNone("allow_cidrs"));
            }
            if !self.map_hosts.is_empty() {
                return Err(E::UnusedWithModeNone("map_hosts"));
            }
        }
        if self.rate_per_minute == Some(0) {
            return Err(E::RatePerMinute);
        }
        if let Some(b) = self.bandwidth {
            if b.0 == 0 {
                return Err(E::Bandwidth(b.to_string()));
            }
        }
        Ok(())
    }

    /// Whether `name` may be resolved and connected to: it matches an
    /// `allow_hosts` pattern or is mapped. `open` mode allows every name.
    pub fn allows_name(&self, name: &str) -> bool {
        match self.mode {
            NetMode::None => false,
            NetMode::Open => true,
            NetMode::Allowlist => {
                let name = normalize_name(name);
                self.allow_hosts.iter().any(|p| p.matches(&name))
                    || self.map_hosts.iter().any(|m| m.name == name)
            }
        }
    }

    /// Fixed answers for `name`, in policy order.
    pub fn mapped(&self, name: &str) -> Vec<IpAddr> {
        let name = normalize_name(name);
        self.map_hosts
            .iter()
            .filter(|m| m.name == name)
            .map(|m| m.addr)
            .collect()
    }

    /// Whether an `allow_cidrs` rule admits `addr:port`.
    pub fn cidr_allows(&self, addr: IpAddr, port: u16) -> bool {
        self.mode != NetMode::None && self.allow_cidrs.iter().any(|c| c.contains(addr, port))
    }
}

/// Lower case, without the root's trailing dot: the form names are compared in.
pub fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Whether `name` is a syntactically valid ASCII host name (IDNA names must
/// be given in their `xn--` form).
fn valid_host_name(name: &str) -> bool {
    name.len() <= 253
        && !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `"example.com"` (that name only) or `"*.example.com"` (any name below
/// it, not `example.com` itself). Case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl HostPattern {
    /// Whether `name` (any case, trailing dot allowed) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = normalize_name(name);
        match self {
            HostPattern::Exact(n) => name == *n,
            HostPattern::Suffix(s) => {
                name.len() > s.len() + 1
                    && name.ends_with(s.as_str())
                    && name.as_bytes()[name.len() - s.len() - 1] == b'.'
            }
        }
    }
}

impl FromStr for HostPattern {
    type Err = NetworkValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = normalize_name(s.trim());
        let (suffix, rest) = match norm.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, norm),
        };
        if !valid_host_name(&rest) {
            return Err(E::Host(s.to_string()));
        }
        Ok(if suffix {
            HostPattern::Suffix(rest)
        } else {
            HostPattern::Exact(rest)
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Suffix(s) => write!(f, "*.{s}"),
        }
    }
}

/// An address block with an optional port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CidrRule {
    pub addr: IpAddr,
    pub prefix: u8,
    /// Inclusive port range; `None` is every port.
    pub ports: Option<(u16, u16)>,
}

impl CidrRule {
    pub fn contains(&self, addr: IpAddr, port: u16) -> bool {
        if let Some((lo, hi)) = self.ports {
            if port < lo || port > hi {
                return false;
            }
        }
        let p = u32::from(self.prefix);
        match (self.addr, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - p).unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - p).unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

fn parse_ports(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (lo.parse().ok()?, hi.parse().ok()?),
        None => {
            let p = s.parse().ok()?;
            (p, p)
        }
    };
    (lo >= 1 && lo <= hi).then_some((lo, hi))
}

impl FromStr for CidrRule {
    type Err = NetworkValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| E::Cidr {
            value: s.to_string(),
            why,
        };
        let t = s.trim();
        // "[v6/len]:ports" or "[v6]:ports"; otherwise "v4/len:ports" or a bare
        // v6 block, where every ':' belongs to the address.
        let (block, ports) = if let Some(rest) = t.strip_prefix('[') {
            let (block, after) = rest.split_once(']').ok_or_else(|| err("missing ']'"))?;
            match after {
                "" => (block, None),
                _ => (
                    block,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| err("expected ':' after ']'"))?,
                    ),
                ),
            }
        } else if t.matches(':').count() == 1 {
            let (b, p) = t.split_once(':').unwrap_or((t, ""));
            (b, Some(p))
        } else {
            (t, None)
        };
        let ports = match ports {
            Some(p) => Some(
                parse_ports(p).ok_or_else(|| err("ports must be 1-65535, LO-HI with LO <= HI"))?,
            ),
            None => None,
        };
        let (addr, prefix) = match block.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (block, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| err("prefix length out of range"))?,
            None => max,
        };
        // Host bits set usually means a typo ("10.0.0.1/8"); refuse rather than guess.
        if network_of(addr, prefix) != addr {
            return Err(err("host bits are set; give the network address"));
        }
        Ok(CidrRule {
            addr,
            prefix,
            ports,
        })
    }
}

fn network_of(addr: IpAddr, prefix: u8) -> IpAddr {
    let p = u32::from(prefix);
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - p).unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - p).unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

impl fmt::Display for CidrRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let block = format!("{}/{}", self.addr, self.prefix);
        match (self.addr, self.ports) {
            (_, None) => f.write_str(&block),
            (IpAddr::V4(_), Some((lo, hi))) if lo == hi => write!(f, "{block}:{lo}"),
            (IpAddr::V4(_), Some((lo, hi))) => write!(f, "{block}:{lo}-{hi}"),
            (IpAddr::V6(_), Some((lo, hi))) if lo == hi => write!(f, "[{block}]:{lo}"),
            (IpAddr::V6(_), Some((lo, hi))) => write!(f, "[{block}]:{lo}-{hi}"),
        }
    }
}

/// `"NAME=IP"`: the sandbox's DNS answers `NAME` with `IP`, without asking
/// the host's resolver.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostMapping {
    pub name: String,
    pub addr: IpAddr,
}

impl FromStr for HostMapping {
    type Err = NetworkValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || E::Mapping(s.to_string());
        let (name, addr) = s.split_once('=').ok_or_else(err)?;
        let name = normalize_name(name.trim());
        if !valid_host_name(&name) {
            return Err(err());
        }
        let addr = addr.trim();
        let addr = addr
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(addr);
        let addr = addr.parse().map_err(|_| err())?;
        Ok(HostMapping { name, addr })
    }
}

impl fmt::Display for HostMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.addr)
    }
}

/// Bytes per second. Bit units are decimal, as networks count them
/// (`"50mbit"` = 6,250,000 B/s); byte units are binary like every other
/// stockade size (`"6MB"` = 6 MiB/s). A trailing `"/s"` or `"ps"` is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bandwidth(pub u64);

impl Bandwidth {
    pub const fn bytes_per_second(self) -> u64 {
        self.0
    }
}

impl FromStr for Bandwidth {
    type Err = NetworkValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || E::Bandwidth(s.to_string());
        let t = s.trim().to_ascii_lowercase();
        let t = t
            .strip_suffix("/s")
            .or_else(|| t.strip_suffix("ps"))
            .unwrap_or(&t);
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num.parse().map_err(|_| err())?;
        let mult: f64 = match unit.trim() {
            "" | "b" => 1.0,
            "k" | "kb" | "kib" => 1024.0,
            "m" | "mb" | "mib" => 1024.0 * 1024.0,
            "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
            "bit" => 1.0 / 8.0,
            "kbit" => 1e3 / 8.0,
            "mbit" => 1e6 / 8.0,
            "gbit" => 1e9 / 8.0,
            _ => return Err(err()),
        };
        let v = num * mult;
        if !v.is_finite() || !(1.0..=1e15).contains(&v) {
            return Err(err());
        }
        Ok(Bandwidth(v as u64))
    }
}

impl fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Serde through the string form, so policy files and reports use the
/// syntax a person writes.
macro_rules! serde_as_string {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_as_string!(HostPattern, CidrRule, HostMapping);

impl Serialize for Bandwidth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bandwidth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A bare number is bytes per second, like a bare number for any size.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Bytes(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::Bytes(n) => Ok(Bandwidth(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> HostPattern {
        s.parse().unwrap()
    }

    #[test]
    fn exact_pattern_matches_only_that_name_in_any_case() {
        let p = pat("Example.COM");
        assert!(p.matches("example.com"));
        assert!(p.matches("EXAMPLE.com."));
        assert!(!p.matches("www.example.com"));
        assert!(!p.matches("badexample.com"));
        assert!(!p.matches("example.com.evil.test"));
    }

    #[test]
    fn wildcard_pattern_matches_below_the_suffix_but_not_the_apex() {
        let p = pat("*.example.com");
        assert!(p.matches("api.example.com"));
        assert!(p.matches("a.b.EXAMPLE.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("badexample.com"));
        assert!(!p.matches(".example.com"));
        assert_eq!(p.to_string(), "*.example.com");
    }

    #[test]
    fn rejects_malformed_host_patterns_naming_the_key() {
        for bad in [
            "",
            "*",
            "*.",
            "a..b",
            "-a.com",
            "ex ample.com",
            "*.*.com",
            "a.com/x",
            "é.com",
        ] {
            let e = bad.parse::<HostPattern>().unwrap_err().to_string();
            assert!(e.starts_with("network.allow_hosts: expected"), "{bad}: {e}");
        }
    }

    #[test]
    fn cidr_rules_parse_with_and_without_ports() {
        let r: CidrRule = "203.0.113.0/24".parse().unwrap();
        assert!(r.contains("203.0.113.9".parse().unwrap(), 1));
        assert!(!r.contains("203.0.114.9".parse().unwrap(), 1));
        assert!(!r.contains("2001:db8::1".parse().unwrap(), 1));
        let r: CidrRule = "203.0.113.0/24:443".parse().unwrap();
        assert!(r.contains("203.0.113.9".parse().unwrap(), 443));
        assert!(!r.contains("203.0.113.9".parse().unwrap(), 80));
        let r: CidrRule = "203.0.113.7:8000-8080".parse().unwrap();
        assert_eq!(r.prefix, 32);
        assert!(r.contains("203.0.113.7".parse().unwrap(), 8080));
        assert!(!r.contains("203.0.113.7".parse().unwrap(), 8081));
        assert!(!r.contains("203.0.113.8".parse().unwrap(), 8000));
        let r: CidrRule = "[2001:db8::/32]:443".parse().unwrap();
        assert!(r.contains("2001:db8:1::5".parse().unwrap(), 443));
        assert!(!r.contains("2001:db9::5".parse().unwrap(), 443));
        assert_eq!(r.to_string(), "[2001:db8::/32]:443");
        let r: CidrRule = "2001:db8::/32".parse().unwrap();
        assert!(r.contains("2001:db8::1".parse().unwrap(), 9));
        let r: CidrRule = "0.0.0.0/0".parse().unwrap();
        assert!(r.contains("198.51.100.1".parse().unwrap(), 9));
        for s in [
            "203.0.113.0/24:443",
            "203.0.113.0/24:1-1024",
            "[2001:db8::/32]:1-2",
        ] {
            assert_eq!(s.parse::<CidrRule>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn rejects_malformed_cidr_rules_with_the_reason() {
        for (bad, why) in [
            ("10.0.0.1/8", "host bits"),
            ("10.0.0.0/33", "prefix"),
            ("10.0.0.0/8:0", "ports"),
            ("10.0.0.0/8:90-80", "ports"),
            ("example.com/8", "not an IP"),
            ("[2001:db8::/32", "']'"),
        ] {
            let e = bad.parse::<CidrRule>().unwrap_err().to_string();
            assert!(e.starts_with("network.allow_cidrs: expected"), "{e}");
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn host_mappings_parse_and_normalise_the_name() {
        let m: HostMapping = "DB.test=127.0.0.1".parse().unwrap();
        assert_eq!(m.name, "db.test");
        assert_eq!(m.addr, "127.0.0.1".parse::<IpAddr>().unwrap());
        let m: HostMapping = "v6.test=[::1]".parse().unwrap();
        assert_eq!(m.addr, "::1".parse::<IpAddr>().unwrap());
        for bad in [
            "db.test",
            "=1.2.3.4",
            "db.test=",
            "db.test=localhost",
            "*.x=1.2.3.4",
        ] {
            let e = bad.parse::<HostMapping>().unwrap_err().to_string();
            assert!(
                e.starts_with("network.map_hosts: expected \"NAME=IP\""),
                "{e}"
            );
        }
    }

    #[test]
    fn bandwidth_parses_bits_decimal_and_bytes_binary() {
        let b = |s: &str| s.parse::<Bandwidth>().unwrap().0;
        assert_eq!(b("50mbit"), 6_250_000);
        assert_eq!(b("800kbit"), 100_000);
        assert_eq!(b("1gbit"), 125_000_000);
        assert_eq!(b("6MB"), 6 * 1024 * 1024);
        assert_eq!(b("6MB/s"), 6 * 1024 * 1024);
        assert_eq!(b("1.5k"), 1536);
        assert_eq!(b("4096"), 4096);
        assert_eq!(DEFAULT_BANDWIDTH.0, b("50mbit"));
        for bad in ["", "fast", "0", "-5mbit", "5 furlongs", "1e400"] {
            let e = bad.parse::<Bandwidth>().unwrap_err().to_string();
            assert!(e.starts_with("network.bandwidth: expected"), "{e}");
        }
    }

    #[test]
    fn parses_a_full_network_section_and_round_trips() {
        #[derive(Deserialize, Serialize)]
        struct Doc {
            network: NetworkPolicy,
        }
        let text = r#"
            [network]
            mode = "allowlist"
            allow_hosts = ["pypi.org", "*.pythonhosted.org"]
            allow_cidrs = ["203.0.113.0/24:443"]
            map_hosts = ["db.test=127.0.0.1"]
            rate_per_minute = 100
            bandwidth = "50mbit"
        "#;
        let doc: Doc = toml::from_str(text).unwrap();
        let n = &doc.network;
        n.validate().unwrap();
        assert_eq!(n.mode, NetMode::Allowlist);
        assert!(n.allows_name("files.pythonhosted.org"));
        assert!(n.allows_name("PYPI.org."));
        assert!(n.allows_name("db.test"));
        assert!(!n.allows_name("pythonhosted.org"));
        assert!(!n.allows_name("evil.test"));
        assert!(n.cidr_allows("203.0.113.5".parse().unwrap(), 443));
        assert_eq!(
            n.mapped("DB.test"),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(n.bandwidth, Some(DEFAULT_BANDWIDTH));
        let again: Doc = toml::from_str(&toml::to_string(&doc).unwrap()).unwrap();
        assert_eq!(&again.network, n);
    }

    #[test]
    fn bad_rules_in_a_file_name_the_key() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Doc {
            network: NetworkPolicy,
        }
        let e = toml::from_str::<Doc>("[network]\nallow_hosts = [\"a b\"]").unwrap_err();
        assert!(e.to_string().contains("network.allow_hosts"), "{e}");
        let e = toml::from_str::<Doc>("[network]\nbandwidth = \"lots\"").unwrap_err();
        assert!(e.to_string().contains("50mbit"), "{e}");
        let e = toml::from_str::<Doc>("[network]\nallow_ports = [1]").unwrap_err();
        assert!(e.to_string().contains("allow_ports"), "{e}");
    }

    #[test]
    fn validation_refuses_contradictions() {
        let mut n = NetworkPolicy {
            allow_hosts: vec![pat("a.test")],
            ..Default::default()
        };
        let e = n.validate().unwrap_err().to_string();
        assert!(e.contains("network.allow_hosts has no effect"), "{e}");
        n.mode = NetMode::Allowlist;
        n.validate().unwrap();
        n.rate_per_minute = Some(0);
        assert!(n
            .validate()
            .unwrap_err()
            .to_string()
            .contains("network.rate_per_minute"));
        n.rate_per_minute = Some(DEFAULT_RATE_PER_MINUTE);
        n.validate().unwrap();
    }

    #[test]
    fn mode_none_allows_nothing_and_open_allows_every_name() {
        let mut n = NetworkPolicy::default();
        assert!(!n.allows_name("a.test"));
        assert!(!n.cidr_allows("203.0.113.1".parse().unwrap(), 1));
        n.mode = NetMode::Open;
        assert!(n.allows_name("anything.test"));
    }
}
