"""Every work plan the kernels can choose gives the same bits.

A kernel chooses its plan from the geometry of the call and the caches
(csrc/plan.c, fbn_plan_make_g): fused channel-first tiles, two-phase
tiles (statistics tiles, then elementwise blocks), channel-last row blocks,
non-temporal stores, and the threads that run the items (the caller-runs
pool or an OpenMP loop).  On the small arrays of a test suite most of these
would never be picked, so ``fastbn._kernels.set_tuning`` forces each one,
``fastbn._kernels.plan`` confirms that it was picked, and every result must
equal the default plan's bit for bit: no plan may change a number.
"""
import numpy as np
import pytest

import fastbn
from fastbn import _kernels

try:
    import ml_dtypes
    _BF16 = [pytest.param(ml_dtypes.bfloat16, id="bfloat16")]
except ImportError:  # pragma: no cover - ml_dtypes is in the test extra
    _BF16 = []

BIG = 1 << 50
# every element type: the half types run the same plans, sized by their
# own itemsize
DTYPES = [np.float32, np.float64, np.float16] + _BF16

CASES = [
    ((6, 37, 5, 9), 1),      # channel-first, short runs (45 values)
    ((64, 3, 33, 17), 1),    # few channels, several chunks each
    ((9, 70, 7, 7), 1),      # more channels than a tile holds (64)
    ((3, 5, 3001), 1),       # runs cross chunk boundaries (3 chunks)
    ((700, 45), 1),          # channel-last (NC): 16 rows folded, 12 left over
    ((5, 9, 11, 40), -1),    # channel-last (NHWC): 2 rows folded, 1 left over
    ((300, 70), 1),          # channel-last, not folded (70 channels)
    ((17, 20, 20, 3), -1),   # channel-last, 3 channels: 32 rows folded, 16 left
    ((3, 1, 2000), 1),       # one channel: one contiguous run
    ((9000, 1), 1),          # one channel, (N, 1), 3 chunks
]

# (name, tuning, expected strategy of the training forward or None)
PLANS = [
    ("fused", dict(fuse=BIG, tile=None), "fused tiles"),
    ("two-phase", dict(fuse=0, tile=None), "two-phase tiles"),
    ("two-phase, one chunk per tile", dict(fuse=0, tile=1), "two-phase tiles"),
    ("fused, nontemporal", dict(fuse=BIG, nt=0), "fused tiles"),
    ("two-phase, nontemporal", dict(fuse=0, nt=0, tile=1), "two-phase tiles"),
]


@pytest.fixture
def scheduler():
    old = _kernels.scheduler()
    yield _kernels.set_scheduler
    if old != "serial":
        _kernels.set_scheduler(old)


def _view(shape, axis):
    a = axis % len(shape)
    return (int(np.prod(shape[:a])), shape[a], int(np.prod(shape[a + 1:])))


def _misaligned_like(a):
    """An uninitialised C-contiguous array of a's shape and dtype whose data
    starts one element past a 64-byte boundary (aligned to its dtype, not
    to a cache line or a streaming store)."""
    raw = np.empty(a.size * a.itemsize + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + a.itemsize
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    assert out.flags.aligned and out.ctypes.data % 16 != 0
    return out


def _inputs(shape, axis, dtype):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    C = shape[axis]
    g = (rng.random(C) + 0.5).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    z = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, g, b, z, dy


def _run_all(x, g, b, z, dy, axis):
    """Every kernel once (the MPI halves through fastbn._kernels): a list
    of result arrays."""
    out = []
    y, m, s = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True, residual=z)
    out += [y, m, s]
    ym = _misaligned_like(x)
    fastbn.batch_norm_train(x, g, b, axis=axis, relu=True, out=ym)
    out.append(ym.copy())
    xi = x.copy()
    fastbn.batch_norm_train(xi, None, b, axis=axis, out=xi)
    out.append(xi)
    var = (1.0 / s.astype(np.float64) ** 2 - 1e-5).astype(x.dtype)
    out.append(fastbn.batch_norm_infer(x, m, var, g, b, axis=axis, relu=True,
                                       residual=z))
    out += list(fastbn.moments(x, axis=axis)[1:])
    dxm = _misaligned_like(x)
    res = fastbn.batch_norm_backward(dy, x, m, s, g, axis=axis, y=y,
                                     residual=True, out=dxm)
    out += [dxm.copy(), *res[1:]]
    out += list(fastbn.batch_norm_backward(dy, x, m, s, g, axis=axis))
    out += list(fastbn.batch_norm_backward(dy, x, m, s, g, axis=axis,
                                           training=False))
    outer, C, inner = _view(x.shape, axis)
    n = fastbn.get_num_threads()
    if x.itemsize == 2:  # the kernels take float32 per-channel arrays
        g, b = g.astype(np.float32), b.astype(np.float32)
    sdy, sdyx = _kernels.backward_reduce(dy, x, y, outer, C, inner, m, n, 1)
    dx = np.empty_like(x)
    dz = np.empty_like(x)
    _kernels.backward_apply(dy, x, y, outer, C, inner, m, s, g, sdy, sdyx,
                            float(outer * inner), True, dx, dz, n, 1)
    ya = np.empty_like(x)
    _kernels.apply(x, outer, C, inner, m.astype(np.float64), s.astype(np.float64),
                   g, b, z, True, ya, n)
    out += [sdy, sdyx, dx, dz, ya]
    return out


def _assert_same(ref, got, what):
    assert len(ref) == len(got)
    for i, (r, o) in enumerate(zip(ref, got)):
        assert r.dtype == o.dtype and r.shape == o.shape, (what, i)
        assert np.array_equal(r.view(np.uint8), o.view(np.uint8)), (
            f"result {i} differs with {what}")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", CASES, ids=str)
def test_every_plan_gives_the_same_bits(tuning, scheduler, shape, axis, dtype):
    x, g, b, z, dy = _inputs(shape, axis, dtype)
    outer, C, inner = _view(shape, axis)
    itemsize = np.dtype(dtype).itemsize
    with fastbn.num_threads(1):
        ref = _run_all(x, g, b, z, dy, axis)
    tuning(serial=0, wake=0)  # small arrays use the threads too
    seen = set()
    for sched in ("pool", "openmp"):
        if _kernels.scheduler() == "serial":
            break  # a build without OpenMP has one way to run
        scheduler(sched)
        for threads in (1, 2, 4):
            for name, settings, want in PLANS:
                tuning(serial=0, wake=0, **settings)
                plan = _kernels.plan("train", outer, C, inner, itemsize, threads)
                if plan["channel_last"] or (want == "fused tiles" and threads > 1
                                            and C < 2 * threads):
                    want = plan["strategy"]  # not forceable here; still run it
                assert plan["strategy"] == want, (name, plan)
                # fused tiles stream their output only when each sample's
                # run is long: 2 KB, 4 KB for the compute-bound half types
                run = inner if C > 1 else outer * inner  # C == 1: one run
                long_runs = plan["tile_channels"] * run * itemsize >= (
                    4096 if itemsize == 2 else 2048)
                assert plan["nontemporal"] == (settings.get("nt") == 0 and (
                    plan["strategy"] != "fused tiles" or long_runs)), plan
                seen.add((plan["strategy"], plan["threads"] > 1))
                with fastbn.num_threads(threads):
                    got = _run_all(x, g, b, z, dy, axis)
                _assert_same(ref, got, f"{name}, {threads} threads, {sched}")
    if _kernels.scheduler() != "serial":
        assert any(parallel for _, parallel in seen)


def test_plans_follow_the_geometry(tuning):
    """With fixed budgets (as if L2 were 2 MB), the plan depends on the
    shape as designed: short planes take several channels per tile so that
    each sample gives a long run; a channel too large for the budget is not
    fused; channel-last stays channel-last; one channel is one run."""
    tuning(fuse=1536 << 10, tile=512 << 10, nt=24 << 20, serial=None)
    p = _kernels.plan("train", 256, 512, 49, 4, 2)       # ResNet-50 layer 4
    assert p["strategy"] == "fused tiles"
    assert p["tile_channels"] * 49 * 4 >= 2048 and p["tiles"] >= 8
    p = _kernels.plan("train", 32, 64, 3136, 4, 2)       # 56x56: one channel
    assert p["strategy"] == "fused tiles" and p["tile_channels"] == 1
    assert p["nontemporal"] == 1                         # 25.7 MB, 12.5 KB runs
    p = _kernels.plan("train", 256, 512, 49, 4, 2)
    assert p["nontemporal"] == 1                         # 25.7 MB, 2.1 KB runs
    p = _kernels.plan("train", 128, 128, 784, 2, 2)      # float16 28x28, 25.7 MB
    assert p["strategy"] == "fused tiles" and p["tile_channels"] == 2
    assert p["nontemporal"] == 0                         # 3 KB half runs: plain
    p = _kernels.plan("train", 32, 64, 3136, 2, 2)       # float16 56x56
    assert p["nontemporal"] == 0                         # 12.8 MB: fits no budget
    p = _kernels.plan("train", 64, 64, 3136, 2, 2)       # float16 56x56, 25.7 MB
    assert p["strategy"] == "fused tiles" and p["nontemporal"] == 1  # 6 KB runs
    p = _kernels.plan("train", 32, 64, 12544, 4, 2)      # 1.6 MB per channel
    assert p["strategy"] == "two-phase tiles" and p["tiles"] >= 8
    p = _kernels.plan("infer", 32, 64, 12544, 4, 2)
    assert p["strategy"] == "elementwise blocks" and p["nontemporal"] == 1
    p = _kernels.plan("train", 32 * 56 * 56, 64, 1, 4, 2)  # NHWC
    assert p["strategy"] == "channel-last" and p["fold"] == 1
    p = _kernels.plan("train", 32 * 224 * 224, 3, 1, 4, 2)  # NHWC, 3 channels
    assert p["fold"] == 32                                 # rows of 96 values
    p = _kernels.plan("train", 7, 3, 1, 4, 1)               # too few rows to fold
    assert p["fold"] == 1
    p = _kernels.plan("train", 8, 16, 64, 4, 2)          # tiny: the caller only
    assert p["threads"] == 1
    p = _kernels.plan("train", 1000, 1, 100, 4, 1)       # C == 1
    assert p["chunks"] == 25 and not p["channel_last"]
    # dy, x, y stay in cache, dx (25.7 MB, 12.5 KB runs) is streamed past it
    p = _kernels.plan("backward_relu", 32, 64, 3136, 4, 2)
    assert p["strategy"] == "fused tiles" and p["nontemporal"] == 1
    p = _kernels.plan("backward_relu", 64, 64, 3136, 4, 2)  # 2.4 MB per channel
    assert p["strategy"] == "two-phase tiles"
    p = _kernels.plan("moments", 64, 64, 3136, 4, 2)
    assert p["strategy"] == "statistics tiles"
    with pytest.raises(ValueError, match="op must be"):
        _kernels.plan("nope", 1, 1, 1, 4, 1)


def _unaligned(a):
    """A C-contiguous copy of a whose data is NOT aligned to its dtype."""
    raw = np.empty(a.nbytes + 16, np.uint8)
    start = (-raw.ctypes.data) % 16 + 1
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_unaligned_inputs_are_copied_and_unaligned_out_refused(dtype):
    """NumPy can make arrays that are not aligned to their dtype (views of
    byte buffers); the kernels read whole aligned elements, so such inputs
    are copied once and such an out= is refused with a clear error."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5, 7)).astype(dtype)
    g = (rng.random(5) + 0.5).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    ref = fastbn.batch_norm_train(x, g, relu=True)
    got = fastbn.batch_norm_train(_unaligned(x), _unaligned(g), relu=True)
    for r, o in zip(ref, got):
        assert np.array_equal(r, o)
    y, m, s = ref
    dref = fastbn.batch_norm_backward(dy, x, m, s, g, y=y)
    dgot = fastbn.batch_norm_backward(_unaligned(dy), _unaligned(x), _unaligned(m),
                                      _unaligned(s), g, y=_unaligned(y))
    for r, o in zip(dref, dgot):
        assert np.array_equal(r, o)
    with pytest.raises(ValueError, match="out must be aligned"):
        fastbn.batch_norm_train(x, out=_unaligned(x))


def test_set_tuning_returns_previous_and_restores(tuning):
    default = _kernels.tuning()
    old = tuning(nt=123, fuse=0)
    assert old == {"nt": None, "fuse": None, "tile": None, "serial": None,
                   "wake": None}
    assert _kernels.tuning()["nt"] == 123 and _kernels.tuning()["fuse"] == 0
    assert tuning(**old) == {"nt": 123, "fuse": 0, "tile": None, "serial": None,
                             "wake": None}
    assert _kernels.tuning() == default


def test_cache_sizes_are_plausible():
    l1, l2, l3 = _kernels.cache_sizes()
    assert all(v >= 0 for v in (l1, l2, l3))
    if l2:  # read from the machine
        assert 16 << 10 <= l2 <= 1 << 30
    t = _kernels.tuning()
    assert t["fuse"] > 0 and t["tile"] > 0 and t["nt"] > t["tile"]


def test_scheduler_names(scheduler):
    if _kernels.scheduler() == "serial":
        with pytest.raises(ValueError):
            scheduler("openmp")
        return
    assert scheduler("openmp") == "pool"
    assert _kernels.scheduler() == "openmp"
    with pytest.raises(ValueError, match="scheduler must be"):
        scheduler("tbb")
    assert _kernels.scheduler() == "openmp"


@pytest.mark.parametrize("dtype", [np.float32, np.float16] + _BF16)
@pytest.mark.parametrize("isa", _kernels.simd_available())
@pytest.mark.parametrize("shape,axis", [((6, 37, 5, 9), 1), ((3, 5, 3001), 1),
                                        ((17, 20, 20, 3), -1), ((5, 1100), 1)],
                         ids=str)
def test_streamed_plans_give_the_same_bits_on_every_simd_level(tuning, isa,
                                                               shape, axis, dtype):
    """Streamed outputs use 16-, 32- or 64-byte stores by SIMD level (with
    their own unaligned heads and tails; the half types' AVX-512 kernels
    write the whole lines of long runs straight from registers, the rest
    through the tile): every level, every plan, the bits of the plain
    baseline, misaligned outputs and rows longer than a tile included."""
    x, g, b, z, dy = _inputs(shape, axis, dtype)
    old = _kernels.simd()
    try:
        _kernels.set_simd("baseline")
        with fastbn.num_threads(1):
            ref = _run_all(x, g, b, z, dy, axis)
        _kernels.set_simd(isa)
        for settings in (dict(fuse=1 << 50, nt=0), dict(fuse=0, nt=0, tile=1)):
            tuning(serial=0, wake=0, **settings)
            for threads in (1, 2):
                with fastbn.num_threads(threads):
                    got = _run_all(x, g, b, z, dy, axis)
                _assert_same(ref, got, f"{isa}, {settings}, {threads} threads")
    finally:
        _kernels.set_simd(old)
