//! What xlb asks of the host's interfaces and routes.

use std::{
    collections::BTreeSet,
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
/// A connected UDP socket makes the kernel choose a source address for `dst` without
/// sending anything; the interface holding that address is the egress interface for
/// directly connected backends (bridges, veths), which is where xlb meets them.
pub fn route_interface(dst: IpAddr) -> anyhow::Result<String> {
    let bind: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let sock = UdpSocket::bind(bind).context("binding a probe socket")?;
    sock.connect(SocketAddr::new(dst, 9)).with_context(|| format!("no route to backend {dst}"))?;
    let src = sock.local_addr()?.ip();
    addresses()?
        .into_iter()
        .find(|(_, a)| *a == src)
        .map(|(name, _)| name)
        .with_context(|| format!("no interface holds {src}, the source address for backend {dst}"))
}

/// The interfaces replies from `backends` arrive on.
pub fn reply_interfaces(backends: impl IntoIterator<Item = IpAddr>) -> anyhow::Result<BTreeSet<String>> {
    backends.into_iter().map(route_interface).collect()
}

pub fn ifindex(iface: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a valid C string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("no interface named {iface}"),
        i => Ok(i),
    }
}

/// Forwarding switches xlb turned on, turned back off when dropped: xlb leaves the
/// host as it found it.
#[derive(Default)]
pub struct Forwarding {
    changed: Vec<String>,
}

impl Forwarding {
    /// Turns on forwarding on `iface`: `bpf_fib_lookup` answers only for packets that
    /// arrive on an interface that forwards (Docker hosts already do for IPv4).
    pub fn enable(&mut self, iface: &str) -> anyhow::Result<()> {
        for path in [format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"), format!("/proc/sys/net/ipv6/conf/{iface}/forwarding")] {
            let Ok(current) = std::fs::read_to_string(&path) else {
                continue;
            };
            if current.trim() != "1" {
                std::fs::write(&path, "1").with_context(|| format!("enabling forwarding: {path}"))?;
                tracing::info!(%path, "enabled forwarding");
                self.changed.push(path);
            }
        }
        Ok(())
    }

    /// Leaves the switches on: a kept data plane still forwards through them.
    pub fn keep(&mut self) {
        self.changed.clear();
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        for path in &self.changed {
            if let Err(e) = std::fs::write(path, "0") {
                tracing::warn!(%path, "restoring forwarding: {e}");
            }
        }
    }
}
