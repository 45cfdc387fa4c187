import fsp from 'node:fs/promises'

/** fsync a file or directory by its path (opened read-only). */
export async function fsyncPath(p: string): Promise<void> {
  const fh = await fsp.open(p, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/** fsync a directory, so a file created, renamed or removed in it is durable. */
export async function fsyncDir(dir: string): Promise<void> {
  await fsyncPath(dir)
}

/**
 * fsync every regular file and directory under `root` (and root itself), `concurrency` at a time:
 * what syncfs(2) would make durable of this tree, without writing back the rest of the file system
 * (on a node, the CVM's extent groups share it). Symlinks, devices and FIFOs live in their
 * directory's and inode's metadata, which the file system's journal commit of any fsync covers;
 * they are not opened (a FIFO would block, a device 0/0 refuses). Concurrent fsyncs share the
 * journal's commits.
 */
export async function fsyncTree(root: string, concurrency = 16): Promise<number> {
  const todo: string[] = [root]
  const dirs: string[] = [root]
  for (let i = 0; i < dirs.length; i++) {
    for (const e of await fsp.readdir(dirs[i]!, { withFileTypes: true })) {
      const p = `${dirs[i]!}/${e.name}`
      if (e.isDirectory()) {
        dirs.push(p)
        todo.push(p)
      } else if (e.isFile()) {
        todo.push(p)
      }
    }
  }
  let next = 0
  const worker = async () => {
    while (next < todo.length) {
      await fsyncPath(todo[next++]!)
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, todo.length)) }, worker))
  return todo.length
}
