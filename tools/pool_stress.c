/*
 * pool_stress.c -- the caller-runs pool (csrc/pool.c) under stress, for
 * ThreadSanitizer (tools/check_memory.sh builds it with
 * -fsanitize=thread and runs it; any report fails the check).
 *
 * Several caller threads run jobs at once (one holds the pool, the others
 * run theirs alone), with helpers that spin, sleep between jobs (spin 0)
 * or arrive late, forward and reverse order, 1 to 4 threads, empty and
 * one-item jobs.  Every item adds its index into its own slot; each job
 * checks that every slot was written exactly once before the call
 * returned, so a lost, doubled or late item is an error even without
 * TSan.  Exit status 0 on success.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fastbn.h"
#include "pool.h"

#define CALLERS 4
#define JOBS 400
#define MAX_ITEMS 300

typedef struct {
    long *slot;
    long salt;
} job;

static void item(void *arg, ptrdiff_t i)
{
    job *j = (job *)arg;
    volatile long spin = 0;
    long k;
    for (k = 0; k < (i % 7) * 50; k++) /* uneven items */
        spin += k;
    j->slot[i] += j->salt + (long)i;
}

static int failures = 0;
static pthread_mutex_t fail_lock = PTHREAD_MUTEX_INITIALIZER;

static void *caller(void *arg)
{
    long id = (long)(size_t)arg, r;
    long *slot = malloc(sizeof(long) * MAX_ITEMS);
    unsigned seed = (unsigned)id * 2654435761u + 1;
    for (r = 0; r < JOBS; r++) {
        job j;
        ptrdiff_t n, i;
        seed = seed * 1103515245u + 12345u;
        n = (ptrdiff_t)((seed >> 8) % MAX_ITEMS); /* 0 .. MAX_ITEMS-1 */
        memset(slot, 0, sizeof(long) * MAX_ITEMS);
        j.slot = slot;
        j.salt = id * 100000 + r;
        fbn_parallel_for(n, item, &j, 1 + (int)((seed >> 4) % 4),
                         (seed >> 12) & 1 ? FBN_REVERSE : FBN_FORWARD);
        for (i = 0; i < MAX_ITEMS; i++) {
            long want = i < n ? j.salt + i : 0;
            if (slot[i] != want) {
                pthread_mutex_lock(&fail_lock);
                if (failures++ < 10)
                    fprintf(stderr, "caller %ld job %ld: item %td of %td is %ld, "
                            "expected %ld\n", id, r, i, n, slot[i], want);
                pthread_mutex_unlock(&fail_lock);
            }
        }
    }
    free(slot);
    return NULL;
}

int main(void)
{
    static const long spins[] = {50, 0, 2000};
    pthread_t t[CALLERS];
    long c;
    size_t s;
    for (s = 0; s < sizeof spins / sizeof spins[0]; s++) {
        fbn_set_spin_us(spins[s]);
        for (c = 0; c < CALLERS; c++)
            pthread_create(&t[c], NULL, caller, (void *)(size_t)c);
        for (c = 0; c < CALLERS; c++)
            pthread_join(t[c], NULL);
    }
    if (failures) {
        fprintf(stderr, "pool_stress: %d wrong items\n", failures);
        return 1;
    }
    printf("pool_stress: %d callers x %d jobs x %zu spin settings, all items "
           "exactly once (%d helper threads)\n", CALLERS, JOBS,
           sizeof spins / sizeof spins[0], fbn_pool_threads());
    return 0;
}
