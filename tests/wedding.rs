//! The wedding-plan REST API through real HTTP, against live rooms with yrs clients connected:
//! reads equal what clients hold, writes go through the CRDT to every client, invalid input is
//! refused with a JSON error and writes nothing, and access control holds.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use yrs::types::ToJson;
use yrs::{Any, Array, Doc, In, Map, MapPrelim, Transact, TransactionMut, WriteTxn};

const SECRET: &str = "wedding-api-test-secret-0123456789abcdef";

fn s(v: &str) -> In {
    In::Any(Any::from(v))
}

fn n(v: f64) -> In {
    In::Any(Any::from(v))
}

/// `doc.getMap(section).set(id, new Y.Map(fields))` inside `txn`.
fn put(txn: &mut TransactionMut, section: &str, id: &str, fields: Vec<(&str, In)>) {
    let root = txn.get_or_insert_map(section);
    root.insert(txn, id, MapPrelim::from_iter(fields));
}

/// The client's view of one root map, as JSON (what `doc.getMap(name).toJSON()` gives).
fn section(doc: &Doc, name: &str) -> Value {
    let map = doc.get_or_insert_map(name);
    let any = map.to_json(&doc.transact());
    serde_json::to_value(&any).expect("any serialises")
}

fn messages_of(doc: &Doc) -> Value {
    let array = doc.get_or_insert_array("messages");
    let any = array.to_json(&doc.transact());
    serde_json::to_value(&any).expect("any serialises")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(STEP)
        .build()
        .expect("http client")
}

/// Sends a request with an optional raw JSON body and bearer token; status and JSON body.
async fn call(
    method: reqwest::Method,
    url: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, Value) {
    let mut req = http().request(method, url);
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    let text = res.text().await.expect("body read");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{url}: body is not JSON ({e}): {text:?}"));
    (status, json)
}

async fn get(url: &str) -> (u16, Value) {
    call(reqwest::Method::GET, url, None, None).await
}

async fn post(url: &str, body: &str) -> (u16, Value) {
    call(reqwest::Method::POST, url, Some(body), None).await
}

async fn patch(url: &str, body: &str) -> (u16, Value) {
    call(reqwest::Method::PATCH, url, Some(body), None).await
}

/// A plan with a vendor, two slots, a table and a guest, written by a connected client; returns
/// once the server has applied it.
async fn seed(c: &mut Client) {
    c.edit(|txn| {
        put(
            txn,
            "vendors",
            "v1",
            vec![("name", s("DJ")), ("status", s("booked"))],
        );
        put(
            txn,
            "timeline",
            "s1",
            vec![
                ("title", s("Ceremony")),
                ("start", s("2026-06-14T15:00:00+02:00")),
                ("end", s("2026-06-14T16:00:00+02:00")),
            ],
        );
        put(
            txn,
            "tables",
            "t1",
            vec![("name", s("Family")), ("capacity", n(8.0))],
        );
        put(
            txn,
            "guests",
            "g1",
            vec![("name", s("Carla")), ("table", s("t1"))],
        );
        txn.get_or_insert_map("meta")
            .insert(txn, "title", "Ana & Ben");
        txn.get_or_insert_map("timeline")
            .insert(txn, "plain", "not a map");
    })
    .await;
    // One step-1 round trip on the same socket: the server has applied the edit.
    c.sync().await;
}

fn err_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[tokio::test]
async fn plan_json_equals_the_clients_view_and_sections_are_served() {
    let srv = TestServer::start().await;
    let mut c = Client::connect(&srv.url("w-read")).await;
    seed(&mut c).await;
    let (status, plan) = get(&srv.http("/api/weddings/w-read")).await;
    assert_eq!(status, 200, "{plan}");
    for name in [
        "meta", "timeline", "guests", "tables", "vendors", "tasks", "budget",
    ] {
        assert_eq!(plan[name], section(&c.doc, name), "section {name}");
        let (status, one) = get(&srv.http(&format!("/api/weddings/w-read/{name}"))).await;
        assert_eq!(status, 200, "{one}");
        assert_eq!(one, plan[name], "GET /{name}");
    }
    assert_eq!(plan["messages"], json!([]));
    assert_eq!(plan["tables"]["t1"]["capacity"], json!(8));

    // The presence route (static segment) still wins over {section}.
    let (status, presence) = get(&srv.http("/api/weddings/w-read/presence")).await;
    assert_eq!(status, 200, "{presence}");
    assert_eq!(presence["connected"].as_array().map(Vec::len), Some(1));

    let (status, body) = get(&srv.http("/api/weddings/w-read/seating")).await;
    assert_eq!(
        (status, err_code(&body)),
        (404, "unknown_section"),
        "{body}"
    );
    let (status, body) = post(&srv.http("/api/weddings/w-read/conflicts"), "{}").await;
    assert_eq!(
        (status, err_code(&body)),
        (405, "method_not_allowed"),
        "{body}"
    );
    let (status, body) = get(&srv.http("/api/weddings/never-stored")).await;
    assert_eq!((status, err_code(&body)), (404, "not_found"), "{body}");
    let (status, body) = get(&srv.http("/api/weddings/never-stored/conflicts")).await;
    assert_eq!((status, err_code(&body)), (404, "not_found"), "{body}");
    srv.stop().await;
}

#[tokio::test]
async fn posted_message_reaches_live_and_offline_clients_and_pages() {
    let srv = TestServer::start().await;
    let mut live = Client::connect(&srv.url("w-msg")).await;
    seed(&mut live).await;
    // An offline client: synced once, then disconnected.
    let offline_doc = {
        let c = Client::connect(&srv.url("w-msg")).await;
        c.doc.clone()
    };

    let (status, msg) = post(
        &srv.http("/api/weddings/w-msg/messages"),
        r#"{"channel":"vendors","text":"Cake arrives at 14:00"}"#,
    )
    .await;
    assert_eq!(status, 201, "{msg}");
    assert_eq!(msg["channel"], "vendors");
    assert_eq!(msg["author"], "dev", "open mode's principal");
    assert_eq!(msg["role"], "admin");
    assert!(msg["id"].as_str().is_some_and(|id| id.len() > 8), "{msg}");
    assert!(msg["at"].as_i64().is_some_and(|at| at > 1_700_000_000_000));

    // The POST resolved after the update was relayed: the live client gets it.
    assert!(
        live.wait_doc(|d| messages_of(d).as_array().is_some_and(|a| a.len() == 1))
            .await,
        "live client receives the posted message"
    );
    assert_eq!(messages_of(&live.doc)[0], msg);

    // The offline client comes back and has it after its sync.
    let back = Client::connect_with_doc(&srv.url("w-msg"), offline_doc).await;
    assert_eq!(messages_of(&back.doc), json!([msg.clone()]));

    let (status, _) = post(
        &srv.http("/api/weddings/w-msg/messages"),
        r#"{"channel":"general","text":"second"}"#,
    )
    .await;
    assert_eq!(status, 201);
    let (_, third) = post(
        &srv.http("/api/weddings/w-msg/messages"),
        r#"{"channel":"vendors","text":"third"}"#,
    )
    .await;

    let (status, page) = get(&srv.http("/api/weddings/w-msg/messages?channel=vendors")).await;
    assert_eq!(status, 200, "{page}");
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["Cake arrives at 14:00", "third"]);
    let (_, page) = get(&srv.http("/api/weddings/w-msg/messages?limit=1")).await;
    assert_eq!(page["messages"], json!([third]));
    let (status, body) = get(&srv.http("/api/weddings/w-msg/messages?limit=abc")).await;
    assert_eq!((status, err_code(&body)), (400, "invalid_query"), "{body}");
    srv.stop().await;
}

/// Paging forward with `since` = the last `at` seen never skips a message that shares it.
#[tokio::test]
async fn message_pages_do_not_split_equal_timestamps() {
    let srv = TestServer::start().await;
    let mut c = Client::connect(&srv.url("w-page")).await;
    c.edit(|txn| {
        let array = txn.get_or_insert_array("messages");
        for (id, at) in [("a", 1000.0), ("b", 1000.0), ("c", 1000.0), ("d", 2000.0)] {
            array.push_back(
                txn,
                MapPrelim::from_iter(vec![
                    ("id", s(id)),
                    ("channel", s("general")),
                    ("author", s("u1")),
                    ("role", s("planner")),
                    ("text", s(id)),
                    ("at", n(at)),
                ]),
            );
        }
    })
    .await;
    c.sync().await;
    let ids = |page: &Value| -> Vec<String> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, first) = get(&srv.http("/api/weddings/w-page/messages?since=0&limit=2")).await;
    assert_eq!(ids(&first), ["a", "b", "c"]);
    let (_, next) = get(&srv.http("/api/weddings/w-page/messages?since=1000&limit=2")).await;
    assert_eq!(ids(&next), ["d"]);
    srv.stop().await;
}

#[tokio::test]
async fn patches_go_through_the_crdt_and_errors_write_nothing() {
    let srv = TestServer::start().await;
    let mut c = Client::connect(&srv.url("w-patch")).await;
    seed(&mut c).await;
    let base = srv.http("/api/weddings/w-patch");

    let (status, slot) = patch(
        &format!("{base}/timeline/s1"),
        r#"{"start":"2026-06-14T15:30:00+02:00","end":"2026-06-14T16:30:00+02:00","vendor":"v1"}"#,
    )
    .await;
    assert_eq!(status, 200, "{slot}");
    assert_eq!(slot["start"], "2026-06-14T15:30:00+02:00");
    assert!(
        c.wait_doc(|d| section(d, "timeline")["s1"] == slot).await,
        "client receives the slot move"
    );
    let (status, vendor) = patch(
        &format!("{base}/vendors/v1"),
        r#"{"status":"arrived","arrival":"2026-06-14T14:05:00+02:00"}"#,
    )
    .await;
    assert_eq!(status, 200, "{vendor}");
    assert!(
        c.wait_doc(|d| section(d, "vendors")["v1"]["status"] == "arrived")
            .await
    );

    let (_, before) = get(&base).await;
    let sv_before = c.state_vector();
    let refused: &[(&str, &str, &str, u16, &str)] = &[
        (
            "PATCH",
            "/timeline/nope",
            r#"{"title":"x"}"#,
            404,
            "not_found",
        ),
        (
            "PATCH",
            "/vendors/nope",
            r#"{"name":"x"}"#,
            404,
            "not_found",
        ),
        (
            "PATCH",
            "/timeline/plain",
            r#"{"title":"x"}"#,
            409,
            "not_editable",
        ),
        (
            "PATCH",
            "/timeline/s1",
            r#"{"title":"moved","end":"2026-06-14T14:00:00+02:00"}"#,
            400,
            "end_before_start",
        ),
        (
            "PATCH",
            "/timeline/s1",
            r#"{"start":"tomorrow"}"#,
            400,
            "invalid_timestamp",
        ),
        (
            "PATCH",
            "/timeline/s1",
            r#"{"vendor":"ghost"}"#,
            400,
            "unknown_reference",
        ),
        (
            "PATCH",
            "/vendors/v1",
            r#"{"status":"lost"}"#,
            400,
            "invalid_value",
        ),
        // JSON problems, rejected before any edit.
        (
            "PATCH",
            "/timeline/s1",
            r#"{"title": "x""#,
            400,
            "invalid_json",
        ),
        (
            "PATCH",
            "/timeline/s1",
            r#"{"title": 5}"#,
            422,
            "invalid_body",
        ),
        (
            "PATCH",
            "/vendors/v1",
            r#"{"colour":"red"}"#,
            422,
            "invalid_body",
        ),
        (
            "POST",
            "/messages",
            r#"{"channel":"general"}"#,
            422,
            "invalid_body",
        ),
        (
            "POST",
            "/messages",
            r#"{"channel":"g","text":"hi","author":"x"}"#,
            422,
            "invalid_body",
        ),
        (
            "POST",
            "/messages",
            r#"{"channel":"g","text":["hi"]}"#,
            422,
            "invalid_body",
        ),
        ("POST", "/messages", r#"not json"#, 400, "invalid_json"),
        (
            "POST",
            "/messages",
            r#"{"channel":"g","text":"   "}"#,
            400,
            "empty",
        ),
        (
            "POST",
            "/messages",
            r#"{"channel":"a\nb","text":"hi"}"#,
            400,
            "control_characters",
        ),
    ];
    for &(method, path, body, want_status, want_code) in refused {
        let method: reqwest::Method = method.parse().unwrap();
        let (status, err) = call(method, &format!("{base}{path}"), Some(body), None).await;
        assert_eq!(
            (status, err_code(&err)),
            (want_status, want_code),
            "{path} {body}: {err}"
        );
        assert!(err["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // Oversize text (4001 characters) and an oversize body.
    let long = json!({"channel": "g", "text": "x".repeat(4001)}).to_string();
    let (status, err) = post(&format!("{base}/messages"), &long).await;
    assert_eq!((status, err_code(&err)), (400, "too_long"), "{err}");
    let huge = json!({"channel": "g", "text": "x".repeat(100_000)}).to_string();
    let (status, err) = post(&format!("{base}/messages"), &huge).await;
    assert_eq!((status, err_code(&err)), (413, "body_too_large"), "{err}");
    // No content type.
    let res = http()
        .post(format!("{base}/messages"))
        .body(r#"{"channel":"g","text":"hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 415);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err_code(&err), "unsupported_media_type");

    // Nothing was written: the plan is unchanged, and no update reached the client.
    let (_, after) = get(&base).await;
    assert_eq!(after, before);
    c.drain(Duration::from_millis(200)).await;
    assert_eq!(c.state_vector(), sv_before);
    srv.stop().await;
}

/// Two clients seat the same guest at different tables at once: after the merge the guest has
/// one table, the same on both clients and in the REST view.
#[tokio::test]
async fn concurrent_seating_resolves_to_one_table() {
    let srv = TestServer::start().await;
    let mut a = Client::connect(&srv.url("w-seat")).await;
    seed(&mut a).await;
    a.edit(|txn| put(txn, "tables", "t2", vec![("capacity", n(8.0))]))
        .await;
    a.sync().await;
    let mut b = Client::connect(&srv.url("w-seat")).await;
    assert_eq!(section(&b.doc, "tables")["t2"]["capacity"], json!(8));

    let seat = |table: &'static str| {
        move |txn: &mut TransactionMut| {
            let guests = txn.get_or_insert_map("guests");
            let Some(yrs::Out::YMap(g1)) = guests.get(txn, "g1") else {
                panic!("g1 is a Y.Map");
            };
            g1.insert(txn, "table", table);
        }
    };
    // Both edits are made before either client sees the other's.
    a.edit(seat("t1")).await;
    b.edit(seat("t2")).await;
    // Each step-1 round trip returns everything the server has; after a's and b's first round
    // trips the server has both edits, so the second ones bring both clients up to date.
    a.sync().await;
    b.sync().await;
    a.sync().await;
    b.sync().await;

    let table_a = section(&a.doc, "guests")["g1"]["table"].clone();
    let table_b = section(&b.doc, "guests")["g1"]["table"].clone();
    assert!(table_a == "t1" || table_a == "t2", "{table_a}");
    assert_eq!(table_a, table_b, "both clients agree");
    assert_eq!(a.state_vector(), b.state_vector());
    let (_, guests) = get(&srv.http("/api/weddings/w-seat/guests")).await;
    assert_eq!(guests["g1"]["table"], table_a, "REST agrees");
    let (_, report) = get(&srv.http("/api/weddings/w-seat/conflicts")).await;
    let kinds: Vec<&str> = report["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    // Only the deliberately plain timeline item of the seed is reported.
    assert_eq!(kinds, ["schema_violation"], "{report}");
    srv.stop().await;
}

fn token(sub: &str, role: &str, grants: &[&str]) -> String {
    let spec = wedsync::auth::TokenSpec {
        sub: sub.to_owned(),
        name: Some(format!("User {sub}")),
        role: Some(role.to_owned()),
        weddings: grants.iter().map(|g| g.to_string()).collect(),
        ..Default::default()
    };
    let claims = spec.to_claims(wedsync::auth::unix_now()).expect("claims");
    wedsync::auth::mint_hs256(SECRET, &claims).expect("token")
}

#[tokio::test]
async fn tokens_decide_who_reads_and_writes() {
    let srv = TestServer::start_with(|c| c.auth.jwt_secret = Some(SECRET.to_owned())).await;
    let edit = token("pat", "planner", &["w-auth:edit"]);
    let view = token("vic", "guest", &["w-auth:view"]);
    let other = token("olga", "couple", &["w-other:edit"]);
    let mut c = Client::connect(&format!("{}?token={edit}", srv.url("w-auth"))).await;
    seed(&mut c).await;
    let base = srv.http("/api/weddings/w-auth");
    let msg = r#"{"channel":"general","text":"hello"}"#;
    use reqwest::Method;

    let (status, body) = call(Method::GET, &base, None, None).await;
    assert_eq!(status, 401, "missing token: {body}");
    assert!(body["error"]["code"].is_string());
    let (status, body) = call(Method::GET, &base, None, Some("not.a.jwt")).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = call(Method::POST, &format!("{base}/messages"), Some(msg), None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = call(Method::GET, &base, None, Some(&other)).await;
    assert_eq!(status, 403, "{body}");
    // Access is checked before existence: no probing for wedding ids.
    let (status, body) = call(
        Method::GET,
        &srv.http("/api/weddings/w-none"),
        None,
        Some(&view),
    )
    .await;
    assert_eq!(status, 403, "{body}");

    let (status, plan) = call(Method::GET, &base, None, Some(&view)).await;
    assert_eq!(status, 200, "{plan}");
    let (status, body) = call(
        Method::POST,
        &format!("{base}/messages"),
        Some(msg),
        Some(&view),
    )
    .await;
    assert_eq!(status, 403, "view-only write: {body}");
    let (status, body) = call(
        Method::PATCH,
        &format!("{base}/vendors/v1"),
        Some(r#"{"status":"arrived"}"#),
        Some(&view),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (_, after) = call(Method::GET, &base, None, Some(&view)).await;
    assert_eq!(after, plan, "refused writes changed nothing");

    let (status, posted) = call(
        Method::POST,
        &format!("{base}/messages"),
        Some(msg),
        Some(&edit),
    )
    .await;
    assert_eq!(status, 201, "{posted}");
    assert_eq!(
        (posted["author"].as_str(), posted["role"].as_str()),
        (Some("pat"), Some("planner"))
    );
    assert!(c.wait_doc(|d| messages_of(d)[0] == posted).await);
    // The token may also come in the query string.
    let (status, page) = get(&format!("{base}/messages?token={view}")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"], json!([posted]));
    srv.stop().await;
}

/// The server's conflict list in awareness, as a client saw it (`None`: no server state).
fn server_conflicts(c: &Client) -> Option<Value> {
    c.awareness_seen.clients.values().find_map(|e| {
        let v: Value = serde_json::from_str(&e.json).ok()?;
        (v["server"] == json!(true)).then(|| v["conflicts"].clone())
    })
}

/// Receives (applying what arrives) until the server's conflict list satisfies `pred`, or
/// [`STEP`] passed; returns the list last seen.
async fn wait_server_conflicts(c: &mut Client, pred: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let seen = server_conflicts(c);
        if seen.as_ref().is_some_and(&pred) {
            return seen;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if matches!(c.recv(left).await, None | Some(Received::Close(_))) {
            return seen;
        }
    }
}

/// A plan that never had a conflict carries no server awareness state (an empty list would be
/// renewed to every client every 15 s and say nothing); the first conflict publishes the list,
/// and its fix publishes the empty list, so clients clear what they show.
#[tokio::test]
async fn the_server_state_appears_with_the_first_conflict_and_clears_with_the_fix() {
    let srv = TestServer::start().await;
    let url = srv.url("w-quiet");
    let mut editor = Client::connect(&url).await;
    let mut viewer = Client::connect(&url).await;
    editor
        .edit(|txn| {
            put(
                txn,
                "tables",
                "t1",
                vec![("name", s("Family")), ("capacity", n(8.0))],
            );
        })
        .await;
    // Until nothing arrived for 800 ms: well past the 250 ms debounce of the conflict list.
    viewer.drain(Duration::from_millis(800)).await;
    assert_eq!(section(&viewer.doc, "tables")["t1"]["name"], "Family");
    assert_eq!(
        server_conflicts(&viewer),
        None,
        "no conflict, no server state"
    );

    editor
        .edit(|txn| {
            txn.get_or_insert_map("timeline")
                .insert(txn, "plain", "not a map");
        })
        .await;
    let seen =
        wait_server_conflicts(&mut viewer, |c| c.as_array().is_some_and(|a| !a.is_empty())).await;
    let kinds: Vec<&str> = seen
        .as_ref()
        .and_then(Value::as_array)
        .expect("the server published its conflict list")
        .iter()
        .filter_map(|c| c["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["schema_violation"]);

    editor
        .edit(|txn| {
            txn.get_or_insert_map("timeline").remove(txn, "plain");
        })
        .await;
    let cleared = wait_server_conflicts(&mut viewer, |c| *c == json!([])).await;
    assert_eq!(cleared, Some(json!([])), "the fix is published");
    srv.stop().await;
}
