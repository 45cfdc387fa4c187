import { TessError } from '../../lib/errors.js'
import { policyPatternLengthMax } from '../../lib/limits.js'
import type { PolicyInput } from '../images/puller.js'
import type { RegistryPolicyRecord } from './records.js'

/**
 * Registry pull rules. A pattern is either `@sha256:<64 hex>` (an image manifest digest, or the
 * digest of the index a tag resolved to) or `host[:port]/repository[:tag]` where `*` matches
 * within one path segment and `**` across segments. Deny rules are checked first; when any allow
 * rule exists, an image must match one of them.
 */
export const policyRulesMax = 1000

const digestPattern = /^@sha256:[a-f0-9]{64}$/

export function checkPattern(p: string): string {
  if (typeof p !== 'string' || p.length === 0 || p.length > policyPatternLengthMax) {
    throw new TessError('TESS_E_INVALID', `bad registry pattern "${String(p).slice(0, 80)}": it must be 1..${policyPatternLengthMax} characters`, 'e.g. 127.0.0.1:5000/library/*, docker.io/** or @sha256:<64 hex>')
  }
  if (p.startsWith('@')) {
    if (!digestPattern.test(p)) throw new TessError('TESS_E_INVALID', `bad digest pattern "${p}"`, 'write @sha256: and 64 lowercase hex digits')
    return p
  }
  if (!/^[A-Za-z0-9*[][A-Za-z0-9._:*/[\]-]*$/.test(p) || p.includes('//') || p.endsWith('/')) {
    throw new TessError('TESS_E_INVALID', `bad registry pattern "${p}"`, 'host[:port]/repository[:tag] with * (one path segment) and ** (any depth), e.g. 127.0.0.1:5000/test/*')
  }
  if (!p.includes('/')) throw new TessError('TESS_E_INVALID', `bad registry pattern "${p}": no repository part`, `did you mean ${p}/** (everything from that registry)?`)
  return p
}

function globToRegExp(glob: string): RegExp {
  let re = ''
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!
    if (c === '*') {
      if (glob[i + 1] === '*') {
        re += '.*'
        i++
      } else {
        re += '[^/]*'
      }
    } else {
      re += c.replace(/[.+?^${}()|[\]\\]/g, '\\$&')
    }
  }
  return new RegExp(`^${re}$`)
}

/** Does one rule match an image? */
export function patternMatches(pattern: string, img: PolicyInput): boolean {
  if (pattern.startsWith('@')) {
    const d = pattern.slice(1)
    return img.digest === d || img.indexDigest === d
  }
  const repo = `${img.registry}/${img.repository}`
  const re = globToRegExp(pattern)
  // A pattern with a tag is matched against repo:tag; without one, against the repository.
  const tagged = /:[^/]*$/.test(pattern.slice(pattern.indexOf('/')))
  if (tagged) return img.tag !== undefined && re.test(`${repo}:${img.tag}`)
  return re.test(repo)
}

/** The rule that refuses an image, or undefined when the rules allow it. */
export function refusingRule(policy: RegistryPolicyRecord, img: PolicyInput): string | undefined {
  const deny = policy.deny.find((p) => patternMatches(p, img))
  if (deny !== undefined) return `deny ${deny}`
  if (policy.allow.length > 0 && !policy.allow.some((p) => patternMatches(p, img))) {
    return `allow list (${policy.allow.length} rule${policy.allow.length === 1 ? '' : 's'}, none matches ${img.registry}/${img.repository})`
  }
  return undefined
}
