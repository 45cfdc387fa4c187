/**
 * The default seccomp filter of every container (OCI `linux.seccomp`, applied by runc or crun).
 *
 * Like Docker's default profile it is a list of allowed syscalls; everything else fails with EPERM
 * (and a syscall newer than the runtime's libseccomp knows fails with ENOSYS, so programs fall back
 * as on an older kernel: runc does that for numbers above the highest it knows). The list holds
 * what programs use to compute, do file and network I/O, wait, signal and manage their own
 * processes and memory. Left out, as Docker leaves them out for a container without extra
 * capabilities: syscalls that manage the kernel, the clock, keys, modules, swap, mounts and
 * namespaces, that inspect or change other processes (ptrace, process_vm_*), NUMA policy, and the
 * kernel's BPF, perf, userfaultfd and io_uring interfaces (`blockedSyscalls` names the ones
 * tests check). `clone` is allowed only without namespace flags; `clone3`, whose flags live in
 * memory a filter cannot read, fails with ENOSYS so that the C library falls back to `clone`;
 * `personality` only with the values Docker allows. A runtime skips names its libseccomp does
 * not know on an architecture.
 */

/** OCI runtime spec `linux.seccomp` (the subset we write) */
export interface OciSeccomp {
  defaultAction: 'SCMP_ACT_ALLOW' | 'SCMP_ACT_ERRNO'
  defaultErrnoRet?: number
  architectures: string[]
  syscalls: Array<{
    names: string[]
    action: 'SCMP_ACT_ERRNO' | 'SCMP_ACT_ALLOW'
    errnoRet?: number
    args?: Array<{ index: number, value: number, valueTwo: number, op: 'SCMP_CMP_MASKED_EQ' | 'SCMP_CMP_EQ' }>
  }>
}

const EPERM = 1
const ENOSYS = 38

/** allowed whatever their arguments (names of every architecture; a runtime skips the ones it does not know) */
export const allowedSyscalls: readonly string[] = [
  // file I/O
  'read', 'write', 'readv', 'writev', 'pread64', 'pwrite64', 'preadv', 'pwritev', 'preadv2', 'pwritev2',
  'open', 'openat', 'openat2', 'creat', 'close', 'close_range', 'lseek', '_llseek', 'dup', 'dup2', 'dup3',
  'fcntl', 'fcntl64', 'flock', 'fsync', 'fdatasync', 'sync', 'syncfs', 'sync_file_range', 'sync_file_range2', 'arm_sync_file_range',
  'truncate', 'truncate64', 'ftruncate', 'ftruncate64', 'fallocate', 'fadvise64', 'fadvise64_64', 'arm_fadvise64_64', 'readahead',
  'sendfile', 'sendfile64', 'splice', 'tee', 'vmsplice', 'copy_file_range', 'ioctl', 'cachestat',
  // names, metadata, directories
  'stat', 'stat64', 'lstat', 'lstat64', 'fstat', 'fstat64', 'newfstatat', 'fstatat64', 'statx', 'oldstat', 'oldlstat', 'oldfstat',
  'statfs', 'statfs64', 'fstatfs', 'fstatfs64', 'access', 'faccessat', 'faccessat2', 'readlink', 'readlinkat',
  'getdents', 'getdents64', 'getcwd', 'chdir', 'fchdir', 'chroot', 'mkdir', 'mkdirat', 'rmdir', 'rename', 'renameat', 'renameat2',
  'link', 'linkat', 'unlink', 'unlinkat', 'symlink', 'symlinkat', 'mknod', 'mknodat',
  'chmod', 'fchmod', 'fchmodat', 'fchmodat2', 'chown', 'chown32', 'fchown', 'fchown32', 'fchownat', 'lchown', 'lchown32', 'umask',
  'utime', 'utimes', 'utimensat', 'utimensat_time64', 'futimesat',
  'getxattr', 'lgetxattr', 'fgetxattr', 'getxattrat', 'setxattr', 'lsetxattr', 'fsetxattr', 'setxattrat',
  'listxattr', 'llistxattr', 'flistxattr', 'listxattrat', 'removexattr', 'lremovexattr', 'fremovexattr', 'removexattrat',
  'inotify_init', 'inotify_init1', 'inotify_add_watch', 'inotify_rm_watch',
  // memory
  'brk', 'mmap', 'mmap2', 'munmap', 'mremap', 'mprotect', 'pkey_mprotect', 'pkey_alloc', 'pkey_free', 'madvise', 'mincore', 'msync',
  'mlock', 'mlock2', 'munlock', 'mlockall', 'munlockall', 'memfd_create', 'membarrier', 'remap_file_pages', 'map_shadow_stack', 'mseal',
  // processes, threads and their ids
  'fork', 'vfork', 'execve', 'execveat', 'exit', 'exit_group', 'wait4', 'waitid', 'waitpid', 'kill', 'tkill', 'tgkill',
  'getpid', 'getppid', 'gettid', 'getpgid', 'setpgid', 'getpgrp', 'getsid', 'setsid',
  'getuid', 'getuid32', 'geteuid', 'geteuid32', 'getgid', 'getgid32', 'getegid', 'getegid32',
  'setuid', 'setuid32', 'setgid', 'setgid32', 'setreuid', 'setreuid32', 'setregid', 'setregid32',
  'setresuid', 'setresuid32', 'setresgid', 'setresgid32', 'getresuid', 'getresuid32', 'getresgid', 'getresgid32',
  'setfsuid', 'setfsuid32', 'setfsgid', 'setfsgid32', 'getgroups', 'getgroups32', 'setgroups', 'setgroups32',
  'capget', 'capset', 'prctl', 'arch_prctl', 'seccomp', 'set_tid_address', 'set_robust_list', 'get_robust_list',
  'futex', 'futex_time64', 'futex_waitv', 'futex_wait', 'futex_wake', 'futex_requeue', 'rseq', 'restart_syscall',
  'get_thread_area', 'set_thread_area', 'set_tls', 'cacheflush', 'breakpoint', 'riscv_flush_icache', 'getcpu',
  'sched_yield', 'sched_getaffinity', 'sched_setaffinity', 'sched_getparam', 'sched_setparam', 'sched_getscheduler', 'sched_setscheduler',
  'sched_get_priority_max', 'sched_get_priority_min', 'sched_rr_get_interval', 'sched_rr_get_interval_time64', 'sched_getattr', 'sched_setattr',
  'getpriority', 'setpriority', 'ioprio_get', 'ioprio_set', 'getrlimit', 'setrlimit', 'prlimit64', 'ugetrlimit', 'getrusage', 'times',
  'uname', 'olduname', 'sysinfo', 'getrandom', 'pidfd_open', 'pidfd_send_signal', 'process_mrelease',
  'landlock_create_ruleset', 'landlock_add_rule', 'landlock_restrict_self',
  // signals and time
  'rt_sigaction', 'rt_sigprocmask', 'rt_sigreturn', 'rt_sigsuspend', 'rt_sigpending', 'rt_sigtimedwait', 'rt_sigtimedwait_time64',
  'rt_sigqueueinfo', 'rt_tgsigqueueinfo', 'sigaction', 'sigaltstack', 'signal', 'signalfd', 'signalfd4', 'sigpending', 'sigprocmask',
  'sigreturn', 'sigsuspend', 'pause', 'alarm',
  'time', 'gettimeofday', 'clock_gettime', 'clock_gettime64', 'clock_getres', 'clock_getres_time64', 'clock_nanosleep', 'clock_nanosleep_time64',
  'nanosleep', 'getitimer', 'setitimer', 'timer_create', 'timer_delete', 'timer_getoverrun', 'timer_gettime', 'timer_gettime64',
  'timer_settime', 'timer_settime64', 'timerfd_create', 'timerfd_gettime', 'timerfd_gettime64', 'timerfd_settime', 'timerfd_settime64',
  // waiting for many things
  'select', '_newselect', 'pselect6', 'pselect6_time64', 'poll', 'ppoll', 'ppoll_time64',
  'epoll_create', 'epoll_create1', 'epoll_ctl', 'epoll_ctl_old', 'epoll_wait', 'epoll_wait_old', 'epoll_pwait', 'epoll_pwait2', 'eventfd', 'eventfd2',
  // pipes and System V / POSIX IPC (in the container's own IPC namespace)
  'pipe', 'pipe2', 'shmget', 'shmat', 'shmdt', 'shmctl', 'semget', 'semop', 'semtimedop', 'semtimedop_time64', 'semctl',
  'msgget', 'msgsnd', 'msgrcv', 'msgctl', 'ipc', 'mq_open', 'mq_unlink', 'mq_timedsend', 'mq_timedsend_time64',
  'mq_timedreceive', 'mq_timedreceive_time64', 'mq_notify', 'mq_getsetattr',
  // sockets
  'socket', 'socketpair', 'bind', 'connect', 'listen', 'accept', 'accept4', 'getsockname', 'getpeername', 'sendto', 'recvfrom',
  'sendmsg', 'recvmsg', 'sendmmsg', 'recvmmsg', 'recvmmsg_time64', 'shutdown', 'setsockopt', 'getsockopt', 'socketcall', 'send', 'recv',
  // Linux AIO (databases, fio's libaio)
  'io_setup', 'io_destroy', 'io_submit', 'io_cancel', 'io_getevents', 'io_pgetevents', 'io_pgetevents_time64',
]

/** `personality` values a container may set (as Docker: Linux, with or without the 32-bit and no-randomisation flags, and the query) */
export const personalityValues: readonly number[] = [0x0, 0x8, 0x20000, 0x20008, 0xffffffff]

/** never allowed, whatever their arguments (tests check these; the filter allows only `allowedSyscalls`) */
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
  'io_uring_setup', 'io_uring_enter', 'io_uring_register', 'fanotify_init', 'sethostname', 'setdomainname', 'syslog', 'vhangup',
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
  const namespaceMask = Object.values(cloneNamespaceFlags).reduce((m, f) => m | f, 0)
  return {
    defaultAction: 'SCMP_ACT_ERRNO',
    defaultErrnoRet: EPERM,
    architectures: seccompArchitectures(arch),
    syscalls: [
      { names: [...allowedSyscalls], action: 'SCMP_ACT_ALLOW' },
      // clone only when no namespace flag is set: (flags & mask) == 0
      { names: ['clone'], action: 'SCMP_ACT_ALLOW', args: [{ index: flagsArg, value: namespaceMask, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }] },
      { names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS },
      ...personalityValues.map((v) => ({ names: ['personality'], action: 'SCMP_ACT_ALLOW' as const, args: [{ index: 0, value: v, valueTwo: 0, op: 'SCMP_CMP_EQ' as const }] })),
    ],
  }
}
