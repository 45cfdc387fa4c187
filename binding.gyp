{
  "targets": [
    {
      "target_name": "tess_crc32c",
      "sources": ["native/crc32c.c"],
      "cflags": ["-O3", "-std=gnu11"],
      "cflags!": ["-O2"]
    },
    {
      "target_name": "tess_io",
      "sources": ["native/io.c", "native/sender.c", "native/xts.c"],
      "cflags": ["-O2", "-std=gnu11", "-Wall"],
      "libraries": ["-lpthread"]
    },
    {
      "target_name": "tess-logger",
      "type": "executable",
      "sources": ["native/logger.c"],
      "cflags": ["-O2", "-std=gnu11", "-Wall"]
    },
    {
      "target_name": "tess_mount",
      "sources": ["native/mount.c"],
      "cflags": ["-O2", "-std=gnu11", "-Wall"]
    }
  ]
}
