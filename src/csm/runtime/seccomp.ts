/**
 * The default seccomp filter of every container (OCI `linux.seccomp`, applied by runc or crun).
 *
 * What it blocks is what Docker's default profile blocks by name (its documentation lists them):
 * syscalls that manage the kernel, the clock, keys, modules, swap, mounts and namespaces, that
 * inspect or change other processes (ptrace, process_vm_*), and the kernel's BPF, perf and
 * userfaultfd interfaces. Blocked calls fail with EPERM, as under Docker. `clone` is blocked only
 * when it asks for a new namespace (one rule per namespace flag: libseccomp ORs the rules of a
 * syscall), and `clone3`, whose flags live in memory a filter cannot read, fails with ENOSYS so
 * that the C library falls back to `clone`.
 *
 * The difference from Docker: its profile allows a list of known syscalls and refuses the rest,
 * this one refuses a list and allows the rest, so a syscall newer than this list is allowed until
 * it is added here. A runtime skips names its libseccomp does not know on an architecture.
 */

/** OCI runtime spec `linux.seccomp` (the subset we write) */
export interface OciSeccomp {
  defaultAction: 'SCMP_ACT_ALLOW' | 'SCMP_ACT_ERRNO'
  architectures: string[]
  syscalls: Array<{
    names: string[]
    action: 'SCMP_ACT_ERRNO' | 'SCMP_ACT_ALLOW'
    errnoRet?: number
    args?: Array<{ index: number, value: number, valueTwo: number, op: 'SCMP_CMP_MASKED_EQ' }>
  }>
}

const EPERM = 1
const ENOSYS = 38

/** blocked by name, whatever their arguments */
export const blockedSyscalls: readonly string[] = [
  // accounting, clock, reboot, swap, quotas
  'acct', 'clock_adjtime', 'clock_adjtime64', 'clock_settime', 'clock_settime64', 'settimeofday', 'stime', 'adjtimex',
  'reboot', 'swapon', 'swapoff', 'quotactl', 'quotactl_fd',
  // kernel modules and kexec
  'create_module', 'delete_module', 'init_module', 'finit_module', 'get_kernel_syms', 'query_module', 'kexec_load', 'kexec_file_load',
  // the kernel keyring
  'add_key', 'keyctl', 'request_key',
  // mounts, namespaces, root
  'mount', 'umount', 'umount2', 'pivot_root', 'setns', 'unshare', 'open_tree', 'move_mount', 'fsopen', 'fsconfig', 'fsmount', 'fspick', 'mount_setattr',
  // other processes and the kernel's memory
  'ptrace', 'process_vm_readv', 'process_vm_writev', 'kcmp', 'lookup_dcookie', 'name_to_handle_at', 'open_by_handle_at',
  'get_mempolicy', 'set_mempolicy', 'mbind', 'move_pages',
  // kernel interfaces that have been a door for exploits
  'bpf', 'perf_event_open', 'userfaultfd', 'iopl', 'ioperm', 'vm86', 'vm86old', 'uselib', 'ustat', 'sysfs', '_sysctl', 'nfsservctl',
]

/** namespace flags of clone(2): a container may not make new namespaces */
export const cloneNamespaceFlags: Readonly<Record<string, number>> = {
  CLONE_NEWNS: 0x00020000,
  CLONE_NEWCGROUP: 0x02000000,
  CLONE_NEWUTS: 0x04000000,
  CLONE_NEWIPC: 0x08000000,
  CLONE_NEWUSER: 0x10000000,
  CLONE_NEWPID: 0x20000000,
  CLONE_NEWNET: 0x40000000,
}

/** libseccomp architecture names for a Node.js `process.arch` (the native one first, then its compat ones) */
export function seccompArchitectures(arch: string): string[] {
  switch (arch) {
    case 'x64': return ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32']
    case 'arm64': return ['SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM']
    case 'ia32': return ['SCMP_ARCH_X86']
    case 'arm': return ['SCMP_ARCH_ARM']
    case 'ppc64': return ['SCMP_ARCH_PPC64LE']
    case 's390x': return ['SCMP_ARCH_S390X', 'SCMP_ARCH_S390']
    case 'riscv64': return ['SCMP_ARCH_RISCV64']
    default: return []
  }
}

/** The filter for containers on this machine's architecture. */
export function defaultSeccompProfile(arch: string = process.arch): OciSeccomp {
  // clone's flags are its first argument on the architectures above except s390x (second there)
  const flagsArg = arch === 's390x' ? 1 : 0
  return {
    defaultAction: 'SCMP_ACT_ALLOW',
    architectures: seccompArchitectures(arch),
    syscalls: [
      { names: [...blockedSyscalls], action: 'SCMP_ACT_ERRNO', errnoRet: EPERM },
      ...Object.values(cloneNamespaceFlags).map((flag) => ({
        names: ['clone'],
        action: 'SCMP_ACT_ERRNO' as const,
        errnoRet: EPERM,
        args: [{ index: flagsArg, value: flag, valueTwo: flag, op: 'SCMP_CMP_MASKED_EQ' as const }],
      })),
      { names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS },
    ],
  }
}
