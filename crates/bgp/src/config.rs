//! TOML configuration of `berth bgp --config FILE`, validated into speaker
//! settings. Every error names the field, the value and what to do, because
//! the person reading it is fixing a file under pressure.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::attributes::{Origin, RouteAttrs};
use crate::prefix::Prefix;
use crate::rib_in::{LimitAction, PrefixLimits};
use crate::speaker::{BfdConfig, GlobalConfig, PeerConfig, Target};

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// BGP identifier (IPv4 notation).
    pub router_id: String,
    /// Local AS.
    pub local_as: u32,
    /// Accept incoming sessions (default true).
    #[serde(default)]
    pub listen: Option<bool>,
    /// Port to listen on (default 179).
    #[serde(default)]
    pub listen_port: Option<u16>,
    /// Addresses to listen on (default 0.0.0.0 and ::).
    #[serde(default)]
    pub listen_addresses: Option<Vec<String>>,
    /// Graceful restart: `restart_time` seconds, 0 disables (default 120).
    #[serde(default)]
    pub graceful_restart_time: Option<u16>,
    /// File to write peer status to every second (for operators and tests).
    #[serde(default)]
    pub status_file: Option<String>,
    /// Neighbours.
    #[serde(default)]
    pub peer: Vec<FilePeer>,
    /// Peer groups: defaults shared by the peers that name them.
    #[serde(default)]
    pub peer_group: Vec<FileGroup>,
    /// Routes to announce.
    #[serde(default)]
    pub announce: Vec<FileAnnounce>,
}

/// `[[peer]]`.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct FilePeer {
    /// Peer address.
    pub address: String,
    /// Peer AS (may come from a group).
    pub remote_as: Option<u32>,
    /// Peer TCP port.
    pub port: Option<u16>,
    /// Never dial.
    pub passive: Option<bool>,
    /// Hold time, seconds.
    pub hold_time: Option<u16>,
    /// First connect-retry interval, seconds.
    pub connect_retry: Option<u64>,
    /// TCP MD5 password.
    pub password: Option<String>,
    /// TCP-AO (not supported by this kernel; present to give a clear error).
    pub tcp_ao: Option<toml::Value>,
    /// TTL for eBGP multihop.
    pub multihop: Option<u8>,
    /// Local address for outgoing connections.
    pub local_address: Option<String>,
    /// IPv4 next hop.
    pub next_hop_v4: Option<String>,
    /// IPv6 next hop.
    pub next_hop_v6: Option<String>,
    /// Groups.
    pub groups: Option<Vec<String>>,
    /// BFD timers.
    pub bfd: Option<FileBfd>,
    /// Maximum-prefix limits.
    pub max_prefixes: Option<FileLimits>,
}

/// `[[peer_group]]`: the same keys as a peer (except address), used as defaults.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileGroup {
    /// Group name.
    pub name: String,
    /// Peer AS.
    pub remote_as: Option<u32>,
    /// Peer TCP port.
    pub port: Option<u16>,
    /// Never dial.
    pub passive: Option<bool>,
    /// Hold time.
    pub hold_time: Option<u16>,
    /// Connect retry.
    pub connect_retry: Option<u64>,
    /// MD5 password.
    pub password: Option<String>,
    /// Multihop TTL.
    pub multihop: Option<u8>,
    /// BFD.
    pub bfd: Option<FileBfd>,
    /// Maximum-prefix limits.
    pub max_prefixes: Option<FileLimits>,
}

/// `max_prefixes = { ipv4 = N, ipv6 = N, action = "shutdown", restart = S, warning = P }`.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// IPv4 limit: a number, or "off".
    pub ipv4: Option<toml::Value>,
    /// IPv6 limit: a number, or "off".
    pub ipv6: Option<toml::Value>,
    /// "shutdown" or "warn".
    pub action: Option<String>,
    /// Seconds before a session shut down by the limit comes back; 0: never.
    pub restart: Option<u64>,
    /// Warning threshold in percent of the limit; 0: none.
    pub warning: Option<u8>,
}

impl FileLimits {
    /// Fills what `self` leaves unset from `other` (a peer's own keys win).
    fn or(self, other: &FileLimits) -> FileLimits {
        FileLimits {
            ipv4: self.ipv4.or_else(|| other.ipv4.clone()),
            ipv6: self.ipv6.or_else(|| other.ipv6.clone()),
            action: self.action.or_else(|| other.action.clone()),
            restart: self.restart.or(other.restart),
            warning: self.warning.or(other.warning),
        }
    }

    fn validate(&self, f: &dyn Fn(&str) -> String) -> Result<PrefixLimits, ConfigError> {
        let d = PrefixLimits::default();
        let limit = |key: &str,
                     v: &Option<toml::Value>,
                     dflt: Option<u32>|
         -> Result<Option<u32>, ConfigError> {
            let fix = "write the most prefixes this peer may send, 1..=4294967295, or \"off\" for no limit";
            match v {
                None => Ok(dflt),
                Some(toml::Value::String(s)) if s == "off" => Ok(None),
                Some(toml::Value::Integer(n)) => match u32::try_from(*n) {
                    Ok(n) if n > 0 => Ok(Some(n)),
                    _ => Err(field(f(key), n, fix)),
                },
                Some(other) => Err(field(f(key), other, fix)),
            }
        };
        let action = match self.action.as_deref() {
            None | Some("shutdown") => LimitAction::Shutdown,
            Some("warn") => LimitAction::Warn,
            Some(a) => {
                return Err(field(
                    f("action"),
                    a,
                    "use \"shutdown\" (Cease, subcode 1) or \"warn\" (log only)",
                ))
            }
        };
        let warning_pct = match self.warning {
            None => d.warning_pct,
            Some(p) if p <= 100 => p,
            Some(p) => {
                return Err(field(
                    f("warning"),
                    p,
                    "a percentage of the limit: 1..=100, or 0 for no warning",
                ))
            }
        };
        Ok(PrefixLimits {
            ipv4: limit("ipv4", &self.ipv4, d.ipv4)?,
            ipv6: limit("ipv6", &self.ipv6, d.ipv6)?,
            action,
            restart: match self.restart {
                None => d.restart,
                Some(0) => None,
                Some(s) => Some(Duration::from_secs(s)),
            },
            warning_pct,
        })
    }
}

/// `bfd = { ... }`.
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct FileBfd {
    /// Required min RX, ms.
    pub min_rx_ms: Option<u64>,
    /// Desired min TX, ms.
    pub min_tx_ms: Option<u64>,
    /// Detect multiplier.
    pub multiplier: Option<u8>,
}

/// `[[announce]]`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileAnnounce {
    /// Prefix.
    pub prefix: String,
    /// Standard communities "ASN:VALUE".
    pub communities: Option<Vec<String>>,
    /// Large communities "G:L1:L2".
    pub large_communities: Option<Vec<String>>,
    /// LOCAL_PREF (iBGP).
    pub local_pref: Option<u32>,
    /// MED.
    pub med: Option<u32>,
    /// ORIGIN: "igp", "egp" or "incomplete".
    pub origin: Option<String>,
    /// Next hop override.
    pub next_hop: Option<String>,
    /// Only to these peers (addresses).
    pub peers: Option<Vec<String>>,
    /// Only to these peer groups.
    pub groups: Option<Vec<String>>,
}

/// A configuration error: which field, what value, what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// File unreadable.
    #[error("cannot read {path}: {error}")]
    Read {
        /// Path.
        path: String,
        /// OS error.
        error: std::io::Error,
    },
    /// TOML syntax or type error (toml names the key and line).
    #[error("{path}: {error}")]
    Parse {
        /// Path.
        path: String,
        /// TOML error.
        error: Box<toml::de::Error>,
    },
    /// A value that parses but is wrong.
    #[error("{field} = {value:?}: {fix}")]
    Field {
        /// Field path, e.g. `peer[0].address`.
        field: String,
        /// The value found.
        value: String,
        /// What is wrong and what to do.
        fix: String,
    },
}

fn field(
    field: impl Into<String>,
    value: impl std::fmt::Display,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        value: value.to_string(),
        fix: fix.into(),
    }
}

/// A validated configuration, ready for the speaker.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Speaker-wide settings.
    pub global: GlobalConfig,
    /// Peers.
    pub peers: Vec<PeerConfig>,
    /// Routes.
    pub routes: Vec<(Target, Prefix, RouteAttrs)>,
    /// Where to write peer status every second.
    pub status_file: Option<std::path::PathBuf>,
}

fn parse_community(f: &str, s: &str) -> Result<u32, ConfigError> {
    let bad = || {
        field(
            f,
            s,
            "write a community as ASN:VALUE with both parts 0..=65535, e.g. \"64512:100\"",
        )
    };
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    Ok((u32::from(a) << 16) | u32::from(b))
}

fn parse_large(f: &str, s: &str) -> Result<[u32; 3], ConfigError> {
    let bad = || {
        field(f, s, "write a large community as GLOBAL:LOCAL1:LOCAL2 (each 0..=4294967295), e.g. \"64512:1:2\"")
    };
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 3 {
        return Err(bad());
    }
    let mut out = [0u32; 3];
    for (o, p) in out.iter_mut().zip(parts) {
        *o = p.trim().parse().map_err(|_| bad())?;
    }
    Ok(out)
}

fn ip(f: &str, s: &str) -> Result<IpAddr, ConfigError> {
    s.parse().map_err(|_| {
        field(
            f,
            s,
            "not an IP address; write e.g. 198.18.0.1 or 2001:db8::1",
        )
    })
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { error, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                error,
            },
            e => e,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let f: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "config".into(),
            error: Box::new(e),
        })?;
        f.validate()
    }
}

impl File {
    fn validate(self) -> Result<Config, ConfigError> {
        let router_id: Ipv4Addr = self.router_id.parse().map_err(|_| {
            field(
                "router_id",
                &self.router_id,
                "write an IPv4 address, e.g. \"198.18.0.11\"",
            )
        })?;
        if router_id.is_unspecified() {
            return Err(field(
                "router_id",
                &self.router_id,
                "0.0.0.0 is not a valid BGP identifier; use a unique IPv4 address",
            ));
        }
        if self.local_as == 0 || self.local_as == u32::from(crate::codec::AS_TRANS) {
            return Err(field(
                "local_as",
                self.local_as,
                "AS 0 and AS 23456 (AS_TRANS) are reserved; use your AS number",
            ));
        }
        let port = self.listen_port.unwrap_or(179);
        let listen = if self.listen.unwrap_or(true) {
            match &self.listen_addresses {
                None => vec![
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
                ],
                Some(v) => v
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        ip(&format!("listen_addresses[{i}]"), a).map(|a| SocketAddr::new(a, port))
                    })
                    .collect::<Result<_, _>>()?,
            }
        } else {
            vec![]
        };
        let gr = match self.graceful_restart_time {
            None => Some(120),
            Some(0) => None,
            Some(t) if t > 4095 => {
                return Err(field(
                    "graceful_restart_time",
                    t,
                    "the restart time is a 12-bit field: use 1..=4095 seconds, or 0 to disable",
                ))
            }
            Some(t) => Some(t),
        };
        let global = GlobalConfig {
            router_id,
            local_as: self.local_as,
            listen,
            graceful_restart_time: gr,
        };
        let mut group_names = BTreeSet::new();
        for (i, g) in self.peer_group.iter().enumerate() {
            if !group_names.insert(g.name.clone()) {
                return Err(field(
                    format!("peer_group[{i}].name"),
                    &g.name,
                    "group names must be unique",
                ));
            }
        }
        let mut peers = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, p) in self.peer.iter().enumerate() {
            let pf = |k: &str| format!("peer[{i}].{k}");
            let address = ip(&pf("address"), &p.address)?;
            if !seen.insert(address) {
                return Err(field(
                    pf("address"),
                    &p.address,
                    "this peer is listed twice; keep one [[peer]] per address",
                ));
            }
            // Merge group defaults (first group that sets a key wins; the peer's own key wins over all).
            let groups = p.groups.clone().unwrap_or_default();
            let mut m = p.clone();
            for (gi, gname) in groups.iter().enumerate() {
                let Some(g) = self.peer_group.iter().find(|g| &g.name == gname) else {
                    return Err(field(
                        pf(&format!("groups[{gi}]")),
                        gname,
                        "no [[peer_group]] has this name; define it or remove it",
                    ));
                };
                m.remote_as = m.remote_as.or(g.remote_as);
                m.port = m.port.or(g.port);
                m.passive = m.passive.or(g.passive);
                m.hold_time = m.hold_time.or(g.hold_time);
                m.connect_retry = m.connect_retry.or(g.connect_retry);
                m.password = m.password.or_else(|| g.password.clone());
                m.multihop = m.multihop.or(g.multihop);
                m.bfd = m.bfd.or(g.bfd);
                if let Some(gl) = &g.max_prefixes {
                    m.max_prefixes = Some(m.max_prefixes.unwrap_or_default().or(gl));
                }
            }
            if m.tcp_ao.is_some() {
                let why = match crate::md5::probe_tcp_ao() {
                    Err(e) => format!("TCP-AO (RFC 5925) is not available on this kernel ({e}); use `password` (TCP MD5) or remove tcp_ao"),
                    Ok(()) => "TCP-AO is not implemented by this speaker yet; use `password` (TCP MD5) or remove tcp_ao".into(),
                };
                return Err(field(pf("tcp_ao"), "{..}", why));
            }
            let remote_as = m.remote_as.ok_or_else(|| {
                field(
                    pf("remote_as"),
                    "(missing)",
                    "set the peer's AS number, here or in its peer group",
                )
            })?;
            if remote_as == 0 {
                return Err(field(
                    pf("remote_as"),
                    0,
                    "AS 0 is reserved; use the peer's AS number",
                ));
            }
            let hold_time = m.hold_time.unwrap_or(90);
            if hold_time == 1 || hold_time == 2 {
                return Err(field(
                    pf("hold_time"),
                    hold_time,
                    "RFC 4271 allows 0 (no keepalives) or 3 seconds and more",
                ));
            }
            if let Some(pw) = &m.password {
                if pw.is_empty() || pw.len() > crate::md5::MAX_KEY_LEN {
                    return Err(field(
                        pf("password"),
                        "(hidden)",
                        "the TCP MD5 password must be 1 to 80 bytes long",
                    ));
                }
            }
            if m.multihop == Some(0) {
                return Err(field(pf("multihop"), 0, "multihop is a TTL: use 1..=255"));
            }
            let local_address = m
                .local_address
                .as_deref()
                .map(|a| ip(&pf("local_address"), a))
                .transpose()?;
            let next_hop_v4 = match m.next_hop_v4.as_deref() {
                None => None,
                Some(s) => Some(
                    s.parse::<Ipv4Addr>()
                        .map_err(|_| field(pf("next_hop_v4"), s, "write an IPv4 address"))?,
                ),
            };
            let next_hop_v6 = match m.next_hop_v6.as_deref() {
                None => None,
                Some(s) => Some(
                    s.parse::<Ipv6Addr>()
                        .map_err(|_| field(pf("next_hop_v6"), s, "write an IPv6 address"))?,
                ),
            };
            let bfd = match m.bfd {
                None => None,
                Some(b) => {
                    let c = BfdConfig {
                        min_rx: Duration::from_millis(b.min_rx_ms.unwrap_or(300)),
                        min_tx: Duration::from_millis(b.min_tx_ms.unwrap_or(300)),
                        multiplier: b.multiplier.unwrap_or(3),
                    };
                    c.validate()
                        .map_err(|e| field(pf("bfd"), format!("{:?}", b), e.to_string()))?;
                    Some(c)
                }
            };
            let max_prefixes = m
                .max_prefixes
                .clone()
                .unwrap_or_default()
                .validate(&|k| pf(&format!("max_prefixes.{k}")))?;
            peers.push(PeerConfig {
                address,
                port: m.port.unwrap_or(179),
                remote_as,
                passive: m.passive.unwrap_or(false),
                hold_time,
                connect_retry: Duration::from_secs(m.connect_retry.unwrap_or(1).max(1)),
                password: m.password.clone(),
                ttl: m.multihop,
                local_address,
                next_hop_v4,
                next_hop_v6,
                groups,
                bfd,
                max_prefixes,
                // The file's graceful_restart_time is the speaker's, for every peer.
                graceful_restart: None,
            });
        }
        let mut routes = Vec::new();
        for (i, a) in self.announce.iter().enumerate() {
            let af = |k: &str| format!("announce[{i}].{k}");
            let prefix: Prefix = a.prefix.parse().map_err(|e: crate::prefix::PrefixError| {
                field(af("prefix"), &a.prefix, e.to_string())
            })?;
            let mut attrs = RouteAttrs {
                med: a.med,
                local_pref: a.local_pref,
                ..Default::default()
            };
            for (j, c) in a.communities.iter().flatten().enumerate() {
                attrs
                    .communities
                    .push(parse_community(&af(&format!("communities[{j}]")), c)?);
            }
            for (j, c) in a.large_communities.iter().flatten().enumerate() {
                attrs
                    .large_communities
                    .push(parse_large(&af(&format!("large_communities[{j}]")), c)?);
            }
            attrs.origin = match a.origin.as_deref() {
                None | Some("igp") => Origin::Igp,
                Some("egp") => Origin::Egp,
                Some("incomplete") => Origin::Incomplete,
                Some(o) => {
                    return Err(field(
                        af("origin"),
                        o,
                        "use \"igp\", \"egp\" or \"incomplete\"",
                    ))
                }
            };
            if let Some(nh) = &a.next_hop {
                let n = ip(&af("next_hop"), nh)?;
                if n.is_ipv4() != prefix.is_v4() {
                    return Err(field(
                        af("next_hop"),
                        nh,
                        "the next hop must be of the prefix's address family",
                    ));
                }
                attrs.next_hop = Some(n);
            }
            let mut targets = Vec::new();
            for (j, p) in a.peers.iter().flatten().enumerate() {
                let addr = ip(&af(&format!("peers[{j}]")), p)?;
                if !seen.contains(&addr) {
                    return Err(field(
                        af(&format!("peers[{j}]")),
                        p,
                        "no [[peer]] has this address",
                    ));
                }
                targets.push(Target::Peer(addr));
            }
            for (j, g) in a.groups.iter().flatten().enumerate() {
                if !group_names.contains(g) {
                    return Err(field(
                        af(&format!("groups[{j}]")),
                        g,
                        "no [[peer_group]] has this name",
                    ));
                }
                targets.push(Target::Group(g.clone()));
            }
            if targets.is_empty() {
                targets.push(Target::All);
            }
            for t in targets {
                routes.push((t, prefix, attrs.clone()));
            }
        }
        Ok(Config {
            global,
            peers,
            routes,
            status_file: self.status_file.map(Into::into),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
router_id = "198.18.0.11"
local_as = 64513
[[peer]]
address = "198.18.0.1"
remote_as = 64512
passive = false
hold_time = 3
password = "s3cret"
bfd = { min_rx_ms = 100, min_tx_ms = 100, multiplier = 3 }
[[announce]]
prefix = "198.19.100.10/32"
communities = ["64512:100"]
large_communities = ["64512:1:2"]
med = 10
"#;

    #[test]
    fn example_parses() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.peers[0].hold_time, 3);
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].2.communities, vec![(64512 << 16) | 100]);
    }

    #[test]
    fn errors_name_field_and_value() {
        let e = Config::parse(&EXAMPLE.replace("198.18.0.1\"", "198.18.0.300\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("peer[0].address") && e.contains("198.18.0.300"),
            "{e}"
        );
        let e = Config::parse(&EXAMPLE.replace("hold_time = 3", "hold_time = 2"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("peer[0].hold_time"), "{e}");
        let e = Config::parse(&EXAMPLE.replace("min_rx_ms = 100", "min_rx_ms = 5"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("10 ms"), "{e}");
        let e = Config::parse(&EXAMPLE.replace("\"64512:100\"", "\"64512:70000\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("announce[0].communities[0]"), "{e}");
        let e =
            Config::parse(&EXAMPLE.replace("password = \"s3cret\"", "tcp_ao = { key = \"x\" }"))
                .unwrap_err()
                .to_string();
        assert!(e.contains("tcp_ao") && e.contains("TCP-AO"), "{e}");
        let e = Config::parse(&EXAMPLE.replace("passive", "pasive"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pasive"), "{e}");
    }

    #[test]
    fn peer_groups_and_targets() {
        let c = Config::parse(
            r#"
router_id = "198.18.0.11"
local_as = 64513
[[peer_group]]
name = "tor"
remote_as = 64512
hold_time = 3
bfd = { min_rx_ms = 100, min_tx_ms = 100, multiplier = 3 }
[[peer]]
address = "198.18.0.1"
groups = ["tor"]
[[peer]]
address = "2001:db8::1"
remote_as = 64600
groups = ["tor"]
hold_time = 9
[[announce]]
prefix = "198.19.100.10/32"
groups = ["tor"]
peers = ["2001:db8::1"]
"#,
        )
        .unwrap();
        assert_eq!(c.peers[0].remote_as, 64512);
        assert_eq!(c.peers[0].hold_time, 3);
        assert!(c.peers[0].bfd.is_some());
        assert_eq!(c.peers[1].remote_as, 64600);
        assert_eq!(c.peers[1].hold_time, 9);
        assert_eq!(c.routes.len(), 2);
        let e = Config::parse("router_id = \"198.18.0.11\"\nlocal_as = 1\n[[peer]]\naddress = \"198.18.0.1\"\ngroups = [\"x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("peer[0].groups[0]"), "{e}");
    }

    #[test]
    fn max_prefixes_per_family_with_defaults_and_groups() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.peers[0].max_prefixes, PrefixLimits::default());
        let c = Config::parse(&EXAMPLE.replace(
            "hold_time = 3\n",
            "hold_time = 3\nmax_prefixes = { ipv4 = 100, ipv6 = \"off\", action = \"warn\", restart = 0, warning = 0 }\n",
        ))
        .unwrap();
        assert_eq!(
            c.peers[0].max_prefixes,
            PrefixLimits {
                ipv4: Some(100),
                ipv6: None,
                action: LimitAction::Warn,
                restart: None,
                warning_pct: 0,
            }
        );
        // Group keys fill what the peer leaves out; the peer's own win.
        let c = Config::parse(
            r#"
router_id = "198.18.0.11"
local_as = 64513
[[peer_group]]
name = "tor"
remote_as = 64512
max_prefixes = { ipv4 = 50, ipv6 = 60, restart = 5 }
[[peer]]
address = "198.18.0.1"
groups = ["tor"]
max_prefixes = { ipv6 = 7 }
"#,
        )
        .unwrap();
        let l = c.peers[0].max_prefixes;
        assert_eq!(
            (l.ipv4, l.ipv6, l.restart),
            (Some(50), Some(7), Some(Duration::from_secs(5)))
        );
        assert_eq!(l.action, LimitAction::Shutdown);
        assert_eq!(l.warning_pct, 75);
    }

    #[test]
    fn max_prefixes_errors_name_the_key() {
        let with = |v: &str| {
            Config::parse(&EXAMPLE.replace(
                "hold_time = 3\n",
                &format!("hold_time = 3\nmax_prefixes = {v}\n"),
            ))
            .unwrap_err()
            .to_string()
        };
        let e = with("{ ipv4 = 0 }");
        assert!(
            e.contains("peer[0].max_prefixes.ipv4") && e.contains("\"off\""),
            "{e}"
        );
        let e = with("{ ipv6 = -3 }");
        assert!(e.contains("peer[0].max_prefixes.ipv6"), "{e}");
        let e = with("{ ipv4 = \"lots\" }");
        assert!(
            e.contains("peer[0].max_prefixes.ipv4") && e.contains("lots"),
            "{e}"
        );
        let e = with("{ action = \"drop\" }");
        assert!(
            e.contains("peer[0].max_prefixes.action") && e.contains("\"warn\""),
            "{e}"
        );
        let e = with("{ warning = 150 }");
        assert!(e.contains("peer[0].max_prefixes.warning"), "{e}");
        let e = with("{ ipv4 = 5, maximum = 3 }");
        assert!(e.contains("maximum"), "{e}");
    }
}
