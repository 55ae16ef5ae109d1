//! HTTP JSON errors, document-name validation, and the document HTTP API.
//!
//! Why it exists: every HTTP failure answers with the same JSON shape
//! (`{"error": {"code", "message"}}`) and a 4xx/5xx status, and every route that names a
//! document validates the name the same way before anything is loaded.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use yrs::updates::decoder::Decode;
use yrs::StateVector;

use crate::room::RoomError;
use crate::server::AppState;

/// An HTTP error with a stable machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750 (and docs/auth.md): tell the client which scheme to use.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> ApiError {
        let status = e.status();
        let message = if status.is_server_error() {
            // details go to the log, not to the client
            tracing::error!(error = %e, "authentication failure");
            "internal authentication error".to_string()
        } else {
            e.to_string()
        };
        ApiError::new(status, e.code(), message)
    }
}

impl From<RoomError> for ApiError {
    fn from(e: RoomError) -> ApiError {
        match e {
            RoomError::InvalidUpdate(m) => ApiError::bad_request("invalid_update", m),
            RoomError::QuotaExceeded(m) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "document_too_large", m)
            }
            RoomError::NotStored(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_stored", m)
            }
            RoomError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "document_unavailable", m)
            }
            RoomError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "room_closed",
                "the document is unloading or the server is shutting down; retry",
            ),
        }
    }
}

/// Longest accepted document name.
pub const MAX_DOC_NAME: usize = 200;

/// Document names: 1-200 characters of `A-Z a-z 0-9 . _ ~ : @ -`, except `.` and `..`:
/// those are URL dot-segments that browsers and HTTP clients normalize away (`ws://h/..` is
/// `ws://h/`), so no client could address such a document consistently.
pub fn validate_doc_name(name: &str) -> Result<(), ApiError> {
    let ok = name != "."
        && name != ".."
        && !name.is_empty()
        && name.len() <= MAX_DOC_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~:@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid_doc_name())
    }
}

/// The `{doc}` (or `{id}`) path segment of a route: percent-decoded and validated with
/// [`validate_doc_name`]. A segment that does not decode (bad percent-encoding, invalid UTF-8)
/// is refused like any other invalid name: 400 with the JSON error body, not axum's plain-text
/// rejection.
pub struct DocName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for DocName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Ok(Path(name)) = Path::<String>::from_request_parts(parts, state).await else {
            return Err(invalid_doc_name());
        };
        validate_doc_name(&name)?;
        Ok(DocName(name))
    }
}

fn invalid_doc_name() -> ApiError {
    ApiError::bad_request(
        "invalid_document_name",
        "document names are 1-200 characters of A-Z a-z 0-9 . _ ~ : @ - (not . or ..)",
    )
}

/// One query parameter, percent-decoded.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Checks a request body as a v1 update ([`crate::decode`]); 400 `invalid_update` if it is
/// not one or takes longer than `decode_timeout` to check.
pub async fn decode_update(
    decoder: &crate::decode::Decoder,
    bytes: Vec<u8>,
) -> Result<(Vec<u8>, yrs::Update), ApiError> {
    use crate::decode::DecodeError;
    decoder.decode(bytes).await.map_err(|e| match e {
        DecodeError::Invalid { reason, .. } => ApiError::bad_request(
            "invalid_update",
            format!("body is not a Yjs v1 update: {reason}"),
        ),
        e @ DecodeError::TimedOut(_) => ApiError::bad_request("invalid_update", e.to_string()),
        DecodeError::Failed(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
    })
}

/// `GET /api/docs/{doc}/update[?sv=BASE64]`: the document as one v1 update.
pub async fn get_doc_update(
    State(app): State<AppState>,
    DocName(doc): DocName,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    app.authorize(query.as_deref(), &headers, &doc, false)?;
    let sv = match query_param(query.as_deref(), "sv") {
        None => StateVector::default(),
        Some(b64) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64.trim()))
                .map_err(|_| ApiError::bad_request("invalid_state_vector", "sv is not base64"))?;
            crate::protocol::check_declared_count(&raw, 2).map_err(|e| {
                ApiError::bad_request("invalid_state_vector", format!("sv does not decode: {e}"))
            })?;
            StateVector::decode_v1(&raw).map_err(|e| {
                ApiError::bad_request("invalid_state_vector", format!("sv does not decode: {e}"))
            })?
        }
    };
    if !app.document_exists(&doc).await? {
        return Err(ApiError::not_found(format!(
            "document {doc:?} does not exist"
        )));
    }
    let update = app.registry.get(&doc).get_update(sv).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], update).into_response())
}

/// `POST /api/docs/{doc}/update`: apply a binary v1 update (edit access). Answers 204 once the
/// update is durable and has been relayed to connected clients.
pub async fn post_doc_update(
    State(app): State<AppState>,
    DocName(doc): DocName,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    app.authorize(query.as_deref(), &headers, &doc, true)?;
    if body.is_empty() {
        return Err(ApiError::bad_request("invalid_update", "empty body"));
    }
    // A room that is unloading at this moment answers `Closed` without applying anything:
    // retry on the fresh room the registry starts.
    let mut attempts = 0;
    loop {
        let (raw, decoded) = decode_update(&app.decoder, body.to_vec()).await?;
        match app.registry.get(&doc).apply_update(raw, decoded).await {
            Ok(()) => return Ok(StatusCode::NO_CONTENT),
            Err(RoomError::Closed) if attempts < 4 && !app.shutdown.is_cancelled() => attempts += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_names() {
        for ok in [
            "a",
            "...",
            ".a",
            "wedding-2026_06.x~y:z@w",
            &"a".repeat(200),
        ] {
            assert!(validate_doc_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "é",
            "a%2Fb",
            &"a".repeat(201),
            "..\\x",
        ] {
            assert!(validate_doc_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_params_are_percent_decoded() {
        assert_eq!(
            query_param(Some("a=1&token=x%2By"), "token").as_deref(),
            Some("x+y")
        );
        assert_eq!(query_param(Some("ack=1"), "token"), None);
        assert_eq!(query_param(None, "token"), None);
    }
}
