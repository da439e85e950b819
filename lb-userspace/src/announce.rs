//! VIP announcement without a routing protocol in xlb: each VIP that has a service with an
//! active backend gets a host route in a kernel routing table of its own
//! (`announce.table`), which a routing daemon on the node (BIRD's `protocol kernel` with
//! `learn`, FRR's `redistribute table`, GoBGP's zebra import...) exports by BGP. A VIP whose
//! services have no active backend, and every VIP when xlb stops, is withdrawn by deleting
//! its route. The routes carry xlb's own protocol number, so that a restart (after a crash
//! left them) finds and reconciles them, and no other route in the table is touched.
//!
//! The routes name `lo` and are in a table no `ip rule` looks up: they route nothing on the
//! node itself.

use std::{
    collections::BTreeSet,
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context as _, bail};
use tracing::info;

use crate::{
    config::{Announce, BackendState},
    netdev,
    plan::Desired,
};

/// `rtm_protocol` of xlb's routes (`ip route show proto 120`); 120 is in none of the
/// kernel's or iproute2's lists.
pub const RTPROT_XLB: u8 = 120;

// Message types are u16 on the wire; libc has these two as c_int.
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
const HDR: usize = size_of::<libc::nlmsghdr>();
/// `struct rtmsg` (libc has no binding for it).
const RTMSG: usize = 12;

/// The VIPs to announce: those with a service that has an active backend.
pub fn wanted(services: &[Desired]) -> BTreeSet<IpAddr> {
    services.iter().filter(|d| d.backends.iter().any(|b| b.state == BackendState::Active)).map(|d| d.key.ip()).collect()
}

/// The routes xlb keeps in `table`.
pub struct Announcer {
    table: u32,
    lo: u32,
    sock: OwnedFd,
    seq: u32,
    /// The routes in the table now (found at start, then as written).
    routes: BTreeSet<IpAddr>,
}

impl Announcer {
    /// Opens a netlink socket and reads which of xlb's routes the table holds already
    /// (left by an xlb that was killed): the first [`Announcer::sync`] keeps or deletes them.
    pub fn new(config: &Announce) -> anyhow::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("opening a netlink socket for the announce table");
        }
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let lo = netdev::ifindex("lo")?;
        let mut a = Announcer { table: config.table, lo, sock, seq: 0, routes: BTreeSet::new() };
        a.routes = a.dump().with_context(|| format!("reading routing table {}", a.table))?;
        if !a.routes.is_empty() {
            info!(table = a.table, routes = a.routes.len(), "announce table holds routes of an earlier xlb: kept until the first sync");
        }
        Ok(a)
    }

    pub fn table(&self) -> u32 {
        self.table
    }

    /// The VIPs whose routes are in the table now.
    pub fn routes(&self) -> &BTreeSet<IpAddr> {
        &self.routes
    }

    /// Adds the routes of VIPs that are wanted and deletes the others. Each failure is
    /// reported; the rest is still done.
    pub fn sync(&mut self, wanted: &BTreeSet<IpAddr>) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        for &vip in wanted.difference(&self.routes.clone()) {
            match self.route(libc::RTM_NEWROUTE, libc::NLM_F_CREATE | libc::NLM_F_REPLACE, vip) {
                Ok(()) => {
                    info!(%vip, table = self.table, "VIP announced");
                    self.routes.insert(vip);
                }
                Err(e) => errors.push(format!("adding {vip}: {e:#}")),
            }
        }
        for &vip in self.routes.clone().difference(wanted) {
            match self.route(libc::RTM_DELROUTE, 0, vip) {
                Ok(()) => {
                    info!(%vip, table = self.table, "VIP withdrawn");
                    self.routes.remove(&vip);
                }
                Err(e) => errors.push(format!("deleting {vip}: {e:#}")),
            }
        }
        if !errors.is_empty() {
            bail!("routing table {}: {}", self.table, errors.join("; "));
        }
        Ok(())
    }

    /// Deletes every route xlb has in the table: xlb stops.
    pub fn withdraw_all(&mut self) -> anyhow::Result<()> {
        self.sync(&BTreeSet::new())
    }

    /// One `RTM_NEWROUTE` or `RTM_DELROUTE` for `vip`/32 (/128) via `lo`, and its answer.
    fn route(&mut self, kind: u16, flags: i32, vip: IpAddr) -> anyhow::Result<()> {
        let (family, bytes) = family_bytes(vip);
        let mut msg = self.header(kind, (libc::NLM_F_REQUEST | libc::NLM_F_ACK | flags) as u16);
        // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let short_table = if self.table < 256 { self.table as u8 } else { libc::RT_TABLE_UNSPEC };
        msg.extend_from_slice(&[family, bytes.len() as u8 * 8, 0, 0, short_table, RTPROT_XLB, libc::RT_SCOPE_LINK, libc::RTN_UNICAST]);
        msg.extend_from_slice(&0u32.to_ne_bytes());
        attr(&mut msg, libc::RTA_DST, &bytes);
        attr(&mut msg, libc::RTA_TABLE, &self.table.to_ne_bytes());
        attr(&mut msg, libc::RTA_OIF, &self.lo.to_ne_bytes());
        self.send(msg)?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = self.recv(&mut buf)?;
            for (answer, body) in messages(&buf[..n]) {
                if answer == NLMSG_ERROR {
                    let code = body.get(..4).map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes"))).unwrap_or(0);
                    // A route already gone is what a delete wants.
                    if code == 0 || (code == -libc::ESRCH && kind == libc::RTM_DELROUTE) {
                        return Ok(());
                    }
                    return Err(io::Error::from_raw_os_error(-code).into());
                }
            }
        }
    }

    /// xlb's routes in the table, both families.
    fn dump(&mut self) -> anyhow::Result<BTreeSet<IpAddr>> {
        let mut found = BTreeSet::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let mut msg = self.header(libc::RTM_GETROUTE, (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16);
            msg.extend_from_slice(&[family, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            self.send(msg)?;
            let mut buf = vec![0u8; 32768];
            'dump: loop {
                let n = self.recv(&mut buf)?;
                for (kind, body) in messages(&buf[..n]) {
                    match kind {
                        NLMSG_DONE => break 'dump,
                        NLMSG_ERROR => {
                            let code = body.get(..4).map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes"))).unwrap_or(0);
                            return Err(io::Error::from_raw_os_error(-code).into());
                        }
                        k if k == libc::RTM_NEWROUTE => found.extend(self.ours(body)),
                        _ => {}
                    }
                }
            }
        }
        Ok(found)
    }

    /// The VIP of a dumped route, if it is one of xlb's in the table.
    fn ours(&self, body: &[u8]) -> Option<IpAddr> {
        let rt = body.get(..RTMSG)?;
        let (family, dst_len, short_table, protocol) = (rt[0], rt[1], rt[4], rt[5]);
        let mut table = short_table as u32;
        let mut dst = None;
        for (kind, value) in attrs(&body[RTMSG..]) {
            match kind {
                libc::RTA_TABLE if value.len() == 4 => table = u32::from_ne_bytes(value.try_into().ok()?),
                libc::RTA_DST => dst = ip(family, value),
                _ => {}
            }
        }
        let full = dst_len == if family == libc::AF_INET as u8 { 32 } else { 128 };
        (protocol == RTPROT_XLB && table == self.table && full).then_some(dst).flatten()
    }

    fn header(&mut self, kind: u16, flags: u16) -> Vec<u8> {
        self.seq += 1;
        let mut msg = Vec::with_capacity(64);
        msg.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `send`
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg
    }

    fn send(&self, mut msg: Vec<u8>) -> anyhow::Result<()> {
        let len = msg.len() as u32;
        msg[..4].copy_from_slice(&len.to_ne_bytes());
        // SAFETY: a valid buffer; netlink to the kernel (the address is zeroed: pid 0).
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as u16;
        let n = unsafe {
            libc::sendto(
                self.sock.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("netlink send");
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> anyhow::Result<usize> {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("netlink receive");
        }
        Ok(n as usize)
    }
}

fn family_bytes(ip: IpAddr) -> (u8, Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => (libc::AF_INET as u8, v4.octets().to_vec()),
        IpAddr::V6(v6) => (libc::AF_INET6 as u8, v6.octets().to_vec()),
    }
}

fn ip(family: u8, b: &[u8]) -> Option<IpAddr> {
    match family as i32 {
        libc::AF_INET => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        libc::AF_INET6 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// Appends one route attribute, padded to 4 bytes.
fn attr(msg: &mut Vec<u8>, kind: u16, value: &[u8]) {
    msg.extend_from_slice(&(4 + value.len() as u16).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(value);
    msg.resize(msg.len().next_multiple_of(4), 0);
}

/// The (type, body) of each netlink message in a datagram.
fn messages(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= HDR {
        let len = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        if len < HDR || len > buf.len() {
            break;
        }
        out.push((kind, &buf[HDR..len]));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

/// The (type, value) of each route attribute.
fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((u16::from_ne_bytes([buf[2], buf[3]]), &buf[4..len]));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use lb_common::{IPPROTO_TCP, IPPROTO_UDP, ServiceKey};

    use super::*;
    use crate::{
        config::{BackendState, Forwarding, Method},
        plan::DesiredBackend,
    };

    fn service(vip: &str, proto: u8, states: &[BackendState]) -> Desired {
        let backends = states.iter().map(|&state| DesiredBackend { addr: "10.1.0.2".parse().unwrap(), port: 80, weight: 1, state }).collect();
        let key = ServiceKey::new(vip.parse().unwrap(), 80, proto);
        Desired { name: vip.into(), key, method: Method::Maglev, socket_lb: false, forwarding: Forwarding::Direct, backends }
    }

    /// A VIP is announced while one of its services has an active backend: draining ones
    /// take no new flow, so they do not count.
    #[test]
    fn vips_with_an_active_backend_are_wanted() {
        use BackendState::{Active, Draining};
        let services = [
            service("10.0.0.1", IPPROTO_TCP, &[Draining, Active]),
            service("10.0.0.2", IPPROTO_TCP, &[Draining]),
            service("10.0.0.2", IPPROTO_UDP, &[]),
            service("10.0.0.3", IPPROTO_TCP, &[Draining]),
            service("10.0.0.3", IPPROTO_UDP, &[Active]),
        ];
        let want: BTreeSet<IpAddr> = ["10.0.0.1", "10.0.0.3"].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(wanted(&services), want);
    }
}
