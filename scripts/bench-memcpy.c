/* What one 64 KiB copy costs on this machine, from cache and from memory.
 *
 *   cc -O2 -o /tmp/bench-memcpy scripts/bench-memcpy.c && taskset -c 0 /tmp/bench-memcpy
 *
 * "hot" copies the same 64 KiB again and again (both ends stay in cache);
 * "cold" walks 64 MiB source and destination sets, as a broker does when
 * a prefetch window of 1,000 × 64 KiB bodies is in flight. */
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
    const size_t size = 64 * 1024, slots = 1024;
    const int copies = 20000;
    char *src = malloc(size * slots), *dst = malloc(size * slots);
    if (!src || !dst) return 1;
    memset(src, 1, size * slots);
    memset(dst, 2, size * slots);
    for (int cold = 0; cold < 2; cold++) {
        double t = now();
        for (int i = 0; i < copies; i++) {
            size_t to = cold ? (size_t)(i % slots) * size : 0;
            size_t from = cold ? (size_t)((i * 7 + 3) % slots) * size : size;
            memcpy(dst + to, src + from, size);
        }
        double s = now() - t;
        printf("%s: %.2f us a 64 KiB copy (%.1f GB/s)\n", cold ? "cold, 64 MiB sets" : "hot", s / copies * 1e6,
               (double)size * copies / s / 1e9);
    }
    return dst[5] == 1 ? 0 : 2; /* the copies happened */
}
