// Presence through the server: A's awareness state reaches B, and disappears from B when A leaves,
// both when A says goodbye (provider.destroy sends a null state) and when A's connection just
// drops (the server must remove the state of the client that connection controlled).
//
//   node awareness.mjs ws://HOST:PORT ROOM [--remove-within-ms MS] [--timeout-ms MS]
//
// Output: {"seen": {...state B saw for A...}, "goodbyeRemovedMs": n, "dropSeen": {...},
//          "dropRemovedMs": n}

import { main, connect, waitSynced, waitUntil, assert } from './lib.mjs'

main({ 'remove-within-ms': 'number' }, async ({ url, room, opts }) => {
  const removeWithin = opts['remove-within-ms'] ?? 5000
  const b = connect(url, room, { name: 'B' })
  await waitSynced(b)
  const remote = (clientId) => b.awareness.getStates().get(clientId)

  // Phase 1: A joins, announces itself, leaves politely.
  const a = connect(url, room, { name: 'A' })
  const aName = `Alice ${process.pid}`
  a.awareness.setLocalStateField('user', { name: aName })
  await waitSynced(a)
  const aId = a.doc.clientID
  const seen = await waitUntil(() => remote(aId)?.user?.name === aName && remote(aId),
    `B sees A's awareness state {user:{name:"${aName}"}}`)
  let t0 = Date.now()
  a.destroy()
  await waitUntil(() => !b.awareness.getStates().has(aId),
    'B sees A\'s awareness removed after A disconnected', removeWithin)
  const goodbyeRemovedMs = Date.now() - t0

  // Phase 2: C joins, announces itself, and its TCP connection drops without a goodbye message.
  const c = connect(url, room, { name: 'C' })
  const cName = `Carol ${process.pid}`
  c.awareness.setLocalStateField('user', { name: cName })
  await waitSynced(c)
  const cId = c.doc.clientID
  const dropSeen = await waitUntil(() => remote(cId)?.user?.name === cName && remote(cId),
    `B sees C's awareness state {user:{name:"${cName}"}}`)
  t0 = Date.now()
  c.provider.shouldConnect = false // no reconnect
  c.provider.ws.terminate() // ws: destroy the socket at once, no close frame, no awareness goodbye
  await waitUntil(() => !b.awareness.getStates().has(cId),
    'B sees C\'s awareness removed after C\'s connection dropped (server must clean up)', removeWithin)
  const dropRemovedMs = Date.now() - t0

  assert(b.awareness.getStates().has(b.doc.clientID), 'B still has its own state')
  return { seen, goodbyeRemovedMs, dropSeen, dropRemovedMs }
})
