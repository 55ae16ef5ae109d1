//! The Redis side of cluster mode: key names, the Lua scripts that must run atomically, and
//! the parsing of their replies.
//!
//! Why scripts: a node opening a room must read the snapshot and the stream tail after it as
//! one consistent picture (a compaction in between would otherwise make it miss or double
//! entries), and a compaction must check its lease, move the snapshot forward, trim and leave
//! its marker in one step. Redis runs a script without interleaving other commands.

use redis::Value;

use super::ClusterError;

/// Keys of one document. The document name is the hash tag, so a room's keys stay on one slot.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub updates: String,
    pub awareness: String,
    pub snapshot: String,
    pub epoch: String,
    pub lease: String,
}

impl Keys {
    pub fn new(doc: &str) -> Keys {
        let k = |what: &str| format!("wedsync:{{{doc}}}:{what}");
        Keys {
            updates: k("updates"),
            awareness: k("awareness"),
            snapshot: k("snapshot"),
            epoch: k("epoch"),
            lease: k("lease"),
        }
    }
}

/// Snapshot + tail, epoch and recent awareness, read atomically.
///
/// KEYS: updates, snapshot, epoch, awareness. ARGV: a fresh epoch, used if the room has none
/// (a new room, or a Redis that lost its data). Returns
/// `{epoch, snapshot, snapshot_id, last_id, tail, awareness_last_id, recent_awareness}`.
pub(crate) const JOIN: &str = r#"
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[3], epoch)
end
local snap = redis.call('HMGET', KEYS[2], 'd', 'id')
local from = snap[2]
if not from then from = '0-0' end
local tail = redis.call('XRANGE', KEYS[1], '(' .. from, '+')
local last = from
if #tail > 0 then last = tail[#tail][1] end
local aw = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 256)
local aw_last = '0-0'
if #aw > 0 then aw_last = aw[1][1] end
return {epoch, snap[1] or '', from, last, tail, aw_last, aw}
"#;

/// Moves the snapshot forward under a lease, trims the stream behind it and appends a marker
/// whose `trim` field is the newest id the trim deleted (a reader whose position was below it
/// when the trim ran lost entries and must re-join; see `reader`).
///
/// KEYS: updates, snapshot, lease. ARGV: lease token, snapshot bytes, id the snapshot covers,
/// lowest id to keep (the retention window), writer instance. Returns 0 when the lease is not
/// ours (fenced), 1 when the stored snapshot is already as new (nothing done: idempotent),
/// 2 when compacted.
pub(crate) const COMPACT: &str = r#"
local function older(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
local cur = redis.call('HGET', KEYS[2], 'id')
if cur and not older(cur, ARGV[3]) then return 1 end
redis.call('HSET', KEYS[2], 'd', ARGV[2], 'id', ARGV[3])
local keep = ARGV[4]
if older(ARGV[3], keep) then keep = ARGV[3] end
-- the newest entry this trim deletes (XINFO's max-deleted-entry-id ignores XTRIM in 7.0)
local deleted = '0-0'
if keep ~= '0-0' then
  local gone = redis.call('XREVRANGE', KEYS[1], '(' .. keep, '-', 'COUNT', 1)
  if #gone > 0 then deleted = gone[1][1] end
end
redis.call('XTRIM', KEYS[1], 'MINID', keep)
redis.call('XADD', KEYS[1], '*', 'trim', deleted, 'n', ARGV[5])
return 2
"#;

/// Releases a lease only if it is still ours. KEYS: lease. ARGV: token.
pub(crate) const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// One stream entry: its id and its field/value pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub id: String,
    pub fields: Vec<(String, Vec<u8>)>,
}

impl Entry {
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.field(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// What [`JOIN`] returned.
#[derive(Debug, Clone)]
pub(crate) struct JoinReply {
    pub epoch: String,
    /// Empty when the room was never compacted.
    pub snapshot: Vec<u8>,
    pub last_id: String,
    pub tail: Vec<Entry>,
    pub awareness_last_id: String,
    /// Newest first.
    pub awareness: Vec<Entry>,
}

fn bad(what: &str) -> ClusterError {
    ClusterError::Protocol(format!("unexpected reply from Redis: {what}"))
}

pub(crate) fn bytes(v: &Value) -> Result<Vec<u8>, ClusterError> {
    match v {
        Value::BulkString(b) => Ok(b.clone()),
        Value::SimpleString(s) => Ok(s.as_bytes().to_vec()),
        Value::Okay => Ok(b"OK".to_vec()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        Value::Nil => Ok(Vec::new()),
        _ => Err(bad("expected a string")),
    }
}

pub(crate) fn string(v: &Value) -> Result<String, ClusterError> {
    String::from_utf8(bytes(v)?).map_err(|_| bad("a string that is not UTF-8"))
}

fn array(v: &Value) -> Result<&[Value], ClusterError> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        _ => Err(bad("expected an array")),
    }
}

/// Parses `[[id, [field, value, ...]], ...]` (XRANGE, one stream of XREAD).
pub(crate) fn entries(v: &Value) -> Result<Vec<Entry>, ClusterError> {
    if matches!(v, Value::Nil) {
        return Ok(Vec::new());
    }
    array(v)?
        .iter()
        .map(|e| {
            let pair = array(e)?;
            let [id, fields] = pair else {
                return Err(bad("a stream entry that is not [id, fields]"));
            };
            let fields = array(fields)?;
            let mut out = Vec::with_capacity(fields.len() / 2);
            for kv in fields.chunks(2) {
                if let [k, v] = kv {
                    out.push((string(k)?, bytes(v)?));
                }
            }
            Ok(Entry {
                id: string(id)?,
                fields: out,
            })
        })
        .collect()
}

pub(crate) fn join_reply(v: &Value) -> Result<JoinReply, ClusterError> {
    let parts = array(v)?;
    let [epoch, snapshot, _from, last, tail, aw_last, aw] = parts else {
        return Err(bad("join script reply"));
    };
    Ok(JoinReply {
        epoch: string(epoch)?,
        snapshot: bytes(snapshot)?,
        last_id: string(last)?,
        tail: entries(tail)?,
        awareness_last_id: string(aw_last)?,
        awareness: entries(aw)?,
    })
}

/// Parses an XREAD reply: `[[key, entries], ...]` or nil (timeout or unblocked).
pub(crate) fn xread_reply(v: &Value) -> Result<Vec<(String, Vec<Entry>)>, ClusterError> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Map(pairs) => pairs
            .iter()
            .map(|(k, e)| Ok((string(k)?, entries(e)?)))
            .collect(),
        _ => array(v)?
            .iter()
            .map(|stream| {
                let pair = array(stream)?;
                let [key, e] = pair else {
                    return Err(bad("an XREAD stream that is not [key, entries]"));
                };
                Ok((string(key)?, entries(e)?))
            })
            .collect(),
    }
}

/// A stream id `ms-seq` as numbers, for ordering.
pub(crate) fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// `a < b` for stream ids (unparseable ids sort first).
pub(crate) fn id_less(a: &str, b: &str) -> bool {
    parse_id(a).unwrap_or((0, 0)) < parse_id(b).unwrap_or((0, 0))
}

/// The lowest id a compaction keeps: `retention_ms` before `upto` (never after it).
pub(crate) fn retention_floor(upto: &str, retention_ms: u64) -> String {
    let (ms, _) = parse_id(upto).unwrap_or((0, 0));
    format!("{}-0", ms.saturating_sub(retention_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let k = Keys::new("w-1");
        for key in [&k.updates, &k.awareness, &k.snapshot, &k.epoch, &k.lease] {
            assert!(key.starts_with("wedsync:{w-1}:"), "{key}");
        }
    }

    #[test]
    fn ids_order_numerically() {
        assert!(id_less("9-5", "10-0"));
        assert!(id_less("10-2", "10-10"));
        assert!(!id_less("10-10", "10-10"));
        assert!(id_less("0-0", "1-0"));
        assert_eq!(retention_floor("5000-3", 1000), "4000-0");
        assert_eq!(retention_floor("500-3", 1000), "0-0");
    }

    #[test]
    fn parses_stream_entries() {
        let v = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"1-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"n".to_vec()),
                Value::BulkString(b"a:1".to_vec()),
                Value::BulkString(b"u".to_vec()),
                Value::BulkString(vec![0, 0]),
            ]),
        ])]);
        let e = entries(&v).unwrap();
        assert_eq!(e[0].id, "1-0");
        assert_eq!(e[0].text("n"), Some("a:1"));
        assert_eq!(e[0].field("u"), Some(&[0u8, 0][..]));
        assert!(entries(&Value::Int(3)).is_err());
    }
}
