//! [`Authenticator`]: verifies tokens against exactly one configured algorithm and key.
//!
//! Why it exists: JWT verification has well-known traps (`alg: none`, HS256 signed with an RSA
//! public key, tokens without `exp`, a clock nobody can test). The rules here:
//! - One key, one algorithm, fixed at start-up. The token's header cannot choose.
//! - `sub` and `exp` are required; `exp`/`nbf` are checked here against a `now` the caller
//!   passes in (jsonwebtoken's own clock checks are off), with an explicit leeway.
//! - `iss` / `aud`, when configured, must be present and match.
//! - Revoked tokens are refused (see `revocation.rs`).

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::extract::MAX_TOKEN_LEN;
use super::revocation::RevocationList;
use super::{unix_now, AuthError, Claims, Principal, Revocation};

/// Default clock leeway for `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;

/// Largest leeway we accept: more than this is a misconfiguration that would keep expired
/// tokens alive.
const MAX_LEEWAY_SECS: u64 = 300;

/// DER encoding of the OID of the NIST P-256 curve (1.2.840.10045.3.1.7), the only curve ES256
/// uses. Found inside an EC `SubjectPublicKeyInfo`.
const P256_OID_DER: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The signature algorithms the server can be configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// HMAC-SHA256 with a shared secret.
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256 (public key PEM).
    RS256,
    /// ECDSA P-256 with SHA-256 (public key PEM).
    ES256,
    /// Ed25519 (public key PEM).
    EdDSA,
}

impl KeyAlgorithm {
    fn jwt(self) -> Algorithm {
        match self {
            KeyAlgorithm::HS256 => Algorithm::HS256,
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        }
    }

    /// The JOSE name (`"HS256"`, `"RS256"`, `"ES256"`, `"EdDSA"`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::HS256 => "HS256",
            KeyAlgorithm::RS256 => "RS256",
            KeyAlgorithm::ES256 => "ES256",
            KeyAlgorithm::EdDSA => "EdDSA",
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = AuthError;

    /// Case-insensitive: `rs256` and `RS256` both work in a config file.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            KeyAlgorithm::HS256,
            KeyAlgorithm::RS256,
            KeyAlgorithm::ES256,
            KeyAlgorithm::EdDSA,
        ]
        .into_iter()
        .find(|a| a.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            AuthError::Config(format!(
                "unsupported JWT algorithm {s:?}: expected HS256, RS256, ES256 or EdDSA"
            ))
        })
    }
}

/// How tokens are verified. Exactly one of `hs256_secret` and `public_key_pem` must be set; with
/// neither, use [`Authenticator::open`] (development mode) instead.
#[derive(Clone)]
pub struct AuthConfig {
    /// Shared HS256 secret (`--jwt-secret`).
    pub hs256_secret: Option<String>,
    /// Contents of a public key PEM file (`--jwt-public-key`): `PUBLIC KEY` (SPKI) for RSA,
    /// P-256 or Ed25519, or `RSA PUBLIC KEY` (PKCS#1).
    pub public_key_pem: Option<Vec<u8>>,
    /// The algorithm; when `None` it is HS256 for a secret and detected from the PEM's key type
    /// otherwise. When set it must agree with the key.
    pub algorithm: Option<KeyAlgorithm>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required audience (the token's `aud` must be or contain it), when set.
    pub audience: Option<String>,
    /// Clock leeway for `exp` and `nbf`, in seconds (at most 300).
    pub leeway_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hs256_secret: None,
            public_key_pem: None,
            algorithm: None,
            issuer: None,
            audience: None,
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }
}

/// Never prints the secret.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "public_key_pem",
                &self.public_key_pem.as_ref().map(Vec::len),
            )
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

struct Verifier {
    algorithm: KeyAlgorithm,
    key: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

/// Verifies tokens and holds the revocation list. Share it as `Arc<Authenticator>`; every method
/// takes `&self`.
pub struct Authenticator {
    /// `None` in open development mode.
    verifier: Option<Verifier>,
    revocations: RevocationList,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Authenticator");
        match &self.verifier {
            None => d.field("mode", &"open development mode"),
            Some(v) => d
                .field("algorithm", &v.algorithm)
                .field("issuer", &v.issuer)
                .field("audience", &v.audience)
                .field("leeway", &v.leeway),
        };
        d.field("revocations", &self.revocations.len()).finish()
    }
}

impl Authenticator {
    /// Build a verifier from the configuration, or explain what is wrong with it.
    pub fn new(config: &AuthConfig) -> Result<Self, AuthError> {
        if config.leeway_secs > MAX_LEEWAY_SECS {
            return Err(AuthError::Config(format!(
                "leeway of {} s is too large (at most {MAX_LEEWAY_SECS} s)",
                config.leeway_secs
            )));
        }
        let (algorithm, key) = match (&config.hs256_secret, &config.public_key_pem) {
            (Some(_), Some(_)) => {
                return Err(AuthError::Config(
                    "both a JWT secret and a JWT public key are configured; set only one".into(),
                ))
            }
            (None, None) => {
                return Err(AuthError::Config(
                    "no JWT secret or public key configured (open development mode is \
                     Authenticator::open)"
                        .into(),
                ))
            }
            (Some(secret), None) => hs256_key(secret, config.algorithm)?,
            (None, Some(pem)) => public_key(pem, config.algorithm)?,
        };
        let mut validation = Validation::new(algorithm.jwt());
        // exp/nbf are checked in `verify` against the caller's clock; iss/aud there too, so one
        // place decides and tests can pin the time.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.required_spec_claims = HashSet::from(["exp".to_owned(), "sub".to_owned()]);
        for (what, value) in [("issuer", &config.issuer), ("audience", &config.audience)] {
            if value.as_deref() == Some("") {
                return Err(AuthError::Config(format!("the required {what} is empty")));
            }
        }
        Ok(Authenticator {
            verifier: Some(Verifier {
                algorithm,
                key,
                validation,
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                leeway: config.leeway_secs,
            }),
            revocations: RevocationList::default(),
        })
    }

    /// Open development mode: no verification, every caller is [`Principal::open_mode`].
    /// The server must log a warning and stay on loopback (see ARCHITECTURE.md).
    pub fn open() -> Self {
        Authenticator {
            verifier: None,
            revocations: RevocationList::default(),
        }
    }

    /// True in open development mode.
    pub fn is_open(&self) -> bool {
        self.verifier.is_none()
    }

    /// The configured algorithm (`None` in open mode).
    pub fn algorithm(&self) -> Option<KeyAlgorithm> {
        self.verifier.as_ref().map(|v| v.algorithm)
    }

    /// Load the revocations stored in `tree` (pruning lapsed ones) and write new ones through.
    pub fn with_revocation_tree(self, tree: sled::Tree) -> Result<Self, AuthError> {
        self.with_revocation_tree_at(tree, unix_now())
    }

    pub(crate) fn with_revocation_tree_at(
        mut self,
        tree: sled::Tree,
        now_unix: u64,
    ) -> Result<Self, AuthError> {
        self.revocations.attach(tree, now_unix)?;
        Ok(self)
    }

    /// The whole check for a request: open mode lets everyone in, otherwise a token is needed
    /// and must verify.
    pub fn authenticate(&self, token: Option<&str>, now_unix: u64) -> Result<Principal, AuthError> {
        if self.is_open() {
            return Ok(Principal::open_mode());
        }
        match token {
            Some(t) => self.verify(t, now_unix),
            None => Err(AuthError::MissingToken),
        }
    }

    /// Verify `token` at time `now_unix` (Unix seconds). In open mode every input yields
    /// [`Principal::open_mode`].
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Principal, AuthError> {
        let Some(v) = &self.verifier else {
            return Ok(Principal::open_mode());
        };
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::InvalidToken(format!(
                "token is longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &v.key, &v.validation)
            .map_err(|e| decode_error(e, v.algorithm))?
            .claims;

        if claims.sub.is_empty() {
            return Err(AuthError::InvalidToken("the `sub` claim is empty".into()));
        }
        if now_unix >= claims.exp.saturating_add(v.leeway) {
            return Err(AuthError::Expired { exp: claims.exp });
        }
        if let Some(nbf) = claims.nbf {
            if now_unix.saturating_add(v.leeway) < nbf {
                return Err(AuthError::NotYetValid { nbf });
            }
        }
        if let Some(issuer) = &v.issuer {
            match &claims.iss {
                Some(iss) if iss == issuer => {}
                Some(iss) => {
                    return Err(AuthError::InvalidToken(format!(
                        "issuer {iss:?} is not accepted"
                    )))
                }
                None => {
                    return Err(AuthError::InvalidToken(
                        "the `iss` claim is required by this server".into(),
                    ))
                }
            }
        }
        if let Some(audience) = &v.audience {
            match &claims.aud {
                Some(aud) if aud.contains(audience) => {}
                Some(_) => {
                    return Err(AuthError::InvalidToken(
                        "the token is meant for another audience".into(),
                    ))
                }
                None => {
                    return Err(AuthError::InvalidToken(
                        "the `aud` claim is required by this server".into(),
                    ))
                }
            }
        }
        if self
            .revocations
            .hits(&claims.sub, claims.jti.as_deref(), claims.iat, now_unix)
        {
            return Err(AuthError::Revoked);
        }
        Ok(Principal::from_claims(claims))
    }

    /// The first Unix second at which `verify` would refuse this principal's token for expiry
    /// (`exp + leeway`); `None` in open mode. The WebSocket side ends the session then.
    pub fn session_deadline(&self, p: &Principal) -> Option<u64> {
        let leeway = self.verifier.as_ref().map_or(0, |v| v.leeway);
        p.expires_at.map(|exp| exp.saturating_add(leeway))
    }

    /// Whether a live session of `p` must end at `now_unix` because its token expired
    /// (consistent with `verify`).
    pub fn is_expired(&self, p: &Principal, now_unix: u64) -> bool {
        self.session_deadline(p)
            .is_some_and(|deadline| now_unix >= deadline)
    }

    /// Revoke now (system clock) until `until_unix`. See `revocation.rs` for the semantics of
    /// `Sub` (tokens issued at or before now) and `Jti`.
    pub fn revoke(&self, target: Revocation, until_unix: u64) -> Result<(), AuthError> {
        self.revoke_at(target, until_unix, unix_now())
    }

    /// [`Authenticator::revoke`] with an explicit clock.
    pub fn revoke_at(
        &self,
        target: Revocation,
        until_unix: u64,
        now_unix: u64,
    ) -> Result<(), AuthError> {
        tracing::info!(?target, until_unix, "token revocation");
        self.revocations.add(target, until_unix, now_unix)
    }

    /// Whether a live session of `p` is hit by a revocation (system clock). The server calls it
    /// for every session after [`Authenticator::revoke`] and closes those that are.
    pub fn is_revoked(&self, p: &Principal) -> bool {
        self.is_revoked_at(p, unix_now())
    }

    /// [`Authenticator::is_revoked`] with an explicit clock.
    pub fn is_revoked_at(&self, p: &Principal, now_unix: u64) -> bool {
        !p.open_mode
            && self
                .revocations
                .hits(&p.user, p.jti.as_deref(), p.issued_at, now_unix)
    }
}

fn hs256_key(
    secret: &str,
    algorithm: Option<KeyAlgorithm>,
) -> Result<(KeyAlgorithm, DecodingKey), AuthError> {
    if let Some(a) = algorithm.filter(|a| *a != KeyAlgorithm::HS256) {
        return Err(AuthError::Config(format!(
            "a shared secret is configured but the algorithm is {a}; a secret means HS256"
        )));
    }
    if secret.is_empty() {
        return Err(AuthError::Config("the JWT secret is empty".into()));
    }
    if secret.len() < 32 {
        tracing::warn!(
            "the JWT secret is shorter than 32 bytes; use a long random secret in production"
        );
    }
    Ok((
        KeyAlgorithm::HS256,
        DecodingKey::from_secret(secret.as_bytes()),
    ))
}

/// Parse a public key PEM and work out (or check) its algorithm.
fn public_key(
    pem: &[u8],
    algorithm: Option<KeyAlgorithm>,
) -> Result<(KeyAlgorithm, DecodingKey), AuthError> {
    let (label, der) = pem_body(pem)?;
    if label.contains("PRIVATE") {
        return Err(AuthError::Config(format!(
            "the JWT key file holds a private key ({label}); configure the public key \
             (`openssl pkey -in private.pem -pubout`) and keep the private key off this server"
        )));
    }
    if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
        return Err(AuthError::Config(format!(
            "the JWT key file holds a {label:?}; expected a PUBLIC KEY"
        )));
    }
    let detected = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        (KeyAlgorithm::RS256, key)
    } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        if !der.windows(P256_OID_DER.len()).any(|w| w == P256_OID_DER) {
            return Err(AuthError::Config(
                "the JWT key is an EC key on a curve other than P-256; only ES256 is supported"
                    .into(),
            ));
        }
        (KeyAlgorithm::ES256, key)
    } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        (KeyAlgorithm::EdDSA, key)
    } else {
        return Err(AuthError::Config(
            "the JWT public key is not an RSA, P-256 or Ed25519 public key".into(),
        ));
    };
    match algorithm {
        Some(a) if a != detected.0 => Err(AuthError::Config(format!(
            "the configured algorithm is {a} but the public key is a {} key",
            detected.0
        ))),
        _ => Ok(detected),
    }
}

/// The label and DER contents of the first PEM block, with errors an operator can act on.
fn pem_body(pem: &[u8]) -> Result<(String, Vec<u8>), AuthError> {
    let not_pem = || AuthError::Config("the JWT public key file is not a PEM file".into());
    let text = std::str::from_utf8(pem).map_err(|_| not_pem())?;
    let mut lines = text.lines().map(str::trim);
    let label = lines
        .by_ref()
        .find_map(|l| {
            l.strip_prefix("-----BEGIN ")
                .and_then(|rest| rest.strip_suffix("-----"))
        })
        .ok_or_else(not_pem)?
        .to_owned();
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    let mut ended = false;
    for line in lines {
        if line == end {
            ended = true;
            break;
        }
        body.push_str(line);
    }
    if !ended {
        return Err(not_pem());
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| AuthError::Config("the JWT public key PEM has invalid base64".into()))?;
    Ok((label, der))
}

/// Map jsonwebtoken's errors to ours, with a message that helps without leaking anything.
fn decode_error(e: jsonwebtoken::errors::Error, expected: KeyAlgorithm) -> AuthError {
    let message = match e.kind() {
        ErrorKind::InvalidSignature => "the signature does not match".to_owned(),
        ErrorKind::InvalidAlgorithm => {
            format!("the token's algorithm is not accepted; this server accepts only {expected}")
        }
        ErrorKind::MissingRequiredClaim(claim) => format!("the `{claim}` claim is required"),
        ErrorKind::InvalidClaimFormat(claim) => format!("the `{claim}` claim is malformed"),
        ErrorKind::Json(err) => format!("malformed token header or claims: {err}"),
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => {
            "malformed token (expected three base64url parts separated by dots)".to_owned()
        }
        other => format!("token rejected: {other:?}"),
    };
    AuthError::InvalidToken(message)
}
