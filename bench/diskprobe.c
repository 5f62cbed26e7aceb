/* The guest side of bench/disk.py: one process, O_DIRECT, the guest's own clock.
 *
 *   diskprobe DEV MIB SECONDS
 *
 * Writes MIB MiB sequentially in 1 MiB requests (then fdatasync), reads them back the
 * same way, then reads 4 KiB blocks at random offsets within them for SECONDS; prints one
 * line: DISKPROBE seq_write_MBps=.. seq_read_MBps=.. rand_read_4k_iops=..
 * One process, so the VMM's I/O path is measured rather than the guest's process starts.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BIG (1 << 20)
#define SMALL 4096

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: diskprobe DEV MIB SECONDS\n");
        return 2;
    }
    long mib = atol(argv[2]);
    double seconds = atof(argv[3]);
    int fd = open(argv[1], O_RDWR | O_DIRECT);
    void *buf;
    if (fd < 0 || mib <= 0 || posix_memalign(&buf, SMALL, BIG) != 0) {
        perror(argv[1]);
        return 1;
    }
    memset(buf, 0x5a, BIG);

    double start = now();
    for (long i = 0; i < mib; i++)
        if (pwrite(fd, buf, BIG, (off_t)i * BIG) != BIG) { perror("write"); return 1; }
    if (fdatasync(fd) != 0) { perror("fdatasync"); return 1; }
    double write_s = now() - start;

    start = now();
    for (long i = 0; i < mib; i++)
        if (pread(fd, buf, BIG, (off_t)i * BIG) != BIG) { perror("read"); return 1; }
    double read_s = now() - start;

    uint64_t x = 88172645463325252ULL, blocks = (uint64_t)mib * (BIG / SMALL);
    long ops = 0;
    double end, elapsed;
    start = now();
    end = start + seconds;
    while ((elapsed = now()) < end) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;  /* xorshift64 */
        if (pread(fd, buf, SMALL, (off_t)(x % blocks) * SMALL) != SMALL) { perror("random read"); return 1; }
        ops++;
    }
    elapsed -= start;
    double mb = (double)mib * BIG / 1e6;
    printf("DISKPROBE seq_write_MBps=%.2f seq_read_MBps=%.2f rand_read_4k_iops=%.1f\n",
           mb / write_s, mb / read_s, (double)ops / elapsed);
    return 0;
}
