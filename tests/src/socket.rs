//! TCP connects where std hides what a test needs: the source port of a connection that
//! failed, and a connection from a source port of the test's choosing.

use std::{
    io, mem,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::FromRawFd,
    time::Duration,
};

/// A TCP connection to `addr` within `timeout`, like `TcpStream::connect_timeout`, but the
/// source port the kernel chose is known even when the connection fails (a non-blocking
/// connect, then getsockname, then poll): failures can be matched with earlier requests
/// that used the same 4-tuple.
pub fn connect(addr: SocketAddr, timeout: Duration) -> (Option<u16>, io::Result<TcpStream>) {
    let last = io::Error::last_os_error;
    // SAFETY: plain socket calls on a descriptor this function owns (closed on every error
    // path, or handed to the TcpStream); the sockaddr structs outlive the calls using them.
    unsafe {
        let (family, storage, len) = sockaddr(addr);
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0);
        if fd < 0 {
            return (None, Err(last()));
        }
        let close = |e: io::Error| {
            libc::close(fd);
            e
        };
        let rc = libc::connect(fd, (&raw const storage).cast(), len);
        if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
            return (None, Err(close(last())));
        }
        let mut local: libc::sockaddr_storage = mem::zeroed();
        let mut llen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let port = (libc::getsockname(fd, (&raw mut local).cast(), &mut llen) == 0).then(|| {
            let sin = &*(&raw const local).cast::<libc::sockaddr_in>();
            // sin_port is at the same offset in sockaddr_in6.
            u16::from_be(sin.sin_port)
        });
        let mut pfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let n = loop {
            let n = libc::poll(&mut pfd, 1, ms);
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break n;
        };
        if n < 0 {
            return (port, Err(close(last())));
        }
        if n == 0 {
            return (port, Err(close(io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))));
        }
        let mut err: libc::c_int = 0;
        let mut elen = mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&raw mut err).cast(), &mut elen) != 0 {
            return (port, Err(close(last())));
        }
        if err != 0 {
            return (port, Err(close(io::Error::from_raw_os_error(err))));
        }
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) != 0 {
            return (port, Err(close(last())));
        }
        (port, Ok(TcpStream::from_raw_fd(fd)))
    }
}

/// `addr` as a `sockaddr_storage` for libc calls: (family, storage, length).
pub fn sockaddr(addr: SocketAddr) -> (libc::c_int, libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage; the casts stay inside it.
    unsafe {
        let mut storage: libc::sockaddr_storage = mem::zeroed();
        match addr {
            SocketAddr::V4(a) => {
                let sin = &mut *(&raw mut storage).cast::<libc::sockaddr_in>();
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr = libc::in_addr { s_addr: u32::from(*a.ip()).to_be() };
                (libc::AF_INET, storage, mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
            }
            SocketAddr::V6(a) => {
                let sin6 = &mut *(&raw mut storage).cast::<libc::sockaddr_in6>();
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
                sin6.sin6_scope_id = a.scope_id();
                (libc::AF_INET6, storage, mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
            }
        }
    }
}

/// A blocking connection to `addr` from local port `local_port` (any local address,
/// `SO_REUSEADDR`, so a port a closed connection used can be used again), within `timeout`.
pub fn connect_from(local_port: u16, addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    let err = |what: &str| format!("{addr} from port {local_port}: {what}: {}", io::Error::last_os_error());
    let any: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, local_port).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, local_port).into(),
    };
    // SAFETY: socket calls on a descriptor owned here (closed on error, else by the TcpStream).
    unsafe {
        let (family, local, llen) = sockaddr(any);
        let (_, remote, rlen) = sockaddr(addr);
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(err("socket"));
        }
        let fail = |what: &str| {
            let e = err(what);
            libc::close(fd);
            Err(e)
        };
        let one: libc::c_int = 1;
        let tv = libc::timeval { tv_sec: timeout.as_secs() as libc::time_t, tv_usec: 0 };
        let len = |n: usize| n as libc::socklen_t;
        let ok = libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&raw const one).cast(), len(size_of::<libc::c_int>())) == 0
            // SO_SNDTIMEO bounds a blocking connect.
            && libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, (&raw const tv).cast(), len(size_of::<libc::timeval>())) == 0;
        if !ok {
            return fail("setsockopt");
        }
        if libc::bind(fd, (&raw const local).cast(), llen) != 0 {
            return fail("bind");
        }
        if libc::connect(fd, (&raw const remote).cast(), rlen) != 0 {
            return fail("connect");
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}
