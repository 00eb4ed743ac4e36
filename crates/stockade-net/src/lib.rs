//! Egress filter for a sandbox's network namespace.
//!
//! In `allowlist` and `open` modes the sandbox's only interface is a TUN
//! device (made inside the sandbox by stockade-isolate, with this crate's
//! [`SANDBOX_ADDR`], [`GATEWAY_ADDR`], [`PREFIX_LEN`] and [`MTU`]); its
//! other end is served here by a userspace TCP/IP stack ([`Egress`]). Every
//! connection the sandbox makes therefore ends in this crate, which decides
//! it against the [`NetworkPolicy`], proxies what is allowed through an
//! ordinary socket in the supervisor's namespace, and reports each decision
//! as a [`NetEvent`]. No firewall rules, no forwarding, no proxy variables.
//!
//! Layout: `tun.rs` (the supervisor's end of the device), `stack.rs` (the
//! smoltcp loop and the packet filter in front of it), `conn.rs` (one
//! proxied connection), `decide.rs` (the verdict for a destination),
//! `dns.rs`, `sniff.rs` (SNI / Host), `classify.rs` (private ranges),
//! `limits.rs` (token buckets), `audit.rs` (events and summary).

mod audit;
mod classify;
mod conn;
mod decide;
mod dns;
mod egress;
mod event;
mod limits;
mod resolve;
mod sniff;
mod stack;
mod tun;

use std::net::Ipv4Addr;

pub use audit::{NetEvent, NetSummary};
pub use classify::{special, Special};
pub use egress::Egress;
pub use event::{Protocol, Reason, Verdict};
pub use limits::TokenBucket;
pub use resolve::{Resolve, SystemResolver};
pub use sniff::{sniff, Sniffed};
pub use stockade_policy::NetworkPolicy;

/// The sandbox's address on its TUN device. 198.18.0.0/15 is the
/// benchmarking range (RFC 2544): it names no real network, and the filter
/// refuses it as a destination, so the sandbox cannot reach us by it.
pub const SANDBOX_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The sandbox's default gateway, answered by the userspace stack.
pub const GATEWAY_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The sandbox's name server (`nameserver 198.18.0.1` in its resolv.conf).
pub const DNS_ADDR: Ipv4Addr = GATEWAY_ADDR;
/// Prefix length of the TUN network.
pub const PREFIX_LEN: u8 = 15;
/// MTU of the TUN device, on both ends.
pub const MTU: u16 = 65535;
/// Most TCP connections a sandbox may have open at once; each holds two
/// socket buffers of [`SOCKET_BUFFER`] bytes in the supervisor.
pub const MAX_CONNECTIONS: usize = 256;
/// Receive and send buffer of each proxied connection, per side.
pub const SOCKET_BUFFER: usize = 256 * 1024;

/// What the egress stack enforces for one sandbox.
#[derive(Clone)]
pub struct EgressConfig {
    pub policy: NetworkPolicy,
    /// Named in every event, so logs of many sandboxes can be told apart.
    pub sandbox_id: String,
    /// Resolves allowed names that `map_hosts` does not pin. The host's
    /// resolver ([`SystemResolver`]) unless a caller (a test) brings its own.
    pub resolver: std::sync::Arc<dyn Resolve>,
}

impl EgressConfig {
    /// A configuration that resolves allowed names with the host's resolver.
    pub fn new(policy: NetworkPolicy, sandbox_id: impl Into<String>) -> Self {
        EgressConfig {
            policy,
            sandbox_id: sandbox_id.into(),
            resolver: std::sync::Arc::new(SystemResolver),
        }
    }
}

impl std::fmt::Debug for EgressConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressConfig")
            .field("policy", &self.policy)
            .field("sandbox_id", &self.sandbox_id)
            .finish_non_exhaustive()
    }
}

/// Setting up or running the egress layer failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "network mode \"none\" needs no egress stack; start one only for \"allowlist\" or \"open\""
    )]
    ModeNone,
    #[error("the network policy is not valid")]
    Policy(#[from] stockade_policy::NetworkValidationError),
    #[error("cannot start the egress thread")]
    Thread(#[source] std::io::Error),
    #[error("cannot set up the egress stack's event loop")]
    Runtime(#[source] std::io::Error),
}
