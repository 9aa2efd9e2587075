"""Plans made for other CPUs' caches give the same bits.

The kernels choose their plan (fused tiles, two-phase tiles, streamed
stores, tile sizes) from the cache sizes they detect.
``_kernels.set_cache_sizes`` makes them plan as on a CPU with a 512 KB, 1 MB
or 2 MB L2 and a small or large L3: every such plan must give bitwise the
results of the plan this machine makes, for every dtype and thread count,
and the sizes must really change the plans.
"""
import numpy as np
import pytest

import fastbn
from fastbn import _kernels
from conftest import ALL_DTYPES
from helpers import make_inputs

KB, MB = 1 << 10, 1 << 20
L2S = [512 * KB, 1 * MB, 1280 * KB, 2 * MB]
L3S = [4 * MB, None]  # None: this machine's own
# channel-first shapes whose per-channel arrays (64 KB-1 MB) fall on both
# sides of those budgets, a short-plane shape, and channel-last rows
SHAPES = [((4, 8, 128, 128), 1), ((2, 6, 200, 160), 1), ((16, 32, 14, 14), 1),
          ((512, 40), 1), ((8, 24, 24, 48), -1)]


@pytest.fixture
def caches():
    old = _kernels.set_cache_sizes()
    yield _kernels.set_cache_sizes
    _kernels.set_cache_sizes(**old)


def _outputs(x, z, dy, g, b, axis):
    y, mean, invstd = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True,
                                              residual=z)
    y2, mean2, invstd2 = fastbn.batch_norm_train(x, g, b, axis=axis,
                                                 activation="relu6")
    dx, dg, db, dz = fastbn.batch_norm_backward(dy, x, mean, invstd, g,
                                                axis=axis, y=y, residual=True)
    dx2, dg2, db2 = fastbn.batch_norm_backward(dy, x, mean2, invstd2, g,
                                               axis=axis, y=y2,
                                               activation="relu6")
    dx3, _, _ = fastbn.batch_norm_backward(dy, x, mean, invstd, g, axis=axis)
    yi = fastbn.batch_norm_infer(x, mean, 1 / invstd ** 2, g, b, axis=axis)
    # the masks recomputed from x (beta, no y): the y-path's bits
    y4, mean4, invstd4 = fastbn.batch_norm_train(x, g, b, axis=axis, relu=True)
    with_y = fastbn.batch_norm_backward(dy, x, mean4, invstd4, g, axis=axis, y=y4)
    from_x = fastbn.batch_norm_backward(dy, x, mean4, invstd4, g, axis=axis, beta=b,
                                        activation="relu")
    from_x6 = fastbn.batch_norm_backward(dy, x, mean2, invstd2, g, axis=axis, beta=b,
                                         activation="relu6")
    # ... and with the forward's mean_lo (no second pass over x for the mean)
    res = fastbn._api._train(x, g, b, axis, 1e-5, True, None, None, None, False,
                             want_lo=True)
    assert res[1].tobytes() == mean4.tobytes()
    from_lo = fastbn._api._backward(dy, x, mean4, invstd4, g, axis, None, True, False,
                                    None, None, None, None, None, "relu", b, res[-1])
    for p, q in zip(with_y + (dx2, dg2, db2) + with_y,
                    from_x + from_x6 + from_lo):
        assert p.tobytes() == q.tobytes()
    return [y, mean, invstd, y2, dx, dg, db, dz, dx2, dg2, db2, dx3, yi, *from_x,
            *from_x6]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape,axis", SHAPES, ids=str)
def test_every_cache_size_gives_the_same_bits(shape, axis, dtype, caches):
    rng = np.random.default_rng(7)
    x, z, dy, g, b, _, _ = make_inputs(rng, shape, axis, dtype)
    with fastbn.num_threads(1):
        want = _outputs(x, z, dy, g, b, axis)
    for l2 in L2S:
        for l3 in L3S:
            caches(l2=l2, l3=l3)
            assert _kernels.cache_sizes()[1] == l2
            for nth in (1, 2, 4):
                with fastbn.num_threads(nth):
                    got = _outputs(x, z, dy, g, b, axis)
                for i, (a, w) in enumerate(zip(got, want)):
                    assert a.dtype == w.dtype
                    assert a.tobytes() == w.tobytes(), (l2, l3, nth, i)


def test_each_plan_is_taken(caches):
    """The cache sizes above really change the plans: the same calls are
    fused tiles with one L2 and two-phase tiles with another."""
    seen = {}
    for l2 in L2S:
        caches(l2=l2)
        for shape, axis in SHAPES:
            if axis != 1 or len(shape) < 3:
                continue
            outer, c, inner = shape[0], shape[1], int(np.prod(shape[2:]))
            for nth in (1, 2):
                for op in ("train", "backward_relu", "backward_residual"):
                    p = _kernels.plan(op, outer, c, inner, 4, nth)
                    seen.setdefault((shape, nth, op), set()).add(
                        (p["strategy"], p["tile_channels"], p["tile_chunks"]))
    assert {s for v in seen.values() for s, _, _ in v} >= {
        "fused tiles", "two-phase tiles"}
    assert sum(len(v) > 1 for v in seen.values()) >= 6, seen


def test_plan_follows_the_l2_size(caches):
    # a (32,64,56,56) float32 backward with a fused ReLU: x, dy and y of one
    # channel are 1.2 MB, dx streamed past the caches
    shape = (32, 64, 56 * 56)
    caches(l2=2 * MB)  # 3/4 of 2 MB holds them
    assert _kernels.plan("backward_relu", *shape, 4, 2)["strategy"] == \
        "fused tiles"
    caches(l2=1 * MB)
    assert _kernels.plan("backward_relu", *shape, 4, 2)["strategy"] == \
        "two-phase tiles"


def test_mask_from_x_counts_two_arrays(caches):
    """With the mask from x a fused tile holds dy and x of its channels, not
    y (dx is streamed): (32,64,56,56) float32, 0.8 MB a channel, fuses with
    a 1.25 MB L2 (3/4: 0.94 MB) where the y-path's 1.2 MB does not; a 1 MB
    L2 (0.77 MB) fuses neither."""
    shape = (32, 64, 56 * 56)
    caches(l2=1280 * KB)
    assert _kernels.plan("backward_relu_x", *shape, 4, 2)["strategy"] == "fused tiles"
    assert _kernels.plan("backward_relu", *shape, 4, 2)["strategy"] == \
        "two-phase tiles"
    caches(l2=1 * MB)
    assert _kernels.plan("backward_relu_x", *shape, 4, 2)["strategy"] == \
        "two-phase tiles"


def test_set_cache_sizes_checks_and_restores(caches):
    detected = _kernels.cache_sizes()
    old = caches(l2=123456)
    assert old == {"l1": None, "l2": None, "l3": None}
    assert _kernels.cache_sizes() == (detected[0], 123456, detected[2])
    assert caches() == {"l1": None, "l2": 123456, "l3": None}
    assert _kernels.cache_sizes() == detected
    with pytest.raises(ValueError, match="l3"):
        caches(l3=-5)
    with pytest.raises(ValueError, match="l2"):
        caches(l2=1.5)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(64, 16, 4, 4), (32, 24, 7, 7), (8, 16, 8, 8),
                                   (6, 40, 3, 41), (16, 8, 11, 11)], ids=str)
def test_short_runs_give_the_bits_of_every_plan(shape, dtype, tuning):
    """Fused tiles of short runs (a sample's runs of a tile's channels in one
    loop) give the bits of two-phase tiles (one loop per run) and of the
    plan with streamed stores, with the residual and each activation."""
    rng = np.random.default_rng(11)
    x, z, _, g, b, _, _ = make_inputs(rng, shape, 1, dtype)

    def run():
        out = [fastbn.batch_norm_train(x, g, b, relu=True, residual=z)[0],
               fastbn.batch_norm_train(x, activation="relu6")[0],
               fastbn.batch_norm_train(x, g)[0]]
        return [a.tobytes() for a in out]

    strategies = set()
    with fastbn.num_threads(1):
        want = run()
        strategies.add(_kernels.plan("train", shape[0], shape[1],
                                     shape[2] * shape[3], x.itemsize, 1)["strategy"])
        for settings in ({"nt": 0}, {"fuse": 0}):
            tuning(**settings)
            strategies.add(_kernels.plan("train", shape[0], shape[1],
                                         shape[2] * shape[3], x.itemsize, 1)["strategy"])
            assert run() == want, settings
            tuning(nt=-1, fuse=-1)
    assert strategies == {"fused tiles", "two-phase tiles"}
