//! Connection limits and hostile input through a real socket: awareness lifecycle, slow
//! consumers, malformed frames, oversized messages, ping timeouts, idle unload, shutdown.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, Text, Transact};

fn text(doc: &Doc) -> String {
    doc.get_or_insert_text("t").get_string(&doc.transact())
}

#[tokio::test]
async fn awareness_is_relayed_and_removed_when_the_socket_closes() {
    let srv = TestServer::start().await;
    let mut a = Client::connect(&srv.url("aw")).await;
    let mut b = Client::connect(&srv.url("aw")).await;
    a.send(&awareness_frame(4242, 1, r#"{"user":{"name":"Ana"}}"#))
        .await;
    let id = yrs::ClientID::new(4242);
    b.recv_until(|r| matches!(r, Received::Msg(Message::Awareness(u)) if u.clients.get(&id).is_some_and(|e| e.json.contains("Ana"))))
        .await
        .expect("b sees a's awareness");
    // a late joiner gets current awareness states on open
    let mut c = Client::connect(&srv.url("aw")).await;
    if !c.awareness_seen.clients.contains_key(&id) {
        c.recv_until(
            |r| matches!(r, Received::Msg(Message::Awareness(u)) if u.clients.contains_key(&id)),
        )
        .await
        .expect("late joiner gets awareness");
    }
    // a drops its socket without a goodbye
    drop(a);
    let removed = b
        .recv_until(|r| matches!(r, Received::Msg(Message::Awareness(u)) if u.clients.get(&id).is_some_and(|e| &*e.json == "null")))
        .await;
    assert!(removed.is_some(), "b is told a's state is gone");
    srv.stop().await;
}

#[tokio::test]
async fn a_connection_cannot_overwrite_another_connections_awareness() {
    let srv = TestServer::start().await;
    let mut a = Client::connect(&srv.url("aw2")).await;
    let mut b = Client::connect(&srv.url("aw2")).await;
    let mut c = Client::connect(&srv.url("aw2")).await;
    let id = yrs::ClientID::new(99);
    a.send(&awareness_frame(99, 1, r#"{"user":{"name":"Ana"}}"#))
        .await;
    c.recv_until(
        |r| matches!(r, Received::Msg(Message::Awareness(u)) if u.clients.contains_key(&id)),
    )
    .await
    .expect("c sees Ana");
    // b tries to take over id 99 with a higher clock, and to remove it
    b.send(&awareness_frame(99, 5, r#"{"user":{"name":"Mallory"}}"#))
        .await;
    b.send(&awareness_frame(99, 6, "null")).await;
    c.drain(Duration::from_millis(400)).await;
    let seen = c.awareness_seen.clients.get(&id).expect("still known");
    assert!(
        seen.json.contains("Ana"),
        "state unchanged, got {}",
        seen.json
    );
    srv.stop().await;
}

/// Real time with a 1 s timeout instead of paused time and 30 s: tokio's auto-advance of paused
/// time does not wait for blocking-pool work (sled flushes), which made paused-time socket tests
/// flaky. The code path is the same; only the configured timeout differs.
#[tokio::test]
async fn stale_awareness_is_swept_with_the_same_clock() {
    let srv = TestServer::start_with(|c| {
        c.limits.awareness_timeout = Duration::from_secs(1);
    })
    .await;
    let mut a = Client::connect(&srv.url("sweep")).await;
    let mut b = Client::connect(&srv.url("sweep")).await;
    let id = yrs::ClientID::new(31337);
    a.send(&awareness_frame(31337, 7, r#"{"cursor":1}"#)).await;
    b.recv_until(
        |r| matches!(r, Received::Msg(Message::Awareness(u)) if u.clients.contains_key(&id)),
    )
    .await
    .expect("b sees the state");
    let seen_at = tokio::time::Instant::now();
    // a stays connected but never renews its state
    let removal = b
        .recv_until(|r| matches!(r, Received::Msg(Message::Awareness(u)) if u.clients.get(&id).is_some_and(|e| &*e.json == "null")))
        .await
        .expect("stale state removed");
    let after = seen_at.elapsed();
    assert!(
        after >= Duration::from_millis(800),
        "not removed before the timeout ({after:?})"
    );
    if let Received::Msg(Message::Awareness(u)) = removal {
        assert_eq!(
            u.clients[&id].clock, 7,
            "removed with the same clock, as y-protocols does"
        );
    }
    // a renewal with the next clock brings the client back
    a.send(&awareness_frame(31337, 8, r#"{"cursor":2}"#)).await;
    b.recv_until(|r| matches!(r, Received::Msg(Message::Awareness(u)) if u.clients.get(&id).is_some_and(|e| e.json.contains("2"))))
        .await
        .expect("renewed state relayed");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_with_1013_while_others_keep_receiving() {
    // more than the server's kernel send buffer (autotuned up to 4 MiB) plus the queue hold
    const CHUNK: usize = 64 * 1024;
    const ROUNDS: usize = 120;
    let srv = TestServer::start_with(|c| c.limits.outgoing_queue = 8).await;
    let url = srv.url("slow");
    // the writer waits for each ack, so every update is its own frame to every subscriber
    let mut writer = Client::connect(&format!("{url}?ack=1")).await;
    let mut fast = Client::connect(&url).await;
    // the slow client completes the handshake, then stops reading (with a tiny TCP buffer)
    let mut slow = Client::connect_small_buffer(&url).await;
    let t = writer.doc.get_or_insert_text("t");
    let chunk = "y".repeat(CHUNK);
    let fast_task = tokio::spawn(async move {
        let ok = fast
            .wait_doc(|d| d.get_or_insert_text("t").len(&d.transact()) as usize == ROUNDS * CHUNK)
            .await;
        (ok, fast)
    });
    for _ in 0..ROUNDS {
        writer.edit(|txn| t.push(txn, &chunk)).await;
        let want = writer.acks + 1;
        writer
            .recv_until(|r| matches!(r, Received::Ack(n) if *n >= want))
            .await
            .expect("ack");
    }
    let (ok, fast) = fast_task.await.unwrap();
    assert!(
        ok,
        "the fast client received every update (closed: {:?})",
        fast.closed
    );
    assert!(fast.closed.is_none());
    // now read what the slow client was sent: the connection ends. The 1013 close frame
    // itself reaches it only if it resumes reading within the server's 2 s close timeout
    // (its socket buffers are full until then), so the server's count is the evidence.
    let close = slow.wait_close().await;
    assert!(
        matches!(close, None | Some((1013, _))),
        "slow consumer closed with 1013 (or a dropped socket), got {close:?}"
    );
    let metrics = reqwest::get(srv.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let slow_closes = metrics
        .lines()
        .find(|l| l.starts_with("wedsync_slow_consumer_closed_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        slow_closes >= 1.0,
        "the server closed a connection with 1013"
    );
    // reconnecting resyncs everything: nothing was lost
    let again = Client::connect(&url).await;
    assert_eq!(
        again.doc.get_or_insert_text("t").len(&again.doc.transact()) as usize,
        ROUNDS * CHUNK
    );
    srv.stop().await;
}

async fn expect_close(url: &str, frame: WsMessage) -> (u16, String) {
    let mut ws = connect_raw(url).await;
    ws.send(frame).await.unwrap();
    loop {
        match tokio::time::timeout(STEP, ws.next())
            .await
            .expect("closes in time")
        {
            Some(Ok(WsMessage::Close(Some(f)))) => {
                return (u16::from(f.code), f.reason.to_string())
            }
            Some(Ok(WsMessage::Close(None))) | None | Some(Err(_)) => {
                panic!("closed without a code")
            }
            Some(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn malformed_frames_are_refused_without_harming_the_room() {
    let srv = TestServer::start_with(|c| c.limits.max_message_bytes = 64 * 1024).await;
    let url = srv.url("bad");
    let mut good = Client::connect(&url).await;
    let t = good.doc.get_or_insert_text("t");
    good.edit(|txn| t.push(txn, "intact")).await;
    good.sync().await;

    let cases: Vec<(&str, WsMessage, u16)> = vec![
        (
            "garbage varint",
            WsMessage::Binary(vec![0xff; 16].into()),
            1007,
        ),
        (
            "truncated update",
            WsMessage::Binary(vec![0, 2, 50, 1, 2].into()),
            1007,
        ),
        ("unknown type", WsMessage::Binary(vec![9, 0].into()), 1002),
        (
            "unknown sync step",
            WsMessage::Binary(vec![0, 7, 0].into()),
            1002,
        ),
        (
            "ack from a client",
            WsMessage::Binary(vec![100, 1].into()),
            1002,
        ),
        (
            "huge declared length",
            WsMessage::Binary(vec![0, 2, 0xff, 0xff, 0xff, 0xff, 0x0f].into()),
            1007,
        ),
        (
            "update that does not decode",
            WsMessage::Binary(
                Message::Sync(SyncMessage::Update(vec![5, 200, 1, 2, 3]))
                    .encode_v1()
                    .into(),
            ),
            1007,
        ),
        ("text frame", WsMessage::Text("hello".into()), 1003),
        ("empty frame", WsMessage::Binary(Vec::new().into()), 1007),
        (
            "oversized message",
            WsMessage::Binary(vec![0; 100 * 1024].into()),
            1009,
        ),
    ];
    for (what, frame, want) in cases {
        let (code, reason) = expect_close(&url, frame).await;
        eprintln!("{what}: closed {code} {reason:?}");
        assert_eq!(code, want, "{what}: {reason}");
        assert!(
            !reason.is_empty() || code == 1009,
            "{what}: close has a reason"
        );
    }
    // the room and its other client are unaffected
    good.edit(|txn| t.push(txn, " still")).await;
    let fresh = Client::connect(&url).await;
    assert_eq!(text(&fresh.doc), "intact still");
    srv.stop().await;
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed() {
    let srv = TestServer::start_with(|c| {
        c.limits.ping_interval = Duration::from_millis(200);
        c.limits.max_missed_pongs = 2;
    })
    .await;
    // tungstenite answers pings only while the socket is read: connect and don't read
    let ws = connect_raw(&srv.url("ping")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut ws = ws;
    let mut code = None;
    while let Ok(Some(frame)) = tokio::time::timeout(STEP, ws.next()).await {
        let Ok(frame) = frame else { break };
        if let WsMessage::Close(f) = frame {
            code = f.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(code, Some(4000), "closed for missing pongs");
    // a client that reads (and so answers pings) stays connected
    let mut alive = Client::connect(&srv.url("ping")).await;
    alive.drain(Duration::from_millis(1200)).await;
    assert!(alive.closed.is_none(), "a responsive client is not closed");
    srv.stop().await;
}

#[tokio::test]
async fn idle_rooms_unload_and_reload_from_the_store() {
    let srv =
        TestServer::start_with(|c| c.limits.room_idle_unload = Duration::from_millis(100)).await;
    let url = srv.url("idle");
    let mut a = Client::connect(&url).await;
    let t = a.doc.get_or_insert_text("t");
    a.edit(|txn| t.push(txn, "kept")).await;
    a.sync().await;
    let sv = a.state_vector();
    drop(a);
    let registry = srv.server().state().registry.clone();
    let deadline = tokio::time::Instant::now() + STEP;
    while registry.loaded("idle").is_some() {
        assert!(tokio::time::Instant::now() < deadline, "room unloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = Client::connect(&url).await;
    assert_eq!(text(&b.doc), "kept");
    assert_eq!(b.state_vector(), sv);
    srv.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_closes_with_1001_and_keeps_every_update() {
    let srv = TestServer::start().await;
    let url = srv.url("bye");
    let mut a = Client::connect(&url).await;
    let t = a.doc.get_or_insert_text("t");
    for i in 0..50 {
        a.edit(|txn| t.push(txn, &format!("{i};"))).await;
    }
    a.sync().await;
    let expected = text(&a.doc);
    // shut down while a is connected
    let closer = tokio::spawn(async move { a.wait_close().await });
    let dir = srv.stop().await;
    assert_eq!(closer.await.unwrap().map(|c| c.0), Some(1001));
    let config = wedsync::Config::for_tests(dir.path());
    let srv = TestServer::start_in(dir, config).await;
    let b = Client::connect(&srv.url("bye")).await;
    assert_eq!(text(&b.doc), expected);
    srv.stop().await;
}

#[tokio::test]
async fn acks_count_stored_update_messages() {
    let srv = TestServer::start().await;
    let mut a = Client::connect(&format!("{}?ack=1", srv.url("acks"))).await;
    let t = a.doc.get_or_insert_text("t");
    for i in 0..10 {
        a.edit(|txn| t.push(txn, &i.to_string())).await;
    }
    // the handshake's step 2 counts as an update message too
    let want = 11;
    a.recv_until(|r| matches!(r, Received::Ack(n) if *n >= want))
        .await
        .expect("acks reach the count of update messages sent");
    assert_eq!(a.acks, want);
    // a client without ?ack=1 never sees type 100
    let mut b = Client::connect(&srv.url("acks")).await;
    let tb = b.doc.get_or_insert_text("t");
    b.edit(|txn| tb.push(txn, "x")).await;
    b.sync().await;
    assert_eq!(b.acks, 0);
    srv.stop().await;
}

/// One task per socket: while a client's own frames wait (every update decoded on the blocking
/// pool, a small in-flight budget that a burst exhausts), frames to that client are still
/// written, and nothing is lost or reordered either way.
#[tokio::test]
async fn frames_to_a_client_keep_flowing_while_its_own_frames_wait() {
    // Every update is decoded on the blocking pool; the in-flight budget is 16 KiB (~15 of
    // these 1 KB frames).
    let srv = TestServer::start_with(|c| {
        c.limits.decode_inline_max_bytes = 0;
        c.limits.max_message_bytes = 8 * 1024;
    })
    .await;
    let url = srv.url("flow");
    let mut a = Client::connect(&url).await;
    let mut b = Client::connect(&url).await;
    let chunk = |who: &str, i: usize| format!("{who}{i:03}{}", "-".repeat(1000));
    let expected = |who: &str| (0..60).map(|i| chunk(who, i)).collect::<String>();
    // Both write bursts at once, without reading: each session reads one socket and writes
    // the other's updates to it in the same task.
    let (a, b) = tokio::join!(
        async move {
            let text = a.doc.get_or_insert_text("a");
            for i in 0..60 {
                a.edit(|txn| text.push(txn, &chunk("a", i))).await;
            }
            a
        },
        async move {
            let text = b.doc.get_or_insert_text("b");
            for i in 0..60 {
                b.edit(|txn| text.push(txn, &chunk("b", i))).await;
            }
            b
        }
    );
    let (mut a, mut b) = (a, b);
    let full = |d: &Doc| {
        let a = d.get_or_insert_text("a");
        let b = d.get_or_insert_text("b");
        let t = d.transact();
        (a.get_string(&t), b.get_string(&t))
    };
    assert!(a.wait_doc(|d| full(d).1.len() == expected("b").len()).await);
    assert!(b.wait_doc(|d| full(d).0.len() == expected("a").len()).await);
    assert_eq!(full(&a.doc), (expected("a"), expected("b")));
    assert_eq!(full(&b.doc), (expected("a"), expected("b")));
    assert!(a.closed.is_none() && b.closed.is_none());
    // A fresh client gets the whole 120 KB document as one step 2, fifteen times
    // max_message_bytes (the write-buffer cap was 2 × max_message_bytes and closed it).
    let c = Client::connect(&url).await;
    assert_eq!(full(&c.doc), (expected("a"), expected("b")));
    assert!(c.closed.is_none());
    srv.stop().await;
}

/// With one offloaded check allowed at a time for the whole server (`max_parallel_decodes`),
/// updates from many sockets and an HTTP POST, all checked on the blocking pool, wait their
/// turn: every one is applied and relayed, nobody is closed, and a slot that is never given
/// back would show as a timeout here. (That no more than the cap run at once, and that a
/// timed-out check keeps its slot, is pinned in `decode.rs`'s unit tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_over_the_server_wide_cap_wait_their_turn_and_nothing_is_lost() {
    let run = async {
        let srv = TestServer::start_with(|c| {
            c.limits.decode_inline_max_bytes = 0;
            c.limits.max_parallel_decodes = 1;
        })
        .await;
        let url = srv.url("queue");
        let writers = 6;
        let edits = 20;
        let mut clients = Vec::new();
        for _ in 0..writers {
            clients.push(Client::connect(&url).await);
        }
        let mut tasks = Vec::new();
        for (w, mut c) in clients.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let text = c.doc.get_or_insert_text(format!("w{w}").as_str());
                for i in 0..edits {
                    c.edit(|txn| text.push(txn, &format!("{i:02};"))).await;
                }
                c
            }));
        }
        // An HTTP update at the same time goes through the same cap.
        let http_update = {
            let d = Doc::new();
            let t = d.get_or_insert_text("http");
            t.push(&mut d.transact_mut(), "posted");
            let txn = d.transact();
            yrs::ReadTxn::encode_state_as_update_v1(&txn, &yrs::StateVector::default())
        };
        let posted = reqwest::Client::new()
            .post(srv.http("/api/docs/queue/update"))
            .body(http_update)
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status().as_u16(), 204);
        let mut clients = Vec::new();
        for t in tasks {
            clients.push(t.await.unwrap());
        }
        let expected: String = (0..edits).map(|i| format!("{i:02};")).collect();
        let complete = |d: &Doc| {
            // (the shared types first: yrs would deadlock making one under an open transaction)
            let texts: Vec<_> = (0..writers)
                .map(|w| d.get_or_insert_text(format!("w{w}").as_str()))
                .collect();
            let http = d.get_or_insert_text("http");
            let txn = d.transact();
            texts.iter().all(|t| t.get_string(&txn) == expected)
                && http.get_string(&txn) == "posted"
        };
        for c in clients.iter_mut() {
            assert!(c.wait_doc(|d| complete(d)).await, "a client misses updates");
            assert!(c.closed.is_none(), "closed: {:?}", c.closed);
        }
        let fresh = Client::connect(&url).await;
        assert!(complete(&fresh.doc));
        srv.stop().await;
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("every check ran within 60 s (a slot not given back stalls the rest)");
}
