import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Integration tests start daemons on their own ports and data dirs; the machine has 2 cores.
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 120_000,
    reporters: ['default'],
    // Spare extent groups (src/cvm/vdisk/spares.ts): two per disk, not the default 1 GiB, in the
    // many short-lived clusters of the suite; test hosts pass it on to their daemons
    env: { TESS_SPARE_EGROUPS: process.env.TESS_SPARE_EGROUPS ?? '2' },
  },
})
