import { execFileSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { TessError, errorMessage } from '../lib/errors.js'

/**
 * The cluster CA and node certificates, made with the openssl binary (EC P-256). Keys and the
 * API token are written mode 0600 in a directory of mode 0700.
 */

function openssl(args: string[], cwd: string): void {
  try {
    execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] })
  } catch (e) {
    throw new TessError('TESS_E_PRECONDITION', `cannot make cluster certificates: openssl ${args[0]} failed: ${errorMessage(e)}`, 'install openssl (apt-get install openssl)')
  }
}

export interface CaFiles { caCert: string, caKey: string }

export function createCa(dir: string, clusterName: string, commonName = `tessera-ca-${clusterName}`): CaFiles {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  const caKey = path.join(dir, 'ca.key')
  const caCert = path.join(dir, 'ca.crt')
  openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', caKey], dir)
  fs.chmodSync(caKey, 0o600)
  openssl(['req', '-x509', '-new', '-key', caKey, '-sha256', '-days', '3650', '-subj', `/O=tessera/CN=${commonName}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-out', caCert], dir)
  return { caCert, caKey }
}

/** how long a node certificate is valid unless asked otherwise (10 years, as the CA) */
export const nodeCertDaysDefault = 3650

/** A certificate for one node, valid as TLS server and client (API, etcd peer/client, data port). */
export function createNodeCert(dir: string, ca: CaFiles, nodeName: string, addresses: string[], days = nodeCertDaysDefault): { cert: string, key: string } {
  const key = path.join(dir, 'node.key')
  const cert = path.join(dir, 'node.crt')
  const csr = path.join(dir, 'node.csr')
  const ext = path.join(dir, 'node.ext')
  openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', key], dir)
  fs.chmodSync(key, 0o600)
  openssl(['req', '-new', '-key', key, '-subj', `/O=tessera/CN=${nodeName}`, '-out', csr], dir)
  const ips = new Set(['127.0.0.1', ...addresses.filter((a) => /^[\d.]+$/.test(a) || a.includes(':'))])
  const dns = new Set(['localhost', nodeName, os.hostname(), ...addresses.filter((a) => !/^[\d.]+$/.test(a) && !a.includes(':'))])
  const san = [...[...dns].map((d) => `DNS:${d}`), ...[...ips].map((i) => `IP:${i}`)].join(',')
  fs.writeFileSync(ext, `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=${san}\n`)
  openssl(['x509', '-req', '-in', csr, '-CA', ca.caCert, '-CAkey', ca.caKey, '-CAcreateserial', '-days', String(days), '-sha256', '-extfile', ext, '-out', cert], dir)
  fs.rmSync(csr, { force: true })
  fs.rmSync(ext, { force: true })
  fs.rmSync(path.join(dir, 'ca.srl'), { force: true })
  return { cert, key }
}

export function createToken(file: string): string {
  const token = crypto.randomBytes(32).toString('base64url')
  fs.writeFileSync(file, token + '\n', { mode: 0o600 })
  fs.chmodSync(file, 0o600)
  return token
}

/**
 * The CA of NBD users' client certificates: apart from the cluster CA, which etcd and the data
 * port trust (a user's certificate must open NBD exports and nothing else). Made on first use in
 * `dir` (the operator's copy of the cluster's secrets), mode 0700.
 */
export function nbdUsersCa(dir: string, clusterName: string): CaFiles {
  const d = path.join(dir, 'nbd-users')
  const files = { caCert: path.join(d, 'ca.crt'), caKey: path.join(d, 'ca.key') }
  if (fs.existsSync(files.caCert) && fs.existsSync(files.caKey)) return files
  return createCa(d, clusterName, `tessera-nbd-users-${clusterName}`)
}

/** A client certificate (TLS client only) for one NBD user, signed by the NBD users CA; the key is mode 0600. */
export function createUserCert(dir: string, ca: CaFiles, user: string, days: number): { cert: string, key: string } {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  const key = path.join(dir, 'client-key.pem')
  const cert = path.join(dir, 'client-cert.pem')
  const csr = path.join(dir, 'client.csr')
  const ext = path.join(dir, 'client.ext')
  const serial = path.join(dir, 'client.srl')
  try {
    openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', key], dir)
    fs.chmodSync(key, 0o600)
    openssl(['req', '-new', '-key', key, '-subj', `/O=tessera-nbd-users/CN=${user}`, '-out', csr], dir)
    fs.writeFileSync(ext, 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n')
    openssl(['x509', '-req', '-in', csr, '-CA', ca.caCert, '-CAkey', ca.caKey, '-CAserial', serial, '-CAcreateserial', '-days', String(days), '-sha256', '-extfile', ext, '-out', cert], dir)
  } finally {
    for (const f of [csr, ext, serial]) fs.rmSync(f, { force: true })
  }
  return { cert, key }
}

