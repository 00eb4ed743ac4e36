//! The HTTP agents a pull uses: one verifying HTTPS against the system's
//! CAs (rustls-native-certs; it honours `SSL_CERT_FILE`/`SSL_CERT_DIR`)
//! plus `--registry-ca` PEM files, and one that skips verification, for
//! registries listed as insecure only. Plain HTTP URLs go through the
//! first (no TLS involved). Both use rustls with ring; no proxy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
use ureq::Agent;

use crate::pull::PullError;

/// How long to wait for a connection, and for each read of an answer: a
/// stalled registry fails the pull instead of hanging it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Root certificates: the system's and `extra` (PEM files, each with one
/// or more certificates).
pub fn roots(extra: &[PathBuf]) -> Result<Vec<Certificate<'static>>, PullError> {
    let native = rustls_native_certs::load_native_certs();
    let mut certs: Vec<Certificate<'static>> = native
        .certs
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    for path in extra {
        let pem = std::fs::read(path).map_err(|source| PullError::Local {
            path: path.clone(),
            source,
        })?;
        let before = certs.len();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c.to_owned()),
                Ok(_) => {}
                Err(e) => {
                    return Err(PullError::Malformed {
                        what: format!("CA file {}", path.display()),
                        reason: e.to_string(),
                    })
                }
            }
        }
        if certs.len() == before {
            return Err(PullError::Malformed {
                what: format!("CA file {}", path.display()),
                reason: "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string(),
            });
        }
    }
    Ok(certs)
}

fn agent(tls: TlsConfig) -> Agent {
    Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(tls)
        .proxy(None)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .max_redirects(5)
        .user_agent(concat!("stockade/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// The verifying agent.
pub fn verified(roots: Vec<Certificate<'static>>) -> Agent {
    agent(
        TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::Specific(Arc::new(roots)))
            .build(),
    )
}

/// The agent for registries the user listed as insecure.
pub fn unverified() -> Agent {
    agent(
        TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .disable_verification(true)
            .build(),
    )
}

/// What went wrong in a request that got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The server's certificate was not trusted.
    Certificate,
    /// The peer does not speak TLS (a plain HTTP server answered the
    /// ClientHello, or closed on it).
    NotTls,
    /// Anything else: refused, reset, timed out, no such host.
    Other,
}

fn rustls_failure(e: &rustls::Error) -> Failure {
    match e {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            Failure::Certificate
        }
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. }
        | rustls::Error::PeerMisbehaved(_)
        | rustls::Error::PeerIncompatible(_)
        | rustls::Error::DecryptError
        | rustls::Error::AlertReceived(_) => Failure::NotTls,
        _ => Failure::Other,
    }
}

/// Classifies a transport error (for the HTTPS → HTTP fallback).
pub fn classify(e: &ureq::Error) -> Failure {
    match e {
        ureq::Error::Rustls(r) => rustls_failure(r),
        ureq::Error::Io(io) => {
            let mut cur: Option<&(dyn std::error::Error + 'static)> = io.get_ref().map(|e| e as _);
            while let Some(inner) = cur {
                if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                    return rustls_failure(r);
                }
                cur = inner.source();
            }
            Failure::Other
        }
        ureq::Error::Tls(_) => Failure::NotTls,
        _ => Failure::Other,
    }
}

/// Whether `host[:port]` is this machine's loopback (`localhost`,
/// `127.0.0.0/8`, `[::1]`).
pub fn is_loopback(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for yes in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:1",
            "127.3.2.1",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in [
            "localhost.example.com",
            "128.0.0.1",
            "10.0.0.1:5000",
            "[::2]:1",
            "example.com",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
    }

    #[test]
    fn extra_ca_files_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            roots(std::slice::from_ref(&missing)),
            Err(PullError::Local { .. })
        ));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = roots(std::slice::from_ref(&empty)).unwrap_err();
        assert!(e.to_string().contains("empty.pem"), "{e}");
        // A syntactically valid PEM certificate block is taken (rustls
        // checks its contents when it verifies a server).
        let good = dir.path().join("ca.pem");
        std::fs::write(
            &good,
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let with = roots(std::slice::from_ref(&good)).unwrap();
        let without = roots(&[]).unwrap();
        assert_eq!(with.len(), without.len() + 1);
        assert_eq!(
            with.last().unwrap().der(),
            &[0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9]
        );
    }
}
