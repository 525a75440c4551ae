//! Typed access to ledger records: JSON in, JSON out, decode errors named.

use crate::{Entry, Kind, Ledger, LedgerError, Result, Version};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A decoded record and the version to compare against when changing it.
#[derive(Debug, Clone)]
pub struct Stored<T> {
    /// The record.
    pub value: T,
    /// Its version.
    pub version: Version,
}

/// Typed helpers over any [`Ledger`]; records are stored as JSON so `etcdctl get` stays readable.
pub struct Records<'a, L: ?Sized>(pub &'a L);

fn decode<T: DeserializeOwned>(kind: Kind, e: Entry) -> Result<Stored<T>> {
    serde_json::from_slice(&e.value)
        .map(|value| Stored {
            value,
            version: e.version,
        })
        .map_err(|err| LedgerError::Corrupt {
            kind,
            name: e.name,
            reason: err.to_string(),
        })
}

fn encode<T: Serialize>(kind: Kind, name: &str, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|err| LedgerError::Corrupt {
        kind,
        name: name.to_string(),
        reason: err.to_string(),
    })
}

impl<L: Ledger + ?Sized> Records<'_, L> {
    /// Read and decode one record.
    pub async fn get<T: DeserializeOwned>(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<Option<Stored<T>>> {
        match self.0.get(kind, name).await? {
            Some(e) => decode(kind, e).map(Some),
            None => Ok(None),
        }
    }

    /// Read and decode every record of a kind.
    pub async fn list<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<Stored<T>>> {
        self.0
            .list(kind)
            .await?
            .into_iter()
            .map(|e| decode(kind, e))
            .collect()
    }

    /// Create a record that must not exist.
    pub async fn create<T: Serialize>(&self, kind: Kind, name: &str, v: &T) -> Result<Version> {
        self.0.create(kind, name, encode(kind, name, v)?).await
    }

    /// Replace a record that must still have `expected`.
    pub async fn update<T: Serialize>(
        &self,
        kind: Kind,
        name: &str,
        v: &T,
        expected: &Version,
    ) -> Result<Version> {
        self.0
            .update(kind, name, encode(kind, name, v)?, expected)
            .await
    }
}
