//! Minting HS256 tokens: the `wedsync token` command and the tests.
//!
//! Why it exists: developers and integration tests need valid tokens without a separate
//! backend. Production backends mint their own (docs/auth.md); the server itself never issues
//! tokens. The argument parsers live here so the CLI stays thin and its errors are testable.

use std::collections::BTreeMap;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::{Access, AuthError, Claims, Role};

/// Token lifetime when `--ttl` is not given.
pub const DEFAULT_TTL_SECS: u64 = 3600;

/// Longest document (wedding id) name, as in the WebSocket route.
const MAX_DOC_NAME_LEN: usize = 200;

/// Sign `claims` with HS256 and `secret`.
pub fn mint_hs256(secret: &str, claims: &Claims) -> Result<String, AuthError> {
    if secret.is_empty() {
        return Err(AuthError::Config("the JWT secret is empty".into()));
    }
    if claims.sub.is_empty() {
        return Err(AuthError::InvalidArgument(
            "the subject (sub) is empty".into(),
        ));
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| AuthError::Config(format!("could not sign the token: {e}")))
}

/// The arguments of `wedsync token`, as strings straight from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSpec {
    /// `--sub`: the user id.
    pub sub: String,
    /// `--name`.
    pub name: Option<String>,
    /// `--role`: couple, planner, vendor, guest or admin.
    pub role: Option<String>,
    /// `--wedding ID:edit|view`, repeatable.
    pub weddings: Vec<String>,
    /// `--ttl`: `45s`, `30m`, `1h`, `2d`; [`DEFAULT_TTL_SECS`] when absent.
    pub ttl: Option<String>,
    /// `--jti`; a random one is generated when absent, so the token can be revoked alone.
    pub jti: Option<String>,
    /// `--iss`, for servers that require an issuer.
    pub issuer: Option<String>,
    /// `--aud`, for servers that require an audience.
    pub audience: Option<String>,
}

impl TokenSpec {
    /// Validate the arguments and build the claims, issued at `now_unix`.
    pub fn to_claims(&self, now_unix: u64) -> Result<Claims, AuthError> {
        if self.sub.trim().is_empty() {
            return Err(AuthError::InvalidArgument("--sub must not be empty".into()));
        }
        let role = self.role.as_deref().map(str::parse::<Role>).transpose()?;
        let mut weddings = BTreeMap::new();
        for grant in &self.weddings {
            let (id, access) = parse_wedding_grant(grant)?;
            if let Some(previous) = weddings.insert(id.clone(), access) {
                if previous != access {
                    return Err(AuthError::InvalidArgument(format!(
                        "wedding {id:?} is given twice with different access"
                    )));
                }
            }
        }
        if weddings.is_empty() && role != Some(Role::Admin) {
            return Err(AuthError::InvalidArgument(
                "give at least one --wedding ID:edit|view (or --role admin); \
                 this token would open nothing"
                    .into(),
            ));
        }
        let ttl = match &self.ttl {
            Some(t) => parse_ttl(t)?,
            None => DEFAULT_TTL_SECS,
        };
        let exp = now_unix
            .checked_add(ttl)
            .ok_or_else(|| AuthError::InvalidArgument("--ttl is too large".into()))?;
        let jti = self
            .jti
            .clone()
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
        Ok(Claims {
            sub: self.sub.clone(),
            exp,
            nbf: None,
            iat: Some(now_unix),
            jti: Some(jti),
            name: self.name.clone(),
            role,
            weddings,
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(super::Audience::One),
        })
    }
}

/// Parse `ID:edit` or `ID:view`. The id may itself contain `:` (document names allow it), so
/// the access is what follows the last colon.
pub fn parse_wedding_grant(s: &str) -> Result<(String, Access), AuthError> {
    let Some((id, access)) = s.rsplit_once(':') else {
        return Err(AuthError::InvalidArgument(format!(
            "--wedding {s:?}: expected ID:edit or ID:view"
        )));
    };
    let access: Access = access.parse().map_err(|_| {
        AuthError::InvalidArgument(format!(
            "--wedding {s:?}: access must be edit or view, not {access:?}"
        ))
    })?;
    if !is_valid_doc_name(id) {
        return Err(AuthError::InvalidArgument(format!(
            "--wedding {s:?}: a wedding id is 1-{MAX_DOC_NAME_LEN} characters of \
             A-Z a-z 0-9 . _ ~ : @ -"
        )));
    }
    Ok((id.to_owned(), access))
}

/// Parse a lifetime: a positive integer followed by `s`, `m`, `h` or `d` (`45s`, `30m`, `1h`,
/// `2d`). Returns seconds.
pub fn parse_ttl(s: &str) -> Result<u64, AuthError> {
    let bad = || {
        AuthError::InvalidArgument(format!(
            "--ttl {s:?}: expected a number and a unit, like 45s, 30m, 1h or 2d"
        ))
    };
    let s_trim = s.trim();
    let split = s_trim.len().checked_sub(1).ok_or_else(bad)?;
    // `get` (not indexing): a multi-byte last character must be an error, not a panic.
    let number = s_trim.get(..split).ok_or_else(bad)?;
    let unit = s_trim.get(split..).ok_or_else(bad)?;
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(AuthError::InvalidArgument(format!(
            "--ttl {s:?}: must be positive"
        )));
    }
    n.checked_mul(unit_secs)
        .ok_or_else(|| AuthError::InvalidArgument(format!("--ttl {s:?} is too large")))
}

/// The document-name rule of the WebSocket route (`crate::api::validate_doc_name`): 1-200
/// characters of `A-Z a-z 0-9 . _ ~ : @ -`, not `.` or `..`.
fn is_valid_doc_name(s: &str) -> bool {
    s != "."
        && s != ".."
        && (1..=MAX_DOC_NAME_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_~:@".contains(&b))
}
