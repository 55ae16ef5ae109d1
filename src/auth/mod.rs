//! Authentication and authorization: who is calling, and what may they do to which wedding.
//!
//! Why it exists: every WebSocket session and every REST call must be tied to a user and limited
//! to the weddings that user's JWT grants. This module turns a bearer token into a [`Principal`]
//! and answers one question for the rest of the server: [`Principal::access_to`] a document.
//! It knows nothing about sockets or rooms; the server calls it at the upgrade / request
//! boundary and again when a revocation arrives ([`Authenticator::is_revoked`]).
//!
//! Layout:
//! - this file: the token's claims ([`Claims`]) and the verified identity ([`Principal`]).
//! - `error.rs`: [`AuthError`], its HTTP status and its JSON body.
//! - `verify.rs`: [`AuthConfig`] and [`Authenticator`]: one configured algorithm and key,
//!   explicit clock, revocation checks.
//! - `revocation.rs`: the revocation list, kept in memory and written through to sled.
//! - `mint.rs`: signing HS256 tokens for `wedsync token` and tests, and parsing its arguments.
//! - `extract.rs`: finding the token in `?token=` or `Authorization: Bearer`.

mod error;
mod extract;
mod mint;
mod revocation;
mod verify;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use error::AuthError;
pub use extract::{token_from_parts, MAX_TOKEN_LEN};
pub use mint::{mint_hs256, parse_ttl, parse_wedding_grant, TokenSpec, DEFAULT_TTL_SECS};
pub use revocation::Revocation;
pub use verify::{AuthConfig, Authenticator, KeyAlgorithm, DEFAULT_LEEWAY_SECS};

/// A user's role in the wedding business, as carried by the token's `role` claim.
///
/// Only [`Role::Admin`] changes what a token may do (edit every wedding); the other roles are
/// carried through to presence and messages so people see who they are working with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Couple,
    Planner,
    Vendor,
    Guest,
    Admin,
}

impl Role {
    /// The claim spelling (`"couple"`, `"planner"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Couple => "couple",
            Role::Planner => "planner",
            Role::Vendor => "vendor",
            Role::Guest => "guest",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "couple" => Ok(Role::Couple),
            "planner" => Ok(Role::Planner),
            "vendor" => Ok(Role::Vendor),
            "guest" => Ok(Role::Guest),
            "admin" => Ok(Role::Admin),
            other => Err(AuthError::InvalidArgument(format!(
                "unknown role {other:?}: expected couple, planner, vendor, guest or admin"
            ))),
        }
    }
}

/// What a token allows on one wedding. `Edit` includes everything `View` allows, so the derived
/// order (`View < Edit`) answers "is this enough?": `granted >= Access::View`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Receive the document and its updates, send awareness; document updates are refused.
    View,
    /// Everything `View` allows, plus applying document updates.
    Edit,
}

impl Access {
    /// The claim spelling (`"view"` or `"edit"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Access::View => "view",
            Access::Edit => "edit",
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Access {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "view" => Ok(Access::View),
            "edit" => Ok(Access::Edit),
            other => Err(AuthError::InvalidArgument(format!(
                "unknown access {other:?}: expected edit or view"
            ))),
        }
    }
}

/// The JWT `aud` claim: RFC 7519 allows one string or an array of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    /// Whether `aud` names this audience.
    pub fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::One(a) => a == aud,
            Audience::Many(list) => list.iter().any(|a| a == aud),
        }
    }
}

/// The claims of a wedsync token (see docs/auth.md). Unknown claims are ignored; a known claim
/// with the wrong shape (an unknown role, `"weddings": {"w1": "owner"}`) makes the token invalid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id. Required and non-empty.
    pub sub: String,
    /// Expiry, in Unix seconds. Required.
    pub exp: u64,
    /// Not valid before, in Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, in Unix seconds. Used by revocation by `sub` (tokens issued before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Token id, for revoking one token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Wedding id (= document name) to access.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weddings: BTreeMap<String, Access>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// A verified caller. Built only by [`Authenticator::verify`] (from a token that passed every
/// check) or by [`Principal::open_mode`] (development without keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The token's `sub`.
    pub user: String,
    pub name: Option<String>,
    pub role: Option<Role>,
    pub weddings: BTreeMap<String, Access>,
    /// The token's `exp` (Unix seconds); `None` only in open development mode. The WebSocket
    /// side uses it to end a session when the token runs out.
    pub expires_at: Option<u64>,
    /// The token's `iat` (Unix seconds), when present.
    pub issued_at: Option<u64>,
    pub jti: Option<String>,
    /// True only for [`Principal::open_mode`]: nobody was authenticated.
    pub open_mode: bool,
}

impl Principal {
    /// The principal used when the server runs without any JWT key (open development mode):
    /// user `"dev"`, edit access to every document, never expires. Never use it when a key is
    /// configured; [`Authenticator::verify`] only returns it from [`Authenticator::open`].
    pub fn open_mode() -> Self {
        Principal {
            user: "dev".to_owned(),
            name: Some("open development mode (no authentication)".to_owned()),
            role: None,
            weddings: BTreeMap::new(),
            expires_at: None,
            issued_at: None,
            jti: None,
            open_mode: true,
        }
    }

    /// Build the principal from claims that have already been verified.
    pub(crate) fn from_claims(claims: Claims) -> Self {
        Principal {
            user: claims.sub,
            name: claims.name,
            role: claims.role,
            weddings: claims.weddings,
            expires_at: Some(claims.exp),
            issued_at: claims.iat,
            jti: claims.jti,
            open_mode: false,
        }
    }

    /// What this principal may do on document `doc` (a wedding id): admins and open mode edit
    /// everything; everyone else gets what their `weddings` claim says, or `None`.
    pub fn access_to(&self, doc: &str) -> Option<Access> {
        if self.open_mode || self.role == Some(Role::Admin) {
            return Some(Access::Edit);
        }
        self.weddings.get(doc).copied()
    }

    /// Like [`Principal::access_to`], but an error (HTTP 403) when the access is below `needed`.
    /// Returns the access actually granted (which may exceed `needed`).
    pub fn require(&self, doc: &str, needed: Access) -> Result<Access, AuthError> {
        match self.access_to(doc) {
            Some(granted) if granted >= needed => Ok(granted),
            Some(_) => Err(AuthError::Forbidden(format!(
                "this token may only view {doc:?}"
            ))),
            None => Err(AuthError::Forbidden(format!(
                "this token grants no access to {doc:?}"
            ))),
        }
    }

    /// The name to show people: `name`, or the user id when the token has none.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.user)
    }
}

/// Current Unix time in seconds (0 if the clock is before 1970, which only a broken host has).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
