/*
 * Argument checks shared by the tess_io addon's sources (io.c, sender.c). Each returns 1, or 0
 * after throwing a JavaScript error with the given message: the caller returns NULL then.
 */
#ifndef TESS_NAPI_ARGS_H
#define TESS_NAPI_ARGS_H

#include <node_api.h>
#include <stddef.h>
#include <stdint.h>

static inline napi_value make_int(napi_env env, int64_t v) {
  napi_value out;
  if (napi_create_int64(env, v, &out) != napi_ok) return NULL;
  return out;
}

/* exactly the first n arguments (fewer: ERR_MISSING_ARGS with `what`) */
static inline int get_args(napi_env env, napi_callback_info info, size_t n, napi_value* argv, const char* what) {
  size_t argc = n;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < n) {
    napi_throw_type_error(env, "ERR_MISSING_ARGS", what);
    return 0;
  }
  return 1;
}

/* an integral number in [min, max] */
static inline int get_int64(napi_env env, napi_value v, int64_t min, int64_t max, int64_t* out, const char* what) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", what);
    return 0;
  }
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || d != d || d < (double)min || d > (double)max || d != (double)(int64_t)d) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", what);
    return 0;
  }
  *out = (int64_t)d;
  return 1;
}

/* a Uint8Array (a Buffer): its first byte and its length */
static inline int get_u8array(napi_env env, napi_value v, void** data, size_t* len, const char* what) {
  bool is_typed = false;
  napi_typedarray_type type;
  if (napi_is_typedarray(env, v, &is_typed) != napi_ok || !is_typed ||
      napi_get_typedarray_info(env, v, &type, len, data, NULL, NULL) != napi_ok || type != napi_uint8_array) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", what);
    return 0;
  }
  return 1;
}

typedef struct {
  const char* name;
  napi_callback fn;
} export_fn;

/* set each function as a property of exports */
static inline napi_status export_fns(napi_env env, napi_value exports, const export_fn* fns, size_t count) {
  for (size_t i = 0; i < count; i++) {
    napi_value f;
    napi_status st = napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f);
    if (st != napi_ok) return st;
    st = napi_set_named_property(env, exports, fns[i].name, f);
    if (st != napi_ok) return st;
  }
  return napi_ok;
}

#endif
