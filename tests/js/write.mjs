// Write N known entries to a room and exit only once the server has them.
//
//   node write.mjs ws://HOST:PORT ROOM [--entries N] [--no-ack] [--timeout-ms MS]
//
// Entry i: root map "entries" key `e<i>` = `value-<i>`, and `i` pushed to root array "log", one
// update message (one transaction) per entry. read.mjs --expect-entries N checks them.
//
// Default: a raw socket with `?ack=1` sends exactly N update messages and waits for the durable
// acknowledgement (message type 100, varuint count) to reach N: the entries are stored.
// --no-ack (servers without the extension): a WebsocketProvider writes them, and a second, fresh
// client must see all of them through the server (in the server's memory, not proven durable).
//
// Output: {"entries": N, "mode": "ack"|"no-ack", "acks": [...counts received]}

import { main, connect, rawSocket, waitSynced, waitUntil, assert, Y, MSG_SYNC, entryKey, entryValue, writeEntries } from './lib.mjs'
import * as encoding from 'lib0/encoding'
import * as syncProtocol from 'y-protocols/sync'

main({ entries: 'number', 'no-ack': 'boolean' }, async ({ url, room, opts }) => {
  const n = opts.entries ?? 50
  assert(Number.isInteger(n) && n > 0, '--entries must be a positive integer')

  if (opts['no-ack']) {
    const w = connect(url, room, { name: 'writer' })
    await waitSynced(w)
    writeEntries(w.doc, n)
    const check = connect(url, room, { name: 'checker' })
    await waitSynced(check)
    await waitUntil(() => check.doc.getArray('log').length >= n &&
      check.doc.getMap('entries').get(entryKey(n - 1)) === entryValue(n - 1),
    `a second client sees all ${n} entries`)
    return { entries: n, mode: 'no-ack', acks: [] }
  }

  const session = rawSocket(url, room, { ack: '1' })
  await session.opened
  const doc = new Y.Doc()
  doc.on('update', (update) => {
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MSG_SYNC)
    syncProtocol.writeUpdate(encoder, update)
    session.ws.send(encoding.toUint8Array(encoder))
  })
  writeEntries(doc, n) // exactly n update messages on this connection
  await waitUntil(() => session.acks.length > 0 && session.acks[session.acks.length - 1] >= n,
    `durable ack (type 100) count to reach ${n}`, Math.max(1000, opts['timeout-ms'] - 2000)).catch((e) => {
    throw new Error(`${e.message}; acks received: ${JSON.stringify(session.acks)}; ` +
      `message types received: ${JSON.stringify([...new Set(session.types)])}; close: ${JSON.stringify(session.closed)}`)
  })
  for (let i = 1; i < session.acks.length; i++) {
    assert(session.acks[i] > session.acks[i - 1], `ack counts increase: ${JSON.stringify(session.acks)}`)
  }
  assert(session.acks[session.acks.length - 1] === n,
    `last ack count is the number of update messages sent (${n}): ${JSON.stringify(session.acks)}`)
  session.ws.close(1000)
  await waitUntil(() => session.closed !== null, 'socket closed')
  return { entries: n, mode: 'ack', acks: session.acks }
})
