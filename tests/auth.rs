//! Authentication, authorization, revocation and presence through the real interface: JWTs
//! minted here, real WebSocket upgrades (raw HTTP/1.1 and tokio-tungstenite), real HTTP
//! (reqwest), servers started in-process on port 0.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::*;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use wedsync::auth::{mint_hs256, unix_now, Access, Claims, Role};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact};

const SECRET: &str = "wedsync-auth-tests-secret-0123456789abcdef";
const RS_PRIVATE: &[u8] = include_bytes!("keys/test-only-rs256-private.pem");
const RS_PUBLIC: &[u8] = include_bytes!("keys/test-only-rs256-public.pem");
const ES_PRIVATE: &[u8] = include_bytes!("keys/test-only-es256-private.pem");
/// A window in which something that must not arrive gets its chance to arrive.
const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// Tokens

fn claims(sub: &str, weddings: &[(&str, Access)]) -> Claims {
    let now = unix_now();
    Claims {
        sub: sub.to_owned(),
        exp: now + 3600,
        nbf: None,
        iat: Some(now),
        jti: Some(format!("{sub}-{:016x}", rand::random::<u64>())),
        name: None,
        role: None,
        weddings: weddings.iter().map(|(w, a)| (w.to_string(), *a)).collect(),
        iss: None,
        aud: None,
    }
}

fn mint(c: &Claims) -> String {
    mint_hs256(SECRET, c).expect("mint")
}

fn edit_token(sub: &str, wedding: &str) -> String {
    mint(&claims(sub, &[(wedding, Access::Edit)]))
}

fn view_token(sub: &str, wedding: &str) -> String {
    mint(&claims(sub, &[(wedding, Access::View)]))
}

fn admin_token() -> String {
    let mut c = claims("root", &[]);
    c.role = Some(Role::Admin);
    mint(&c)
}

/// HS256 over arbitrary JSON claims (for shapes `Claims` cannot express).
fn hs_json(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("encode")
}

fn rs_json(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(RS_PRIVATE).expect("rsa key"),
    )
    .expect("encode")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `header.payload.signature` with the given parts (JSON header/payload, raw signature text).
fn hand_built(header: &Value, payload: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    )
}

fn valid_json_claims(sub: &str, wedding: &str, access: &str) -> Value {
    let now = unix_now();
    json!({"sub": sub, "iat": now, "exp": now + 3600, "weddings": {wedding: access}})
}

fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

async fn hs_server() -> TestServer {
    TestServer::start_with(|c| c.auth.jwt_secret = Some(SECRET.into())).await
}

fn ws_url(srv: &TestServer, doc: &str, token: &str) -> String {
    format!("{}?token={token}", srv.url(doc))
}

// ---------------------------------------------------------------------------------------------
// Raw upgrade requests: exact bytes on the wire, so no client library normalizes the path.

#[derive(Debug)]
struct Refusal {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Refusal {
    /// The JSON error body's code, or a marker when the body is not the contract's shape
    /// (`{"error": {"code", "message"}}` with a non-empty message).
    fn code(&self) -> String {
        let Ok(v) = serde_json::from_slice::<Value>(&self.body) else {
            return "<body is not JSON>".into();
        };
        if v["error"]["message"].as_str().is_none_or(str::is_empty) {
            return "<no error message>".into();
        }
        v["error"]["code"]
            .as_str()
            .unwrap_or("<no code>")
            .to_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

enum Upgrade {
    Refused(Refusal),
    Upgraded(Box<WebSocketStream<TcpStream>>),
}

async fn raw_upgrade(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Upgrade {
    let mut s = TcpStream::connect(addr).await.expect("tcp connect");
    let mut req = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write request");
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(STEP, s.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("ascii head");
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = buf[head_end..].to_vec();
    if status == 101 {
        let ws = WebSocketStream::from_partially_read(s, body, WsRole::Client, None).await;
        return Upgrade::Upgraded(Box::new(ws));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().expect("content-length"))
        .expect("refusals carry a content-length");
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(STEP, s.read(&mut chunk))
            .await
            .expect("body in time")
            .expect("read");
        assert!(n > 0, "connection closed before the body");
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Upgrade::Refused(Refusal {
        status,
        headers,
        body,
    })
}

/// Sends an edit (text "t" += marker) on an upgraded socket and waits until the server has
/// processed it (a step 1 round trip), so a wrongly accepted connection leaves a trace.
async fn write_through(ws: &mut WebSocketStream<TcpStream>, marker: &str) {
    let doc = Doc::new();
    let t = doc.get_or_insert_text("t");
    let update = {
        let mut txn = doc.transact_mut();
        t.push(&mut txn, marker);
        txn.encode_update_v1()
    };
    for msg in [
        Message::Sync(SyncMessage::Update(update)),
        Message::Sync(SyncMessage::SyncStep1(StateVector::default())),
    ] {
        if ws
            .send(WsMessage::Binary(msg.encode_v1().into()))
            .await
            .is_err()
        {
            return;
        }
    }
    let deadline = tokio::time::Instant::now() + STEP;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let WsMessage::Binary(data) = frame {
            if let Ok(Message::Sync(SyncMessage::SyncStep2(_))) = Message::decode_v1(&data) {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers

fn text(doc: &Doc) -> String {
    let t = doc.get_or_insert_text("t");
    t.get_string(&doc.transact())
}

/// The document as the server has it: (state vector, text "t").
async fn server_doc(srv: &TestServer, doc: &str, token: &str) -> (StateVector, String) {
    let resp = reqwest::Client::new()
        .get(srv.http(&format!("/api/docs/{doc}/update")))
        .bearer_auth(token)
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status(), 200, "GET update of {doc}");
    let bytes = resp.bytes().await.expect("body");
    let d = Doc::new();
    d.transact_mut()
        .apply_update(yrs::Update::decode_v1(&bytes).expect("update"))
        .expect("applies");
    let sv = d.transact().state_vector();
    (sv, text(&d))
}

async fn expect_error(resp: reqwest::Response, status: u16, code: &str, what: &str) {
    let got = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "{what}: status (body {body})");
    assert_eq!(body["error"]["code"], code, "{what}: code (body {body})");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: message (body {body})"
    );
    if status == 401 {
        assert_eq!(www.as_deref(), Some("Bearer"), "{what}: WWW-Authenticate");
    }
}

/// Seeds `doc` with `content` through an editor socket and returns that editor.
async fn seed(srv: &TestServer, doc: &str, content: &str) -> Client {
    let mut c = Client::connect(&ws_url(srv, doc, &admin_token())).await;
    let t = c.doc.get_or_insert_text("t");
    c.edit(|txn| t.push(txn, content)).await;
    c.sync().await;
    c
}

// ---------------------------------------------------------------------------------------------
// 1. The JWT matrix through real upgrade requests

struct Case {
    what: String,
    target: String,
    headers: Vec<(&'static str, String)>,
    status: u16,
    code: &'static str,
}

fn case(what: &str, target: String, status: u16, code: &'static str) -> Case {
    Case {
        what: what.to_owned(),
        target,
        headers: Vec::new(),
        status,
        code,
    }
}

/// Runs refusal cases; a connection that is wrongly accepted writes to its document (so the
/// state checks afterwards see it) and is reported.
async fn run_cases(srv: &TestServer, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in cases {
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        match raw_upgrade(srv.addr, &c.target, &headers).await {
            Upgrade::Upgraded(mut ws) => {
                write_through(&mut ws, &format!("[breach: {}]", c.what)).await;
                failures.push(format!("{}: upgraded, expected {}", c.what, c.status));
            }
            Upgrade::Refused(r) => {
                let code = r.code();
                if r.status != c.status || code != c.code {
                    failures.push(format!(
                        "{}: got {} {code}, expected {} {} (body {})",
                        c.what,
                        r.status,
                        c.status,
                        c.code,
                        String::from_utf8_lossy(&r.body)
                    ));
                } else if r.status == 401 && r.header("www-authenticate") != Some("Bearer") {
                    failures.push(format!("{}: 401 without WWW-Authenticate: Bearer", c.what));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn jwt_matrix_hs256() {
    let srv = hs_server().await;
    let admin = admin_token();
    let _a = seed(&srv, "wedding-a", "A").await;
    let _b = seed(&srv, "wedding-b", "B").await;
    let before_b = server_doc(&srv, "wedding-b", &admin).await;
    let before_a = server_doc(&srv, "wedding-a", &admin).await;

    let now = unix_now();
    let good_a = edit_token("alice", "wedding-a");
    let q = |doc: &str, token: &str| format!("/{doc}?token={token}");
    let mut cases = vec![
        case("no token", "/wedding-b".into(), 401, "missing_token"),
        case(
            "empty token",
            "/wedding-b?token=".into(),
            401,
            "missing_token",
        ),
        case("garbage", q("wedding-b", "garbage"), 401, "invalid_token"),
        case("three dots", q("wedding-b", "a.b.c"), 401, "invalid_token"),
        case("two parts", q("wedding-b", "e30.e30"), 401, "invalid_token"),
        case(
            "wrong secret",
            q(
                "wedding-b",
                &hs_json(
                    b"another-secret-another-secret-another",
                    &valid_json_claims("eve", "wedding-b", "edit"),
                ),
            ),
            401,
            "invalid_token",
        ),
    ];
    // A genuine token whose payload is swapped for one granting wedding-b.
    let parts: Vec<&str> = good_a.split('.').collect();
    let forged_payload = b64(valid_json_claims("alice", "wedding-b", "edit")
        .to_string()
        .as_bytes());
    cases.push(case(
        "payload swapped, signature kept",
        q(
            "wedding-b",
            &format!("{}.{forged_payload}.{}", parts[0], parts[2]),
        ),
        401,
        "invalid_token",
    ));
    let payload_b = valid_json_claims("eve", "wedding-b", "edit");
    for (what, header, sig) in [
        (
            "alg none, empty signature",
            json!({"alg": "none", "typ": "JWT"}),
            "",
        ),
        ("alg None", json!({"alg": "None", "typ": "JWT"}), ""),
        ("alg none, old signature", json!({"alg": "none"}), parts[2]),
        ("alg HS512", json!({"alg": "HS512", "typ": "JWT"}), parts[2]),
        ("alg missing", json!({"typ": "JWT"}), parts[2]),
    ] {
        cases.push(case(
            what,
            q("wedding-b", &hand_built(&header, &payload_b, sig)),
            401,
            "invalid_token",
        ));
    }
    cases.push(case(
        "RS256 token on an HS256 server",
        q("wedding-b", &rs_json(&payload_b)),
        401,
        "invalid_token",
    ));
    let mut expired = claims("eve", &[("wedding-b", Access::Edit)]);
    expired.exp = now - 60;
    expired.iat = Some(now - 3600);
    cases.push(case(
        "expired",
        q("wedding-b", &mint(&expired)),
        401,
        "token_expired",
    ));
    let mut early = claims("eve", &[("wedding-b", Access::Edit)]);
    early.nbf = Some(now + 600);
    cases.push(case(
        "nbf in the future",
        q("wedding-b", &mint(&early)),
        401,
        "token_not_yet_valid",
    ));
    for (what, payload) in [
        (
            "no exp",
            json!({"sub": "eve", "weddings": {"wedding-b": "edit"}}),
        ),
        (
            "no sub",
            json!({"exp": now + 600, "weddings": {"wedding-b": "edit"}}),
        ),
        (
            "empty sub",
            json!({"sub": "", "exp": now + 600, "weddings": {"wedding-b": "edit"}}),
        ),
        (
            "exp as a string",
            json!({"sub": "eve", "exp": "tomorrow", "weddings": {"wedding-b": "edit"}}),
        ),
        (
            "unknown role",
            json!({"sub": "eve", "exp": now + 600, "role": "boss"}),
        ),
        (
            "unknown access",
            json!({"sub": "eve", "exp": now + 600, "weddings": {"wedding-b": "owner"}}),
        ),
    ] {
        cases.push(case(
            what,
            q("wedding-b", &hs_json(SECRET.as_bytes(), &payload)),
            401,
            "invalid_token",
        ));
    }
    cases.push(case(
        "token over 16 KiB",
        q("wedding-b", &"a".repeat(17 * 1024)),
        401,
        "invalid_token",
    ));
    // The token in the Authorization header (scheme case-insensitive).
    let bearer = |what: &str, target: String, value: String, status, code| Case {
        what: what.to_owned(),
        target,
        headers: vec![("Authorization", value)],
        status,
        code,
    };
    cases.extend([
        bearer(
            "Basic scheme",
            "/wedding-b".into(),
            "Basic YWxpY2U6cGFzcw==".into(),
            401,
            "invalid_token",
        ),
        bearer(
            "different tokens in the query and the header",
            q("wedding-b", &edit_token("alice", "wedding-b")),
            format!("Bearer {}", edit_token("bob", "wedding-b")),
            401,
            "invalid_token",
        ),
        bearer(
            "expired token in the header",
            "/wedding-b".into(),
            format!("Bearer {}", mint(&expired)),
            401,
            "token_expired",
        ),
        bearer(
            "wedding-a token in the header on wedding-b",
            "/wedding-b".into(),
            format!("bearer {good_a}"),
            403,
            "forbidden",
        ),
    ]);
    // Access and document names.
    let view_a = view_token("vic", "wedding-a");
    let upper = edit_token("alice", "Wedding-B");
    cases.extend([
        case(
            "wedding-a token on wedding-b",
            q("wedding-b", &good_a),
            403,
            "forbidden",
        ),
        case(
            "view token for wedding-a on wedding-b",
            q("wedding-b", &view_a),
            403,
            "forbidden",
        ),
        case(
            "token for Wedding-B on wedding-b",
            q("wedding-b", &upper),
            403,
            "forbidden",
        ),
        case(
            "token for wedding-a on Wedding-A",
            q("Wedding-A", &good_a),
            403,
            "forbidden",
        ),
        case(
            "token for wedding-a on WEDDING-A",
            q("WEDDING-A", &good_a),
            403,
            "forbidden",
        ),
        case(
            "percent-encoded name of wedding-b with a wedding-a token",
            q("wedding%2Db", &good_a),
            403,
            "forbidden",
        ),
        case(
            "encoded slash",
            q("wedding-a%2Fwedding-b", &good_a),
            400,
            "invalid_document_name",
        ),
        case(
            "encoded slash, lowercase",
            q("wedding-a%2fwedding-b", &admin),
            400,
            "invalid_document_name",
        ),
        case(
            "encoded traversal",
            q("wedding-a%2F..%2Fwedding-b", &good_a),
            400,
            "invalid_document_name",
        ),
        case("dot-dot", q("..", &admin), 400, "invalid_document_name"),
        case("dot", q(".", &admin), 400, "invalid_document_name"),
        case(
            "encoded dot-dot",
            q("%2E%2E", &admin),
            400,
            "invalid_document_name",
        ),
        case(
            "trailing space",
            q("wedding-a%20", &good_a),
            400,
            "invalid_document_name",
        ),
        case(
            "leading space",
            q("%20wedding-a", &good_a),
            400,
            "invalid_document_name",
        ),
        case(
            "plus sign",
            q("wedding+a", &admin),
            400,
            "invalid_document_name",
        ),
        case(
            "NUL",
            q("wedding-a%00", &admin),
            400,
            "invalid_document_name",
        ),
        case(
            "double-encoded dash",
            q("wedding%252Da", &admin),
            400,
            "invalid_document_name",
        ),
        case(
            "non-ASCII",
            q("wedding-%C3%A9", &admin),
            400,
            "invalid_document_name",
        ),
        case(
            "invalid UTF-8",
            q("wedding-%FF", &admin),
            400,
            "invalid_document_name",
        ),
        case(
            "201 characters",
            q(&"a".repeat(201), &admin),
            400,
            "invalid_document_name",
        ),
        case(
            "bad name without a token",
            "/wedding-a%2Fx".to_owned(),
            400,
            "invalid_document_name",
        ),
    ]);
    run_cases(&srv, cases).await;

    // Upgrade requests for other paths are not documents at all.
    match raw_upgrade(srv.addr, &format!("/wedding-a/?token={admin}"), &[]).await {
        Upgrade::Refused(r) => assert_eq!(r.status, 404, "trailing slash"),
        Upgrade::Upgraded(_) => panic!("/wedding-a/ upgraded"),
    }

    // Positive controls on the same server: the decoded name is the document, both ways of
    // sending the token work, the Bearer scheme is case-insensitive.
    let c = Client::connect(&ws_url(&srv, "wedding%2Da", &good_a)).await;
    assert_eq!(text(&c.doc), "A", "/wedding%2Da is wedding-a");
    let mut req = srv.url("wedding-a").into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("BEARER {good_a}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("header token");
    let c = Client::from_ws(ws).await;
    assert_eq!(text(&c.doc), "A");
    let name200 = "a".repeat(200);
    let c = Client::connect(&ws_url(&srv, &name200, &admin)).await;
    drop(c);
    // A real client sees the same refusal.
    match tokio_tungstenite::connect_async(ws_url(&srv, "wedding-b", &good_a)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403)
        }
        other => panic!("expected an HTTP 403 refusal, got {:?}", other.map(|_| ())),
    }

    // Nothing of the above reached either document.
    assert_eq!(server_doc(&srv, "wedding-b", &admin).await, before_b);
    assert_eq!(server_doc(&srv, "wedding-a", &admin).await, before_a);
    assert_eq!(before_b.1, "B");
    srv.stop().await;
}

#[tokio::test]
async fn jwt_matrix_rs256_and_algorithm_confusion() {
    let srv = TestServer::start_with(|c| {
        c.auth.jwt_public_key = Some(key_path("test-only-rs256-public.pem"));
    })
    .await;
    let admin = rs_json(&json!({"sub": "root", "role": "admin", "exp": unix_now() + 600}));
    let _b = {
        let mut c = Client::connect(&ws_url(&srv, "wedding-b", &admin)).await;
        let t = c.doc.get_or_insert_text("t");
        c.edit(|txn| t.push(txn, "B")).await;
        c.sync().await;
        c
    };
    let before = server_doc(&srv, "wedding-b", &admin).await;
    let payload = valid_json_claims("eve", "wedding-b", "edit");
    let q = |token: &str| format!("/wedding-b?token={token}");
    let es = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &payload,
        &EncodingKey::from_ec_pem(ES_PRIVATE).unwrap(),
    )
    .unwrap();
    let rs_good = rs_json(&payload);
    let rs_parts: Vec<&str> = rs_good.split('.').collect();
    let mut cases = vec![
        case(
            "HS256 signed with the public PEM",
            q(&hs_json(RS_PUBLIC, &payload)),
            401,
            "invalid_token",
        ),
        case(
            "HS256 signed with the trimmed public PEM",
            q(&hs_json(
                String::from_utf8_lossy(RS_PUBLIC).trim().as_bytes(),
                &payload,
            )),
            401,
            "invalid_token",
        ),
        case(
            "HS256 with the server's nothing-secret",
            q(&hs_json(SECRET.as_bytes(), &payload)),
            401,
            "invalid_token",
        ),
        case("ES256 token", q(&es), 401, "invalid_token"),
        case(
            "alg none",
            q(&hand_built(&json!({"alg": "none"}), &payload, "")),
            401,
            "invalid_token",
        ),
        case(
            "RS256 header, RSA signature of another payload",
            q(&format!(
                "{}.{}.{}",
                rs_parts[0],
                b64(valid_json_claims("eve", "wedding-b", "view")
                    .to_string()
                    .as_bytes()),
                rs_parts[2]
            )),
            401,
            "invalid_token",
        ),
        case(
            "RS256 token for wedding-a",
            q(&rs_json(&valid_json_claims("eve", "wedding-a", "edit"))),
            403,
            "forbidden",
        ),
    ];
    let mut expired = payload.clone();
    expired["exp"] = json!(unix_now() - 60);
    cases.push(case(
        "expired RS256",
        q(&rs_json(&expired)),
        401,
        "token_expired",
    ));
    run_cases(&srv, cases).await;

    // The genuine RS256 token works.
    let c = Client::connect(&ws_url(&srv, "wedding-b", &rs_good)).await;
    assert_eq!(text(&c.doc), "B");
    drop(c);
    assert_eq!(server_doc(&srv, "wedding-b", &admin).await, before);
    srv.stop().await;
}

#[tokio::test]
async fn issuer_and_audience_are_enforced_when_configured() {
    let srv = TestServer::start_with(|c| {
        c.auth.jwt_secret = Some(SECRET.into());
        c.auth.jwt_issuer = Some("https://backend.example".into());
        c.auth.jwt_audience = Some("wedsync".into());
    })
    .await;
    let base = |iss: Option<&str>, aud: Option<Value>| {
        let mut v = valid_json_claims("eve", "wedding-b", "edit");
        if let Some(iss) = iss {
            v["iss"] = json!(iss);
        }
        if let Some(aud) = aud {
            v["aud"] = aud;
        }
        format!("/wedding-b?token={}", hs_json(SECRET.as_bytes(), &v))
    };
    let iss = Some("https://backend.example");
    let aud = || Some(json!("wedsync"));
    let cases = vec![
        case("no iss", base(None, aud()), 401, "invalid_token"),
        case(
            "wrong iss",
            base(Some("https://evil.example"), aud()),
            401,
            "invalid_token",
        ),
        case(
            "iss differs in case",
            base(Some("https://BACKEND.example"), aud()),
            401,
            "invalid_token",
        ),
        case("no aud", base(iss, None), 401, "invalid_token"),
        case(
            "wrong aud",
            base(iss, Some(json!("other"))),
            401,
            "invalid_token",
        ),
        case(
            "aud list without ours",
            base(iss, Some(json!(["a", "b"]))),
            401,
            "invalid_token",
        ),
        case(
            "aud as a number",
            base(iss, Some(json!(7))),
            401,
            "invalid_token",
        ),
    ];
    run_cases(&srv, cases).await;
    for good in [
        base(iss, aud()),
        base(iss, Some(json!(["other", "wedsync"]))),
    ] {
        match raw_upgrade(srv.addr, &good, &[]).await {
            Upgrade::Upgraded(_) => {}
            Upgrade::Refused(r) => panic!("{good}: refused {} {}", r.status, r.code()),
        }
    }
    srv.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. View-only connections, admin

/// Sends a step 1 and receives until the step 2 answer; returns how many auth
/// permission-denied messages arrived meanwhile.
async fn round_trip_counting_denials(c: &mut Client) -> usize {
    let sv = c.state_vector();
    c.send(&Message::Sync(SyncMessage::SyncStep1(sv))).await;
    let mut denied = 0;
    c.recv_until(|r| {
        if let Received::Msg(Message::Auth(reason)) = r {
            let reason = reason.as_deref().unwrap_or("");
            assert!(reason.contains("permission denied"), "reason: {reason}");
            denied += 1;
        }
        matches!(r, Received::Msg(Message::Sync(SyncMessage::SyncStep2(_))))
    })
    .await
    .expect("step 2 answer");
    denied
}

#[tokio::test]
async fn view_only_connection() {
    let srv = hs_server().await;
    let doc = "wedding-v";
    let mut editor = Client::connect(&ws_url(&srv, doc, &edit_token("ed", doc))).await;
    let mut viewer = Client::connect(&ws_url(&srv, doc, &view_token("vi", doc))).await;

    // The viewer sees the editor's edits live.
    let t = editor.doc.get_or_insert_text("t");
    editor.edit(|txn| t.push(txn, "hello")).await;
    assert!(viewer.wait_doc(|d| text(d) == "hello").await);
    assert_eq!(viewer.permission_denied, None, "nothing refused yet");

    // The viewer's own updates are refused: one permission-denied message in all.
    let vt = viewer.doc.get_or_insert_text("t");
    viewer.edit(|txn| vt.push(txn, " EVIL1")).await;
    viewer.edit(|txn| vt.push(txn, " EVIL2")).await;
    // a step 2 with content is an update too
    let evil3 = {
        let d = Doc::new();
        let t = d.get_or_insert_text("t");
        let mut txn = d.transact_mut();
        t.push(&mut txn, "EVIL3");
        txn.encode_update_v1()
    };
    viewer
        .send(&Message::Sync(SyncMessage::SyncStep2(evil3)))
        .await;
    assert_eq!(round_trip_counting_denials(&mut viewer).await, 1);
    viewer.edit(|txn| vt.push(txn, " EVIL4")).await;
    assert_eq!(
        round_trip_counting_denials(&mut viewer).await,
        0,
        "only one permission-denied message per connection"
    );
    assert!(viewer.closed.is_none(), "the viewer stays connected");

    // Nobody sees the viewer's text: not the live editor, not a fresh editor, not HTTP.
    editor.drain(QUIET).await;
    assert_eq!(text(&editor.doc), "hello");
    let fresh = Client::connect(&ws_url(&srv, doc, &edit_token("ed2", doc))).await;
    assert_eq!(text(&fresh.doc), "hello");
    assert_eq!(server_doc(&srv, doc, &admin_token()).await.1, "hello");

    // The viewer's awareness is relayed to others.
    viewer
        .send(&awareness_frame(
            4242,
            1,
            r#"{"user":{"name":"Vi"},"cursor":3}"#,
        ))
        .await;
    let id = yrs::ClientID::new(4242);
    editor
        .recv_until(
            |r| matches!(r, Received::Msg(Message::Awareness(u)) if u.clients.contains_key(&id)),
        )
        .await
        .expect("editor gets the viewer's awareness");
    let state: Value =
        serde_json::from_str(&editor.awareness_seen.clients[&id].json).expect("json state");
    assert_eq!(state["cursor"], 3);

    // An admin-role token edits a wedding it is not listed for.
    let mut admin = Client::connect(&ws_url(&srv, doc, &admin_token())).await;
    let at = admin.doc.get_or_insert_text("t");
    admin.edit(|txn| at.push(txn, " +admin")).await;
    assert!(editor.wait_doc(|d| text(d) == "hello +admin").await);
    // (the viewer's own copy still holds its refused local edits)
    assert!(viewer.wait_doc(|d| text(d).contains(" +admin")).await);
    assert_eq!(round_trip_counting_denials(&mut admin).await, 0);
    srv.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Expiry mid-session

fn unix_f64(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Waits for the permission-denied message and then the close frame; returns the close code
/// and when (system clock) the close arrived.
async fn denied_then_closed(c: &mut Client) -> (u16, SystemTime) {
    let mut denied = false;
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv(left).await {
            None => panic!("no close within {STEP:?}"),
            Some(Received::Msg(Message::Auth(reason))) => {
                let reason = reason.unwrap_or_default();
                assert!(reason.contains("permission denied"), "reason: {reason}");
                assert!(!denied, "permission denied sent twice");
                denied = true;
            }
            Some(Received::Close(frame)) => {
                let at = SystemTime::now();
                let (code, _) = frame.expect("a close frame with a code");
                assert!(denied, "permission denied arrives before the close");
                return (code, at);
            }
            Some(_) => {}
        }
    }
}

/// Waits until the sub-second part of the system clock is in `[from_ms, from_ms + 100)`, so
/// a deadline rounded to whole seconds would show as lateness.
async fn align_clock(from_ms: u32) {
    loop {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        if (from_ms..from_ms + 100).contains(&ms) {
            return;
        }
        let wait = (from_ms + 1000 - ms) % 1000;
        tokio::time::sleep(Duration::from_millis(u64::from(wait.max(1)))).await;
    }
}

async fn expiry_case(leeway: u64) {
    let srv = TestServer::start_with(|c| {
        c.auth.jwt_secret = Some(SECRET.into());
        c.auth.jwt_leeway_secs = Some(leeway);
    })
    .await;
    let doc = "wedding-x";
    let mut stays = Client::connect(&ws_url(&srv, doc, &edit_token("long", doc))).await;
    align_clock(850).await;
    let mut c = claims("short", &[(doc, Access::Edit)]);
    c.exp = unix_now() + 2;
    let token = mint(&c);
    let mut short = Client::connect(&ws_url(&srv, doc, &token)).await;
    let connected = Instant::now();
    let (code, at) = denied_then_closed(&mut short).await;
    let deadline = (c.exp + leeway) as f64;
    let at = unix_f64(at);
    assert_eq!(code, 4401);
    assert!(
        at >= deadline - 0.05,
        "closed {:.3} s before exp + leeway",
        deadline - at
    );
    assert!(
        at <= deadline + 0.75,
        "closed {:.3} s after exp + leeway (connected {:?} before)",
        at - deadline,
        connected.elapsed()
    );
    // The same token is refused from now on; the other session is untouched.
    match raw_upgrade(srv.addr, &format!("/{doc}?token={token}"), &[]).await {
        Upgrade::Refused(r) => assert_eq!((r.status, r.code()), (401, "token_expired".into())),
        Upgrade::Upgraded(_) => panic!("expired token upgraded"),
    }
    stays.sync().await;
    assert!(stays.closed.is_none());
    srv.stop().await;
}

#[tokio::test]
async fn token_expiring_mid_session_closes_with_4401() {
    expiry_case(0).await;
}

#[tokio::test]
async fn session_expiry_honours_the_leeway() {
    expiry_case(1).await;
}

// ---------------------------------------------------------------------------------------------
// 4. Revocation

async fn post_revoke(srv: &TestServer, bearer: Option<&str>, body: &str) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(srv.http("/api/admin/revoke"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("http")
}

async fn expect_upgrade_refused(srv: &TestServer, doc: &str, token: &str, status: u16, code: &str) {
    match raw_upgrade(srv.addr, &format!("/{doc}?token={token}"), &[]).await {
        Upgrade::Refused(r) => assert_eq!(
            (r.status, r.code().as_str()),
            (status, code),
            "upgrade on {doc}"
        ),
        Upgrade::Upgraded(_) => panic!("upgrade on {doc} accepted, expected {status} {code}"),
    }
}

async fn expect_upgrade_ok(srv: &TestServer, doc: &str, token: &str) {
    if let Upgrade::Refused(r) = raw_upgrade(srv.addr, &format!("/{doc}?token={token}"), &[]).await
    {
        panic!("upgrade on {doc} refused: {} {}", r.status, r.code());
    }
}

/// The connection is open: a step 1 round trip completes and nothing closed it.
async fn assert_alive(c: &mut Client, who: &str) {
    c.drain(QUIET).await;
    assert!(c.closed.is_none(), "{who} was closed: {:?}", c.closed);
    c.sync().await;
    assert!(c.closed.is_none(), "{who} was closed: {:?}", c.closed);
}

#[tokio::test]
async fn revocation_by_sub_and_jti_closes_sessions_and_survives_restart() {
    let config = |dir: &std::path::Path| {
        let mut c = wedsync::Config::for_tests(dir);
        c.auth.jwt_secret = Some(SECRET.into());
        c
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let srv = TestServer::start_in(dir, cfg).await;
    let admin = admin_token();
    let u1 = mint(&claims(
        "u1",
        &[("wedding-r", Access::Edit), ("wedding-s", Access::View)],
    ));
    let u2 = edit_token("u2", "wedding-r");
    let mut c3a = claims("u3", &[("wedding-r", Access::Edit)]);
    c3a.jti = Some("u3-token-a".into());
    let mut c3b = c3a.clone();
    c3b.jti = Some("u3-token-b".into());
    let (u3a, u3b) = (mint(&c3a), mint(&c3b));

    let mut u1_r = Client::connect(&ws_url(&srv, "wedding-r", &u1)).await;
    let mut u1_s = Client::connect(&ws_url(&srv, "wedding-s", &u1)).await;
    let mut u2_r = Client::connect(&ws_url(&srv, "wedding-r", &u2)).await;
    let mut u3_a = Client::connect(&ws_url(&srv, "wedding-r", &u3a)).await;
    let mut u3_b = Client::connect(&ws_url(&srv, "wedding-r", &u3b)).await;

    // Who may revoke, and what a request must look like.
    let resp = post_revoke(&srv, None, r#"{"sub":"u1"}"#).await;
    expect_error(resp, 401, "missing_token", "revoke without a token").await;
    let resp = post_revoke(&srv, Some("nonsense"), r#"{"sub":"u1"}"#).await;
    expect_error(resp, 401, "invalid_token", "revoke with a bad token").await;
    let resp = post_revoke(&srv, Some(&u2), r#"{"sub":"u1"}"#).await;
    expect_error(resp, 403, "forbidden", "revoke by a non-admin").await;
    let resp = post_revoke(&srv, Some(&u1), r#"{"sub":"u1"}"#).await;
    expect_error(resp, 403, "forbidden", "revoking oneself as a non-admin").await;
    for (body, code) in [
        ("{}", "invalid_request"),
        (r#"{"sub":""}"#, "invalid_request"),
        (r#"{"sub":"u1","jti":"x"}"#, "invalid_request"),
        (r#"{"user":"u1"}"#, "invalid_json"),
        ("sub=u1", "invalid_json"),
    ] {
        let resp = post_revoke(&srv, Some(&admin), body).await;
        expect_error(resp, 400, code, body).await;
    }
    assert_alive(&mut u1_r, "u1 on wedding-r after refused revocations").await;

    // Revoke u1: both of u1's sockets end at once, u2 and u3 stay.
    let asked = Instant::now();
    let resp = post_revoke(&srv, Some(&admin), r#"{"sub":"u1"}"#).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["revoked"], json!({"sub": "u1"}));
    assert_eq!(body["sessions_closed"], 2, "{body}");
    let default_until = unix_now() + 7 * 24 * 3600;
    let until = body["until"].as_u64().expect("until");
    assert!(
        until.abs_diff(default_until) <= 2,
        "default until is now + 7 days: {until}"
    );
    for c in [&mut u1_r, &mut u1_s] {
        let (code, _) = denied_then_closed(c).await;
        assert_eq!(code, 4401);
    }
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "revoked sessions closed at once, took {:?}",
        asked.elapsed()
    );
    assert_alive(&mut u2_r, "u2").await;
    assert_alive(&mut u3_a, "u3 a").await;

    // u1's token is refused everywhere from now on; a token issued later is not (not a ban).
    expect_upgrade_refused(&srv, "wedding-r", &u1, 401, "token_revoked").await;
    expect_upgrade_refused(&srv, "wedding-s", &u1, 401, "token_revoked").await;
    let resp = reqwest::Client::new()
        .get(srv.http("/api/docs/wedding-r/update"))
        .bearer_auth(&u1)
        .send()
        .await
        .unwrap();
    expect_error(resp, 401, "token_revoked", "REST with a revoked token").await;
    let mut later = claims("u1", &[("wedding-r", Access::Edit)]);
    later.iat = Some(unix_now() + 1);
    let u1_new = mint(&later);
    expect_upgrade_ok(&srv, "wedding-r", &u1_new).await;

    // Revoke one token of u3 by jti, with an explicit `until`.
    let until = unix_now() + 3600;
    let resp = post_revoke(
        &srv,
        Some(&admin),
        &json!({"jti": "u3-token-a", "until": until}).to_string(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["revoked"], json!({"jti": "u3-token-a"}));
    assert_eq!(body["until"], until);
    assert_eq!(body["sessions_closed"], 1, "{body}");
    let (code, _) = denied_then_closed(&mut u3_a).await;
    assert_eq!(code, 4401);
    assert_alive(&mut u3_b, "u3's other token").await;
    expect_upgrade_refused(&srv, "wedding-r", &u3a, 401, "token_revoked").await;
    expect_upgrade_ok(&srv, "wedding-r", &u3b).await;

    // Restart on the same data dir: the revocations are still there.
    drop((u2_r, u3_b));
    let dir = srv.stop().await;
    let cfg = config(dir.path());
    let srv = TestServer::start_in(dir, cfg).await;
    expect_upgrade_refused(&srv, "wedding-r", &u1, 401, "token_revoked").await;
    expect_upgrade_refused(&srv, "wedding-r", &u3a, 401, "token_revoked").await;
    expect_upgrade_ok(&srv, "wedding-r", &u3b).await;
    expect_upgrade_ok(&srv, "wedding-r", &u1_new).await;
    expect_upgrade_ok(&srv, "wedding-r", &u2).await;
    srv.stop().await;
}

#[tokio::test]
async fn revocation_in_open_mode_is_a_bad_request() {
    let srv = TestServer::start().await;
    let resp = post_revoke(&srv, None, r#"{"sub":"u1"}"#).await;
    expect_error(resp, 400, "auth_disabled", "revoke in open mode").await;
    let resp = post_revoke(&srv, Some(&admin_token()), r#"{"sub":"u1"}"#).await;
    expect_error(resp, 400, "auth_disabled", "revoke in open mode").await;
    srv.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Presence

async fn get_presence(srv: &TestServer, id: &str, bearer: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(srv.http(&format!("/api/weddings/{id}/presence")));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("http")
}

/// Polls presence until `pred` holds on the `connected` list, at most `within`.
async fn presence_until(
    srv: &TestServer,
    id: &str,
    token: &str,
    within: Duration,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let resp = get_presence(srv, id, Some(token)).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["wedding"], id);
        let list = body["connected"]
            .as_array()
            .expect("connected list")
            .clone();
        if pred(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; presence is {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn person<'a>(list: &'a [Value], user: &str) -> Option<&'a Value> {
    list.iter().find(|p| p["user"] == user)
}

#[tokio::test]
async fn presence_shows_token_identities_and_protects_awareness_ids() {
    let srv = hs_server().await;
    let id = "wedding-p";
    let token = |sub: &str, name: &str, role: Role, access: Access| {
        let mut c = claims(sub, &[(id, access)]);
        c.name = Some(name.to_owned());
        c.role = Some(role);
        mint(&c)
    };
    let alice_t = token("alice", "Alice", Role::Couple, Access::Edit);
    let bob_t = token("bob", "Bob", Role::Vendor, Access::View);
    let carol_t = token("carol", "Carol", Role::Guest, Access::View);
    let observer = view_token("observer", id);
    const ONE_SECOND: Duration = Duration::from_secs(1);

    // Access to the presence API itself.
    let resp = get_presence(&srv, id, None).await;
    expect_error(resp, 401, "missing_token", "presence without a token").await;
    let resp = get_presence(&srv, id, Some("x.y.z")).await;
    expect_error(resp, 401, "invalid_token", "presence with a bad token").await;
    let resp = get_presence(&srv, id, Some(&view_token("eve", "wedding-q"))).await;
    expect_error(
        resp,
        403,
        "forbidden",
        "presence with another wedding's token",
    )
    .await;
    let resp = get_presence(&srv, "bad%20id", Some(&admin_token())).await;
    expect_error(resp, 400, "invalid_document_name", "presence of a bad id").await;
    let resp = reqwest::get(srv.http(&format!("/api/weddings/{id}/presence?token={observer}")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "token in the query string");
    presence_until(&srv, id, &observer, STEP, "empty", |l| l.is_empty()).await;

    // Alice joins and claims to be Mallory in her awareness.
    let before = unix_ms();
    let mut alice = Client::connect(&ws_url(&srv, id, &alice_t)).await;
    let after = unix_ms();
    let list = presence_until(&srv, id, &observer, ONE_SECOND, "alice joins", |l| {
        l.len() == 1
    })
    .await;
    let a = &list[0];
    assert_eq!(a["user"], "alice");
    assert_eq!(a["name"], "Alice");
    assert_eq!(a["role"], "couple");
    assert_eq!(a["can_edit"], true);
    let since = a["connected_since"].as_u64().expect("connected_since");
    assert!(
        (before..=after).contains(&since),
        "connected_since {since} not in [{before}, {after}]"
    );
    let mallory = json!({"user": {"name": "Mallory"}});
    alice
        .send(&awareness_frame(1001, 1, &mallory.to_string()))
        .await;
    let list = presence_until(&srv, id, &observer, STEP, "alice's awareness", |l| {
        l.len() == 1 && l[0]["awareness"]["1001"] == mallory
    })
    .await;
    assert_eq!(list[0]["name"], "Alice", "identity comes from the token");
    assert_eq!(list[0]["user"], "alice");

    // Bob (view-only) joins, sets his own state and tries to take over Alice's client id.
    let mut bob = Client::connect(&ws_url(&srv, id, &bob_t)).await;
    let joined = Instant::now();
    presence_until(&srv, id, &observer, ONE_SECOND, "bob joins", |l| {
        l.len() == 2
    })
    .await;
    assert!(joined.elapsed() < ONE_SECOND);
    bob.send(&awareness_frame(2002, 1, r#"{"cursor":7}"#)).await;
    bob.send(&awareness_frame(
        1001,
        50,
        r#"{"user":{"name":"Bob-as-Alice"}}"#,
    ))
    .await;
    bob.send(&awareness_frame(1001, 51, "null")).await;
    bob.sync().await; // the room has handled the frames above
    let list = presence_until(&srv, id, &observer, STEP, "bob's awareness", |l| {
        person(l, "bob").is_some_and(|b| b["awareness"]["2002"]["cursor"] == 7)
    })
    .await;
    let a = person(&list, "alice").unwrap();
    let b = person(&list, "bob").unwrap();
    assert_eq!(
        a["awareness"],
        json!({"1001": mallory}),
        "alice keeps her id"
    );
    assert_eq!(b["awareness"], json!({"2002": {"cursor": 7}}));
    assert_eq!(
        (b["name"].clone(), b["role"].clone()),
        (json!("Bob"), json!("vendor"))
    );
    assert_eq!(b["can_edit"], false);
    // Nobody was told about the takeover attempt; a newcomer sees Alice's real state.
    let id1001 = yrs::ClientID::new(1001);
    alice.drain(QUIET).await;
    assert!(
        !alice.awareness_seen.clients.contains_key(&id1001),
        "alice was sent someone else's state for her id: {:?}",
        alice.awareness_seen.clients.get(&id1001)
    );
    let carol = Client::connect(&ws_url(&srv, id, &carol_t)).await;
    let seen: Value = serde_json::from_str(&carol.awareness_seen.clients[&id1001].json).unwrap();
    assert_eq!(seen, mallory);
    drop(carol);

    // Leaves are reflected within a second, and Alice learns Bob's state is gone.
    presence_until(&srv, id, &observer, STEP, "carol leaves", |l| l.len() == 2).await;
    bob.ws.close(None).await.unwrap();
    let left = Instant::now();
    presence_until(&srv, id, &observer, ONE_SECOND, "bob leaves", |l| {
        l.len() == 1 && l[0]["user"] == "alice"
    })
    .await;
    assert!(left.elapsed() < ONE_SECOND);
    let id2002 = yrs::ClientID::new(2002);
    alice
        .recv_until(|r| {
            matches!(r, Received::Msg(Message::Awareness(u))
                if u.clients.get(&id2002).is_some_and(|e| e.json.as_ref() == "null"))
        })
        .await
        .expect("alice sees bob's awareness removed");
    drop(alice);
    presence_until(&srv, id, &observer, ONE_SECOND, "alice leaves", |l| {
        l.is_empty()
    })
    .await;
    srv.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. REST auth on the document API

fn update_with(content: &str) -> Vec<u8> {
    let d = Doc::new();
    let t = d.get_or_insert_text("t");
    let mut txn = d.transact_mut();
    t.push(&mut txn, content);
    txn.encode_update_v1()
}

#[tokio::test]
async fn document_http_api_needs_view_or_edit_access() {
    let srv = hs_server().await;
    let http = reqwest::Client::new();
    let doc = "wedding-h";
    let url = srv.http(&format!("/api/docs/{doc}/update"));
    let edit = edit_token("ed", doc);
    let view = view_token("vi", doc);
    let other = edit_token("ot", "wedding-other");
    let mut expired = claims("ex", &[(doc, Access::Edit)]);
    expired.exp = unix_now() - 60;
    let expired = mint(&expired);

    // Before the document exists: auth first, so a stranger cannot probe which ids exist.
    expect_error(
        http.get(&url).send().await.unwrap(),
        401,
        "missing_token",
        "GET, no token",
    )
    .await;
    let resp = http.get(&url).bearer_auth(&other).send().await.unwrap();
    expect_error(resp, 403, "forbidden", "GET, other wedding, missing doc").await;
    let resp = http.get(&url).bearer_auth(&view).send().await.unwrap();
    expect_error(resp, 404, "not_found", "GET, view, missing doc").await;

    // Writes need edit access.
    let mut viewer = Client::connect(&ws_url(&srv, doc, &view)).await;
    for (what, token, status, code) in [
        ("POST, no token", None, 401, "missing_token"),
        ("POST, garbage token", Some("garbage"), 401, "invalid_token"),
        (
            "POST, expired",
            Some(expired.as_str()),
            401,
            "token_expired",
        ),
        ("POST, view token", Some(view.as_str()), 403, "forbidden"),
        (
            "POST, other wedding",
            Some(other.as_str()),
            403,
            "forbidden",
        ),
    ] {
        let mut req = http.post(&url).body(update_with(&format!("[{what}]")));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        expect_error(req.send().await.unwrap(), status, code, what).await;
    }
    let resp = http
        .post(&url)
        .bearer_auth(&edit)
        .body(update_with("hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(
        viewer.wait_doc(|d| text(d) == "hello").await,
        "relayed live"
    );
    let resp = http
        .post(format!("{url}?token={edit}"))
        .body(update_with("!"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "token in the query string");

    // Reads need view access.
    for (what, token, status, code) in [
        ("GET, garbage token", "garbage", 401, "invalid_token"),
        ("GET, expired", expired.as_str(), 401, "token_expired"),
        ("GET, other wedding", other.as_str(), 403, "forbidden"),
    ] {
        let resp = http.get(&url).bearer_auth(token).send().await.unwrap();
        expect_error(resp, status, code, what).await;
    }
    let resp = http
        .get(&url)
        .header("Authorization", format!("Basic {view}"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 401, "invalid_token", "GET, Basic scheme").await;
    for token in [&view, &edit, &admin_token()] {
        let (_, content) = server_doc(&srv, doc, token).await;
        assert_eq!(content.len(), "hello!".len());
        assert!(content.contains("hello") && content.contains('!'));
    }
    let resp = http
        .get(srv.http("/api/docs/wedding%FF/update"))
        .bearer_auth(admin_token())
        .send()
        .await
        .unwrap();
    expect_error(
        resp,
        400,
        "invalid_document_name",
        "GET, invalid UTF-8 name",
    )
    .await;
    srv.stop().await;
}

/// A revoked client gets nothing sent after its cut-off: the "permission denied" message and
/// the 4401 close, but no edit that another client makes meanwhile (they were written to it
/// while its session left a busy room).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_gets_no_edit_after_its_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = wedsync::Config::for_tests(dir.path());
    cfg.auth.jwt_secret = Some(SECRET.into());
    cfg.limits.update_rate = 1e6;
    cfg.limits.update_burst = 1e6;
    let srv = TestServer::start_in(dir, cfg).await;
    let url = |sub: &str| ws_url(&srv, "wedding-cut", &edit_token(sub, "wedding-cut"));
    let mut revoked = Client::connect(&url("cut")).await;
    let mut writer = Client::connect(&url("keeps")).await;
    // The writer edits as fast as it can (rate limit lifted) while the revocation lands, so
    // the room is committing (each commit waits for its flush) when the revoked session
    // leaves. Before the fix this failed 3 runs in 4.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let editing = tokio::spawn({
        let stop = stop.clone();
        async move {
            let t = writer.doc.get_or_insert_text("t");
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                writer.edit(|txn| t.push(txn, &format!("{i};"))).await;
                i += 1;
            }
            writer
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let resp = post_revoke(&srv, Some(&admin_token()), r#"{"sub":"cut"}"#).await;
    assert_eq!(resp.status(), 200);
    let mut denied = false;
    loop {
        match revoked.recv(STEP).await {
            Some(Received::Msg(Message::Auth(Some(_)))) => denied = true,
            Some(Received::Msg(Message::Sync(SyncMessage::Update(_)))) => {
                assert!(
                    !denied,
                    "an edit reached the client after its permission was denied"
                )
            }
            Some(Received::Close(frame)) => {
                assert_eq!(frame.map(|f| f.0), Some(4401));
                break;
            }
            None => panic!("no close within {STEP:?}"),
            _ => {}
        }
    }
    assert!(denied, "the client was told why");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut writer = editing.await.expect("writer task");
    assert_alive(&mut writer, "the other client").await;
    srv.stop().await;
}
