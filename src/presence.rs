//! The presence API: who is connected to a wedding, with the identity their token proves.
//!
//! Why it exists: awareness states are written by clients and can claim any name. The room
//! records, per connection, the verified identity (user id, name, role from the token) and the
//! awareness client ids that connection controls (a connection cannot write another
//! connection's ids). This endpoint reports that pairing.

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;

use crate::api::{ApiError, DocName};
use crate::server::AppState;

/// `GET /api/weddings/{id}/presence` (view access): the people connected right now.
pub async fn presence(
    State(app): State<AppState>,
    DocName(id): DocName,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(query.as_deref(), &headers, &id, false)?;
    let people = match app.registry.loaded(&id) {
        Some(room) => room.presence().await?,
        None => Vec::new(),
    };
    Ok(Json(
        serde_json::json!({"wedding": id, "connected": people}),
    ))
}
