# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, nonecheck=False, cdivision=True
"""The boundary between NumPy and the C kernels (csrc/fastbn.h).

Every function here takes arrays that the Python layer has already checked:
C-contiguous, of the sizes given by the (outer, C, inner) view, per-channel
arrays of x's dtype (float32 for the half types), optional ones None.  It
passes the element type to C as data (a dtype code), releases the GIL,
calls the kernel and raises on a status code.
"""
cimport numpy as cnp
import numpy as np

cnp.import_array()
fbn_init()

cdef extern from "numpy/ndarraytypes.h":
    int NPY_HALF      # float16
    int NPY_USERDEF   # first type number of a dtype registered at run time

# (array arguments are declared void *: fastbn.h gives their C types)
cdef extern from "fastbn.h" nogil:
    int FBN_OK, FBN_ENOMEM  # (status codes)
    int FBN_FLOAT32, FBN_FLOAT64, FBN_FLOAT16, FBN_BFLOAT16  # (dtype codes)
    const char *fbn_strerror(int status)
    int fbn_omp_max_threads()
    long fbn_openmp_version()
    const char *fbn_build_info()
    int fbn_set_simd(const char *name)
    void fbn_init()
    void fbn_cache_sizes(long long *l1, long long *l2, long long *l3)
    void fbn_set_cache_sizes(long long l1, long long l2, long long l3)
    void fbn_set_tuning(long long nt_bytes, long long fuse_bytes, long long tile_bytes,
                        long long serial_values, long long wake_bytes)
    void fbn_get_tuning(long long *nt_bytes, long long *fuse_bytes, long long *tile_bytes,
                        long long *serial_values, long long *wake_bytes)
    int fbn_set_scheduler(const char *name)
    const char *fbn_scheduler()
    long fbn_set_spin_us(long us)
    int fbn_pool_threads()
    ctypedef void (*fbn_team_run_fn)(void (*fn)(void *), void *data, unsigned nthreads,
                                     unsigned flags)
    ctypedef int (*fbn_team_int_fn)()
    int fbn_set_team(fbn_team_run_fn run, fbn_team_int_fn tid, fbn_team_int_fn max)
    void fbn_describe_plan(Py_ssize_t groups, Py_ssize_t outer, Py_ssize_t C,
                           Py_ssize_t inner, int elsize, int nstat, int nextra,
                           int nout, int ops, int nthreads, long long *fields)
    const char *fbn_simd()
    const char *fbn_simd_available()

    ctypedef struct fbn_renorm:
        const double *mean
        const double *sigma
        double rmax
        double dmax
    int fbn_moments(int dtype, const void *x, Py_ssize_t outer, Py_ssize_t C,
                    Py_ssize_t inner, void *mean, void *m2, int nthreads)
    int fbn_train_forward(int dtype, const void *x, Py_ssize_t groups, Py_ssize_t outer,
                          Py_ssize_t C, Py_ssize_t inner, const void *gamma,
                          const void *beta, const void *z, double eps, int act,
                          const fbn_renorm *rn, void *y, void *mean_out,
                          void *mean_lo_out, void *invstd_out, void *var_out,
                          void *r_out, void *d_out, int nthreads)
    int fbn_infer_forward(int dtype, const void *x, Py_ssize_t outer, Py_ssize_t C,
                          Py_ssize_t inner, const void *mean, const void *var,
                          const void *gamma, const void *beta, const void *z,
                          double eps, int act, void *y, int nthreads)
    int fbn_apply(int dtype, const void *x, Py_ssize_t outer, Py_ssize_t C,
                  Py_ssize_t inner, const void *mean, const void *invstd,
                  const void *gamma, const void *beta, const void *z, int act, void *y,
                  int nthreads)
    int fbn_backward_reduce(int dtype, const void *dy, const void *x, const void *y,
                            int act, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                            const void *mean, void *sum_dy, void *sum_dyxmu,
                            int nthreads)
    int fbn_backward_apply(int dtype, const void *dy, const void *x, const void *y,
                           int act, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                           const void *mean, const void *invstd, const void *gamma,
                           const void *sum_dy, const void *sum_dyxmu, double count,
                           int training, void *dx, void *dz, int nthreads)
    int fbn_backward(int dtype, const void *dy, const void *x, const void *y, int act,
                     Py_ssize_t groups, Py_ssize_t outer, Py_ssize_t C,
                     Py_ssize_t inner, const void *mean, const void *invstd,
                     const void *gamma, const void *beta, const void *mean_lo,
                     const void *r, const void *d, int training, void *dx, void *dz,
                     void *dgamma, void *dbeta, int nthreads)
    int fbn_colstats(int dtype, const void *x, Py_ssize_t n, Py_ssize_t p, int colmajor,
                     const void *w, void *count, void *mean, void *m2, int nthreads)
    int fbn_standardize(int dtype, const void *x, Py_ssize_t n, Py_ssize_t p,
                        int colmajor, const void *mean, const void *scale, int inverse,
                        void *y, int *has_inf, int nthreads)

cdef inline void *_ptr(object a):
    """Data pointer of a checked array, NULL for None."""
    if a is None:
        return NULL
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline object _empty(Py_ssize_t n, int typenum, Py_ssize_t g=-1):
    """A new array of n elements, or of shape (g, n) for g >= 0."""
    cdef cnp.npy_intp dims[2]
    dims[0] = g
    dims[1] = n
    return cnp.PyArray_EMPTY(1 + (g >= 0), &dims[g < 0], typenum, 0)


cdef int _bf16_num = -1  # bfloat16's type number (registered at run time) once seen
cdef int F64 = cnp.NPY_FLOAT64  # (a short name: the statistics' type)

def is_bfloat16(dt):
    """True if the NumPy dtype ``dt`` is bfloat16 (ml_dtypes', JAX's, ...),
    told by its name and size without importing ml_dtypes."""
    global _bf16_num
    if dt.num == _bf16_num or (dt.itemsize == 2 and dt.name == "bfloat16"
                               and dt.num >= NPY_USERDEF):
        _bf16_num = dt.num
        return True
    return False


cdef inline int _typenum_kind(int t, object dt) except -2:
    """The kernels' dtype code (FBN_FLOAT32 ...) of type number t (dtype dt;
    None: bfloat16 only once seen), -1 for another type."""
    if t == cnp.NPY_FLOAT32:
        return FBN_FLOAT32
    if t == cnp.NPY_FLOAT64:
        return FBN_FLOAT64
    if t == NPY_HALF:
        return FBN_FLOAT16
    if t == _bf16_num or (t >= NPY_USERDEF and dt is not None and is_bfloat16(dt)):
        return FBN_BFLOAT16
    return -1


cdef inline int _kind(object x) except -1:
    """The kernels' dtype code of the array x."""
    cdef cnp.ndarray a = <cnp.ndarray>x
    cdef int k = _typenum_kind(cnp.PyArray_TYPE(a), a.dtype)
    if k < 0:
        raise TypeError(f"fastbn kernels take float32, float64, float16 or "
                        f"bfloat16, got {x.dtype}")
    return k


cdef inline int _stat_typenum(int k, object x):
    """Type number of the per-channel arrays: x's, float32 for half x."""
    return cnp.NPY_FLOAT32 if k >= FBN_FLOAT16 else cnp.PyArray_TYPE(<cnp.ndarray>x)


cdef int _raise(int status) except -1:
    err = MemoryError if status == FBN_ENOMEM else ValueError
    raise err(f"fastbn: {fbn_strerror(status).decode()}")


cdef inline int _check(int status) except -1 nogil:
    """Raises (taking the GIL) on a kernel's error status."""
    if status != FBN_OK:
        with gil:
            _raise(status)
    return 0


def omp_max_threads():
    """omp_get_max_threads() of the calling thread (1 without OpenMP)."""
    return fbn_omp_max_threads()


def openmp_version():
    """The _OPENMP version the kernels were compiled with (0: no OpenMP)."""
    return fbn_openmp_version()


def build_info():
    """Compiler and SIMD baseline of the kernels, e.g. 'gcc 12.2.0; SSE2'."""
    return fbn_build_info().decode()


def set_simd(str name):
    """Choose the kernels' instruction set: 'auto', 'baseline', 'avx2',
    'avx512' or 'avx512bf16' (AVX-512 whose bfloat16 kernels narrow with
    VCVTNEPS2BF16).  Raises ValueError if it is not available on this CPU/build."""
    if fbn_set_simd(name.encode()) != FBN_OK:
        raise ValueError(f"FASTBN_SIMD={name!r} is not available here; choose one of "
                         f"'auto', {', '.join(repr(s) for s in simd_available())}")


def plain(a, bint writeable=False):
    """True if `a` is exactly a numpy.ndarray of a kernel dtype (bfloat16
    once seen), native, C-contiguous, aligned (and writeable if asked): the
    kernels take it as it is (fastbn._checks handles every other case)."""
    if type(a) is not cnp.ndarray:
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef int t = cnp.PyArray_TYPE(arr)
    cdef int need = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
    if writeable:
        need |= cnp.NPY_ARRAY_WRITEABLE
    return (_typenum_kind(t, None) >= 0 and cnp.PyArray_ISNOTSWAPPED(arr)
            and (cnp.PyArray_FLAGS(arr) & need) == need)


def partial_overlap(a, b):
    """True if the C-contiguous arrays a and b share memory without being the
    same block (same start and size): in place is fine, a shifted overlap
    is not."""
    cdef char *pa = <char *>_ptr(a), *pb = <char *>_ptr(b)
    cdef Py_ssize_t na = cnp.PyArray_NBYTES(a), nb = cnp.PyArray_NBYTES(b)
    if na == 0 or nb == 0 or (pa == pb and na == nb):
        return False
    return pa < pb + nb and pb < pa + na


# The settings forced by set_tuning and set_cache_sizes (None: the default).
_forced = dict.fromkeys(("nt", "fuse", "tile", "serial", "wake", "l1", "l2", "l3"))


cdef tuple _force(tuple names, tuple values):
    """Records the forced settings (None: default); returns the previous
    ones as a dict and the new values for C (-1: default)."""
    old = {k: _forced[k] for k in names}
    _forced.update(zip(names, values))
    return old, [-1 if v is None else v for v in values]


def set_tuning(nt=None, fuse=None, tile=None, serial=None, wake=None):
    """Force the thresholds of fbn_set_tuning (csrc/fastbn.h) for tests and
    measurements; None (or < 0): the default.  Plans change, bits do not.
    Returns the previous settings: ``set_tuning(**old)`` restores them."""
    old, v = _force(("nt", "fuse", "tile", "serial", "wake"),
                    tuple(None if v is None or v < 0 else int(v)
                          for v in (nt, fuse, tile, serial, wake)))
    fbn_set_tuning(v[0], v[1], v[2], v[3], v[4])
    return old


def tuning():
    """The thresholds in effect: {"nt", "fuse", "tile", "serial", "wake"}."""
    cdef long long a, b, c, d, e
    fbn_get_tuning(&a, &b, &c, &d, &e)
    return {"nt": a, "fuse": b, "tile": c, "serial": d, "wake": e}


def cache_sizes():
    """(L1d, L2, L3) sizes in bytes as the kernels see them (0: unknown)."""
    cdef long long a, b, c
    fbn_cache_sizes(&a, &b, &c)
    return a, b, c


def set_cache_sizes(l1=None, l2=None, l3=None):
    """Plan as on a CPU with these cache sizes in bytes (L1d and L2 per
    core, L3 as a core sees it; None: detected), for tests and measurements:
    plans change, bits do not.  Set while no kernel runs.  Returns the
    previous forced sizes: ``set_cache_sizes(**old)`` restores them."""
    for name, v in zip(("l1", "l2", "l3"), (l1, l2, l3)):
        if v is not None and (not isinstance(v, int) or v < 0):
            raise ValueError(f"{name} must be None or a size in bytes >= 0, got {v!r}")
    old, v = _force(("l1", "l2", "l3"), (l1, l2, l3))
    fbn_set_cache_sizes(v[0], v[1], v[2])
    return old


def set_scheduler(str name):
    """Schedule the kernels' work with the caller-runs "pool" (default) or
    an "openmp" parallel loop (for comparison).  Returns the previous one."""
    old = scheduler()
    if fbn_set_scheduler(name.encode()) != FBN_OK:
        raise ValueError(f"scheduler must be 'pool' or 'openmp' (with OpenMP), "
                         f"got {name!r}")
    return old


def scheduler():
    """The active scheduler: "pool", "openmp" or "serial" (no OpenMP)."""
    return fbn_scheduler().decode()


def set_spin_us(long us):
    """How long idle pool helpers spin before sleeping, in microseconds;
    returns the previous value."""
    return fbn_set_spin_us(us)


def set_team(size_t run=0, size_t tid=0, size_t max_threads=0):
    """Run the pool's jobs on another OpenMP runtime's team (fbn_set_team:
    the addresses of its GOMP_parallel, omp_get_thread_num and
    omp_get_max_threads; all 0: fastbn's own helpers).  Set while idle."""
    if fbn_set_team(<fbn_team_run_fn>run, <fbn_team_int_fn>tid,
                    <fbn_team_int_fn>max_threads) != FBN_OK:
        raise ValueError("set_team needs all three addresses or none (and a "
                         "build with OpenMP)")


_PLAN_OPS = {  # op: (arrays the reductions read, arrays only the elementwise
               # pass reads, arrays written, 1 = reductions | 2 = elementwise)
    "moments": (1, 0, 0, 1), "train": (1, 0, 1, 3), "train_residual": (1, 1, 1, 3),
    "infer": (1, 0, 1, 2), "backward": (2, 0, 1, 3), "backward_relu": (3, 0, 1, 3),
    "backward_relu_x": (2, 0, 1, 3),  # (the mask from x: dy and x, no y)
    "backward_residual": (3, 0, 2, 3), "backward_reduce": (2, 0, 0, 1),
    "backward_apply": (2, 0, 1, 2),
}
_PLAN_FIELDS = ("channel_last", "threads", "nontemporal", "fused", "tile_channels",
                "tile_chunks", "tiles", "chunks", "row_blocks", "blocks", "fold")


def plan(str op, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner, int itemsize,
         int nthreads, Py_ssize_t groups=1):
    """The work plan the kernel of `op` makes for `groups` ghost batches of
    the (outer, C, inner) view each (see fbn_describe_plan): a dict with
    "strategy" and the plan's fields."""
    cdef long long f[11]
    if op not in _PLAN_OPS:
        raise ValueError(f"op must be one of {sorted(_PLAN_OPS)}, got {op!r}")
    if outer * inner < 1 or C < 1 or groups < 1:
        raise ValueError("plan needs outer*inner >= 1, C >= 1 and groups >= 1")
    nstat, nextra, nout, ops = _PLAN_OPS[op]
    fbn_describe_plan(groups, outer, C, inner, itemsize, nstat, nextra, nout, ops,
                      nthreads, f)
    d = {k: int(f[i]) for i, k in enumerate(_PLAN_FIELDS)}
    d["strategy"] = ("channel-last" if d["channel_last"] else
                     "fused tiles" if d["fused"] else
                     "elementwise blocks" if ops == 2 else
                     "statistics tiles" if ops == 1 else "two-phase tiles")
    return d


def pool_threads():
    """Helper threads the pool has started so far."""
    return fbn_pool_threads()


def simd():
    """Name of the instruction set the kernels use."""
    return fbn_simd().decode()


def simd_available():
    """Instruction sets usable on this CPU with this build."""
    return fbn_simd_available().decode().split()


def moments(x, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner, int nthreads):
    """Per-channel (mean, m2) of x in float64."""
    mean, m2 = _empty(C, F64), _empty(C, F64)
    cdef int k = _kind(x)
    cdef void *px = _ptr(x), *pm = _ptr(mean), *pq = _ptr(m2)
    with nogil:
        _check(fbn_moments(k, px, outer, C, inner, pm, pq, nthreads))
    return mean, m2


def train_forward(x, Py_ssize_t groups, Py_ssize_t outer, Py_ssize_t C,
                  Py_ssize_t inner, gamma, beta, z, double eps, int act, y,
                  int nthreads, bint want_var=False, bint grouped=False, rn=None,
                  bint want_lo=False):
    """Training forward over `groups` ghost batches (1: ordinary batch norm)
    into y with activation code act, renormalised when rn = (running mean,
    sqrt(running_var + eps), rmax, dmax) is given (float64 arrays and
    floats).  Returns (mean, invstd, var64 or None, r or None, d or None,
    mean_lo or None), each of shape (groups, C) when `grouped`, else (C,)
    (mean, invstd and mean_lo float32 for the half types); mean_lo, with
    want_lo, is the low part of the double batch mean (fbn_train_forward's
    mean_lo_out), for the backward's mask from x."""
    cdef int k = _kind(x), typenum = _stat_typenum(k, x)
    cdef Py_ssize_t g = groups if grouped else -1
    mean = _empty(C, typenum, g)
    invstd = _empty(C, typenum, g)
    var = _empty(C, F64, g) if want_var else None
    r, d = (_empty(C, F64, g), _empty(C, F64, g)) if rn is not None else (None, None)
    lo = _empty(C, typenum, g) if want_lo else None
    cdef fbn_renorm crn, *prn = NULL
    if rn is not None:
        crn = fbn_renorm(<double *>_ptr(rn[0]), <double *>_ptr(rn[1]), rn[2], rn[3])
        prn = &crn
    cdef void *px = _ptr(x), *pg = _ptr(gamma), *pb = _ptr(beta), *pz = _ptr(z)
    cdef void *py = _ptr(y), *pm = _ptr(mean), *pi = _ptr(invstd), *pv = _ptr(var)
    cdef void *pr = _ptr(r), *pd = _ptr(d), *pl = _ptr(lo)
    with nogil:
        _check(fbn_train_forward(k, px, groups, outer, C, inner, pg, pb, pz, eps, act,
                                 prn, py, pm, pl, pi, pv, pr, pd, nthreads))
    return mean, invstd, var, r, d, lo


def infer_forward(x, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner, mean, var,
                  gamma, beta, z, double eps, int act, y, int nthreads):
    """Inference forward into y with the given statistics (x's dtype, or
    float32 for the half types) and activation code act."""
    cdef int k = _kind(x)
    cdef void *px = _ptr(x), *pm = _ptr(mean), *pv = _ptr(var), *pg = _ptr(gamma)
    cdef void *pb = _ptr(beta), *pz = _ptr(z), *py = _ptr(y)
    with nogil:
        _check(fbn_infer_forward(k, px, outer, C, inner, pm, pv, pg, pb, pz, eps, act,
                                 py, nthreads))


def apply(x, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner, mean, invstd,
          gamma, beta, z, int act, y, int nthreads):
    """The normalisation into y with float64 mean and invstd and activation
    code act (True: ReLU)."""
    cdef int k = _kind(x)
    cdef void *px = _ptr(x), *pm = _ptr(mean), *pi = _ptr(invstd), *pg = _ptr(gamma)
    cdef void *pb = _ptr(beta), *pz = _ptr(z), *py = _ptr(y)
    with nogil:
        _check(fbn_apply(k, px, outer, C, inner, pm, pi, pg, pb, pz, act, py, nthreads))


def backward_reduce(dy, x, y, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                    mean, int nthreads, int a):
    """Per-channel (sum dy', sum dy'*(x-mean)) in float64; dy' masked by the
    forward's output y for activation code a."""
    sdy, sdyx = _empty(C, F64), _empty(C, F64)
    cdef int k = _kind(x)
    cdef void *pd = _ptr(dy), *px = _ptr(x), *py = _ptr(y), *pm = _ptr(mean)
    cdef void *ps = _ptr(sdy), *pq = _ptr(sdyx)
    with nogil:
        _check(fbn_backward_reduce(k, pd, px, py, a, outer, C, inner, pm, ps, pq,
                                   nthreads))
    return sdy, sdyx


def backward_apply(dy, x, y, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                   mean, invstd, gamma, sum_dy, sum_dyxmu, double count,
                   bint training, dx, dz, int nthreads, int a):
    """dx (and dz) from the reductions (float64 sums over count values); a
    as for backward_reduce."""
    cdef int k = _kind(x)
    cdef void *pd = _ptr(dy), *px = _ptr(x), *py = _ptr(y), *pm = _ptr(mean)
    cdef void *pi = _ptr(invstd), *pg = _ptr(gamma), *ps = _ptr(sum_dy)
    cdef void *pq = _ptr(sum_dyxmu), *pdx = _ptr(dx), *pdz = _ptr(dz)
    with nogil:
        _check(fbn_backward_apply(k, pd, px, py, a, outer, C, inner, pm, pi, pg, ps, pq,
                                  count, training, pdx, pdz, nthreads))


def backward(dy, x, y, int act, Py_ssize_t groups, Py_ssize_t outer, Py_ssize_t C,
             Py_ssize_t inner, mean, invstd, gamma, beta, r, d, bint training, dx, dz,
             int nthreads, mean_lo=None):
    """Fused backward over `groups` ghost batches (1: ordinary batch norm)
    into dx (and dz), dy' masked by y for activation code act (y None: the
    mask recomputed from x with the forward's beta, or None for 0, and its
    mean_lo, or None: the batch means taken again); mean, invstd (and
    mean_lo) hold groups*C values (x's dtype, float32 for the half types),
    r, d (float64) a renormalised forward's or None.  Returns (dgamma,
    dbeta), summed over the groups (float32 for the half types)."""
    cdef int k = _kind(x), typenum = _stat_typenum(k, x)
    dgamma = _empty(C, typenum)
    dbeta = _empty(C, typenum)
    cdef void *pdy = _ptr(dy), *px = _ptr(x), *py = _ptr(y), *pm = _ptr(mean)
    cdef void *pi = _ptr(invstd), *pg = _ptr(gamma), *pr = _ptr(r), *pd = _ptr(d)
    cdef void *pdx = _ptr(dx), *pdz = _ptr(dz), *pdg = _ptr(dgamma), *pdb = _ptr(dbeta)
    cdef void *pb = _ptr(beta), *pl = _ptr(mean_lo)
    with nogil:
        _check(fbn_backward(k, pdy, px, py, act, groups, outer, C, inner, pm, pi, pg, pb,
                            pl, pr, pd, training, pdx, pdz, pdg, pdb, nthreads))
    return dgamma, dbeta


def colstats(x, Py_ssize_t n, Py_ssize_t p, bint colmajor, w, int nthreads):
    """Per-column (count, mean, m2) in float64 of the (n, p) matrix x (its
    data read in C order, or Fortran order with colmajor), NaN skipped,
    weighted by the float64 array w (n values) or not (None); x float32 or
    float64 (the half types have no per-column kernels: ValueError)."""
    count, mean, m2 = _empty(p, F64), _empty(p, F64), _empty(p, F64)
    cdef int k = _kind(x)
    cdef void *px = _ptr(x), *pw = _ptr(w), *pk = _ptr(count), *pm = _ptr(mean)
    cdef void *pq = _ptr(m2)
    with nogil:
        _check(fbn_colstats(k, px, n, p, colmajor, pw, pk, pm, pq, nthreads))
    return count, mean, m2


def standardize(x, Py_ssize_t n, Py_ssize_t p, bint colmajor, mean, scale,
                bint inverse, y, int nthreads):
    """y = (x - mean) / scale per column (inverse: y = x * scale + mean) in
    x's dtype, mean and scale float64 arrays of p values or None; y has x's
    layout and dtype (it may be x; None: x is only searched for
    infinities).  Returns True if x holds an infinity."""
    cdef int k = _kind(x), bad = 0
    cdef void *px = _ptr(x), *pm = _ptr(mean), *ps = _ptr(scale), *py = _ptr(y)
    with nogil:
        _check(fbn_standardize(k, px, n, p, colmajor, pm, ps, inverse, py, &bad,
                               nthreads))
    return bool(bad)
