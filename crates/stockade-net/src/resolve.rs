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

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary is linked statically (see `.cargo/config.toml`), and so
    /// is this test: glibc's resolver must still answer from its built-in
    /// `files` source. Only /etc/hosts is read; nothing leaves the host.
    #[test]
    fn the_system_resolver_answers_from_the_hosts_file() {
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let listed = hosts.lines().any(|l| {
            let mut f = l.split('#').next().unwrap_or("").split_whitespace();
            f.next() == Some("127.0.0.1") && f.any(|n| n == "localhost")
        });
        if !listed {
            eprintln!("skipped: /etc/hosts does not map localhost to 127.0.0.1");
            return;
        }
        let got = SystemResolver.resolve("localhost").unwrap();
        assert!(got.contains(&IpAddr::from([127, 0, 0, 1])), "{got:?}");
    }
}
