// The wedding-plan REST API against WebsocketProvider clients: a plan built in yjs shows its
// conflicts at GET /conflicts and in the server's awareness state, fixing the plan clears both,
// GET /api/weddings/ROOM equals the client's toJSON(), and a message POSTed while a client is
// offline reaches it when it reconnects (and reaches a connected client live).
//
//   node plan.mjs ws://HOST:PORT ROOM [--timeout-ms MS]
//
// The server must run in open development mode (no token is sent).
//
// Output: {"conflicts": [...], "awarenessConflicts": [...], "fixed": true, "message": {...},
//          "offlineMessage": {...}, "planEqual": true}

import { main, connect, waitSynced, waitUntil, sleep, canonical, assert, Y } from './lib.mjs'

const SECTIONS = ['meta', 'timeline', 'guests', 'tables', 'vendors', 'tasks', 'budget']

async function rest (base, method, path, body) {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await res.text()
  let json
  try {
    json = JSON.parse(text)
  } catch (e) {
    throw new Error(`${method} ${path}: ${res.status}, body is not JSON: ${text}`)
  }
  return { status: res.status, json }
}

/** Keep calling `GET path` every 25 ms, handing each 200 answer to `sink`; returns a stopper. */
function startPolling (base, path, sink) {
  let stopped = false
  const loop = async () => {
    while (!stopped) {
      const { status, json } = await rest(base, 'GET', path)
      if (status === 200) sink(json)
      await sleep(25)
    }
  }
  const done = loop()
  return async () => { stopped = true; await done }
}

function serverState (client) {
  for (const state of client.awareness.getStates().values()) {
    if (state && state.server === true) return state
  }
  return undefined
}

const item = (fields) => new Y.Map(Object.entries(fields))

main({}, async ({ url, room }) => {
  const base = url.replace(/^ws/, 'http')
  const enc = encodeURIComponent(room)
  const a = connect(url, room, { name: 'A' })
  const b = connect(url, room, { name: 'B' })
  await Promise.all([waitSynced(a), waitSynced(b)])

  // Two tables of 2, three guests at t1, one vendor in two overlapping slots.
  a.doc.transact(() => {
    const meta = a.doc.getMap('meta')
    meta.set('title', 'Ana & Ben')
    meta.set('date', '2026-06-14')
    meta.set('timezone', '+02:00')
    a.doc.getMap('tables').set('t1', item({ name: 'Family', capacity: 2 }))
    a.doc.getMap('tables').set('t2', item({ name: 'Friends', capacity: 2 }))
    for (const [id, name] of [['g1', 'Carla'], ['g2', 'Dino'], ['g3', 'Eva']]) {
      a.doc.getMap('guests').set(id, item({ name, rsvp: 'yes', table: 't1' }))
    }
    a.doc.getMap('vendors').set('v1', item({ name: 'DJ Sol', category: 'music', status: 'booked' }))
    a.doc.getMap('timeline').set('s1', item({
      title: 'Ceremony music', start: '2026-06-14T15:00:00+02:00', end: '2026-06-14T16:00:00+02:00', vendor: 'v1'
    }))
    a.doc.getMap('timeline').set('s2', item({
      title: 'Cocktail set', start: '2026-06-14T15:30:00+02:00', end: '2026-06-14T16:30:00+02:00', vendor: 'v1'
    }))
  })

  let latest
  const stopPolling = startPolling(base, `/api/weddings/${enc}/conflicts`, (json) => { latest = json })
  let report
  try {
    await waitUntil(() => latest && latest.conflicts.length > 0, 'GET /conflicts lists problems')
    report = latest
  } catch (e) {
    throw new Error(`${e.message}; last: ${JSON.stringify(latest)}`)
  }
  const summary = (list) => list.map((c) => `${c.kind} ${c.items.join(',')}`)
  const expected = [
    'table_over_capacity guests/g1,guests/g2,guests/g3,tables/t1',
    'vendor_double_booked timeline/s1,timeline/s2,vendors/v1'
  ]
  assert(canonical(summary(report.conflicts)) === canonical(expected),
    `exactly the two problems: ${JSON.stringify(report.conflicts)}`)

  // The same list in the server's awareness state, on both clients.
  for (const c of [a, b]) {
    await waitUntil(() => {
      const s = serverState(c)
      return s && canonical(s.conflicts) === canonical(report.conflicts)
    }, `${c.name} sees the conflicts in the server's awareness state`).catch((e) => {
      throw new Error(`${e.message}; server state: ${JSON.stringify(serverState(c))}`)
    })
  }
  const awarenessConflicts = serverState(b).conflicts

  // GET /api/weddings/ROOM equals what the client holds.
  const plan = (await rest(base, 'GET', `/api/weddings/${enc}`)).json
  for (const name of SECTIONS) {
    assert(canonical(plan[name]) === canonical(a.doc.getMap(name).toJSON()),
      `section ${name}: REST ${JSON.stringify(plan[name])} vs client ${JSON.stringify(a.doc.getMap(name).toJSON())}`)
  }

  // Fix the plan: move g3 to t2, make the second slot follow the first.
  b.doc.transact(() => {
    b.doc.getMap('guests').get('g3').set('table', 't2')
    b.doc.getMap('timeline').get('s2').set('start', '2026-06-14T16:00:00+02:00')
    b.doc.getMap('timeline').get('s2').set('end', '2026-06-14T17:00:00+02:00')
  })
  try {
    await waitUntil(() => latest && latest.conflicts.length === 0, 'GET /conflicts is empty after the fix')
  } catch (e) {
    throw new Error(`${e.message}; last: ${JSON.stringify(latest)}`)
  } finally {
    await stopPolling()
  }
  for (const c of [a, b]) {
    await waitUntil(() => {
      const s = serverState(c)
      return s && Array.isArray(s.conflicts) && s.conflicts.length === 0
    }, `${c.name} sees the server's awareness conflicts cleared`)
  }

  // A message POSTed while A is offline: B gets it live, A on reconnect.
  a.provider.disconnect()
  await waitUntil(() => !a.provider.wsconnected, 'A disconnected')
  const posted = await rest(base, 'POST', `/api/weddings/${enc}/messages`,
    { channel: 'vendors', text: 'DJ: load-in via the back gate' })
  assert(posted.status === 201, `POST /messages: ${posted.status} ${JSON.stringify(posted.json)}`)
  const message = posted.json
  const has = (c) => c.doc.getArray('messages').toArray().some((m) => m.get('id') === message.id)
  await waitUntil(() => has(b), 'B receives the posted message live')
  await sleep(200)
  assert(!has(a), 'A must not have the message while offline')
  a.provider.connect()
  await waitSynced(a)
  await waitUntil(() => has(a), 'A has the message after reconnecting')
  const offlineMessage = a.doc.getArray('messages').toArray().find((m) => m.get('id') === message.id).toJSON()
  assert(canonical(offlineMessage) === canonical(message),
    `A's copy ${JSON.stringify(offlineMessage)} equals the POST answer ${JSON.stringify(message)}`)

  // And the plan still equals the clients' view, messages included.
  const final = (await rest(base, 'GET', `/api/weddings/${enc}`)).json
  for (const name of SECTIONS) {
    assert(canonical(final[name]) === canonical(a.doc.getMap(name).toJSON()), `final section ${name}`)
  }
  assert(canonical(final.messages) === canonical(a.doc.getArray('messages').toJSON()), 'final messages')

  return { conflicts: report.conflicts, awarenessConflicts, fixed: true, message, offlineMessage, planEqual: true }
})
