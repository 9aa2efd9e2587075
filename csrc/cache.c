/*
 * cache.c -- the sizes of the machine's caches, and the budgets and tuning
 * the kernels' plans take from them (see fastbn.h: fbn_init,
 * fbn_set_tuning).
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Detected sizes in bytes (0: unknown; fbn_init fills them), and sizes
 * forced for tests and measurements (-1: the detected one). */
static long long fbn_cache[3];
static long long fbn_cache_forced[3] = {-1, -1, -1};
/* Tuning: -1 means "from the caches" (see fbn_budget). */
static long long fbn_tune_nt = -1, fbn_tune_fuse = -1, fbn_tune_tile = -1;
/* Problems with fewer values run on the caller alone; calls that move
 * fewer bytes do not wake sleeping helpers (tunable for tests). */
long long fbn_serial_max = FBN_SERIAL_MAX;
long long fbn_wake_min = FBN_WAKE_BYTES;

#if defined(__linux__)
#include <stdio.h>
static long long fbn_sysfs_size(const char *path)
{
    char buf[64];
    long long v = 0;
    char unit = 0;
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    if (fgets(buf, sizeof buf, f) == NULL || sscanf(buf, "%lld%c", &v, &unit) < 1)
        v = 0;
    fclose(f);
    if (unit == 'K')
        v <<= 10;
    else if (unit == 'M')
        v <<= 20;
    return v;
}
#elif defined(__APPLE__)
#include <sys/sysctl.h>
static long long fbn_sysctl(const char *name)
{
    long long v = 0;
    size_t len = sizeof v;
    if (sysctlbyname(name, &v, &len, NULL, 0) != 0)
        return 0;
    return v;
}
#elif defined(_WIN32)
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#endif

void fbn_init(void)
{
    long long c[3] = {0, 0, 0};
#if defined(__linux__)
    int i;
    for (i = 0; i < 8; i++) {
        char path[96], type[32] = "";
        long long level;
        FILE *f;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/type", i);
        f = fopen(path, "r");
        if (f == NULL)
            break;
        if (fgets(type, sizeof type, f) == NULL)
            type[0] = 0;
        fclose(f);
        if (strncmp(type, "Instruction", 11) == 0)
            continue;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", i);
        level = fbn_sysfs_size(path);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        if (level >= 1 && level <= 3)
            c[level - 1] = fbn_sysfs_size(path);
    }
#elif defined(__APPLE__)
    /* Apple silicon: the performance cores' L2 is shared by a cluster */
    long long per = fbn_sysctl("hw.perflevel0.cpusperl2");
    c[0] = fbn_sysctl("hw.perflevel0.l1dcachesize");
    c[1] = fbn_sysctl("hw.perflevel0.l2cachesize");
    if (c[1] > 0 && per > 1)
        c[1] /= per;
    if (c[0] == 0)
        c[0] = fbn_sysctl("hw.l1dcachesize");
    if (c[1] == 0)
        c[1] = fbn_sysctl("hw.l2cachesize");
    c[2] = fbn_sysctl("hw.l3cachesize");
#elif defined(_WIN32)
    /* one entry per relation of every logical processor: ask the size first
     * (large machines have far more than any fixed buffer holds) */
    SYSTEM_LOGICAL_PROCESSOR_INFORMATION *info = NULL;
    DWORD len = 0, i;
    if (!GetLogicalProcessorInformation(NULL, &len) &&
        GetLastError() == ERROR_INSUFFICIENT_BUFFER && len > 0 &&
        (info = (SYSTEM_LOGICAL_PROCESSOR_INFORMATION *)malloc(len)) != NULL &&
        GetLogicalProcessorInformation(info, &len))
        for (i = 0; i < len / sizeof info[0]; i++)
            if (info[i].Relationship == RelationCache &&
                info[i].Cache.Type != CacheInstruction && info[i].Cache.Level >= 1 &&
                info[i].Cache.Level <= 3 && c[info[i].Cache.Level - 1] == 0)
                c[info[i].Cache.Level - 1] = (long long)info[i].Cache.Size;
    free(info);
#endif
    memcpy(fbn_cache, c, sizeof c);
    fbn_isa_init();
}

/* The size of cache level i+1 in effect: forced, else detected. */
static long long fbn_cache_size(int i)
{
    return fbn_cache_forced[i] >= 0 ? fbn_cache_forced[i] : fbn_cache[i];
}

void fbn_cache_sizes(long long *l1, long long *l2, long long *l3)
{
    *l1 = fbn_cache_size(0);
    *l2 = fbn_cache_size(1);
    *l3 = fbn_cache_size(2);
}

void fbn_set_cache_sizes(long long l1, long long l2, long long l3)
{
    fbn_cache_forced[0] = l1 < 0 ? -1 : l1;
    fbn_cache_forced[1] = l2 < 0 ? -1 : l2;
    fbn_cache_forced[2] = l3 < 0 ? -1 : l3;
}

/* The budgets in bytes, for a call on nth threads, from the cache sizes in
 * effect (fbn_set_cache_sizes forces them for tests):
 *   nt:   outputs at least this large are written with non-temporal stores:
 *         the L2 caches of the nth threads (a larger output leaves them
 *         anyway, and a streamed line is not read before it is written;
 *         measured on a 2 MB-L2 Xeon: 0.6-0.7x the time of plain stores for
 *         3-12 MB outputs; its L3 kept nothing for us);
 *   fuse: a fused tile's arrays (read and written) must fit in this (3/4
 *         of L2), so that its values are still there for the second pass
 *         (measured for two streams, the backward's dy and x with dx
 *         streamed, on the 2 MB-L2 Xeon, fused / two-phase time at 1 and 2
 *         threads: 0.86-0.94 at 1/2-0.7 of L2, 0.91-0.99 at 0.8, 0.98-1.03
 *         at 0.9, 0.99-1.05 at 1.0 and more: a larger share gains nothing);
 *   tile: a statistics tile reads this much (1/4 of L2).
 * An unknown L2 counts as 1 MB. */
void fbn_budgets(int nth, long long *nt, long long *fuse, long long *tile)
{
    long long l2 = fbn_cache_size(1) > 0 ? fbn_cache_size(1) : (1LL << 20);
    *nt = fbn_tune_nt >= 0 ? fbn_tune_nt : l2 * (nth > 1 ? nth : 1);
    *fuse = fbn_tune_fuse >= 0 ? fbn_tune_fuse : l2 / 4 * 3;
    *tile = fbn_tune_tile >= 0 ? fbn_tune_tile : l2 / 4;
}

void fbn_set_tuning(long long nt_bytes, long long fuse_bytes, long long tile_bytes,
                    long long serial_values, long long wake_bytes)
{
    fbn_tune_nt = nt_bytes < 0 ? -1 : nt_bytes;
    fbn_tune_fuse = fuse_bytes < 0 ? -1 : fuse_bytes;
    fbn_tune_tile = tile_bytes < 0 ? -1 : tile_bytes;
    fbn_serial_max = serial_values < 0 ? FBN_SERIAL_MAX : serial_values;
    fbn_wake_min = wake_bytes < 0 ? FBN_WAKE_BYTES : wake_bytes;
}

void fbn_get_tuning(long long *nt_bytes, long long *fuse_bytes, long long *tile_bytes,
                    long long *serial_values, long long *wake_bytes)
{
    fbn_budgets(1, nt_bytes, fuse_bytes, tile_bytes);
    *serial_values = fbn_serial_max;
    *wake_bytes = fbn_wake_min;
}
