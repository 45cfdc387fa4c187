import type { ImagePullProgress } from '../lib/csm-types.js'
import type { ApiClient } from '../lib/apiclient.js'
import { spinnerAllowed } from './output.js'
import { pullProgressText } from './render-csm.js'

/** how often a spinner asks how far a pull is */
const pullProgressPollMs = 500

/**
 * While `work` (a request that pulls `ref` on the nodes: a pull, or a container run that may pull)
 * goes on, show how far the pull is on the spinner, as "HEAD: 2/5 layers, 12.1 MiB of 40.2 MiB on
 * node1", read from the CVM every pullProgressPollMs. Only where a spinner is drawn: scripts and
 * --json never ask. Returns `work`.
 */
export function withPullProgress<T>(enabled: boolean, client: ApiClient, ref: string, head: string, show: (text: string) => void, work: Promise<T>): Promise<T> {
  if (!spinnerAllowed(enabled)) return work
  void follow(work, () => client.get<ImagePullProgress[]>(`/v1/images/pulls?ref=${encodeURIComponent(ref)}`), (views) => {
    const detail = pullProgressText(views)
    show(detail !== undefined ? `${head}: ${prefixOf(head)}${detail}` : head)
  })
  // done: the spinner's last line is the work's, not a count from before the end (a failure keeps where it was)
  return work.then((r) => {
    show(head)
    return r
  })
}

/** a container run says what its pull is; a pull says it already */
const prefixOf = (head: string): string => (head.startsWith('Pulling') ? '' : 'pulling, ')

async function follow(work: Promise<unknown>, poll: () => Promise<ImagePullProgress[]>, show: (views: ImagePullProgress[]) => void): Promise<void> {
  let ended = false
  const done = work.then(() => { ended = true }, () => { ended = true })
  while (!ended) {
    await Promise.race([done, new Promise((r) => setTimeout(r, pullProgressPollMs).unref())])
    if (ended) return
    try {
      const views = await poll()
      if (!ended) show(views)
    } catch {
      // progress is a view: a CVM of an older release, or a poll that failed, leaves the spinner's text as it was
    }
  }
}
