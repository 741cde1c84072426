#!/usr/bin/env node
// kinesalite (a local Kinesis, pinned in package.json) on 127.0.0.1 only, for shopstream's tests.
//
//   node scripts/local/kinesalite/server.js [PORT] [--port-file PATH] [--path DIR]
//
//   PORT          port to listen on; 0 (the default) picks a free one
//   --port-file   write the bound port to PATH (atomically: temp file + rename) once listening
//   --path        keep the streams in a LevelDB folder instead of in memory
//
// Prints `listening on 127.0.0.1:PORT` on stdout when it accepts connections; SIGTERM or SIGINT
// closes it. Install the dependency first: `npm ci --prefix scripts/local/kinesalite` (or
// `scripts/local/aws-local.sh install`).
//
// Why a wrapper: kinesalite's own CLI listens on every interface, and the local servers accept any
// credentials, so they must stay on loopback. The wrapper also makes stream changes immediate
// (kinesalite's default keeps a stream CREATING/UPDATING for 500 ms) and raises the shard limit
// from 10 so tests can split shards freely.
//
// Why kinesalite next to moto: kinesalite models SplitShard as Kinesis does (the parent shard
// keeps its records and gets an EndingSequenceNumber; the children carry ParentShardId), while
// moto 5.2.1's split_shard moves the parent's records into the children, which no real stream
// does. Resharding tests therefore run against kinesalite.
'use strict'

const fs = require('fs')
const path = require('path')

const HOST = '127.0.0.1'

function usage(message) {
  if (message) console.error(`kinesalite server: ${message}`)
  console.error('usage: node scripts/local/kinesalite/server.js [PORT] [--port-file PATH] [--path DIR]')
  process.exit(2)
}

function parseArgs(argv) {
  const opts = { port: 0, portFile: null, path: null }
  let portSeen = false
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--help' || a === '-h') usage()
    else if (a === '--port-file' || a === '--path' || a === '--port') {
      const v = argv[++i]
      if (v === undefined) usage(`${a} needs a value`)
      if (a === '--port-file') opts.portFile = v
      else if (a === '--path') opts.path = v
      else { opts.port = parsePort(v); portSeen = true }
    } else if (!a.startsWith('-') && !portSeen) {
      opts.port = parsePort(a)
      portSeen = true
    } else usage(`unknown argument ${JSON.stringify(a)}`)
  }
  return opts
}

function parsePort(v) {
  const n = Number(v)
  if (!Number.isInteger(n) || n < 0 || n > 65535) {
    usage(`port ${JSON.stringify(v)} is not a number from 0 to 65535 (0 picks a free port)`)
  }
  return n
}

const opts = parseArgs(process.argv.slice(2))

let kinesalite
try {
  kinesalite = require('kinesalite')
} catch (e) {
  console.error('kinesalite server: the kinesalite package is not installed; run ' +
    '`npm ci --prefix scripts/local/kinesalite` or `scripts/local/aws-local.sh install`')
  process.exit(1)
}

const server = kinesalite({
  path: opts.path || undefined,
  createStreamMs: 0,
  deleteStreamMs: 0,
  updateStreamMs: 0,
  shardLimit: 100,
})

server.on('error', (e) => {
  console.error(`kinesalite server: cannot listen on ${HOST}:${opts.port}: ${e.message}`)
  process.exit(1)
})

server.listen(opts.port, HOST, () => {
  const port = server.address().port
  if (opts.portFile) {
    const tmp = path.join(path.dirname(opts.portFile), `.${path.basename(opts.portFile)}.${process.pid}.tmp`)
    fs.writeFileSync(tmp, `${port}\n`)
    fs.renameSync(tmp, opts.portFile)
  }
  console.log(`listening on ${HOST}:${port}`)
})

function shutdown() {
  // kinesalite's close also closes its store; do not wait on idle keep-alive connections.
  server.close(() => process.exit(0))
  if (server.closeAllConnections) server.closeAllConnections()
  setTimeout(() => process.exit(0), 1000).unref()
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
