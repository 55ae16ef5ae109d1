// Two WebsocketProvider clients edit Y.Map, Y.Array and Y.Text of one room concurrently and must
// converge to the same document through the server.
//
//   node converge.mjs ws://HOST:PORT ROOM [--wait-for-key KEY]... [--timeout-ms MS]
//
// --wait-for-key KEY: another peer (e.g. a Rust yrs client) edits the room too and sets KEY in
// the root map "map" in the same transaction as all its other edits: only report once both JS
// clients have it, so the printed document includes that peer's edits.
//
// Output: {"a": json, "b": json, "hash": sha256(canonical json), "stateVector": {...}}

import { main, connect, waitSynced, waitUntil, sameDoc, docJSON, canonical, sha256, stateVector, assert, Y } from './lib.mjs'

main({ 'wait-for-key': 'list' }, async ({ url, room, opts }) => {
  const a = connect(url, room, { name: 'A' })
  const b = connect(url, room, { name: 'B' })
  await Promise.all([waitSynced(a), waitSynced(b)])

  // Concurrent edits: both clients edit in the same tick, before either sees the other.
  for (const [c, tag] of [[a, 'A'], [b, 'B']]) {
    c.doc.transact(() => {
      const map = c.doc.getMap('map')
      map.set(`from-${tag}`, { tag, n: tag.charCodeAt(0) })
      map.set('contested', tag) // same key from both: last-writer-wins must pick one for both
      const guest = new Y.Map()
      guest.set('name', `guest of ${tag}`)
      guest.set('rsvp', 'pending')
      map.set(`guest-${tag}`, guest)
      c.doc.getArray('array').insert(0, [`${tag}1`, `${tag}2`])
      c.doc.getText('text').insert(0, `hello from ${tag}. `)
    })
  }
  // A second round: edit content that came from the other side once it arrives.
  await waitUntil(() => a.doc.getMap('map').has('from-B') && b.doc.getMap('map').has('from-A'),
    'each client sees the other one\'s first edits')
  a.doc.getMap('map').get('guest-B').set('rsvp', 'yes')
  const barray = b.doc.getArray('array')
  barray.delete(barray.toArray().indexOf('B1'), 1)
  b.doc.getText('text').insert(b.doc.getText('text').length, 'bye.')

  const expectedKeys = ['from-A', 'from-B', 'guest-A', 'guest-B', 'contested', ...opts['wait-for-key']]
  await waitUntil(() => sameDoc(a.doc, b.doc) &&
    expectedKeys.every((k) => a.doc.getMap('map').has(k)) &&
    a.doc.getMap('map').get('guest-B').get('rsvp') === 'yes' &&
    a.doc.getText('text').toString().endsWith('bye.') &&
    canonical(a.doc.getArray('array').toArray().filter((x) => /^[AB][12]$/.test(x)).sort()) === '["A1","A2","B2"]',
  'both clients have every edit and equal documents', 15000).catch((e) => {
    throw new Error(`${e.message}\nA=${canonical(docJSON(a.doc))}\nB=${canonical(docJSON(b.doc))}`)
  })

  const ja = docJSON(a.doc)
  const jb = docJSON(b.doc)
  const text = ja.text
  assert(text.includes('hello from A. ') && text.includes('hello from B. '), `text keeps both inserts: ${text}`)
  assert(['A', 'B'].includes(ja.map.contested), `contested key is A or B: ${ja.map.contested}`)
  assert(canonical(ja) === canonical(jb), 'JSON equal')
  return { a: ja, b: jb, hash: sha256(canonical(ja)), stateVector: stateVector(a.doc) }
})
