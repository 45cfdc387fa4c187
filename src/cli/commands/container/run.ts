import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { checkImageRef, imagePullTimeoutMs, parseCpus, parseEnv, parseMemory, parseVolumeFlag } from '../../csm-input.js'
import { withSpinner } from '../../output.js'
import { withPullProgress } from '../../pull-progress.js'
import { renderContainer } from '../../render-csm.js'
import { TessError } from '../../../lib/errors.js'
import { checkName } from '../../../lib/names.js'
import { parseRestartPolicy } from '../../../lib/container-spec.js'
import type { ContainerView } from '../../../lib/csm-types.js'

export default class ContainerRun extends TessCommand<ContainerView> {
  static override summary = 'Run a container from an image'
  static override description = `Creates and starts a container in a CSM: the one named with --csm, one the scheduler picks from the CSM pool named with --pool, or, with neither, one the scheduler picks among all CSMs. The image is pulled on that node first if it is not there yet (checked against the pull policy, see \`tess registry policy\`), so the command may take a while; it waits up to 30 minutes, and on a terminal its spinner shows the pull's layers and bytes done.

The command and its arguments go after "--"; without them the image's default command runs. Everything after "--" is passed to the container unchanged, flags included.

--volume NAME:/path attaches a volume (see \`tess volume create\`) read-write, NAME:/path:ro read-only; a volume is attached read-write to one container at a time.

--cpus and --memory bound the container (fractions of CPUs allowed; sizes like 256M, 1G); without them it is bounded only by its CSM. --env KEY=VALUE sets a variable (repeat the flag for several). --network none (the default) gives the container only a loopback interface; host shares the node's network.

--userns runs the container in a user namespace: its root (and every uid and gid 0-65535 in it) is the unprivileged host id 100000 and up, so what it reaches of the host (a device, a file, another process) it reaches as nobody special. Its image and volumes appear as its own through idmapped mounts (nothing is copied or chowned): on a volume, files keep the ids the container sees (its root writes uid 0), so the same volume serves containers with and without --userns. It needs a kernel with idmapped mounts (Linux 5.19 or later).

--restart says when the CSM starts the container again after it exits: no (the default), always, on-failure (after a non-zero exit) or on-failure:N (at most N times). It waits 100 ms after an exit, doubling with each exit in a row up to 30 s, and back to 100 ms once the container ran 10 s. \`tess container stop\` holds the policy off until \`tess container start\`. When the container's node has been down longer than the node-down grace (30 s; \`tess cluster update --node-down-grace\`), a container with a policy other than no is started on another node with its volumes. \`tess container show\` prints the policy and the restarts.`
  static override usage = '<%= command.id %> IMAGE --name NAME [--csm CSM | --pool POOL] [--cpus N] [--memory SIZE] [--env KEY=VALUE]... [--volume NAME:/PATH[:ro]]... [--network none|host] [--userns] [--restart no|always|on-failure[:N]] [-- COMMAND [ARG...]]'
  static override examples = [
    '<%= config.bin %> <%= command.id %> 127.0.0.1:5000/test/busybox:1.36 --name hello -- echo hello',
    { description: 'Bounded, in a CSM pool, with variables', command: '<%= config.bin %> <%= command.id %> registry.example.com/app/web:2.1 --name web1 --pool web --cpus 0.5 --memory 256M --env PORT=8080 --env LOG_LEVEL=info --network host' },
    { description: 'In a user namespace: root inside is an unprivileged user on the node', command: '<%= config.bin %> <%= command.id %> 127.0.0.1:5000/test/busybox:1.36 --name isolated --userns -- id' },
    { description: 'Started again whenever it exits, also on another node if its node is lost', command: '<%= config.bin %> <%= command.id %> 127.0.0.1:5000/test/busybox:1.36 --name worker --restart always -- sh -c \'work; sleep 5\'' },
    { description: 'A shell command with its own flags', command: '<%= config.bin %> <%= command.id %> 127.0.0.1:5000/test/busybox:1.36 --name ticker --csm small -- sh -c \'while true; do date; sleep 1; done\'' },
  ]

  // The container command after "--" is not for us: parsed by hand in exec().
  static override strict = false

  static override args = {
    image: Args.string({ description: 'Image reference, e.g. 127.0.0.1:5000/test/busybox:1.36.', required: true }),
  }

  static override flags = {
    name: Flags.string({ description: 'Container name: [a-z0-9][a-z0-9-]{0,62}.', required: true }),
    csm: Flags.string({ description: 'Run it in this CSM.', exclusive: ['pool'] }),
    pool: Flags.string({ description: 'Run it in a CSM of this CSM pool (the scheduler picks).', exclusive: ['csm'] }),
    cpus: Flags.string({ description: 'CPU limit: a number more than 0, fractions allowed (e.g. 0.5).' }),
    memory: Flags.string({ char: 'm', description: 'Memory limit, e.g. 256M, 1G.' }),
    env: Flags.string({ char: 'e', description: 'Environment variable KEY=VALUE (repeat for several).', multiple: true, multipleNonGreedy: true }),
    volume: Flags.string({ char: 'v', description: 'Attach a volume: NAME:/path (read-write) or NAME:/path:ro (repeat for several).', multiple: true, multipleNonGreedy: true }),
    network: Flags.option({ options: ['none', 'host'] as const, description: 'none: loopback only; host: the node\'s network.', default: 'none' as const })(),
    userns: Flags.boolean({ description: 'Run it in a user namespace: its root is an unprivileged user (host ids 100000 and up).', default: false }),
    restart: Flags.string({ description: 'When to start it again after it exits: no, always, on-failure or on-failure:N (at most N times).', default: 'no' }),
  }

  protected async exec(): Promise<ContainerView> {
    // Everything after the first "--" is the container's command line, never our flags.
    const dashdash = this.argv.indexOf('--')
    const own = dashdash < 0 ? this.argv : this.argv.slice(0, dashdash)
    const command = dashdash < 0 ? [] : this.argv.slice(dashdash + 1)
    const { flags, args, argv } = await this.parseInput(ContainerRun, own)
    if (argv.length > 1) {
      throw new TessError('TESS_E_USAGE', `unexpected argument(s) after the image: ${argv.slice(1).join(' ')}`,
        'put the container command after "--": tess container run IMAGE --name NAME -- COMMAND ARG...')
    }
    const image = checkImageRef(args.image)
    checkName('container', flags.name)
    if (flags.csm !== undefined) checkName('CSM', flags.csm)
    if (flags.pool !== undefined) checkName('CSM pool', flags.pool)
    const cpus = flags.cpus !== undefined ? parseCpus(flags.cpus) : undefined
    const memoryBytes = flags.memory !== undefined ? parseMemory(flags.memory) : undefined
    const env = parseEnv(flags.env)
    const volumes = (flags.volume ?? []).map((v) => parseVolumeFlag(v))
    const restart = parseRestartPolicy(flags.restart)
    const body = {
      name: flags.name,
      image,
      ...(flags.csm !== undefined ? { csm: flags.csm } : {}),
      ...(flags.pool !== undefined ? { pool: flags.pool } : {}),
      ...(cpus !== undefined ? { cpus } : {}),
      ...(memoryBytes !== undefined ? { memoryBytes } : {}),
      ...(env.length > 0 ? { env } : {}),
      network: flags.network,
      ...(command.length > 0 ? { command } : {}),
      ...(volumes.length > 0 ? { volumes } : {}),
      ...(flags.userns ? { userns: true } : {}),
      ...(restart.policy !== 'no' ? { restart } : {}),
    }
    const client = this.client(this.context(flags.cluster))
    const head = `Running container ${flags.name} (${image})`
    // the node pulls the image first when it does not hold it: the spinner shows that pull
    return withSpinner(!this.jsonMode, head, (s) =>
      withPullProgress(!this.jsonMode, client, image, head, s.text, client.post<ContainerView>('/v1/containers', body, { timeoutMs: imagePullTimeoutMs })))
  }

  protected render(c: ContainerView): string {
    return renderContainer(c)
  }
}
