//! The sandbox's TUN device, made and configured inside its network
//! namespace. The supervisor serves the other end (stockade-net's egress
//! stack) through the returned descriptor; this crate only makes the
//! device, with the addresses the caller chose ([`TunConfig`]).
//!
//! Configuration uses the classic interface ioctls, so no helper binary
//! (`ip`) has to exist anywhere.

use std::ffi::CString;
use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// How the TUN device inside a sandbox is set up. The caller fills it in
/// from the egress stack's constants: both ends must agree on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunConfig {
    /// The sandbox's own address on the device.
    pub address: Ipv4Addr,
    /// Prefix length of the device's network.
    pub prefix_len: u8,
    /// The default gateway (every route goes through it).
    pub gateway: Ipv4Addr,
    /// The name server the sandbox's generated `resolv.conf` names.
    pub dns: Ipv4Addr,
    /// MTU of the device.
    pub mtu: u16,
}

/// Making or configuring the TUN device failed.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error(
        "cannot open /dev/net/tun (is the tun module loaded and the device node present? \
         Run as an ordinary user, it must be open to you: see `stockade doctor`)"
    )]
    Open(#[source] io::Error),
    #[error("cannot {what} on the TUN device {name:?} (the caller needs CAP_NET_ADMIN in its network namespace)")]
    Ioctl {
        what: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("TUN device name {0:?} must be 1-15 bytes without '/', ' ' or NUL")]
    Name(String),
    #[error("TUN prefix length {0} is not 0-32")]
    PrefixLen(u8),
}

/// `struct rtentry` from `<linux/route.h>` (glibc's libc crate lacks it).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

const RTF_UP: libc::c_ushort = 0x0001;
const RTF_GATEWAY: libc::c_ushort = 0x0002;

fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data;
    // this is the conversion the socket ioctls expect.
    unsafe { mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

/// The netmask of a prefix length, or `None` past 32.
fn netmask(prefix_len: u8) -> Option<Ipv4Addr> {
    match prefix_len {
        0 => Some(Ipv4Addr::UNSPECIFIED),
        1..=32 => Some(Ipv4Addr::from(u32::MAX << (32 - u32::from(prefix_len)))),
        _ => None,
    }
}

/// Whether `name` can name a network interface.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() < libc::IFNAMSIZ && !name.contains(['/', ' ', '\0'])
}

/// Runs one ioctl whose argument is a pointer to `arg`.
fn ioctl<T>(
    fd: RawFd,
    request: libc::Ioctl,
    arg: &mut T,
    what: &'static str,
    name: &str,
) -> Result<(), TunError> {
    // SAFETY: every request used here takes a pointer to the structure
    // passed (ifreq or rtentry), which outlives the call.
    let rc = unsafe { libc::ioctl(fd, request, arg as *mut T) };
    if rc < 0 {
        return Err(TunError::Ioctl {
            what,
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Creates the TUN device `name` in the calling thread's network
/// namespace, gives it `cfg.address`/`cfg.prefix_len` and `cfg.mtu`,
/// brings it up and routes everything through `cfg.gateway`. Returns the
/// device's descriptor (close-on-exec), to be handed to whoever serves
/// the other end.
///
/// Must run inside the sandbox's network namespace with CAP_NET_ADMIN
/// there; `/dev/net/tun` must be reachable (open it before pivoting away
/// from the host's `/dev`, or bind it in).
pub fn configure_tun_inside(name: &str, cfg: &TunConfig) -> Result<OwnedFd, TunError> {
    if !valid_name(name) {
        return Err(TunError::Name(name.to_string()));
    }
    let mask = netmask(cfg.prefix_len).ok_or(TunError::PrefixLen(cfg.prefix_len))?;
    let path = c"/dev/net/tun";
    // SAFETY: open with a valid NUL-terminated path; the result is checked.
    let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(TunError::Open(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a descriptor we just opened and own.
    let tun = unsafe { OwnedFd::from_raw_fd(raw) };

    let mut req = ifreq_for(name);
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    ioctl(
        tun.as_raw_fd(),
        libc::TUNSETIFF,
        &mut req,
        "create (TUNSETIFF)",
        name,
    )?;

    // Address, netmask, MTU and flags are set through any AF_INET socket.
    // SAFETY: plain socket call; the result is checked.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(TunError::Ioctl {
            what: "open a configuration socket",
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `sock` is a descriptor we just opened and own.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    let s = sock.as_raw_fd();

    let mut req = ifreq_for(name);
    req.ifr_ifru.ifru_addr = sockaddr_v4(cfg.address);
    ioctl(
        s,
        libc::SIOCSIFADDR as libc::Ioctl,
        &mut req,
        "set the address",
        name,
    )?;

    let mut req = ifreq_for(name);
    req.ifr_ifru.ifru_netmask = sockaddr_v4(mask);
    ioctl(
        s,
        libc::SIOCSIFNETMASK as libc::Ioctl,
        &mut req,
        "set the netmask",
        name,
    )?;

    let mut req = ifreq_for(name);
    req.ifr_ifru.ifru_mtu = libc::c_int::from(cfg.mtu);
    ioctl(
        s,
        libc::SIOCSIFMTU as libc::Ioctl,
        &mut req,
        "set the MTU",
        name,
    )?;

    let mut req = ifreq_for(name);
    ioctl(
        s,
        libc::SIOCGIFFLAGS as libc::Ioctl,
        &mut req,
        "read the flags",
        name,
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(
        s,
        libc::SIOCSIFFLAGS as libc::Ioctl,
        &mut req,
        "bring it up",
        name,
    )?;

    let mut dev = CString::new(name)
        .map_err(|_| TunError::Name(name.to_string()))?
        .into_bytes_with_nul();
    let mut route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_v4(cfg.gateway),
        rt_genmask: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_flags: RTF_UP | RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev.as_mut_ptr().cast(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    ioctl(
        s,
        libc::SIOCADDRT as libc::Ioctl,
        &mut route,
        "add the default route",
        name,
    )?;
    Ok(tun)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks() {
        assert_eq!(netmask(0), Some(Ipv4Addr::UNSPECIFIED));
        assert_eq!(netmask(15), Some(Ipv4Addr::new(255, 254, 0, 0)));
        assert_eq!(netmask(24), Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(netmask(32), Some(Ipv4Addr::BROADCAST));
        assert_eq!(netmask(33), None);
    }

    #[test]
    fn names() {
        assert!(valid_name("tun0"));
        assert!(valid_name("a23456789012345"));
        assert!(!valid_name(""));
        assert!(!valid_name("a234567890123456"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("a b"));
    }

    #[test]
    fn bad_input_is_refused_before_any_system_call() {
        let cfg = TunConfig {
            address: Ipv4Addr::new(10, 0, 0, 2),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            dns: Ipv4Addr::new(10, 0, 0, 1),
            mtu: 1500,
        };
        assert!(matches!(
            configure_tun_inside("a/b", &cfg),
            Err(TunError::Name(_))
        ));
        let wide = TunConfig {
            prefix_len: 40,
            ..cfg
        };
        assert!(matches!(
            configure_tun_inside("tun0", &wide),
            Err(TunError::PrefixLen(40))
        ));
    }
}
