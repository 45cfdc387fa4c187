import { TessCommand, watchFlag } from '../../base.js'
import { renderImageList } from '../../render-csm.js'
import type { ImageInfo } from '../../../lib/csm-types.js'

export default class ImageList extends TessCommand<ImageInfo[]> {
  static override summary = 'List the images stored on each node and the containers using them'
  static override watchable = true
  static override flags = { watch: watchFlag }
  static override description = 'One row per image per node. DIGEST is the manifest digest, shortened (the full one is in --json).'
  static override aliases = ['image:ls']
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json']

  protected async exec(): Promise<ImageInfo[]> {
    const { flags } = await this.parseInput(ImageList)
    return this.client(this.context(flags.cluster)).get<ImageInfo[]>('/v1/images')
  }

  protected render(r: ImageInfo[]): string {
    return renderImageList(r)
  }
}
