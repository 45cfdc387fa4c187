import type { PullProgressView } from '../../lib/csm-types.js'
import type { PullProgress } from './puller.js'

/** What a pull's progress events add up to: layers and compressed bytes done of the totals. */
export type PullTallyView = Pick<PullProgressView, 'layersTotal' | 'layersDone' | 'bytesTotal' | 'bytesDone'>

/**
 * The running totals of one pull, from its progress events (puller.ts): the layer count and size
 * once the manifest is read, the bytes each layer holds so far (a resumed download counts what it
 * had), a layer done once unpacked. Events of the config blob are not layer bytes.
 */
export class PullTally {
  private layersTotal: number | null = null
  private bytesTotal: number | null = null
  private layersDone = 0
  private readonly held = new Map<string, number>()

  /** Count one event; true when it changed the layer count (worth telling at once). */
  add(p: PullProgress): boolean {
    if (p.phase === 'layers') {
      this.layersTotal = p.count
      this.bytesTotal = p.bytes
      return true
    }
    if (p.phase === 'download' && p.kind === 'layer') this.held.set(p.digest, p.bytes)
    else if (p.phase === 'blob-done' && p.kind === 'layer') this.held.set(p.digest, p.size)
    else if (p.phase === 'unpacked') {
      this.layersDone++
      return true
    }
    return false
  }

  view(): PullTallyView {
    let bytesDone = 0
    for (const b of this.held.values()) bytesDone += b
    if (this.bytesTotal !== null) bytesDone = Math.min(bytesDone, this.bytesTotal)
    return { layersTotal: this.layersTotal, layersDone: this.layersDone, bytesTotal: this.bytesTotal, bytesDone }
  }
}
