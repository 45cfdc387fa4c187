/**
 * Wire constants of the NBD protocol (fixed newstyle handshake, simple and structured replies), as
 * defined by doc/proto.md of the NetworkBlockDevice/nbd project. Every field is big-endian.
 * Object keys follow the spec's names without their prefix (NbdOpt.GO is NBD_OPT_GO) so a reader
 * can grep the spec for them.
 */

/** 'NBDMAGIC': first 8 bytes the server sends */
export const nbdInitMagic = 0x4e42444d41474943n
/** 'IHAVEOPT': follows nbdInitMagic in newstyle, and starts every option the client sends */
export const nbdOptionMagic = 0x49484156454f5054n
/** starts every option reply (fixed newstyle) */
export const nbdOptionReplyMagic = 0x3e889045565a9n
export const nbdRequestMagic = 0x25609513
export const nbdSimpleReplyMagic = 0x67446698
export const nbdStructuredReplyMagic = 0x668e33ef

/** handshake flags (16 bits, server → client) */
export const NbdHandshakeFlag = {
  FIXED_NEWSTYLE: 1 << 0,
  NO_ZEROES: 1 << 1,
} as const

/** client flags (32 bits, client → server); any other bit set means we must drop the connection */
export const NbdClientFlag = {
  C_FIXED_NEWSTYLE: 1 << 0,
  C_NO_ZEROES: 1 << 1,
} as const

/** transmission flags (16 bits): what the export supports */
export const NbdFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const

/** option types (client → server during the handshake) */
export const NbdOpt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const

/** bit 31 marks an error reply */
const repErr = 0x8000_0000

/** option reply types (server → client) */
export const NbdRep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: repErr + 1,
  ERR_POLICY: repErr + 2,
  ERR_INVALID: repErr + 3,
  ERR_PLATFORM: repErr + 4,
  ERR_TLS_REQD: repErr + 5,
  ERR_UNKNOWN: repErr + 6,
  ERR_SHUTDOWN: repErr + 7,
  ERR_BLOCK_SIZE_REQD: repErr + 8,
  ERR_TOO_BIG: repErr + 9,
} as const

/** information types inside NBD_REP_INFO and requested by NBD_OPT_INFO / NBD_OPT_GO */
export const NbdInfo = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const

/** request types (transmission phase) */
export const NbdCmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const

/** command flags (16 bits in every request) */
export const NbdCmdFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
} as const

/** structured reply chunk flags */
export const NbdReplyFlag = {
  DONE: 1 << 0,
} as const

/** bit 15 marks an error chunk */
const replyTypeErr = 0x8000

/** structured reply chunk types */
export const NbdReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: replyTypeErr + 1,
  ERROR_OFFSET: replyTypeErr + 2,
} as const

// Frame sizes in bytes.
/** NBDMAGIC + IHAVEOPT + handshake flags */
export const nbdServerGreetingBytes = 8 + 8 + 2
export const nbdClientFlagsBytes = 4
/** IHAVEOPT + option + data length */
export const nbdOptionHeaderBytes = 8 + 4 + 4
/** reply magic + option + reply type + data length */
export const nbdOptionReplyHeaderBytes = 8 + 4 + 4 + 4
/** export size + transmission flags, the reply to NBD_OPT_EXPORT_NAME (before any zero padding) */
export const nbdExportNameReplyBytes = 8 + 2
/** reserved zeroes after the NBD_OPT_EXPORT_NAME reply unless the client set C_NO_ZEROES */
export const nbdExportNameZeroesBytes = 124
/** magic + flags + type + handle + offset + length */
export const nbdRequestHeaderBytes = 4 + 2 + 2 + 8 + 8 + 4
/** magic + error + handle */
export const nbdSimpleReplyBytes = 4 + 4 + 8
/** magic + flags + type + handle + length */
export const nbdStructuredReplyHeaderBytes = 4 + 2 + 2 + 8 + 4
/** the offset that starts an OFFSET_DATA payload */
export const nbdOffsetDataPrefixBytes = 8
/** error + message length at the start of an ERROR payload */
export const nbdErrorPrefixBytes = 4 + 2
/** the spec's limit for strings (export names, descriptions, error messages) */
export const nbdStringMaxBytes = 4096
