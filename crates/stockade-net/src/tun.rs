//! The TUN device: made and configured inside the sandbox's network
//! namespace (by its init, which holds CAP_NET_ADMIN there), then served
//! from the supervisor through the file descriptor.
//!
//! Configuration uses the classic interface ioctls so no helper binary
//! (`ip`) has to exist inside the sandbox.

use std::ffi::CString;
use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::{NetError, GATEWAY_ADDR, MTU, PREFIX_LEN, SANDBOX_ADDR};

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

/// Runs one ioctl whose argument is a pointer to `arg`.
fn ioctl<T>(
    fd: RawFd,
    request: libc::Ioctl,
    arg: &mut T,
    what: &'static str,
    name: &str,
) -> Result<(), NetError> {
    // SAFETY: every request used here takes a pointer to the structure
    // passed (ifreq or rtentry), which outlives the call.
    let rc = unsafe { libc::ioctl(fd, request, arg as *mut T) };
    if rc < 0 {
        return Err(NetError::TunIoctl {
            what,
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Creates the TUN device `name` in the calling thread's network
/// namespace, gives it [`SANDBOX_ADDR`]/[`PREFIX_LEN`] and [`MTU`], brings
/// it up and routes everything through [`GATEWAY_ADDR`]. Returns the
/// device's descriptor (close-on-exec), to be handed to the supervisor,
/// which serves it with [`Egress::start`](crate::Egress::start).
///
/// Must run inside the sandbox's network namespace with CAP_NET_ADMIN
/// there; `/dev/net/tun` must be reachable (open it before pivoting away
/// from the host's `/dev`, or bind it in).
pub fn configure_tun_inside(name: &str) -> Result<OwnedFd, NetError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(NetError::TunName(name.to_string()));
    }
    let path = CString::new("/dev/net/tun").map_err(|e| NetError::OpenTun(e.into()))?;
    // SAFETY: open with a valid NUL-terminated path; the result is checked.
    let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(NetError::OpenTun(io::Error::last_os_error()));
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
        return Err(NetError::TunIoctl {
            what: "open a configuration socket",
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `sock` is a descriptor we just opened and own.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    let s = sock.as_raw_fd();

    let mut req = ifreq_for(name);
    req.ifr_ifru.ifru_addr = sockaddr_v4(SANDBOX_ADDR);
    ioctl(
        s,
        libc::SIOCSIFADDR as libc::Ioctl,
        &mut req,
        "set the address",
        name,
    )?;

    let mask = u32::MAX
        .checked_shl(32 - u32::from(PREFIX_LEN))
        .unwrap_or(0);
    let mut req = ifreq_for(name);
    req.ifr_ifru.ifru_netmask = sockaddr_v4(Ipv4Addr::from(mask));
    ioctl(
        s,
        libc::SIOCSIFNETMASK as libc::Ioctl,
        &mut req,
        "set the netmask",
        name,
    )?;

    let mut req = ifreq_for(name);
    req.ifr_ifru.ifru_mtu = libc::c_int::from(MTU);
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
        .map_err(|_| NetError::TunName(name.to_string()))?
        .into_bytes_with_nul();
    let mut route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_v4(GATEWAY_ADDR),
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

/// Sets `O_NONBLOCK` on the supervisor's end, for the event loop.
pub(crate) fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; results checked.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Reads one packet; `WouldBlock` when none is waiting.
pub(crate) fn read_packet(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reads at most buf.len() bytes into buf.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Writes one packet. A full queue drops the packet, as a link would; TCP
/// retransmits.
pub(crate) fn write_packet(fd: RawFd, packet: &[u8]) {
    // SAFETY: writes packet.len() bytes from packet.
    let _ = unsafe { libc::write(fd, packet.as_ptr().cast(), packet.len()) };
}
