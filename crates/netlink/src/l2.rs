//! ARP and NDP on the wire for [`Kernel`]: GARP, unsolicited NA, conflict probes, responder.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{ErrorKind, Result};
use crate::kernel::Kernel;
use crate::packet::{self, ArpPacket, NdpPacket};
use crate::raw::{Listen, PacketSocket, PACKET_OUTGOING};
use crate::traits::{AbortOnDrop, ArpNdp, Gate, Links};
use crate::types::{GarpForm, Mac};

/// Where a kernel handle keeps its [`Gate`]; shared with its responders.
#[derive(Default)]
pub(crate) struct GateSlot(std::sync::RwLock<Option<Arc<dyn Gate>>>);

impl GateSlot {
    /// Whether a frame for `ip` may go out: no gate, or the gate allows it.
    pub(crate) fn allows(&self, ip: IpAddr) -> bool {
        match &*self.0.read().unwrap_or_else(|e| e.into_inner()) {
            Some(g) => g.allows(ip),
            None => true,
        }
    }
}

/// Probes sent per [`ArpNdp::probe`] (RFC 5227's PROBE_NUM).
const PROBES: u32 = 3;

/// A running responder on one interface.
pub(crate) struct Responder {
    index: u32,
    mac: Mac,
    ips: watch::Sender<BTreeSet<IpAddr>>,
    task: AbortOnDrop,
}

impl Kernel {
    async fn dev_mac(&self, op: &'static str, subject: &str, dev: &str) -> Result<(u32, Mac)> {
        let link = self
            .link(dev)
            .await
            .map_err(|e| self.error(op, subject, e.kind))?;
        match link.mac {
            Some(m) if m != Mac::ZERO => Ok((link.index, m)),
            _ => Err(self.error(
                op,
                subject,
                ErrorKind::Invalid(format!("{dev} has no Ethernet address (ARP/NDP need one)")),
            )),
        }
    }

    /// Opens a packet socket on `index` inside this kernel's namespace.
    async fn packet_socket(
        &self,
        op: &'static str,
        subject: &str,
        dev: &str,
        index: u32,
        listen: Listen,
    ) -> Result<PacketSocket> {
        let fd = match &self.inner.netns {
            Some(ns) => ns.run(move || PacketSocket::open(index, listen))?,
            None => PacketSocket::open(index, listen),
        };
        fd.and_then(PacketSocket::register)
            .map_err(|e| self.error(op, subject, ErrorKind::from_io(e, Some(dev))))
    }

    /// Sends `frame` on `index` through a cached send-only socket; a socket that fails
    /// (its interface was removed or re-created) is replaced once.
    #[allow(clippy::too_many_arguments)]
    async fn send_frame(
        &self,
        op: &'static str,
        subject: &str,
        dev: &str,
        index: u32,
        ethertype: u16,
        frame: &[u8],
        gated: Option<IpAddr>,
    ) -> Result<()> {
        let gate = self.inner.gate.clone();
        let allowed = move || gated.is_none_or(|ip| gate.allows(ip));
        let gated = || self.error(op, subject, ErrorKind::Gated);
        let key = (index, ethertype);
        let cached = self
            .inner
            .senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(sock) = cached {
            match sock.send_checked(frame, &allowed).await {
                Ok(true) => return Ok(()),
                Ok(false) => return Err(gated()),
                Err(_) => {}
            }
            self.inner
                .senders
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
        let sock = Arc::new(
            self.packet_socket(op, subject, dev, index, Listen::SendOnly(ethertype))
                .await?,
        );
        let sent = sock
            .send_checked(frame, &allowed)
            .await
            .map_err(|e| self.error(op, subject, ErrorKind::from_io(e, Some(dev))))?;
        let mut senders = self.inner.senders.lock().unwrap_or_else(|e| e.into_inner());
        if senders.len() >= MAX_SENDERS {
            senders.clear();
        }
        senders.insert(key, sock);
        if sent {
            Ok(())
        } else {
            Err(gated())
        }
    }
}

/// Cached send sockets per kernel handle (interfaces × 2 families); beyond it, start over.
const MAX_SENDERS: usize = 64;

/// Closes a packet socket off the async path: its close waits for an RCU grace period.
fn close_later(sock: PacketSocket) {
    tokio::task::spawn_blocking(move || drop(sock));
}

fn family_error(k: &Kernel, op: &'static str, subject: &str, want: &str) -> crate::Error {
    k.error(
        op,
        subject,
        ErrorKind::Invalid(format!("{op} needs an {want} address")),
    )
}

#[async_trait]
impl ArpNdp for Kernel {
    fn set_gate(&self, gate: Option<Arc<dyn Gate>>) {
        *self.inner.gate.0.write().unwrap_or_else(|e| e.into_inner()) = gate;
    }

    async fn send_garp(&self, dev: &str, ip: IpAddr, form: GarpForm) -> Result<()> {
        const OP: &str = "sending gratuitous ARP";
        let subject = format!("{ip} on {dev}");
        let IpAddr::V4(v4) = ip else {
            return Err(family_error(self, OP, &subject, "IPv4"));
        };
        let (index, mac) = self.dev_mac(OP, &subject, dev).await?;
        let frame = packet::garp(mac, v4, form).encode();
        self.send_frame(
            OP,
            &subject,
            dev,
            index,
            packet::ETH_P_ARP,
            &frame,
            Some(ip),
        )
        .await
    }

    async fn send_unsolicited_na(&self, dev: &str, ip: IpAddr) -> Result<()> {
        const OP: &str = "sending unsolicited NA";
        let subject = format!("{ip} on {dev}");
        let IpAddr::V6(v6) = ip else {
            return Err(family_error(self, OP, &subject, "IPv6"));
        };
        let (index, mac) = self.dev_mac(OP, &subject, dev).await?;
        let frame = packet::unsolicited_na(mac, v6).encode();
        self.send_frame(
            OP,
            &subject,
            dev,
            index,
            packet::ETH_P_IPV6,
            &frame,
            Some(ip),
        )
        .await
    }

    async fn send_udp_via(
        &self,
        dev: &str,
        via: Mac,
        from: std::net::SocketAddr,
        to: std::net::SocketAddr,
        payload: &[u8],
    ) -> Result<()> {
        const OP: &str = "sending UDP through a router";
        let subject = format!("{from} to {to} via {via} on {dev}");
        let (index, mac) = self.dev_mac(OP, &subject, dev).await?;
        // Network control, as the heartbeat socket marks its own datagrams.
        let frame = packet::udp_via(mac, via, from, to, 0xc0, payload).ok_or_else(|| {
            self.error(
                OP,
                &subject,
                ErrorKind::Invalid(
                    "the addresses' families differ, or the datagram is too long".into(),
                ),
            )
        })?;
        let ethertype = if to.is_ipv4() {
            packet::ETH_P_IP
        } else {
            packet::ETH_P_IPV6
        };
        self.send_frame(OP, &subject, dev, index, ethertype, &frame, None)
            .await
    }

    async fn probe(&self, dev: &str, ip: IpAddr, wait: Duration) -> Result<Option<Mac>> {
        const OP: &str = "probing";
        let subject = format!("{ip} on {dev}");
        let (index, mac) = self.dev_mac(OP, &subject, dev).await?;
        let (listen, frame) = match ip {
            IpAddr::V4(v4) => (Listen::Arp, packet::arp_probe(mac, v4).encode()),
            IpAddr::V6(v6) => (Listen::Ndp, packet::dad_ns(mac, v6).encode()),
        };
        // Listen before the first probe goes out, so no answer can be missed.
        let sock = self.packet_socket(OP, &subject, dev, index, listen).await?;
        let res = self
            .probe_on(&sock, dev, &subject, ip, mac, &frame, wait)
            .await;
        close_later(sock);
        res
    }

    async fn answer(&self, dev: &str, ips: BTreeSet<IpAddr>) -> Result<()> {
        const OP: &str = "answering ARP/NDP";
        let subject = format!("{} address(es) on {dev}", ips.len());
        if ips.is_empty() {
            self.inner
                .responders
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(dev);
            return Ok(());
        }
        let (index, mac) = self.dev_mac(OP, &subject, dev).await?;
        {
            let map = self
                .inner
                .responders
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(r) = map.get(dev) {
                if r.index == index && r.mac == mac && !r.task.0.is_finished() {
                    r.ips.send_replace(ips);
                    return Ok(());
                }
            }
        }
        let arp = self
            .packet_socket(OP, &subject, dev, index, Listen::Arp)
            .await?;
        let ndp = self
            .packet_socket(OP, &subject, dev, index, Listen::Ndp)
            .await?;
        let (tx, rx) = watch::channel(ips);
        let task = tokio::spawn(respond(arp, ndp, mac, rx, self.inner.gate.clone()));
        self.inner
            .responders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                dev.to_string(),
                Responder {
                    index,
                    mac,
                    ips: tx,
                    task: AbortOnDrop(task),
                },
            );
        Ok(())
    }

    async fn answered(&self, dev: &str) -> Result<BTreeSet<IpAddr>> {
        Ok(self
            .inner
            .responders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(dev)
            .map(|r| r.ips.borrow().clone())
            .unwrap_or_default())
    }
}

impl Kernel {
    /// The probe loop: sends the probes on schedule and watches for a conflicting answer.
    #[allow(clippy::too_many_arguments)]
    async fn probe_on(
        &self,
        sock: &PacketSocket,
        dev: &str,
        subject: &str,
        ip: IpAddr,
        mac: Mac,
        frame: &[u8],
        wait: Duration,
    ) -> Result<Option<Mac>> {
        const OP: &str = "probing";
        let io_err = |e| self.error(OP, subject, ErrorKind::from_io(e, Some(dev)));
        let start = Instant::now();
        let deadline = start + wait;
        let spacing = wait / PROBES;
        let mut sent = 0u32;
        let mut next_send = start;
        let mut buf = vec![0u8; 2048];
        loop {
            if sent < PROBES && Instant::now() >= next_send {
                sock.send(frame).await.map_err(io_err)?;
                sent += 1;
                next_send = start + spacing * sent;
            }
            let wake = if sent < PROBES {
                next_send.min(deadline)
            } else {
                deadline
            };
            tokio::select! {
                r = sock.recv(&mut buf) => {
                    let (n, pkttype) = match r {
                        Ok(x) => x,
                        Err(e) if e.raw_os_error() == Some(libc::ENETDOWN) => {
                            return Err(self.error(OP, subject, ErrorKind::Invalid(format!("{dev} went down while probing"))));
                        }
                        Err(e) => return Err(io_err(e)),
                    };
                    if pkttype == PACKET_OUTGOING {
                        continue;
                    }
                    let frame = &buf[..n];
                    let hit = match ip {
                        IpAddr::V4(v4) => ArpPacket::decode(frame).and_then(|p| packet::arp_conflict(&p, v4, mac)),
                        IpAddr::V6(v6) => NdpPacket::decode(frame).and_then(|p| packet::ndp_conflict(&p, v6, mac)),
                    };
                    if hit.is_some() {
                        return Ok(hit);
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

/// The responder loop: answers ARP requests and NS for the current set of addresses, each
/// answer only if the gate allows it at the moment it is sent.
async fn respond(
    arp: PacketSocket,
    ndp: PacketSocket,
    mac: Mac,
    ips: watch::Receiver<BTreeSet<IpAddr>>,
    gate: Arc<GateSlot>,
) {
    let mut abuf = vec![0u8; 2048];
    let mut nbuf = vec![0u8; 2048];
    loop {
        tokio::select! {
            r = arp.recv(&mut abuf) => {
                match r {
                    Ok((n, pt)) if pt != PACKET_OUTGOING => {
                        let reply = ArpPacket::decode(&abuf[..n])
                            .and_then(|p| packet::arp_answer(&p, &ips.borrow(), mac));
                        if let Some(reply) = reply {
                            let ip = IpAddr::V4(reply.spa);
                            match arp.send_checked(&reply.encode(), &|| gate.allows(ip)).await {
                                Ok(true) => {}
                                Ok(false) => tracing::debug!(%ip, "ARP answer withheld: gate closed"),
                                Err(e) => tracing::debug!(error = %e, "ARP answer not sent"),
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => backoff(e).await,
                }
            }
            r = ndp.recv(&mut nbuf) => {
                match r {
                    Ok((n, pt)) if pt != PACKET_OUTGOING => {
                        let reply = NdpPacket::decode(&nbuf[..n])
                            .and_then(|p| packet::ndp_answer(&p, &ips.borrow(), mac));
                        if let Some(reply) = reply {
                            let ip = match &reply.msg {
                                packet::NdpMessage::Advert { target, .. } => IpAddr::V6(*target),
                                _ => IpAddr::V6(reply.src),
                            };
                            match ndp.send_checked(&reply.encode(), &|| gate.allows(ip)).await {
                                Ok(true) => {}
                                Ok(false) => tracing::debug!(%ip, "NA answer withheld: gate closed"),
                                Err(e) => tracing::debug!(error = %e, "NA answer not sent"),
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => backoff(e).await,
                }
            }
        }
    }
}

/// A packet socket error: ENETDOWN is reported once when the link goes down and is harmless;
/// anything else is logged and retried after a pause, so a dead socket cannot spin.
async fn backoff(e: std::io::Error) {
    if e.raw_os_error() != Some(libc::ENETDOWN) {
        tracing::warn!(error = %e, "ARP/NDP responder socket error");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
