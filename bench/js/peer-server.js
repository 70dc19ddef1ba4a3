'use strict'
// peerjs-server (npm package `peer` 1.0.2), bound to 127.0.0.1, for
// `bootstrap-bench compare --peers`.
//
//   node peer-server.js --port P [--key K] [--alive-timeout MS]
//
// The package's `PeerServer` runs unchanged; the options set are the bind address, the
// key, and the limits the bench would otherwise hit: `concurrent_limit` (5 000 clients
// by default; the idle measurement opens 10 000) and `alive_timeout` (90 s without a
// HEARTBEAT closes a client; the bench's clients send none, as with the other servers
// whose idle sockets are kept open without traffic).
const { PeerServer } = require('peer')

function arg (name, fallback) {
  const i = process.argv.indexOf('--' + name)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}

const port = Number(arg('port', 9000))
PeerServer({
  host: '127.0.0.1',
  port: port,
  key: arg('key', 'peerjs'),
  concurrent_limit: 1000000000,
  alive_timeout: Number(arg('alive-timeout', 3600000))
}, function (server) {
  console.log('listening on 127.0.0.1:' + server.address().port)
})

process.on('SIGTERM', function () { process.exit(0) })
