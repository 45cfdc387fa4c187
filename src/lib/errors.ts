/**
 * One error family for the whole product. Every expected failure is a TessError with a stable
 * code (TESS_E_...), a message that names the action and the value, and a hint. The code decides
 * the CLI exit code and the HTTP status of the management API.
 */

export const errorCodes = {
  TESS_E_USAGE: { exit: 2, http: 400, what: 'usage error: unknown flag, missing argument, bad value' },
  TESS_E_INVALID: { exit: 2, http: 400, what: 'a value is out of range or malformed' },
  TESS_E_BAD_REQUEST: { exit: 2, http: 400, what: 'the API request was malformed' },
  TESS_E_TOO_LARGE: { exit: 2, http: 413, what: 'the API request body is larger than the server accepts' },
  TESS_E_NOT_FOUND: { exit: 3, http: 404, what: 'the named thing does not exist' },
  TESS_E_NO_CLUSTER: { exit: 3, http: 404, what: 'no cluster context is saved or the named one does not exist' },
  TESS_E_EXISTS: { exit: 4, http: 409, what: 'the thing already exists' },
  TESS_E_CONFLICT: { exit: 4, http: 409, what: 'the request conflicts with current state (in use, shrinking, ...)' },
  TESS_E_PRECONDITION: { exit: 5, http: 412, what: 'a precondition is not met (ports in use, missing package, ...)' },
  TESS_E_CAPACITY: { exit: 5, http: 507, what: 'not enough capacity in the storage pool' },
  TESS_E_TOO_FEW_NODES: { exit: 5, http: 412, what: 'the cluster has too few nodes for the replication factor' },
  TESS_E_UNREACHABLE: { exit: 6, http: 503, what: 'a host, daemon or store could not be reached' },
  TESS_E_TIMEOUT: { exit: 6, http: 504, what: 'an operation did not finish in time' },
  TESS_E_AUTH: { exit: 7, http: 401, what: 'authentication failed or is missing' },
  TESS_E_FORBIDDEN: { exit: 7, http: 403, what: 'permission refused' },
  TESS_E_IO: { exit: 1, http: 500, what: 'an I/O error, including a checksum mismatch' },
  TESS_E_INTERNAL: { exit: 1, http: 500, what: 'an unexpected internal error (a bug: please report it)' },
} as const

export type ErrorCode = keyof typeof errorCodes

export interface ErrorBody {
  code: ErrorCode
  message: string
  hint: string
}

export class TessError extends Error {
  readonly code: ErrorCode
  readonly hint: string

  constructor(code: ErrorCode, message: string, hint = '') {
    super(message)
    this.name = 'TessError'
    this.code = code
    this.hint = hint
  }

  get exitCode(): number {
    return errorCodes[this.code].exit
  }

  get httpStatus(): number {
    return errorCodes[this.code].http
  }

  toBody(): ErrorBody {
    return { code: this.code, message: this.message, hint: this.hint }
  }

  static fromBody(body: unknown, fallbackMessage: string): TessError {
    if (body && typeof body === 'object' && 'error' in body) {
      const e = (body as { error: unknown }).error
      if (e && typeof e === 'object') {
        const { code, message, hint } = e as Record<string, unknown>
        if (typeof code === 'string' && code in errorCodes && typeof message === 'string') {
          return new TessError(code as ErrorCode, message, typeof hint === 'string' ? hint : '')
        }
      }
    }
    return new TessError('TESS_E_INTERNAL', fallbackMessage, 'the server answered with an unexpected body')
  }
}

export function isTessError(e: unknown): e is TessError {
  return e instanceof TessError
}

/** Programmer errors: crash (the supervisor restarts the daemon). */
export function assert(cond: unknown, what: string): asserts cond {
  if (!cond) throw new Error(`assertion failed: ${what}`)
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e)
}
