//! BGP-4 message framing and encoding (RFC 4271 §4, RFC 5492, RFC 2918).
//!
//! The decoder takes bytes from an untrusted peer: every length is checked
//! before use, nothing allocates more than the (≤ 4096-octet) message itself,
//! and each failure carries the NOTIFICATION code/subcode RFC 4271 §6 asks for.
//! Path attributes stay raw here; [`crate::attributes`] parses them because
//! their error handling (RFC 7606) is softer than a session reset.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::prefix::Prefix;

/// Largest BGP message without the extended-message capability (RFC 4271 §4).
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Fixed header: 16-octet marker, 2-octet length, 1-octet type.
pub const HEADER_LEN: usize = 19;
/// AFI for IPv4 (RFC 4760).
pub const AFI_IPV4: u16 = 1;
/// AFI for IPv6 (RFC 4760).
pub const AFI_IPV6: u16 = 2;
/// SAFI for unicast (RFC 4760).
pub const SAFI_UNICAST: u8 = 1;
/// AS number used in 2-octet fields when the real AS does not fit (RFC 6793).
pub const AS_TRANS: u16 = 23456;

/// NOTIFICATION error codes (RFC 4271 §4.5), named so call sites read well.
pub mod err {
    /// Message Header Error.
    pub const HEADER: u8 = 1;
    /// OPEN Message Error.
    pub const OPEN: u8 = 2;
    /// UPDATE Message Error.
    pub const UPDATE: u8 = 3;
    /// Hold Timer Expired.
    pub const HOLD_TIMER: u8 = 4;
    /// Finite State Machine Error.
    pub const FSM: u8 = 5;
    /// Cease (RFC 4486 subcodes).
    pub const CEASE: u8 = 6;
    /// ROUTE-REFRESH Message Error (RFC 7313).
    pub const ROUTE_REFRESH: u8 = 7;
}

/// A decoding failure that must reset the session, with the NOTIFICATION the
/// speaker sends before closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (NOTIFICATION {code}/{subcode})")]
pub struct DecodeError {
    /// NOTIFICATION error code.
    pub code: u8,
    /// NOTIFICATION error subcode.
    pub subcode: u8,
    /// NOTIFICATION data field.
    pub data: Vec<u8>,
    /// Human-readable cause for logs and peer status.
    pub reason: &'static str,
}

impl DecodeError {
    /// Shorthand constructor.
    pub fn new(code: u8, subcode: u8, data: Vec<u8>, reason: &'static str) -> Self {
        DecodeError {
            code,
            subcode,
            data,
            reason,
        }
    }

    /// The NOTIFICATION to send for this error.
    pub fn notification(&self) -> Notification {
        Notification {
            code: self.code,
            subcode: self.subcode,
            data: self.data.clone(),
        }
    }
}

/// One BGP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// OPEN (type 1).
    Open(Open),
    /// UPDATE (type 2), attributes still raw.
    Update(Update),
    /// NOTIFICATION (type 3).
    Notification(Notification),
    /// KEEPALIVE (type 4).
    Keepalive,
    /// ROUTE-REFRESH (type 5, RFC 2918).
    RouteRefresh(RouteRefresh),
}

/// OPEN message contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// Protocol version, 4.
    pub version: u8,
    /// 2-octet AS (AS_TRANS when the real one is 4-octet).
    pub my_as: u16,
    /// Proposed hold time in seconds.
    pub hold_time: u16,
    /// BGP identifier.
    pub bgp_id: Ipv4Addr,
    /// Capabilities from all capability optional parameters.
    pub capabilities: Vec<Capability>,
}

/// Per-AFI/SAFI entry of the graceful-restart capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrFamily {
    /// Address family.
    pub afi: u16,
    /// Subsequent address family.
    pub safi: u8,
    /// Forwarding state preserved (F bit).
    pub forwarding: bool,
}

/// A capability (RFC 5492) the speaker understands, or raw bytes of one it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Multiprotocol extensions (code 1, RFC 4760).
    Multiprotocol {
        /// Address family.
        afi: u16,
        /// Subsequent address family.
        safi: u8,
    },
    /// Route refresh (code 2, RFC 2918).
    RouteRefresh,
    /// Graceful restart (code 64, RFC 4724).
    GracefulRestart {
        /// Restart State (R) bit.
        restarting: bool,
        /// Restart time in seconds (12 bits).
        restart_time: u16,
        /// Families whose state is preserved.
        families: Vec<GrFamily>,
    },
    /// 4-octet AS numbers (code 65, RFC 6793).
    FourOctetAs(u32),
    /// Anything else, kept so it can be logged.
    Unknown {
        /// Capability code.
        code: u8,
        /// Capability value.
        value: Vec<u8>,
    },
}

/// UPDATE message with the path attributes left as raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    /// Withdrawn IPv4 routes.
    pub withdrawn: Vec<Prefix>,
    /// Path attributes, raw (see [`crate::attributes`]).
    pub attributes: Vec<u8>,
    /// Announced IPv4 routes.
    pub nlri: Vec<Prefix>,
}

/// NOTIFICATION message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Error code.
    pub code: u8,
    /// Error subcode.
    pub subcode: u8,
    /// Data.
    pub data: Vec<u8>,
}

/// ROUTE-REFRESH message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    /// Address family.
    pub afi: u16,
    /// Subsequent address family.
    pub safi: u8,
}

/// Reads the header and returns the total message length, so a reader knows
/// how many more octets to wait for before calling [`decode`].
pub fn frame_len(header: &[u8; HEADER_LEN]) -> Result<usize, DecodeError> {
    if header[..16].iter().any(|&b| b != 0xff) {
        return Err(DecodeError::new(
            err::HEADER,
            1,
            vec![],
            "connection not synchronized (bad marker)",
        ));
    }
    let len = usize::from(u16::from_be_bytes([header[16], header[17]]));
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(DecodeError::new(
            err::HEADER,
            2,
            header[16..18].to_vec(),
            "bad message length",
        ));
    }
    Ok(len)
}

/// A cursor over untrusted bytes; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Decodes one complete message (header included).
pub fn decode(msg: &[u8]) -> Result<Message, DecodeError> {
    let header: &[u8; HEADER_LEN] = msg
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| DecodeError::new(err::HEADER, 2, vec![], "message shorter than header"))?;
    let len = frame_len(header)?;
    if len != msg.len() {
        return Err(DecodeError::new(
            err::HEADER,
            2,
            header[16..18].to_vec(),
            "message length does not match the octets received",
        ));
    }
    let body = &msg[HEADER_LEN..];
    let bad_len = || {
        DecodeError::new(
            err::HEADER,
            2,
            header[16..18].to_vec(),
            "bad message length for type",
        )
    };
    match header[18] {
        1 => {
            if len < 29 {
                return Err(bad_len());
            }
            decode_open(body).map(Message::Open)
        }
        2 => {
            if len < 23 {
                return Err(bad_len());
            }
            decode_update(body).map(Message::Update)
        }
        3 => {
            if len < 21 {
                return Err(bad_len());
            }
            Ok(Message::Notification(Notification {
                code: body[0],
                subcode: body[1],
                data: body[2..].to_vec(),
            }))
        }
        4 => {
            if len != HEADER_LEN {
                return Err(bad_len());
            }
            Ok(Message::Keepalive)
        }
        5 => {
            if len != 23 {
                return Err(bad_len());
            }
            Ok(Message::RouteRefresh(RouteRefresh {
                afi: u16::from_be_bytes([body[0], body[1]]),
                safi: body[3],
            }))
        }
        t => Err(DecodeError::new(
            err::HEADER,
            3,
            vec![t],
            "bad message type",
        )),
    }
}

fn decode_open(body: &[u8]) -> Result<Open, DecodeError> {
    let mut r = Reader { buf: body };
    let malformed = || DecodeError::new(err::OPEN, 0, vec![], "malformed OPEN");
    let version = r.u8().ok_or_else(malformed)?;
    let my_as = r.u16().ok_or_else(malformed)?;
    let hold_time = r.u16().ok_or_else(malformed)?;
    let id = r.u32().ok_or_else(malformed)?;
    let opt_len = usize::from(r.u8().ok_or_else(malformed)?);
    if opt_len != r.buf.len() {
        return Err(malformed());
    }
    let mut capabilities = Vec::new();
    let mut params = Reader { buf: r.buf };
    while !params.buf.is_empty() {
        let ptype = params.u8().ok_or_else(malformed)?;
        let plen = usize::from(params.u8().ok_or_else(malformed)?);
        let pval = params.take(plen).ok_or_else(malformed)?;
        if ptype != 2 {
            // RFC 5492 leaves only capabilities in use; an unknown optional
            // parameter is an error the peer must hear about.
            return Err(DecodeError::new(
                err::OPEN,
                4,
                vec![],
                "unsupported optional parameter",
            ));
        }
        let mut c = Reader { buf: pval };
        while !c.buf.is_empty() {
            let code = c.u8().ok_or_else(malformed)?;
            let clen = usize::from(c.u8().ok_or_else(malformed)?);
            let v = c.take(clen).ok_or_else(malformed)?;
            capabilities.push(decode_capability(code, v));
        }
    }
    Ok(Open {
        version,
        my_as,
        hold_time,
        bgp_id: Ipv4Addr::from(id),
        capabilities,
    })
}

fn decode_capability(code: u8, v: &[u8]) -> Capability {
    let unknown = || Capability::Unknown {
        code,
        value: v.to_vec(),
    };
    match code {
        1 if v.len() == 4 => Capability::Multiprotocol {
            afi: u16::from_be_bytes([v[0], v[1]]),
            safi: v[3],
        },
        2 if v.is_empty() => Capability::RouteRefresh,
        64 if v.len() >= 2 && (v.len() - 2) % 4 == 0 => {
            let flags_time = u16::from_be_bytes([v[0], v[1]]);
            let families = v[2..]
                .chunks_exact(4)
                .map(|f| GrFamily {
                    afi: u16::from_be_bytes([f[0], f[1]]),
                    safi: f[2],
                    forwarding: f[3] & 0x80 != 0,
                })
                .collect();
            Capability::GracefulRestart {
                restarting: flags_time & 0x8000 != 0,
                restart_time: flags_time & 0x0fff,
                families,
            }
        }
        65 if v.len() == 4 => Capability::FourOctetAs(u32::from_be_bytes([v[0], v[1], v[2], v[3]])),
        _ => unknown(),
    }
}

/// Parses a run of NLRI-encoded prefixes of one family.
pub fn decode_prefixes(buf: &[u8], v6: bool) -> Option<Vec<Prefix>> {
    let mut r = Reader { buf };
    // At most one prefix per octet: a bounded allocation.
    let mut out = Vec::with_capacity(buf.len().min(1024));
    while !r.buf.is_empty() {
        let len = r.u8()?;
        let max = if v6 { 128 } else { 32 };
        if len > max {
            return None;
        }
        let n = usize::from(len).div_ceil(8);
        let bytes = r.take(n)?;
        let addr = if v6 {
            let mut o = [0u8; 16];
            o[..n].copy_from_slice(bytes);
            IpAddr::V6(Ipv6Addr::from(o))
        } else {
            let mut o = [0u8; 4];
            o[..n].copy_from_slice(bytes);
            IpAddr::V4(Ipv4Addr::from(o))
        };
        out.push(Prefix::new(addr, len)?);
    }
    Some(out)
}

fn decode_update(body: &[u8]) -> Result<Update, DecodeError> {
    let mut r = Reader { buf: body };
    let malformed = |why| DecodeError::new(err::UPDATE, 1, vec![], why);
    let wlen = usize::from(
        r.u16()
            .ok_or_else(|| malformed("truncated withdrawn length"))?,
    );
    let wbuf = r
        .take(wlen)
        .ok_or_else(|| malformed("withdrawn routes length overruns the message"))?;
    let alen = usize::from(
        r.u16()
            .ok_or_else(|| malformed("truncated attribute length"))?,
    );
    let abuf = r
        .take(alen)
        .ok_or_else(|| malformed("total path attribute length overruns the message"))?;
    let withdrawn = decode_prefixes(wbuf, false).ok_or_else(|| {
        DecodeError::new(err::UPDATE, 10, vec![], "invalid withdrawn routes field")
    })?;
    let nlri = decode_prefixes(r.buf, false)
        .ok_or_else(|| DecodeError::new(err::UPDATE, 10, vec![], "invalid NLRI field"))?;
    Ok(Update {
        withdrawn,
        attributes: abuf.to_vec(),
        nlri,
    })
}

fn header(out: &mut Vec<u8>, ty: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0xff; 16]);
    out.extend_from_slice(&[0, 0, ty]);
    start
}

fn finish(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u16;
    out[start + 16..start + 18].copy_from_slice(&len.to_be_bytes());
}

impl Message {
    /// Appends the wire encoding to `out`. The caller keeps UPDATEs within
    /// [`MAX_MESSAGE_LEN`] (see [`crate::rib_out`]); other messages always fit.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Open(o) => {
                let s = header(out, 1);
                out.push(o.version);
                out.extend_from_slice(&o.my_as.to_be_bytes());
                out.extend_from_slice(&o.hold_time.to_be_bytes());
                out.extend_from_slice(&o.bgp_id.octets());
                let mut caps = Vec::new();
                for c in &o.capabilities {
                    encode_capability(c, &mut caps);
                }
                // One optional parameter per capability keeps each under 255 octets.
                let mut params = Vec::new();
                let mut rest = &caps[..];
                while !rest.is_empty() {
                    let l = usize::from(rest[1]) + 2;
                    params.push(2u8);
                    params.push(l as u8);
                    params.extend_from_slice(&rest[..l]);
                    rest = &rest[l..];
                }
                out.push(params.len().min(255) as u8);
                out.extend_from_slice(&params[..params.len().min(255)]);
                finish(out, s);
            }
            Message::Update(u) => {
                let s = header(out, 2);
                let wpos = out.len();
                out.extend_from_slice(&[0, 0]);
                for p in &u.withdrawn {
                    p.encode(out);
                }
                let wlen = (out.len() - wpos - 2) as u16;
                out[wpos..wpos + 2].copy_from_slice(&wlen.to_be_bytes());
                out.extend_from_slice(&(u.attributes.len() as u16).to_be_bytes());
                out.extend_from_slice(&u.attributes);
                for p in &u.nlri {
                    p.encode(out);
                }
                finish(out, s);
            }
            Message::Notification(n) => {
                let s = header(out, 3);
                out.push(n.code);
                out.push(n.subcode);
                let max = MAX_MESSAGE_LEN - 21;
                out.extend_from_slice(&n.data[..n.data.len().min(max)]);
                finish(out, s);
            }
            Message::Keepalive => {
                let s = header(out, 4);
                finish(out, s);
            }
            Message::RouteRefresh(r) => {
                let s = header(out, 5);
                out.extend_from_slice(&r.afi.to_be_bytes());
                out.push(0);
                out.push(r.safi);
                finish(out, s);
            }
        }
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }
}

fn encode_capability(c: &Capability, out: &mut Vec<u8>) {
    match c {
        Capability::Multiprotocol { afi, safi } => {
            out.extend_from_slice(&[1, 4]);
            out.extend_from_slice(&afi.to_be_bytes());
            out.extend_from_slice(&[0, *safi]);
        }
        Capability::RouteRefresh => out.extend_from_slice(&[2, 0]),
        Capability::GracefulRestart {
            restarting,
            restart_time,
            families,
        } => {
            let fams = &families[..families.len().min(60)];
            out.extend_from_slice(&[64, (2 + 4 * fams.len()) as u8]);
            let v = (restart_time & 0x0fff) | if *restarting { 0x8000 } else { 0 };
            out.extend_from_slice(&v.to_be_bytes());
            for f in fams {
                out.extend_from_slice(&f.afi.to_be_bytes());
                out.push(f.safi);
                out.push(if f.forwarding { 0x80 } else { 0 });
            }
        }
        Capability::FourOctetAs(asn) => {
            out.extend_from_slice(&[65, 4]);
            out.extend_from_slice(&asn.to_be_bytes());
        }
        Capability::Unknown { code, value } => {
            let v = &value[..value.len().min(255)];
            out.push(*code);
            out.push(v.len() as u8);
            out.extend_from_slice(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_roundtrip() {
        let b = Message::Keepalive.to_bytes();
        assert_eq!(b.len(), 19);
        assert_eq!(decode(&b).unwrap(), Message::Keepalive);
    }

    #[test]
    fn open_roundtrip() {
        let o = Message::Open(Open {
            version: 4,
            my_as: AS_TRANS,
            hold_time: 90,
            bgp_id: Ipv4Addr::new(198, 18, 0, 1),
            capabilities: vec![
                Capability::Multiprotocol {
                    afi: AFI_IPV6,
                    safi: SAFI_UNICAST,
                },
                Capability::RouteRefresh,
                Capability::FourOctetAs(4_200_000_000),
                Capability::GracefulRestart {
                    restarting: true,
                    restart_time: 120,
                    families: vec![GrFamily {
                        afi: AFI_IPV4,
                        safi: SAFI_UNICAST,
                        forwarding: true,
                    }],
                },
            ],
        });
        assert_eq!(decode(&o.to_bytes()).unwrap(), o);
    }

    #[test]
    fn bad_marker_and_length() {
        let mut b = Message::Keepalive.to_bytes();
        b[0] = 0;
        assert_eq!(decode(&b).unwrap_err().subcode, 1);
        let mut b = Message::Keepalive.to_bytes();
        b[17] = 18;
        assert_eq!(decode(&b).unwrap_err().code, err::HEADER);
    }

    #[test]
    fn update_overrun_is_error() {
        let mut b = Message::Update(Update::default()).to_bytes();
        b[19] = 0;
        b[20] = 9; // withdrawn length larger than the message
        assert_eq!(decode(&b).unwrap_err().code, err::UPDATE);
    }
}
