//! CNI spec versions: which ones Berth speaks, how they compare and which commands each allows.

use crate::env::Command;
use crate::error::CniError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A CNI spec version Berth supports. Ordered oldest first, so `>=` is a spec-version comparison.
///
/// 0.1.0 and 0.2.0 are not supported: their result format (`ip4`/`ip6`) cannot carry several
/// addresses and no current runtime needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    /// 0.3.0: `ips` list with `version`.
    V0_3_0,
    /// 0.3.1: as 0.3.0.
    V0_3_1,
    /// 0.4.0: adds CHECK and `prevResult` on DEL.
    V0_4_0,
    /// 1.0.0: drops `ips[].version`.
    V1_0_0,
    /// 1.1.0: adds GC and STATUS.
    V1_1_0,
}

impl CniVersion {
    /// Every supported version, oldest first, as the VERSION reply lists them.
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    /// The newest supported version: used for replies when the configuration gave none.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// The version as the spec writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Parse a `cniVersion` value; anything unsupported is error code 1 naming the value.
    pub fn parse(s: &str) -> Result<Self, CniError> {
        let found = Self::ALL.iter().copied().find(|v| v.as_str() == s.trim());
        found.ok_or_else(|| {
            CniError::new(
                CniError::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {s:?} is not supported: use one of {}",
                    Self::ALL.map(|v| v.as_str()).join(", ")
                ),
            )
        })
    }

    /// Whether results at this version carry `ips[].version` (before 1.0.0).
    pub fn has_ip_version_field(self) -> bool {
        self < CniVersion::V1_0_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CniVersion {
    type Err = CniError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for CniVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CniVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(|e| serde::de::Error::custom(e.msg))
    }
}

/// Compare two dotted spec versions (`"0.4.0"`, `"1.1"`) numerically, for versions Berth does not
/// itself support (e.g. a `prevResult` at 0.2.0). `None` when either is not `major.minor[.patch]`.
pub fn compare(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    Some(semver_triple(a)?.cmp(&semver_triple(b)?))
}

fn semver_triple(s: &str) -> Option<(u64, u64, u64)> {
    let mut it = s.trim().split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    let patch = match it.next() {
        Some(p) => p.parse().ok()?,
        None => 0,
    };
    if it.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

/// The reply to the VERSION command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The version this reply is written in.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Every version the plugin accepts.
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

/// Berth's VERSION reply: `{"cniVersion":"1.1.0","supportedVersions":[...]}`.
pub fn version_info() -> VersionInfo {
    VersionInfo {
        cni_version: CniVersion::LATEST.as_str().to_string(),
        supported_versions: CniVersion::ALL
            .iter()
            .map(|v| v.as_str().to_string())
            .collect(),
    }
}

/// The VERSION reply as the JSON line the plugin prints.
pub fn version_reply() -> String {
    // A struct of strings always serializes.
    serde_json::to_string(&version_info()).unwrap_or_default()
}

/// The oldest spec version that defines `command`.
pub fn min_version(command: Command) -> CniVersion {
    match command {
        Command::Add | Command::Del | Command::Version => CniVersion::V0_3_0,
        Command::Check => CniVersion::V0_4_0,
        Command::Gc | Command::Status => CniVersion::V1_1_0,
    }
}

/// Refuse a command the configuration's version does not define: CHECK needs 0.4.0, GC and STATUS
/// need 1.1.0. Error code 1 (incompatible version), as libcni's skeleton answers.
pub fn check_command(command: Command, version: CniVersion) -> Result<(), CniError> {
    let min = min_version(command);
    if version < min {
        return Err(CniError::new(
            CniError::INCOMPATIBLE_VERSION,
            format!(
                "command {command} needs cniVersion {min} or later but the configuration says cniVersion {version:?}: raise cniVersion to {min}",
                version = version.as_str()
            ),
        ));
    }
    Ok(())
}
