import type { Replica } from '../../src/cvm/vdisk/replica.js'

const MiB = 1024 * 1024

/** A replica held in memory (slot -> 1 MiB of bytes), for unit tests of the vDisk logic. */
export function memReplica(): Replica {
  const slots = new Map<number, Buffer>()
  const slot = (s: number) => {
    let b = slots.get(s)
    if (!b) slots.set(s, b = Buffer.alloc(MiB))
    return b
  }
  return {
    node: 'n1', diskId: 'd0', local: true,
    suspect: () => false,
    open: async () => undefined,
    read: async (s, off, len, out, outOff) => { slot(s).copy(out, outOff, off, off + len) },
    write: async (s, off, data) => { data.copy(slot(s), off) },
    clear: async (s, off, len) => { slot(s).fill(0, off, off + len) },
    freeSlot: async (s) => { slots.delete(s) },
    sync: async () => undefined,
    readRaw: async () => undefined,
    writeRaw: async () => undefined,
    delete: async () => undefined,
  }
}
