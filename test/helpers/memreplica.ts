import type { Replica } from '../../src/cvm/vdisk/replica.js'

const MiB = 1024 * 1024

export type MemReplica = Replica & { slots: Map<number, Buffer> }

/**
 * A replica held in memory (slot -> 1 MiB of bytes, in `slots`), for unit tests of the vDisk and
 * owner logic. `fail(slot)`: its writes to that slot fail while it says so. `raw`: it serves
 * readRaw/writeRaw from its slots (a source and a target of replacement copies); without it
 * readRaw finds nothing and writeRaw does nothing.
 */
export function memReplica(opts: { node?: string, diskId?: string, local?: boolean, fail?: (slot: number) => boolean, raw?: boolean } = {}): MemReplica {
  const node = opts.node ?? 'n1'
  const fail = opts.fail ?? (() => false)
  const slots = new Map<number, Buffer>()
  const slot = (s: number) => {
    let b = slots.get(s)
    if (!b) slots.set(s, b = Buffer.alloc(MiB))
    return b
  }
  return {
    node, diskId: opts.diskId ?? 'd0', local: opts.local ?? true, slots,
    suspect: () => false,
    open: async () => undefined,
    read: async (s, off, len, out, outOff) => { slot(s).copy(out, outOff, off, off + len) },
    write: async (s, off, data) => {
      if (fail(s)) throw new Error(`${node}: EIO`)
      data.copy(slot(s), off)
    },
    clear: async (s, off, len) => { slot(s).fill(0, off, off + len) },
    freeSlot: async (s) => { slots.delete(s) },
    sync: async () => undefined,
    readRaw: async (s) => (opts.raw === true && slots.has(s) ? { entries: Buffer.alloc(2048), data: Buffer.from(slots.get(s)!), version: 2 } : undefined),
    writeRaw: async (s, raw) => { if (opts.raw === true) slots.set(s, Buffer.from(raw.data)) },
    delete: async () => undefined,
  }
}
