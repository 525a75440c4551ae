//! CNI errors: the spec's well-known codes and the JSON a plugin prints on failure.

use crate::version::CniVersion;
use berth_core::PoolError;
use serde::{Deserialize, Serialize};

/// An error as the CNI spec defines it: a numeric code, a short message and optional details.
///
/// Every message Berth produces names the field or variable at fault, the offending value and what
/// to do about it, because the operator usually only sees this text in a kubelet event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    /// The CNI error code: 0-99 are well-known (see the associated constants), 100+ are Berth's own.
    pub code: u32,
    /// Short, human-readable message.
    pub msg: String,
    /// Longer explanation; empty when there is nothing to add.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// The error reply printed on stdout, as the spec lays it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The CNI version of the reply: the configuration's version when known.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The error code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Long message; omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// Code 1: the configuration's `cniVersion` (or the command at that version) is not supported.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Code 2: a field in the configuration or arguments is not supported.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Code 3: the container is unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Code 4: a necessary environment variable is missing or invalid.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// Code 5: an I/O failure, e.g. reading stdin or talking to the agent.
    pub const IO_FAILURE: u32 = 5;
    /// Code 6: content (configuration, result, frame) could not be decoded.
    pub const DECODING_FAILURE: u32 = 6;
    /// Code 7: the network configuration is invalid.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Code 11: a transient failure; the runtime should try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Code 50 (STATUS): the plugin is not available, ADD would fail.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// Code 51 (STATUS): the plugin is not available and existing containers may have limited
    /// connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// First code free for plugin-specific errors.
    pub const PLUGIN_SPECIFIC: u32 = 100;

    /// An error with a code and message and no details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The same error with details attached, for context that does not fit the short message.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Code 7 with a message: the common case for configuration errors.
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(Self::INVALID_NETWORK_CONFIG, msg)
    }

    /// Code 4 with a message: a missing or malformed `CNI_*` variable.
    pub fn env(msg: impl Into<String>) -> Self {
        Self::new(Self::INVALID_ENVIRONMENT, msg)
    }

    /// Code 6 for a JSON decode failure of `what` (e.g. "network configuration"), keeping serde's
    /// line and column so the operator can find the typo.
    pub fn decode(what: &str, err: &serde_json::Error) -> Self {
        // serde_json's message already ends in "at line L column C" for syntax and data errors.
        let msg = if err.line() == 0 {
            format!("cannot decode {what}: {err}: send valid JSON")
        } else {
            format!("cannot decode {what}: {err}: fix the JSON there")
        };
        Self::new(Self::DECODING_FAILURE, msg)
    }

    /// The reply the plugin prints on stdout, tagged with the version it answers in.
    pub fn reply(&self, version: &str) -> ErrorReply {
        ErrorReply {
            cni_version: version.to_string(),
            code: self.code,
            msg: self.msg.clone(),
            details: self.details.clone(),
        }
    }

    /// The reply as a JSON string; `version` is `None` when the configuration could not be read, in
    /// which case the newest supported version is used.
    pub fn to_json_string(&self, version: Option<CniVersion>) -> String {
        let v = version.unwrap_or(CniVersion::LATEST);
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_string(&self.reply(v.as_str())).unwrap_or_default()
    }
}

impl From<ErrorReply> for CniError {
    fn from(r: ErrorReply) -> Self {
        CniError {
            code: r.code,
            msg: r.msg,
            details: r.details,
        }
    }
}

impl From<PoolError> for CniError {
    /// A pool that does not validate is an invalid network configuration (code 7).
    fn from(e: PoolError) -> Self {
        Self::config(format!("ipam: {e}"))
    }
}
