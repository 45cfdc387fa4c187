/*
 * tess-logger: the writer of one run of a container's log. It runs in the shim's session, so it
 * outlives a restart of the CSM daemon as the container does, and reads the container's stdout
 * and stderr from a pipe (its standard input):
 *
 *   tess-logger LOG INDEX
 *
 * Every chunk read is appended to LOG as it came, and then one 16-byte record to INDEX: the
 * chunk's offset in LOG and the time it was read (nanoseconds since the epoch, CLOCK_REALTIME),
 * both unsigned 64-bit little-endian. `tess container logs --timestamps` and `--since` read the
 * times from there (src/csm/runtime/logindex.ts); a record cut short by a crash is ignored there.
 *
 * It exits at the end of its input, once every writer is gone (the container and its runtime).
 * Until then nothing must end it but SIGKILL: the container would get EPIPE on its next write.
 * So it ignores SIGTERM, SIGINT, SIGHUP and SIGPIPE, and when LOG or INDEX cannot be opened or
 * written (a full disk) it says so on stderr once and keeps reading, dropping what it cannot keep.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64 * 1024)

static int write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

static void put_u64le(unsigned char *b, uint64_t v) {
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i));
}

static void complain(int *said, const char *what, const char *file) {
  if (*said) return;
  *said = 1;
  fprintf(stderr, "tess-logger: cannot %s %s: %s (output is dropped until it works again)\n", what, file, strerror(errno));
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: tess-logger LOG INDEX\n");
    return 2;
  }
  signal(SIGTERM, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  int said = 0;
  int log = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (log < 0) complain(&said, "open", argv[1]);
  int idx = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (idx < 0) complain(&said, "open", argv[2]);
  /* this run appends after what earlier runs of the container wrote */
  struct stat st;
  uint64_t off = (log >= 0 && fstat(log, &st) == 0) ? (uint64_t)st.st_size : 0;
  static char buf[CHUNK];
  for (;;) {
    ssize_t n = read(0, buf, sizeof buf);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (log < 0) continue;
    if (write_all(log, buf, (size_t)n) != 0) {
      complain(&said, "write", argv[1]);
      /* what was written of it is in the file: take the offset from there */
      if (fstat(log, &st) == 0) off = (uint64_t)st.st_size;
      continue;
    }
    if (idx >= 0) {
      unsigned char rec[16];
      put_u64le(rec, off);
      put_u64le(rec + 8, (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec);
      if (write_all(idx, rec, sizeof rec) != 0) {
        complain(&said, "write", argv[2]);
        /* a record cut short would shift every later one: cut it off */
        if (fstat(idx, &st) == 0 && ftruncate(idx, st.st_size - st.st_size % 16) != 0) complain(&said, "truncate", argv[2]);
      }
    }
    off += (uint64_t)n;
  }
  return 0;
}
