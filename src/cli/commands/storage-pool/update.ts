import { Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { keyValue } from '../../output.js'
import { TessError } from '../../../lib/errors.js'
import { overcommitMaxMax, overcommitMaxMin } from '../../../lib/limits.js'
import { formatBytes } from '../../../lib/units.js'
import type { PoolInfo } from '../../../lib/types.js'

export default class StoragePoolUpdate extends TessCommand<PoolInfo> {
  static override summary = 'Change the storage pool\'s settings: how far vDisks may overcommit it'
  static override description = 'vDisks are thin: they take pool space only as they are written. --overcommit-max R lets the vDisks promise up to R times the pool\'s usable space (used + free; every vDisk counts its size times its RF). 1 (the default) never promises more than the pool holds; above 1, writes fail with ENOSPC if the vDisks fill the pool: watch `tess storage-pool show` and add disks in time. A lower limit refuses new vDisks and growths only; existing ones stay. Needs the admin role.'
  static override examples = ['<%= config.bin %> <%= command.id %> --overcommit-max 2', '<%= config.bin %> <%= command.id %> --overcommit-max 1 --json']
  static override flags = {
    'overcommit-max': Flags.string({ description: `Provisioned bytes may reach (used + free) times this (${overcommitMaxMin} to ${overcommitMaxMax}; default 1).`, required: true }),
  }

  protected async exec(): Promise<PoolInfo> {
    const { flags } = await this.parseInput(StoragePoolUpdate)
    const v = Number(flags['overcommit-max'])
    if (!Number.isFinite(v) || v < overcommitMaxMin || v > overcommitMaxMax) {
      throw new TessError('TESS_E_INVALID', `invalid --overcommit-max "${flags['overcommit-max']}"`, `give a number from ${overcommitMaxMin} to ${overcommitMaxMax}, e.g. 1, 1.5 or 3`)
    }
    return this.client(this.context(flags.cluster)).patch<PoolInfo>('/v1/storage-pool', { overcommitMax: v })
  }

  protected render(p: PoolInfo): string {
    return keyValue([
      ['overcommit max', `${p.overcommitMax ?? 1}x`],
      ['provisioned', formatBytes(p.provisionedBytes ?? 0)],
      ['limit', `${formatBytes(p.provisionLimitBytes ?? 0)} ((used + free) x overcommit)`],
      ['used', formatBytes(p.usedBytes)], ['free', formatBytes(p.freeBytes)],
    ])
  }
}
