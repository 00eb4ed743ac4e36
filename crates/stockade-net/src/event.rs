//! The closed vocabularies of a [`NetEvent`](crate::NetEvent): protocol,
//! verdict and reason. Each is an enum in the code and, in the JSON of
//! `--net-log` and the daemon's events, the same short string as always.

use serde::{Deserialize, Serialize};

/// Declares a field-less enum whose variants serialise as (and display
/// as) the given strings, with `ALL` listing every variant.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $wire:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $wire)] $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The string this value is written as.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// Compares with the string the value is written as.
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

wire_enum! {
    /// What kind of traffic was decided on.
    Protocol {
        Tcp = "tcp",
        Udp = "udp",
        Dns = "dns",
        Icmp = "icmp",
    }
}

wire_enum! {
    /// Whether the traffic was let through.
    Verdict {
        Allow = "allow",
        Deny = "deny",
    }
}

wire_enum! {
    /// Why the verdict was given.
    Reason {
        /// The address was answered for an allowlisted name.
        Allowlisted = "allowlisted",
        /// A `map_hosts` entry names the address.
        Mapped = "mapped",
        /// An `allow_cidrs` rule admits the address.
        Cidr = "cidr",
        /// `open` mode, public address.
        Open = "open",
        /// Nothing allows the destination.
        NotAllowlisted = "not-allowlisted",
        /// The address is the supervisor's own (a service of the host).
        OwnAddress = "own-address",
        /// The address is private, loopback, link-local or similar.
        PrivateAddress = "private-address",
        /// The first bytes named a host other than the allowed one.
        SniMismatch = "sni-mismatch",
        /// The first bytes named no host.
        NoName = "no-name",
        /// The first bytes could not be parsed.
        Malformed = "malformed",
        /// The policy's connection rate was exceeded.
        RateLimit = "rate-limit",
        /// Too many connections were open at once.
        TooManyConnections = "too-many-connections",
        /// UDP other than DNS to the sandbox's resolver.
        UdpNotAllowed = "udp-not-allowed",
        /// ICMP is never forwarded.
        IcmpNotAllowed = "icmp-not-allowed",
        /// A DNS query for a name that is not allowed.
        DnsNxdomain = "dns-nxdomain",
        /// Allowed, but the destination could not be reached.
        UpstreamUnreachable = "upstream-unreachable",
    }
}

impl Reason {
    /// A refusal that names a host: the summary lists such names.
    pub fn names_a_denied_host(self) -> bool {
        matches!(
            self,
            Reason::DnsNxdomain | Reason::SniMismatch | Reason::NotAllowlisted
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serialises to exactly `wire` and reads back to the same value.
    fn round_trip<T>(value: T, wire: &str)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug + std::fmt::Display,
    {
        let json = serde_json::to_string(&value).unwrap();
        assert_eq!(json, format!("\"{wire}\""), "{value:?}");
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), value);
        assert_eq!(value.to_string(), wire);
    }

    #[test]
    fn protocols_are_written_as_before() {
        let wire = [
            (Protocol::Tcp, "tcp"),
            (Protocol::Udp, "udp"),
            (Protocol::Dns, "dns"),
            (Protocol::Icmp, "icmp"),
        ];
        assert_eq!(wire.len(), Protocol::ALL.len());
        for (v, s) in wire {
            round_trip(v, s);
        }
    }

    #[test]
    fn verdicts_are_written_as_before() {
        let wire = [(Verdict::Allow, "allow"), (Verdict::Deny, "deny")];
        assert_eq!(wire.len(), Verdict::ALL.len());
        for (v, s) in wire {
            round_trip(v, s);
        }
    }

    #[test]
    fn reasons_are_written_as_before() {
        let wire = [
            (Reason::Allowlisted, "allowlisted"),
            (Reason::Mapped, "mapped"),
            (Reason::Cidr, "cidr"),
            (Reason::Open, "open"),
            (Reason::NotAllowlisted, "not-allowlisted"),
            (Reason::OwnAddress, "own-address"),
            (Reason::PrivateAddress, "private-address"),
            (Reason::SniMismatch, "sni-mismatch"),
            (Reason::NoName, "no-name"),
            (Reason::Malformed, "malformed"),
            (Reason::RateLimit, "rate-limit"),
            (Reason::TooManyConnections, "too-many-connections"),
            (Reason::UdpNotAllowed, "udp-not-allowed"),
            (Reason::IcmpNotAllowed, "icmp-not-allowed"),
            (Reason::DnsNxdomain, "dns-nxdomain"),
            (Reason::UpstreamUnreachable, "upstream-unreachable"),
        ];
        assert_eq!(wire.len(), Reason::ALL.len());
        for (v, s) in wire {
            round_trip(v, s);
        }
    }

    #[test]
    fn unknown_strings_are_refused() {
        assert!(serde_json::from_str::<Reason>("\"bogus\"").is_err());
        assert!(serde_json::from_str::<Verdict>("\"Deny\"").is_err());
        assert!(serde_json::from_str::<Protocol>("\"TCP\"").is_err());
    }
}
