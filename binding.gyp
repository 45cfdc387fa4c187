{
  "targets": [
    {
      "target_name": "tess_crc32c",
      "sources": ["native/crc32c.c"],
      "cflags": ["-O3", "-std=gnu11"],
      "cflags!": ["-O2"]
    }
  ]
}
