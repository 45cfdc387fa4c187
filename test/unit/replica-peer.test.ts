import { describe, expect, it } from 'vitest'
import type { PeerPool } from '../../src/cvm/replication/client.js'
import { PeerError, type Op } from '../../src/cvm/replication/protocol.js'
import { errorBody, serveReplicaOp } from '../../src/cvm/replication/server.js'
import { RemoteReplica } from '../../src/cvm/vdisk/replica.js'
import { ReplicaStore } from '../../src/cvm/vdisk/replicastore.js'
import type { DiskRecord } from '../../src/lib/types.js'
import { MemFiles } from '../helpers/memfiles.js'

const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined }
const disk: DiskRecord = { id: 'd1', node: 'n2', path: '/mem/n2/disk', addedAt: '' }

/**
 * A peer node in memory: the real replica op code (serveReplicaOp) over a real ReplicaStore over
 * in-memory files, reached by RemoteReplica through a pool that calls it directly. `restart()`
 * is its CVM restarting: a new store (an empty open file table) over the same files.
 */
function peer() {
  const files = new MemFiles()
  let store = new ReplicaStore({ localDisks: async () => [disk], log: quiet, files })
  let reachable = true
  /** requests of these ops are done by the peer, and their answers lost */
  let answersLost = new Set<Op>()
  const requests: Array<{ op: Op, json: Record<string, unknown> }> = []
  const client = {
    request: async (op: Op, json: Record<string, unknown>, data?: Buffer) => {
      requests.push({ op, json })
      if (!reachable) throw new PeerError('unreachable', 'node n2: connection refused')
      try {
        const r = await serveReplicaOp(store, op, json, data ?? Buffer.alloc(0))
        if (answersLost.has(op)) throw new PeerError('unreachable', 'node n2: no answer within 10000 ms')
        return { json: r.json, data: r.data ?? Buffer.alloc(0) }
      } catch (e) {
        if (e instanceof PeerError) throw e
        const body = errorBody(e, quiet)
        throw new PeerError(body.kind, `node n2: ${body.message}`, body.errno)
      }
    },
  }
  const pool = { peek: () => client, get: async () => client, suspect: () => false } as unknown as PeerPool
  return {
    files,
    pool,
    requests,
    get store() { return store },
    restart: () => { store = new ReplicaStore({ localDisks: async () => [disk], log: quiet, files }) },
    reachable: (on: boolean) => { reachable = on },
    loseAnswers: (ops: Op[]) => { answersLost = new Set(ops) },
  }
}

const block = (v: number) => Buffer.alloc(4096, v)

describe('a replica on another node: restarts and unreachable peers', () => {
  it('a sync of a group the peer does not have open is "not-open", never a success for writes it never saw', async () => {
    const p = peer()
    await serveReplicaOp(p.store, 3 /* egOpen */, { egid: '5', diskId: 'd1', vdiskId: '7', inUse: [], create: true }, Buffer.alloc(0))
    p.restart()
    await expect(serveReplicaOp(p.store, 8 /* egSync */, { egid: '5', diskId: 'd1', vdiskId: '7' }, Buffer.alloc(0))).rejects.toThrow(/not open/)
  })

  it('writes not yet synced when the peer restarted: the replica fails from then on (it is replaced), it does not re-open and go on', async () => {
    const p = peer()
    const r = new RemoteReplica('n2', 'd1', '5', '7', p.pool)
    await r.open([])
    await r.write(0, 0, block(1))
    await r.sync()
    await r.write(0, 4096, block(2))
    // the peer's CVM dies: the checksum entry of the second write was in its memory only
    p.restart()
    await expect(r.sync()).rejects.toThrow(/restarted before 1 change/)
    // and every later operation, reads too: this copy lacks the write
    await expect(r.read(0, 4096, 4096, Buffer.alloc(4096), 0)).rejects.toThrow(/restarted/)
  })

  it('writes not yet synced when the peer restarted, and the answer to a re-open lost: the replica still fails (it does not trust the copy the peer opened)', async () => {
    const p = peer()
    const r = new RemoteReplica('n2', 'd1', '5', '7', p.pool)
    r.setInUse(() => [0])
    await r.open([])
    await r.write(0, 0, block(1))
    await r.sync()
    await r.clear(0, 0, 4096)
    // the peer's CVM dies before the trim is synced; the next request finds the group not open
    p.restart()
    p.loseAnswers([3 /* egOpen */])
    await expect(r.write(0, 8192, block(2))).rejects.toThrow()
    p.loseAnswers([])
    // had the peer opened the group meanwhile, a sync would reach a copy that lacks the trim
    await expect(r.sync()).rejects.toThrow(/restarted before/)
    await expect(r.read(0, 0, 4096, Buffer.alloc(4096), 0)).rejects.toThrow(/restarted before/)
  })

  it('everything synced when the peer restarted: the replica re-opens it and goes on', async () => {
    const p = peer()
    const r = new RemoteReplica('n2', 'd1', '6', '7', p.pool)
    r.setInUse(() => [0])
    await r.open([])
    await r.write(0, 0, block(3))
    await r.sync()
    p.restart()
    const out = Buffer.alloc(4096)
    await r.read(0, 0, 4096, out, 0)
    expect(out.equals(block(3))).toBe(true)
    await r.write(0, 4096, block(4))
    await r.sync()
  })

  it('a peer the owner could not reach when it loaded: the open it missed (freeing the slots the map does not use) comes before the first operation that reaches it', async () => {
    const p = peer()
    // the owner before: slot 5 allocated and written, never committed; slot 1 committed
    const before = new RemoteReplica('n2', 'd1', '8', '7', p.pool)
    await before.open([])
    await before.write(1, 0, block(1))
    await before.write(5, 0, block(9))
    await before.sync()
    // it dies; the next owner loads with a map that uses slot 1, and cannot reach n2 then
    p.reachable(false)
    const r = new RemoteReplica('n2', 'd1', '8', '7', p.pool)
    r.setInUse(() => [1, 5])
    await expect(r.open([1])).rejects.toThrow(/connection refused/)
    p.reachable(true)
    // slot 5 went to another vBlock since, which writes one block of it
    await r.write(5, 4096, block(2))
    const out = Buffer.alloc(4096)
    await r.read(5, 0, 4096, out, 0)
    expect(out.equals(block(0))).toBe(true)
    await r.read(1, 0, 4096, out, 0)
    expect(out.equals(block(1))).toBe(true)
    // the open came once, first, with the slots in use when the owner loaded
    const opens = p.requests.filter((q) => q.op === 3 && q.json.egid === '8')
    expect(opens.map((q) => q.json.inUse)).toEqual([[], [1], [1]])
  })
})
