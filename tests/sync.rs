//! The y-websocket sync protocol through a real socket: handshake, relays, convergence,
//! awareness, isolation, limits and malformed input.

mod common;

use std::time::Duration;

use common::*;
use yrs::sync::{Message, SyncMessage};
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Array, Doc, GetString, Map, ReadTxn, StateVector, Text, Transact, Update};

fn text(doc: &Doc) -> String {
    let t = doc.get_or_insert_text("t");
    t.get_string(&doc.transact())
}

#[tokio::test]
async fn two_clients_sync_both_ways() {
    let srv = TestServer::start().await;
    let mut a = Client::connect(&srv.url("two-way")).await;
    let mut b = Client::connect(&srv.url("two-way")).await;
    let t = a.doc.get_or_insert_text("t");
    a.edit(|txn| t.push(txn, "hello")).await;
    assert!(b.wait_doc(|d| text(d) == "hello").await, "b got a's edit");
    let m = b.doc.get_or_insert_map("m");
    b.edit(|txn| {
        m.insert(txn, "k", 42);
    })
    .await;
    assert!(
        a.wait_doc(|d| d.get_or_insert_map("m").get(&d.transact(), "k").is_some())
            .await,
        "a got b's edit"
    );
    srv.stop().await;
}

#[tokio::test]
async fn late_joiner_gets_full_state() {
    let srv = TestServer::start().await;
    let mut a = Client::connect(&srv.url("late")).await;
    let t = a.doc.get_or_insert_text("t");
    for i in 0..20 {
        a.edit(|txn| t.push(txn, &format!("{i},"))).await;
    }
    // the edits are durable and applied once a step 1 round trip completes
    a.sync().await;
    let c = Client::connect(&srv.url("late")).await;
    assert_eq!(text(&c.doc), text(&a.doc));
    assert_eq!(c.state_vector(), a.state_vector());
    srv.stop().await;
}

#[tokio::test]
async fn step1_is_answered_with_only_the_missing_diff() {
    let srv = TestServer::start().await;
    let mut a = Client::connect(&srv.url("diff")).await;
    let t = a.doc.get_or_insert_text("t");
    a.edit(|txn| t.push(txn, &"x".repeat(100_000))).await;
    a.sync().await;
    // b already has everything a wrote: the server's answer must not resend it
    let b_doc = Doc::new();
    b_doc
        .transact_mut()
        .apply_update(yrs::Update::decode_v1_bytes(&a.full_update()))
        .unwrap();
    let mut b = common::connect_raw(&srv.url("diff")).await;
    use futures_util::{SinkExt, StreamExt};
    let sv = b_doc.transact().state_vector();
    b.send(tokio_tungstenite::tungstenite::Message::Binary(
        Message::Sync(SyncMessage::SyncStep1(sv)).encode_v1().into(),
    ))
    .await
    .unwrap();
    let mut step2_len = None;
    while step2_len.is_none() {
        let frame = tokio::time::timeout(STEP, b.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Binary(data) = frame {
            use yrs::updates::decoder::Decode;
            if let Ok(Message::Sync(SyncMessage::SyncStep2(u))) = Message::decode_v1(&data) {
                step2_len = Some(u.len());
            }
        }
    }
    let n = step2_len.unwrap();
    assert!(
        n < 100,
        "step 2 for an up-to-date client is tiny, got {n} bytes"
    );
    srv.stop().await;
}

trait DecodeBytes {
    fn decode_v1_bytes(b: &[u8]) -> yrs::Update;
}
impl DecodeBytes for yrs::Update {
    fn decode_v1_bytes(b: &[u8]) -> yrs::Update {
        use yrs::updates::decoder::Decode;
        yrs::Update::decode_v1(b).unwrap()
    }
}

#[tokio::test]
async fn offline_edits_on_both_sides_converge_after_reconnect() {
    let srv = TestServer::start().await;
    let url = srv.url("offline");
    let mut a = Client::connect(&url).await;
    let mut b = Client::connect(&url).await;
    let arr = a.doc.get_or_insert_array("list");
    a.edit(|txn| {
        arr.push_back(txn, "shared");
    })
    .await;
    assert!(
        b.wait_doc(|d| d.get_or_insert_array("list").len(&d.transact()) == 1)
            .await
    );

    // a goes offline and keeps editing
    let a_doc = a.doc.clone();
    drop(a);
    {
        let arr = a_doc.get_or_insert_array("list");
        let mut txn = a_doc.transact_mut();
        arr.push_back(&mut txn, "offline-a");
    }
    // b edits online meanwhile
    let barr = b.doc.get_or_insert_array("list");
    b.edit(|txn| {
        barr.push_back(txn, "online-b");
    })
    .await;
    b.sync().await;

    // a comes back with its document: the handshake exchanges both diffs
    let mut a = Client::connect_with_doc(&url, a_doc).await;
    assert!(
        a.wait_doc(|d| d.get_or_insert_array("list").len(&d.transact()) == 3)
            .await
    );
    assert!(
        b.wait_doc(|d| d.get_or_insert_array("list").len(&d.transact()) == 3)
            .await
    );
    assert_eq!(
        a.doc.get_or_insert_array("list").to_json(&a.doc.transact()),
        b.doc.get_or_insert_array("list").to_json(&b.doc.transact())
    );
    srv.stop().await;
}

#[tokio::test]
async fn rooms_are_isolated() {
    let srv = TestServer::start().await;
    let mut a = Client::connect(&srv.url("room-a")).await;
    let mut b = Client::connect(&srv.url("room-b")).await;
    let t = a.doc.get_or_insert_text("t");
    a.edit(|txn| t.push(txn, "only in a")).await;
    a.sync().await;
    b.drain(Duration::from_millis(300)).await;
    assert_eq!(text(&b.doc), "");
    let c = Client::connect(&srv.url("room-a")).await;
    assert_eq!(text(&c.doc), "only in a");
    srv.stop().await;
}

#[tokio::test]
async fn several_messages_in_one_frame_are_all_handled() {
    let srv = TestServer::start().await;
    let mut a = Client::connect(&srv.url("multi")).await;
    let mut b = Client::connect(&srv.url("multi")).await;
    let src = Doc::new();
    let t = src.get_or_insert_text("t");
    let u1 = {
        let mut txn = src.transact_mut();
        t.push(&mut txn, "one ");
        txn.encode_update_v1()
    };
    let u2 = {
        let mut txn = src.transact_mut();
        t.push(&mut txn, "two");
        txn.encode_update_v1()
    };
    let mut frame = Message::Sync(SyncMessage::Update(u1)).encode_v1();
    frame.extend(Message::Sync(SyncMessage::Update(u2)).encode_v1());
    frame.extend(awareness_frame(777, 1, r#"{"user":{"name":"multi"}}"#).encode_v1());
    frame.extend(Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1());
    a.send_bytes(frame).await;
    assert!(b.wait_doc(|d| text(d) == "one two").await);
    let id = yrs::ClientID::new(777);
    if !b.awareness_seen.clients.contains_key(&id) {
        b.recv_until(
            |r| matches!(r, Received::Msg(Message::Awareness(u)) if u.clients.contains_key(&id)),
        )
        .await
        .expect("awareness from the same frame is relayed");
    }
    // the step 1 at the end of the frame is answered too
    a.recv_until(|r| matches!(r, Received::Msg(Message::Sync(SyncMessage::SyncStep2(_)))))
        .await
        .expect("step 2 answer");
    srv.stop().await;
}

/// Updates of several writers that a room commits together reach every client as one merged
/// update without the client's own edits: everyone converges on the exact union, no writer
/// ever gets its own edits back, and the observer gets frames holding several writers' edits
/// (fewer frames than updates).
#[tokio::test]
async fn a_commit_of_several_writers_is_relayed_merged_and_without_own_edits() {
    writers_converge_without_own_edits(6, true).await;
}

/// Past 8 writers in a commit each writer's updates are merged apart (the room's merge work
/// stays linear): the same guarantees hold.
#[tokio::test]
async fn many_writers_in_one_commit_converge_without_own_edits() {
    writers_converge_without_own_edits(14, false).await;
}

async fn writers_converge_without_own_edits(writers: usize, expect_merged_frames: bool) {
    const EDITS: usize = 60;
    let srv = TestServer::start().await;
    let url = srv.url("merged-commits");
    let mut observer = Client::connect(&url).await;
    let mut clients = Vec::new();
    for _ in 0..writers {
        clients.push(Client::connect(&url).await);
    }
    // Every writer sends as fast as it can, all at once: while one commit is being stored the
    // room queues the others' updates, so commits hold updates of several writers.
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(w, mut c)| {
            tokio::spawn(async move {
                let t = c.doc.get_or_insert_text("t");
                for i in 0..EDITS {
                    c.edit(|txn| t.push(txn, &format!("w{w}-{i};"))).await;
                    tokio::task::yield_now().await;
                }
                c
            })
        })
        .collect();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("writer task"));
    }
    let total = writers * EDITS;
    let complete = |d: &Doc| text(d).matches(';').count() == total;

    let mut observer_frames = 0;
    let mut several_writers = 0;
    while !complete(&observer.doc) {
        match observer.recv(STEP).await {
            Some(Received::Msg(Message::Sync(SyncMessage::Update(u)))) => {
                observer_frames += 1;
                let update = Update::decode_v1(&u).expect("valid update");
                if update.state_vector().iter().count() > 1 {
                    several_writers += 1;
                }
            }
            Some(Received::Close(c)) => panic!("observer closed: {c:?}"),
            None => panic!("observer: no update in time"),
            _ => {}
        }
    }
    let expected = text(&observer.doc);
    for w in 0..writers {
        for i in 0..EDITS {
            assert!(expected.contains(&format!("w{w}-{i};")), "w{w}-{i} missing");
        }
    }
    for (w, c) in clients.iter_mut().enumerate() {
        let own = c.doc.client_id();
        while !complete(&c.doc) {
            match c.recv(STEP).await {
                Some(Received::Msg(Message::Sync(SyncMessage::Update(u)))) => {
                    let update = Update::decode_v1(&u).expect("valid update");
                    assert_eq!(
                        update.state_vector().get(&own),
                        0,
                        "writer {w} received its own edits back"
                    );
                }
                Some(Received::Close(c)) => panic!("writer {w} closed: {c:?}"),
                None => panic!("writer {w}: no update in time"),
                _ => {}
            }
        }
        assert_eq!(text(&c.doc), expected, "writer {w} converged on the union");
    }
    if expect_merged_frames {
        assert!(
            several_writers > 0,
            "no frame held the edits of two writers: commits of several writers were not merged"
        );
        assert!(
            observer_frames < total,
            "{observer_frames} frames for {total} updates: commits were not merged"
        );
    }
    srv.stop().await;
}
