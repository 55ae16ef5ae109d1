// Shared helpers for the interop scripts.
//
// Every script is `node SCRIPT.mjs ws://HOST:PORT ROOM [options]`, prints exactly one JSON line on
// stdout when every assertion held (exit 0), and otherwise prints a message on stderr and exits
// non-zero. A global deadline guarantees that no script hangs.

import { createHash } from 'node:crypto'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import * as decoding from 'lib0/decoding'

export { Y, WebSocket }

/** y-protocols message types (and our extension). */
export const MSG_SYNC = 0
export const MSG_AWARENESS = 1
export const MSG_AUTH = 2
export const MSG_ACK = 100

/**
 * Parse `URL ROOM [--flag value | --switch]...`.
 * `spec` maps option names to 'string' | 'number' | 'boolean' | 'list' (repeatable string).
 */
export function parseArgs (argv, spec = {}) {
  const positional = []
  const opts = {}
  for (const [name, kind] of Object.entries(spec)) {
    opts[name] = kind === 'list' ? [] : kind === 'boolean' ? false : undefined
  }
  opts['timeout-ms'] = 20000
  spec = { ...spec, 'timeout-ms': 'number' }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (!arg.startsWith('--')) {
      positional.push(arg)
      continue
    }
    const name = arg.slice(2)
    const kind = spec[name]
    if (kind === undefined) throw new Error(`unknown option ${arg}`)
    if (kind === 'boolean') {
      opts[name] = true
      continue
    }
    const value = argv[++i]
    if (value === undefined) throw new Error(`option ${arg} needs a value`)
    if (kind === 'number') {
      opts[name] = Number(value)
      if (!Number.isFinite(opts[name])) throw new Error(`option ${arg}: not a number: ${value}`)
    } else if (kind === 'list') {
      opts[name].push(value)
    } else {
      opts[name] = value
    }
  }
  if (positional.length !== 2) {
    throw new Error('usage: node SCRIPT.mjs ws://HOST:PORT ROOM [options]')
  }
  const [url, room] = positional
  if (!/^wss?:\/\//.test(url)) throw new Error(`server URL must start with ws:// or wss://: ${url}`)
  return { url: url.replace(/\/+$/, ''), room, opts }
}

const openProviders = new Set()
const pendingWaits = new Set() // what the script is waiting for right now, for the deadline message
const openSockets = new Set()

/**
 * Run a script body. `body(args)` returns the object to print. Enforces the global deadline,
 * closes every connection, and maps failures to stderr + exit code 1 (2 for the deadline).
 */
export function main (spec, body) {
  let args
  try {
    args = parseArgs(process.argv.slice(2), spec)
  } catch (e) {
    process.stderr.write(`${e.message}\n`)
    process.exit(64)
  }
  const script = process.argv[1].split('/').pop()
  const deadline = setTimeout(() => {
    const waiting = [...pendingWaits].join('; ') || 'nothing in particular'
    process.stderr.write(`${script}: FAILED: overall timeout of ${args.opts['timeout-ms']} ms exceeded while waiting for: ${waiting}\n`)
    process.exit(2)
  }, args.opts['timeout-ms'])
  Promise.resolve()
    .then(() => body(args))
    .then((result) => {
      clearTimeout(deadline)
      closeAll()
      process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0))
    }, (err) => {
      clearTimeout(deadline)
      process.stderr.write(`${script}: FAILED: ${err && err.stack ? err.stack : err}\n`)
      closeAll()
      process.exit(1)
    })
}

function closeAll () {
  for (const p of openProviders) p.destroy()
  for (const s of openSockets) s.terminate()
}

/**
 * A `WebsocketProvider` client with a fresh Y.Doc. BroadcastChannel is disabled: two providers in
 * one process must talk through the server only, otherwise the test would prove nothing.
 * Auth messages (type 2) and durable acks (type 100) are recorded on `client`.
 */
export function connect (url, room, { params = {}, name = 'client' } = {}) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(url, room, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    maxBackoffTime: 500,
    params
  })
  openProviders.add(provider)
  const client = {
    name,
    doc,
    provider,
    awareness: provider.awareness,
    authDenied: [], // reasons of "permission denied" messages received
    closes: [] // close codes seen (null = closed by us)
  }
  provider.messageHandlers[MSG_AUTH] = (_encoder, decoder) => {
    const kind = decoding.readVarUint(decoder)
    if (kind === 0) client.authDenied.push(decoding.readVarString(decoder))
  }
  provider.on('connection-close', (event) => {
    client.closes.push(event ? { code: event.code, reason: String(event.reason || '') } : null)
  })
  client.destroy = () => {
    provider.destroy()
    openProviders.delete(provider)
  }
  return client
}

/** Resolve when `pred()` is truthy; poll every 10 ms; reject after `timeoutMs` naming `what`. */
export function waitUntil (pred, what, timeoutMs = 10000) {
  pendingWaits.add(what)
  return new Promise((resolve, reject) => {
    const started = Date.now()
    const tick = () => {
      let value
      try {
        value = pred()
      } catch (e) {
        reject(e)
        return
      }
      if (value) {
        resolve(value)
      } else if (Date.now() - started > timeoutMs) {
        reject(new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`))
      } else {
        setTimeout(tick, 10)
      }
    }
    tick()
  }).finally(() => pendingWaits.delete(what))
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Wait until the provider received the server's sync step 2 on its current connection. */
export function waitSynced (client, timeoutMs = 10000) {
  return waitUntil(() => client.provider.synced, `${client.name} synced`, timeoutMs).catch((e) => {
    const last = JSON.stringify(client.closes.slice(-3))
    throw new Error(`${e.message}; ${client.closes.length} connection(s) closed so far, the last: ${last}`)
  })
}

/** JSON of every root type of a doc, including roots this client never declared. */
export function docJSON (doc) {
  const out = {}
  for (const [key, type] of doc.share) {
    out[key] = typedRoot(doc, key, type).toJSON()
  }
  return out
}

// A root created by a remote update is a bare AbstractType until someone asks for it by kind:
// infer the kind from its content.
function typedRoot (doc, key, type) {
  if (type.constructor !== Y.AbstractType) return type
  if (type._start !== null) {
    let item = type._start
    while (item !== null && item.deleted) item = item.right
    const content = item && item.content
    if (content instanceof Y.ContentString || content instanceof Y.ContentFormat) return doc.getText(key)
    return doc.getArray(key)
  }
  return doc.getMap(key)
}

/** JSON with object keys sorted at every level: equal documents give equal strings. */
export function canonical (value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`
  if (value !== null && typeof value === 'object') {
    const keys = Object.keys(value).sort()
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`
  }
  return JSON.stringify(value)
}

export const sha256 = (text) => createHash('sha256').update(text).digest('hex')

/** State vector as a plain object `{ clientId: clock }`, keys sorted. */
export function stateVector (doc) {
  const sv = Y.decodeStateVector(Y.encodeStateVector(doc))
  return Object.fromEntries([...sv.entries()].sort((a, b) => a[0] - b[0]).map(([k, v]) => [String(k), v]))
}

/** Same state vector and same JSON. */
export function sameDoc (a, b) {
  return canonical(stateVector(a)) === canonical(stateVector(b)) &&
    canonical(docJSON(a)) === canonical(docJSON(b))
}

export function assert (cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`)
}

/**
 * A raw y-websocket session on a `ws` socket (no provider): used where the script must control
 * exactly which messages it sends, e.g. to count durable acks. Records every frame by type.
 */
export function rawSocket (url, room, params = {}) {
  const query = new URLSearchParams(params).toString()
  const ws = new WebSocket(`${url}/${encodeURIComponent(room)}${query ? `?${query}` : ''}`)
  ws.binaryType = 'arraybuffer'
  openSockets.add(ws)
  const session = { ws, acks: [], types: [], closed: null }
  ws.on('message', (data) => {
    const decoder = decoding.createDecoder(new Uint8Array(data))
    const type = decoding.readVarUint(decoder)
    session.types.push(type)
    if (type === MSG_ACK) session.acks.push(decoding.readVarUint(decoder))
  })
  ws.on('close', (code, reason) => { session.closed = { code, reason: reason.toString() } })
  session.opened = new Promise((resolve, reject) => {
    ws.once('open', resolve)
    ws.once('error', reject)
    ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode} on upgrade`)))
  })
  return session
}

// The entries that write.mjs writes and read.mjs checks.
export const entryKey = (i) => `e${i}`
export const entryValue = (i) => `value-${i}`

/** Entry i: map "entries" e<i> = value-<i>, and i pushed to array "log"; one transaction each. */
export function writeEntries (doc, n) {
  for (let i = 0; i < n; i++) {
    doc.transact(() => {
      doc.getMap('entries').set(entryKey(i), entryValue(i))
      doc.getArray('log').push([i])
    })
  }
}
