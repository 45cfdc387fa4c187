import { Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { keyValue, withSpinner } from '../../output.js'
import { TessError } from '../../../lib/errors.js'
import { scrubBytesPerSecMax, scrubBytesPerSecMin } from '../../../lib/limits.js'
import { formatBytes, parseDuration, parseSize } from '../../../lib/units.js'
import type { ClusterHealth, ScrubFound, ScrubStart } from '../../../lib/types.js'

export interface ScrubResultView extends ScrubStart {
  /** with --wait: what the pass found */
  found: ScrubFound | null
  finishedAt: string | null
}

export default class ClusterScrub extends TessCommand<ScrubResultView> {
  static override summary = 'Check every copy of every extent against its checksums now, and repair bad copies'
  static override description = `The curator master reads every extent in use of every vDisk from every replica, one vDisk at a time at its owner, each 4 KiB block checked against its checksum; a block whose copy does not match is rewritten from a replica whose copy does. Client I/O goes on: each extent is held only while it is checked, and the scrub reads at most --rate bytes per second (all replicas counted; 64 MiB/s unless set), stored for every later pass. A full pass also runs on its own a week after the last one ended. \`tess cluster health\` shows the last pass and what it found.

Without --wait the command returns once the pass has started (or says one is running already). With --wait it waits until the pass ends and prints what it found; the exit code is then 1 if a bad block could not be repaired.`
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --rate 200M --wait --json']

  static override flags = {
    rate: Flags.string({ description: 'Read at most this many bytes per second, e.g. 64M (kept for later passes).' }),
    wait: Flags.boolean({ description: 'Wait until the pass ends and print what it found.' }),
    timeout: Flags.string({ description: 'With --wait: give up after this long, e.g. 30m.', default: '24h' }),
  }

  protected async exec(): Promise<ScrubResultView> {
    const { flags } = await this.parseInput(ClusterScrub)
    let bytesPerSec: number | undefined
    if (flags.rate !== undefined) {
      bytesPerSec = parseSize(flags.rate, '--rate')
      if (bytesPerSec < scrubBytesPerSecMin || bytesPerSec > scrubBytesPerSecMax) {
        throw new TessError('TESS_E_INVALID', `invalid --rate "${flags.rate}": give ${formatBytes(scrubBytesPerSecMin)} to ${formatBytes(scrubBytesPerSecMax)} per second`, 'e.g. --rate 64M')
      }
    }
    const timeoutMs = parseDuration(flags.timeout, '--timeout')
    const client = this.client(this.context(flags.cluster))
    const before = (await client.get<ClusterHealth>('/v1/cluster/health')).curator
    const start = await client.post<ScrubStart>('/v1/cluster/scrub', bytesPerSec !== undefined ? { bytesPerSec } : {})
    if (!flags.wait) return { ...start, found: null, finishedAt: null }
    const deadline = Date.now() + timeoutMs
    const done = await withSpinner(!this.jsonMode, `Scrubbing at ${formatBytes(start.bytesPerSec)}/s`, async () => {
      for (;;) {
        const c = (await client.get<ClusterHealth>('/v1/cluster/health')).curator
        if (!c.scrubbing && c.lastScrubAt !== null && c.lastScrubAt !== before.lastScrubAt) return c
        if (Date.now() > deadline) throw new TessError('TESS_E_TIMEOUT', `the scrub did not end within ${flags.timeout}`, 'it goes on: see `tess cluster health`')
        await new Promise((r) => setTimeout(r, 1000))
      }
    })
    const found = done.lastScrubFound
    if (found !== null && found.badBlocks > found.repairedBlocks) process.exitCode = 1
    return { ...start, found, finishedAt: done.lastScrubAt }
  }

  protected render(r: ScrubResultView): string {
    const pairs: Array<[string, string | number]> = [
      ['scrub', r.started ? 'started' : 'running already'], ['master', r.master], ['rate', `${formatBytes(r.bytesPerSec)}/s`],
    ]
    if (r.found !== null) {
      const f = r.found
      pairs.push(['finished', r.finishedAt ?? '-'], ['vDisks', f.vdisks], ['extents', f.extents], ['checked', formatBytes(f.bytesChecked)],
        ['bad blocks', f.badBlocks], ['repaired', f.repairedBlocks], ['unreadable', f.unreadable])
      if (f.failedVdisks.length > 0) pairs.push(['failed', f.failedVdisks.join(', ')])
    }
    return keyValue(pairs)
  }
}
