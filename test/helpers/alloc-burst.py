"""An allocating write burst with flushes, for crash tests (python3-libnbd).

  alloc-burst.py write URI START END CHUNK   writes deterministic chunks from START up to END in
      batches of 16 asynchronous writes; after each batch a FLUSH; prints "durable N" once the
      flush reply came (every byte below N is durable). Runs until END or until the server goes.
  alloc-burst.py verify URI START END CHUNK  reads [START, END) back and checks every chunk;
      prints "ok" or the first bad offset, exit code 0 or 1.
"""
import hashlib
import sys

import nbd

in_flight_max = 16


def pattern(off, chunk):
    seed = hashlib.sha256(str(off).encode()).digest()
    return (seed * (chunk // len(seed) + 1))[:chunk]


def write(h, start, end, chunk):
    off = start
    while off < end:
        cookies = []
        for _ in range(in_flight_max):
            if off >= end:
                break
            buf = nbd.Buffer.from_bytearray(bytearray(pattern(off, chunk)))
            cookies.append((h.aio_pwrite(buf, off), buf))
            off += chunk
        while cookies:
            h.poll(-1)
            cookies = [(c, b) for (c, b) in cookies if not h.aio_command_completed(c)]
        h.flush()
        print("durable %d" % off, flush=True)


def verify(h, start, end, chunk):
    off = start
    while off < end:
        n = min(chunk, end - off)
        got = h.pread(n, off)
        if got != pattern(off, chunk)[:n]:
            print("bad chunk at %d" % off, flush=True)
            return 1
        off += n
    print("ok", flush=True)
    return 0


def main():
    mode, uri, start, end, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    h = nbd.NBD()
    h.connect_uri(uri)
    if mode == "write":
        try:
            write(h, start, end, chunk)
        except nbd.Error as e:
            print("stopped: %s" % e, flush=True)
        return 0
    return verify(h, start, end, chunk)


if __name__ == "__main__":
    sys.exit(main())
