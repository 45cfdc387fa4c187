/*
 * Positional reads that never wait for the disk, as a Node-API addon (tess_io.node), which also
 * holds the socket sender of sender.c. Loaded by src/lib/nativeio.ts; without it every read goes
 * through libuv's thread pool and every reply through the event loop, as before.
 *
 * The data path reads extents from the page cache most of the time. A round trip through the
 * thread pool costs more than copying 4 KiB, but a synchronous read on the event loop must never
 * wait for a disk. preadv2(2) with RWF_NOWAIT gives both: it copies what the page cache holds and
 * fails with EAGAIN instead of starting disk I/O, so the caller reads the rest through the pool.
 *
 * Exports (arguments are validated here; a bad call throws, it never reads or writes out of bounds):
 *   preadNowait(fd, buf: Uint8Array, offset, length, position): number
 *     n >= 0   bytes copied into buf[offset, offset + n) from the file at position (n < length when
 *              only part was cached, or at the end of the file)
 *     < 0      -errno: -EAGAIN when nothing was cached at position, -EOPNOTSUPP (or -ENOSYS,
 *              -EINVAL) where the file system or kernel has no RWF_NOWAIT; anything else is a real
 *              error that the caller's ordinary read reports
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "napi_args.h"

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

static napi_value js_pread_nowait(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!get_args(env, info, 5, argv, "preadNowait: 5 arguments expected (fd, buf, offset, length, position)")) return NULL;
  int64_t fd, offset, length, position;
  if (!get_int64(env, argv[0], 0, INT32_MAX, &fd, "preadNowait: fd must be a non-negative integer")) return NULL;
  size_t count;
  void* data;
  if (!get_u8array(env, argv[1], &data, &count, "preadNowait: buf must be a Uint8Array")) return NULL;
  if (!get_int64(env, argv[2], 0, (int64_t)count, &offset, "preadNowait: offset out of range")) return NULL;
  if (!get_int64(env, argv[3], 0, (int64_t)count - offset, &length, "preadNowait: length out of range")) return NULL;
  if (!get_int64(env, argv[4], 0, INT64_MAX / 2, &position, "preadNowait: position out of range")) return NULL;
  if (length == 0) return make_int(env, 0);
  struct iovec iov = {.iov_base = (uint8_t*)data + offset, .iov_len = (size_t)length};
  ssize_t n;
  do {
    n = preadv2((int)fd, &iov, 1, (off_t)position, RWF_NOWAIT);
  } while (n < 0 && errno == EINTR);
  return make_int(env, n >= 0 ? (int64_t)n : -(int64_t)errno);
}

static void free_aligned(napi_env env, void* data, void* hint) {
  (void)env;
  (void)hint;
  free(data);
}

/* alignedBuffer(size): a Buffer of size bytes (1 .. 1 GiB) whose memory starts on a 4096-byte boundary */
static napi_value js_aligned_buffer(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv, "alignedBuffer: a size expected")) return NULL;
  int64_t size;
  if (!get_int64(env, argv[0], 1, 1LL << 30, &size, "alignedBuffer: size must be 1 to 2^30 bytes")) return NULL;
  void* p = NULL;
  if (posix_memalign(&p, 4096, (size_t)size) != 0 || p == NULL) {
    napi_throw_error(env, "ENOMEM", "alignedBuffer: out of memory");
    return NULL;
  }
  napi_value out;
  if (napi_create_external_buffer(env, (size_t)size, p, free_aligned, NULL, &out) != napi_ok) {
    free(p);
    napi_throw_error(env, NULL, "alignedBuffer: cannot create the buffer");
    return NULL;
  }
  return out;
}

/* addressAlignment(buf): the largest power of two (up to 4096) that divides the address of buf's first byte */
static napi_value js_address_alignment(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  size_t count;
  void* data;
  if (!get_args(env, info, 1, argv, "addressAlignment: a Uint8Array expected") ||
      !get_u8array(env, argv[0], &data, &count, "addressAlignment: a Uint8Array expected")) return NULL;
  uintptr_t a = (uintptr_t)data;
  int64_t align = 4096;
  while (align > 1 && (a % (uintptr_t)align) != 0) align /= 2;
  return make_int(env, align);
}

#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif
struct tess_cachestat_range {
  uint64_t off;
  uint64_t len;
};
struct tess_cachestat {
  uint64_t nr_cache;
  uint64_t nr_dirty;
  uint64_t nr_writeback;
  uint64_t nr_evicted;
  uint64_t nr_recently_evicted;
};

/*
 * cachedPages(fd, offset, length): how many pages of the range the page cache holds (cachestat(2),
 * Linux 6.5+), or -errno (-ENOSYS on older kernels). Unlike a probing read it starts no read-ahead.
 */
static napi_value js_cached_pages(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv, "cachedPages: 3 arguments expected (fd, offset, length)")) return NULL;
  int64_t fd, offset, length;
  if (!get_int64(env, argv[0], 0, INT32_MAX, &fd, "cachedPages: fd must be a non-negative integer")) return NULL;
  if (!get_int64(env, argv[1], 0, INT64_MAX / 2, &offset, "cachedPages: offset out of range")) return NULL;
  if (!get_int64(env, argv[2], 1, INT64_MAX / 2, &length, "cachedPages: length out of range")) return NULL;
  struct tess_cachestat_range range = {.off = (uint64_t)offset, .len = (uint64_t)length};
  struct tess_cachestat cs = {0};
  long r = syscall(__NR_cachestat, (unsigned int)fd, &range, &cs, 0U);
  return make_int(env, r == 0 ? (int64_t)cs.nr_cache : -(int64_t)errno);
}

napi_status sender_init(napi_env env, napi_value exports); /* sender.c */
napi_status xts_init(napi_env env, napi_value exports); /* xts.c */

static napi_value init(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
    {"preadNowait", js_pread_nowait},
    {"alignedBuffer", js_aligned_buffer},
    {"addressAlignment", js_address_alignment},
    {"cachedPages", js_cached_pages},
  };
  if (export_fns(env, exports, fns, sizeof fns / sizeof fns[0]) != napi_ok || sender_init(env, exports) != napi_ok || xts_init(env, exports) != napi_ok) {
    napi_throw_error(env, NULL, "tess_io: init failed");
    return NULL;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
