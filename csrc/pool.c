/*
 * pool.c -- the caller-runs scheduler of pool.h.
 *
 * One pool per process, helpers started on first use.  A job of n items
 * on t threads is split into t contiguous ranges; thread r (the caller is
 * 0) works through range r, then takes items from the other ranges
 * (stealing).  Every range has its own 64-bit word
 *   slot[r] = (generation << 32) | items of range r claimed so far
 * and a job is published in three steps:
 *   owner: every slot[r] = (g, CLOSED)       no item can be claimed
 *          write fn, ctx, the ranges, done = 0   (release stores)
 *          every slot[r] = (g, 0), then gen = g (seq_cst)
 *   any thread: s = slot[r] (acquire); read the job (acquire loads);
 *          if index(s) < len[r]: CAS slot[r] s -> s + 1, run the item,
 *          done += 1
 * A successful CAS from (g, k) proves that the job fields read before it
 * belong to job g: fields of a later job are written only after the owner
 * closed every slot for it, and an acquire load that saw such a field
 * would make that store visible to the CAS, which would then fail.  An
 * item is claimed once; the owner returns only when every claimed item is
 * done, so `ctx` outlives every use.  Helpers that never arrive cost
 * nothing: the caller takes their ranges.
 *
 * Ranges give locality: a kernel whose second pass splits the same data
 * the same way (or in reverse, FBN_REVERSE) finds most of a thread's part
 * in that thread's own cache.
 *
 * A helper that wakes on the CPU its caller published the job from takes
 * no item and sleeps again at once: the system placed it there because
 * the other CPUs are busy, and it would only take time from the caller.
 *
 * Sleeping: an idle helper spins for spin_us, then sleeps on a condition
 * variable.  It announces itself in `sleepers` (seq_cst) and re-reads
 * `gen` before it waits; the owner stores `gen` (seq_cst) and then reads
 * `sleepers`, so either the owner wakes the helper or the helper sees the
 * new job (no lost wake-up).
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* sched_getcpu */
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#define FBN_POOL 1
#else
#define FBN_POOL 0
#endif

#include "fastbn.h"
#include "pool.h"

enum { FBN_SCHED_POOL = 0, FBN_SCHED_OPENMP = 1 };
static int fbn_sched = FBN_SCHED_POOL;
static const char *const fbn_sched_names[] = {"pool", "openmp"};

static void run_serial(ptrdiff_t n, fbn_item_fn fn, void *ctx, int flags)
{
    ptrdiff_t i;
    int reverse = flags & FBN_REVERSE;
    for (i = 0; i < n; i++)
        fn(ctx, reverse ? n - 1 - i : i);
}

#if FBN_POOL

/* ---- portability: atomics, threads, a clock, a pause -------------------- */

#if defined(_WIN32)
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#include <process.h>
#include <intrin.h>
typedef volatile LONG64 fbn_atomic;
typedef PVOID volatile fbn_atomic_ptr;
#define LD(p) InterlockedCompareExchange64((p), 0, 0)
#define ST(p, v) ((void)InterlockedExchange64((p), (v)))
#define ST_SEQ(p, v) ST(p, v)
#define LD_SEQ(p) LD(p)
#define ADD(p, v) InterlockedExchangeAdd64((p), (v))
static int CAS(fbn_atomic *p, LONG64 *expected, LONG64 desired)
{
    LONG64 old = InterlockedCompareExchange64(p, desired, *expected);
    if (old == *expected)
        return 1;
    *expected = old;
    return 0;
}
#define LDP(p) InterlockedCompareExchangePointer((p), NULL, NULL)
#define STP(p, v) ((void)InterlockedExchangePointer((p), (v)))
typedef SRWLOCK fbn_mutex;
typedef CONDITION_VARIABLE fbn_cond;
#define MUTEX_INIT(m) InitializeSRWLock(m)
#define LOCK(m) AcquireSRWLockExclusive(m)
#define UNLOCK(m) ReleaseSRWLockExclusive(m)
#define COND_INIT(c) InitializeConditionVariable(c)
#define COND_WAIT(c, m) SleepConditionVariableSRW((c), (m), INFINITE, 0)
#define COND_BROADCAST(c) WakeAllConditionVariable(c)
static double now_us(void)
{
    static LARGE_INTEGER freq;
    LARGE_INTEGER t;
    if (freq.QuadPart == 0)
        QueryPerformanceFrequency(&freq);
    QueryPerformanceCounter(&t);
    return (double)t.QuadPart * 1e6 / (double)freq.QuadPart;
}
#if defined(_M_X64) || defined(_M_IX86)
#define PAUSE() _mm_pause()
#else
#define PAUSE() __yield()
#endif
#define YIELD() SwitchToThread()
#else /* POSIX */
#include <pthread.h>
#include <sched.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <signal.h>
#include <time.h>
typedef int64_t fbn_atomic;
typedef void *fbn_atomic_ptr;
#define LD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define ST(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define LD_SEQ(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define ST_SEQ(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)
#define CAS(p, e, d)                                                           \
    __atomic_compare_exchange_n((p), (e), (d), 0, __ATOMIC_ACQ_REL,            \
                                __ATOMIC_ACQUIRE)
#define LDP(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STP(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
typedef pthread_mutex_t fbn_mutex;
typedef pthread_cond_t fbn_cond;
#define MUTEX_INIT(m) pthread_mutex_init((m), NULL)
#define LOCK(m) pthread_mutex_lock(m)
#define UNLOCK(m) pthread_mutex_unlock(m)
#define COND_INIT(c) pthread_cond_init((c), NULL)
#define COND_WAIT(c, m) pthread_cond_wait((c), (m))
#define COND_BROADCAST(c) pthread_cond_broadcast(c)
static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PAUSE() _mm_pause()
#elif defined(__aarch64__) || defined(__arm__)
#define PAUSE() __asm__ __volatile__("yield" ::: "memory")
#else
#define PAUSE() ((void)0)
#endif
#define YIELD() sched_yield()
#endif

/* The CPU the calling thread runs on, -1 where the system does not say. */
#if defined(__linux__)
static int fbn_cpu(void) { return sched_getcpu(); }

/* Moves the calling thread off `cpu` onto the other CPUs it may run on
 * (at once: the kernel migrates a running thread before the call
 * returns), keeping its mask in *saved; 0 if there is no other CPU or the
 * system refuses. */
static int leave_cpu(int cpu, cpu_set_t *saved)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, saved) != 0 || !CPU_ISSET(cpu, saved))
        return 0;
    set = *saved;
    CPU_CLR(cpu, &set);
    return CPU_COUNT(&set) > 0 && sched_setaffinity(0, sizeof set, &set) == 0;
}
#elif defined(_WIN32)
static int fbn_cpu(void) { return (int)GetCurrentProcessorNumber(); }
#else
static int fbn_cpu(void) { return -1; }
#endif

/* ---- the pool ----------------------------------------------------------- */

#define CLOSED ((int64_t)0xFFFFFFFF)
#define GEN(s) ((int64_t)((uint64_t)(s) >> 32))
#define IDX(s) ((s) & CLOSED)
#define MAX_THREADS 256
/* Short jobs (FBN_LIGHT) wake sleeping helpers only within a burst: at
 * least BURST jobs in a row, each begun less than RECENT_NS after the one
 * before ended (back-to-back calls; not a call after other work, whose two
 * phases make a pair). */
#define RECENT_NS 200000
#define BURST 4

typedef struct {
    fbn_atomic s;     /* (generation << 32) | items claimed */
    fbn_atomic begin; /* first item of the range */
    fbn_atomic len;   /* items in the range */
    char pad[64 - 3 * sizeof(fbn_atomic)];
} fbn_slot;

static struct {
    fbn_slot slot[MAX_THREADS];
    fbn_atomic gen;      /* generation of the last job published */
    fbn_atomic nranges;  /* ranges (= threads) of the current job */
    fbn_atomic reverse;  /* ranges are worked through back to front */
    fbn_atomic done;     /* items of the current job completed */
    fbn_atomic_ptr fn;   /* fbn_item_fn of the current job */
    fbn_atomic_ptr ctx;
    fbn_atomic busy;     /* 1 while a caller owns the pool */
    fbn_atomic owner_cpu; /* the CPU the current job's caller published it
                             from (-1: unknown) */
    fbn_atomic sleepers; /* helpers waiting on cond */
    fbn_atomic spin_us;  /* idle spin before sleeping */
    fbn_atomic last_end;  /* when the last job ended (ns, any caller) */
    fbn_atomic streak;    /* jobs that began less than RECENT_NS after the
                             previous one ended, in a row */
    fbn_atomic external;  /* the current job runs on an external team:
                             fastbn's own helpers keep out of it */
    int nworkers;        /* helpers started (under mutex) */
    int64_t max_nr;      /* most ranges any job used (owner only) */
    fbn_mutex mutex;
    fbn_cond cond;
#if defined(__linux__) && FBN_POOL
    /* helper me's thread id (0 until it has started), its CPU mask then,
     * and whether a caller narrowed the mask for the current job */
    fbn_atomic tid[MAX_THREADS];
    cpu_set_t mask[MAX_THREADS];
    fbn_atomic away[MAX_THREADS];
#endif
} P;

#if defined(__linux__) && FBN_POOL
/* Before waking sleeping helpers 1 .. nr-1: their masks without the
 * caller's CPU `cpu`, so that the system wakes them on another CPU (see
 * work_on); each helper restores its own after the job. */
static void keep_helpers_off(int cpu, int64_t nr)
{
    int64_t r;
    for (r = 1; cpu >= 0 && r < nr; r++) {
        pid_t tid = (pid_t)LD_SEQ(&P.tid[r]);
        cpu_set_t set;
        if (tid == 0 || !CPU_ISSET(cpu, &P.mask[r]))
            continue;
        set = P.mask[r];
        CPU_CLR(cpu, &set);
        if (CPU_COUNT(&set) > 0 && sched_setaffinity(tid, sizeof set, &set) == 0)
            ST(&P.away[r], 1);
    }
}
#endif

/* Claims and runs items of range r of job `gen` until none is left there.
 * Returns 0 when the job is gone (a newer one was published). */
static int work_range(int64_t gen, int64_t r)
{
    fbn_slot *sl = &P.slot[r];
    for (;;) {
        int64_t s = LD(&sl->s);
        int64_t k, len, begin;
        fbn_item_fn fn;
        void *ctx;
        int rev;
        if (GEN(s) != gen)
            return 0;
        k = IDX(s);
        if (k == CLOSED) {
            PAUSE();
            continue;
        }
        fn = (fbn_item_fn)LDP(&P.fn);
        ctx = LDP(&P.ctx);
        begin = LD(&sl->begin);
        len = LD(&sl->len);
        rev = (int)LD(&P.reverse);
        if (r >= LD(&P.nranges) || k >= len)
            return 1;
        if (CAS(&sl->s, &s, s + 1)) {
            fn(ctx, (ptrdiff_t)(rev ? begin + len - 1 - k : begin + k));
            ADD(&P.done, 1);
        }
    }
}

/* Thread `me` (0: the owner) of job `gen`: its own range, then the others'.
 * A helper woken onto the CPU its caller published the job from would take
 * its time from the caller.  The system puts it there when it sees no idle
 * CPU: another library's threads spinning on the others, or (in a virtual
 * machine) an idle vCPU that the host has descheduled, which the kernel
 * does not count as idle, so that after a pause every wake-up landed on the
 * caller's CPU, waited there for the caller's time slice, and the second
 * core went unused (measured: 2 threads no faster than 1 after 10 ms idle).
 * On Linux the caller narrows sleeping helpers' CPU masks before it wakes
 * them (keep_helpers_off), and a helper that still finds itself on the
 * caller's CPU moves itself (leave_cpu), for this job; where the other
 * CPUs are busy it shares one with their threads, and the caller never
 * waits for an item the helper has not claimed.  Elsewhere, or with no
 * other CPU, it takes nothing (returns 0). */
static int work_on(int64_t gen, int64_t me)
{
    int64_t nr = LD(&P.nranges), i, cpu;
#if defined(__linux__)
    cpu_set_t saved;
    int moved = 0;
#endif
    if (GEN(LD(&P.slot[0].s)) != gen || me >= nr)
        return 1;
    if (me > 0 && LD(&P.external)) /* another library's team runs this job */
        return 1;
    cpu = LD(&P.owner_cpu);
    if (me > 0 && cpu >= 0 && fbn_cpu() == cpu) {
#if defined(__linux__)
        moved = leave_cpu((int)cpu, &saved);
        if (!moved)
#endif
            return 0;
    }
    for (i = 0; i < nr; i++)
        if (!work_range(gen, (me + i) % nr))
            break;
#if defined(__linux__)
    if (moved)
        sched_setaffinity(0, sizeof saved, &saved);
#endif
    return 1;
}

#if defined(_WIN32)
static unsigned __stdcall worker_main(void *arg)
#else
static void *worker_main(void *arg)
#endif
{
    int64_t me = (int64_t)(intptr_t)arg + 1; /* range 0 is the owner's */
    int64_t seen = LD(&P.gen);
    int spin = 1;
#if defined(__linux__) && FBN_POOL
    if (sched_getaffinity(0, sizeof P.mask[me], &P.mask[me]) == 0)
        ST_SEQ(&P.tid[me], (int64_t)syscall(SYS_gettid));
#endif
    for (;;) {
        double t0 = now_us();
        long spins = 0;
        int64_t g;
        /* spin a while for the next job (not when the last one found this
         * thread on its caller's CPU: the spin would take it from it) */
        while ((g = LD(&P.gen)) == seen && spin) {
            PAUSE();
            if ((++spins & 63) == 0 && now_us() - t0 > (double)LD(&P.spin_us))
                break;
        }
        if (g == seen) {
            /* sleep until a job newer than `seen` is published */
            LOCK(&P.mutex);
            ADD(&P.sleepers, 1);
            while (LD_SEQ(&P.gen) == seen)
                COND_WAIT(&P.cond, &P.mutex);
            ADD(&P.sleepers, -1);
            UNLOCK(&P.mutex);
        }
        seen = LD(&P.gen);
        spin = work_on(seen, me);
#if defined(__linux__) && FBN_POOL
        if (LD(&P.away[me])) { /* the caller narrowed the mask: restore it */
            ST(&P.away[me], 0);
            sched_setaffinity(0, sizeof P.mask[me], &P.mask[me]);
        }
#endif
    }
#if defined(_WIN32)
    return 0;
#else
    return NULL;
#endif
}

/* Starts helpers until there are `want` (fewer if the system refuses). */
static void start_workers(int want)
{
    if (want > MAX_THREADS - 1)
        want = MAX_THREADS - 1;
    LOCK(&P.mutex);
    while (P.nworkers < want) {
        int ok;
#if defined(_WIN32)
        uintptr_t h = _beginthreadex(NULL, 512 * 1024, worker_main,
                                     (void *)(intptr_t)P.nworkers, 0, NULL);
        ok = h != 0;
        if (ok)
            CloseHandle((HANDLE)h);
#else
        pthread_t t;
        pthread_attr_t attr;
        sigset_t all, old;
        /* helpers never take signals (Python handles them on the main
         * thread) and need little stack (kernels keep small L1 tiles) */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 512 * 1024);
        ok = pthread_create(&t, &attr, worker_main, (void *)(intptr_t)P.nworkers) == 0;
        pthread_attr_destroy(&attr);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
#endif
        if (!ok)
            break;
        P.nworkers++;
    }
    UNLOCK(&P.mutex);
}

#if !defined(_WIN32)
/* fork(): the child has only the forking thread.  Its pool starts empty
 * (helpers are started again on first use); no job of the parent is open
 * in it. */
static void atfork_prepare(void) { LOCK(&P.mutex); }
static void atfork_parent(void) { UNLOCK(&P.mutex); }
static void atfork_child(void)
{
    int r;
    int64_t g = LD(&P.gen) + 1;
    MUTEX_INIT(&P.mutex);
    COND_INIT(&P.cond);
    P.nworkers = 0;
    P.max_nr = MAX_THREADS;
    ST(&P.busy, 0);
    ST(&P.sleepers, 0);
    for (r = 0; r < MAX_THREADS; r++)
        ST(&P.slot[r].s, (g << 32) | CLOSED);
    ST(&P.gen, g);
}
#endif

static void pool_init_once(void)
{
    MUTEX_INIT(&P.mutex);
    COND_INIT(&P.cond);
    /* long enough for back-to-back calls (a few us of Python between them)
     * to find the helpers awake, short enough not to keep a core from the
     * next library's threads (a NumPy matmul's) for long */
    ST(&P.spin_us, 50);
#if !defined(_WIN32)
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
#endif
}

#if defined(_WIN32)
static INIT_ONCE pool_once = INIT_ONCE_STATIC_INIT;
static BOOL CALLBACK pool_init_cb(PINIT_ONCE o, PVOID p, PVOID *c)
{
    (void)o; (void)p; (void)c;
    pool_init_once();
    return TRUE;
}
static void pool_init(void) { InitOnceExecuteOnce(&pool_once, pool_init_cb, NULL, NULL); }
#else
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static void pool_init(void) { pthread_once(&pool_once, pool_init_once); }
#endif

/* Counts the job that starts now in the burst of back-to-back jobs; 1 if
 * the burst is long enough for a short job to wake sleeping helpers. */
static int in_burst(void)
{
    int64_t t = (int64_t)(now_us() * 1000.0), s;
    if (t - LD(&P.last_end) < RECENT_NS)
        s = ADD(&P.streak, 1) + 1;
    else {
        s = 1;
        ST(&P.streak, 1);
    }
    return s >= BURST;
}

static void job_ended(void) { ST(&P.last_end, (int64_t)(now_us() * 1000.0)); }

/* ---- an external team (fbn_set_team) ------------------------------------
 * Another OpenMP runtime's threads (PyTorch's, say) run the pool's jobs:
 * `team_run` is that runtime's GOMP_parallel (fn runs on every thread of a
 * team of up to nthreads, the caller being thread 0, and it returns when
 * all are done), `team_tid` its omp_get_thread_num and `team_max` its
 * omp_get_max_threads.  The job is published and claimed exactly as for
 * fastbn's helpers, so the items, their ranges and the results are the
 * same; only the threads differ. */
static fbn_team_run_fn team_run;
static fbn_team_int_fn team_tid, team_max;

static void team_main(void *arg)
{
    int64_t gen = *(const int64_t *)arg, nr = LD(&P.nranges), me, i;
    me = (int64_t)team_tid();
    if (me < 0 || me >= nr)
        return;
    for (i = 0; i < nr; i++)
        if (!work_range(gen, (me + i) % nr))
            return;
}

static void pool_run(ptrdiff_t n, fbn_item_fn fn, void *ctx, int nthreads, int flags)
{
    int64_t zero = 0, gen, r, nr;
    int reverse = flags & FBN_REVERSE;
    fbn_team_run_fn team = team_run;
    pool_init();
    if (team != NULL) { /* the team's threads, not fastbn's helpers */
        int m = team_max();
        if (nthreads > m)
            nthreads = m;
        flags &= ~FBN_LIGHT;
    }
    if (nthreads < 2) {
        run_serial(n, fn, ctx, flags);
        return;
    }
    if (flags & FBN_LIGHT && in_burst())
        flags &= ~FBN_LIGHT;
    if (!CAS(&P.busy, &zero, 1)) { /* another thread's call has the pool */
        run_serial(n, fn, ctx, flags);
        job_ended();
        return;
    }
    if (team == NULL && P.nworkers < nthreads - 1 && !(flags & FBN_LIGHT))
        start_workers(nthreads - 1);
    nr = team != NULL || P.nworkers + 1 >= nthreads ? nthreads : P.nworkers + 1;
    if (nr < 2 || ((flags & FBN_LIGHT) && LD_SEQ(&P.sleepers) >= P.nworkers)) {
        ST(&P.busy, 0); /* no helper, or all asleep and the job is short */
        run_serial(n, fn, ctx, flags);
        job_ended();
        return;
    }
    gen = LD(&P.gen) + 1;
    if (nr > P.max_nr)
        P.max_nr = nr;
    for (r = 0; r < P.max_nr; r++) /* every slot ever opened: stale claims fail */
        ST(&P.slot[r].s, (gen << 32) | CLOSED);
    STP(&P.fn, (void *)fn);
    STP(&P.ctx, ctx);
    ST(&P.nranges, nr);
    ST(&P.reverse, reverse != 0);
    ST(&P.done, 0);
    for (r = 0; r < nr; r++) {
        int64_t b = (int64_t)n * r / nr, e = (int64_t)n * (r + 1) / nr;
        ST(&P.slot[r].begin, b);
        ST(&P.slot[r].len, e - b);
    }
    for (r = 0; r < nr; r++)
        ST_SEQ(&P.slot[r].s, gen << 32);
    ST(&P.owner_cpu, fbn_cpu());
    ST(&P.external, team != NULL);
    ST_SEQ(&P.gen, gen);
    if (team != NULL)
        team(team_main, &gen, (unsigned)nr, 0);
    else if (!(flags & FBN_LIGHT) && LD_SEQ(&P.sleepers) > 0) {
#if defined(__linux__) && FBN_POOL
        keep_helpers_off((int)LD(&P.owner_cpu), nr);
#endif
        LOCK(&P.mutex);
        COND_BROADCAST(&P.cond);
        UNLOCK(&P.mutex);
    }
    if (team == NULL)
        work_on(gen, 0);
    /* every item is claimed; wait for those that helpers are running */
    {
        long spins = 0;
        while (LD(&P.done) < (int64_t)n) {
            PAUSE();
            if (++spins > 4096)
                YIELD();
        }
    }
    job_ended();
    ST(&P.busy, 0);
}

#endif /* FBN_POOL */

/* ---- the interface ------------------------------------------------------ */

void fbn_parallel_for(ptrdiff_t n, fbn_item_fn fn, void *ctx, int nthreads,
                      int flags)
{
    if (n <= 0)
        return;
    if (nthreads > n)
        nthreads = (int)(n < 1024 ? n : 1024);
#if FBN_POOL
    if (nthreads > 1 && n < CLOSED) {
        if (fbn_sched == FBN_SCHED_POOL) {
            pool_run(n, fn, ctx, nthreads, flags);
        } else {
            ptrdiff_t i;
            int reverse = flags & FBN_REVERSE;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
            for (i = 0; i < n; i++)
                fn(ctx, reverse ? n - 1 - i : i);
        }
        return;
    }
#else
    (void)nthreads;
#endif
    run_serial(n, fn, ctx, flags);
}

int fbn_set_scheduler(const char *name)
{
    int i;
    for (i = 0; i < 2; i++)
        if (name != NULL && strcmp(name, fbn_sched_names[i]) == 0) {
            if (i == FBN_SCHED_OPENMP && !FBN_POOL)
                return FBN_EINVAL;
            fbn_sched = i;
            return FBN_OK;
        }
    return FBN_EINVAL;
}

const char *fbn_scheduler(void)
{
#if FBN_POOL
    return fbn_sched_names[fbn_sched];
#else
    return "serial";
#endif
}

long fbn_set_spin_us(long us)
{
#if FBN_POOL
    long old;
    pool_init();
    old = (long)LD(&P.spin_us);
    ST(&P.spin_us, (int64_t)(us < 0 ? 0 : us));
    return old;
#else
    (void)us;
    return 0;
#endif
}

int fbn_set_team(fbn_team_run_fn run, fbn_team_int_fn tid, fbn_team_int_fn max)
{
#if FBN_POOL
    if ((run == NULL) != (tid == NULL) || (run == NULL) != (max == NULL))
        return FBN_EINVAL;
    pool_init();
    team_tid = tid;
    team_max = max;
    team_run = run;
    return FBN_OK;
#else
    (void)tid;
    (void)max;
    return run == NULL ? FBN_OK : FBN_EINVAL;
#endif
}

int fbn_pool_threads(void)
{
#if FBN_POOL
    int n;
    pool_init();
    LOCK(&P.mutex);
    n = P.nworkers;
    UNLOCK(&P.mutex);
    return n;
#else
    return 0;
#endif
}
