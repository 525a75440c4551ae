//! The timers of the election and the safety condition between them.
//!
//! Why a module: the bound Berth states (at most one answering node) holds only when
//! `takeover` exceeds `fence` by the clock-drift allowance; [`Timing::validate`] refuses
//! anything else, with the key and the value at fault.

use std::time::Duration;

use crate::error::ConfigError;

/// Largest rate difference assumed between two nodes' clocks: 500 ppm, the most an NTP or
/// chrony slew ever applies (a free-running quartz is within 100 ppm).
///
/// Why: a lease measured on one clock and a takeover timer on another agree only up to this.
pub const MAX_DRIFT: f64 = 500e-6;

/// How often and how long: heartbeats, fencing, takeover, rejoin.
///
/// - `heartbeat` (H): every node sends each peer a heartbeat this often.
/// - `fence` (T_fence): an announcer stops answering when no majority has echoed one of its
///   heartbeats sent in the last T_fence (measured on its own clock from the *sending* of the
///   echoed heartbeat, so network delay only shortens the lease).
/// - `takeover` (T_takeover): a node grants or takes an address away from its announcer only
///   T_takeover after the last heartbeat it *received* from that announcer.
/// - `rejoin`: a node that comes back (restart, link up) must be heard without a break this
///   long before addresses move back to it (damps flapping links).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// H.
    pub heartbeat: Duration,
    /// T_fence.
    pub fence: Duration,
    /// T_takeover.
    pub takeover: Duration,
    /// How long a returning node must be heard before addresses move back to it.
    pub rejoin: Duration,
}

/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(50);

impl Default for Timing {
    fn default() -> Self {
        Timing::from_heartbeat(DEFAULT_HEARTBEAT)
    }
}

impl Timing {
    /// The timers derived from a heartbeat interval: fence 6 H, takeover 8 H, rejoin
    /// max(2 s, takeover). At the default H = 50 ms: 300 ms, 400 ms, 2 s.
    ///
    /// Why these ratios: an announcer is fenced only after five heartbeats in a row went
    /// unanswered, and a successor waits two more intervals than the fence, which covers the
    /// drift allowance many times over and one or two lost heartbeats with a witness.
    pub fn from_heartbeat(h: Duration) -> Timing {
        let takeover = h * 8;
        Timing {
            heartbeat: h,
            fence: h * 6,
            takeover,
            rejoin: takeover.max(Duration::from_secs(2)),
        }
    }

    /// Checks the safety condition `takeover / (1 + ρ) > fence / (1 − ρ)` (with a witness:
    /// `takeover / (1 + ρ) > (fence + heartbeat) / (1 − ρ)`) and sane ranges.
    ///
    /// Why: a configuration that breaks the condition could leave two nodes answering; it is
    /// refused, never run. The witness adds one heartbeat: a cut-off announcer's last
    /// answered witness probe may be up to one interval younger than its last heartbeat that
    /// reached the peer.
    pub fn validate(&self, witness: bool) -> Result<(), ConfigError> {
        let h = self.heartbeat;
        if h < Duration::from_millis(1) || h > Duration::from_secs(10) {
            return Err(ConfigError::invalid(
                "heartbeat",
                format!("{h:?}"),
                "must be between 1ms and 10s (the default is 50ms)",
            ));
        }
        if self.fence < h * 2 {
            return Err(ConfigError::invalid(
                "fence",
                format!("{:?}", self.fence),
                format!(
                    "must be at least two heartbeats ({:?}), or one lost heartbeat fences the announcer",
                    h * 2
                ),
            ));
        }
        let need = self.min_takeover(witness);
        if self.takeover <= need {
            let what = if witness {
                format!(
                    "fence + heartbeat ({:?}, with a witness)",
                    self.fence + self.heartbeat
                )
            } else {
                format!("fence ({:?})", self.fence)
            };
            return Err(ConfigError::invalid(
                "takeover",
                format!("{:?}", self.takeover),
                format!(
                    "must exceed {what} by the clock-drift allowance: more than {need:?}; \
                     otherwise a fenced announcer could still answer when its successor starts"
                ),
            ));
        }
        if self.rejoin < self.takeover {
            return Err(ConfigError::invalid(
                "rejoin",
                format!("{:?}", self.rejoin),
                format!(
                    "must be at least takeover ({:?}): a restarted node may not take anything \
                     back before its old leases are certainly gone",
                    self.takeover
                ),
            ));
        }
        Ok(())
    }

    /// The smallest takeover (exclusive) that keeps the bound for this fence:
    /// `fence · (1 + ρ) / (1 − ρ)`, with a witness `(fence + heartbeat) · (1 + ρ) / (1 − ρ)`.
    pub fn min_takeover(&self, witness: bool) -> Duration {
        let base = if witness {
            self.fence + self.heartbeat
        } else {
            self.fence
        };
        base.mul_f64((1.0 + MAX_DRIFT) / (1.0 - MAX_DRIFT))
            .max(base + Duration::from_nanos(1))
    }

    /// How often the witness is probed: a third of `takeover − fence` (the longest gap in its
    /// answers that keeps its vote), at most once per heartbeat, at least every millisecond.
    pub fn witness_interval(&self) -> Duration {
        (self.takeover.saturating_sub(self.fence) / 3)
            .min(self.heartbeat)
            .max(Duration::from_millis(1))
    }

    /// Real time, at most, between the sending of the last heartbeat a majority echoed and the
    /// moment a cut-off announcer stops answering: `fence / (1 − ρ)`.
    pub fn fence_real_max(&self) -> Duration {
        self.fence.div_f64(1.0 - MAX_DRIFT)
    }

    /// Real time, at least, between the last heartbeat a node received from an announcer and
    /// the moment it lets another node take over: `takeover / (1 + ρ)`.
    pub fn takeover_real_min(&self) -> Duration {
        self.takeover.div_f64(1.0 + MAX_DRIFT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_as_documented() {
        let t = Timing::default();
        t.validate(false).unwrap();
        t.validate(true).unwrap();
        assert_eq!(t.heartbeat, Duration::from_millis(50));
        assert_eq!(t.fence, Duration::from_millis(300));
        assert_eq!(t.takeover, Duration::from_millis(400));
        assert_eq!(t.rejoin, Duration::from_secs(2));
        assert!(t.takeover_real_min() > t.fence_real_max());
    }

    #[test]
    fn derived_timings_are_valid_over_the_range() {
        for ms in [1u64, 2, 5, 10, 20, 50, 100, 1000, 10_000] {
            let t = Timing::from_heartbeat(Duration::from_millis(ms));
            t.validate(false).unwrap();
            t.validate(true).unwrap();
        }
    }

    #[test]
    fn takeover_not_above_fence_is_refused_naming_the_key() {
        let mut t = Timing::default();
        t.takeover = t.fence;
        let e = t.validate(false).unwrap_err().to_string();
        assert!(e.contains("takeover") && e.contains("fence"), "{e}");
        // Just above the fence but within the drift allowance is refused too.
        t.takeover = t.fence + Duration::from_micros(100);
        assert!(t.validate(false).is_err());
        t.takeover = t.fence + Duration::from_millis(1);
        t.validate(false).unwrap();
        // A witness needs one more heartbeat between the two.
        let e = t.validate(true).unwrap_err().to_string();
        assert!(e.contains("witness"), "{e}");
        t.takeover = t.fence + t.heartbeat + Duration::from_millis(1);
        t.validate(true).unwrap();
    }

    #[test]
    fn short_fence_and_early_rejoin_are_refused() {
        let mut t = Timing::default();
        t.fence = t.heartbeat;
        assert!(t.validate(false).unwrap_err().to_string().contains("fence"));
        let mut t = Timing::default();
        t.rejoin = t.takeover / 2;
        assert!(t
            .validate(false)
            .unwrap_err()
            .to_string()
            .contains("rejoin"));
        let t = Timing {
            heartbeat: Duration::from_micros(10),
            ..Timing::default()
        };
        assert!(t
            .validate(false)
            .unwrap_err()
            .to_string()
            .contains("heartbeat"));
    }
}
