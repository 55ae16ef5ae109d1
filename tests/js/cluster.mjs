// Cluster mode: WebsocketProvider clients on different wedsync nodes of one wedding (one room)
// converge through the nodes' shared Redis; awareness crosses nodes; the presence API of every
// node lists the people on every node.
//
//   node cluster.mjs ws://NODE1 ROOM --also ws://NODE2 --also ws://NODE3 [--timeout-ms MS]
//
// One client per URL (A on the first, B on the second, ...). Each sets an awareness user name and
// edits Y.Map, Y.Array and Y.Text concurrently; then each edits what came from another node.
// Checks, in order:
// 1. every client ends with the same state vector and JSON, holding every client's edits;
// 2. every client sees every other client's awareness state;
// 3. `GET /api/weddings/ROOM/presence` on every node lists one entry per client, each with a
//    `node` field, the entries spread over as many distinct nodes as there are URLs, and the
//    awareness client ids of all clients;
// 4. the last client leaves (provider.destroy): the others see its awareness state removed and
//    every node's presence API stops listing it.
//
// Output: {"clients": [{name, url, clientId}], "json": ..., "stateVector": ...,
//          "presence": {URL: answer}, "presenceAfterLeave": {URL: answer}}

import { main, connect, waitSynced, waitUntil, sleep, sameDoc, docJSON, canonical, stateVector, assert, Y } from './lib.mjs'

async function getJSON (url) {
  const res = await fetch(url)
  const text = await res.text()
  try {
    return { status: res.status, json: JSON.parse(text) }
  } catch (e) {
    throw new Error(`GET ${url}: ${res.status}, body is not JSON: ${text}`)
  }
}

const presenceUrl = (ws, room) =>
  `${ws.replace(/^ws/, 'http')}/api/weddings/${encodeURIComponent(room)}/presence`

// GET the presence API of node `u` until `pred(answer)` holds; reject after `timeoutMs` with the last answer.
async function pollPresence (u, room, pred, what, timeoutMs = 10000) {
  const started = Date.now()
  let last
  for (;;) {
    try {
      last = await getJSON(presenceUrl(u, room))
      if (last.status === 200 && pred(last.json)) return last.json
    } catch (e) {
      last = { error: String(e) }
    }
    if (Date.now() - started > timeoutMs) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}; last answer: ${JSON.stringify(last)}`)
    }
    await sleep(50)
  }
}

// Awareness client ids listed in a presence answer (each entry's `awareness` is keyed by id).
function presenceIds (answer) {
  const ids = new Set()
  for (const entry of answer?.connected ?? []) {
    for (const id of Object.keys(entry.awareness ?? {})) ids.add(Number(id))
  }
  return ids
}

main({ also: 'list' }, async ({ url, room, opts }) => {
  const urls = [url, ...opts.also.map((u) => u.replace(/\/+$/, ''))]
  assert(urls.length >= 2, 'give at least two node URLs (--also)')
  const names = urls.map((_, i) => String.fromCharCode(65 + i)) // A, B, C, ...
  const clients = urls.map((u, i) => connect(u, room, { name: names[i] }))
  clients.forEach((c, i) => c.awareness.setLocalStateField('user', { name: `user ${names[i]}`, node: i }))
  await Promise.all(clients.map((c) => waitSynced(c, 15000)))

  // Round 1: concurrent edits, same tick, before anyone sees anyone else's.
  for (const [i, c] of clients.entries()) {
    const tag = names[i]
    c.doc.transact(() => {
      const map = c.doc.getMap('map')
      map.set(`from-${tag}`, { tag, node: i })
      map.set('contested', tag)
      const guest = new Y.Map()
      guest.set('name', `guest of ${tag}`)
      guest.set('rsvp', 'pending')
      map.set(`guest-${tag}`, guest)
      c.doc.getArray('array').insert(0, [`${tag}1`, `${tag}2`])
      c.doc.getText('text').insert(0, `hello from ${tag}. `)
    })
  }
  const everyone = (c) => names.every((t) => c.doc.getMap('map').has(`guest-${t}`))
  await waitUntil(() => clients.every(everyone), 'every client sees every other client\'s first edits', 15000)
    .catch((e) => {
      throw new Error(`${e.message}\n${clients.map((c) => `${c.name}=${canonical(docJSON(c.doc))}`).join('\n')}`)
    })

  // Round 2: each client edits what the next node's client created.
  for (const [i, c] of clients.entries()) {
    const other = names[(i + 1) % names.length]
    c.doc.getMap('map').get(`guest-${other}`).set('rsvp', `yes (set by ${names[i]})`)
    const arr = c.doc.getArray('array')
    const idx = arr.toArray().indexOf(`${other}1`)
    if (idx >= 0) arr.delete(idx, 1)
    c.doc.getText('text').insert(c.doc.getText('text').length, `${names[i]} done. `)
  }
  const done = (c) => {
    const map = c.doc.getMap('map')
    const text = c.doc.getText('text').toString()
    return names.every((t, i) => {
      const setter = names[(i - 1 + names.length) % names.length]
      return map.get(`guest-${t}`)?.get('rsvp') === `yes (set by ${setter})` && text.includes(`${setter} done. `)
    })
  }
  await waitUntil(() => clients.every(done) && clients.every((c) => sameDoc(c.doc, clients[0].doc)),
    'every client has every edit and all documents are equal', 15000).catch((e) => {
    throw new Error(`${e.message}\n${clients.map((c) => `${c.name}=${canonical(docJSON(c.doc))} sv=${canonical(stateVector(c.doc))}`).join('\n')}`)
  })
  const json = docJSON(clients[0].doc)
  const leftovers = json.array.filter((x) => /^[A-Z][12]$/.test(x)).sort()
  assert(canonical(leftovers) === canonical(names.map((t) => `${t}2`).sort()),
    `array keeps exactly the X2 items: ${JSON.stringify(json.array)}`)
  for (const t of names) assert(json.text.includes(`hello from ${t}. `), `text has ${t}'s insert: ${json.text}`)
  assert(names.includes(json.map.contested), `contested key resolved to one writer: ${json.map.contested}`)

  // Awareness crosses nodes.
  const ids = clients.map((c) => c.doc.clientID)
  for (const c of clients) {
    await waitUntil(() => clients.every((o, j) => c.awareness.getStates().get(ids[j])?.user?.name === `user ${names[j]}`),
      `${c.name} sees the awareness state of every client`, 10000).catch((e) => {
      throw new Error(`${e.message}; ${c.name} has ${JSON.stringify([...c.awareness.getStates().entries()])}`)
    })
  }

  // The presence API of every node lists everyone, each entry with its node.
  const presence = {}
  for (const u of urls) {
    const answer = await pollPresence(u, room, (json) => ids.every((id) => presenceIds(json).has(id)),
      `GET presence on ${u} lists the awareness ids ${ids}`)
    const connected = answer.connected
    assert(connected.length === clients.length,
      `presence on ${u} lists ${clients.length} connections: ${JSON.stringify(connected)}`)
    assert(connected.every((e) => typeof e.node === 'string' && e.node.length > 0),
      `every presence entry on ${u} names its node: ${JSON.stringify(connected)}`)
    const nodes = new Set(connected.map((e) => e.node))
    assert(nodes.size === urls.length,
      `presence on ${u} spans ${urls.length} distinct nodes: ${JSON.stringify([...nodes])}`)
    presence[u] = answer
  }

  // The last client leaves: its awareness state and presence entry go away everywhere.
  const leaving = clients[clients.length - 1]
  const leftId = leaving.doc.clientID
  leaving.destroy()
  for (const c of clients.slice(0, -1)) {
    await waitUntil(() => !c.awareness.getStates().has(leftId),
      `${c.name} sees ${leaving.name}'s awareness state removed after it left`, 10000)
  }
  const presenceAfterLeave = {}
  for (const u of urls) {
    presenceAfterLeave[u] = await pollPresence(u, room,
      (json) => !presenceIds(json).has(leftId) && json.connected.length === clients.length - 1,
      `GET presence on ${u} drops ${leaving.name} (client id ${leftId})`)
  }

  return {
    clients: clients.map((c, i) => ({ name: c.name, url: urls[i], clientId: ids[i] })),
    json,
    stateVector: stateVector(clients[0].doc),
    presence,
    presenceAfterLeave
  }
})
