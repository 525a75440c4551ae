//! Time on one node's own clock: [`Stamp`], and the [`Clock`]s that give it.
//!
//! Why a type of its own: every decision about the right to announce compares times taken on
//! *this* node's clock only (no node ever reads another's timestamps), and the clock must be
//! one that keeps counting while the machine is suspended (`CLOCK_BOOTTIME`), so a node that
//! wakes up from a stall or a suspend sees how much time has really passed. Tests drive the
//! same code with Tokio's paused clock instead.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time on this node's clock, in nanoseconds from the clock's origin.
///
/// Why not `std::time::Instant`: the lease check must use `CLOCK_BOOTTIME` (Instant is
/// `CLOCK_MONOTONIC`, which stops during a suspend), and the pure core must be testable with
/// simulated clocks that drift against each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Stamp(pub u64);

impl Stamp {
    /// The clock's origin. Why: a "never" that compares below every real time.
    pub const ZERO: Stamp = Stamp(0);
    /// A time after every real one. Why: a lease with no end (a node alone needs no majority).
    pub const MAX: Stamp = Stamp(u64::MAX);

    /// Nanoseconds since the origin. Why: the wire of the lease gate is one atomic integer.
    pub fn nanos(self) -> u64 {
        self.0
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later. Why: ages for status output.
    pub fn since(self, earlier: Stamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Stamp {
    type Output = Stamp;
    fn add(self, d: Duration) -> Stamp {
        let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Stamp(self.0.saturating_add(n))
    }
}

impl Sub<Duration> for Stamp {
    type Output = Stamp;
    fn sub(self, d: Duration) -> Stamp {
        let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Stamp(self.0.saturating_sub(n))
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.0 as f64 / 1e9)
    }
}

/// A source of [`Stamp`]s.
///
/// Why a trait: production reads `CLOCK_BOOTTIME` ([`BootClock`]); unit tests of the runtime
/// read Tokio's paused clock ([`TokioClock`]) so that timers and decisions agree.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Stamp;
}

/// `CLOCK_BOOTTIME`: monotonic, and counts time spent suspended.
///
/// Why: a process (or machine) that was stopped must not believe its lease is younger than it
/// is; `CLOCK_BOOTTIME` is what the lease check at answer time reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootClock;

impl Clock for BootClock {
    fn now(&self) -> Stamp {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into valid memory we own.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        if rc != 0 {
            // CLOCK_BOOTTIME exists on every Linux since 2.6.39; fall back to MONOTONIC rather
            // than a wrong answer if it ever does not.
            // SAFETY: as above.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        }
        Stamp((ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64)
    }
}

/// Tokio's clock (paused in tests), as [`Stamp`]s from the moment it was made.
///
/// Why: with `tokio::time::pause()` every timer and every decision of the runtime use one
/// virtual time, so failover timing can be asserted exactly and instantly.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose origin is now (minus one second, so no real time is [`Stamp::ZERO`]).
    pub fn new() -> TokioClock {
        let now = tokio::time::Instant::now();
        TokioClock {
            origin: now.checked_sub(Duration::from_secs(1)).unwrap_or(now),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Stamp {
        Stamp::ZERO + tokio::time::Instant::now().duration_since(self.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Stamp::MAX + Duration::from_secs(1), Stamp::MAX);
        assert_eq!(Stamp(5) - Duration::from_secs(1), Stamp::ZERO);
        assert_eq!(
            Stamp(3_000_000_000).since(Stamp(1_000_000_000)),
            Duration::from_secs(2)
        );
        assert_eq!(Stamp(1).since(Stamp(2)), Duration::ZERO);
    }

    #[test]
    fn boot_clock_moves_forward() {
        let c = BootClock;
        let a = c.now();
        std::thread::sleep(Duration::from_millis(2));
        let b = c.now();
        assert!(b > a && b.since(a) >= Duration::from_millis(2), "{a} {b}");
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let c = TokioClock::new();
        let a = c.now();
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(c.now().since(a), Duration::from_millis(250));
    }
}
