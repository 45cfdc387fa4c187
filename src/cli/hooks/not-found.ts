import { loadHelpClass, type Hook } from '@oclif/core'
import { TessError } from '../../lib/errors.js'

/** the most edits a suggestion may be away from what was typed (per command word) */
const suggestionEditsMax = 2

/** Edit distance (insertions, deletions, substitutions) between two strings. */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const row = [i]
    for (let j = 1; j <= b.length; j++) row.push(Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1)))
    prev = row
  }
  return prev[b.length]!
}

/**
 * The command closest to what was typed (both as space-separated words), or undefined when none
 * is near: compared over as many words as were typed, so `vdsk list` finds `vdisk list` and `vdsk`
 * alone finds the topic `vdisk`.
 */
export function suggestCommand(typed: string, commands: readonly string[]): string | undefined {
  const words = typed.split(' ').filter((w) => w !== '')
  if (words.length === 0) return undefined
  let best: { cmd: string, d: number } | undefined
  for (const cmd of commands) {
    const head = cmd.split(' ').slice(0, words.length).join(' ')
    const d = editDistance(words.join(' '), head)
    if (d <= suggestionEditsMax * words.length && d < Math.max(...words.map((w) => w.length)) && (best === undefined || d < best.d)) best = { cmd: head, d }
  }
  return best?.cmd
}

/**
 * A command that does not exist: `tess help TOPIC [VERB]` shows that help; anything else is a
 * usage error (exit 2) with the closest command as a hint, as JSON on stdout under --json.
 */
const hook: Hook<'command_not_found'> = async function (opts) {
  const words = opts.id.split(':')
  if (words[0] === 'help') {
    const Help = await loadHelpClass(opts.config)
    await new Help(opts.config).showHelp([...words.slice(1), ...opts.argv ?? []].filter((a) => a !== '--json'))
    return
  }
  const typed = words.join(' ')
  const ids = [...new Set([...opts.config.commandIDs, ...opts.config.topics.map((t) => t.name)])].map((id) => id.replace(/:/g, ' '))
  const near = suggestCommand(typed, ids)
  const err = new TessError('TESS_E_USAGE', `unknown command "tess ${typed}"`, near !== undefined ? `did you mean \`tess ${near}\`? See \`tess --help\` for every command` : 'see `tess --help` for every command')
  const dashdash = process.argv.indexOf('--')
  if ((dashdash < 0 ? process.argv : process.argv.slice(0, dashdash)).includes('--json')) {
    process.stdout.write(JSON.stringify({ error: err.toBody() }, null, 2) + '\n')
  } else {
    process.stderr.write(`Error: ${err.message} [${err.code}]\nHint: ${err.hint}\n`)
  }
  // the hook's success ends the run (oclif returns its result as the command's): only the exit code is left to set
  process.exitCode = err.exitCode
}

export default hook
