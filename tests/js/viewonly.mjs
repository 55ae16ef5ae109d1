// A view-only client sees edits live, is told "permission denied" (y-protocols auth message 2,0)
// when it edits, and its edits reach nobody.
//
//   node viewonly.mjs ws://HOST:PORT ROOM (--secret S | --view-token T --edit-token T)
//                     [--settle-ms MS] [--timeout-ms MS]
//
// --secret S mints HS256 tokens (sub, name, role, exp in 10 min, weddings: {ROOM: view|edit});
// otherwise pass ready-made tokens. Tokens go in the `token` query parameter (provider `params`).
//
// Output: {"sawLiveEdit": true, "denied": true, "reason": "...", "leaked": false, ...}

import jwt from 'jsonwebtoken'
import { main, connect, waitSynced, waitUntil, sleep, assert } from './lib.mjs'

function mint (secret, room, access) {
  return jwt.sign({
    sub: `interop-${access}`,
    name: `Interop ${access}`,
    role: access === 'edit' ? 'planner' : 'guest',
    weddings: { [room]: access }
  }, secret, { algorithm: 'HS256', expiresIn: '10m' })
}

main({ secret: 'string', 'view-token': 'string', 'edit-token': 'string', 'settle-ms': 'number' }, async ({ url, room, opts }) => {
  let viewToken = opts['view-token']
  let editToken = opts['edit-token']
  if (opts.secret !== undefined) {
    viewToken ??= mint(opts.secret, room, 'view')
    editToken ??= mint(opts.secret, room, 'edit')
  }
  assert(viewToken && editToken, 'need --secret or both --view-token and --edit-token')
  const settle = opts['settle-ms'] ?? 500

  const editor = connect(url, room, { name: 'editor', params: { token: editToken } })
  const viewer = connect(url, room, { name: 'viewer', params: { token: viewToken } })
  await Promise.all([waitSynced(editor), waitSynced(viewer)])

  // The viewer sees the editor's edits live.
  const marker = `edited at ${Date.now()}`
  editor.doc.getMap('map').set('title', marker)
  editor.doc.getText('text').insert(0, 'editor text')
  await waitUntil(() => viewer.doc.getMap('map').get('title') === marker &&
    viewer.doc.getText('text').toString().includes('editor text'), 'viewer sees the editor\'s edit')

  // A viewer that has not edited must not be told "permission denied": WebsocketProvider
  // answers the server's sync step 1 with a step 2 on every connect (empty here), and would
  // warn the user each time. Give a premature denial time to arrive.
  await sleep(settle)
  assert(viewer.authDenied.length === 0,
    `viewer got "permission denied" before editing anything (reason: ${viewer.authDenied[0]}); ` +
    'probably the server refused the empty sync step 2 every y-websocket client sends on connect')

  // The viewer edits: the server must answer "permission denied" and apply nothing.
  viewer.doc.getMap('map').set('viewer-edit', 'must not be applied')
  viewer.doc.getMap('map').set('title', 'overwritten by viewer')
  viewer.doc.getText('text').insert(0, 'VIEWER ')
  await waitUntil(() => viewer.authDenied.length > 0,
    'viewer receives the auth message "permission denied" (type 2, 0, reason)').catch((e) => {
    throw new Error(`${e.message}; viewer closes: ${JSON.stringify(viewer.closes)}`)
  })

  // The denial proves the server handled the viewer's update; give fan-out time anyway, then
  // check the editor and a fresh client: neither may have any of the viewer's edits.
  await sleep(settle)
  const fresh = connect(url, room, { name: 'fresh', params: { token: editToken } })
  await waitSynced(fresh)
  const leaks = []
  for (const c of [editor, fresh]) {
    const map = c.doc.getMap('map')
    if (map.has('viewer-edit')) leaks.push(`${c.name} has map.viewer-edit`)
    if (map.get('title') !== marker) leaks.push(`${c.name} has title ${JSON.stringify(map.get('title'))}`)
    if (c.doc.getText('text').toString().includes('VIEWER')) leaks.push(`${c.name} has the viewer's text`)
  }
  assert(leaks.length === 0, `view-only edits leaked: ${leaks.join('; ')}`)

  // The viewer stays connected and keeps receiving edits after the denial.
  editor.doc.getMap('map').set('after-denial', true)
  await waitUntil(() => viewer.doc.getMap('map').get('after-denial') === true,
    'viewer still receives edits after the denial')

  return {
    sawLiveEdit: true,
    denied: true,
    reason: viewer.authDenied[0],
    deniedMessages: viewer.authDenied.length,
    leaked: false,
    viewerCloses: viewer.closes
  }
})
