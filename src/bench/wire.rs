//! Just enough of the y-websocket wire format for a load generator that keeps no `Doc`.
//!
//! Why it exists: a benchmark client that integrated every update into a yrs `Doc` would measure
//! itself. Instead each writer hand-encodes a v1 update that inserts one ASCII string into the
//! root `Y.Text` "t", right after its own previous insert (so the update depends on nothing but
//! that writer's previous one and every server can apply it at once). The string is
//! `"<writer>:<seq>:<unix nanos>;"`; receivers pull the strings out of the update's structs
//! without integrating them, which gives latency, loss and duplicate detection. Servers may
//! merge several updates of one writer (wedsync does for bursts) and yrs may squash adjacent
//! strings into one item: the `;` terminator keeps that parseable.

/// Root type the writers insert into.
pub const ROOT: &str = "t";

/// lib0 varuint.
pub fn write_var(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    write_var(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// A reader over lib0-encoded bytes; every method returns `None` on truncation.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn var(&mut self) -> Option<u64> {
        let mut n = 0u64;
        let mut shift = 0;
        loop {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            n |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(n);
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
    }

    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.var()? as usize;
        let end = self.pos.checked_add(len)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    pub fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos.min(self.buf.len())..]
    }
}

/// y-websocket client sync step 1 with the empty state vector.
pub const SYNC_STEP1_EMPTY: [u8; 4] = [0, 0, 1, 0];
/// Sync step 2 carrying the empty update (what an up-to-date client answers).
pub const SYNC_STEP2_EMPTY: [u8; 5] = [0, 1, 2, 0, 0];

/// One writer's chain of inserts: client id, next clock, and whether it inserted before.
pub struct Writer {
    client: u64,
    clock: u64,
}

impl Writer {
    pub fn new(client: u64) -> Self {
        Writer { client, clock: 0 }
    }

    /// The y-websocket `sync update` message inserting `text` (ASCII) after this writer's
    /// previous insert.
    pub fn update_message(&mut self, text: &str) -> Vec<u8> {
        let update = self.update(text);
        let mut msg = Vec::with_capacity(update.len() + 4);
        msg.push(0); // sync
        msg.push(2); // update
        write_str(&mut msg, &update);
        msg
    }

    /// A v1 update with one struct: an Item holding `ContentString(text)`.
    pub fn update(&mut self, text: &str) -> Vec<u8> {
        debug_assert!(text.is_ascii(), "clock lengths are UTF-16 units");
        let mut u = Vec::with_capacity(text.len() + 24);
        write_var(&mut u, 1); // clients
        write_var(&mut u, 1); // structs of this client
        write_var(&mut u, self.client);
        write_var(&mut u, self.clock);
        if self.clock == 0 {
            u.push(4); // ContentString, no origin: the parent is named
            write_var(&mut u, 1); // parent is a root type
            write_str(&mut u, ROOT.as_bytes());
        } else {
            u.push(4 | 0x80); // ContentString with a left origin
            write_var(&mut u, self.client);
            write_var(&mut u, self.clock - 1);
        }
        write_str(&mut u, text.as_bytes());
        write_var(&mut u, 0); // empty delete set
        self.clock += text.len() as u64;
        u
    }
}

/// The payload `"<writer>:<seq>:<nanos>;"` of one write.
pub fn stamp(writer: u32, seq: u32, nanos: u64) -> String {
    format!("{writer}:{seq}:{nanos};")
}

/// What a receiver found in one server frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// Sync step 1 or step 2 (handshake).
    Handshake,
    /// A sync update: the concatenated strings of its inserted items.
    Update(Vec<&'a [u8]>),
    /// Awareness, auth, acks, anything else.
    Other,
}

/// Parses one message (after any Hocuspocus document-name prefix).
pub fn parse_message(msg: &[u8]) -> Option<Received<'_>> {
    let mut r = Reader::new(msg);
    if r.var()? != 0 {
        return Some(Received::Other);
    }
    match r.var()? {
        0 | 1 => Some(Received::Handshake),
        2 => {
            let update = r.bytes()?;
            Some(Received::Update(update_strings(update)?))
        }
        _ => Some(Received::Other),
    }
}

/// The strings of every `ContentString` item in a v1 update (None if it holds anything a
/// benchmark writer never produces, or is malformed).
pub fn update_strings(update: &[u8]) -> Option<Vec<&[u8]>> {
    let mut r = Reader::new(update);
    let mut out = Vec::new();
    let clients = r.var()?;
    for _ in 0..clients {
        let structs = r.var()?;
        let _client = r.var()?;
        let _clock = r.var()?;
        for _ in 0..structs {
            let info = r.u8()?;
            match info & 0x1f {
                0 | 10 => {
                    // GC or Skip: a length
                    r.var()?;
                    continue;
                }
                _ => {}
            }
            if info & 0x80 != 0 {
                r.var()?;
                r.var()?;
            }
            if info & 0x40 != 0 {
                r.var()?;
                r.var()?;
            }
            if info & 0xc0 == 0 {
                if r.var()? == 1 {
                    r.bytes()?; // root name
                } else {
                    r.var()?;
                    r.var()?;
                }
                if info & 0x20 != 0 {
                    r.bytes()?; // parent sub
                }
            }
            match info & 0x1f {
                4 => out.push(r.bytes()?),
                1 => {
                    r.var()?; // deleted length
                }
                _ => return None,
            }
        }
    }
    Some(out)
}

/// Splits `"<writer>:<seq>:<nanos>;"` records (possibly several concatenated).
pub fn records(strings: &[&[u8]]) -> impl Iterator<Item = (u32, u32, u64)> {
    let joined: Vec<u8> = strings.concat();
    let mut out = Vec::new();
    for rec in joined.split(|b| *b == b';') {
        if rec.is_empty() {
            continue;
        }
        let Ok(text) = std::str::from_utf8(rec) else {
            continue;
        };
        let mut it = text.split(':');
        let (Some(w), Some(s), Some(n)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if let (Ok(w), Ok(s), Ok(n)) = (w.parse(), s.parse(), n.parse()) {
            out.push((w, s, n));
        }
    }
    out.into_iter()
}

/// Hocuspocus frames start with the document name; strips it.
pub fn strip_doc_name(frame: &[u8]) -> Option<&[u8]> {
    let mut r = Reader::new(frame);
    r.bytes()?;
    Some(r.rest())
}

/// Prefixes a message with the Hocuspocus document name.
pub fn with_doc_name(doc: &str, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(doc.len() + msg.len() + 2);
    write_str(&mut out, doc.as_bytes());
    out.extend_from_slice(msg);
    out
}

/// The Hocuspocus authentication message (type 2, token sub-type 0, empty token).
pub fn hocuspocus_auth(doc: &str) -> Vec<u8> {
    with_doc_name(doc, &[2, 0, 0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, GetString, ReadTxn, StateVector, Transact, Update};

    #[test]
    fn hand_encoded_inserts_apply_in_yrs_and_parse_back() {
        let mut w = Writer::new(4242);
        let doc = Doc::new();
        let text = doc.get_or_insert_text(ROOT);
        let mut all = Vec::new();
        let mut expected = String::new();
        for seq in 1..=5u32 {
            let s = stamp(7, seq, 1_700_000_000_000_000_000 + u64::from(seq));
            expected.push_str(&s);
            let u = w.update(&s);
            doc.transact_mut()
                .apply_update(Update::decode_v1(&u).unwrap())
                .unwrap();
            all.push(u);
        }
        let txn = doc.transact();
        assert!(txn.store().pending_update().is_none());
        assert_eq!(text.get_string(&txn), expected);
        // The server's re-encoding (possibly squashed into one item) still parses.
        let full = txn.encode_state_as_update_v1(&StateVector::default());
        let recs: Vec<_> = records(&update_strings(&full).unwrap()).collect();
        assert_eq!(recs.len(), 5);
        assert_eq!(recs[4].0, 7);
        assert_eq!(recs[4].1, 5);
        let merged = yrs::merge_updates_v1(&all).unwrap();
        assert_eq!(records(&update_strings(&merged).unwrap()).count(), 5);
    }

    #[test]
    fn messages_are_classified() {
        let mut w = Writer::new(1);
        let msg = w.update_message(&stamp(0, 1, 5));
        match parse_message(&msg).unwrap() {
            Received::Update(s) => {
                assert_eq!(records(&s).collect::<Vec<_>>(), vec![(0, 1, 5)]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_message(&SYNC_STEP1_EMPTY), Some(Received::Handshake));
        assert_eq!(parse_message(&[1, 1, 0]), Some(Received::Other));
        let framed = with_doc_name("room-1", &msg);
        assert_eq!(strip_doc_name(&framed).unwrap(), &msg[..]);
    }
}
