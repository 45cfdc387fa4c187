/*
 * AES-256-XTS over whole 4 KiB blocks, part of the tess_io addon: the encryption of encrypted
 * vDisks (src/cvm/vdisk/crypt.ts). One call handles a whole request (up to a few MiB): one cipher
 * context, the tweak set per block, the OpenSSL that Node itself carries (its symbols are the
 * process's; Node's headers ship its openssl/ directory). In JavaScript a cipher object per 4 KiB
 * block cost more than the AES did.
 *
 * Exports:
 *   xtsBlocks(key: Uint8Array(64), src: Uint8Array, dst: Uint8Array, firstBlock, encrypt: boolean): void
 *     src and dst of the same length, a multiple of 4096 (dst may be src: in place); block i is
 *     encrypted or decrypted with the tweak firstBlock + i (little-endian, 16 bytes). Decrypting
 *     leaves a block of all zeros as it is (a never-written block reads as zeros).
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#include "napi_args.h"

#define XTS_BLOCK 4096

static int all_zero(const uint8_t* p) {
  static const uint8_t zero[XTS_BLOCK];
  return memcmp(p, zero, XTS_BLOCK) == 0;
}

static napi_value js_xts_blocks(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!get_args(env, info, 5, argv, "xtsBlocks: 5 arguments expected (key, src, dst, firstBlock, encrypt)")) return NULL;
  void *key, *src, *dst;
  size_t key_len, src_len, dst_len;
  if (!get_u8array(env, argv[0], &key, &key_len, "xtsBlocks: key must be a Uint8Array")) return NULL;
  if (!get_u8array(env, argv[1], &src, &src_len, "xtsBlocks: src must be a Uint8Array")) return NULL;
  if (!get_u8array(env, argv[2], &dst, &dst_len, "xtsBlocks: dst must be a Uint8Array")) return NULL;
  int64_t first;
  if (!get_int64(env, argv[3], 0, ((int64_t)1 << 48) - 1, &first, "xtsBlocks: firstBlock must be an integer from 0 to 2^48-1")) return NULL;
  bool encrypt;
  if (napi_get_value_bool(env, argv[4], &encrypt) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "xtsBlocks: encrypt must be a boolean");
    return NULL;
  }
  if (key_len != 64) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "xtsBlocks: the key is 64 bytes");
    return NULL;
  }
  if (src_len != dst_len || src_len % XTS_BLOCK != 0) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "xtsBlocks: src and dst must be of one length, a multiple of 4096");
    return NULL;
  }
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  if (ctx == NULL || EVP_CipherInit_ex(ctx, EVP_aes_256_xts(), NULL, key, NULL, encrypt ? 1 : 0) != 1) {
    EVP_CIPHER_CTX_free(ctx);
    napi_throw_error(env, "ERR_XTS", "xtsBlocks: cannot set up AES-256-XTS (a key whose halves are equal is refused)");
    return NULL;
  }
  const uint8_t* in = src;
  uint8_t* out = dst;
  uint8_t tweak[16];
  for (size_t off = 0; off < src_len; off += XTS_BLOCK) {
    if (!encrypt && all_zero(in + off)) {
      if (out != in) memset(out + off, 0, XTS_BLOCK);
      continue;
    }
    uint64_t n = (uint64_t)first + off / XTS_BLOCK;
    memset(tweak, 0, sizeof tweak);
    for (int i = 0; i < 8; i++) tweak[i] = (uint8_t)(n >> (8 * i));
    int outl = 0;
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, tweak, -1) != 1 || EVP_CipherUpdate(ctx, out + off, &outl, in + off, XTS_BLOCK) != 1 || outl != XTS_BLOCK) {
      EVP_CIPHER_CTX_free(ctx);
      napi_throw_error(env, "ERR_XTS", "xtsBlocks: AES-256-XTS failed");
      return NULL;
    }
  }
  EVP_CIPHER_CTX_free(ctx);
  return NULL;
}

napi_status xts_init(napi_env env, napi_value exports) {
  static const export_fn fns[] = {{"xtsBlocks", js_xts_blocks}};
  return export_fns(env, exports, fns, sizeof fns / sizeof fns[0]);
}
