//! The supervisor's end of the sandbox's TUN device. The device itself is
//! made and configured inside the sandbox's network namespace by
//! stockade-isolate (`stockade_isolate::tun`), with the addresses the
//! caller takes from this crate's constants ([`crate::SANDBOX_ADDR`],
//! [`crate::GATEWAY_ADDR`], [`crate::DNS_ADDR`], [`crate::PREFIX_LEN`],
//! [`crate::MTU`]); this end only reads and writes its packets.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

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
