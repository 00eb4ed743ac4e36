//! Resolving allowed names on the host.

use std::io;
use std::net::{IpAddr, ToSocketAddrs};

/// Looks up a name that the policy allows and `map_hosts` does not pin.
/// Called on a blocking thread; only ever with allowed names.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, name: &str) -> io::Result<Vec<IpAddr>>;
}

/// The host's resolver (`getaddrinfo`, through the standard library).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: &str) -> io::Result<Vec<IpAddr>> {
        let mut out: Vec<IpAddr> = Vec::new();
        for sa in (name, 0u16).to_socket_addrs()? {
            if !out.contains(&sa.ip()) {
                out.push(sa.ip());
            }
        }
        Ok(out)
    }
}
