//! Attaching the programs to interfaces, taking over a kept data plane's links, and
//! pinning everything for the next run.

use anyhow::{Context as _, bail};
use aya::programs::{
    CgroupSockAddr, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::FdLink,
    tc::{self, SchedClassifierLink},
    xdp::XdpLink,
};
use aya::maps::{Array, HashMap as BpfHashMap};
use lb_common::{Handoff, Mac, names};
use tracing::{debug, info, warn};

use super::{Attachment, Dataplane, KEPT_MAPS, LinkId, PROGRAMS, is_busy, map, pin::Scope, program};

impl Dataplane {
    /// Interfaces a kept data plane had the reply program on.
    pub fn kept_reply_ifaces(&self) -> Vec<String> {
        let mut out: Vec<String> = self.kept_links.keys().filter(|(p, _)| p == names::PROG_REPLY).map(|(_, i)| i.clone()).collect();
        out.sort();
        out
    }

    /// Ends an adoption: the links not taken over are let go, and the pins removed (this
    /// process holds the descriptors now; the next keep pins again).
    pub fn finish_adoption(&mut self, scope: &Scope) -> anyhow::Result<()> {
        for ((program, iface), _) in self.kept_links.drain() {
            warn!(program, %iface, "a kept attachment is no longer needed: detaching it");
        }
        scope.remove().map(drop)
    }

    /// Pins the maps, the programs and their attachments under `scope` (what is pinned
    /// there already stays) and lets go of the attachments: whenever this process ends, the
    /// kernel keeps forwarding with what it has until the next `xlb run` adopts it or `xlb
    /// down` removes it. Returns how many links were pinned.
    pub fn keep(&mut self, scope: &Scope) -> anyhow::Result<usize> {
        for name in KEPT_MAPS {
            let path = scope.map(name);
            if !path.exists() {
                let m = self.ebpf.map(name).with_context(|| format!("map {name} missing"))?;
                m.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
            }
        }
        for name in PROGRAMS {
            let path = scope.program(name);
            if !path.exists() {
                let prog = self.ebpf.program_mut(name).with_context(|| format!("program {name} missing"))?;
                prog.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
            }
        }
        let attachments = std::mem::take(&mut self.attachments);
        let count = attachments.len();
        for a in attachments {
            let path = scope.link(a.program, &a.iface);
            let link: FdLink = match a.link {
                LinkId::Xdp(id) => program::<Xdp>(&mut self.ebpf, a.program)?.take_link(id)?.try_into(),
                LinkId::Tc(id) => program::<SchedClassifier>(&mut self.ebpf, a.program)?.take_link(id)?.try_into(),
                LinkId::Sock(id) => program::<CgroupSockAddr>(&mut self.ebpf, a.program)?.take_link(id)?.try_into(),
            }
            .with_context(|| format!("{} on {} is not a BPF link (kernel too old to keep it)", a.program, a.iface))?;
            link.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
        }
        Ok(count)
    }

    /// Keeps the data plane under `scope` from now on, attachments made later too, so a
    /// crash or `kill -9` of xlb leaves it forwarding for the next run to adopt. An orderly
    /// stop undoes it with [`Self::unpin`].
    pub fn keep_while_running(&mut self, scope: Scope) -> anyhow::Result<usize> {
        let links = self.keep(&scope)?;
        self.pins = Some(scope);
        Ok(links)
    }

    /// Removes what [`Self::keep_while_running`] pinned, which detaches the programs and
    /// frees the maps; nothing when nothing was.
    pub fn unpin(&mut self) -> anyhow::Result<()> {
        self.pins.take().map_or(Ok(()), |scope| scope.remove().map(drop))
    }

    /// Pins an attachment just made, while the data plane is kept while running.
    pub(super) fn pin_new(&mut self) -> anyhow::Result<()> {
        match self.pins.clone() {
            Some(scope) => self.keep(&scope).map(drop),
            None => Ok(()),
        }
    }

    /// Attaches the XDP program (native mode, else generic) and the TC program that
    /// finishes its stack-bound packets to the interface clients reach.
    pub fn attach_client_side(&mut self, iface: &str) -> anyhow::Result<()> {
        self.answer_neighbors_on(iface)?;
        if let Some(kept) = self.kept_link(names::PROG_XDP, iface) {
            let xdp: &mut Xdp = program(&mut self.ebpf, names::PROG_XDP)?;
            match XdpLink::try_from(kept).map_err(anyhow::Error::from).and_then(|l| Ok(xdp.attach_to_link(l)?)) {
                Ok(id) => {
                    info!(%iface, program = names::PROG_XDP, "took over the kept attachment (program replaced in place)");
                    self.attachments.push(Attachment { program: names::PROG_XDP, iface: iface.to_owned(), link: LinkId::Xdp(id) });
                    return self.attach_tc(names::PROG_FWD, iface);
                }
                Err(e) => {
                    warn!(%iface, error = %e, "the kept XDP attachment is unusable: attaching anew")
                }
            }
        }
        let xdp: &mut Xdp = program(&mut self.ebpf, names::PROG_XDP)?;
        let (id, mode) = match xdp.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(e) if is_busy(&e) => {
                bail!("{iface} already has an XDP program (is another xlb running? `ip link show {iface}`)")
            }
            Err(e) => {
                warn!(%iface, error = %e, "native XDP unavailable, using generic XDP");
                (xdp.attach(iface, XdpMode::Skb).with_context(|| format!("attaching XDP to {iface}"))?, "generic")
            }
        };
        info!(%iface, program = names::PROG_XDP, mode, "attached");
        self.attachments.push(Attachment { program: names::PROG_XDP, iface: iface.to_owned(), link: LinkId::Xdp(id) });
        self.attach_tc(names::PROG_FWD, iface)
    }

    /// Lets the XDP program answer ARP and NDP for VIPs on `iface`, with its MAC.
    pub fn answer_neighbors_on(&mut self, iface: &str) -> anyhow::Result<()> {
        let (ifindex, bytes) = (crate::netdev::ifindex(iface)?, crate::netdev::mac(iface)?);
        let mut macs: BpfHashMap<_, u32, Mac> = map(&mut self.ebpf, names::IF_MACS)?;
        macs.insert(ifindex, Mac { bytes, _pad: [0; 2] }, 0).with_context(|| format!("writing {iface}'s MAC"))
    }

    /// Attaches the reply program to an interface that faces backends.
    pub fn attach_backend_side(&mut self, iface: &str) -> anyhow::Result<()> {
        self.attach_tc(names::PROG_REPLY, iface)
    }

    fn attach_tc(&mut self, name: &'static str, iface: &str) -> anyhow::Result<()> {
        if let Some(kept) = self.kept_link(name, iface) {
            let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
            match SchedClassifierLink::try_from(kept).map_err(anyhow::Error::from).and_then(|l| Ok(prog.attach_to_link(l)?)) {
                Ok(id) => {
                    info!(%iface, program = name, "took over the kept attachment (program replaced in place)");
                    self.attachments.push(Attachment { program: name, iface: iface.to_owned(), link: LinkId::Tc(id) });
                    return self.pin_new();
                }
                Err(e) => {
                    warn!(%iface, program = name, error = %e, "the kept TC attachment is unusable: attaching anew")
                }
            }
        }
        // Kernels before 6.6 attach through a clsact qdisc; later ones use TCX links.
        if let Err(e) = tc::qdisc_add_clsact(iface) {
            debug!(%iface, error = %e, "clsact qdisc not added (exists, or TCX is used)");
        }
        let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        let id = prog.attach(iface, TcAttachType::Ingress).with_context(|| format!("attaching {name} to {iface}"))?;
        info!(%iface, program = name, "attached");
        self.attachments.push(Attachment { program: name, iface: iface.to_owned(), link: LinkId::Tc(id) });
        self.pin_new()
    }

    /// The kept link of `program` on `iface`, if a kept data plane had one. Taking it
    /// over (`attach_to_link`) swaps the program in one `BPF_LINK_UPDATE`: packets see
    /// the old program or the new one, never none.
    pub(super) fn kept_link(&mut self, program: &str, iface: &str) -> Option<FdLink> {
        self.kept_links.remove(&(program.to_owned(), iface.to_owned())).map(FdLink::from)
    }

    /// The XDP program, for `BPF_PROG_TEST_RUN`.
    pub fn xdp(&mut self) -> anyhow::Result<&mut Xdp> {
        program(&mut self.ebpf, names::PROG_XDP)
    }

    /// A `HANDOFF` slot, to read what a `BPF_PROG_TEST_RUN` of the XDP program handed to
    /// TC on a kernel without XDP metadata (see `lb_common::Handoff`).
    pub fn handoff(&mut self, index: u32) -> anyhow::Result<Handoff> {
        let slots: Array<_, Handoff> = map(&mut self.ebpf, names::HANDOFF)?;
        slots.get(&index, 0).with_context(|| format!("reading handoff slot {index}"))
    }

    /// The reply program (TC, backends' side), for `BPF_PROG_TEST_RUN`.
    pub fn reply(&mut self) -> anyhow::Result<&mut SchedClassifier> {
        program(&mut self.ebpf, names::PROG_REPLY)
    }
}
