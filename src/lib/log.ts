/** Daemon logging: one line per event on stderr (the supervisor sends it to logs/<daemon>.log). */
export interface Logger {
  info(msg: string): void
  warn(msg: string): void
  error(msg: string): void
}

export function makeLogger(component: string): Logger {
  const line = (level: string, msg: string) => process.stderr.write(`${new Date().toISOString()} ${level} ${component}[${process.pid}] ${msg}\n`)
  return {
    info: (m) => line('INFO', m),
    warn: (m) => line('WARN', m),
    error: (m) => line('ERROR', m),
  }
}
