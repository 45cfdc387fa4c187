/** The supervisor's state file (run/supervisor.json), read by the CVM for `tess cluster status`. */
export interface DaemonState {
  name: string
  pid: number | null
  restarts: number
  startedAt: string | null
  lastExit: { code: number | null, signal: string | null, at: string } | null
}

export interface SupervisorState {
  pid: number
  startedAt: string
  daemons: DaemonState[]
}
