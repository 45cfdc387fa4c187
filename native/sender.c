/*
 * A socket sender on a thread of its own, part of the tess_io addon (see io.c for the reads).
 *
 * Copying a reply into a socket (writev) is the largest cost left on the CVM's event loop when it
 * serves reads: the kernel copies every byte once, and on one thread that copy caps the rate. A
 * sender moves it to a thread per connection, as a threaded NBD server does: JavaScript queues the
 * buffers of each batch of replies and goes on; the thread writes them in order and reports how
 * many batches are out; JavaScript keeps every queued buffer alive until then.
 *
 * The thread writes on a dup(2) of the socket's descriptor, so closing the socket in Node never
 * lets the thread write to a descriptor number that was reused meanwhile. The socket stays
 * non-blocking: on EAGAIN the thread waits in poll(2) for room or for close().
 *
 * Exports:
 *   senderOpen(fd, onDone(batchesDone: number, errno: number, finished: boolean)): handle
 *     onDone is called on the event loop with the number of batches written so far (cumulative),
 *     the errno of a failed write or 0 (nothing queued is written after a failure), and whether
 *     the thread has ended: only then may the buffers of batches not reported written be let go
 *   senderWrite(handle, buffers: Uint8Array[], inline: boolean): boolean   one batch, written
 *     after every earlier one. true: inline was allowed, the batch was small (up to
 *     SENDER_INLINE_MAX_BYTES), nothing was queued or being written, and the socket took all of it
 *     at once, on the calling thread: it is out, it counts
 *     in no report, and its buffers may be let go now. A write acknowledgement is a few bytes:
 *     waking the thread for it (a futex wake, a context switch, and on a busy machine a wait for a
 *     core) costs more than the write itself. false: the batch (or what the socket did not take of
 *     it) is queued for the thread and reported as usual.
 *   senderClose(handle): void   stop: batches not written yet are dropped, the thread exits,
 *     closes its descriptor and reports finished (a handle is also closed when it is collected)
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include "napi_args.h"

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif
/* iovecs in one batch; the server's batches are a tick's replies, far below this */
#define SENDER_BATCH_IOV_MAX 4096
/* a batch up to this size is written on the calling thread when the sender is idle */
#define SENDER_INLINE_MAX_BYTES (16 * 1024)

typedef struct batch {
  struct batch* next;
  int count;
  struct iovec iov[];
} batch;

typedef struct sender {
  int fd;      /* our dup of the socket */
  int wake_fd; /* eventfd: close() wakes the thread out of poll() */
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  batch* head;
  batch* tail;
  int closing;
  int failed;
  int writing; /* the thread is writing a batch it took off the queue */
  int exited; /* the thread closed its descriptors */
  atomic_uint_fast64_t done; /* batches written */
  atomic_int err;            /* the errno of the write that failed */
  atomic_int posted;         /* a report is on its way to the event loop */
  atomic_int finished;       /* the thread is done with every buffer */
  napi_threadsafe_function tsfn;
  atomic_int refs; /* the JS handle, and the completion callback (released after the thread's last report) */
} sender;

static void sender_unref(sender* s) {
  if (atomic_fetch_sub(&s->refs, 1) != 1) return;
  batch* b = s->head;
  while (b != NULL) {
    batch* next = b->next;
    free(b);
    b = next;
  }
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  free(s);
}

/* tell the event loop, unless a report it has not run yet will read the newest counts anyway */
static void post(sender* s) {
  if (atomic_exchange(&s->posted, 1)) return;
  if (napi_call_threadsafe_function(s->tsfn, NULL, napi_tsfn_blocking) != napi_ok) atomic_store(&s->posted, 0);
}

/* wait until fd can take more or close() was called; 0: go on, -1: closing */
static int wait_writable(sender* s) {
  for (;;) {
    struct pollfd p[2] = {{.fd = s->fd, .events = POLLOUT}, {.fd = s->wake_fd, .events = POLLIN}};
    int n = poll(p, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    if (p[1].revents != 0) return -1;
    return 0;
  }
}

/* write a whole batch; 0, or an errno (ECANCELED when closing) */
static int write_batch(sender* s, batch* b) {
  struct iovec* iov = b->iov;
  int left = b->count;
  while (left > 0) {
    int n = left > IOV_MAX ? IOV_MAX : left;
    ssize_t w = writev(s->fd, iov, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (wait_writable(s) < 0) return ECANCELED;
        continue;
      }
      return errno;
    }
    size_t rest = (size_t)w;
    while (left > 0 && rest >= iov->iov_len) {
      rest -= iov->iov_len;
      iov++;
      left--;
    }
    if (left > 0 && rest > 0) {
      iov->iov_base = (uint8_t*)iov->iov_base + rest;
      iov->iov_len -= rest;
    }
  }
  return 0;
}

static void* run(void* arg) {
  sender* s = arg;
  for (;;) {
    pthread_mutex_lock(&s->mu);
    while (s->head == NULL && !s->closing) pthread_cond_wait(&s->cv, &s->mu);
    if (s->closing) {
      pthread_mutex_unlock(&s->mu);
      break;
    }
    batch* b = s->head;
    s->head = b->next;
    if (s->head == NULL) s->tail = NULL;
    s->writing = 1;
    pthread_mutex_unlock(&s->mu);
    int err = write_batch(s, b);
    free(b);
    pthread_mutex_lock(&s->mu);
    s->writing = 0;
    pthread_mutex_unlock(&s->mu);
    if (err == ECANCELED) break;
    if (err != 0) {
      pthread_mutex_lock(&s->mu);
      s->failed = 1;
      pthread_mutex_unlock(&s->mu);
      atomic_store(&s->err, err);
      post(s);
      break;
    }
    atomic_fetch_add(&s->done, 1);
    post(s);
  }
  pthread_mutex_lock(&s->mu);
  s->exited = 1;
  close(s->fd);
  close(s->wake_fd);
  pthread_mutex_unlock(&s->mu);
  /* JavaScript lets go of the buffers only after this report */
  atomic_store(&s->finished, 1);
  post(s);
  /* the completion callback's finalizer drops its reference once every report has run */
  napi_release_threadsafe_function(s->tsfn, napi_tsfn_release);
  return NULL;
}

static void call_js(napi_env env, napi_value fn, void* context, void* data) {
  (void)data;
  sender* s = context;
  /* cleared before reading: a batch finished after this read posts a new report */
  atomic_store(&s->posted, 0);
  if (env == NULL || fn == NULL) return;
  napi_value argv[3], undef;
  napi_get_undefined(env, &undef);
  int finished = atomic_load(&s->finished);
  napi_create_double(env, (double)atomic_load(&s->done), &argv[0]);
  napi_create_int32(env, atomic_load(&s->err), &argv[1]);
  napi_get_boolean(env, finished != 0, &argv[2]);
  napi_call_function(env, undef, fn, 3, argv, NULL);
}

static void tsfn_finalize(napi_env env, void* data, void* hint) {
  (void)env;
  (void)hint;
  sender_unref(data);
}

static void request_close(sender* s) {
  pthread_mutex_lock(&s->mu);
  if (!s->closing && !s->exited) {
    uint64_t one = 1;
    ssize_t w = write(s->wake_fd, &one, sizeof one);
    (void)w;
  }
  s->closing = 1;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static void finalize_handle(napi_env env, void* data, void* hint) {
  (void)env;
  (void)hint;
  sender* s = data;
  request_close(s);
  sender_unref(s);
}

static sender* get_sender(napi_env env, napi_value v) {
  void* p = NULL;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external || napi_get_value_external(env, v, &p) != napi_ok || p == NULL) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "sender: not a sender handle");
    return NULL;
  }
  return p;
}

static napi_value js_sender_open(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv, "senderOpen: 2 arguments expected (fd, onDone)")) return NULL;
  int64_t fd;
  if (!get_int64(env, argv[0], 0, INT32_MAX, &fd, "senderOpen: fd must be a non-negative integer")) return NULL;
  napi_valuetype t;
  if (napi_typeof(env, argv[1], &t) != napi_ok || t != napi_function) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "senderOpen: onDone must be a function");
    return NULL;
  }
  sender* s = calloc(1, sizeof(sender));
  if (s == NULL) {
    napi_throw_error(env, "ENOMEM", "senderOpen: out of memory");
    return NULL;
  }
  s->fd = fcntl((int)fd, F_DUPFD_CLOEXEC, 0);
  if (s->fd < 0) {
    int e = errno;
    free(s);
    napi_throw_error(env, "ERR_SENDER", e == EBADF ? "senderOpen: not an open descriptor" : strerror(e));
    return NULL;
  }
  s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s->wake_fd < 0) {
    close(s->fd);
    free(s);
    napi_throw_error(env, "ERR_SENDER", "senderOpen: eventfd failed");
    return NULL;
  }
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  atomic_init(&s->refs, 2);
  atomic_init(&s->done, 0);
  atomic_init(&s->err, 0);
  atomic_init(&s->posted, 0);
  atomic_init(&s->finished, 0);
  napi_value name;
  napi_create_string_utf8(env, "tess sender", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[1], NULL, name, 0, 1, s, tsfn_finalize, s, call_js, &s->tsfn) != napi_ok) {
    close(s->fd);
    close(s->wake_fd);
    free(s);
    napi_throw_error(env, "ERR_SENDER", "senderOpen: cannot create the completion callback");
    return NULL;
  }
  /* a sender does not keep the process alive */
  napi_unref_threadsafe_function(env, s->tsfn);
  if (pthread_create(&s->thread, NULL, run, s) != 0) {
    close(s->fd);
    close(s->wake_fd);
    s->exited = 1;
    /* no handle will exist: drop its reference; the callback's finalizer drops the other */
    sender_unref(s);
    napi_release_threadsafe_function(s->tsfn, napi_tsfn_abort);
    napi_throw_error(env, "ERR_SENDER", "senderOpen: cannot start a thread");
    return NULL;
  }
  pthread_detach(s->thread);
  napi_value handle;
  if (napi_create_external(env, s, finalize_handle, NULL, &handle) != napi_ok) {
    request_close(s);
    sender_unref(s);
    napi_throw_error(env, "ERR_SENDER", "senderOpen: cannot create the handle");
    return NULL;
  }
  return handle;
}

/*
 * A small batch on the calling thread, with s->mu held and the thread idle (nothing queued or
 * being written, so nothing can come between this batch and the ones before it): one
 * non-blocking writev. 1: all of it is out. 0: what is left (b's iovecs advanced past what the
 * socket took) is for the thread, which also reports an error the write met.
 */
static int write_inline(sender* s, batch* b) {
  size_t total = 0;
  for (int i = 0; i < b->count; i++) total += b->iov[i].iov_len;
  if (total > SENDER_INLINE_MAX_BYTES || b->count > IOV_MAX) return 0;
  ssize_t w = writev(s->fd, b->iov, b->count);
  if (w <= 0) return 0;
  if ((size_t)w == total) return 1;
  size_t rest = (size_t)w;
  int first = 0;
  while (rest >= b->iov[first].iov_len) rest -= b->iov[first++].iov_len;
  b->iov[first].iov_base = (uint8_t*)b->iov[first].iov_base + rest;
  b->iov[first].iov_len -= rest;
  memmove(b->iov, b->iov + first, (size_t)(b->count - first) * sizeof(struct iovec));
  b->count -= first;
  return 0;
}

static napi_value js_sender_write(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv, "senderWrite: 3 arguments expected (handle, buffers, inline)")) return NULL;
  bool may_inline = false;
  if (napi_get_value_bool(env, argv[2], &may_inline) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "senderWrite: inline must be a boolean");
    return NULL;
  }
  sender* s = get_sender(env, argv[0]);
  if (s == NULL) return NULL;
  bool is_array;
  uint32_t n;
  if (napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array || napi_get_array_length(env, argv[1], &n) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "senderWrite: buffers must be an array of Uint8Array");
    return NULL;
  }
  if (n == 0 || n > SENDER_BATCH_IOV_MAX) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "senderWrite: 1 to 4096 buffers per batch");
    return NULL;
  }
  batch* b = malloc(sizeof(batch) + n * sizeof(struct iovec));
  if (b == NULL) {
    napi_throw_error(env, "ENOMEM", "senderWrite: out of memory");
    return NULL;
  }
  b->next = NULL;
  b->count = 0;
  for (uint32_t i = 0; i < n; i++) {
    napi_value el;
    size_t len;
    void* data;
    const char* what = "senderWrite: buffers must be an array of Uint8Array";
    if (napi_get_element(env, argv[1], i, &el) != napi_ok) {
      free(b);
      napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", what);
      return NULL;
    }
    if (!get_u8array(env, el, &data, &len, what)) {
      free(b);
      return NULL;
    }
    if (len == 0) continue;
    b->iov[b->count].iov_base = data;
    b->iov[b->count].iov_len = len;
    b->count++;
  }
  pthread_mutex_lock(&s->mu);
  if (s->closing || s->failed) {
    /* nothing more is written; the caller hears of the failure (or closed it itself) */
    pthread_mutex_unlock(&s->mu);
    free(b);
    return NULL;
  }
  if (may_inline && s->head == NULL && !s->writing && write_inline(s, b)) {
    pthread_mutex_unlock(&s->mu);
    free(b);
    napi_value yes;
    napi_get_boolean(env, true, &yes);
    return yes;
  }
  if (s->tail != NULL) s->tail->next = b;
  else s->head = b;
  s->tail = b;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
  napi_value no;
  napi_get_boolean(env, false, &no);
  return no;
}

static napi_value js_sender_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv, "senderClose: a handle expected")) return NULL;
  sender* s = get_sender(env, argv[0]);
  if (s == NULL) return NULL;
  request_close(s);
  return NULL;
}

napi_status sender_init(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
    {"senderOpen", js_sender_open}, {"senderWrite", js_sender_write}, {"senderClose", js_sender_close},
  };
  return export_fns(env, exports, fns, sizeof fns / sizeof fns[0]);
}
