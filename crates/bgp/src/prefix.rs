//! IP prefixes as BGP carries them: an address plus a length, host bits cleared.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 prefix with host bits zeroed, so equal routes compare equal
/// in the RIB-out whatever way the user wrote them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Prefix {
    /// IPv4 prefix, length 0..=32.
    V4(Ipv4Addr, u8),
    /// IPv6 prefix, length 0..=128.
    V6(Ipv6Addr, u8),
}

/// Why a prefix could not be built or parsed; names the offending text so the
/// configuration error can be fixed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrefixError {
    /// The text is not `ADDRESS/LENGTH`.
    #[error(
        "`{0}` is not a prefix: write ADDRESS/LENGTH, e.g. 198.19.100.10/32 or 2001:db8::1/128"
    )]
    Syntax(String),
    /// The length is larger than the address family allows.
    #[error("prefix length {len} is too long for `{text}` (maximum {max})")]
    Length {
        /// The text that was parsed.
        text: String,
        /// The length given.
        len: u32,
        /// The family's maximum.
        max: u8,
    },
}

impl Prefix {
    /// Builds a prefix, clearing host bits; `None` if the length is too long
    /// for the address family.
    pub fn new(addr: IpAddr, len: u8) -> Option<Prefix> {
        match addr {
            IpAddr::V4(a) if len <= 32 => {
                let mask = if len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(len))
                };
                Some(Prefix::V4(Ipv4Addr::from(u32::from(a) & mask), len))
            }
            IpAddr::V6(a) if len <= 128 => {
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(len))
                };
                Some(Prefix::V6(Ipv6Addr::from(u128::from(a) & mask), len))
            }
            _ => None,
        }
    }

    /// Prefix length in bits.
    pub fn len(&self) -> u8 {
        match self {
            Prefix::V4(_, l) | Prefix::V6(_, l) => *l,
        }
    }

    /// True for a zero-length (default route) prefix; present because clippy
    /// expects `is_empty` next to `len`.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True for IPv4 prefixes, which travel in the classic UPDATE NLRI field.
    pub fn is_v4(&self) -> bool {
        matches!(self, Prefix::V4(..))
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        match self {
            Prefix::V4(a, _) => IpAddr::V4(*a),
            Prefix::V6(a, _) => IpAddr::V6(*a),
        }
    }

    /// Number of octets this prefix takes in NLRI encoding (length octet included).
    pub fn wire_len(&self) -> usize {
        1 + usize::from(self.len()).div_ceil(8)
    }

    /// Appends the RFC 4271 NLRI encoding (length, then the significant octets).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let n = usize::from(self.len()).div_ceil(8);
        out.push(self.len());
        match self {
            Prefix::V4(a, _) => out.extend_from_slice(&a.octets()[..n]),
            Prefix::V6(a, _) => out.extend_from_slice(&a.octets()[..n]),
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len())
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| PrefixError::Syntax(s.to_string()))?;
        let addr: IpAddr = a.parse().map_err(|_| PrefixError::Syntax(s.to_string()))?;
        let len: u32 = l.parse().map_err(|_| PrefixError::Syntax(s.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(PrefixError::Length {
                text: s.to_string(),
                len,
                max: max as u8,
            });
        }
        Prefix::new(addr, len as u8).ok_or_else(|| PrefixError::Syntax(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_clears_host_bits() {
        let p: Prefix = "198.19.100.17/24".parse().unwrap();
        assert_eq!(p.to_string(), "198.19.100.0/24");
        let p: Prefix = "2001:db8::1/32".parse().unwrap();
        assert_eq!(p.to_string(), "2001:db8::/32");
        assert!("1.2.3.4/33".parse::<Prefix>().is_err());
        assert!("1.2.3.4".parse::<Prefix>().is_err());
    }
}
