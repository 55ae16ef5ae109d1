//! y-websocket framing on top of `yrs::sync`.
//!
//! Why it exists: yrs gives us the message types ([`Message`], [`SyncMessage`],
//! [`AwarenessUpdate`]) and their encoders, but its `MessageReader` treats a truncated trailing
//! message as a clean end of input. A server must tell the two apart: a frame is accepted only
//! if every byte in it belongs to a complete, well-formed message, and it is decoded fully
//! before any of it is applied. This module does that framing with yrs' own cursor and decoders,
//! and owns the wire constants (message tags, the durable-ack extension, close codes).
//!
//! Wire format (lib0 encoding, one or more messages per client frame; the server sends one
//! message per frame because the JavaScript client reads only one):
//! ```text
//! message   = varuint(type) payload
//! type 0    sync:      varuint(step: 0 = step1 | 1 = step2 | 2 = update) varbuf
//! type 1    awareness: varbuf(awareness update)
//! type 2    auth:      varuint(0 = permission denied) varstring(reason)
//! type 3    query awareness (no payload)
//! type 100  ack (server -> client, opt-in with ?ack=1): varuint(update messages stored so far)
//! ```

use bytes::Bytes;
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;
use yrs::sync::{AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::{Encode, Encoder, EncoderV1};
use yrs::StateVector;

/// y-protocols message type: document sync.
pub const MSG_SYNC: u8 = 0;
/// y-protocols message type: awareness update.
pub const MSG_AWARENESS: u8 = 1;
/// y-protocols message type: auth.
pub const MSG_AUTH: u8 = 2;
/// y-protocols message type: query awareness.
pub const MSG_QUERY_AWARENESS: u8 = 3;
/// wedsync extension: durable acknowledgement (server to client only).
pub const MSG_ACK: u8 = 100;

const SYNC_STEP1: u8 = 0;
const SYNC_STEP2: u8 = 1;
const SYNC_UPDATE: u8 = 2;

/// WebSocket close codes used by wedsync (see docs/protocol.md).
pub mod close {
    /// Server shutting down (clients reconnect elsewhere or later).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error: unknown message type, message not allowed from a client.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Unsupported data: a text frame.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Invalid payload: a message or update that does not decode or cannot be applied.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation: rate limit exceeded.
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error: the document could not be loaded or stored.
    pub const INTERNAL: u16 = 1011;
    /// Try again later: the client cannot keep up, or the store is full.
    pub const TRY_AGAIN: u16 = 1013;
    /// No pong to two consecutive pings.
    pub const PING_TIMEOUT: u16 = 4000;
    /// The token expired or was revoked during the session.
    pub const UNAUTHORIZED: u16 = 4401;
}

/// Why a client frame was refused. Each variant maps to a close code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("truncated or malformed message: {0}")]
    Malformed(String),
    #[error("unknown message type {0}")]
    UnknownType(u64),
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
    #[error("message type {0} is not accepted from clients")]
    NotFromClient(u8),
}

impl FrameError {
    /// The WebSocket close code this error closes the connection with.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::Empty | FrameError::Malformed(_) => close::INVALID_PAYLOAD,
            FrameError::UnknownType(_)
            | FrameError::UnknownSyncType(_)
            | FrameError::NotFromClient(_) => close::PROTOCOL_ERROR,
        }
    }
}

fn malformed(e: impl std::fmt::Display) -> FrameError {
    FrameError::Malformed(e.to_string())
}

/// Refuses a buffer whose leading varuint count cannot fit in the rest of it, given that each
/// entry takes at least `min_entry_bytes`. yrs 0.28.1 reserves a `HashMap` for the declared
/// count before reading a single entry (`Update` clients, `AwarenessUpdate` clients); the
/// reservation is fallible, but hashbrown initialises its control bytes, so a 4-byte update
/// declaring 75 million clients touched ~134 MB and asked for 5.5 GB (found by the
/// `apply_update` fuzz target). One check of the count against the input length prevents it.
pub fn check_declared_count(buf: &[u8], min_entry_bytes: usize) -> Result<(), FrameError> {
    let mut cur = Cursor::new(buf);
    let count: u64 = cur.read_var().map_err(malformed)?;
    let rest = (buf.len() - cur.next) as u64;
    if count > rest / min_entry_bytes.max(1) as u64 {
        return Err(FrameError::Malformed(format!(
            "declared count {count} does not fit in {rest} bytes"
        )));
    }
    Ok(())
}

/// The pre-check for a v1 update (each client entry: struct count, client id, clock).
pub fn check_update(raw: &[u8]) -> Result<(), FrameError> {
    check_declared_count(raw, 3)
}

/// Splits one binary client frame into messages. Either the whole frame is well formed and
/// every message is returned, or an error is returned and nothing should be applied.
///
/// Document updates are returned as raw bytes (not decoded here): decoding an update is the
/// expensive, attacker-sensitive step and is done where it can be bounded.
pub fn decode_client_frame(data: &[u8]) -> Result<Vec<Message>, FrameError> {
    if data.is_empty() {
        return Err(FrameError::Empty);
    }
    let mut cur = Cursor::new(data);
    let mut out = Vec::with_capacity(1);
    while cur.has_content() {
        let tag: u64 = cur.read_var().map_err(malformed)?;
        let msg = match tag {
            t if t == MSG_SYNC as u64 => {
                let step: u64 = cur.read_var().map_err(malformed)?;
                let buf = cur.read_buf().map_err(malformed)?;
                match step {
                    s if s == SYNC_STEP1 as u64 => {
                        // each entry: client id, clock
                        check_declared_count(buf, 2)?;
                        let sv = StateVector::decode_v1(buf).map_err(malformed)?;
                        Message::Sync(SyncMessage::SyncStep1(sv))
                    }
                    s if s == SYNC_STEP2 as u64 => {
                        Message::Sync(SyncMessage::SyncStep2(buf.to_vec()))
                    }
                    s if s == SYNC_UPDATE as u64 => {
                        Message::Sync(SyncMessage::Update(buf.to_vec()))
                    }
                    other => return Err(FrameError::UnknownSyncType(other)),
                }
            }
            t if t == MSG_AWARENESS as u64 => {
                let buf = cur.read_buf().map_err(malformed)?;
                // each entry: client id, clock, json string length
                check_declared_count(buf, 3)?;
                let update = AwarenessUpdate::decode_v1(buf).map_err(malformed)?;
                check_awareness(&update)?;
                Message::Awareness(update)
            }
            t if t == MSG_AUTH as u64 => {
                let kind: u64 = cur.read_var().map_err(malformed)?;
                let reason = if kind == 0 {
                    Some(cur.read_string().map_err(malformed)?.to_string())
                } else {
                    None
                };
                Message::Auth(reason)
            }
            t if t == MSG_QUERY_AWARENESS as u64 => Message::AwarenessQuery,
            t if t == MSG_ACK as u64 => return Err(FrameError::NotFromClient(MSG_ACK)),
            other => return Err(FrameError::UnknownType(other)),
        };
        out.push(msg);
    }
    Ok(out)
}

/// Largest accepted awareness state (JSON) of one client: presence is a name, a colour and a
/// cursor, not a document.
pub const MAX_AWARENESS_STATE_BYTES: usize = 64 * 1024;

/// Awareness states are relayed to every client, and JavaScript clients `JSON.parse` them:
/// one that is not JSON (or is huge) is refused here, not passed on.
fn check_awareness(update: &AwarenessUpdate) -> Result<(), FrameError> {
    for entry in update.clients.values() {
        let json = entry.json.as_ref();
        if json == "null" {
            continue;
        }
        if json.len() > MAX_AWARENESS_STATE_BYTES {
            return Err(FrameError::Malformed(format!(
                "awareness state of {} bytes (at most {MAX_AWARENESS_STATE_BYTES})",
                json.len()
            )));
        }
        serde_json::from_str::<serde::de::IgnoredAny>(json)
            .map_err(|e| FrameError::Malformed(format!("awareness state is not JSON: {e}")))?;
    }
    Ok(())
}

/// Decodes a client's update and proves it harmless before anyone stores it: it is applied to
/// an empty scratch document and that document is encoded, with any panic contained. yrs 0.28
/// has inputs that decode and apply but panic when the document is encoded later (merging
/// pending structs); stored, such an update would make its document unreadable for good.
pub fn decode_update_checked(raw: &[u8]) -> Result<yrs::Update, String> {
    use yrs::{Doc, ReadTxn, Transact};
    check_update(raw).map_err(|e| e.to_string())?;
    let check = std::panic::catch_unwind(|| -> Result<(), String> {
        let update = yrs::Update::decode_v1(raw).map_err(|e| e.to_string())?;
        let scratch = Doc::new();
        scratch
            .transact_mut()
            .apply_update(update)
            .map_err(|e| e.to_string())?;
        let _ = scratch
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        Ok(())
    });
    match check {
        Ok(Ok(())) => yrs::Update::decode_v1(raw).map_err(|e| e.to_string()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the update makes the CRDT library fail".into()),
    }
}

/// Encodes one message as one frame payload.
pub fn encode(msg: &Message) -> Bytes {
    Bytes::from(msg.encode_v1())
}

/// `sync update` message carrying a v1 update.
pub fn encode_update(update: &[u8]) -> Bytes {
    let mut enc = EncoderV1::new();
    enc.write_var(MSG_SYNC);
    enc.write_var(SYNC_UPDATE);
    enc.write_buf(update);
    Bytes::from(enc.to_vec())
}

/// The y-protocols auth "permission denied" message.
pub fn encode_permission_denied(reason: &str) -> Bytes {
    encode(&Message::Auth(Some(reason.to_string())))
}

/// The durable-ack extension message: type 100 followed by the count of this connection's
/// update messages stored so far.
///
/// ```
/// // 300 as a lib0 varuint is 0xac 0x02
/// assert_eq!(&wedsync::protocol::encode_ack(300)[..], &[100, 0xac, 0x02]);
/// ```
pub fn encode_ack(stored: u64) -> Bytes {
    let mut enc = EncoderV1::new();
    enc.write_var(MSG_ACK);
    enc.write_var(stored);
    Bytes::from(enc.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Doc, GetString, ReadTxn, Text, Transact};

    fn update_bytes() -> Vec<u8> {
        let doc = Doc::new();
        let t = doc.get_or_insert_text("t");
        t.push(&mut doc.transact_mut(), "hello");
        let txn = doc.transact();
        txn.encode_state_as_update_v1(&StateVector::default())
    }

    #[test]
    fn several_messages_in_one_frame() {
        let u = update_bytes();
        let mut frame = Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
        frame.extend(encode_update(&u));
        frame.extend(Message::AwarenessQuery.encode_v1());
        let msgs = decode_client_frame(&frame).unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[1], Message::Sync(SyncMessage::Update(u.clone())));
        assert_eq!(msgs[2], Message::AwarenessQuery);
        // the update round-trips into a document
        let doc = Doc::new();
        let mut txn = doc.transact_mut();
        txn.apply_update(yrs::Update::decode_v1(&u).unwrap())
            .unwrap();
        drop(txn);
        assert_eq!(
            doc.get_or_insert_text("t").get_string(&doc.transact()),
            "hello"
        );
    }

    #[test]
    fn truncated_trailing_message_is_refused() {
        let u = update_bytes();
        let mut frame = encode_update(&u).to_vec();
        frame.extend_from_slice(&[0, 2, 10, 1]); // update declaring 10 bytes, only 1 present
        assert!(matches!(
            decode_client_frame(&frame),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_types_and_acks_are_refused() {
        assert_eq!(decode_client_frame(&[7]), Err(FrameError::UnknownType(7)));
        assert_eq!(
            decode_client_frame(&[0, 9, 0]),
            Err(FrameError::UnknownSyncType(9))
        );
        assert_eq!(
            decode_client_frame(&[100, 1]),
            Err(FrameError::NotFromClient(100))
        );
        assert_eq!(decode_client_frame(&[]), Err(FrameError::Empty));
        // a varint that never ends
        assert!(decode_client_frame(&[0xff; 12]).is_err());
        assert_eq!(
            FrameError::UnknownType(7).close_code(),
            close::PROTOCOL_ERROR
        );
        assert_eq!(FrameError::Empty.close_code(), close::INVALID_PAYLOAD);
    }

    #[test]
    fn huge_declared_length_does_not_allocate() {
        // sync update declaring a 4 GiB buffer in a 7-byte frame
        let frame = [0u8, 2, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(
            decode_client_frame(&frame),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn awareness_must_be_json_and_small() {
        use yrs::sync::awareness::AwarenessUpdateEntry;
        let frame = |json: &str| {
            let mut clients = std::collections::HashMap::new();
            clients.insert(
                yrs::ClientID::new(1),
                AwarenessUpdateEntry {
                    clock: 1,
                    json: json.into(),
                },
            );
            Message::Awareness(AwarenessUpdate { clients }).encode_v1()
        };
        assert!(decode_client_frame(&frame(r#"{"user":{"name":"A"}}"#)).is_ok());
        assert!(decode_client_frame(&frame("null")).is_ok());
        assert!(matches!(
            decode_client_frame(&frame("{not json")),
            Err(FrameError::Malformed(_))
        ));
        let big = format!("\"{}\"", "x".repeat(MAX_AWARENESS_STATE_BYTES));
        assert!(matches!(
            decode_client_frame(&frame(&big)),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn declared_counts_must_fit_the_input() {
        // found by the apply_update fuzz target: 75 million clients in 4 bytes
        assert!(check_update(&[0xf4, 0xc5, 0xda, 0x23]).is_err());
        // found by the decode_client_frame fuzz target: awareness declaring 2 million clients
        assert!(matches!(
            decode_client_frame(&[0x01, 0x03, 0xff, 0xff, 0x78, 0x2d]),
            Err(FrameError::Malformed(_))
        ));
        // found by the decode_client_frame fuzz target: a state vector declaring ~2^45 entries
        assert!(matches!(
            decode_client_frame(&[0, 0, 8, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0x03, 0x1b]),
            Err(FrameError::Malformed(_))
        ));
        assert!(check_update(&update_bytes()).is_ok());
        assert!(check_update(&[0, 0]).is_ok());
    }

    #[test]
    fn ack_encoding() {
        assert_eq!(&encode_ack(5)[..], &[100, 5]);
        assert_eq!(&encode_ack(300)[..], &[100, 0xac, 0x02]);
        let denied = encode_permission_denied("no");
        assert_eq!(&denied[..3], &[2, 0, 2]);
    }
}
