// WebsocketProvider clients behind a load balancer keep editing while a node dies: their
// connections to it break, the providers reconnect (through the same URL) to a live node, sync,
// and every client ends with every edit of every client.
//
//   node failover.mjs ws://BALANCER ROOM [--clients N] [--duration-ms MS] [--pace-ms MS]
//                     [--timeout-ms MS]
//
// Client i sets root map "m" key `js<i>-<k>` = k every pace ms during duration ms, whether it is
// connected or not (offline edits go up with the next sync, as in a browser). The test kills a
// node meanwhile. Afterwards every client must hold all keys of all clients, with equal
// documents.
//
// Output: {"clients": [{name, clientId, written, connects}], "keys": n, "stateVector": {...}}

import { main, connect, waitSynced, waitUntil, sleep, sameDoc, stateVector, assert } from './lib.mjs'

main({ clients: 'number', 'duration-ms': 'number', 'pace-ms': 'number' }, async ({ url, room, opts }) => {
  const n = opts.clients ?? 3
  const duration = opts['duration-ms'] ?? 6000
  const pace = opts['pace-ms'] ?? 20
  const clients = []
  for (let i = 0; i < n; i++) {
    const c = connect(url, room, { name: `js${i}` })
    c.connects = 0
    c.written = 0
    c.provider.on('status', ({ status }) => { if (status === 'connected') c.connects++ })
    clients.push(c)
  }
  await Promise.all(clients.map((c) => waitSynced(c, 15000)))

  const until = Date.now() + duration
  await Promise.all(clients.map(async (c, i) => {
    const map = c.doc.getMap('m')
    while (Date.now() < until) {
      map.set(`js${i}-${c.written}`, c.written)
      c.written++
      await sleep(pace)
    }
  }))

  const total = clients.reduce((s, c) => s + c.written, 0)
  const complete = (c) => clients.every((w, i) => {
    const map = c.doc.getMap('m')
    for (let k = 0; k < w.written; k++) if (!map.has(`js${i}-${k}`)) return false
    return true
  })
  await waitUntil(() => clients.every((c) => c.provider.wsconnected && c.provider.synced && complete(c)) &&
    clients.every((c) => sameDoc(c.doc, clients[0].doc)),
  `every client (re)connected and holds all ${total} keys of all clients`, 20000).catch((e) => {
    const state = clients.map((c) => `${c.name}: connected=${c.provider.wsconnected} synced=${c.provider.synced} ` +
      `connects=${c.connects} keys=${c.doc.getMap('m').size} closes=${JSON.stringify(c.closes.slice(-3))}`)
    throw new Error(`${e.message}\n${state.join('\n')}`)
  })
  assert(clients[0].doc.getMap('m').size === total, `exactly ${total} keys`)
  return {
    clients: clients.map((c) => ({ name: c.name, clientId: c.doc.clientID, written: c.written, connects: c.connects })),
    keys: total,
    stateVector: stateVector(clients[0].doc)
  }
})
