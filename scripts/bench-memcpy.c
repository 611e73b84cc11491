/* What one 64 KiB copy costs on this machine, by how much memory the
 * copies walk: from cache, and from memory.
 *
 *   cc -O2 -o /tmp/bench-memcpy scripts/bench-memcpy.c && taskset -c 0 /tmp/bench-memcpy
 *
 * Each line copies 64 KiB blocks between a source and a destination set of
 * the size given (both ends walk their set): "64 KiB" is the same block
 * again and again (both ends stay in cache); 64 MiB is what a broker walks
 * when a prefetch window of 1,000 × 64 KiB bodies is in flight. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    const size_t size = 64 * 1024, most = 1024;
    const size_t sets[] = {1, 4, 16, 32, 64, 128, 256, 512, 1024};
    const int copies = 20000;
    char *src = malloc(size * most), *dst = malloc(size * most);
    if (!src || !dst) return 1;
    memset(src, 1, size * most);
    memset(dst, 2, size * most);
    for (size_t k = 0; k < sizeof sets / sizeof sets[0]; k++) {
        size_t slots = sets[k];
        double t = now();
        for (int i = 0; i < copies; i++) {
            size_t to = (size_t)(i % slots) * size;
            size_t from = (size_t)((i * 7 + 3) % slots) * size;
            memcpy(dst + to, src + from, size);
        }
        double s = now() - t;
        printf("sets of %6zu KiB: %6.2f us a 64 KiB copy (%.1f GB/s)\n", slots * size / 1024, s / copies * 1e6,
               (double)size * copies / s / 1e9);
    }
    return dst[5] == 1 ? 0 : 2; /* the copies happened */
}
