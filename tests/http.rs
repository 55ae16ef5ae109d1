//! The operational and document HTTP endpoints through real HTTP requests.

mod common;

use base64::Engine;
use common::*;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, Text, Transact, Update};

fn text(doc: &Doc) -> String {
    doc.get_or_insert_text("t").get_string(&doc.transact())
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let srv = TestServer::start().await;
    let http = reqwest::Client::new();
    let r = http.get(srv.http("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(srv.http("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    // some traffic, then the counters show it
    let mut a = Client::connect(&srv.url("metrics-doc")).await;
    let t = a.doc.get_or_insert_text("t");
    a.edit(|txn| t.push(txn, "x")).await;
    a.sync().await;
    let m = http.get(srv.http("/metrics")).send().await.unwrap();
    assert_eq!(m.status(), 200);
    let text = m.text().await.unwrap();
    for name in [
        "wedsync_connections_total",
        "wedsync_updates_stored_total",
        "wedsync_store_flush_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    let r = http.get(srv.http("/no/such/route")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    srv.stop().await;
}

#[tokio::test]
async fn document_update_api_reads_diffs_and_writes() {
    let srv = TestServer::start().await;
    let http = reqwest::Client::new();
    let url = |doc: &str| srv.http(&format!("/api/docs/{doc}/update"));

    // never stored: 404 with a JSON error
    let r = http.get(url("nothing-here")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "not_found"
    );

    let mut live = Client::connect(&srv.url("httpdoc")).await;
    let t = live.doc.get_or_insert_text("t");
    live.edit(|txn| t.push(txn, "from socket;")).await;
    live.sync().await;

    // POST: a connected client receives it like any update
    let src = Doc::new();
    let st = src.get_or_insert_text("t");
    let update = {
        let mut txn = src.transact_mut();
        st.push(&mut txn, "from http;");
        txn.encode_update_v1()
    };
    let r = http.post(url("httpdoc")).body(update).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(live.wait_doc(|d| text(d).contains("from http;")).await);

    // GET: the whole document
    let (doc, full) = fetch_doc(&http, &url("httpdoc")).await;
    assert_eq!(text(&doc), text(&live.doc));

    // GET ?sv=: only what a client with that state vector lacks
    let sv = live.doc.transact().state_vector();
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(yrs::updates::encoder::Encode::encode_v1(&sv));
    let diff = http
        .get(format!("{}?sv={}", url("httpdoc"), urlencode(&b64)))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        diff.len() < full.len(),
        "diff ({}) smaller than full ({})",
        diff.len(),
        full.len()
    );
    let before = text(&live.doc);
    live.doc
        .transact_mut()
        .apply_update(Update::decode_v1(&diff).unwrap())
        .unwrap();
    assert_eq!(
        text(&live.doc),
        before,
        "nothing new for an up-to-date client"
    );

    // bad input: JSON errors, nothing written
    for (req, status, code) in [
        (
            http.post(url("httpdoc")).body(vec![1, 2, 3, 250]),
            400,
            "invalid_update",
        ),
        (
            http.post(url("httpdoc")).body(Vec::<u8>::new()),
            400,
            "invalid_update",
        ),
        (
            http.get(format!("{}?sv=%%%", url("httpdoc"))),
            400,
            "invalid_state_vector",
        ),
        (http.get(url("bad%20name")), 400, "invalid_document_name"),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    let (check, _) = fetch_doc(&http, &url("httpdoc")).await;
    // the HTTP edit was concurrent with the socket's (order decided by client ids): both
    // are there, nothing else
    assert_eq!(text(&check), text(&live.doc));
    assert_eq!(text(&check).len(), "from socket;from http;".len());
    srv.stop().await;
}

/// `GET` a document as one update; returns it applied to a fresh Doc, and the raw bytes.
async fn fetch_doc(http: &reqwest::Client, url: &str) -> (Doc, Vec<u8>) {
    let bytes = http.get(url).send().await.unwrap().bytes().await.unwrap();
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(&bytes).unwrap())
        .unwrap();
    (doc, bytes.to_vec())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
