import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { checkImageRef, checkNodeName } from '../../csm-input.js'
import { renderImageRemoved } from '../../render-csm.js'
import type { ImageRemoveResult } from '../../../lib/csm-types.js'

export default class ImageRemove extends TessCommand<ImageRemoveResult> {
  static override summary = 'Remove an image from the nodes'
  static override description = 'Removes the image from every node that holds it, or from one node with --node. USED BY in `tess image list` shows the containers using it on each node. Asks first on a terminal; --yes skips the question.'
  static override aliases = ['image:rm']
  static override examples = [
    '<%= config.bin %> <%= command.id %> 127.0.0.1:5000/test/busybox:1.36 --yes',
    '<%= config.bin %> <%= command.id %> 127.0.0.1:5000/test/busybox:1.36 --node node2 --yes --json',
  ]

  static override args = {
    ref: Args.string({ description: 'Image reference as `tess image list` shows it.', required: true }),
  }

  static override flags = {
    node: Flags.string({ description: 'Remove it from this node only.', aliases: ['host'], deprecateAliases: true }),
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
  }

  protected async exec(): Promise<ImageRemoveResult> {
    const { flags, args } = await this.parseInput(ImageRemove)
    const ref = checkImageRef(args.ref)
    if (flags.node !== undefined) checkNodeName(flags.node)
    const where = flags.node !== undefined ? `node ${flags.node}` : 'every node'
    await this.confirm(`Remove image ${ref} from ${where}?`, flags.yes, `remove image ${ref}`)
    const q = new URLSearchParams({ ref, ...(flags.node !== undefined ? { node: flags.node } : {}) })
    return this.client(this.context(flags.cluster)).delete<ImageRemoveResult>(`/v1/images?${q.toString()}`)
  }

  protected render(r: ImageRemoveResult): string {
    return renderImageRemoved(r)
  }
}
