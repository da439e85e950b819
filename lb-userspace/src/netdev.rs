//! What xlb asks of the host's interfaces and routes.

use std::{
    ffi::CStr,
    net::{IpAddr, SocketAddr, UdpSocket},
};

use anyhow::{Context as _, bail};

/// Every (interface, address) pair of the host, from getifaddrs(3).
pub fn addresses() -> anyhow::Result<Vec<(String, IpAddr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: nodes and their fields are valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
        let addr = match unsafe { (*ifa.ifa_addr).sa_family } as i32 {
            libc::AF_INET => {
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes())
            }
            libc::AF_INET6 => {
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::from(sin6.sin6_addr.s6_addr)
            }
            _ => continue,
        };
        out.push((name, addr));
    }
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The first address of `iface` of the wanted family (IPv4 first when `v6` is None),
/// link-local IPv6 excluded: the default VIP.
pub fn first_address(iface: &str, v6: bool) -> anyhow::Result<IpAddr> {
    addresses()?
        .into_iter()
        .filter(|(name, a)| name == iface && a.is_ipv6() == v6)
        .map(|(_, a)| a)
        .find(|a| !matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .with_context(|| format!("{iface} has no {} address to use as the VIP; give one in the SPEC", if v6 { "IPv6" } else { "IPv4" }))
}

/// The interface the kernel routes `dst` out of: where replies from it come in.
///
/// The interface holding the source address for `dst` ([`route_source`]) is the egress
/// interface for directly connected backends (bridges, veths), which is where xlb meets them.
pub fn route_interface(dst: IpAddr) -> anyhow::Result<String> {
    let src = route_source(dst)?;
    addresses()?
        .into_iter()
        .find(|(_, a)| *a == src)
        .map(|(name, _)| name)
        .with_context(|| format!("no interface holds {src}, the source address for backend {dst}"))
}

/// The source address the kernel picks for packets to `dst`: a connected UDP socket makes
/// it choose without sending anything.
pub fn route_source(dst: IpAddr) -> anyhow::Result<IpAddr> {
    let bind: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let sock = UdpSocket::bind(bind).context("binding a probe socket")?;
    sock.connect(SocketAddr::new(dst, 9)).with_context(|| format!("no route to backend {dst}"))?;
    Ok(sock.local_addr()?.ip())
}

/// Has the kernel resolve `dst`'s MAC address (ARP, NDP) by sending it one empty datagram
/// to the discard port (9); failures are only logged: the next sync tries again.
pub fn solicit_neighbour(dst: IpAddr) {
    let bind: SocketAddr = if dst.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    if let Err(e) = UdpSocket::bind(bind).and_then(|s| s.send_to(&[], SocketAddr::new(dst, 9))) {
        tracing::debug!(%dst, "soliciting the neighbour entry: {e}");
    }
}

pub fn ifindex(iface: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a valid C string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("no interface named {iface}"),
        i => Ok(i),
    }
}

/// `iface`'s Ethernet MAC address (`SIOCGIFHWADDR`: unlike sysfs, it answers for the
/// network namespace xlb runs in).
pub fn mac(iface: &str) -> anyhow::Result<[u8; 6]> {
    let name = iface.as_bytes();
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        bail!("interface name {iface:?} is too long");
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let sock = UdpSocket::bind("0.0.0.0:0").context("a socket to ask for a MAC address")?;
    // SAFETY: a valid socket and an ifreq the kernel fills.
    if unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&sock), libc::SIOCGIFHWADDR, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("reading {iface}'s MAC address"));
    }
    // SAFETY: SIOCGIFHWADDR filled the hardware-address member.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    if sa.sa_family != libc::ARPHRD_ETHER {
        bail!("{iface} is no Ethernet interface (hardware type {})", sa.sa_family);
    }
    Ok(std::array::from_fn(|i| sa.sa_data[i] as u8))
}

/// Forwarding switches xlb turned on, and the `accept_ra` values it changed with them,
/// put back when dropped: xlb leaves the host as it found it.
#[derive(Default)]
pub struct Forwarding {
    /// (sysctl path, its value before xlb), in the order they were changed.
    changed: Vec<(String, String)>,
}

impl Forwarding {
    /// Turns on forwarding on `iface`: `bpf_fib_lookup` answers only for packets that
    /// arrive on an interface that forwards (Docker hosts already do for IPv4).
    ///
    /// An IPv6 interface that forwards ignores router advertisements unless its
    /// `accept_ra` is 2, and switching forwarding on drops the default routes learnt from
    /// them: a host configured by SLAAC would lose its default route, and with a crash
    /// never get it back. So where `accept_ra` was 1 (accept while not forwarding) it is
    /// set to 2 first, which keeps accepting them as the interface did before.
    ///
    /// Where `/proc/sys` is read-only (a container run without `systempaths=unconfined`,
    /// which docker-compose 1.29 cannot ask for) and IPv6 forwarding is off, IPv4 still
    /// works (Docker turns its forwarding on): a warning, not a failure.
    pub fn enable(&mut self, iface: &str) -> anyhow::Result<()> {
        let v6 = format!("/proc/sys/net/ipv6/conf/{iface}/forwarding");
        self.set(&format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"), "1")?;
        if read(&v6).is_some_and(|v| v != "1") {
            match self.enable_v6(iface, &v6) {
                Err(e) if read_only(&e) => {
                    tracing::warn!(%iface, "IPv6 forwarding is off and /proc/sys is read-only here: IPv6 through {iface} is not forwarded (IPv4 is)")
                }
                r => r?,
            }
        }
        Ok(())
    }

    fn enable_v6(&mut self, iface: &str, v6: &str) -> anyhow::Result<()> {
        let accept_ra = format!("/proc/sys/net/ipv6/conf/{iface}/accept_ra");
        if read(&accept_ra).as_deref() == Some("1") {
            self.set(&accept_ra, "2")?;
        }
        self.set(v6, "1")
    }

    /// Writes `value` to the sysctl at `path` if it holds another, remembering the old
    /// one; a switch that does not exist (IPv6 disabled) is left alone.
    fn set(&mut self, path: &str, value: &str) -> anyhow::Result<()> {
        let Some(old) = read(path) else {
            return Ok(());
        };
        if old != value {
            std::fs::write(path, value).with_context(|| format!("setting {path} to {value}"))?;
            tracing::info!(%path, from = %old, to = value, "changed a forwarding switch");
            self.changed.push((path.to_owned(), old));
        }
        Ok(())
    }

    /// Leaves the switches as they are: a kept data plane still forwards through them.
    pub fn keep(&mut self) {
        self.changed.clear();
    }
}

/// The error is a write to a read-only file system.
fn read_only(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.raw_os_error() == Some(libc::EROFS)))
}

/// A sysctl's value, trimmed; `None` when it cannot be read.
fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|v| v.trim().to_owned())
}

impl Drop for Forwarding {
    /// Newest first: forwarding goes off before `accept_ra` returns to 1.
    fn drop(&mut self) {
        for (path, old) in self.changed.iter().rev() {
            if let Err(e) = std::fs::write(path, old) {
                tracing::warn!(%path, "restoring {old}: {e}");
            }
        }
    }
}
