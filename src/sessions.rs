//! Live WebSocket sessions by identity, so a revocation can end them at once.
//!
//! Why it exists: rooms know connections by document; revocation needs them by user (`sub`) or
//! token (`jti`) across every document. Each session registers its principal and its outbox
//! (outgoing frames and close signal) here for as long as it lives; server shutdown closes
//! every session through this map too (see [`Sessions::close_all`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;

use crate::api::ApiError;
use crate::auth::{unix_now, Principal, Revocation, Role};
use crate::protocol::{self, close};
use crate::room::{ConnId, Outbox};
use crate::server::AppState;

/// How long a revocation is kept when the request names no `until`: longer than any token
/// a backend should issue.
pub const DEFAULT_REVOCATION_SECS: u64 = 7 * 24 * 3600;

struct Session {
    principal: Arc<Principal>,
    outbox: Arc<Outbox>,
}

/// Every live session.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<ConnId, Session>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, conn: ConnId, principal: Arc<Principal>, outbox: Arc<Outbox>) {
        self.lock().insert(conn, Session { principal, outbox });
    }

    pub fn remove(&self, conn: ConnId) {
        self.lock().remove(&conn);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends every session whose principal matches: the y-protocols auth "permission denied"
    /// message, then close 4401. Returns how many were ended.
    pub fn end_matching(&self, reason: &str, matches: impl Fn(&Principal) -> bool) -> usize {
        let mut ended = 0;
        for s in self.lock().values() {
            if matches(&s.principal) && !s.outbox.is_closed() {
                let _ = s.outbox.push(protocol::encode_permission_denied(reason));
                s.outbox.close(close::UNAUTHORIZED, reason);
                ended += 1;
            }
        }
        ended
    }

    /// Closes every session with `code` (server shutdown: 1001). Sessions do not each watch
    /// the shutdown token: polling it locks the token's mutex, shared by every connection, on
    /// every wake-up of every session. A session registered after this sweep sees the
    /// cancelled token when it registers (see `ws::connection`).
    pub fn close_all(&self, code: u16, reason: &str) {
        for s in self.lock().values() {
            s.outbox.close(code, reason);
        }
    }
}

/// Body of `POST /api/admin/revoke`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    pub sub: Option<String>,
    pub jti: Option<String>,
    /// Unix seconds until which the revocation is kept (default: now + 7 days).
    pub until: Option<u64>,
}

/// `POST /api/admin/revoke {"sub": ...} | {"jti": ...}`: admin only. Refuses the token(s)
/// from now on and closes the matching live sessions at once.
pub async fn revoke(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<RevokeRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = app.principal(None, &headers)?;
    if app.auth.is_open() {
        return Err(ApiError::bad_request(
            "auth_disabled",
            "the server runs in open development mode: there are no tokens to revoke",
        ));
    }
    if caller.role != Some(Role::Admin) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only admin tokens may revoke",
        ));
    }
    let Json(req) = body.map_err(|e| ApiError::bad_request("invalid_json", e.body_text()))?;
    let target = match (req.sub, req.jti) {
        (Some(sub), None) if !sub.is_empty() => Revocation::Sub(sub),
        (None, Some(jti)) if !jti.is_empty() => Revocation::Jti(jti),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "give exactly one of \"sub\" or \"jti\"",
            ))
        }
    };
    let now = unix_now();
    let until = req.until.unwrap_or(now + DEFAULT_REVOCATION_SECS);
    app.auth
        .revoke(target.clone(), until)
        .map_err(ApiError::from)?;
    let auth = app.auth.clone();
    let closed = app
        .sessions
        .end_matching("permission denied: token revoked", |p| auth.is_revoked(p));
    tracing::info!(?target, closed, "token revoked");
    Ok(Json(
        serde_json::json!({"revoked": target, "until": until, "sessions_closed": closed}),
    ))
}
