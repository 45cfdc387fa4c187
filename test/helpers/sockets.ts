import net from 'node:net'

/** a connected TCP pair on loopback: the server's end (to send on) and the client's */
export async function tcpPair(): Promise<{ server: net.Socket; client: net.Socket; close: () => void }> {
  let accepted!: (s: net.Socket) => void
  const got = new Promise<net.Socket>((resolve) => (accepted = resolve))
  const listener = net.createServer((s) => accepted(s))
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve))
  const client = net.connect((listener.address() as net.AddressInfo).port, '127.0.0.1')
  const server = await got
  // a reset peer is expected in some tests
  server.on('error', () => undefined)
  client.on('error', () => undefined)
  await new Promise<void>((resolve) => (client.connecting ? client.once('connect', () => resolve()) : resolve()))
  return {
    server,
    client,
    close: () => {
      client.destroy()
      server.destroy()
      listener.close()
    },
  }
}

/** run `fn` on a fresh pair, closed afterwards whatever happens */
export async function onPair(fn: (p: { server: net.Socket; client: net.Socket }) => Promise<void>): Promise<void> {
  const p = await tcpPair()
  try {
    await fn(p)
  } finally {
    p.close()
  }
}

/** resolves once `n` bytes arrived at `sock`, with them */
export const receive = (sock: net.Socket, n: number) => new Promise<Buffer>((resolve) => {
  const got: Buffer[] = []
  let have = 0
  const on = (d: Buffer) => {
    got.push(d)
    have += d.length
    if (have < n) return
    sock.off('data', on)
    resolve(Buffer.concat(got))
  }
  sock.on('data', on)
})
