/*
 * CRC-32C (Castagnoli, reflected polynomial 0x82f63b78; init ~0, final xor ~0) for the data path,
 * as a Node-API addon (tess_crc32c.node). Loaded by src/lib/crc32c.ts, which keeps a pure-JS
 * fallback with the same results.
 *
 * Two engines, chosen once at load by a CPU check:
 *   hardware  x86-64 SSE4.2 crc32 instruction (_mm_crc32_u64, 8 bytes a step). The block functions
 *             run 4 blocks at once as 4 independent chains, interleaved word by word, so the
 *             instruction's latency (3 cycles, 1 issued per cycle) is hidden.
 *   software  slice-by-8 tables, for CPUs without SSE4.2 (and for other architectures).
 * Both are exported: the top-level functions use the chosen engine; `software` holds the table
 * engine's functions so tests can check it on any machine. `hardware` tells which engine is used.
 *
 * Exports (arguments are validated here too; a bad call throws, it never reads or writes out of bounds):
 *   crc32c(buf: Uint8Array): number
 *   blocks(data, blockBytes, out, outOffset, strideBytes): undefined
 *   verify(data, blockBytes, expected, expectedOffset, strideBytes): number   (first mismatch or -1)
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TESS_CRC32C_X86 1
#include <nmmintrin.h>
#endif

/* ---- software engine: slice-by-8 ---- */

static uint32_t table[8][256];

static void table_init(void) {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    table[0][n] = c;
  }
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = table[0][n];
    for (int t = 1; t < 8; t++) {
      c = table[0][c & 0xff] ^ (c >> 8);
      table[t][n] = c;
    }
  }
}

static inline uint32_t load32le(const uint8_t* p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void store32le(uint8_t* p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

/* crc is the running register (already inverted); returns the register. */
static uint32_t sw_update(uint32_t crc, const uint8_t* p, size_t n) {
  while (n >= 8) {
    uint32_t lo = load32le(p) ^ crc;
    uint32_t hi = load32le(p + 4);
    crc = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^ table[5][(lo >> 16) & 0xff] ^ table[4][lo >> 24] ^
          table[3][hi & 0xff] ^ table[2][(hi >> 8) & 0xff] ^ table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return crc;
}

static uint32_t sw_crc(const uint8_t* p, size_t n) {
  return ~sw_update(0xffffffffu, p, n);
}

/* crcs[i] = crc32c of block i, for `count` blocks of blockBytes from data */
static void sw_blocks(const uint8_t* data, size_t blockBytes, size_t count, uint32_t* crcs) {
  for (size_t i = 0; i < count; i++) crcs[i] = sw_crc(data + i * blockBytes, blockBytes);
}

/* ---- hardware engine: SSE4.2 ---- */

#ifdef TESS_CRC32C_X86
__attribute__((target("sse4.2"))) static uint32_t hw_update(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    c = _mm_crc32_u64(c, w);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = (uint32_t)c;
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

__attribute__((target("sse4.2"))) static uint32_t hw_crc(const uint8_t* p, size_t n) {
  return ~hw_update(0xffffffffu, p, n);
}

/* 4 blocks at once: 4 independent chains, one per block, a word of each per step. */
__attribute__((target("sse4.2"))) static void hw_crc4(const uint8_t* b0, const uint8_t* b1, const uint8_t* b2, const uint8_t* b3,
                                                      size_t n, uint32_t* out) {
  uint64_t c0 = 0xffffffffu, c1 = 0xffffffffu, c2 = 0xffffffffu, c3 = 0xffffffffu;
  size_t j = 0;
  for (; j + 8 <= n; j += 8) {
    uint64_t w0, w1, w2, w3;
    memcpy(&w0, b0 + j, 8);
    memcpy(&w1, b1 + j, 8);
    memcpy(&w2, b2 + j, 8);
    memcpy(&w3, b3 + j, 8);
    c0 = _mm_crc32_u64(c0, w0);
    c1 = _mm_crc32_u64(c1, w1);
    c2 = _mm_crc32_u64(c2, w2);
    c3 = _mm_crc32_u64(c3, w3);
  }
  size_t rest = n - j;
  out[0] = ~hw_update((uint32_t)c0, b0 + j, rest);
  out[1] = ~hw_update((uint32_t)c1, b1 + j, rest);
  out[2] = ~hw_update((uint32_t)c2, b2 + j, rest);
  out[3] = ~hw_update((uint32_t)c3, b3 + j, rest);
}

static void hw_blocks(const uint8_t* data, size_t blockBytes, size_t count, uint32_t* crcs) {
  size_t i = 0;
  for (; i + 4 <= count; i += 4) {
    const uint8_t* b = data + i * blockBytes;
    hw_crc4(b, b + blockBytes, b + 2 * blockBytes, b + 3 * blockBytes, blockBytes, crcs + i);
  }
  for (; i < count; i++) crcs[i] = hw_crc(data + i * blockBytes, blockBytes);
}

static int cpu_has_sse42(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
}
#endif

/* ---- engines ---- */

typedef struct {
  uint32_t (*crc)(const uint8_t* p, size_t n);
  /* up to 4 blocks: hardware chains them; blocks need not be adjacent */
  void (*crc4)(const uint8_t* const* b, size_t k, size_t n, uint32_t* out);
  void (*blocks)(const uint8_t* data, size_t blockBytes, size_t count, uint32_t* crcs);
} engine_t;

static void sw_crcN(const uint8_t* const* b, size_t k, size_t n, uint32_t* out) {
  for (size_t i = 0; i < k; i++) out[i] = sw_crc(b[i], n);
}

#ifdef TESS_CRC32C_X86
static void hw_crcN(const uint8_t* const* b, size_t k, size_t n, uint32_t* out) {
  if (k == 4) {
    hw_crc4(b[0], b[1], b[2], b[3], n, out);
    return;
  }
  for (size_t i = 0; i < k; i++) out[i] = hw_crc(b[i], n);
}
#endif

static const engine_t sw_engine = {sw_crc, sw_crcN, sw_blocks};
#ifdef TESS_CRC32C_X86
static const engine_t hw_engine = {hw_crc, hw_crcN, hw_blocks};
#endif

/* ---- Node-API glue ---- */

#define CHECK(env, call)                                   \
  do {                                                     \
    if ((call) != napi_ok) {                               \
      napi_throw_error((env), NULL, "crc32c: " #call " failed"); \
      return NULL;                                         \
    }                                                      \
  } while (0)

/* A Uint8Array (or Buffer) argument: pointer to its first byte (byteOffset applied) and length. */
static int get_bytes(napi_env env, napi_value v, const char* name, uint8_t** data, size_t* len) {
  bool is_ta = false;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta) {
    char msg[96];
    snprintf(msg, sizeof msg, "crc32c: %s must be a Uint8Array", name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return 0;
  }
  napi_typedarray_type type;
  void* p = NULL;
  if (napi_get_typedarray_info(env, v, &type, len, &p, NULL, NULL) != napi_ok ||
      type != napi_uint8_array) {
    char msg[96];
    snprintf(msg, sizeof msg, "crc32c: %s must be a Uint8Array", name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return 0;
  }
  *data = (uint8_t*)p;
  return 1;
}

/* A non-negative safe integer argument (numbers only). */
static int get_index(napi_env env, napi_value v, const char* name, double min, size_t* out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || !(d >= min) || d > 9007199254740991.0 || d != (double)(int64_t)d) {
    char msg[128];
    snprintf(msg, sizeof msg, "crc32c: %s must be an integer >= %.0f", name, min);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
    return 0;
  }
  *out = (size_t)d;
  return 1;
}

static napi_value js_crc32c(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  void* data_ptr;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, &data_ptr));
  const engine_t* e = (const engine_t*)data_ptr;
  if (argc < 1) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "crc32c: buf must be a Uint8Array");
    return NULL;
  }
  uint8_t* p;
  size_t n;
  if (!get_bytes(env, argv[0], "buf", &p, &n)) return NULL;
  napi_value r;
  CHECK(env, napi_create_uint32(env, e->crc(p, n), &r));
  return r;
}

typedef struct {
  uint8_t* data;
  size_t dataLen;
  size_t blockBytes;
  size_t count;
  uint8_t* table; /* out / expected */
  size_t tableLen;
  size_t offset;
  size_t stride;
} blocks_args;

/* Parse and check (data, blockBytes, table, offset, stride); entryBytes: bytes touched per entry. */
static int get_blocks_args(napi_env env, napi_callback_info info, size_t entryBytes, const char* tableName,
                           blocks_args* a, const engine_t** e) {
  size_t argc = 5;
  napi_value argv[5];
  void* data_ptr;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, &data_ptr) != napi_ok) {
    napi_throw_error(env, NULL, "crc32c: napi_get_cb_info failed");
    return 0;
  }
  *e = (const engine_t*)data_ptr;
  if (argc < 5) {
    napi_throw_type_error(env, "ERR_MISSING_ARGS", "crc32c: 5 arguments expected");
    return 0;
  }
  if (!get_bytes(env, argv[0], "data", &a->data, &a->dataLen)) return 0;
  if (!get_index(env, argv[1], "blockBytes", 1, &a->blockBytes)) return 0;
  if (!get_bytes(env, argv[2], tableName, &a->table, &a->tableLen)) return 0;
  if (!get_index(env, argv[3], "offset", 0, &a->offset)) return 0;
  if (!get_index(env, argv[4], "strideBytes", (double)entryBytes, &a->stride)) return 0;
  if (a->dataLen % a->blockBytes != 0) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "crc32c: data length is not a multiple of blockBytes");
    return 0;
  }
  a->count = a->dataLen / a->blockBytes;
  if (a->count > 0) {
    /* last entry must fit: offset + (count-1)*stride + entryBytes <= tableLen (no overflow: all < 2^53) */
    size_t last = a->count - 1;
    if (a->stride != 0 && last > (SIZE_MAX - a->offset - entryBytes) / a->stride) goto range;
    if (a->offset + last * a->stride + entryBytes > a->tableLen) goto range;
  }
  return 1;
range : {
  char msg[128];
  snprintf(msg, sizeof msg, "crc32c: %s is too short for %zu entries", tableName, a->count);
  napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
  return 0;
}
}

/* crcs are computed in chunks of this many blocks (on the stack) */
#define CHUNK_BLOCKS 64

static napi_value js_blocks(napi_env env, napi_callback_info info) {
  blocks_args a;
  const engine_t* e;
  if (!get_blocks_args(env, info, 4, "out", &a, &e)) return NULL;
  uint32_t crcs[CHUNK_BLOCKS];
  for (size_t i = 0; i < a.count; i += CHUNK_BLOCKS) {
    size_t k = a.count - i < CHUNK_BLOCKS ? a.count - i : CHUNK_BLOCKS;
    e->blocks(a.data + i * a.blockBytes, a.blockBytes, k, crcs);
    for (size_t j = 0; j < k; j++) store32le(a.table + a.offset + (i + j) * a.stride, crcs[j]);
  }
  return NULL;
}

static napi_value js_verify(napi_env env, napi_callback_info info) {
  blocks_args a;
  const engine_t* e;
  if (!get_blocks_args(env, info, 8, "expected", &a, &e)) return NULL;
  int64_t bad = -1;
  /* blocks whose written bit is set, taken 4 at a time in index order: the first mismatch found is the lowest */
  size_t idx[4];
  const uint8_t* ptr[4];
  uint32_t got[4];
  size_t k = 0;
  for (size_t i = 0; i <= a.count && bad < 0; i++) {
    if (i < a.count) {
      const uint8_t* ent = a.table + a.offset + i * a.stride;
      if ((load32le(ent + 4) & 1) == 0) continue;
      idx[k] = i;
      ptr[k] = a.data + i * a.blockBytes;
      k++;
      if (k < 4) continue;
    }
    if (k == 0) break;
    e->crc4(ptr, k, a.blockBytes, got);
    for (size_t j = 0; j < k; j++) {
      if (got[j] != load32le(a.table + a.offset + idx[j] * a.stride)) {
        bad = (int64_t)idx[j];
        break;
      }
    }
    k = 0;
  }
  napi_value r;
  CHECK(env, napi_create_double(env, (double)bad, &r));
  return r;
}

static napi_value make_engine(napi_env env, const engine_t* e) {
  napi_value obj, fn;
  CHECK(env, napi_create_object(env, &obj));
  CHECK(env, napi_create_function(env, "crc32c", NAPI_AUTO_LENGTH, js_crc32c, (void*)e, &fn));
  CHECK(env, napi_set_named_property(env, obj, "crc32c", fn));
  CHECK(env, napi_create_function(env, "blocks", NAPI_AUTO_LENGTH, js_blocks, (void*)e, &fn));
  CHECK(env, napi_set_named_property(env, obj, "blocks", fn));
  CHECK(env, napi_create_function(env, "verify", NAPI_AUTO_LENGTH, js_verify, (void*)e, &fn));
  CHECK(env, napi_set_named_property(env, obj, "verify", fn));
  return obj;
}

static napi_value init(napi_env env, napi_value exports) {
  /* init runs on the main thread and again in each worker thread that loads the addon */
  static pthread_once_t tables_once = PTHREAD_ONCE_INIT;
  pthread_once(&tables_once, table_init);
  const engine_t* chosen = &sw_engine;
  bool hardware = false;
#ifdef TESS_CRC32C_X86
  if (cpu_has_sse42()) {
    chosen = &hw_engine;
    hardware = true;
  }
#endif
  napi_value top = make_engine(env, chosen);
  if (top == NULL) return NULL;
  napi_value sw = make_engine(env, &sw_engine);
  if (sw == NULL) return NULL;
  napi_value hw;
  CHECK(env, napi_get_boolean(env, hardware, &hw));
  CHECK(env, napi_set_named_property(env, top, "hardware", hw));
  CHECK(env, napi_set_named_property(env, top, "software", sw));
  return top;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
