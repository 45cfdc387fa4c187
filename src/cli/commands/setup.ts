import fs from 'node:fs'
import { Flags } from '@oclif/core'
import { TessCommand } from '../base.js'
import { findContext, saveContext } from '../../lib/contexts.js'
import { keyValue, table, withSpinner } from '../output.js'
import {
  defaultPrivateKey, equivalentCreateCommand, equivalentLocalCommand, expandPath, formatLocalPlan, formatPlan, hostCheckHint, missingPackagesOnly, parseDisks,
  parseHosts, rfBounds, validateClusterName, validateDataDir, validateDisks, validateHosts, validateKnownHostsFile, validatePrivateKeyFile, validateRf, validateSshUser,
  wizardDiskDefault, type WizardAnswers,
} from '../wizard.js'
import { defaultKnownHostsFile } from '../../bootstrap/knownhosts.js'
import { createLocalCluster, localDefaults, preflightLocal, type LocalClusterOptions } from '../../bootstrap/local.js'
import { formatPreflight, type PreflightResult } from '../../bootstrap/preflight.js'
import { PreflightFailed, clusterStateDir, createRemoteCluster, remotePortDefaults, type RemoteCreated, type RemotePlan } from '../../bootstrap/remote.js'
import { SshTransport } from '../../bootstrap/ssh.js'
import { TessError, errorMessage, isTessError } from '../../lib/errors.js'
import { formatBytes } from '../../lib/units.js'
import type { ClusterStatus } from '../../lib/types.js'

/** How long the SSH check of one host may take (TCP, handshake, login), not counting a host key question. */
const hostCheckTimeoutMs = 10_000
/** How long `hostname` may take on a host during its check. */
const hostnameTimeoutMs = 10_000
const clusterNameSuggested = 'tess'

export interface SetupResult extends ClusterStatus {
  endpoint: string
  /** the embedded cluster on this machine (no SSH), and its data dir */
  local: boolean
  dataDir: string | null
  /** the plan of a cluster on hosts (null for the embedded one: RF 1) */
  plan: RemotePlan | null
  /** the `tess cluster create` command that does the same without questions */
  equivalentCommand: string
  /** Debian packages installed during the pre-flight, by host */
  packagesInstalled: Record<string, string[]>
}

/** The user chose to stop (a menu choice or "no" to the plan). */
class Cancelled extends Error {}

/** What the wizard has done so far: decides the cancel message and the cleanup. */
interface WizardState {
  name?: string
  /** the operator-side cluster dir (CA, id) was created by this run's pre-flight */
  createdStateDir: boolean
  /** host keys the user accepted (recorded in tess's known_hosts) */
  acceptedKeys: number
  /** packages installed on hosts by the pre-flight, by host */
  installed: Map<string, string[]>
  /** apt-get may be running on these hosts now */
  installing: string[]
  /** the real bootstrap has started: hosts may be changed */
  creating: boolean
  answers?: WizardAnswers
  /** the embedded cluster's `tess cluster create --local` command, once it is being created */
  localCommand?: string
}

type WizardStep = 'ssh' | 'hosts' | 'layout' | 'preflight' | 'confirm' | 'create'

/** One run of the wizard: the prompts module, the answers so far and what was checked. */
interface WizardRun {
  prompts: typeof import('@inquirer/prompts')
  out: { output: NodeJS.WriteStream }
  a: WizardAnswers
  st: WizardState
  /** host → what its SSH check found */
  verified: Map<string, string>
  /** the host list as typed, offered again for editing */
  hostsAnswer: string
  /** the plan of the last successful pre-flight */
  plan?: RemotePlan
}

const isPromptExit = (e: unknown): boolean => e instanceof Error && (e.name === 'ExitPromptError' || e.name === 'AbortPromptError')

function say(text = ''): void {
  process.stderr.write(text + '\n')
}

export default class Setup extends TessCommand<SetupResult> {
  static override summary = 'Set up a cluster interactively'
  static override description = `A wizard for a first cluster. It asks for the cluster name and where the cluster runs: on hosts you reach over SSH, or on this machine only (the embedded cluster: one node, RF 1, as \`<%= config.bin %> cluster create --local\`; it asks for the data directory, checks this machine, shows the plan and asks before it creates anything).

For hosts, it asks for the SSH user, the private key, an optional known_hosts file and the hosts; right after you give the hosts it logs in to each of them (showing every new host key's fingerprint for you to accept, unless you gave a known_hosts file) and asks again if one fails. Then it asks for the disk directories on every host, the replication factor (1 to min(3, hosts); default min(2, hosts)) and whether to install missing Debian packages with apt-get.

It runs the pre-flight checks on every host (the same code as \`<%= config.bin %> cluster create --dry-run\`), shows the plan, and asks before it changes anything; on yes it bootstraps the hosts as \`<%= config.bin %> cluster create --hosts\` does, saves the cluster context (it becomes the current one) and prints the cluster status. It also prints that \`cluster create\` command, for scripts or to resume after a failure.

Invalid answers are asked again with the reason. Ctrl-C at a question quits; until you confirm the plan, nothing is changed on the hosts (except packages, if you agreed to install them) and the host keys you accepted stay recorded in tess's known_hosts.

The wizard needs a terminal. Without one, and for --json output, use \`<%= config.bin %> cluster create --hosts ...\`. Daemon ports are the defaults; for other ports use \`cluster create\` too.`

  static override examples = [
    { description: 'Answer the questions and create the cluster', command: '<%= config.bin %> <%= command.id %>' },
    { description: 'Hosts whose sshd listens on port 2222', command: '<%= config.bin %> <%= command.id %> --ssh-port 2222' },
    { description: 'The same without questions (scripts, CI)', command: '<%= config.bin %> cluster create --name prod --hosts 10.0.0.11,10.0.0.12 --ssh-key ~/.ssh/id_ed25519 --known-hosts ~/.ssh/known_hosts --rf 2 --json' },
  ]

  static override flags = {
    'ssh-port': Flags.integer({ description: 'SSH port of every host.', default: 22, min: 1, max: 65535 }),
  }

  protected async exec(): Promise<SetupResult> {
    const { flags } = await this.parseInput(Setup)
    if (this.jsonMode) {
      throw new TessError('TESS_E_USAGE', 'tess setup is an interactive wizard and has no --json output',
        'for a scripted setup with JSON output use `tess cluster create --hosts H1,H2 --ssh-key KEY --known-hosts FILE --json` (see tess cluster create --help)')
    }
    if (!this.interactive) {
      throw new TessError('TESS_E_USAGE', 'tess setup asks questions and needs a terminal (stdin and stdout are not both a TTY)',
        'without a terminal use `tess cluster create --hosts H1,H2 --ssh-key KEY --known-hosts FILE` (see tess cluster create --help)')
    }
    const st: WizardState = { createdStateDir: false, acceptedKeys: 0, installed: new Map(), installing: [], creating: false }
    const onSigint = (): void => this.interrupted(st)
    process.on('SIGINT', onSigint)
    try {
      return await this.wizard(flags['ssh-port'], st)
    } catch (e) {
      if (st.creating) throw this.resumable(e, st)
      this.cleanUp(st)
      if (isPromptExit(e)) throw new TessError('TESS_E_USAGE', 'setup cancelled at the prompt', this.nothingChanged(st))
      if (e instanceof Cancelled) throw new TessError('TESS_E_USAGE', e.message, this.nothingChanged(st))
      throw e
    } finally {
      process.off('SIGINT', onSigint)
    }
  }

  // --------------------------------------------------------------------------- the questions

  private async wizard(sshPort: number, st: WizardState): Promise<SetupResult> {
    const prompts = await import('@inquirer/prompts')
    const out = { output: process.stderr }
    say('Tessera setup: create a cluster on hosts you reach over SSH, or the embedded one on this machine.')
    say('Every host is checked as you go; nothing is changed until you confirm the plan. Ctrl-C quits.')
    say()

    const exists = (n: string): boolean => findContext(n) !== undefined
    const name = (await prompts.input({
      message: 'Cluster name',
      ...(exists(clusterNameSuggested) ? {} : { default: clusterNameSuggested }),
      validate: (v) => validateClusterName(v, exists),
    }, out)).trim()
    st.name = name
    const where = await prompts.select({
      message: 'Where does the cluster run?',
      choices: [
        { name: 'On hosts I reach over SSH (several nodes, every extent group copied to RF of them)', value: 'hosts' as const },
        { name: 'On this machine only (the embedded cluster: one node, RF 1, no SSH)', value: 'local' as const },
      ],
    }, out)
    if (where === 'local') return await this.embedded(prompts, out, name, st)

    const a: WizardAnswers = { name, sshUser: 'root', sshKey: defaultPrivateKey() ?? '', sshPort, knownHostsFile: '', hosts: [], disks: [wizardDiskDefault], rf: 0, installDeps: false }
    st.answers = a
    const run: WizardRun = { prompts, out, a, st, verified: new Map(), hostsAnswer: '' }
    // the questions as a small state machine: each step asks, and says which step comes next
    const steps: Record<Exclude<WizardStep, 'create'>, (r: WizardRun) => Promise<WizardStep>> = {
      ssh: (r) => this.askSsh(r),
      hosts: (r) => this.askHosts(r),
      layout: (r) => this.askLayout(r),
      preflight: (r) => this.preflight(r),
      confirm: (r) => this.confirmPlan(r),
    }
    let step: WizardStep = 'ssh'
    while (step !== 'create') step = await steps[step](run)
    return await this.create(run)
  }

  private async askSsh({ prompts, out, a, verified }: WizardRun): Promise<WizardStep> {
    a.sshUser = (await prompts.input({ message: 'SSH user on the hosts (root, or a user with passwordless sudo)', default: a.sshUser, validate: validateSshUser }, out)).trim()
    a.sshKey = expandPath(await prompts.input({ message: 'SSH private key file', ...(a.sshKey ? { default: a.sshKey } : {}), validate: validatePrivateKeyFile }, out))
    const kh = (await prompts.input({ message: 'known_hosts file (empty: ask for each new host key)', ...(a.knownHostsFile ? { default: a.knownHostsFile } : {}), validate: validateKnownHostsFile }, out)).trim()
    a.knownHostsFile = kh ? expandPath(kh) : ''
    verified.clear()
    return 'hosts'
  }

  /** the host list, then an SSH check of every host not checked yet */
  private async askHosts(r: WizardRun): Promise<WizardStep> {
    const { prompts, out, a } = r
    r.hostsAnswer = (await prompts.input({
      message: 'Hosts (addresses or names, comma-separated)',
      ...(r.hostsAnswer ? { default: r.hostsAnswer, prefill: 'editable' as const } : {}),
      validate: validateHosts,
    }, out)).trim()
    const parsed = parseHosts(r.hostsAnswer)
    if ('error' in parsed) return 'hosts' // validate() accepted it: cannot happen
    a.hosts = parsed.hosts
    const failed = await this.checkHosts(a, r.verified, r.st)
    if (failed === 0) return 'layout'
    const next = await prompts.select({
      message: `${failed} host(s) failed the SSH check. What now?`,
      choices: [
        { name: 'Edit the host list', value: 'hosts' as const },
        { name: 'Change the SSH user, key or known_hosts file', value: 'ssh' as const },
        { name: 'Quit', value: 'quit' as const },
      ],
    }, out)
    if (next === 'quit') throw new Cancelled('setup cancelled')
    return next
  }

  /** disks, replication factor, and whether missing packages may be installed */
  private async askLayout({ prompts, out, a }: WizardRun): Promise<WizardStep> {
    const d = await prompts.input({ message: 'Disk directories on every host (comma-separated)', default: a.disks.join(', '), validate: validateDisks }, out)
    const pd = parseDisks(d)
    if ('error' in pd) return 'layout'
    a.disks = pd.disks
    const b = rfBounds(a.hosts.length)
    const prevRf = a.rf >= b.min && a.rf <= b.max ? a.rf : b.default
    const rf = await prompts.number({
      message: `Replication factor: copies of every extent group, on distinct hosts (${b.min}-${b.max})`,
      default: prevRf, min: b.min, max: b.max, required: true,
      validate: (v) => validateRf(v, a.hosts.length),
    }, out)
    a.rf = rf ?? b.default
    a.installDeps = await prompts.confirm({ message: 'Install missing packages (etcd-server, etcd-client, ...) on the hosts with apt-get?', default: a.installDeps }, out)
    return 'preflight'
  }

  /** the pre-flight checks on every host (installing missing packages if agreed); on failure, ask what now */
  private async preflight(r: WizardRun): Promise<WizardStep> {
    const { prompts, out, a, st } = r
    if (!st.createdStateDir && !fs.existsSync(clusterStateDir(a.name))) st.createdStateDir = true
    let res = await this.dryRun(a, false)
    if (!res.ok) {
      const missing = missingPackagesOnly(res.result)
      if (missing && a.installDeps) {
        say(`Missing packages: ${[...missing].map(([h, p]) => `${h}: ${p.join(' ')}`).join('; ')}. Installing them, as you agreed.`)
        st.installing = [...missing.keys()]
        res = await this.dryRun(a, true)
        st.installing = []
        if (res.ok) for (const [h, pk] of missing) st.installed.set(h, pk)
        else for (const h of res.result.hosts) if (h.installed.length > 0) st.installed.set(h.host, h.installed)
      }
    }
    if (res.ok) {
      r.plan = res.plan
      return 'confirm'
    }
    say(formatPreflight(res.result, { onlyProblems: true }))
    const missing = missingPackagesOnly(res.result)
    type Next = 'install' | 'retry' | 'change' | 'quit'
    const choices: Array<{ name: string, value: Next }> = []
    if (missing && !a.installDeps) choices.push({ name: 'Install the missing packages with apt-get and check again', value: 'install' })
    choices.push(
      { name: 'Check again (after fixing the hosts)', value: 'retry' },
      { name: 'Change the hosts, disks or replication factor', value: 'change' },
      { name: 'Quit', value: 'quit' },
    )
    const next = await prompts.select<Next>({ message: 'The pre-flight checks failed. What now?', choices }, out)
    if (next === 'quit') throw new Cancelled('setup cancelled: the pre-flight checks failed')
    if (next === 'install') a.installDeps = true
    return next === 'change' ? 'hosts' : 'preflight'
  }

  /** show the plan and the equivalent command; yes creates the cluster */
  private async confirmPlan({ prompts, out, a, st, plan }: WizardRun): Promise<WizardStep> {
    if (plan === undefined) return 'preflight'
    say()
    say(formatPlan(plan, a, a.knownHostsFile || defaultKnownHostsFile(), st.installed))
    say()
    say('The same without questions:')
    say(`  ${equivalentCreateCommand(a, this.config.bin)}`)
    say()
    const go = await prompts.confirm({ message: 'Create the cluster?', default: true }, out)
    if (!go) throw new Cancelled('setup cancelled: the cluster was not created')
    return 'create'
  }

  /**
   * The embedded cluster: its data directory (asked again while the pre-flight finds a problem
   * there), the plan, a confirmation, then the same code path as `tess cluster create --local`.
   */
  private async embedded(prompts: WizardRun['prompts'], out: WizardRun['out'], name: string, st: WizardState): Promise<SetupResult> {
    let o: LocalClusterOptions = { ...localDefaults, name }
    for (;;) {
      o = { ...o, dataDir: expandPath(await prompts.input({ message: 'Data directory (the node\'s state, logs, certificates and first disk)', default: o.dataDir, validate: validateDataDir }, out)) }
      try {
        await withSpinner(true, 'Checking this machine', () => preflightLocal(o))
        break
      } catch (e) {
        if (!isTessError(e)) throw e
        say(`${e.message}\n  hint: ${e.hint}`)
        const next = await prompts.select({ message: 'What now?', choices: [{ name: 'Give another data directory (or fix the problem, then give the same)', value: 'again' as const }, { name: 'Quit', value: 'quit' as const }] }, out)
        if (next === 'quit') throw new Cancelled('setup cancelled')
      }
    }
    const command = equivalentLocalCommand(name, o.dataDir, this.config.bin)
    say()
    say(formatLocalPlan(o))
    say()
    say('The same without questions:')
    say(`  ${command}`)
    say()
    if (!(await prompts.confirm({ message: 'Create the cluster?', default: true }, out))) throw new Cancelled('setup cancelled: the cluster was not created')
    st.localCommand = command
    st.creating = true
    const created = await withSpinner(true, `Creating cluster "${name}"`, (s) => createLocalCluster(o, (step) => s.text(`Creating cluster "${name}": ${step}`)))
    await saveContext(created.context)
    return { ...created.status, endpoint: created.context.endpoints[0]!, local: true, dataDir: o.dataDir, plan: null, equivalentCommand: command, packagesInstalled: {} }
  }

  /** create it: the same code path as `tess cluster create --hosts` */
  private async create({ a, st }: WizardRun): Promise<SetupResult> {
    st.creating = true
    const steps = new Map<string, string>()
    const created = await withSpinner(true, `Creating cluster "${a.name}"`, async (s) => {
      try {
        const res = await createRemoteCluster(this.options(a, false), (host, stp) => {
          steps.set(host, stp)
          s.text(`Creating cluster "${a.name}"\n${[...steps].map(([h, x]) => `  ${h}: ${x}`).join('\n')}`)
        })
        s.text(`Created cluster "${a.name}" on ${a.hosts.length} host(s)`)
        return res
      } catch (e) {
        if (e instanceof PreflightFailed) say(formatPreflight(e.result, { onlyProblems: true }))
        throw e
      }
    })
    if ('dryRun' in created) throw new TessError('TESS_E_INTERNAL', 'the bootstrap returned a plan instead of a cluster', 'this is a bug')
    const r = created as RemoteCreated
    await saveContext(r.context)
    return {
      ...r.status,
      endpoint: r.context.endpoints[0]!,
      local: false,
      dataDir: null,
      plan: r.plan,
      equivalentCommand: equivalentCreateCommand(a, this.config.bin),
      packagesInstalled: Object.fromEntries(st.installed),
    }
  }

  /** Log in to every host not checked yet, one after another (so host key questions come in order). Returns the failures. */
  private async checkHosts(a: WizardAnswers, verified: Map<string, string>, st: WizardState): Promise<number> {
    const { confirm } = await import('@inquirer/prompts')
    let failed = 0
    for (const host of a.hosts) {
      const seen = verified.get(host)
      if (seen) {
        say(`  ✔ ${host}: ${seen}`)
        continue
      }
      say(`  … ${host}: logging in over SSH as ${a.sshUser}`)
      let promptExit: unknown
      try {
        const t = await SshTransport.connect({
          host, port: a.sshPort, username: a.sshUser, privateKey: a.sshKey,
          hostKeyPolicy: a.knownHostsFile ? 'strict' : 'ask',
          ...(a.knownHostsFile ? { knownHostsFile: a.knownHostsFile } : {}),
          ask: async (label, fingerprint, keyType) => {
            try {
              const ok = await confirm({
                message: `${label} is a new host: its ${keyType} key fingerprint is ${fingerprint}. Trust it and record it in ${defaultKnownHostsFile()}?`,
                default: false,
              }, { output: process.stderr })
              if (ok) st.acceptedKeys++
              return ok
            } catch (e) {
              promptExit = e
              throw e
            }
          },
          readyTimeoutMs: hostCheckTimeoutMs,
        })
        try {
          const hn = await t.exec('hostname', { timeoutMs: hostnameTimeoutMs })
          const what = `logged in as ${a.sshUser}; host name ${hn.stdout.trim() || '?'}; host key ${t.hostKey.keyType} ${t.hostKey.fingerprint}`
          verified.set(host, what)
          say(`  ✔ ${host}: ${what}`)
        } finally {
          await t.close()
        }
      } catch (e) {
        if (promptExit) throw promptExit
        failed++
        say(`  ✖ ${host}: ${errorMessage(e)}`)
        const hint = hostCheckHint(errorMessage(e), isTessError(e) ? e.hint : '', a.knownHostsFile)
        if (hint) say(`      hint: ${hint}`)
      }
    }
    return failed
  }

  private options(a: WizardAnswers, dryRun: boolean, installDeps = a.installDeps): Parameters<typeof createRemoteCluster>[0] {
    return {
      name: a.name,
      hosts: a.hosts,
      sshUser: a.sshUser,
      sshKey: a.sshKey,
      sshPort: a.sshPort,
      ...(a.knownHostsFile ? { knownHostsFile: a.knownHostsFile } : {}),
      // every host key was verified (and recorded) when the hosts were given
      hostKeyPolicy: 'strict',
      rf: a.rf,
      disks: a.disks,
      installDeps,
      dryRun,
      ports: { ...remotePortDefaults },
    }
  }

  /** The pre-flight of every host through createRemoteCluster's dry run. */
  private async dryRun(a: WizardAnswers, installDeps: boolean): Promise<{ ok: true, plan: RemotePlan } | { ok: false, result: PreflightResult }> {
    const title = installDeps ? `Installing missing packages and checking ${a.hosts.length} host(s)` : `Running the pre-flight checks on ${a.hosts.length} host(s)`
    try {
      const r = await withSpinner(true, title, async (s) => {
        try {
          const res = await createRemoteCluster(this.options(a, true, installDeps), (host, stp) => s.text(`${title}: ${host}: ${stp}`))
          s.text(`Pre-flight checks passed on ${a.hosts.length} host(s)`)
          return res
        } catch (e) {
          s.text(e instanceof PreflightFailed ? `Pre-flight checks failed on ${e.result.hosts.filter((h) => !h.ok).length} of ${a.hosts.length} host(s):` : title)
          throw e
        }
      })
      if (!('dryRun' in r)) throw new TessError('TESS_E_INTERNAL', 'the dry run created a cluster', 'this is a bug')
      return { ok: true, plan: r.plan }
    } catch (e) {
      if (e instanceof PreflightFailed) return { ok: false, result: e.result }
      throw e
    }
  }

  // ------------------------------------------------------------------------ cancel, resume

  private nothingChanged(st: WizardState): string {
    const parts: string[] = []
    if (st.installing.length > 0) parts.push(`nothing was changed, except that packages may have been installed on ${st.installing.join(', ')}`)
    else if (st.installed.size > 0) parts.push(`nothing was changed, except the packages installed on ${[...st.installed.keys()].join(', ')}`)
    else parts.push('nothing was changed')
    if (st.acceptedKeys > 0) parts.push(`the host key(s) you accepted stay recorded in ${defaultKnownHostsFile()}`)
    return parts.join('; ')
  }

  /** Before the bootstrap: remove the cluster's CA and id made by this run's pre-flight. */
  private cleanUp(st: WizardState): void {
    if (st.createdStateDir && st.name && !st.creating) {
      fs.rmSync(clusterStateDir(st.name), { recursive: true, force: true })
      st.createdStateDir = false
    }
  }

  private resumeHint(st: WizardState): string {
    const cmd = st.localCommand ?? (st.answers ? equivalentCreateCommand(st.answers, this.config.bin) : 'tess cluster create --hosts ...')
    return `run \`tess setup\` again with the same answers, or resume with: ${cmd}`
  }

  private resumable(e: unknown, st: WizardState): unknown {
    if (isTessError(e)) return new TessError(e.code, e.message, `${e.hint ? `${e.hint}\n` : ''}${this.resumeHint(st)}`)
    return e
  }

  /** Ctrl-C outside a question (SSH checks, pre-flight, bootstrap). */
  private interrupted(st: WizardState): void {
    if (st.creating) {
      say(`\nInterrupted: cluster "${st.name ?? '?'}" may be partly set up ${st.localCommand !== undefined ? 'on this machine' : 'on the hosts'}.`)
      say(`Hint: ${this.resumeHint(st)}`)
      process.exit(130)
    }
    this.cleanUp(st)
    say('\nError: setup cancelled [TESS_E_USAGE]')
    say(`Hint: ${this.nothingChanged(st)}`)
    process.exit(2)
  }

  // -------------------------------------------------------------------------------- output

  protected render(r: SetupResult): string {
    const rows = r.nodes.map((n) => [n.name, n.address, n.state, n.daemons.map((d) => `${d.name}${d.healthy ? '' : ' (DOWN)'}`).join(', ')])
    return [
      keyValue([
        ['cluster', r.name],
        ['id', r.id],
        ['endpoint', r.endpoint],
        ['nodes', r.nodes.length],
        ['RF', r.plan?.rf ?? 1],
        ...(r.dataDir !== null ? [['data dir', r.dataDir] as [string, string]] : []),
        ['pool capacity', formatBytes(r.pool.capacityBytes)],
        ['pool free', formatBytes(r.pool.freeBytes)],
      ]),
      table(['node', 'address', 'state', 'daemons'], rows),
      '',
      `Cluster "${r.name}" is running and is now the current context.`,
      'Next: tess cluster status, then tess vdisk create NAME --size 10G',
      `The same setup without questions: ${r.equivalentCommand}`,
    ].join('\n')
  }
}
