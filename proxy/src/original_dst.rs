//! Where a redirected connection was going. Interception's iptables
//! REDIRECT rewrites the destination; conntrack keeps the original, which
//! `SO_ORIGINAL_DST` reads back.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use tokio::net::TcpStream;

/// The connection's original destination when iptables redirected it;
/// `None` when it came to this address directly (or without conntrack).
pub fn redirected(stream: &TcpStream) -> Option<SocketAddr> {
    let original = original_dst(stream)?;
    (stream.local_addr().ok() != Some(original)).then_some(original)
}

/// `SO_ORIGINAL_DST` (IPv4; interception installs IPv4 rules only).
fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    use std::os::fd::AsRawFd;
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: a plain getsockopt into a sockaddr_in of the size we pass.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&raw mut addr).cast(),
            &mut len,
        )
    };
    if rc != 0 || i32::from(addr.sin_family) != libc::AF_INET {
        return None;
    }
    Some(SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    )))
}
