//! [`AuthError`]: every way authentication or authorization can fail, with the HTTP status and
//! the stable machine-readable code clients see.
//!
//! Why a separate file: the same error travels three ways (an HTTP error body, a refused
//! WebSocket upgrade, a CLI message), so its status, code and JSON shape are decided once here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Why a request was not authenticated or not authorized.
///
/// Messages are written for the developer integrating a client; they never contain the token,
/// the secret or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in `?token=` nor in `Authorization: Bearer`.
    #[error("no token: send ?token=JWT or an `Authorization: Bearer JWT` header")]
    MissingToken,
    /// Malformed, wrong signature, wrong algorithm, wrong `iss`/`aud`, missing claims, ...
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// `exp` (plus leeway) has passed.
    #[error("token expired at {exp} (Unix seconds)")]
    Expired { exp: u64 },
    /// `nbf` (minus leeway) is still in the future.
    #[error("token not valid before {nbf} (Unix seconds)")]
    NotYetValid { nbf: u64 },
    /// The token's `jti`, or its `sub` (for tokens issued before the revocation), was revoked.
    #[error("token revoked")]
    Revoked,
    /// A valid token without the access this request needs.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Bad input to the token builder (`wedsync token`), e.g. `--wedding w1:owner`.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The server's auth configuration is unusable (both a secret and a key, unreadable key,
    /// unsupported key type, ...). Raised at start-up, so a 500 should never reach a client.
    #[error("authentication is misconfigured: {0}")]
    Config(String),
    /// The revocation list could not be read from or written to the store.
    #[error("revocation store error: {0}")]
    Store(String),
}

impl AuthError {
    /// The HTTP status for this error: 401 when the caller is not authenticated, 403 when
    /// authenticated without access, 400 for bad builder input, 500 for server-side problems.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::MissingToken
            | AuthError::InvalidToken(_)
            | AuthError::Expired { .. }
            | AuthError::NotYetValid { .. }
            | AuthError::Revoked => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
            AuthError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            AuthError::Config(_) | AuthError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable snake_case code of the JSON error body. Clients may match on it.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::Expired { .. } => "token_expired",
            AuthError::NotYetValid { .. } => "token_not_yet_valid",
            AuthError::Revoked => "token_revoked",
            AuthError::Forbidden(_) => "forbidden",
            AuthError::InvalidArgument(_) => "invalid_argument",
            AuthError::Config(_) => "auth_misconfigured",
            AuthError::Store(_) => "revocation_store_error",
        }
    }

    /// Whether this error means "not authenticated" (401). The WebSocket side closes a live
    /// session with 4401 for these when a token expires or is revoked.
    pub fn is_unauthenticated(&self) -> bool {
        self.status() == StatusCode::UNAUTHORIZED
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "authentication failure on the server side");
        }
        // Server-side details stay in the log; the client learns only that it is our fault.
        let message = if status.is_server_error() {
            "authentication is unavailable on this server".to_owned()
        } else {
            self.to_string()
        };
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": message }
        });
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750: tell the client which scheme to use.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
