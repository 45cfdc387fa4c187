import fsp from 'node:fs/promises'

/** fsync a directory, so a file created, renamed or removed in it is durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}
