//! JSON schemas for the Kubernetes CRDs, tight enough that the API server refuses what Berth
//! cannot decode: addresses and networks carry the formats the API server checks (`ipv4`, `ipv6`,
//! `cidr`), and tagged enums require each variant's fields. Only constructs Kubernetes 1.20
//! accepts in a structural schema are used (no CEL rules, which 1.20 ignores): `type` on every
//! field outside the logical junctors, and only value checks (`format`, `enum`, `required`)
//! inside `anyOf` / `not`.

use schemars::{json_schema, Schema, SchemaGenerator};

/// An IPv4 or IPv6 address.
pub fn ip(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]
    })
}

/// An optional address: absent or null means none.
pub fn ip_opt(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "nullable": true,
        "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]
    })
}

/// A list of addresses.
pub fn ip_list(g: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "array", "items": ip(g)})
}

/// A network in CIDR notation.
pub fn cidr(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "format": "cidr"})
}

/// A list of networks.
pub fn cidr_list(g: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "array", "items": cidr(g)})
}

/// A prefix length: 0–128 (the family decides the real bound, which the schema cannot see).
pub fn prefix_len(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "minimum": 0, "maximum": 128})
}

/// An optional prefix length.
pub fn prefix_len_opt(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "minimum": 0, "maximum": 128, "nullable": true})
}

/// "When `tag` is `value`, these fields are required", as a structural schema: either the tag is
/// something else, or the fields are present. A list of these goes under `allOf`.
pub fn when_tag(tag: &str, value: &str, required: &[&str]) -> Schema {
    json_schema!({
        "anyOf": [
            {"not": {"properties": {tag: {"enum": [value]}}}},
            {"required": required}
        ]
    })
}
