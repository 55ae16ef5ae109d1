//! The wedding-plan REST API: the plan as JSON, messages, timeline and vendor edits, conflicts.
//!
//! Why it exists: not every client speaks y-websocket (back-office tools, vendors' phones, a
//! webhook). These handlers read the live document inside its room task
//! ([`RoomHandle::read`](crate::room::RoomHandle::read)) and write through the CRDT
//! ([`RoomHandle::write`](crate::room::RoomHandle::write)), so a REST edit is stored, flushed
//! and relayed to every connected client before the response is sent, and an offline client
//! gets it on its next sync like any other edit. Input is validated before anything is written;
//! every failure is a `{"error": {"code", "message"}}` JSON body (docs/api.md).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use yrs::Transact;

use super::{
    append_message, conflicts, messages, patch_timeline_item, patch_vendor, plan_json,
    section_json, Message, NewMessage, PlanError, Section, TimelinePatch, VendorPatch,
};
use crate::api::{query_param, validate_doc_name, ApiError};
use crate::auth::{Principal, Role};
use crate::room::{RoomError, RoomHandle};
use crate::server::AppState;

/// Largest JSON body accepted by these routes. A message's text is at most 4000 characters,
/// which is at most 48 KiB even with every character escaped as a surrogate pair.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Messages per page when `limit` is not given.
pub const DEFAULT_MESSAGE_LIMIT: usize = 100;
/// Largest `limit` honoured; larger values are capped.
pub const MAX_MESSAGE_LIMIT: usize = 500;
/// How often a request is retried when it met a room that was unloading at that moment (the
/// job never ran, so retrying with a fresh room is safe).
const ROOM_ATTEMPTS: usize = 4;

/// The plan routes, merged into [`crate::server::app`] before the `/{doc}` WebSocket route.
/// `GET /api/weddings/{id}/presence` lives in [`crate::presence`]; static segments such as
/// `presence`, `messages` and `conflicts` take precedence over `{section}`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/weddings/{id}", get(get_plan))
        .route(
            "/api/weddings/{id}/messages",
            get(get_messages).post(post_message),
        )
        .route("/api/weddings/{id}/conflicts", get(get_conflicts))
        .route("/api/weddings/{id}/{section}", get(get_section))
        .route("/api/weddings/{id}/timeline/{item}", patch(patch_timeline))
        .route(
            "/api/weddings/{id}/vendors/{vendor}",
            patch(patch_vendor_item),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// Maps axum's JSON rejections (syntax, wrong types, unknown fields, too large, wrong content
/// type) to our error shape instead of axum's plain text. Handlers take the body as
/// `Result<Json<T>, JsonRejection>` and check it after authorization, so a caller without
/// access learns nothing from the validation of its body.
fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let code = match &rejection {
        JsonRejection::JsonDataError(_) => "invalid_body",
        JsonRejection::JsonSyntaxError(_) => "invalid_json",
        JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        _ => "invalid_body",
    };
    ApiError::new(status, code, rejection.body_text())
}

impl From<PlanError> for ApiError {
    fn from(e: PlanError) -> ApiError {
        let status = match e {
            PlanError::NotFound { .. } => StatusCode::NOT_FOUND,
            PlanError::NotEditable { .. } => StatusCode::CONFLICT,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// Validates the id, authenticates and authorizes (401/403), then checks that the wedding was
/// ever stored (404): in that order, so nobody learns which weddings exist without access.
async fn open(
    app: &AppState,
    id: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    edit: bool,
) -> Result<Principal, ApiError> {
    validate_doc_name(id)?;
    let (principal, _) = app.authorize(query, headers, id, edit)?;
    if !app.document_exists(id).await? {
        return Err(ApiError::not_found(format!(
            "wedding {id:?} does not exist"
        )));
    }
    Ok(principal)
}

/// Runs `op` against the wedding's room, retrying with a fresh room while rooms report
/// [`RoomError::Closed`] (the room was unloading; the job did not run).
async fn with_room<T, F, Fut>(app: &AppState, id: &str, op: F) -> Result<T, ApiError>
where
    F: Fn(RoomHandle) -> Fut,
    Fut: std::future::Future<Output = Result<T, RoomError>>,
{
    let mut last = RoomError::Closed;
    for _ in 0..ROOM_ATTEMPTS {
        match op(app.registry.get(id)).await {
            Err(RoomError::Closed) => last = RoomError::Closed,
            Err(e) => return Err(e.into()),
            Ok(v) => return Ok(v),
        }
    }
    Err(last.into())
}

/// The shared body of the read handlers: view access, then one read job in the room.
async fn read_plan<T, F>(
    app: &AppState,
    id: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    read: F,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: Fn(&yrs::Doc) -> T + Clone + Send + 'static,
{
    open(app, id, query, headers, false).await?;
    with_room(app, id, |room| {
        let read = read.clone();
        async move { room.read(read).await }
    })
    .await
}

/// `GET /api/weddings/{id}` (view): the whole plan, every section as a yjs client's `toJSON()`.
async fn get_plan(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let plan = read_plan(&app, &id, query.as_deref(), &headers, |doc| {
        plan_json(&doc.transact())
    });
    Ok(Json(plan.await?))
}

/// `GET /api/weddings/{id}/{section}` (view): one section. `messages` is served by
/// [`get_messages`] (paged); unknown sections are 404 `unknown_section`.
async fn get_section(
    State(app): State<AppState>,
    Path((id, section)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    validate_doc_name(&id)?;
    let section: Section = section.parse().map_err(|e: super::UnknownSection| {
        ApiError::new(StatusCode::NOT_FOUND, "unknown_section", e.to_string())
    })?;
    let json = read_plan(&app, &id, query.as_deref(), &headers, move |doc| {
        section_json(&doc.transact(), section)
    });
    Ok(Json(json.await?))
}

/// `GET /api/weddings/{id}/conflicts` (view): `{"conflicts": [...]}`.
async fn get_conflicts(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let list = read_plan(&app, &id, query.as_deref(), &headers, |doc| {
        conflicts(&doc.transact())
    });
    Ok(Json(json!({ "conflicts": list.await? })))
}

fn parse_query_number<T: std::str::FromStr>(
    query: Option<&str>,
    key: &'static str,
    what: &str,
) -> Result<Option<T>, ApiError> {
    match query_param(query, key) {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => {
            s.trim().parse().map(Some).map_err(|_| {
                ApiError::bad_request("invalid_query", format!("{key} must be {what}"))
            })
        }
    }
}

/// `GET /api/weddings/{id}/messages?channel=&since=&limit=` (view):
/// `{"messages": [...]}` sorted by (`at`, `id`). Without `since`: the last `limit` messages.
/// With `since` (ms): the first `limit` messages with `at > since`, plus any further messages
/// sharing the last one's `at`, so paging on with `since` = the last `at` never skips one.
async fn get_messages(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    validate_doc_name(&id)?;
    let q = query.as_deref();
    let channel = query_param(q, "channel").filter(|c| !c.is_empty());
    let since: Option<i64> = parse_query_number(q, "since", "an integer (milliseconds)")?;
    let limit: usize =
        parse_query_number(q, "limit", "a positive integer")?.unwrap_or(DEFAULT_MESSAGE_LIMIT);
    if limit == 0 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be a positive integer",
        ));
    }
    let limit = limit.min(MAX_MESSAGE_LIMIT);
    open(&app, &id, q, &headers, false).await?;
    let page = with_room(&app, &id, |room| {
        let channel = channel.clone();
        async move {
            room.read(move |doc| {
                let txn = doc.transact();
                match since {
                    None => messages(&txn, channel.as_deref(), None, limit),
                    Some(since) => {
                        let mut all = messages(&txn, channel.as_deref(), Some(since), usize::MAX);
                        if all.len() > limit {
                            let last_at = all[limit - 1].at;
                            let end = all[limit..]
                                .iter()
                                .position(|m| m.at != last_at)
                                .map_or(all.len(), |n| limit + n);
                            all.truncate(end);
                        }
                        all
                    }
                }
            })
            .await
        }
    })
    .await?;
    Ok(Json(json!({ "messages": page })))
}

/// Body of `POST /api/weddings/{id}/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostMessage {
    channel: String,
    text: String,
}

/// The role written on a message: the token's, `admin` in open development mode (everyone may
/// do everything), `guest` for a token without a role (the least privileged).
fn message_role(principal: &Principal) -> &'static str {
    match principal.role {
        Some(role) => role.as_str(),
        None if principal.open_mode => Role::Admin.as_str(),
        None => Role::Guest.as_str(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `POST /api/weddings/{id}/messages` (edit) `{"channel", "text"}`: appends a message through
/// the CRDT; 201 with the stored message once it is durable and relayed.
async fn post_message(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Json<PostMessage>, JsonRejection>,
) -> Result<Response, ApiError> {
    let principal = open(&app, &id, query.as_deref(), &headers, true).await?;
    let Json(body) = body.map_err(json_rejection)?;
    let new = NewMessage {
        channel: body.channel,
        text: body.text,
        author: principal.user.clone(),
        role: message_role(&principal).to_owned(),
        at_ms: now_ms(),
        id: format!("m-{:032x}", rand::random::<u128>()),
    };
    let stored: Message = with_room(&app, &id, |room| {
        let new = new.clone();
        async move { room.write(move |txn| append_message(txn, new)).await }
    })
    .await??;
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

/// `PATCH /api/weddings/{id}/timeline/{item}` (edit): a [`TimelinePatch`]; 200 with the slot.
async fn patch_timeline(
    State(app): State<AppState>,
    Path((id, item)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Json<TimelinePatch>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    apply_patch(
        &app,
        &id,
        &item,
        query.as_deref(),
        &headers,
        body,
        patch_timeline_item,
    )
    .await
}

/// `PATCH /api/weddings/{id}/vendors/{vendor}` (edit): a [`VendorPatch`]; 200 with the vendor.
async fn patch_vendor_item(
    State(app): State<AppState>,
    Path((id, vendor)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Json<VendorPatch>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    apply_patch(
        &app,
        &id,
        &vendor,
        query.as_deref(),
        &headers,
        body,
        patch_vendor,
    )
    .await
}

/// The shared body of the PATCH handlers: edit access, a valid JSON patch, then one CRDT edit
/// in the room (stored and relayed before the response).
async fn apply_patch<P>(
    app: &AppState,
    id: &str,
    item: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Result<Json<P>, JsonRejection>,
    edit: fn(&mut yrs::TransactionMut<'_>, &str, &P) -> Result<Value, PlanError>,
) -> Result<Json<Value>, ApiError>
where
    P: Clone + Send + 'static,
{
    open(app, id, query, headers, true).await?;
    let Json(patch) = body.map_err(json_rejection)?;
    let json = with_room(app, id, |room| {
        let (item, patch) = (item.to_owned(), patch.clone());
        async move { room.write(move |txn| edit(txn, &item, &patch)).await }
    })
    .await??;
    Ok(Json(json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_errors_map_to_statuses() {
        let nf = PlanError::NotFound {
            section: Section::Timeline,
            id: "s".into(),
        };
        assert_eq!(ApiError::from(nf).status, StatusCode::NOT_FOUND);
        let ne = PlanError::NotEditable {
            section: Section::Vendors,
            id: "v".into(),
        };
        assert_eq!(ApiError::from(ne).status, StatusCode::CONFLICT);
        let e = ApiError::from(PlanError::Empty { field: "text" });
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "empty"));
    }
}
