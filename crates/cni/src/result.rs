//! The IPAM result: built from Berth bindings, written in the configuration's spec version, and
//! read back from a `prevResult` of any version for CHECK and DEL.

use crate::dns::Dns;
use crate::error::CniError;
use crate::json::{show, Obj};
use crate::version::CniVersion;
use berth_core::{Binding, Family, PoolSpec, Route};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::IpAddr;

/// One entry of the result's `ips` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with the subnet's prefix length, e.g. `10.188.1.5/16`.
    pub address: IpNet,
    /// The subnet's gateway, if it has one.
    pub gateway: Option<IpAddr>,
    /// Index into the result's `interfaces`; IPAM plugins leave it out, the main plugin fills it.
    pub interface: Option<u32>,
}

/// An IPAM result (the abbreviated result: no `interfaces`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamResult {
    /// The version it is written in: the configuration's `cniVersion`.
    pub cni_version: CniVersion,
    /// One entry per bound address.
    pub ips: Vec<IpConfig>,
    /// Routes of the subnets the addresses came from, without duplicates.
    pub routes: Vec<Route>,
    /// DNS settings (from `resolvConf`), if any.
    pub dns: Option<Dns>,
}

/// The wire form of an `ips` entry; `version` exists before 1.0.0 only.
#[derive(Debug, Serialize, Deserialize)]
struct WireIp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interface: Option<u32>,
}

/// The wire form of a result.
#[derive(Debug, Serialize, Deserialize)]
struct WireResult {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ips: Vec<WireIp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dns: Option<Dns>,
}

fn family_tag(f: Family) -> &'static str {
    match f {
        Family::V4 => "4",
        Family::V6 => "6",
    }
}

/// Build the result for `bindings` (in the order given) from `pool`: each address carries the
/// prefix length recorded in its binding and the gateway of the subnet it lies in; routes are the
/// union of those subnets' routes (a route without `gw` stays without it).
///
/// A binding outside every subnet of the pool means the pool changed under it: code 7.
pub fn build_result(
    version: CniVersion,
    bindings: &[Binding],
    pool: &PoolSpec,
    dns: Option<Dns>,
) -> Result<IpamResult, CniError> {
    let mut ips = vec![];
    let mut routes: Vec<Route> = vec![];
    for b in bindings {
        let subnet = pool.subnet_of(b.address).ok_or_else(|| {
            CniError::config(format!(
                "bound address {} is not in any subnet of pool {:?}: the pool's subnets changed; restore the subnet or release the address",
                b.address, pool.name
            ))
        })?;
        let address = IpNet::new(b.address, b.prefix_len).map_err(|_| {
            CniError::config(format!(
                "bound address {} has prefix length {} which is too long for its family: the ledger record is damaged",
                b.address, b.prefix_len
            ))
        })?;
        ips.push(IpConfig {
            address,
            gateway: subnet.gateway,
            interface: None,
        });
        for r in &subnet.routes {
            if !routes.contains(r) {
                routes.push(r.clone());
            }
        }
    }
    Ok(IpamResult {
        cni_version: version,
        ips,
        routes,
        dns: dns.filter(|d| !d.is_empty()),
    })
}

impl IpamResult {
    fn wire(&self) -> WireResult {
        WireResult {
            cni_version: self.cni_version.as_str().to_string(),
            ips: self
                .ips
                .iter()
                .map(|ip| WireIp {
                    version: self
                        .cni_version
                        .has_ip_version_field()
                        .then(|| family_tag(Family::of(ip.address.addr())).to_string()),
                    address: ip.address,
                    gateway: ip.gateway,
                    interface: ip.interface,
                })
                .collect(),
            routes: self.routes.clone(),
            dns: self.dns.clone().filter(|d| !d.is_empty()),
        }
    }

    /// The result as JSON in its version's format: `ips[].version` ("4"/"6") before 1.0.0.
    pub fn to_value(&self) -> Value {
        // Strings, numbers and lists only: serialization cannot fail.
        serde_json::to_value(self.wire()).unwrap_or(Value::Null)
    }

    /// The result as the JSON text the plugin prints.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string(&self.wire()).unwrap_or_default()
    }

    /// The same result written in another version (e.g. converting a cached result).
    pub fn with_version(&self, version: CniVersion) -> Self {
        IpamResult {
            cni_version: version,
            ..self.clone()
        }
    }

    /// Read a result of a supported version (0.3.0 to 1.1.0). Fields Berth does not model
    /// (`interfaces`, route `mtu`, ...) are ignored. Code 1 for an unsupported version, 6 for
    /// content that does not decode.
    pub fn from_value(v: &Value) -> Result<Self, CniError> {
        let w: WireResult = serde_json::from_value(v.clone()).map_err(|e| {
            CniError::new(
                CniError::DECODING_FAILURE,
                format!("cannot decode CNI result: {e}: pass a result produced by a CNI plugin"),
            )
        })?;
        let cni_version = CniVersion::parse(&w.cni_version)?;
        let mut ips = vec![];
        for (i, ip) in w.ips.into_iter().enumerate() {
            check_ip_version(&format!("ips[{i}]"), ip.version.as_deref(), ip.address)?;
            ips.push(IpConfig {
                address: ip.address,
                gateway: ip.gateway,
                interface: ip.interface,
            });
        }
        Ok(IpamResult {
            cni_version,
            ips,
            routes: w.routes,
            dns: w.dns,
        })
    }
}

/// Check an `ips[].version` tag agrees with the address.
fn check_ip_version(field: &str, tag: Option<&str>, address: IpNet) -> Result<(), CniError> {
    if let Some(tag) = tag {
        let want = family_tag(Family::of(address.addr()));
        if tag != want {
            return Err(CniError::new(
                CniError::DECODING_FAILURE,
                format!(
                    "{field}.version {tag:?} does not match address {address}: it should be {want:?}"
                ),
            ));
        }
    }
    Ok(())
}

/// An address from a previous result, as CHECK compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrevIp {
    /// Address and prefix length.
    pub address: IpNet,
    /// Gateway, if the result gave one.
    pub gateway: Option<IpAddr>,
}

/// Extract the addresses of a `prevResult` of any version: `ips` lists (0.3.0 and later, with or
/// without `version`) and the `ip4`/`ip6` objects of 0.1.0/0.2.0. Code 6, naming the field, when an
/// address or gateway does not parse.
pub fn parse_prev_result(v: &Value) -> Result<Vec<PrevIp>, CniError> {
    let decode = |msg: String| CniError::new(CniError::DECODING_FAILURE, msg);
    let Value::Object(map) = v else {
        return Err(decode(format!(
            "prevResult {} is not an object: pass the result of the previous ADD",
            show(v)
        )));
    };
    let top = Obj {
        path: "prevResult".to_string(),
        map,
    };
    let as6 = |e: CniError| CniError::new(CniError::DECODING_FAILURE, e.msg);
    let mut out = vec![];
    if let Some(list) = top.list("ips").map_err(as6)? {
        for (i, item) in list.iter().enumerate() {
            let field = format!("prevResult.ips[{i}]");
            let Value::Object(m) = item else {
                return Err(decode(format!(
                    "{field} {} is not an object: each ips entry needs an address",
                    show(item)
                )));
            };
            let o = Obj {
                path: field,
                map: m,
            };
            let address = o.cidr("address").map_err(as6)?.ok_or_else(|| {
                decode(format!(
                    "{} is missing: each ips entry needs an address",
                    o.name("address")
                ))
            })?;
            check_ip_version(&o.path, o.str("version").map_err(as6)?, address)?;
            let gateway = o.ip("gateway").map_err(as6)?;
            out.push(PrevIp { address, gateway });
        }
        return Ok(out);
    }
    for key in ["ip4", "ip6"] {
        if let Some(o) = top.obj(key).map_err(as6)? {
            let address = o
                .cidr("ip")
                .map_err(as6)?
                .ok_or_else(|| decode(format!("{} is missing: give the address", o.name("ip"))))?;
            let gateway = o.ip("gateway").map_err(as6)?;
            out.push(PrevIp { address, gateway });
        }
    }
    Ok(out)
}
