/**
 * What the NBD server serves: a block device per export. The CVM's vDisk engine implements it;
 * unit tests use a memory-backed one. Offsets and lengths are bytes and always within
 * [0, sizeBytes) (the server checks before calling).
 */

/**
 * errno values the NBD protocol carries in replies. What a vDisk answers with:
 * - EIO: the data could not be read or written as asked: a checksum mismatch with no good copy,
 *   replicas that failed, a map entry etcd did not take, or too few healthy nodes to place a new
 *   extent group (or a replacement replica) at the vDisk's RF after waiting `placementWaitMs`
 *   (the CVM log names the nodes up and why the others cannot be used);
 * - ENOSPC: a write past the end of the export, or no disk with room for a new extent group
 *   (never for too few nodes: a filesystem would take it for "disk full");
 * - ESHUTDOWN: the vDisk is no longer served here (deleted, handed over, the CVM stopping);
 * - EPERM: another CVM owns the vDisk; EINVAL: a malformed request.
 */
export const nbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const

export class DeviceError extends Error {
  constructor(readonly errno: number, message: string) {
    super(message)
    this.name = 'DeviceError'
  }
}

export interface BlockDevice {
  readonly name: string
  /** current size; may grow between connections (resize), never during one */
  readonly sizeBytes: number
  /** advertised with NBD_FLAG_READ_ONLY; writes, trims and zeroings get EPERM without reaching the device */
  readonly readOnly?: boolean
  read(offset: number, length: number): Promise<Buffer>
  /**
   * Optional: read into a buffer the server lends (out.length bytes at offset), so large replies
   * reuse pooled memory. If the promise rejects, the server does not reuse `out`.
   */
  readInto?(offset: number, out: Buffer): Promise<void>
  /**
   * Optional: readInto() on the calling thread when that needs no waiting (data in memory or the
   * page cache). True when `out` holds the range; false when the server must call read or
   * readInto instead (which then report any error). The server's fast path for small reads.
   */
  readIfCached?(offset: number, out: Buffer): boolean
  /**
   * With fua, returns only when the bytes (and any map change they made) are durable. `data` is
   * lent for the call: once the promise resolves the server reuses it, so copy what you keep.
   */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>
  /**
   * Optional: write() without FUA on the calling thread when that needs no waiting. True when
   * done; false (nothing written) when the server must call write(). The fast path for small writes.
   */
  writeIfQuick?(offset: number, data: Buffer): boolean
  /** returns when every write completed before the call is durable */
  flush(): Promise<void>
  /** the range may read back as zeros or as its old contents afterwards (we give zeros) */
  trim(offset: number, length: number): Promise<void>
  /** the range reads as zeros; with noHole the space stays allocated */
  writeZeroes(offset: number, length: number, noHole: boolean, fua: boolean): Promise<void>
  /** release this connection's hold on the device */
  close(): Promise<void>
}

export interface ExportInfo {
  name: string
  description: string
}

export interface ExportProvider {
  list(): Promise<ExportInfo[]>
  /** open an export by name; throws DeviceError or an Error whose message is shown to the client when unknown */
  open(name: string): Promise<BlockDevice | undefined>
}
