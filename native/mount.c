/*
 * tess_mount: an idmapped bind mount (Linux 5.12+: open_tree, mount_setattr with MOUNT_ATTR_IDMAP,
 * move_mount). A container with its own user namespace sees the image layers and its volumes
 * through such mounts, owned by its own root, while the files on disk keep their owners: nothing
 * is copied or chowned. The bookworm runc (1.1) cannot make these mounts itself, and util-linux
 * 2.38's mount has no X-mount.idmap; the CSM makes them before runc starts.
 *
 *   idmapBind(source: string, target: string, usernsPath: string): void
 *     clones the mount tree at `source` (not recursive), attaches the id mapping of the user
 *     namespace at `usernsPath` (/proc/PID/ns/user of a process in it), and mounts it at
 *     `target`. Throws an Error with `code` set to the errno name on failure.
 *
 *   overlayMount(target: string, options: string): void
 *     mount(2) of an overlay at `target` with `options` (absolute paths: lowerdir=...,upperdir=...,
 *     workdir=...), what `mount -t overlay overlay -o OPTIONS TARGET` does without its process.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/mount.h>
#include "napi_args.h"

#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef MOUNT_ATTR_IDMAP
#define MOUNT_ATTR_IDMAP 0x00100000
#endif

/* a path argument: a string of at most PATH_MAX bytes, into buf */
static int get_path(napi_env env, napi_value v, char* buf, size_t size, const char* what) {
  size_t len = 0;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_string) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", what);
    return 0;
  }
  if (napi_get_value_string_utf8(env, v, buf, size, &len) != napi_ok || len == 0 || len >= size - 1) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", what);
    return 0;
  }
  return 1;
}

static void throw_errno(napi_env env, const char* step, int err) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s", step, strerror(err));
  const char* code = err == EPERM ? "EPERM" : err == EINVAL ? "EINVAL" : err == ENOENT ? "ENOENT" : err == ENOSYS ? "ENOSYS"
    : err == EBADF ? "EBADF" : err == ENOTDIR ? "ENOTDIR" : err == EBUSY ? "EBUSY" : "EIO";
  napi_throw_error(env, code, msg);
}

static napi_value js_idmap_bind(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv, "idmapBind(source, target, usernsPath)")) return NULL;
  static char source[4096], target[4096], userns[4096];
  if (!get_path(env, argv[0], source, sizeof source, "source: a path") || !get_path(env, argv[1], target, sizeof target, "target: a path") ||
      !get_path(env, argv[2], userns, sizeof userns, "usernsPath: a path")) return NULL;
  int ns = open(userns, O_RDONLY | O_CLOEXEC);
  if (ns < 0) {
    throw_errno(env, "open the user namespace", errno);
    return NULL;
  }
  int tree = (int)syscall(SYS_open_tree, AT_FDCWD, source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
  if (tree < 0) {
    int e = errno;
    close(ns);
    throw_errno(env, "open_tree", e);
    return NULL;
  }
  struct mount_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.attr_set = MOUNT_ATTR_IDMAP;
  attr.userns_fd = (uint64_t)ns;
  if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr) != 0) {
    int e = errno;
    close(tree);
    close(ns);
    throw_errno(env, "mount_setattr (idmap)", e);
    return NULL;
  }
  close(ns);
  if (syscall(SYS_move_mount, tree, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) != 0) {
    int e = errno;
    close(tree);
    throw_errno(env, "move_mount", e);
    return NULL;
  }
  close(tree);
  return NULL;
}

static napi_value js_overlay_mount(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv, "overlayMount(target, options)")) return NULL;
  static char target[4096], options[4096];
  if (!get_path(env, argv[0], target, sizeof target, "target: a path") || !get_path(env, argv[1], options, sizeof options, "options: at most 4094 bytes")) return NULL;
  if (mount("overlay", target, "overlay", 0, options) != 0) throw_errno(env, "mount overlay", errno);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
    {"idmapBind", js_idmap_bind},
    {"overlayMount", js_overlay_mount},
  };
  if (export_fns(env, exports, fns, sizeof fns / sizeof fns[0]) != napi_ok) {
    napi_throw_error(env, NULL, "tess_mount: init failed");
    return NULL;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
