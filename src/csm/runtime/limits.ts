/**
 * Limits of the container runtime layer (cgroups, bundles, the OCI runtime driver, the container
 * manager): named constants, units last.
 */

// bounds of a container spec and of a CSM's quota: one set, in lib/limits.ts, for every boundary
export {
  containerArgBytesMax, containerArgsMax, containerEnvMax, containerStopTimeoutMsMax, cpusMin, logTailLinesMax, memoryLimitMinBytes, pidsMaxLimit,
} from '../../lib/limits.js'

// restart policies (ContainerManager.superviseRestarts)
/** a container to restart waits this long after its first exit, doubling at each exit in a row, up to the max */
export const containerRestartBackoffMinMs = 100
export const containerRestartBackoffMaxMs = 30_000
/** a container that ran this long before it exited restarts after the shortest wait again */
export const containerRestartResetAfterMs = 10_000
/** how often a CSM looks for containers to restart */
export const containerRestartCheckMs = 500

// cgroups
/** CFS period used for every quota we write (the kernel default) */
export const cpuPeriodUs = 100_000
/** the kernel refuses a CFS quota under 1 ms */
export const cpuQuotaMinUs = 1_000
/** a cgroup file we parse is never larger than this */
export const cgroupFileSizeMaxBytes = 1024 * 1024
/** rmdir of a cgroup whose last process just exited can fail with EBUSY for a moment */
export const cgroupRmdirRetriesMax = 40
export const cgroupRmdirRetryMs = 25
/** depth of cgroups below a CSM's that removal walks */
export const cgroupTreeDepthMax = 8

// containers
export const containerPidsMaxDefault = 4096
/** RLIMIT_NOFILE asked for by default, clamped to the host's hard limit */
export const containerNofileDefault = 1_048_576
export const containersPerCsmMax = 1000
/** a container that is not running after this long is a failed start */
export const containerStartTimeoutMs = 30_000
export const containerStopTimeoutMsDefault = 10_000
/** after SIGKILL, a container that is still not gone after this long is an error */
export const containerKillWaitMs = 10_000
/** how often the manager looks at a starting or stopping container */
export const containerPollMs = 20
/** the shim of a container that stopped writes its exit file within this long */
export const shimExitGraceMs = 2_000

// bundles and rootfs
/**
 * The kernel copies mount options into one page: overlay options (lowerdir, upperdir, workdir)
 * must stay under it, NUL included.
 */
export const mountOptionsMaxBytes = 4095
/** symlinks followed while resolving a path inside a rootfs (the kernel's MAXSYMLINKS) */
export const symlinksFollowMax = 40
export const passwdFileSizeMaxBytes = 1024 * 1024
export const hostnameLengthMax = 63

// OCI runtime CLI
export const runtimeCommandTimeoutMs = 15_000
export const runtimeOutputMaxBytes = 4 * 1024 * 1024
export const stateFileSizeMaxBytes = 1024 * 1024

// logs
/** `logs --tail` reads at most this much from the end of a log */
export const logTailBytesMax = 16 * 1024 * 1024
export const logReadChunkBytes = 64 * 1024
/** most bytes of output one polled log read returns */
export const logChunkBytesMax = 1024 * 1024
/**
 * A container's log keeps about its last this many bytes (tess-logger punches out the head once
 * more lies past what it keeps: between half of it and all of it is kept), and its index of times
 * the records of those bytes. Runs of a container share the log, so this bounds it over restarts.
 */
export const containerLogMaxBytes = 64 * 1024 * 1024
export const logFollowPollMs = 200
