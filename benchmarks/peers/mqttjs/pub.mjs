// Peer (6): MQTT.js 5 on Node, one process, one event loop: the harness's protocol and load
// model in JavaScript (benchmarks/peers/_common.py says both).
//
// Its idiomatic fast form: each client publishes everything that is due in one synchronous
// batch (MQTT.js corks the socket and writes the batch in one go on the next tick), then
// yields with setImmediate so the loop can write and read PUBACKs; at QoS 1 at most `inflight`
// are unacknowledged (the publish callback fires on PUBACK), and when the socket's buffer is
// past its high-water mark (`writableNeedDrain`) the client waits for 'drain'. Same mutual TLS
// as the Python peers (the broker checked against the CA and its name, each client's own
// certificate) and TCP_NODELAY on every socket.
//
//   node benchmarks/peers/mqttjs/pub.mjs CONFIG.json    (the harness runs it; `npm ci` first)

import fs from 'node:fs'
import readline from 'node:readline'
import mqtt from 'mqtt'

const BATCH = 256 // messages one client publishes before it yields to the others

const config = {
  qos: 0,
  seconds: 5,
  payload_size: 100,
  inflight: 100,
  rate: 100000,
  paced: false,
  topic_prefix: 'bench',
  connect_concurrency: 50,
  drain_seconds: 10,
  ...JSON.parse(fs.readFileSync(process.argv[2], 'utf8')),
}
const ca = fs.readFileSync(config.ca_file)
const topicOf = (id) => `${config.topic_prefix}/${id}`
const now = () => performance.now() / 1000 // monotonic seconds
const selfCpu = () => {
  const { user, system } = process.cpuUsage()
  return (user + system) / 1e6
}

function emit (tag, data) {
  process.stdout.write(`${tag} ${JSON.stringify(data)}\n`)
}

// The harness's lines (GO, EXIT), one at a time; the end of stdin counts as EXIT.
const lines = []
const waiting = []
const input = readline.createInterface({ input: process.stdin })
input.on('line', (line) => (waiting.length ? waiting.shift()(line.trim()) : lines.push(line.trim())))
input.on('close', () => { while (waiting.length) waiting.shift()('EXIT') })
const nextLine = () => new Promise((resolve) => (lines.length ? resolve(lines.shift()) : waiting.push(resolve)))

// The same bytes as benchmarks/peers/_common.py's payload().
function payload (size) {
  const head = '{"msg": "IoT ELF Hello", "pad": "'
  const tail = '"}'
  const body = Buffer.from(head + 'x'.repeat(Math.max(0, size - head.length - tail.length)) + tail)
  return body.length > size ? body.subarray(0, size) : body
}

function packetSize (topic, body, qos) {
  const remaining = 2 + Buffer.byteLength(topic) + (qos ? 2 : 0) + body.length
  return 1 + (remaining < 128 ? 1 : remaining < 16384 ? 2 : 3) + remaining
}

function percentiles (values) {
  if (!values.length) return {}
  const sorted = Float64Array.from(values).sort()
  const out = {}
  for (const p of [50, 90, 99, 99.9]) {
    const rank = Math.max(0, Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1))
    out[`p${String(p).replace('.', '')}`] = Math.round(sorted[rank] * 1e6) / 1e3
  }
  out.max = Math.round(sorted[sorted.length - 1] * 1e6) / 1e3
  return out
}

function connect (spec) {
  return new Promise((resolve) => {
    const client = mqtt.connect(`mqtts://${config.host}:${config.port}`, {
      clientId: spec.id,
      protocolVersion: 4,
      clean: true,
      keepalive: 60,
      reconnectPeriod: 0,
      connectTimeout: 30000,
      ca,
      cert: fs.readFileSync(spec.cert),
      key: fs.readFileSync(spec.key),
      rejectUnauthorized: true,
      noDelay: true,
    })
    const fail = () => { client.end(true); resolve(null) }
    client.once('connect', () => {
      client.removeListener('error', fail)
      client.stream.setNoDelay(true)
      client.on('error', () => {})
      resolve(client)
    })
    client.once('error', fail)
  })
}

async function connectAll () {
  const clients = new Array(config.clients.length)
  let next = 0
  async function lane () {
    while (next < config.clients.length) {
      const index = next++
      clients[index] = await connect(config.clients[index])
    }
  }
  await Promise.all(Array.from({ length: config.connect_concurrency }, lane))
  return clients.filter((c) => c !== null)
}

async function main () {
  const clients = await connectAll()
  emit('READY', { connected: clients.length, failed: config.clients.length - clients.length })
  if ((await nextLine()) !== 'GO') process.exit(0)
  const cpu0 = selfCpu()
  const body = payload(config.payload_size)
  const { qos, inflight: limit, paced } = config
  const start = now()
  const end = start + config.seconds
  const interval = 1 / config.rate
  const lags = []
  let stopped = false

  // One state per client: its open-loop schedule (message k due at base + k * interval).
  const states = clients.map((client, i) => ({
    client,
    topic: topicOf(client.options.clientId),
    base: start + (interval * i) / clients.length,
    sent: 0,
    inflight: 0,
    acked: 0,
    waitsForAck: false, // the window is full: the next PUBACK pumps again
    onAck: null,
  }))

  // Each client has exactly one pending continuation: a timer (nothing due yet), 'drain', the
  // next PUBACK (window full) or setImmediate (after a batch).
  function pump (s) {
    if (stopped) return
    const t = now()
    let count = t < s.base ? 0 : Math.floor((t - s.base) / interval) + 1 - s.sent
    if (count <= 0) {
      setTimeout(pump, Math.max(0, (s.base + s.sent * interval - t) * 1000), s)
      return
    }
    if (qos) {
      count = Math.min(count, limit - s.inflight)
      if (count <= 0) {
        s.waitsForAck = true
        return
      }
    }
    const stream = s.client.stream
    if (stream.writableNeedDrain) {
      stream.once('drain', () => pump(s))
      return
    }
    count = Math.min(count, BATCH)
    if (paced) {
      const due = s.base + s.sent * interval
      for (let k = 0; k < count; k++) lags.push(t - due - k * interval)
    }
    for (let k = 0; k < count; k++) {
      if (qos) {
        s.inflight++
        s.client.publish(s.topic, body, { qos }, s.onAck)
      } else {
        s.client.publish(s.topic, body, { qos })
      }
    }
    s.sent += count
    setImmediate(pump, s) // one yield per batch: the loop writes it and reads PUBACKs
  }

  for (const s of states) {
    s.onAck = (err) => {
      if (err) return
      s.inflight--
      s.acked++
      if (s.waitsForAck) {
        s.waitsForAck = false
        pump(s)
      }
    }
  }
  states.forEach(pump)

  await new Promise((resolve) => setTimeout(resolve, Math.max(0, (end - now()) * 1000)))
  stopped = true
  const publishEnd = now()
  const cpuAtStop = selfCpu() - cpu0
  const sent = states.reduce((n, s) => n + s.sent, 0)
  // Published = in the kernel by the stop: what is still in a socket's buffer is not.
  const size = packetSize(topicOf(config.clients[0]?.id ?? ''), body, qos)
  const buffered = states.reduce((n, s) => n + Math.ceil(s.client.stream.writableLength / size), 0)
  const drainEnd = publishEnd + config.drain_seconds
  const acked = () => states.reduce((n, s) => n + s.acked, 0)
  while (now() < drainEnd &&
    (states.some((s) => s.client.stream.writableLength > 0) || (qos && acked() < sent))) {
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  const done = now()
  emit('RESULT', {
    published: paced ? sent : sent - buffered,
    sent,
    acked: qos ? acked() : sent,
    publish_seconds: publishEnd - start,
    drain_seconds: done - publishEnd,
    self_cpu: selfCpu() - cpu0,
    cpu_at_stop: cpuAtStop,
    lag_ms: percentiles(lags),
  })
  await nextLine()
  await Promise.all(clients.map((c) => new Promise((resolve) => c.end(false, {}, resolve))))
  process.exit(0)
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
