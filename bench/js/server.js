'use strict'
// The JS webrtc-bootstrap 4.4.1 server, bound to 127.0.0.1, for `bootstrap-bench compare`.
//
//   node server.js --secret S --port P [--timeout MS]
//
// The package's Server listens on all interfaces when it creates its own HTTP server,
// so this script creates one on 127.0.0.1 and hands it over (`opts.httpServer`). The
// server's code is used unchanged; only `timeout` (the /join socket lifetime) is set, to
// outlast the benchmark runs. Plain HTTP requests get 404 (without `opts.public` the
// package would answer Express's 404 the same way).
const http = require('http')
const Server = require('webrtc-bootstrap').Server

function arg (name, fallback) {
  const i = process.argv.indexOf('--' + name)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}

const secret = arg('secret', process.env.SECRET)
const port = Number(arg('port', 0))
const timeout = Number(arg('timeout', 30000))

const httpServer = http.createServer(function (req, res) {
  res.statusCode = 404
  res.end()
})
// Node's default listen backlog (511), as the package's own `httpServer.listen(port)`.
httpServer.listen(port, '127.0.0.1', function () {
  console.log('listening on 127.0.0.1:' + httpServer.address().port)
})
// eslint-disable-next-line no-new
new Server(secret, { httpServer: httpServer, timeout: timeout })

process.on('SIGTERM', function () { process.exit(0) })
