/**
 * Limits of the image layer (registry client, content store, layer unpacker, puller): named
 * constants, units last. Everything that reads from a registry or a layer is bounded by these.
 */

// image references (OCI distribution spec: repository names under 256 characters, tags up to 128)
export const referenceLengthMax = 1024
export const repositoryNameLengthMax = 255
export const tagLengthMax = 128

// registry HTTP client
export const registryConnectTimeoutMs = 10_000
/** A response that sends nothing for this long is abandoned (and retried). */
export const registryIdleTimeoutMs = 30_000
export const registryRetriesMax = 4
export const registryRetryBackoffMinMs = 200
export const registryRetryBackoffMaxMs = 5_000
/** A Retry-After longer than this is cut to it. */
export const registryRetryAfterMaxMs = 10_000
export const registryRedirectsMax = 5
/** Manifests and indexes (the distribution spec asks registries to accept at least 4 MiB). */
export const manifestSizeMaxBytes = 4 * 1024 * 1024
export const imageConfigSizeMaxBytes = 8 * 1024 * 1024
export const tokenResponseSizeMaxBytes = 1024 * 1024
export const errorBodySizeMaxBytes = 64 * 1024
/** A cached bearer token is renewed this long before the expiry the token server announced. */
export const tokenExpirySlackMs = 10_000
/** expires_in default of the token spec when the server gives none. */
export const tokenLifetimeDefaultMs = 60_000

// images
export const imageLayersMax = 256
export const indexManifestsMax = 1024
export const blobSizeMaxBytes = 64 * 1024 * 1024 * 1024
export const layerPullConcurrencyMax = 3
export const imageIndexRecordsMax = 100_000

// layer unpacking (tar)
export const tarEntriesMax = 2_000_000
export const tarPathLengthMaxBytes = 4096
export const tarPaxHeaderSizeMaxBytes = 1024 * 1024
export const tarWhiteoutsMax = 100_000
export const tarExtractTimeoutMs = 30 * 60_000
export const unpackToolTimeoutMs = 60_000
/** uncompressed bytes of one layer; reading stops (and nothing is written) past it */
export const layerUncompressedMaxBytes = 64 * 1024 * 1024 * 1024
/**
 * uncompressed / compressed size of a layer: real layers stay far below (text compresses about 4-10x,
 * sparse files of zeros more); a decompression bomb (zeros compressed ~1000x by gzip) is stopped early
 */
export const layerCompressionRatioMax = 200
/** the ratio is checked only once this much was read: tiny layers of zeros compress far better */
export const layerRatioCheckAfterBytes = 64 * 1024 * 1024
/** fsyncs of an unpacked layer's files running at once (they share the journal's commits) */
export const layerSyncConcurrency = 16
/** kept free on the layer store's file system when a layer is unpacked */
export const layerFreeSpaceMarginBytes = 256 * 1024 * 1024

// content store
export const storeReadBufferBytes = 1024 * 1024

// the image worker (a child process of the CVM that pulls and unpacks)
/**
 * nice value of the image worker: decompression, digests and tar parsing of a pull take the CPU
 * the data path leaves idle. Measured with 4k writes at QD16 and pulls back to back on 2 cores:
 * nice 10 kept 0.52x of the IOPS without pulls, nice 19 0.57x, and the pulls done in the same time
 * were the same (8-13 in 10 s): the data path waits on the disk and the network often enough for
 * pulls to progress. On an idle node a pull runs at full speed either way.
 */
export const imageWorkerNice = 19
/** pulls the worker runs at once; more wait for a turn */
export const imageWorkerPullsMax = 16
/** how long a stopping worker gets to end before it is killed */
export const imageWorkerStopMs = 5_000
