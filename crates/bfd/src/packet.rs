//! BFD control packet encoding and the reception checks of RFC 5880 §6.8.6
//! that do not need session state.

use crate::session::SessionState;

/// Diagnostic codes (RFC 5880 §4.1) this implementation sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Diag {
    /// No diagnostic.
    None = 0,
    /// Control detection time expired.
    TimeExpired = 1,
    /// Neighbor signaled session down.
    NeighborDown = 3,
    /// Administratively down.
    AdminDown = 7,
}

/// A BFD control packet (without authentication, which is not used here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Diagnostic code.
    pub diag: u8,
    /// Sender's state.
    pub state: SessionState,
    /// Poll bit.
    pub poll: bool,
    /// Final bit.
    pub fin: bool,
    /// Demand bit.
    pub demand: bool,
    /// Detect multiplier.
    pub detect_mult: u8,
    /// Sender's discriminator.
    pub my_disc: u32,
    /// Receiver's discriminator as the sender knows it (0 if unknown).
    pub your_disc: u32,
    /// Desired Min TX Interval, µs.
    pub desired_min_tx: u32,
    /// Required Min RX Interval, µs.
    pub required_min_rx: u32,
    /// Required Min Echo RX Interval, µs.
    pub required_min_echo_rx: u32,
}

/// Reasons a received packet is discarded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// Shorter than 24 octets or than its length field.
    #[error("packet too short")]
    Short,
    /// Version other than 1.
    #[error("unsupported BFD version {0}")]
    Version(u8),
    /// A field RFC 5880 §6.8.6 says must not be zero/set.
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

const LEN: usize = 24;

impl Packet {
    /// Decodes and applies the stateless reception checks.
    pub fn decode(b: &[u8]) -> Result<Packet, PacketError> {
        if b.len() < LEN {
            return Err(PacketError::Short);
        }
        let version = b[0] >> 5;
        if version != 1 {
            return Err(PacketError::Version(version));
        }
        let len = usize::from(b[3]);
        if len < LEN || len > b.len() {
            return Err(PacketError::Short);
        }
        let flags = b[1];
        if flags & 0x04 != 0 {
            return Err(PacketError::Invalid(
                "authentication present but not configured",
            ));
        }
        if flags & 0x01 != 0 {
            return Err(PacketError::Invalid("multipoint bit set"));
        }
        let w = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let p = Packet {
            diag: b[0] & 0x1f,
            state: SessionState::from_bits(flags >> 6),
            poll: flags & 0x20 != 0,
            fin: flags & 0x10 != 0,
            demand: flags & 0x02 != 0,
            detect_mult: b[2],
            my_disc: w(4),
            your_disc: w(8),
            desired_min_tx: w(12),
            required_min_rx: w(16),
            required_min_echo_rx: w(20),
        };
        if p.detect_mult == 0 {
            return Err(PacketError::Invalid("detect multiplier is zero"));
        }
        if p.my_disc == 0 {
            return Err(PacketError::Invalid("my discriminator is zero"));
        }
        if p.your_disc == 0 && !matches!(p.state, SessionState::Down | SessionState::AdminDown) {
            return Err(PacketError::Invalid(
                "your discriminator zero in state other than Down",
            ));
        }
        Ok(p)
    }

    /// Encodes to the 24-octet wire form.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = (1 << 5) | (self.diag & 0x1f);
        b[1] = (self.state.bits() << 6)
            | if self.poll { 0x20 } else { 0 }
            | if self.fin { 0x10 } else { 0 }
            | if self.demand { 0x02 } else { 0 };
        b[2] = self.detect_mult;
        b[3] = LEN as u8;
        b[4..8].copy_from_slice(&self.my_disc.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_disc.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx.to_be_bytes());
        b[20..24].copy_from_slice(&self.required_min_echo_rx.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_checks() {
        let p = Packet {
            diag: 0,
            state: SessionState::Up,
            poll: true,
            fin: false,
            demand: false,
            detect_mult: 3,
            my_disc: 7,
            your_disc: 9,
            desired_min_tx: 100_000,
            required_min_rx: 100_000,
            required_min_echo_rx: 0,
        };
        assert_eq!(Packet::decode(&p.encode()).unwrap(), p);
        let mut b = p.encode();
        b[0] = 2 << 5;
        assert!(Packet::decode(&b).is_err());
        let mut q = p;
        q.your_disc = 0;
        assert!(Packet::decode(&q.encode()).is_err());
        assert!(Packet::decode(&[0u8; 10]).is_err());
    }
}
