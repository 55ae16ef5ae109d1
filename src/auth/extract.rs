//! Finding the token in a request: `?token=JWT` or `Authorization: Bearer JWT`.
//!
//! Why it exists: browsers cannot set headers on a WebSocket, so y-websocket clients pass the
//! token as a query parameter (`WebsocketProvider`'s `params` option, percent-encoded by
//! `encodeURIComponent`), while REST clients use the header. Both paths go through one function
//! with one set of rules, so the WebSocket upgrade and the HTTP handlers cannot disagree.

use axum::http::{header::AUTHORIZATION, HeaderMap};
use percent_encoding::percent_decode_str;

use super::AuthError;

/// Longest token accepted, in bytes. Real tokens are well under 4 KiB; this bounds the work an
/// anonymous client can make us do before the signature check.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The token of a request, if any.
///
/// - `query`: the raw query string (without `?`); `token=` is percent-decoded (a `+` stays a
///   `+`, which no valid JWT contains).
/// - `headers`: `Authorization: Bearer <token>`, scheme case-insensitive.
///
/// `Ok(None)` when neither is present (or both are empty). Errors (401): another auth scheme,
/// a header that is not visible ASCII, bad percent-encoding, a token over [`MAX_TOKEN_LEN`],
/// several different tokens.
pub fn token_from_parts(
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Option<String>, AuthError> {
    let from_header = bearer(headers)?;
    let from_query = match query {
        Some(q) => query_token(q)?,
        None => None,
    };
    let token = match (from_header, from_query) {
        (Some(h), Some(q)) if h != q => {
            return Err(AuthError::InvalidToken(
                "different tokens in the query string and the Authorization header".into(),
            ))
        }
        (Some(t), _) | (None, Some(t)) => Some(t),
        (None, None) => None,
    };
    if let Some(t) = &token {
        if t.len() > MAX_TOKEN_LEN {
            return Err(AuthError::InvalidToken(format!(
                "token is longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
    }
    Ok(token)
}

fn bearer(headers: &HeaderMap) -> Result<Option<String>, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::InvalidToken(
            "more than one Authorization header".into(),
        ));
    }
    let value = value.to_str().map_err(|_| {
        AuthError::InvalidToken("the Authorization header is not visible ASCII".into())
    })?;
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::InvalidToken(
            "unsupported Authorization scheme; use `Authorization: Bearer <token>`".into(),
        ));
    }
    let token = rest.trim();
    Ok((!token.is_empty()).then(|| token.to_owned()))
}

fn query_token(query: &str) -> Result<Option<String>, AuthError> {
    let mut found: Option<String> = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "token" {
            continue;
        }
        if value.len() > 3 * MAX_TOKEN_LEN {
            return Err(AuthError::InvalidToken(format!(
                "token is longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let value = percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| AuthError::InvalidToken("the token parameter is not valid UTF-8".into()))?
            .trim()
            .to_owned();
        if value.is_empty() {
            continue;
        }
        match &found {
            Some(previous) if *previous != value => {
                return Err(AuthError::InvalidToken(
                    "several different token parameters in the query string".into(),
                ))
            }
            _ => found = Some(value),
        }
    }
    Ok(found)
}
