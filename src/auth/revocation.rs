//! The revocation list: tokens refused before their `exp`.
//!
//! Why it exists: a JWT is valid until it expires, but a planner removed from a wedding or a
//! leaked token must be cut off now. Two kinds of entry:
//! - [`Revocation::Jti`]: that one token is refused until `until`.
//! - [`Revocation::Sub`]: every token of that user *issued at or before the revocation* (by
//!   `iat`; a token without `iat` counts as old) is refused until `until`. Tokens the backend
//!   issues afterwards work, so revoking a user's sessions is not a ban.
//!
//! `until` should be at least the latest `exp` of the tokens concerned (e.g. now + the longest
//! TTL the backend issues); after it the entry is pruned, because those tokens expired anyway.
//!
//! Entries live in memory (checked on every verify) and, when a sled tree is attached, are
//! written through and flushed, so a restart does not forget them. Record format, one per entry:
//! key `s:<sub>` or `j:<jti>`, value 16 bytes: `until` then `revoked_at`, both big-endian u64.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::AuthError;

/// What to revoke. In JSON: `{"sub": "u1"}` or `{"jti": "abc"}` (the admin endpoint's body).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Revocation {
    /// Every token of this user issued at or before the revocation.
    Sub(String),
    /// The one token with this `jti`.
    Jti(String),
}

impl Revocation {
    fn key(&self) -> Vec<u8> {
        let (tag, id) = match self {
            Revocation::Sub(s) => (b"s:", s),
            Revocation::Jti(j) => (b"j:", j),
        };
        let mut key = Vec::with_capacity(2 + id.len());
        key.extend_from_slice(tag);
        key.extend_from_slice(id.as_bytes());
        key
    }

    fn from_key(key: &[u8]) -> Option<Self> {
        let id = std::str::from_utf8(key.get(2..)?).ok()?.to_owned();
        match key.get(..2)? {
            b"s:" => Some(Revocation::Sub(id)),
            b"j:" => Some(Revocation::Jti(id)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// Refuse until this Unix second (exclusive).
    until: u64,
    /// When the revocation was made; for `Sub`, tokens with `iat <= revoked_at` are refused.
    revoked_at: u64,
}

impl Entry {
    fn encode(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.until.to_be_bytes());
        out[8..].copy_from_slice(&self.revoked_at.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let until = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let revoked_at = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        (bytes.len() == 16).then_some(Entry { until, revoked_at })
    }

    /// Two revocations of the same target: keep the later cut-off and the longer life.
    fn merge(self, other: Entry) -> Entry {
        Entry {
            until: self.until.max(other.until),
            revoked_at: self.revoked_at.max(other.revoked_at),
        }
    }
}

/// In-memory revocation entries, optionally written through to a sled tree.
///
/// A `std::sync::Mutex`: critical sections are a hash lookup or insert and never await.
#[derive(Debug, Default)]
pub(crate) struct RevocationList {
    entries: Mutex<HashMap<Revocation, Entry>>,
    tree: Option<sled::Tree>,
}

fn store_err(e: sled::Error) -> AuthError {
    AuthError::Store(e.to_string())
}

impl RevocationList {
    /// Load the entries stored in `tree` (dropping those that lapsed before `now`) and keep the
    /// tree to write new entries through. Entries already in memory are kept and persisted.
    pub(crate) fn attach(&mut self, tree: sled::Tree, now: u64) -> Result<(), AuthError> {
        let mut stale = Vec::new();
        let mut loaded = 0usize;
        {
            let mut entries = lock(&self.entries);
            for item in tree.iter() {
                let (key, value) = item.map_err(store_err)?;
                let (Some(target), Some(entry)) =
                    (Revocation::from_key(&key), Entry::decode(&value))
                else {
                    tracing::warn!(key = ?key, "dropping an unreadable revocation record");
                    stale.push(key);
                    continue;
                };
                if entry.until <= now {
                    stale.push(key);
                    continue;
                }
                loaded += 1;
                entries
                    .entry(target)
                    .and_modify(|e| *e = e.merge(entry))
                    .or_insert(entry);
            }
            entries.retain(|_, e| e.until > now);
            for (target, entry) in entries.iter() {
                tree.insert(target.key(), &entry.encode()[..])
                    .map_err(store_err)?;
            }
        }
        for key in stale {
            tree.remove(key).map_err(store_err)?;
        }
        tree.flush().map_err(store_err)?;
        tracing::debug!(loaded, "revocation list loaded");
        self.tree = Some(tree);
        Ok(())
    }

    /// Record a revocation made at `now`, refused until `until`; prune lapsed entries.
    ///
    /// The entry takes effect in memory even if persisting it fails (the error is returned so
    /// the operator knows it will not survive a restart).
    pub(crate) fn add(&self, target: Revocation, until: u64, now: u64) -> Result<(), AuthError> {
        let new = Entry {
            until,
            revoked_at: now,
        };
        let (stored, lapsed) = {
            let mut entries = lock(&self.entries);
            let stored = *entries
                .entry(target.clone())
                .and_modify(|e| *e = e.merge(new))
                .or_insert(new);
            let lapsed: Vec<Revocation> = entries
                .iter()
                .filter(|(_, e)| e.until <= now)
                .map(|(t, _)| t.clone())
                .collect();
            for t in &lapsed {
                entries.remove(t);
            }
            (stored, lapsed)
        };
        if let Some(tree) = &self.tree {
            for t in &lapsed {
                tree.remove(t.key()).map_err(store_err)?;
            }
            if stored.until > now {
                tree.insert(target.key(), &stored.encode()[..])
                    .map_err(store_err)?;
            }
            tree.flush().map_err(store_err)?;
        }
        Ok(())
    }

    /// Whether a token with this `sub`, `jti` and `iat` is revoked at `now`.
    pub(crate) fn hits(&self, sub: &str, jti: Option<&str>, iat: Option<u64>, now: u64) -> bool {
        let entries = lock(&self.entries);
        if entries.is_empty() {
            return false;
        }
        if let Some(jti) = jti {
            if let Some(e) = entries.get(&Revocation::Jti(jti.to_owned())) {
                if now < e.until {
                    return true;
                }
            }
        }
        match entries.get(&Revocation::Sub(sub.to_owned())) {
            Some(e) if now < e.until => iat.is_none_or(|iat| iat <= e.revoked_at),
            _ => false,
        }
    }

    /// Number of entries currently held (lapsed ones may linger until the next `add`).
    pub(crate) fn len(&self) -> usize {
        lock(&self.entries).len()
    }
}

/// Lock without panicking: a poisoned map is still a consistent map (every critical section
/// leaves it valid), so keep using it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
