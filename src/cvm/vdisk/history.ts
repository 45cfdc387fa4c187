import type { SnapshotRecord } from '../../lib/types.js'
import type { ExtentRef } from './vdisk.js'

export type { SnapshotRecord }

/**
 * Snapshots of a vDisk, in metadata only (docs/datapath.md, "Snapshots").
 *
 * Every block map entry carries the epoch it was written in (`ExtentRef.e`, 0 for entries older
 * than snapshots). A snapshot is an epoch: taking one freezes the current epoch E (the snapshot
 * sees every entry written in an epoch <= E) and writes go on in E + 1. An extent a snapshot can
 * see is never written again in place: the next write of its vBlock copies it to a new extent
 * first (copy-on-write, a whole 1 MiB extent), and the old entry becomes a history entry that
 * says which epochs still see it: from the epoch it was written in (`e`) until the epoch that
 * replaced or trimmed it (`u`, exclusive). So a snapshot at epoch S sees, for each vBlock, the
 * history entry with e <= S < u, or else the live entry if its e <= S, or else nothing (zeros).
 * A history entry no snapshot sees any more (its snapshots were deleted) goes, and its extent is
 * freed unless another entry still names it.
 */
export interface HistEntry {
  ref: ExtentRef
  /** the epoch the extent was written in */
  e: number
  /** the epoch that replaced it (exclusive) */
  u: number
}

/** a history entry as stored (etcd value of keys.vdiskHist) */
export interface HistValue { eg: string, s: number, e: number, u: number }


function slotKey(ref: ExtentRef): string {
  return `${ref.egroupId}:${ref.slot}`
}

export class SnapshotHistory {
  /** vBlock -> its history entries (disjoint epoch ranges, all before the live entry's) */
  readonly entries = new Map<number, HistEntry[]>()
  /** how many history entries name each extent (egroup:slot) */
  private readonly refs = new Map<string, number>()
  /** the snapshots' epochs, ascending */
  private snaps: number[]

  constructor(
    /** the epoch writes go into now */
    public epoch: number = 0,
    snapshotEpochs: Iterable<number> = [],
    entries: Iterable<[number, HistEntry]> = [],
  ) {
    this.snaps = [...new Set(snapshotEpochs)].sort((a, b) => a - b)
    for (const [vb, h] of entries) this.add(vb, h)
    const last = this.snaps.at(-1)
    if (last !== undefined && this.epoch <= last) this.epoch = last + 1
  }

  /** the newest snapshot's epoch, -1 with none */
  get snapEpoch(): number {
    return this.snaps.at(-1) ?? -1
  }

  get snapshotEpochs(): readonly number[] {
    return this.snaps
  }

  /** does any history entry name this extent? */
  shares(ref: ExtentRef): boolean {
    return this.refs.size > 0 && this.refs.has(slotKey(ref))
  }

  /** may a write not change this live extent in place (a snapshot sees it)? */
  frozen(ref: ExtentRef): boolean {
    return (ref.e ?? 0) <= this.snapEpoch || this.shares(ref)
  }

  /** does a snapshot see this live entry (so replacing it makes a history entry)? */
  seen(ref: ExtentRef): boolean {
    return (ref.e ?? 0) <= this.snapEpoch
  }

  add(vb: number, h: HistEntry): void {
    let list = this.entries.get(vb)
    if (list === undefined) this.entries.set(vb, list = [])
    // the same entry again (stored once more after a crash between its put and the live entry's) replaces the old one
    const i = list.findIndex((x) => x.e === h.e)
    if (i >= 0) {
      this.unref(list[i]!.ref)
      list[i] = h
    } else {
      list.push(h)
    }
    this.refs.set(slotKey(h.ref), (this.refs.get(slotKey(h.ref)) ?? 0) + 1)
  }

  remove(vb: number, h: HistEntry): void {
    const list = this.entries.get(vb)
    const i = list?.indexOf(h) ?? -1
    if (list === undefined || i < 0) return
    list.splice(i, 1)
    if (list.length === 0) this.entries.delete(vb)
    this.unref(h.ref)
  }

  private unref(ref: ExtentRef): void {
    const k = slotKey(ref)
    const n = (this.refs.get(k) ?? 0) - 1
    if (n <= 0) this.refs.delete(k)
    else this.refs.set(k, n)
  }

  /** does any snapshot see this history entry? */
  needed(h: HistEntry): boolean {
    return this.snaps.some((s) => h.e <= s && s < h.u)
  }

  /** the history entries no snapshot sees */
  unneeded(): Array<[number, HistEntry]> {
    const out: Array<[number, HistEntry]> = []
    for (const [vb, list] of this.entries) for (const h of list) if (!this.needed(h)) out.push([vb, h])
    return out
  }

  addSnapshot(epoch: number): void {
    if (!this.snaps.includes(epoch)) this.snaps = [...this.snaps, epoch].sort((a, b) => a - b)
    if (this.epoch <= epoch) this.epoch = epoch + 1
  }

  removeSnapshot(epoch: number): void {
    this.snaps = this.snaps.filter((s) => s !== epoch)
  }

  /** What the snapshot at `epoch` sees: vBlock -> extent. It never changes while the snapshot exists. */
  view(epoch: number, live: ReadonlyMap<number, ExtentRef>): Map<number, ExtentRef> {
    const out = new Map<number, ExtentRef>()
    for (const [vb, ref] of live) if ((ref.e ?? 0) <= epoch) out.set(vb, ref)
    for (const [vb, list] of this.entries) {
      const h = list.find((x) => x.e <= epoch && epoch < x.u)
      if (h !== undefined) out.set(vb, h.ref)
    }
    return out
  }

  /** every extent a history entry names, by extent group: they stay in use */
  slotsInUse(): Map<string, Set<number>> {
    const out = new Map<string, Set<number>>()
    for (const list of this.entries.values()) {
      for (const h of list) {
        let s = out.get(h.ref.egroupId)
        if (s === undefined) out.set(h.ref.egroupId, s = new Set())
        s.add(h.ref.slot)
      }
    }
    return out
  }
}

export function histValue(h: HistEntry): string {
  return JSON.stringify({ eg: h.ref.egroupId, s: h.ref.slot, e: h.e, u: h.u } satisfies HistValue)
}

export function parseHistValue(raw: string): HistEntry {
  const v = JSON.parse(raw) as HistValue
  return { ref: { egroupId: v.eg, slot: v.s, e: v.e }, e: v.e, u: v.u }
}
