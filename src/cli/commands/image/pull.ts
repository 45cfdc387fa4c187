import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { checkImageRef, checkNodeName, imagePullTimeoutMs } from '../../csm-input.js'
import { withSpinner } from '../../output.js'
import { withPullProgress } from '../../pull-progress.js'
import { renderImagePull } from '../../render-csm.js'
import { checkName } from '../../../lib/names.js'
import type { ImagePullResult } from '../../../lib/csm-types.js'

export default class ImagePull extends TessCommand<ImagePullResult> {
  static override summary = 'Pull an image from its registry onto the nodes'
  static override description = `REF is [HOST[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST]; without a tag or digest the tag is "latest". The registry is the host named in REF (see \`tess registry add\` for credentials and http registries); the pull is checked against the pull policy (\`tess registry policy\`).

Without --csm or --node the image is pulled on every node that is up. Layers a node already holds are not downloaded again. The command waits until the pull is done (up to 30 minutes); on a terminal its spinner shows the layers and compressed bytes done so far, summed over the nodes that pull (\`--no-progress\`, \`CI\` or \`TERM=dumb\` print only the outcome).`
  static override examples = [
    '<%= config.bin %> <%= command.id %> 127.0.0.1:5000/test/busybox:1.36',
    '<%= config.bin %> <%= command.id %> registry.example.com/app/web:2.1 --node node2',
    '<%= config.bin %> <%= command.id %> registry.example.com/app/web@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef --csm web1 --json',
  ]

  static override args = {
    ref: Args.string({ description: 'Image reference, e.g. 127.0.0.1:5000/test/busybox:1.36.', required: true }),
  }

  static override flags = {
    csm: Flags.string({ description: 'Pull only on the node of this CSM.', exclusive: ['node'] }),
    node: Flags.string({ description: 'Pull only on this node.', aliases: ['host'], deprecateAliases: true, exclusive: ['csm'] }),
  }

  protected async exec(): Promise<ImagePullResult> {
    const { flags, args } = await this.parseInput(ImagePull)
    const ref = checkImageRef(args.ref)
    if (flags.csm !== undefined) checkName('CSM', flags.csm)
    if (flags.node !== undefined) checkNodeName(flags.node)
    const client = this.client(this.context(flags.cluster))
    const body = {
      ref,
      ...(flags.csm !== undefined ? { csm: flags.csm } : {}),
      ...(flags.node !== undefined ? { node: flags.node } : {}),
    }
    const head = `Pulling ${ref}`
    return withSpinner(!this.jsonMode, head, (s) =>
      withPullProgress(!this.jsonMode, client, ref, head, s.text, client.post<ImagePullResult>('/v1/images', body, { timeoutMs: imagePullTimeoutMs })))
  }

  protected render(r: ImagePullResult): string {
    return renderImagePull(r)
  }
}

