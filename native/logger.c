/*
 * tess-logger: the writer of one run of a container's log. It runs in the shim's session, so it
 * outlives a restart of the CSM daemon as the container does, and reads the container's stdout
 * and stderr from a pipe (its standard input):
 *
 *   tess-logger LOG INDEX [MAX_BYTES]
 *
 * Every chunk read is appended to LOG as it came, and then one 16-byte record to INDEX: the
 * chunk's offset in LOG and the time it was read (nanoseconds since the epoch, CLOCK_REALTIME),
 * both unsigned 64-bit little-endian. `tess container logs --timestamps` and `--since` read the
 * times from there (src/csm/runtime/logindex.ts); a record cut short by a crash is ignored there.
 *
 * With MAX_BYTES (> 0) the log keeps about the last MAX_BYTES of output: once more than that lies
 * past the start of what it keeps, the oldest part up to half of MAX_BYTES before the end is
 * given back to the file system by punching a hole (fallocate PUNCH_HOLE, whole 4 KiB blocks),
 * and so are the index records of the chunks in it. Offsets never change: a reader polling by
 * offset goes on where it was, and the start of the first whole line kept is written first to
 * LOG.start (a decimal number, replaced by a rename) so readers begin there. A file system
 * without holes keeps it all (said once on stderr).
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
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64 * 1024)
#define BLOCK 4096ull
#define RECORD 16ull

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

static uint64_t get_u64le(const unsigned char *b) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | b[i];
  return v;
}

/* where the data of fd starts (past a punched head), or `size` when it holds none */
static uint64_t data_start(int fd, uint64_t size) {
  off_t d = lseek(fd, 0, SEEK_DATA);
  return d < 0 ? size : (uint64_t)d;
}

/* LOG.start := start, replaced whole by a rename so a reader never sees half a number */
static int write_start(const char *log, uint64_t start) {
  char path[4096], tmp[4096], text[32];
  if (snprintf(path, sizeof path, "%s.start", log) >= (int)sizeof path) return -1;
  if (snprintf(tmp, sizeof tmp, "%s.start.tmp", log) >= (int)sizeof tmp) return -1;
  int n = snprintf(text, sizeof text, "%llu\n", (unsigned long long)start);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) return -1;
  int r = write_all(fd, text, (size_t)n);
  close(fd);
  return r == 0 ? rename(tmp, path) : -1;
}

/* the number of the first record of INDEX (sorted by offset) whose chunk starts at or after `at` */
static uint64_t first_record_from(int idx, uint64_t records, uint64_t at) {
  uint64_t lo = 0, hi = records;
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    unsigned char rec[RECORD];
    if (pread(idx, rec, RECORD, (off_t)(mid * RECORD)) != (ssize_t)RECORD) return lo;
    /* a punched record reads as zeros: before everything kept */
    if (get_u64le(rec + 8) != 0 && get_u64le(rec) >= at) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/* `at` when a line of LOG starts there, else the start of the next line (or `at` when none is near) */
static uint64_t line_from(int log, uint64_t at, uint64_t end) {
  static char look[CHUNK];
  char before;
  if (pread(log, &before, 1, (off_t)(at - 1)) == 1 && before == '\n') return at;
  ssize_t n = pread(log, look, end - at < CHUNK ? (size_t)(end - at) : CHUNK, (off_t)at);
  char *nl = n > 0 ? memchr(look, '\n', (size_t)n) : NULL;
  return nl != NULL ? at + (uint64_t)(nl - look) + 1 : at;
}

struct cap {
  uint64_t max;       /* 0: keep everything */
  uint64_t start;     /* the first byte of LOG kept */
  uint64_t idx_start; /* the first byte of INDEX kept */
  uint64_t line;      /* what LOG.start says (0: no such file) */
  int warned;         /* a failure of the cap was said on stderr */
};

/* what LOG.start says, 0 when there is none */
static uint64_t read_start(const char *log) {
  char path[4096], text[32];
  if (snprintf(path, sizeof path, "%s.start", log) >= (int)sizeof path) return 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, text, sizeof text - 1);
  close(fd);
  if (n <= 0) return 0;
  text[n] = '\0';
  return strtoull(text, NULL, 10);
}

/* the cap cannot work (said once): the log is kept whole from here on */
static void cap_off(struct cap *c, const char *what, const char *file) {
  if (!c->warned) fprintf(stderr, "tess-logger: cannot %s %s: %s (the log is kept whole)\n", what, file, strerror(errno));
  c->warned = 1;
  c->max = 0;
}

/* LOG holds bytes up to `end`: give back its head (and the index records of it) when over the cap */
static void trim(struct cap *c, int log, int idx, const char *logPath, uint64_t end) {
  if (c->max == 0 || end - c->start <= c->max) return;
  uint64_t keep = (end - c->max / 2) & ~(BLOCK - 1);
  if (keep <= c->start) return;
  /* readers skip to the new start before its bytes go */
  uint64_t line = line_from(log, keep, end);
  if (write_start(logPath, line) != 0) {
    cap_off(c, "record the start of", logPath);
    return;
  }
  if (fallocate(log, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)c->start, (off_t)(keep - c->start)) != 0) {
    cap_off(c, "punch a hole in", logPath);
    /* nothing was given back: readers begin where they did */
    if (write_start(logPath, c->line) != 0) fprintf(stderr, "tess-logger: cannot restore the start of %s: %s\n", logPath, strerror(errno));
    return;
  }
  c->start = keep;
  c->line = line;
  struct stat st;
  if (idx < 0 || fstat(idx, &st) != 0) return;
  /* keep the record of the chunk that holds `keep` (the one before the first at or after it) */
  uint64_t first = first_record_from(idx, (uint64_t)st.st_size / RECORD, keep);
  uint64_t idx_keep = (first > 0 ? (first - 1) * RECORD : 0) & ~(BLOCK - 1);
  if (idx_keep > c->idx_start && fallocate(idx, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)c->idx_start, (off_t)(idx_keep - c->idx_start)) == 0) {
    c->idx_start = idx_keep;
  }
}

int main(int argc, char **argv) {
  if (argc != 3 && argc != 4) {
    fprintf(stderr, "usage: tess-logger LOG INDEX [MAX_BYTES]\n");
    return 2;
  }
  struct cap cap = { 0, 0, 0, 0, 0 };
  if (argc == 4) {
    char *end = NULL;
    errno = 0;
    unsigned long long m = strtoull(argv[3], &end, 10);
    if (errno != 0 || end == argv[3] || *end != '\0' || (m != 0 && m < 2 * BLOCK)) {
      fprintf(stderr, "tess-logger: MAX_BYTES must be 0 or a whole number from %llu\n", 2 * BLOCK);
      return 2;
    }
    cap.max = m;
  }
  signal(SIGTERM, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  int said = 0;
  /* read too: the cap looks for the first line it keeps and searches the index (trim) */
  int log = open(argv[1], O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (log < 0) complain(&said, "open", argv[1]);
  int idx = open(argv[2], O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (idx < 0) complain(&said, "open", argv[2]);
  /* this run appends after what earlier runs of the container wrote */
  struct stat st;
  uint64_t off = (log >= 0 && fstat(log, &st) == 0) ? (uint64_t)st.st_size : 0;
  /* an earlier run may have punched the heads already */
  if (log >= 0) cap.start = data_start(log, off);
  cap.line = read_start(argv[1]);
  if (idx >= 0 && fstat(idx, &st) == 0) cap.idx_start = data_start(idx, (uint64_t)st.st_size) & ~(BLOCK - 1);
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
    trim(&cap, log, idx, argv[1], off);
  }
  return 0;
}
