// Offline editing: A disconnects, edits while B keeps editing online, reconnects, and both
// converge with every edit of both.
//
//   node offline.mjs ws://HOST:PORT ROOM [--timeout-ms MS]
//
// Output: {"json": ..., "hash": ...}

import { main, connect, waitSynced, waitUntil, sleep, sameDoc, docJSON, canonical, sha256, assert } from './lib.mjs'

main({}, async ({ url, room }) => {
  const a = connect(url, room, { name: 'A' })
  const b = connect(url, room, { name: 'B' })
  await Promise.all([waitSynced(a), waitSynced(b)])
  const amap = a.doc.getMap('map')
  const bmap = b.doc.getMap('map')

  amap.set('online-A', 1)
  a.doc.getText('text').insert(0, 'base text.')
  await waitUntil(() => bmap.get('online-A') === 1 && b.doc.getText('text').toString() === 'base text.',
    'B sees A\'s online edits')

  a.provider.disconnect()
  await waitUntil(() => !a.provider.wsconnected, 'A disconnected')
  // Offline edits on A, concurrent online edits on B (same text position, same map key).
  amap.set('offline-A', 'written offline')
  amap.set('contested', 'A')
  a.doc.getArray('array').push(['A-offline'])
  a.doc.getText('text').insert(0, '[A offline] ')
  bmap.set('online-B', 'written while A was away')
  bmap.set('contested', 'B')
  b.doc.getArray('array').push(['B-online'])
  b.doc.getText('text').insert(0, '[B online] ')

  // A really is offline: B must not get A's edits, A must not get B's.
  await sleep(300)
  assert(!bmap.has('offline-A'), 'B must not see A\'s offline edit before A reconnects')
  assert(!amap.has('online-B'), 'A must not see B\'s edit while offline')

  a.provider.connect()
  await waitSynced(a)
  await waitUntil(() => sameDoc(a.doc, b.doc) && amap.has('online-B') && bmap.has('offline-A'),
    'A and B converge after A reconnected').catch((e) => {
    throw new Error(`${e.message}\nA=${canonical(docJSON(a.doc))}\nB=${canonical(docJSON(b.doc))}`)
  })

  const json = docJSON(a.doc)
  assert(json.text.includes('[A offline] ') && json.text.includes('[B online] ') && json.text.endsWith('base text.'),
    `text has both inserts: ${json.text}`)
  assert(json.array.includes('A-offline') && json.array.includes('B-online') && json.array.length === 2,
    `array has both pushes: ${JSON.stringify(json.array)}`)
  assert(['A', 'B'].includes(json.map.contested), 'contested key resolved to one writer')
  assert(canonical(json) === canonical(docJSON(b.doc)), 'JSON equal')
  return { json, hash: sha256(canonical(json)) }
})
