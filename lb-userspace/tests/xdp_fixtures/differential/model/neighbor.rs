//! The model of the neighbour answers (RFC 826, RFC 4861 7.2.4): an untagged ARP request
//! (Ethernet, IPv4, lengths 6 and 4) for a VIP, not gratuitous, and an IPv6 neighbor
//! solicitation for a VIP (hop limit 255, code 0, a source that is not ::, 24 bytes or 32
//! with a whole source link-layer address option) are answered in place from fx0's MAC and
//! sent back out through TC; anything else is not touched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Expect, Model, To};
use crate::{differential::sums::words, net::Dev, ones};

impl Model {
    /// The answer to `f` if it asks for a VIP's MAC.
    pub(super) fn neighbor(&self, f: &[u8]) -> Option<Expect> {
        let mac = Dev::Fx0.mac();
        let mut out = f.to_vec();
        match f[12..14] {
            [0x08, 0x06] => {
                let a = f.get(14..42)?;
                let (sender, target) = (&a[8..18], &a[24..28]);
                if a[..8] != [0, 1, 8, 0, 6, 4, 0, 1]
                    || a[14..18] == *target
                    || !self.is_vip(IpAddr::V4(Ipv4Addr::new(target[0], target[1], target[2], target[3])))
                {
                    return None;
                }
                out[14 + 7] = 2;
                out[14 + 18..14 + 28].copy_from_slice(sender);
                out[14 + 8..14 + 14].copy_from_slice(&mac);
                out[14 + 14..14 + 18].copy_from_slice(target);
            }
            [0x86, 0xdd] => {
                let ip = f.get(14..54)?;
                let len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
                let m = f.get(54..78)?;
                let target = <[u8; 16]>::try_from(&m[8..24]).unwrap();
                let lla = len == 32;
                if ip[0] >> 4 != 6 || ip[6] != 58 || ip[7] != 255 || (len != 24 && !lla) || ip[8..24] == [0; 16] || m[0] != 135 || m[1] != 0 {
                    return None;
                }
                if !self.is_vip(IpAddr::V6(Ipv6Addr::from(target))) || (lla && f.get(78..86).is_none_or(|o| o[..2] != [1, 1])) {
                    return None;
                }
                out[14 + 24..14 + 40].copy_from_slice(&ip[8..24]);
                out[14 + 8..14 + 24].copy_from_slice(&target);
                out[54] = 136;
                out[58..62].copy_from_slice(&[0x60, 0, 0, 0]);
                if lla {
                    out[78] = 2;
                    out[80..86].copy_from_slice(&mac);
                }
                out[56..58].copy_from_slice(&[0, 0]);
                let pseudo = ones::pseudo_header(IpAddr::V6(Ipv6Addr::from(target)), addr6(&ip[8..24]), 58, len);
                let check = !ones::add(pseudo, ones::fold(words(&out[54..54 + len])));
                out[56..58].copy_from_slice(&check.to_be_bytes());
            }
            _ => return None,
        }
        out.copy_within(6..12, 0);
        out[6..12].copy_from_slice(&mac);
        Some(Expect::Out { frame: out, sums: Vec::new(), to: To::BackOut(self.ifindex[Dev::Fx0 as usize]), partial: None })
    }

    fn is_vip(&self, a: IpAddr) -> bool {
        self.services.keys().any(|(vip, _, _)| *vip == a)
    }
}

fn addr6(b: &[u8]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap()))
}
