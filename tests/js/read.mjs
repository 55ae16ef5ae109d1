// Read a room with a fresh client and print its JSON (e.g. after a server restart).
//
//   node read.mjs ws://HOST:PORT ROOM [--expect-entries N] [--timeout-ms MS]
//
// --expect-entries N: fail unless the room holds exactly the N entries write.mjs writes
// (map "entries" e<i> = value-<i>, array "log" = [0..N-1]).
//
// Output: {"json": ..., "hash": ..., "stateVector": {...}}

import { main, connect, waitSynced, docJSON, canonical, sha256, stateVector, assert, entryKey, entryValue } from './lib.mjs'

main({ 'expect-entries': 'number' }, async ({ url, room, opts }) => {
  const r = connect(url, room, { name: 'reader' })
  await waitSynced(r)
  // Sync step 2 from the server carries the whole document: no waiting for more.
  const json = docJSON(r.doc)
  const n = opts['expect-entries']
  if (n !== undefined) {
    const entries = json.entries ?? {}
    const log = json.log ?? []
    const missing = []
    for (let i = 0; i < n; i++) if (entries[entryKey(i)] !== entryValue(i)) missing.push(entryKey(i))
    assert(missing.length === 0, `${missing.length} of ${n} entries missing or wrong, first: ${missing.slice(0, 5)}`)
    assert(Object.keys(entries).length === n, `exactly ${n} entries, found ${Object.keys(entries).length}`)
    assert(canonical(log) === canonical([...Array(n).keys()]), `log is [0..${n - 1}] in order, found ${log.length} items`)
  }
  return { json, hash: sha256(canonical(json)), stateVector: stateVector(r.doc) }
})
