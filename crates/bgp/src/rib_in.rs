//! Adj-RIB-In: the prefixes a peer has sent, counted per address family, and
//! the maximum-prefix limits that keep a peer from growing it without bound.
//!
//! The speaker installs nothing it receives, so the set exists only to count
//! correctly (a withdraw of an unknown prefix must not lower the count, a
//! repeated announcement must not raise it) and to enforce the limit. It is
//! pure data: [`crate::fsm`] feeds it and decides what a breach costs.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use crate::codec::{AFI_IPV4, AFI_IPV6, SAFI_UNICAST};
use crate::prefix::Prefix;

/// Address family of a prefix (unicast only), as limits and counters name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 unicast.
    Ipv4,
    /// IPv6 unicast.
    Ipv6,
}

impl Family {
    /// Both families, in the order counters are reported.
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    /// The family of `p`.
    pub fn of(p: &Prefix) -> Family {
        if p.is_v4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    }

    /// AFI and SAFI (RFC 4760) of the family, as NOTIFICATION data carries them.
    pub fn afi_safi(self) -> (u16, u8) {
        match self {
            Family::Ipv4 => (AFI_IPV4, SAFI_UNICAST),
            Family::Ipv6 => (AFI_IPV6, SAFI_UNICAST),
        }
    }

    fn index(self) -> usize {
        match self {
            Family::Ipv4 => 0,
            Family::Ipv6 => 1,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        })
    }
}

/// What a breached limit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitAction {
    /// Cease with subcode 1 "Maximum Number of Prefixes Reached" (RFC 4486)
    /// and keep the session down for the restart time.
    #[default]
    Shutdown,
    /// Log once and keep accepting (FRR's `warning-only`): memory is then
    /// bounded only by the peer.
    Warn,
}

/// Default maximum prefixes per family: far above what a router sends a
/// node (a default route, a few aggregates), far below a full table.
pub const DEFAULT_MAX_PREFIXES: u32 = 10_000;
/// Default wait before a session shut down by the limit may come back.
pub const DEFAULT_LIMIT_RESTART: Duration = Duration::from_secs(60);
/// Default warning threshold, percent of the limit (FRR's default).
pub const DEFAULT_LIMIT_WARNING: u8 = 75;

/// Maximum-prefix limits of one peer (BIRD `import limit`, FRR
/// `maximum-prefix`, gobgp `max-prefixes`), per address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixLimits {
    /// Most IPv4 prefixes the peer may send; `None`: no limit.
    pub ipv4: Option<u32>,
    /// Most IPv6 prefixes the peer may send; `None`: no limit.
    pub ipv6: Option<u32>,
    /// What a breach does.
    pub action: LimitAction,
    /// After a shutdown, how long the session stays down (incoming
    /// connections are refused too); `None`: until the limits change.
    pub restart: Option<Duration>,
    /// Warn once when a family reaches this percentage of its limit; 0: never.
    pub warning_pct: u8,
}

impl Default for PrefixLimits {
    fn default() -> Self {
        PrefixLimits {
            ipv4: Some(DEFAULT_MAX_PREFIXES),
            ipv6: Some(DEFAULT_MAX_PREFIXES),
            action: LimitAction::Shutdown,
            restart: Some(DEFAULT_LIMIT_RESTART),
            warning_pct: DEFAULT_LIMIT_WARNING,
        }
    }
}

impl PrefixLimits {
    /// No limit at all (what a peer that must never be cut off gets).
    pub fn unlimited() -> Self {
        PrefixLimits {
            ipv4: None,
            ipv6: None,
            ..Default::default()
        }
    }

    /// The limit of `f`.
    pub fn max(&self, f: Family) -> Option<u32> {
        match f {
            Family::Ipv4 => self.ipv4,
            Family::Ipv6 => self.ipv6,
        }
    }
}

/// Where a family's count stands against its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitCheck {
    /// Below the warning threshold, or no limit.
    Fine,
    /// At or above the warning threshold, not above the limit.
    Warning {
        /// Prefixes held.
        count: usize,
        /// The limit.
        limit: u32,
    },
    /// Above the limit.
    Exceeded {
        /// Prefixes held.
        count: usize,
        /// The limit.
        limit: u32,
    },
}

impl PrefixLimits {
    /// Checks `count` prefixes of family `f`: the limit is the most a peer
    /// may hold, so `limit + 1` is the first breach (as BIRD and FRR count).
    pub fn check(&self, f: Family, count: usize) -> LimitCheck {
        let Some(limit) = self.max(f) else {
            return LimitCheck::Fine;
        };
        if count > limit as usize {
            return LimitCheck::Exceeded { count, limit };
        }
        let pct = u64::from(self.warning_pct);
        if pct > 0 && (count as u64) * 100 >= u64::from(limit) * pct {
            return LimitCheck::Warning { count, limit };
        }
        LimitCheck::Fine
    }
}

/// RFC 4486 §4 NOTIFICATION data for "Maximum Number of Prefixes Reached":
/// AFI (2 octets), SAFI (1 octet), the upper bound (4 octets).
pub fn max_prefix_data(f: Family, limit: u32) -> Vec<u8> {
    let (afi, safi) = f.afi_safi();
    let mut d = Vec::with_capacity(7);
    d.extend_from_slice(&afi.to_be_bytes());
    d.push(safi);
    d.extend_from_slice(&limit.to_be_bytes());
    d
}

/// The prefixes a peer currently announces to us, by family.
#[derive(Debug, Default, Clone)]
pub struct RibIn {
    sets: [BTreeSet<Prefix>; 2],
}

impl RibIn {
    /// Records an announcement (idempotent).
    pub fn insert(&mut self, p: Prefix) {
        self.sets[Family::of(&p).index()].insert(p);
    }

    /// Records a withdrawal; unknown prefixes change nothing.
    pub fn remove(&mut self, p: &Prefix) {
        self.sets[Family::of(p).index()].remove(p);
    }

    /// Prefixes held of family `f`.
    pub fn count(&self, f: Family) -> usize {
        self.sets[f.index()].len()
    }

    /// Prefixes held of both families.
    pub fn total(&self) -> usize {
        self.sets.iter().map(BTreeSet::len).sum()
    }

    /// Forgets everything (the session went down).
    pub fn clear(&mut self) {
        for s in &mut self.sets {
            *s = BTreeSet::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn counts_per_family_without_double_counting() {
        let mut r = RibIn::default();
        r.insert(p("198.19.0.0/24"));
        r.insert(p("198.19.0.0/24"));
        r.insert(p("2001:db8:1::/48"));
        r.remove(&p("198.19.9.0/24"));
        assert_eq!(r.count(Family::Ipv4), 1);
        assert_eq!(r.count(Family::Ipv6), 1);
        r.remove(&p("198.19.0.0/24"));
        assert_eq!(r.count(Family::Ipv4), 0);
        assert_eq!(r.total(), 1);
    }

    #[test]
    fn limit_is_the_most_a_peer_may_hold() {
        let l = PrefixLimits {
            ipv4: Some(8),
            ipv6: None,
            ..Default::default()
        };
        assert_eq!(l.check(Family::Ipv4, 5), LimitCheck::Fine);
        assert_eq!(
            l.check(Family::Ipv4, 6),
            LimitCheck::Warning { count: 6, limit: 8 }
        );
        assert_eq!(
            l.check(Family::Ipv4, 8),
            LimitCheck::Warning { count: 8, limit: 8 }
        );
        assert_eq!(
            l.check(Family::Ipv4, 9),
            LimitCheck::Exceeded { count: 9, limit: 8 }
        );
        assert_eq!(l.check(Family::Ipv6, 1_000_000), LimitCheck::Fine);
        let quiet = PrefixLimits {
            warning_pct: 0,
            ..l
        };
        assert_eq!(quiet.check(Family::Ipv4, 8), LimitCheck::Fine);
    }

    #[test]
    fn rfc4486_data_is_afi_safi_and_bound() {
        assert_eq!(max_prefix_data(Family::Ipv4, 5), [0, 1, 1, 0, 0, 0, 5]);
        assert_eq!(
            max_prefix_data(Family::Ipv6, 70_000),
            [0, 2, 1, 0, 1, 0x11, 0x70]
        );
    }
}
