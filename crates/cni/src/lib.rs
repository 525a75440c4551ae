//! Berth's CNI layer: everything between the bytes and variables a container runtime hands the
//! `berth-ipam` plugin and Berth's allocator. The spec modules are pure parsing and formatting; the
//! [`handler`] carries out a command with an allocator, for the plugin's direct path and the agent alike.
//!
//! - [`version`]: supported spec versions and which commands each allows.
//! - [`error`]: [`CniError`] with the spec's codes and its JSON form.
//! - [`env`](mod@env): `CNI_*` variables and `CNI_ARGS`.
//! - [`config`]: the network configuration (kube-ipam and host-local forms) into an [`IpamConfig`].
//! - [`dns`]: the `dns` object and a `resolv.conf` parser.
//! - [`result`]: results per spec version, and `prevResult` parsing.
//! - [`socket`]: the wire format between the thin plugin and the node agent.
//! - [`handler`]: one command carried out against an allocator.
//! - [`plugin`]: the `berth-ipam` process: the agent's socket; when no agent answers and the
//!   configuration names its own ledger, hands over to `berth-ipam-direct`.
//! - [`direct`]: the `berth-ipam-direct` process: the configuration's ledger, opened directly.

#![warn(missing_docs)]

pub mod config;
pub mod direct;
pub mod dns;
pub mod env;
pub mod error;
pub mod handler;
mod json;
pub mod plugin;
mod policy;
pub mod result;
pub mod socket;
pub mod version;

pub use config::{parse_config, Attachment, IpamConfig, Store};
pub use dns::{parse_resolv_conf, Dns};
pub use env::{parse_args, parse_env, CniArgs, CniEnv, Command};
pub use error::CniError;
pub use result::{build_result, parse_prev_result, IpamResult, PrevIp};
pub use version::CniVersion;
