/** The API's answers about users and the audit log (the CVM's src/cvm/api/users.ts makes them). */
export type UserRole = 'viewer' | 'operator' | 'admin'

export interface UserInfo {
  name: string
  role: UserRole
  createdAt: string
  rotatedAt: string | null
}

export interface UserWithTokenInfo extends UserInfo {
  /** the user's bearer token: shown once */
  token: string
}

export interface AuditInfo {
  at: string
  who: string
  kind: 'user' | 'node'
  role: string
  method: string
  path: string
  status: number
  code?: string
}
