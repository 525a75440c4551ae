//! Typed access to JSON objects that names the full field path in every error, so a message says
//! `ipam.ranges[1][0].gateway` rather than "invalid type".

use crate::error::CniError;
use ipnet::IpNet;
use serde_json::{Map, Value};
use std::net::IpAddr;

/// A JSON object and the path that leads to it (`""` for the top level).
#[derive(Debug, Clone)]
pub(crate) struct Obj<'a> {
    pub path: String,
    pub map: &'a Map<String, Value>,
}

/// A short rendering of a JSON value for error messages.
pub(crate) fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(57).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

/// The name of `key` under `path`.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A JSON type's name, for "must be a string, not a number".
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Code 7: `field` holds a value of the wrong JSON type.
pub(crate) fn wrong_type(field: &str, want: &str, v: &Value) -> CniError {
    CniError::config(format!(
        "{field} {} is {}, not {want}: write it as {want}",
        show(v),
        kind(v)
    ))
}

/// Code 7: `field` is not an IP address.
pub(crate) fn bad_ip(field: &str, s: &str) -> CniError {
    CniError::config(format!(
        "{field} {s:?} is not an IP address: use a dotted IPv4 or IPv6 address"
    ))
}

/// Parse `s` as an address, naming `field` on failure.
pub(crate) fn parse_ip(field: &str, s: &str) -> Result<IpAddr, CniError> {
    s.trim().parse().map_err(|_| bad_ip(field, s))
}

/// Parse `s` as a CIDR, naming `field` on failure.
pub(crate) fn parse_cidr(field: &str, s: &str) -> Result<IpNet, CniError> {
    s.trim().parse().map_err(|_| {
        CniError::config(format!(
            "{field} {s:?} is not a CIDR: write it as address/prefix, e.g. 10.188.0.0/16"
        ))
    })
}

impl<'a> Obj<'a> {
    /// The value at `key`; JSON `null` counts as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// The full name of `key`.
    pub fn name(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// A string field.
    pub fn str(&self, key: &str) -> Result<Option<&'a str>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(wrong_type(&self.name(key), "a string", v)),
        }
    }

    /// A string field where the empty string counts as absent (as Go's `net.IP` decodes it).
    pub fn nonempty(&self, key: &str) -> Result<Option<&'a str>, CniError> {
        Ok(self.str(key)?.filter(|s| !s.trim().is_empty()))
    }

    /// An IP address field.
    pub fn ip(&self, key: &str) -> Result<Option<IpAddr>, CniError> {
        self.nonempty(key)?
            .map(|s| parse_ip(&self.name(key), s))
            .transpose()
    }

    /// A CIDR field.
    pub fn cidr(&self, key: &str) -> Result<Option<IpNet>, CniError> {
        self.nonempty(key)?
            .map(|s| parse_cidr(&self.name(key), s))
            .transpose()
    }

    /// A boolean field.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(wrong_type(&self.name(key), "true or false", v)),
        }
    }

    /// A small non-negative integer field (prefix lengths).
    pub fn u8(&self, key: &str) -> Result<Option<u8>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    CniError::config(format!(
                        "{} {} is not a prefix length: use a whole number such as 26",
                        self.name(key),
                        show(v)
                    ))
                }),
        }
    }

    /// A list field.
    pub fn list(&self, key: &str) -> Result<Option<&'a Vec<Value>>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(wrong_type(&self.name(key), "a list", v)),
        }
    }

    /// An object field.
    pub fn obj(&self, key: &str) -> Result<Option<Obj<'a>>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(Obj {
                path: self.name(key),
                map: m,
            })),
            Some(v) => Err(wrong_type(&self.name(key), "an object", v)),
        }
    }
}

/// A list element that must be a string.
pub(crate) fn elem_str<'a>(field: &str, v: &'a Value) -> Result<&'a str, CniError> {
    v.as_str().ok_or_else(|| wrong_type(field, "a string", v))
}
