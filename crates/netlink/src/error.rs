//! One error type for every kernel operation, naming what was done, to what, where, and the fix.

use std::fmt;
use std::io;

/// A failed kernel operation.
///
/// Why: an announcer or CNI plugin that fails must tell the operator which interface, address
/// and namespace were involved and what to do about it ("needs CAP_NET_ADMIN", "interface eth1
/// does not exist"), not a bare errno. `kind` is matchable, so callers can treat "not found" or
/// "already exists" as the normal outcomes they often are.
#[derive(Debug, thiserror::Error)]
#[error("{op} {subject}{}: {kind}", NsSuffix(.netns.as_deref()))]
pub struct Error {
    /// What was being done, e.g. "adding address".
    pub op: &'static str,
    /// What it was done to, e.g. "198.18.0.5/24 on eth0".
    pub subject: String,
    /// The network namespace it was done in (`None`: the caller's own).
    pub netns: Option<String>,
    /// Why it failed, with the fix.
    pub kind: ErrorKind,
}

struct NsSuffix<'a>(Option<&'a str>);

impl fmt::Display for NsSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ns) => write!(f, " in network namespace {ns}"),
            None => Ok(()),
        }
    }
}

/// Why a kernel operation failed.
///
/// Why: the variants are the outcomes callers act on differently; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// EPERM/EACCES.
    #[error(
        "permission denied: needs CAP_NET_ADMIN (and CAP_NET_RAW for ARP/NDP packets); \
         run as root or grant the capabilities"
    )]
    PermissionDenied,
    /// The named interface is not in the namespace.
    #[error("interface {0} does not exist; check the name with `ip link`")]
    NoSuchInterface(String),
    /// The namespace path could not be opened or entered.
    #[error(
        "cannot enter network namespace {path}: {source}; check that the path exists and is a \
         network namespace (does the pod sandbox still exist?)"
    )]
    Netns {
        /// The path or label of the namespace.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// EEXIST: the object is already there.
    #[error("already exists")]
    Exists,
    /// ENOENT/ESRCH/EADDRNOTAVAIL on lookup: the object is not there.
    #[error("not found")]
    NotFound,
    /// A route or rule with the same key belongs to another protocol (not Berth's).
    #[error(
        "an existing entry belongs to protocol {protocol}, not Berth's ({berth}); Berth never \
         changes what it did not make: remove it by hand (`ip route del …`) if Berth should own it"
    )]
    Foreign {
        /// The other entry's protocol number.
        protocol: u8,
        /// Berth's protocol number ([`crate::BERTH_PROTOCOL`]).
        berth: u8,
    },
    /// ENETUNREACH: a gateway not on a connected subnet.
    #[error(
        "network unreachable: the gateway is not on a subnet of the device; add an address in \
         its subnet first, or make the route onlink"
    )]
    Unreachable,
    /// EBUSY, e.g. renaming a link that is up.
    #[error("device or resource busy: set the link down first")]
    Busy,
    /// A caller's argument that cannot be right (e.g. an IPv6 gateway for an IPv4 route).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The installed [`crate::Gate`] refused the frame: this node's right to announce the
    /// address has ended.
    #[error("not sent: the announcer's lease on the address has ended (gate closed)")]
    Gated,
    /// A packet probe or answer that did not come in time.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// Any other errno from the kernel.
    #[error("the kernel refused with errno {errno} ({message})")]
    Kernel {
        /// The positive errno.
        errno: i32,
        /// `strerror` text.
        message: String,
    },
    /// The netlink connection itself failed (socket closed, undecodable answer).
    #[error("netlink transport: {0}")]
    Transport(String),
    /// Socket or file I/O outside netlink.
    #[error("{0}")]
    Io(io::Error),
}

impl ErrorKind {
    /// Maps a positive errno to the kind callers act on.
    ///
    /// Why: one table of errno meanings for netlink answers and packet sockets alike.
    pub fn from_errno(errno: i32, dev: Option<&str>) -> ErrorKind {
        match errno {
            libc::EPERM | libc::EACCES => ErrorKind::PermissionDenied,
            libc::ENODEV => ErrorKind::NoSuchInterface(dev.unwrap_or("?").to_string()),
            libc::EEXIST => ErrorKind::Exists,
            libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL => ErrorKind::NotFound,
            libc::ENETUNREACH => ErrorKind::Unreachable,
            libc::EBUSY => ErrorKind::Busy,
            e => ErrorKind::Kernel {
                errno: e,
                message: io::Error::from_raw_os_error(e).to_string(),
            },
        }
    }

    /// Maps an I/O error (from a raw socket or setns) through its errno when it has one.
    pub fn from_io(e: io::Error, dev: Option<&str>) -> ErrorKind {
        match e.raw_os_error() {
            Some(errno) => ErrorKind::from_errno(errno, dev),
            None => ErrorKind::Io(e),
        }
    }
}

impl Error {
    /// Builds an error. Why: every adapter call site names op, subject and namespace.
    pub fn new(
        op: &'static str,
        subject: impl Into<String>,
        netns: Option<&str>,
        kind: ErrorKind,
    ) -> Error {
        Error {
            op,
            subject: subject.into(),
            netns: netns.map(str::to_string),
            kind,
        }
    }

    /// True for "the object is not there". Why: deletes treat it as done.
    pub fn is_not_found(&self) -> bool {
        matches!(self.kind, ErrorKind::NotFound)
    }

    /// True for "the object is already there". Why: idempotent adds treat it as done.
    pub fn is_exists(&self) -> bool {
        matches!(self.kind, ErrorKind::Exists)
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_subject_namespace_and_fix() {
        let e = Error::new(
            "adding address",
            "198.18.0.5/24 on eth9",
            Some("/run/netns/pod1"),
            ErrorKind::from_errno(libc::ENODEV, Some("eth9")),
        );
        let s = e.to_string();
        assert!(
            s.starts_with(
                "adding address 198.18.0.5/24 on eth9 in network namespace /run/netns/pod1: "
            ),
            "{s}"
        );
        assert!(s.contains("interface eth9 does not exist"), "{s}");
        let p = Error::new(
            "adding route",
            "x",
            None,
            ErrorKind::from_errno(libc::EPERM, None),
        );
        assert!(p.to_string().contains("CAP_NET_ADMIN"), "{p}");
        assert!(!p.to_string().contains("namespace"), "{p}");
        assert!(ErrorKind::from_errno(libc::ESRCH, None)
            .to_string()
            .contains("not found"));
        let k = ErrorKind::from_errno(libc::EMSGSIZE, None);
        assert!(matches!(k, ErrorKind::Kernel { errno, .. } if errno == libc::EMSGSIZE));
    }
}
