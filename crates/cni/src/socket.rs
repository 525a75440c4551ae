//! The wire format between the thin `berth-ipam` plugin and the node agent: one JSON request and
//! one JSON response per connection, each a single line (newline-delimited JSON).

use crate::config::IpamConfig;
use crate::env::{CniArgs, CniEnv, Command};
use crate::error::CniError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::path::PathBuf;

/// Largest frame accepted, so a confused peer cannot make the other side buffer without bound.
pub const MAX_FRAME: usize = 4 << 20;

/// The configuration a request carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "form", content = "value", rename_all = "lowercase")]
pub enum RequestConfig {
    /// The stdin bytes as received (UTF-8 JSON); the agent parses them. Lets a plugin older than
    /// the agent forward configurations it does not understand.
    Raw(String),
    /// The configuration already parsed by the plugin.
    Parsed(Box<IpamConfig>),
}

/// One CNI invocation forwarded to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// `CNI_IFNAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// `CNI_NETNS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// The network configuration.
    pub config: RequestConfig,
    /// `CNI_ARGS`, parsed.
    #[serde(default)]
    pub args: CniArgs,
}

impl Request {
    /// A request from a parsed environment and configuration.
    pub fn new(env: &CniEnv, config: RequestConfig) -> Self {
        Request {
            command: env.command,
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            netns: env.netns.clone(),
            config,
            args: env.args.clone(),
        }
    }
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Response {
    /// Success; `result` is the JSON to print (ADD), or absent (DEL, CHECK, GC, STATUS).
    Ok {
        /// The result JSON.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Value>,
    },
    /// Failure, to be printed as a CNI error.
    Error {
        /// The error.
        error: CniError,
    },
}

impl From<Result<Option<Value>, CniError>> for Response {
    fn from(r: Result<Option<Value>, CniError>) -> Self {
        match r {
            Ok(result) => Response::Ok { result },
            Err(error) => Response::Error { error },
        }
    }
}

impl Response {
    /// Back to a `Result`, for the plugin side.
    pub fn into_result(self) -> Result<Option<Value>, CniError> {
        match self {
            Response::Ok { result } => Ok(result),
            Response::Error { error } => Err(error),
        }
    }
}

/// Write `msg` as one line of compact JSON and flush. I/O failures are code 5.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), CniError> {
    let mut buf = serde_json::to_vec(msg).map_err(|e| {
        CniError::new(
            CniError::IO_FAILURE,
            format!("cannot encode frame: {e}: this is a bug in Berth"),
        )
    })?;
    // Compact JSON escapes newlines inside strings, so the only newline is the terminator.
    buf.push(b'\n');
    let io = |e: std::io::Error| {
        CniError::new(
            CniError::IO_FAILURE,
            format!("cannot write to the berth agent socket: {e}: check the agent is running"),
        )
    };
    w.write_all(&buf).map_err(io)?;
    w.flush().map_err(io)
}

/// Read one newline-terminated JSON frame. `Ok(None)` when the stream ends before any byte (the
/// peer closed); a frame cut short, over [`MAX_FRAME`] or not decoding is code 6; I/O failures are
/// code 5.
///
/// Reads byte by byte so it never consumes past the frame; wrap a raw socket in a
/// `std::io::BufReader` (and keep it) to avoid a system call per byte.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<Option<T>, CniError> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match r.read(&mut byte) {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => {
                return Err(CniError::new(
                    CniError::DECODING_FAILURE,
                    format!(
                        "berth agent frame ended after {} bytes without a newline: the peer closed mid-message",
                        buf.len()
                    ),
                ))
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                if buf.len() >= MAX_FRAME {
                    return Err(CniError::new(
                        CniError::DECODING_FAILURE,
                        format!("berth agent frame exceeds {MAX_FRAME} bytes: the peer is not speaking Berth's protocol"),
                    ));
                }
                buf.push(byte[0]);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(CniError::new(
                    CniError::IO_FAILURE,
                    format!("cannot read from the berth agent socket: {e}: check the agent is running"),
                ))
            }
        }
    }
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| CniError::decode("berth agent frame", &e))
}
