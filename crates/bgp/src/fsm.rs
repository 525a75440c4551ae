//! RFC 4271 §8 session states and the OPEN negotiation rules, kept free of I/O
//! so they can be unit-tested; [`crate::session`] drives them over TCP.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::codec::{
    err, Capability, DecodeError, GrFamily, Open, AFI_IPV4, AFI_IPV6, AS_TRANS, SAFI_UNICAST,
};
use crate::rib_out::Families;

/// Session state (RFC 4271 §8.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    /// Not trying; waiting for the connect-retry timer or shut down.
    #[default]
    Idle,
    /// Dialling the peer.
    Connect,
    /// Waiting for the peer to dial in (passive peers, or between attempts).
    Active,
    /// OPEN sent, waiting for the peer's.
    OpenSent,
    /// OPENs exchanged, waiting for KEEPALIVE.
    OpenConfirm,
    /// Routes flow.
    Established,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What this side offers in its OPEN.
#[derive(Debug, Clone)]
pub struct LocalOpen {
    /// Local AS.
    pub local_as: u32,
    /// Router ID.
    pub router_id: Ipv4Addr,
    /// Proposed hold time (0 or ≥ 3 seconds).
    pub hold_time: u16,
    /// Families offered.
    pub families: Families,
    /// Graceful restart time (seconds); `None` to not advertise GR.
    pub gr_restart_time: Option<u16>,
    /// Set the R bit: this speaker has just restarted.
    pub gr_restarting: bool,
}

impl LocalOpen {
    /// Builds the OPEN message.
    pub fn message(&self) -> Open {
        let mut caps = Vec::new();
        let mut gr = Vec::new();
        if self.families.v4 {
            caps.push(Capability::Multiprotocol {
                afi: AFI_IPV4,
                safi: SAFI_UNICAST,
            });
            gr.push(GrFamily {
                afi: AFI_IPV4,
                safi: SAFI_UNICAST,
                forwarding: self.gr_restarting,
            });
        }
        if self.families.v6 {
            caps.push(Capability::Multiprotocol {
                afi: AFI_IPV6,
                safi: SAFI_UNICAST,
            });
            gr.push(GrFamily {
                afi: AFI_IPV6,
                safi: SAFI_UNICAST,
                forwarding: self.gr_restarting,
            });
        }
        caps.push(Capability::RouteRefresh);
        caps.push(Capability::FourOctetAs(self.local_as));
        if let Some(t) = self.gr_restart_time {
            caps.push(Capability::GracefulRestart {
                restarting: self.gr_restarting,
                restart_time: t.min(4095),
                families: gr,
            });
        }
        Open {
            version: 4,
            my_as: u16::try_from(self.local_as).unwrap_or(AS_TRANS),
            hold_time: self.hold_time,
            bgp_id: self.router_id,
            capabilities: caps,
        }
    }
}

/// Result of a successful OPEN exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Peer's AS.
    pub peer_as: u32,
    /// Peer's BGP identifier.
    pub peer_id: Ipv4Addr,
    /// Hold time: the smaller proposal; zero disables keepalives and the hold timer.
    pub hold_time: Duration,
    /// Keepalive interval: a third of the hold time.
    pub keepalive: Duration,
    /// 4-octet AS on both sides.
    pub four_octet: bool,
    /// Families both sides support.
    pub families: Families,
    /// Peer supports route refresh.
    pub route_refresh: bool,
    /// Peer advertised graceful restart.
    pub peer_graceful_restart: bool,
}

/// Validates the peer's OPEN against what we expect (RFC 4271 §6.2, RFC 6793,
/// RFC 4760 §8) and negotiates the session parameters.
pub fn negotiate(
    local: &LocalOpen,
    expected_as: u32,
    open: &Open,
) -> Result<Negotiated, DecodeError> {
    if open.version != 4 {
        return Err(DecodeError::new(
            err::OPEN,
            1,
            4u16.to_be_bytes().to_vec(),
            "unsupported BGP version",
        ));
    }
    let mut four = None;
    let mut mp = Vec::new();
    let mut rr = false;
    let mut gr = false;
    for c in &open.capabilities {
        match c {
            Capability::FourOctetAs(a) => four = Some(*a),
            Capability::Multiprotocol { afi, safi } => mp.push((*afi, *safi)),
            Capability::RouteRefresh => rr = true,
            Capability::GracefulRestart { .. } => gr = true,
            Capability::Unknown { .. } => {}
        }
    }
    let peer_as = four.unwrap_or(u32::from(open.my_as));
    if peer_as != expected_as
        || (four.is_some() && open.my_as != AS_TRANS && u32::from(open.my_as) != peer_as)
    {
        return Err(DecodeError::new(
            err::OPEN,
            2,
            open.my_as.to_be_bytes().to_vec(),
            "bad peer AS",
        ));
    }
    if open.hold_time == 1 || open.hold_time == 2 {
        return Err(DecodeError::new(
            err::OPEN,
            6,
            vec![],
            "unacceptable hold time",
        ));
    }
    let id = open.bgp_id;
    if id.is_unspecified() || (peer_as == local.local_as && id == local.router_id) {
        return Err(DecodeError::new(err::OPEN, 3, vec![], "bad BGP identifier"));
    }
    let hold = local.hold_time.min(open.hold_time);
    // RFC 4760 §8: without MP capabilities, the peer speaks IPv4 unicast only.
    let (pv4, pv6) = if mp.is_empty() {
        (true, false)
    } else {
        (
            mp.contains(&(AFI_IPV4, SAFI_UNICAST)),
            mp.contains(&(AFI_IPV6, SAFI_UNICAST)),
        )
    };
    Ok(Negotiated {
        peer_as,
        peer_id: id,
        hold_time: Duration::from_secs(u64::from(hold)),
        keepalive: Duration::from_secs(u64::from(hold / 3)),
        four_octet: four.is_some(),
        families: Families {
            v4: pv4 && local.families.v4,
            v6: pv6 && local.families.v6,
        },
        route_refresh: rr,
        peer_graceful_restart: gr,
    })
}

/// Connection collision (RFC 4271 §6.8): true when the connection *we*
/// initiated must be kept, i.e. our BGP identifier is the higher one.
pub fn keep_local_initiated(local_id: Ipv4Addr, remote_id: Ipv4Addr) -> bool {
    u32::from(local_id) > u32::from(remote_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalOpen {
        LocalOpen {
            local_as: 4_200_000_001,
            router_id: Ipv4Addr::new(198, 18, 0, 11),
            hold_time: 90,
            families: Families { v4: true, v6: true },
            gr_restart_time: Some(120),
            gr_restarting: true,
        }
    }

    #[test]
    fn negotiates_hold_time_and_families() {
        let mut peer = local();
        peer.local_as = 64512;
        peer.router_id = Ipv4Addr::new(198, 18, 0, 1);
        peer.hold_time = 3;
        peer.families.v6 = false;
        let n = negotiate(&local(), 64512, &peer.message()).unwrap();
        assert_eq!(n.hold_time, Duration::from_secs(3));
        assert_eq!(n.keepalive, Duration::from_secs(1));
        assert!(n.families.v4 && !n.families.v6);
        assert!(n.four_octet);
        assert!(negotiate(&local(), 64513, &peer.message()).is_err());
        peer.hold_time = 2;
        assert_eq!(
            negotiate(&local(), 64512, &peer.message())
                .unwrap_err()
                .subcode,
            6
        );
    }

    #[test]
    fn four_octet_as_travels_as_as_trans() {
        let o = local().message();
        assert_eq!(o.my_as, AS_TRANS);
        let mut me = local();
        me.local_as = 64513;
        me.router_id = Ipv4Addr::new(198, 18, 0, 12);
        let n = negotiate(&me, 4_200_000_001, &o).unwrap();
        assert_eq!(n.peer_as, 4_200_000_001);
    }
}
