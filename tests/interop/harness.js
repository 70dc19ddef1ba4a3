// JS peers for the interop tests, driven by the Rust test over stdin/stdout.
//
// Usage: node harness.js ROLE --url HOST:PORT[/PATH] [--secret S] [--name N] [--max-degree K]
//                          [--timeout MS] [--port P] [--join-url HOST:PORT[/PATH]] [--secure 1]
// Roles: server (the JS webrtc-bootstrap 4.4.1 Server on 127.0.0.1), root, newcomer,
//        tree-root, tree-node.
// The client is given `--url` as its host, so a path after the port goes before the
// socket paths, as the client builds them: `HOST:PORT/o/NAME` reaches overlay NAME, and
// `HOST:PORT/o/NAME/t/TOKEN` carries a join token. `--secret` may be a root token. A root
// answers through a second client on `--join-url` when given (a root's answers are /join
// sockets, which may need a join token in their host; its own socket must not have one).
// Every event is one JSON line on stdout: {"event": ..., ...}. Commands are JSON lines on
// stdin: {"cmd":"send","data":...} (newcomer/root peers), {"cmd":"broadcast","data":...}
// (tree nodes), {"cmd":"exit"}.
//
// `--secure 1` makes the clients use wss:// (the client's own `secure` option); a test CA
// comes in through NODE_EXTRA_CA_CERTS.
//
// Only loopback candidates are signalled: the tests also run inside a network namespace
// with only `lo`, so nothing can leave the machine either way.

'use strict'

const readline = require('readline')
const wrtc = require('@roamhq/wrtc')
// The SimplePeer the bootstrap client itself uses (6.4.4), whatever npm hoisted.
const SimplePeer = require(require.resolve('simple-peer', { paths: [require.resolve('webrtc-bootstrap')] }))
const Client = require('webrtc-bootstrap')
const TreeNode = require('webrtc-tree-overlay')

const args = parseArgs(process.argv.slice(2))
const role = args._[0]
const name = args.name || role

function parseArgs (argv) {
  const out = { _: [] }
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith('--')) out[argv[i].slice(2)] = argv[++i]
    else out._.push(argv[i])
  }
  return out
}

function emit (event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event, name }, fields || {})) + '\n')
}

process.on('uncaughtException', (err) => {
  emit('uncaught', { message: String(err && err.stack || err) })
})

// Keep only loopback candidates, in trickled candidates and in SDPs.
const LOOPBACK = /^(127\.|::1$)/
function loopbackCandidate (line) {
  const parts = line.replace(/^a=/, '').split(' ')
  return parts.length > 4 && LOOPBACK.test(parts[4])
}
function filterSignal (signal) {
  if (signal && signal.candidate) {
    return loopbackCandidate(signal.candidate.candidate) ? signal : null
  }
  if (signal && typeof signal.sdp === 'string') {
    const sdp = signal.sdp.split('\r\n').filter((l) => !l.startsWith('a=candidate:') || loopbackCandidate(l)).join('\r\n')
    return Object.assign({}, signal, { sdp })
  }
  return signal
}
const originalEmit = SimplePeer.prototype.emit
SimplePeer.prototype.emit = function (event, data, ...rest) {
  if (event === 'signal') {
    data = filterSignal(data)
    if (!data) return false
  }
  return originalEmit.call(this, event, data, ...rest)
}

const timeout = Number(args.timeout || 30000)
const clientOpts = { secure: args.secure === '1' }
const peerOpts = { wrtc, config: { iceServers: [] } }

function watchPeer (peer, label) {
  const send = (data) => peer.send(typeof data === 'string' ? data : JSON.stringify(data))
  peer.on('connect', () => emit('connected', { peer: label }))
  peer.on('data', (data) => emit('data', { peer: label, data: data.toString() }))
  peer.on('close', () => emit('closed', { peer: label }))
  peer.on('error', (err) => emit('peer-error', { peer: label, message: err.message }))
  return send
}

const commands = []
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let cmd
  try { cmd = JSON.parse(line) } catch (e) { return emit('bad-command', { line }) }
  if (cmd.cmd === 'exit') process.exit(0)
  commands.forEach((handle) => handle(cmd))
})

if (role === 'server') {
  const http = require('http')
  const httpServer = http.createServer((req, res) => { res.writeHead(404); res.end() })
  httpServer.listen(Number(args.port || 0), '127.0.0.1', () => {
    // eslint-disable-next-line no-new
    new Client.Server(args.secret, { httpServer, timeout })
    emit('listening', { port: httpServer.address().port })
  })
} else if (role === 'root') {
  const client = new Client(args.url, clientOpts)
  const answers = args['join-url'] ? new Client(args['join-url'], clientOpts) : client
  const peers = {}
  client.root(args.secret, (req) => {
    if (!peers[req.origin]) {
      const peer = answers.connect(req, { peerOpts, timeout, cb: (err) => { if (err) emit('error', { message: err.message }) } })
      const send = watchPeer(peer, req.origin)
      peers[req.origin] = peer
      peer.on('connect', () => send('hello from the js root'))
      commands.push((cmd) => { if (cmd.cmd === 'send') send(cmd.data) })
      emit('request', { origin: req.origin })
    } else {
      peers[req.origin].signal(req.signal)
    }
  }, (err) => err ? emit('error', { message: err.message }) : emit('ready'))
} else if (role === 'newcomer') {
  const client = new Client(args.url, clientOpts)
  const peer = client.connect(null, {
    peerOpts,
    timeout,
    cb: (err) => { if (err) emit('error', { message: err.message }) }
  })
  const send = watchPeer(peer, 'answerer')
  peer.on('connect', () => send('hello from the js newcomer'))
  commands.push((cmd) => { if (cmd.cmd === 'send') send(cmd.data) })
  emit('ready')
} else if (role === 'tree-root' || role === 'tree-node') {
  const client = new Client(args.url, clientOpts)
  const node = new TreeNode(client, { peerOpts, maxDegree: Number(args['max-degree'] || 10), requestTimeoutInMs: timeout })
  const children = () => Object.keys(node.children).filter((k) => node.children[k]).length
  node.on('parent-connect', () => emit('parent-connect'))
  node.on('child-connect', (child) => emit('child-connect', { child: child.id, children: children() }))
  node.on('child-close', (child) => emit('child-close', { child: child.id }))
  node.on('data', (data, channel, isParent) => {
    // The Rust overlay's broadcast convention: {"broadcast": payload} travels down the
    // tree; a JS node forwards it to its children like a Rust node does.
    if (isParent && data && typeof data === 'object' && 'broadcast' in data) {
      Object.keys(node.children).forEach((k) => node.children[k] && node.children[k].send(data))
      emit('broadcast', { data: data.broadcast })
    } else {
      emit('data', { data, fromParent: isParent })
    }
  })
  commands.push((cmd) => {
    if (cmd.cmd === 'broadcast') {
      Object.keys(node.children).forEach((k) => node.children[k] && node.children[k].send({ broadcast: cmd.data }))
    } else if (cmd.cmd === 'status') {
      emit('status', { children: children(), hasParent: !!node.parent })
    }
  })
  if (role === 'tree-root') {
    node.becomeRoot(args.secret)
    emit('ready')
  } else {
    node.join()
    emit('ready')
  }
} else {
  emit('uncaught', { message: 'unknown role ' + role })
  process.exit(2)
}
