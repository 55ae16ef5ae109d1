//! Regression tests for hostile input found in review: updates that make yrs panic, awareness
//! that is not JSON, and awareness client ids taken over by someone else.

mod common;

use std::time::Duration;

use common::*;
use wedsync::auth::{mint_hs256, unix_now, Access, Claims};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, Text, Transact};

const SECRET: &str = "abuse-test-secret";
/// 89 bytes that decode and apply in yrs 0.28.1 but make it panic when the document is
/// encoded afterwards (found by mutation fuzzing in review).
const PANICKING_UPDATE: &[u8] = include_bytes!("fixtures/yrs-panicking-update.bin");

fn text(doc: &Doc) -> String {
    doc.get_or_insert_text("t").get_string(&doc.transact())
}

fn token(sub: &str, wedding: &str) -> String {
    let now = unix_now();
    mint_hs256(
        SECRET,
        &Claims {
            sub: sub.into(),
            exp: now + 3600,
            nbf: None,
            iat: Some(now),
            jti: None,
            name: None,
            role: None,
            weddings: [(wedding.to_string(), Access::Edit)].into_iter().collect(),
            iss: None,
            aud: None,
        },
    )
    .unwrap()
}

#[tokio::test]
async fn an_update_that_makes_yrs_panic_is_refused_and_the_document_stays_readable() {
    let srv = TestServer::start().await;
    let mut good = Client::connect(&srv.url("poison")).await;
    let t = good.doc.get_or_insert_text("t");
    good.edit(|txn| t.push(txn, "before")).await;
    good.sync().await;

    // over HTTP: 400, nothing stored
    let http = reqwest::Client::new();
    let r = http
        .post(srv.http("/api/docs/poison/update"))
        .body(PANICKING_UPDATE.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // over the socket: the sender is closed with 1007
    let mut bad = Client::connect(&srv.url("poison")).await;
    bad.send(&Message::Sync(SyncMessage::Update(
        PANICKING_UPDATE.to_vec(),
    )))
    .await;
    assert_eq!(bad.wait_close().await.map(|c| c.0), Some(1007));

    // the document is still served, over HTTP and to a new client, now and after a restart
    let r = http
        .get(srv.http("/api/docs/poison/update"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    good.edit(|txn| t.push(txn, " after")).await;
    good.sync().await;
    let fresh = Client::connect(&srv.url("poison")).await;
    assert_eq!(text(&fresh.doc), "before after");
    drop((good, fresh, bad));
    let dir = srv.stop().await;
    let config = wedsync::Config::for_tests(dir.path());
    let srv = TestServer::start_in(dir, config).await;
    let again = Client::connect(&srv.url("poison")).await;
    assert_eq!(text(&again.doc), "before after");
    drop(again);
    srv.stop().await;
}

#[tokio::test]
async fn awareness_that_is_not_json_is_refused_not_relayed() {
    let srv = TestServer::start().await;
    let mut watcher = Client::connect(&srv.url("aw-json")).await;
    let mut bad = Client::connect(&srv.url("aw-json")).await;
    bad.send(&awareness_frame(5, 1, "{not json")).await;
    assert_eq!(bad.wait_close().await.map(|c| c.0), Some(1007));
    watcher.drain(Duration::from_millis(300)).await;
    assert!(
        !watcher
            .awareness_seen
            .clients
            .contains_key(&yrs::ClientID::new(5)),
        "the broken state never reached other clients"
    );
    srv.stop().await;
}

#[tokio::test]
async fn awareness_ids_cannot_be_removed_or_taken_over_by_another_user() {
    let srv = TestServer::start_with(|c| c.auth.jwt_secret = Some(SECRET.into())).await;
    let url = |sub: &str| format!("{}?token={}", srv.url("aw-own"), token(sub, "aw-own"));
    let id = yrs::ClientID::new(4242);
    let mut watcher = Client::connect(&url("watcher")).await;
    let mut ana = Client::connect(&url("ana")).await;
    ana.send(&awareness_frame(4242, 1, r#"{"user":"ana"}"#))
        .await;
    watcher
        .recv_until(
            |r| matches!(r, Received::Msg(Message::Awareness(u)) if u.clients.contains_key(&id)),
        )
        .await
        .expect("ana's state relayed");
    drop(ana); // ana's phone loses its connection: the state is removed (same clock)
    watcher
        .recv_until(|r| matches!(r, Received::Msg(Message::Awareness(u)) if u.clients.get(&id).is_some_and(|e| &*e.json == "null")))
        .await
        .expect("removal relayed");

    // mallory tries to squat ana's client id with a huge clock, and to send removals
    let mut mallory = Client::connect(&url("mallory")).await;
    mallory
        .send(&awareness_frame(
            4242,
            u32::MAX - 1,
            r#"{"user":"mallory"}"#,
        ))
        .await;
    mallory.send(&awareness_frame(4242, u32::MAX, "null")).await;
    mallory.send(&awareness_frame(777, 9, "null")).await;
    watcher.drain(Duration::from_millis(300)).await;
    assert!(
        watcher.awareness_seen.clients[&id].json.as_ref() == "null",
        "mallory's state for ana's id was not relayed"
    );

    // ana comes back with the same client id and her next clock: she is visible again
    let mut ana = Client::connect(&url("ana")).await;
    ana.send(&awareness_frame(4242, 2, r#"{"user":"ana","back":true}"#))
        .await;
    watcher
        .recv_until(|r| matches!(r, Received::Msg(Message::Awareness(u)) if u.clients.get(&id).is_some_and(|e| e.json.contains("back"))))
        .await
        .expect("ana's renewed state relayed");
    drop((ana, mallory, watcher));
    srv.stop().await;
}

#[tokio::test]
async fn many_removals_for_unknown_ids_are_ignored() {
    let srv = TestServer::start().await;
    let mut bad = Client::connect(&srv.url("aw-flood")).await;
    let mut clients = std::collections::HashMap::new();
    for i in 0..50_000u64 {
        clients.insert(
            yrs::ClientID::new(1_000_000 + i),
            yrs::sync::awareness::AwarenessUpdateEntry {
                clock: u32::MAX,
                json: "null".into(),
            },
        );
    }
    let frame = Message::Awareness(yrs::sync::AwarenessUpdate { clients }).encode_v1();
    bad.send_bytes(frame).await;
    bad.sync().await; // processed
                      // nothing was tracked: a newcomer sees no states, and presence lists no awareness
    let newcomer = Client::connect(&srv.url("aw-flood")).await;
    assert!(newcomer
        .awareness_seen
        .clients
        .keys()
        .all(|k| k.get() < 1_000_000 || k.get() >= 1_050_000));
    let presence: serde_json::Value = reqwest::get(srv.http("/api/weddings/aw-flood/presence"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for person in presence["connected"].as_array().unwrap() {
        assert!(person["awareness"].as_object().unwrap().is_empty());
    }
    drop((bad, newcomer));
    srv.stop().await;
}
