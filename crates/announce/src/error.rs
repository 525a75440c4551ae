//! Errors of the announcer: configuration, wire, kernel.

/// A configuration value that cannot be used.
///
/// Why: bad input gets a clear error naming the key, the value and what to do, and nothing
/// runs with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key whose value is wrong.
    #[error("`{key}` = {value}: {fix}")]
    Invalid {
        /// The key, as written in the file (`takeover`, `peer[1].address`).
        key: String,
        /// The value found.
        value: String,
        /// What is wrong and what to write instead.
        fix: String,
    },
    /// The file could not be read or is not TOML of the expected shape.
    #[error("{0}")]
    Parse(String),
}

impl ConfigError {
    /// A [`ConfigError::Invalid`] for `key`.
    pub fn invalid(
        key: impl Into<String>,
        value: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            value: value.into(),
            fix: fix.into(),
        }
    }
}
